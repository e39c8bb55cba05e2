"""Every category has an end: the new rules of the default data map (crm.contacts.orphaned,
crm.social_messages.after_answered, crm.social_messages.unanswered) act on exactly the expected demo rows, on
PostgreSQL, MariaDB (default collation) and SQLite. The expected rows are worked out here from the seeded
rows themselves (not from the store's predicates), plus rows exactly at each boundary."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa
from dateutil.relativedelta import relativedelta

from include.retention.concept import personal_without_rule
from include.retention.demo import schema, seed
from include.retention.ledger import Ledger, RunRef
from include.retention.policy import load_policy
from include.retention.stores.sql import SqlStore, make_engine
from include.retention.sweep import run_rule
from tests.conftest import KEY

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NOW = dt.datetime(2026, 11, 24, 12, 0, 0, tzinfo=dt.UTC)
NAIVE = NOW.replace(tzinfo=None)
POLICY = load_policy(ROOT / "config" / "policy.yaml")
CHILDREN = (schema.inquiries, schema.leads, schema.applicants, schema.support_tickets)


@pytest.fixture
def demo(db_url, tmp_path):
    engine = make_engine(db_url)
    seed.seed_crm(engine, NOW, reset=True)
    ledger = Ledger(make_engine(f"sqlite:///{tmp_path / 'ledger.db'}"), KEY)
    ledger.ensure_schema()
    store = SqlStore("crm", POLICY, engine, mask_key=KEY)
    yield engine, store, ledger
    store.close()
    ledger.engine.dispose()


def _rows(engine, table: sa.Table) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(table).order_by(table.c.id))]


def _ids(engine, table: sa.Table) -> set[int]:
    return {r["id"] for r in _rows(engine, table)}


def _sweep(store, ledger, rule_id: str, now: dt.datetime = NOW) -> dict:
    return run_rule(POLICY, rule_id, store, ledger, RunRef("test", rule_id), now=now)


def test_orphaned_contacts(demo):
    engine, store, ledger = demo
    edge = NAIVE - relativedelta(months=6)
    with engine.begin() as conn:  # two unreferenced contacts exactly at and just past the boundary
        for i, stamp in ((9001, edge), (9002, edge - dt.timedelta(seconds=1))):
            conn.execute(schema.contacts.insert().values(
                id=i, email=f"edge{i}@example.com", full_name="Edge Case", is_minor=False, legal_hold=False,
                created_at=edge - relativedelta(years=1), last_contact_at=edge - relativedelta(years=1),
                orphaned_since=stamp))
    contacts = _rows(engine, schema.contacts)
    referenced = {r["contact_id"] for t in CHILDREN for r in _rows(engine, t)}
    unreferenced = {c["id"] for c in contacts if c["id"] not in referenced}
    going = {c["id"] for c in contacts if c["id"] in unreferenced and not c["legal_hold"]
             and c["orphaned_since"] is not None and c["orphaned_since"] < edge}
    stale = {c["id"] for c in contacts if c["id"] in referenced and c["orphaned_since"] is not None}
    fresh = {c["id"] for c in contacts if c["id"] in unreferenced and c["orphaned_since"] is None}
    assert len(going) == 5 + 1 and 9002 in going and 9001 not in going
    assert stale and fresh  # the sweep has stamps to clear and to set

    counts = _sweep(store, ledger, "crm.contacts.orphaned")

    assert counts["deleted"] == len(going) and counts["cascaded"] == {}
    after = {c["id"]: c for c in _rows(engine, schema.contacts)}
    assert set(after) == {c["id"] for c in contacts} - going
    assert all(after[i]["orphaned_since"] is None for i in stale)
    assert all(after[i]["orphaned_since"].replace(microsecond=0) == NAIVE for i in fresh)
    assert after[9001]["orphaned_since"] == edge
    assert {r["contact_id"] for t in CHILDREN for r in _rows(engine, t)} == referenced  # nothing taken along


def test_answered_and_unanswered_social_messages(demo):
    engine, store, ledger = demo
    limit = NAIVE - relativedelta(months=3)
    with engine.begin() as conn:  # boundaries: answered exactly now stays; received exactly three months ago stays
        conn.execute(schema.social_messages.insert(), [
            {"id": 9001, "handle": "@edge_a", "body": "x", "received_at": NAIVE - dt.timedelta(days=1),
             "answered_at": NAIVE, "legal_hold": False},
            {"id": 9002, "handle": "@edge_b", "body": "x", "received_at": NAIVE - dt.timedelta(days=1),
             "answered_at": NAIVE - dt.timedelta(seconds=1), "legal_hold": False},
            {"id": 9003, "handle": "@edge_c", "body": "x", "received_at": limit, "answered_at": None,
             "legal_hold": False},
            {"id": 9004, "handle": "@edge_d", "body": "x", "received_at": limit - dt.timedelta(seconds=1),
             "answered_at": None, "legal_hold": False},
        ])
    rows = _rows(engine, schema.social_messages)
    answered = {r["id"] for r in rows if r["answered_at"] is not None and r["answered_at"] < NAIVE
                and not r["legal_hold"]}
    unanswered = {r["id"] for r in rows if r["answered_at"] is None and r["received_at"] < limit
                  and not r["legal_hold"]}
    assert len(answered) == 14 + 1 and len(unanswered) == 10 + 1
    assert 9002 in answered and 9004 in unanswered

    first = _sweep(store, ledger, "crm.social_messages.after_answered")
    assert first["deleted"] == len(answered)
    assert _ids(engine, schema.social_messages) == {r["id"] for r in rows} - answered
    second = _sweep(store, ledger, "crm.social_messages.unanswered")
    assert second["deleted"] == len(unanswered)
    left = _rows(engine, schema.social_messages)
    assert {r["id"] for r in left} == {r["id"] for r in rows} - answered - unanswered
    # what stays: held answered ones, the one answered this instant, unanswered ones younger than three months
    assert all(r["legal_hold"] or r["answered_at"] in (None, NAIVE) for r in left)
    assert all(r["legal_hold"] or r["received_at"] >= limit for r in left if r["answered_at"] is None)


def test_default_map_leaves_no_category_without_an_end():
    ended = {rule.category for s in POLICY.systems.values() for c in s.collections.values() for rule in c.rules}
    assert set(POLICY.categories) <= ended
    assert personal_without_rule(POLICY) == []
    # every collection holding a category's data ends: by a rule, or with the row it belongs to
    for s_name, system in POLICY.systems.items():
        for c_name, coll in system.collections.items():
            if coll.categories and not coll.rules:
                assert any(r.on_delete == "delete" for r in coll.references), f"{s_name}.{c_name}"


def test_concept_explains_the_orphan_rules():
    from include.retention.concept import START_EVENTS, concept_frame

    df = concept_frame(POLICY, None).set_index("rule")
    contacts = df.loc["crm.contacts.orphaned"]
    assert contacts["start_event"] == START_EVENTS["end_of_relationship"]
    assert contacts["conditions"] == ("nothing in crm.applicants, crm.inquiries, crm.leads, crm.support_tickets "
                                      "refers to it")
    assert df.loc["objects.cvs.orphaned"]["conditions"] == "nothing in crm.applicants refers to it"


def test_validate_names_a_category_collection_nothing_ends(tmp_path, capsys):
    from include.retention import cli

    path = tmp_path / "policy.yaml"
    path.write_text("""
version: 1
categories: {applications: job applications}
systems:
  objects:
    kind: s3
    connection: s
    collections:
      cvs: {bucket: b, prefix: cvs/, categories: [applications]}
      logs:
        bucket: l
        prefix: logs/
        categories: [applications]
        rules: [{name: old, start: {basis: last_modified}, action: delete, period: P30D}]
""")
    assert cli.main(["validate", str(path)]) == 0
    err = capsys.readouterr().err
    assert f"warning: {path}: objects.cvs holds applications data but nothing ends it" in err
    assert "objects.logs" not in err
    assert cli.main(["validate", str(ROOT / "config" / "policy.yaml")]) == 0
    assert "warning" not in capsys.readouterr().err
