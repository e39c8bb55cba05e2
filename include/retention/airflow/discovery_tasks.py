"""Task bodies of the ``data_map_drift`` DAG: lineage, discovery per system, the review items, the decisions.

XComs carry finding ids, names and numbers only; the ledger gets one ``lineage`` entry per run (where lineage
is read), one ``discovery`` entry per system and run and one ``discovery_review`` entry per decision (who
decided, never the reason's text).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from include.retention.airflow.sweep_tasks import airflow_resolver
from include.retention.connections import hmac_key, make_engine, open_ledger, policy_path, sqlalchemy_url
from include.retention.discovery import KINDS, LINEAGE_KINDS
from include.retention.findings import DECISIONS, FindingStore, as_finding, place
from include.retention.ledger import RunRef
from include.retention.policy import load_policy
from include.retention.values import Outcome

log = logging.getLogger(__name__)
OPTIONS = list(DECISIONS)  # map | ignore | not personal


def list_systems(systems: list[str] | None) -> list[str]:
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
    return [name for name in policy.systems if not systems or name in systems]


def read_lineage(*, dag_id: str, run_id: str) -> dict[str, Any]:
    """Read the OpenLineage events written since the last run (``RETENTION_LINEAGE_FILE``), store a finding
    per declared identity column flowing into a place the data map does not declare, remember how far the file
    was read and write one ``lineage`` ledger entry. Not configured, or no file yet: nothing is read."""
    from include.retention.discovery import Report
    from include.retention.lineage import (
        Position,
        endpoints,
        lineage_file,
        lineage_findings,
        merge_detail,
        read_events,
    )

    path = lineage_file()
    if path is None:
        return {"configured": False}
    policy = load_policy(policy_path())
    ledger = open_ledger(airflow_resolver, hmac_key(airflow_resolver))
    store = FindingStore(ledger.engine)
    try:
        file_id, offset, skipping = store.lineage_position(path)
        try:
            batch = read_events(path, Position(offset, file_id, skipping))
        except FileNotFoundError:
            log.warning("lineage: the event file is not there (yet); nothing read")
            return {"configured": True, "events": 0, "file": "missing"}
        eps, unresolved = endpoints(policy, _lenient_resolver)
        if unresolved:
            log.warning("lineage: no connection for system(s) %s: their datasets are not recognised",
                        ", ".join(unresolved))
        found = [dataclasses.replace(f, detail=merge_detail(_stored_detail(store, f.finding_id), f.detail))
                 for f in lineage_findings(policy, eps, batch.events)]
        counts = {"new": 0, "seen": 0, "reopened": 0, "resolved": 0}
        for system in sorted({f.system for f in found}):
            got = store.record(Report(system, [f for f in found if f.system == system], lineage=True))
            counts = {k: counts[k] + got[k] for k in counts}
        store.save_lineage_position(path, batch.position.file_id, batch.position.offset, batch.position.skipping)
        details = {**counts, "events": len(batch.events), "bytes": batch.bytes_read, "unreadable": batch.unreadable,
                   "restarted": batch.restarted, "findings": sorted(f.finding_id for f in found)}
        ledger.append(run=RunRef(dag_id, run_id), action="lineage", outcome="done", count=len(found),
                      policy_digest=policy.digest, details=details)
        for f in found:
            log.info("%s: %s (%s; %s)", f.name, f.kind, f.classifier, f.detail)
        if batch.unreadable:
            log.warning("lineage: %d line(s) were not JSON events or too long; skipped", batch.unreadable)
        return {"configured": True, **details, "findings": len(found)}
    finally:
        ledger.engine.dispose()


def _stored_detail(store: FindingStore, finding_id: str) -> str:
    from include.retention.errors import RetentionError

    try:
        return store.get(finding_id)["detail"]
    except RetentionError:
        return ""


def _lenient_resolver(conn_id: str):
    """Airflow's connection lookup, a missing connection a ``RetentionError`` (the system is then named)."""
    from include.retention.errors import RetentionError

    try:
        return airflow_resolver(conn_id)
    except RetentionError:
        raise
    except Exception as exc:  # noqa: BLE001 - Airflow's not-found error differs between versions
        raise RetentionError(f"connection {conn_id!r}: {type(exc).__name__}") from None


