"""S3 rules through the sweep engine: dry run, second run, rows taking their objects, unreachable endpoint."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest
import sqlalchemy as sa

from include.retention.errors import StoreUnavailable
from include.retention.ledger import RunRef
from include.retention.runtime import ConnInfo, Runtime
from include.retention.sweep import run_rule
from tests.policy_text import sql_system
from tests.s3.conftest import KEY, NOW, PLAIN, VERSIONED, keys, put, s3_policy, snapshot, sqlite_rows, versions
from tests.s3.test_s3_anonymize import LOG, LOGS, log_keys

RULE = "objects.access_logs.server_logs"


@pytest.fixture
def logs(s3):
    all_keys = log_keys(dt.date(2025, 4, 1), 15)  # 2025-04-01 .. 2026-06-01: more than a year
    for key in all_keys:
        put(s3, PLAIN, key, LOG)
    return all_keys


def test_dry_run_changes_nothing(s3, make_store, ledger, logs):
    policy = s3_policy(LOGS.format(bucket=PLAIN))
    before = snapshot(s3, PLAIN)

    counts = run_rule(policy, RULE, make_store(policy), ledger, RunRef("retention_sweep", "dry"), now=NOW,
                      dry_run=True)

    assert snapshot(s3, PLAIN) == before
    assert (counts["anonymized"], counts["deleted"], counts["total"]) == (11, 3, 15)
    assert [(e["action"], e["outcome"]) for e in ledger.rows()] == [("sweep", "dry_run")]


def test_a_second_run_changes_nothing_more(s3, make_store, ledger, logs):
    policy = s3_policy(LOGS.format(bucket=PLAIN))
    store = make_store(policy)

    first = run_rule(policy, RULE, store, ledger, RunRef("retention_sweep", "1"), now=NOW)
    state = snapshot(s3, PLAIN)
    second = run_rule(policy, RULE, make_store(policy), ledger, RunRef("retention_sweep", "2"), now=NOW)

    assert (first["anonymized"], first["deleted"]) == (11, 3)
    assert (second["anonymized"], second["deleted"], second["would"]) == (0, 0, {"anonymized": 0, "deleted": 0})
    assert snapshot(s3, PLAIN) == state
    assert keys(s3, PLAIN) == logs[3:]
    entries = list(ledger.rows())
    # a delete batch writes its intent before DeleteObjects, and the real count after
    assert [(e["run_id"], e["action"], e["outcome"], e["count"]) for e in entries] == [
        ("1", "delete", "intent", 3), ("1", "delete", "done", 3), ("1", "anonymize", "done", 11),
        ("1", "sweep", "complete", 14),
        ("2", "sweep", "complete", 0),
    ]
    # The ledger proves which objects by keyed digest only: no key, no path in any entry.
    assert not any("logs/" in json.dumps(e, default=str) for e in entries)
    assert ledger.verify().ok


def test_unreachable_endpoint_fails_clearly_and_leaves_no_false_done(make_store, ledger):
    policy = s3_policy(LOGS.format(bucket=PLAIN))
    store = make_store(policy, ConnInfo("aws", login="x", password="y",
                                        extra={"endpoint_url": "http://127.0.0.1:9", "region_name": "us-east-1"}))
    started = time.monotonic()

    with pytest.raises(StoreUnavailable) as err:
        run_rule(policy, RULE, store, ledger, RunRef("retention_sweep", "r"), now=NOW)

    assert time.monotonic() - started < 15  # short timeouts, few retries: the task fails fast
    assert str(err.value) == ("objects: S3 endpoint http://127.0.0.1:9 is unreachable or failed during HeadBucket "
                              "(EndpointConnectionError)")
    assert [e for e in ledger.rows() if e["outcome"] in ("complete", "done")] == []


CRM = sql_system("crm", "crm_db", """\
      applicants:
        table: applicants
        primary_key: id
        columns: [id, email, cv_key, closed_at]
        identities: {email: email}
        references: [{to: objects.cvs, column: cv_key}]
        rules:
          - {name: recruitment_closed, start: closed_at, action: delete, period: P6M}
      inquiries:
        table: inquiries
        primary_key: id
        columns: [id, email, last_contact_at]
        references: [{to: objects.attachments, key_template: "attachments/{id}/"}]
        rules:
          - {name: after_last_contact, start: last_contact_at, action: delete, period: P12M}
""")
OBJECTS = f"""\
cvs:
  bucket: {VERSIONED}
  prefix: cvs/
  legal_hold: [{{column: legal-hold, equals: "true"}}]
attachments:
  bucket: {PLAIN}
  prefix: attachments/
