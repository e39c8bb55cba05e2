"""References across databases (issue 15 item 6) on real servers: mailing-list subscribers in one database, CRM
notes (``on_delete: delete``) and deals (``on_delete: nullify``) pointing at them from another, both ways between
PostgreSQL and MariaDB (default collation: case- and trailing-space-insensitive), and with SQLite.

A sweep's delete takes the other database's children first, exactly (a child of ``A1`` or ``a1 `` is not a child
of ``a1``, whatever the child database's collation says), keeps a parent whose child is under legal hold (and that
child's siblings), counts the children for the brake, and records one ledger entry per system and batch. A child
database that fails mid-batch leaves the parents in place; the retry completes, every row counted once.
"""

from __future__ import annotations

import datetime as dt
import json
import textwrap
import uuid

import pytest
import sqlalchemy as sa

from include.retention.connections import ConnInfo, make_engine
from include.retention.errors import SafetyBrakeTripped
from include.retention.ledger import RunRef
from include.retention.runtime import Runtime
from include.retention.stores.base import Subject
from include.retention.sweep import run_rule
from tests.conftest import KEY, MY_ADMIN, PG_ADMIN
from tests.reliability.test_fault_injection import _backend_id, _kill

pytestmark = pytest.mark.integration

NOW = dt.datetime(2026, 11, 1)
OLD, RECENT, EDGE = NOW - dt.timedelta(days=5), NOW - dt.timedelta(hours=1), NOW - dt.timedelta(days=1)
RULE = "mailing.subscribers.gone"

POLICY = textwrap.dedent("""\
    version: 1
    defaults: {max_fraction: 1.0, batch_size: 2}
    systems:
      mailing:
        kind: sql
        connection: mailing_db
        collections:
          subscribers:
            table: subscribers
            primary_key: id
            columns: [id, email, created_at]
            identities: {email: email}
            rules: [{name: gone, start: created_at, action: delete, period: P1D}]
      crm:
        kind: sql
        connection: crm_db
        collections:
          notes:
            table: notes
            primary_key: id
            columns: [id, subscriber_id, legal_hold]
            legal_hold: [{column: legal_hold, equals: true}]
            references: [{to: mailing.subscribers, column: subscriber_id, on_delete: delete}]
          deals:
            table: deals
            primary_key: id
            columns: [id, subscriber_id]
            references: [{to: mailing.subscribers, column: subscriber_id, on_delete: nullify}]
    """)

md = sa.MetaData()
subscribers = sa.Table("subscribers", md, sa.Column("id", sa.String(20), primary_key=True),
                       sa.Column("email", sa.String(100)), sa.Column("created_at", sa.DateTime))
notes = sa.Table("notes", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                 sa.Column("subscriber_id", sa.String(20)), sa.Column("legal_hold", sa.Boolean, nullable=False))
deals = sa.Table("deals", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                 sa.Column("subscriber_id", sa.String(20)))

# a1..a5 expired (a3 has a held note), e1 exactly at the edge (kept), k1 recent
SUBSCRIBERS = [("a1", OLD), ("a2", OLD), ("a3", OLD), ("a4", OLD), ("a5", OLD), ("e1", EDGE), ("k1", RECENT)]
# (note id, subscriber_id, held): 'A1' and 'a1 ' are not a1's (MariaDB's collation would say they are)
NOTES = [(1, "a1", False), (2, "a1", False), (3, "a2", False), (4, "a3", False), (5, "a3", True), (6, "a4", False),
         (7, "a5", False), (8, "a5", False), (9, "k1", False), (10, "A1", False), (11, "a1 ", False), (12, None, False),
         (13, "e1", False)]
DEALS = [(1, "a1"), (2, "a4"), (3, "A4"), (4, "k1")]
GONE_PARENTS = {"a1", "a2", "a4", "a5"}  # a3 stays: its note 5 is held
GONE_NOTES = {1, 2, 3, 6, 7, 8}

