"""What somebody else does to an object while a rewrite of its records is under way (review of the rewrite path):
a delete. Over moto's server via real HTTP."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from include.retention.errors import StoreUnavailable
from include.retention.requests.scanner import SubjectScanner
from tests.s3.conftest import VERSIONED, put, versions
from tests.s3.records_util import body, encode, records
from tests.s3.test_s3_records import COLLS, policy_for, zoe

pytestmark = pytest.mark.integration


def test_an_object_deleted_meanwhile_is_not_brought_back(s3, make_store, monkeypatch):
    """Somebody deletes the object (a delete marker) between our read and our upload: our rewrite would sit on top
    of their delete marker and bring the object (everybody else's records) back. Ours must go, the delete stay."""
    from include.retention.stores import s3_record_store

    fmt, gz, theirs, _ = COLLS["events"]
    original = encode(fmt, records(6, seed=1), gz)
    first = put(s3, VERSIONED, theirs, original, ContentEncoding="gzip")
    real = s3_record_store.write_version

    def meanwhile(reader, decide, sink, key):
        out = real(reader, decide, sink, key)
        if reader.obj.key == theirs:
            s3.delete_object(Bucket=VERSIONED, Key=theirs)  # the owner deletes the export now
        return out

    monkeypatch.setattr(s3_record_store, "write_version", meanwhile)
    store = make_store(policy_for(VERSIONED))
    with pytest.raises(StoreUnavailable, match="changed while it was rewritten"):
        SubjectScanner(store.policy, store).act([zoe()], "erase", dry_run=False)
    with pytest.raises(ClientError):  # still deleted: nobody's records came back
        s3.head_object(Bucket=VERSIONED, Key=theirs)
    entries = [v for v in versions(s3, VERSIONED) if v[0] == theirs]
    assert sorted(e[2] for e in entries) == [False, True]  # the original under the owner's delete marker
    assert body(s3, VERSIONED, theirs, first) == original

    # the next run: nothing is current, the older version holding the person's records goes; nothing comes back
    monkeypatch.setattr(s3_record_store, "write_version", real)
    SubjectScanner(store.policy, make_store(policy_for(VERSIONED))).act([zoe()], "erase", dry_run=False)
    with pytest.raises(ClientError):
        s3.head_object(Bucket=VERSIONED, Key=theirs)
    assert not [v for v in versions(s3, VERSIONED) if v[0] == theirs and not v[2]]



def test_a_json_line_naming_a_field_twice_is_never_passed_over(s3, make_store):
    """``{"email": <the person>, "email": <somebody else>}``: json keeps the last value only, so the person's address
    in the first would be neither found nor erased, and the request reported done with it left. Such a line makes
    the object unreadable: nothing changed, the request stays open (as a CSV header naming a column twice)."""
    from include.retention.stores.s3_record_read import RecordsUnreadable
    from tests.s3.conftest import PLAIN
    from tests.s3.records_util import ZOE

    key = "events/dt=2026-05-01/part-1.jsonl"
    data = (b'{"email": "other@example.org", "ts": "2026-05-01T00:00:00"}\n'
            + f'{{"email": "{ZOE}", "email": "else@example.org", "ts": "2026-05-01T01:00:00"}}\n'.encode())
    put(s3, PLAIN, key, data)
    store = make_store(policy_for(PLAIN))
    with pytest.raises(RecordsUnreadable, match="names a field twice"):
        SubjectScanner(store.policy, store).act([zoe()], "erase", dry_run=False)
    assert body(s3, PLAIN, key) == data


def test_a_parquet_writer_keeping_a_dropped_record_is_caught(s3, make_store, monkeypatch):
    """The check of a Parquet rewrite computes what must remain apart from the writer's way of cutting rows out
    (``_without``): a writer that keeps one dropped record is caught, nothing is uploaded, the original stays."""
    from include.retention.stores import s3_rewrite
    from include.retention.stores.s3_records import RewriteNotVerified
    from tests.s3.conftest import PLAIN

    fmt, gz, theirs, _ = COLLS["tables"]
    original = encode(fmt, records(6, seed=1), gz)
    put(s3, PLAIN, theirs, original)
    real = s3_rewrite._without
    monkeypatch.setattr(s3_rewrite, "_without", lambda table, dropped: real(table, dropped[1:]))
    store = make_store(policy_for(PLAIN))
    with pytest.raises(RewriteNotVerified, match="did not check out"):
        SubjectScanner(store.policy, store).act([zoe()], "erase", dry_run=False)
    assert body(s3, PLAIN, theirs) == original


def test_an_upload_that_cannot_be_read_back_is_undone(s3, make_store):
    """SSE-KMS (an ETag that is no MD5): the stored version is read back to be compared. When that read fails, the
    upload is not known to be stored as checked: it must go (it stayed as the current version, unverified, and the
    next run would have taken it for the object and deleted the original below it)."""
    from botocore.exceptions import EndpointConnectionError

    from tests.s3.conftest import snapshot

    fmt, gz, theirs, _ = COLLS["events"]
    put(s3, VERSIONED, theirs, encode(fmt, records(6, seed=1), gz), ContentEncoding="gzip")
    before = snapshot(s3, VERSIONED)
    store = make_store(policy_for(VERSIONED))
    uploaded = []

    def kms_like(parsed, **_):
        if "ETag" in parsed:
            parsed["ETag"] = '"0123456789abcdef0123456789abcdef"'
            uploaded.append(1)

    def read_back_fails(params, **_):
        if uploaded:
            raise EndpointConnectionError(endpoint_url="moto")

    store.client.meta.events.register("after-call.s3.PutObject", kms_like)
    store.client.meta.events.register("before-call.s3.GetObject", read_back_fails)
    with pytest.raises(StoreUnavailable):
        SubjectScanner(store.policy, store).act([zoe()], "erase", dry_run=False)
    assert uploaded
    assert snapshot(s3, VERSIONED) == before  # the unverified upload went; the original is current again


def test_a_masked_json_line_holding_a_lone_surrogate_escape_is_written(s3, make_store):
    """A JSON line may escape a lone surrogate (``"\\ud800"``: valid JSON, no UTF-8 for it). A record whose field
    is masked is written again: it must be written with that escape, not fail the request forever."""
    from tests.s3.conftest import PLAIN
    from tests.s3.records_util import ZOE

    key = "events/dt=2026-05-01/part-2.jsonl"
    keep = b'{"email": "other@example.org", "referrer": "", "note": "\\ud800"}\n'
    data = keep + f'{{"email": "friend@example.org", "referrer": "{ZOE}", "note": "\\ud800x"}}\n'.encode()
    put(s3, PLAIN, key, data)
    store = make_store(policy_for(PLAIN))
    outcome = SubjectScanner(store.policy, store).act([zoe()], "erase", dry_run=False)
    assert outcome.per_request["r1"] == {"objects.events": {"masked": 1, "objects_rewritten": 1}}
    stored = body(s3, PLAIN, key)
    assert stored.startswith(keep)  # the other line byte for byte
    import json
    assert json.loads(stored.splitlines()[1]) == {"email": "friend@example.org", "referrer": "erased",
                                                  "note": "\ud800x"}


def test_a_bucket_with_versioning_suspended_is_refused_before_anything_changes(s3, make_store):
    """Versioning suspended: a PutObject replaces the null version in place, before any check could refuse the
    rewrite (and undoing it would delete the object). The rewrite is refused, naming the bucket's state; every
    version stays byte for byte and the request stays open (the error reaches the caller)."""
    from include.retention.errors import RetentionError

    bucket = "records-suspended"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    fmt, gz, key, _ = COLLS["events"]
    older = encode(fmt, records(4, seed=2), gz)
    put(s3, bucket, key, older, ContentEncoding="gzip")
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
    current = encode(fmt, records(6, seed=3), gz)
    put(s3, bucket, key, current, ContentEncoding="gzip")  # the null version, on top of the enabled-era one
    before = sorted((v[0], v[1], v[2]) for v in versions(s3, bucket))
    store = make_store(policy_for(bucket))
    # the claim as find makes it (moto answers 400 to reads of the null version, which real S3 serves)
    from include.retention.stores.base import Claims

    claims = Claims()
    claims.add(key, zoe().request_id)
    with pytest.raises(RetentionError, match="versioning is suspended"):
        store.erase("events", claims, [zoe()], dry_run=False)
    assert sorted((v[0], v[1], v[2]) for v in versions(s3, bucket)) == before
    assert body(s3, bucket, key) == current
