"""Subjects found only in S3 (identity in the key, in metadata, in a tag), in plain, versioned and Object Lock
buckets: erase, restrict, exceptions and the verification re-scan, over moto's server via real HTTP."""

from __future__ import annotations

from email.header import Header

import pytest

from include.retention.requests.scanner import SubjectScanner
from include.retention.stores.base import Subject
from tests.s3.conftest import LOCKED, PLAIN, VERSIONED, keys, put, s3_policy, snapshot, tags, versions

pytestmark = pytest.mark.integration

ZOE, ZOE_ACCENT, ZOE_CYRILLIC = "zoe.muller@example.org", "zoë.müller@example.org", "zoe.mullеr@example.org"


def policy_for(bucket: str):
    return s3_policy(f"""\
        by_key:
          bucket: {bucket}
          prefix: exports/
          key_template: "exports/{{email}}/..."
          identities: {{email: "key:email"}}
          legal_hold: [{{column: legal-hold, equals: "true"}}]
        by_meta:
          bucket: {bucket}
          prefix: uploads/
          identities: {{email: "metadata:uploader-email"}}
        by_tag:
          bucket: {bucket}
          prefix: tickets/
          identities: {{customer_ref: "tag:customer"}}
        """)


def arrange(s3, bucket: str) -> None:
    put(s3, bucket, f"exports/{ZOE}/package.zip", b"zoe's package")
    put(s3, bucket, "exports/ZOE.Muller%40Example.org/old.zip", b"zoe, url-encoded and in capitals")
    put(s3, bucket, f"exports/{ZOE_ACCENT}/package.zip", b"someone else (accents)")
    put(s3, bucket, f"exports/{ZOE_CYRILLIC}/package.zip", b"someone else (homoglyph)")
    put(s3, bucket, "uploads/a.pdf", b"zoe's upload", Metadata={"uploader-email": " Zoe.Muller@example.org "})
    put(s3, bucket, "uploads/b.pdf", b"other upload", Metadata={"uploader-email": Header(ZOE_ACCENT, "utf-8").encode()})
    put(s3, bucket, "tickets/t1.txt", b"ticket", Tagging="customer=C-1")
    put(s3, bucket, "tickets/t2.txt", b"ticket", Tagging="customer=c-1")  # customer refs keep their case


def zoe() -> Subject:
    return Subject("r1", {"email": ZOE, "customer_ref": "C-1"})


@pytest.mark.parametrize("bucket", [PLAIN, VERSIONED, LOCKED])
def test_erase_subject_found_only_in_s3(s3, make_store, bucket):
    arrange(s3, bucket)
    store = make_store(policy_for(bucket))
    scanner = SubjectScanner(store.policy, store)
    others = [k for k in keys(s3, bucket) if "zoe.muller@" not in k and "ZOE.Muller" not in k
              and k not in ("uploads/a.pdf", "tickets/t1.txt")]
    before = [row for row in snapshot(s3, bucket) if row[0] in others]

    dry = scanner.act([zoe()], "erase", dry_run=True)
    assert dry.per_request["r1"] == {"objects.by_key": {"deleted": 2}, "objects.by_meta": {"deleted": 1},
                                     "objects.by_tag": {"deleted": 1}}
    assert scanner.remaining([zoe()], "erase") == {"r1": {"objects.by_key": 2, "objects.by_meta": 1,
                                                          "objects.by_tag": 1}}

    outcome = scanner.act([zoe()], "erase", dry_run=False)
    assert outcome.per_request["r1"] == dry.per_request["r1"]
    assert keys(s3, bucket) == sorted(others)
    # every version and delete marker of the erased objects is gone, nothing else changed
    assert not [v for v in versions(s3, bucket) if v[0] not in others]
    assert [row for row in snapshot(s3, bucket) if row[0] in others] == before
    assert scanner.remaining([zoe()], "erase") == {}


def test_verification_fails_when_an_object_is_left(s3, make_store):
    arrange(s3, VERSIONED)
    store = make_store(policy_for(VERSIONED))
    scanner = SubjectScanner(store.policy, store)
    scanner.act([zoe()], "erase", dry_run=False)
    # an object the erasure could not remove (here: written again behind its back) is found by the re-scan
    put(s3, VERSIONED, "uploads/again.pdf", b"x", Metadata={"uploader-email": ZOE})
    assert scanner.remaining([zoe()], "erase") == {"r1": {"objects.by_meta": 1}}


