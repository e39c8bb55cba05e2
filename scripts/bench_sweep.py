"""`make bench`: the SQL sweep against the raw statement, measured in the same run.

    scripts/bench_sweep.py [ROWS] [--servers postgresql,mariadb] [--actions delete,lock,anonymize]
                           [--layouts interleaved,clustered] [--explain]

For each server, layout and action a table of ROWS rows (default 1,000,000) is generated on the
server, 30% of them past their storage period (1% of those under legal hold), either interleaved
(expired rows spread over the whole table, dates unrelated to the key) or clustered by date (the
key follows the date, the expired rows are the oldest 30%), with an index on the date column:

- raw: one hand-written statement, ``DELETE ... WHERE created_at < cutoff AND NOT held``, or the
  ``UPDATE`` that locks (sets the lock marker and reason) or anonymizes (the same SQL masking
  expressions the product uses, plus the marker), timed on its own;
- sweep: the same table regenerated, then the product's ``run_rule`` (plan, brake, bounded
  batches, ledger intent and outcome per batch into a SQLite file) in a child process, timed
  inside the child; the parent reads the child's peak RSS (``os.wait4``).

Prints rows/s of both, the ratio sweep/raw next to its target (>= 0.7: the sweep at least 0.7x the
raw statement's rows per second) and the sweep process's peak RSS. ``--explain`` prints
``EXPLAIN (ANALYZE, BUFFERS)`` (PostgreSQL) / ``ANALYZE`` (MariaDB) of the statements of the
sweep's second batch, each inside a rolled-back transaction.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from include.retention.masking import STRATEGIES  # noqa: E402
from include.retention.stores.sql import make_engine  # noqa: E402

SERVERS = {
    "postgresql": "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres",
    "mariadb": "mysql+pymysql://root@127.0.0.1:3306/mysql?charset=utf8mb4",
}
TARGET = 0.7
EXPIRED = 0.3
NOW = dt.datetime(2026, 11, 24)
CUTOFF = NOW - dt.timedelta(days=30)
REASON = "retention:db.events.old_lock"
POLICY = """
systems:
  db:
    kind: sql
    connection: bench
    collections:
      events:
        table: bench_events
        primary_key: id
        columns: [id, email, ip, created_at, legal_hold, restricted_at, restriction_reason, anonymized_at]
        legal_hold: [{column: legal_hold, equals: true}]
        lock: {at: restricted_at, reason: restriction_reason}
        anonymized_marker: anonymized_at
        rules:
          - {name: old_delete, start: created_at, action: delete, period: P30D, max_fraction: 0.9}
          - {name: old_lock, start: created_at, action: lock, period: P30D, max_fraction: 0.9}
          - name: old_anonymize
            start: created_at
            action: anonymize
            period: P30D
            max_fraction: 0.9
            mask: {email: {strategy: redact}, ip: {strategy: "null"}}
