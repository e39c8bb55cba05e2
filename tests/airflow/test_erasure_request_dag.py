"""erasure_request through Airflow's runtime (dag.test) on PostgreSQL (CRM), MariaDB (mailing list)
and S3 (moto's server over HTTP): the subject is gone everywhere, everybody else untouched."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import threading
import uuid
from pathlib import Path

import boto3
import pytest
import sqlalchemy as sa

from include.retention.demo import schema
from include.retention.demo.s3_seed import ensure_buckets
from include.retention.demo.seed import seed_crm, seed_mailing
from include.retention.ledger import Ledger
from include.retention.policy import load_policy
from include.retention.registry import Registry
from include.retention.registry import requests as requests_table
from include.retention.requests.suppression import Suppressed, guard_subscribe
from include.retention.stores.sql import make_engine
from tests.airflow.conftest import run_dag, task_states
from tests.conftest import ROOT, airflow_uri

pytestmark = [pytest.mark.airflow, pytest.mark.integration]
DAG_ID = "erasure_request"

SUBJECT = "Erase.Me@Example.org"
SUBJECT_LC = SUBJECT.lower()
SECRET = os.environ["RETENTION_HMAC_KEY"].encode()
POLICY = load_policy(ROOT / "config" / "policy.yaml")



class FlakyProxy:
    """A TCP proxy that drops the first ``fail`` connections, then forwards: a store that recovers."""

    def __init__(self, target_port: int, fail: int = 1):
        self.target, self.fail, self.refused = target_port, fail, 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(50)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if self.refused < self.fail:
                self.refused += 1
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.sock.close()


def s3_targets():
    """(reference column, bucket) for every CRM column that holds an S3 key."""
    out = {}
    for name, coll in POLICY.systems["crm"].collections.items():
        for ref in POLICY.owned_objects(f"crm.{name}"):
            out[(coll.table, ref.column)] = POLICY.collection(ref.to).bucket
    return out


def add_subject(crm, mailing, email: str, phone: str = "+48 500 600 700", name: str = "Erase Me",
                message: str = "please call") -> dict:
    """A person's contact, inquiry, application, ticket (CRM) and subscription (mailing): their ids."""
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    ids = {}
    with crm.begin() as conn:
        cid = conn.execute(schema.contacts.insert().values(
            email=email, phone=phone, full_name=name, created_at=now, last_contact_at=now)
        ).inserted_primary_key[0]
        iid = conn.execute(schema.inquiries.insert().values(
            contact_id=cid, email=email, message=message, last_contact_at=now)).inserted_primary_key[0]
        conn.execute(schema.inquiries.update().where(schema.inquiries.c.id == iid)
                     .values(attachment_key=f"inquiries/{iid}/file.pdf"))
        aid = conn.execute(schema.applicants.insert().values(
            contact_id=cid, email=email, full_name=name, recruitment_closed_at=None)).inserted_primary_key[0]
        conn.execute(schema.applicants.update().where(schema.applicants.c.id == aid).values(cv_key=f"cvs/{aid}/cv.pdf"))
        conn.execute(schema.support_tickets.insert().values(contact_id=cid, email=email, subject="help"))
        ids.update(contact=cid, inquiry=iid, applicant=aid)
    with mailing.begin() as conn:
        sid = conn.execute(schema.subscribers.insert().values(email=email, subscribed_at=now, last_engaged_at=now)
                           ).inserted_primary_key[0]
        conn.execute(schema.list_memberships.insert().values(subscriber_id=sid, list_name="blog", joined_at=now))
        conn.execute(schema.campaign_events.insert().values(subscriber_id=sid, campaign="c1", kind="open",
                                                            occurred_at=now, ip_address="198.51.100.7"))
        ids["subscriber"] = sid
    return ids


