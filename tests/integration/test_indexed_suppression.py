"""Suppression enforcement and ``replay`` through ``lookup: indexed`` (ADR 0022) on PostgreSQL, MariaDB and SQLite:
each suppression entry keeps its index digest encrypted (``lookup_enc``); enforcement asks the digest column's index
for the entries' candidates (and the rows not digested yet) and judges them exactly as the full scan does. Entries
listed before ``lookup_enc`` existed send that kind back to the full scan until the registry fills them."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from include.retention.connections import make_engine
from include.retention.errors import RetentionError
from include.retention.identity import index_digest, normalise
from include.retention.masking import KeyRing, keyed_digest
from include.retention.policy import parse_policy
from include.retention.registry import Identities, NewRequest, Registry, suppression
from include.retention.requests.scanner import SubjectScanner
from include.retention.requests.suppression import enforce
from include.retention.stores import sql_index
from include.retention.stores.sql import SqlStore
from include.retention.stores.sql_subjects import SqlSubjects
from tests.conftest import KEY
from tests.integration.test_indexed_lookup import BASES, spellings
from tests.policy_text import crm_policy

pytestmark = pytest.mark.integration

# ``people`` is found through its index, ``twins`` (the same rows) by the full scan: the outcome must be the same.
POLICY = parse_policy(crm_policy("""\
    people:
      table: people
      primary_key: id
      columns: [id, email, note]
      identities: {email: {column: email, lookup: indexed}}
    twins:
      table: twins
      primary_key: id
      columns: [id, email, note]
      identities: {email: email}
    """), source="test-policy.yaml")
TABLES = ("people", "twins")


def fixed(value: str) -> bool:
    """``normalise`` is its own fixed point on ``value``: always, since it runs NFC after lower-casing (ADR 0022,
    "What the index does not cover"); kept as a guard of the generated values."""
    once = normalise("email", value)
    return once is None or normalise("email", once) == once


def make_tables(engine) -> dict[str, sa.Table]:
    md = sa.MetaData()
    tables = {name: sa.Table(name, md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                             sa.Column("email", sa.String(200)), sa.Column("note", sa.String(20))) for name in TABLES}
    md.drop_all(engine)
    md.create_all(engine)
    with engine.begin() as conn:
        for statement in sql_index.ddl(engine.dialect.name, "people", "email", ["id"]):
            conn.exec_driver_sql(statement)
    return tables


def both(engine, tables, statement) -> None:
    """Run ``statement(table)`` on both tables, in one transaction."""
    with engine.begin() as conn:
        for t in tables.values():
            conn.execute(statement(t))


def rows(engine, t: sa.Table) -> dict[int, str | None]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(t.c.id, t.c.email)).all())


def suppress(registry: Registry, erased: list[str], deleted: list[str]) -> None:
    """``erased``: completed erasures (a request each, then its suppression); a value no request may carry is
    suppressed as a delete would. ``deleted``: deletes (unsubscribes)."""
    rids = []
    for value in erased:
        try:
            rids.append(registry.register(NewRequest(Identities(email=value))))
        except RetentionError:  # not a valid identity (IdentityError) or none at all
            deleted = [*deleted, value]
    registry.suppression.add_many(rids)
    registry.suppression.add_values([("email", v) for v in deleted], reason="test")


@pytest.fixture
def engine(db_url):
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def no_full_read_of_people(monkeypatch):
    """``people`` may only be read through its index; ``twins`` is read in full (that is what it is for)."""
    scan = SqlSubjects._scan

    def guarded(self, collection_name, *, owned_only):
        if collection_name == "people":
            raise AssertionError("people read in full")
        return scan(self, collection_name, owned_only=owned_only)

    monkeypatch.setattr(SqlSubjects, "_scan", guarded)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stored=st.lists(spellings().filter(fixed), min_size=1, max_size=10),
       erased=st.lists(spellings(), max_size=3), deleted=st.lists(spellings(), max_size=2),
       from_stored=st.integers(0, 3), digested=st.integers(0, 10),
       changed=st.lists(st.tuples(st.integers(0, 9), spellings().filter(fixed)), max_size=2),
       replay=st.booleans())
def test_enforcement_by_index_acts_exactly_as_the_scan(engine, tmp_path, no_full_read_of_people, stored, erased,
                                                        deleted, from_stored, digested, changed, replay):
    """Rows digested by the backfill, rows inserted after it and rows the application changed after it, against
    erasures and deletes of generated spellings (some of them the stored ones): the index's candidates, judged as
    the scan judges, remove exactly the rows the scan removes, with the same count; ``people`` is never read in
    full."""
    tables = make_tables(engine)
    first = [{"id": i, "email": v, "note": "n"} for i, v in enumerate(stored[:digested])]
    if first:
        both(engine, tables, lambda t: t.insert().values(first))
    store = SqlStore("crm", POLICY, engine, mask_key=KEY)
    store.backfill_index("people")
    rest = [{"id": i, "email": v, "note": "n"} for i, v in enumerate(stored) if i >= digested]
    if rest:
        both(engine, tables, lambda t: t.insert().values(rest))
    for i, v in changed:
        both(engine, tables, lambda t, i=i, v=v: t.update().where(t.c.id == i).values(email=v))
    registry = Registry(make_engine(f"sqlite:///{tmp_path / f'registry-{uuid.uuid4().hex}.db'}"), KEY)
    suppress(registry, [*erased, *stored[:from_stored]], deleted)
    scanner = SubjectScanner(POLICY, store)

    by_index = enforce(scanner, registry, "people", only_erasures=replay)
    by_scan = enforce(scanner, registry, "twins", only_erasures=replay)
    assert by_index == by_scan
    assert rows(engine, tables["people"]) == rows(engine, tables["twins"])
    registry.engine.dispose()


def test_the_lookalikes_stay_and_only_candidates_are_read(engine, tmp_path, no_full_read_of_people, monkeypatch):
    """Zoe erased, Straße unsubscribed: every spelling of theirs goes (digested, added after the backfill, changed
    to theirs), every lookalike stays; the index reads the entries' rows and the rows not digested yet, no other."""
    tables = make_tables(engine)
    zoe = ["zoe@example.org", " ZOE@Example.org\u3000", "Zoe@example.org"]
    values = [*BASES, *zoe]
    both(engine, tables, lambda t: t.insert().values([{"id": i, "email": v, "note": "n"} for i, v in
                                                       enumerate(values)]))
    store = SqlStore("crm", POLICY, engine, mask_key=KEY)
    assert store.backfill_index("people") == len(values)
    both(engine, tables, lambda t: t.insert().values(id=100, email="STRASSE@x.de", note="new"))  # ss: not ß
    both(engine, tables, lambda t: t.insert().values(id=101, email="zoe@EXAMPLE.org", note="new"))
    both(engine, tables, lambda t: t.update().where(t.c.id == 0).values(email="straße@X.DE "))  # was zoe@
    registry = Registry(make_engine(f"sqlite:///{tmp_path / 'registry.db'}"), KEY)
    suppress(registry, ["Zoe@Example.org"], ["straße@x.de"])

    read: list[int] = []
    batches = sql_index.candidate_batches

    def recorded(*args, **kwargs):
        for batch in batches(*args, **kwargs):
            read.extend(row[0] for row in batch)
            yield batch

    monkeypatch.setattr(sql_index, "candidate_batches", recorded)
    scanner = SubjectScanner(POLICY, store)
    assert enforce(scanner, registry, "people", only_erasures=False, dry_run=True) == 6
    straße = values.index("straße@x.de")
    zoes = [i for i, v in enumerate(values) if normalise("email", v) == "zoe@example.org"]
    assert sorted(set(read)) == sorted({0, straße, *zoes, 100, 101})  # entries' rows, then the undigested ones
    assert enforce(scanner, registry, "people", only_erasures=True) == 4  # replay: the erasure only
    assert enforce(scanner, registry, "people", only_erasures=False) == 2  # the sweep: the unsubscribe too
    assert enforce(scanner, registry, "twins", only_erasures=False) == 6
    left = rows(engine, tables["people"])
    assert left == rows(engine, tables["twins"])
    assert set(left) == set(range(len(values))) - {0, straße, *zoes} | {100}
    assert "zoë@example.org" in left.values() and "zое@example.org" in left.values()  # lookalikes kept
    registry.engine.dispose()


