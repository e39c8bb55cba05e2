"""`make bench`, target 3: the S3 sweep and rows owning objects against raw boto3 loops, in the same run.

    scripts/bench_s3.py [OBJECTS] [--rows ROWS] [--parts sweep,owned]

Starts moto's server (``ThreadedMotoServer``, real HTTP) on a free port and measures:

- **sweep**: OBJECTS (default 20,000) objects past their storage period plus 10% that are not, under
  ``bench/{yyyy}/{mm}/{dd}/...``, in a plain and in a versioned bucket. Product: ``run_rule`` of a
  ``delete`` rule (check, plan, safety brake, act, ledger intent and outcome per batch into SQLite).
  Raw: the loop a script would run, ``list_objects_v2`` (``list_object_versions`` in the versioned
  bucket, so every version goes too) over the prefix, the key's date compared with the cutoff, and
  ``delete_objects`` per 1,000 keys. Both on the same data, regenerated in between; both counted with
  botocore's ``before-call`` event. The product's act reads the due objects its plan spooled (one listing in
  all). The delete stage alone, without a plan before it (so with its own listing), is shown too.
- **owned**: ROWS (default 10,000) CRM rows past their period, each owning a CV ``cvs/{id}/cv.pdf``, among
  10% that are not, in PostgreSQL. Product: ``run_rule`` of the rows' delete rule, the SQL store handing
  each batch's rows to the S3 store (``delete_referenced``). Raw: one ``DELETE ... RETURNING id`` and a
  ``list_objects_v2`` + ``delete_objects`` loop over ``cvs/`` for the returned ids.

Every run checks its outcome (exactly the expired objects / rows and their CVs gone, the rest kept).
ratio = raw seconds / product seconds (the product's objects per second as a share of the raw loop's);
target >= 0.8. ``--results FILE``: the ratios and their target as JSON for scripts/bench_summary.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from include.retention.ledger import Ledger, RunRef  # noqa: E402
from include.retention.policy import parse_policy  # noqa: E402
from include.retention.runtime import ConnInfo, Runtime  # noqa: E402
from include.retention.stores.s3 import S3Store  # noqa: E402
from include.retention.stores.sql import make_engine  # noqa: E402
from include.retention.sweep import run_rule  # noqa: E402
from scripts.bench_sweep import drop, fresh  # noqa: E402  (a throwaway database on the machine's server)

TARGET = 0.8
KEY = b"k" * 32
NOW = dt.datetime(2026, 11, 24, tzinfo=dt.UTC)
PLAIN, VERSIONED, CVS = "bench-plain", "bench-versioned", "bench-cvs"
POLICY = f"""
defaults: {{max_fraction: 1.0, batch_size: 1000}}
systems:
  objects:
    kind: s3
    connection: objects_s3
    collections:
      plain:
        bucket: {PLAIN}
        key_template: "bench/{{yyyy}}/{{mm}}/{{dd}}/..."
        rules:
          - {{name: expire, start: {{basis: key_date}}, action: delete, period: P30D}}
      versioned:
        bucket: {VERSIONED}
        key_template: "bench/{{yyyy}}/{{mm}}/{{dd}}/..."
        rules:
          - {{name: expire, start: {{basis: key_date}}, action: delete, period: P30D}}
      cvs:
        bucket: {CVS}
        prefix: cvs/
  crm:
    kind: sql
    connection: crm_db
    collections:
      applicants:
        table: bench_applicants
        primary_key: id
        columns: [id, closed_at]
        references: [{{to: objects.cvs, key_template: "cvs/{{id}}/"}}]
        rules:
          - {{name: closed, start: closed_at, action: delete, period: P30D}}
