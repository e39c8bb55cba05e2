"""End to end on real Airflow components (api-server, scheduler, dag-processor, triggerer; LocalExecutor,
then CeleryExecutor with a Celery worker on the machine's Redis), driven only through REST API v2.

- ``erasure_request`` triggered with a token: the subject is gone from the CRM (PostgreSQL), the
  mailing list (MariaDB) and S3 (every version of their objects), everybody else is untouched, the
  request is complete in the registry, the ledger holds one verified entry per system, and no task
  log (nor any component's output) holds the subject's e-mail address in plain text.
- the stack is docker-compose.yaml's: every Airflow service of the compose file (but the Celery worker
  with the LocalExecutor) runs with the compose command and the compose file's environment, every
  container URL or path replaced by the machine's (tests/e2e/compose_stack.py);
- ``retention_sweep`` started by the scheduler on its own schedule: the run succeeds and the ledger
  has a completed "sweep" entry for every rule of the policy from exactly that run; its asset events
  (``retention://<system>/swept``) start a downstream test DAG (tests/e2e/dags) that sees their counts.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
import sqlalchemy as sa

from include.retention.assets import CHANGE_COUNTS, changes_per_system, swept_uri
from include.retention.demo import schema
from include.retention.ledger import Ledger
from include.retention.policy import load_policy
from include.retention.registry import Registry
from tests.airflow.test_erasure_request_dag import SECRET, SUBJECT, SUBJECT_LC, object_keys, snapshot, subject_rows
from tests.conftest import ROOT
from tests.e2e import compose_stack
from tests.e2e.conftest import CONTROL, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

OBJECT_BUCKETS = ("crm-cvs", "crm-attachments")
POLICY = load_policy(ROOT / "config" / "policy.yaml")


def person_rows(world, email: str, ids: dict) -> dict[str, int]:
    """Rows per table that belong to the person with this e-mail (children by parent id)."""
    counts = {}
    with world.crm.connect() as conn:
        for t in (schema.contacts, schema.inquiries, schema.applicants, schema.support_tickets):
            counts[t.name] = conn.execute(sa.select(sa.func.count()).select_from(t).where(
                sa.func.lower(t.c.email) == email.lower())).scalar()
    with world.mailing.connect() as conn:
        counts["subscribers"] = conn.execute(sa.select(sa.func.count()).select_from(schema.subscribers).where(
            sa.func.lower(schema.subscribers.c.email) == email.lower())).scalar()
        for t in (schema.list_memberships, schema.campaign_events):
            counts[t.name] = conn.execute(sa.select(sa.func.count()).select_from(t).where(
                t.c.subscriber_id == ids["subscriber"])).scalar()
    return counts


def person_keys(ids: dict) -> dict[str, set[str]]:
    return {"crm-attachments": {f"inquiries/{ids['inquiry']}/file.pdf"}, "crm-cvs": {f"cvs/{ids['applicant']}/cv.pdf"}}


def bucket_keys(world) -> dict[str, set[str]]:
    return {b: object_keys(world.s3, b) for b in OBJECT_BUCKETS}


def files_containing(paths, needle: str) -> list[str]:
    needle = needle.lower()
    return [str(p) for p in paths if p.is_file() and needle in p.read_text(errors="ignore").lower()]


def test_the_running_stack_is_the_compose_files(airflow_stack: Stack):
    stack = airflow_stack
    spec = compose_stack.render(compose_stack.COMPOSE, stack.home / ".env",
                                {"RETENTION_HMAC_KEYS": stack.env["RETENTION_HMAC_KEYS"]})
    services = spec["services"]
    expected = set(compose_stack.airflow_services(spec))
    if stack.executor == "local":
        expected -= compose_stack.celery_services(spec)
    assert {p.name for p in stack.processes} == expected
    assert set(stack.procs) == expected - {"airflow-init"}  # the one-shot service ran to its end first
    assert (stack.logs / "airflow-init.log").stat().st_size > 0
    for proc in stack.processes:
        if proc.oneshot:
            continue
        running = stack.procs[proc.name]
        assert running.poll() is None, proc.name
        assert running.args == proc.argv == ["airflow", *services[proc.name]["command"].split()]
        environ = proc.env  # what Popen got (setproctitle blanks /proc/<pid>/environ of a running component)
        for key, value in services[proc.name]["environment"].items():
            if key == "AIRFLOW__CORE__EXECUTOR" and stack.executor == "local":
                assert environ[key] == "LocalExecutor"
            elif compose_stack.container_references(value, spec):  # a container's URL or path: the machine's
                assert environ[key] != value and not compose_stack.container_references(environ[key], spec), key
            else:  # compose's value as it is
                assert environ[key] == value, (proc.name, key)


def test_erasure_request_via_rest_api(airflow_stack: Stack):
    stack, world = airflow_stack, airflow_stack.world
    stack.pause("retention_sweep")  # in case the sweep test ran first: no sweep may change data meanwhile
    legacy = world.as_dict()
    before_others = snapshot(world.crm, world.mailing, world.ids)
    keys_before = bucket_keys(world)
    subject_keys = person_keys(world.ids)
    assert all(subject_keys[b] <= keys_before[b] for b in OBJECT_BUCKETS)
    assert subject_rows(legacy)["contacts"] == 1 and subject_rows(legacy)["subscribers"] == 1

    stack.unpause("erasure_request")
    started = time.monotonic()
    run_id = stack.trigger("erasure_request", {"email": SUBJECT, "mode": "erase"})
    run = stack.wait_run("erasure_request", run_id, timeout=300)
    states = stack.task_states("erasure_request", run_id)
    print(f"\n[{stack.executor}] erasure_request {run_id}: {time.monotonic() - started:.1f}s, {states}")
    assert run["run_type"] == "manual"
    assert states["system.verify"] == ["success"] * 3, states  # crm, mailing, reporting
    assert states["finalize"] == ["success"] and states["watcher"] == ["skipped"], states

    # The subject is gone everywhere: rows in both databases, every version of their objects.
    assert set(subject_rows(legacy).values()) == {0}, subject_rows(legacy)
    keys_after = bucket_keys(world)
    for bucket in OBJECT_BUCKETS:
        assert keys_after[bucket] == keys_before[bucket] - subject_keys[bucket], bucket
    # Everybody else (the demo data and the control person) untouched, row for row.
    assert snapshot(world.crm, world.mailing, world.ids) == before_others
    assert set(person_rows(world, CONTROL, world.control_ids).values()) == {1}

    # Registry and ledger: complete, one verified entry per system, chain intact, no identity stored.
    ledger = Ledger(world.ledger_engine, SECRET)
    registry = Registry(world.ledger_engine, SECRET)
    request_id = registry.request_id_for("erasure_request", run_id)
    assert registry.get(request_id)["status"] == "complete"
    assert registry.suppression.contains("email", SUBJECT)
    entries = [r for r in ledger.rows() if r["request_id"] == request_id]
    assert sorted((r["system"], r["action"], r["outcome"]) for r in entries) == [
        ("crm", "erase", "verified"), ("mailing", "erase", "verified"), ("reporting", "erase", "verified")]
    assert ledger.verify().ok
    assert SUBJECT_LC not in repr(list(ledger.rows())).lower()

    # Task logs mask the identity (*** where it would appear); component output never shows it either.
    task_logs = stack.task_log_files()
    assert any("erasure_request" in str(p) for p in task_logs), "no task logs written under AIRFLOW_HOME/logs"
    assert files_containing(task_logs, SUBJECT_LC) == []
    component_logs = [p for p in stack.logs.glob("*.log")]
    assert files_containing(component_logs, SUBJECT_LC) == []


def wait_asset_purge(stack: Stack, request_run_id: str, timeout: float = 300) -> dict:
    """The erasure_run_purge run that the request run's finalize (asset event) started; waits for its success."""
    deadline = time.monotonic() + timeout
    while True:
        r = stack.api("GET", "/api/v2/dags/erasure_run_purge/dagRuns", params={"limit": 100})
        assert r.status_code == 200, r.text
        for run in r.json()["dag_runs"]:
            if run["run_type"] == "asset_triggered":
                run = stack.wait_run("erasure_run_purge", run["dag_run_id"], timeout=timeout)
                quoted = httpx.URL(f"/{request_run_id}").raw_path.decode()[1:]
                conf = stack.api("GET", f"/api/v2/dags/erasure_request/dagRuns/{quoted}").json()["conf"]
                if conf == {"purged": True}:
                    return run
        stack.check_alive()
        assert time.monotonic() < deadline, f"no asset-triggered erasure_run_purge purged {request_run_id}"
        time.sleep(2)


