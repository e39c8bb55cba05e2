"""Notice planning and sending, behind a ``Sender``: recipients (Art. 19), the requester (Art. 12).

What to say comes from ``requests.notify`` (templates, payloads); how it leaves is the ``Sender``'s: Airflow's
SMTP hook and HTTP connections inside a task (``include.retention.airflow.notify_tasks``), ``smtplib`` on the
same ``AIRFLOW_CONN_*`` connection in the CLI (``requests.senders``). A channel whose connection is not configured
sends nothing and the recipient stays unconfirmed (status ``failed``, note "not sent: no connection '<id>'
configured"): the request stays open until the connection exists and the run is repeated or the recipient is
waived. Only ``RETENTION_NOTIFY_RECORD_ONLY=1`` (the demo, which has no mail server) records such a notice as
"recorded, not sent" (status ``waived``). Logs and exceptions carry request ids, recipient names and statuses.
"""

from __future__ import annotations

import collections
import logging
from typing import Any, Protocol

from include.retention.clock import utcnow
from include.retention.errors import RetentionError
from include.retention.requests import notify
from include.retention.requests.context import RequestContext
from include.retention.settings import settings
from include.retention.values import RecipientStatus

log = logging.getLogger(__name__)

SMTP_CONN_ID = settings().smtp_conn_id  # recipients' and requesters' mail
RECORD_ONLY_ENV = "RETENTION_NOTIFY_RECORD_ONLY"
NOT_DUE = (None, "sent", "confirmed", "waived")  # no notice planned, or told already


class Sender(Protocol):
    """How notices leave: mail and webhooks through named connections."""

    def configured(self, conn_id: str | None) -> bool:
        """Whether connection ``conn_id`` exists (nothing is sent through one that does not)."""

    def send(self, conn_id: str, to: str, subject: str, body: str) -> None:
        """One mail through connection ``conn_id``; raises when it is not accepted."""

    def post(self, conn_id: str, endpoint: str | None, payload: dict[str, Any]) -> int:
        """POST ``payload`` as JSON through connection ``conn_id``; returns the response status."""

    def secret(self, conn_id: str | None) -> str | None:
        """The password of connection ``conn_id`` (a key shared with a recipient), None when not configured."""


def record_only() -> bool:
    """Whether a channel without its connection may count as told ("recorded, not sent"): the demo's opt-in."""
    return settings().notify_record_only


# ---- recipients (Art. 19) ----------------------------------------------------------------------
def plan_notices(ctx: RequestContext, request_ids: list[str]) -> list[str]:
    """Record, per request, the recipients it concerns; return those told automatically (e-mail, webhook).
    Set-based: the batch's requests, states and recipients are read and written a chunk of 500 at a time."""
    names: set[str] = set()
    reqs, states = ctx.registry.get_many(request_ids), ctx.registry.systems.of_many(request_ids)
    ctx.registry.recipients.plan_many({rid: notify.plan(ctx.policy, reqs[rid], states.get(rid, {}))
                                       for rid in request_ids})
    for recipients in ctx.registry.recipients.of_many(request_ids).values():
        for name, info in recipients.items():
            if info["status"] not in ("sent", "confirmed", "waived") and info["channel"] != "manual":
                names.add(name)
    log.info("%d request(s): recipients to tell automatically: %s", len(request_ids), sorted(names) or "none")
    return sorted(names)


def _identity_for(ctx: RequestContext, sender: Sender, identities: Any,
                  rcp: Any) -> tuple[dict[str, str] | None, dict[str, str] | None]:
    """(plaintext identities, keyed digests) the recipient may receive: at most one of them."""
    if rcp.identity == "none":
        return None, None
    given = identities.normalised()
    for value in given.values():
        ctx.mask(value)  # should anything print it, the runner's log shows ***
    if rcp.identity == "plain":
        return given, None
    key = sender.secret(rcp.digest_key)
    if not key:
        raise RetentionError(f"connection {rcp.digest_key!r} (the key shared with this recipient) is not configured")
    return None, notify.subject_digests(key.encode(), given)


def _tell(ctx: RequestContext, sender: Sender, rid: str, name: str, rcp: Any, conn_id: str | None,
          planned: dict[str, Any], identity: Any) -> str:
    """One notice to recipient ``name``: ``sent`` | ``confirmed`` | ``failed`` (recorded in the registry)."""
    plain, digests = _identity_for(ctx, sender, identity, rcp)
    if rcp.channel == "email":
        subject, body = notify.recipient_notice(ctx.policy, name, rid, planned, identities=plain, digests=digests)
        try:
            sender.send(conn_id, notify.address_for(rcp, rid, planned["action"], name), subject, body)
        except Exception as exc:  # noqa: BLE001 - recorded by type only (a server's reply may echo the body)
            ctx.registry.recipients.set([rid], name, "failed", response=f"smtp {type(exc).__name__}", attempt=True,
                                       note="")
            return "failed"
        ctx.registry.recipients.set([rid], name, "sent", response="smtp accepted", attempt=True, note="")
        log.info("request %s: %s told by e-mail", rid, name)
        return "sent"
    payload = notify.recipient_payload(name, rid, planned, digests=digests)
    try:
        status = sender.post(conn_id, rcp.endpoint, payload)
    except Exception as exc:  # noqa: BLE001 - connection errors: type only
        ctx.registry.recipients.set([rid], name, "failed", response=f"http {type(exc).__name__}", attempt=True,
                                   note="")
        return "failed"
    ok = 200 <= status < 300
    ctx.registry.recipients.set([rid], name, "confirmed" if ok else "failed", response=f"http {status}",
                               attempt=True, note="")
    log.info("request %s: %s webhook answered %s", rid, name, status)
    return "confirmed" if ok else "failed"


