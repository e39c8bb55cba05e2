"""Due-date checks of subject requests (GDPR Art. 12(3): one month) and the notifier that raises the alert."""

from __future__ import annotations

import datetime as dt
import logging
import os
from typing import Any

from airflow.sdk.bases.notifier import BaseNotifier

from include.retention.airflow.sweep_tasks import airflow_resolver
from include.retention.clock import utcnow
from include.retention.connections import open_ledger
from include.retention.ledger import Ledger, RunRef
from include.retention.registry import Registry

log = logging.getLogger(__name__)
WARN_DAYS = float(os.environ.get("RETENTION_DUE_WARNING_DAYS", "5"))


def _open() -> tuple[Ledger, Registry]:
    ledger = open_ledger(airflow_resolver)
    return ledger, Registry(ledger.engine, ledger.key)


def due_soon(registry: Registry, warn_days: float = WARN_DAYS) -> list[dict[str, Any]]:
    """Open requests due within ``warn_days`` or overdue: request id, status, days left (no identities)."""
    now = utcnow()
    out = []
    for req in registry.open_requests():
        days_left = (req["due_at"] - now) / dt.timedelta(days=1)
        if days_left <= warn_days:
            out.append({"request_id": req["request_id"], "status": req["status"], "days_left": round(days_left, 1)})
    return sorted(out, key=lambda r: r["days_left"])


def check_due_dates() -> int:
    """Fail (and so alert) when a request is near or past its due date; return how many are open."""
    from airflow.sdk.exceptions import AirflowFailException

    ledger, registry = _open()
    try:
        late = due_soon(registry)
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
            late = due_soon(registry)
            waiting = registry.unconfirmed_recipients()
            ledger.append(run=RunRef(context["dag"].dag_id, context["run_id"]), action="alert",
                          outcome="due_date", count=len(late), details={"requests": late})
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
