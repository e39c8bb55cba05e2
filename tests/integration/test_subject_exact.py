"""A person, not a table: identity equality is Python's on every database (MariaDB with its *default*
collation included), exceptions complete, and receipt counts equal what left the stores."""

from __future__ import annotations

import datetime as dt
import unicodedata

import pytest
import sqlalchemy as sa

from include.retention.connections import make_engine
from include.retention.demo import schema
from include.retention.policy import load_policy, parse_policy
from include.retention.requests.scanner import SubjectScanner
from include.retention.stores.base import Subject
from include.retention.stores.sql import SqlStore
from tests.conftest import KEY, ROOT, fresh_tables
from tests.policy_text import crm_policy

pytestmark = pytest.mark.integration

NOW = dt.datetime(2026, 11, 1)
ZOE = "zoe.muller@example.org"
ZOE_SPACED = "  ZOE.Muller@Example.ORG "  # the same person: case and surrounding spaces do not matter
ZOE_ACCENT = "zoë.müller@example.org"  # another person: accents matter
ZOE_ACCENT_NFD = unicodedata.normalize("NFD", ZOE_ACCENT)  # ... and is the same as its decomposed spelling
ZOE_CYRILLIC = "zoe.mullеr@example.org"  # another person: a Cyrillic "е" is not a Latin "e"
OTHER = "other.person@example.org"


def seed_lookalikes(engine) -> dict[str, int]:
    schema.crm_metadata.drop_all(engine)
    schema.crm_metadata.create_all(engine)
    ids = {}
    with engine.begin() as conn:
        for label, email in (("zoe", ZOE), ("zoe_spaced", ZOE_SPACED), ("accent", ZOE_ACCENT),
                             ("accent_nfd", ZOE_ACCENT_NFD), ("cyrillic", ZOE_CYRILLIC), ("other", OTHER)):
            cid = conn.execute(schema.contacts.insert().values(
                email=email, full_name=label, created_at=NOW, last_contact_at=NOW)).inserted_primary_key[0]
            ids[label] = cid
            # each person's ticket, and an inquiry filed under the contact with a blank e-mail (a dependent
            # reached only through the contact: it goes with its parent)
            conn.execute(schema.support_tickets.insert().values(contact_id=cid, email=email, subject=f"t {label}"))
            conn.execute(schema.inquiries.insert().values(contact_id=cid, email="", message=f"m {label}",
                                                          last_contact_at=NOW))
    return ids


def rows(engine) -> dict[str, list[tuple]]:
    out = {}
    with engine.connect() as conn:
        for t in schema.crm_metadata.sorted_tables:
            out[t.name] = sorted((tuple(r) for r in conn.execute(sa.select(t))), key=repr)
    return out


def count_all(engine) -> int:
    return sum(len(v) for v in rows(engine).values())


def owned_by(snapshot: dict[str, list[tuple]], contact_ids: set[int]) -> dict[str, list[tuple]]:
    """Rows of ``snapshot`` that are not the given contacts' (their contact row and rows pointing at it)."""
    out = {}
    for name, table_rows in snapshot.items():
        t = schema.crm_metadata.tables[name]
        if name == "contacts":
            keep = [r for r in table_rows if r[0] not in contact_ids]
        elif "contact_id" in t.c:
            i = list(t.c.keys()).index("contact_id")
            keep = [r for r in table_rows if r[i] not in contact_ids]
        else:
            keep = table_rows
        out[name] = keep
    return out


@pytest.fixture
def crm(db_url):
    engine = make_engine(db_url)
    ids = seed_lookalikes(engine)
    policy = load_policy(ROOT / "config" / "policy.yaml")
    store = SqlStore("crm", policy, engine, mask_key=KEY)
    yield engine, SubjectScanner(policy, store), ids
    engine.dispose()


def test_mariadb_database_uses_its_default_collation(fresh_database):
    """The MariaDB databases of these tests are created without COLLATE (see tests/conftest.py)."""
    engine = make_engine(fresh_database("mariadb", "rt_default_collation"))
    with engine.connect() as conn:
        collation = conn.execute(sa.text("SELECT @@collation_database")).scalar()
        # the collation that widened the old match: accent- and case-insensitive
        assert conn.execute(sa.text("SELECT :a = :b"), {"a": ZOE, "b": ZOE_ACCENT}).scalar() == 1
    engine.dispose()
    assert collation.endswith("_ci")