def old_registry(engine) -> tuple[str, dict[str, str]]:
    """A registry as it was before ``lookup_enc``: an erasure's entry and a delete's, then the column dropped."""
    registry = Registry(engine, KEY)
    rid = registry.register(NewRequest(Identities(email=" Zoe@Example.org")))
    registry.suppression.add_many([rid])
    registry.suppression.add_values([("email", "gone@example.org")], reason="retention:crm.people")
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE suppression_list DROP COLUMN lookup_enc")
    assert "lookup_enc" not in {c["name"] for c in sa.inspect(engine).get_columns("suppression_list")}
    return rid, {"zoe": keyed_digest(KEY, "zoe@example.org"), "gone": keyed_digest(KEY, "gone@example.org")}


def test_old_entries_fall_back_to_the_scan_until_the_registry_fills_them(engine, monkeypatch):
    """The registry migration adds ``lookup_enc`` to an old table (NULL). While an entry that can match lacks it,
    enforcement of its kind reads in full, and acts exactly; the backfill fills the erasure's entry from its
    request (the delete's value is gone): replay then goes by index, the sweep (deletes too) still scans."""
    tables = make_tables(engine)
    values = ["zoe@example.org", "ZOE@example.org ", "zoë@example.org", "gone@example.org", "kept@example.org"]
    both(engine, tables, lambda t: t.insert().values([{"id": i, "email": v, "note": "n"} for i, v in
                                                       enumerate(values)]))
    store = SqlStore("crm", POLICY, engine, mask_key=KEY)
    store.backfill_index("people")
    _rid, digests = old_registry(engine)  # the registry in the store's own database: every engine migrates
    registry = Registry(engine, KEY)
    assert registry.suppression.without_lookup(["email"]) == 2  # the first use added the column
    assert "lookup_enc" in {c["name"] for c in sa.inspect(engine).get_columns("suppression_list")}
    with engine.connect() as conn:
        assert conn.execute(sa.select(suppression.c.lookup_enc)).scalars().all() == [None, None]

    full_reads: list[str] = []
    scan = SqlSubjects._scan

    def counted(self, collection_name, *, owned_only):
        full_reads.append(collection_name)
        return scan(self, collection_name, owned_only=owned_only)

    monkeypatch.setattr(SqlSubjects, "_scan", counted)
    scanner = SubjectScanner(POLICY, store)
    assert enforce(scanner, registry, "people", only_erasures=True, dry_run=True) == 2
    assert full_reads == ["people"]  # the fallback: an old entry has no index digest

    assert registry.suppression.backfill_lookups() == {"filled": 1, "left": 1}
    assert registry.suppression.without_lookup(["email"], erasures_only=True) == 0
    assert registry.suppression.without_lookup(["email"]) == 1  # the delete's: no value left to digest
    full_reads.clear()
    assert enforce(scanner, registry, "people", only_erasures=True) == 2  # replay: by index
    assert full_reads == []
    assert enforce(scanner, registry, "people", only_erasures=False) == 1  # the sweep: the delete, in full
    assert full_reads == ["people"]
    assert enforce(scanner, registry, "twins", only_erasures=False) == 3
    assert rows(engine, tables["people"]) == rows(engine, tables["twins"]) == {2: "zoë@example.org",
                                                                              4: "kept@example.org"}
    with engine.connect() as conn:
        stored = dict(conn.execute(sa.select(suppression.c.digest, suppression.c.lookup_enc)).all())
    assert stored[digests["gone"]] is None
    assert_no_plaintext(registry, stored[digests["zoe"]], "zoe@example.org")
    assert registry.suppression.backfill_lookups() == {"filled": 0, "left": 1}  # nothing new: idempotent


