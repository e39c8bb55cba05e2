"""erasure_request's task bodies (discover / act / verify / record) on records inside objects: a rewrite
interrupted between its checked write and the deletes of the versions it replaces leaves the ledger's intent
open and the request unverified; the retry reaches the exact end state and settles the intent once."""

from __future__ import annotations

import json
import os

import pytest

from include.retention.connections import make_engine
from include.retention.ledger import Ledger
from include.retention.stores.s3_record_store import S3RecordSubjects
from tests.policy_text import policy_text, system
from tests.s3.conftest import VERSIONED
from tests.s3.records_util import ZOE, body, decode, encode, expected_after, is_zoes, records

pytestmark = pytest.mark.integration

KEY = "events/dt=2026-05-01/part-0.parquet"


def test_an_interrupted_rewrite_leaves_the_intent_open_and_the_retry_finishes(s3, moto_url, tmp_path, monkeypatch):
    from include.retention.airflow import erasure_tasks
    from include.retention.registry import Identities, NewRequest, Registry

    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(policy_text(system("objects", "s3", "objects_s3", f"""\
        events:
          bucket: {VERSIONED}
          key_template: "events/dt={{yyyy}}-{{mm}}-{{dd}}/..."
          format: parquet
          identities: {{email: ["record:email", {{column: "record:referrer", erase: mask,
                                                  mask: {{strategy: redact, value: erased}}}}]}}
        """), defaults="{max_fraction: 1.0, batch_size: 100}"))
    older, current = records(2, seed=5), records(6, seed=6)
    s3.put_object(Bucket=VERSIONED, Key=KEY, Body=encode("parquet", older))
    s3.put_object(Bucket=VERSIONED, Key=KEY, Body=encode("parquet", current))
    ledger_path = tmp_path / "ledger.db"
    monkeypatch.setenv("RETENTION_POLICY_PATH", str(policy_file))
    monkeypatch.setenv("AIRFLOW_CONN_RETENTION_LEDGER", json.dumps({"conn_type": "sqlite", "host": str(ledger_path)}))
    monkeypatch.setenv("AIRFLOW_CONN_OBJECTS_S3", json.dumps({
        "conn_type": "aws", "login": "testing", "password": "testing",
        "extra": {"endpoint_url": moto_url, "region_name": "us-east-1"}}))
    secret = os.environ["RETENTION_HMAC_KEY"].encode()
    ledger = Ledger(make_engine(f"sqlite:///{ledger_path}"), secret)
    registry = Registry(ledger.engine, secret)
    registry.ensure_schema()
    rid = registry.register(NewRequest(Identities(email=ZOE)), dag_id="erasure_request", run_id="run-1")
    registry.start(rid)

    def killed(self, bucket, key):
        raise SystemExit("worker killed between the write and the version deletes")

    assert erasure_tasks.discover([rid], "objects") == {"deleted": 3, "masked": 1, "objects_rewritten": 1,
                                                        "versions_deleted": 1}
    with monkeypatch.context() as m:
        m.setattr(S3RecordSubjects, "before_old_versions_go", killed)
        with pytest.raises(SystemExit):
            erasure_tasks.act([rid], "objects")
    assert ledger.verify().unreconciled_count == 1  # the intent is open
    with pytest.raises(Exception, match="verification found data left"):
        erasure_tasks.verify([rid], "objects")  # the original versions still hold their records

    erasure_tasks.act([rid], "objects")  # Airflow's retry
    assert erasure_tasks.verify([rid], "objects") == 1
    assert erasure_tasks.record([rid], "objects", "erasure_request", "run-1") == 1
    final = ledger.verify()
    assert final.ok and final.unreconciled_count == 0
    listed = s3.list_object_versions(Bucket=VERSIONED, Prefix=KEY)["Versions"]
    assert len(listed) == 1  # the rewrite; both versions that held their records are gone
    assert decode("parquet", body(s3, VERSIONED, KEY)) == expected_after(current)
    assert not [r for r in decode("parquet", body(s3, VERSIONED, KEY)) if is_zoes(r)]
    entry = next(r for r in ledger.rows() if r["request_id"] == rid)
    assert ZOE not in json.dumps(dict(entry), default=str)
