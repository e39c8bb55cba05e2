"""S3 discovery on moto's server: an unmapped prefix of CSV exports, objects with an e-mail in
``x-amz-meta-``, a mapped prefix; exactly these findings, and no key below a prefix or value in them."""

from __future__ import annotations

import json

import pytest

from include.retention.discovery_s3 import discover_s3
from include.retention.stores.s3_objects import make_client
from tests.s3.conftest import PLAIN, s3_policy

pytestmark = pytest.mark.integration

POLICY = """
cvs:
  bucket: plain-bucket
  prefix: cvs/
  identities: {email: "metadata:owner-email"}
"""
EMAILS = ["anna.kowalska@example.org", "bob@example.com", "carla@example.net", "dmitri@example.de"]


def arrange(s3) -> None:
    for n in range(2):
        rows = "\n".join(f"{i},{EMAILS[(i + n) % 4]},2026-01-0{i + 1}" for i in range(4))
        s3.put_object(Bucket=PLAIN, Key=f"exports/2026/contacts-{n}.csv", Body=f"id,mail,day\n{rows}\n".encode(),
                      ContentType="text/csv")
    s3.put_object(Bucket=PLAIN, Key="uploads/scan-1.bin", Body=b"\x00\x01\x02binary",
                  Metadata={"contact": EMAILS[0], "pages": "3"})
    s3.put_object(Bucket=PLAIN, Key="cvs/7/cv.pdf", Body=b"%PDF-1.4", Metadata={"owner-email": EMAILS[1]})
    s3.put_object(Bucket=PLAIN, Key="cvs/8/cv.pdf", Body=b"%PDF-1.4",
                  Metadata={"owner-email": EMAILS[2], "reviewer": EMAILS[3]})
    s3.put_object(Bucket=PLAIN, Key="assets/readme.txt", Body=b"nothing personal here\nsee the wiki\n",
                  ContentType="text/plain")


def test_exact_findings(s3, conn_info):
    arrange(s3)
    client, _ = make_client(conn_info)
    report = discover_s3(s3_policy(POLICY), "objects", client)
    got = {(f.collection, f.column, f.kind, f.classifier, f.hit_rate, f.sample_size) for f in report.findings}
    assert got == {
        ("plain-bucket/exports/", "content", "unmapped_prefix", "email", 0.8, 10),  # 8 rows + 2 headers
        ("plain-bucket/uploads/", "metadata:contact", "unmapped_prefix", "email", 1.0, 1),
        ("plain-bucket/cvs/", "metadata:reviewer", "unmapped_metadata", "email", 1.0, 1),
    }
    text = json.dumps([f.as_dict() for f in report.findings]) + json.dumps(report.summary())
    for value in [*EMAILS, "contacts-0.csv", "scan-1", "cvs/8"]:
        assert value not in text
    assert report.columns_seen == 6 and report.not_sampled == []


def test_covered_bucket_is_quiet_and_only_named_buckets_are_read(s3, conn_info):
    s3.put_object(Bucket=PLAIN, Key="cvs/1/cv.pdf", Body=b"%PDF", Metadata={"owner-email": EMAILS[0]})
    s3.put_object(Bucket="versioned-bucket", Key="dump/x.csv", Body=f"{EMAILS[0]}\n".encode())
    client, _ = make_client(conn_info)
    assert discover_s3(s3_policy(POLICY), "objects", client, buckets=[PLAIN]).findings == []
    every = discover_s3(s3_policy(POLICY), "objects", client)
    assert [(f.collection, f.column) for f in every.findings] == [("versioned-bucket/dump/", "content")]


def test_what_another_s3_system_maps_is_not_this_ones_finding(s3, conn_info):
    """Two S3 systems on one connection: each reads its own buckets and prefixes, and the rest."""
    policy = s3_policy(POLICY, """
    reporting:
      kind: s3
      connection: objects_s3
      collections:
        exports:
          bucket: versioned-bucket
          prefix: exports/
          identities: {email: "metadata:owner"}
        shared:
          bucket: plain-bucket
          prefix: reports/
          identities: {email: "metadata:owner"}
    """)
    s3.put_object(Bucket="versioned-bucket", Key="exports/a.csv", Body=f"{EMAILS[0]}\n".encode(),
                  ContentType="text/csv")
    s3.put_object(Bucket=PLAIN, Key="reports/b.csv", Body=f"{EMAILS[1]}\n".encode(), ContentType="text/csv")
    s3.put_object(Bucket=PLAIN, Key="cvs/9/cv.txt", Body=f"{EMAILS[3]}\n".encode(), ContentType="text/plain")
    s3.put_object(Bucket=PLAIN, Key="dump/c.csv", Body=f"{EMAILS[2]}\n".encode(), ContentType="text/csv")
    client, _ = make_client(conn_info)
    objects = discover_s3(policy, "objects", client)
    assert [(f.collection, f.column) for f in objects.findings] == [("plain-bucket/dump/", "content")]
    assert objects.columns_seen == 3  # versioned-bucket is reporting's alone: not listed
    reporting = discover_s3(policy, "reporting", client)
    # the unmapped prefix of the bucket both name is both systems' finding; objects' cvs/ is not reporting's
    assert [(f.collection, f.column) for f in reporting.findings] == [("plain-bucket/dump/", "content")]
