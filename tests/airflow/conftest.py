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