def assert_no_plaintext(registry: Registry, token: str, address: str) -> None:
    """``lookup_enc`` is ciphertext: neither the address, nor its index digest, nor a keyed digest, in any form."""
    lookup = index_digest("email", address)
    for plain in (address, lookup, keyed_digest(KEY, address), address.encode().hex()):
        assert plain not in token and plain.upper() not in token
    assert token.startswith(f"{registry.vault.kid}:")
    assert registry.vault.decrypt(token) == lookup  # what the key holder reads: the index digest, nothing more


def test_new_entries_carry_their_index_digest_encrypted(engine, tmp_path):
    registry = Registry(make_engine(f"sqlite:///{tmp_path / 'registry.db'}"), KEY)
    suppress(registry, ["Zoe@Example.org"], ["gone@example.org", "Zoe@example.org"])  # the second: listed already
    with registry.engine.connect() as conn:
        stored = dict(conn.execute(sa.select(suppression.c.digest, suppression.c.lookup_enc)).all())
    assert len(stored) == 2
    assert_no_plaintext(registry, stored[keyed_digest(KEY, "zoe@example.org")], "zoe@example.org")
    assert_no_plaintext(registry, stored[keyed_digest(KEY, "gone@example.org")], "gone@example.org")
    first = registry.vault.lookup("email", "zoe@example.org")
    assert first != registry.vault.lookup("email", "zoe@example.org")  # randomised: entries cannot be linked
    registry.engine.dispose()


