"""Leak scan: erasure_request through Airflow's runtime for a person with unique, greppable identity values
(e-mail, phone, social-media handle), then the purge the product runs after a request run
(``purge_cli --runs-from-env``, as ``erasure_run_purge`` does), then every place written is read back:
every table of Airflow's metadata DB, every file under AIRFLOW_HOME (task logs, the SQLite metadata DB and
its WAL / journal files, byte for byte), every table of the ledger / registry database (receipts and the
suppression list included), every table of the CRM and mailing databases, and every version of every
object in every bucket (key, user metadata, tags, body). No identity value may appear anywhere, in any
case, percent-encoded or JSON-escaped.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import urllib.parse
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from include.retention.demo import schema
from include.retention.identity import normalise
from include.retention.ledger import Ledger
from include.retention.registry import Registry
from include.retention.stores.sql import make_engine
from tests.airflow import test_erasure_request_dag as demo
from tests.airflow.conftest import run_dag, task_states
from tests.conftest import ROOT

pytestmark = [pytest.mark.airflow, pytest.mark.integration]
DAG_ID = "erasure_request"
SECRET = os.environ["RETENTION_HMAC_KEY"].encode()


def identity() -> dict[str, str]:
    """Values no other test, seed row or source file contains (built at run time)."""
    token = uuid.uuid4().hex[:12]
    digits = "".join(random.choice("0123456789") for _ in range(8))
    return {"email": f"Leak.{token}@Example.org", "phone": f"+48 7{digits[:2]} {digits[2:5]} {digits[5:]}",
            "social_handle": f"@Leak_{token[::-1]}"}


def needles(values: dict[str, str]) -> dict[str, set[str]]:
    """Per identity kind, every form a copy of the value could take, lower-case: as given, normalised, the
    phone's digits alone, percent-encoded (quote, quote_plus) and JSON-escaped."""
    out: dict[str, set[str]] = {}
    for kind, value in values.items():
        forms = {value, normalise(kind, value) or value}
        if kind == "phone":
            forms.add("".join(ch for ch in value if ch.isdigit()))
        if kind == "social_handle":
            forms.add(value.lstrip("@"))
        for form in list(forms):
            forms |= {urllib.parse.quote(form, safe=""), urllib.parse.quote_plus(form), json.dumps(form)[1:-1],
                      json.dumps(form, ensure_ascii=True)[1:-1]}
        out[kind] = {f.lower() for f in forms}
    return out


class Scan:
    """Places scanned and hits, per category."""

    def __init__(self, values: dict[str, str]):
        self.needles = needles(values)
        self.places: dict[str, int] = {}
        self.hits: list[tuple[str, str, str]] = []  # (category, place, identity kind)

    def text(self, category: str, place: str, data: str | bytes) -> None:
        if isinstance(data, bytes):
            data = data.decode("utf-8", errors="replace") + "\n" + data.decode("utf-16-le", errors="ignore")
        low = data.lower()
        self.places[category] = self.places.get(category, 0) + 1
        for kind, forms in self.needles.items():
            if any(f in low for f in forms):
                self.hits.append((category, place, kind))

    def database(self, category: str, engine: sa.Engine) -> list[str]:
        """Every table of the database, every row, every column, as text."""
        tables = sa.inspect(engine).get_table_names()
        with engine.connect() as conn:
            for table in tables:
                t = sa.Table(table, sa.MetaData(), autoload_with=conn)
                rows = conn.execute(sa.select(t)).all()
                self.text(category, f"{engine.url.database}.{table}",
                          "\n".join(repr(tuple(r)) + " " + " ".join(
                              v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in r)
                              for r in rows))
        return tables

    def files(self, category: str, root: Path, pattern: str = "*") -> None:
        for path in sorted(root.rglob(pattern)):
            if path.is_file():
                self.text(category, str(path), path.read_bytes())

    def buckets(self, s3) -> None:
        for bucket in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
            for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
                for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
                    place = f"s3://{bucket}/{v['Key']}?versionId={v['VersionId']}"
                    data = v["Key"]
                    if "Size" in v:  # an object version, not a delete marker
                        obj = s3.get_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])
                        tags = s3.get_object_tagging(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])
                        data += json.dumps(obj.get("Metadata", {})) + json.dumps(tags.get("TagSet", []))
                        data += obj["Body"].read().decode("utf-8", "replace")
                    self.text("S3 object versions (key, metadata, tags, body)", place, data)


def add_person(crm, mailing, who: dict[str, str]) -> dict[str, int]:
    email, phone, handle = who["email"], who["phone"], who["social_handle"]
    ids = demo.add_subject(crm, mailing, email, phone=phone, name="Leak Scan", message=f"call me on {phone}")
    with crm.begin() as conn:
        conn.execute(schema.social_messages.insert().values(handle=handle, body=f"I am {email}", answered_at=None))
    return ids


@pytest.fixture
def world(airflow_db, fresh_database, moto_url, monkeypatch):
    crm_url, mailing_url, ledger_url, crm, mailing = demo.demo_databases(fresh_database, "rt_leak")
    who = identity()
    ids = add_person(crm, mailing, who)
    s3 = demo.demo_buckets(moto_url)
    demo.put_objects(s3, crm)  # every object a CRM row references, two versions each (everybody else's stay)
    # the person's CV and attachment hold their identities in body, metadata and tags, in two versions each
    targets = {"inquiry_attachments": f"inquiries/{ids['inquiry']}/file.pdf",
               "cvs": f"cvs/{ids['applicant']}/cv.pdf"}
    buckets = {"inquiry_attachments": "crm-attachments", "cvs": "crm-cvs"}
    assert set(buckets.values()) <= set(demo.s3_targets().values())
    for name, key in targets.items():
        for version in ("v1", "v2"):
            s3.put_object(Bucket=buckets[name], Key=key,
                          Body=f"{version}: {who['email']} {who['phone']} {who['social_handle']}".encode(),
                          Metadata={"owner": who["email"]},
                          Tagging=urllib.parse.urlencode({"phone": who["phone"]}))
    demo.point_airflow_at(monkeypatch, crm_url, mailing_url, ledger_url, moto_url)
    ledger = Ledger(make_engine(ledger_url), SECRET)
    yield {"crm": crm, "mailing": mailing, "s3": s3, "ledger": ledger, "who": who,
           "registry": Registry(ledger.engine, SECRET)}
    for engine in (crm, mailing, ledger.engine):
        engine.dispose()


