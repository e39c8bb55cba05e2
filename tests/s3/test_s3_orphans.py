"""S3 objects no row references (``start: {orphaned: last_modified}``), through moto's server over HTTP, the
owners in PostgreSQL, MariaDB (default collation: case-insensitive) and SQLite: exactly the unreferenced objects
go (every version), referenced ones stay (by key column and by key template), a key differing only in case from
a row's key is not referenced, a legal hold wins, and an owner row created between plan and act keeps its
object (the owners are looked up right before each page is deleted)."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from include.retention.connections import ConnInfo
from include.retention.ledger import Ledger, RunRef
from include.retention.policy import parse_policy
from include.retention.runtime import Runtime
from include.retention.stores.sql import make_engine
from include.retention.sweep import run_rule
from tests.s3.conftest import KEY, PLAIN, VERSIONED

POLICY = f"""
version: 1
defaults: {{max_fraction: 1.0, batch_size: 2}}
systems:
  crm:
    kind: sql
    connection: crm_db
    collections:
      applicants:
        table: s_applicants
        primary_key: id
        columns: [id, cv_key]
        references: [{{to: objects.cvs, column: cv_key}}]
      inquiries:
        table: s_inquiries
        primary_key: id
        columns: [id]
        references: [{{to: objects.attachments, key_template: "att/{{id}}/"}}]
  objects:
    kind: s3
    connection: objects_s3
    collections:
      cvs:
        bucket: {VERSIONED}
        prefix: cvs/
        legal_hold: [{{column: legal-hold, equals: "true"}}]
        rules: [{{name: orphaned, start: {{orphaned: last_modified}}, action: delete, period: P1D}}]
      attachments:
        bucket: {PLAIN}
        prefix: att/
        rules: [{{name: orphaned, start: {{orphaned: last_modified}}, action: delete, period: P1D}}]
