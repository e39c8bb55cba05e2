"""A sweep of records inside objects as a sealed plan cut into batches of objects, one task per batch (ADR 0021).

``run_rule`` sweeps a rule in one task. A rule counting from a record field (an S3 collection with a ``format``)
reads and rewrites objects one by one: a large prefix is hours of work for one worker. Here the rule is swept in
three steps, each one task, so CeleryExecutor workers share the prefix:

1. ``plan_rule``: settle the intents a stopped run of the rule left open, plan (the objects to delete whole and to
   rewrite), judge the safety brake once on the whole plan (a tripped brake changes nothing and writes nothing but
   its ``brake_tripped`` entry, as ``run_rule``), then seal the plan in the ledger: one ``sweep_batch / planned``
   entry per batch of at most ``RETENTION_SWEEP_BATCH_OBJECTS`` objects, its keys *sealed* (``intents.seal``: the
   ledger never holds a key in clear), and one ``sweep_plan / planned`` entry with the counts, the plan's instant
   and the number of batches. What goes to the caller (XCom) is the rule id, counts and the plan entry's seq.
2. ``run_batch`` (one per batch, any order, concurrently): unseal the batch's keys, settle the rule's open intents
   of stopped runs (a killed try of this very batch included), list and classify the batch's objects again at the
   plan's instant and act (``Store.apply_batch``): every DeleteObjects request and every rewrite has its own intent
   and outcome, owned by this task's lease. A ``sweep_batch / done`` entry closes the batch with its count. A batch
   run again acts only on what is still due.
3. ``finish_rule``: when every batch of the plan is done, the rule's ``sweep / complete`` entry with the summed
   counts (what ``run_rule`` writes); otherwise None: the rule did not complete.

Nothing here imports Airflow.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator
from typing import Any

from include.retention.errors import RetentionError
from include.retention.intents import RunLease, reconcile_open_intents, seal, unseal
from include.retention.ledger import Ledger, RunRef
from include.retention.policy import Policy
from include.retention.progress import SweepProgressLog
from include.retention.stores.base import Store
from include.retention.sweep import MAX_SEALED, LedgerRecorder, _details, plan_counts, stop_at_brake
from include.retention.values import CollectionRef, Outcome

log = logging.getLogger(__name__)

PLAN_ACTION = "sweep_plan"  # the sealed plan of a rule: counts, instant, number of batches
BATCH_ACTION = "sweep_batch"  # one batch of it: planned (its keys, sealed), done (its count)
MAX_BATCHES = 256  # per rule: a larger plan gets larger batches (Airflow maps at most 1,024 per task by default)


class PlanOutdated(RetentionError):
    """A batch of a plan sealed under another data map: retrying cannot help, the next run plans again."""


def _common(policy: Policy, rule_id: str, run: RunRef) -> dict[str, Any]:
    coll_ref, _coll, _rule = policy.rule(rule_id)
    return {"run": run, "rule_id": rule_id, "policy_digest": policy.digest,
            "system": CollectionRef.parse(coll_ref).system, "collection": coll_ref}


def _loads(row: dict[str, Any]) -> dict[str, Any]:
    return json.loads(row["details"]) if row.get("details") else {}


def _sealed_parts(key: bytes, keys: list[str]) -> Iterator[tuple[list[str], str]]:
    """``keys`` sealed, cut in halves until each part fits an entry (MariaDB's TEXT holds 64 KB)."""
    sealed = seal(key, keys)
    if len(sealed) <= MAX_SEALED or len(keys) == 1:
        if len(sealed) > MAX_SEALED:
            raise RetentionError("an object key too long to seal in a ledger entry")
        yield keys, sealed
        return
    half = len(keys) // 2
    yield from _sealed_parts(key, keys[:half])
    yield from _sealed_parts(key, keys[half:])


def batch_objects(due: int, setting: int) -> int:
    """Objects per batch: the setting, or more where the plan would otherwise need more than MAX_BATCHES."""
    return max(setting, -(-due // MAX_BATCHES))


def plan_rule(policy: Policy, rule_id: str, store: Store, ledger: Ledger, run: RunRef, *, objects: int,
              now: dt.datetime | None = None, brake_approved: bool = False) -> dict[str, Any]:
    """Plan a rule, judge its brake, seal its batches (the module's docstring). Returns counts, ``batches`` and
    ``plan`` (the plan entry's seq); raises ``errors.SafetyBrakeTripped`` (nothing changed, nothing sealed)."""
    now = now or dt.datetime.now(dt.UTC)
    coll_ref, _coll, rule = policy.rule(rule_id)
    coll_name = CollectionRef.parse(coll_ref).collection
    common = _common(policy, rule_id, run)
    store.check(coll_name)
    try:
        with RunLease(ledger.engine):
            settled = reconcile_open_intents(ledger, policy, rule_id, store)
            if settled:
                log.info("%s: settled %d intent(s) a stopped run left open", rule_id, len(settled))
            plan = store.plan_batches(coll_name, rule, now)
        counts = plan_counts(plan, common, coll_ref, False)
        stop_at_brake(policy, rule, plan, ledger, common, counts, brake_approved)
        size = batch_objects(plan.affected, objects)
        first, batches = None, 0
        for keys in store.planned_keys(coll_name, rule, now, size):
            for part, sealed in _sealed_parts(ledger.key, keys):
                seq = ledger.append(action=BATCH_ACTION, outcome=Outcome.PLANNED, count=len(part),
                                    pk_digest=store.digest(part), details={"batch": batches, "keys": sealed}, **common)
                first = seq if first is None else first
                batches += 1
    finally:
        store.release_plan()
    plan_seq = ledger.append(action=PLAN_ACTION, outcome=Outcome.PLANNED, count=plan.affected,
                             details={**_details(counts), "batches": batches, "first": first,
                                      "now": now.isoformat(), "brake_approved": brake_approved}, **common)
    log.info("%s: %d object(s) to delete whole or rewrite, sealed in %d batch(es) of at most %d", rule_id,
             plan.affected, batches, size)
    return {**counts, "batches": batches, "plan": plan_seq}


def _plan_entry(ledger: Ledger, rule_id: str, run: RunRef, plan_seq: int) -> dict[str, Any]:
    row = next(ledger.rows(after=plan_seq - 1, run_id=run.run_id, rule_id=rule_id, action=PLAN_ACTION), None)
    if row is None or row["seq"] != plan_seq or row["dag_id"] != run.dag_id:
        raise RetentionError(f"{rule_id}: no sealed plan {plan_seq} of this run in the ledger")
    return row


def _batch_keys(ledger: Ledger, rule_id: str, run: RunRef, plan: dict[str, Any], batch: int) -> list[str]:
    details = _loads(plan)
    if details.get("first") is None:
        raise RetentionError(f"{rule_id}: the sealed plan {plan['seq']} has no batch {batch}")
    for row in ledger.rows(after=int(details["first"]) - 1, run_id=run.run_id, rule_id=rule_id, action=BATCH_ACTION,
                           outcome=Outcome.PLANNED):
        if row["seq"] >= plan["seq"]:
            break
        if _loads(row).get("batch") == batch:
            return list(unseal(ledger.key, _loads(row)["keys"]))
    raise RetentionError(f"{rule_id}: the sealed plan {plan['seq']} has no batch {batch}")


def run_batch(policy: Policy, rule_id: str, batch: int, plan_seq: int, store: Store, ledger: Ledger, run: RunRef
              ) -> dict[str, Any]:
    """Act on one batch of the sealed plan ``plan_seq`` (the module's docstring); returns counts only."""
    coll_ref, _coll, rule = policy.rule(rule_id)
    coll_name = CollectionRef.parse(coll_ref).collection
    common = _common(policy, rule_id, run)
    plan = _plan_entry(ledger, rule_id, run, plan_seq)
    if plan["policy_digest"] != policy.digest:
        raise PlanOutdated(f"{rule_id}: the data map changed since plan {plan_seq} was sealed; nothing of batch "
                           f"{batch} was changed (the next run plans again)")
    now = dt.datetime.fromisoformat(_loads(plan)["now"])
    keys = _batch_keys(ledger, rule_id, run, plan, batch)
    stage = next(s for s in reversed(rule.stages) if s.action == "delete")
    store.check(coll_name)
    with RunLease(ledger.engine) as lease:
        settled = reconcile_open_intents(ledger, policy, rule_id, store)
        if settled:
            log.info("%s: settled %d intent(s) a stopped run left open", rule_id, len(settled))
        # the whole plan's count in every intent: the page and the task logs show the rule's progress over its batches
        record = LedgerRecorder(ledger, common, lease.token, plan={"delete": int(plan["count"] or 0)},
                                progress=SweepProgressLog(ledger, run, rule_id))
        result = store.apply_batch(coll_name, rule, stage, now, policy.batch_size(rule), keys, record)
    ledger.append(action=BATCH_ACTION, outcome=Outcome.DONE, count=result.changed,
                  details={"batch": batch, "plan": plan_seq, "planned": len(keys), "steps": result.batches}, **common)
    log.info("%s: batch %d of plan %d: %d of %d object(s) deleted whole or rewritten", rule_id, batch, plan_seq,
             result.changed, len(keys))
    return {"rule_id": rule_id, "batch": batch, "planned": len(keys), "deleted": result.changed}


def finish_rule(policy: Policy, rule_id: str, plan_seq: int, ledger: Ledger, run: RunRef) -> dict[str, Any] | None:
    """The rule's ``sweep / complete`` entry once every batch of the plan is done (written once); None while a
    batch is not done."""
    common = _common(policy, rule_id, run)
    plan = _plan_entry(ledger, rule_id, run, plan_seq)
    details = _loads(plan)
    done: set[int] = set()
    deleted = 0  # what the batches' deletes and rewrites committed, a failed try's included (settled or reconciled)
    for row in ledger.rows(after=plan_seq, run_id=run.run_id, rule_id=rule_id):
        extra = _loads(row)
        if row["action"] == "sweep" and row["outcome"] == Outcome.COMPLETE and extra.get("plan") == plan_seq:
            return {**extra, "rule_id": rule_id, "system": common["system"], "collection": common["collection"],
                    "dry_run": False}
        if row["action"] == BATCH_ACTION and row["outcome"] == Outcome.DONE and extra.get("plan") == plan_seq:
            done.add(int(extra["batch"]))
        elif row["action"] == "delete" and row["outcome"] in (Outcome.DONE, Outcome.RECONCILED):
            deleted += int(row["count"] or 0)
    missing = sorted(set(range(int(details["batches"]))) - done)
    if missing:
        log.warning("%s: %d of %d batch(es) of plan %d not done", rule_id, len(missing), details["batches"], plan_seq)
        return None
    counts = {**{k: details[k] for k in ("total", "in_scope", "held", "cascaded", "would")},
              "locked": 0, "anonymized": 0, "deleted": deleted,
              "kept": max(int(details["in_scope"]) - int(details["held"]) - deleted, 0)}
    ledger.append(action="sweep", outcome=Outcome.COMPLETE, count=deleted,
                  details={**counts, "plan": plan_seq, "batches": len(done)}, **common)
    return {**counts, "rule_id": rule_id, "system": common["system"], "collection": common["collection"],
            "dry_run": False, "plan": plan_seq, "batches": len(done)}