def test_metadata_purge_removes_identities_from_airflow(airflow_stack: Stack):
    """Right after a request run succeeds, erasure_run_purge (scheduled on the asset its finalize emits)
    clears the run's conf and the audit-log rows that carry the address (docs/adr/0003); the daily
    erasure_metadata_purge (days=0) finds nothing left of it."""
    stack = airflow_stack
    address = "purge.me@example.org"

    def traces() -> str:
        runs = stack.api("GET", "/api/v2/dags/erasure_request/dagRuns", params={"limit": 100})
        events = stack.api("GET", "/api/v2/eventLogs", params={"dag_id": "erasure_request", "limit": 1000})
        assert runs.status_code == 200 and events.status_code == 200, (runs.text, events.text)
        return (runs.text + events.text).lower()

    stack.unpause("erasure_request")
    stack.unpause("erasure_run_purge")
    try:
        run_id = stack.trigger("erasure_request", {"email": address, "mode": "erase", "dry_run": True})
        started = time.monotonic()
        stack.wait_run("erasure_request", run_id)
        wait_asset_purge(stack, run_id)
        print(f"\n[{stack.executor}] request run {run_id} purged {time.monotonic() - started:.1f}s after trigger")
    finally:
        stack.pause("erasure_run_purge", settle=None)  # the browser test reads its run's conf afterwards
    left = traces()
    assert address not in left, "the run's conf or its trigger audit row still names the person"
    quoted = httpx.URL(f"/{run_id}").raw_path.decode()[1:]
    run = stack.api("GET", f"/api/v2/dags/erasure_request/dagRuns/{quoted}").json()
    assert run["state"] == "success" and run["conf"] == {"purged": True}

    stack.unpause("erasure_metadata_purge")
    purge = stack.trigger("erasure_metadata_purge", {"days": 0})
    stack.wait_run("erasure_metadata_purge", purge)
    left = traces()
    assert address not in left and SUBJECT_LC not in left


