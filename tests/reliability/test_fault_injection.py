"""Faults injected into real runs: the store connection killed inside a batch (PostgreSQL
``pg_terminate_backend``, MariaDB ``KILL``), S3 answering 503 SlowDown / 500 InternalError for a while
(a small HTTP proxy in front of moto's server), the sweep process SIGKILLed between its batches.

After the retry or rerun every test asserts that the store is exact and that the ledger accounts for
every change: the settled counts (``done``) plus the reconciled intents equal what really went, no gap
and no double count, and ``verify`` reports the intent a fault left open until ``reconcile`` settles it.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
import sqlalchemy as sa

from include.retention.connections import ConnInfo, make_engine
from include.retention.ledger import Ledger, RunRef
from include.retention.policy import parse_policy
from include.retention.stores.s3 import S3Store
from include.retention.stores.sql import SqlStore
from include.retention.sweep import run_rule
from tests.conftest import KEY, MY_ADMIN, PG_ADMIN, ROOT
from tests.policy_text import crm_policy, policy_text, system

pytestmark = pytest.mark.integration

NOW = dt.datetime(2026, 11, 1)
ROWS = 30
md = sa.MetaData()
people = sa.Table("people", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                  sa.Column("email", sa.String(254)), sa.Column("legal_hold", sa.Boolean, nullable=False),
                  sa.Column("created_at", sa.DateTime))
notes = sa.Table("notes", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                 sa.Column("person_id", sa.Integer), sa.Column("body", sa.String(50)))

_DEFAULTS = "{max_fraction: 1.0, batch_size: 10}"
_PEOPLE = """\
          people:
            table: people
            primary_key: id
            columns: [id, email, legal_hold, created_at]
            identities: {email: email}
            legal_hold: [{column: legal_hold, equals: true}]
            rules:
              - {name: old, start: created_at, action: delete, period: P1D}
"""
_NOTES = """\
          notes:
            table: notes
            primary_key: id
            columns: [id, person_id, body]
            references: [{to: crm.people, column: person_id, on_delete: delete}]
