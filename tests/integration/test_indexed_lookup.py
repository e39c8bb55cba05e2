"""``lookup: indexed`` (ADR 0022): a person is found through the digest column's index, never missing a row the
full scan finds, on PostgreSQL, MariaDB (default collation) and SQLite; a missing column, index or trigger is
refused, naming it."""

from __future__ import annotations

import unicodedata

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from include.retention.connections import make_engine
from include.retention.errors import SchemaMismatch
from include.retention.identity import normalise
from include.retention.policy import parse_policy
from include.retention.stores import sql_index
from include.retention.stores.base import Subject
from include.retention.stores.sql import SqlStore
from tests.conftest import KEY
from tests.policy_text import crm_policy

pytestmark = pytest.mark.integration

POLICY = parse_policy(crm_policy("""\
    people:
      table: people
      primary_key: id
      columns: [id, email, note]
      identities: {email: {column: email, lookup: indexed}}
    """), source="test-policy.yaml")
SCAN_POLICY = parse_policy(crm_policy("""\
    people:
      table: people
      primary_key: id
      columns: [id, email, note]
      identities: {email: email}
    """), source="test-policy.yaml")

# Spellings where Python's lower(), NFC and strip() and a database's lower()/collation part ways.
BASES = [
    "zoe@example.org", "zoë@example.org", "zое@example.org",  # Latin, accent, Cyrillic "е"
    "straße@x.de", "strasse@x.de", "STRASSE@x.de",  # ß is not ss
    "İstanbul@x.tr", "istanbul@x.tr", "i̇stanbul@x.tr", "ıstanbul@x.tr",  # dotted/dotless i
    "ΟΔΟΣ@x.gr", "οδος@x.gr", "οδοσ@x.gr",  # final and medial sigma
    "ｚｏｅ@example.org", "ＺＯＥ@example.org",  # full-width forms
    "K@x.org", "k@x.org",  # Kelvin sign lowers to ASCII k
    "ﬁle@x.org", "file@x.org", "ǅ@x.org", "ǆ@x.org",  # ligature, title-case digraph
    "a+tag@x.org", "A+TAG@X.ORG",
]
CASES = [str, str.lower, str.upper, str.title, str.swapcase]
PADS = ["", " ", "\u3000", "\t", "\xa0", "\u2003"]


@st.composite
def spellings(draw) -> str:
    if draw(st.integers(0, 4)) == 0:  # anything Hypothesis can generate
        return draw(st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12))
    value = draw(st.sampled_from(CASES))(draw(st.sampled_from(BASES)))
    value = unicodedata.normalize(draw(st.sampled_from(["NFC", "NFD"])), value)
    return draw(st.sampled_from(PADS)) + value + draw(st.sampled_from(PADS))


def make_table(engine, *, ddl: bool = True, skip: tuple[str, ...] = ()) -> sa.Table:
    md = sa.MetaData()
    t = sa.Table("people", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                 sa.Column("email", sa.String(200)), sa.Column("note", sa.String(20)))
    md.drop_all(engine)
    md.create_all(engine)
    if ddl:
        with engine.begin() as conn:
            for statement in sql_index.ddl(engine.dialect.name, "people", "email", ["id"]):
                if not any(s in statement for s in skip):
                    conn.exec_driver_sql(statement)
    return t


@pytest.fixture
def engine(db_url):
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def keys(store: SqlStore, subjects: list[Subject], exhaustive: bool) -> dict:
    return dict(store.find("people", subjects, exhaustive=exhaustive))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stored=st.lists(spellings(), min_size=1, max_size=12), asked=st.lists(spellings(), min_size=1, max_size=4),
       digested=st.integers(0, 12), changed=st.lists(st.tuples(st.integers(0, 11), spellings()), max_size=3),
       accent=st.booleans())