def put_objects(s3, crm):
    """Objects for every key a CRM row references (versioned buckets get two versions)."""
    keys = {}
    with crm.connect() as conn:
        for (table, column), bucket in s3_targets().items():
            t = sa.Table(table, sa.MetaData(), autoload_with=conn)
            for key in conn.execute(sa.select(t.c[column]).where(t.c[column].is_not(None))).scalars():
                s3.put_object(Bucket=bucket, Key=key, Body=b"v1")
                s3.put_object(Bucket=bucket, Key=key, Body=b"v2")
                keys.setdefault(bucket, set()).add(key)
    return keys


def object_keys(s3, bucket):
    out = set()
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        out |= {v["Key"] for v in page.get("Versions", []) + page.get("DeleteMarkers", [])}
    return out


def snapshot(crm, mailing, subject_ids):
    """Every row of every table except the subject's own, as tuples."""
    out = {}
    for engine, md in ((crm, schema.crm_metadata), (mailing, schema.mailing_metadata)):
        with engine.connect() as conn:
            for t in md.sorted_tables:
                rows = []
                for r in conn.execute(sa.select(t)):
                    m = r._mapping
                    if any(str(v).lower() == SUBJECT_LC for v in m.values()):
                        continue
                    by_subscriber = t.name in ("list_memberships", "campaign_events")
                    if by_subscriber and m["subscriber_id"] == subject_ids["subscriber"]:
                        continue
                    if "contact_id" in m and m["contact_id"] == subject_ids["contact"]:
                        continue
                    rows.append(tuple(m.values()))
                out[t.name] = sorted(rows, key=repr)
    return out


def demo_databases(fresh_database, prefix: str):
    """Fresh CRM (PostgreSQL), mailing (MariaDB) and ledger (PostgreSQL) databases, CRM and mailing seeded
    with the demo data: their URLs and the CRM and mailing engines."""
    suffix = uuid.uuid4().hex[:8]
    crm_url = fresh_database("postgresql", f"{prefix}_crm_{suffix}")
    mailing_url = fresh_database("mariadb", f"{prefix}_mail_{suffix}")
    ledger_url = fresh_database("postgresql", f"{prefix}_ledger_{suffix}")
    crm, mailing = make_engine(crm_url), make_engine(mailing_url)
    now = dt.datetime.now(dt.UTC)
    seed_crm(crm, now)
    seed_mailing(mailing, now)
    return crm_url, mailing_url, ledger_url, crm, mailing


def demo_buckets(moto_url):
    """An S3 client on the moto server, with every bucket the data map names made (versioned)."""
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name="eu-central-1", aws_access_key_id="t",
                      aws_secret_access_key="t")
    ensure_buckets(s3, POLICY, versioned=True)
    return s3


def point_airflow_at(monkeypatch, crm_url, mailing_url, ledger_url, moto_url):
    """The connections and settings the DAGs read, as the demo has them."""
    monkeypatch.setenv("AIRFLOW_CONN_CRM_DB", airflow_uri(crm_url))
    monkeypatch.setenv("AIRFLOW_CONN_MAILING_DB", airflow_uri(mailing_url))
    monkeypatch.setenv("AIRFLOW_CONN_RETENTION_LEDGER", airflow_uri(ledger_url))
    monkeypatch.setenv("AIRFLOW_CONN_OBJECTS_S3", json.dumps({
        "conn_type": "aws", "login": "t", "password": "t",
        "extra": {"endpoint_url": moto_url, "region_name": "eu-central-1"}}))
    monkeypatch.setenv("RETENTION_POLICY_PATH", str(ROOT / "config" / "policy.yaml"))
    # explicit, as for the demo: no identity check (tests of the check set their own), and a recipient whose
    # channel has no connection is recorded, not sent (tests of notices configure theirs; the default is strict)
    monkeypatch.setenv("RETENTION_VERIFY_IDENTITY", "none")
    monkeypatch.setenv("RETENTION_NOTIFY_RECORD_ONLY", "1")


