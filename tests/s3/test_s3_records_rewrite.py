"""How a rewrite of records inside an S3 object reads and writes (docs/adr/0021): the version is downloaded once,
rewritten and checked on disk, and the upload is checked to hold exactly the checked bytes; memory stays bounded
by a row group, not the object. Over moto's server via real HTTP."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from include.retention.requests.scanner import SubjectScanner
from include.retention.stores.base import Subject
from tests.s3.conftest import PLAIN, VERSIONED, put, s3_policy, snapshot, versions
from tests.s3.records_util import ZOE, body, decode, encode, expected_after, records

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KEYS = ["tables/dt=2026-05-01/part-0.parquet", "tables/dt=2026-05-02/part-0.parquet"]


def policy_for(bucket: str):
    return s3_policy(f"""\
        tables:
          bucket: {bucket}
          key_template: "tables/dt={{yyyy}}-{{mm}}-{{dd}}/..."
          format: parquet
          identities: {{email: ["record:email", {{column: "record:referrer", erase: mask,
                        mask: {{strategy: redact, value: erased}}}}]}}
        """)


def zoe() -> Subject:
    return Subject("r1", {"email": ZOE})


def arrange(s3, bucket: str) -> dict[str, list[dict]]:
    current = {KEYS[0]: records(6, seed=1), KEYS[1]: records(4, seed=2)}
    for key, recs in current.items():
        put(s3, bucket, key, encode("parquet", recs))
    return current


def gets(store) -> list[dict]:
    """The GetObject requests ``store`` sends from now on (their parameters)."""
    sent: list[dict] = []
    store.client.meta.events.register("before-parameter-build.s3.GetObject",
                                      lambda params, **_: sent.append(dict(params)))
    return sent


@pytest.mark.parametrize("bucket", [PLAIN, VERSIONED])
def test_each_rewritten_version_is_downloaded_once_and_not_read_back(s3, make_store, bucket):
    current = arrange(s3, bucket)
    store = make_store(policy_for(bucket))
    sent = gets(store)
    outcome = SubjectScanner(store.policy, store).act([zoe()], "erase", dry_run=False)
    assert outcome.per_request["r1"]["objects.tables"]["objects_rewritten"] == 2
    whole = [p for p in sent if "Range" not in p]  # find reads Parquet by ranges (the identity column)
    assert sorted(p["Key"] for p in whole) == sorted(KEYS)  # once each; the rewrite is never downloaded
    for key, recs in current.items():
        assert decode("parquet", body(s3, bucket, key)) == expected_after(recs)


@pytest.mark.parametrize("bucket", [PLAIN, VERSIONED])
def test_an_upload_not_stored_as_checked_is_undone(s3, make_store, bucket, monkeypatch):
    """The bytes sent differ from the checked file (moto, unlike S3, does not refuse a body that misses its
    Content-MD5): the stored bytes are compared with the file, the upload is removed, the original stays."""
    from include.retention.stores import s3_record_files
    from include.retention.stores.s3_records import RewriteNotVerified

    arrange(s3, bucket)
    before = snapshot(s3, bucket)
    real = s3_record_files._Window.readinto

    def flipped(self, buffer):
        n = real(self, buffer)
        if n and self.pos == n:  # the first block of every request: one bit changed on the way
            buffer[0] ^= 1
        return n

    monkeypatch.setattr(s3_record_files._Window, "readinto", flipped)
    store = make_store(policy_for(bucket))
    with pytest.raises(RewriteNotVerified, match="not stored as it was checked"):
        SubjectScanner(store.policy, store).act([zoe()], "erase", dry_run=False)
    assert snapshot(s3, bucket) == before


def test_an_etag_that_is_no_md5_is_checked_by_reading_the_bytes_back(s3, make_store):
    """SSE-KMS answers an ETag that is not the MD5 of the bytes: the stored version is read back and compared."""
    current = arrange(s3, VERSIONED)
    store = make_store(policy_for(VERSIONED))

    def kms_like(parsed, **_):
        if "ETag" in parsed:
            parsed["ETag"] = '"0123456789abcdef0123456789abcdef"'

    store.client.meta.events.register("after-call.s3.PutObject", kms_like)
    store.client.meta.events.register("after-call.s3.CompleteMultipartUpload", kms_like)
    sent = gets(store)
    outcome = SubjectScanner(store.policy, store).act([zoe()], "erase", dry_run=False)
    assert outcome.per_request["r1"]["objects.tables"]["objects_rewritten"] == 2
    latest = {key: vid for key, vid, _ in versions(s3, VERSIONED)}
    assert len(latest) == len(versions(s3, VERSIONED)) == 2  # the rewrites alone: the originals went
    for key, recs in current.items():
        assert decode("parquet", body(s3, VERSIONED, key)) == expected_after(recs)
        assert any(p.get("VersionId") == latest[key] and "Range" not in p for p in sent)  # read back whole


CHILD = textwrap.dedent("""
    import json, sys
    import pyarrow as pa
    from include.retention.policy import parse_policy
    from include.retention.requests.scanner import SubjectScanner
    from include.retention.runtime import ConnInfo
    from include.retention.stores.base import Subject
    from include.retention.stores.s3 import S3Store

    url, policy = sys.argv[1], sys.argv[2]
    info = ConnInfo("aws", login="testing", password="testing", extra={"endpoint_url": url, "region_name": "us-east-1"})
    store = S3Store.from_conn("objects", parse_policy(policy), info, key=b"k" * 32)
    outcome = SubjectScanner(store.policy, store).act([Subject("r1", {"email": sys.argv[3]})], "erase", dry_run=False)
    print(json.dumps({"max": pa.default_memory_pool().max_memory(),
                      "deleted": outcome.per_request["r1"]["objects.tables"]["deleted"]}))
