"""`make bench`: subject requests (erasure) at scale against their baselines, measured in the same run.

    scripts/bench_subjects.py [SUBJECTS] [--sample N] [--batch-size N]

The demo data map (config/policy.yaml) over fresh databases: the CRM on PostgreSQL, the mailing list
on MariaDB, the registry and ledger on PostgreSQL, the CVs and inquiry attachments on moto's S3
server over HTTP (versioned buckets). The demo's own rows are seeded, then three groups of SUBJECTS
(default 1,000) people (the last group: ``--sample``), each with a contact, an inquiry with its attachment,
a job application with its CV, a support ticket, a lead, a newsletter subscription (upper-case address)
with a list membership and campaign events; and one lookalike per person (another address, the same
rows and objects) that must survive. Timed:

- intake: the erasure_intake DAG's task bodies in-process, in the DAG's order (claim, then per system
  discover, act, verify, record, then the recipients' notices, finalize and the requesters' notices; no
  Airflow scheduler), batches of ``--batch-size`` (the DAG's default, 500), for the first group
  (registered beforehand with ``register_many``, timed apart);
- single (a): the second group, one erasure_request each (register, then the same task bodies for one
  request): ``--sample`` people (default 20), extrapolated to SUBJECTS;
- row-by-row (b): the third group in the style of a row-by-row DSR tool, no ledger or registry: per
  person and identity column one SELECT, per row one DELETE (its dependants found and deleted one
  row at a time first), per owned object one HEAD and one DELETE of its (one) version.

Prints subjects/s of each, the ratios intake/(a) and intake/(b) next to their targets (20x, 100x), the
SQL statements per subject of the intake by database (registry and ledger vs each store), and checks
the outcome: every subject's rows and objects gone, every lookalike's kept, the ledger verifies,
every receipt verifies against it. Runs the intake's statement count at two batch sizes too.
``--results FILE``: the two ratios, their targets and the outcome check as JSON for scripts/bench_summary.py.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RETENTION_HMAC_KEY", "bench-hmac-key-" + "x" * 32)
os.environ.setdefault("RETENTION_POLICY_PATH", str(ROOT / "config" / "policy.yaml"))

from include.retention.connections import env_resolver, hmac_key, policy_path  # noqa: E402
from include.retention.demo import schema  # noqa: E402
from include.retention.demo.s3_seed import ensure_buckets  # noqa: E402
from include.retention.demo.seed import seed_crm, seed_mailing  # noqa: E402
from include.retention.ledger import Ledger  # noqa: E402
from include.retention.policy import load_policy  # noqa: E402
from include.retention.registry import Identities, NewRequest, Registry  # noqa: E402
from include.retention.requests.receipts import verify_receipt  # noqa: E402
from include.retention.stores.base import collection_order  # noqa: E402
from include.retention.stores.sql import make_engine  # noqa: E402
from include.retention.values import CollectionRef  # noqa: E402

SERVERS = {
    "postgresql": "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres",
    "mariadb": "mysql+pymysql://root@127.0.0.1:3306/mysql?charset=utf8mb4",
}
TARGET_SINGLE, TARGET_ROWS = 20.0, 100.0
REGION = "eu-central-1"
NOW = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


# ---- statement counting ---------------------------------------------------------------------


class Statements:
    """SQL statements sent per database while active (SQLAlchemy's ``before_cursor_execute`` on every engine;
    an executemany is one statement: SQLAlchemy sends INSERTs of many rows as multi-row VALUES)."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def _count(self, conn, cursor, statement, parameters, context, executemany) -> None:
        self.counts[conn.engine.url.database or "?"] += 1

    def __enter__(self) -> Statements:
        sa.event.listen(sa.engine.Engine, "before_cursor_execute", self._count)
        return self

    def __exit__(self, *exc: Any) -> None:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", self._count)


# ---- the world --------------------------------------------------------------------------------


def fresh(kind: str, name: str) -> str:
    admin = sa.create_engine(SERVERS[kind], isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if kind == "postgresql":
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        else:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
            conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    admin.dispose()
    return sa.engine.make_url(SERVERS[kind]).set(database=name).render_as_string(hide_password=False)


def drop(kind: str, name: str) -> None:
    admin = sa.create_engine(SERVERS[kind], isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)' if kind == "postgresql"
                             else f"DROP DATABASE IF EXISTS `{name}`"))
    admin.dispose()