def test_indexed_find_returns_exactly_the_full_scans_keys(engine, stored, asked, digested, changed, accent):
    """Rows digested by the backfill, rows inserted after it and rows the application changed after it (the
    triggers clear their digests): the index's candidates, judged by Python, are the full scan's claims."""
    t = make_table(engine) if "people" not in sa.inspect(engine).get_table_names() else None
    t = t if t is not None else sa.Table("people", sa.MetaData(), autoload_with=engine)
    with engine.begin() as conn:
        conn.execute(t.delete())
        first = [{"id": i, "email": v, "note": "n"} for i, v in enumerate(stored[:digested])]
        first += [{"id": 100, "email": "zoe@example.org ", "note": "n"}] if accent else []
        if first:
            conn.execute(t.insert(), first)
    store = SqlStore("crm", POLICY, engine, mask_key=KEY)
    store.backfill_index("people")
    with engine.begin() as conn:  # after the backfill: new rows, and the application's changes
        rest = [{"id": i, "email": v, "note": "n"} for i, v in enumerate(stored) if i >= digested]
        if rest:
            conn.execute(t.insert(), rest)
        for i, v in changed:
            conn.execute(t.update().where(t.c.id == i).values(email=v))
        if accent:  # a change a case- and accent-insensitive comparison would not see
            conn.execute(t.update().where(t.c.id == 100).values(email="zoë@example.org"))
    subjects = [Subject(f"r{i}", {"email": n}) for i, v in enumerate(asked) if (n := normalise("email", v))]
    subjects += [Subject(f"s{i}", {"email": n}) for i, v in enumerate(stored[:3]) if (n := normalise("email", v))]
    subjects += [Subject(f"c{i}", {"email": n}) for i, (_, v) in enumerate(changed) if (n := normalise("email", v))]
    subjects.append(Subject("accent", {"email": "zoë@example.org"}))
    indexed = keys(store, subjects, exhaustive=False)
    assert indexed == keys(store, subjects, exhaustive=True)
    assert indexed == keys(SqlStore("crm", SCAN_POLICY, engine, mask_key=KEY), subjects, exhaustive=False)


def test_the_index_narrows_and_the_triggers_clear_stale_digests(engine):
    t = make_table(engine)
    values = ["zoe@example.org", " ZOE@Example.org", "zoë@example.org", "zое@example.org", "other@example.org"]
    with engine.begin() as conn:
        conn.execute(t.insert(), [{"id": i, "email": v, "note": "n"} for i, v in enumerate(values)])
    store = SqlStore("crm", POLICY, engine, mask_key=KEY)
    assert store.backfill_index("people") == 5
    zoe = [Subject("r1", {"email": "zoe@example.org"})]
    candidates = [k for batch in store.candidates("people", zoe) for k, _ in batch]
    assert sorted(candidates) == [0, 1]  # read through the index: the lookalikes are not even read
    with engine.begin() as conn:  # the application renames a lookalike to Zoe's address, and edits a note
        conn.execute(t.update().where(t.c.id == 3).values(email="Zoe@example.org "))
        conn.execute(t.update().where(t.c.id == 4).values(note="m"))
        digests = dict(conn.execute(sa.text("SELECT id, email_ndigest FROM people")).all())
    assert digests[3] is None  # cleared by the trigger: a candidate of every request until digested again
    assert digests[4] == sql_index.value_digest("email", "other@example.org")  # unchanged value keeps its digest
    assert dict(store.find("people", zoe)) == {0: {"r1"}, 1: {"r1"}, 3: {"r1"}}
    assert store.backfill_index("people") == 1
    assert sorted(k for batch in store.candidates("people", zoe) for k, _ in batch) == [0, 1, 3]


def test_rows_not_digested_yet_come_in_bounded_batches_while_the_caller_writes(engine, monkeypatch):
    """Before a backfill every row is a candidate: they are read in batches of ``NULL_BATCH`` (streamed through a
    server-side cursor on PostgreSQL and MariaDB), never the whole table at once, and a caller erasing between
    batches (suppression enforcement does) neither waits on the read nor loses a row."""
    monkeypatch.setattr(sql_index, "NULL_BATCH", 7)
    t = make_table(engine)
    values = [f"p{i}@example.org" for i in range(40)] + ["zoe@example.org", " ZOE@example.org", "zoë@example.org"]
    with engine.begin() as conn:
        conn.execute(t.insert(), [{"id": i, "email": v, "note": "n"} for i, v in enumerate(values)])
    store = SqlStore("crm", POLICY, engine, mask_key=KEY)
    zoe = [Subject("r1", {"email": "zoe@example.org"})]
    batches = [batch for batch in store.candidates("people", zoe)]
    assert max(len(b) for b in batches) <= 7 and len(batches) >= 43 // 7
    assert sorted(k for b in batches for k, _ in b) == list(range(43))  # nothing digested: every row, once
    assert dict(store.find("people", zoe)) == {40: {"r1"}, 41: {"r1"}}
    seen = []
    for batch in store.index_candidates("people", {}, undigested=True):  # erase while the read is open
        seen += [k for k, _ in batch]
        with engine.begin() as conn:
            conn.execute(t.delete().where(t.c.id.in_([k for k, _ in batch if k % 2 == 0])))
    assert sorted(seen) == list(range(43))
    with engine.connect() as conn:
        assert sorted(conn.execute(sa.select(t.c.id)).scalars()) == [i for i in range(43) if i % 2]


