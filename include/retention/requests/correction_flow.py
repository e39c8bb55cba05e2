"""The correction step of ``access_request`` (mode ``rectify``, GDPR Art. 16): check every system not yet done,
apply (``requests/correction.py``: the SQL systems together, all or nothing, then S3), and say per system in the
registry and the ledger what happened (ADR 0008).

The ledger, per system: an intent (``rectify`` / ``intent``, the items planned) before its first change, settled by
``done`` (the count changed) once its changes are committed, or by ``rolled_back`` (count 0, why) when none of them
stays. An intent left open means the system may be changed in part (its commit failed, or S3 stopped part way): the
next attempt reuses it, does not count the new value there as somebody else's on an item the earlier attempt
claimed (the intent keeps the claimed items' keyed digests: it may be the person's, already written; any other
item carrying it refuses) and settles it with what it changed. The registry: ``acting`` from the intent on,
``recorded`` after the commit and the re-scan, ``failed`` with the reason (a system and an error class and code, never
a value).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from include.retention.errors import RetentionError
from include.retention.ledger import RunRef
from include.retention.requests.context import Refused, RequestContext
from include.retention.requests.correction import Correction, CorrectionRefused
from include.retention.stores.base import Subject, SubjectOutcome
from include.retention.values import Outcome, SystemStatus

log = logging.getLogger(__name__)

ACTION = "rectify"
NOT_CHANGES = ("already", "exception:", "changed_meanwhile")  # counts of items left as they were


def rectify(ctx: RequestContext, request_id: str, req: dict[str, Any], dag_id: str, run_id: str) -> dict[str, Any]:
    """Correct the request's person in every system not yet recorded; the changed items per system."""
    dry_run = bool(req["dry_run"])
    subjects = ctx.subjects([request_id])
    correction = checked(ctx, request_id, subjects, ctx.registry.details(request_id)["new_values"], dry_run)
    journal = Recorded(ctx, correction, request_id, dry_run, RunRef(dag_id, run_id))
    correction.run(journal, dry_run=dry_run)
    if journal.left:  # nothing but the exceptions kept may still carry the old value of a corrected kind
        raise RetentionError("; ".join(f"{system}: {n} item(s) still carry the old value after rectify"
                                       for system, n in sorted(journal.left.items())))
    log.info("request %s: rectify%s, changed per system: %s", request_id, " (dry run)" if dry_run else "",
             journal.totals)
    return {"changed": journal.totals}


def checked(ctx: RequestContext, request_id: str, subjects: list[Subject], new_values: dict[str, str],
            dry_run: bool) -> Correction:
    """The request's correction, checked in every system not yet recorded (an earlier attempt's recorded systems
    are done); a refusal (it would merge two people, a value does not fit) is recorded per system and refuses the
    request."""
    states = {} if dry_run else ctx.registry.systems.of(request_id)
    pending = [s for s in ctx.systems() if states.get(s, {}).get("status") != SystemStatus.RECORDED]
    earlier = {} if dry_run else {s: _claimed_before(ctx, request_id, s) for s in pending}
    resumed = {s: claimed for s, claimed in earlier.items() if claimed is not None}
    correction = Correction(ctx.policy, ctx.runtime.store, pending, subjects, new_values, resumed=resumed,
                            key=ctx.ledger.key)
    try:
        correction.check()
    except CorrectionRefused as exc:
        for system in pending:
            ctx.registry.systems.set([request_id], system, SystemStatus.FAILED, error=str(exc))
        raise Refused(f"request {request_id}: {exc}") from None
    return correction


def _open_intent(ctx: RequestContext, request_id: str, system: str) -> int | None:
    """The seq of an earlier attempt's intent in ``system`` that nothing settled (its changes may stay in part)."""
    found = ctx.ledger.open_intents(request_id=request_id, system=system, action=ACTION)
    return int(found[0]["seq"]) if found else None


def _claimed_before(ctx: RequestContext, request_id: str, system: str) -> frozenset[str] | None:
    """The digests of the items the attempt that left ``system``'s intent open claimed there (none known: empty);
    None when no intent is open there (nothing to resume)."""
    found = ctx.ledger.open_intents(request_id=request_id, system=system, action=ACTION)
    if not found:
        return None
    details = json.loads(found[0]["details"]) if found and found[0].get("details") else {}
    return frozenset(details.get("items") or ())


class Recorded:
    """The ``Journal`` of a correction: each system's outcome in the registry and the ledger."""

    def __init__(self, ctx: RequestContext, correction: Correction, request_id: str, dry_run: bool, run: RunRef):
        self.ctx, self.correction, self.request_id, self.dry_run, self.run = ctx, correction, request_id, dry_run, run
        self.intents: dict[str, int] = {}
        self.resumed: set[str] = set()  # systems whose intent an earlier attempt left open
        self.totals: dict[str, int] = {}
        self.left: dict[str, int] = {}

    def _fields(self, system: str) -> dict[str, Any]:
        return {"request_id": self.request_id, "policy_digest": self.ctx.policy.digest, "system": system,
                "subject_digest": self.ctx.registry.subject_digest(self.request_id)}

    def begin(self, system: str, planned: int) -> None:
        if self.dry_run:
            return
        seq = _open_intent(self.ctx, self.request_id, system)
        if seq is not None:
            self.resumed.add(system)
        else:
            seq = self.ctx.ledger.intend(action=ACTION, run=self.run, count=planned, **self._fields(system),
                                         details={"planned": planned,
                                                  "items": self.correction.claimed_digests(system)})
        self.intents[system] = seq
        self.ctx.registry.systems.set([self.request_id], system, SystemStatus.ACTING)

    def done(self, system: str, outcome: SubjectOutcome) -> None:
        per = dict(outcome.per_request.get(self.request_id, {}))
        left = 0 if self.dry_run else self.correction.remaining(system)
        store = self.ctx.runtime.store(system)
        self.ctx.registry.systems.set([self.request_id], system, SystemStatus.FAILED if left else SystemStatus.RECORDED,
                                      counts={"collections": per, "searched": store.searched_kinds()},
                                      error="old value still found" if left else None)
        n = sum(c for counts in per.values() for k, c in counts.items() if not k.startswith(NOT_CHANGES))
        if self.dry_run:
            if not self.ctx.ledger.has_entry(request_id=self.request_id, system=system, action=ACTION,
                                             outcome=Outcome.DRY_RUN):
                self.ctx.ledger.append(run=self.run, action=ACTION, outcome=Outcome.DRY_RUN, count=n,
                                       **self._fields(system), details={"collections": per})
        else:
            # resumed: the count is this attempt's; the earlier attempt may have changed items too
            resumed = {"resumed": True} if system in self.resumed else {}
            self.ctx.ledger.settle(self.intents[system], count=n, outcome=Outcome.DONE,
                                   details={"collections": per, **resumed})
        self.totals[system] = n
        if left:
            self.left[system] = left

    def rolled_back(self, system: str, why: str) -> None:
        if not self.dry_run:
            self.ctx.ledger.settle(self.intents[system], count=0, outcome=Outcome.ROLLED_BACK, details={"error": why})
        self.ctx.registry.systems.set([self.request_id], system, SystemStatus.FAILED, error=f"rolled back: {why}")

    def unknown(self, system: str, why: str) -> None:
        # the intent stays open: the ledger says a change may have happened, the next attempt settles it
        self.ctx.registry.systems.set([self.request_id], system, SystemStatus.FAILED,
                                      error=f"{why}; a retry finishes it")
