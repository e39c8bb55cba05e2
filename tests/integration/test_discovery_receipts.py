"""Honest receipts: an erasure run (the task bodies of erasure_request) while discovery has an open finding
for the system says "1 unmapped candidate columns/prefixes were known at the time (...)", and its
verification says what it covers; without open findings the receipt is as before. The person's address in
the unmapped column is still there: that is exactly what the statement owns up to."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from include.retention.airflow import discovery_tasks, erasure_tasks
from include.retention.connections import make_engine
from include.retention.findings import FindingStore
from include.retention.requests.receipts import render_markdown
from tests.policy_text import crm_policy

pytestmark = pytest.mark.integration

EMAIL = "honest.receipt@example.org"
POLICY = crm_policy("""
    contacts:
      table: contacts
      primary_key: id
      columns: [id, email, created_at]
      identities: {email: email}
""")


@pytest.fixture
def world(tmp_path, monkeypatch):
    crm, ledger = tmp_path / "crm.db", tmp_path / "ledger.db"
    monkeypatch.setenv("AIRFLOW_CONN_CRM_DB", json.dumps({"conn_type": "sqlite", "host": str(crm)}))
    monkeypatch.setenv("AIRFLOW_CONN_RETENTION_LEDGER", json.dumps({"conn_type": "sqlite", "host": str(ledger)}))
    monkeypatch.setenv("RETENTION_VERIFY_IDENTITY", "none")
    (tmp_path / "policy.yaml").write_text(POLICY)
    monkeypatch.setenv("RETENTION_POLICY_PATH", str(tmp_path / "policy.yaml"))
    engine = make_engine(f"sqlite:///{crm}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE contacts (id INTEGER PRIMARY KEY, email VARCHAR(254), created_at "
                             "TIMESTAMP, secondary_email VARCHAR(254))")
        conn.execute(sa.text("INSERT INTO contacts (id, email, secondary_email) VALUES (1, :e, :e), (2, :o, :o)"),
                     {"e": EMAIL, "o": "someone.else@example.org"})
    yield engine, make_engine(f"sqlite:///{ledger}")
    engine.dispose()


def erase(run_id: str) -> dict:
    rid = erasure_tasks.register({"email": EMAIL, "mode": "erase"}, "erasure_request", run_id)
    erasure_tasks.discover([rid], "crm")
    erasure_tasks.act([rid], "crm")
    erasure_tasks.verify([rid], "crm")
    erasure_tasks.record([rid], "crm", "erasure_request", run_id)
    erasure_tasks.finalize([rid], ["crm"])
    with make_engine_of_ledger().connect() as conn:
        return json.loads(conn.execute(sa.text("SELECT receipt FROM request_receipts WHERE request_id = :r"),
                                       {"r": rid}).scalar())


def make_engine_of_ledger():
    from include.retention.airflow.sweep_tasks import airflow_resolver
    from include.retention.connections import engine_for

    return engine_for(airflow_resolver, "retention_ledger")


def test_receipt_states_open_findings(world):
    crm, ledger = world
    before = erase("run-before")  # discovery never ran: no statement, the verification as it was
    assert before["unmapped"] == [] and before["verification"].endswith("except the exceptions listed")
    with crm.begin() as conn:
        conn.execute(sa.text("INSERT INTO contacts (id, email, secondary_email) VALUES (3, :e, :e)"), {"e": EMAIL})
    summary = discovery_tasks.run_system("crm", dag_id="data_map_drift", run_id="d1")
    assert summary["open"] == 1
    receipt = erase("run-after")
    assert receipt["unmapped"] == [{
        "system": "crm", "count": 1, "names": ["crm.contacts.secondary_email"],
        "statement": "1 unmapped candidate columns/prefixes were known at the time (crm.contacts.secondary_email)"}]
    assert receipt["verification"].endswith("(in what the data map declares; unmapped candidates listed below)")
    text = render_markdown(receipt)
    assert "## Not in the data map" in text and "crm.contacts.secondary_email" in text
    assert EMAIL not in json.dumps(receipt) + text
    with crm.connect() as conn:  # the declared column was erased, the unmapped one was not reached
        assert conn.execute(sa.text("SELECT id FROM contacts ORDER BY id")).scalars().all() == [2]
    # decided 'not personal': the next receipt has no statement
    store = FindingStore(ledger)
    store.decide(store.open_findings()[0]["finding_id"], "not personal", "dpo")
    with crm.begin() as conn:
        conn.execute(sa.text("INSERT INTO contacts (id, email) VALUES (4, :e)"), {"e": EMAIL})
    assert erase("run-decided")["unmapped"] == []


def test_concept_lists_open_findings_and_validate_live_fails_on_them(world, tmp_path, capsys):
    from include.retention import cli

    crm, ledger = world
    policy_file = str(tmp_path / "policy.yaml")
    assert cli.main(["validate", policy_file, "--live"]) == 1  # nothing decided yet: a live finding fails
    err = capsys.readouterr().err
    assert "finding: crm.contacts.secondary_email: unmapped_column (email, hit rate 1.00 of 2)" in err
    assert "@example.org" not in err
    assert cli.main(["concept"]) == 0
    assert "open discovery finding:" not in capsys.readouterr().out  # discovery never ran: nothing stored
    discovery_tasks.run_system("crm", dag_id="data_map_drift", run_id="d1")
    assert cli.main(["concept"]) == 0
    out = capsys.readouterr().out
    assert "- open discovery finding: crm.contacts.secondary_email: unmapped column, email, hit rate 1.00 of 2 " \
           "sampled; first seen" in out
    store = FindingStore(ledger)
    store.decide(store.open_findings()[0]["finding_id"], "ignore", "dpo", "test fixture column")
    assert cli.main(["validate", policy_file, "--live"]) == 0
    assert "live: 0 open discovery finding(s) in 1 systems" in capsys.readouterr().out
    assert cli.main(["concept"]) == 0
    assert "open discovery finding:" not in capsys.readouterr().out


def test_record_decisions_without_reason_keeps_the_finding_open(world):
    from airflow.sdk.exceptions import AirflowFailException

    crm, ledger = world
    discovery_tasks.run_system("crm", dag_id="data_map_drift", run_id="d1")
    items = discovery_tasks.review_items()
    assert [i["subject"] for i in items] == ["Data map drift: crm.contacts.secondary_email (unmapped_column)"]
    assert "email: [email, secondary_email]" in items[0]["body"] and "@example" not in items[0]["body"]
    answer = {"chosen_options": ["ignore"], "params_input": {"reason": ""}, "responded_by_user": {"name": "dpo"}}
    with pytest.raises(AirflowFailException, match="'ignore' needs a reason"):
        discovery_tasks.record_decisions(items, [answer], dag_id="data_map_drift", run_id="d1")
    store = FindingStore(ledger)
    assert [r["status"] for r in store.listing(statuses=("open", "ignored"))] == ["open"]
    assert discovery_tasks.record_decisions(items, [None], dag_id="data_map_drift", run_id="d1") == {
        items[0]["finding_id"]: "open"}  # unanswered (timed out): stays open, nothing in the ledger
    with ledger.connect() as conn:
        actions = conn.execute(sa.text("SELECT action FROM ledger_entries")).scalars().all()
    assert actions == ["discovery"]
