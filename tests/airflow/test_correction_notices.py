"""Art. 19 after a correction and unsent notices, through Airflow's runtime (dag.test) on PostgreSQL + MariaDB + moto
S3 with a real SMTP server (aiosmtpd on 127.0.0.1) and a real HTTP server: after `rectify` exactly the declared
recipients of the changed systems get exactly one message each and the requester hears back (after `withdraw`
too); a channel without its connection leaves its recipient unconfirmed and the request open, unless the
deployment opted into recording only (the demo)."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from include.retention.dashboard import open_requests
from tests.airflow.conftest import run_dag, task_states
from tests.airflow.test_erasure_request_dag import (  # noqa: F401 - the world fixture
    SUBJECT,
    SUBJECT_LC,
    airflow_text_containing,
    subject_rows,
    world,
)
from tests.airflow.test_notifications import SHARED_KEY, channels  # noqa: F401 - fixtures
from tests.integration.test_notify import http_server, smtp_server, text_of  # noqa: F401 - fixtures

pytestmark = [pytest.mark.airflow, pytest.mark.integration]
NEW = "Corrected.Person@Example.org"


def test_rectify_tells_each_declared_recipient_once_and_the_requester(world, channels):  # noqa: F811
    box, hook = channels
    run = run_dag("access_request", {"email": SUBJECT, "mode": "rectify", "new_email": NEW})
    states = task_states(run)
    assert run.state == "success", states
    assert states["send_notice"] == ["success", "success", "success"], states
    registry = world["registry"]
    rid = registry.request_id_for("access_request", run.run_id)
    assert registry.get(rid)["status"] == "complete"

    # the recipients of the corrected systems (crm: hosting, it_maintenance; mailing: marketing_tools), once each
    hosting = box.to("privacy@hosting.example")
    maintenance = box.to(f"dpa+{rid}@it-maintenance.example")
    requester = box.to(SUBJECT_LC)
    assert (len(hosting), len(maintenance), len(requester)) == (1, 1, 1)
    assert len(box.messages) == 3 and box.to("privacy@site-operator.example") == []
    assert len(hook.received) == 1
    payload = hook.received[0]["body"]
    assert payload["request_id"] == rid and payload["action"] == "rectify" and payload["systems"] == ["mailing"]
    assert SUBJECT_LC not in json.dumps(payload).lower() and NEW.lower() not in json.dumps(payload).lower()
    maintenance_text = text_of(maintenance[0])
    assert rid in maintenance_text and "rectification" in maintenance_text
    assert SUBJECT_LC not in maintenance_text.lower() and NEW.lower() not in maintenance_text.lower()
    assert rid in text_of(requester[0]) and "rectification" in text_of(requester[0])

    assert {n: r["status"] for n, r in registry.recipients.of(rid).items()} == {
        "hosting": "sent", "it_maintenance": "sent", "marketing_tools": "confirmed"}
    receipt = registry.receipt(rid)
    assert set(receipt["recipients"]) == {"hosting", "it_maintenance", "marketing_tools"}
    assert receipt["requester_notice"] == "sent"
    assert NEW.lower() not in json.dumps(receipt).lower() and SUBJECT_LC not in json.dumps(receipt).lower()
    assert airflow_text_containing(NEW.lower()) == []

    # withdraw: no recipient is concerned (Art. 19 is about erasure, restriction, correction); the requester hears
    box.messages.clear()
    run = run_dag("access_request", {"email": NEW, "mode": "withdraw"})
    assert run.state == "success", task_states(run)
    rid = registry.request_id_for("access_request", run.run_id)
    assert registry.recipients.of(rid) == {} and len(hook.received) == 1
    assert [len(box.to(NEW.lower())), len(box.messages)] == [1, 1]
    assert "withdrawal of consent" in text_of(box.to(NEW.lower())[0])


def test_a_channel_without_connection_leaves_the_recipient_unconfirmed(world, monkeypatch):  # noqa: F811
    monkeypatch.delenv("RETENTION_NOTIFY_RECORD_ONLY")  # the default: nothing counts as told unless it was sent
    for conn in ("SMTP_DEFAULT", "MARKETING_TOOLS_WEBHOOK"):
        monkeypatch.delenv(f"AIRFLOW_CONN_{conn}", raising=False)
    run = run_dag("erasure_request", {"email": SUBJECT, "mode": "erase"})
    states = task_states(run)
    assert run.state == "failed" and states["finalize"] == ["failed"], states
    assert not any(subject_rows(world).values())  # erased everywhere; only the telling is not done
    registry = world["registry"]
    rid = registry.request_id_for("erasure_request", run.run_id)
    req = registry.get(rid)
    assert req["status"] == "incomplete" and req["last_error"] == "not every recipient confirmed or waived"
    recipients = registry.recipients.of(rid)
    assert {n: (r["status"], r["note"]) for n, r in recipients.items()} == {
        "hosting": ("failed", "not sent: no connection 'smtp_default' configured"),
        "it_maintenance": ("failed", "not sent: no connection 'smtp_default' configured"),
        "marketing_tools": ("failed", "not sent: no connection 'marketing_tools_webhook' configured")}
    assert registry.receipt(rid)["status"] == "incomplete"
    # the retention page lists the open request with each unconfirmed recipient and why
    page = {r["request_id"]: r for r in open_requests(registry.engine)}
    assert page[rid]["unconfirmed_recipients"] == [
        "hosting (not sent: no connection 'smtp_default' configured)",
        "it_maintenance (not sent: no connection 'smtp_default' configured)",
        "marketing_tools (not sent: no connection 'marketing_tools_webhook' configured)"]


def test_recording_only_is_an_explicit_opt_in(world, monkeypatch):  # noqa: F811
    monkeypatch.setenv("RETENTION_NOTIFY_RECORD_ONLY", "1")  # what the demo sets (and says)
    for conn in ("SMTP_DEFAULT", "MARKETING_TOOLS_WEBHOOK"):
        monkeypatch.delenv(f"AIRFLOW_CONN_{conn}", raising=False)
    run = run_dag("erasure_request", {"email": SUBJECT, "mode": "erase"})
    assert run.state == "success", task_states(run)
    registry = world["registry"]
    rid = registry.request_id_for("erasure_request", run.run_id)
    assert registry.get(rid)["status"] == "complete"
    recipients = registry.recipients.of(rid)
    assert {r["status"] for r in recipients.values()} == {"waived"}
    assert all(r["note"].startswith("recorded, not sent: no connection") and "RETENTION_NOTIFY_RECORD_ONLY" in r["note"]
               for r in recipients.values())
    assert registry.receipt(rid)["requester_notice"].startswith("recorded, not sent")
    with registry.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM request_recipients")).scalar() == 3