PAIRS = [("mariadb", "postgresql"), ("postgresql", "mariadb"), ("sqlite", "mariadb"), ("postgresql", "sqlite")]


@pytest.fixture
def server_db(fresh_database, tmp_path):
    """Factory: a fresh database on ``kind``'s server (or a SQLite file), dropped after the test."""
    made = []

    def make(kind: str) -> str:
        if kind == "sqlite":
            return f"sqlite:///{tmp_path / f'{uuid.uuid4().hex[:6]}.db'}"
        name = f"rt_{uuid.uuid4().hex[:10]}"
        made.append((kind, name))
        return fresh_database(kind, name)

    yield make
    for kind, name in made:
        admin = sa.create_engine(PG_ADMIN if kind == "postgresql" else MY_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)' if kind == "postgresql"
                                 else f"DROP DATABASE IF EXISTS `{name}`"))
        admin.dispose()


@pytest.fixture(params=PAIRS, ids=[f"{p}-to-{c}" for p, c in PAIRS])
def dbs(request, server_db):
    parent_kind, child_kind = request.param
    urls = {"mailing": server_db(parent_kind), "crm": server_db(child_kind)}
    mailing, crm = make_engine(urls["mailing"]), make_engine(urls["crm"])
    subscribers.create(mailing)
    notes.create(crm)
    deals.create(crm)
    with mailing.begin() as conn:
        conn.execute(subscribers.insert(), [{"id": i, "email": f"{i}@example.org", "created_at": at}
                                            for i, at in SUBSCRIBERS])
    with crm.begin() as conn:
        conn.execute(notes.insert(), [{"id": i, "subscriber_id": s, "legal_hold": h} for i, s, h in NOTES])
        conn.execute(deals.insert(), [{"id": i, "subscriber_id": s} for i, s in DEALS])
    mailing.dispose()
    crm.dispose()
    return urls


def runtime(urls: dict[str, str], tmp_path) -> Runtime:
    from include.retention.policy import parse_policy

    conns = {"mailing_db": ConnInfo("sql", extra={"sqlalchemy_url": urls["mailing"]}),
             "crm_db": ConnInfo("sql", extra={"sqlalchemy_url": urls["crm"]}),
             "retention_ledger": ConnInfo("sqlite", host=str(tmp_path / "ledger.db"))}
    return Runtime(parse_policy(POLICY, source="cross.yaml"), conns.__getitem__, key=KEY)


def state(urls):
    with make_engine(urls["mailing"]).connect() as conn:
        parents = set(conn.execute(sa.select(subscribers.c.id)).scalars())
    crm = make_engine(urls["crm"])
    with crm.connect() as conn:
        kids = set(conn.execute(sa.select(notes.c.id)).scalars())
        linked = dict(conn.execute(sa.select(deals.c.id, deals.c.subscriber_id)).all())
    crm.dispose()
    return parents, kids, linked


def settled_per_system(ledger) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in ledger.rows():
        if r["action"] == "delete" and r["outcome"] in ("done", "reconciled"):
            out[r["system"]] = out.get(r["system"], 0) + r["count"]
    return out