""")


POLICY = f"""\
defaults: {{max_fraction: 1.0, batch_size: 1000}}
systems:
  objects:
    kind: s3
    connection: objects_s3
    collections:
      tables:
        bucket: {PLAIN}
        key_template: "tables/dt={{yyyy}}-{{mm}}-{{dd}}/..."
        format: parquet
        identities: {{email: "record:email"}}
"""


def _erase_in_a_fresh_process(s3, moto_url: str, groups: int, rows: int = 40_000) -> int:
    """Put an object of ``groups`` row groups, erase Zoe from it in a fresh process (so that Arrow's high-water
    mark is the erasure's own); that high-water mark, after checking the outcome."""
    import numpy as np

    rng = np.random.default_rng(groups)
    n = rows * groups
    emails = np.char.add(np.char.add("user", rng.integers(0, 20_000, n).astype(str)), "@example.org").astype(object)
    emails[::5_000] = ZOE
    table = pa.table({"email": pa.array(emails.tolist()),
                      "session": pa.array(np.char.mod("%016x", rng.integers(0, 2**62, n)).tolist()),
                      "amount": pa.array(rng.random(n))})
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=rows, compression="zstd")
    put(s3, PLAIN, KEYS[0], buf.getvalue())
    out = subprocess.run([sys.executable, "-c", CHILD, moto_url, POLICY, ZOE], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["deleted"] == n // 5_000
    kept = pq.read_table(io.BytesIO(body(s3, PLAIN, KEYS[0])))
    assert kept.equals(table.filter(pa.array(emails != ZOE)))
    assert pq.ParquetFile(io.BytesIO(body(s3, PLAIN, KEYS[0]))).metadata.num_row_groups == groups
    return result["max"]


def test_memory_stays_bounded_by_a_row_group_not_the_object(s3, moto_url):
    """The same row groups, twice and twelve times as many: the erasure's Arrow memory does not grow with the
    object (it holds a row group at a time, never the object)."""
    small = _erase_in_a_fresh_process(s3, moto_url, 2)
    large = _erase_in_a_fresh_process(s3, moto_url, 12)
    assert large < 1.3 * small  # the object is six times larger


def test_objects_carrying_different_identity_fields_are_judged_apart(s3, make_store):
    """The person's address as an ``email`` in one object (the record goes) and, in the next object of the same
    collection, only as a ``referrer`` (the field is masked, the record stays): a value judged in one field is
    not taken for the other."""
    def parquet(columns: dict) -> bytes:
        buf = io.BytesIO()
        pq.write_table(pa.table(columns), buf)
        return buf.getvalue()

    put(s3, PLAIN, KEYS[0], parquet({"email": [ZOE, "a@example.org"], "amount": [1, 2]}))
    put(s3, PLAIN, KEYS[1], parquet({"referrer": [ZOE, ""], "amount": [3, 4]}))
    store = make_store(policy_for(PLAIN))
    outcome = SubjectScanner(store.policy, store).act([zoe()], "erase", dry_run=False)
    assert outcome.per_request["r1"]["objects.tables"] == {"deleted": 1, "masked": 1, "objects_rewritten": 2}
    assert pq.read_table(io.BytesIO(body(s3, PLAIN, KEYS[0]))).to_pylist() == [{"email": "a@example.org",
                                                                                  "amount": 2}]
    assert pq.read_table(io.BytesIO(body(s3, PLAIN, KEYS[1]))).to_pylist() == [{"referrer": "erased", "amount": 3},
                                                                                {"referrer": "", "amount": 4}]