def purge_after_run(run_id: str) -> dict:
    """The command erasure_run_purge runs for the run that emitted ERASURE_RUN_DONE (dags/metadata_purge.py)."""
    from airflow.configuration import conf

    env = {**os.environ, "PYTHONPATH": str(ROOT), "RETENTION_PURGE_RUNS": json.dumps([[DAG_ID, run_id]]),
           "RETENTION_METADATA_DB_CONN": conf.get("database", "sql_alchemy_conn")}
    proc = subprocess.run([sys.executable, "-m", "include.retention.airflow.purge_cli", "--runs-from-env",
                           "--wait", "60"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_no_identity_left_anywhere_after_the_run_and_its_purge(world, capfd, caplog):
    who = world["who"]
    scan = Scan(who)

    # the scan finds the person before the run (every identity kind, in every kind of place it should look)
    probe = Scan(who)
    probe.database("stores", world["crm"])
    probe.database("stores", world["mailing"])
    probe.buckets(world["s3"])
    assert {kind for *_, kind in probe.hits} == {"email", "phone", "social_handle"}
    assert {cat for cat, *_ in probe.hits} == {"stores", "S3 object versions (key, metadata, tags, body)"}

    capfd.readouterr()
    # one person per request (ADR 0018): the social-media message carries only the handle, which no record ties to
    # the e-mail, so the handle is a request of its own (asked together, the request would wait for a person)
    run = run_dag(DAG_ID, {"email": who["email"], "phone": who["phone"], "mode": "erase"})
    handle_run = run_dag(DAG_ID, {"social_handle": who["social_handle"], "mode": "erase"})
    # dag.test() runs the tasks in this process and prints their logs instead of writing log files
    output = capfd.readouterr()
    assert "register" in output.out + output.err
    scan.text("task log output of the run (console; dag.test writes no log files)", "stdout",
              output.out + output.err + "\n".join(r.getMessage() for r in caplog.records))
    for one in (run, handle_run):
        assert one.state == "success", task_states(one)
        rid = world["registry"].request_id_for(DAG_ID, one.run_id)
        assert world["registry"].get(rid)["status"] == "complete"
        assert world["registry"].receipt(rid)["status"] == "complete"
    assert world["registry"].suppression.contains("email", who["email"])  # the digest is on the suppression list

    # the audit row an operator's `airflow dags trigger -c '{...}'` writes (the CLI's action logger), conf and all
    from airflow.utils.cli_action_loggers import default_action_log

    default_action_log(sub_command="dag_trigger", user="ops", task_id=None, dag_id=DAG_ID, logical_date=None,
                       host_name="ops-host", full_command=str(["airflow", "dags", "trigger", DAG_ID, "-c",
                                                               json.dumps(who)]))
    from airflow.settings import engine as metadata_engine

    audit = Scan(who)
    audit.database("Airflow metadata DB tables", metadata_engine)
    assert {place.rsplit(".", 1)[-1] for _, place, _ in audit.hits} >= {"log", "dag_run"}

    report = purge_after_run(run.run_id)
    assert report["rows"].get("dag_run") == 1, report
    assert purge_after_run(handle_run.run_id)["rows"].get("dag_run") == 1

    # 1. Airflow's metadata DB, table by table
    airflow_tables = scan.database("Airflow metadata DB tables", metadata_engine)
    assert {"log", "dag_run", "xcom", "rendered_task_instance_fields", "task_instance"} <= set(airflow_tables)
    # 2. every file under AIRFLOW_HOME: task logs, and the SQLite metadata DB with its WAL / journal, raw bytes
    home = Path(os.environ["AIRFLOW_HOME"])
    scan.files("task log files", home / "logs")  # none with dag.test(); scanned all the same
    for path in sorted(home.iterdir()):
        if path.is_file():
            scan.text("other files in AIRFLOW_HOME (metadata DB file, -wal, -journal, -shm, airflow.cfg)",
                      str(path), path.read_bytes())
    # 3. ledger and registry (requests, systems, recipients, receipts, suppression list)
    ledger_tables = scan.database("ledger / registry DB tables", world["ledger"].engine)
    assert {"ledger_entries", "subject_requests", "request_systems", "request_receipts", "suppression_list",
            "request_details"} <= set(ledger_tables)
    # 4. the stores
    scan.database("CRM and mailing DB tables", world["crm"])
    scan.database("CRM and mailing DB tables", world["mailing"])
    # 5. S3: every bucket, every version and delete marker
    scan.buckets(world["s3"])

    table = "\n".join(f"| {cat} | {n} | {sum(1 for c, *_ in scan.hits if c == cat)} |"
                      for cat, n in scan.places.items())
    print(f"\nplaces scanned / hits\n{table}\n| total | {sum(scan.places.values())} | {len(scan.hits)} |")
    assert scan.hits == []
    assert sum(scan.places.values()) >= 50
