"""Airflow's own runtime for tests: a migrated metadata DB in a throwaway AIRFLOW_HOME."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="session")
def airflow_db():
    """Run ``airflow db migrate`` once per session on the test AIRFLOW_HOME (SQLite)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "airflow"), "db", "migrate"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return os.environ["AIRFLOW_HOME"]


def load_dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags[dag_id]


def task_states(dag_run) -> dict[str, list[str]]:
    """task_id -> states of its (mapped) instances, read back from the metadata DB."""
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.query(TaskInstance).filter(TaskInstance.dag_id == dag_run.dag_id,
                                                 TaskInstance.run_id == dag_run.run_id).all()
        out: dict[str, list[str]] = {}
        for ti in sorted(tis, key=lambda t: (t.task_id, t.map_index)):
            out.setdefault(ti.task_id, []).append(str(ti.state))
        return out


def run_dag(dag_id: str, conf: dict):
    """dag.test() on a freshly parsed DAG: an in-process DAG object keeps the params of its last run."""
    return load_dag(dag_id).test(run_conf=conf)


RESPONDER = """
import sys, time
from airflow.models.hitl import HITLDetail, HITLUser
from airflow.models.taskinstance import TaskInstance
from airflow.models.trigger import handle_event_submit
from airflow.triggers.base import TriggerEvent
from airflow.sdk import timezone
from airflow.utils.session import create_session
from airflow.utils.state import TaskInstanceState

dag_id, task_id, option, timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
deadline = time.monotonic() + timeout
parked = None
from sqlalchemy.exc import OperationalError
try:
    while time.monotonic() < deadline:
      try:
        with create_session() as session:
            ti = (session.query(TaskInstance)
                  .filter(TaskInstance.dag_id == dag_id, TaskInstance.task_id == task_id,
                          TaskInstance.state == TaskInstanceState.AWAITING_INPUT).first())
            detail = ti and session.query(HITLDetail).filter(HITLDetail.ti_id == ti.id).one_or_none()
            if detail is not None:
                parked = ti.id
                detail.responded_by = HITLUser(id="dpo", name="dpo")
                detail.responded_at = timezone.utcnow()
                detail.chosen_options = [option]
                detail.params_input = {}
                session.add(detail)
                handle_event_submit(TriggerEvent(detail.as_resume_event_payload()), task_instance=ti,
                                    session=session)
      except OperationalError:  # the run's own writer holds the SQLite file: try again, never give up early
        parked = None
      if parked is not None:  # committed when the session block closed
        break
      time.sleep(0.5)
finally:
    if parked is None:
        # never leave dag.test() waiting forever on a broken responder: fail the parked task
        with create_session() as session:
            for ti in session.query(TaskInstance).filter(
                    TaskInstance.dag_id == dag_id, TaskInstance.task_id == task_id,
                    TaskInstance.state == TaskInstanceState.AWAITING_INPUT):
                ti.state = TaskInstanceState.FAILED
sys.exit(0 if parked is not None else 1)
"""


def answer_approval(dag_id: str, task_id: str, option: str, timeout: float = 120.0):
    """Answer a parked human-in-the-loop task from another process, as the REST API handler does
    (``PATCH /api/v2/hitlDetails/...``): record the chosen option, then resume the task instance.
    Returns the process; ``returncode == 0`` once it answered."""
    return subprocess.Popen([sys.executable, "-c", RESPONDER, dag_id, task_id, option, str(timeout)],
                            stderr=open(os.environ.get("RETENTION_RESPONDER_LOG", os.devnull), "a"),
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