def airflow_uri(url: str) -> str:
    u = sa.engine.make_url(url)
    scheme = "postgres" if u.drivername.startswith("postgresql") else "mysql"
    return f"{scheme}://{u.username}@{u.host}:{u.port}/{u.database}"


@dataclass
class World:
    """The demo's systems on fresh databases and a moto server, wired through ``AIRFLOW_CONN_*``."""

    crm: sa.Engine
    mailing: sa.Engine
    ledger: Ledger
    registry: Registry
    s3: Any
    databases: list[tuple[str, str]] = field(default_factory=list)
    buckets: dict[str, str] = field(default_factory=dict)  # "inquiries" | "applicants" -> bucket

    def close(self) -> None:
        for engine in (self.crm, self.mailing, self.ledger.engine):
            engine.dispose()
        for kind, name in self.databases:
            drop(kind, name)


def make_world(moto_url: str, seed_demo: bool = True, setenv: Any = os.environ.__setitem__) -> World:
    """Fresh CRM (PostgreSQL), mailing list (MariaDB), registry + ledger (PostgreSQL) and S3 buckets;
    ``AIRFLOW_CONN_*`` point the product at them (the task bodies resolve connections as in Airflow;
    ``setenv``: how, e.g. pytest's ``monkeypatch.setenv``)."""
    import boto3

    suffix = uuid.uuid4().hex[:8]
    dbs = [("postgresql", f"bs_crm_{suffix}"), ("mariadb", f"bs_mail_{suffix}"), ("postgresql", f"bs_ledger_{suffix}")]
    crm_url, mailing_url, ledger_url = (fresh(kind, name) for kind, name in dbs)
    crm, mailing = make_engine(crm_url), make_engine(mailing_url)
    if seed_demo:
        seed_crm(crm, NOW)
        seed_mailing(mailing, NOW)
    else:
        schema.create_crm(crm)
        schema.create_mailing(mailing)
    setenv("AIRFLOW_CONN_CRM_DB", airflow_uri(crm_url))
    setenv("AIRFLOW_CONN_MAILING_DB", airflow_uri(mailing_url))
    # unattended, like the demo (ADR 0014): no identity check, and with no mail server or webhook here the
    # recipients' notices are recorded, not sent (without this opt-in they stay unconfirmed, the requests open)
    setenv("RETENTION_VERIFY_IDENTITY", "none")
    setenv("RETENTION_NOTIFY_RECORD_ONLY", "1")
    setenv("AIRFLOW_CONN_RETENTION_LEDGER", airflow_uri(ledger_url))
    setenv("AIRFLOW_CONN_OBJECTS_S3", json.dumps({
        "conn_type": "aws", "login": "t", "password": "t", "extra": {"endpoint_url": moto_url, "region_name": REGION}}))
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name=REGION, aws_access_key_id="t",
                      aws_secret_access_key="t")
    policy = load_policy(policy_path())
    buckets = {}
    for table, ref in (("inquiries", "crm.inquiries"), ("applicants", "crm.applicants")):
        buckets[table] = policy.collection(policy.owned_objects(ref)[0].to).bucket
    ensure_buckets(s3, policy, versioned=True)  # every bucket: a request reads every collection of the data map
    key = hmac_key(env_resolver)
    ledger = Ledger(make_engine(ledger_url), key)
    return World(crm, mailing, ledger, Registry(ledger.engine, key), s3, dbs, buckets)


def emails(group: str, n: int) -> list[str]:
    return [f"{group}.person{i}@bench.example" for i in range(n)]


def lookalike(email: str) -> str:
    """Another person's address that a sloppy match (prefix, suffix, substring) would take."""
    return "x" + email + ".org"