@pytest.mark.parametrize("skip, missing", [
    (("ADD COLUMN", "CREATE INDEX", "TRIGGER", "FUNCTION"), "column 'email_ndigest'"),
    (("CREATE INDEX",), "an index leading with 'email_ndigest'"),
    (("CREATE TRIGGER",), "trigger 'rtn_people_email_"),
])
def test_a_missing_column_index_or_trigger_is_refused_naming_it(engine, skip, missing):
    t = make_table(engine, skip=skip)
    with engine.begin() as conn:
        conn.execute(t.insert().values(id=1, email="zoe@example.org", note="n"))
    store = SqlStore("crm", POLICY, engine, mask_key=KEY)
    with pytest.raises(SchemaMismatch) as err:
        store.find("people", [Subject("r1", {"email": "zoe@example.org"})])
    assert "crm.people.email: 'lookup: indexed'" in str(err.value) and missing in str(err.value)
    assert "index-identities --ddl" in str(err.value) and "zoe@" not in str(err.value)
    with pytest.raises(SchemaMismatch):
        SqlStore("crm", POLICY, engine, mask_key=KEY).backfill_index("people")
    with engine.connect() as conn:  # nothing was written
        assert conn.execute(sa.select(t.c.email)).scalars().all() == ["zoe@example.org"]


def bypass_triggers(engine, statements: list[tuple[str, dict]]) -> None:
    """Run ``statements`` as a bulk loader with triggers off would: the triggers dropped, then created again from
    the DDL (``store.check`` passes again afterwards)."""
    names = sql_index.object_names("people", "email")
    dialect = engine.dialect.name
    with engine.begin() as conn:
        if dialect == "postgresql":
            conn.exec_driver_sql(f'DROP TRIGGER "{names["update"]}" ON people')
        else:
            for trigger in (names["insert"], names["update"]):
                conn.exec_driver_sql(f"DROP TRIGGER {trigger}")
        for statement, binds in statements:
            conn.execute(sa.text(statement), binds)
        for statement in sql_index.ddl(dialect, "people", "email", ["id"]):
            if "CREATE TRIGGER" in statement:
                conn.exec_driver_sql(statement)


