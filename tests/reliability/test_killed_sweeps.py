"""A sweep process SIGKILLed at a chosen instant of a batch, then the rule's next run: it settles the intent the
killed run left open by re-reading the batch (rolled back: 0; committed: its real count), so that ``verify``
shows no open intent and the ledger's totals (rows deleted, rows that went along, references nullified in
another database) equal what changed in the stores. Also: two sweeps of one rule at once leave each other's
intents alone and count ``kept`` from the table; a run's lease outlives nothing but its process.

The kill comes from inside the sweep process (``os.kill(getpid(), SIGKILL)`` in a SQLAlchemy event hook), at
one of two instants of the ``nth`` batch: ``before_commit`` (its statements ran and its intent is written, the
store's commit has not happened) or ``after_commit`` (the batch is durable, its outcome is not written yet).
The ledger lives on the store's kind of server (PostgreSQL, MariaDB: the run leases are session locks there)
or in a SQLite file (an ``flock``ed lease file)."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest
import sqlalchemy as sa

from include.retention.connections import make_engine
from include.retention.intents import RunLease, lease_alive, unseal
from include.retention.ledger import Ledger, RunRef
from include.retention.policy import parse_policy
from include.retention.stores.sql import SqlStore
from include.retention.sweep import LedgerRecorder, run_rule
from tests.conftest import KEY, ROOT
from tests.policy_text import crm_policy
from tests.reliability.test_fault_injection import (
    _DEFAULTS,
    _NOTES,
    _PEOPLE,
    NOW,
    POLICIES,
    RULE,
    arrange,
    cascaded_total,
    count,
    notes,
    people,
    reconciled,
    settled,
)

# people, their notes (deleted with them) and links (the reference cleared), all in one database
links = sa.Table("links", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                 sa.Column("person_id", sa.Integer))
_LINKS = """\
          links:
            table: links
            primary_key: id
            columns: [id, person_id]
            references: [{to: crm.people, column: person_id, on_delete: nullify}]
"""
SAME_POLICY = parse_policy(crm_policy(_PEOPLE + _NOTES + _LINKS, defaults=_DEFAULTS), source="killed.yaml")
# cascade: rows locked, keyset walk, notes deleted and links cleared in the batch's transaction; plain: one statement
# per batch (PostgreSQL heap blocks, MariaDB DELETE ... ORDER BY ... LIMIT ... RETURNING; SQLite: the keyset walk)
LAYOUTS = {"cascade": SAME_POLICY, "plain": POLICIES["plain"]}


def arrange_same(engine: sa.Engine, rows: int) -> None:
    arrange(engine, rows)
    links.drop(engine, checkfirst=True)
    links.create(engine)
    with engine.begin() as conn:  # a link to each person and 10 to nobody
        conn.execute(links.insert(), [{"id": i, "person_id": i if i <= rows else None} for i in range(1, rows + 11)])


def linked(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).where(links.c.person_id.is_not(None))).scalar()

pytestmark = pytest.mark.integration

# Arms itself at the ``nth`` statement matching ``MATCH`` on the engine of system ``SYSTEM`` and kills its own
# process at the batch's commit (before the DBAPI commit) or right after it (the connection going back to the pool).
_KILL_HOOK = """
import os, signal, sys
import sqlalchemy as sa

def arm(engine, match, nth, when):
    state = {"seen": 0, "armed": False}

    def executed(conn, cursor, statement, *args):
        if match in statement:
            state["seen"] += 1
            state["armed"] = state["armed"] or state["seen"] == nth

    def committing(conn):
        if state["armed"] and when == "before_commit":
            os.kill(os.getpid(), signal.SIGKILL)

    def checked_in(dbapi_conn, record):
        if state["armed"] and when == "after_commit":
            os.kill(os.getpid(), signal.SIGKILL)

    sa.event.listen(engine, "after_cursor_execute", executed)
    sa.event.listen(engine, "commit", committing)
    sa.event.listen(engine.pool, "checkin", checked_in)
"""

SAME_DATABASE = _KILL_HOOK + """
from include.retention.connections import make_engine
from include.retention.ledger import Ledger, RunRef
from include.retention.stores.sql import SqlStore
from include.retention.sweep import run_rule
from tests.reliability.test_fault_injection import KEY, NOW, RULE
from tests.reliability.test_killed_sweeps import LAYOUTS

