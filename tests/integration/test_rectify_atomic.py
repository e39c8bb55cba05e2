"""A correction is all or nothing across the SQL systems (requests/correction.py, ADR 0008), through the task bodies of
``access_request`` with three systems on three databases: the CRM on the parametrized database (SQLite, PostgreSQL,
MariaDB), the mailing list on another (another SQLite file, MariaDB, PostgreSQL) and billing on a SQLite file.

A CHECK constraint, a trigger or a unique index of the mailing list (the second system) refusing the new value at
write time leaves the CRM (whose rows were already updated in the open transaction) and billing byte for byte as they
were, the request open, the ledger with each system's intent settled ``rolled_back`` (count 0) and no ``done``
entry. With the cause removed a retry corrects exactly the person's rows in all three. A commit that fails in the
second database (the connection lost at COMMIT) leaves the first system committed and recorded, the second's intent
open and the third rolled back; the retry finishes exactly what is left.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import NamedTuple

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from include.retention.connections import make_engine
from include.retention.identity import normalise
from include.retention.ledger import Ledger
from include.retention.policy import load_policy, parse_policy
from include.retention.registry import Identities, NewRequest, Registry
from include.retention.requests.correction import Correction, CorrectionStopped
from include.retention.stores.base import Subject
from include.retention.stores.sql import SqlStore
from tests.conftest import KEY, MY_ADMIN, PG_ADMIN, airflow_uri

pytestmark = pytest.mark.integration

POLICY = """\
version: 1
defaults: {max_fraction: 1.0}
systems:
  crm:
    kind: sql
    connection: crm_db
    collections:
      customers:
        table: customers
        primary_key: [tenant, id]
        columns: [tenant, id, email, phone, note]
        identities: {email: email, phone: phone}
  mailing:
    kind: sql
    connection: mailing_db
    collections:
      subscribers:
        table: subscribers
        primary_key: id
        columns: [id, email, note]
        identities: {email: email}
  billing:
    kind: sql
    connection: billing_db
    collections:
      invoices:
        table: invoices
        primary_key: id
        columns: [id, email, amount]
        identities: {email: email}