@pytest.fixture
def world(airflow_db, fresh_database, moto_url, monkeypatch):
    crm_url, mailing_url, ledger_url, crm, mailing = demo_databases(fresh_database, "rt")
    ids = add_subject(crm, mailing, SUBJECT)
    s3 = demo_buckets(moto_url)
    keys = put_objects(s3, crm)
    point_airflow_at(monkeypatch, crm_url, mailing_url, ledger_url, moto_url)
    ledger = Ledger(make_engine(ledger_url), SECRET)
    yield {"crm": crm, "mailing": mailing, "s3": s3, "keys": keys, "ids": ids, "ledger": ledger,
           "registry": Registry(ledger.engine, SECRET), "mailing_url": mailing_url}
    for engine in (crm, mailing, ledger.engine):
        engine.dispose()


def subject_rows(world):
    counts = {}
    with world["crm"].connect() as conn:
        for t in (schema.contacts, schema.inquiries, schema.applicants, schema.support_tickets, schema.leads):
            counts[t.name] = conn.execute(sa.select(sa.func.count()).select_from(t).where(
                sa.func.lower(t.c.email) == SUBJECT_LC)).scalar()
    with world["mailing"].connect() as conn:
        counts["subscribers"] = conn.execute(sa.select(sa.func.count()).select_from(schema.subscribers).where(
            sa.func.lower(schema.subscribers.c.email) == SUBJECT_LC)).scalar()
        for t in (schema.list_memberships, schema.campaign_events):
            counts[t.name] = conn.execute(sa.select(sa.func.count()).select_from(t).where(
                t.c.subscriber_id == world["ids"]["subscriber"])).scalar()
    return counts


def subject_keys(world):
    ids = world["ids"]
    return {f"inquiries/{ids['inquiry']}/file.pdf", f"cvs/{ids['applicant']}/cv.pdf"}


def all_keys(world):
    return {k for b in world["keys"] for k in object_keys(world["s3"], b)}


def airflow_text_containing(needle: str) -> list[str]:
    """Where in Airflow's metadata DB and task logs ``needle`` appears (case-insensitive)."""
    from airflow.utils.session import create_session

    found = []
    with create_session() as session:
        for table in ("xcom", "rendered_task_instance_fields", "task_instance"):
            for row in session.execute(sa.text(f"SELECT * FROM {table}")):
                if needle in repr(tuple(row)).lower():
                    found.append(table)
    for path in Path(os.environ["AIRFLOW_HOME"], "logs").rglob("*"):
        if path.is_file() and needle in path.read_text(errors="ignore").lower():
            found.append(str(path))
    return found


def test_erase_everywhere_then_suppressed_and_replayable(world):
    assert s3_targets(), "the default policy must reference S3 objects from CRM rows"
    before_others = snapshot(world["crm"], world["mailing"], world["ids"])
    keys_before = all_keys(world)
    assert subject_keys(world) <= keys_before

    run = run_dag(DAG_ID, {"email": SUBJECT, "mode": "erase", "request_ref": "TICKET-1"})
    states = task_states(run)
    assert run.state == "success", states
    assert states["system.verify"] == ["success"] * 3  # crm, mailing, reporting

    assert set(subject_rows(world).values()) == {0}
    assert snapshot(world["crm"], world["mailing"], world["ids"]) == before_others
    assert all_keys(world) == keys_before - subject_keys(world)  # every version of the subject's objects

    registry, ledger = world["registry"], world["ledger"]
    request_id = registry.request_id_for("erasure_request", run.run_id)
    assert registry.get(request_id)["status"] == "complete"
    receipt = registry.receipt(request_id)
    assert receipt["status"] == "complete" and set(receipt["systems"]) == {"crm", "mailing", "reporting"}
    assert receipt["systems"]["crm"]["collections"]["crm.applicants"] == {"deleted": 1}
    assert sum(receipt["systems"]["crm"]["removed_along"].values()) >= 2  # the two objects at least
    entries = [r for r in ledger.rows() if r["request_id"] == request_id]
    assert sorted((r["system"], r["outcome"]) for r in entries) == [("crm", "verified"), ("mailing", "verified"),
                                                                       ("reporting", "verified")]
    assert ledger.verify().ok

    # no plaintext identity in the ledger, the registry, the receipt, XCom or task logs
    with ledger.engine.connect() as conn:
        stored = repr(conn.execute(sa.select(requests_table)).all()) + repr(list(ledger.rows()))
    assert SUBJECT_LC not in stored.lower() and "ticket-1" not in stored.lower()
    assert SUBJECT_LC not in json.dumps(receipt).lower()
    assert airflow_text_containing(SUBJECT_LC) == []

    # suppression: the address cannot come back through the sign-up form ...
    with pytest.raises(Suppressed):
        guard_subscribe(registry, SUBJECT)
    # ... and a restored backup gets the person removed again by replay
    again = add_subject(world["crm"], world["mailing"], SUBJECT)
    world["ids"] = again
    assert subject_rows(world)["subscribers"] == 1
    from include.retention import cli

    assert cli.main(["replay", "--system", "mailing"]) == 0
    assert cli.main(["replay", "--system", "crm"]) == 0
    assert set(subject_rows(world).values()) == {0}


