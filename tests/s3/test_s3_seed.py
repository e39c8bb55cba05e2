"""The demo's S3 data and the default policy's S3 part work together."""

from __future__ import annotations

import datetime as dt
import re

from include.retention.demo import s3_seed
from include.retention.demo.seed import seed_crm
from include.retention.policy import load_policy
from include.retention.runtime import ConnInfo
from include.retention.stores.s3 import ANONYMIZED_META
from include.retention.stores.sql import make_engine
from tests.conftest import ROOT
from tests.s3.conftest import keys, versions

NOW = dt.datetime(2026, 6, 15, 10, 0, tzinfo=dt.UTC)


def test_demo_objects_follow_the_crm_and_the_default_policy(s3, conn_info, make_store, tmp_path):
    crm = make_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    seed_crm(crm, NOW)
    eu = ConnInfo("aws", login="t", password="t", extra={**conn_info.extra, "region_name": "eu-central-1"})
    counts = s3_seed.seed_demo_objects(eu, crm, NOW)
    crm.dispose()

    cvs = {k for k, _, _ in versions(s3, s3_seed.CV_BUCKET)}
    assert len(versions(s3, s3_seed.CV_BUCKET)) == 2 * len(cvs) == 2 * counts["cvs"] > 0
    assert len(keys(s3, s3_seed.ATTACHMENT_BUCKET)) == counts["inquiry_attachments"] > 0
    logs = keys(s3, s3_seed.LOG_BUCKET)
    days = sorted(dt.date(*map(int, re.match(r"logs/(\d+)/(\d+)/(\d+)/", k).groups())) for k in logs)
    assert (days[-1] - days[0]).days > 395  # more than thirteen months
    newest = s3.get_object(Bucket=s3_seed.LOG_BUCKET, Key=logs[-1])
    body = newest["Body"].read().decode()
    assert re.search(r" \d+\.\d+\.\d+\.(?!0 )\d+ ", body) and re.search(r" 2001:db8:\w+:\w+::\w+ ", body)
    assert ANONYMIZED_META not in newest["Metadata"]

    policy = load_policy(ROOT / "config" / "policy.yaml")
    store = make_store(policy, eu)
    plan = store.plan("access_logs", policy.rule("objects.access_logs.server_logs")[2], NOW)
    # A few days' backlog to anonymize, two months past a year to delete: well under the safety brake.
    assert plan.total == len(logs) == counts["access_logs"]
    assert 5 <= plan.eligible["anonymize"] <= 15 and 50 <= plan.eligible["delete"] <= 80
    assert plan.affected < 0.3 * plan.total


def test_every_bucket_of_the_data_map_is_made_as_the_demo_has_it(s3):
    policy = load_policy(ROOT / "config" / "policy.yaml")
    named = {coll.bucket for system in policy.systems.values() if system.kind == "s3"
             for coll in system.collections.values()}
    assert {s3_seed.CRM_EXPORT_BUCKET, s3_seed.EXPORTS_BUCKET, s3_seed.CV_BUCKET} <= named
    made = s3_seed.ensure_buckets(s3, policy)
    assert sorted(named) == made
    assert named <= {b["Name"] for b in s3.list_buckets()["Buckets"]}
    versioned = {b for b in named if s3.get_bucket_versioning(Bucket=b).get("Status") == "Enabled"}
    assert versioned == {s3_seed.CV_BUCKET, s3_seed.CRM_EXPORT_BUCKET}
    # again (an existing bucket is kept), all versioned on request, as the request tests want them
    s3_seed.ensure_buckets(s3, policy, versioned=True)
    assert all(s3.get_bucket_versioning(Bucket=b).get("Status") == "Enabled" for b in named)


def test_objects_seeded_without_contacts_still_make_the_export_bucket(s3):
    counts = s3_seed.seed_objects(s3, NOW, cv_keys=["cvs/1/cv.pdf"], attachment_keys=[], log_days=0)
    assert counts["crm_exports"] == 0
    assert s3_seed.CRM_EXPORT_BUCKET in {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert keys(s3, s3_seed.CRM_EXPORT_BUCKET) == []
