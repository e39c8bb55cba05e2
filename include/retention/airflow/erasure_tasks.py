"""Task bodies of ``erasure_request`` and ``erasure_intake``. Only request ids cross XCom."""

from __future__ import annotations

import logging
from typing import Any

from include.retention import person
from include.retention.airflow import identity_check
from include.retention.airflow.sweep_tasks import airflow_resolver
from include.retention.connections import policy_path
from include.retention.erasure import Subject, SubjectOutcome, SubjectScanner, check_request_kinds
from include.retention.errors import RetentionError
from include.retention.findings import FindingStore
from include.retention.identity import IDENTITY_KINDS
from include.retention.ledger import RunRef
from include.retention.policy import Policy, load_policy
from include.retention.receipts import add_unmapped, build_receipt, counted_total, ledger_proofs, render_markdown
from include.retention.registry import ERASURE_MODES, RECIPIENT_SETTLED, Identities, NewRequest, Registry
from include.retention.runtime import Runtime

log = logging.getLogger(__name__)


class Context:
    """Policy, stores, ledger and registry for one task; closed at the end of it."""

    def __init__(self) -> None:
        self.policy: Policy = load_policy(policy_path())
        self.runtime = Runtime(self.policy, airflow_resolver)
        self.ledger = self.runtime.ledger()
        self.registry = Registry(self.ledger.engine, self.runtime.key)
        self.registry.ensure_schema()

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.runtime.close()

    def subjects(self, request_ids: list[str]) -> list[Subject]:
        """The requests' subjects with only the identities resolved to one person (``include.retention.person``),
        read (and decrypted) in one SELECT per 500 requests; refused on a conflict nobody decided."""
        acting = self.acting_identities(request_ids)
        return [Subject(rid, acting[rid].normalised()) for rid in request_ids]

    def acting_identities(self, request_ids: list[str]) -> dict[str, Identities]:
        """Per request, the identities it acts with (proven and linked; resolved here first if no task did)."""
        identities = self.registry.identities_many(request_ids)
        details = self.registry.details_many(request_ids)
        if any(person.DETAILS_KEY not in details.get(rid, {}) for rid in request_ids):
            person.resolve_requests(self.policy, self.runtime.store, self.registry, request_ids)
            details = self.registry.details_many(request_ids)
        return {rid: Identities(person.acting(identities[rid].normalised(), details.get(rid, {}), rid))
                for rid in request_ids}

    def scanner(self, system: str) -> SubjectScanner:
        return SubjectScanner(self.policy, self.runtime.store(system))


def _fail(message: str):
    from airflow.sdk.exceptions import AirflowFailException

    raise AirflowFailException(message)


def register(params: dict[str, Any], dag_id: str, run_id: str) -> str:
    """Move the identities from the run's conf into the registry; return the request id."""
    from airflow.sdk.log import mask_secret

    for kind in IDENTITY_KINDS:
        if isinstance(params.get(kind), str) and params[kind]:
            mask_secret(params[kind])  # from here on, task logs show *** instead
    if not any(params.get(kind) for kind in IDENTITY_KINDS):  # conf {"request_id": ...} or a purged conf
        registered = _registered(params.get("request_id"), dag_id, run_id, params)
        if registered:
            return registered
    identity_check.refuse_self_verified(params)  # only a request queued by the intake path may arrive verified
    mode = params.get("mode") or "erase"
    request_id, dry_run, due_at = register_form_request(params, mode, dag_id, run_id)
    log.info("request %s registered (mode %s, dry run %s), due %s", request_id, mode, dry_run, due_at)
    return request_id


def register_form_request(params: dict[str, Any], mode: str, dag_id: str, run_id: str,
                          details: dict[str, Any] | None = None) -> tuple[str, bool, Any]:
    """Register the request a form or REST trigger put in the run's conf (its identities, encrypted; ``details``
    with it) and start it; refused (the run fails, no retry) if the policy cannot take its identity kinds.
    Returns the request id, whether it is a dry run, and when it is due."""
    req = NewRequest(
        identities=Identities({kind: params.get(kind) or None for kind in IDENTITY_KINDS}),
        mode=mode, dry_run=bool(params.get("dry_run")),
        source="form", external_ref=params.get("request_ref") or None, note=params.get("note") or None,
    )
    with Context() as ctx:
        request_id = ctx.registry.request_id_for(dag_id, run_id)
        try:
            check_request_kinds(ctx.policy, req.identities.given())
            ctx.registry.register(req, request_id=request_id, dag_id=dag_id, run_id=run_id,
                                  policy_digest=ctx.policy.digest)
        except RetentionError as exc:
            _fail(f"request refused: {exc}")  # a malformed request is not retried
        if details is not None:
            ctx.registry.update_details(request_id, **details)
        ctx.registry.start(request_id)
        return request_id, req.dry_run, ctx.registry.get(request_id)["due_at"]


