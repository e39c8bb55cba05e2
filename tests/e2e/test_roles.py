"""Roles on the real stack (FAB auth manager, LocalExecutor), through REST API v2 with tokens from ``/auth/token``.

- ``dpo`` (Viewer), ``user`` (User) and ``op`` (Op) can neither trigger ``erasure_request`` nor read
  it, its runs (confs) or the audit log (``/api/v2/eventLogs``, where a REST trigger's conf lands):
  403 each; they still see and use the other DAGs (``retention_sweep``).
- ``privacy`` (the Privacy role) triggers it and the run succeeds; through the retention page's
  intake it submits a request whose run conf holds only the request id.
- the retention page: every role reads it; only ``privacy`` and ``admin`` verify the ledger.
- FAB runs on this venv's SQLAlchemy 2.1 (the stack's processes use this interpreter).

docs/reliability.md "Roles" is this file's table.
"""

from __future__ import annotations

import subprocess
import time

import httpx
import pytest
import sqlalchemy as sa

from include.retention.registry import Registry
from tests.airflow.test_erasure_request_dag import SECRET
from tests.e2e.conftest import USERS, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

NOT_PRIVACY = ("dpo", "user", "op")
PRIVATE_DAGS = ("erasure_request", "erasure_intake", "erasure_metadata_purge", "erasure_run_purge")
ADDRESS = "roles.person@example.org"


def _quoted(run_id: str) -> str:
    return httpx.URL(f"/{run_id}").raw_path.decode()[1:]


