"""A sweep of records inside objects as a sealed plan cut into batches (include/retention/record_batches.py), the way
retention_sweep's mapped tasks run it: the plan seals its batches' keys in the ledger, each batch acts with its own
intents and outcomes, the rule completes when every batch is done; a failed batch leaves the others done and the
next run settles its intent and reaches the exact end state."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from include.retention import record_batches
from include.retention.errors import SafetyBrakeTripped
from include.retention.ledger import RunRef
from include.retention.progress import rule_entries, rule_progress
from include.retention.stores.s3_record_store import S3RecordSubjects
from include.retention.sweep import run_rule
from tests.s3.conftest import NOW, PLAIN, VERSIONED, put, s3_policy, snapshot, versions
from tests.s3.records_util import body
from tests.s3.test_s3_records_sweep import decoded, encoded, event

pytestmark = pytest.mark.integration

RULE = "objects.events.events"
EXT = {"jsonl": "jsonl.gz", "parquet": "parquet", "csv": "csv"}
MIXED_HOURS = [6, 18, 11, 12, 13, 0]  # at 2026-05-16: 06, 11 and 00 are before the edge (12:00), the rest stay
KEPT = [1, 3, 4]


def policy_for(bucket: str, fmt: str, fraction: float = 1.0):
    return s3_policy(f"""\
        events:
          bucket: {bucket}
          key_template: "events/dt={{yyyy}}-{{mm}}-{{dd}}/..."
          format: {fmt}
          identities: {{email: "record:email"}}
          rules:
            - {{name: events, start: {{basis: record, name: ts}}, action: delete, period: P30D,
                max_fraction: {fraction}}}
        """)


def arrange(s3, bucket: str, fmt: str) -> dict:
    """7 expired partitions, 3 partly expired objects (older versions with expired records where versioned), and
    2 objects newer than the period (not even readable: a read would fail the sweep)."""
    old = {f"events/dt=2026-04-0{d}/part-0.{EXT[fmt]}": [event(10 * d + i, dt.datetime(2026, 4, d, i, tzinfo=dt.UTC),
                                                             fmt) for i in range(3)] for d in range(1, 8)}
    at = dt.datetime(2026, 5, 16, tzinfo=dt.UTC)
    mixed = {f"events/dt=2026-05-16/part-{p}.{EXT[fmt]}": [event(100 * p + i, at + dt.timedelta(hours=h), fmt)
                                                           for i, h in enumerate(MIXED_HOURS)] for p in range(3)}
    new = [f"events/dt=2026-06-0{d}/part-0.{EXT[fmt]}" for d in (1, 2)]
    for key, recs in old.items():
        put(s3, bucket, key, encoded(fmt, recs))
    for key, recs in mixed.items():
        if bucket == VERSIONED:
            put(s3, bucket, key, encoded(fmt, recs[:1]))  # an older version holding an expired record
        put(s3, bucket, key, encoded(fmt, recs))
    for key in new:
        put(s3, bucket, key, b"unreadable")
    return {"old": old, "mixed": mixed, "new": new, "untouched": [r for r in snapshot(s3, bucket) if r[0] in new]}


def assert_end_state(s3, bucket: str, fmt: str, data: dict) -> None:
    listed = versions(s3, bucket)
    assert not [v for v in listed if v[0] in data["old"]]  # every version of every expired partition
    for key, recs in data["mixed"].items():
        assert len([v for v in listed if v[0] == key and not v[2]]) == 1  # the rewrite only
        assert decoded(fmt, body(s3, bucket, key)) == [recs[i] for i in KEPT]  # exactly the later records
    assert [r for r in snapshot(s3, bucket) if r[0] in data["new"]] == data["untouched"]


def sweep(policy, make_store, ledger, run: RunRef) -> tuple[dict, list[dict], dict | None]:
    planned = record_batches.plan_rule(policy, RULE, make_store(policy), ledger, run, objects=3, now=NOW)
    done = []
    for batch in range(planned["batches"]):
        done.append(record_batches.run_batch(policy, RULE, batch, planned["plan"], make_store(policy), ledger, run))
    return planned, done, record_batches.finish_rule(policy, RULE, planned["plan"], ledger, run)


@pytest.mark.parametrize(("bucket", "fmt"), [(PLAIN, "jsonl"), (PLAIN, "csv"), (VERSIONED, "parquet")])
def test_a_sealed_plan_swept_batch_by_batch(s3, make_store, ledger, bucket, fmt):
    data = arrange(s3, bucket, fmt)
    policy = policy_for(bucket, fmt)
    run = RunRef("retention_sweep", "1")

    planned, done, finished = sweep(policy, make_store, ledger, run)

    assert (planned["total"], planned["would"], planned["batches"]) == (12, {"deleted": 10}, 4)
    assert [d["planned"] for d in done] == [3, 3, 3, 1] and sum(d["deleted"] for d in done) == 10
    assert finished is not None and (finished["deleted"], finished["kept"], finished["batches"]) == (10, 2, 4)
    assert_end_state(s3, bucket, fmt, data)

    rows = list(ledger.rows(run_id="1"))
    sealed = [r for r in rows if r["action"] == "sweep_batch" and r["outcome"] == "planned"]
    assert [r["count"] for r in sealed] == [3, 3, 3, 1]
    assert [(r["count"], json.loads(r["details"])["batch"]) for r in rows
            if r["action"] == "sweep_batch" and r["outcome"] == "done"] == [(3, 0), (3, 1), (3, 2), (1, 3)]
    # every batch's deletes and rewrites: an intent before, settled after (7 partitions, 3 rewrites)
    assert sum(r["count"] for r in rows if r["action"] == "delete" and r["outcome"] == "done") == 10
    assert len([r for r in rows if r["action"] == "delete" and r["outcome"] == "intent"]) == len(
        [r for r in rows if r["action"] == "delete" and r["outcome"] == "done"])
    assert [d["records"] for r in rows if r["outcome"] == "done" and (d := json.loads(r["details"] or "{}")).get(
        "rewritten")] == [3, 3, 3]
    assert rows[-1]["action"] == "sweep" and rows[-1]["outcome"] == "complete" and rows[-1]["count"] == 10
    verified = ledger.verify()
    assert verified.ok and verified.unreconciled_count == 0
    text = json.dumps([dict(r) for r in rows], default=str)
    assert "events/" not in text and "@example.org" not in text  # keys only sealed, never in clear

    # a second sweep finds nothing to do
    again = run_rule(policy, RULE, make_store(policy), ledger, RunRef("retention_sweep", "2"), now=NOW)
    assert again["would"] == {"deleted": 0}


def fail_victim(monkeypatch, victim: str) -> None:
    def killed(self, bucket, key):
        if key == victim:
            raise RuntimeError("worker lost between the checked rewrite and the version deletes")

    monkeypatch.setattr(S3RecordSubjects, "before_old_versions_go", killed)


VICTIM = "events/dt=2026-05-16/part-1.parquet"  # in batch 2, after a partition and a rewrite of that batch


def test_a_failed_batch_leaves_the_others_done_and_its_retry_settles_its_intent(s3, make_store, ledger, monkeypatch):
    data = arrange(s3, VERSIONED, "parquet")
    policy = policy_for(VERSIONED, "parquet")
    run = RunRef("retention_sweep", "1")
    planned = record_batches.plan_rule(policy, RULE, make_store(policy), ledger, run, objects=3, now=NOW)

    def batch(n: int) -> int:
        return record_batches.run_batch(policy, RULE, n, planned["plan"], make_store(policy), ledger, run)["deleted"]

    with monkeypatch.context() as m:
        fail_victim(m, VICTIM)
        assert [batch(0), batch(1), batch(3)] == [3, 3, 1]
        with pytest.raises(RuntimeError):
            batch(2)
    assert record_batches.finish_rule(policy, RULE, planned["plan"], ledger, run) is None  # not complete
    assert ledger.verify().unreconciled_count == 1  # the victim's rewrite intent
    # the rule's progress over its batches: 8 of the plan's 10 objects done, the victim's rewrite in flight
    progress = rule_progress(rule_entries(ledger, run, RULE))
    assert (progress.planned, progress.done, progress.in_flight) == (10, 8, 1)
    listed = versions(s3, VERSIONED)
    assert [v for v in listed if v[0] == "events/dt=2026-04-07/part-0.parquet"]  # batch 2's partition: not yet
    assert not [v for v in listed if v[0] == "events/dt=2026-04-06/part-0.parquet"]  # batch 1's: gone

    assert batch(2) == 2  # Airflow's retry: settles the try's intent, then the partition and the victim
    reconciled = [r for r in ledger.rows(run_id="1") if r["outcome"] == "reconciled"]
    assert len(reconciled) == 1 and reconciled[0]["count"] == 0  # its old versions still held expired records
    finished = record_batches.finish_rule(policy, RULE, planned["plan"], ledger, run)
    assert finished is not None and finished["deleted"] == 10  # the failed try's committed rewrite counted once
    assert record_batches.finish_rule(policy, RULE, planned["plan"], ledger, run)["deleted"] == 10  # written once
    assert len([r for r in ledger.rows(run_id="1", action="sweep")]) == 1
    assert_end_state(s3, VERSIONED, "parquet", data)
    final = ledger.verify()
    assert final.ok and final.unreconciled_count == 0


def test_a_failed_batch_is_finished_by_the_next_run(s3, make_store, ledger, monkeypatch):
    data = arrange(s3, VERSIONED, "parquet")
    policy = policy_for(VERSIONED, "parquet")
    run = RunRef("retention_sweep", "1")
    planned = record_batches.plan_rule(policy, RULE, make_store(policy), ledger, run, objects=3, now=NOW)
    outcomes = {}
    with monkeypatch.context() as m:
        fail_victim(m, VICTIM)
        for n in range(planned["batches"]):
            try:
                outcomes[n] = record_batches.run_batch(policy, RULE, n, planned["plan"], make_store(policy), ledger,
                                                       run)["deleted"]
            except RuntimeError:
                outcomes[n] = "failed"
    assert outcomes == {0: 3, 1: 3, 2: "failed", 3: 1}
    # batch 3 started after batch 2 stopped (its lease free): it settled batch 2's intent, as any later run would
    assert [r["count"] for r in ledger.rows(run_id="1") if r["outcome"] == "reconciled"] == [0]
    assert record_batches.finish_rule(policy, RULE, planned["plan"], ledger, run) is None

    planned2, _done2, finished2 = sweep(policy, make_store, ledger, RunRef("retention_sweep", "2"))
    assert planned2["would"] == {"deleted": 2} and finished2["deleted"] == 2  # the partition and the victim
    assert_end_state(s3, VERSIONED, "parquet", data)
    final = ledger.verify()
    assert final.ok and final.unreconciled_count == 0


def test_the_brake_is_judged_on_the_whole_plan_and_seals_nothing(s3, make_store, ledger):
    arrange(s3, PLAIN, "jsonl")
    before = snapshot(s3, PLAIN)
    policy = policy_for(PLAIN, "jsonl", fraction=0.5)  # 10 of 12 objects
    with pytest.raises(SafetyBrakeTripped):
        record_batches.plan_rule(policy, RULE, make_store(policy), ledger, RunRef("retention_sweep", "1"),
                                 objects=3, now=NOW)
    assert snapshot(s3, PLAIN) == before
    assert [(r["action"], r["outcome"]) for r in ledger.rows()] == [("sweep", "brake_tripped")]
    approved = record_batches.plan_rule(policy, RULE, make_store(policy), ledger, RunRef("retention_sweep", "1"),
                                        objects=3, now=NOW, brake_approved=True)
    assert approved["batches"] == 4 and snapshot(s3, PLAIN) == before  # sealed, nothing changed yet


def test_batches_grow_rather_than_exceed_the_mapping_limit():
    assert record_batches.batch_objects(10, 3) == 3
    assert record_batches.batch_objects(record_batches.MAX_BATCHES * 500 + 1, 200) == 501


def test_a_batch_of_a_plan_sealed_under_another_data_map_changes_nothing(s3, make_store, ledger):
    arrange(s3, PLAIN, "jsonl")
    before = snapshot(s3, PLAIN)
    run = RunRef("retention_sweep", "1")
    planned = record_batches.plan_rule(policy_for(PLAIN, "jsonl"), RULE, make_store(policy_for(PLAIN, "jsonl")),
                                       ledger, run, objects=3, now=NOW)
    changed = policy_for(PLAIN, "jsonl", fraction=0.99)
    with pytest.raises(record_batches.PlanOutdated):
        record_batches.run_batch(changed, RULE, 0, planned["plan"], make_store(changed), ledger, run)
    assert snapshot(s3, PLAIN) == before
