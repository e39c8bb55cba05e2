"""Art. 19 and Art. 12 through Airflow's runtime: erasure_request (dag.test) on PostgreSQL + MariaDB + moto S3 tells
the data map's recipients over a real SMTP server (aiosmtpd on 127.0.0.1) and a real HTTP server, the requester
hears back, a flaky webhook is retried, and a manual recipient holds the request open until approved."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time

import pytest
import sqlalchemy as sa

from include.retention.registry import request_recipients
from tests.airflow.conftest import answer_approval, run_dag, task_states
from tests.airflow.test_erasure_request_dag import (  # noqa: F401 - the world fixture
    SUBJECT,
    SUBJECT_LC,
    airflow_text_containing,
    world,
)
from tests.conftest import ROOT
from tests.integration.test_notify import http_conn, http_server, smtp_conn, smtp_server, text_of  # noqa: F401

pytestmark = [pytest.mark.airflow, pytest.mark.integration]
DAG_ID = "erasure_request"
SHARED_KEY = "key-shared-with-the-marketing-tools-provider"


@pytest.fixture
def channels(world, smtp_server, http_server, monkeypatch):
    port, box = smtp_server
    hport, hook = http_server
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", smtp_conn(port))
    monkeypatch.setenv("AIRFLOW_CONN_MARKETING_TOOLS_WEBHOOK", http_conn(hport))
    monkeypatch.setenv("AIRFLOW_CONN_MARKETING_TOOLS_DIGEST_KEY",
                       json.dumps({"conn_type": "generic", "password": SHARED_KEY}))
    return box, hook


def test_erasure_tells_each_declared_recipient_once_and_the_requester(world, channels):
    box, hook = channels
    run = run_dag(DAG_ID, {"email": SUBJECT, "mode": "erase"})
    states = task_states(run)
    assert run.state == "success", states
    assert states["send_notice"] == ["success", "success", "success"]
    assert states["confirm_recipients"] == ["skipped"]  # no manual recipient in the default map
    registry = world["registry"]
    rid = registry.request_id_for(DAG_ID, run.run_id)
    assert registry.get(rid)["status"] == "complete"

    # exactly the declared recipients of the changed systems, one message each (server_log_operator: not concerned)
    hosting = box.to("privacy@hosting.example")
    maintenance = box.to(f"dpa+{rid}@it-maintenance.example")
    requester = box.to(SUBJECT_LC)
    assert (len(hosting), len(maintenance), len(requester)) == (1, 1, 1)
    assert len(box.messages) == 3 and box.to("privacy@site-operator.example") == []
    assert len(hook.received) == 1 and hook.received[0]["path"] == "/gdpr/notices"

    # the request id everywhere; the identity only where the data map allows it
    hosting_text, maintenance_text = text_of(hosting[0]), text_of(maintenance[0])
    assert rid in hosting_text and SUBJECT_LC in hosting_text  # identity: plain, by e-mail only
    assert rid in maintenance_text and SUBJECT_LC not in maintenance_text.lower()
    assert "erasure" in maintenance_text and "contact_data" in maintenance_text
    payload = hook.received[0]["body"]
    assert payload["request_id"] == rid and payload["action"] == "erase" and payload["systems"] == ["mailing"]
    assert SUBJECT_LC not in json.dumps(payload).lower()
    expected = hmac.new(SHARED_KEY.encode(), SUBJECT_LC.encode(), hashlib.sha256).hexdigest()
    assert payload["subject_digests"]["email"] == expected  # the processor finds the person by its own digest
    assert rid in text_of(requester[0]) and "carried out" in text_of(requester[0])

    # per-recipient status in the registry and the receipt; no identity in Airflow's metadata, logs or ledger
    recipients = registry.recipients.of(rid)
    assert {n: r["status"] for n, r in recipients.items()} == {
        "hosting": "sent", "it_maintenance": "sent", "marketing_tools": "confirmed"}
    assert recipients["marketing_tools"]["response"] == "http 200"
    receipt = registry.receipt(rid)
    assert set(receipt["recipients"]) == set(recipients) and receipt["requester_notice"] == "sent"
    assert SUBJECT_LC not in json.dumps(receipt).lower()
    assert airflow_text_containing(SUBJECT_LC) == []
    with world["ledger"].engine.connect() as conn:
        stored = repr(conn.execute(sa.select(request_recipients)).all()) + repr(list(world["ledger"].rows()))
    assert SUBJECT_LC not in stored.lower()


def test_webhook_503_twice_then_200_is_retried_and_confirmed(world, channels):
    box, hook = channels
    hook.statuses = [503, 503]
    run = run_dag(DAG_ID, {"email": SUBJECT, "mode": "restrict"})
    assert run.state == "success", task_states(run)
    rid = world["registry"].request_id_for(DAG_ID, run.run_id)
    assert len(hook.received) == 3 and all(r["body"] == hook.received[0]["body"] for r in hook.received)
    assert hook.received[0]["body"]["action"] == "restrict"
    marketing = world["registry"].recipients.of(rid)["marketing_tools"]
    assert (marketing["status"], marketing["attempts"], marketing["response"]) == ("confirmed", 3, "http 200")
    assert world["registry"].get(rid)["status"] == "complete"
    assert len(box.to("privacy@hosting.example")) == 1  # the mail recipients are told once, not per webhook try


def _policy_with_manual_recipient(tmp_path) -> str:
    text = (ROOT / "config" / "policy.yaml").read_text()
    old = "notify: [marketing_tools, it_maintenance]"
    assert old in text
    text = text.replace(old, "notify: [marketing_tools, it_maintenance, auditor]", 1)
    text += ('  auditor:\n    description: "external auditor (told by the DPO by hand)"\n    channel: manual\n'
             "    processor: false\n")
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return str(path)


def _watch_manual(engine, seen: dict, stop: threading.Event):
    """While the run waits for the approval: the request is not complete and the auditor is pending."""
    while not stop.is_set():
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT r.recipient, r.status, q.status FROM request_recipients r JOIN "
                                        "subject_requests q ON q.request_id = r.request_id")).all() \
                if sa.inspect(engine).has_table("request_recipients") else []
        mine = {name: (status, req) for name, status, req in rows}
        if "auditor" in mine and mine.get("hosting", ("",))[0] == "sent":
            seen.update(mine)
            return
        time.sleep(0.3)


def test_manual_recipient_blocks_completion_until_approved(world, channels, tmp_path, monkeypatch):
    monkeypatch.setenv("RETENTION_POLICY_PATH", _policy_with_manual_recipient(tmp_path))
    seen: dict = {}
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_manual, args=(world["ledger"].engine, seen, stop), daemon=True)
    watcher.start()
    responder = answer_approval(DAG_ID, "confirm_recipients", "Approve")
    try:
        run = run_dag(DAG_ID, {"email": SUBJECT, "mode": "erase"})
    finally:
        stop.set()
        responder.wait(timeout=150)
    assert responder.returncode == 0
    assert run.state == "success", task_states(run)
    # before the approval: everyone else told, the auditor pending, the request not complete
    assert seen["auditor"] == ("pending", "in_progress") and seen["hosting"][0] == "sent"
    rid = world["registry"].request_id_for(DAG_ID, run.run_id)
    auditor = world["registry"].recipients.of(rid)["auditor"]
    assert (auditor["status"], auditor["channel"]) == ("confirmed", "manual")
    assert world["registry"].get(rid)["status"] == "complete"


def test_rejected_manual_recipient_leaves_the_request_open(world, channels, tmp_path, monkeypatch):
    monkeypatch.setenv("RETENTION_POLICY_PATH", _policy_with_manual_recipient(tmp_path))
    responder = answer_approval(DAG_ID, "confirm_recipients", "Reject")
    try:
        run = run_dag(DAG_ID, {"email": SUBJECT, "mode": "erase"})
    finally:
        responder.wait(timeout=150)
    states = task_states(run)
    assert run.state == "failed" and states["record_confirmations"] == ["skipped"], states
    registry = world["registry"]
    rid = registry.request_id_for(DAG_ID, run.run_id)
    assert registry.get(rid)["status"] == "incomplete"
    assert registry.recipients.of(rid)["auditor"]["status"] == "pending"
    assert registry.recipients.unconfirmed() == {rid: ["auditor"]}
    assert channels[0].to(SUBJECT_LC) == []  # the requester hears back only once it is complete
    # an explicit waiver closes it at the next finalize
    registry.recipients.waive(rid, "auditor", "the auditor holds no copy of this person's data")
    assert registry.recipients.settled(rid)
