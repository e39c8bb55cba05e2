"""The delete stage acts on what the plan found (include/retention/stores/s3_spool.py), without listing again.

Each test changes the bucket between the plan (which the safety brake judges) and the act, the way
another writer could while a sweep runs, and checks exactly which objects and versions are gone.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from include.retention.errors import SafetyBrakeTripped
from include.retention.ledger import RunRef
from include.retention.masking import keyed_digest
from include.retention.stores.s3_objects import S3Object
from include.retention.stores.s3_spool import Spool
from include.retention.sweep import run_rule
from tests.s3.conftest import (
    KEY,
    LOCKED,
    NOW,
    PLAIN,
    VERSIONED,
    count_calls,
    keys,
    put,
    put_many,
    s3_policy,
    snapshot,
    versions,
)

RULE = "objects.logs.expire"


def logs(bucket: str, *, basis: str = "key_date", hold: bool = False, max_fraction: float | None = None) -> str:
    return f"""\
logs:
  bucket: {bucket}
  key_template: "logs/{{yyyy}}/{{mm}}/{{dd}}/..."
  {'legal_hold: [{column: legal-hold, equals: "true"}]' if hold else ''}
  rules:
    - name: expire
      start: {{basis: {basis}}}
      action: delete
      period: P30D
      {f'max_fraction: {max_fraction}' if max_fraction is not None else ''}
"""


def between(store: Any, change) -> None:
    """Run ``change()`` right after the store's next plan, before the sweep acts on it."""
    plan = store.plan

    def planned(*args: Any, **kwargs: Any):
        result = plan(*args, **kwargs)
        change()
        return result

    store.plan = planned


OLD_A, OLD_B, FRESH = "logs/2026/01/05/a.log", "logs/2026/02/01/b.log", "logs/2026/06/10/fresh.log"
LATE = "logs/2026/03/01/late.log"  # due by its key date, written after the plan


def test_versioned_bucket_loses_exactly_the_planned_versions_in_one_listing(s3, make_store, ledger):
    policy = s3_policy(logs(VERSIONED))
    store = make_store(policy)
    a1 = put(s3, VERSIONED, OLD_A, b"1")
    a2 = put(s3, VERSIONED, OLD_A, b"2")
    b1 = put(s3, VERSIONED, OLD_B, b"1")
    marker = s3.delete_object(Bucket=VERSIONED, Key=OLD_B)["VersionId"]  # only versions remain: purged too
    put(s3, VERSIONED, FRESH)
    sent = count_calls(store)
    late: dict[str, str | None] = {}

    def change() -> None:
        late["a3"] = put(s3, VERSIONED, OLD_A, b"3")  # a new version of a planned key
        late["late"] = put(s3, VERSIONED, LATE)  # a new key, due as well

    between(store, change)
    counts = run_rule(policy, RULE, store, ledger, RunRef("retention_sweep", "r"), now=NOW)

    assert (counts["total"], counts["deleted"], counts["kept"]) == (3, 2, 1)
    # Exactly the versions the plan saw are gone; what was written after it is not among them.
    assert versions(s3, VERSIONED) == sorted([(FRESH, versions(s3, VERSIONED, FRESH)[0][1], False),
                                              (OLD_A, late["a3"], False), (LATE, late["late"], False)])
    assert {a1, a2, b1, marker}.isdisjoint(v for _, v, _ in versions(s3, VERSIONED))
    assert sent["ListObjectVersions"] == 1  # the plan's listing only: the act read the plan's spool
    assert sent["DeleteObjects"] == 1
    entries = [(e["action"], e["outcome"], e["count"], e["pk_digest"]) for e in ledger.rows()]
    digest = keyed_digest(KEY, "\n".join([OLD_A, OLD_B]))
    assert entries == [("delete", "intent", 2, digest), ("delete", "done", 2, digest),
                       ("sweep", "complete", 2, None)]


def test_plain_bucket_dated_by_key_lists_once_and_leaves_keys_written_after_the_plan(s3, make_store, ledger):
    policy = s3_policy(logs(PLAIN))
    store = make_store(policy)
    for key in (OLD_A, OLD_B, FRESH):
        put(s3, PLAIN, key)
    sent = count_calls(store)
    between(store, lambda: (put(s3, PLAIN, LATE), put(s3, PLAIN, OLD_B, b"again")))

    counts = run_rule(policy, RULE, store, ledger, RunRef("retention_sweep", "r"), now=NOW)

    assert counts["deleted"] == 2
    # OLD_B was overwritten after the plan: its key dates it, so a fresh listing would delete it as well.
    assert keys(s3, PLAIN) == sorted([FRESH, LATE])
    assert (sent["ListObjectsV2"], sent["DeleteObjects"]) == (1, 1)


