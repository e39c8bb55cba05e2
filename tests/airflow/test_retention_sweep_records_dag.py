"""retention_sweep on records inside S3 objects through Airflow's own runtime (dag.test), moto's server and a
PostgreSQL ledger: each records rule is planned and sealed by its apply_rule task, then swept by one mapped
sweep_batch task per batch of objects; a failed batch leaves the others done and the next run finishes exactly."""

from __future__ import annotations

import datetime as dt
import json
import os
import urllib.request
import uuid

import boto3
import pytest

from include.retention.ledger import Ledger
from include.retention.stores.s3_record_store import S3RecordSubjects
from include.retention.stores.sql import make_engine
from tests.airflow.conftest import run_dag, task_states
from tests.airflow.test_retention_sweep_dag import swept_events
from tests.conftest import airflow_uri
from tests.policy_text import policy_text, system
from tests.s3.records_util import body
from tests.s3.test_s3_records_sweep import decoded, encoded, event

pytestmark = [pytest.mark.airflow, pytest.mark.integration]
DAG_ID = "retention_sweep"
VERSIONED, PLAIN = "events-versioned", "exports-plain"
EXT = {"parquet": "parquet", "csv": "csv"}
KEPT = [1, 3, 4]  # of each partly expired object's records: those after the edge

POLICY = policy_text(system("objects", "s3", "objects_s3", f"""\
    events:
      bucket: {VERSIONED}
      key_template: "events/dt={{yyyy}}-{{mm}}-{{dd}}/..."
      format: parquet
      identities: {{email: "record:email"}}
      rules:
        - {{name: events, start: {{basis: record, name: ts}}, action: delete, period: P30D}}
    exports:
      bucket: {PLAIN}
      key_template: "crm/dt={{yyyy}}-{{mm}}-{{dd}}/..."
      format: csv
      identities: {{email: "record:email"}}
      rules:
        - {{name: exports, start: {{basis: record, name: ts}}, action: delete, period: P30D}}
    """), defaults="{max_fraction: 1.0, batch_size: 2}")


def day(d: dt.datetime) -> str:
    return d.strftime("%Y-%m-%d")


def arrange(s3, bucket: str, prefix: str, fmt: str, n_old: int, n_mixed: int) -> dict:
    """Expired partitions, partly expired objects (versioned: an older version holding an expired record) and two
    objects newer than the period (not readable: a read would fail the sweep), dated from the real clock."""
    edge = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=30)
    old = {}
    for d in range(n_old):
        when = edge - dt.timedelta(days=10 + d)
        old[f"{prefix}/dt={day(when)}/part-0.{EXT[fmt]}"] = [event(10 * d + i, when.replace(hour=i), fmt)
                                                             for i in range(3)]
    # records on both sides of the edge, filed under the edge's day
    offsets = [-2 * 24, 24, -3 * 24, 2 * 24, 3 * 24, -1 * 24]  # hours from the edge: 0, 2, 5 expired
    mixed = {f"{prefix}/dt={day(edge)}/part-{p}.{EXT[fmt]}": [
        event(100 * p + i, edge + dt.timedelta(hours=h), fmt) for i, h in enumerate(offsets)] for p in range(n_mixed)}
    new = [f"{prefix}/dt={day(edge + dt.timedelta(days=25 - d))}/part-0.{EXT[fmt]}" for d in (0, 1)]
    for key, recs in old.items():
        s3.put_object(Bucket=bucket, Key=key, Body=encoded(fmt, recs))
    for key, recs in mixed.items():
        if bucket == VERSIONED:
            s3.put_object(Bucket=bucket, Key=key, Body=encoded(fmt, recs[:1]))
        s3.put_object(Bucket=bucket, Key=key, Body=encoded(fmt, recs))
    for key in new:
        s3.put_object(Bucket=bucket, Key=key, Body=b"unreadable")
    return {"bucket": bucket, "fmt": fmt, "old": old, "mixed": mixed, "new": new,
            "untouched": {key: versions_of(s3, bucket, key) for key in new}}


def versions_of(s3, bucket: str, key: str) -> list[tuple[str, bytes]]:
    listed = s3.list_object_versions(Bucket=bucket, Prefix=key).get("Versions", [])
    return [(v["VersionId"], body(s3, bucket, key, v["VersionId"])) for v in listed if v["Key"] == key]


def assert_end_state(s3, data: dict) -> None:
    bucket, fmt = data["bucket"], data["fmt"]
    for key in data["old"]:
        assert versions_of(s3, bucket, key) == []  # every version of an expired partition
    for key, recs in data["mixed"].items():
        held = versions_of(s3, bucket, key)
        assert len(held) == 1  # the rewrite: the versions holding expired records are gone
        assert decoded(fmt, held[0][1]) == [recs[i] for i in KEPT]  # exactly the later records, unchanged
    for key, before in data["untouched"].items():
        assert versions_of(s3, bucket, key) == before  # byte for byte, never read