def test_sweep_deletes_the_other_databases_children_first_exactly(dbs, tmp_path):
    rt = runtime(dbs, tmp_path)
    store, ledger = rt.store("mailing"), rt.ledger()
    _, _, rule = rt.policy.rule(RULE)
    plan = store.plan("subscribers", rule, NOW)
    # the brake sees the other database's notes (a3's two are counted: the plan cannot see the hold there;
    # MariaDB's collation also counts 'A1' and 'a1 ': the brake errs on the strict side)
    assert plan.eligible == {"delete": len(GONE_PARENTS)} and plan.held == 1  # a3: its note is held there
    n, total = plan.cascaded["crm.notes"]
    assert total == len(NOTES) and n >= len(GONE_NOTES) + 2
    counts = run_rule(rt.policy, RULE, store, ledger, RunRef("t", "1"), now=NOW)
    parents, kids, linked = state(dbs)
    assert parents == {i for i, _ in SUBSCRIBERS} - GONE_PARENTS
    assert kids == {i for i, *_ in NOTES} - GONE_NOTES  # 'A1', 'a1 ', k1's, the held one and its sibling stay
    assert linked == {1: None, 2: None, 3: "A4", 4: "k1"}
    assert counts["deleted"] == len(GONE_PARENTS)
    assert counts["cascaded"]["crm.notes"] == len(GONE_NOTES)
    assert counts["cascaded"]["crm.deals:nullified"] == 2
    assert counts["held"] == 1 and set(counts["cascaded"]) == {"crm.notes", "crm.deals:nullified"}
    assert settled_per_system(ledger) == {"mailing": len(GONE_PARENTS), "crm": len(GONE_NOTES)}
    crm_entries = [r for r in ledger.rows() if r["system"] == "crm" and r["outcome"] == "done"]
    assert all(r["rule_id"] == RULE and json.loads(r["details"])["cascaded_from"] == "mailing.subscribers"
               for r in crm_entries)
    assert {(r["collection"], r["action"]) for r in crm_entries} == {("crm.notes", "delete"), ("crm.deals", "nullify")}
    # the references cleared in the other database are in the ledger too, each batch announced and settled
    assert sum(r["count"] for r in crm_entries if r["action"] == "nullify") == 2
    assert ledger.verify().ok
    again = run_rule(rt.policy, RULE, store, ledger, RunRef("t", "2"), now=NOW)
    assert again["deleted"] == 0 and state(dbs)[1] == kids
    rt.close()


def test_brake_counts_the_other_databases_dependents(dbs, tmp_path):
    """One subscriber of seven expires (14 %), but 12 of the 23 notes in the other database are theirs (52 %)."""
    with make_engine(dbs["mailing"]).begin() as conn:
        conn.execute(subscribers.update().where(subscribers.c.id != "a5").values(created_at=RECENT))
    crm = make_engine(dbs["crm"])
    with crm.begin() as conn:
        conn.execute(notes.insert(), [{"id": i, "subscriber_id": "a5", "legal_hold": False} for i in range(20, 30)])
    crm.dispose()
    rt = runtime(dbs, tmp_path)
    rt.policy = rt.policy.model_copy(update={"defaults": rt.policy.defaults.model_copy(update={"max_fraction": 0.5})})
    store = rt.store("mailing")
    with pytest.raises(SafetyBrakeTripped) as info:
        run_rule(rt.policy, RULE, store, rt.ledger(), RunRef("t", "1"), now=NOW)
    assert info.value.cascaded_to == "crm.notes" and (info.value.affected, info.value.total) == (12, 23)
    parents, kids, _ = state(dbs)
    assert parents == {i for i, _ in SUBSCRIBERS} and len(kids) == 23  # nothing went, in either database
    rt.close()


def test_erasure_takes_the_other_databases_children_along(dbs, tmp_path):
    rt = runtime(dbs, tmp_path)
    store = rt.store("mailing")
    subject = Subject("r1", {"email": "a1@example.org"})
    outcome = store.erase("subscribers", store.find("subscribers", [subject]), [subject], dry_run=False)
    assert outcome.per_request["r1"]["mailing.subscribers"] == {"deleted": 1}
    assert outcome.per_request["r1"]["crm.notes"] == {"deleted_with_parent": 2}  # neither 'A1' nor 'a1 '
    assert outcome.totals["crm.notes"] == 2 and outcome.totals["crm.deals:nullified"] == 1
    parents, kids, linked = state(dbs)
    assert "a1" not in parents and kids == {i for i, *_ in NOTES} - {1, 2}
    assert linked[1] is None and linked[3] == "A4"
    held = Subject("r2", {"email": "a3@example.org"})  # a3's note is held: a3 and both notes stay, an exception
    out = store.erase("subscribers", store.find("subscribers", [held]), [held], dry_run=False)
    assert out.per_request["r2"]["mailing.subscribers"] == {"exception:legal_hold_of_dependents": 1}
    parents, kids, _ = state(dbs)
    assert "a3" in parents and {4, 5} <= kids
    assert store.remaining("subscribers", [held], "erase") == {}  # verification accepts the kept row
    rt.close()