def test_restrict_locks_and_dry_run_changes_nothing(world):
    everything = snapshot(world["crm"], world["mailing"], {"contact": -1, "subscriber": -1})
    keys = all_keys(world)
    dry = run_dag(DAG_ID, {"email": SUBJECT, "mode": "erase", "dry_run": True})
    assert dry.state == "success"
    assert snapshot(world["crm"], world["mailing"], {"contact": -1, "subscriber": -1}) == everything
    assert all_keys(world) == keys
    rid = world["registry"].request_id_for("erasure_request", dry.run_id)
    assert world["registry"].receipt(rid)["verification"].startswith("dry run")
    assert not world["registry"].suppression.contains("email", SUBJECT)

    run = run_dag(DAG_ID, {"phone": "+48 500-600-700", "mode": "restrict"})
    assert run.state == "success", task_states(run)
    with world["crm"].connect() as conn:
        contact = conn.execute(sa.select(schema.contacts).where(schema.contacts.c.id == world["ids"]["contact"])).one()
    assert contact.restricted_at is not None and contact.restriction_reason.startswith("restriction:")
    assert subject_rows(world)["contacts"] == 1 and all_keys(world) == keys  # nothing deleted


def test_failing_system_recovers_on_retry_without_double_entries(world, monkeypatch):
    proxy = FlakyProxy(3306, fail=1)
    monkeypatch.setenv("AIRFLOW_CONN_MAILING_DB", airflow_uri(world["mailing_url"], port=proxy.port))
    run = run_dag(DAG_ID, {"email": SUBJECT})
    assert run.state == "success", task_states(run)
    assert proxy.refused == 1
    rid = world["registry"].request_id_for("erasure_request", run.run_id)
    assert world["registry"].get(rid)["status"] == "complete"
    entries = [r for r in world["ledger"].rows() if r["request_id"] == rid]
    assert sorted(r["system"] for r in entries) == ["crm", "mailing", "reporting"]
    assert set(subject_rows(world).values()) == {0}

    # Re-running the same request: nothing fails because the data is gone, nothing counted twice.
    from include.retention.airflow import erasure_tasks

    erasure_tasks.act([rid], "mailing")
    erasure_tasks.verify([rid], "mailing")
    erasure_tasks.record([rid], "mailing", "erasure_request", run.run_id)
    assert len([r for r in world["ledger"].rows() if r["request_id"] == rid]) == 3
    proxy.close()


def test_malformed_request_is_refused_before_anything_runs(world):
    before = snapshot(world["crm"], world["mailing"], {"contact": -1, "subscriber": -1})
    run = run_dag(DAG_ID, {"mode": "erase"})  # no identity at all
    states = task_states(run)
    assert run.state == "failed" and states["register"] == ["failed"]
    assert snapshot(world["crm"], world["mailing"], {"contact": -1, "subscriber": -1}) == before
