"""Task bodies of the ``retention_sweep`` DAG. Each is a thin call into the package."""

from __future__ import annotations

import logging
from typing import Any

from include.retention import record_batches
from include.retention.connections import ConnInfo, open_ledger, policy_path
from include.retention.errors import LedgerBroken, SafetyBrakeTripped
from include.retention.ledger import RunRef, anchor_sinks
from include.retention.policy import load_policy
from include.retention.runtime import Runtime
from include.retention.settings import settings
from include.retention.stores.kinds import holds_rows
from include.retention.sweep import run_rule, summary_table
from include.retention.values import Outcome

log = logging.getLogger(__name__)


def airflow_resolver(conn_id: str) -> ConnInfo:
    """Look a connection up through Airflow (secrets backends, env, metadata DB via the API)."""
    from airflow.sdk import Connection

    conn = Connection.get(conn_id)
    return ConnInfo(conn.conn_type, conn.host, conn.port, conn.login, conn.password, conn.schema,
                    conn.extra_dejson or {})


def list_rules(systems: list[str] | None) -> list[str]:
    """Validate the policy file and return the rule ids to sweep (optionally only some systems).

    A wrong file or parameter fails at once: retrying cannot fix it, and nothing has been touched.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from include.retention.errors import PolicyError

    try:
        policy = load_policy(policy_path())
    except PolicyError as exc:
        raise AirflowFailException(str(exc)) from None
    unknown = sorted(set(systems or []) - set(policy.systems))
    if unknown:
        raise AirflowFailException(f"unknown system(s) {', '.join(unknown)} in param 'systems'; known: "
                                   f"{', '.join(policy.systems)}")
    rule_ids = policy.rule_ids(systems or None)
    log.info("policy %s (digest %s): %d rules to sweep", policy.source, policy.digest[:12], len(rule_ids))
    return rule_ids


def apply_rule(rule_id: str, *, dry_run: bool, dag_id: str, run_id: str, brake_approved: bool = False
               ) -> dict[str, Any]:
    from airflow.sdk.exceptions import AirflowFailException

    policy = load_policy(policy_path())
    runtime = Runtime(policy, airflow_resolver)
    try:
        store = runtime.store(rule_id.split(".")[0])
        coll_ref, _coll, rule = policy.rule(rule_id)
        if not dry_run and store.maps_batches(coll_ref.split(".", 1)[1], rule):
            # records inside objects: a sealed plan, one mapped task per batch (include/retention/record_batches.py)
            planned = record_batches.plan_rule(policy, rule_id, store, runtime.ledger(), RunRef(dag_id, run_id),
                                               objects=settings().sweep_batch_objects, brake_approved=brake_approved)
            return {**planned, "sealed": True}
        return run_rule(policy, rule_id, store, runtime.ledger(), RunRef(dag_id, run_id), dry_run=dry_run,
                        brake_approved=brake_approved)
    except SafetyBrakeTripped as exc:
        # Retrying cannot help: the data did not change. Fail now, visibly.
        raise AirflowFailException(str(exc)) from None
    finally:
        runtime.close()


def planned_batches(results: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The batches of the sealed plans among ``apply_rule``'s results, as mapped task arguments: rule id, batch
    number and the plan's ledger seq (never a key: the keys stay sealed in the ledger)."""
    return [{"rule_id": r["rule_id"], "batch": b, "plan": r["plan"]}
            for r in results or [] if isinstance(r, dict) and r.get("sealed") for b in range(r["batches"])]


def sweep_batch(rule_id: str, batch: int, plan: int, *, dag_id: str, run_id: str) -> dict[str, Any]:
    from airflow.sdk.exceptions import AirflowFailException

    policy = load_policy(policy_path())
    runtime = Runtime(policy, airflow_resolver)
    try:
        return record_batches.run_batch(policy, rule_id, batch, plan, runtime.store(rule_id.split(".")[0]),
                                        runtime.ledger(), RunRef(dag_id, run_id))
    except record_batches.PlanOutdated as exc:
        raise AirflowFailException(str(exc)) from None  # retrying cannot help
    finally:
        runtime.close()


