"""Subject erasure on real databases with the demo schema and the default policy's SQL systems:
exact rows gone, exceptions restricted, others untouched byte for byte, verification, suppression."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from include.retention.demo import schema
from include.retention.errors import RetentionError
from include.retention.policy import load_policy
from include.retention.registry import Identities, NewRequest, Registry
from include.retention.registry import requests as requests_table
from include.retention.requests.scanner import Subject, SubjectScanner, collection_order
from include.retention.stores.sql import SqlStore, make_engine
from tests.conftest import KEY, ROOT

pytestmark = pytest.mark.integration

NOW = dt.datetime(2026, 11, 1)
SUBJECT = "Subject.One@Example.org"


def sql_only_policy():
    policy = load_policy(ROOT / "config" / "policy.yaml")
    return policy


def insert(conn, table, **row):
    return conn.execute(table.insert().values(**row)).inserted_primary_key[0]


def seed_subject_world(engine):
    """Two people: the subject (spread over every CRM table) and a bystander."""
    schema.crm_metadata.drop_all(engine)
    schema.crm_metadata.create_all(engine)
    with engine.begin() as conn:
        ids = {}
        for who, email in (("subject", "subject.one@example.org"), ("other", "other.person@example.org")):
            cid = insert(conn, schema.contacts, email=email, phone="+48 500 100 200" if who == "subject" else None,
                         full_name=f"{who} name", created_at=NOW, last_contact_at=NOW)
            ids[who] = cid
            insert(conn, schema.inquiries, contact_id=cid, email=email, message="hello", last_contact_at=NOW)
            insert(conn, schema.applicants, contact_id=cid, email=email, full_name=f"{who} name",
                   recruitment_closed_at=None)
            insert(conn, schema.support_tickets, contact_id=cid, email=email, subject="help")
        # the subject's lead is under legal hold: an exception, restricted instead of deleted
        ids["held_lead"] = insert(conn, schema.leads, contact_id=ids["subject"], email="subject.one@example.org",
                                  description="x", last_activity_at=NOW, legal_hold=True)
        insert(conn, schema.client_accounts, org_name="Org", admin_email="admin@org.example",
               user_email="SUBJECT.one@example.org", user_name="S", contract_end_at=NOW,
               restricted_at=NOW, restriction_reason="retention:crm.client_accounts.bookkeeping")
    return ids


def snapshot(engine, exclude_email="subject.one@example.org"):
    out = {}
    with engine.connect() as conn:
        for t in schema.crm_metadata.sorted_tables:
            out[t.name] = sorted(tuple(r) for r in conn.execute(sa.select(t)) if exclude_email not in repr(r).lower())
    return out


@pytest.fixture
def crm(db_url):
    engine = make_engine(db_url)
    ids = seed_subject_world(engine)
    policy = sql_only_policy()
    store = SqlStore("crm", policy, engine, mask_key=KEY)
    yield engine, SubjectScanner(policy, store), ids
    engine.dispose()


def test_children_before_parents_order():
    order = collection_order(sql_only_policy(), "crm")
    assert order.index("inquiries") < order.index("contacts")
    assert order.index("applicants") < order.index("contacts")


def test_erase_removes_subject_keeps_exceptions_and_others(crm):
    engine, scanner, ids = crm
    others_before = snapshot(engine)
    subject = Subject("r1", {"email": SUBJECT.lower(), "phone": "+48500100200"})
    outcome = scanner.act([subject], "erase", dry_run=False)
    counts = outcome.per_request["r1"]
    assert counts["crm.contacts"]["exception:legal_hold_of_dependents"] == 1
    assert counts["crm.leads"] == {"exception:legal_hold": 1}
    assert counts["crm.client_accounts"] == {"exception:statutory_lock": 1}
    assert counts["crm.inquiries"] == {"deleted": 1}
    with engine.connect() as conn:
        def emails(t, col="email"):
            return [r[0] for r in conn.execute(sa.select(t.c[col]))]
        assert emails(schema.inquiries) == ["other.person@example.org"]
        assert emails(schema.applicants) == ["other.person@example.org"]
        assert emails(schema.support_tickets) == ["other.person@example.org"]
        # the held lead and its parent contact stay, restricted
        lead = conn.execute(sa.select(schema.leads)).one()
        assert lead.restricted_at is not None and lead.restriction_reason.startswith("erasure-exception:")
        contact = conn.execute(sa.select(schema.contacts).where(schema.contacts.c.id == ids["subject"])).one()
        assert contact.restricted_at is not None
        account = conn.execute(sa.select(schema.client_accounts)).one()
        assert account.restriction_reason == "retention:crm.client_accounts.bookkeeping"
    assert snapshot(engine) == others_before  # the bystander's rows byte for byte
    assert scanner.remaining([subject], "erase") == {}
    again = scanner.act([subject], "erase", dry_run=False)  # idempotent: nothing fails, nothing more
    assert all("deleted" not in c for c in again.per_request["r1"].values())


def test_dry_run_and_restrict(crm):
    engine, scanner, _ = crm
    before = snapshot(engine, exclude_email="nobody")
    subject = Subject("r2", {"email": "subject.one@example.org"})
    dry = scanner.act([subject], "erase", dry_run=True)
    assert dry.per_request["r2"]["crm.inquiries"] == {"deleted": 1}
    assert snapshot(engine, exclude_email="nobody") == before
    assert scanner.remaining([subject], "erase")  # dry run left everything

    scanner.act([subject], "restrict", dry_run=False)
    with engine.connect() as conn:
        for t in (schema.inquiries, schema.applicants, schema.support_tickets, schema.contacts, schema.leads):
            rows = conn.execute(sa.select(t.c.email, t.c.restricted_at)).all()
            assert all((r.restricted_at is not None) == (r.email == "subject.one@example.org") for r in rows)
    assert scanner.remaining([subject], "restrict") == {}
    assert snapshot(engine, exclude_email="subject.one@example.org") == \
        {k: [r for r in v if "subject.one@example.org" not in repr(r).lower()] for k, v in before.items()}


def test_many_subjects_in_one_pass(crm):
    engine, scanner, _ = crm
    subjects = [Subject("a", {"email": "subject.one@example.org"}), Subject("b", {"email": "other.person@example.org"}),
                Subject("c", {"email": "nobody@example.org"})]
    statements = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    outcome = scanner.act(subjects, "erase", dry_run=False)
    assert outcome.per_request["b"]["crm.inquiries"] == {"deleted": 1}
    assert outcome.per_request["c"] == {}
    scans = [s for s in statements if s.lstrip().upper().startswith("SELECT") and "FROM inquiries" in s
             and "ORDER BY" in s and "FOR UPDATE" not in s and " IN " not in s.upper()]
    assert len(scans) == 1  # one identity scan for all subjects of the collection, not one per subject
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schema.inquiries)).scalar() == 0


def test_registry_encrypts_and_digests(db_url):
    registry = Registry(make_engine(db_url), KEY)
    rid = registry.register(NewRequest(Identities(email=" Subject.One@Example.org ", phone="+48 500-100-200"),
                                       note="called on Monday, subject.one@example.org"))
    with registry.engine.connect() as conn:
        raw = repr(conn.execute(sa.select(requests_table)).all())
    # the phone in every spelling the registry might keep (a bare "500" also turns up in random tokens and digests)
    assert "subject.one" not in raw.lower()
    assert not any(form in raw for form in ("500-100-200", "500100200", "48 500", "+48500"))
    assert registry.identities(rid).email == "subject.one@example.org"
    row = registry.get(rid)
    assert row["email_digest"] == registry.digest("email", "SUBJECT.ONE@example.org")
    assert (row["due_at"] - row["received_at"]).days in (28, 29, 30, 31)
    assert row["status"] == "pending"
    registry.suppression.add(rid)
    assert registry.suppression.contains("email", "subject.one@EXAMPLE.org")
    assert not registry.suppression.contains("email", "someone.else@example.org")
    with pytest.raises(RetentionError, match="at least one identity"):
        registry.register(NewRequest(Identities()))
    with pytest.raises(RetentionError, match="email is not a valid") as exc:
        registry.register(NewRequest(Identities(email="not-an-address")))
    assert "not-an-address" not in str(exc.value)
    registry.engine.dispose()
