"""Delete: exactly the expired objects go, every version with them, at most 1,000 keys per request."""

from __future__ import annotations

import logging
import math

import pytest

from include.retention.masking import keyed_digest
from include.retention.stores.s3 import ObjectsNotDeleted
from tests.s3.conftest import (
    KEY,
    LOCKED,
    NOW,
    PLAIN,
    VERSIONED,
    count_deletes,
    keys,
    put,
    put_many,
    s3_policy,
    snapshot,
    store_log,
    versions,
)


class Records(list):
    """A recorder that keeps what the sweep would write to the ledger."""

    def __call__(self, action, count, pk_digest, details):
        self.append((action, count, pk_digest, details))


EXPORTS = f"""\
exports:
  bucket: {PLAIN}
  prefix: exports/
  key_template: "exports/{{yyyy}}/{{mm}}/{{dd}}/..."
  rules:
    - name: expire
      start: {{basis: key_date}}
      action: delete
      period: P12M
"""


def test_plain_bucket_deletes_exactly_the_expired_keys(s3, make_store):
    store = make_store(s3_policy(EXPORTS))
    for key in ("exports/2025/01/10/jane.doe@example.com.csv", "exports/2025/06/14/b.csv",
                "exports/2025/06/16/c.csv", "exports/readme.txt", "other/2020/01/01/x.csv"):
        put(s3, PLAIN, key)
    rule = store.policy.rule("objects.exports.expire")[2]
    calls: list[int] = []
    count_deletes(store, calls)

    plan = store.plan("exports", rule, NOW)
    assert (plan.total, plan.in_scope, plan.eligible, plan.held) == (4, 3, {"delete": 2}, 0)

    records = Records()
    result = store.apply_stage("exports", rule, rule.stages[0], NOW, 1000, "retention:test", records)

    assert (result.changed, result.batches) == (2, 1)
    assert calls == [2]
    assert keys(s3, PLAIN) == ["exports/2025/06/16/c.csv", "exports/readme.txt", "other/2020/01/01/x.csv"]
    gone = ["exports/2025/01/10/jane.doe@example.com.csv", "exports/2025/06/14/b.csv"]
    assert records == [("delete", 2, keyed_digest(KEY, "\n".join(gone)), {"batch": 1, "versions": 2, "errors": 0})]


CVS = f"""\
cvs:
  bucket: {VERSIONED}
  key_template: "cvs/{{applicant_id}}/..."
  rules:
    - name: recruitment_closed
      start: {{basis: metadata, name: closed-at}}
      action: delete
      period: P6M
"""


def test_versioned_bucket_deletes_every_version_and_delete_marker(s3, make_store):
    store = make_store(s3_policy(CVS))
    old = {"closed-at": "2025-01-01"}
    for body in (b"v1", b"v2", b"v3"):
        put(s3, VERSIONED, "cvs/1/cv.pdf", body, Metadata=old)
    put(s3, VERSIONED, "cvs/2/cv.pdf", Metadata=old)
    s3.delete_object(Bucket=VERSIONED, Key="cvs/2/cv.pdf")  # deleted the ordinary way: versions remain
    put(s3, VERSIONED, "cvs/3/cv.pdf", b"a", Metadata={"closed-at": "2026-06-01"})
    put(s3, VERSIONED, "cvs/3/cv.pdf", b"b", Metadata={"closed-at": "2026-06-01"})
    put(s3, VERSIONED, "cvs/4/cv.pdf", Metadata={})  # no date: kept
    put(s3, VERSIONED, "cvs/readme.txt", Metadata=old)  # outside the template
    untouched = [v for v in versions(s3, VERSIONED) if not v[0].startswith(("cvs/1/", "cvs/2/"))]
    rule = store.policy.rule("objects.cvs.recruitment_closed")[2]
    calls: list[int] = []
    count_deletes(store, calls)

    plan = store.plan("cvs", rule, NOW)
    assert (plan.total, plan.in_scope, plan.eligible) == (5, 4, {"delete": 2})
    result = store.apply_stage("cvs", rule, rule.stages[0], NOW, 1000, "retention:test", Records())

    assert result.changed == 2
    assert calls == [5]  # 3 versions + 1 version + 1 delete marker, one request
    assert versions(s3, VERSIONED) == untouched