"""


@pytest.fixture
def crm(tmp_path):
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    engine = sa.create_engine(url)
    meta = sa.MetaData()
    applicants = sa.Table("applicants", meta, sa.Column("id", sa.Integer, primary_key=True),
                          sa.Column("email", sa.String(200)), sa.Column("cv_key", sa.String(500)),
                          sa.Column("closed_at", sa.DateTime))
    inquiries = sa.Table("inquiries", meta, sa.Column("id", sa.Integer, primary_key=True),
                         sa.Column("email", sa.String(200)), sa.Column("last_contact_at", sa.DateTime))
    meta.create_all(engine)
    with engine.begin() as conn:
        conn.execute(applicants.insert(), [
            {"id": 1, "email": "jane@example.com", "cv_key": "cvs/1/Jane Doe CV.pdf",
             "closed_at": dt.datetime(2025, 1, 1)},
            {"id": 2, "email": "sam@example.com", "cv_key": "cvs/2/cv.pdf", "closed_at": dt.datetime(2026, 5, 1)},
            {"id": 3, "email": "no-cv@example.com", "cv_key": None, "closed_at": dt.datetime(2025, 2, 1)},
            {"id": 4, "email": "held@example.com", "cv_key": "cvs/4/cv.pdf", "closed_at": dt.datetime(2025, 3, 1)},
        ])
        conn.execute(inquiries.insert(), [
            {"id": 10, "email": "a@example.com", "last_contact_at": dt.datetime(2025, 1, 1)},
            {"id": 11, "email": "b@example.com", "last_contact_at": dt.datetime(2026, 1, 1)},
        ])
    engine.dispose()
    return tmp_path / "crm.db", url


def test_a_deleted_crm_row_takes_its_objects_with_it(s3, conn_info, ledger, crm):
    path, url = crm
    policy = s3_policy(OBJECTS, CRM)
    put(s3, VERSIONED, "cvs/1/Jane Doe CV.pdf", b"draft")
    put(s3, VERSIONED, "cvs/1/Jane Doe CV.pdf", b"final")
    put(s3, VERSIONED, "cvs/1/cover-letter.pdf")  # not referenced by the row: stays
    put(s3, VERSIONED, "cvs/2/cv.pdf")
    put(s3, VERSIONED, "cvs/4/cv.pdf", Tagging="legal-hold=true")
    for key in ("attachments/10/a.pdf", "attachments/10/b.png", "attachments/11/c.pdf", "attachments/100/d.pdf"):
        put(s3, PLAIN, key)
    conns = {"crm_db": ConnInfo("sqlite", host=str(path)), "objects_s3": conn_info}
    runtime = Runtime(policy, conns.__getitem__, key=KEY)
    try:
        applicants = run_rule(policy, "crm.applicants.recruitment_closed", runtime.store("crm"), ledger, RunRef(),
                              now=NOW)
        inquiries = run_rule(policy, "crm.inquiries.after_last_contact", runtime.store("crm"), ledger, RunRef(),
                             now=NOW)
    finally:
        runtime.close()

    assert sqlite_rows(url, "SELECT id FROM applicants ORDER BY id") == [(2,)]
    assert sqlite_rows(url, "SELECT id FROM inquiries ORDER BY id") == [(11,)]
    assert (applicants["deleted"], applicants["cascaded"]) == (3, {"objects.cvs": 1})
    assert (inquiries["deleted"], inquiries["cascaded"]) == (1, {"objects.attachments": 2})
    # Every version of the referenced CV is gone; the held CV stays although its row went.
    assert sorted({k for k, _, _ in versions(s3, VERSIONED)}) == ["cvs/1/cover-letter.pdf", "cvs/2/cv.pdf",
                                                                  "cvs/4/cv.pdf"]
    assert keys(s3, PLAIN) == ["attachments/100/d.pdf", "attachments/11/c.pdf"]


def test_delete_referenced_refuses_keys_that_would_widen_or_leave_the_prefix(s3, make_store):
    policy = s3_policy(OBJECTS, CRM)
    store = make_store(policy)
    put(s3, PLAIN, "attachments/10/a.pdf")
    put(s3, PLAIN, "elsewhere/x.pdf")
    refs = {r.to: r for r in policy.collection("crm.inquiries").references}
    cv_ref = policy.collection("crm.applicants").references[0]

    assert store.delete_referenced("crm.inquiries", refs["objects.attachments"], [{"id": ""}, {"id": "10/.."}]) == 0
    assert store.delete_referenced("crm.applicants", cv_ref, [{"id": 1, "cv_key": "elsewhere/x.pdf"}]) == 0
    assert store.delete_referenced("crm.inquiries", refs["objects.attachments"], [{"id": 10}]) == 1
    assert keys(s3, PLAIN) == ["elsewhere/x.pdf"]