store_url, ledger_url, when, nth, layout = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
engine = make_engine(store_url)
arm(engine, "DELETE FROM people", nth, when)
policy = LAYOUTS[layout]
run_rule(policy, RULE, SqlStore("crm", policy, engine, mask_key=KEY), Ledger(make_engine(ledger_url), KEY),
         RunRef("t", "sigkilled"), now=NOW)
sys.exit(3)  # never reached: the hook kills the process inside the sweep
"""


def _run_killed(script: str, *args: str) -> None:
    proc = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-3000:]


@pytest.fixture
def ledger_url(request, fresh_database, tmp_path):
    """A ledger database on the store's kind of server (its own database), or a SQLite file."""
    def make(kind: str) -> str:
        if kind == "sqlite":
            return f"sqlite:///{tmp_path / 'ledger.db'}"
        return fresh_database(kind, f"rt_ledger_{uuid.uuid4().hex[:8]}")
    return make


def _kind(url: str) -> str:
    name = sa.engine.make_url(url).get_backend_name()
    return "mariadb" if name == "mysql" else name


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("when", ["before_commit", "after_commit"])
def test_sigkilled_sweep_is_settled_by_the_next_run(db_url, ledger_url, when, layout):
    rows, nth = 1000, 2  # the first batch settled, the second killed at ``when``
    cascade = layout == "cascade"
    engine = make_engine(db_url)
    arrange_same(engine, rows)
    led_url = ledger_url(_kind(db_url))
    ledger = Ledger(make_engine(led_url), KEY)
    ledger.ensure_schema()
    _run_killed(SAME_DATABASE, db_url, led_url, when, str(nth), layout)

    committed = when == "after_commit"
    (intent,) = ledger.open_intents()  # the killed batch's intent is open, its outcome was never written
    size = int(intent["count"])
    done_at_kill = settled(ledger)
    gone = rows - count(engine, people)
    assert intent["action"] == "delete" and size > 0 and done_at_kill > 0
    assert gone == done_at_kill + (size if committed else 0)  # committed: the batch went; else it rolled back
    assert count(engine, notes) == linked(engine) == (rows - gone if cascade else rows)
    details = json.loads(intent["details"])
    walk = "blocks" if layout == "plain" and _kind(db_url) == "postgresql" else "range"
    assert details["walk"] == walk and details["owner"] and "reread" in details
    sealed = unseal(KEY, details["reread"])  # sealed: the walk's bounds (keys) only with the key
    assert sealed["walk"] == walk and "now" in sealed and "now" not in details["reread"]
    assert ledger.verify().unreconciled_count == 1

    # announced in the intent (in clear: counts only): what the batch's statements took along in this database
    if cascade:
        assert details["cascading"] == {"crm.notes": size, "crm.links:nullified": size}
    policy = LAYOUTS[layout]
    counts = run_rule(policy, RULE, SqlStore("crm", policy, engine, mask_key=KEY), ledger, RunRef("t", "next"),
                      now=NOW)
    assert counts["deleted"] == rows - gone
    assert count(engine, people) == 0 and count(engine, notes) == linked(engine) == (0 if cascade else rows)
    assert count(engine, links) == rows + 10  # the links stay, their reference cleared
    (entry,) = reconciled(ledger)
    details = json.loads(entry["details"])
    assert entry["ref_seq"] == intent["seq"] and entry["run_id"] == "sigkilled"
    assert (entry["count"], details["committed"], details["how"]) == ((size, True, "reread") if committed
                                                                      else (0, False, "reread"))
    assert details.get("cascaded", {}) == ({"crm.notes": size, "crm.links:nullified": size}
                                           if committed and cascade else {})
    final = ledger.verify()
    assert final.ok and final.unreconciled_count == 0
    assert settled(ledger) == rows  # every row the stores lost is in the ledger once
    assert cascaded_total(ledger, "crm.notes") == (rows if cascade else 0)  # every note that went with them
    assert cascaded_total(ledger, "crm.links:nullified") == (rows if cascade else 0)  # every reference cleared
    ledger.engine.dispose()
    engine.dispose()


# ---- across databases: a delete here clears references there (on_delete: nullify) ----------------------------------

