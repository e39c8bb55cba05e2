"""Retention of records inside S3 objects by a record field: expired partitions go whole (every version), a partly
expired object is rewritten without its expired records, partitions newer than the period are not even read."""

from __future__ import annotations

import datetime as dt
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from include.retention.ledger import RunRef
from include.retention.sweep import run_rule
from tests.s3.conftest import LOCKED, NOW, PLAIN, VERSIONED, put, s3_policy, snapshot, versions
from tests.s3.records_util import body, decode, encode

pytestmark = pytest.mark.integration

EDGE = NOW - dt.timedelta(days=30)  # P30D before 2026-06-15 12:00: 2026-05-16 12:00
KEYS = {"jsonl": "events/dt={day}/part-0.jsonl.gz", "parquet": "events/dt={day}/part-0.parquet",
        "csv": "events/dt={day}/part-0.csv"}


def policy_for(bucket: str, fmt: str):
    return s3_policy(f"""\
        events:
          bucket: {bucket}
          key_template: "events/dt={{yyyy}}-{{mm}}-{{dd}}/..."
          format: {fmt}
          identities: {{email: "record:email"}}
          rules:
            - {{name: events, start: {{basis: record, name: ts}}, action: delete, period: P30D}}
        """)


def event(i: int, ts: dt.datetime, fmt: str) -> dict:
    if fmt == "csv":  # CSV holds text; a time with a Z suffix is UTC
        return {"email": f"p{i}@example.org", "ts": ts.strftime("%Y-%m-%dT%H:%M:%SZ"), "n": str(i)}
    return {"email": f"p{i}@example.org", "ts": ts if fmt == "parquet" else ts.isoformat(), "n": i}


def encoded(fmt: str, recs: list[dict]) -> bytes:
    if fmt == "jsonl":
        return encode("jsonl", recs, gz=True)
    if fmt == "csv":
        return ("email,ts,n\n" + "".join(f"{r['email']},{r['ts']},{r['n']}\n" for r in recs)).encode()
    schema = pa.schema([("email", pa.string()), ("ts", pa.timestamp("us", tz="UTC")), ("n", pa.int64())])
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(recs, schema=schema), buf, row_group_size=2)
    return buf.getvalue()


def decoded(fmt: str, data: bytes) -> list[dict]:
    return decode(fmt, data, gz=fmt == "jsonl")


@pytest.mark.parametrize(("bucket", "fmt"), [(PLAIN, "jsonl"), (PLAIN, "csv"), (PLAIN, "parquet"),
                                             (VERSIONED, "jsonl"), (VERSIONED, "parquet")])