@pytest.mark.parametrize("requested, gone, label", [
    (ZOE, {"zoe", "zoe_spaced"}, "case and spaces are the same person"),
    (ZOE_ACCENT, {"accent", "accent_nfd"}, "accents make another person; NFC = NFD"),
    (ZOE_CYRILLIC, {"cyrillic"}, "a homoglyph is another person"),
])
def test_erasing_one_leaves_every_lookalike_byte_for_byte(crm, requested, gone, label):
    engine, scanner, ids = crm
    before = rows(engine)
    total_before = count_all(engine)
    subject = Subject("r1", {"email": unicodedata.normalize("NFC", requested.strip().lower())})
    outcome = scanner.act([subject], "erase", dry_run=False)
    gone_ids = {ids[g] for g in gone}
    after = rows(engine)
    assert after == owned_by(before, gone_ids), label
    counts = outcome.per_request["r1"]
    assert counts["crm.contacts"] == {"deleted": len(gone)}
    assert counts["crm.support_tickets"] == {"deleted": len(gone)}
    assert counts["crm.inquiries"] == {"deleted_with_parent": len(gone)}
    # the receipt's counts are what left the stores, dependents included
    reported = sum(n for per in counts.values() for k, n in per.items() if k in ("deleted", "deleted_with_parent"))
    assert reported == total_before - count_all(engine) == 3 * len(gone)
    assert outcome.totals == {"crm.inquiries": len(gone)}
    assert scanner.remaining([subject], "erase") == {}


def test_many_subjects_claim_only_their_own_rows(crm):
    engine, scanner, ids = crm
    before = rows(engine)
    subjects = [Subject("a", {"email": ZOE}), Subject("b", {"email": ZOE_CYRILLIC})]
    outcome = scanner.act(subjects, "erase", dry_run=False)
    assert outcome.per_request["a"]["crm.contacts"]["deleted"] == 2
    assert outcome.per_request["b"]["crm.contacts"]["deleted"] == 1
    assert rows(engine) == owned_by(before, {ids["zoe"], ids["zoe_spaced"], ids["cyrillic"]})


# ---- exceptions -------------------------------------------------------------------------------

EXCEPTIONS_POLICY = crm_policy("""\
          people:
            table: people
            primary_key: id
            columns: [id, email, legal_hold, restricted_at, restriction_reason]
            identities: {email: email}
            lock: {at: restricted_at, reason: restriction_reason}
            legal_hold: [{column: legal_hold, equals: true}]
          notes:            # no lock marker: a held note can only be kept, not restricted
            table: notes
            primary_key: id
            columns: [id, email, body, legal_hold]
            identities: {email: email}
            legal_hold: [{column: legal_hold, equals: true}]
    """)

md = sa.MetaData()
people = sa.Table("people", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                  sa.Column("email", sa.String(254)), sa.Column("legal_hold", sa.Boolean, nullable=False),
                  sa.Column("restricted_at", sa.DateTime), sa.Column("restriction_reason", sa.String(200)))
notes = sa.Table("notes", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                 sa.Column("email", sa.String(254)), sa.Column("body", sa.String(100)),
                 sa.Column("legal_hold", sa.Boolean, nullable=False))


