"""Telling the ones who must know, with Airflow's parts: recipients (Art. 19), the requester (Art. 12) and the DPO.

Mail goes through the SMTP provider (``SmtpHook`` / ``SmtpNotifier``, connection ``smtp_default`` or the
recipient's ``connection``), webhooks through an Airflow HTTP connection (host, port, scheme, login/password,
``extra.headers``). A channel whose connection is not configured sends nothing and the recipient stays
unconfirmed (status ``failed``, note "not sent: no connection '<id>' configured"): the request stays open, on
the retention page, until the connection exists and the run is repeated or the recipient is waived. Only
``RETENTION_NOTIFY_RECORD_ONLY=1`` (the demo, which has no mail server) records such a notice as "recorded, not
sent" (status ``waived``, the reason in the receipt). Logs, XComs and exceptions carry request ids, recipient
names and status codes only.
"""

from __future__ import annotations

import collections
import html
import logging
import os
from typing import Any

from airflow.sdk.bases.notifier import BaseNotifier

from include.retention import notify
from include.retention.errors import RetentionError

log = logging.getLogger(__name__)

SMTP_CONN_ID = os.environ.get("RETENTION_SMTP_CONN_ID", "smtp_default")  # recipients' and requesters' mail
ALERT_SMTP_CONN_ID = "retention_alert_smtp"  # the DPO's alerts: extra.to = the DPO's address
ALERT_WEBHOOK_CONN_ID = "retention_alert_webhook"  # chat alerts (an HTTP connection)
WEBHOOK_TIMEOUT = float(os.environ.get("RETENTION_WEBHOOK_TIMEOUT_SECONDS", "10"))


RECORD_ONLY_ENV = "RETENTION_NOTIFY_RECORD_ONLY"


def record_only() -> bool:
    """Whether a channel without its connection may count as told ("recorded, not sent"): the demo's opt-in."""
    return os.environ.get(RECORD_ONLY_ENV, "").lower() in ("1", "true", "yes")


def _ids(request_ids: str | list[str]) -> list[str]:
    """One request (access_request's register) or a batch (erasure_request, erasure_intake)."""
    return [request_ids] if isinstance(request_ids, str) else list(request_ids or [])