def finish_sealed(results: list[dict[str, Any]] | None, *, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    """The counts of every sealed plan whose batches are all done (its ``sweep / complete`` entry written); a rule
    with a batch not done is left out (``summarize`` fails it)."""
    sealed = [r for r in results or [] if isinstance(r, dict) and r.get("sealed")]
    if not sealed:
        return []
    policy = load_policy(policy_path())
    ledger = open_ledger(airflow_resolver)
    try:
        out = [record_batches.finish_rule(policy, r["rule_id"], r["plan"], ledger, RunRef(dag_id, run_id))
               for r in sealed]
    finally:
        ledger.engine.dispose()
    return [r for r in out if r is not None]


def tripped_rules(dag_id: str, run_id: str) -> list[str]:
    """Rules of this run whose brake tripped and that did not complete since (from the ledger)."""
    ledger = open_ledger(airflow_resolver)
    try:
        state: dict[str, str] = {}
        for row in ledger.rows(run_id=run_id, action="sweep"):
            if row["dag_id"] == dag_id:
                state[row["rule_id"]] = row["outcome"]
    finally:
        ledger.engine.dispose()
    tripped = sorted(rule for rule, outcome in state.items() if outcome == Outcome.BRAKE_TRIPPED)
    if tripped:
        log.warning("safety brake tripped for %s: waiting for approval", ", ".join(tripped))
    return tripped


def summarize(results: list[dict[str, Any]], expected: list[str]) -> str:
    """Log the counts table; fail if a rule did not report (its task failed)."""
    results = [r for r in results if isinstance(r, dict) and not r.get("sealed")]  # a sealed plan: its finish counts
    done = {r["rule_id"] for r in results}
    missing = [r for r in expected if r not in done]
    table = summary_table(results, missing)
    log.info("retention sweep summary:\n%s", table)
    if missing:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(f"{len(missing)} rule(s) did not complete: {', '.join(missing)}")
    return table


def enforce_suppression(*, dry_run: bool, dag_id: str, run_id: str, systems: list[str] | None = None
                        ) -> dict[str, int]:
    """Remove re-subscribed or re-imported suppressed identities (collections whose rules suppress)."""
    from include.retention.requests.scanner import SubjectScanner
    from include.retention.requests.suppression import enforce_system

    policy = load_policy(policy_path())
    runtime = Runtime(policy, airflow_resolver)
    counts: dict[str, int] = {}
    try:
        for name, system in policy.systems.items():
            if (systems and name not in systems) or not any(c.suppress_kinds() for c in
                                                            system.collections.values()):
                continue
            scanner = SubjectScanner(policy, runtime.store(name))
            for coll_ref, n in enforce_system(scanner, runtime.registry(), replay=False, dry_run=dry_run).items():
                counts[coll_ref] = n
                runtime.ledger().append(run=RunRef(dag_id, run_id), action="suppress",
                                        outcome=Outcome.DRY_RUN if dry_run else Outcome.DONE, count=n, system=name,
                                        collection=coll_ref, policy_digest=policy.digest)
        log.info("suppression enforced: %s", counts)
        return counts
    finally:
        runtime.close()


def check_erasures(*, dry_run: bool, dag_id: str, run_id: str, systems: list[str] | None = None) -> dict[str, Any]:
    """The independent check of erasures (``include.retention.erasure_check``): every SQL identity collection read
    in full, its identities compared with the suppression list's digests of erased people. Items found again
    reopen their requests (not in a dry run); returns system -> request id -> collection ref -> items found again,
    and the reopened request ids (no identity)."""
    from include.retention.erasure_check import check_system, record

    policy = load_policy(policy_path())
    runtime = Runtime(policy, airflow_resolver)
    found: dict[str, dict[str, dict[str, int]]] = {}
    reopened: list[str] = []
    try:
        for name, system in policy.systems.items():
            if (systems and name not in systems) or not holds_rows(policy, name) or not any(
                    c.identities for c in system.collections.values()):
                continue
            checked, per_request = check_system(runtime.store(name), runtime.registry())
            reopened += record(runtime.registry(), runtime.ledger(), RunRef(dag_id, run_id), name, checked,
                               per_request, dry_run=dry_run, policy_digest=policy.digest)
            if per_request:
                found[name] = per_request
    finally:
        runtime.close()
    return {"found": found, "reopened": reopened, "dry_run": dry_run}


def erasures_intact(checked: dict[str, Any]) -> None:
    """Fail (the task's failure alerts the DPO and fails the run) when ``check_erasures`` found an erased person
    again; request ids and counts only."""
    from airflow.sdk.exceptions import AirflowFailException

    found = checked["found"]
    if found:
        requests = sorted({rid for per in found.values() for rid in per})
        items = sum(n for per in found.values() for refs in per.values() for n in refs.values())
        raise AirflowFailException(
            f"erased data found again in {', '.join(sorted(found))}: {items} item(s) of {len(requests)} erasure "
            f"request(s) ({', '.join(requests[:20])}); reopened: "
            f"{'none (dry run)' if checked['dry_run'] else len(checked['reopened'])}")
    log.info("no erased person found again")


def anchor_ledger() -> dict[str, Any]:
    """Write the ledger head to the anchor store named by ``RETENTION_LEDGER_ANCHORS`` (a directory, or
    ``s3://bucket/prefix`` through the ``RETENTION_ANCHOR_CONN_ID`` aws connection); skipped when unset.

    The anchor is written only for an intact chain, so a tampered ledger fails this task loudly.
    """

    target = settings().ledger_anchors
    if not target:
        log.warning("RETENTION_LEDGER_ANCHORS is not set: the ledger head is not anchored outside its database")
        return {"anchored": False}
    client = None
    if "s3://" in target:
        from include.retention.stores.s3_objects import make_client

        client, _ = make_client(airflow_resolver(settings().anchor_conn_id))
    ledger = open_ledger(airflow_resolver)
    try:
        sinks = anchor_sinks(target, client)  # several: each a witness, each anchor recorded in the ledger
        result = ledger.verify(record=False, anchors=sinks)  # against every witness: a broken chain is not anchored
        if not result.ok:
            raise LedgerBroken(f"not anchoring a broken ledger: {result}")
        anchored = [ledger.anchor(sink, check=False).seq for sink in sinks]
    finally:
        ledger.engine.dispose()
    log.info("ledger anchored at entry %s", ", ".join(map(str, anchored)))
    return {"anchored": True, "seq": anchored[0]}


SWEPT_ALIAS = "retention_swept"  # the asset alias the run's per-system events go through


def announce_changes(outlet_events: Any, *, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
    """One asset event ``retention://<system>/swept`` per system this run changed, its counts as the extra
    (``include.retention.assets``); none for a system without change or a dry run."""
    from airflow.sdk import Asset, AssetAlias

    from include.retention.assets import changes_per_system, swept_uri

    ledger = open_ledger(airflow_resolver)
    try:
        changes = changes_per_system(ledger.rows(run_id=run_id), dag_id, run_id)
    finally:
        ledger.engine.dispose()
    for system, counts in changes.items():
        outlet_events[AssetAlias(SWEPT_ALIAS)].add(Asset(swept_uri(system)), extra=counts)
    log.info("asset events: %s", {s: {k: v for k, v in c.items() if k not in ("dag_id", "run_id")}
                                  for s, c in changes.items()} or "no system changed")
    return changes
