"""The ``orphaned`` rule (stamp, clear, delete) against the raw statements, measured in the same run.

    scripts/bench_orphans.py [ROWS] [--servers postgresql,mariadb]

For each server a parent table of ROWS rows (default 200,000) and a child table referencing 60% of
them (index on the reference) are generated on the server. Of the unreferenced 40%, half carry an
``orphaned_since`` stamp older than the rule's period (1% of those under legal hold), half none;
5% of the referenced parents carry a stale stamp. Then:

- raw: three hand-written statements, ``UPDATE ... SET orphaned_since = now WHERE orphaned_since IS
  NULL AND NOT EXISTS (child)``, the ``UPDATE`` that clears stale stamps, and ``DELETE ... WHERE
  orphaned_since < cutoff AND NOT held AND NOT EXISTS (child)``, timed together;
- sweep: the same tables regenerated, then the product's ``run_rule`` (stamp and clear in bounded
  batches with a ledger entry each, plan, brake, the delete in bounded batches with ledger intent
  and outcome), timed in this process.

Prints rows/s of both over the rows changed (stamped + cleared + deleted) and the ratio sweep/raw.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from include.retention.ledger import Ledger, RunRef, entries  # noqa: E402
from include.retention.policy import parse_policy  # noqa: E402
from include.retention.stores.sql import SqlStore, make_engine  # noqa: E402
from include.retention.sweep import run_rule  # noqa: E402
from scripts.bench_sweep import SERVERS, drop, fresh  # noqa: E402

NOW = dt.datetime(2026, 11, 24)
CUTOFF = NOW - dt.timedelta(days=182)
POLICY = """
defaults: {max_fraction: 1.0, batch_size: 1000}
systems:
  db:
    kind: sql
    connection: bench
    collections:
      parents:
        table: bench_parents
        primary_key: id
        columns: [id, orphaned_since, legal_hold]
        legal_hold: [{column: legal_hold, equals: true}]
        rules: [{name: orphaned, start: {orphaned: orphaned_since}, action: delete, period: P6M}]
      children:
        table: bench_children
        primary_key: id
        columns: [id, parent_id]
        references: [{to: db.parents, column: parent_id, on_delete: delete}]
"""

md = sa.MetaData()
parents = sa.Table("bench_parents", md, sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
                   sa.Column("orphaned_since", sa.DateTime), sa.Column("legal_hold", sa.Boolean))
children = sa.Table("bench_children", md, sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
                    sa.Column("parent_id", sa.BigInteger))


def fill(kind: str, engine: sa.Engine, n: int) -> None:
    """Parent i is referenced when i % 10 < 6; unreferenced ones: i % 10 in (6, 7) stamped a year ago, (8, 9)
    unstamped; referenced ones with i % 20 == 0 carry a stale stamp."""
    md.drop_all(engine)
    md.create_all(engine)
    old = f"TIMESTAMP '{NOW - dt.timedelta(days=365):%Y-%m-%d %H:%M:%S}'"
    stamp = f"CASE WHEN MOD(i, 10) IN (6, 7) OR MOD(i, 20) = 0 THEN {old} END"
    if kind == "postgresql":
        series = f"generate_series(0::bigint, {n - 1}) AS s(i)"
        sqls = [f"INSERT INTO bench_parents SELECT i, {stamp}, MOD(i, 10) = 6 AND MOD(i, 100) = 6 FROM {series}",
                f"INSERT INTO bench_children SELECT i, i FROM {series} WHERE MOD(i, 10) < 6"]
    else:
        sqls = [f"INSERT INTO bench_parents SELECT seq, {stamp.replace('i,', 'seq,')}, "
                f"MOD(seq, 10) = 6 AND MOD(seq, 100) = 6 FROM seq_0_to_{n - 1}",
                f"INSERT INTO bench_children SELECT seq, seq FROM seq_0_to_{n - 1} WHERE MOD(seq, 10) < 6"]
    with engine.begin() as conn:
        for sql in sqls:
            conn.execute(sa.text(sql))
        conn.execute(sa.text("CREATE INDEX ix_bench_children_parent ON bench_children (parent_id)"))
        conn.execute(sa.text("CREATE INDEX ix_bench_parents_orphaned ON bench_parents (orphaned_since)"))
    if kind == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE bench_parents"))
            conn.execute(sa.text("VACUUM ANALYZE bench_children"))
    else:
        with engine.begin() as conn:
            conn.execute(sa.text("ANALYZE TABLE bench_parents, bench_children"))


def raw(engine: sa.Engine) -> tuple[int, float]:
    p, c = parents, children
    free = sa.not_(sa.exists().where(c.c.parent_id == p.c.id))
    stmts = [p.update().where(p.c.orphaned_since.is_(None), free).values(orphaned_since=NOW),
             p.update().where(p.c.orphaned_since.is_not(None), sa.not_(free)).values(orphaned_since=None),
             p.delete().where(p.c.orphaned_since < CUTOFF, sa.not_(sa.func.coalesce(p.c.legal_hold, False)), free)]
    t0 = time.perf_counter()
    n = 0
    with engine.begin() as conn:
        for stmt in stmts:
            n += conn.execute(stmt).rowcount
    return n, time.perf_counter() - t0


def sweep(url: str) -> tuple[int, float, int]:
    policy = parse_policy(POLICY, source="bench-orphans.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(make_engine(f"sqlite:///{tmp}/ledger.db"), b"k" * 32)
        ledger.ensure_schema()
        store = SqlStore("db", policy, make_engine(url), mask_key=b"k" * 32)
        t0 = time.perf_counter()
        counts = run_rule(policy, "db.parents.orphaned", store, ledger, RunRef("bench", "orphans"), now=NOW)
        seconds = time.perf_counter() - t0
        with ledger.engine.connect() as conn:
            marked = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(entries.c.count), 0), sa.func.count())
                                  .where(entries.c.action.in_(["orphan_stamp", "orphan_clear"]))).one()
        store.close()
        ledger.engine.dispose()
    return int(marked[0]) + counts["deleted"], seconds, int(marked[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("rows", nargs="?", type=int, default=200_000)
    ap.add_argument("--servers", default=",".join(SERVERS))
    args = ap.parse_args()
    print(f"{'server':<10} {'rows':>9} {'changed':>8} {'raw r/s':>9} {'sweep r/s':>9} {'mark batches':>12} "
          f"{'ratio':>5}", flush=True)
    for kind in args.servers.split(","):
        name, url = fresh(kind)
        engine = make_engine(url)
        try:
            fill(kind, engine, args.rows)
            expected, raw_s = raw(engine)
            fill(kind, engine, args.rows)
            changed, sweep_s, batches = sweep(url)
            assert changed == expected, (changed, expected)
            print(f"{kind:<10} {args.rows:>9} {changed:>8} {changed / raw_s:>9.0f} {changed / sweep_s:>9.0f} "
                  f"{batches:>12} {raw_s / sweep_s:>5.2f}", flush=True)
        finally:
            engine.dispose()
            drop(kind, name)
    print("ratio = sweep rows/s / raw statements' rows/s (same rows, same run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