def test_plain_bucket_dated_by_last_modified_lists_again_for_the_act(s3, make_store, ledger):
    # An overwrite after the plan would bring a new date: the act must see the bucket as it is then.
    now = dt.datetime.now(dt.UTC) + dt.timedelta(days=60)
    policy = s3_policy(logs(PLAIN, basis="last_modified"))
    store = make_store(policy)
    for key in (OLD_A, OLD_B):
        put(s3, PLAIN, key)
    sent = count_calls(store)
    between(store, lambda: put(s3, PLAIN, LATE))

    counts = run_rule(policy, RULE, store, ledger, RunRef("retention_sweep", "r"), now=now)

    assert not store.spools("logs", policy.rule(RULE)[2])
    assert sent["ListObjectsV2"] == 2
    assert counts["deleted"] == 3 and keys(s3, PLAIN) == []  # the act's own listing saw LATE, due by then


@pytest.mark.parametrize("bucket", [PLAIN, VERSIONED])
def test_a_legal_hold_tagged_after_the_plan_keeps_the_object(s3, make_store, ledger, bucket):
    policy = s3_policy(logs(bucket, hold=True))
    store = make_store(policy)
    for key in (OLD_A, OLD_B, FRESH):
        put(s3, bucket, key)
    put(s3, bucket, "logs/2026/01/01/held.log", Tagging="legal-hold=true")
    sent = count_calls(store)

    def change() -> None:
        s3.put_object_tagging(Bucket=bucket, Key=OLD_B, Tagging={"TagSet": [{"Key": "legal-hold", "Value": "true"}]})

    between(store, change)
    counts = run_rule(policy, RULE, store, ledger, RunRef("retention_sweep", "r"), now=NOW)

    assert (counts["held"], counts["deleted"]) == (1, 1)  # the plan's held count; OLD_B was due then
    assert keys(s3, bucket) == sorted([FRESH, OLD_B, "logs/2026/01/01/held.log"])
    assert sent["GetObjectTagging"] == 3 + 2  # the plan's, then the act's for the two planned objects


def test_an_object_lock_legal_hold_set_after_the_plan_keeps_the_version(s3, make_store, ledger):
    policy = s3_policy(logs(LOCKED))
    store = make_store(policy)
    for key in (OLD_A, OLD_B, FRESH):
        put(s3, LOCKED, key)

    def change() -> None:
        s3.put_object_legal_hold(Bucket=LOCKED, Key=OLD_A, LegalHold={"Status": "ON"})

    between(store, change)
    counts = run_rule(policy, RULE, store, ledger, RunRef("retention_sweep", "r"), now=NOW)

    assert counts["deleted"] == 1
    assert sorted({k for k, _, _ in versions(s3, LOCKED)}) == [OLD_A, FRESH]


def test_the_brake_trips_on_the_plan_and_nothing_goes(s3, make_store, ledger):
    policy = s3_policy(logs(VERSIONED, max_fraction=0.5))
    store = make_store(policy)
    for key in (OLD_A, OLD_B, FRESH):
        put(s3, VERSIONED, key)
    before = snapshot(s3, VERSIONED)
    sent = count_calls(store)

    with pytest.raises(SafetyBrakeTripped):
        run_rule(policy, RULE, store, ledger, RunRef("retention_sweep", "r"), now=NOW)
    dry = run_rule(policy, RULE, store, ledger, RunRef("retention_sweep", "d"), now=NOW, dry_run=True,
                   brake_approved=True)

    assert dry["deleted"] == 2
    assert sent["DeleteObjects"] == 0
    assert snapshot(s3, VERSIONED) == before
    assert [(e["action"], e["outcome"]) for e in ledger.rows()] == [("sweep", "brake_tripped"), ("sweep", "dry_run")]


def test_an_act_at_another_instant_lists_again(s3, make_store):
    policy = s3_policy(logs(VERSIONED))
    store = make_store(policy)
    for key in (OLD_A, OLD_B, "logs/2026/05/20/later.log", FRESH):
        put(s3, VERSIONED, key)
    rule = policy.rule(RULE)[2]
    sent = count_calls(store)

    assert store.plan("logs", rule, NOW).eligible == {"delete": 2}
    result = store.apply_stage("logs", rule, rule.stages[0], NOW + dt.timedelta(days=10), 1000, "r",
                               lambda *a, **k: None)

    assert result.changed == 3  # what is due at the act's own instant, from its own listing
    assert sent["ListObjectVersions"] == 2
    assert keys(s3, VERSIONED) == [FRESH]