def run_system(system: str, *, dag_id: str, run_id: str) -> dict[str, Any]:
    """Discover one system, store its findings, write its ledger entry; return counts and finding ids."""
    from include.retention.discovery import discover_sql
    from include.retention.discovery_s3 import discover_s3

    policy = load_policy(policy_path())
    spec = policy.systems[system]
    ledger = open_ledger(airflow_resolver, hmac_key(airflow_resolver))
    store = FindingStore(ledger.engine)
    try:
        info = airflow_resolver(spec.connection)
        if spec.kind == "sql":
            engine = make_engine(sqlalchemy_url(info))
            try:
                report = discover_sql(policy, system, engine, previous_types=store.previous_types(system))
            finally:
                engine.dispose()
        else:
            from include.retention.stores.s3_objects import make_client

            client, _ = make_client(info)
            report = discover_s3(policy, system, client)
        counts = store.record(report)
        open_ids = [r["finding_id"] for r in store.open_findings([system])]
        ledger.append(run=RunRef(dag_id, run_id), action="discovery", outcome=Outcome.DONE, system=system,
                      count=len(open_ids), policy_digest=policy.digest,
                      details={**counts, "findings": len(report.findings), "open": open_ids,
                               "not_sampled": len(report.not_sampled)})
        for f in report.findings:
            log.info("%s: %s (%s, hit rate %.2f of %d sampled)", f.name, f.kind, f.classifier or "-", f.hit_rate,
                     f.sample_size)
        if report.not_sampled:
            log.warning("%s: over the time budget, not sampled: %s", system, ", ".join(report.not_sampled))
        return {**report.summary(), **counts, "open": len(open_ids)}
    finally:
        ledger.engine.dispose()


def review_items(systems: list[str] | None = None) -> list[dict[str, Any]]:
    """One HITL review per open finding: its subject and body (names, numbers, the validated snippet)."""
    from include.retention.errors import PolicyError
    from include.retention.mapping import snippet

    policy = load_policy(policy_path())
    ledger = open_ledger(airflow_resolver, hmac_key(airflow_resolver))
    try:
        rows = FindingStore(ledger.engine).open_findings(systems or None)
    finally:
        ledger.engine.dispose()
    items = []
    for row in rows:
        finding = as_finding(row)
        try:
            yaml_text = snippet(policy, finding)
        except PolicyError as exc:
            yaml_text = f"# no snippet loads: {exc}"
        except (KeyError, StopIteration):
            yaml_text = "# the finding's collection is no longer in the data map"
        seen = ("Seen in OpenLineage column lineage (nothing sampled)" if row["kind"] in LINEAGE_KINDS else
                f"Classifier `{row['classifier'] or '-'}`, hit rate {row['hit_rate']:.2f} of {row['sample_size']} "
                f"sampled values")
        body = (f"**{place(row)}**: {KINDS.get(row['kind'], row['kind'])}.\n\n"
                f"{seen}; first seen {row['first_seen']:%Y-%m-%d}. {row['detail']}\n\n"
                + (f"To map it, add to the data map:\n\n```yaml\n{yaml_text}```\n\n" if yaml_text else "")
                + "*map*: the data map will declare it (a later run that still sees it opens it again); "
                  "*ignore*: give a reason; *not personal*: what was found is not personal data.")
        items.append({"finding_id": row["finding_id"], "subject": f"Data map drift: {place(row)} ({row['kind']})",
                      "body": body})
    return items


def record_decisions(items: list[dict[str, Any]], responses: list[dict[str, Any] | None], *, dag_id: str,
                     run_id: str) -> dict[str, str]:
    """Store each answered review's decision on its finding and in the ledger; unanswered ones stay open.
    Fails (after recording the others) when an answer could not be recorded, naming the finding."""
    from include.retention.errors import RetentionError

    ledger = open_ledger(airflow_resolver, hmac_key(airflow_resolver))
    store = FindingStore(ledger.engine)
    out: dict[str, str] = {}
    problems: list[str] = []
    try:
        for item, response in zip(items, responses, strict=True):
            fid = item["finding_id"]
            if not response or not response.get("chosen_options"):
                out[fid] = "open"
                continue
            decision = response["chosen_options"][0]
            user = response.get("responded_by_user") or {}
            decided_by = str(user.get("name") or user.get("id") or "unknown")
            reason = (response.get("params_input") or {}).get("reason") or None
            try:
                row = store.decide(fid, decision, decided_by, reason)
            except RetentionError as exc:
                problems.append(str(exc))
                out[fid] = "open"
                continue
            ledger.append(run=RunRef(dag_id, run_id), action="discovery_review", outcome=row["status"],
                          system=row["system"], collection=place(row)[:200],
                          details={"finding_id": fid, "decided_by": decided_by, "kind": row["kind"],
                                   "reason_given": bool(reason)})
            out[fid] = row["status"]
    finally:
        ledger.engine.dispose()
    log.info("review decisions: %s", out)
    if problems:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException("; ".join(problems))
    return out
