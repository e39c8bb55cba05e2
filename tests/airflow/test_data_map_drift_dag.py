"""data_map_drift through Airflow's own runtime (dag.test) on PostgreSQL + MariaDB: one mapped discovery task
per system, one review per open finding answered map / ignore / not personal from another process (as the
REST API does), the decisions and who made them in the ledger; no sampled value in the ledger, the findings,
XComs or task logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
import sqlalchemy as sa

from include.retention.findings import FindingStore
from include.retention.ledger import Ledger
from include.retention.stores.sql import make_engine
from tests.airflow.conftest import RESPONDER, load_dag, task_states
from tests.conftest import ROOT, airflow_uri
from tests.policy_text import crm_policy

pytestmark = [pytest.mark.airflow, pytest.mark.integration]
DAG_ID = "data_map_drift"

POLICY = crm_policy("""
    contacts:
      table: contacts
      primary_key: id
      columns: [id, email, created_at]
      identities: {email: email}
""", mailing="""
    subscribers:
      table: subscribers
      primary_key: id
      columns: [id, email]
      identities: {email: email}
""")

# The shared responder answers the first parked instance of a task: this one answers one map index, with a
# reason in the form's params, as a person would through PATCH /api/v2/hitlDetails/...
MAPPED_RESPONDER = RESPONDER.replace(
    "dag_id, task_id, option, timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])",
    "dag_id, task_id, option, timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])\n"
    "map_index, reason = int(sys.argv[5]), sys.argv[6]",
).replace(
    "TaskInstance.state == TaskInstanceState.AWAITING_INPUT).first())",
    "TaskInstance.map_index == map_index, TaskInstance.state == TaskInstanceState.AWAITING_INPUT).first())",
).replace("detail.params_input = {}", "detail.params_input = {'reason': reason} if reason else {}")


def answer(map_index: int, option: str, reason: str = "") -> subprocess.Popen:
    assert "TaskInstance.map_index == map_index" in MAPPED_RESPONDER and "'reason': reason" in MAPPED_RESPONDER
    return subprocess.Popen([sys.executable, "-c", MAPPED_RESPONDER, DAG_ID, "review_finding", option, "180",
                             str(map_index), reason], env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stderr=subprocess.DEVNULL)


@pytest.fixture
def systems(airflow_db, fresh_database, tmp_path, monkeypatch):
    suffix = uuid.uuid4().hex[:8]
    crm_url = fresh_database("postgresql", f"rt_crm_{suffix}")
    mailing_url = fresh_database("mariadb", f"rt_mail_{suffix}")
    ledger_url = fresh_database("postgresql", f"rt_ledger_{suffix}")
    token = uuid.uuid4().hex[:10]
    values = {"emails": [f"drift.{token}.{i}@example.org" for i in range(5)],
              "phones": [f"+48 601 {token.count('a')}{i}{i} 56{i}" for i in range(5)],
              "ips": [f"203.0.113.{100 + i}" for i in range(5)]}
    crm = make_engine(crm_url)
    with crm.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE contacts (id INTEGER PRIMARY KEY, email VARCHAR(254), "
                             "created_at TIMESTAMP, secondary_contact VARCHAR(40))")
        conn.exec_driver_sql("CREATE TABLE contacts_copy (id INTEGER PRIMARY KEY, addr VARCHAR(254))")
        conn.exec_driver_sql("CREATE TABLE events (id INTEGER PRIMARY KEY, payload TEXT)")
        for i in range(5):
            conn.execute(sa.text("INSERT INTO contacts (id, email, secondary_contact) VALUES (:i, :e, :p)"),
                         {"i": i, "e": values["emails"][i], "p": values["phones"][i]})
            conn.execute(sa.text("INSERT INTO contacts_copy VALUES (:i, :e)"), {"i": i, "e": values["emails"][i]})
            conn.execute(sa.text("INSERT INTO events VALUES (:i, :p)"),
                         {"i": i, "p": json.dumps({"ip": values["ips"][i], "token": token})})
    mailing = make_engine(mailing_url)
    with mailing.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE subscribers (id INTEGER PRIMARY KEY, email VARCHAR(254))")
        conn.execute(sa.text("INSERT INTO subscribers VALUES (1, :e)"), {"e": values["emails"][0]})
    monkeypatch.setenv("AIRFLOW_CONN_CRM_DB", airflow_uri(crm_url))
    monkeypatch.setenv("AIRFLOW_CONN_MAILING_DB", airflow_uri(mailing_url))
    monkeypatch.setenv("AIRFLOW_CONN_RETENTION_LEDGER", airflow_uri(ledger_url))
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    monkeypatch.setenv("RETENTION_POLICY_PATH", str(path))
    ledger = Ledger(make_engine(ledger_url), os.environ["RETENTION_HMAC_KEY"].encode())
    yield ledger, values, token
    for engine in (crm, mailing, ledger.engine):
        engine.dispose()


def test_review_map_ignore_not_personal(systems):
    ledger, values, token = systems
    # open findings in order: contacts.secondary_contact, contacts_copy.addr, events.payload
    responders = [answer(0, "map"), answer(1, "ignore", "a copy the QA team deletes weekly"),
                  answer(2, "not personal")]
    run = load_dag(DAG_ID).test(run_conf={"systems": []})
    assert [r.wait(timeout=60) for r in responders] == [0, 0, 0]
    states = task_states(run)
    assert run.state == "success", states
    assert states["discover"] == ["success", "success"]
    assert states["review_finding"] == ["success"] * 3
    store = FindingStore(ledger.engine)
    rows = {(r["collection"], r["column_name"]): r for r in store.listing(statuses=("mapped", "ignored",
                                                                                   "not_personal", "open"))}
    assert {k: (r["kind"], r["classifier"], r["status"], r["decided_by"], r["reason"]) for k, r in rows.items()} == {
        ("contacts", "secondary_contact"): ("unmapped_column", "phone", "mapped", "dpo", None),
        ("contacts_copy", "addr"): ("unmapped_table", "email", "ignored", "dpo", "a copy the QA team deletes weekly"),
        ("events", "payload"): ("unmapped_table", "ipv4", "not_personal", "dpo", None),
    }
    entries = [r for r in ledger.rows() if r["run_id"] == run.run_id]
    assert sorted((r["action"], r["system"], r["outcome"], r["count"]) for r in entries
                  if r["action"] == "discovery") == [("discovery", "crm", "done", 3),
                                                     ("discovery", "mailing", "done", 0)]
    reviews = sorted((r["collection"], r["outcome"], json.loads(r["details"])["decided_by"]) for r in entries
                     if r["action"] == "discovery_review")
    assert reviews == [("crm.contacts.secondary_contact", "mapped", "dpo"),
                       ("crm.contacts_copy.addr", "ignored", "dpo"), ("crm.events.payload", "not_personal", "dpo")]
    assert ledger.verify().ok
    # the review's body carried the validated snippet
    from airflow.models.hitl import HITLDetail
    from airflow.utils.session import create_session

    with create_session() as session:
        bodies = [d.body for d in session.query(HITLDetail).all() if "secondary_contact" in (d.body or "")]
    assert bodies and "phone: secondary_contact" in bodies[-1]
    leak_scan(ledger, run, values, token)


def leak_scan(ledger: Ledger, run, values: dict[str, list[str]], token: str) -> None:
    """No sampled value in the ledger / findings database, Airflow's metadata DB (XComs, HITL details) or the
    run's task logs. (The token is in the sampled rows only: a hit means a value leaked.)"""
    needles = {v.lower() for vs in values.values() for v in vs} | {token}
    needles |= {"".join(ch for ch in p if ch.isdigit()) for p in values["phones"]}
    with ledger.engine.connect() as conn:
        for table in sa.inspect(ledger.engine).get_table_names():
            text = repr(conn.execute(sa.text(f'SELECT * FROM "{table}"')).all()).lower()
            assert not [n for n in needles if n in text], table
    # The files are read in another process: opening and closing the metadata DB's files in this one would drop
    # the POSIX locks of this process's SQLite connections (a later dag.test() would then miss an approval).
    proc = subprocess.run([sys.executable, "-c", FILE_SCAN, os.environ["AIRFLOW_HOME"], DAG_ID, *sorted(needles)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert int(proc.stdout.split()[-1]) >= 2  # files scanned: the metadata DB and the run's task logs


FILE_SCAN = """
import sys
from pathlib import Path

home, dag_id, needles = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
scanned = 0
for path in home.rglob("*"):
    if path.is_file() and (dag_id in str(path) or path.suffix in (".db", ".db-wal", ".db-journal")):
        data = path.read_bytes().lower()
        found = [n for n in needles if n.encode() in data]
        if found:
            sys.exit(f"a sampled value in {path}")
        scanned += 1
print(scanned)
"""