def test_a_planned_version_deleted_by_someone_else_meanwhile_is_no_failure(s3, make_store, ledger):
    policy = s3_policy(logs(VERSIONED))
    store = make_store(policy)
    a1 = put(s3, VERSIONED, OLD_A, b"1")
    put(s3, VERSIONED, OLD_A, b"2")
    put(s3, VERSIONED, OLD_B)
    put(s3, VERSIONED, FRESH)
    between(store, lambda: s3.delete_object(Bucket=VERSIONED, Key=OLD_A, VersionId=a1))

    counts = run_rule(policy, RULE, store, ledger, RunRef("retention_sweep", "r"), now=NOW)

    assert counts["deleted"] == 2
    assert keys(s3, VERSIONED) == [FRESH] and len(versions(s3, VERSIONED)) == 1


def test_a_large_versioned_sweep_deletes_every_planned_version_a_page_at_a_time(s3, make_store, ledger):
    policy = s3_policy(logs(VERSIONED))
    store = make_store(policy)
    due = [f"logs/2026/01/{1 + i % 28:02d}/{i:05d}.log" for i in range(2300)]
    put_many(VERSIONED, due)
    put_many(VERSIONED, due[:700])  # a second version of some
    put(s3, VERSIONED, FRESH)
    sent = count_calls(store)

    counts = run_rule(policy, RULE, store, ledger, RunRef("retention_sweep", "r"), now=NOW)

    assert counts["deleted"] == 2300
    assert [k for k, _, _ in versions(s3, VERSIONED)] == [FRESH]
    assert sent["ListObjectVersions"] == 4  # 3,001 versions: the plan's four pages, no more
    assert sent["DeleteObjects"] == 3


def test_the_spool_gives_back_what_it_took_in_pages(tmp_path):
    now = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
    spool = Spool("logs", object(), now)
    objs = [S3Object(f"k/{i:05d} é", now - dt.timedelta(seconds=i), version_id=f"v{i}" if i % 2 else None,
                     live=bool(i % 3), versions=[f"v{i}", "m"], data_versions=[f"v{i}"]) for i in range(2345)]
    for obj in objs:
        spool.add(obj)

    pages = list(spool.pages())

    assert [len(p) for p in pages] == [1000, 1000, 345] and [p.more for p in pages] == [True, True, False]
    assert [o for p in pages for o in p] == objs
    spool.close()


def test_only_a_plan_to_act_on_keeps_a_spool_and_run_rule_releases_it_however_it_ends(s3, make_store, ledger):
    """A forecast, a page or a dry run plans without acting: no spool (no object key on disk); a sweep's plan
    keeps one for its delete stage, and it is gone when the rule ends, also when the brake stops it."""
    policy = s3_policy(logs(VERSIONED, max_fraction=0.5))
    store = make_store(policy)
    for key in (OLD_A, OLD_B, FRESH):
        put(s3, VERSIONED, key)
    rule = policy.rule(RULE)[2]

    assert store.plan("logs", rule, NOW).eligible == {"delete": 2}
    assert store._spool is None  # a forecast's or the page's plan
    store.plan("logs", rule, NOW, for_act=True)
    assert store._spool is not None and store._spool.count == 2
    store.release_plan()
    assert store._spool is None

    seen: list[Any] = []
    plan = store.plan

    def watched(*args: Any, **kwargs: Any):
        result = plan(*args, **kwargs)
        seen.append((kwargs.get("for_act"), store._spool))
        return result

    store.plan = watched
    with pytest.raises(SafetyBrakeTripped):
        run_rule(policy, RULE, store, ledger, RunRef("retention_sweep", "r"), now=NOW)
    run_rule(policy, RULE, store, ledger, RunRef("retention_sweep", "d"), now=NOW, dry_run=True,
             brake_approved=True)
    assert [for_act for for_act, _ in seen] == [True, False]
    tripped_spool = seen[0][1]
    assert tripped_spool is not None and tripped_spool.file.closed  # released after the brake tripped
    assert seen[1][1] is None  # the dry run kept nothing
    assert store._spool is None
    assert len(keys(s3, VERSIONED)) == 3