def test_a_sweep_drops_expired_partitions_and_rewrites_a_partly_expired_one(s3, make_store, ledger, bucket, fmt):
    old_key, mixed_key, new_key = (KEYS[fmt].format(day=d) for d in ("2026-04-01", "2026-05-16", "2026-06-01"))
    at = dt.datetime(2026, 5, 16, tzinfo=dt.UTC)
    old = [event(i, dt.datetime(2026, 4, 1, i, tzinfo=dt.UTC), fmt) for i in range(3)]
    mixed = [event(10 + i, at + dt.timedelta(hours=h), fmt) for i, h in enumerate([6, 18, 11, 12, 13, 0])]
    if bucket == VERSIONED:
        put(s3, bucket, old_key, encoded(fmt, old[:1]))
        put(s3, bucket, mixed_key, encoded(fmt, mixed[:1]))  # an older version holding an expired record
    put(s3, bucket, old_key, encoded(fmt, old))
    put(s3, bucket, mixed_key, encoded(fmt, mixed))
    # newer than the period: never read (this is no valid object, a read would fail the sweep)
    put(s3, bucket, new_key, b"unreadable")
    untouched = [row for row in snapshot(s3, bucket) if row[0] == new_key]
    policy = policy_for(bucket, fmt)

    dry = run_rule(policy, "objects.events.events", make_store(policy), ledger, RunRef("retention_sweep", "d"),
                   now=NOW, dry_run=True)
    assert (dry["total"], dry["would"]) == (3, {"deleted": 2})

    counts = run_rule(policy, "objects.events.events", make_store(policy), ledger, RunRef("retention_sweep", "1"),
                      now=NOW)
    assert counts["deleted"] == 2
    assert not [v for v in versions(s3, bucket) if v[0] == old_key]  # every version of the expired partition
    left = [v for v in versions(s3, bucket) if v[0] == mixed_key and not v[2]]
    assert len(left) == 1  # the rewrite; the versions holding expired records are gone
    # exactly the records at or after the edge (2026-05-16 12:00) stay, in their order, unchanged
    assert decoded(fmt, body(s3, bucket, mixed_key)) == [mixed[i] for i in (1, 3, 4)]
    assert [row for row in snapshot(s3, bucket) if row[0] == new_key] == untouched
    entries = [(e["action"], e["outcome"], e["count"]) for e in ledger.rows() if e["run_id"] == "1"]
    assert ("delete", "intent", 1) in entries and entries[-1] == ("sweep", "complete", 2)
    done = [json.loads(e["details"] or "{}") for e in ledger.rows() if e["run_id"] == "1" and e["outcome"] == "done"]
    assert [d["records"] for d in done if d.get("rewritten")] == [3]  # the records removed by the rewrite

    again = run_rule(policy, "objects.events.events", make_store(policy), ledger, RunRef("retention_sweep", "2"),
                     now=NOW)
    assert again["deleted"] == 0 and again["would"] == {"deleted": 0}


def test_held_partitions_and_objects_stay(s3, make_store, ledger):
    old_key, mixed_key = (KEYS["jsonl"].format(day=d) for d in ("2026-04-01", "2026-05-16"))
    old = [event(i, dt.datetime(2026, 4, 1, i, tzinfo=dt.UTC), "jsonl") for i in range(3)]
    mixed = [event(10 + i, dt.datetime(2026, 5, 16, h, tzinfo=dt.UTC), "jsonl") for i, h in enumerate([6, 18])]
    put(s3, LOCKED, old_key, encoded("jsonl", old))
    put(s3, LOCKED, mixed_key, encoded("jsonl", mixed))
    s3.put_object_legal_hold(Bucket=LOCKED, Key=old_key, LegalHold={"Status": "ON"})  # somebody else's hold
    s3.put_object_retention(Bucket=LOCKED, Key=mixed_key, Retention={
        "Mode": "GOVERNANCE", "RetainUntilDate": dt.datetime.now(dt.UTC) + dt.timedelta(days=1)})
    before = snapshot(s3, LOCKED)
    policy = policy_for(LOCKED, "jsonl")

    counts = run_rule(policy, "objects.events.events", make_store(policy), ledger, RunRef("retention_sweep", "1"),
                      now=NOW)

    assert (counts["held"], counts["deleted"]) == (2, 0)
    assert snapshot(s3, LOCKED) == before
    s3.put_object_legal_hold(Bucket=LOCKED, Key=old_key, LegalHold={"Status": "OFF"})


def test_a_late_record_in_an_old_parquet_partition_is_not_deleted_with_it(s3, make_store, ledger):
    """The footer's statistics show a record newer than the period in an expired partition: the records decide."""
    key = KEYS["parquet"].format(day="2026-04-01")
    recs = [event(i, dt.datetime(2026, 4, 1, i, tzinfo=dt.UTC), "parquet") for i in range(3)]
    recs.append(event(9, dt.datetime(2026, 6, 1, tzinfo=dt.UTC), "parquet"))  # arrived late, filed under 04-01
    put(s3, PLAIN, key, encoded("parquet", recs))
    policy = policy_for(PLAIN, "parquet")
    counts = run_rule(policy, "objects.events.events", make_store(policy), ledger, RunRef("retention_sweep", "1"),
                      now=NOW)
    assert counts["deleted"] == 1
    assert decoded("parquet", body(s3, PLAIN, key)) == recs[3:]
