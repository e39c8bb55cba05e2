"""Purge erasure runs' personal data from Airflow's metadata DB after ``RETENTION_PURGE_AFTER_DAYS``.

A subject's identity reaches Airflow as the trigger conf of ``erasure_request`` and is copied
into further tables (docs/adr/0003-identities-in-airflow-metadata.md). For every *finished* run
of the given DAGs that ended more than N days ago, this

- replaces a non-empty ``dag_run.conf`` with ``PURGED_CONF`` (the run row, its id and state stay),
- deletes the run's ``xcom``, ``rendered_task_instance_fields``, ``task_map``,
  ``task_state_store``, ``dag_run_note`` and ``task_instance_note`` rows,
- clears ``task_instance(_history).rendered_map_index`` and redacts the text and inputs of
  human-in-the-loop requests (``hitl_detail(_history)``; who answered what, and when, stays),
- deletes the run's deadline alerts (``deadline``) and their callbacks (``callback``: a missed deadline's callback
  keeps the run, conf included, as its context),
- deletes the audit-log (``log``) rows of the run, and the DAGs' audit-log rows older than
  N days that belong to no kept run: the REST API's ``trigger_dag_run`` and the CLI's
  ``cli_dag_trigger`` entries carry the conf and, when the run id was generated, no run id.

It deletes in place, in one transaction: unlike ``airflow db clean`` (even with
``--skip-archive``, which copies rows into an ``_airflow_deleted__*`` table and drops it
afterwards), no copy of the rows is ever written. It needs the metadata DB, so it runs as a
command (``purge_cli``), never inside task code. Runs that are still queued or running keep
their conf.

Right after each run: the erasure DAGs' last task (``release_metadata``, erasure_group.py)
emits the asset ``ERASURE_RUN_DONE``; ``erasure_run_purge`` (dags/metadata_purge.py) is scheduled
on it and purges exactly the runs that emitted the events (``runs=``, ``older_than_days=0``),
after waiting for them to finish (``wait_finished``). The daily purge stays as the safety net.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable, Sequence

from include.retention.settings import settings

log = logging.getLogger(__name__)

ERASURE_DAG_IDS = ("erasure_request", "erasure_intake", "access_request")  # every DAG whose conf names a person
PURGED_CONF = {"purged": True}
PURGED_TEXT = "[purged]"
_FINISHED = ("success", "failed")
_CHUNK = 500


def purge_after_days() -> int:
    """Days to keep a finished erasure run's personal data: ``RETENTION_PURGE_AFTER_DAYS`` (default 7)."""
    return settings().purge_after_days  # a SettingsError (a ValueError) names the variable


def wait_finished(runs: Sequence[tuple[str, str]], timeout: float, poll: float = 2.0) -> list[tuple[str, str]]:
    """Wait up to ``timeout`` seconds until every run is finished; return those that are (unknown runs count
    as not finished)."""
    import sqlalchemy as sa
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    dr = DagRun.__table__
    deadline = time.monotonic() + timeout
    while True:
        with create_session() as session:
            done = {(d, r) for d, r, state in session.execute(
                sa.select(dr.c.dag_id, dr.c.run_id, dr.c.state).where(_run_in(dr, runs)))
                if state in _FINISHED}
        if len(done) == len(set(runs)) or time.monotonic() >= deadline:
            return [run for run in runs if run in done]
        time.sleep(poll)


def _run_in(table, runs: Sequence[tuple[str, str]]):
    import sqlalchemy as sa

    return sa.or_(*(sa.and_(table.c.dag_id == d, table.c.run_id == r) for d, r in runs))


def _scope(older_than_days: int, dag_ids: Iterable[str], runs: Sequence[tuple[str, str]] | None
           ) -> tuple[tuple[str, ...], list[tuple[str, str]] | None] | None:
    """The DAGs and runs a purge covers (``runs`` narrows the DAGs to theirs); None: nothing to purge."""
    if older_than_days < 0:
        raise ValueError(f"older_than_days must not be negative, not {older_than_days}")
    if runs is not None:
        runs = [(str(d), str(r)) for d, r in runs]
        if not runs:
            return None
        dag_ids = tuple(sorted({d for d, _ in runs}))
    dag_ids = tuple(dag_ids)
    if not dag_ids:
        raise ValueError("dag_ids is empty")
    return dag_ids, runs