CROSS_POLICY = textwrap.dedent("""\
    version: 1
    defaults: {max_fraction: 1.0, batch_size: 10}
    systems:
      mailing:
        kind: sql
        connection: mailing_db
        collections:
          subscribers:
            table: subscribers
            primary_key: id
            columns: [id, created_at]
            rules: [{name: gone, start: created_at, action: delete, period: P1D}]
      crm:
        kind: sql
        connection: crm_db
        collections:
          deals:
            table: deals
            primary_key: id
            columns: [id, subscriber_id]
            references: [{to: mailing.subscribers, column: subscriber_id, on_delete: nullify}]
    """)
CROSS_RULE = "mailing.subscribers.gone"
xmd = sa.MetaData()
subscribers = sa.Table("subscribers", xmd, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                       sa.Column("created_at", sa.DateTime))
deals = sa.Table("deals", xmd, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                 sa.Column("subscriber_id", sa.Integer))

CROSS = _KILL_HOOK + """
import json
from include.retention.connections import ConnInfo
from include.retention.ledger import RunRef
from include.retention.policy import parse_policy
from include.retention.runtime import Runtime
from include.retention.sweep import run_rule
from tests.reliability.test_killed_sweeps import CROSS_POLICY, CROSS_RULE, NOW, KEY, runtime

urls, system, match, when, nth = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
rt = runtime(urls)
arm(rt.store(system).engine, match, nth, when)
run_rule(rt.policy, CROSS_RULE, rt.store("mailing"), rt.ledger(), RunRef("t", "sigkilled"), now=NOW)
sys.exit(3)
"""


def totals(ledger: Ledger) -> dict[tuple[str, str], int]:
    """(system, action) -> rows the ledger says were deleted / nullified (settled outcomes and reconciled intents)."""
    out: dict[tuple[str, str], int] = {}
    for r in ledger.rows():
        if r["outcome"] in ("done", "reconciled") and r["action"] in ("delete", "nullify"):
            out[(r["system"], r["action"])] = out.get((r["system"], r["action"]), 0) + r["count"]
    return out


def runtime(urls: dict[str, str]):
    from include.retention.connections import ConnInfo
    from include.retention.runtime import Runtime

    conns = {"mailing_db": ConnInfo("sql", extra={"sqlalchemy_url": urls["mailing"]}),
             "crm_db": ConnInfo("sql", extra={"sqlalchemy_url": urls["crm"]}),
             "retention_ledger": ConnInfo("sql", extra={"sqlalchemy_url": urls["ledger"]})}
    return Runtime(parse_policy(CROSS_POLICY, source="cross-kill.yaml"), conns.__getitem__, key=KEY)


# (where the kill is, at which statement, when): the child batch of the 2nd parent batch, or the 2nd parent batch
CROSS_KILLS = {
    "child-before-commit": ("crm", "UPDATE deals", "before_commit"),
    "child-after-commit": ("crm", "UPDATE deals", "after_commit"),
    "parent-after-commit": ("mailing", "DELETE FROM subscribers", "after_commit"),
}


@pytest.mark.parametrize("kill", sorted(CROSS_KILLS))
@pytest.mark.parametrize("pair", [("postgresql", "mariadb"), ("mariadb", "postgresql")],
                         ids=["postgresql-to-mariadb", "mariadb-to-postgresql"])
