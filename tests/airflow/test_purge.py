"""Purge of erasure runs' identities from Airflow's metadata DB (SQLite), with real runs and API calls.

The DAGs here are throwaway test DAGs (the real erasure DAGs live in dags/); the purge is pointed
at them with ``dag_ids``. Markers are built at run time so the test module's source, which Airflow
stores in ``dag_code``, does not contain them.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import subprocess
import sys
import uuid

import pytest
import sqlalchemy as sa

from include.retention.airflow.purge import PURGED_CONF, PURGED_TEXT, purge_erasure_runs
from tests.conftest import ROOT

pytestmark = pytest.mark.airflow

TEST_DAG = "purge_test_dag"
OTHER_DAG = "purge_other_dag"
ARCHIVE_PREFIX = "_airflow_deleted__"
# Every table the purge touches, plus task_instance_history and task_instance_note.
SCANNED = ("dag_run", "dag_run_note", "xcom", "rendered_task_instance_fields", "task_instance",
           "task_instance_history", "task_instance_note", "task_map", "task_state_store", "hitl_detail",
           "hitl_detail_history", "log")


def _marker() -> str:
    return f"marker-person-{uuid.uuid4().hex[:8]}@example.org"


def _build_dag(dag_id: str):
    """Copies the conf into an XCom, a rendered template field and a map index, like careless task code."""
    from airflow.providers.standard.operators.bash import BashOperator
    from airflow.sdk import DAG, task

    with DAG(dag_id, schedule=None, start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), catchup=False) as dag:
        @task
        def push(**context) -> dict:
            return {"request_id": "req-1", "who": context["dag_run"].conf.get("email")}

        @task(map_index_template="{{ dag_run.conf.get('email', '') }}")
        def per_system(system: str) -> str:
            return system

        echo = BashOperator(task_id="echo", bash_command="echo {{ dag_run.conf.get('email', '') }}")
        push() >> per_system.expand(system=["crm", "mailing"]) >> echo
    return dag


def _register(*dags) -> None:
    """Write the DAGs to the metadata DB, as the DAG processor would (dag.test and the API need that)."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.serialization.serialized_objects import LazyDeserializedDAG
    from airflow.utils.session import create_session

    with create_session() as session:
        DagBundlesManager().sync_bundles_to_db(session=session)
    with create_session() as session:
        update_dag_parsing_results_in_db("dags-folder", None, [LazyDeserializedDAG.from_dag(d) for d in dags],
                                         {}, None, set(), session)


@pytest.fixture(scope="module")
def dags(airflow_db):
    built = {dag_id: _build_dag(dag_id) for dag_id in (TEST_DAG, OTHER_DAG)}
    _register(*built.values())
    return built


@pytest.fixture(scope="module")
def api(dags):
    """Airflow's REST API in-process; its audit log is the real ``action_logging``."""
    from fastapi.testclient import TestClient

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "True")
        # The app's execution API needs a JWT secret; airflow.cfg only has one if `airflow db migrate`
        # wrote it before this process loaded Airflow's configuration.
        mp.setenv("AIRFLOW__API_AUTH__JWT_SECRET", secrets.token_hex(32))
        from airflow.api_fastapi.app import create_app

        with TestClient(create_app()) as client:
            yield client


def _cli_trigger_audit(dag_id: str, marker: str) -> None:
    """The audit row ``airflow dags trigger -c ...`` writes (the CLI's default action logger)."""
    from airflow.utils.cli_action_loggers import default_action_log

    argv = ["airflow", "dags", "trigger", dag_id, "-c", json.dumps({"email": marker})]
    default_action_log(sub_command="dag_trigger", user="ops", task_id=None, dag_id=dag_id, logical_date=None,
                       host_name="ops-host", full_command=str(argv))


def _add_hitl_request(dag_id: str, run_id: str, marker: str) -> None:
    """A human-in-the-loop approval asked about the person (as an HITLOperator would store it)."""
    from airflow.models.hitl import HITLDetail
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        ti_id = session.scalar(sa.select(TaskInstance.id).where(
            TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id, TaskInstance.task_id == "push"))
        session.execute(sa.insert(HITLDetail.__table__).values(
            ti_id=ti_id, options=["Approve", "Reject"], subject=f"Erase {marker}?", body=f"Request for {marker}",
            params={"email": marker}, params_input={"email": marker}, chosen_options=["Approve"],
            responded_by={"id": "dpo", "name": "dpo"}, responded_at=dt.datetime.now(dt.UTC)))