@pytest.fixture
def records_env(airflow_db, fresh_database, moto_url, tmp_path, monkeypatch):
    urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST")).close()
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    s3.create_bucket(Bucket=VERSIONED)
    s3.put_bucket_versioning(Bucket=VERSIONED, VersioningConfiguration={"Status": "Enabled"})
    s3.create_bucket(Bucket=PLAIN)
    ledger_url = fresh_database("postgresql", f"rt_rec_ledger_{uuid.uuid4().hex[:8]}")
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    monkeypatch.setenv("RETENTION_POLICY_PATH", str(policy))
    monkeypatch.setenv("AIRFLOW_CONN_RETENTION_LEDGER", airflow_uri(ledger_url))
    monkeypatch.setenv("AIRFLOW_CONN_OBJECTS_S3", json.dumps({
        "conn_type": "aws", "login": "testing", "password": "testing",
        "extra": {"endpoint_url": moto_url, "region_name": "us-east-1"}}))
    monkeypatch.setenv("RETENTION_SWEEP_BATCH_OBJECTS", "3")
    events = arrange(s3, VERSIONED, "events", "parquet", n_old=7, n_mixed=3)  # 10 due: 4 batches
    exports = arrange(s3, PLAIN, "crm", "csv", n_old=3, n_mixed=1)  # 4 due: 2 batches
    yield s3, Ledger(make_engine(ledger_url), os.environ["RETENTION_HMAC_KEY"].encode()), events, exports


def xcom_text(run) -> str:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(XComModel).filter(XComModel.dag_id == run.dag_id, XComModel.run_id == run.run_id).all()
        return json.dumps([r.value for r in rows], default=str)


def map_labels(run, task_id: str) -> list[str]:
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.query(TaskInstance).filter(TaskInstance.dag_id == run.dag_id, TaskInstance.run_id == run.run_id,
                                                 TaskInstance.task_id == task_id).all()
        return sorted(str(ti.rendered_map_index) for ti in tis)


def test_records_rules_are_swept_one_mapped_task_per_batch(records_env):
    s3, ledger, events, exports = records_env

    run = run_dag(DAG_ID, {"dry_run": False})

    states = task_states(run)
    assert run.state == "success", states
    assert states["apply_rule"] == ["success"] * 2
    assert states["sweep_batch"] == ["success"] * 6  # 4 batches of events (10 objects), 2 of exports (4)
    assert states["finish_batches"] == ["success"] and states["summarize"] == ["success"]
    assert map_labels(run, "sweep_batch") == [*(f"objects.events.events #{b}" for b in range(4)),
                                             *(f"objects.exports.exports #{b}" for b in range(2))]
    assert_end_state(s3, events)
    assert_end_state(s3, exports)

    rows = [r for r in ledger.rows() if r["run_id"] == run.run_id]
    per_rule = {}
    for rule in ("objects.events.events", "objects.exports.exports"):
        mine = [r for r in rows if r["rule_id"] == rule]
        per_rule[rule] = (
            [r["count"] for r in mine if r["action"] == "sweep_batch" and r["outcome"] == "planned"],
            sorted((json.loads(r["details"])["batch"], r["count"]) for r in mine
                   if r["action"] == "sweep_batch" and r["outcome"] == "done"),
            [r["count"] for r in mine if r["action"] == "sweep" and r["outcome"] == "complete"],
        )
        # every delete and every rewrite of every batch: its intent, then its outcome
        intents = [r["seq"] for r in mine if r["action"] == "delete" and r["outcome"] == "intent"]
        settled = [r["ref_seq"] for r in mine if r["action"] == "delete" and r["outcome"] == "done"]
        assert intents and sorted(settled) == intents
    assert per_rule["objects.events.events"] == ([3, 3, 3, 1], [(0, 3), (1, 3), (2, 3), (3, 1)], [10])
    assert per_rule["objects.exports.exports"] == ([3, 1], [(0, 3), (1, 1)], [4])
    records = [json.loads(r["details"])["records"] for r in rows if r["outcome"] == "done"
               and json.loads(r["details"] or "{}").get("rewritten")]
    assert records == [3] * 4  # each rewrite removed the three expired records
    verified = ledger.verify()
    assert verified.ok and verified.unreconciled_count == 0

    events_extra = {e["uri"]: e["extra"] for e in swept_events(run.run_id)}["retention://objects/swept"]
    assert events_extra["deleted"] == 14
    assert events_extra["rules"] == ["objects.events.events", "objects.exports.exports"]
    # no key in the ledger in clear, none in XCom (rule ids, batch numbers, counts only)
    for text in (json.dumps([dict(r) for r in rows], default=str), xcom_text(run)):
        assert "events/" not in text and "crm/" not in text and "@example.org" not in text

    again = run_dag(DAG_ID, {"dry_run": False})
    assert again.state == "success"
    assert "sweep_batch" not in task_states(again) or set(task_states(again)["sweep_batch"]) <= {"skipped"}
    assert_end_state(s3, events)


