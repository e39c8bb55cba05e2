"""A retention sweep of one rule: plan, safety brake, act stage by stage, record.

Stages run strongest first (delete before lock), each acting only on rows in its own
band of the storage period, so a row past the delete period is deleted, not locked
first. Nothing here imports Airflow; the DAG calls ``run_rule`` once per mapped task.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from include.retention.errors import SafetyBrakeTripped
from include.retention.intents import RunLease, reconcile_open_intents, seal
from include.retention.ledger import Ledger, RunRef
from include.retention.policy import Policy
from include.retention.progress import PLAN_KEY, SweepProgressLog
from include.retention.stores.base import PAST_TENSE, RulePlan, Store
from include.retention.values import CollectionRef, Outcome

log = logging.getLogger(__name__)

COUNT_COLUMNS = ("locked", "anonymized", "deleted", "held", "kept")
MAX_SEALED = 48_000  # characters of a batch's sealed re-read in its intent


def run_rule(
    policy: Policy,
    rule_id: str,
    store: Store,
    ledger: Ledger,
    run: RunRef,
    *,
    now: dt.datetime | None = None,
    dry_run: bool = False,
    brake_approved: bool = False,
) -> dict[str, Any]:
    """Enforce one rule; returns its counts (no personal data: numbers and names only)."""
    try:
        return _run_rule(policy, rule_id, store, ledger, run, now=now, dry_run=dry_run, brake_approved=brake_approved)
    finally:  # what the plan kept for the act (S3's spool of due objects) goes however the rule ended
        store.release_plan()


def _run_rule(policy: Policy, rule_id: str, store: Store, ledger: Ledger, run: RunRef, *, now: dt.datetime | None,
              dry_run: bool, brake_approved: bool) -> dict[str, Any]:
    now = now or dt.datetime.now(dt.UTC)
    coll_ref, _coll, rule = policy.rule(rule_id)
    system, coll_name = CollectionRef.parse(coll_ref)
    common = {"run": run, "rule_id": rule_id, "policy_digest": policy.digest, "system": system,
              "collection": coll_ref}

    store.check(coll_name)
    if dry_run:
        return _run(policy, rule_id, store, ledger, common, now, dry_run, brake_approved, None)
    # the run's lease: its intents name it as their owner; a run that finds an intent whose owner's lease is free
    # (the process died) settles it (include/retention/intents.py)
    with RunLease(ledger.engine) as lease:
        settled = reconcile_open_intents(ledger, policy, rule_id, store)
        if settled:
            log.info("%s: settled %d intent(s) a stopped run left open", rule_id, len(settled))
        return _run(policy, rule_id, store, ledger, common, now, dry_run, brake_approved, lease.token)


def plan_counts(plan: Any, common: dict[str, Any], coll_ref: str, dry_run: bool) -> dict[str, Any]:
    """A rule's counts before it acts: the plan's totals, nothing done yet, what it would do."""
    return {
        "rule_id": common["rule_id"], "system": common["system"], "collection": coll_ref, "dry_run": dry_run,
        "total": plan.total, "in_scope": plan.in_scope, "held": plan.held, "kept": plan.kept,
        "locked": 0, "anonymized": 0, "deleted": 0, "cascaded": {},
        "would": {PAST_TENSE[a]: n for a, n in plan.eligible.items()},
    }


def stop_at_brake(policy: Policy, rule: Any, plan: Any, ledger: Ledger, common: dict[str, Any],
                  counts: dict[str, Any], approved: bool) -> None:
    """Raise the safety brake (recorded in the ledger) when the plan exceeds the rule's share, unless approved."""
    limit = policy.max_fraction(rule)
    tripped = brake(common["rule_id"], plan, limit)
    if tripped is not None and not approved:
        ledger.append(action="sweep", outcome=Outcome.BRAKE_TRIPPED, count=plan.affected,
                      details={"total": plan.total, "max_fraction": limit, "would": counts["would"],
                               "cascaded": {k: n for k, (n, _) in (plan.cascaded or {}).items()}}, **common)
        raise tripped


def _run(policy: Policy, rule_id: str, store: Store, ledger: Ledger, common: dict[str, Any], now: dt.datetime,
         dry_run: bool, brake_approved: bool, owner: str | None) -> dict[str, Any]:
    coll_ref, _coll, rule = policy.rule(rule_id)
    coll_name = CollectionRef.parse(coll_ref).collection
    if not dry_run:  # e.g. the orphan marker an 'orphaned' start counts from (a dry run changes nothing)
        store.prepare_rule(coll_name, rule, now, policy.batch_size(rule), LedgerRecorder(ledger, common, owner))
    plan = store.plan(coll_name, rule, now, for_act=not dry_run)
    counts = plan_counts(plan, common, coll_ref, dry_run)
    stop_at_brake(policy, rule, plan, ledger, common, counts, brake_approved)

    if dry_run:
        counts.update(counts["would"])
        ledger.append(action="sweep", outcome=Outcome.DRY_RUN, count=plan.affected, details=_details(counts), **common)
        log.info("dry run of %s: would %s", rule_id, counts["would"])
        return counts

    # the intents carry the plan and the task log says how far the rule is (include/retention/progress.py)
    record = LedgerRecorder(ledger, common, owner, plan=dict(plan.eligible),
                            progress=SweepProgressLog(ledger, common["run"], rule_id))

    for stage in reversed(rule.stages):
        if not plan.eligible.get(stage.action):
            continue
        result = store.apply_stage(coll_name, rule, stage, now, policy.batch_size(rule), f"retention:{rule_id}",
                                   record)
        counts[PAST_TENSE[stage.action]] += result.changed
        for k, v in result.cascaded.items():
            counts["cascaded"][k] = counts["cascaded"].get(k, 0) + v
        log.info("%s: %s %d rows in %d batches", rule_id, PAST_TENSE[stage.action], result.changed, result.batches)
    # from the table, after the act: a concurrent run's changes are not counted as kept (None: from the plan)
    kept = store.count_kept(coll_name, rule, now)
    counts["kept"] = kept if kept is not None else max(
        plan.in_scope - plan.held - counts["locked"] - counts["anonymized"] - counts["deleted"], 0)
    ledger.append(action="sweep", outcome=Outcome.COMPLETE,
                  count=counts["locked"] + counts["anonymized"] + counts["deleted"], details=_details(counts),
                  **common)
    return counts


