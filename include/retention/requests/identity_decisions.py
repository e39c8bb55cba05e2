"""The identity check's decisions: which request waits for a person to confirm the requester's identity, what
the answer was, and what happens to a request after it (ADR 0014).

Every request type that discloses or changes data (``RETENTION_VERIFY_IDENTITY``, default
``access,rectify,withdraw,erase,restrict``: all of them; the operator turns the check off per type by listing
only the others, ``none``: no type; an unknown name is refused) waits for the check unless the request arrived
verified. Only the intake path may say so: a row queued with ``cli submit --identity-verified`` (source
``intake-verified``), or conf ``{"request_id": ..., "identity_verified": true}`` naming a request the intake path
queued. A trigger carrying identities (form, REST) may not: it is refused. The answer (approved | rejected, the
reason typed in, who answered) goes into the registry, encrypted; a rejected request is closed as ``rejected``
with a receipt that says so and a ledger entry ``identity_check / rejected``; nothing else runs. Asking the
question is the runner's (``include.retention.airflow.identity_check``: a human-in-the-loop step).
"""

from __future__ import annotations

import logging
from typing import Any

from include.retention.errors import RetentionError
from include.retention.ledger import RunRef
from include.retention.registry import INTAKE_VERIFIED
from include.retention.requests import person
from include.retention.requests.context import Refused, RequestContext
from include.retention.requests.receipts import build_receipt, render_markdown, with_identity_check
from include.retention.settings import settings
from include.retention.values import Outcome, RequestStatus

log = logging.getLogger(__name__)

VERIFY_ENV = "RETENTION_VERIFY_IDENTITY"
# every type: access discloses, rectify / withdraw / erase / restrict change the person's data or its use
DEFAULT_VERIFY = ("access", "rectify", "withdraw", "erase", "restrict")
VERIFIED_SOURCE = INTAKE_VERIFIED  # `cli submit --identity-verified`: verified before it was queued
INTAKE_SOURCES = ("intake", VERIFIED_SOURCE)  # queued by `cli submit` (the registry's `source` column)
PROCEED = ("approved", "verified at intake", "not required")
SELF_VERIFIED = "request refused: identity_verified may only come with a request queued by the intake path"


def verify_modes() -> set[str]:
    """Request types that wait for a person to confirm the requester's identity (``none``: no type). A name that
    is no request type is refused (a typo must not switch a check off)."""
    raw = settings().verify_identity
    modes = {m.strip() for m in (raw or "").split(",") if m.strip()}
    if not modes:  # unset, or nothing but blanks and commas: counts as unset (only ``none`` switches checks off)
        return set(DEFAULT_VERIFY)
    if modes == {"none"}:
        return set()
    unknown = sorted(modes - set(DEFAULT_VERIFY))
    if unknown:
        raise RetentionError(f"{VERIFY_ENV}: unknown request type(s) {', '.join(repr(u[:20]) for u in unknown[:5])} "
                             f"(known: {', '.join(DEFAULT_VERIFY)}; or none)")
    return modes


def refuse_self_verified(params: dict[str, Any]) -> None:
    """A trigger that carries identities (form, REST) may not declare its own identity verified."""
    if params.get("identity_verified"):
        raise Refused(SELF_VERIFIED)


def arrived_verified(params: dict[str, Any], req: dict[str, Any]) -> bool:
    """Whether a queued request handed to a run by id arrives verified; refused when the conf claims it for a
    request the intake path did not queue."""
    if req["source"] == VERIFIED_SOURCE:
        return True
    claimed = bool(params.get("identity_verified"))
    if claimed and req["source"] not in INTAKE_SOURCES:
        raise Refused(SELF_VERIFIED)
    return claimed


def decision_of(details: dict[str, Any]) -> str | None:
    return (details.get("identity_check") or {}).get("decision")


def _waits(ctx: RequestContext, rid: str) -> bool:
    """Whether request ``rid`` waits for the check; records why not otherwise."""
    req = ctx.registry.get(rid)
    details = ctx.registry.details(rid)
    decision = decision_of(details)
    if person.undecided_conflict(details) and not req["dry_run"] and decision not in ("approved", "rejected"):
        # identities leading to more than one person: a person decides, whatever the request type
        log.info("request %s waits for the identity check: its identities conflict", rid)
        return True
    if decision in (*PROCEED, "rejected"):
        return False  # a retry or a re-run: decided already
    if req["dry_run"] or req["mode"] not in verify_modes():
        why = "dry run" if req["dry_run"] else f"{VERIFY_ENV} does not list {req['mode']}"
        ctx.registry.update_details(rid, identity_check={"decision": "not required", "why": why})
        log.info("request %s: no identity check (%s)", rid, why)
        return False
    if details.get("identity_verified") or req["source"] == VERIFIED_SOURCE:
        ctx.registry.update_details(rid, identity_check={"decision": "verified at intake"})
        log.info("request %s: identity verified at intake", rid)
        return False
    log.info("request %s waits for the identity check", rid)
    return True