"""

md = sa.MetaData()
applicants = sa.Table("s_applicants", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                      sa.Column("cv_key", sa.String(200)))
inquiries = sa.Table("s_inquiries", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False))

CVS = ["cvs/1.pdf", "cvs/2.pdf", "cvs/CV3.pdf", "cvs/9.pdf", "cvs/10.pdf"]
ATTS = ["att/5/a.txt", "att/5/b.txt", "att/6/a.txt", "att/x/a.txt", "att/05/a.txt"]


@pytest.fixture
def arranged(db_url, s3, conn_info, tmp_path):
    engine = make_engine(db_url)
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(applicants.insert(), [{"id": 1, "cv_key": "cvs/1.pdf"}, {"id": 3, "cv_key": "cvs/cv3.pdf"},
                                           {"id": 4, "cv_key": None}])
        conn.execute(inquiries.insert(), [{"id": 5}])
    for key in CVS:
        for body in (b"draft", b"final"):
            s3.put_object(Bucket=VERSIONED, Key=key, Body=body)
    s3.put_object_tagging(Bucket=VERSIONED, Key="cvs/9.pdf", Tagging={"TagSet": [{"Key": "legal-hold",
                                                                                    "Value": "true"}]})
    for key in ATTS:
        s3.put_object(Bucket=PLAIN, Key=key, Body=b"x")
    policy = parse_policy(POLICY, source="orphans.yaml")
    conns = {"crm_db": ConnInfo("sqlite", extra={"sqlalchemy_url": db_url}), "objects_s3": conn_info,
             "retention_ledger": ConnInfo("sqlite", host=str(tmp_path / "ledger.db"))}
    runtime = Runtime(policy, conns.__getitem__, key=KEY)
    yield policy, runtime, engine
    runtime.close()
    engine.dispose()


def _keys(s3, bucket: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in s3.list_object_versions(Bucket=bucket).get("Versions", []):
        out[v["Key"]] = out.get(v["Key"], 0) + 1
    return out


def test_exactly_the_unreferenced_objects_go(arranged, s3):
    policy, runtime, _ = arranged
    now = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    ledger: Ledger = runtime.ledger()
    store = runtime.store("objects")
    # before their period (counted from the upload) nothing is due
    _, _, rule = policy.rule("objects.cvs.orphaned")
    assert store.plan("cvs", rule, now - dt.timedelta(days=2)).eligible == {"delete": 0}
    plan = store.plan("cvs", rule, now)
    assert (plan.eligible, plan.held) == ({"delete": 3}, 1)  # 2, CV3 (a row names cv3), 10; 9 is held

    cvs = run_rule(policy, "objects.cvs.orphaned", store, ledger, RunRef("t", "r"), now=now)
    atts = run_rule(policy, "objects.attachments.orphaned", store, ledger, RunRef("t", "r"), now=now)

    assert cvs["deleted"] == 3 and atts["deleted"] == 3
    assert _keys(s3, VERSIONED) == {"cvs/1.pdf": 2, "cvs/9.pdf": 2}  # every version of the others went
    # inquiry 5 owns att/5/...; no inquiry 6; "x" and "05" name no row (the template writes 5 as "5")
    assert set(_keys(s3, PLAIN)) == {"att/5/a.txt", "att/5/b.txt"}


def test_an_owner_created_after_the_plan_keeps_its_object(arranged, s3):
    policy, runtime, engine = arranged
    now = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    store = runtime.store("objects")
    _, _, rule = policy.rule("objects.cvs.orphaned")
    assert store.plan("cvs", rule, now).eligible == {"delete": 3}
    with engine.begin() as conn:
        conn.execute(applicants.insert().values(id=2, cv_key="cvs/2.pdf"))
    result = store.apply_stage("cvs", rule, rule.stages[0], now, 1000, "retention:test", lambda *a, **k: None)
    assert result.changed == 2
    assert set(_keys(s3, VERSIONED)) == {"cvs/1.pdf", "cvs/2.pdf", "cvs/9.pdf"}


def test_without_the_owner_lookup_nothing_is_deleted(arranged, s3, make_store):
    policy, _, _ = arranged
    store = make_store(policy)  # opened alone: no way to look the owners up
    _, _, rule = policy.rule("objects.cvs.orphaned")
    now = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    with pytest.raises(Exception, match="look keys up"):
        store.apply_stage("cvs", rule, rule.stages[0], now, 1000, "retention:test", lambda *a, **k: None)
    assert len(_keys(s3, VERSIONED)) == 5


def test_default_rules_act_on_exactly_the_orphaned_demo_objects(db_url, s3, conn_info, tmp_path):
    """objects.cvs.orphaned and objects.inquiry_attachments.orphaned on the demo: every CV and attachment a demo
    row names stays, exactly the extra objects no row names go, and none before a week after their upload."""
    from pathlib import Path

    from include.retention.demo import s3_seed, seed
    from include.retention.policy import load_policy

    engine = make_engine(db_url)
    seed.seed_crm(engine, dt.datetime.now(dt.UTC), reset=True)
    keys = seed.crm_object_keys(engine)
    extra_cvs = ["cvs/9999/cv.pdf", "cvs/1/old-cv.pdf"]  # no applicant 9999; applicant 1 names cvs/1/cv.pdf only
    extra_atts = ["inquiries/9999/file.pdf", "inquiries/1/other.pdf"]
    s3_seed.seed_objects(s3, dt.datetime.now(dt.UTC), cv_keys=keys["applicants.cv_key"] + extra_cvs,
                         attachment_keys=keys["inquiries.attachment_key"] + extra_atts, log_days=1)
    policy = load_policy(Path(__file__).resolve().parents[2] / "config" / "policy.yaml")
    conns = {"crm_db": ConnInfo("sqlite", extra={"sqlalchemy_url": db_url}), "objects_s3": conn_info,
             "retention_ledger": ConnInfo("sqlite", host=str(tmp_path / "ledger.db"))}
    runtime = Runtime(policy, conns.__getitem__, key=KEY)
    try:
        store, ledger = runtime.store("objects"), runtime.ledger()
        soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=6)
        for rule_id in ("objects.cvs.orphaned", "objects.inquiry_attachments.orphaned"):
            assert run_rule(policy, rule_id, store, ledger, RunRef("t", "early"), now=soon)["deleted"] == 0
        later = dt.datetime.now(dt.UTC) + dt.timedelta(days=8)
        cvs = run_rule(policy, "objects.cvs.orphaned", store, ledger, RunRef("t", "r"), now=later)
        atts = run_rule(policy, "objects.inquiry_attachments.orphaned", store, ledger, RunRef("t", "r"), now=later)
    finally:
        runtime.close()
        engine.dispose()
    assert cvs["deleted"] == 2 and atts["deleted"] == 2
    assert set(_keys(s3, s3_seed.CV_BUCKET)) == set(keys["applicants.cv_key"])
    assert set(_keys(s3, s3_seed.ATTACHMENT_BUCKET)) == set(keys["inquiries.attachment_key"])