def recipients_in_receipt(recipients: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A request's recipients (``Registry.recipients.of``) as its receipt lists them: channel, status, systems,
    categories, last response and note (names only)."""
    return {name: {k: info[k] for k in ("channel", "status", "systems", "categories", "response", "note")}
            for name, info in recipients.items()}


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


def _html(body: str) -> str:
    """The SMTP hook sends HTML: the plain-text template, kept as it is."""
    return f'<pre style="font-family: inherit; white-space: pre-wrap">{html.escape(body)}</pre>'


def send_mail(conn_id: str, to: str, subject: str, body: str) -> None:
    """One message through the SMTP provider's hook (TLS, login and sender from the connection)."""
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    with SmtpHook(smtp_conn_id=conn_id) as hook:
        sender = os.environ.get("RETENTION_MAIL_FROM") or hook.from_email
        if not sender:
            raise RetentionError(f"connection {conn_id!r} has no from_email (extra) and RETENTION_MAIL_FROM is unset")
        hook.send_email_smtp(to=to, from_email=sender, subject=subject, html_content=_html(body),
                             mime_subtype="mixed", custom_headers={"X-Retention-Notice": "1"})


def _webhook_url(conn: Any, endpoint: str | None) -> str:
    scheme = (conn.schema or "").lower() if (conn.schema or "").lower() in ("http", "https") else (
        "https" if conn.conn_type == "https" else "http")
    host = conn.host or ""
    if "://" in host:  # a host written as a URL
        scheme, _, host = host.partition("://")
    base = f"{scheme}://{host.rstrip('/')}" + (f":{conn.port}" if conn.port else "")
    path = endpoint or (conn.extra_dejson or {}).get("endpoint") or ""
    return base + ("/" + path.lstrip("/") if path else "")


def post_json(conn: Any, endpoint: str | None, payload: dict[str, Any]) -> int:
    """POST ``payload`` through an Airflow HTTP connection; returns the response status."""
    import requests

    extra = conn.extra_dejson or {}
    headers = {"Content-Type": "application/json", **(extra.get("headers") or {})}
    auth = (conn.login, conn.password or "") if conn.login else None
    response = requests.post(_webhook_url(conn, endpoint), json=payload, headers=headers, auth=auth,
                             timeout=WEBHOOK_TIMEOUT)
    response.close()
    return response.status_code


# ---- recipients (Art. 19) ----------------------------------------------------------------------


def plan_notices(request_ids: str | list[str]) -> list[str]:
    """Record, per request, the recipients it concerns; return those told automatically (e-mail, webhook).
    Set-based: the batch's requests, states and recipients are read and written a chunk of 500 at a time."""
    from include.retention.airflow.erasure_tasks import Context

    names: set[str] = set()
    request_ids = _ids(request_ids)
    with Context() as ctx:
        reqs, states = ctx.registry.get_many(request_ids), ctx.registry.systems.of_many(request_ids)
        ctx.registry.recipients.plan_many({rid: notify.plan(ctx.policy, reqs[rid], states.get(rid, {}))
                                           for rid in request_ids})
        for recipients in ctx.registry.recipients.of_many(request_ids).values():
            for name, info in recipients.items():
                if info["status"] not in ("sent", "confirmed", "waived") and info["channel"] != "manual":
                    names.add(name)
        log.info("%d request(s): recipients to tell automatically: %s", len(request_ids), sorted(names) or "none")
    return sorted(names)


def _identity_for(identities: Any, rcp: Any) -> tuple[dict[str, str] | None, dict[str, str] | None]:
    """(plaintext identities, keyed digests) the recipient may receive: at most one of them."""
    from airflow.sdk.log import mask_secret

    if rcp.identity == "none":
        return None, None
    given = identities.normalised()
    for value in given.values():
        mask_secret(value)  # should anything print it, the task log shows ***
    if rcp.identity == "plain":
        return given, None
    key_conn = connection(rcp.digest_key)
    if key_conn is None or not key_conn.password:
        raise RetentionError(f"connection {rcp.digest_key!r} (the key shared with this recipient) is not configured")
    return None, notify.subject_digests(key_conn.password.encode(), given)


def send_notice(request_ids: str | list[str], name: str) -> dict[str, int]:
    """Tell recipient ``name`` of every request of the batch that concerns it and is not settled yet.

    A failing channel records its status and raises: the task's retries (exponential backoff) try again.
    """
    from include.retention.airflow.erasure_tasks import Context

    counts = {"sent": 0, "confirmed": 0, "recorded_not_sent": 0, "not_sent": 0}
    request_ids = _ids(request_ids)
    with Context() as ctx:
        rcp = ctx.policy.recipients[name]
        conn_id = rcp.connection or (SMTP_CONN_ID if rcp.channel == "email" else None)
        conn = connection(conn_id)
        recipients = ctx.registry.recipients.of_many(request_ids)
        due = [rid for rid in request_ids if recipients.get(rid, {}).get(name, {}).get("status") not in
               (None, "sent", "confirmed", "waived")]
        if due and conn is None:
            _unsent(ctx, due, name, conn_id, counts)
            return counts
        # the identities the request acted with: never one the resolution dropped (somebody else's)
        identities = ctx.acting_identities(due) if due and rcp.identity != "none" else {}
        failed = []
        for rid in due:
            planned = recipients[rid][name]
            plain, digests = _identity_for(identities.get(rid), rcp)
            if rcp.channel == "email":
                subject, body = notify.recipient_notice(ctx.policy, name, rid, planned, identities=plain,
                                                        digests=digests)
                try:
                    send_mail(conn_id, notify.address_for(rcp, rid, planned["action"], name), subject, body)
                except Exception as exc:  # noqa: BLE001 - recorded by type only (a server's reply may echo the body)
                    ctx.registry.recipients.set([rid], name, "failed", response=f"smtp {type(exc).__name__}",
                                               attempt=True, note="")
                    failed.append(rid)
                    continue
                ctx.registry.recipients.set([rid], name, "sent", response="smtp accepted", attempt=True, note="")
                counts["sent"] += 1
                log.info("request %s: %s told by e-mail", rid, name)
            else:
                payload = notify.recipient_payload(name, rid, planned, digests=digests)
                try:
                    status = post_json(conn, rcp.endpoint, payload)
                except Exception as exc:  # noqa: BLE001 - connection errors: type only
                    ctx.registry.recipients.set([rid], name, "failed", response=f"http {type(exc).__name__}",
                                               attempt=True, note="")
                    failed.append(rid)
                    continue
                ok = 200 <= status < 300
                ctx.registry.recipients.set([rid], name, "confirmed" if ok else "failed", response=f"http {status}",
                                           attempt=True, note="")
                log.info("request %s: %s webhook answered %s", rid, name, status)
                if ok:
                    counts["confirmed"] += 1
                else:
                    failed.append(rid)
        if failed:
            raise RetentionError(f"recipient {name}: {len(failed)} notice(s) not delivered (retried with backoff): "
                                 f"{', '.join(failed[:5])}")
    return counts


def _unsent(ctx: Any, due: list[str], name: str, conn_id: str | None, counts: dict[str, int]) -> None:
    """No connection for the recipient's channel: nothing is sent. The recipient stays unconfirmed (the requests
    open, the reason on the retention page) unless the deployment opted into recording only (the demo)."""
    if record_only():
        ctx.registry.recipients.set(due, name, "waived",
                                   note=f"recorded, not sent: no connection {conn_id!r} configured "
                                        f"({RECORD_ONLY_ENV})")
        counts["recorded_not_sent"] = len(due)
        log.warning("%d request(s): %s recorded, not sent (no connection %s; %s)", len(due), name, conn_id,
                    RECORD_ONLY_ENV)
        return
    ctx.registry.recipients.set(due, name, "failed", note=f"not sent: no connection {conn_id!r} configured")
    counts["not_sent"] = len(due)
    log.error("%d request(s): %s NOT told: no connection %s configured; the request(s) stay open", len(due), name,
              conn_id)


def manual_pending(request_ids: str | list[str]) -> list[str]:
    """Manual recipients some request of the batch still waits for (names only)."""
    from include.retention.airflow.erasure_tasks import Context

    request_ids = _ids(request_ids)
    with Context() as ctx:
        return sorted({name for recipients in ctx.registry.recipients.of_many(request_ids).values()
                       for name, info in recipients.items()
                       if info["channel"] == "manual" and info["status"] not in ("confirmed", "waived")})


def confirm_manual(request_ids: str | list[str], names: list[str]) -> int:
    """The approval of ``confirm_recipients``: every listed manual recipient of the batch is confirmed."""
    from include.retention.airflow.erasure_tasks import Context

    done = 0
    request_ids = _ids(request_ids)
    with Context() as ctx:
        waiting: dict[str, list[str]] = {}
        for rid, recipients in ctx.registry.recipients.of_many(request_ids).items():
            for name, info in recipients.items():
                if name in names and info["channel"] == "manual" and info["status"] not in ("confirmed", "waived"):
                    waiting.setdefault(name, []).append(rid)
        for name, rids in sorted(waiting.items()):
            ctx.registry.recipients.set(rids, name, "confirmed", response="approved in the Airflow UI", attempt=True)
            done += len(rids)
    log.info("%d manual recipient notice(s) confirmed", done)
    return done


# ---- the requester (Art. 12) -----------------------------------------------------------------------------


def _to_requester(email: str | None, subject: str, body: str) -> str:
    """Mail the requester (at ``email``, from the encrypted registry); returns what happened (no address)."""
    if not email:
        return "recorded, not sent: the request has no e-mail address"
    if connection(SMTP_CONN_ID) is None:
        return (f"recorded, not sent: no connection {SMTP_CONN_ID!r} configured ({RECORD_ONLY_ENV})"
                if record_only() else f"not sent: no connection {SMTP_CONN_ID!r} configured")
    send_mail(SMTP_CONN_ID, email, subject, body)
    return "sent"


def _noted(details: dict[str, Any], what: str, outcome: str) -> dict[str, Any]:
    """The request's ``requester_notices`` with this one added (what the registry's details keep)."""
    from include.retention.clock import utcnow

    return {"requester_notices": [*(details.get("requester_notices") or []),
                                  {"notice": what, "outcome": outcome, "at": utcnow().isoformat()}]}


def tell_requester(registry: Any, request_id: str, subject: str, body: str, what: str) -> str:
    """Mail the requester at the address in the (encrypted) registry; returns what happened (no address)."""
    outcome = _to_requester(registry.identities(request_id).normalised().get("email"), subject, body)
    registry.update_details(request_id, **_noted(registry.details(request_id), what, outcome))
    log.info("request %s: %s notice to the requester: %s", request_id, what, outcome)
    return outcome


def completion_notices(request_ids: str | list[str], chunk: int = 50) -> dict[str, str]:
    """After finalize: each completed (not dry-run) request's requester hears back; the receipt says so.
    Read for the whole batch at once; what was sent is recorded after every ``chunk`` requests (a retry after
    a crash resends at most that many). A notice not sent for want of a connection fails the task (the run
    shows it; a retry tries again) unless recording only was chosen."""
    from include.retention.airflow.erasure_tasks import Context

    out: dict[str, str] = {}
    request_ids = _ids(request_ids)
    with Context() as ctx:
        reqs = ctx.registry.get_many(request_ids)
        ready = [rid for rid in request_ids if not reqs[rid]["dry_run"] and reqs[rid]["status"] == "complete"]
        details = ctx.registry.details_many(ready)
        ready = [rid for rid in ready if not any(  # a retry: told already (or recorded, by choice)
            n.get("notice") == "completion" and not n.get("outcome", "").startswith("not sent")
            for n in details.get(rid, {}).get("requester_notices") or [])]
        for i in range(0, len(ready), chunk):
            part = ready[i:i + chunk]
            receipts = ctx.registry.receipts_many(part)
            identities = ctx.registry.identities_many(part)
            noted = {}
            for rid in part:
                mine = details.get(rid, {})
                subject, body = notify.completion_notice(reqs[rid], receipts.get(rid), link=mine.get("link"),
                                                         link_expires_at=(mine.get("package") or {}).get(
                                                             "link_expires_at"))
                out[rid] = _to_requester(identities[rid].normalised().get("email"), subject, body)
                noted[rid] = _noted(mine, "completion", out[rid])
                if rid in receipts:
                    receipts[rid]["requester_notice"] = out[rid]
            ctx.registry.update_details_many(noted)
            ctx.registry.save_receipts(receipts)
        if out:
            log.info("%d request(s): completion notice to the requester: %s", len(out),
                     dict(collections.Counter(out.values())))
    unsent = [rid for rid, outcome in out.items() if outcome.startswith("not sent")]
    if unsent:
        raise RetentionError(f"completion notice not sent (no connection {SMTP_CONN_ID!r} configured) for "
                             f"{len(unsent)} request(s): {', '.join(unsent[:5])}")
    return out


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
        legacy = os.environ.get("RETENTION_ALERT_WEBHOOK")
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
                     subject=self.subject, html_content=_html(self.message)).notify(context)


def failure_alert(what: str = "a task failed") -> list[BaseNotifier]:
    """The DPO's on-failure notifiers for any task: mail and chat, request ids and task names only."""
    text = (f"{what}: {{{{ dag.dag_id }}}} / {{{{ ti.task_id }}}} (run {{{{ run_id }}}}). "
            "Open the run in the Airflow UI; the retention page lists the open requests.")
    return [DpoMailNotifier(subject=f"[retention] {what}: {{{{ dag.dag_id }}}}", message=text),
            WebhookNotifier(message=text)]
