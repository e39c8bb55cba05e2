"""A discovery run on the demo (its seed, config/policy.yaml, S3 on moto's server) finds the demo's deliberately
unmapped column and nothing else."""

from __future__ import annotations

import datetime as dt
import json
import urllib.request

import pytest

from include.retention.connections import make_engine
from include.retention.demo import s3_seed
from include.retention.demo import seed as demo_seed
from include.retention.discovery import discover_sql
from include.retention.discovery_s3 import discover_s3
from include.retention.policy import load_policy
from include.retention.runtime import ConnInfo
from include.retention.stores.s3_objects import make_client
from tests.conftest import ROOT

pytestmark = pytest.mark.integration
NOW = dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.UTC)


def test_demo_has_exactly_its_unmapped_column(tmp_path, moto_url):
    urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST")).close()
    policy = load_policy(ROOT / "config" / "policy.yaml")
    crm, mailing = make_engine(f"sqlite:///{tmp_path / 'crm.db'}"), make_engine(f"sqlite:///{tmp_path / 'ml.db'}")
    demo_seed.seed_crm(crm, NOW)
    demo_seed.seed_mailing(mailing, NOW)
    info = ConnInfo("aws", login="testing", password="testing",
                    extra={"endpoint_url": moto_url, "region_name": "us-east-1"})
    s3_seed.seed_demo_objects(info, crm, NOW)
    reports = [discover_sql(policy, "crm", crm), discover_sql(policy, "mailing", mailing),
               discover_s3(policy, "objects", make_client(info)[0])]
    found = [(f.name, f.kind, f.classifier, f.hit_rate) for r in reports for f in r.findings]
    assert found == [("crm.contacts.secondary_email", "unmapped_column", "email", 1.0)]
    assert reports[0].findings[0].sample_size > 10
    assert "@example" not in json.dumps([f.as_dict() for r in reports for f in r.findings])
    assert all(r.not_sampled == [] for r in reports)
    crm.dispose()
    mailing.dispose()