def _at_or_above(n: int, total: int, limit: float) -> bool:
    # In integers (0.1 * 30 is 3.0000000000000004 in floats); max_fraction 1 means no brake.
    return bool(n) and limit < 1 and n * 10**6 >= round(limit * 10**6) * total


def brake(rule_id: str, plan: RulePlan, limit: float) -> SafetyBrakeTripped | None:
    """The safety brake: the rule's own share of its collection, and the share of each dependent collection
    its deletes would take along (a small share of parents can be most of their children)."""
    if _at_or_above(plan.affected, plan.total, limit):
        return SafetyBrakeTripped(rule_id, plan.affected, plan.total, limit)
    for child_ref, (n, total) in sorted(plan.cascaded.items()):
        if _at_or_above(n, total, limit):
            return SafetyBrakeTripped(rule_id, n, total, limit, cascaded_to=child_ref)
    return None


class LedgerRecorder:
    """Batches of a stage in the ledger: an intent before the store commits, the real count after. Each intent names
    its run's lease (``owner``) and, sealed, how to find the batch's rows again (``reread``), so the rule's next
    run can settle it if this one stops in between (include/retention/intents.py)."""

    rereads = True  # stores give ``intend`` the batch's ``reread`` (stores.base.begin_record)

    def __init__(self, ledger: Ledger, common: dict[str, Any], owner: str | None = None, *,
                 plan: dict[str, int] | None = None, progress: SweepProgressLog | None = None):
        self.ledger, self.common, self.owner = ledger, common, owner
        self.plan, self.progress = plan, progress  # the rule's planned rows per action; its progress lines

    def for_collection(self, system: str, collection: str) -> LedgerRecorder:
        """The recorder of a cascade into another system: same run and rule, that system's own entries."""
        return LedgerRecorder(self.ledger, {**self.common, "system": system, "collection": collection}, self.owner,
                              progress=self.progress)

    def _tick(self, seq: int) -> int:
        if self.progress is not None:
            self.progress.tick()
        return seq

    def _intent_details(self, reread: dict[str, Any] | None) -> dict[str, Any] | None:
        details: dict[str, Any] = {"owner": self.owner} if self.owner else {}
        if self.plan:  # counts only: how far the rule is (include/retention/progress.py)
            details[PLAN_KEY] = self.plan
        # in clear: the walk's kind, where a cascade came from and what the batch took along (counts); the rest sealed
        if reread is not None:
            details.update({k: reread[k] for k in ("walk", "cascaded_from", "cascading") if k in reread})
            sealed = seal(self.ledger.key, reread)
            # a batch too large to seal in an entry (MariaDB's TEXT holds 64 KB) is settled by its recorded count
            details["reread"] = sealed if len(sealed) <= MAX_SEALED else None
        return details or None

    def intend(self, action: str, planned: int, pk_digest: str, reread: dict[str, Any] | None = None) -> int:
        return self._tick(self.ledger.intend(action=action, count=planned, pk_digest=pk_digest,
                                             details=self._intent_details(reread), **self.common))

    def intend_after(self, settled: tuple[int, int, dict[str, Any]], action: str, planned: int, pk_digest: str,
                     reread: dict[str, Any] | None = None) -> int:
        """Settle a committed batch's intent (``settled``: intent, real count, details) and write the next
        batch's intent, in one ledger transaction (``stores.base.DeferredOutcomes``)."""
        intent, count, details = settled
        return self._tick(self.ledger.settle(intent, count=count, details=details,
                                             then_intend={"action": action, "count": planned, "pk_digest": pk_digest,
                                                          "details": self._intent_details(reread), **self.common}))

    def __call__(self, action: str, count: int, pk_digest: str, details: dict[str, Any],
                 intent: int | None = None) -> None:
        if intent is None:
            self.ledger.append(action=action, outcome=Outcome.DONE, count=count, pk_digest=pk_digest, details=details,
                               **self.common)
        else:
            self._tick(self.ledger.settle(intent, count=count, details=details))


def _details(counts: dict[str, Any]) -> dict[str, Any]:
    return {k: counts[k] for k in ("total", "in_scope", *COUNT_COLUMNS, "cascaded", "would")}


def summary_table(results: list[dict[str, Any]], missing: list[str] | None = None) -> str:
    """A plain-text table of counts per rule, for task logs and the demo."""
    header = ("rule", "mode", "locked", "anonymized", "deleted", "held", "kept", "cascaded")
    rows = [header]
    for r in sorted(results, key=lambda r: r["rule_id"]):
        cascaded = sum(v for k, v in r.get("cascaded", {}).items() if not k.endswith(":nullified"))
        rows.append((r["rule_id"], "dry-run" if r["dry_run"] else "applied", *(str(r[c]) for c in COUNT_COLUMNS),
                     str(cascaded)))
    for rule_id in missing or []:
        rows.append((rule_id, "FAILED", "-", "-", "-", "-", "-", "-"))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w)
                       for i, (v, w) in enumerate(zip(row, widths, strict=True))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