def _registered(request_id: str | None, dag_id: str, run_id: str, params: dict[str, Any]) -> str | None:
    """A request registered for this run before it started (the retention page's intake form), by an earlier
    try of it, or queued by the intake path and handed to this run by id (it then asks for the identity check
    unless it arrived verified): the run's conf then holds no identity (roles/purge work, retention_page.py)."""
    import sqlalchemy as sa

    with Context() as ctx:
        rid = str(request_id or ctx.registry.request_id_for(dag_id, run_id))
        try:
            req = ctx.registry.get(rid)
        except sa.exc.NoResultFound:
            return _fail(f"request refused: unknown request {rid}") if request_id else None
        queued = req["dag_id"] is None and req["source"] in identity_check.INTAKE_SOURCES and req["mode"] in \
            ERASURE_MODES and req["status"] == "pending"
        # stopped on a conflict of identities where nobody was asked (erasure_intake, a dry run): handed over by
        # id, it waits at the identity check here, whose approver may act with the linked identities only
        stopped = bool(request_id) and req["status"] == "conflict" and req["mode"] in ERASURE_MODES
        if (req["dag_id"], req["run_id"]) != (dag_id, run_id) and not queued and not stopped:
            _fail(f"request refused: request {rid} was registered for another run")
        if identity_check.arrived_verified(params, req):
            ctx.registry.update_details(rid, identity_verified=True)
        ctx.registry.start(rid, dag_id, run_id)
        log.info("request %s (registered before the run, mode %s, dry run %s), due %s", rid, req["mode"],
                 req["dry_run"], req["due_at"])
    return rid


def systems() -> list[str]:
    """Systems holding identities (tables, buckets): one mapped task group each."""
    policy = load_policy(policy_path())
    return [name for name, system in policy.systems.items() if any(c.identities for c in system.collections.values())]


def _mode(ctx: Context, request_ids: list[str]) -> tuple[str, bool]:
    """The batch's one mode and dry-run flag (``claim_pending`` never mixes them; refused if they are mixed)."""
    found = {(r["mode"], bool(r["dry_run"])) for r in ctx.registry.get_many(request_ids).values()}
    if len(found) != 1:
        raise RetentionError(f"a batch of {len(request_ids)} request(s) must share one mode and dry-run flag; "
                             f"found {sorted(found) or 'none'}")
    return next(iter(found))


def discover(request_ids: list[str], system: str) -> dict[str, int]:
    """Count what the request(s) will touch in this system (changes nothing)."""
    with Context() as ctx:
        mode, _ = _mode(ctx, request_ids)
        outcome = ctx.scanner(system).act(ctx.subjects(request_ids), mode, dry_run=True)
        totals: dict[str, int] = {}
        for per_coll in outcome.per_request.values():
            for counts in per_coll.values():
                for key, n in counts.items():
                    totals[key] = totals.get(key, 0) + n
        ctx.registry.systems.set(request_ids, system, "discovered")
        log.info("%s: found for %d request(s): %s", system, len(request_ids), totals)
        return totals


def act(request_ids: list[str], system: str) -> dict[str, int]:
    """Erase or restrict (or, for a dry run, only count) the subjects' data in this system."""
    with Context() as ctx:
        mode, dry_run = _mode(ctx, request_ids)
        scanner = ctx.scanner(system)
        if not dry_run:
            _intent(ctx, request_ids, system, mode)  # in the ledger before anything changes
        searched = scanner.searched()

        def save(part, status: str = "acting") -> None:
            # counts are added to what earlier tries recorded: a retry finds gone what a failed try removed
            per = {rid: {"collections": part.per_request.get(rid, {}),
                         "removed_along": part.totals if len(request_ids) == 1 else {}, "searched": searched}
                   for rid in request_ids if rid in part.per_request or status != "acting"}
            if per:
                ctx.registry.systems.add_counts(per, system, status)

        outcome = scanner.act(ctx.subjects(request_ids), mode, dry_run=dry_run, on_collection=save)
        save(SubjectOutcome(), "acted")  # every collection done: the status, nothing more to add
        log.info("%s: %s%s for %d request(s); removed along: %s", system, mode, " (dry run)" if dry_run else "",
                 len(request_ids), outcome.totals)
        return {"requests": len(request_ids), **outcome.totals}


def _batch_digest(ctx: Context, request_ids: list[str]) -> str:
    return ctx.ledger.digest("\n".join(sorted(request_ids)))


def _intent(ctx: Context, request_ids: list[str], system: str, mode: str) -> int:
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


def verify(request_ids: list[str], system: str) -> int:
    """Fresh re-scan: nothing of the subjects may be left but restricted exceptions."""
    with Context() as ctx:
        mode, dry_run = _mode(ctx, request_ids)
        if dry_run:
            return 0
        left = ctx.scanner(system).remaining(ctx.subjects(request_ids), mode)
        failed = [rid for rid in request_ids if left.get(rid)]
        ok = [rid for rid in request_ids if rid not in failed]
        if ok:
            ctx.registry.systems.set(ok, system, "verified")
        if failed:
            ctx.registry.systems.set(failed, system, "failed", error="verification found data left")
            raise RetentionError(f"{system}: verification found data left for {len(failed)} request(s): "
                                 f"{', '.join(failed[:5])}")
        return len(ok)