def consumer_saw(stack: Stack, sweep_run_id: str, uris: set[str], timeout: float = 300) -> dict[str, list[dict]]:
    """What the asset-triggered runs of e2e_swept_consumer (tests/e2e/dags) saw of ``sweep_run_id``'s events: per
    asset URI, the extras of its triggering events from that run; waits until an event of each of ``uris`` is in."""
    deadline = time.monotonic() + timeout
    while True:
        r = stack.api("GET", "/api/v2/dags/e2e_swept_consumer/dagRuns", params={"limit": 100})
        assert r.status_code == 200, r.text
        seen: dict[str, list[dict]] = {}
        for run in r.json()["dag_runs"]:
            assert run["run_type"] == "asset_triggered", run
            run = stack.wait_run("e2e_swept_consumer", run["dag_run_id"], timeout=timeout)
            quoted = httpx.URL(f"/{run['dag_run_id']}").raw_path.decode()[1:]
            x = stack.api("GET", f"/api/v2/dags/e2e_swept_consumer/dagRuns/{quoted}/taskInstances/seen/"
                                 "xcomEntries/return_value")
            assert x.status_code == 200, x.text
            value = x.json()["value"]
            for uri, extras in (json.loads(value) if isinstance(value, str) else value).items():
                seen.setdefault(uri, []).extend(e for e in extras if e.get("run_id") == sweep_run_id)
        if uris <= {uri for uri, extras in seen.items() if extras}:
            return {uri: extras for uri, extras in seen.items() if extras}
        stack.check_alive()
        assert time.monotonic() < deadline, f"e2e_swept_consumer saw no event of {sweep_run_id}: {seen}"
        time.sleep(2)