@pytest.mark.parametrize("bucket", [PLAIN, VERSIONED])
def test_more_than_1000_objects_go_in_ceil_n_over_1000_requests(s3, make_store, bucket):
    n = 2500
    store = make_store(s3_policy(f"""\
        bulk:
          bucket: {bucket}
          key_template: "bulk/{{yyyy}}/{{mm}}/{{dd}}/..."
          rules:
            - {{name: expire, start: {{basis: key_date}}, action: delete, period: P1M}}
        """))
    put_many(bucket, [f"bulk/2025/01/01/{i:05d}.log" for i in range(n)])
    put(s3, bucket, "bulk/2026/06/14/today.log")
    rule = store.policy.rule("objects.bulk.expire")[2]
    calls: list[int] = []
    count_deletes(store, calls)
    records = Records()

    result = store.apply_stage("bulk", rule, rule.stages[0], NOW, 1000, "retention:test", records)

    assert len(calls) == math.ceil(n / 1000) == 3
    assert calls == [1000, 1000, 500]
    assert (result.changed, result.batches) == (n, 3)
    assert [r[1] for r in records] == [1000, 1000, 500]
    assert keys(s3, bucket) == ["bulk/2026/06/14/today.log"]
    assert len(versions(s3, bucket)) == 1


def test_per_key_errors_are_recorded_and_raised_without_the_key(s3, make_store, caplog):
    store = make_store(s3_policy(f"""\
        exports:
          bucket: {LOCKED}
          key_template: "exports/{{yyyy}}/{{mm}}/{{dd}}/..."
          rules:
            - {{name: expire, start: {{basis: key_date}}, action: delete, period: P12M}}
        """))
    secret = "exports/2025/01/01/john.smith@example.com.csv"
    held_version = put(s3, LOCKED, secret, b"old", ObjectLockLegalHoldStatus="ON")
    put(s3, LOCKED, secret, b"new")  # current version free, an older one under someone's legal hold
    put(s3, LOCKED, "exports/2025/01/02/free.csv")
    rule = store.policy.rule("objects.exports.expire")[2]
    records = Records()

    with caplog.at_level(logging.DEBUG, logger="include.retention"):
        with pytest.raises(ObjectsNotDeleted) as err:
            store.apply_stage("exports", rule, rule.stages[0], NOW, 1000, "retention:test", records)

    message = str(err.value)
    assert "refused to delete 1 of 3 object versions" in message and "AccessDenied x1" in message
    assert "john.smith" not in message and keyed_digest(KEY, secret)[:16] in message
    # What did go is recorded before the error is raised: the free object (its key is not in an error).
    assert records == [("delete", 1, keyed_digest(KEY, "exports/2025/01/02/free.csv"),
                        {"batch": 1, "versions": 2, "errors": 1})]
    assert [(k, v) for k, v, _ in versions(s3, LOCKED)] == [(secret, held_version)]
    assert "john.smith" not in store_log(caplog)


def test_logs_and_records_carry_no_keys(s3, make_store, caplog):
    store = make_store(s3_policy(EXPORTS))
    secret = "exports/2025/01/10/Jane Doe <jane.doe@example.com>.csv"
    put(s3, PLAIN, secret)
    rule = store.policy.rule("objects.exports.expire")[2]
    records = Records()
    with caplog.at_level(logging.DEBUG, logger="include.retention"):
        store.plan("exports", rule, NOW)
        store.apply_stage("exports", rule, rule.stages[0], NOW, 1000, "retention:test", records)
    assert keys(s3, PLAIN) == []
    logged = store_log(caplog)
    assert "delete 1 objects in 1 batches" in logged
    assert "jane" not in logged.lower() and "jane" not in repr(records).lower()


def test_plan_changes_nothing(s3, make_store):
    store = make_store(s3_policy(CVS))
    put(s3, VERSIONED, "cvs/1/cv.pdf", Metadata={"closed-at": "2025-01-01"})
    before = snapshot(s3, VERSIONED)
    store.plan("cvs", store.policy.rule("objects.cvs.recruitment_closed")[2], NOW)
    assert snapshot(s3, VERSIONED) == before