def _hits(marker: str) -> dict[str, int]:
    """Rows per scanned table whose repr contains ``marker`` (all columns, raw as stored)."""
    from airflow.utils.session import create_session

    with create_session() as session:
        return {table: n for table in SCANNED
                if (n := sum(marker in repr(tuple(row)) for row in session.execute(sa.text(f"SELECT * FROM {table}"))))}


def _archive_tables() -> list[str]:
    from airflow.utils.session import create_session

    with create_session() as session:
        return [t for t in sa.inspect(session.get_bind()).get_table_names() if t.startswith(ARCHIVE_PREFIX)]


def _runs(dag_id: str) -> dict[str, tuple[str, dict]]:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        runs = session.scalars(sa.select(DagRun).where(DagRun.dag_id == dag_id))
        return {run.run_id: (run.state, run.conf) for run in runs}


def test_purge_removes_every_copy_of_the_conf_and_nothing_else(dags, api):
    marker, other = _marker(), _marker()

    # An operator triggers from the UI/REST API (with a note), then fails the stuck run by hand.
    resp = api.post(f"/api/v2/dags/{TEST_DAG}/dagRuns",
                    json={"logical_date": None, "conf": {"email": marker}, "note": f"asked by {marker}"})
    assert resp.status_code == 200, resp.text
    api_run = resp.json()["dag_run_id"]
    resp = api.patch(f"/api/v2/dags/{TEST_DAG}/dagRuns/{api_run}", json={"state": "failed"})
    assert resp.status_code == 200, resp.text
    _cli_trigger_audit(TEST_DAG, marker)
    # A run that executes and copies the conf around.
    run = dags[TEST_DAG].test(run_conf={"email": marker})
    assert run.state == "success"
    resp = api.patch(f"/api/v2/dags/{TEST_DAG}/dagRuns/{run.run_id}/taskInstances/push",
                     json={"note": f"checked {marker}"})
    assert resp.status_code == 200, resp.text
    _add_hitl_request(TEST_DAG, run.run_id, marker)
    scheduled = dags[TEST_DAG].test()  # no conf, like erasure_intake's scheduled runs: left as it is
    assert scheduled.state == "success"
    # Another DAG's run with another person: must survive.
    kept = dags[OTHER_DAG].test(run_conf={"email": other})
    assert kept.state == "success"
    _cli_trigger_audit(OTHER_DAG, other)

    before = _hits(marker)
    assert {"dag_run", "dag_run_note", "xcom", "rendered_task_instance_fields", "task_instance",
            "task_instance_note", "hitl_detail", "log"} <= set(before), before
    with_log = _hits(other)

    dry = purge_erasure_runs(0, dag_ids=(TEST_DAG,), dry_run=True)
    assert _hits(marker) == before
    assert dry["dag_run"] == 2 and dry["xcom"] >= 2 and dry["log"] >= 3, dry

    counts = purge_erasure_runs(0, dag_ids=(TEST_DAG,))
    assert counts == dry
    assert counts["rendered_task_instance_fields"] >= 1 and counts["task_instance"] >= 2, counts
    assert counts["dag_run_note"] == 1 and counts["task_instance_note"] == 1 and counts["hitl_detail"] == 1

    assert _hits(marker) == {}
    assert _archive_tables() == []
    runs = _runs(TEST_DAG)
    assert runs[api_run] == ("failed", PURGED_CONF) and runs[run.run_id] == ("success", PURGED_CONF)
    assert runs[scheduled.run_id] == ("success", {})
    from airflow.models.hitl import HITLDetail
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:  # this DAG's request only: other tests' DAGs ask for approvals too
        ti_ids = sa.select(TaskInstance.id).where(TaskInstance.dag_id == TEST_DAG)
        hitl = session.execute(sa.select(HITLDetail.__table__).where(HITLDetail.ti_id.in_(ti_ids))).mappings().one()
    assert hitl["subject"] == PURGED_TEXT and hitl["chosen_options"] == ["Approve"]
    assert hitl["responded_by"] == {"id": "dpo", "name": "dpo"}

    # The other DAG is untouched, and a second purge finds nothing left to do.
    assert _hits(other) == with_log
    assert _runs(OTHER_DAG)[kept.run_id] == ("success", {"email": other})
    assert set(purge_erasure_runs(0, dag_ids=(TEST_DAG,)).values()) == {0}