"""
CUTOFF = NOW - dt.timedelta(days=30)


# ---- moto ----------------------------------------------------------------------------------------
class Moto:
    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        self.info = ConnInfo("aws", login="bench", password="bench",
                             extra={"endpoint_url": self.url, "region_name": "us-east-1"})

    def client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id="bench",
                            aws_secret_access_key="bench")

    def bucket(self, name: str, versioned: bool = False) -> None:
        """A fresh, empty bucket, the only one: the server is reset first (it forgets every bucket)."""
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")).close()
        client = self.client()
        client.create_bucket(Bucket=name)
        if versioned:
            client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        client.close()

    @staticmethod
    def backend() -> Any:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        return s3_backends[DEFAULT_ACCOUNT_ID]["aws"]

    def put_many(self, bucket: str, keys: list[str]) -> None:
        """Arrange objects straight into the server's backend (the same process): one PUT each over HTTP
        would take longer than what is measured. Everything measured goes over HTTP."""
        backend = self.backend()
        for key in keys:
            backend.put_object(bucket, key, b"x")

    def stop(self) -> None:
        self.server.stop()


def counted(client: Any) -> Counter:
    calls: Counter = Counter()

    def sent(model: Any, **_: Any) -> None:
        calls[model.name] += 1

    client.meta.events.register("before-call.s3", sent)
    return calls


def listing(client: Any, bucket: str, prefix: str, versioned: bool) -> list[dict[str, str]]:
    out = []
    op = "list_object_versions" if versioned else "list_objects_v2"
    for page in client.get_paginator(op).paginate(Bucket=bucket, Prefix=prefix):
        for entry in page.get("Versions", []) + page.get("DeleteMarkers", []) if versioned else page.get(
                "Contents", []):
            out.append({"Key": entry["Key"], **({"VersionId": entry["VersionId"]} if versioned else {})})
    return out


def delete_all(client: Any, bucket: str, entries: list[dict[str, str]]) -> None:
    for i in range(0, len(entries), 1000):
        resp = client.delete_objects(Bucket=bucket, Delete={"Objects": entries[i:i + 1000], "Quiet": True})
        assert not resp.get("Errors"), resp["Errors"][:1]


# ---- sweep: expired objects ------------------------------------------------------------------------
def bench_keys(n: int) -> tuple[list[str], list[str]]:
    """n expired keys spread over 2025, and n/10 within the period (after the cutoff)."""
    expired = [f"bench/2025/{1 + i % 12:02d}/{1 + i % 28:02d}/obj-{i:07d}.log" for i in range(n)]
    fresh = [f"bench/2026/11/{10 + i % 10:02d}/obj-{i:07d}.log" for i in range(n // 10)]
    return expired, fresh


def key_expired(key: str) -> bool:
    _, yyyy, mm, dd, _ = key.split("/", 4)
    return dt.datetime(int(yyyy), int(mm), int(dd), tzinfo=dt.UTC) < CUTOFF


def raw_sweep(moto: Moto, bucket: str, versioned: bool) -> tuple[float, Counter]:
    client = moto.client()
    calls = counted(client)
    t0 = time.perf_counter()
    # the loop a script would run: one listing, the date test per key, DeleteObjects per 1,000
    entries = [e for e in listing(client, bucket, "bench/", versioned) if key_expired(e["Key"])]
    delete_all(client, bucket, entries)
    seconds = time.perf_counter() - t0
    client.close()
    return seconds, calls


def product_sweep(moto: Moto, policy: Any, coll: str) -> tuple[float, Counter, dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(make_engine(f"sqlite:///{tmp}/ledger.db"), KEY)
        ledger.ensure_schema()
        store = S3Store.from_conn("objects", policy, moto.info, key=KEY)
        calls = counted(store.client)
        t0 = time.perf_counter()
        counts = run_rule(policy, f"objects.{coll}.expire", store, ledger, RunRef("bench", "bench"), now=NOW)
        seconds = time.perf_counter() - t0
        store.close()
        ledger.engine.dispose()
    return seconds, calls, counts


def act_only(moto: Moto, policy: Any, coll: str) -> float:
    """The product's delete stage alone, without a plan before it: it lists the bucket itself (there is no plan's
    spool to read) and deletes page by page, so the bucket it lists shrinks as it goes."""
    store = S3Store.from_conn("objects", policy, moto.info, key=KEY)
    rule = policy.rule(f"objects.{coll}.expire")[2]
    store.check(coll)  # the bucket's versioning and Object Lock, as a run learns them first
    t0 = time.perf_counter()
    store.apply_stage(coll, rule, rule.stages[0], NOW, 1000, "bench", lambda *a, **k: None)
    seconds = time.perf_counter() - t0
    store.close()
    return seconds


def check_sweep(moto: Moto, bucket: str, versioned: bool, fresh: list[str]) -> None:
    client = moto.client()
    left = sorted({e["Key"] for e in listing(client, bucket, "", versioned)})
    client.close()
    assert left == sorted(fresh), f"{bucket}: {len(left)} keys left, {len(fresh)} expected"


def sweep_part(moto: Moto, n: int) -> Iterator[dict[str, Any]]:
    policy = parse_policy(POLICY, source="bench_s3.yaml")
    expired, fresh = bench_keys(n)
    for coll, bucket, versioned in (("plain", PLAIN, False), ("versioned", VERSIONED, True)):
        moto.bucket(bucket, versioned)
        moto.put_many(bucket, expired + fresh)
        raw_s, raw_calls = raw_sweep(moto, bucket, versioned)
        check_sweep(moto, bucket, versioned, fresh)

        moto.bucket(bucket, versioned)
        moto.put_many(bucket, expired + fresh)
        prod_s, prod_calls, counts = product_sweep(moto, policy, coll)
        assert counts["deleted"] == n, counts
        check_sweep(moto, bucket, versioned, fresh)

        moto.bucket(bucket, versioned)
        moto.put_many(bucket, expired + fresh)
        act_s = act_only(moto, policy, coll)
        check_sweep(moto, bucket, versioned, fresh)
        yield {"case": f"sweep {coll}", "n": n, "raw_s": raw_s, "raw_calls": raw_calls, "prod_s": prod_s,
               "prod_calls": prod_calls, "act_s": act_s}


# ---- owned: CRM rows and their CVs ------------------------------------------------------------------
def fill_crm(engine: sa.Engine, moto: Moto, rows: int) -> tuple[set[int], set[int]]:
    """rows expired applicants and rows/10 recent ones, ids interleaved, each with a CV; also CVs no row owns."""
    total = rows + rows // 10
    expired = {i for i in range(1, total + 1) if i % 11 != 0}
    kept = set(range(1, total + 1)) - expired
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS bench_applicants"))
        conn.execute(sa.text("CREATE TABLE bench_applicants (id bigint PRIMARY KEY, closed_at timestamp)"))
        conn.execute(sa.text(
            f"INSERT INTO bench_applicants SELECT i, CASE WHEN MOD(i, 11) = 0 THEN TIMESTAMP '2026-11-20' "
            f"ELSE TIMESTAMP '2025-06-01' END FROM generate_series(1, {total}) AS s(i)"))
    moto.bucket(CVS)
    moto.put_many(CVS, [f"cvs/{i}/cv.pdf" for i in range(1, total + 1)] + ["cvs/orphan/cv.pdf"])
    return expired, kept


def check_crm(engine: sa.Engine, moto: Moto, kept: set[int]) -> None:
    with engine.connect() as conn:
        left = {r[0] for r in conn.execute(sa.text("SELECT id FROM bench_applicants"))}
    assert left == kept, f"{len(left)} rows left, {len(kept)} expected"
    client = moto.client()
    cvs = {e["Key"] for e in listing(client, CVS, "cvs/", False)}
    client.close()
    assert cvs == {f"cvs/{i}/cv.pdf" for i in kept} | {"cvs/orphan/cv.pdf"}, f"{len(cvs)} CVs left"


def raw_owned(url: str, moto: Moto) -> tuple[float, Counter]:
    engine = sa.create_engine(url)
    client = moto.client()
    calls = counted(client)
    t0 = time.perf_counter()
    with engine.begin() as conn:
        ids = {str(r[0]) for r in conn.execute(sa.text(
            "DELETE FROM bench_applicants WHERE closed_at < :cutoff RETURNING id"),
            {"cutoff": CUTOFF.replace(tzinfo=None)})}
        entries = [e for e in listing(client, CVS, "cvs/", False) if e["Key"].split("/")[1] in ids]
        delete_all(client, CVS, entries)
    seconds = time.perf_counter() - t0
    client.close()
    engine.dispose()
    return seconds, calls


def product_owned(url: str, moto: Moto, policy: Any) -> tuple[float, Counter, dict[str, Any]]:
    conns = {"crm_db": ConnInfo("postgres", extra={"sqlalchemy_url": url}), "objects_s3": moto.info}
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(make_engine(f"sqlite:///{tmp}/ledger.db"), KEY)
        ledger.ensure_schema()
        runtime = Runtime(policy, conns.__getitem__, key=KEY)
        calls = counted(runtime.store("objects").client)
        try:
            t0 = time.perf_counter()
            counts = run_rule(policy, "crm.applicants.closed", runtime.store("crm"), ledger,
                              RunRef("bench", "bench"), now=NOW)
            seconds = time.perf_counter() - t0
        finally:
            runtime.close()
            ledger.engine.dispose()
    return seconds, calls, counts


def owned_part(moto: Moto, rows: int) -> Iterator[dict[str, Any]]:
    policy = parse_policy(POLICY, source="bench_s3.yaml")
    name, url = fresh("postgresql")
    engine = make_engine(url)
    try:
        expired, kept = fill_crm(engine, moto, rows)
        raw_s, raw_calls = raw_owned(url, moto)
        check_crm(engine, moto, kept)
        fill_crm(engine, moto, rows)
        prod_s, prod_calls, counts = product_owned(url, moto, policy)
        check_crm(engine, moto, kept)
        assert counts["deleted"] == len(expired) and counts["cascaded"] == {"objects.cvs": len(expired)}, counts
    finally:
        engine.dispose()
        drop("postgresql", name)
    yield {"case": "CRM rows + CVs", "n": len(expired), "raw_s": raw_s, "raw_calls": raw_calls, "prod_s": prod_s,
           "prod_calls": prod_calls, "act_s": None}


def calls_text(calls: Counter) -> str:
    short = {"ListObjectsV2": "list", "ListObjectVersions": "list-versions", "DeleteObjects": "delete",
             "HeadObject": "head", "GetObjectTagging": "get-tags", "HeadBucket": "head-bucket",
             "GetBucketVersioning": "versioning", "GetObjectLockConfiguration": "lock-conf"}
    return " ".join(f"{short.get(k, k)}={v}" for k, v in sorted(calls.items()))


def report(r: dict[str, Any]) -> None:
    ratio = r["raw_s"] / r["prod_s"]
    act = f"{r['act_s']:>6.2f} {r['raw_s'] / r['act_s']:>9.2f}" if r["act_s"] is not None else f"{'-':>6} {'-':>9}"
    from scripts.bench_summary import shown

    print(f"{r['case']:<16} {r['n']:>7} {r['raw_s']:>6.2f} {r['prod_s']:>9.2f} {shown(ratio, '>=', TARGET):>5} "
          f"{'>=' + str(TARGET):>6} "
          f"{act}  {'met' if ratio >= TARGET else 'MISSED'}", flush=True)
    print(f"{'':<16} calls raw:     {calls_text(r['raw_calls'])}")
    print(f"{'':<16} calls product: {calls_text(r['prod_calls'])}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("objects", nargs="?", type=int, default=20_000)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--parts", default="sweep,owned")
    ap.add_argument("--results", help="write the ratios and their targets to this file (scripts/bench_summary.py)")
    args = ap.parse_args()
    started = time.time()
    from scripts.bench_summary import result, write_results

    summary, notes = [], []
    logging.basicConfig(level=logging.WARNING)
    moto = Moto()
    print(f"{'case':<16} {'objects':>7} {'raw s':>6} {'product s':>9} {'ratio':>5} {'target':>6} {'act s':>6} "
          f"{'act ratio':>9}", flush=True)
    try:
        parts = args.parts.split(",")
        if "sweep" in parts:
            for r in sweep_part(moto, args.objects):
                report(r)
                summary.append(result(f"{r['case']}, {r['n']:,} objects", r["raw_s"] / r["prod_s"], ">=", TARGET))
        if "owned" in parts:
            for r in owned_part(moto, args.rows):
                report(r)
                summary.append(result(f"{r['case']}, {r['n']:,} rows", r["raw_s"] / r["prod_s"], ">=", TARGET))
                notes.append(f"{r['case']}: product calls {calls_text(r['prod_calls'])} for {r['n']:,} rows")
    finally:
        moto.stop()
    print("ratio = raw seconds / product seconds (run_rule: check, plan, act, ledger), target >= 0.8; act = the "
          "product's delete stage alone (no plan before it: its own listing); moto's server over HTTP in this process")
    write_results(args.results, "bench_s3.py", summary, started, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