"""

md = sa.MetaData()
customers = sa.Table("customers", md, sa.Column("tenant", sa.String(20), primary_key=True),
                     sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                     sa.Column("email", sa.String(200)), sa.Column("phone", sa.String(40)),
                     sa.Column("note", sa.String(100)))
subscribers = sa.Table("subscribers", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                       sa.Column("email", sa.String(200)), sa.Column("note", sa.String(100)))
invoices = sa.Table("invoices", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                    sa.Column("email", sa.String(200)), sa.Column("amount", sa.Integer))
TABLE_OF = {"crm": customers, "mailing": subscribers, "billing": invoices}

ANN = "Ann.Smith@Example.org"
LOOKALIKE = "ann.smith@exämple.org"  # another person (an accent)
NEW = "ann.new@example.org"
ASKED = " ann.smith@EXAMPLE.org "  # the request's spelling


class Dbs(NamedTuple):
    crm: str
    mailing: str
    billing: str


def seed(urls: Dbs) -> None:
    for system, url in urls._asdict().items():
        engine = make_engine(url)
        table = TABLE_OF[system]
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table.name}"))
        table.create(engine)
        with engine.begin() as conn:
            if system == "crm":  # the person in two tenants (a composite key), the lookalike, somebody else
                conn.execute(table.insert(), [
                    {"tenant": "t1", "id": 1, "email": ANN, "phone": "+44 20 7946 0001", "note": "a"},
                    {"tenant": "t2", "id": 1, "email": ANN.upper(), "phone": None, "note": "a2"},
                    {"tenant": "t1", "id": 2, "email": LOOKALIKE, "phone": None, "note": "l"},
                    {"tenant": "t2", "id": 2, "email": "bob@example.org", "phone": None, "note": "b"}])
            elif system == "mailing":
                conn.execute(table.insert(), [{"id": 1, "email": ANN, "note": "a"},
                                              {"id": 2, "email": LOOKALIKE, "note": "l"},
                                              {"id": 3, "email": "bob@example.org", "note": "b"}])
            else:
                conn.execute(table.insert(), [{"id": 10, "email": f"  {ANN}", "amount": 5},
                                              {"id": 11, "email": "bob@example.org", "amount": 7}])
        engine.dispose()


def dump(urls: Dbs) -> dict[str, list[tuple]]:
    """Every row of every system, as the database returns it (text compared exactly, character for character)."""
    out = {}
    for system, url in urls._asdict().items():
        engine = make_engine(url)
        table = TABLE_OF[system]
        with engine.connect() as conn:
            out[system] = sorted((tuple(r) for r in conn.execute(sa.select(table))), key=repr)
        engine.dispose()
    return out


def execute(url: str, *statements: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)
    engine.dispose()


# ---- what refuses the new value in the mailing list, and how it is removed ----------------------------------------
def add_cause(url: str, cause: str) -> None:
    dialect = sa.engine.make_url(url).get_backend_name()
    if cause == "check":
        if dialect == "sqlite":  # SQLite adds a CHECK only with the table
            recreate_sqlite_subscribers(url, f"CHECK (email <> '{NEW}')")
        else:
            execute(url, f"ALTER TABLE subscribers ADD CONSTRAINT no_new CHECK (email <> '{NEW}')")
    elif cause == "trigger":
        execute(url, *{
            "postgresql": ["CREATE FUNCTION refuse_update() RETURNS trigger AS $$ BEGIN "
                           "RAISE EXCEPTION 'refused by a trigger'; END $$ LANGUAGE plpgsql",
                           "CREATE TRIGGER refuse BEFORE UPDATE ON subscribers FOR EACH ROW "
                           "EXECUTE FUNCTION refuse_update()"],
            "mysql": ["CREATE TRIGGER refuse BEFORE UPDATE ON subscribers FOR EACH ROW "
                      "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused by a trigger'"],
            "sqlite": ["CREATE TRIGGER refuse BEFORE UPDATE ON subscribers "
                       "BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END"]}[dialect])
    else:  # the person twice in a column unique on its own (not checked in advance): the second update collides
        binary = ["ALTER TABLE subscribers MODIFY email VARCHAR(200) COLLATE utf8mb4_bin"] if dialect == "mysql" else []
        execute(url, *binary,  # MariaDB's default collation counts the lookalike as the person: no unique index
                "INSERT INTO subscribers (id, email, note) VALUES (4, ' ann.smith@example.org', 'a-old')",
                "CREATE UNIQUE INDEX one_email ON subscribers (email)")


def remove_cause(url: str, cause: str) -> None:
    dialect = sa.engine.make_url(url).get_backend_name()
    if cause == "check":
        if dialect == "sqlite":
            recreate_sqlite_subscribers(url, "")
        else:
            execute(url, "ALTER TABLE subscribers DROP CONSTRAINT no_new")
    elif cause == "trigger":
        execute(url, {"postgresql": "DROP TRIGGER refuse ON subscribers", "mysql": "DROP TRIGGER refuse",
                      "sqlite": "DROP TRIGGER refuse"}[dialect])
    else:  # the operator removes the duplicate (an old sign-up) and keeps the index
        execute(url, "DELETE FROM subscribers WHERE id = 4")


def recreate_sqlite_subscribers(url: str, check: str) -> None:
    execute(url, "ALTER TABLE subscribers RENAME TO subscribers_old",
            "CREATE TABLE subscribers (id INTEGER NOT NULL PRIMARY KEY, email VARCHAR(200), note VARCHAR(100)"
            + (f", {check}" if check else "") + ")",
            "INSERT INTO subscribers SELECT id, email, note FROM subscribers_old", "DROP TABLE subscribers_old")


# ---- the world: three databases, the ledger and registry, the task bodies --------------------------------------
def _other(kind: str) -> str:
    from tests.conftest import _fresh_database

    return _fresh_database(kind, f"rt_{uuid.uuid4().hex[:10]}")


def _drop(url: str) -> None:
    u = sa.engine.make_url(url)
    pg = u.get_backend_name() == "postgresql"
    admin = sa.create_engine(PG_ADMIN if pg else MY_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{u.database}" WITH (FORCE)' if pg
                             else f"DROP DATABASE IF EXISTS `{u.database}`"))
    admin.dispose()


@pytest.fixture
def world(db_url, tmp_path, monkeypatch):
    kind = sa.engine.make_url(db_url).get_backend_name()
    mailing = {"sqlite": f"sqlite:///{tmp_path / 'mailing.db'}"}.get(kind) or _other(
        "mariadb" if kind == "postgresql" else "postgresql")
    urls = Dbs(db_url, mailing, f"sqlite:///{tmp_path / 'billing.db'}")
    seed(urls)
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(POLICY)
    monkeypatch.setenv("RETENTION_POLICY_PATH", str(policy_file))
    monkeypatch.setenv("RETENTION_VERIFY_IDENTITY", "rectify")
    for system, url in urls._asdict().items():
        conn = (json.dumps({"conn_type": "sqlite", "host": url.removeprefix("sqlite:///")})
                if url.startswith("sqlite") else airflow_uri(url))
        monkeypatch.setenv(f"AIRFLOW_CONN_{system.upper()}_DB", conn)
    ledger_path = tmp_path / "ledger.db"
    monkeypatch.setenv("AIRFLOW_CONN_RETENTION_LEDGER", json.dumps({"conn_type": "sqlite", "host": str(ledger_path)}))
    secret = os.environ["RETENTION_HMAC_KEY"].encode()
    ledger = Ledger(make_engine(f"sqlite:///{ledger_path}"), secret)
    registry = Registry(ledger.engine, secret)
    registry.ensure_schema()
    yield {"urls": urls, "ledger": ledger, "registry": registry, "policy": load_policy(policy_file)}
    ledger.engine.dispose()
    if not mailing.startswith("sqlite"):
        _drop(mailing)


def request(world) -> str:
    registry = world["registry"]
    rid = registry.register(NewRequest(Identities({"email": ASKED}), mode="rectify"), dag_id="t", run_id="r")
    registry.start(rid)
    registry.update_details(rid, new_values={"email": NEW}, identity_check={"decision": "approved"})
    return rid


def act(rid: str) -> dict:
    from include.retention.airflow import access_tasks, erasure_tasks

    erasure_tasks.resolve([rid])
    return access_tasks.act(rid, "t", "r")


def finalize(rid: str) -> dict:
    from include.retention.airflow import access_tasks

    return access_tasks.finalize(rid, True, "t", "r")


def entries(world, rid: str) -> list[tuple]:
    return [(e["system"], e["outcome"], e["count"]) for e in world["ledger"].rows()
            if e["request_id"] == rid and e["action"] == "rectify"]


def assert_no_personal_data(*texts: str) -> None:
    for text in texts:
        low = text.lower()
        assert "example" not in low and "@" not in low and normalise("email", ANN) not in low
        assert "refused by a trigger" not in low  # the database's message is not copied (it may quote the row)


def person_changed(before: dict, after: dict) -> None:
    """Exactly the person's rows differ, and only in their e-mail, which is the new value as given."""
    changed = {s: sorted(set(after[s]) - set(before[s]), key=repr) for s in before}
    gone = {s: sorted(set(before[s]) - set(after[s]), key=repr) for s in before}
    assert [r[:2] for r in changed["crm"]] == [("t1", 1), ("t2", 1)]
    assert [r[0] for r in changed["mailing"]] == [1] and [r[0] for r in changed["billing"]] == [10]
    for system in before:
        assert len(gone[system]) == len(changed[system])
        for old, new in zip(gone[system], changed[system], strict=True):
            column = 2 if system == "crm" else 1
            assert new[column] == NEW and normalise("email", old[column]) == normalise("email", ANN)
            assert new[:column] + new[column + 1:] == old[:column] + old[column + 1:]