"""
MASK = {"email": ("redact", None), "ip": ("null", None)}

md = sa.MetaData()
events = sa.Table(
    "bench_events", md,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("email", sa.String(200)), sa.Column("ip", sa.String(45)),
    sa.Column("created_at", sa.DateTime), sa.Column("legal_hold", sa.Boolean),
    sa.Column("restricted_at", sa.DateTime), sa.Column("restriction_reason", sa.String(200)),
    sa.Column("anonymized_at", sa.DateTime),
)  # the index on created_at is built after the load


# ---- data -----------------------------------------------------------------------------------
def fresh(kind: str) -> tuple[str, str]:
    admin = sa.create_engine(SERVERS[kind], isolation_level="AUTOCOMMIT")
    name = f"bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return name, sa.engine.make_url(SERVERS[kind]).set(database=name).render_as_string(hide_password=False)


def drop(kind: str, name: str) -> None:
    admin = sa.create_engine(SERVERS[kind], isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE {name}" + (" WITH (FORCE)" if kind == "postgresql" else "")))
    admin.dispose()


def _age_seconds(layout: str, n: int) -> str:
    """SQL for the age of row ``i`` in seconds: 30% older than 30 days."""
    month, year = 30 * 86400, 365 * 86400
    if layout == "interleaved":  # every 10th, 11th, 12th ... row expired, dates scattered
        return (f"CASE WHEN MOD(i, 10) < 3 THEN {month + 1} + MOD(i * 7919, {year}) "
                f"ELSE MOD(i * 7919, {month - 1}) END")
    # clustered: the key follows the date, the oldest 30% first
    return f"FLOOR({month}.0 * ({n} - i) / {round(n * (1 - EXPIRED))}.0)"


def fill(kind: str, engine: sa.Engine, n: int, layout: str) -> None:
    md.drop_all(engine)
    md.create_all(engine)
    age = _age_seconds(layout, n)
    if kind == "postgresql":
        sql = (f"INSERT INTO bench_events SELECT i, 'p' || i || '@example.org', "
               f"'203.0.' || MOD(i, 256) || '.' || MOD(i, 250), "
               f"TIMESTAMP '{NOW:%Y-%m-%d %H:%M:%S}' - make_interval(secs => {age}), MOD(i, 97) = 0, "
               f"NULL, NULL, NULL FROM generate_series(0::bigint, {n - 1}) AS s(i)")
    else:
        sql = (f"INSERT INTO bench_events SELECT seq, CONCAT('p', seq, '@example.org'), "
               f"CONCAT('203.0.', MOD(seq, 256), '.', MOD(seq, 250)), "
               f"TIMESTAMP'{NOW:%Y-%m-%d %H:%M:%S}' - INTERVAL ({age.replace('i', 'seq')}) SECOND, "
               f"MOD(seq, 97) = 0, NULL, NULL, NULL FROM seq_0_to_{n - 1}")
    with engine.begin() as conn:
        conn.execute(sa.text(sql))
        conn.execute(sa.text("CREATE INDEX ix_bench_events_created_at ON bench_events (created_at)"))
    if kind == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE bench_events"))
    else:
        with engine.begin() as conn:
            conn.execute(sa.text("ANALYZE TABLE bench_events"))


def raw_statement(action: str):
    t = events
    where = [t.c.created_at < CUTOFF, sa.not_(sa.func.coalesce(t.c.legal_hold == sa.true(), sa.false()))]
    if action == "delete":
        return t.delete().where(*where)
    if action == "lock":
        return t.update().where(*where, t.c.restricted_at.is_(None)).values(restricted_at=NOW,
                                                                           restriction_reason=REASON)
    values = {c: STRATEGIES[s].sql(t.c[c], v) for c, (s, v) in MASK.items()}
    return t.update().where(*where, t.c.anonymized_at.is_(None)).values(**values, anonymized_at=NOW)


def raw(engine: sa.Engine, action: str) -> tuple[int, float]:
    stmt = raw_statement(action)
    t0 = time.perf_counter()
    with engine.begin() as conn:
        n = conn.execute(stmt).rowcount
    return n, time.perf_counter() - t0


# ---- the sweep, in a child process ----------------------------------------------------------------
def child(url: str, action: str, explain: bool) -> None:
    from include.retention.ledger import Ledger, RunRef
    from include.retention.policy import parse_policy
    from include.retention.stores.sql import SqlStore
    from include.retention.sweep import run_rule

    policy = parse_policy(POLICY, source="bench.yaml")
    engine = make_engine(url)
    statements: list[tuple[str, object]] = []
    if explain:
        @sa.event.listens_for(engine, "before_cursor_execute")
        def _capture(conn, cursor, statement, parameters, context, executemany):
            statements.append((statement, parameters))

    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(make_engine(f"sqlite:///{tmp}/ledger.db"), b"k" * 32)
        store = SqlStore("db", policy, engine, mask_key=b"k" * 32)
        t0 = time.perf_counter()
        counts = run_rule(policy, f"db.events.old_{action}", store, ledger, RunRef("bench", "bench"),
                          now=NOW.replace(tzinfo=dt.UTC))
        seconds = time.perf_counter() - t0
        batches = sum(1 for r in ledger.rows() if r["outcome"] == "done" and r["action"] == action)
    json.dump({"seconds": seconds, "changed": counts[{"delete": "deleted", "lock": "locked",
                                                      "anonymize": "anonymized"}[action]],
               "batches": batches, "statements": [[s, _jsonable(p)] for s, p in statements]}, sys.stdout)


def _jsonable(params):
    if isinstance(params, dict):
        return {k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in params.items()}
    if isinstance(params, (list, tuple)):
        return [v.isoformat() if isinstance(v, dt.datetime) else v for v in params]
    return params


def sweep(url: str, action: str, explain: bool) -> tuple[dict, float]:
    proc = subprocess.Popen([sys.executable, __file__, "--child", url, action, *(["--explain"] if explain else [])],
                            stdout=subprocess.PIPE, cwd=ROOT)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"sweep child failed ({proc.returncode})")
    return json.loads(out), usage.ru_maxrss / 1024  # KiB on Linux


def explain(kind: str, engine: sa.Engine, statements: list) -> list[str]:
    """EXPLAIN ANALYZE of the act loop's second batch (the first one after a plan and a first batch)."""
    out = []
    acting = [(s, p) for s, p in statements if s.lstrip().upper().startswith(("SELECT", "DELETE", "UPDATE", "WITH"))
              and "bench_events" in s and "information_schema" not in s.lower()
              and ("count(" not in s.lower() or s.lstrip().upper().startswith("WITH"))]  # not the plan query
    # statements repeat per batch (same text, new values): take each one's second run when there is one
    chosen: dict[str, object] = {}
    for s, p in acting:
        if s not in chosen or chosen[s][0] < 2:
            chosen[s] = (chosen.get(s, (0, None))[0] + 1, p)
    chosen = [(s, p) for s, (_, p) in chosen.items()]
    raw_conn = engine.raw_connection()
    try:
        for s, p in chosen:
            cur = raw_conn.cursor()
            prefix = "EXPLAIN (ANALYZE, BUFFERS) " if kind == "postgresql" else "ANALYZE "
            cur.execute(prefix + s, p)
            lines = [" | ".join(str(c) for c in row) for row in cur.fetchall()]
            if kind == "mariadb":
                lines.insert(0, " | ".join(d[0] for d in cur.description))
            out.append(f"-- {' '.join(s.split())}\n" + "\n".join(lines))
            raw_conn.rollback()
    finally:
        raw_conn.rollback()
        raw_conn.close()
    return out