def test_sigkilled_cross_database_nullify_is_settled_by_the_next_run(pair, kill, fresh_database):
    rows, nth = 200, 2
    urls = {"mailing": fresh_database(pair[0], f"rt_{uuid.uuid4().hex[:10]}"),
            "crm": fresh_database(pair[1], f"rt_{uuid.uuid4().hex[:10]}"),
            "ledger": fresh_database(pair[0], f"rt_ledger_{uuid.uuid4().hex[:8]}")}
    mailing, crm = make_engine(urls["mailing"]), make_engine(urls["crm"])
    subscribers.create(mailing)
    deals.create(crm)
    with mailing.begin() as conn:  # 60 expired subscribers and 5 recent ones; a deal of each, one spare deal
        conn.execute(subscribers.insert(), [{"id": i, "created_at": NOW - dt.timedelta(days=5 if i <= rows else 0)}
                                            for i in range(1, rows + 6)])
    with crm.begin() as conn:
        conn.execute(deals.insert(), [{"id": i, "subscriber_id": i} for i in range(1, rows + 6)]
                     + [{"id": 1000, "subscriber_id": None}])
    system, match, when = CROSS_KILLS[kill]
    _run_killed(CROSS, json.dumps(urls), system, match, when, str(nth))

    def linked() -> int:
        with crm.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).where(deals.c.subscriber_id.is_not(None))).scalar()

    nullified_at_kill = rows + 5 - linked()
    parents_gone = rows + 5 - count(mailing, subscribers)
    rt = runtime(urls)
    ledger = rt.ledger()
    at_kill = totals(ledger)
    open_ = {(i["system"], i["action"]): int(i["count"]) for i in ledger.open_intents()}
    assert set(open_) == ({("mailing", "delete")} if kill == "parent-after-commit"
                          else {("mailing", "delete"), ("crm", "nullify")})
    assert parents_gone > 0 and nullified_at_kill > 0
    # what went before the kill = what the ledger settled + the killed batch, if it committed
    assert nullified_at_kill == at_kill.get(("crm", "nullify"), 0) + (
        open_[("crm", "nullify")] if kill == "child-after-commit" else 0)
    assert parents_gone == at_kill.get(("mailing", "delete"), 0) + (
        open_[("mailing", "delete")] if kill == "parent-after-commit" else 0)

    counts = run_rule(rt.policy, CROSS_RULE, rt.store("mailing"), ledger, RunRef("t", "next"), now=NOW)
    assert counts["deleted"] == rows - parents_gone
    assert count(mailing, subscribers) == 5 and linked() == 5  # the recent five and their deals stay linked
    decided = sorted((r["system"], r["count"], json.loads(r["details"])["committed"]) for r in reconciled(ledger))
    expected = {"child-before-commit": [("crm", 0, False), ("mailing", 0, False)],
                "child-after-commit": [("crm", open_.get(("crm", "nullify")), True), ("mailing", 0, False)],
                "parent-after-commit": [("mailing", open_[("mailing", "delete")], True)]}[kill]
    assert decided == expected
    final = ledger.verify()
    assert final.ok and final.unreconciled_count == 0
    # the ledger's totals are the stores' changes: every subscriber deleted, every reference to them cleared
    assert totals(ledger) == {("mailing", "delete"): rows, ("crm", "nullify"): rows}
    for r in ledger.rows():
        if r["action"] == "nullify":
            assert json.loads(r["details"])["cascaded_from"] == "mailing.subscribers"
    rt.close()
    mailing.dispose()
    crm.dispose()


# ---- two sweeps of one rule at once -------------------------------------------------------------------------------

TWO_STAGES = parse_policy(textwrap.dedent("""\
    version: 1
    defaults: {max_fraction: 1.0, batch_size: 7}
    systems:
      crm:
        kind: sql
        connection: crm_db
        collections:
          people:
            table: people
            primary_key: id
            columns: [id, email, legal_hold, created_at, restricted_at, restriction_reason]
            legal_hold: [{column: legal_hold, equals: true}]
            lock: {at: restricted_at, reason: restriction_reason}
            rules:
              - name: old
                start: created_at
                stages: [{action: lock, after: P2D}, {action: delete, after: P4D}]
    """), source="two-stages.yaml")
staged = sa.Table("people", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                  sa.Column("email", sa.String(254)), sa.Column("legal_hold", sa.Boolean, nullable=False),
                  sa.Column("created_at", sa.DateTime), sa.Column("restricted_at", sa.DateTime),
                  sa.Column("restriction_reason", sa.String(100)))


