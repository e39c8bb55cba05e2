"""The demo seed on SQLite: every table filled, every rule with rows to act on and rows to keep."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa

from include.retention.demo import schema, seed
from include.retention.policy import load_policy
from include.retention.stores.sql import SqlStore

ROOT = Path(__file__).resolve().parents[2]
NOW = dt.datetime(2026, 11, 24, 12, 0, 0)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    base = tmp_path_factory.mktemp("demo")
    crm = sa.create_engine(f"sqlite:///{base / 'crm.db'}")
    mailing = sa.create_engine(f"sqlite:///{base / 'mailing.db'}")
    counts = {**seed.seed_crm(crm, NOW), **seed.seed_mailing(mailing, NOW)}
    yield crm, mailing, counts
    crm.dispose()
    mailing.dispose()


def _count(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def test_every_table_has_rows(seeded):
    crm, mailing, counts = seeded
    for metadata, engine in ((schema.crm_metadata, crm), (schema.mailing_metadata, mailing)):
        for table in metadata.sorted_tables:
            n = _count(engine, table)
            assert n > 0, table.name
            assert counts[table.name] == n, table.name
    assert counts["contacts"] == 200


def test_children_point_at_existing_parents(seeded):
    crm, mailing, _ = seeded
    with crm.connect() as conn:
        for child in (schema.inquiries, schema.leads, schema.applicants, schema.support_tickets):
            orphans = conn.execute(
                sa.select(sa.func.count()).select_from(child)
                .where(~sa.exists().where(schema.contacts.c.id == child.c.contact_id))).scalar_one()
            assert orphans == 0, child.name
    with mailing.connect() as conn:
        for child in (schema.list_memberships, schema.campaign_events):
            orphans = conn.execute(
                sa.select(sa.func.count()).select_from(child)
                .where(~sa.exists().where(schema.subscribers.c.id == child.c.subscriber_id))).scalar_one()
            assert orphans == 0, child.name


def test_object_keys_follow_the_row_ids(seeded):
    crm, _, _ = seeded
    keys = seed.crm_object_keys(crm)
    assert keys["inquiries.attachment_key"] and keys["applicants.cv_key"]
    assert all(k.startswith("inquiries/") and k.endswith("/file.pdf") for k in keys["inquiries.attachment_key"])
    assert all(k.startswith("cvs/") and k.endswith("/cv.pdf") for k in keys["applicants.cv_key"])


@pytest.mark.parametrize("days_later", [0, 4])
def test_every_rule_acts_keeps_and_stays_under_the_brake(seeded, days_later):
    """Also a few days after seeding: generated times keep their distance from the cut-offs."""
    crm, mailing, _ = seeded
    policy = load_policy(ROOT / "config" / "policy.yaml")
    stores = {"crm": SqlStore("crm", policy, crm), "mailing": SqlStore("mailing", policy, mailing)}
    now = NOW + dt.timedelta(days=days_later)
    plans = {}
    for rule_id in policy.rule_ids(["crm", "mailing"]):
        coll_ref, coll, rule = policy.rule(rule_id)
        system, _, name = coll_ref.partition(".")
        stores[system].check(name)
        plan = stores[system].plan(name, rule, now)
        plans[rule_id] = plan
        assert all(n > 0 for n in plan.eligible.values()), (rule_id, plan)
        assert plan.affected <= 0.45 * plan.total, (rule_id, plan)
        assert plan.affected < policy.max_fraction(rule) * plan.total, (rule_id, plan)
        if coll.legal_hold:
            assert plan.held > 0, (rule_id, plan)
        if rule_id != "crm.contacts.minors":  # every minor (by birth date) goes (or is held)
            assert plan.kept > 0, (rule_id, plan)
    # The exact demo expectations at scale 1 (README / demo output rely on them).
    assert {r: (p.eligible, p.held) for r, p in plans.items()} == {
        "crm.contacts.minors": ({"delete": 20}, 3),
        # stamped more than six months ago by an earlier sweep and still referenced by nothing
        "crm.contacts.orphaned": ({"delete": 5}, 1),
        "crm.inquiries.after_last_contact": ({"delete": 36}, 6),
        "crm.leads.inactivity": ({"lock": 12, "delete": 8}, 5),
        "crm.applicants.recruitment_closed": ({"delete": 14}, 4),
        "crm.applicants.future_recruitment_consent": ({"delete": 5}, 2),
        "crm.support_tickets.after_closed": ({"delete": 22}, 5),
        "crm.client_accounts.contract_end": ({"lock": 24, "delete": 10}, 5),
        "crm.social_messages.after_answered": ({"delete": 14}, 3),
        "crm.social_messages.unanswered": ({"delete": 10}, 2),
        "mailing.subscribers.unsubscribed": ({"delete": 45}, 4),
        # dormant (last engagement 36-60 months ago) and never engaged (subscribed 36-72 months ago): one rule
        # counting from the later engagement, else the subscription
        "mailing.subscribers.no_engagement": ({"delete": 30 + 24}, 3 + 2),
        "mailing.campaign_events.mask_ip": ({"anonymize": 286}, 0),
    }


def test_seed_is_deterministic(tmp_path):
    rows = []
    for i in range(2):
        engine = sa.create_engine(f"sqlite:///{tmp_path / f'crm{i}.db'}")
        seed.seed_crm(engine, NOW)
        with engine.connect() as conn:
            rows.append({t.name: conn.execute(sa.select(t).order_by(t.c.id)).all()
                         for t in schema.crm_metadata.sorted_tables})
        engine.dispose()
    assert rows[0] == rows[1]


def test_scale_multiplies_the_rows(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    counts = seed.seed_crm(engine, NOW, scale=2)
    engine.dispose()
    assert counts["contacts"] == 400
    assert counts["leads"] == 120


def test_cli_drops_and_recreates(tmp_path):
    crm_url, mailing_url = f"sqlite:///{tmp_path / 'crm.db'}", f"sqlite:///{tmp_path / 'mailing.db'}"
    args = ["--crm-url", crm_url, "--mailing-url", mailing_url, "--now", "2026-11-24T12:00:00+00:00"]
    assert seed.main(args) == 0
    assert seed.main(args) == 0  # a rerun starts clean instead of colliding on primary keys
    engine = sa.create_engine(crm_url)
    assert _count(engine, schema.contacts) == 200
    engine.dispose()
    engine = sa.create_engine(mailing_url)
    assert _count(engine, schema.subscribers) == 300
    engine.dispose()


def test_schema_helpers_are_idempotent():
    engine = sa.create_engine("sqlite://")
    schema.create_crm(engine)
    schema.create_crm(engine)
    schema.create_mailing(engine)
    assert set(sa.inspect(engine).get_table_names()) == set(schema.crm_metadata.tables) | set(
        schema.mailing_metadata.tables)
    schema.drop_crm(engine)
    schema.drop_crm(engine)
    schema.drop_mailing(engine)
    assert sa.inspect(engine).get_table_names() == []
    engine.dispose()
