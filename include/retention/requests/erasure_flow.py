"""The erasure flow (erase, restrict): register, discover, act, verify, record, finalize; batches of requests.

Every step takes a ``RequestContext`` (``requests.context``) and request ids; only request ids and counts leave
it. ``Refused`` means retrying does not help (a malformed or unconfirmed request, a request that stays open);
any other error is worth a retry.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa

from include.retention.errors import RetentionError
from include.retention.findings import FindingStore
from include.retention.identity import IDENTITY_KINDS
from include.retention.ledger import RunRef
from include.retention.registry import ERASURE_MODES, RECIPIENT_SETTLED, Identities, NewRequest
from include.retention.requests import identity_decisions, person
from include.retention.requests.context import Refused, RequestContext
from include.retention.requests.receipts import (
    add_unmapped,
    build_receipt,
    counted_total,
    ledger_proofs,
    recipients_part,
    render_markdown,
    with_identity_check,
)
from include.retention.requests.scanner import SubjectOutcome, check_request_kinds
from include.retention.values import Outcome, RequestStatus, SystemStatus

log = logging.getLogger(__name__)


# ---- register ------------------------------------------------------------------------------------
def register(ctx: RequestContext, params: dict[str, Any], dag_id: str, run_id: str) -> str:
    """The identities from the run's conf into the registry; returns the request id. A conf without identities
    names a request registered before the run (``{"request_id": ...}`` or a purged conf)."""
    if not any(params.get(kind) for kind in IDENTITY_KINDS):
        registered = registered_before(ctx, params.get("request_id"), dag_id, run_id, params)
        if registered:
            return registered
    identity_decisions.refuse_self_verified(params)  # only a request queued by the intake path may arrive verified
    mode = params.get("mode") or "erase"
    request_id, dry_run, due_at = register_form_request(ctx, params, mode, dag_id, run_id)
    log.info("request %s registered (mode %s, dry run %s), due %s", request_id, mode, dry_run, due_at)
    return request_id


def register_form_request(ctx: RequestContext, params: dict[str, Any], mode: str, dag_id: str, run_id: str,
                          details: dict[str, Any] | None = None) -> tuple[str, bool, Any]:
    """Register the request a form or REST trigger put in the run's conf (its identities, encrypted; ``details``
    with it) and start it; refused if the policy cannot take its identity kinds.
    Returns the request id, whether it is a dry run, and when it is due."""
    req = NewRequest(
        identities=Identities({kind: params.get(kind) or None for kind in IDENTITY_KINDS}),
        mode=mode, dry_run=bool(params.get("dry_run")),
        source="form", external_ref=params.get("request_ref") or None, note=params.get("note") or None,
    )
    request_id = ctx.registry.request_id_for(dag_id, run_id)
    try:
        check_request_kinds(ctx.policy, req.identities.given())
        ctx.registry.register(req, request_id=request_id, dag_id=dag_id, run_id=run_id,
                              policy_digest=ctx.policy.digest)
    except RetentionError as exc:
        raise Refused(f"request refused: {exc}") from None  # a malformed request is not retried
    if details is not None:
        ctx.registry.update_details(request_id, **details)
    ctx.registry.start(request_id)
    return request_id, req.dry_run, ctx.registry.get(request_id)["due_at"]


def registered_before(ctx: RequestContext, request_id: str | None, dag_id: str, run_id: str,
                      params: dict[str, Any]) -> str | None:
    """A request registered for this run before it started (the retention page's intake form), by an earlier
    try of it, or queued by the intake path and handed to this run by id (it then asks for the identity check
    unless it arrived verified): the run's conf then holds no identity (roles/purge work, retention_page.py)."""
    rid = str(request_id or ctx.registry.request_id_for(dag_id, run_id))
    try:
        req = ctx.registry.get(rid)
    except sa.exc.NoResultFound:
        if request_id:
            raise Refused(f"request refused: unknown request {rid}") from None
        return None
    queued = req["dag_id"] is None and req["source"] in identity_decisions.INTAKE_SOURCES and req["mode"] in \
        ERASURE_MODES and req["status"] == RequestStatus.PENDING
    # stopped on a conflict of identities where nobody was asked (erasure_intake, a dry run): handed over by
    # id, it waits at the identity check here, whose approver may act with the linked identities only
    stopped = bool(request_id) and req["status"] == RequestStatus.CONFLICT and req["mode"] in ERASURE_MODES
    if (req["dag_id"], req["run_id"]) != (dag_id, run_id) and not queued and not stopped:
        raise Refused(f"request refused: request {rid} was registered for another run")
    if identity_decisions.arrived_verified(params, req):
        ctx.registry.update_details(rid, identity_verified=True)
    ctx.registry.start(rid, dag_id, run_id)
    log.info("request %s (registered before the run, mode %s, dry run %s), due %s", rid, req["mode"],
             req["dry_run"], req["due_at"])
    return rid


# ---- per system: discover, act, verify, record ---------------------------------------------------
def batch_mode(ctx: RequestContext, request_ids: list[str]) -> tuple[str, bool]:
    """The batch's one mode and dry-run flag (``claim_pending`` never mixes them; refused if they are mixed)."""
    found = {(r["mode"], bool(r["dry_run"])) for r in ctx.registry.get_many(request_ids).values()}
    if len(found) != 1:
        raise RetentionError(f"a batch of {len(request_ids)} request(s) must share one mode and dry-run flag; "
                             f"found {sorted(found) or 'none'}")
    return next(iter(found))


def discover(ctx: RequestContext, request_ids: list[str], system: str) -> dict[str, int]:
    """Count what the request(s) will touch in this system (changes nothing)."""
    mode, _ = batch_mode(ctx, request_ids)
    outcome = ctx.scanner(system).act(ctx.subjects(request_ids), mode, dry_run=True)
    totals: dict[str, int] = {}
    for per_coll in outcome.per_request.values():
        for counts in per_coll.values():
            for key, n in counts.items():
                totals[key] = totals.get(key, 0) + n
    ctx.registry.systems.set(request_ids, system, SystemStatus.DISCOVERED)
    log.info("%s: found for %d request(s): %s", system, len(request_ids), totals)
    return totals


def act(ctx: RequestContext, request_ids: list[str], system: str) -> dict[str, int]:
    """Erase or restrict (or, for a dry run, only count) the subjects' data in this system."""
    mode, dry_run = batch_mode(ctx, request_ids)
    scanner = ctx.scanner(system)
    if not dry_run:
        _intent(ctx, request_ids, system, mode)  # in the ledger before anything changes
    searched = scanner.searched()

    def save(part, status: str = SystemStatus.ACTING) -> None:
        # counts are added to what earlier tries recorded: a retry finds gone what a failed try removed
        per = {rid: {"collections": part.per_request.get(rid, {}),
                     "removed_along": part.totals if len(request_ids) == 1 else {}, "searched": searched}
               for rid in request_ids if rid in part.per_request or status != SystemStatus.ACTING}
        if per:
            ctx.registry.systems.add_counts(per, system, status)

    outcome = scanner.act(ctx.subjects(request_ids), mode, dry_run=dry_run, on_collection=save)
    save(SubjectOutcome(), SystemStatus.ACTED)  # every collection done: the status, nothing more to add
    log.info("%s: %s%s for %d request(s); removed along: %s", system, mode, " (dry run)" if dry_run else "",
             len(request_ids), outcome.totals)
    return {"requests": len(request_ids), **outcome.totals}


def _batch_digest(ctx: RequestContext, request_ids: list[str]) -> str:
    return ctx.ledger.digest("\n".join(sorted(request_ids)))


def _intent(ctx: RequestContext, request_ids: list[str], system: str, mode: str) -> int:
    """One intent per system and batch of requests, written before the stores change (reused on retry)."""
    digest = _batch_digest(ctx, request_ids)
    open_ = ctx.ledger.open_intents(system=system, action=mode, pk_digest=digest)
    if open_:
        return int(open_[0]["seq"])
    first = ctx.registry.get(request_ids[0])
    return ctx.ledger.intend(action=mode, count=len(request_ids), run=RunRef(first.get("dag_id") or "manual",
                                                                             first.get("run_id") or "manual"),
                             system=system, policy_digest=ctx.policy.digest, pk_digest=digest,
                             details={"requests": len(request_ids)})


def verify(ctx: RequestContext, request_ids: list[str], system: str) -> int:
    """Fresh re-scan: nothing of the subjects may be left but restricted exceptions."""
    mode, dry_run = batch_mode(ctx, request_ids)
    if dry_run:
        return 0
    left = ctx.scanner(system).remaining(ctx.subjects(request_ids), mode)
    failed = [rid for rid in request_ids if left.get(rid)]
    ok = [rid for rid in request_ids if rid not in failed]
    if ok:
        ctx.registry.systems.set(ok, system, SystemStatus.VERIFIED)
    if failed:
        ctx.registry.systems.set(failed, system, SystemStatus.FAILED, error="verification found data left")
        raise RetentionError(f"{system}: verification found data left for {len(failed)} request(s): "
                             f"{', '.join(failed[:5])}")
    return len(ok)


def record(ctx: RequestContext, request_ids: list[str], system: str, dag_id: str, run_id: str) -> int:
    """One ledger entry per request and system, written once even if the step is retried. Set-based: the
    batch's entries are chained in one write transaction, states and digests read in one SELECT per 500."""
    mode, dry_run = batch_mode(ctx, request_ids)
    outcome = Outcome.DRY_RUN if dry_run else Outcome.VERIFIED
    # a retry or a re-run: requests already proven in the ledger are not written again
    proven = ctx.ledger.requests_with_entry(request_ids, system=system, action=mode, outcome=outcome)
    todo = [rid for rid in request_ids if rid not in proven]
    states = ctx.registry.systems.of_many(todo)
    subjects = ctx.registry.subject_digests(todo)
    items, settled = [], 0
    for rid in todo:
        counts = states.get(rid, {}).get(system, {}).get("counts", {})
        total = counted_total(counts.get("collections", {}))
        items.append({"run": RunRef(dag_id, run_id), "action": mode, "outcome": outcome, "count": total,
                      "request_id": rid, "policy_digest": ctx.policy.digest, "system": system,
                      "subject_digest": subjects[rid], "details": counts})
        settled += total
    ctx.ledger.append_many(items)
    ctx.registry.systems.set(request_ids, system, SystemStatus.RECORDED)
    if not dry_run:
        for intent in ctx.ledger.open_intents(system=system, action=mode,
                                              pk_digest=_batch_digest(ctx, request_ids)):
            ctx.ledger.settle(int(intent["seq"]), count=settled, outcome=Outcome.VERIFIED,
                              details={"requests": len(request_ids), "recorded": len(items)})
    return len(items)


# ---- finalize ------------------------------------------------------------------------------------
def _close(ctx: RequestContext, request_ids: list[str], expected_systems: list[str]) -> list[str]:
    """Complete the requests every system recorded and every recipient settled; suppress the erased ones; the
    others stay open (``incomplete``). Returns the ids still open."""
    reqs = ctx.registry.get_many(request_ids)
    states = ctx.registry.systems.of_many(request_ids)
    recipients = ctx.registry.recipients.of_many(request_ids)
    complete, still_open = [], {}
    for rid in request_ids:
        done = all(states.get(rid, {}).get(s, {}).get("status") == "recorded" for s in expected_systems)
        # Art. 19: every recipient confirmed or waived
        told = all(r["status"] in RECIPIENT_SETTLED for r in recipients.get(rid, {}).values())
        if done and told:
            complete.append(rid)
        else:
            error = "not every system verified" if not done else "not every recipient confirmed or waived"
            still_open.setdefault(error, []).append(rid)
    erased = [rid for rid in complete if reqs[rid]["mode"] == "erase" and not reqs[rid]["dry_run"]]
    if erased:  # the identities acted with only: never one the resolution dropped (somebody else's)
        ctx.registry.suppression.add_many(erased, ctx.acting_identities(erased))
    ctx.registry.finish_many(complete, RequestStatus.COMPLETE)
    for error, ids in still_open.items():
        ctx.registry.finish_many(ids, RequestStatus.INCOMPLETE, error=error)
    return [rid for ids in still_open.values() for rid in ids]


def _erasure_receipts(ctx: RequestContext, request_ids: list[str],
                      expected_systems: list[str]) -> dict[str, dict[str, Any]]:
    """Each finished request's receipt, with each system's ledger entry (seq + keyed hash: ``cli verify-receipt``
    checks the receipt against it), the identity check, the recipients and open discovery findings."""
    reqs = ctx.registry.get_many(request_ids)  # as finished: status, completed_at
    states = ctx.registry.systems.of_many(request_ids)
    recipients = ctx.registry.recipients.of_many(request_ids)
    proofs: dict[str, dict[str, Any]] = {}
    for mode, dry_run in {(r["mode"], bool(r["dry_run"])) for r in reqs.values()}:
        proofs.update(ledger_proofs(ctx.ledger, [rid for rid, r in reqs.items()
                                                 if (r["mode"], bool(r["dry_run"])) == (mode, dry_run)],
                                    mode, dry_run))
    receipts = {}
    details = ctx.registry.details_many(request_ids)
    unmapped = FindingStore(ctx.ledger.engine).open_findings(expected_systems)
    for rid in request_ids:
        receipt = build_receipt(reqs[rid], states.get(rid, {}), expected_systems, ctx.policy.digest,
                                ledger_entries=proofs.get(rid, {}), policy=ctx.policy)
        with_identity_check(receipt, reqs[rid], details.get(rid, {}))  # decision, never the reason
        receipt["recipients"] = recipients_part(recipients.get(rid, {}))
        add_unmapped(receipt, unmapped)  # open discovery findings: what "nothing left" does not cover
        receipts[rid] = receipt
    return receipts


def finalize_erasure(ctx: RequestContext, request_ids: list[str], expected_systems: list[str]) -> list[dict[str, Any]]:
    """Close the request(s): complete only when every system recorded; suppression and receipt. Set-based:
    each step reads or writes the whole batch at once (one statement per 500 requests). Refused (after every
    receipt is saved) when some request stays open."""
    open_ids = _close(ctx, request_ids, expected_systems)
    receipts = _erasure_receipts(ctx, request_ids, expected_systems)
    ctx.registry.save_receipts(receipts)
    if len(request_ids) == 1:
        receipt = receipts[request_ids[0]]
        log.info("receipt:\n%s", render_markdown(receipt))
        if receipt["recipients"]:  # Art. 19: who was told (names, statuses; "recorded, not sent" said so)
            log.info("recipients told:\n%s", "\n".join(
                f"- {name}: {r['status']} ({r['note'] or r['response'] or r['channel']})"
                for name, r in receipt["recipients"].items()))
    summaries = [{"request_id": rid, "status": receipts[rid]["status"]} for rid in request_ids]
    if open_ids:  # not worth retrying: the failed system's own retries are what helps
        raise Refused(f"{len(open_ids)} request(s) stay open (a system did not verify or a recipient is not "
                      f"confirmed): {', '.join(open_ids[:5])}")
    return summaries


# ---- intake --------------------------------------------------------------------------------------
def claim(ctx: RequestContext, limit: int, dag_id: str, run_id: str) -> list[str]:
    """erasure_intake: take a batch of pending requests from the registry."""
    # types that need the identity check are claimed only when verified at intake; the others stay pending
    # (handed to erasure_request by id, they wait for the check there; ADR 0014)
    ids = ctx.registry.claim_pending(limit, dag_id, run_id, verified_only=identity_decisions.verify_modes(),
                                     verified_source=identity_decisions.VERIFIED_SOURCE)
    log.info("claimed %d pending request(s)", len(ids))
    if not ids:
        return ids
    # one person per request, before anything is read or changed: a conflict stops its request (nobody at
    # an identity check here to decide; handed to erasure_request by id, it asks)
    resolved = person.resolve_requests(ctx.policy, ctx.runtime.store, ctx.registry, ids)
    stopped = [rid for rid in ids if not resolved[rid].may_act()]
    for rid in stopped:
        identity_decisions.stop_conflict(ctx, rid, dag_id, run_id)
    if stopped:
        log.info("%d request(s) stopped on a conflict of identities", len(stopped))
    return [rid for rid in ids if rid not in stopped]


def resolve(ctx: RequestContext, request_ids: list[str]) -> str:
    """One person per request (``requests.person``): resolved and recorded before anything is read or
    changed; returns the redacted summary (kinds, statuses, counts) the identity check shows."""
    resolved = person.resolve_requests(ctx.policy, ctx.runtime.store, ctx.registry, request_ids)
    text = "\n\n".join(f"Request {rid}: {resolved[rid].summary()}" for rid in request_ids)
    log.info("%s", text)
    return text