# ---- the tests -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cause", ["check", "trigger", "unique"])
def test_a_refusal_in_the_second_system_rolls_back_every_system_and_a_retry_finishes(world, cause):
    urls, ledger, registry = world["urls"], world["ledger"], world["registry"]
    add_cause(urls.mailing, cause)
    before = dump(urls)
    rid = request(world)
    crm_db = sa.engine.make_url(urls.crm).database
    updated = []

    def count_crm_updates(conn, cursor, statement, *args):
        if conn.engine.url.database == crm_db and statement.lstrip().upper().startswith("UPDATE"):
            updated.append(1)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", count_crm_updates)
    try:
        with pytest.raises(CorrectionStopped) as info:
            act(rid)
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", count_crm_updates)
    assert len(updated) == 2  # the CRM's two rows were updated in its open transaction before the mailing list failed
    message = str(info.value)
    assert message.startswith("rectify rolled back: mailing failed when written") and "nothing was changed" in message
    assert dump(urls) == before  # the CRM's updated rows rolled back; billing never touched
    # the ledger: each system's intent settled rolled_back with count 0; nothing done, nothing left open
    assert entries(world, rid) == [("crm", "intent", 2), ("mailing", "intent", 1 + (cause == "unique")),
                                   ("billing", "intent", 1), ("crm", "rolled_back", 0), ("mailing", "rolled_back", 0),
                                   ("billing", "rolled_back", 0)]
    assert not ledger.has_entry(request_id=rid, action="rectify", outcome="done")
    assert not ledger.open_intents(request_id=rid)
    assert ledger.verify(record=False).ok
    states = registry.systems.of(rid)
    assert {s: st["status"] for s, st in states.items()} == {"crm": "failed", "mailing": "failed", "billing": "failed"}
    assert all(st["error"].startswith("rolled back: mailing failed when written") for st in states.values())
    # the request stays open
    with pytest.raises(Exception, match="stays open"):  # Airflow's fail exception around Refused
        finalize(rid)
    assert registry.get(rid)["status"] == "incomplete"
    details = [json.dumps(e["details"], default=str) for e in ledger.rows() if e["request_id"] == rid]
    assert_no_personal_data(message, *details, *(st["error"] for st in states.values()))

    remove_cause(urls.mailing, cause)
    fixed = dump(urls)
    out = act(rid)
    assert out == {"changed": {"crm": 2, "mailing": 1, "billing": 1}}
    assert finalize(rid)["status"] == "complete"
    person_changed(fixed, dump(urls))
    assert entries(world, rid)[6:] == [("crm", "intent", 2), ("mailing", "intent", 1), ("billing", "intent", 1),
                                       ("crm", "done", 2), ("mailing", "done", 1), ("billing", "done", 1)]
    assert not ledger.open_intents(request_id=rid) and ledger.verify(record=False).ok


