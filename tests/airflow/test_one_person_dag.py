"""One person per request through Airflow's runtime (dag.test) on PostgreSQL (CRM), MariaDB (mailing list) and S3
(moto's server): an erasure carrying the subject's e-mail and somebody else's phone stops at the identity check,
whose text shows the redacted summary (kinds, statuses, counts; no value); Reject leaves every row and object
byte for byte, adds no suppression entry and closes the request with a receipt naming the conflict by kind."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from include.retention.requests import person
from tests.airflow.conftest import RESPONDER, run_dag, task_states
from tests.airflow.test_erasure_identity_check import dump, objects
from tests.airflow.test_erasure_request_dag import (  # noqa: F401 - the world fixture and its helpers
    SUBJECT,
    add_subject,
    world,
)
from tests.conftest import ROOT

pytestmark = [pytest.mark.airflow, pytest.mark.integration]
DAG_ID = "erasure_request"
OTHER_EMAIL, OTHER_PHONE = "someone.else@example.org", "+48 611 722 833"


def answer_reading_body(dag_id: str, task_id: str, option: str, body_file) -> subprocess.Popen:
    """answer_approval that first writes the parked task's rendered body (what the approver reads) to a file."""
    script = RESPONDER.replace("                parked = ti.id\n",
                               f"                parked = ti.id\n                open({str(body_file)!r}, 'w')"
                               ".write(detail.body or '')\n")
    assert script != RESPONDER
    return subprocess.Popen([sys.executable, "-c", script, dag_id, task_id, option, "120"],
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_conflicting_request_stops_at_the_identity_check_with_the_summary(world, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setenv("RETENTION_VERIFY_IDENTITY", "access,rectify,erase")
    add_subject(world["crm"], world["mailing"], OTHER_EMAIL, phone=OTHER_PHONE, name="Someone Else")
    rows, objs = dump(world), objects(world)
    body_file = tmp_path / "body.md"
    responder = answer_reading_body(DAG_ID, "verify_identity", "Reject", body_file)
    run = run_dag(DAG_ID, {"email": SUBJECT, "phone": OTHER_PHONE, "mode": "erase"})
    assert responder.wait(timeout=180) == 0
    states = task_states(run)
    assert run.state == "success", states
    assert states["resolve_person"] == ["success"] and states["identity_confirmed"] == ["skipped"]

    body = body_file.read_text()
    assert "CONFLICT" in body and "- phone: conflicting (a record carrying it holds another email)" in body
    assert "- email: found" in body and "crm.contacts: 1" in body
    for value in (SUBJECT, SUBJECT.lower(), OTHER_EMAIL, OTHER_PHONE, "611", "722"):
        assert value not in body

    assert dump(world) == rows and objects(world) == objs  # nothing read into a change, nothing changed
    registry = world["registry"]
    rid = registry.request_id_for(DAG_ID, run.run_id)
    assert registry.get(rid)["status"] == "rejected"
    assert not registry.suppression.contains("email", SUBJECT)
    assert not registry.suppression.contains("phone", OTHER_PHONE)
    receipt = registry.receipt(rid)
    assert receipt["person"]["identities"] == {"email": "found", "phone": "conflicting"}
    assert receipt["person"]["decision"] == "stopped" and receipt["person"]["dropped"] == []
    assert not [e for e in world["ledger"].rows() if e["request_id"] == rid and e["action"] == "erase"]
    assert person.resolution_of(registry.details(rid)).act_kinds == ["email"]