def add_people(world: World, addresses: list[str]) -> dict[str, list[str]]:
    """Every demo table's rows (and the S3 objects they own) for these people, in bulk; returns
    bucket -> keys written."""
    c = schema.contacts
    with world.crm.begin() as conn:
        conn.execute(c.insert(), [{"email": e, "phone": None, "full_name": "Bench Person", "created_at": NOW,
                                   "last_contact_at": NOW} for e in addresses])
        ids: dict[str, int] = {}
        for i in range(0, len(addresses), 1000):
            ids.update(conn.execute(sa.select(c.c.email, c.c.id).where(c.c.email.in_(addresses[i:i + 1000]))).all())
        rows = [{"contact_id": ids[e], "email": e} for e in addresses]
        conn.execute(schema.inquiries.insert(), [{**r, "message": "call me", "last_contact_at": NOW} for r in rows])
        conn.execute(schema.applicants.insert(), [{**r, "full_name": "Bench Person"} for r in rows])
        conn.execute(schema.support_tickets.insert(), [{**r, "subject": "help"} for r in rows])
        conn.execute(schema.leads.insert(), [{**r, "description": "estimate", "last_activity_at": NOW} for r in rows])
        keys: dict[str, list[str]] = {}
        for table, column, prefix in (("inquiries", "attachment_key", "inquiries/"), ("applicants", "cv_key", "cvs/")):
            t = schema.crm_metadata.tables[table]
            mine = sa.select(t.c.id).where(t.c.contact_id.in_(list(ids.values()))).scalar_subquery()
            conn.execute(t.update().where(t.c.id.in_(mine)).values(
                {column: sa.func.concat(prefix, sa.cast(t.c.id, sa.String), "/file.pdf")}))
            got = conn.execute(sa.select(t.c[column]).where(t.c.contact_id.in_(list(ids.values())))).scalars()
            keys.setdefault(world.buckets[table], []).extend(got)
    for bucket, names in keys.items():
        for name in names:
            world.s3.put_object(Bucket=bucket, Key=name, Body=b"bench")
    s = schema.subscribers
    with world.mailing.begin() as conn:
        conn.execute(s.insert(), [{"email": e.upper(), "subscribed_at": NOW, "last_engaged_at": NOW}
                                  for e in addresses])
        sub_ids = list(conn.execute(sa.select(s.c.id).where(s.c.email.in_([e.upper() for e in addresses]))).scalars())
        conn.execute(schema.list_memberships.insert(), [{"subscriber_id": i, "list_name": "blog", "joined_at": NOW}
                                                        for i in sub_ids])
        conn.execute(schema.campaign_events.insert(), [
            {"subscriber_id": i, "campaign": "c1", "kind": kind, "occurred_at": NOW, "ip_address": "198.51.100.7"}
            for i in sub_ids for kind in ("open", "click")])
    return keys


def left_of(world: World, addresses: list[str], keys: dict[str, list[str]],
            listed: dict[str, list[str]] | None = None) -> dict[str, int]:
    """Rows of these people per table and object versions of these keys still present. ``listed``: bucket ->
    the keys of its versions, filled on first use and reused by later calls given the same dict (nothing may
    change in between: moto lists a bucket's versions in time quadratic in their number)."""
    out: dict[str, int] = {}
    lowered = [e.lower() for e in addresses]
    for engine, tables in ((world.crm, (schema.contacts, schema.inquiries, schema.applicants,
                                        schema.support_tickets, schema.leads)),
                           (world.mailing, (schema.subscribers,))):
        with engine.connect() as conn:
            for t in tables:
                n = 0
                for i in range(0, len(lowered), 1000):
                    n += conn.execute(sa.select(sa.func.count()).select_from(t).where(
                        sa.func.lower(t.c.email).in_(lowered[i:i + 1000]))).scalar()
                out[t.name] = n
    with world.mailing.connect() as conn:  # dependants of the subscribers, by a join back to the address
        s = schema.subscribers
        for t in (schema.list_memberships, schema.campaign_events):
            ids = list(conn.execute(sa.select(s.c.id).where(s.c.email.in_([e.upper() for e in addresses]))).scalars())
            out[t.name] = sum(conn.execute(sa.select(sa.func.count()).select_from(t).where(
                t.c.subscriber_id.in_(ids[i:i + 1000]))).scalar() for i in range(0, len(ids), 1000))
    wanted = {(b, k) for b, names in keys.items() for k in names}
    present = 0
    listed = {} if listed is None else listed
    for bucket in {b for b, _ in wanted}:
        if bucket not in listed:
            listed[bucket] = [v["Key"] for page in world.s3.get_paginator("list_object_versions").paginate(
                Bucket=bucket) for v in page.get("Versions", [])]
        present += sum((bucket, key) in wanted for key in listed[bucket])
    out["s3 object versions"] = present
    return out