def test_scheduler_starts_retention_sweep(airflow_stack: Stack):
    """... and the sweep's asset events (``retention://<system>/swept``, counts in the extra) start the downstream
    DAG e2e_swept_consumer (tests/e2e/dags), which sees each event's counts as the ledger has them."""
    stack, world = airflow_stack, airflow_stack.world
    control_before = person_rows(world, CONTROL, world.control_ids)
    started = time.monotonic()
    stack.unpause("e2e_swept_consumer")  # before any event: the scheduler queues runs of unpaused DAGs only
    stack.unpause("retention_sweep")  # schedule "* * * * *": the scheduler starts a run by itself

    deadline = time.monotonic() + 240
    run = None
    while run is None:
        r = stack.api("GET", "/api/v2/dags/retention_sweep/dagRuns",
                      params={"run_type": "scheduled", "order_by": "run_after", "limit": 1})
        assert r.status_code == 200, r.text
        runs = r.json()["dag_runs"]
        if runs:
            run = runs[0]
            break
        stack.check_alive()
        assert time.monotonic() < deadline, "the scheduler did not start retention_sweep on its schedule"
        time.sleep(2)
    try:
        run = stack.wait_run("retention_sweep", run["dag_run_id"], timeout=300)
    finally:
        stack.pause("retention_sweep", settle=None)  # one sweep is enough: none every minute from now on
    print(f"\n[{stack.executor}] retention_sweep {run['dag_run_id']} ({run['run_type']}): "
          f"{time.monotonic() - started:.1f}s after unpause, {stack.task_states('retention_sweep', run['dag_run_id'])}")
    assert run["run_type"] == "scheduled"

    ledger = Ledger(world.ledger_engine, SECRET)
    sweeps = [r for r in ledger.rows(action="sweep") if r["run_id"] == run["dag_run_id"]]
    assert sweeps, "no ledger entry with action 'sweep' from the scheduled run"
    assert {r["rule_id"] for r in sweeps if r["outcome"] == "complete"} == set(POLICY.rule_ids())
    assert all(r["dag_id"] == "retention_sweep" for r in sweeps)
    assert sum(r["count"] for r in sweeps if r["outcome"] == "complete") > 0, "the demo data has expired items"
    assert ledger.verify().ok
    # The sweep leaves fresh data alone.
    assert person_rows(world, CONTROL, world.control_ids) == control_before

    # The downstream DAG ran on the run's asset events and saw their counts: one event per changed system.
    expected = changes_per_system(ledger.rows(run_id=run["dag_run_id"]), "retention_sweep", run["dag_run_id"])
    assert expected, "the scheduled sweep changed no system"
    assert set(expected) <= set(POLICY.systems), expected  # an event per system of the data map, no other
    try:
        seen = consumer_saw(stack, run["dag_run_id"], {swept_uri(system) for system in expected})
    finally:
        stack.pause("e2e_swept_consumer", settle=None)
    assert seen == {swept_uri(system): [counts] for system, counts in expected.items()}, (seen, expected)
    assert all(sum(e[k] for k in CHANGE_COUNTS) > 0 for extras in seen.values() for e in extras)
