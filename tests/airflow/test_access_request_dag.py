"""access_request through Airflow's runtime (dag.test) on PostgreSQL (CRM), MariaDB (mailing list) and S3
(moto's server over HTTP): the package holds exactly the subject's rows and objects; the identity check
proceeds on approval and closes the request, changing nothing, on rejection."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import subprocess
import sys
import unicodedata
import urllib.request
import zipfile

import pytest
import sqlalchemy as sa

from include.retention.demo import schema
from include.retention.policy import load_policy
from include.retention.requests.access import cell
from tests.airflow.conftest import RESPONDER, run_dag, task_states
from tests.airflow.test_erasure_request_dag import (  # noqa: F401 - the world fixture and its helpers
    SUBJECT,
    SUBJECT_LC,
    add_subject,
    airflow_text_containing,
    all_keys,
    snapshot,
    world,
)
from tests.conftest import ROOT

pytestmark = [pytest.mark.airflow, pytest.mark.integration]
DAG_ID = "access_request"
LOOKALIKE = "Erase.Mé@Example.org"  # one accent away: another person (ADR 0005)
CV_BYTES = bytes(range(256)) * 40 + b"\x00end"  # binary, with NULs: copied byte for byte
POLICY = load_policy(ROOT / "config" / "policy.yaml")
EXPORTS = POLICY.collection(POLICY.exports)


@pytest.fixture
def access_world(world, monkeypatch):  # noqa: F811 - pytest fixture chaining
    s3 = world["s3"]  # every bucket of the data map, the access packages' too
    assert EXPORTS.bucket in {b["Name"] for b in s3.list_buckets()["Buckets"]}
    world["lookalike"] = add_subject(world["crm"], world["mailing"], LOOKALIKE)
    cv = f"cvs/{world['ids']['applicant']}/cv.pdf"
    s3.put_object(Bucket=POLICY.collection("objects.cvs").bucket, Key=cv, Body=CV_BYTES)
    world["cv_key"] = cv
    monkeypatch.setenv("RETENTION_VERIFY_IDENTITY", "none")
    return world


def expected_rows(world) -> dict[str, list[dict]]:
    """The subject's rows, by direct query (every row, compared in Python: no collation decides who is who):
    by address, through their contact or through their subscription."""
    from include.retention.identity import normalise

    ids = world["ids"]
    out: dict[str, list[dict]] = {}
    for system, engine in (("crm", world["crm"]), ("mailing", world["mailing"])):
        with engine.connect() as conn:
            for name, coll in POLICY.systems[system].collections.items():
                t = sa.Table(coll.table, sa.MetaData(), autoload_with=conn)  # the database's own types
                rows = []
                for r in conn.execute(sa.select(*(t.c[c] for c in coll.columns)).order_by(t.c.id)):
                    m = dict(r._mapping)
                    mine = any(m[c] is not None and normalise(kind, m[c]) == normalise(kind, SUBJECT)
                               for kind, c in coll.identity_columns())
                    mine |= m.get("contact_id") == ids["contact"] and system == "crm"
                    mine |= m.get("subscriber_id") == ids["subscriber"] and system == "mailing"
                    if mine:
                        rows.append(m)
                out[f"{system}.{name}"] = rows
    return {ref: rows for ref, rows in out.items() if rows}


def package_of(world, receipt) -> zipfile.ZipFile:
    package = receipt["package"]
    body = world["s3"].get_object(Bucket=package["bucket"], Key=package["key"])["Body"].read()
    import hashlib

    assert hashlib.sha256(body).hexdigest() == package["sha256"] and len(body) == package["size"]
    with urllib.request.urlopen(package["link"]) as resp:  # the presigned link serves the same bytes
        assert resp.read() == body
    return zipfile.ZipFile(io.BytesIO(body))


def test_access_package_holds_exactly_the_subject(access_world):
    world = access_world
    before = snapshot(world["crm"], world["mailing"], {"contact": -1, "subscriber": -1})
    keys = all_keys(world)
    run = run_dag(DAG_ID, {"email": SUBJECT, "mode": "access", "request_ref": "TICKET-7"})
    states = task_states(run)
    assert run.state == "success", states
    assert states["verify_identity"] == ["skipped"]  # RETENTION_VERIFY_IDENTITY=none
    registry = world["registry"]
    rid = registry.request_id_for(DAG_ID, run.run_id)
    assert registry.get(rid)["status"] == "complete"
    receipt = registry.receipt(rid)
    assert receipt["mode"] == "access" and set(receipt["systems"]) == {"crm", "mailing", "reporting"}

    zf = package_of(world, receipt)
    names = set(zf.namelist())
    expected = expected_rows(world)
    for ref, rows in expected.items():
        coll = POLICY.collection(ref)
        want = [{c: cell(r[c]) for c in coll.columns} for r in rows]
        assert json.loads(zf.read(f"data/{ref}.json")) == want, ref
        got_csv = list(csv.DictReader(io.StringIO(zf.read(f"data/{ref}.csv").decode())))
        assert list(got_csv[0]) == coll.columns
        assert got_csv == [{c: "" if v is None else str(v) for c, v in r.items()} for r in want], ref
    data_files = {n for n in names if n.startswith("data/")}
    assert data_files == {f"data/{ref}.{s}" for ref in expected for s in ("csv", "json")}
    assert zf.read(f"objects/objects.cvs/{world['cv_key']}") == CV_BYTES
    assert f"objects/objects.inquiry_attachments/inquiries/{world['ids']['inquiry']}/file.pdf" in names

    # the lookalike's rows and objects are absent
    everything = b"".join(zf.read(n) for n in names)
    assert LOOKALIKE.lower().encode() not in everything.lower()
    assert f"cvs/{world['lookalike']['applicant']}/".encode() not in everything

    manifest = json.loads(zf.read("manifest.json"))
    searched = {ref for s in manifest["systems"].values() for ref, c in s["collections"].items()
                if c["identities_searched"]}
    assert searched == {f"{s}.{c}" for s, system in POLICY.systems.items()
                        for c, coll in system.collections.items() if coll.identities}
    assert set(manifest["systems"]) == {"crm", "mailing", "reporting"}
    for ref in expected:
        for cat in POLICY.collection(ref).categories:
            entry = manifest["categories"][cat]
            assert entry["purpose"] and entry["recipients"] and entry["collections"][ref]["storage"], cat
    readme = zf.read("README.md").decode()
    assert "## Categories of data" in readme and "purpose:" in readme and "recipients:" in readme

    # nothing changed; nothing of the content in Airflow's metadata, logs, the ledger or the receipt
    assert snapshot(world["crm"], world["mailing"], {"contact": -1, "subscriber": -1}) == before
    assert all_keys(world) == keys
    assert airflow_text_containing(SUBJECT_LC) == []
    assert airflow_text_containing("erase me") == []  # full_name of the subject's rows
    stored = repr(list(world["ledger"].rows())) + json.dumps(receipt)
    assert SUBJECT_LC not in stored.lower() and "erase me" not in stored.lower()


def test_portable_format_is_json_per_collection_and_one_flat_csv(access_world):
    run = run_dag(DAG_ID, {"email": SUBJECT, "mode": "access", "format": "portable"})
    assert run.state == "success", task_states(run)
    rid = access_world["registry"].request_id_for(DAG_ID, run.run_id)
    zf = package_of(access_world, access_world["registry"].receipt(rid))
    names = set(zf.namelist())
    assert not {n for n in names if n.endswith(".csv") and n != "data.csv"}
    flat = list(csv.DictReader(io.StringIO(zf.read("data.csv").decode())))
    assert list(flat[0]) == ["collection", "record", "field", "value"]
    contacts = json.loads(zf.read("data/crm.contacts.json"))
    got = {r["field"]: r["value"] for r in flat if r["collection"] == "crm.contacts" and r["record"] == "0"}
    assert got["email"] == contacts[0]["email"] and got["id"] == str(contacts[0]["id"])


def test_exports_rule_deletes_the_package_after_its_period(access_world):
    from include.retention.runtime import Runtime
    from include.retention.stores.base import Store

    run = run_dag(DAG_ID, {"email": SUBJECT, "mode": "access"})
    assert run.state == "success", task_states(run)
    rid = access_world["registry"].request_id_for(DAG_ID, run.run_id)
    key = access_world["registry"].receipt(rid)["package"]["key"]
    _, _, rule = POLICY.rule(f"{POLICY.exports}.access_packages")
    assert [(s.action, s.after) for s in rule.stages] == [("delete", "P30D")]
    runtime = Runtime(POLICY)
    store: Store = runtime.store(POLICY.exports.partition(".")[0])
    name = POLICY.exports.partition(".")[2]
    now = dt.datetime.now(dt.UTC)
    assert store.plan(name, rule, now).eligible.get("delete", 0) == 0  # a fresh package stays
    later = now + dt.timedelta(days=31)
    assert store.plan(name, rule, later).eligible["delete"] >= 1
    store.apply_stage(name, rule, rule.stages[0], later, 100, "retention:test", lambda *a, **k: None)
    left = access_world["s3"].list_objects_v2(Bucket=EXPORTS.bucket, Prefix=key).get("KeyCount", 0)
    assert left == 0
    runtime.close()


def answer(dag_id: str, task_id: str, option: str, reason: str):
    """answer_approval with a reason in the form (params_input)."""
    script = RESPONDER.replace("detail.params_input = {}", f"detail.params_input = {{'reason': {reason!r}}}")
    return subprocess.Popen([sys.executable, "-c", script, dag_id, task_id, option, "120"],
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_identity_check_approve_proceeds(access_world, monkeypatch):
    monkeypatch.setenv("RETENTION_VERIFY_IDENTITY", "access,rectify,erase")
    responder = answer(DAG_ID, "verify_identity", "Approve", "reply from the registered address")
    run = run_dag(DAG_ID, {"email": SUBJECT, "mode": "access"})
    assert responder.wait(timeout=180) == 0
    states = task_states(run)
    assert run.state == "success", states
    assert states["verify_identity"] == ["success"] and states["act"] == ["success"]
    registry = access_world["registry"]
    rid = registry.request_id_for(DAG_ID, run.run_id)
    assert registry.get(rid)["status"] == "complete"
    assert registry.details(rid)["identity_check"]["decision"] == "approved"
    assert registry.receipt(rid)["package"]["sha256"]


@pytest.mark.parametrize("conf", [{"mode": "rectify", "new_email": "new.me@example.org"}, {"mode": "withdraw"}],
                         ids=["rectify", "withdraw"])
def test_identity_check_reject_changes_nothing_and_closes_with_the_reason(access_world, monkeypatch, conf):
    monkeypatch.delenv("RETENTION_VERIFY_IDENTITY")  # the default checks every type: withdraw too (consents change)
    world = access_world
    before = snapshot(world["crm"], world["mailing"], {"contact": -1, "subscriber": -1})
    responder = answer(DAG_ID, "verify_identity", "Reject", "no reply from the registered address")
    run = run_dag(DAG_ID, {"email": SUBJECT, **conf})
    assert responder.wait(timeout=180) == 0
    states = task_states(run)
    assert states["act"] == ["skipped"] and states["finalize"] == ["success"], states
    registry = world["registry"]
    rid = registry.request_id_for(DAG_ID, run.run_id)
    assert registry.get(rid)["status"] == "rejected"
    assert registry.details(rid)["identity_check"] == {"decision": "rejected", "by": "dpo",
                                                       "reason": "no reply from the registered address"}
    receipt = registry.receipt(rid)
    assert receipt["identity_check"] == {"decision": "rejected", "reason_recorded": True}
    assert receipt["verification"].startswith("identity not verified")
    assert snapshot(world["crm"], world["mailing"], {"contact": -1, "subscriber": -1}) == before
    assert [r["outcome"] for r in world["ledger"].rows() if r["request_id"] == rid] == ["rejected"]


def test_rectify_and_withdraw_through_the_dag(access_world):
    world = access_world
    run = run_dag(DAG_ID, {"email": SUBJECT, "mode": "rectify", "new_email": "New.Me@Example.org"})
    assert run.state == "success", task_states(run)
    registry = world["registry"]
    rid = registry.request_id_for(DAG_ID, run.run_id)
    receipt = registry.receipt(rid)
    assert receipt["status"] == "complete" and set(receipt["systems"]) == {"crm", "mailing", "reporting"}
    assert receipt["systems"]["crm"]["collections"]["crm.contacts"] == {"rectified": 1}
    with world["crm"].connect() as conn:
        assert conn.execute(sa.select(schema.contacts.c.email).where(
            schema.contacts.c.id == world["ids"]["contact"])).scalar() == "New.Me@Example.org"
    with registry.engine.connect() as conn:  # the new value only encrypted
        assert "new.me" not in repr(conn.execute(sa.text("SELECT * FROM request_details")).all()).lower()
    assert registry.details(rid)["new_values"] == {"email": "New.Me@Example.org"}

    run = run_dag(DAG_ID, {"email": "new.me@example.org", "mode": "withdraw"})
    assert run.state == "success", task_states(run)
    rid = registry.request_id_for(DAG_ID, run.run_id)
    counts = registry.receipt(rid)["systems"]["mailing"]["collections"]["mailing.subscribers"]
    assert counts == {"withdrawn:newsletter": 1}
    with world["mailing"].connect() as conn:
        assert conn.execute(sa.select(schema.subscribers.c.unsubscribed_at).where(
            schema.subscribers.c.id == world["ids"]["subscriber"])).scalar() is not None


def test_rectify_to_another_persons_address_is_refused_through_the_dag(access_world):
    """The lookalike's address in capitals and decomposed accents is that person's: act fails before any change,
    each system records the refusal naming the kind, never the value, and the request stays open."""
    world = access_world

    def everything():
        out = {}
        for engine, md in ((world["crm"], schema.crm_metadata), (world["mailing"], schema.mailing_metadata)):
            with engine.connect() as conn:
                for t in md.sorted_tables:
                    out[t.name] = [tuple(r) for r in conn.execute(sa.select(t).order_by(*t.primary_key.columns))]
        return out

    before = everything()
    variant = unicodedata.normalize("NFD", LOOKALIKE.upper())
    run = run_dag(DAG_ID, {"email": SUBJECT, "mode": "rectify", "new_email": variant})
    states = task_states(run)
    assert states["act"] == ["failed"], states
    assert everything() == before
    registry = world["registry"]
    rid = registry.request_id_for(DAG_ID, run.run_id)
    assert registry.get(rid)["status"] != "complete"
    errors = {name: state["error"] for name, state in registry.systems.of(rid).items()}
    assert set(errors) == {"crm", "mailing", "reporting"}
    assert all(e.startswith("rectify refused: the new email is already an identity of") for e in errors.values())
    assert not [e for e in errors.values() if "example" in e.lower()]
    assert not [r for r in world["ledger"].rows() if r["request_id"] == rid and r["outcome"] == "done"]
    for needle in (variant.lower(), unicodedata.normalize("NFC", variant).lower()):
        assert not airflow_text_containing(needle)