"""
# cascade: the delete takes the notes along (rows locked, keyset walk, intent before the statements);
# plain: one statement per batch (PostgreSQL heap blocks, MariaDB DELETE ... ORDER BY ... LIMIT ... RETURNING)
POLICY_TEXT = {"cascade": crm_policy(_PEOPLE + _NOTES, defaults=_DEFAULTS),
               "plain": crm_policy(_PEOPLE, defaults=_DEFAULTS)}
POLICIES = {name: parse_policy(text, source=f"faults-{name}.yaml") for name, text in POLICY_TEXT.items()}
RULE = "crm.people.old"


def arrange(engine: sa.Engine, rows: int = ROWS) -> None:
    md.drop_all(engine)
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(people.insert(), [{"id": i, "email": f"p{i}@example.org", "legal_hold": False,
                                        "created_at": NOW - dt.timedelta(days=5)} for i in range(1, rows + 1)])
        conn.execute(notes.insert(), [{"id": i, "person_id": i, "body": "n"} for i in range(1, rows + 1)])


def count(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()


def settled(ledger: Ledger, action: str = "delete") -> int:
    """Rows the ledger says went: settled outcomes (done) and reconciled intents."""
    return sum(r["count"] for r in ledger.rows() if r["action"] == action and r["outcome"] in ("done", "reconciled"))


def reconciled(ledger: Ledger) -> list[dict[str, Any]]:
    """The entries a run wrote for intents a stopped run left open (include/retention/intents.py)."""
    return [r for r in ledger.rows() if r["outcome"] == "reconciled"]


def cascaded_total(ledger: Ledger, child_ref: str) -> int:
    """Rows of ``child_ref`` the ledger says went along with their parents in the same database (the parent
    batches' settled outcomes, ``details.cascaded``)."""
    return sum(json.loads(r["details"] or "{}").get("cascaded", {}).get(child_ref, 0) for r in ledger.rows()
               if r["action"] == "delete" and r["outcome"] in ("done", "reconciled"))


def reconcile_all(ledger: Ledger, really_gone: int, action: str = "delete") -> list[int]:
    """What an operator does after a crash: re-count the store and settle the open intents with the difference
    between what went and what the ledger already says went. Returns the counts given to the intents."""
    gap = really_gone - settled(ledger, action)
    given = []
    for intent in ledger.open_intents(action=action):
        n = min(gap, int(intent["count"]))
        assert n >= 0
        ledger.reconcile(int(intent["seq"]), n, f"store re-counted after the fault: {n} of {intent['count']} went")
        gap -= n
        given.append(n)
    assert gap == 0, "more went than the open intents announced: a change without an entry"
    return given


# ---- (a) the store connection killed inside a batch --------------------------------------------

def _backend_id(conn: sa.Connection) -> int:
    raw = conn.connection.dbapi_connection
    return raw.get_backend_pid() if conn.dialect.name == "postgresql" else raw.thread_id()


def _kill(dialect: str, backend: int, db: str) -> None:
    """Cut a session from another connection, as an operator or a failover would, and wait until it is gone."""
    admin = sa.create_engine(PG_ADMIN if dialect == "postgresql" else MY_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if dialect == "postgresql":
            assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": backend}).scalar()
        else:
            conn.exec_driver_sql(f"KILL {int(backend)}")
            for _ in range(200):
                alive = conn.execute(sa.text("SELECT count(*) FROM information_schema.processlist WHERE id = :id "
                                             "AND command <> 'Killed'"), {"id": backend}).scalar()
                if not alive:
                    break
                time.sleep(0.05)
    admin.dispose()


class Killer:
    """Kills the sweep's own store connection right after its ``nth`` DELETE on ``people`` ran, before the batch
    commits: the statement has done its work inside the transaction, the commit can only fail."""

    def __init__(self, engine: sa.Engine, nth: int):
        self.engine, self.nth, self.seen, self.killed = engine, nth, 0, 0
        sa.event.listen(engine, "after_cursor_execute", self)

    def __call__(self, conn, _cursor, statement, *_args) -> None:
        if "DELETE FROM people" not in statement:
            return
        self.seen += 1
        if self.seen == self.nth and not self.killed:
            self.killed += 1
            _kill(conn.dialect.name, _backend_id(conn), self.engine.url.database)


@pytest.mark.parametrize("layout", ["cascade", "plain"])
@pytest.mark.parametrize("db_url", ["postgresql", "mariadb"], indirect=True)
def test_store_connection_killed_mid_batch(db_url, layout, tmp_path):
    policy = POLICIES[layout]
    engine = make_engine(db_url)
    arrange(engine)
    ledger = Ledger(make_engine(f"sqlite:///{tmp_path / 'ledger.db'}"), KEY)
    # one batch per block range on PostgreSQL (30 rows are one heap block): kill the first; else the second
    nth = 1 if (layout == "plain" and engine.dialect.name == "postgresql") else 2
    killer = Killer(engine, nth)
    store = SqlStore("crm", policy, engine, mask_key=KEY)
    with pytest.raises(sa.exc.DBAPIError):
        run_rule(policy, RULE, store, ledger, RunRef("t", "killed"), now=NOW)
    assert killer.killed == 1
    engine.dispose()

    # the killed batch rolled back: exactly the batches settled before it are gone
    check = make_engine(db_url)
    before_kill = settled(ledger)
    assert before_kill == (10 if nth == 2 else 0)
    assert count(check, people) == ROWS - before_kill
    assert count(check, notes) == (ROWS - before_kill if layout == "cascade" else ROWS)
    result = ledger.verify()
    assert result.ok and result.unreconciled_count == 1  # the batch's intent is open and reported
    (intent,) = ledger.open_intents()
    assert intent["action"] == "delete" and intent["count"] > 0

    # the retry (a new task process: a new engine) completes exactly
    rerun = SqlStore("crm", policy, make_engine(db_url), mask_key=KEY)
    counts = run_rule(policy, RULE, rerun, ledger, RunRef("t", "retry"), now=NOW)
    assert counts["deleted"] == ROWS - before_kill
    assert count(check, people) == 0
    assert count(check, notes) == (0 if layout == "cascade" else ROWS)
    assert settled(ledger) == ROWS  # no gap, no double count: the retry settled the killed batch's intent first,
    assert [(r["count"], json.loads(r["details"])["committed"]) for r in reconciled(ledger)] == [(0, False)]  # 0 rows
    final = ledger.verify()
    assert final.ok and final.unreconciled_count == 0 and settled(ledger) == ROWS
    rerun.engine.dispose()
    check.dispose()


# ---- (c) the sweep process SIGKILLed ------------------------------------------------------------

KILLED_SWEEP = """
import sys, time
import sqlalchemy as sa
from include.retention.connections import make_engine
from include.retention.ledger import Ledger, RunRef
from include.retention.stores.sql import SqlStore
from include.retention.sweep import run_rule
from tests.reliability.test_fault_injection import KEY, NOW, POLICIES, RULE

store_url, ledger_url = sys.argv[1], sys.argv[2]
engine = make_engine(store_url)
# a slow store (20 ms per statement): the parent has time to kill the process inside a batch
sa.event.listen(engine, "after_cursor_execute", lambda *a: time.sleep(0.02))
policy = POLICIES["cascade"]
run_rule(policy, RULE, SqlStore("crm", policy, engine, mask_key=KEY), Ledger(make_engine(ledger_url), KEY),
         RunRef("t", "sigkilled"), now=NOW)
"""


def test_sweep_process_sigkilled_mid_sweep(db_url, tmp_path):
    rows = 300
    engine = make_engine(db_url)
    arrange(engine, rows)
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(make_engine(ledger_url), KEY)
    ledger.ensure_schema()
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SWEEP, db_url, ledger_url], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    try:
        # after its first batch, inside a later one: one batch settled and the next one's intent written
        while time.monotonic() < deadline and proc.poll() is None:
            if settled(ledger) > 0 and ledger.open_intents():
                break
            time.sleep(0.005)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    gone_at_kill = rows - count(engine, people)
    done_at_kill = settled(ledger)
    assert 0 < done_at_kill <= gone_at_kill < rows
    open_ = ledger.open_intents()
    assert len(open_) <= 1  # at most the batch it was killed in
    assert gone_at_kill - done_at_kill <= sum(int(i["count"]) for i in open_)  # nothing went unannounced
    assert count(engine, notes) == count(engine, people)  # parents and children went together
    assert ledger.verify().ok and ledger.verify().unreconciled_count == len(open_)

    counts = run_rule(POLICIES["cascade"], RULE, SqlStore("crm", POLICIES["cascade"], engine, mask_key=KEY), ledger,
                      RunRef("t", "rerun"), now=NOW)
    assert counts["deleted"] == rows - gone_at_kill
    assert count(engine, people) == 0 and count(engine, notes) == 0
    # the rerun settled the killed run's intent itself (re-read: committed with its count, or rolled back with 0)
    final = ledger.verify()
    assert final.ok and final.unreconciled_count == 0
    assert [r["ref_seq"] for r in reconciled(ledger)] == [i["seq"] for i in open_]
    assert settled(ledger) == rows  # every row accounted for once
    assert cascaded_total(ledger, "crm.notes") == rows  # and every note that went along with them
    engine.dispose()


# ---- (b) S3 answering 503 SlowDown / 500 InternalError for a while --------------------------------

SLOWDOWN = (503, b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
                 b"<Message>Please reduce your request rate.</Message></Error>")
INTERNAL = (500, b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InternalError</Code>"
                 b"<Message>We encountered an internal error. Please try again.</Message></Error>")


class FaultyS3:
    """An HTTP proxy in front of moto's server. Requests that ``match`` are counted; from the ``start``-th one on,
    ``times`` of them are answered with an error: ``before`` (503 SlowDown, never forwarded: S3 shed the load)
    or ``after`` (forwarded, then 500 InternalError: the change happened, the answer was lost)."""

    def __init__(self, upstream: str, match, *, start: int = 1, times: int = 0, when: str = "before"):
        self.upstream = urllib.parse.urlsplit(upstream)
        self.match, self.start, self.times, self.when = match, start, times, when
        self.matched = self.failed = self.forwarded = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args):
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if not size:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self) -> None:
                body = self._body()
                fail = None
                if proxy.match(self.command, self.path):
                    with proxy.lock:
                        proxy.matched += 1
                        if proxy.matched >= proxy.start and proxy.failed < proxy.times:
                            proxy.failed += 1
                            fail = SLOWDOWN if proxy.when == "before" else INTERNAL
                if fail is not None and proxy.when == "before":
                    return self._answer(fail[0], [("Content-Type", "application/xml")], fail[1])
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                with proxy.lock:
                    proxy.forwarded += 1
                if fail is not None:  # forwarded and done; the client hears of an error
                    return self._answer(fail[0], [("Content-Type", "application/xml")], fail[1])
                return self._answer(resp.status, resp.getheaders(), data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def delete_objects(method: str, path: str) -> bool:
    """S3 DeleteObjects: ``POST /bucket?delete``."""
    return method == "POST" and "delete" in urllib.parse.parse_qs(urllib.parse.urlsplit(path).query,
                                                                  keep_blank_values=True)


PLAIN, VERSIONED = "fault-plain", "fault-versioned"
logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log


@pytest.fixture
def s3(moto_url):
    urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST")).close()
    client = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    client.create_bucket(Bucket=PLAIN)
    client.create_bucket(Bucket=VERSIONED)
    client.put_bucket_versioning(Bucket=VERSIONED, VersioningConfiguration={"Status": "Enabled"})
    return client


def s3_versions(s3, bucket: str) -> list[tuple[str, str]]:
    out = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        out += [(v["Key"], v["VersionId"]) for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
    return sorted(out)


def info(url: str) -> ConnInfo:
    return ConnInfo("aws", login="testing", password="testing", extra={"endpoint_url": url, "region_name": "us-east-1"})


def exports_policy(bucket: str):
    return parse_policy(policy_text(system("objects", "s3", "objects_s3", f"""\
              exports:
                bucket: {bucket}
                prefix: exports/
                key_template: "exports/{{yyyy}}/{{mm}}/{{dd}}/..."
                rules:
                  - {{name: expire, start: {{basis: key_date}}, action: delete, period: P12M}}
        """), defaults=_DEFAULTS), source="s3-faults.yaml")


# (fault, DeleteObjects answered with an error, runs needed): boto3's standard retry mode makes 3 attempts
S3_FAULTS = {
    "slowdown_short": dict(times=2, when="before", runs=1),  # absorbed by the client's retries
    "slowdown_long": dict(times=5, when="before", runs=2),  # outlasts them: the run fails, the retry completes
    "internal_after_delete": dict(times=1, when="after", runs=1),  # the delete happened, the answer was lost
}


@pytest.mark.parametrize("fault", sorted(S3_FAULTS))
@pytest.mark.parametrize("bucket", [PLAIN, VERSIONED])
def test_s3_sweep_survives_slowdown(s3, moto_url, tmp_path, bucket, fault):
    spec = S3_FAULTS[fault]
    expired = [f"exports/2025/0{1 + i % 5}/1{i % 9}/obj-{i}.csv" for i in range(25)]
    fresh = [f"exports/2026/0{1 + i % 5}/20/keep-{i}.csv" for i in range(5)]
    for key in expired + fresh:
        s3.put_object(Bucket=bucket, Key=key, Body=b"v1")
        if bucket == VERSIONED:
            s3.put_object(Bucket=bucket, Key=key, Body=b"v2")
    kept_versions = [v for v in s3_versions(s3, bucket) if v[0] in fresh]
    policy = exports_policy(bucket)
    ledger = Ledger(make_engine(f"sqlite:///{tmp_path / 'ledger.db'}"), KEY)
    # the second DeleteObjects and the ones after it fail: the first batch went through
    proxy = FaultyS3(moto_url, delete_objects, start=2, times=spec["times"], when=spec["when"])
    failures = 0
    try:
        for attempt in range(spec["runs"]):
            store = S3Store.from_conn("objects", policy, info(proxy.url), key=KEY)
            due = len({k for k, _ in s3_versions(s3, bucket)} & set(expired))
            try:
                deleted = run_rule(policy, "objects.exports.expire", store, ledger, RunRef("t", f"try{attempt}"),
                                    now=dt.datetime(2026, 6, 15, tzinfo=dt.UTC))["deleted"]
            except Exception as exc:  # noqa: BLE001 - the task fails and Airflow retries it
                failures += 1
                assert "SlowDown" in str(exc) or "503" in str(exc), str(exc)
                assert ledger.verify().unreconciled_count == 1  # the batch it failed in is announced, not settled
            finally:
                store.close()
    finally:
        proxy.close()
    assert proxy.failed == spec["times"]
    assert failures == spec["runs"] - 1
    left = s3_versions(s3, bucket)
    assert left == kept_versions  # every version of the expired objects gone, nothing else
    assert deleted == due  # the last run reports what was left for it (the failed run's batch is in the ledger)
    reconcile_all(ledger, len(expired))
    final = ledger.verify()
    assert final.ok and final.unreconciled_count == 0
    assert settled(ledger) == len(expired)  # the ledger counts each object that went once


@pytest.mark.parametrize("start", [1, 2], ids=["first-delete", "after-one-collection"])
def test_s3_subject_erasure_survives_slowdown(s3, moto_url, tmp_path, monkeypatch, start):
    """erasure_request's discover / act / verify / record task bodies for a subject held only in S3, with
    DeleteObjects answered 503 SlowDown longer than the client retries (from the ``start``-th one): the first
    try fails, the task's retry finishes, the verification re-scan finds nothing and the ledger entry should
    count every object that went, in both tries."""
    from include.retention.airflow import erasure_tasks
    from include.retention.registry import Identities, NewRequest, Registry

    zoe = "zoe.fault@example.org"
    bucket = VERSIONED
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(policy_text(system("objects", "s3", "objects_s3", f"""\
              by_key:
                bucket: {bucket}
                prefix: exports/
                key_template: "exports/{{email}}/..."
                identities: {{email: "key:email"}}
              by_meta:
                bucket: {bucket}
                prefix: uploads/
                identities: {{email: "metadata:uploader-email"}}
              by_tag:
                bucket: {bucket}
                prefix: tickets/
                identities: {{customer_ref: "tag:customer", email: "metadata:uploader-email"}}
        """), defaults=_DEFAULTS))
    mine = [f"exports/{zoe}/a.zip", f"exports/{zoe}/b.zip", "uploads/z.pdf", "tickets/t1.txt"]
    others = ["exports/someone@example.org/a.zip", "uploads/o.pdf", "tickets/t2.txt"]
    for key in mine + others:
        extra: dict[str, Any] = {}
        if key.startswith("uploads/"):
            extra["Metadata"] = {"uploader-email": zoe if key in mine else "someone@example.org"}
        if key.startswith("tickets/"):  # the ticket carries its customer reference and the uploader: one person
            extra["Tagging"] = "customer=C-77" if key in mine else "customer=C-78"
            extra["Metadata"] = {"uploader-email": zoe if key in mine else "someone@example.org"}
        for body in (b"v1", b"v2"):
            s3.put_object(Bucket=bucket, Key=key, Body=body, **extra)
    kept_versions = [v for v in s3_versions(s3, bucket) if v[0] in others]

    proxy = FaultyS3(moto_url, delete_objects, start=start, times=4, when="before")
    ledger_path = tmp_path / "ledger.db"
    monkeypatch.setenv("RETENTION_POLICY_PATH", str(policy_file))
    monkeypatch.setenv("AIRFLOW_CONN_RETENTION_LEDGER", json.dumps({"conn_type": "sqlite", "host": str(ledger_path)}))
    monkeypatch.setenv("AIRFLOW_CONN_OBJECTS_S3", json.dumps({
        "conn_type": "aws", "login": "testing", "password": "testing",
        "extra": {"endpoint_url": proxy.url, "region_name": "us-east-1"}}))
    secret = os.environ["RETENTION_HMAC_KEY"].encode()
    ledger = Ledger(make_engine(f"sqlite:///{ledger_path}"), secret)
    registry = Registry(ledger.engine, secret)
    registry.ensure_schema()
    rid = registry.register(NewRequest(Identities(email=zoe, customer_ref="C-77")), dag_id="erasure_request",
                            run_id="fault-run")
    registry.start(rid)
    try:
        assert erasure_tasks.discover([rid], "objects") == {"deleted": len(mine)}
        with pytest.raises(Exception, match="SlowDown|503"):
            erasure_tasks.act([rid], "objects")  # try 1: S3 sheds load longer than the client retries
        assert ledger.verify().unreconciled_count == 1
        erasure_tasks.act([rid], "objects")  # try 2 (Airflow's retry)
        assert erasure_tasks.verify([rid], "objects") == 1
        assert erasure_tasks.record([rid], "objects", "erasure_request", "fault-run") == 1
    finally:
        proxy.close()
    assert proxy.failed == 4
    assert s3_versions(s3, bucket) == kept_versions
    final = ledger.verify()
    assert final.ok and final.unreconciled_count == 0  # the batch intent is settled by record
    entries = [r for r in ledger.rows() if r["request_id"] == rid]
    assert [e["outcome"] for e in entries] == ["verified"]  # one entry, not one per try
    settled_erase = [r["count"] for r in ledger.rows() if r["action"] == "erase" and r["ref_seq"] is not None]
    assert settled_erase == [entries[0]["count"]]
    # a failed try's counts are kept per collection (erasure_tasks.act saves each collection as it is done)
    assert entries[0]["count"] == len(mine)
