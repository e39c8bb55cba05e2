"""The audit ledger on real databases: chains, verifies, and finds edits and removals."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import sqlalchemy as sa

from include.retention.ledger import Ledger, RunRef, entries, head
from include.retention.stores.sql import make_engine
from tests.conftest import KEY, ROOT

pytestmark = pytest.mark.integration


@pytest.fixture
def ledger(db_url):
    led = Ledger(make_engine(db_url), KEY)
    for i in range(5):
        led.append(run=RunRef("retention_sweep", "r1"), action="delete", outcome="done", count=i,
                   rule_id="crm.x.y", subject_digest=led.digest(f"person{i}@example.org"), pk_digest=led.pk_digest([i]))
    yield led
    led.engine.dispose()


def test_chain_verifies(ledger):
    result = ledger.verify()
    assert result.ok and result.entries == 5
    rows = list(ledger.rows())
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(rows[i]["prev_hash"] == rows[i - 1]["entry_hash"] for i in range(1, 5))
    assert "@" not in repr(rows)


def test_edited_entry_is_found(ledger):
    with ledger.engine.begin() as conn:
        conn.execute(entries.update().where(entries.c.seq == 3).values(count=999))
    result = ledger.verify()
    assert not result.ok and result.first_broken_seq == 3 and "edited" in result.problem


def test_edited_entry_with_recomputed_hash_breaks_the_next_link(ledger):
    from include.retention.ledger import entry_hash

    row = next(r for r in ledger.rows() if r["seq"] == 2)
    row["count"] = 0
    with ledger.engine.begin() as conn:
        conn.execute(entries.update().where(entries.c.seq == 2).values(count=0, entry_hash=entry_hash(row, KEY)))
    result = ledger.verify()
    assert not result.ok and result.first_broken_seq == 3 and "link" in result.problem


def test_removed_entry_is_found(ledger):
    with ledger.engine.begin() as conn:
        conn.execute(entries.delete().where(entries.c.seq == 2))
    result = ledger.verify()
    assert not result.ok and result.first_broken_seq == 2 and "missing" in result.problem


def test_removed_tail_is_found(ledger):
    with ledger.engine.begin() as conn:
        conn.execute(entries.delete().where(entries.c.seq == 5))
    result = ledger.verify()
    assert not result.ok and "removed" in result.problem
    with ledger.engine.connect() as conn:
        assert conn.execute(sa.select(head.c.seq)).scalar() == 5


def _cli_env(db_url: str) -> dict[str, str]:
    env = {**os.environ, "AIRFLOW_CONN_RETENTION_LEDGER": db_url.replace("+psycopg2", "").replace("+pymysql", "")
           .replace("postgresql", "postgres").replace("?charset=utf8mb4", ""), "PYTHONPATH": str(ROOT),
           "RETENTION_HMAC_KEY": KEY.decode()}
    if db_url.startswith("sqlite"):
        env["AIRFLOW_CONN_RETENTION_LEDGER"] = json.dumps({"conn_type": "sqlite", "host": db_url[len("sqlite:///"):]})
    env.pop("RETENTION_LEDGER_ANCHORS", None)
    env.pop("RETENTION_LEDGER_ANCHORS_DEMO", None)
    return env


def test_verify_cli_exit_codes(ledger, db_url):
    env = _cli_env(db_url)
    ok = subprocess.run([sys.executable, "-m", "include.retention.cli", "verify"], env=env, capture_output=True,
                        text=True)
    assert ok.returncode == 0 and "ledger OK: 5 entries" in ok.stdout, ok.stderr
    with ledger.engine.begin() as conn:
        conn.execute(entries.update().where(entries.c.seq == 4).values(action="lock"))
    bad = subprocess.run([sys.executable, "-m", "include.retention.cli", "verify"], env=env, capture_output=True,
                         text=True)
    assert bad.returncode == 1 and "BROKEN at entry 4" in bad.stdout


# ---- intent first, outcome after ----------------------------------------------------------------


def test_intent_then_outcome_with_the_real_count(ledger):
    run = RunRef("retention_sweep", "r2")
    intent = ledger.intend(run=run, action="delete", count=500, rule_id="crm.x.y", system="crm",
                           pk_digest=ledger.pk_digest(range(500)))
    result = ledger.verify(record=False)
    assert result.ok and result.unreconciled == [intent] and "1 unreconciled intent(s): seq 6" in str(result)
    assert [r["seq"] for r in ledger.open_intents()] == [intent]
    done = ledger.settle(intent, count=480, details={"batch": 1})
    assert ledger.settle(intent, count=480) == done  # a retried settle writes nothing twice
    outcome = next(r for r in ledger.rows() if r["seq"] == done)
    assert (outcome["ref_seq"], outcome["count"], outcome["outcome"], outcome["action"]) == (intent, 480, "done",
                                                                                              "delete")
    assert (outcome["rule_id"], outcome["run_id"], outcome["system"]) == ("crm.x.y", "r2", "crm")
    assert json.loads(outcome["details"]) == {"batch": 1, "planned": 500}
    result = ledger.verify(record=False)
    assert result.ok and result.unreconciled == [] and "unreconciled" not in str(result)
    assert ledger.open_intents() == []


def test_settle_then_intend_writes_both_in_one_transaction(ledger, monkeypatch):
    """A sweep batch's outcome and the next batch's intent: one write transaction, outcome first, chained."""
    run = RunRef("retention_sweep", "r4")
    first = ledger.intend(run=run, action="delete", count=10, rule_id="crm.x.y", pk_digest=ledger.pk_digest([1]))
    writes = []
    real = Ledger._writing
    monkeypatch.setattr(Ledger, "_writing", lambda self: writes.append(1) or real(self))
    second = ledger.settle(first, count=9, details={"batch": 1},
                           then_intend={"run": run, "action": "delete", "count": 20, "rule_id": "crm.x.y",
                                        "pk_digest": ledger.pk_digest([2])})
    assert writes == [1] and second == first + 2
    outcome, intent = [r for r in ledger.rows() if r["seq"] > first]
    assert (outcome["outcome"], outcome["ref_seq"], outcome["count"]) == ("done", first, 9)
    assert json.loads(outcome["details"]) == {"batch": 1, "planned": 10}
    assert (intent["outcome"], intent["ref_seq"], intent["count"], intent["run_id"], intent["pk_digest"]) == (
        "intent", None, 20, "r4", ledger.pk_digest([2]))
    result = ledger.verify(record=False)
    assert result.ok and result.unreconciled == [second]
    # a retried call (the outcome already written) writes only the next intent, once more
    third = ledger.settle(first, count=9, then_intend={"run": run, "action": "delete", "count": 20})
    assert third == second + 1 and ledger.verify(record=False).unreconciled == [second, third]
    from include.retention.errors import RetentionError

    with pytest.raises(RetentionError, match="already settled"):  # a different count: nothing written
        ledger.settle(first, count=8, then_intend={"run": run, "action": "delete", "count": 20})
    with pytest.raises(TypeError, match="unexpected"):
        ledger.settle(second, count=20, then_intend={"action": "delete", "outcome": "done"})
    assert ledger.verify(record=False).unreconciled == [second, third]


def test_settle_refuses_a_second_different_outcome_and_non_intents(ledger):
    from include.retention.errors import RetentionError

    intent = ledger.intend(action="delete", count=3)
    ledger.settle(intent, count=3)
    with pytest.raises(RetentionError, match="already settled"):
        ledger.settle(intent, count=2)
    with pytest.raises(RetentionError, match="already settled"):
        ledger.reconcile(intent, 3, "late")
    with pytest.raises(RetentionError, match="not an intent"):
        ledger.settle(1, count=1)
    with pytest.raises(RetentionError, match="not an intent"):
        ledger.settle(999, count=1)
    assert ledger.verify(record=False).ok


def test_crash_between_change_and_outcome_is_reported_then_reconciled(ledger):
    """The store committed, the process died before ``settle``: the next run finds and reconciles it."""
    lost = ledger.intend(run=RunRef("retention_sweep", "r3"), action="delete", count=200, rule_id="crm.x.y")
    later = ledger.intend(run=RunRef("retention_sweep", "r3"), action="lock", count=4, rule_id="crm.x.z")
    ledger.settle(later, count=4)
    result = ledger.verify(record=False)
    assert result.ok and result.unreconciled == [lost] and result.unreconciled_count == 1
    assert [r["rule_id"] for r in ledger.open_intents(rule_id="crm.x.y")] == ["crm.x.y"]
    seq = ledger.reconcile(lost, 200, "rows absent on re-count by the next run")
    row = next(r for r in ledger.rows() if r["seq"] == seq)
    assert row["outcome"] == "reconciled" and row["ref_seq"] == lost and row["count"] == 200
    assert ledger.verify(record=False).unreconciled == []


def test_outcome_pointing_elsewhere_breaks_verification(ledger):
    """An outcome must settle an earlier open intent (forged only with the key: the software refuses it)."""
    from include.retention.ledger import head

    with ledger.engine.begin() as conn:
        current = conn.execute(sa.select(head.c.seq, head.c.entry_hash)).one()
    row = {k: None for k in ("rule_id", "request_id", "policy_digest", "system", "collection", "subject_digest",
                             "pk_digest", "details")}
    from include.retention.ledger import entry_hash

    row.update(seq=current.seq + 1, recorded_at="2026-01-01T00:00:00.000000Z", dag_id="x", run_id="x",
               action="delete", outcome="done", count=1, ref_seq=2, prev_hash=current.entry_hash)
    row["entry_hash"] = entry_hash(row, KEY)
    with ledger.engine.begin() as conn:
        conn.execute(entries.insert().values(**row))
        conn.execute(head.update().values(seq=row["seq"], entry_hash=row["entry_hash"]))
    result = ledger.verify(record=False)
    assert not result.ok and result.first_broken_seq == 6 and "not an open intent" in result.problem


def test_old_ledger_table_gets_ref_seq(db_url):
    """A ledger created before intents existed gains the column on first use."""
    engine = make_engine(db_url)
    old = sa.MetaData()
    sa.Table("ledger_entries", old, *[sa.Column(c.name, c.type, primary_key=c.primary_key)
                                       for c in entries.columns if c.name != "ref_seq"])
    old.create_all(engine)
    led = Ledger(engine, KEY)
    intent = led.intend(action="delete", count=1)
    led.settle(intent, count=1)
    assert led.verify(record=False).ok
    engine.dispose()


def test_dashboard_queries_are_ledger_methods(ledger):
    import datetime as dt

    ledger.append(run=RunRef("retention_sweep", "s1"), action="sweep", outcome="complete", rule_id="crm.x.y",
                  count=3, details={"deleted": 3})
    assert [(s["rule_id"], s["count"]) for s in ledger.last_sweeps()] == [("crm.x.y", 3)]
    intent = ledger.intend(action="delete", count=9, rule_id="crm.x.y")
    ledger.settle(intent, count=7)
    today = dt.datetime.now(dt.UTC).date()
    per_day = ledger.actions_per_day(today - dt.timedelta(days=1))
    assert per_day[(today.isoformat(), "delete")] == 0 + 1 + 2 + 3 + 4 + 7  # intents are plans, not changes
    ledger.verify()
    assert ledger.verification_history()[0]["ok"] is True


def test_verify_cli_with_anchors(ledger, db_url, tmp_path):
    env = _cli_env(db_url)
    anchors = tmp_path / "anchors"
    cli = [sys.executable, "-m", "include.retention.cli", "verify", "--anchors", str(anchors)]
    first = subprocess.run([*cli, "--anchor"], env=env, capture_output=True, text=True)
    assert first.returncode == 0 and "anchored head 5 at" in first.stdout, first.stderr
    assert len(list(anchors.glob("*.json"))) == 1
    ok = subprocess.run(cli, env=env, capture_output=True, text=True)
    assert ok.returncode == 0 and "1 anchor(s) match" in ok.stdout
    assert "warning: anchors in a directory can be deleted by whoever can write to it" in ok.stdout
    demo = subprocess.run(cli, env={**env, "RETENTION_LEDGER_ANCHORS_DEMO": "1"}, capture_output=True, text=True)
    assert demo.returncode == 0 and "warning" not in demo.stdout
    ledger.intend(action="delete", count=3)
    with ledger.engine.begin() as conn:  # truncate entries 4.. and move the head back to 3
        h3 = conn.execute(sa.select(entries.c.entry_hash).where(entries.c.seq == 3)).scalar_one()
        conn.execute(entries.delete().where(entries.c.seq > 3))
        conn.execute(head.update().values(seq=3, entry_hash=h3))
    assert subprocess.run(cli[:-2], env=env, capture_output=True, text=True).returncode == 0  # no anchors: unseen
    bad = subprocess.run(cli, env={**env, "RETENTION_LEDGER_ANCHORS": str(anchors)}, capture_output=True, text=True)
    assert bad.returncode == 1 and "BROKEN at entry 4: entries after 3 were removed" in bad.stdout
    env_only = subprocess.run(cli[:-2], env={**env, "RETENTION_LEDGER_ANCHORS": str(anchors)}, capture_output=True,
                              text=True)
    assert env_only.returncode == 1


def test_a_new_sqlite_ledger_is_created_in_one_transaction_and_an_existing_one_only_read(tmp_path):
    """SQLite: tables, indexes and head row in one commit (pysqlite would commit each CREATE on its own); a ledger
    that exists is only read by the next process's first use."""
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    commits, statements = [], []
    sa.event.listen(engine, "commit", lambda conn: commits.append(1))
    sa.event.listen(engine, "before_cursor_execute", lambda conn, cur, stmt, *a: statements.append(stmt.split()[0]))
    Ledger(engine, KEY).ensure_schema()
    assert commits == [1] and statements.count("CREATE") == 6
    assert {"ledger_entries", "ledger_head", "ledger_verifications"} <= set(sa.inspect(engine).get_table_names())
    with engine.connect() as conn:
        assert conn.execute(sa.select(head.c.seq, head.c.entry_hash)).one() == (0, "0" * 64)
    commits.clear(), statements.clear()
    again = Ledger(engine, KEY)  # the next process
    again.ensure_schema()
    assert commits == [] and not {"BEGIN", "CREATE", "INSERT", "ALTER"} & set(statements)
    again.append(run=RunRef("t", "1"), action="delete", outcome="done", count=1)
    assert again.verify(record=False).ok
    engine.dispose()
