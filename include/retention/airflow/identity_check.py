"""The identity check every subject-request DAG shares: "Identity verified?" before data leaves or changes.

Every request type that discloses or changes data (``RETENTION_VERIFY_IDENTITY``, default
``access,rectify,withdraw,erase,restrict``: all of them; the operator turns the check off per type by listing
only the others, ``none``: no type; an unknown name is refused) waits in a human-in-the-loop step
(:class:`IdentityCheck`, Required actions) unless the request arrived verified. Only the intake path may say
so: a row queued with ``cli submit --identity-verified`` (source ``intake-verified``), or conf
``{"request_id": ..., "identity_verified": true}`` naming a request the intake path queued. A trigger carrying
identities (form, REST) may not: it is refused. The answer (approved | rejected, the reason typed in, who
answered) goes into the registry, encrypted; a rejected request is closed as ``rejected`` with a receipt that
says so and a ledger entry ``identity_check / rejected``; nothing else runs.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param

from include.retention import person
from include.retention.errors import RetentionError
from include.retention.registry import INTAKE_VERIFIED

log = logging.getLogger(__name__)

VERIFY_ENV = "RETENTION_VERIFY_IDENTITY"
# every type: access discloses, rectify / withdraw / erase / restrict change the person's data or its use
DEFAULT_VERIFY = ("access", "rectify", "withdraw", "erase", "restrict")
VERIFIED_SOURCE = INTAKE_VERIFIED  # `cli submit --identity-verified`: verified before it was queued
INTAKE_SOURCES = ("intake", VERIFIED_SOURCE)  # queued by `cli submit` (the registry's `source` column)
PROCEED = ("approved", "verified at intake", "not required")
REJECTED_VERIFICATION = ("identity not verified: the request was rejected and closed; nothing was read, changed "
                         "or handed out (the reason is kept, encrypted, in the registry)")
SELF_VERIFIED = "request refused: identity_verified may only come with a request queued by the intake path"


def verify_modes() -> set[str]:
    """Request types that wait for a person to confirm the requester's identity (``none``: no type). A name that
    is no request type is refused (a typo must not switch a check off)."""
    raw = os.environ.get(VERIFY_ENV)
    if raw is None:
        return set(DEFAULT_VERIFY)
    modes = {m.strip() for m in raw.split(",") if m.strip()}
    if modes <= {"none"}:
        return set()
    unknown = sorted(modes - set(DEFAULT_VERIFY))
    if unknown:
        raise RetentionError(f"{VERIFY_ENV}: unknown request type(s) {', '.join(repr(u[:20]) for u in unknown[:5])} "
                             f"(known: {', '.join(DEFAULT_VERIFY)}; or none)")
    return modes


def _ids(request_ids: str | list[str]) -> list[str]:
    return [request_ids] if isinstance(request_ids, str) else list(request_ids)


def _fail(message: str):
    from airflow.sdk.exceptions import AirflowFailException

    raise AirflowFailException(message)


def refuse_self_verified(params: dict[str, Any]) -> None:
    """A trigger that carries identities (form, REST) may not declare its own identity verified."""
    if params.get("identity_verified"):
        _fail(SELF_VERIFIED)


def arrived_verified(params: dict[str, Any], req: dict[str, Any]) -> bool:
    """Whether a queued request handed to a run by id arrives verified; refused when the conf claims it for a
    request the intake path did not queue."""
    if req["source"] == VERIFIED_SOURCE:
        return True
    claimed = bool(params.get("identity_verified"))
    if claimed and req["source"] not in INTAKE_SOURCES:
        _fail(SELF_VERIFIED)
    return claimed


def needs_check(request_ids: str | list[str]) -> bool:
    """Whether a person must confirm the requester's identity before anything leaves or changes; records
    why not otherwise (type not listed, dry run, verified at intake)."""
    from include.retention.airflow.erasure_tasks import Context

    waiting = False
    with Context() as ctx:
        for rid in _ids(request_ids):
            req = ctx.registry.get(rid)
            details = ctx.registry.details(rid)
            decision = (details.get("identity_check") or {}).get("decision")
            if person.undecided_conflict(details) and not req["dry_run"] and decision not in ("approved", "rejected"):
                # identities leading to more than one person: a person decides, whatever the request type
                log.info("request %s waits for the identity check: its identities conflict", rid)
                waiting = True
                continue
            if decision in (*PROCEED, "rejected"):
                continue  # a retry or a re-run: decided already
            if req["dry_run"] or req["mode"] not in verify_modes():
                why = "dry run" if req["dry_run"] else f"{VERIFY_ENV} does not list {req['mode']}"
                ctx.registry.update_details(rid, identity_check={"decision": "not required", "why": why})
                log.info("request %s: no identity check (%s)", rid, why)
            elif details.get("identity_verified") or req["source"] == VERIFIED_SOURCE:
                ctx.registry.update_details(rid, identity_check={"decision": "verified at intake"})
                log.info("request %s: identity verified at intake", rid)
            else:
                log.info("request %s waits for the identity check", rid)
                waiting = True
    return waiting


def record_decision(request_ids: str | list[str], event: dict[str, Any]) -> str:
    """The identity check's answer (from the approval task's resume event) into the registry, encrypted:
    approved | rejected, the reason typed into the form and who answered. Returns the decision."""
    from include.retention.airflow.erasure_tasks import Context

    chosen = (event.get("chosen_options") or [None])[0]
    verdict = "approved" if chosen == "Approve" else "rejected"
    reason = (event.get("params_input") or {}).get("reason") or None
    user = event.get("responded_by_user") or {}
    who = user.get("name") if isinstance(user, dict) else getattr(user, "name", None)
    with Context() as ctx:
        for rid in _ids(request_ids):
            if (ctx.registry.details(rid).get("identity_check") or {}).get("decision") in PROCEED:
                continue  # not asked for this one (a batch): keep why
            ctx.registry.update_details(rid, identity_check={"decision": verdict, "reason": reason, "by": who})
            log.info("request %s: identity check %s", rid, verdict)
    return verdict


class IdentityCheck(ApprovalOperator):
    """"Identity verified?": records the answer (and the reason typed in) in the registry before Approve lets
    the request proceed or Reject skips the next task; the request is then closed as rejected."""

    def __init__(self, *, request_task: str = "register", **kwargs: Any):
        super().__init__(**kwargs)
        self.request_task = request_task

    def execute_complete(self, context, event):  # noqa: ANN001 - the operator's signature
        if "error" not in event:
            record_decision(context["ti"].xcom_pull(task_ids=self.request_task), event)
        return super().execute_complete(context=context, event=event)


def identity_check_step(dag_label: str, what: str) -> IdentityCheck:
    """The Required-actions step of ``dag_label``; ``what`` says what the request would do."""
    return IdentityCheck(
        task_id="verify_identity",
        subject=f"Identity verified? ({dag_label})",
        body="Request {{ ti.xcom_pull(task_ids='register') }} (" + what + "): approve only once the requester "
             "has proven to be the person (e.g. a reply from the registered address). Reject closes the "
             "request and changes nothing; give the reason.\n\n"
             "{{ ti.xcom_pull(task_ids='resolve_person') or '' }}",
        defaults=["Reject"],
        params={"reason": Param("", type="string", maxLength=2000, title="Reason")},
        response_timeout=dt.timedelta(days=7),
        # a failed try (e.g. the registry unreachable while recording the answer) asks again
    )


def close_rejected(ctx: Any, request_id: str, dag_id: str, run_id: str) -> None:
    """A rejected request: closed as ``rejected`` (reason kept, encrypted) with one ledger entry."""
    from include.retention.ledger import RunRef

    ctx.registry.finish(request_id, "rejected", error="identity not verified")
    if not ctx.ledger.has_entry(request_id=request_id, action="identity_check", outcome="rejected"):
        ctx.ledger.append(run=RunRef(dag_id, run_id), action="identity_check", outcome="rejected", count=0,
                          request_id=request_id, policy_digest=ctx.policy.digest,
                          subject_digest=ctx.registry.subject_digest(request_id), details={})


def add_to_receipt(receipt: dict[str, Any], req: dict[str, Any], details: dict[str, Any]) -> dict[str, Any]:
    """The identity check's decision (never its reason) in a receipt; a rejected request's receipt says so."""
    check = details.get("identity_check") or (
        {"decision": "verified at intake"} if req.get("source") == VERIFIED_SOURCE else {})
    receipt["identity_check"] = {"decision": check.get("decision", "none"),
                                 "reason_recorded": bool(check.get("reason"))}
    receipt["person"] = person.receipt_part(details)  # one person per request: kinds, statuses, counts
    if req["status"] == "rejected":
        receipt["verification"] = REJECTED_VERIFICATION
    elif req["status"] == "conflict":
        receipt["verification"] = person.STOPPED_VERIFICATION
    return receipt


def gate(request_ids: list[str], dag_id: str, run_id: str) -> list[str]:
    """After the identity check: the requests that may proceed; each rejected one is closed with its receipt."""
    from include.retention.airflow.erasure_tasks import Context, stop_conflict, systems
    from include.retention.receipts import build_receipt, render_markdown

    proceed = []
    with Context() as ctx:
        for rid in request_ids:
            details = ctx.registry.details(rid)
            decision = (details.get("identity_check") or {}).get("decision")
            if decision in PROCEED and person.undecided_conflict(details):
                if decision != "approved":  # nobody was asked (a dry run): the conflict stops the request
                    stop_conflict(ctx, rid, dag_id, run_id)
                    continue
                person.choose_linked_only(ctx.registry, rid)  # Approve: the linked identities only, never all
            if decision in PROCEED:
                proceed.append(rid)
                continue
            if decision != "rejected":
                _fail(f"request {rid}: the requester's identity was not confirmed; nothing was done")
            close_rejected(ctx, rid, dag_id, run_id)
            receipt = add_to_receipt(build_receipt(ctx.registry.get(rid), ctx.registry.systems.of(rid), systems(),
                                                   ctx.policy.digest), ctx.registry.get(rid), details)
            ctx.registry.save_receipt(rid, receipt)
            log.info("request %s rejected (identity not verified); receipt:\n%s", rid, render_markdown(receipt))
    return proceed
