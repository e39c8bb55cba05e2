"""Airflow deadline alerts: the answer clock of runs that carry a request and the late sweep.

The deadline rows are made by Airflow itself (a run triggered as the REST API does); the scheduler's part (find
the missed deadlines, queue their callbacks) is ``Deadline.handle_miss`` run on the scheduler's own query, and the
executor's part is ``execute_callback``, the function its callback workload runs. Time is moved forward by
querying at a later "now". The scheduler loop and executor process themselves are not started here.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest

from include.retention.airflow import deadlines
from include.retention.airflow.purge import purge_erasure_runs
from include.retention.ledger import Ledger
from include.retention.registry import Identities, NewRequest, Registry
from include.retention.stores.sql import make_engine
from tests.airflow.conftest import load_dag
from tests.conftest import KEY
from tests.integration.test_due_date_notifier import webhook  # noqa: F401 - a real HTTP server fixture

pytestmark = [pytest.mark.airflow, pytest.mark.integration]
PERSON = "deadline.person@example.org"


@pytest.fixture(autouse=True)
def alerts_on(monkeypatch):
    """The suite parses the DAGs without their deadline alerts (tests/conftest.py: dag.test() of Airflow 3.3.2);
    these tests parse them as the scheduler's DAG processor does, with them."""
    monkeypatch.setenv(deadlines.DEADLINES_ENV, "1")


def test_alerts_can_be_left_off(monkeypatch):
    monkeypatch.setenv(deadlines.DEADLINES_ENV, "0")
    assert load_dag("erasure_request").deadline is None and load_dag("retention_sweep").deadline is None


def _serialized_deadlines(dag_id: str) -> list[dict]:
    from airflow.serialization.serialized_objects import DagSerialization

    data = DagSerialization.to_dict(load_dag(dag_id))
    found = data["dag"].get("deadline") or []
    return [d.get("__var", d) for d in found]


@pytest.mark.parametrize("dag_id, what, interval", [
    ("erasure_request", "answer", dt.timedelta(days=deadlines.ANSWER_DAYS - deadlines.WARN_DAYS)),
    ("access_request", "answer", dt.timedelta(days=deadlines.ANSWER_DAYS - deadlines.WARN_DAYS)),
    ("retention_sweep", "sweep", dt.timedelta(hours=deadlines.SWEEP_HOURS)),
])
def test_deadline_is_serialized_as_intended(dag_id, what, interval):
    (alert,) = _serialized_deadlines(dag_id)
    assert alert["reference"]["reference_type"] == "DagRunQueuedAtDeadline"
    assert alert["name"] == ("late_sweep" if what == "sweep" else "answer_clock")
    assert dt.timedelta(seconds=alert["interval"]["__data__"]) == interval
    assert alert["callback"]["__classname__"] == "airflow.sdk.definitions.callback.SyncCallback"
    assert alert["callback"]["__data__"] == {"path": "include.retention.airflow.deadlines.RunDeadlineNotifier",
                                             "kwargs": {"what": what}, "executor": None}


def test_intake_and_deadline_watcher_have_no_run_deadline():
    assert _serialized_deadlines("erasure_intake") == [] and _serialized_deadlines("erasure_deadlines") == []


def test_watched_by_run_splits_requests_between_the_two_watchers():
    active = {"erasure_request/r1": "running", "access_request/r2": "queued", "erasure_request/r3": "failed"}

    def state(dag_id, run_id):
        return active[f"{dag_id}/{run_id}"]

    def req(dag_id, run_id, source="form"):
        return {"dag_id": dag_id, "run_id": run_id, "source": source}

    assert deadlines.watched_by_run(req("erasure_request", "r1"), state)
    assert deadlines.watched_by_run(req("access_request", "r2", "page"), state)
    assert not deadlines.watched_by_run(req("erasure_request", "r3"), state)  # failed run: erasure_deadlines
    assert not deadlines.watched_by_run(req("erasure_request", "r1", "intake"), state)  # queued before the run
    assert not deadlines.watched_by_run(req("erasure_intake", "r1"), state)
    assert not deadlines.watched_by_run(req(None, None), state)  # queued outside any run
    assert not deadlines.watched_by_run(req("erasure_request", "gone"), state)  # unknown run (KeyError)