# ---- the three ways ------------------------------------------------------------------------------


def run_batch(ids: list[str], dag_id: str, run_id: str) -> None:
    """Everything after claim / register, in the DAG's order: per system discover, act, verify, record (the DAG
    runs the systems' groups in parallel; here one after the other); the recipients told (no mail connection
    here: "recorded, not sent"), manual ones confirmed as the approval step would; finalize; the requesters told."""
    from include.retention.airflow import erasure_tasks, notify_tasks

    systems = erasure_tasks.systems()
    for system in systems:
        erasure_tasks.discover(ids, system)
        erasure_tasks.act(ids, system)
        erasure_tasks.verify(ids, system)
        erasure_tasks.record(ids, system, dag_id, run_id)
    for name in notify_tasks.plan_notices(ids):
        notify_tasks.send_notice(ids, name)
    manual = notify_tasks.manual_pending(ids)
    if manual:
        notify_tasks.confirm_manual(ids, manual)
    erasure_tasks.finalize(ids, systems)
    notify_tasks.completion_notices(ids)


def intake(batch_size: int, run_id: str = "bench") -> list[str]:
    """erasure_intake's task bodies until nothing is pending; returns the request ids."""
    from include.retention.airflow import erasure_tasks

    done: list[str] = []
    for n in range(10_000):
        ids = erasure_tasks.claim(batch_size, "erasure_intake", f"{run_id}_{n}")
        if not ids:
            break
        run_batch(ids, "erasure_intake", f"{run_id}_{n}")
        done += ids
    return done


def single(email: str, run_id: str) -> str:
    """One erasure_request's task bodies; returns the request id."""
    from include.retention.airflow import erasure_tasks

    rid = erasure_tasks.register({"email": email, "mode": "erase"}, "erasure_request", run_id)
    run_batch([rid], "erasure_request", run_id)
    return rid


class RowByRow:
    """A row-by-row DSR tool over the same data map: one statement per row, one S3 call per object version,
    no ledger, no registry, no verification. Counts its SQL statements and S3 calls."""

    def __init__(self, world: World):
        self.policy = load_policy(policy_path())
        self.engines = {"crm": world.crm, "mailing": world.mailing}
        self.s3 = world.s3
        self.s3_calls = 0
        self.meta = {name: sa.MetaData() for name in self.engines}
        self.tables: dict[str, sa.Table] = {}

    def table(self, ref: str) -> sa.Table:
        system = CollectionRef.parse(ref).system
        if ref not in self.tables:
            coll = self.policy.collection(ref)
            self.tables[ref] = sa.Table(coll.table, self.meta[system], autoload_with=self.engines[system])
        return self.tables[ref]

    def erase(self, email: str) -> None:
        for system, engine in self.engines.items():
            with engine.begin() as conn:
                for name in collection_order(self.policy, system):
                    ref = f"{system}.{name}"
                    fields = self.policy.collection(ref).identities.get("email")
                    fields = fields if isinstance(fields, list) else [fields] if fields else []
                    for f in fields:
                        column = f if isinstance(f, str) else f.column if f.erase == "row" else None
                        if column is None:
                            continue  # a masked mention: a row-by-row tool of this kind does not handle it
                        t = self.table(ref)
                        for row in conn.execute(sa.select(t).where(sa.func.lower(t.c[column]) == email)).all():
                            self.delete_row(conn, ref, row._mapping)

    def delete_row(self, conn: sa.Connection, ref: str, row: Any) -> None:
        coll = self.policy.collection(ref)
        for child_ref, reference in self.policy.children(ref):
            if reference.on_delete != "delete" or child_ref.partition(".")[0] != ref.partition(".")[0]:
                continue
            child = self.table(child_ref)
            for sub in conn.execute(sa.select(child).where(child.c[reference.column] == row[coll.primary_key])).all():
                self.delete_row(conn, child_ref, sub._mapping)
        for reference in self.policy.owned_objects(ref):
            key = row[reference.column]
            if key:  # the current version (the bench writes one per object); moto's listing per key would
                # copy the whole bucket per call (10 MB and a few ms per call at 3,000 objects)
                bucket = self.policy.collection(reference.to).bucket
                version = self.s3.head_object(Bucket=bucket, Key=key).get("VersionId")
                self.s3.delete_object(Bucket=bucket, Key=key, **({"VersionId": version} if version else {}))
                self.s3_calls += 2
        t = self.table(ref)
        conn.execute(t.delete().where(t.c[coll.primary_key] == row[coll.primary_key]))