def test_recent_runs_are_kept(dags):
    marker = _marker()
    run = dags[TEST_DAG].test(run_conf={"email": marker})
    assert run.state == "success"
    before = _hits(marker)
    assert {"dag_run", "xcom", "rendered_task_instance_fields"} <= set(before)

    counts = purge_erasure_runs(30, dag_ids=(TEST_DAG,))
    assert set(counts.values()) == {0}, counts
    assert _hits(marker) == before
    assert _runs(TEST_DAG)[run.run_id] == ("success", {"email": marker})


def test_arguments_are_checked(airflow_db):
    with pytest.raises(ValueError, match="negative"):
        purge_erasure_runs(-1, dag_ids=(TEST_DAG,))
    with pytest.raises(ValueError, match="empty"):
        purge_erasure_runs(1, dag_ids=())


def _in_task_process(*args: str, metadata_url: str | None = None) -> subprocess.CompletedProcess:
    """Run the CLI as a BashOperator would: a child of a process whose DB access Airflow blocked."""
    code = ("import subprocess, sys\n"
            "from airflow.sdk.execution_time.supervisor import block_orm_access\n"
            "block_orm_access()\n"
            "cmd = [sys.executable, '-m', 'include.retention.airflow.purge_cli', *sys.argv[1:]]\n"
            "sys.exit(subprocess.run(cmd).returncode)\n")
    env = {k: v for k, v in os.environ.items() if k != "RETENTION_METADATA_DB_CONN"}
    env["PYTHONPATH"] = str(ROOT)
    if metadata_url:
        env["RETENTION_METADATA_DB_CONN"] = metadata_url
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=300)


def test_cli_inside_a_task_needs_the_metadata_url(airflow_db):
    from airflow.configuration import conf

    blocked = _in_task_process("--days", "0", "--dag-id", TEST_DAG)
    assert blocked.returncode == 2, blocked.stderr[-2000:]
    assert "RETENTION_METADATA_DB_CONN" in blocked.stderr

    ok = _in_task_process("--days", "0", "--dag-id", TEST_DAG, "--dry-run",
                          metadata_url=conf.get("database", "sql_alchemy_conn"))
    assert ok.returncode == 0, ok.stderr[-2000:]
    report = json.loads(ok.stdout.strip().splitlines()[-1])
    assert report["dry_run"] is True and report["older_than_days"] == 0
    assert {"dag_run", "xcom", "log", "rendered_task_instance_fields"} <= set(report["rows"])


def test_cli_rejects_bad_days(airflow_db):
    proc = subprocess.run([sys.executable, "-m", "include.retention.airflow.purge_cli", "--days", "0"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "RETENTION_PURGE_AFTER_DAYS": "a week"})
    assert proc.returncode == 2 and "RETENTION_PURGE_AFTER_DAYS" in proc.stderr


def test_maintenance_dag_parses_without_a_database(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    statements: list[str] = []

    def record(conn, cursor, statement, *args):
        statements.append(statement)

    monkeypatch.setenv("RETENTION_PURGE_AFTER_DAYS", "3")
    sa.event.listen(sa.engine.Engine, "before_cursor_execute", record)
    try:
        bag = DagBag(dag_folder=str(ROOT / "dags" / "metadata_purge.py"))
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", record)
    assert bag.import_errors == {}
    assert statements == []
    dag = bag.dags["erasure_metadata_purge"]
    assert set(dag.tags) == {"privacy", "maintenance"}
    assert dag.params["days"] == 3
    (task,) = dag.tasks
    # the interpreter that parsed the DAG (the one with Airflow), not a bare `python` from PATH
    assert task.bash_command.endswith(" -m include.retention.airflow.purge_cli --days {{ params.days }}")
    assert task.bash_command.split()[0] == sys.executable
    assert task.retries >= 1 and task.retry_exponential_backoff