@pytest.fixture
def ledger_db(airflow_db, fresh_database, monkeypatch, webhook):  # noqa: F811
    url = fresh_database("postgresql", f"rt_dl_{uuid.uuid4().hex[:8]}")
    engine = make_engine(url)
    u = engine.url
    monkeypatch.setenv("AIRFLOW_CONN_RETENTION_LEDGER", f"postgres://{u.username}@{u.host}:{u.port}/{u.database}")
    monkeypatch.setenv("RETENTION_HMAC_KEY", KEY.decode())
    monkeypatch.setenv("RETENTION_ALERT_WEBHOOK", webhook[0])
    yield Registry(engine, KEY), Ledger(engine, KEY), webhook[1]
    engine.dispose()


def _trigger(dag_id: str, conf: dict):
    """A run created as the REST API creates it (Airflow makes its deadline rows)."""
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db
    from airflow.utils.session import create_session
    from airflow.utils.types import DagRunTriggeredByType

    manager = DagBundlesManager()
    with create_session() as session:
        manager.sync_bundles_to_db(session=session)
    for bundle in manager.get_all_dag_bundles():
        if not bundle.is_initialized:
            bundle.initialize()
        sync_bag_to_db(BundleDagBag(dag_folder=bundle.path, bundle_path=bundle.path, bundle_name=bundle.name),
                       bundle.name, bundle.version)
    run_id = f"deadline_test__{uuid.uuid4().hex[:8]}"
    trigger_dag(dag_id, run_id=run_id, conf=conf, triggered_by=DagRunTriggeredByType.TEST,
                run_after=dt.datetime.now(dt.UTC))
    return run_id


def _fire_missed(dag_id: str, run_id: str, later: dt.timedelta) -> list[dict]:
    """The scheduler's part at ``now + later`` (its query, ``handle_miss``), then the executor's (``execute_callback``)
    for this run's deadlines; returns the deadline rows seen."""
    import structlog
    from airflow.models import DagRun, Deadline
    from airflow.sdk.execution_time.callback_supervisor import execute_callback
    from airflow.utils.session import create_session
    from sqlalchemy import select

    seen, to_run = [], []
    with create_session() as session:
        run = session.scalars(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)).one()
        for deadline in session.scalars(select(Deadline).where(
                Deadline.dagrun_id == run.id, Deadline.deadline_time < dt.datetime.now(dt.UTC) + later,
                ~Deadline.missed)):
            seen.append({"deadline_time": deadline.deadline_time, "queued_at": run.queued_at})
            deadline.handle_miss(session)
            to_run.append(dict(deadline.callback.data))
    for data in to_run:
        ok, error = execute_callback(data["path"], data["kwargs"], None, None, structlog.get_logger("callback"))
        assert ok, error
    return seen