OLD, NEW = "0ld-key-" + "a1" * 16, "n3w-key-" + "b2" * 16
RING = KeyRing([("k1", NEW.encode()), ("k0", OLD.encode())])
NEW_ONLY = KeyRing([("k1", NEW.encode())])


def test_key_rotation_keeps_the_index_digests_readable(engine, tmp_path, no_full_read_of_people):
    """Entries made under the old key; a new key added, then ``rotate-keys``: the erasure's index digest is
    re-encrypted with its re-digested entry, the delete's stays under the old key with its digest. Replay and the
    sweep go by index under the ring and under the new key alone (the delete's entry then matches nothing, by
    index as by scan), with the scan's outcome."""
    tables = make_tables(engine)
    values = ["zoe@example.org", " ZOE@example.org", "zoë@example.org", "gone@example.org"]
    reg_engine = make_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    old = Registry(reg_engine, OLD.encode())
    suppress(old, ["Zoe@Example.org"], ["gone@example.org"])
    Registry(reg_engine, RING).keys.rotate()
    with reg_engine.connect() as conn:
        tokens = dict(conn.execute(sa.select(suppression.c.key_id, suppression.c.lookup_enc)).all())
    assert sorted(tokens) == ["k0", "k1"]
    assert tokens["k1"].startswith("k1:") and tokens["k0"].startswith("k0:")
    for ring, removed in ((RING, 3), (NEW_ONLY, 2)):
        with engine.begin() as conn:
            for t in tables.values():
                conn.execute(t.delete())
        both(engine, tables, lambda t: t.insert().values([{"id": i, "email": v, "note": "n"} for i, v in
                                                           enumerate(values)]))
        store = SqlStore("crm", POLICY, engine, mask_key=ring)
        store.backfill_index("people")
        registry, scanner = Registry(reg_engine, ring), SubjectScanner(POLICY, store)
        assert registry.suppression.without_lookup(["email"]) == 0
        assert enforce(scanner, registry, "people", only_erasures=False) == removed
        assert enforce(scanner, registry, "twins", only_erasures=False) == removed
        assert rows(engine, tables["people"]) == rows(engine, tables["twins"])
    reg_engine.dispose()


def test_cli_fills_the_entries_the_registry_can(tmp_path, monkeypatch, capsys):
    """``index-identities --suppression-list``: the erasure's entry gets its index digest, the delete's is counted
    as left; the output names nobody."""
    import json

    from include.retention import cli

    url = f"sqlite:///{tmp_path / 'registry.db'}"
    engine = make_engine(url)
    old_registry(engine)
    monkeypatch.setenv("AIRFLOW_CONN_RETENTION_LEDGER", json.dumps({"conn_type": "sqlite",
                                                                     "extra": {"sqlalchemy_url": url}}))
    monkeypatch.setenv("RETENTION_HMAC_KEY", KEY.decode())
    monkeypatch.delenv("RETENTION_HMAC_KEYS", raising=False)
    assert cli.main(["index-identities", "--suppression-list"]) == 0
    out = capsys.readouterr().out
    assert "1 entr(y/ies) given their index digest, 1 without one" in out
    assert "zoe@" not in out.lower() and "gone@" not in out.lower()
    registry = Registry(engine, KEY)
    assert registry.suppression.without_lookup(["email"], erasures_only=True) == 0
    assert registry.suppression.without_lookup(["email"]) == 1
    engine.dispose()