def test_two_sweeps_at_once_count_kept_from_the_table(db_url, ledger_url):
    """Two runs of a lock-then-delete rule at once, each on its own connections: 60 rows to delete, 30 to lock,
    40 recent (kept), 6 held. Each run reports kept 40 (the rows of the scope still there, neither held nor
    acted on, counted after it acted: before, each counted the other's work as kept), together they delete and
    lock each row once, and neither touches the other's open intents."""
    engine = make_engine(db_url)
    staged.metadata.drop_all(engine)
    staged.metadata.create_all(engine)
    ages = [5] * 60 + [3] * 30 + [0] * 40 + [5, 5, 5, 3, 3, 3]
    with engine.begin() as conn:
        conn.execute(staged.insert(), [{"id": i, "email": f"p{i}@example.org", "legal_hold": i > 130,
                                        "created_at": NOW - dt.timedelta(days=age, hours=1)}
                                       for i, age in enumerate(ages, start=1)])
    ledger = Ledger(make_engine(ledger_url(_kind(db_url))), KEY)
    ledger.ensure_schema()
    results, errors = [], []
    barrier = threading.Barrier(2)

    def sweep(n: int) -> None:
        store = SqlStore("crm", TWO_STAGES, make_engine(db_url), mask_key=KEY)
        try:
            barrier.wait()
            results.append(run_rule(TWO_STAGES, "crm.people.old", store, ledger, RunRef("t", f"run{n}"), now=NOW))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)
        finally:
            store.engine.dispose()

    threads = [threading.Thread(target=sweep, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert [r["kept"] for r in results] == [40, 40]
    assert [r["held"] for r in results] == [6, 6]
    assert sum(r["deleted"] for r in results) == 60 and sum(r["locked"] for r in results) == 30
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(staged)).scalar() == 76
        assert conn.execute(sa.select(sa.func.count()).where(staged.c.restricted_at.is_not(None))).scalar() == 30
    assert reconciled(ledger) == []  # a running run's intents are not another run's to settle
    done = {a: sum(r["count"] for r in ledger.rows() if r["action"] == a and r["outcome"] == "done")
            for a in ("delete", "lock")}
    assert done == {"delete": 60, "lock": 30}
    final = ledger.verify()
    assert final.ok and final.unreconciled_count == 0
    ledger.engine.dispose()
    engine.dispose()


HOLD_LEASE = """
import sys, time
from include.retention.connections import make_engine
from include.retention.intents import RunLease

lease = RunLease(make_engine(sys.argv[1])).__enter__()
print(lease.token, flush=True)
time.sleep(120)
"""


def test_a_run_lease_lives_as_long_as_its_process(db_url):
    """Another process's lease is alive while it runs (its intents are not settled by anyone else) and free once
    it is SIGKILLed; a lease released normally is free at once."""
    engine = make_engine(db_url)
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LEASE, db_url], cwd=ROOT, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        token = proc.stdout.readline().decode().strip()
        assert token and lease_alive(engine, token)
        time.sleep(0.2)
        assert lease_alive(engine, token)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    for _ in range(100):  # the server notices the closed session
        if not lease_alive(engine, token):
            break
        time.sleep(0.05)
    assert not lease_alive(engine, token)
    with RunLease(engine) as mine:
        assert lease_alive(engine, mine.token)
    assert not lease_alive(engine, mine.token)
    assert not lease_alive(engine, uuid.uuid4().hex)  # a token nobody holds
    engine.dispose()


def test_which_open_intents_the_next_run_settles(tmp_path):
    """Of a rule's open intents, the next run settles those whose run stopped (lease free): by re-reading the batch
    when the intent says how, else with the count the intent recorded (and says so); an intent of a run still
    going, one of another rule and one without an owner written just now are left open."""
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    arrange_same(engine, 20)
    ledger = Ledger(make_engine(f"sqlite:///{tmp_path / 'ledger.db'}"), KEY)
    common = {"run": RunRef("t", "old"), "rule_id": RULE, "system": "crm", "collection": "crm.people"}
    with RunLease(ledger.engine) as stopped:
        pass
    gone = LedgerRecorder(ledger, common, stopped.token)
    no_reread = gone.intend("delete", 7, "d" * 64)
    mismatch = gone.intend("delete", 3, "e" * 64, reread={"walk": "range", "order": ["id"], "after": None,
                                                            "upto": (5,), "now": NOW})
    ownerless = LedgerRecorder(ledger, common).intend("delete", 2, "f" * 64)
    other_rule = LedgerRecorder(ledger, {**common, "rule_id": "crm.notes.x"}, stopped.token).intend("delete", 1,
                                                                                                     "a" * 64)
    store = SqlStore("crm", SAME_POLICY, engine, mask_key=KEY)
    with RunLease(ledger.engine) as running:
        live = LedgerRecorder(ledger, common, running.token).intend("delete", 4, "b" * 64)
        counts = run_rule(SAME_POLICY, RULE, store, ledger, RunRef("t", "next"), now=NOW)
    assert counts["deleted"] == 20
    decided = {r["ref_seq"]: (r["count"], json.loads(r["details"])) for r in reconciled(ledger)}
    assert set(decided) == {no_reread, mismatch}
    assert decided[no_reread][0] == 7 and decided[no_reread][1]["how"] == "recorded"
    # a digest that is not that of the rows still in its range: taken as committed, less the rows still matching
    # there (all 5: 0 rows)
    assert decided[mismatch][0] == 0 and decided[mismatch][1]["committed"] is True
    assert {i["seq"] for i in ledger.open_intents()} == {ownerless, other_rule, live}
    engine.dispose()