def test_answer_deadline_fires_its_notifier_when_the_run_is_not_done(ledger_db):
    registry, ledger, posted = ledger_db
    run_id = _trigger("erasure_request", {"email": PERSON, "mode": "erase"})
    rid = registry.register(NewRequest(Identities(email=PERSON)), dag_id="erasure_request", run_id=run_id,
                            request_id=str(uuid.uuid4()))
    other = registry.register(NewRequest(Identities(email="other.person@example.org")))  # no run: not this alert

    assert _fire_missed("erasure_request", run_id, dt.timedelta(days=1)) == []  # a day later: not yet due
    (fired,) = _fire_missed("erasure_request", run_id, dt.timedelta(days=deadlines.ANSWER_DAYS))
    assert fired["deadline_time"] - fired["queued_at"] == dt.timedelta(days=deadlines.ANSWER_DAYS - deadlines.WARN_DAYS)

    alerts = [r for r in ledger.rows() if r["action"] == "alert"]
    assert len(alerts) == 1 and alerts[0]["outcome"] == "run_deadline" and alerts[0]["count"] == 1
    assert alerts[0]["run_id"] == run_id and rid in alerts[0]["details"] and other not in alerts[0]["details"]
    assert len(posted) == 1 and posted[0]["alert"] == "run_deadline"
    assert [r["request_id"] for r in posted[0]["requests"]] == [rid]
    assert "example.org" not in repr(alerts) + json.dumps(posted)
    # fired once: a later pass finds no missed deadline left
    assert _fire_missed("erasure_request", run_id, dt.timedelta(days=40)) == []
    # the queued callback keeps the run's conf as its context: the metadata purge removes it with the run's data
    assert PERSON in _callback_texts()
    _finish(run_id, "failed")
    counts = purge_erasure_runs(0, runs=[("erasure_request", run_id)])
    assert counts["callback"] == 1  # its deadline row goes with it (a cascade, or the next step)
    assert PERSON not in _callback_texts() and _fire_missed("erasure_request", run_id, dt.timedelta(days=40)) == []


def _callback_texts() -> str:
    from airflow.models.callback import Callback
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return json.dumps([c.data for c in session.scalars(select(Callback))], default=str)


def _finish(run_id: str, state: str) -> None:
    from airflow.models import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import update

    with create_session() as session:
        session.execute(update(DagRun).where(DagRun.run_id == run_id).values(
            state=state, end_date=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))


def test_late_sweep_deadline_records_and_posts(ledger_db):
    _registry, ledger, posted = ledger_db
    run_id = _trigger("retention_sweep", {"dry_run": True})
    assert _fire_missed("retention_sweep", run_id, dt.timedelta(hours=deadlines.SWEEP_HOURS / 2)) == []
    (fired,) = _fire_missed("retention_sweep", run_id, dt.timedelta(hours=deadlines.SWEEP_HOURS + 1))
    assert fired["deadline_time"] - fired["queued_at"] == dt.timedelta(hours=deadlines.SWEEP_HOURS)
    alerts = [r for r in ledger.rows() if r["action"] == "alert"]
    assert [(a["outcome"], a["run_id"]) for a in alerts] == [("late_sweep", run_id)]
    assert len(posted) == 1 and posted[0]["run_id"] == run_id and posted[0]["text"].startswith("Late sweep")


def test_erasure_deadlines_leaves_requests_of_running_runs_to_their_deadline(ledger_db):
    registry, _ledger, _posted = ledger_db
    old = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(days=40)
    in_run = registry.register(NewRequest(Identities(email=PERSON)), dag_id="erasure_request", run_id="running",
                               received_at=old)
    failed = registry.register(NewRequest(Identities(email="failed.run@example.org")), dag_id="erasure_request",
                               run_id="failed", received_at=old)
    queued = registry.register(NewRequest(Identities(email="queued.only@example.org"), source="intake"),
                               received_at=old)
    states = {"running": "running", "failed": "failed"}
    late = deadlines.due_soon(registry, run_state=lambda _dag_id, run_id: states[run_id])
    assert {r["request_id"] for r in late} == {failed, queued}
    assert {r["request_id"] for r in deadlines.due_soon(registry)} >= {in_run, failed, queued}  # no states: all


def test_answer_deadline_of_a_failed_run_leaves_the_alert_to_erasure_deadlines(ledger_db):
    registry, ledger, posted = ledger_db
    registry.register(NewRequest(Identities(email=PERSON)), dag_id="erasure_request", run_id="r-failed")
    deadlines.RunDeadlineNotifier("answer")({"dag_run": {"dag_id": "erasure_request", "dag_run_id": "r-failed",
                                                         "state": "failed", "conf": {"email": PERSON}}})
    assert [r for r in ledger.rows() if r["action"] == "alert"] == [] and posted == []