def test_a_commit_lost_in_the_second_database_is_finished_by_the_retry(world):
    """The mailing list's COMMIT fails (the connection lost): the CRM committed first stays corrected and recorded,
    the mailing list's intent stays open (it may or may not have committed), billing is rolled back; the retry does
    not take the new value in the mailing list for somebody else's and corrects exactly what is left."""
    urls, ledger, registry = world["urls"], world["ledger"], world["registry"]
    before = dump(urls)
    rid = request(world)
    mailing_db = sa.engine.make_url(urls.mailing).database

    def lose_commit(conn):
        if conn.engine.url.database == mailing_db:
            raise sa.exc.OperationalError("COMMIT", {}, ConnectionError("lost"))

    sa.event.listen(sa.engine.Engine, "commit", lose_commit)
    try:
        with pytest.raises(CorrectionStopped, match=r"a commit failed \(ConnectionError\)"):
            act(rid)
    finally:
        sa.event.remove(sa.engine.Engine, "commit", lose_commit)
    half = dump(urls)
    assert half["mailing"] == before["mailing"] and half["billing"] == before["billing"]
    assert half["crm"] != before["crm"]
    assert entries(world, rid) == [("crm", "intent", 2), ("mailing", "intent", 1), ("billing", "intent", 1),
                                   ("crm", "done", 2), ("billing", "rolled_back", 0)]
    assert [e["system"] for e in ledger.open_intents(request_id=rid)] == ["mailing"]
    states = registry.systems.of(rid)
    assert {s: st["status"] for s, st in states.items()} == {"crm": "recorded", "mailing": "failed",
                                                            "billing": "failed"}
    assert "whether it committed is unknown" in states["mailing"]["error"]

    # the retry: the CRM is done; the mailing list (resumed) and billing are corrected
    assert act(rid) == {"changed": {"mailing": 1, "billing": 1}}
    assert finalize(rid)["status"] == "complete"
    person_changed(before, dump(urls))
    assert entries(world, rid)[5:] == [("billing", "intent", 1), ("mailing", "done", 1), ("billing", "done", 1)]
    settled = {e["system"]: e["details"] for e in ledger.rows() if e["request_id"] == rid and e["outcome"] == "done"}
    assert '"resumed": true' in settled["mailing"] and "resumed" not in settled["billing"]
    assert not ledger.open_intents(request_id=rid) and ledger.verify(record=False).ok


