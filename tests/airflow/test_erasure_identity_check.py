"""The identity check before an erasure (issue 11 item 5), through Airflow's runtime (dag.test) on PostgreSQL
(CRM), MariaDB (mailing list) and S3 (moto's server): Approve proceeds (the subject's rows are gone); Reject
changes nothing (every row and object kept byte for byte) and closes the request as rejected with the reason;
a trigger that claims its own identity verified is refused; erasure_intake takes only the queued rows verified
at intake, and an unverified row handed to erasure_request waits for the check there."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from include.retention.demo import schema
from include.retention.registry import INTAKE_VERIFIED, Identities, NewRequest
from tests.airflow.conftest import answer_approval, run_dag, task_states
from tests.airflow.test_access_request_dag import answer
from tests.airflow.test_erasure_request_dag import (  # noqa: F401 - the world fixture and its helpers
    SUBJECT,
    all_keys,
    subject_rows,
    world,
)

pytestmark = [pytest.mark.airflow, pytest.mark.integration]
DAG_ID = "erasure_request"


@pytest.fixture
def checked(world, monkeypatch):  # noqa: F811 - pytest fixture chaining
    monkeypatch.setenv("RETENTION_VERIFY_IDENTITY", "access,rectify,erase")  # the default, explicitly
    return world


def dump(world) -> dict[str, list[tuple]]:
    """Every row of every table (the subject's too), in the databases' own representation."""
    out = {}
    for engine, md in ((world["crm"], schema.crm_metadata), (world["mailing"], schema.mailing_metadata)):
        with engine.connect() as conn:
            for t in md.sorted_tables:
                out[t.name] = sorted((tuple(r) for r in conn.execute(sa.select(t))), key=repr)
    return out


def objects(world) -> dict[tuple[str, str], bytes]:
    """Every version of every object, with its bytes."""
    s3, out = world["s3"], {}
    for bucket in world["keys"]:
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
            for v in page.get("Versions", []):
                body = s3.get_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])["Body"].read()
                out[(bucket, v["Key"], v["VersionId"])] = body
    return out


def test_approve_proceeds(checked):
    world = checked
    assert any(subject_rows(world).values())
    responder = answer_approval(DAG_ID, "verify_identity", "Approve")
    run = run_dag(DAG_ID, {"email": SUBJECT, "mode": "erase"})
    assert responder.wait(timeout=180) == 0
    states = task_states(run)
    assert run.state == "success", states
    assert states["verify_identity"] == ["success"] and states["identity_gate"] == ["success"]
    assert not any(subject_rows(world).values())
    registry = world["registry"]
    rid = registry.request_id_for(DAG_ID, run.run_id)
    assert registry.get(rid)["status"] == "complete"
    assert registry.details(rid)["identity_check"]["decision"] == "approved"
    assert registry.receipt(rid)["identity_check"] == {"decision": "approved", "reason_recorded": False}
    assert world["ledger"].verify(record=False).ok


def test_reject_changes_nothing_and_closes_with_the_reason(checked):
    world = checked
    rows, objs = dump(world), objects(world)
    responder = answer(DAG_ID, "verify_identity", "Reject", "the reply came from another address")
    run = run_dag(DAG_ID, {"email": SUBJECT, "mode": "erase", "request_ref": "T-9"})
    assert responder.wait(timeout=180) == 0
    states = task_states(run)
    assert run.state == "success", states
    assert states["identity_confirmed"] == ["skipped"] and states["identity_gate"] == ["success"]
    assert dump(world) == rows  # every row kept, the subject's too
    assert objects(world) == objs  # every object version, byte for byte
    registry = world["registry"]
    rid = registry.request_id_for(DAG_ID, run.run_id)
    req = registry.get(rid)
    assert req["status"] == "rejected" and req["last_error"] == "identity not verified"
    assert registry.details(rid)["identity_check"] == {"decision": "rejected", "by": "dpo",
                                                       "reason": "the reply came from another address"}
    receipt = registry.receipt(rid)
    assert receipt["status"] == "rejected"
    assert receipt["identity_check"] == {"decision": "rejected", "reason_recorded": True}
    assert receipt["verification"].startswith("identity not verified: the request was rejected and closed")
    assert "another address" not in repr(receipt)  # the reason stays encrypted in the registry
    entries = [r for r in world["ledger"].rows() if r["request_id"] == rid]
    assert [(e["action"], e["outcome"]) for e in entries] == [("identity_check", "rejected")]
    assert world["ledger"].verify(record=False).ok
    assert registry.recipients.of(rid) == {}  # nothing changed: no recipient is told of anything


def test_a_trigger_claiming_its_own_identity_verified_is_refused(checked):
    world = checked
    rows = dump(world)
    run = run_dag(DAG_ID, {"email": SUBJECT, "mode": "erase", "identity_verified": True})
    states = task_states(run)
    assert run.state == "failed" and states["register"] == ["failed"], states
    assert dump(world) == rows
    registry = world["registry"]
    registry.ensure_schema()
    with registry.engine.connect() as conn:  # refused before anything was registered
        assert conn.execute(sa.text("SELECT count(*) FROM subject_requests")).scalar() == 0


def test_intake_takes_only_verified_rows_and_an_unverified_one_waits_for_the_check(checked):
    world = checked
    registry = world["registry"]
    keys = all_keys(world)
    verified, = registry.register_many([NewRequest(Identities(email="nobody.here@example.org"))],
                                       source=INTAKE_VERIFIED)
    unverified, = registry.register_many([NewRequest(Identities(email=SUBJECT))])
    run = run_dag("erasure_intake", {"batch_size": 500})
    assert run.state == "success", task_states(run)
    assert registry.get(verified)["status"] == "complete"
    assert registry.receipt(verified)["identity_check"]["decision"] == "verified at intake"
    assert registry.get(unverified)["status"] == "pending"  # waits: its identity was not verified at intake
    assert any(subject_rows(world).values()) and all_keys(world) == keys

    # handed to erasure_request by id, it waits for the identity check there
    responder = answer_approval(DAG_ID, "verify_identity", "Approve")
    run = run_dag(DAG_ID, {"request_id": unverified})
    assert responder.wait(timeout=180) == 0
    assert run.state == "success", task_states(run)
    assert registry.get(unverified)["status"] == "complete"
    assert registry.details(unverified)["identity_check"]["decision"] == "approved"
    assert not any(subject_rows(world).values())