def test_fab_on_sqlalchemy_21(local_stack: Stack):
    """The stack's interpreter has SQLAlchemy 2.1 and the FAB provider, and FAB's tables hold our users."""
    out = subprocess.run([local_stack.env["PATH"].split(":")[0] + "/python", "-c",
                          "import sqlalchemy, flask_sqlalchemy, flask_appbuilder, airflow.providers.fab as f;"
                          "print(sqlalchemy.__version__, f.__version__)"],
                         env=local_stack.env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    sa_version, fab_version = out.stdout.split()[-2:]
    assert sa_version.startswith("2.1."), sa_version
    assert fab_version == "3.10.2"
    engine = sa.create_engine(local_stack.metadata_url)
    try:
        with engine.connect() as conn:
            users = dict(conn.execute(sa.text(
                "SELECT u.username, r.name FROM ab_user u JOIN ab_user_role ur ON ur.user_id = u.id "
                "JOIN ab_role r ON r.id = ur.role_id")).all())
            all_dag = conn.execute(sa.text(
                "SELECT r.name FROM ab_role r JOIN ab_permission_view_role pvr ON pvr.role_id = r.id "
                "JOIN ab_permission_view pv ON pv.id = pvr.permission_view_id "
                "JOIN ab_view_menu v ON v.id = pv.view_menu_id JOIN ab_permission p ON p.id = pv.permission_id "
                "WHERE v.name = 'DAGs' AND p.name IN ('can_read', 'can_edit', 'can_delete')")).scalars().all()
    finally:
        engine.dispose()
    assert users == USERS
    assert set(all_dag) == {"Admin"}, "only Admin keeps the all-DAG permissions"
    # a token from FAB's /auth/token works: the api-server's FAB session runs on the same SQLAlchemy 2.1
    assert local_stack.api_as("privacy", "GET", "/api/v2/dags/erasure_request").status_code == 200


def test_viewer_user_op_cannot_trigger_or_read_erasure_runs(local_stack: Stack):
    stack = local_stack
    stack.unpause("erasure_request")
    run_id = stack.trigger("erasure_request", {"email": ADDRESS, "mode": "erase", "dry_run": True})  # admin
    stack.wait_run("erasure_request", run_id)
    body = {"logical_date": None, "conf": {"email": "someone@example.org", "mode": "erase"}}
    for user in NOT_PRIVACY:
        checks = {
            "trigger": stack.api_as(user, "POST", "/api/v2/dags/erasure_request/dagRuns", json=body),
            "trigger intake": stack.api_as(user, "POST", "/api/v2/dags/erasure_intake/dagRuns",
                                           json={"logical_date": None}),
            "dag": stack.api_as(user, "GET", "/api/v2/dags/erasure_request"),
            "runs": stack.api_as(user, "GET", "/api/v2/dags/erasure_request/dagRuns"),
            "run": stack.api_as(user, "GET", f"/api/v2/dags/erasure_request/dagRuns/{_quoted(run_id)}"),
            "task instances": stack.api_as(user, "GET",
                                           f"/api/v2/dags/erasure_request/dagRuns/{_quoted(run_id)}/taskInstances"),
            "event logs": stack.api_as(user, "GET", "/api/v2/eventLogs", params={"limit": 1000}),
            "event logs of the dag": stack.api_as(user, "GET", "/api/v2/eventLogs",
                                                  params={"dag_id": "erasure_request"}),
            "clear": stack.api_as(user, "POST", "/api/v2/dags/erasure_request/clearTaskInstances",
                                  json={"dry_run": True}),
            "pause": stack.api_as(user, "PATCH", "/api/v2/dags/erasure_request", json={"is_paused": True}),
        }
        assert {k: r.status_code for k, r in checks.items()} == dict.fromkeys(checks, 403), \
            {k: (r.status_code, r.text[:200]) for k, r in checks.items()}
        for r in checks.values():
            assert ADDRESS not in r.text and "someone@example.org" not in r.text
        # the lists they may read leave the privacy DAGs and their runs out
        dags = stack.api_as(user, "GET", "/api/v2/dags", params={"limit": 100})
        assert dags.status_code == 200, dags.text
        listed = {d["dag_id"] for d in dags.json()["dags"]}
        assert "retention_sweep" in listed and not listed & set(PRIVATE_DAGS), (user, listed)
        runs = stack.api_as(user, "GET", "/api/v2/dags/~/dagRuns", params={"limit": 100})
        assert runs.status_code in (200, 403), runs.text
        if runs.status_code == 200:
            assert not {r["dag_id"] for r in runs.json()["dag_runs"]} & set(PRIVATE_DAGS)
        assert ADDRESS not in runs.text
        # the retention page is for everybody logged in; verifying it is not
        assert stack.api_as(user, "GET", "/retention/api/summary").status_code == 200
        assert stack.api_as(user, "POST", "/retention/api/verify").status_code == 403
        assert stack.api_as(user, "POST", "/retention/requests", json={"email": ADDRESS}).status_code == 403
        # ... while the DAGs they are given still work: User and Op may trigger the sweep's dry run
        sweep = stack.api_as(user, "GET", "/api/v2/dags/retention_sweep")
        assert sweep.status_code == 200
    assert httpx.post(f"{stack.base_url}/api/v2/dags/erasure_request/dagRuns", json=body).status_code == 401
    # nothing was triggered by them
    runs = stack.api("GET", "/api/v2/dags/erasure_request/dagRuns", params={"limit": 100}).json()["dag_runs"]
    assert {r["triggering_user_name"] for r in runs} <= {"admin", "privacy"}


def test_privacy_role_triggers_and_the_run_succeeds(local_stack: Stack):
    stack = local_stack
    stack.unpause("erasure_request")
    r = stack.api_as("privacy", "POST", "/api/v2/dags/erasure_request/dagRuns",
                     json={"logical_date": None, "conf": {"email": "priv.person@example.org", "dry_run": True}})
    assert r.status_code == 200, r.text
    run_id = r.json()["dag_run_id"]
    run = stack.wait_run("erasure_request", run_id)
    assert run["triggering_user_name"] == "privacy"
    assert stack.api_as("privacy", "GET", f"/api/v2/dags/erasure_request/dagRuns/{_quoted(run_id)}").status_code == 200
    assert stack.api_as("privacy", "POST", "/retention/api/verify").json()["ok"] is True
    assert stack.api_as(ADMIN_USER, "POST", "/retention/api/verify").status_code == 200


def test_retention_page_intake_triggers_with_the_request_id_only(local_stack: Stack):
    stack = local_stack
    stack.unpause("erasure_request")
    address = "page.intake@example.org"
    started = time.monotonic()
    r = stack.api_as("privacy", "POST", "/retention/requests", json={"email": address, "dry_run": True})
    assert r.status_code == 201, r.text
    body = r.json()
    run = stack.wait_run("erasure_request", body["run_id"])
    print(f"\n[{stack.executor}] intake -> erasure_request {body['run_id']}: {time.monotonic() - started:.1f}s")
    assert run["conf"] == {"request_id": body["request_id"]} and run["triggering_user_name"] == "privacy"
    registry = Registry(stack.world.ledger_engine, SECRET)
    req = registry.get(body["request_id"])
    assert req["status"] == "complete" and req["dry_run"] and req["source"] == "page"
    assert req["run_id"] == body["run_id"]
    states = stack.task_states("erasure_request", body["run_id"])
    assert states["register"] == ["success"] and states["finalize"] == ["success"], states
    # no identity in Airflow's metadata: not the conf, not the audit log
    events = stack.api("GET", "/api/v2/eventLogs", params={"dag_id": "erasure_request", "limit": 1000})
    assert events.status_code == 200 and address not in events.text.lower()
    runs = stack.api("GET", "/api/v2/dags/erasure_request/dagRuns", params={"limit": 100})
    assert address not in runs.text.lower()


ADMIN_USER = "admin"
