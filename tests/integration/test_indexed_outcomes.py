"""Erasure, access and rectification give byte-identical outcomes with and without ``lookup: indexed`` (ADR 0022)
on the lookalike set (accents, NFD, case and spaces, a homoglyph, plus-addressing), rows added after the backfill
included."""

from __future__ import annotations

import unicodedata

import pytest
import sqlalchemy as sa

from include.retention.connections import make_engine
from include.retention.demo import schema
from include.retention.identity import normalise
from include.retention.policy import load_policy, parse_policy
from include.retention.requests.correction import Correction
from include.retention.requests.scanner import SubjectScanner
from include.retention.stores import sql_index
from include.retention.stores.base import Subject
from include.retention.stores.sql import SqlStore
from tests.conftest import KEY, ROOT
from tests.integration.test_subject_exact import NOW, ZOE, ZOE_ACCENT, ZOE_CYRILLIC, rows, seed_lookalikes

pytestmark = pytest.mark.integration

TEXT = (ROOT / "config" / "policy.yaml").read_text()
INDEXED_TEXT = (TEXT.replace("identities: {email: email, phone: phone}",
                             "identities: {email: {column: email, lookup: indexed}, "
                             "phone: {column: phone, lookup: indexed}}")
                .replace("identities: {email: email}", "identities: {email: {column: email, lookup: indexed}}"))
SCAN = load_policy(ROOT / "config" / "policy.yaml")
INDEXED = parse_policy(INDEXED_TEXT, source="indexed-policy.yaml")
# added after the backfill (no digest yet): Zoë in NFD, upper case, spaced; a plus-address of Zoe's
LATE = [unicodedata.normalize("NFD", " ZOË.MÜLLER@example.org "), "zoe.muller+news@example.org"]


def test_the_indexed_policy_indexes_the_crm():
    indexed = [name for name in INDEXED.systems["crm"].collections
               if SqlStore("crm", INDEXED, sa.create_engine("sqlite://")).indexed_fields(name)]
    assert {"contacts", "support_tickets", "inquiries", "leads", "applicants"} <= set(indexed)


def world(db_url: str, indexed: bool) -> tuple[sa.Engine, SqlStore]:
    engine = make_engine(db_url)
    seed_lookalikes(engine)
    policy = INDEXED if indexed else SCAN
    store = SqlStore("crm", policy, engine, mask_key=KEY)
    if indexed:
        with engine.begin() as conn:
            for name, coll in policy.systems["crm"].collections.items():
                for _kind, column in store.indexed_fields(name):
                    for statement in sql_index.ddl(engine.dialect.name, coll.table, column, coll.key_columns()):
                        conn.exec_driver_sql(statement)
        store = SqlStore("crm", policy, engine, mask_key=KEY)  # reflects the digest columns
        for name in policy.systems["crm"].collections:
            if store.indexed_fields(name):
                store.backfill_index(name)
    with engine.begin() as conn:
        for email in LATE:
            cid = conn.execute(schema.contacts.insert().values(
                email=email, full_name="late", created_at=NOW, last_contact_at=NOW)
            ).inserted_primary_key[0]
            conn.execute(schema.support_tickets.insert().values(contact_id=cid, email=email, subject="late"))
    if indexed:  # the index is what finds: a stranger's candidates are the rows not digested yet, no more
        stranger = [Subject("x", {"email": "nobody@example.org"})]
        assert len({k for b in store.candidates("contacts", stranger) for k, _ in b}) == len(LATE)
    return engine, store


def run(db_url: str, indexed: bool, what: str, requested: str):
    engine, store = world(db_url, indexed)
    subject = Subject("r1", {"email": normalise("email", requested)})
    scanner = SubjectScanner(store.policy, store)
    if what == "erase":
        outcome = scanner.act([subject], "erase", dry_run=False)
        result = ({rid: dict(per) for rid, per in outcome.per_request.items()}, outcome.totals,
                  scanner.remaining([subject], "erase"))
    elif what == "access":
        result = {name: [r for batch in store.read(name, store.find(name, [subject])) for r in batch]
                  for name in scanner.identity_collections()}
    else:
        correction = Correction(store.policy, lambda _s: store, ["crm"], [subject], {"email": "new.zoe@example.org"})
        correction.check()
        outcome = correction.apply("crm", dry_run=False)
        result = ({rid: dict(per) for rid, per in outcome.per_request.items()}, correction.remaining("crm"))
    after = rows(engine)
    engine.dispose()
    return result, after


@pytest.mark.parametrize("what", ["erase", "access", "rectify"])
@pytest.mark.parametrize("requested", [ZOE, ZOE_ACCENT, ZOE_CYRILLIC, "  Zoe.Muller+News@EXAMPLE.org"])
def test_outcomes_are_identical_with_and_without_the_index(db_url, what, requested):
    scanned = run(db_url, False, what, requested)
    indexed = run(db_url, True, what, requested)
    assert indexed == scanned
    result, _after = scanned
    if what == "access":  # the comparison compared something: the person's rows were found
        assert len(result["contacts"]) >= 1 and len(result["support_tickets"]) >= 1
    else:
        assert result[0]["r1"], result
