"""`make bench`: the access package's memory for a large subject (issue 11: "memory stays bounded").

    scripts/bench_access.py [SIZES] [--server URL]

For each size (default 10,000 and 100,000) a PostgreSQL table is generated on the server in which one person
has that many rows (plus as many rows of other people), each with a 200-character text, a date and bytes.
The product's ``PackageBuilder`` (include/retention/requests/access.py: find the person, read the rows in bounded
batches, pandas chunk by chunk into CSV and JSON files, one zip) builds the person's package in a child
process; the parent reads the child's peak RSS (``os.wait4``). As the baseline, measured in the same run and
the same way, a child that only imports (pandas too) and connects: what every package costs before its first row.

Prints, per size: rows in the package, the zip's size, the child's seconds and peak RSS, and the peak above
the baseline; then the ratio of the largest size's peak to the smallest's next to its target (<= 1.2: ten
times the rows, within 20% of the memory); exits 1 when it is missed. ``--results FILE``: the ratio and its
target as JSON for scripts/bench_summary.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SERVER = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
TARGET = 1.2
SUBJECT = "large.subject@example.org"
POLICY = """
categories:
  activity: {description: "activity records", purpose: "benchmark", legal_basis: "Art. 6(1)(f) GDPR",
             recipients: ["nobody"]}
systems:
  db:
    kind: sql
    connection: bench
    collections:
      activity:
        table: bench_activity
        primary_key: id
        columns: [id, email, note, payload, created_at]
        identities: {email: email}
        categories: [activity]
        rules:
          - {name: old, category: activity, start: created_at, action: delete, period: P36M}
"""


def fresh(server: str) -> tuple[str, str]:
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    name = f"bench_access_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return name, sa.engine.make_url(server).set(database=name).render_as_string(hide_password=False)


def drop(server: str, name: str) -> None:
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE {name} WITH (FORCE)"))
    admin.dispose()


def fill(url: str, n: int) -> None:
    """``n`` rows of the subject (the e-mail written three ways: identity equality, not string equality) and
    ``n`` rows of other people, generated on the server."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE bench_activity (id BIGINT PRIMARY KEY, email VARCHAR(254), note TEXT, "
                             "payload BYTEA, created_at TIMESTAMP)"))
        conn.execute(sa.text(
            "INSERT INTO bench_activity SELECT i, CASE WHEN i % 2 = 1 THEN 'p' || i || '@example.org' "
            "WHEN i % 3 = 0 THEN 'Large.Subject@Example.org' ELSE 'large.subject@example.org' END, "
            "repeat(md5(i::text), 6) || ' ' || i, decode(md5(i::text), 'hex'), "
            "TIMESTAMP '2026-01-01' + make_interval(secs => i) FROM generate_series(0::bigint, :m) AS s(i)"),
            {"m": 2 * n - 1})
        conn.execute(sa.text("CREATE INDEX ix_bench_activity_email ON bench_activity (lower(email))"))
        conn.execute(sa.text("ANALYZE bench_activity"))
    engine.dispose()


def child(url: str, baseline: bool) -> None:
    """Build the subject's package (or, for the baseline, import and connect only); JSON result on stdout."""
    import tempfile

    from include.retention.identity import normalise
    from include.retention.policy import parse_policy
    from include.retention.requests.access import PackageBuilder
    from include.retention.stores.base import Subject
    from include.retention.stores.sql import SqlStore, make_engine

    policy = parse_policy(POLICY, source="bench_access.yaml")
    engine = make_engine(url)
    store = SqlStore("db", policy, engine, mask_key=b"k" * 32)
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    if baseline:
        import pandas  # noqa: F401 - the package's rows go through pandas: part of the fixed cost
        json.dump({"rows": 0, "size": 0, "seconds": 0.0}, sys.stdout)
        return
    subject = Subject("bench", {"email": normalise("email", SUBJECT)})
    with tempfile.TemporaryDirectory() as tmp:
        builder = PackageBuilder(policy, lambda _system: store, [subject], request_id="bench", workdir=tmp)
        t0 = time.perf_counter()
        result = builder.build()
        seconds = time.perf_counter() - t0
        builder.close()
    json.dump({"rows": sum(result.rows.values()), "size": result.size, "seconds": seconds}, sys.stdout)


def measure(url: str, baseline: bool = False) -> tuple[dict, float]:
    """Run ``child`` in its own process; its result and peak RSS in MiB."""
    proc = subprocess.Popen([sys.executable, __file__, "--child", url, *(["--baseline"] if baseline else [])],
                            stdout=subprocess.PIPE, cwd=ROOT)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"bench_access: child failed ({os.waitstatus_to_exitcode(status)})")
    return json.loads(out), usage.ru_maxrss / 1024  # KiB on Linux


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sizes", nargs="*", type=int, default=[10_000, 100_000])
    parser.add_argument("--server", default=SERVER, help="PostgreSQL admin URL (a database is created and dropped)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--results", help="write the ratio and its target to this file (scripts/bench_summary.py)")
    args = parser.parse_args()
    started = time.time()
    if args.child:
        child(args.child, args.baseline)
        return 0
    sizes = sorted(args.sizes)
    print(f"access package memory: one subject with {', '.join(f'{n:,}' for n in sizes)} rows "
          f"(PostgreSQL; peak RSS of the building process, os.wait4)")
    peaks = {}
    for n in sizes:
        name, url = fresh(args.server)
        try:
            fill(url, n)
            _, base = measure(url, baseline=True)
            result, peak = measure(url)
        finally:
            drop(args.server, name)
        if result["rows"] != n:
            raise SystemExit(f"bench_access: the package holds {result['rows']} rows, expected {n}")
        peaks[n] = peak
        print(f"  {n:>9,} rows: package {result['size'] / 1e6:7.1f} MB in {result['seconds']:6.1f} s; "
              f"peak RSS {peak:6.1f} MiB (baseline, import and connect only: {base:6.1f} MiB; "
              f"above it: {peak - base:6.1f} MiB)")
    if len(sizes) > 1:
        from scripts.bench_summary import result, verdict, write_results

        ratio = peaks[sizes[-1]] / peaks[sizes[0]]
        print(f"  peak RSS {sizes[-1]:,} / {sizes[0]:,} rows: {verdict(ratio, '<=', TARGET)}")
        write_results(args.results, "bench_access.py", [
            result(f"access package peak RSS, {sizes[-1]:,} / {sizes[0]:,} rows", ratio, "<=", TARGET)], started)
        return 0 if ratio <= TARGET else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