def purge_erasure_runs(older_than_days: int, dag_ids: Iterable[str] = ERASURE_DAG_IDS,
                       dry_run: bool = False, runs: Sequence[tuple[str, str]] | None = None) -> dict[str, int]:
    """Purge personal data of the DAGs' runs that finished more than ``older_than_days`` ago.

    Returns the number of rows changed (or, with ``dry_run``, that would change) per table.
    ``older_than_days=0`` purges every finished run. ``runs`` (``(dag_id, run_id)`` pairs) narrows
    the purge to those runs (finished ones only) and their DAGs' audit rows that name no run.
    """
    import sqlalchemy as sa
    from airflow.models.callback import Callback as CallbackModel
    from airflow.models.dagrun import DagRun, DagRunNote
    from airflow.models.deadline import Deadline
    from airflow.models.hitl import HITLDetail
    from airflow.models.hitl_history import HITLDetailHistory
    from airflow.models.log import Log
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.task_state_store import TaskStateStoreModel
    from airflow.models.taskinstance import TaskInstance, TaskInstanceNote
    from airflow.models.taskinstancehistory import TaskInstanceHistory
    from airflow.models.taskmap import TaskMap
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    scope = _scope(older_than_days, dag_ids, runs)
    if scope is None:
        return {}
    dag_ids, runs = scope
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=older_than_days)

    dr = DagRun.__table__
    ti, tih = TaskInstance.__table__, TaskInstanceHistory.__table__
    audit = Log.__table__

    def purgeable(run):
        """Runs of the DAGs that finished before the cutoff (and, with ``runs``, are one of them)."""
        return sa.and_(run.c.dag_id.in_(dag_ids), _run_in(run, runs) if runs else sa.true(),
                       sa.func.coalesce(run.c.state, "").in_(_FINISHED),
                       sa.func.coalesce(run.c.end_date, run.c.run_after) < cutoff)

    def of_purged_run(table) -> sa.ColumnElement[bool]:
        """Rows of ``table`` (with dag_id and run_id columns) that belong to a purgeable run."""
        run = dr.alias("purged_run")
        return sa.exists().where(run.c.dag_id == table.c.dag_id, run.c.run_id == table.c.run_id, purgeable(run))

    purged_run_ids = sa.select(dr.c.id).where(purgeable(dr))
    purged_ti_ids = sa.select(ti.c.id).where(of_purged_run(ti))
    purged_tih_ids = sa.select(tih.c.task_instance_id).where(of_purged_run(tih))
    kept = dr.alias("kept_run")
    audit_rows = sa.and_(
        audit.c.dag_id.in_(dag_ids),
        sa.or_(
            of_purged_run(audit),
            sa.and_(audit.c.dttm < cutoff,
                    ~sa.exists().where(kept.c.dag_id == audit.c.dag_id, kept.c.run_id == audit.c.run_id,
                                       ~purgeable(kept))),
        ),
    )

    steps: list[tuple[sa.Table, sa.ColumnElement[bool], sa.Executable]] = []

    def delete(model, where) -> None:
        table = model.__table__
        steps.append((table, where, sa.delete(table).where(where)))

    def update(model, where, **values) -> None:
        table = model.__table__
        steps.append((table, where, sa.update(table).where(where).values(**values)))

    delete(XComModel, XComModel.__table__.c.dag_run_id.in_(purged_run_ids))
    delete(RenderedTaskInstanceFields, of_purged_run(RenderedTaskInstanceFields.__table__))
    delete(TaskMap, of_purged_run(TaskMap.__table__))
    delete(TaskStateStoreModel, TaskStateStoreModel.__table__.c.dag_run_id.in_(purged_run_ids))
    delete(DagRunNote, DagRunNote.__table__.c.dag_run_id.in_(purged_run_ids))
    delete(TaskInstanceNote, TaskInstanceNote.__table__.c.ti_id.in_(purged_ti_ids))
    update(TaskInstance, sa.and_(of_purged_run(ti), ti.c.rendered_map_index.is_not(None)), rendered_map_index=None)
    update(TaskInstanceHistory, sa.and_(of_purged_run(tih), tih.c.rendered_map_index.is_not(None)),
           rendered_map_index=None)
    for model, id_column, ids in ((HITLDetail, "ti_id", purged_ti_ids),
                                  (HITLDetailHistory, "ti_history_id", purged_tih_ids)):
        table = model.__table__
        update(model, sa.and_(table.c[id_column].in_(ids), table.c.subject != PURGED_TEXT),
               subject=PURGED_TEXT, body=None, params={}, params_input={})
    delete(Log, audit_rows)
    # a missed deadline's callback holds the run as its context, conf included (Deadline.handle_miss)
    delete(CallbackModel, CallbackModel.__table__.c.id.in_(
        sa.select(Deadline.__table__.c.callback_id).where(Deadline.__table__.c.dagrun_id.in_(purged_run_ids))))
    delete(Deadline, Deadline.__table__.c.dagrun_id.in_(purged_run_ids))

    counts: dict[str, int] = {}
    with create_session() as session:
        if not dry_run and session.get_bind().dialect.name == "sqlite":
            # SQLite keeps deleted rows' bytes in free page space unless told to zero them
            session.connection().exec_driver_sql("PRAGMA secure_delete = ON")
        # dag_run.conf: compared in Python, as JSON equality differs between databases. Empty confs
        # (scheduled runs) stay as they are.
        runs = session.execute(sa.select(dr.c.id, dr.c.conf).where(purgeable(dr))).all()
        to_redact = [run_id for run_id, conf in runs if conf and conf != PURGED_CONF]
        counts[dr.name] = len(to_redact)
        for table, where, statement in steps:
            found = session.scalar(sa.select(sa.func.count()).select_from(table).where(where))
            counts[table.name] = counts.get(table.name, 0) + found
            if not dry_run:
                session.execute(statement)
        if not dry_run:
            for start in range(0, len(to_redact), _CHUNK):
                chunk = to_redact[start:start + _CHUNK]
                session.execute(sa.update(dr).where(dr.c.id.in_(chunk)).values(conf=PURGED_CONF))
        if dry_run:
            session.rollback()
    if not dry_run:
        _truncate_sqlite_wal()
    log.info("Erasure-run purge (dags=%s, runs=%s, older than %s days, dry_run=%s): %s",
             ",".join(dag_ids), len(runs) if runs is not None else "all", older_than_days, dry_run, counts)
    return counts


def _truncate_sqlite_wal() -> None:
    """SQLite metadata DB (the embedded demo) in WAL mode: the write-ahead log still holds the page images from
    before the purge (conf, XCom, logs of the run) until a checkpoint overwrites them; a TRUNCATE checkpoint
    copies the purged pages into the database file and empties the log. Other databases: nothing to do."""
    from airflow.settings import engine

    if engine is None or engine.dialect.name != "sqlite":
        return
    with engine.connect() as conn:
        busy, _frames, _done = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
    if busy:
        log.warning("Erasure-run purge: the SQLite write-ahead log could not be emptied (a reader was busy); "
                    "it holds pre-purge pages until the next checkpoint")
