"""S3 through moto's threaded server over real HTTP, with a plain, a versioned and an Object Lock bucket.

The server starts once per session; every test gets a reset server and fresh buckets.
"""

from __future__ import annotations

import datetime as dt
import logging
import textwrap
import urllib.request
from collections import Counter
from typing import Any

import boto3
import pytest
import sqlalchemy as sa

from include.retention.ledger import Ledger
from include.retention.policy import Policy, parse_policy
from include.retention.runtime import ConnInfo
from include.retention.stores.s3 import S3Store
from include.retention.stores.sql import make_engine
from tests.policy_text import policy_text, system

KEY = b"k" * 32
PLAIN, VERSIONED, LOCKED = "plain-bucket", "versioned-bucket", "lock-bucket"
NOW = dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.UTC)

logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log: one line per request


# moto_url: the session-wide moto server of tests/conftest.py


@pytest.fixture
def conn_info(moto_url: str) -> ConnInfo:
    return ConnInfo("aws", login="testing", password="testing",
                    extra={"endpoint_url": moto_url, "region_name": "us-east-1"})


@pytest.fixture
def s3(moto_url: str) -> Any:
    """A plain boto3 client for arranging and inspecting (the store under test has its own)."""
    urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST")).close()
    client = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket=PLAIN)
    client.create_bucket(Bucket=VERSIONED)
    client.put_bucket_versioning(Bucket=VERSIONED, VersioningConfiguration={"Status": "Enabled"})
    client.create_bucket(Bucket=LOCKED, ObjectLockEnabledForBucket=True)
    return client


def s3_policy(collections: str, extra_systems: str = "") -> Policy:
    """A policy with one S3 system ``objects`` (connection ``objects_s3``) holding ``collections``."""
    text = policy_text(system("objects", "s3", "objects_s3", collections),
                       defaults="{max_fraction: 1.0, batch_size: 1000}")
    text += textwrap.indent(textwrap.dedent(extra_systems), "  ")
    return parse_policy(text, source="test-policy.yaml")


@pytest.fixture
def make_store(conn_info: ConnInfo):
    stores: list[S3Store] = []

    def make(policy: Policy, info: ConnInfo | None = None, **kwargs: Any) -> S3Store:
        store = S3Store.from_conn("objects", policy, info or conn_info, key=KEY, **kwargs)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def ledger(tmp_path) -> Ledger:
    ledger = Ledger(make_engine(f"sqlite:///{tmp_path / 'ledger.db'}"), KEY)
    ledger.ensure_schema()
    return ledger


def count_deletes(store: S3Store, calls: list[int]) -> None:
    """Record the number of entries of every DeleteObjects request ``store``'s client sends."""
    sizes: list[int] = []

    def entries(params: dict[str, Any], **_: Any) -> None:
        sizes.append(len(params["Delete"]["Objects"]))

    def sent(**_: Any) -> None:  # one per HTTP request actually made
        calls.append(sizes.pop(0))

    store.client.meta.events.register("before-parameter-build.s3.DeleteObjects", entries)
    store.client.meta.events.register("before-call.s3.DeleteObjects", sent)


def store_log(caplog: Any) -> str:
    """What this package logged (moto's own request log names keys; it is not ours)."""
    return "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("include.retention"))


def put(s3: Any, bucket: str, key: str, body: bytes = b"x", **kwargs: Any) -> str | None:
    return s3.put_object(Bucket=bucket, Key=key, Body=body, **kwargs).get("VersionId")


def put_many(bucket: str, keys: list[str], body: bytes = b"x") -> None:
    """Arrange many objects fast, straight into the threaded server's backend (same process).

    Only arranging bypasses HTTP (one PUT per object would take seconds); the store under
    test always talks to the server over HTTP.
    """
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for key in keys:
        backend.put_object(bucket, key, body)


def versions(s3: Any, bucket: str, prefix: str = "") -> list[tuple[str, str, bool]]:
    """Every (key, version id, is delete marker) in the bucket."""
    out = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        out += [(v["Key"], v["VersionId"], False) for v in page.get("Versions", [])]
        out += [(m["Key"], m["VersionId"], True) for m in page.get("DeleteMarkers", [])]
    return sorted(out)


def keys(s3: Any, bucket: str, prefix: str = "") -> list[str]:
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return sorted(out)


def tags(s3: Any, bucket: str, key: str, version_id: str | None = None) -> dict[str, str]:
    extra = {"VersionId": version_id} if version_id else {}
    return {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=key, **extra)["TagSet"]}


def snapshot(s3: Any, bucket: str) -> list[tuple[Any, ...]]:
    """Everything a sweep could change: versions, content digests, metadata, tags, legal holds."""
    out = []
    for key, vid, marker in versions(s3, bucket):
        if marker:
            out.append((key, vid, "marker"))
            continue
        version = vid if vid != "null" else None  # an unversioned bucket's only version
        head = s3.head_object(Bucket=bucket, Key=key, **({"VersionId": version} if version else {}))
        out.append((key, vid, head["ETag"], head["LastModified"], tuple(sorted(head.get("Metadata", {}).items())),
                    head.get("ObjectLockLegalHoldStatus"), tuple(sorted(tags(s3, bucket, key, version).items()))))
    return out


def sqlite_rows(url: str, query: str) -> list[tuple[Any, ...]]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(sa.text(query))]
    engine.dispose()
    return rows


def count_calls(store: Any) -> Counter:
    """The S3 requests ``store``'s client sends from now on, counted by operation (``ListObjectVersions``: 2)."""
    calls: Counter = Counter()

    def sent(model: Any, **_: Any) -> None:
        calls[model.name] += 1

    store.client.meta.events.register("before-call.s3", sent)
    return calls
