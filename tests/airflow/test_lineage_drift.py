"""Lineage as data_map_drift's first step, end to end: a deployment's DAG (tests/airflow/dags) copies the CRM's
e-mail addresses into a table the data map does not declare with the common SQL provider's operator, Airflow's
OpenLineage provider writing its events with the file transport; the drift run then reads them and records
"derived from crm.contacts.email" before any sampling. A second run reads nothing new and keeps the finding; no
e-mail address reaches the ledger, the findings or Airflow's metadata DB."""

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
from tests.airflow.conftest import load_dag, task_states
from tests.airflow.test_data_map_drift_dag import leak_scan
from tests.conftest import ROOT, airflow_uri
from tests.policy_text import crm_policy

pytestmark = [pytest.mark.airflow, pytest.mark.integration]

POLICY = crm_policy("""
    contacts:
      table: contacts
      primary_key: id
      columns: [id, email, created_at]
      identities: {email: email}
""")

# The deployment's DAG, run in its own process: the OpenLineage provider decides once per process, when its
# plugin loads, whether a transport is configured (this session's other DAG runs emit nothing); its DAG folder
# is that process's dags-folder bundle (dag.test() runs what a bundle holds).
EXPORT = """
import sys
from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
run = bag.dags["crm_audience_export"].test()
sys.exit(0 if run.state == "success" else 1)
"""


@pytest.fixture
def crm(airflow_db, fresh_database, tmp_path, monkeypatch):
    suffix = uuid.uuid4().hex[:8]
    crm_url = fresh_database("postgresql", f"rt_crm_{suffix}")
    ledger_url = fresh_database("postgresql", f"rt_ledger_{suffix}")
    token = uuid.uuid4().hex[:10]
    emails = [f"lineage.{token}.{i}@example.org" for i in range(4)]
    engine = make_engine(crm_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE contacts (id INTEGER PRIMARY KEY, email VARCHAR(254), created_at TIMESTAMP)")
        conn.exec_driver_sql("CREATE TABLE audience (contact_id INTEGER, addr VARCHAR(254))")
        conn.execute(sa.text("INSERT INTO contacts (id, email) VALUES (:i, :e)"),
                     [{"i": i, "e": e} for i, e in enumerate(emails)])
    monkeypatch.setenv("AIRFLOW_CONN_CRM_DB", airflow_uri(crm_url))
    monkeypatch.setenv("AIRFLOW_CONN_RETENTION_LEDGER", airflow_uri(ledger_url))
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    monkeypatch.setenv("RETENTION_POLICY_PATH", str(path))
    events = tmp_path / "openlineage.jsonl"
    monkeypatch.setenv("RETENTION_LINEAGE_FILE", str(events))
    ledger = Ledger(make_engine(ledger_url), os.environ["RETENTION_HMAC_KEY"].encode())
    yield engine, ledger, events, emails, token
    engine.dispose()
    ledger.engine.dispose()


def run_export(events) -> None:
    transport = {"type": "file", "log_file_path": str(events), "append": True}
    folder = str(ROOT / "tests" / "airflow" / "dags")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AIRFLOW__CORE__DAGS_FOLDER": folder,
           "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(transport),
           "AIRFLOW__OPENLINEAGE__NAMESPACE": "retention-test"}
    proc = subprocess.run([sys.executable, "-c", EXPORT, folder], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_sql_copy_into_an_unmapped_table_is_a_finding_before_sampling(crm):
    engine, ledger, events, emails, token = crm
    run_export(events)
    with engine.connect() as conn:
        assert sorted(conn.execute(sa.text("SELECT addr FROM audience")).scalars()) == sorted(emails)
    lines = events.read_text().splitlines()
    assert any('"columnLineage"' in line for line in lines)  # the provider wrote column lineage

    run = load_dag("data_map_drift").test(run_conf={"systems": [], "review": False})
    states = task_states(run)
    assert run.state == "success", states
    assert states["read_lineage"] == ["success"] and states["discover"] == ["success"]
    store = FindingStore(ledger.engine)
    rows = {(r["collection"], r["column_name"], r["kind"]): r for r in store.listing()}
    derived = rows[("audience", "addr", "derived_table")]
    assert (derived["system"], derived["classifier"], derived["detail"], derived["sample_size"]) == (
        "crm", "lineage:email", "derived from crm.contacts.email", 0)
    # discovery's own sampling of the same table is a second, separate finding
    assert rows[("audience", "addr", "unmapped_table")]["classifier"] == "email"
    entries = [r for r in ledger.rows() if r["run_id"] == run.run_id]
    assert [r["action"] for r in entries] == ["lineage", "discovery"]  # lineage first, before any sampling
    lineage = json.loads(entries[0]["details"])
    assert entries[0]["count"] == 1 and lineage["findings"] == [derived["finding_id"]]
    assert lineage["events"] == len(lines) and lineage["unreadable"] == 0 and lineage["new"] == 1

    # a second run: nothing new in the file; the discovery run does not resolve what lineage found
    again = load_dag("data_map_drift").test(run_conf={"systems": [], "review": False})
    assert again.state == "success", task_states(again)
    second = [r for r in ledger.rows() if r["run_id"] == again.run_id and r["action"] == "lineage"]
    assert len(second) == 1 and second[0]["count"] == 0 and json.loads(second[0]["details"])["events"] == 0
    assert store.get(derived["finding_id"])["status"] == "open"
    assert ledger.verify().ok
    leak_scan(ledger, run, {"emails": emails, "phones": []}, token)
