"""Telling the ones who must know, with Airflow's parts: recipients (Art. 19), the requester (Art. 12) and the DPO.

What is said and to whom is ``include.retention.requests.notices``' (behind its ``Sender`` protocol); here is
how it leaves inside a task: mail through the SMTP provider (``SmtpHook`` / ``SmtpNotifier``, connection
``smtp_default`` or the recipient's ``connection``), webhooks through an Airflow HTTP connection (host, port,
scheme, login/password, ``extra.headers``), and the DPO's alerts as Airflow notifiers. Logs, XComs and
exceptions carry request ids, recipient names and status codes only.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk.bases.notifier import BaseNotifier

from include.retention.airflow.request_runner import ids, request_context
from include.retention.errors import RetentionError
from include.retention.requests import notices
from include.retention.requests.senders import WEBHOOK_TIMEOUT, notice_html, post_json
from include.retention.settings import settings

log = logging.getLogger(__name__)

ALERT_SMTP_CONN_ID = "retention_alert_smtp"  # the DPO's alerts: extra.to = the DPO's address
ALERT_WEBHOOK_CONN_ID = "retention_alert_webhook"  # chat alerts (an HTTP connection)


def connection(conn_id: str | None):
    """The Airflow connection ``conn_id`` or None when it is not configured."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    if not conn_id:
        return None
    try:
        return Connection.get(conn_id)
    except AirflowNotFoundException:
        return None


def send_mail(conn_id: str, to: str, subject: str, body: str) -> None:
    """One message through the SMTP provider's hook (TLS, login and sender from the connection)."""
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    with SmtpHook(smtp_conn_id=conn_id) as hook:
        sender = settings().mail_from or hook.from_email
        if not sender:
            raise RetentionError(f"connection {conn_id!r} has no from_email (extra) and RETENTION_MAIL_FROM is unset")
        hook.send_email_smtp(to=to, from_email=sender, subject=subject, html_content=notice_html(body),
                             mime_subtype="mixed", custom_headers={"X-Retention-Notice": "1"})


class AirflowSender:
    """``notices.Sender`` over Airflow connections: the SMTP provider's hook, HTTP connections."""

    def configured(self, conn_id: str | None) -> bool:
        return connection(conn_id) is not None

    def send(self, conn_id: str, to: str, subject: str, body: str) -> None:
        send_mail(conn_id, to, subject, body)

    def post(self, conn_id: str, endpoint: str | None, payload: dict[str, Any]) -> int:
        conn = connection(conn_id)
        if conn is None:
            raise RetentionError(f"connection {conn_id!r} is not configured")
        return post_json(conn, endpoint, payload)

    def secret(self, conn_id: str | None) -> str | None:
        conn = connection(conn_id)
        return conn.password if conn is not None else None


# ---- task bodies -----------------------------------------------------------------------------------------


def plan_notices(request_ids: str | list[str]) -> list[str]:
    """Record, per request, the recipients it concerns; return those told automatically (e-mail, webhook)."""
    with request_context() as ctx:
        return notices.plan_notices(ctx, ids(request_ids))


def send_notice(request_ids: str | list[str], name: str) -> dict[str, int]:
    """Tell recipient ``name`` of every request of the batch that concerns it and is not settled yet; a failing
    channel raises: the task's retries (exponential backoff) try again."""
    with request_context() as ctx:
        return notices.send_notice(ctx, AirflowSender(), ids(request_ids), name)


def manual_pending(request_ids: str | list[str]) -> list[str]:
    """Manual recipients some request of the batch still waits for (names only)."""
    with request_context() as ctx:
        return notices.manual_pending(ctx, ids(request_ids))


def confirm_manual(request_ids: str | list[str], names: list[str]) -> int:
    """The approval of ``confirm_recipients``: every listed manual recipient of the batch is confirmed."""
    with request_context() as ctx:
        return notices.confirm_manual(ctx, ids(request_ids), names)


def completion_notices(request_ids: str | list[str], chunk: int = 50) -> dict[str, str]:
    """After finalize: each completed (not dry-run) request's requester hears back; the receipt says so."""
    with request_context() as ctx:
        return notices.completion_notices(ctx, AirflowSender(), ids(request_ids), chunk)


# ---- the DPO: alerts through Airflow's notifier classes ----------------------------------------------------


class WebhookNotifier(BaseNotifier):
    """Posts ``{"text": message, ...}`` to a chat webhook through an Airflow HTTP connection
    (``retention_alert_webhook``; a Slack/Teams/Mattermost incoming-webhook URL as host + endpoint).
    Unconfigured: nothing is posted (``RETENTION_ALERT_WEBHOOK``, a plain URL, is still honoured)."""

    template_fields = ("message",)

    def __init__(self, message: str, http_conn_id: str = ALERT_WEBHOOK_CONN_ID, endpoint: str | None = None,
                 payload: dict[str, Any] | None = None, attempts: int = 3):
        super().__init__()
        self.message, self.http_conn_id, self.endpoint = message, http_conn_id, endpoint
        self.payload, self.attempts = payload or {}, attempts

    def notify(self, context: dict[str, Any]) -> None:
        import time

        import requests

        body = {"text": self.message, **self.payload}
        conn = connection(self.http_conn_id)
        legacy = settings().alert_webhook
        if conn is None and not legacy:
            log.info("no connection %s: chat alert not posted", self.http_conn_id)
            return
        for attempt in range(self.attempts):
            try:
                if conn is not None:
                    status = post_json(conn, self.endpoint, body)
                else:
                    response = requests.post(legacy, json=body, timeout=WEBHOOK_TIMEOUT)
                    response.close()
                    status = response.status_code
            except requests.RequestException as exc:
                status, error = 0, type(exc).__name__
            else:
                error = ""
            if 200 <= status < 300:
                return
            log.warning("alert webhook: %s (try %d of %d)", error or f"http {status}", attempt + 1, self.attempts)
            time.sleep(min(2 ** attempt, 30))
        log.error("alert webhook: not delivered after %d tries", self.attempts)


class DpoMailNotifier(BaseNotifier):
    """Mails the DPO through the SMTP provider's ``SmtpNotifier`` on connection ``retention_alert_smtp`` (its
    ``extra.to`` is the DPO's address, ``extra.from_email`` the sender). Unconfigured: nothing is mailed."""

    template_fields = ("subject", "message")

    def __init__(self, subject: str, message: str, smtp_conn_id: str = ALERT_SMTP_CONN_ID):
        super().__init__()
        self.subject, self.message, self.smtp_conn_id = subject, message, smtp_conn_id

    def notify(self, context: dict[str, Any]) -> None:
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        conn = connection(self.smtp_conn_id)
        to = conn and (conn.extra_dejson or {}).get("to")
        if not to:
            log.info("no connection %s with extra.to: DPO alert not mailed", self.smtp_conn_id)
            return
        SmtpNotifier(to=to, from_email=(conn.extra_dejson or {}).get("from_email"), smtp_conn_id=self.smtp_conn_id,
                     subject=self.subject, html_content=notice_html(self.message)).notify(context)


def failure_alert(what: str = "a task failed") -> list[BaseNotifier]:
    """The DPO's on-failure notifiers for any task: mail and chat, request ids and task names only."""
    text = (f"{what}: {{{{ dag.dag_id }}}} / {{{{ ti.task_id }}}} (run {{{{ run_id }}}}). "
            "Open the run in the Airflow UI; the retention page lists the open requests.")
    return [DpoMailNotifier(subject=f"[retention] {what}: {{{{ dag.dag_id }}}}", message=text),
            WebhookNotifier(message=text)]