def record(request_ids: list[str], system: str, dag_id: str, run_id: str) -> int:
    """One ledger entry per request and system, written once even if the task is retried. Set-based: the
    batch's entries are chained in one write transaction, states and digests read in one SELECT per 500."""
    with Context() as ctx:
        mode, dry_run = _mode(ctx, request_ids)
        outcome = "dry_run" if dry_run else "verified"
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
        ctx.registry.systems.set(request_ids, system, "recorded")
        if not dry_run:
            for intent in ctx.ledger.open_intents(system=system, action=mode,
                                                  pk_digest=_batch_digest(ctx, request_ids)):
                ctx.ledger.settle(int(intent["seq"]), count=settled, outcome="verified",
                                  details={"requests": len(request_ids), "recorded": len(items)})
        return len(items)


def finalize(request_ids: list[str], expected_systems: list[str]) -> list[dict[str, Any]]:
    """Close the request(s): complete only when every system recorded; suppression and receipt.
    Set-based: each step reads or writes the whole batch at once (one statement per 500 requests)."""
    from include.retention.airflow.notify_tasks import recipients_in_receipt

    with Context() as ctx:
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
        ctx.registry.finish_many(complete, "complete")
        for error, ids in still_open.items():
            ctx.registry.finish_many(ids, "incomplete", error=error)
        reqs = ctx.registry.get_many(request_ids)  # as finished: status, completed_at
        # each system's ledger entry (seq + keyed hash): `cli verify-receipt` checks the receipt against it
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
            identity_check.add_to_receipt(receipt, reqs[rid], details.get(rid, {}))  # decision, never the reason
            receipt["recipients"] = recipients_in_receipt(recipients.get(rid, {}))
            add_unmapped(receipt, unmapped)  # open discovery findings: what "nothing left" does not cover
            receipts[rid] = receipt
        ctx.registry.save_receipts(receipts)
        if len(request_ids) == 1:
            receipt = receipts[request_ids[0]]
            log.info("receipt:\n%s", render_markdown(receipt))
            if receipt["recipients"]:  # Art. 19: who was told (names, statuses; "recorded, not sent" said so)
                log.info("recipients told:\n%s", "\n".join(
                    f"- {name}: {r['status']} ({r['note'] or r['response'] or r['channel']})"
                    for name, r in receipt["recipients"].items()))
        summaries = [{"request_id": rid, "status": receipts[rid]["status"]} for rid in request_ids]
    open_ids = [rid for ids in still_open.values() for rid in ids]
    if open_ids:  # not worth retrying this task: the failed system's own retries are what helps
        _fail(f"{len(open_ids)} request(s) stay open (a system did not verify or a recipient is not confirmed): "
              f"{', '.join(open_ids[:5])}")
    return summaries


def claim(limit: int, dag_id: str, run_id: str) -> list[str]:
    """erasure_intake: take a batch of pending requests from the registry."""
    with Context() as ctx:
        # types that need the identity check are claimed only when verified at intake; the others stay pending
        # (handed to erasure_request by id, they wait for the check there; ADR 0014)
        ids = ctx.registry.claim_pending(limit, dag_id, run_id, verified_only=identity_check.verify_modes(),
                                         verified_source=identity_check.VERIFIED_SOURCE)
        log.info("claimed %d pending request(s)", len(ids))
        if not ids:
            return ids
        # one person per request, before anything is read or changed: a conflict stops its request (nobody at
        # an identity check here to decide; handed to erasure_request by id, it asks)
        resolved = person.resolve_requests(ctx.policy, ctx.runtime.store, ctx.registry, ids)
        stopped = [rid for rid in ids if not resolved[rid].may_act()]
        for rid in stopped:
            stop_conflict(ctx, rid, dag_id, run_id)
        if stopped:
            log.info("%d request(s) stopped on a conflict of identities", len(stopped))
        return [rid for rid in ids if rid not in stopped]


def resolve(request_ids: list[str]) -> str:
    """One person per request (include/retention/person.py): resolved and recorded before anything is read or
    changed; returns the redacted summary (kinds, statuses, counts) the identity check shows."""
    with Context() as ctx:
        resolved = person.resolve_requests(ctx.policy, ctx.runtime.store, ctx.registry, request_ids)
        text = "\n\n".join(f"Request {rid}: {resolved[rid].summary()}" for rid in request_ids)
        log.info("%s", text)
        return text


def stop_conflict(ctx: Context, request_id: str, dag_id: str, run_id: str) -> dict[str, Any]:
    """Close a request stopped on a conflict of identities, with its receipt (kinds and counts only)."""
    person.stop_on_conflict(ctx.registry, ctx.ledger, ctx.policy, request_id, RunRef(dag_id, run_id))
    req = ctx.registry.get(request_id)
    details = ctx.registry.details(request_id)
    receipt = build_receipt(req, ctx.registry.systems.of(request_id), systems(), ctx.policy.digest)
    identity_check.add_to_receipt(receipt, req, details)
    person.stopped_receipt(receipt, details)
    ctx.registry.save_receipt(request_id, receipt)
    log.info("request %s stopped on a conflict of identities; receipt:\n%s", request_id, render_markdown(receipt))
    return receipt
