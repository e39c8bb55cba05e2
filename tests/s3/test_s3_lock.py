"""Lock: a legal hold where the bucket has Object Lock, the ``retention-lock`` tag everywhere; legal holds win."""

from __future__ import annotations

from dateutil.relativedelta import relativedelta

from include.retention.stores.s3 import LOCK_TAG
from tests.s3.conftest import LOCKED, NOW, PLAIN, put, s3_policy, snapshot, tags, versions


class Records(list):
    def __call__(self, action, count, pk_digest, details):
        self.append((action, count, details))


def contracts(bucket: str) -> str:
    return f"""\
        contracts:
          bucket: {bucket}
          prefix: contracts/
          legal_hold: [{{column: legal-hold, equals: true}}]
          rules:
            - name: contract_end
              start: {{basis: metadata, name: contract-end}}
              stages:
                - {{action: lock, after: P1Y}}
                - {{action: delete, after: P10Y}}
        """


def _head(s3, bucket, key):
    return s3.head_object(Bucket=bucket, Key=key)


def test_object_lock_bucket_gets_legal_hold_and_tag_and_holds_win(s3, make_store):
    store = make_store(s3_policy(contracts(LOCKED)))
    ended = {"contract-end": "2024-01-01"}
    put(s3, LOCKED, "contracts/a.pdf", Metadata=ended)
    put(s3, LOCKED, "contracts/b.pdf", Metadata=ended, Tagging="legal-hold=true")
    put(s3, LOCKED, "contracts/c.pdf", Metadata=ended, ObjectLockLegalHoldStatus="ON")  # held by someone else
    put(s3, LOCKED, "contracts/d.pdf", Metadata={"contract-end": "2026-01-01"})
    rule = store.policy.rule("objects.contracts.contract_end")[2]
    lock = rule.stages[0]
    before = {row[0]: row for row in snapshot(s3, LOCKED)}

    plan = store.plan("contracts", rule, NOW)
    assert (plan.total, plan.eligible, plan.held) == (4, {"lock": 1, "delete": 0}, 2)

    records = Records()
    result = store.apply_stage("contracts", rule, lock, NOW, 1000, "retention:objects.contracts.contract_end", records)

    assert (result.changed, records) == (1, [("lock", 1, {"batch": 1})])
    assert _head(s3, LOCKED, "contracts/a.pdf")["ObjectLockLegalHoldStatus"] == "ON"
    assert tags(s3, LOCKED, "contracts/a.pdf") == {LOCK_TAG: "retention:objects.contracts.contract_end@2026-06-15"}
    after = {row[0]: row for row in snapshot(s3, LOCKED)}
    assert {k: v for k, v in after.items() if k != "contracts/a.pdf"} == {
        k: v for k, v in before.items() if k != "contracts/a.pdf"}
    assert [store.is_locked(LOCKED, f"contracts/{n}.pdf") for n in "abcd"] == [True, False, True, False]

    # A second run locks nothing again.
    again = store.plan("contracts", rule, NOW)
    assert (again.eligible, again.already) == ({"lock": 0, "delete": 0}, 1)
    assert store.apply_stage("contracts", rule, lock, NOW, 1000, "r", Records()).changed == 0
    assert snapshot(s3, LOCKED) == list(after.values())


def test_delete_stage_lifts_its_own_legal_hold_but_never_anyone_elses(s3, make_store):
    store = make_store(s3_policy(contracts(LOCKED)))
    ended = {"contract-end": "2014-01-01"}
    put(s3, LOCKED, "contracts/a.pdf", b"1", Metadata=ended)
    put(s3, LOCKED, "contracts/a.pdf", b"2", Metadata=ended)
    put(s3, LOCKED, "contracts/b.pdf", Metadata=ended, Tagging="legal-hold=true")
    put(s3, LOCKED, "contracts/c.pdf", Metadata=ended, ObjectLockLegalHoldStatus="ON")
    put(s3, LOCKED, "contracts/d.pdf", Metadata={"contract-end": "2024-06-01"})
    rule = store.policy.rule("objects.contracts.contract_end")[2]
    lock, delete = rule.stages
    # Locked years ago, when a.pdf's contract had ended a year before.
    store.apply_stage("contracts", rule, lock, NOW - relativedelta(years=9), 1000, "retention:x", Records())
    assert store.is_locked(LOCKED, "contracts/a.pdf")

    result = store.apply_stage("contracts", rule, delete, NOW, 1000, "retention:x", Records())

    assert result.changed == 1
    assert sorted({k for k, _, _ in versions(s3, LOCKED)}) == ["contracts/b.pdf", "contracts/c.pdf", "contracts/d.pdf"]
    assert _head(s3, LOCKED, "contracts/c.pdf")["ObjectLockLegalHoldStatus"] == "ON"


def test_plain_bucket_lock_is_a_tag_that_keeps_existing_tags(s3, make_store):
    store = make_store(s3_policy(contracts(PLAIN)))
    put(s3, PLAIN, "contracts/a.pdf", Metadata={"contract-end": "2024-01-01"}, Tagging="team=sales")
    put(s3, PLAIN, "contracts/b.pdf", Metadata={"contract-end": "2024-01-01"}, Tagging="legal-hold=true")
    put(s3, PLAIN, "contracts/young.pdf", Metadata={"contract-end": "2026-01-01"})
    rule = store.policy.rule("objects.contracts.contract_end")[2]

    result = store.apply_stage("contracts", rule, rule.stages[0], NOW, 1000, "retention:a b*c", Records())

    assert result.changed == 1
    assert tags(s3, PLAIN, "contracts/a.pdf") == {"team": "sales", LOCK_TAG: "retention:a b_c@2026-06-15"}
    assert tags(s3, PLAIN, "contracts/b.pdf") == {"legal-hold": "true"}
    assert tags(s3, PLAIN, "contracts/young.pdf") == {}
    assert store.is_locked(PLAIN, "contracts/a.pdf") and not store.is_locked(PLAIN, "contracts/young.pdf")
    state = snapshot(s3, PLAIN)
    assert store.apply_stage("contracts", rule, rule.stages[0], NOW, 1000, "retention:later", Records()).changed == 0
    assert snapshot(s3, PLAIN) == state
