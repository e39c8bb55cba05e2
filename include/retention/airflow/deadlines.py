"""Due-date checks of subject requests (GDPR Art. 12(3): one month) and the notifiers that raise the alert.

Two watchers, one request each (README, "Deadlines"):

- a DAG run that carries a request it registered itself (``erasure_request``, ``access_request``: source ``form``
  or ``page``) has an Airflow deadline alert (``answer_deadline``): if the run has not succeeded
  ``ANSWER_DAYS - WARN_DAYS`` days after it was queued, ``RunDeadlineNotifier`` records the alert and tells the DPO;
- every other open request (queued by ``cli submit``, handed to a run later, or whose run failed or ended
  while the request stays open) is watched by the hourly ``erasure_deadlines`` DAG (``check_due_dates``).

A late ``retention_sweep`` (not done ``RETENTION_SWEEP_DEADLINE_HOURS`` after it was queued) is a deadline alert too.

``RETENTION_DEADLINE_ALERTS=0`` leaves the alerts off the DAGs: Airflow 3.3.2's ``dag.test()`` (and so
``airflow dags test``, which ``make demo`` runs) fails when a run of a DAG with a deadline alert succeeds (its copy of
the DAG keeps the alert definitions where ``DagRun.update_state`` expects their ids). The scheduler is not affected.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from airflow.sdk.bases.notifier import BaseNotifier

from include.retention.airflow.sweep_tasks import airflow_resolver
from include.retention.clock import utcnow
from include.retention.connections import open_ledger
from include.retention.ledger import Ledger, RunRef
from include.retention.registry import Registry
from include.retention.settings import settings
from include.retention.values import Outcome

log = logging.getLogger(__name__)
WARN_DAYS = settings().due_warning_days
ANSWER_DAYS = 28  # the shortest month: a run's clock never runs past the request's own one-month due date
SWEEP_HOURS = settings().sweep_deadline_hours
REQUEST_RUN_DAG_IDS = ("erasure_request", "access_request")  # DAGs whose runs carry the request (answer clock)
RUN_SOURCES = ("form", "page")  # registered by the run itself, or by the page right before it triggers the run
ACTIVE_RUN_STATES = ("queued", "running")
DEADLINES_ENV = "RETENTION_DEADLINE_ALERTS"  # "0": no deadline alerts on the DAGs (module docstring)


def watched_by_run(req: dict[str, Any], run_state: Callable[[str, str], str | None]) -> bool:
    """Whether an open request is watched by its DAG run's Airflow deadline alert rather than erasure_deadlines:
    its run is of a DAG with the answer clock, registered the request itself (so the run's clock started with the
    request's) and has not finished. ``run_state(dag_id, run_id)`` is the run's state, None when unknown."""
    if req.get("dag_id") not in REQUEST_RUN_DAG_IDS or not req.get("run_id") or req.get("source") not in RUN_SOURCES:
        return False
    try:
        state = run_state(req["dag_id"], req["run_id"])
    except Exception as exc:  # noqa: BLE001 - an unknown run (purged, never created): erasure_deadlines watches
        log.info("state of run %s/%s unknown (%s): watched by erasure_deadlines", req["dag_id"], req["run_id"],
                 type(exc).__name__)
        return False
    return str(state or "").lower() in ACTIVE_RUN_STATES


def airflow_run_state(dag_id: str, run_id: str) -> str | None:
    """A DAG run's state through the Task SDK (task code cannot read the metadata DB)."""
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    return RuntimeTaskInstance.get_dagrun_state(dag_id=dag_id, run_id=run_id)


def _open() -> tuple[Ledger, Registry]:
    ledger = open_ledger(airflow_resolver)
    return ledger, Registry(ledger.engine, ledger.key)


def due_soon(registry: Registry, warn_days: float = WARN_DAYS,
             run_state: Callable[[str, str], str | None] | None = None) -> list[dict[str, Any]]:
    """Open requests due within ``warn_days`` or overdue: request id, status, days left (no identities).
    With ``run_state``, requests their own running DAG run's deadline alert watches are left out."""
    now = utcnow()
    out = []
    for req in registry.open_requests():
        days_left = (req["due_at"] - now) / dt.timedelta(days=1)
        if days_left <= warn_days and not (run_state and watched_by_run(req, run_state)):
            out.append({"request_id": req["request_id"], "status": req["status"], "days_left": round(days_left, 1)})
    return sorted(out, key=lambda r: r["days_left"])


def check_due_dates(run_state: Callable[[str, str], str | None] = airflow_run_state) -> int:
    """Fail (and so alert) when a request is near or past its due date; return how many are open.
    Requests a running erasure_request / access_request run registered are its deadline alert's (``watched_by_run``)."""
    from airflow.sdk.exceptions import AirflowFailException

    ledger, registry = _open()
    try:
        late = due_soon(registry, run_state=run_state)
        open_count = len(registry.open_requests())
    finally:
        ledger.engine.dispose()
    if late:
        overdue = [r for r in late if r["days_left"] < 0]
        raise AirflowFailException(
            f"{len(overdue)} request(s) overdue, {len(late) - len(overdue)} due within {WARN_DAYS:g} days: "
            + ", ".join(f"{r['request_id']} ({r['days_left']:+g} days)" for r in late[:20]))
    log.info("%d open request(s), none due within %s days", open_count, WARN_DAYS)
    return open_count


class DueDateNotifier(BaseNotifier):
    """Records the alert in the ledger, then tells the DPO through Airflow's notifier classes: the SMTP provider's
    ``SmtpNotifier`` (connection ``retention_alert_smtp``) and ``WebhookNotifier`` (HTTP connection
    ``retention_alert_webhook``, or the older ``RETENTION_ALERT_WEBHOOK`` URL). Configured by connection; an
    unconfigured channel is skipped. The alert holds request ids, days left and recipient names only.
    """

    template_fields = ()

    def notify(self, context: dict[str, Any]) -> None:
        from include.retention.airflow.notify_tasks import DpoMailNotifier, WebhookNotifier

        ledger, registry = _open()
        try:
            late = due_soon(registry, run_state=airflow_run_state)
            waiting = registry.recipients.unconfirmed()
            ledger.append(run=RunRef(context["dag"].dag_id, context["run_id"]), action="alert",
                          outcome=Outcome.DUE_DATE, count=len(late), details={"requests": late})
        finally:
            ledger.engine.dispose()
        log.error("ALERT: %d subject request(s) near or past their due date", len(late))
        text = alert_text(late, waiting)
        for notifier in (DpoMailNotifier(subject=f"[retention] {len(late)} subject request(s) due", message=text),
                         WebhookNotifier(message=text, payload={"alert": "subject requests due", "requests": late})):
            try:
                notifier.notify(context)
            except Exception as exc:  # noqa: BLE001 - one channel down must not silence the other
                log.error("alert channel %s failed: %s", type(notifier).__name__, type(exc).__name__)


def alert_text(late: list[dict[str, Any]], waiting: dict[str, list[str]] | None = None) -> str:
    lines = [f"{len(late)} subject request(s) near or past their due date (GDPR Art. 12(3)):"]
    lines += [f"- {r['request_id']}: {r['status']}, {r['days_left']:+g} days" for r in late[:50]]
    if waiting:
        lines.append(f"{len(waiting)} open request(s) wait for recipients to confirm (Art. 19):")
        lines += [f"- {rid}: {', '.join(names)}" for rid, names in list(waiting.items())[:50]]
    return "\n".join(lines)


# ---- Airflow deadline alerts (DAG-level ``deadline=``) ----------------------------------------------------------


class RunDeadlineNotifier(BaseNotifier):
    """The callback of the DAG-level deadline alerts: a run that carries requests is still unfinished near their
    one-month due date (``what="answer"``), or a sweep is late (``what="sweep"``).

    Runs as a ``SyncCallback`` on the executor (LocalExecutor, CeleryExecutor), which builds it with ``what`` and calls
    it with Airflow's deadline context: ``{"dag_run": {dag_id, dag_run_id, state, queued_at, conf ...},
    "deadline": {id, deadline_time}}``. The run's ``conf`` may hold an identity (a form trigger): it is never read,
    logged or passed on, and this notifier never raises (the executor would log its kwargs, context included).
    Records the alert in the ledger (action ``alert``, outcome ``run_deadline`` / ``late_sweep``) and tells the DPO
    by mail and webhook, like ``DueDateNotifier``; request ids, days left and run ids only."""

    template_fields = ()

    def __init__(self, what: str = "answer"):
        super().__init__()
        if what not in ("answer", "sweep"):
            raise ValueError(f"RunDeadlineNotifier: what must be 'answer' or 'sweep', not {what!r}")
        self.what = what

    def notify(self, context: dict[str, Any]) -> None:
        run = context.get("dag_run") or {}
        dag_id, run_id, state = run.get("dag_id"), run.get("dag_run_id"), str(run.get("state") or "")
        try:
            self._alert(dag_id, run_id, state, context)
        except Exception as exc:  # noqa: BLE001 - never raise: the executor logs a failed callback's kwargs
            log.error("deadline alert of %s run %s could not be raised: %s", dag_id, run_id, type(exc).__name__)

    def _alert(self, dag_id: str, run_id: str, state: str, context: dict[str, Any]) -> None:
        from include.retention.airflow.notify_tasks import DpoMailNotifier, WebhookNotifier

        if self.what == "answer" and state.lower() not in ACTIVE_RUN_STATES:
            # a failed run's requests are erasure_deadlines' (watched_by_run is False): no second alert
            log.info("deadline of %s run %s passed, run %s: its open requests are watched by erasure_deadlines",
                     dag_id, run_id, state)
            return
        ledger, registry = _open()
        try:
            late = [] if self.what == "sweep" else run_requests(registry, dag_id, run_id)
            if self.what == "answer" and not late:
                log.info("deadline of %s run %s passed; none of its requests is open", dag_id, run_id)
                return
            outcome = Outcome.LATE_SWEEP if self.what == "sweep" else Outcome.RUN_DEADLINE
            ledger.append(run=RunRef(dag_id, run_id), action="alert", outcome=outcome, count=len(late),
                          details={"requests": late, "run_state": state})
        finally:
            ledger.engine.dispose()
        if self.what == "sweep":
            text = (f"Late sweep: retention_sweep run {run_id} is not finished {SWEEP_HOURS:g} hours after it was "
                    f"queued (state {state}): open it in the Airflow UI.")
            subject = "[retention] late sweep"
        else:
            text = (f"{dag_id} run {run_id} (state {state}) is not finished {ANSWER_DAYS - WARN_DAYS:g} days after "
                    "it was queued.\n" + alert_text(late))
            subject = f"[retention] {len(late)} subject request(s) due: {dag_id} run not finished"
        log.error("ALERT: %s", text.splitlines()[0])
        payload = {"alert": outcome, "dag_id": dag_id, "run_id": run_id, "requests": late}
        for notifier in (DpoMailNotifier(subject=subject, message=text),
                         WebhookNotifier(message=text, payload=payload)):
            try:
                notifier.notify(context)
            except Exception as exc:  # noqa: BLE001 - one channel down must not silence the other
                log.error("alert channel %s failed: %s", type(notifier).__name__, type(exc).__name__)


def run_requests(registry: Registry, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    """The open requests a DAG run carries: request id, status, days left (no identities)."""
    now = utcnow()
    return [{"request_id": r["request_id"], "status": r["status"],
             "days_left": round((r["due_at"] - now) / dt.timedelta(days=1), 1)}
            for r in registry.open_requests() if r["dag_id"] == dag_id and r["run_id"] == run_id]


def alerts_on() -> bool:
    return settings().deadline_alerts


def answer_deadline():
    """None when ``RETENTION_DEADLINE_ALERTS=0`` (module docstring).

    The one-month answer clock (Art. 12(3)) of a run that carries a request: alert if the run has not succeeded
    ``ANSWER_DAYS - WARN_DAYS`` days after it was queued (a run that succeeds in time drops its deadline)."""
    from airflow.sdk import DeadlineAlert, DeadlineReference, SyncCallback

    if not alerts_on():
        return None
    return DeadlineAlert(reference=DeadlineReference.DAGRUN_QUEUED_AT,
                         interval=dt.timedelta(days=ANSWER_DAYS - WARN_DAYS),
                         callback=SyncCallback(RunDeadlineNotifier, kwargs={"what": "answer"}), name="answer_clock")


def sweep_deadline():
    """None when ``RETENTION_DEADLINE_ALERTS=0``.

    A late sweep: alert if a retention_sweep run has not succeeded ``SWEEP_HOURS`` after it was queued."""
    from airflow.sdk import DeadlineAlert, DeadlineReference, SyncCallback

    if not alerts_on():
        return None
    return DeadlineAlert(reference=DeadlineReference.DAGRUN_QUEUED_AT, interval=dt.timedelta(hours=SWEEP_HOURS),
                         callback=SyncCallback(RunDeadlineNotifier, kwargs={"what": "sweep"}), name="late_sweep")