def send_notice(ctx: RequestContext, sender: Sender, request_ids: list[str], name: str) -> dict[str, int]:
    """Tell recipient ``name`` of every request of the batch that concerns it and is not settled yet.

    A failing channel records its status and raises: the runner's retries (exponential backoff) try again.
    """
    counts = {"sent": 0, "confirmed": 0, "recorded_not_sent": 0, "not_sent": 0}
    rcp = ctx.policy.recipients[name]
    conn_id = rcp.connection or (SMTP_CONN_ID if rcp.channel == "email" else None)
    recipients = ctx.registry.recipients.of_many(request_ids)
    due = [rid for rid in request_ids if recipients.get(rid, {}).get(name, {}).get("status") not in NOT_DUE]
    if due and not sender.configured(conn_id):
        _unsent(ctx, due, name, conn_id, counts)
        return counts
    # the identities the request acted with: never one the resolution dropped (somebody else's)
    identities = ctx.acting_identities(due) if due and rcp.identity != "none" else {}
    failed = []
    for rid in due:
        outcome = _tell(ctx, sender, rid, name, rcp, conn_id, recipients[rid][name], identities.get(rid))
        if outcome == "failed":
            failed.append(rid)
        else:
            counts[outcome] += 1
    if failed:
        raise RetentionError(f"recipient {name}: {len(failed)} notice(s) not delivered (retried with backoff): "
                             f"{', '.join(failed[:5])}")
    return counts


def _unsent(ctx: RequestContext, due: list[str], name: str, conn_id: str | None, counts: dict[str, int]) -> None:
    """No connection for the recipient's channel: nothing is sent. The recipient stays unconfirmed (the requests
    open, the reason on the retention page) unless the deployment opted into recording only (the demo)."""
    if record_only():
        ctx.registry.recipients.set(due, name, RecipientStatus.WAIVED,
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


def manual_pending(ctx: RequestContext, request_ids: list[str]) -> list[str]:
    """Manual recipients some request of the batch still waits for (names only)."""
    return sorted({name for recipients in ctx.registry.recipients.of_many(request_ids).values()
                   for name, info in recipients.items()
                   if info["channel"] == "manual" and info["status"] not in ("confirmed", "waived")})


def confirm_manual(ctx: RequestContext, request_ids: list[str], names: list[str]) -> int:
    """An approval in the runner's UI: every listed manual recipient of the batch is confirmed."""
    done = 0
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
def to_requester(sender: Sender, email: str | None, subject: str, body: str) -> str:
    """Mail the requester (at ``email``, from the encrypted registry); returns what happened (no address)."""
    if not email:
        return "recorded, not sent: the request has no e-mail address"
    if not sender.configured(SMTP_CONN_ID):
        return (f"recorded, not sent: no connection {SMTP_CONN_ID!r} configured ({RECORD_ONLY_ENV})"
                if record_only() else f"not sent: no connection {SMTP_CONN_ID!r} configured")
    sender.send(SMTP_CONN_ID, email, subject, body)
    return "sent"


def _noted(details: dict[str, Any], what: str, outcome: str) -> dict[str, Any]:
    """The request's ``requester_notices`` with this one added (what the registry's details keep)."""
    return {"requester_notices": [*(details.get("requester_notices") or []),
                                  {"notice": what, "outcome": outcome, "at": utcnow().isoformat()}]}


def tell_requester(registry: Any, sender: Sender, request_id: str, subject: str, body: str, what: str) -> str:
    """Mail the requester at the address in the (encrypted) registry; returns what happened (no address)."""
    outcome = to_requester(sender, registry.identities(request_id).normalised().get("email"), subject, body)
    registry.update_details(request_id, **_noted(registry.details(request_id), what, outcome))
    log.info("request %s: %s notice to the requester: %s", request_id, what, outcome)
    return outcome


def _not_told(details: dict[str, Any]) -> bool:
    return not any(n.get("notice") == "completion" and not n.get("outcome", "").startswith("not sent")
                   for n in details.get("requester_notices") or [])


def completion_notices(ctx: RequestContext, sender: Sender, request_ids: list[str],
                       chunk: int = 50) -> dict[str, str]:
    """After finalize: each completed (not dry-run) request's requester hears back; the receipt says so.
    Read for the whole batch at once; what was sent is recorded after every ``chunk`` requests (a retry after
    a crash resends at most that many). A notice not sent for want of a connection raises (a retry tries
    again) unless recording only was chosen."""
    out: dict[str, str] = {}
    reqs = ctx.registry.get_many(request_ids)
    ready = [rid for rid in request_ids if not reqs[rid]["dry_run"] and reqs[rid]["status"] == "complete"]
    details = ctx.registry.details_many(ready)
    ready = [rid for rid in ready if _not_told(details.get(rid, {}))]  # a retry: told already (or recorded)
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
            out[rid] = to_requester(sender, identities[rid].normalised().get("email"), subject, body)
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