def needs_check(ctx: RequestContext, request_ids: list[str]) -> bool:
    """Whether a person must confirm the requester's identity before anything leaves or changes; records
    why not otherwise (type not listed, dry run, verified at intake)."""
    waiting = [_waits(ctx, rid) for rid in request_ids]  # every request decided, not only the first waiting
    return any(waiting)


def record_decision(ctx: RequestContext, request_ids: list[str], event: dict[str, Any]) -> str:
    """The identity check's answer (the approval step's resume event) into the registry, encrypted:
    approved | rejected, the reason typed into the form and who answered. Returns the decision."""
    chosen = (event.get("chosen_options") or [None])[0]
    verdict = "approved" if chosen == "Approve" else "rejected"
    reason = (event.get("params_input") or {}).get("reason") or None
    user = event.get("responded_by_user") or {}
    who = user.get("name") if isinstance(user, dict) else getattr(user, "name", None)
    for rid in request_ids:
        if decision_of(ctx.registry.details(rid)) in PROCEED:
            continue  # not asked for this one (a batch): keep why
        ctx.registry.update_details(rid, identity_check={"decision": verdict, "reason": reason, "by": who})
        log.info("request %s: identity check %s", rid, verdict)
    return verdict


def close_rejected(ctx: RequestContext, request_id: str, dag_id: str, run_id: str) -> None:
    """A rejected request: closed as ``rejected`` (reason kept, encrypted) with one ledger entry."""
    ctx.registry.finish(request_id, RequestStatus.REJECTED, error="identity not verified")
    if not ctx.ledger.has_entry(request_id=request_id, action="identity_check", outcome=Outcome.REJECTED):
        ctx.ledger.append(run=RunRef(dag_id, run_id), action="identity_check", outcome=Outcome.REJECTED, count=0,
                          request_id=request_id, policy_digest=ctx.policy.digest,
                          subject_digest=ctx.registry.subject_digest(request_id), details={})


def stop_conflict(ctx: RequestContext, request_id: str, dag_id: str, run_id: str) -> dict[str, Any]:
    """Close a request stopped on a conflict of identities, with its receipt (kinds and counts only)."""
    person.stop_on_conflict(ctx.registry, ctx.ledger, ctx.policy, request_id, RunRef(dag_id, run_id))
    req = ctx.registry.get(request_id)
    details = ctx.registry.details(request_id)
    receipt = build_receipt(req, ctx.registry.systems.of(request_id), ctx.systems(), ctx.policy.digest)
    with_identity_check(receipt, req, details)
    person.stopped_receipt(receipt, details)
    ctx.registry.save_receipt(request_id, receipt)
    log.info("request %s stopped on a conflict of identities; receipt:\n%s", request_id, render_markdown(receipt))
    return receipt


def gate(ctx: RequestContext, request_ids: list[str], dag_id: str, run_id: str) -> list[str]:
    """After the identity check: the requests that may proceed; each rejected one is closed with its receipt."""
    proceed = []
    for rid in request_ids:
        details = ctx.registry.details(rid)
        decision = decision_of(details)
        if decision in PROCEED and person.undecided_conflict(details):
            if decision != "approved":  # nobody was asked (a dry run): the conflict stops the request
                stop_conflict(ctx, rid, dag_id, run_id)
                continue
            person.choose_linked_only(ctx.registry, rid)  # Approve: the linked identities only, never all
        if decision in PROCEED:
            proceed.append(rid)
            continue
        if decision != "rejected":
            raise Refused(f"request {rid}: the requester's identity was not confirmed; nothing was done")
        close_rejected(ctx, rid, dag_id, run_id)
        receipt = with_identity_check(build_receipt(ctx.registry.get(rid), ctx.registry.systems.of(rid), ctx.systems(),
                                                    ctx.policy.digest), ctx.registry.get(rid), details)
        ctx.registry.save_receipt(rid, receipt)
        log.info("request %s rejected (identity not verified); receipt:\n%s", rid, render_markdown(receipt))
    return proceed