class ChildKiller:
    """Kills the child database's own connection right after its ``nth`` DELETE on ``notes`` ran, before that
    child batch commits (as a failover or an operator would)."""

    def __init__(self, engine: sa.Engine, nth: int):
        self.engine, self.nth, self.seen, self.killed = engine, nth, 0, 0
        sa.event.listen(engine, "after_cursor_execute", self)

    def __call__(self, conn, _cursor, statement, *_args) -> None:
        if "DELETE FROM notes" not in statement:
            return
        self.seen += 1
        if self.seen == self.nth and not self.killed:
            self.killed += 1
            _kill(conn.dialect.name, _backend_id(conn), self.engine.url.database)


@pytest.mark.parametrize("pair", [("postgresql", "mariadb"), ("mariadb", "postgresql")],
                         ids=["postgresql-to-mariadb", "mariadb-to-postgresql"])
def test_child_database_failing_mid_batch_keeps_the_parents_and_the_retry_completes(pair, tmp_path, server_db):
    urls = {system: server_db(kind) for system, kind in zip(("mailing", "crm"), pair, strict=True)}
    mailing, crm = make_engine(urls["mailing"]), make_engine(urls["crm"])
    subscribers.create(mailing)
    notes.create(crm)
    deals.create(crm)
    with mailing.begin() as conn:
        conn.execute(subscribers.insert(), [{"id": f"s{i:02d}", "email": f"s{i}@example.org", "created_at": OLD}
                                            for i in range(1, 7)])
    with crm.begin() as conn:
        conn.execute(notes.insert(), [{"id": i, "subscriber_id": f"s{(i - 1) // 2 + 1:02d}", "legal_hold": False}
                                      for i in range(1, 13)])
    mailing.dispose()
    crm.dispose()

    rt = runtime(urls, tmp_path)
    store, ledger = rt.store("mailing"), rt.ledger()
    child = rt.store("crm")
    # the second child batch (parents s03, s04): the note delete has run in the child database, which then dies
    killer = ChildKiller(child.engine, 2)
    with pytest.raises(sa.exc.DBAPIError):
        run_rule(rt.policy, RULE, store, ledger, RunRef("t", "killed"), now=NOW)
    assert killer.killed == 1
    parents, kids, _ = state(urls)
    assert parents == {"s03", "s04", "s05", "s06"}  # the failed batch's parents are in place
    assert kids == set(range(5, 13))  # their notes too (the child batch rolled back)
    assert settled_per_system(ledger) == {"mailing": 2, "crm": 4}
    assert {(r["system"]) for r in ledger.open_intents()} == {"mailing", "crm"}  # both intents reported
    rt.close()

    retry = runtime(urls, tmp_path)
    counts = run_rule(retry.policy, RULE, retry.store("mailing"), retry.ledger(), RunRef("t", "retry"), now=NOW)
    assert counts["deleted"] == 4 and counts["cascaded"]["crm.notes"] == 8
    assert state(urls)[:2] == (set(), set())
    ledger = retry.ledger()
    assert settled_per_system(ledger) == {"mailing": 6, "crm": 12}  # no gap, no double count
    # the retry settled the failed batch's intents (one per system) first: re-read, rolled back, 0 rows each
    reconciled = [r for r in ledger.rows() if r["outcome"] == "reconciled"]
    assert sorted((r["system"], r["count"], json.loads(r["details"])["committed"]) for r in reconciled) == [
        ("crm", 0, False), ("mailing", 0, False)]
    final = ledger.verify()
    assert final.ok and final.unreconciled_count == 0
    retry.close()