def test_exceptions_complete_and_own_restriction_is_lifted(db_url):
    engine = fresh_tables(db_url, md)
    with engine.begin() as conn:
        conn.execute(people.insert(), [
            # (every dict with every key: an executemany takes its columns from the first row)
            {"id": 1, "email": ZOE, "legal_hold": False, "restricted_at": None, "restriction_reason": None},
            {"id": 2, "email": ZOE, "legal_hold": False, "restricted_at": NOW,
             "restriction_reason": "retention:crm.people.contract_end"},  # a sweep's statutory lock
            {"id": 3, "email": ZOE, "legal_hold": False, "restricted_at": NOW,
             "restriction_reason": "litigation 2026-17"},  # locked for somebody else's reason
            {"id": 4, "email": ZOE, "legal_hold": True, "restricted_at": None, "restriction_reason": None},
            {"id": 5, "email": OTHER, "legal_hold": False, "restricted_at": None, "restriction_reason": None},
        ])
        conn.execute(notes.insert(), [
            {"id": 1, "email": ZOE, "body": "held, and no lock column", "legal_hold": True},
            {"id": 2, "email": ZOE, "body": "goes", "legal_hold": False},
            {"id": 3, "email": ZOE_ACCENT, "body": "someone else", "legal_hold": False},
        ])
    policy = parse_policy(EXCEPTIONS_POLICY, source="exceptions.yaml")
    scanner = SubjectScanner(policy, SqlStore("crm", policy, engine, mask_key=KEY))
    subject = Subject("r1", {"email": ZOE})
    # row 1 restricted by this subject earlier (row 4, held, is restricted too; its lock is removed again so
    # that the legal hold alone keeps it)
    restricted = scanner.act([subject], "restrict", dry_run=False)
    assert restricted.per_request["r1"]["crm.people"] == {"restricted": 2, "already_restricted": 2}
    with engine.begin() as conn:
        conn.execute(people.update().where(people.c.id == 4).values(restricted_at=None, restriction_reason=None))
        own_reason = conn.execute(sa.select(people.c.restriction_reason).where(people.c.id == 1)).scalar()
    assert own_reason.startswith("restriction:") and "zoe" not in own_reason

    outcome = scanner.act([subject], "erase", dry_run=False)
    assert outcome.per_request["r1"] == {
        "crm.people": {"deleted": 1, "lifted": 1, "exception:statutory_lock": 1,
                       "exception:locked_for_another_reason": 1, "exception:legal_hold": 1},
        "crm.notes": {"deleted": 1, "exception:legal_hold": 1},
    }
    with engine.connect() as conn:
        assert sorted(conn.execute(sa.select(people.c.id)).scalars()) == [2, 3, 4, 5]
        assert sorted(conn.execute(sa.select(notes.c.id)).scalars()) == [1, 3]
        reasons = dict(conn.execute(sa.select(people.c.id, people.c.restriction_reason)).all())
    assert reasons[2] == "retention:crm.people.contract_end" and reasons[3] == "litigation 2026-17"
    assert reasons[4].startswith("erasure-exception:")  # kept under hold, and restricted
    # every kept row is an exception, not "data left": the request completes
    assert scanner.remaining([subject], "erase") == {}
    engine.dispose()


def test_restriction_without_lock_marker_is_reported_left(db_url):
    engine = fresh_tables(db_url, md)
    with engine.begin() as conn:
        conn.execute(notes.insert(), [{"id": 1, "email": ZOE, "body": "x", "legal_hold": False}])
    policy = parse_policy(EXCEPTIONS_POLICY, source="exceptions.yaml")
    scanner = SubjectScanner(policy, SqlStore("crm", policy, engine, mask_key=KEY))
    outcome = scanner.act([Subject("r1", {"email": ZOE})], "restrict", dry_run=False)
    assert outcome.per_request["r1"]["crm.notes"] == {"not_restrictable": 1}
    assert scanner.remaining([Subject("r1", {"email": ZOE})], "restrict") == {"r1": {"crm.notes": 1}}
    engine.dispose()


def test_admin_email_is_masked_not_the_users_account(db_url):
    """An identity field with ``erase: mask``: the row mentions the person but is someone else's."""
    engine = fresh_tables(db_url, schema.crm_metadata)
    with engine.begin() as conn:
        conn.execute(schema.client_accounts.insert(), [
            {"id": 1, "org_name": "Org", "admin_email": "Admin@Org.example", "user_email": "user1@org.example",
             "user_name": "U1", "customer_ref": None},
            {"id": 2, "org_name": "Org", "admin_email": "admin@org.example", "user_email": "user2@org.example",
             "user_name": "U2", "customer_ref": "C-2"},
            {"id": 3, "org_name": "Other", "admin_email": "boss@other.example", "user_email": "admin@org.example",
             "user_name": "The admin's own account", "customer_ref": None},
        ])
    policy = load_policy(ROOT / "config" / "policy.yaml")
    scanner = SubjectScanner(policy, SqlStore("crm", policy, engine, mask_key=KEY))
    outcome = scanner.act([Subject("r1", {"email": "admin@org.example"})], "erase", dry_run=False)
    assert outcome.per_request["r1"]["crm.client_accounts"] == {"masked": 2, "deleted": 1}
    with engine.connect() as conn:
        accounts = {r.id: (r.admin_email, r.user_email) for r in conn.execute(sa.select(schema.client_accounts))}
    assert accounts == {1: ("erased", "user1@org.example"), 2: ("erased", "user2@org.example")}
    assert scanner.remaining([Subject("r1", {"email": "admin@org.example"})], "erase") == {}
    by_ref = scanner.act([Subject("r2", {"customer_ref": "C-2"})], "erase", dry_run=False)
    assert by_ref.per_request["r2"]["crm.client_accounts"] == {"deleted": 1}
    engine.dispose()