def run(kind: str, rows: int, layout: str, action: str, do_explain: bool) -> dict:
    name, url = fresh(kind)
    engine = make_engine(url)
    try:
        fill(kind, engine, rows, layout)
        expected, raw_s = raw(engine, action)
        fill(kind, engine, rows, layout)
        result, rss = sweep(url, action, do_explain)
        assert result["changed"] == expected, (result["changed"], expected)
        plans = []
        if do_explain:
            fill(kind, engine, rows, layout)
            plans = explain(kind, engine, [(s, p) for s, p in result["statements"]])
        return {"server": kind, "rows": rows, "layout": layout, "action": action, "changed": expected,
                "raw_s": raw_s, "sweep_s": result["seconds"], "batches": result["batches"], "rss_mb": rss,
                "plans": plans}
    finally:
        engine.dispose()
        drop(kind, name)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], "--explain" in sys.argv)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("rows", nargs="?", type=int, default=1_000_000)
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--actions", default="delete,lock,anonymize")
    ap.add_argument("--layouts", default="interleaved,clustered")
    ap.add_argument("--explain", action="store_true")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    print(f"{'server':<10} {'rows':>9} {'layout':<11} {'action':<9} {'changed':>8} {'raw r/s':>9} "
          f"{'sweep r/s':>9} {'batches':>7} {'ratio':>5} {'target':>6} {'RSS MB':>7}", flush=True)
    results = []
    for kind in args.servers.split(","):
        for layout in args.layouts.split(","):
            for action in args.actions.split(","):
                r = run(kind, args.rows, layout, action, args.explain)
                results.append(r)
                ratio = r["raw_s"] / r["sweep_s"]
                print(f"{kind:<10} {args.rows:>9} {layout:<11} {action:<9} {r['changed']:>8} "
                      f"{r['changed'] / r['raw_s']:>9.0f} {r['changed'] / r['sweep_s']:>9.0f} {r['batches']:>7} "
                      f"{ratio:>5.2f} {'>=' + str(TARGET):>6} {r['rss_mb']:>7.1f}"
                      f"{'' if ratio >= TARGET else '  MISSED'}", flush=True)
                for plan in r["plans"]:
                    print(plan, flush=True)
    print("ratio = sweep rows/s / raw statement rows/s (same rows, same run); RSS = peak of the sweep process")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
