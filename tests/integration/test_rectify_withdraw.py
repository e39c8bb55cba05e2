"""Rectify and withdraw on SQLite, PostgreSQL and MariaDB: exactly the targeted columns of exactly the
subject's rows change; lookalikes (another accent, another script) and everybody else stay as they were."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from include.retention.connections import make_engine
from include.retention.demo import schema
from include.retention.identity import normalise
from include.retention.policy import load_policy
from include.retention.stores.base import Subject
from include.retention.stores.sql import SqlStore
from tests.conftest import KEY, ROOT

pytestmark = pytest.mark.integration

NOW = dt.datetime(2026, 11, 1)
ZOE = "Zoe.Muller@Example.org"
LOOKALIKES = ("zoë.müller@example.org", "zoe.mullеr@example.org", "other@example.org")  # accent, Cyrillic е
NEW = "zoe.new@example.org"
POLICY = load_policy(ROOT / "config" / "policy.yaml")


def seed(engine) -> dict[str, dict[str, int]]:
    schema.crm_metadata.drop_all(engine)
    schema.crm_metadata.create_all(engine)
    schema.mailing_metadata.drop_all(engine)
    schema.mailing_metadata.create_all(engine)
    ids: dict[str, dict[str, int]] = {}
    with engine.begin() as conn:
        for email in (ZOE, *LOOKALIKES):
            cid = conn.execute(schema.contacts.insert().values(
                email=email, phone="+48 500 600 700", full_name="Z", created_at=NOW, last_contact_at=NOW)
            ).inserted_primary_key[0]
            aid = conn.execute(schema.applicants.insert().values(
                contact_id=cid, email=email, full_name="Z", future_consent=True)).inserted_primary_key[0]
            tid = conn.execute(schema.support_tickets.insert().values(contact_id=cid, email=email, subject="s")
                               ).inserted_primary_key[0]
            # the subject as an organisation admin on somebody else's account: a mention, also their address
            acc = conn.execute(schema.client_accounts.insert().values(
                org_name="Org", admin_email=email, user_email=f"user.of.{cid}@example.org", user_name="U")
            ).inserted_primary_key[0]
            sid = conn.execute(schema.subscribers.insert().values(email=email, subscribed_at=NOW)
                               ).inserted_primary_key[0]
            ids[email] = {"contact": cid, "applicant": aid, "ticket": tid, "account": acc, "subscriber": sid}
    return ids


def snapshot(engine) -> dict[str, dict[int, dict]]:
    out = {}
    with engine.connect() as conn:
        for md in (schema.crm_metadata, schema.mailing_metadata):
            for t in md.sorted_tables:
                out[t.name] = {r.id: dict(r._mapping) for r in conn.execute(sa.select(t))}
    return out


def changes(before, after) -> dict[tuple[str, int], set[str]]:
    """(table, id) -> the columns whose value changed."""
    out = {}
    for table, rows in before.items():
        assert set(after[table]) == set(rows), table  # no row added or removed
        for rid, row in rows.items():
            cols = {c for c in row if row[c] != after[table][rid][c]}
            if cols:
                out[(table, rid)] = cols
    return out


def stores(engine) -> dict[str, SqlStore]:
    return {name: SqlStore(name, POLICY, engine, mask_key=KEY) for name in ("crm", "mailing")}


def subject_collections(engine, keep=lambda coll: True):
    """Each store with each of its subject collections whose policy entry ``keep`` accepts."""
    for store in stores(engine).values():
        for name in store.subject_collections():
            if keep(POLICY.collection(store.ref(name))):
                yield store, name


def subject(email: str = ZOE) -> list[Subject]:
    return [Subject("r1", {"email": normalise("email", email)})]


def test_rectify_changes_exactly_the_identity_columns_of_the_subjects_rows(db_url):
    engine = make_engine(db_url)
    ids = seed(engine)[ZOE]
    before = snapshot(engine)
    counts = {}
    for store, name in subject_collections(engine, lambda coll: "email" in coll.identities):
        claims = store.find(name, subject(" zoe.muller@EXAMPLE.org "))
        if claims:
            current = snapshot(engine)
            dry = store.rectify(name, claims, subject(), {"email": NEW}, dry_run=True)
            assert snapshot(engine) == current  # a dry run counts only
            out = store.rectify(name, claims, subject(), {"email": NEW}, dry_run=False)
            assert out.per_request == dry.per_request
            counts.update(out.per_request["r1"])
    after = snapshot(engine)
    assert changes(before, after) == {
        ("contacts", ids["contact"]): {"email"}, ("applicants", ids["applicant"]): {"email"},
        ("support_tickets", ids["ticket"]): {"email"}, ("client_accounts", ids["account"]): {"admin_email"},
        ("subscribers", ids["subscriber"]): {"email"}}
    assert after["contacts"][ids["contact"]]["email"] == NEW
    assert after["client_accounts"][ids["account"]]["admin_email"] == NEW
    assert counts == {r: {"rectified": 1} for r in ("crm.contacts", "crm.applicants", "crm.support_tickets",
                                                      "crm.client_accounts", "mailing.subscribers")}
    # nothing carries the old value any more; the new one finds the person
    for store, name in subject_collections(engine):
        assert not store.find(name, subject())
    assert stores(engine)["crm"].find("contacts", subject(NEW))
    engine.dispose()


def test_rectify_phone_leaves_emails_alone(db_url):
    engine = make_engine(db_url)
    seed(engine)
    before = snapshot(engine)
    crm = stores(engine)["crm"]
    phone_subject = [Subject("r1", {"phone": normalise("phone", "0048 500 600 700")})]
    claims = crm.find("contacts", phone_subject)
    assert len(claims) == 4  # every seeded contact shares the phone: each of them is this phone's holder
    crm.rectify("contacts", claims, phone_subject, {"phone": "+48 111 222 333"}, dry_run=False)
    diff = changes(before, snapshot(engine))
    assert len(diff) == 4 and all(v == {"phone"} for v in diff.values())
    assert {t for t, _ in diff} == {"contacts"}
    engine.dispose()


def test_withdraw_sets_exactly_the_consent_columns_of_the_subjects_own_rows(db_url):
    engine = make_engine(db_url)
    ids = seed(engine)[ZOE]
    before = snapshot(engine)
    counts = {}
    for store, name in subject_collections(engine, lambda coll: coll.consent):
        claims = store.find(name, subject())
        current = snapshot(engine)
        dry = store.withdraw(name, claims, subject(), None, dry_run=True)
        assert snapshot(engine) == current
        out = store.withdraw(name, claims, subject(), None, dry_run=False)
        assert out.per_request == dry.per_request
        counts.update(out.per_request["r1"])
    after = snapshot(engine)
    assert changes(before, after) == {("applicants", ids["applicant"]): {"future_consent"},
                                      ("subscribers", ids["subscriber"]): {"unsubscribed_at"}}
    assert not after["applicants"][ids["applicant"]]["future_consent"]
    assert after["subscribers"][ids["subscriber"]]["unsubscribed_at"] is not None
    assert counts == {"crm.applicants": {"withdrawn:future_recruitment": 1},
                      "mailing.subscribers": {"withdrawn:newsletter": 1}}

    # withdrawing again changes nothing and says so; naming one consent touches only that one
    mailing = stores(engine)["mailing"]
    claims = mailing.find("subscribers", subject())
    again = mailing.withdraw("subscribers", claims, subject(), ["newsletter"], dry_run=False)
    assert again.per_request["r1"] == {"mailing.subscribers": {"already_withdrawn:newsletter": 1}}
    assert mailing.withdraw("subscribers", claims, subject(), ["future_recruitment"], dry_run=False).per_request == {}
    assert snapshot(engine) == after
    engine.dispose()