def test_a_resumed_system_still_refuses_nothing_of_somebody_else(world):
    """Resuming does not let two people merge: in a system with an open intent, a record carrying the new value and
    none of the person's identities is the person's own only if the earlier attempt claimed it (its intent keeps
    the claimed items' digests); somebody else's record carrying it refuses the correction there too, nothing
    changed (tests/integration/test_rectify_resumed.py: the person's own corrected row is recognised)."""
    urls, ledger = world["urls"], world["ledger"]
    rid = request(world)
    execute(urls.mailing, f"INSERT INTO subscribers (id, email, note) VALUES (5, '{NEW}', 'someone new')")
    with pytest.raises(Exception, match="already an identity of 1 record"):
        act(rid)  # not resumed: the new value on somebody else's record refuses the correction
    before = dump(urls)
    ledger.intend(action="rectify", request_id=rid, system="mailing", count=1)  # as a lost commit leaves it
    registry = world["registry"]
    registry.systems.set([rid], "mailing", "failed", error="x")
    with pytest.raises(Exception, match="already an identity of 1 record"):
        act(rid)  # resumed: row 5 was never claimed, so it is somebody else's
    assert dump(urls) == before


# ---- property: whatever systems refuse and in whatever order, all or nothing ------------------------------------
LETTERS = st.characters(categories=("Ll", "Lu", "Nd"), max_codepoint=0x24F)
NEW_EMAILS = st.builds(lambda local, domain: f"{local}@{domain}.org", st.text(LETTERS, min_size=1, max_size=20),
                       st.text(LETTERS, min_size=1, max_size=10))


class Heard:
    def __init__(self):
        self.events: list[tuple[str, str]] = []

    def begin(self, system, planned):
        self.events.append(("begin", system))

    def done(self, system, outcome):
        self.events.append(("done", system))

    def rolled_back(self, system, why):
        self.events.append(("rolled_back", system))
        self.why = why

    def unknown(self, system, why):
        self.events.append(("unknown", system))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations(["crm", "mailing", "billing"]), refusing=st.sets(st.sampled_from(["crm", "mailing",
       "billing"])), new=NEW_EMAILS)
