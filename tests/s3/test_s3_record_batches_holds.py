"""A legal hold placed after a records sweep's plan was sealed, on an older version of an expired partition (review of
include/retention/record_batches.py and stores/s3_record_sweep.py): the batch deletes a partition whole (every
version), so a hold on any of its versions keeps the whole partition, as the rewrite path keeps a held version."""

from __future__ import annotations

import datetime as dt

import pytest

from include.retention import record_batches
from include.retention.ledger import RunRef
from tests.s3.conftest import NOW, VERSIONED, put, s3_policy, versions
from tests.s3.test_s3_record_batches import RULE
from tests.s3.test_s3_records_sweep import encoded, event

pytestmark = pytest.mark.integration


def policy_with_hold():
    return s3_policy("""\
        events:
          bucket: versioned-bucket
          key_template: "events/dt={yyyy}-{mm}-{dd}/..."
          format: csv
          identities: {email: "record:email"}
          legal_hold: [{column: legal-hold, equals: "true"}]
          rules:
            - {name: events, start: {basis: record, name: ts}, action: delete, period: P30D, max_fraction: 1.0}
        """)


def test_a_hold_on_an_older_version_after_the_plan_keeps_the_partition(s3, make_store, ledger):
    held_key, free_key = "events/dt=2026-04-01/part-0.csv", "events/dt=2026-04-02/part-0.csv"
    older = put(s3, VERSIONED, held_key, encoded("csv", [event(1, dt.datetime(2026, 4, 1, 1, tzinfo=dt.UTC), "csv")]))
    put(s3, VERSIONED, held_key, encoded("csv", [event(2, dt.datetime(2026, 4, 1, 2, tzinfo=dt.UTC), "csv")]))
    put(s3, VERSIONED, free_key, encoded("csv", [event(3, dt.datetime(2026, 4, 2, 1, tzinfo=dt.UTC), "csv")]))
    policy = policy_with_hold()
    run = RunRef("retention_sweep", "1")
    planned = record_batches.plan_rule(policy, RULE, make_store(policy), ledger, run, objects=10, now=NOW)
    assert planned["would"] == {"deleted": 2} and planned["batches"] == 1
    # after the plan was sealed: a legal hold on the older version of the first partition
    s3.put_object_tagging(Bucket=VERSIONED, Key=held_key, VersionId=older,
                          Tagging={"TagSet": [{"Key": "legal-hold", "Value": "true"}]})
    done = record_batches.run_batch(policy, RULE, 0, planned["plan"], make_store(policy), ledger, run)
    left = versions(s3, VERSIONED)
    assert (held_key, older, False) in left  # the held version stays
    assert not [v for v in left if v[0] == free_key]  # the other partition went whole
    assert done["deleted"] == 1