@pytest.mark.parametrize("bucket", [PLAIN, LOCKED])
def test_restrict_then_erase_lifts_own_restriction(s3, make_store, bucket):
    arrange(s3, bucket)
    store = make_store(policy_for(bucket))
    scanner = SubjectScanner(store.policy, store)
    outcome = scanner.act([zoe()], "restrict", dry_run=False)
    assert outcome.per_request["r1"]["objects.by_key"] == {"restricted": 2}
    assert tags(s3, bucket, f"exports/{ZOE}/package.zip")["retention-lock"].startswith("restriction:")
    assert "retention-lock" not in tags(s3, bucket, f"exports/{ZOE_ACCENT}/package.zip")
    if bucket == LOCKED:
        head = s3.head_object(Bucket=bucket, Key=f"exports/{ZOE}/package.zip")
        assert head["ObjectLockLegalHoldStatus"] == "ON"
    assert scanner.remaining([zoe()], "restrict") == {}
    again = scanner.act([zoe()], "restrict", dry_run=False)
    assert again.per_request["r1"]["objects.by_key"] == {"already_restricted": 2}

    # a later erasure of the same subject lifts the subject's own restriction (and legal hold) and deletes
    erased = scanner.act([zoe()], "erase", dry_run=False)
    assert erased.per_request["r1"]["objects.by_key"] == {"deleted": 2, "lifted": 2}
    assert scanner.remaining([zoe()], "erase") == {}
    assert f"exports/{ZOE_ACCENT}/package.zip" in keys(s3, bucket)


def test_exceptions_are_kept_and_listed(s3, make_store):
    bucket = LOCKED
    arrange(s3, bucket)
    # a tag legal hold, an Object Lock legal hold set by someone else, a lock for another reason
    s3.put_object_tagging(Bucket=bucket, Key=f"exports/{ZOE}/package.zip",
                          Tagging={"TagSet": [{"Key": "legal-hold", "Value": "true"}]})
    s3.put_object_legal_hold(Bucket=bucket, Key="uploads/a.pdf", LegalHold={"Status": "ON"})
    s3.put_object_tagging(Bucket=bucket, Key="tickets/t1.txt", Tagging={"TagSet": [
        {"Key": "customer", "Value": "C-1"}, {"Key": "retention-lock", "Value": "litigation-2026@2026-01-01"}]})
    store = make_store(policy_for(bucket))
    scanner = SubjectScanner(store.policy, store)
    outcome = scanner.act([zoe()], "erase", dry_run=False)
    assert outcome.per_request["r1"] == {
        "objects.by_key": {"exception:legal_hold": 1, "deleted": 1},
        "objects.by_meta": {"exception:legal_hold": 1},
        "objects.by_tag": {"exception:locked_for_another_reason": 1},
    }
    left = set(keys(s3, bucket))
    assert {f"exports/{ZOE}/package.zip", "uploads/a.pdf", "tickets/t1.txt"} <= left
    assert "exports/ZOE.Muller%40Example.org/old.zip" not in left
    # kept objects are exceptions, not failures: the request completes with them listed
    assert scanner.remaining([zoe()], "erase") == {}
    assert tags(s3, bucket, "tickets/t1.txt")["retention-lock"] == "litigation-2026@2026-01-01"


def test_erase_reads_claimed_objects_a_page_at_a_time(s3, make_store):
    """Many subjects' objects: one listing for all claimed keys (not one per key), one tag read per claimed object
    (the ``retention-lock`` tag and the tag legal hold need it), no HEAD without Object Lock or metadata
    identities; a tag-held and a statutorily locked object are still kept, lookalikes untouched."""
    n = 40
    for i in range(n):
        put(s3, VERSIONED, f"exports/p{i}@example.org/a.zip", b"theirs")
        put(s3, VERSIONED, f"exports/q{i}@example.org/a.zip", b"a lookalike's")
    s3.put_object_tagging(Bucket=VERSIONED, Key="exports/p0@example.org/a.zip",
                          Tagging={"TagSet": [{"Key": "legal-hold", "Value": "true"}]})
    s3.put_object_tagging(Bucket=VERSIONED, Key="exports/p1@example.org/a.zip",
                          Tagging={"TagSet": [{"Key": "retention-lock", "Value": "retention:tax@2026-01-01"}]})
    store = make_store(s3_policy("""\
        by_key:
          bucket: versioned-bucket
          prefix: exports/
          key_template: "exports/{email}/..."
          identities: {email: "key:email"}
          legal_hold: [{column: legal-hold, equals: "true"}]
        """))
    scanner = SubjectScanner(store.policy, store)
    subjects = [Subject(f"r{i}", {"email": f"p{i}@example.org"}) for i in range(n)]
    claims = store.find("by_key", subjects)
    assert len(claims) == n

    calls: list[str] = []
    store.client.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    outcome = store.erase("by_key", claims, subjects, dry_run=False)
    counted = {op: calls.count(op) for op in set(calls)}
    assert counted.get("GetObjectTagging") == n
    assert "HeadObject" not in counted
    assert counted.get("ListObjectVersions", 0) <= 3  # was one per claimed key
    assert outcome.per_request["r0"] == {"objects.by_key": {"exception:legal_hold": 1}}
    assert outcome.per_request["r1"] == {"objects.by_key": {"exception:statutory_lock": 1}}
    assert all(outcome.per_request[f"r{i}"] == {"objects.by_key": {"deleted": 1}} for i in range(2, n))
    left = keys(s3, VERSIONED)
    assert left == sorted(["exports/p0@example.org/a.zip", "exports/p1@example.org/a.zip"]
                          + [f"exports/q{i}@example.org/a.zip" for i in range(n)])
    assert not [v for v in versions(s3, VERSIONED) if v[0].startswith("exports/p") and v[0] not in left]
    assert scanner.remaining(subjects, "erase") == {}