def test_a_failed_batch_leaves_the_others_done_and_a_rerun_completes_exactly(records_env, monkeypatch):
    s3, ledger, events, exports = records_env
    victim = next(k for k in events["mixed"] if k.endswith("part-1.parquet"))  # in events' batch 2

    def killed(self, bucket, key):
        if key == victim:
            raise RuntimeError("worker lost between the checked rewrite and the version deletes")

    with monkeypatch.context() as m:
        m.setattr(S3RecordSubjects, "before_old_versions_go", killed)
        failed = run_dag(DAG_ID, {"dry_run": False})

    states = task_states(failed)
    assert failed.state == "failed"
    assert sorted(states["sweep_batch"]) == ["failed"] + ["success"] * 5
    assert states["summarize"] == ["failed"]  # the rule did not complete
    assert_end_state(s3, exports)  # the other rule's batches all done
    rows = [r for r in ledger.rows() if r["run_id"] == failed.run_id]
    assert not [r for r in rows if r["rule_id"] == "objects.events.events" and r["action"] == "sweep"
                and r["outcome"] == "complete"]
    assert sorted(json.loads(r["details"])["batch"] for r in rows if r["rule_id"] == "objects.events.events"
                  and r["action"] == "sweep_batch" and r["outcome"] == "done") == [0, 1, 3]
    gone = [k for k in events["old"] if not versions_of(s3, VERSIONED, k)]
    assert len(gone) == 6  # batches 0 and 1: six partitions; batch 2's partition is still there
    assert versions_of(s3, VERSIONED, victim)  # the victim's older versions too

    rerun = run_dag(DAG_ID, {"dry_run": False})
    assert rerun.state == "success", task_states(rerun)
    assert task_states(rerun)["sweep_batch"] == ["success"]  # batch 2's partition and the victim: one batch
    assert_end_state(s3, events)
    assert_end_state(s3, exports)
    completes = [r["count"] for r in ledger.rows() if r["run_id"] == rerun.run_id and r["action"] == "sweep"
                 and r["outcome"] == "complete"]
    assert sorted(completes) == [0, 2]
    final = ledger.verify()
    assert final.ok and final.unreconciled_count == 0
    # each failed try's intent on the victim (Airflow retried the batch) was settled by re-reading the object: not
    # done, its older versions still held expired records; the rerun's own entries did it
    reconciled = [r for r in ledger.rows() if r["outcome"] == "reconciled"]
    assert reconciled and all(r["count"] == 0 and r["run_id"] == failed.run_id for r in reconciled)


def test_a_tripped_records_rule_is_swept_in_batches_once_approved(records_env, tmp_path, monkeypatch):
    """The brake is judged once on the whole plan: tripped, nothing is sealed or changed; approved, the plan is made
    again with the brake released and swept by the approved rules' own mapped batch tasks."""
    from tests.airflow.conftest import answer_approval

    s3, ledger, events, exports = records_env
    strict = tmp_path / "strict.yaml"
    strict.write_text(POLICY.replace("action: delete, period: P30D}", "action: delete, period: P30D, "
                                     "max_fraction: 0.5}", 1))  # events: 10 of 12 objects
    monkeypatch.setenv("RETENTION_POLICY_PATH", str(strict))
    responder = answer_approval(DAG_ID, "approve_brake", "Approve")
    run = run_dag(DAG_ID, {"dry_run": False})
    assert responder.wait(timeout=60) == 0
    states = task_states(run)
    assert run.state == "success", states
    assert sorted(states["apply_rule"]) == ["failed", "success"]  # events tripped; exports planned
    assert states["sweep_batch"] == ["success"] * 2  # exports' batches: not behind the approval
    assert states["apply_approved"] == ["success"] and states["sweep_approved_batch"] == ["success"] * 4
    assert_end_state(s3, events)
    assert_end_state(s3, exports)
    rows = [r for r in ledger.rows() if r["run_id"] == run.run_id and r["rule_id"] == "objects.events.events"]
    sequence = [(r["action"], r["outcome"]) for r in rows if r["action"] in ("sweep", "sweep_plan")]
    assert sequence == [("sweep", "brake_tripped"), ("sweep_plan", "planned"), ("sweep", "complete")]
    tripped_at = next(r["seq"] for r in rows if r["outcome"] == "brake_tripped")
    assert not [r for r in rows if r["seq"] < tripped_at]  # nothing sealed or changed before the approval