# ---- the run -------------------------------------------------------------------------------------


def statements_per_subject(stats: Statements, registry_db: str, n: int) -> dict[str, float]:
    reg = stats.counts.get(registry_db, 0)
    stores = sum(v for k, v in stats.counts.items() if k != registry_db)
    return {"registry+ledger": reg / n, "stores": stores / n}


def verify_all(world: World, request_ids: list[str]) -> tuple[bool, int]:
    """The ledger verifies and every request's receipt verifies against it; returns (ok, receipts failed)."""
    ok = world.ledger.verify(record=False).ok
    failed = 0
    for rid in request_ids:
        if not verify_receipt(world.registry.receipt(rid), world.ledger).ok:
            failed += 1
    return ok, failed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("subjects", nargs="?", type=int, default=1000)
    ap.add_argument("--sample", type=int, default=20, help="people timed one at a time (extrapolated)")
    ap.add_argument("--batch-size", type=int, default=500, help="requests per intake run (the DAG's default)")
    ap.add_argument("--count-only", action="store_true",
                    help="only the intake's SQL statements per subject, by database (no baselines)")
    ap.add_argument("--results", help="write the ratios and their targets to this file (scripts/bench_summary.py)")
    args = ap.parse_args()
    started = time.time()
    n = args.subjects
    import logging
    import signal

    logging.disable(logging.INFO)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed run still drops its databases
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    world = make_world(f"http://{host}:{port}")
    registry_db = world.ledger.engine.url.database
    try:
        groups = {"intake": emails("intake", n)}
        if not args.count_only:
            groups.update(single=emails("single", args.sample), rows=emails("rows", n))
        keys, lookalike_keys = {}, {}
        t0 = time.perf_counter()
        for name, addresses in groups.items():
            keys[name] = add_people(world, addresses)
            lookalike_keys[name] = add_people(world, [lookalike(e) for e in addresses])
        print(f"seeded {sum(len(g) for g in groups.values())} people and as many lookalikes in "
              f"{time.perf_counter() - t0:.1f} s (demo rows beside them)", flush=True)

        # The task bodies' modules (and with them Airflow's SDK, about 2.5 s) are imported before any timing: a
        # worker has them loaded already, and whichever way ran first would otherwise pay the import alone.
        from include.retention.airflow import erasure_tasks, notify_tasks  # noqa: F401

        # (i) intake
        t0 = time.perf_counter()
        world.registry.register_many([NewRequest(Identities(email=e)) for e in groups["intake"]])
        t_register = time.perf_counter() - t0
        with Statements() as stats:
            t0 = time.perf_counter()
            ids = intake(args.batch_size)
            t_intake = time.perf_counter() - t0
        print(f"intake: {n} subjects in {t_intake:.1f} s", flush=True)
        assert len(ids) == n, f"intake processed {len(ids)} of {n} requests"
        intake_stmts = statements_per_subject(stats, registry_db, n)
        if args.count_only:
            names = {world.crm.url.database: "crm", world.mailing.url.database: "mailing",
                     registry_db: "registry+ledger"}
            print(f"intake of {n} subjects, batches of {args.batch_size}, {t_intake:.1f} s: SQL statements "
                  + ", ".join(f"{names.get(db, db)} {c} ({c / n:.2f}/subject)"
                              for db, c in sorted(stats.counts.items())))
            return 0

        # (a) one erasure_request per person (a sample)
        single_ids = []
        with Statements() as stats:
            t0 = time.perf_counter()
            for i, e in enumerate(groups["single"]):
                single_ids.append(single(e, f"bench_single_{i}"))
            t_single = time.perf_counter() - t0
        print(f"(a) one erasure_request each: {args.sample} subjects in {t_single:.1f} s", flush=True)
        single_stmts = statements_per_subject(stats, registry_db, args.sample)

        # (b) row by row
        naive = RowByRow(world)
        with Statements() as stats:
            t0 = time.perf_counter()
            for e in groups["rows"]:
                naive.erase(e)
            t_rows = time.perf_counter() - t0
        rows_stmts = sum(stats.counts.values()) / n

        # outcome
        listed: dict[str, list[str]] = {}  # every bucket listed once: nothing changes while the outcome is read
        gone = {name: left_of(world, groups[name], keys[name], listed) for name in groups}
        kept = {name: left_of(world, [lookalike(e) for e in groups[name]], lookalike_keys[name], listed)
                for name in groups}
        ledger_ok, receipts_failed = verify_all(world, ids + single_ids)
        statuses = collections.Counter(r["status"] for r in world.registry.get_many(ids + single_ids).values())

        rate_intake, rate_single, rate_rows = n / t_intake, args.sample / t_single, n / t_rows
        r_single, r_rows = rate_intake / rate_single, rate_intake / rate_rows
        print(f"\nsubject erasure, {n} subjects (CRM on PostgreSQL, mailing list on MariaDB, S3 on moto)")
        print(f"{'way':<44}{'subjects':>9}{'s':>9}{'subjects/s':>12}")
        print(f"{'intake (batches of ' + str(args.batch_size) + ')':<44}{n:>9}{t_intake:>9.2f}{rate_intake:>12.1f}")
        print(f"{'(a) one erasure_request each (sample)':<44}{args.sample:>9}{t_single:>9.2f}{rate_single:>12.1f}"
              f"   -> {n} extrapolated: {n / rate_single:.0f} s")
        print(f"{'(b) row by row, no ledger':<44}{n:>9}{t_rows:>9.2f}{rate_rows:>12.1f}")
        print(f"register_many of the intake's {n} requests (before the run): {t_register:.2f} s")
        from scripts.bench_summary import result, verdict, write_results

        print(f"intake / (a) one erasure_request each: {verdict(r_single, '>=', TARGET_SINGLE)}")
        print(f"intake / (b) row by row:               {verdict(r_rows, '>=', TARGET_ROWS)}")
        print("SQL statements per subject: "
              f"intake {intake_stmts['registry+ledger']:.2f} registry+ledger, {intake_stmts['stores']:.2f} stores; "
              f"(a) {single_stmts['registry+ledger']:.1f} registry+ledger, {single_stmts['stores']:.1f} stores; "
              f"(b) {rows_stmts:.1f} (and {naive.s3_calls / n:.1f} S3 calls)")
        print(f"outcome: left of the subjects {sum(sum(v.values()) for v in gone.values())} "
              f"({', '.join(f'{k}: {sum(v.values())}' for k, v in gone.items())}); lookalikes kept "
              f"{ {k: v for k, v in kept['intake'].items()} }; requests {dict(statuses)}; ledger "
              f"{'verifies' if ledger_ok else 'BROKEN'}; receipts failing verification: {receipts_failed}")
        expect_kept = {**{t: n for t in ("contacts", "inquiries", "applicants", "support_tickets", "leads",
                                         "subscribers", "list_memberships")},
                       "campaign_events": 2 * n, "s3 object versions": 2 * n}
        good = (all(sum(v.values()) == 0 for v in gone.values()) and kept["intake"] == expect_kept
                and kept["rows"] == expect_kept and ledger_ok and not receipts_failed
                and statuses == {"complete": n + args.sample})
        print("outcome check:", "OK" if good else f"FAILED: left {gone}, kept {kept}")
        write_results(args.results, "bench_subjects.py", [
            result(f"{n:,} subjects: intake / (a) one erasure_request each", r_single, ">=", TARGET_SINGLE),
            result(f"{n:,} subjects: intake / (b) row by row", r_rows, ">=", TARGET_ROWS)], started,
            [f"outcome check (subjects gone, lookalikes kept, receipts verify): {'OK' if good else 'FAILED'}"])
        return 0 if good else 1
    finally:
        world.close()
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
