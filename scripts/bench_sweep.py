"""`make bench`: sweep throughput against a raw SQL baseline, measured in the same run.

For N and 2N rows on the machine's PostgreSQL (and MariaDB), half of them past their storage
period: the baseline is one hand-written `DELETE ... WHERE created_at < cutoff`; the product
deletes the same rows through `run_rule` (plan, brake, bounded batches, ledger entry per
batch). Prints the ratio product/baseline and the Python peak memory of the sweep, which must
not grow with N (memory holds one batch of keys).
"""

from __future__ import annotations

import datetime as dt
import sys
import time
import tracemalloc
import uuid
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from include.retention.ledger import Ledger, RunRef  # noqa: E402
from include.retention.policy import parse_policy  # noqa: E402
from include.retention.stores.sql import SqlStore, make_engine  # noqa: E402
from include.retention.sweep import run_rule  # noqa: E402

SERVERS = {
    "postgresql": "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres",
    "mariadb": "mysql+pymysql://root@127.0.0.1:3306/mysql?charset=utf8mb4",
}
POLICY = """
systems:
  db:
    kind: sql
    connection: bench
    collections:
      events:
        table: bench_events
        primary_key: id
        columns: [id, email, created_at, legal_hold]
        legal_hold: [{column: legal_hold, equals: true}]
        rules:
          - {name: old, start: created_at, action: delete, period: P30D, max_fraction: 0.9, batch_size: 5000}
"""
NOW = dt.datetime(2026, 11, 24)
md = sa.MetaData()
events = sa.Table("bench_events", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                  sa.Column("email", sa.String(200)), sa.Column("created_at", sa.DateTime, index=True),
                  sa.Column("legal_hold", sa.Boolean))


def fresh(kind: str) -> tuple[str, sa.Engine]:
    admin = sa.create_engine(SERVERS[kind], isolation_level="AUTOCOMMIT")
    name = f"bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    url = sa.engine.make_url(SERVERS[kind]).set(database=name).render_as_string(hide_password=False)
    return name, make_engine(url)


def drop(kind: str, name: str) -> None:
    admin = sa.create_engine(SERVERS[kind], isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE {name}" + (" WITH (FORCE)" if kind == "postgresql" else "")))


def fill(engine: sa.Engine, n: int) -> None:
    md.drop_all(engine)
    md.create_all(engine)
    with engine.begin() as conn:
        for start in range(0, n, 10_000):
            conn.execute(events.insert(), [
                {"id": i, "email": f"p{i}@example.org", "created_at": NOW - dt.timedelta(days=10 + (i % 2) * 40),
                 "legal_hold": i % 97 == 0} for i in range(start, min(n, start + 10_000))])


def bench(kind: str, n: int) -> tuple[float, float, float, int]:
    name, engine = fresh(kind)
    try:
        fill(engine, n)
        cutoff = NOW - dt.timedelta(days=30)
        t0 = time.perf_counter()
        with engine.begin() as conn:
            raw = conn.execute(events.delete().where(events.c.created_at < cutoff,
                                                     sa.not_(sa.func.coalesce(events.c.legal_hold, False)))).rowcount
        baseline = time.perf_counter() - t0

        policy = parse_policy(POLICY, source="bench.yaml")

        def sweep() -> tuple[dict, float]:
            fill(engine, n)
            store = SqlStore("db", policy, engine, mask_key=b"k" * 32)
            ledger = Ledger(make_engine("sqlite://"), b"k" * 32)
            t0 = time.perf_counter()
            counts = run_rule(policy, "db.events.old", store, ledger, RunRef("bench", "bench"),
                              now=NOW.replace(tzinfo=dt.UTC))
            return counts, time.perf_counter() - t0

        counts, product = sweep()
        assert counts["deleted"] == raw, (counts["deleted"], raw)
        # memory in a separate run: tracemalloc slows every allocation down
        tracemalloc.start()
        sweep()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return baseline, product, peak / 1e6, raw
    finally:
        engine.dispose()
        drop(kind, name)


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    print(f"{'server':<11} {'rows':>8} {'deleted':>8} {'raw s':>7} {'sweep s':>8} {'ratio':>6} {'peak MB':>8}")
    for kind in SERVERS:
        for rows in (n, 2 * n):
            baseline, product, peak, deleted = bench(kind, rows)
            print(f"{kind:<11} {rows:>8} {deleted:>8} {baseline:>7.2f} {product:>8.2f} "
                  f"{product / baseline:>6.2f} {peak:>8.1f}")
    print("ratio = sweep time / one raw DELETE; peak MB = Python heap of the sweep (flat in rows = bounded batches)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