def test_all_or_nothing_whichever_systems_refuse(tmp_path_factory, order, refusing, new):
    assume(normalise("email", new) not in {normalise("email", e) for e in (ANN, LOOKALIKE, "bob@example.org")})
    tmp = tmp_path_factory.mktemp("atomic")
    urls = Dbs(*(f"sqlite:///{tmp / name}.db" for name in ("crm", "mailing", "billing")))
    seed(urls)
    for system in refusing:  # a trigger refusing any update of the person's table
        execute(getattr(urls, system), f"CREATE TRIGGER refuse BEFORE UPDATE ON {TABLE_OF[system].name} "
                                       "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    policy = parse_policy(POLICY, source="test-policy.yaml")
    engines = {s: make_engine(getattr(urls, s)) for s in order}
    stores = {s: SqlStore(s, policy, engines[s], mask_key=KEY) for s in order}
    c = Correction(policy, stores.__getitem__, list(order), [Subject("r1", {"email": normalise("email", ANN)})],
                   {"email": new})
    c.check()
    before, heard = dump(urls), Heard()
    if refusing:
        with pytest.raises(CorrectionStopped):
            c.run(heard, dry_run=False)
        assert dump(urls) == before
        assert heard.events == [("begin", s) for s in order] + [("rolled_back", s) for s in order]
        assert heard.why.startswith(f"{next(s for s in order if s in refusing)} failed when written")
    else:
        c.run(heard, dry_run=False)
        assert heard.events == [("begin", s) for s in order] + [("done", s) for s in order]
        after = dump(urls)
        for system in order:
            column = 2 if system == "crm" else 1
            for old, row in zip(before[system], after[system], strict=True):  # sorted by key: same order
                mine = normalise("email", old[column]) == normalise("email", ANN)
                assert row[column] == (new if mine else old[column])
                assert row[:column] + row[column + 1:] == old[:column] + old[column + 1:]
    for engine in engines.values():
        engine.dispose()


@pytest.mark.parametrize("refused", [False, True])
def test_two_systems_on_one_sqlite_file_share_one_transaction(tmp_path, refused):
    """Two engines on one SQLite file (the CRM and the mailing list in one file): one connection, one transaction
    (two would wait for each other's write lock, BEGIN IMMEDIATE); a refusal rolls both back."""
    shared = f"sqlite:///{tmp_path / 'one.db'}"
    urls = Dbs(shared, shared, f"sqlite:///{tmp_path / 'billing.db'}")
    seed(urls)
    if refused:
        execute(shared, "CREATE TRIGGER refuse BEFORE UPDATE ON subscribers BEGIN SELECT RAISE(ABORT, 'no'); END")
    policy = parse_policy(POLICY, source="test-policy.yaml")
    engines = {s: make_engine(getattr(urls, s)) for s in ("crm", "mailing", "billing")}
    stores = {s: SqlStore(s, policy, engines[s], mask_key=KEY) for s in engines}
    assert stores["crm"].database() == stores["mailing"].database() != stores["billing"].database()
    c = Correction(policy, stores.__getitem__, list(engines), [Subject("r1", {"email": normalise("email", ANN)})],
                   {"email": NEW})
    c.check()
    before, heard = dump(urls), Heard()
    if refused:
        with pytest.raises(CorrectionStopped, match="mailing failed when written"):
            c.run(heard, dry_run=False)
        assert dump(urls) == before
    else:
        c.run(heard, dry_run=False)
        person_changed(before, dump(urls))
    for engine in engines.values():
        engine.dispose()


@pytest.mark.parametrize("db_url", ["mariadb"], indirect=True)  # the mailing list on PostgreSQL
def test_a_deferred_constraint_fails_before_any_commit(world):
    """A PostgreSQL constraint checked at COMMIT (DEFERRABLE INITIALLY DEFERRED) would fail after the CRM committed:
    the correction checks it before the first commit (SET CONSTRAINTS ALL IMMEDIATE), so it rolls back everything."""
    urls, ledger = world["urls"], world["ledger"]
    execute(urls.mailing, "INSERT INTO subscribers (id, email, note) VALUES (4, ' ann.smith@example.org', 'a-old')",
            "ALTER TABLE subscribers ADD CONSTRAINT one_email UNIQUE (email) DEFERRABLE INITIALLY DEFERRED")
    before = dump(urls)
    rid = request(world)
    with pytest.raises(CorrectionStopped, match=r"mailing failed when written \(UniqueViolation 23505\)"):
        act(rid)
    assert dump(urls) == before
    assert not ledger.has_entry(request_id=rid, action="rectify", outcome="done")
    assert [o for _, o, _ in entries(world, rid)].count("rolled_back") == 3