def test_a_row_the_index_cannot_find_is_found_by_the_independent_check(engine, tmp_path):
    """Zoe's erasure completes; later a row of hers is loaded with the triggers off (its digest: somebody else's)
    and another row is changed to her address with a digest written by hand in the same statement. The index
    cannot find either: the request's own verification, which finds her as the request did, sees nothing. The
    retention sweep's independent check reads every identity, finds both rows through the suppression list's
    digest of the erasure, reopens the request and records it, naming nobody."""
    from include.retention.erasure_check import REOPEN_ERROR, check_system, record
    from include.retention.ledger import Ledger, RunRef
    from include.retention.registry import Identities, NewRequest, Registry
    from include.retention.requests.scanner import SubjectScanner

    t = make_table(engine)
    with engine.begin() as conn:
        conn.execute(t.insert(), [{"id": 1, "email": "zoe@example.org", "note": "n"},
                                  {"id": 2, "email": "other@example.org", "note": "n"},
                                  {"id": 3, "email": "zoë@example.org", "note": "n"}])
    store = SqlStore("crm", POLICY, engine, mask_key=KEY)
    store.backfill_index("people")
    books = make_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    registry, ledger = Registry(books, KEY), Ledger(books, KEY)
    rid = registry.register(NewRequest(Identities(email=" Zoe@Example.org")))
    zoe = [Subject(rid, {"email": "zoe@example.org"})]
    scanner = SubjectScanner(POLICY, store)
    assert scanner.act(zoe, "erase", dry_run=False).per_request[rid] == {"crm.people": {"deleted": 1}}
    assert scanner.remaining(zoe, "erase") == {}
    registry.suppression.add_many([rid])
    registry.finish(rid, "complete")

    checked, found = check_system(store, registry)  # nothing of hers is left: the check finds nothing
    assert (checked, found) == (["crm.people"], {})

    wrong = sql_index.value_digest("email", "somebody.else@example.org")
    bypass_triggers(engine, [("INSERT INTO people (id, email, note, email_ndigest) VALUES (4, :e, 'n', :d)",
                              {"e": unicodedata.normalize("NFD", "  ZOE@EXAMPLE.ORG\u3000"), "d": wrong})])
    with engine.begin() as conn:  # value and digest in one statement: the triggers keep the (wrong) digest
        conn.execute(sa.text("UPDATE people SET email = :e, email_ndigest = :d WHERE id = 2"),
                     {"e": "Zoe@example.org ", "d": wrong})
    store = SqlStore("crm", POLICY, engine, mask_key=KEY)
    store.check("people")  # column, index and triggers are all there again
    assert dict(store.find("people", zoe)) == {}  # the index cannot find them ...
    assert scanner.remaining(zoe, "erase") == {}  # ... so the request's own verification cannot either
    assert dict(store.find("people", zoe, exhaustive=True)) == {2: {rid}, 4: {rid}}

    checked, found = check_system(store, registry)
    assert found == {rid: {"crm.people": 2}}  # Zoë (an accent) is somebody else: not found
    run = RunRef("retention_sweep", "scheduled__1")
    assert record(registry, ledger, run, "crm", checked, found, dry_run=False) == [rid]
    request = registry.get(rid)
    assert (request["status"], request["last_error"], request["completed_at"]) == ("incomplete", REOPEN_ERROR, None)
    assert request["dag_id"] is None  # no run owns it: the intake takes it again
    assert registry.systems.of(rid)["crm"]["status"] == "failed"
    entries = [(r["action"], r["outcome"], r["request_id"], r["count"]) for r in ledger.rows()]
    assert entries == [("erasure_check", "found_again", None, 2), ("erasure_check", "reopened", rid, 2)]
    assert ledger.verify().ok
    assert "zoe" not in repr(list(ledger.rows())).lower()
    assert registry.reopen([rid], "crm", REOPEN_ERROR) == []  # reopened once: an open request stays as it is

    # a DBA clears the wrong digests and runs the backfill: the reopened request, run again, erases both rows
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE people SET email_ndigest = NULL WHERE id IN (2, 4)"))
    assert store.backfill_index("people") == 2
    assert scanner.act(zoe, "erase", dry_run=False).per_request[rid] == {"crm.people": {"deleted": 2}}
    assert check_system(store, registry)[1] == {}
    with engine.connect() as conn:
        assert conn.execute(sa.select(t.c.id)).scalars().all() == [3]
    books.dispose()


def test_cli_prints_the_ddl_for_the_systems_database_and_backfills(tmp_path, monkeypatch, capsys):
    """``index-identities``: the DDL of the connection's own engine (run here as a DBA would), then the backfill."""
    import json

    from include.retention import cli

    db = tmp_path / "crm.db"
    policy = tmp_path / "policy.yaml"
    policy.write_text(crm_policy("""\
        people:
          table: people
          primary_key: id
          columns: [id, email, note]
          identities: {email: {column: email, lookup: indexed}}
        """))
    monkeypatch.setenv("AIRFLOW_CONN_CRM_DB", json.dumps({"conn_type": "sqlite", "host": str(db)}))
    engine = make_engine(f"sqlite:///{db}")
    t = make_table(engine, ddl=False)
    with engine.begin() as conn:
        conn.execute(t.insert(), [{"id": 1, "email": " Zoe@Example.org", "note": "n"},
                                  {"id": 2, "email": None, "note": "n"}])
    assert cli.main(["index-identities", "--policy", str(policy), "--backfill"]) == 2  # nothing created yet
    assert "crm.people.email: 'lookup: indexed' but table 'people' lacks column 'email_ndigest'" in \
        capsys.readouterr().err
    assert cli.main(["index-identities", "--policy", str(policy)]) == 0
    out = capsys.readouterr().out
    assert "(sqlite)" in out
    with engine.begin() as conn:  # nothing was run by the product: the DBA runs what it printed
        assert "email_ndigest" not in [c["name"] for c in sa.inspect(conn).get_columns("people")]
        for chunk in out.split(";\n"):
            statement = "\n".join(line for line in chunk.splitlines() if not line.startswith("--"))
            if statement.strip():
                conn.exec_driver_sql(statement)
    assert cli.main(["index-identities", "--policy", str(policy), "--backfill"]) == 0
    assert "crm.people: 2 row(s) digested" in capsys.readouterr().out
    with engine.connect() as conn:
        digests = dict(conn.execute(sa.text("SELECT id, email_ndigest FROM people")).all())
    assert digests == {1: sql_index.value_digest("email", "zoe@example.org"), 2: ""}
    engine.dispose()