def test_a_cascade_through_three_databases_records_each_system(tmp_path, server_db):
    """Subscribers (MariaDB) <- notes (PostgreSQL) <- attachments (SQLite): grandchildren first, one ledger entry
    per system and batch, exactly the rows of the expired subscriber."""
    urls = {"mailing": server_db("mariadb"), "crm": server_db("postgresql"), "files": server_db("sqlite")}
    attachments = sa.Table("attachments", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True,
                                                                   autoincrement=False),
                           sa.Column("note_id", sa.Integer))
    engines = {k: make_engine(u) for k, u in urls.items()}
    subscribers.create(engines["mailing"])
    notes.create(engines["crm"])
    deals.create(engines["crm"])
    attachments.create(engines["files"])
    with engines["mailing"].begin() as conn:
        conn.execute(subscribers.insert(), [{"id": "a1", "email": "a1@example.org", "created_at": OLD},
                                            {"id": "k1", "email": "k1@example.org", "created_at": RECENT}])
    with engines["crm"].begin() as conn:
        conn.execute(notes.insert(), [{"id": 1, "subscriber_id": "a1", "legal_hold": False},
                                      {"id": 2, "subscriber_id": "k1", "legal_hold": False}])
    with engines["files"].begin() as conn:
        conn.execute(attachments.insert(), [{"id": 10, "note_id": 1}, {"id": 11, "note_id": 1},
                                            {"id": 12, "note_id": 2}])
    for engine in engines.values():
        engine.dispose()
    policy = POLICY + textwrap.indent(textwrap.dedent("""\
        files:
          kind: sql
          connection: files_db
          collections:
            attachments:
              table: attachments
              primary_key: id
              columns: [id, note_id]
              references: [{to: crm.notes, column: note_id, on_delete: delete}]
        """), "  ")
    from include.retention.policy import parse_policy

    conns = {f"{k}_db": ConnInfo("sql", extra={"sqlalchemy_url": u}) for k, u in urls.items()}
    conns["retention_ledger"] = ConnInfo("sqlite", host=str(tmp_path / "ledger.db"))
    rt = Runtime(parse_policy(policy, source="three.yaml"), conns.__getitem__, key=KEY)
    counts = run_rule(rt.policy, RULE, rt.store("mailing"), rt.ledger(), RunRef("t", "1"), now=NOW)
    assert counts["deleted"] == 1
    assert counts["cascaded"]["crm.notes"] == 1 and counts["cascaded"]["files.attachments"] == 2
    with make_engine(urls["files"]).connect() as conn:
        assert set(conn.execute(sa.select(attachments.c.id)).scalars()) == {12}
    assert state(urls)[:2] == ({"k1"}, {2})
    assert settled_per_system(rt.ledger()) == {"mailing": 1, "crm": 1, "files": 2}
    assert rt.ledger().verify().ok
    rt.close()


@pytest.mark.parametrize("dbs", [("postgresql", "mariadb")], indirect=True, ids=["postgresql-to-mariadb"])
def test_erasure_whose_child_database_fails_keeps_the_parent_and_the_retry_completes(dbs, tmp_path):
    rt = runtime(dbs, tmp_path)
    store = rt.store("mailing")
    subject = Subject("r1", {"email": "a1@example.org"})
    killer = ChildKiller(rt.store("crm").engine, 1)
    with pytest.raises(sa.exc.DBAPIError):
        store.erase("subscribers", store.find("subscribers", [subject]), [subject], dry_run=False)
    assert killer.killed == 1
    parents, kids, _ = state(dbs)
    assert "a1" in parents and {1, 2} <= kids  # the child batch rolled back, the parent stayed
    rt.close()
    retry = runtime(dbs, tmp_path)
    store = retry.store("mailing")
    outcome = store.erase("subscribers", store.find("subscribers", [subject]), [subject], dry_run=False)
    assert outcome.per_request["r1"]["mailing.subscribers"] == {"deleted": 1}
    assert outcome.totals["crm.notes"] == 2
    parents, kids, _ = state(dbs)
    assert "a1" not in parents and kids == {i for i, *_ in NOTES} - {1, 2}
    retry.close()
