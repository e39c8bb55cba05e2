"""`make bench`: the SQL sweep against the raw statement, measured in the same run.

    scripts/bench_sweep.py [ROWS ...] [--servers postgresql,mariadb] [--actions delete,lock,anonymize]
                           [--layouts interleaved,clustered] [--shapes base,...] [--explain]

For each server, layout and action a table of ROWS rows (default 1,000,000) is generated on the
server, 30% of them past their storage period (1% of those under legal hold), either interleaved
(expired rows spread over the whole table, dates unrelated to the key) or clustered by date (the
key follows the date, the expired rows are the oldest 30%), with an index on the date column:

- raw: one hand-written statement, ``DELETE ... WHERE created_at < cutoff AND NOT held``, or the
  ``UPDATE`` that locks (sets the lock marker and reason) or anonymizes (the same SQL masking
  expressions the product uses, plus the marker), timed on its own;
- ``--shapes`` (default ``base``): other schema shapes, each measured against its own raw statement:
  ``noindex`` (no index on the date column), ``computed`` (``start: {latest: [created_at, updated_at]}``,
  which no index matches; the raw statement uses the same expression), ``cascade`` (a child table, one
  row per third parent, ``on_delete: delete``: the raw baseline deletes the children and then the
  parents in one transaction), ``smallbatch`` (``batch_size: 500``), ``textpk`` (a text primary key and
  two more indexes);
- sweep: the same table regenerated, then the product's ``run_rule`` (plan, brake, bounded
  batches, ledger intent and outcome per batch into a SQLite file) in a child process, timed
  inside the child; the parent reads the child's peak RSS (``os.wait4``).

Prints rows/s of both, the ratio sweep/raw next to its target (>= 0.7: the sweep at least 0.7x the
raw statement's rows per second) and the sweep process's peak RSS. With two or more ROWS (``1000000
5000000``) every case runs at each size, and then: each case's ratio at the largest size over the
smallest (target >= 1: the ratio must not fall as the table grows) and per server the sweeps' peak RSS at
the largest size over the smallest (target <= 1.2). ``--results FILE``: those ratios and targets as JSON
for ``scripts/bench_summary.py``. ``--explain`` prints
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
SHAPES = ("base", "noindex", "computed", "cascade", "smallbatch", "textpk")
POLICY = """
systems:
  db:
    kind: sql
    connection: bench
    collections:
      events:
        table: bench_events
        primary_key: id
        columns: [id, email, ip, created_at, legal_hold, restricted_at, restriction_reason, anonymized_at{extra}]
        legal_hold: [{{column: legal_hold, equals: true}}]
        lock: {{at: restricted_at, reason: restriction_reason}}
        anonymized_marker: anonymized_at
        rules:
          - {{name: old_delete, start: {start}, action: delete, period: P30D, max_fraction: 0.9{batch}}}
          - {{name: old_lock, start: {start}, action: lock, period: P30D, max_fraction: 0.9{batch}}}
          - name: old_anonymize
            start: {start}
            action: anonymize
            period: P30D
            max_fraction: 0.9{batch_line}
            mask: {{email: {{strategy: redact}}, ip: {{strategy: "null"}}}}
{children}"""
CHILDREN = """      children:
        table: bench_children
        primary_key: id
        columns: [id, event_id, note]
        references:
          - {to: db.events, column: event_id, on_delete: delete}
"""


def policy_text(shape: str) -> str:
    computed = shape == "computed"
    small = shape == "smallbatch"
    return POLICY.format(
        extra=", updated_at" if computed else "",
        start="{latest: [created_at, updated_at]}" if computed else "created_at",
        batch=", batch_size: 500" if small else "",
        batch_line="\n            batch_size: 500" if small else "",
        children=CHILDREN if shape == "cascade" else "")


MASK = {"email": ("redact", None), "ip": ("null", None)}

def tables(shape: str) -> tuple[sa.MetaData, sa.Table]:
    md = sa.MetaData()
    key = sa.String(40) if shape == "textpk" else sa.BigInteger
    events = sa.Table(
        "bench_events", md,
        sa.Column("id", key, primary_key=True, autoincrement=False),
        sa.Column("email", sa.String(200)), sa.Column("ip", sa.String(45)),
        sa.Column("created_at", sa.DateTime), sa.Column("legal_hold", sa.Boolean),
        sa.Column("restricted_at", sa.DateTime), sa.Column("restriction_reason", sa.String(200)),
        sa.Column("anonymized_at", sa.DateTime),
        *([sa.Column("updated_at", sa.DateTime)] if shape == "computed" else []),
    )  # the indexes are built after the load
    if shape == "cascade":
        sa.Table("bench_children", md, sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
                 sa.Column("event_id", sa.BigInteger), sa.Column("note", sa.String(40)))
    return md, events


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


def fill(kind: str, engine: sa.Engine, n: int, layout: str, shape: str = "base") -> None:
    md, _ = tables(shape)
    with engine.begin() as conn:  # any earlier shape's tables
        for name in ("bench_children", "bench_events"):
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
    md.create_all(engine)
    age = _age_seconds(layout, n)
    pg = kind == "postgresql"
    i = "i" if pg else "seq"
    key = (f"md5({i}::text)" if pg else f"MD5({i})") if shape == "textpk" else i
    extra = ", NULL" if shape == "computed" else ""
    if pg:
        sql = (f"INSERT INTO bench_events SELECT {key}, 'p' || i || '@example.org', "
               f"'203.0.' || MOD(i, 256) || '.' || MOD(i, 250), "
               f"TIMESTAMP '{NOW:%Y-%m-%d %H:%M:%S}' - make_interval(secs => {age}), MOD(i, 97) = 0, "
               f"NULL, NULL, NULL{extra} FROM generate_series(0::bigint, {n - 1}) AS s(i)")
    else:
        sql = (f"INSERT INTO bench_events SELECT {key}, CONCAT('p', seq, '@example.org'), "
               f"CONCAT('203.0.', MOD(seq, 256), '.', MOD(seq, 250)), "
               f"TIMESTAMP'{NOW:%Y-%m-%d %H:%M:%S}' - INTERVAL ({age.replace('i', 'seq')}) SECOND, "
               f"MOD(seq, 97) = 0, NULL, NULL, NULL{extra} FROM seq_0_to_{n - 1}")
    series = f"generate_series(0::bigint, {n - 1}) AS s(i)" if pg else f"seq_0_to_{n - 1}"
    with engine.begin() as conn:
        conn.execute(sa.text(sql))
        if shape != "noindex":
            conn.execute(sa.text("CREATE INDEX ix_bench_events_created_at ON bench_events (created_at)"))
        if shape == "textpk":
            conn.execute(sa.text("CREATE INDEX ix_bench_events_email ON bench_events (email)"))
            conn.execute(sa.text("CREATE INDEX ix_bench_events_ip ON bench_events (ip)"))
        if shape == "cascade":  # one child for every third parent
            conn.execute(sa.text(f"INSERT INTO bench_children SELECT {i}, {i}, 'n' FROM {series} "
                                 f"WHERE MOD({i}, 3) = 0"))
            conn.execute(sa.text("CREATE INDEX ix_bench_children_event ON bench_children (event_id)"))
    names = ["bench_events"] + (["bench_children"] if shape == "cascade" else [])
    if pg:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for name in names:
                conn.execute(sa.text(f"VACUUM ANALYZE {name}"))
    else:
        with engine.begin() as conn:
            for name in names:
                conn.execute(sa.text(f"ANALYZE TABLE {name}"))


def raw_statements(action: str, shape: str = "base") -> list:
    """The hand-written statements (one transaction) doing what the rule does; the last one's rowcount counts."""
    from include.retention.policy import parse_policy
    from include.retention.stores.sql import SqlStore

    md, t = tables(shape)
    rule = parse_policy(policy_text(shape), source="bench.yaml").rule(f"db.events.old_{action}")[2]
    start = SqlStore.start_expr(rule, t)  # the column, or the same CASE the product computes
    where = [start < CUTOFF, sa.not_(sa.func.coalesce(t.c.legal_hold == sa.true(), sa.false()))]
    if action == "delete":
        first = []
        if shape == "cascade":
            children = md.tables["bench_children"]
            first = [children.delete().where(children.c.event_id.in_(sa.select(t.c.id).where(*where)))]
        return [*first, t.delete().where(*where)]
    if action == "lock":
        return [t.update().where(*where, t.c.restricted_at.is_(None)).values(restricted_at=NOW,
                                                                            restriction_reason=REASON)]
    values = {c: STRATEGIES[s].sql(t.c[c], v) for c, (s, v) in MASK.items()}
    return [t.update().where(*where, t.c.anonymized_at.is_(None)).values(**values, anonymized_at=NOW)]


def raw(engine: sa.Engine, action: str, shape: str = "base") -> tuple[int, float]:
    stmts = raw_statements(action, shape)
    t0 = time.perf_counter()
    with engine.begin() as conn:
        for stmt in stmts:
            n = conn.execute(stmt).rowcount
    return n, time.perf_counter() - t0


# ---- the sweep, in a child process ----------------------------------------------------------------
def child(url: str, action: str, explain: bool, shape: str) -> None:
    from include.retention.ledger import Ledger, RunRef
    from include.retention.policy import parse_policy
    from include.retention.stores.sql import SqlStore
    from include.retention.sweep import run_rule

    policy = parse_policy(policy_text(shape), source="bench.yaml")
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


def sweep(url: str, action: str, explain: bool, shape: str) -> tuple[dict, float]:
    proc = subprocess.Popen([sys.executable, __file__, "--child", url, action, shape,
                             *(["--explain"] if explain else [])],
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
              and ("bench_events" in s or "bench_children" in s) and "information_schema" not in s.lower()
              and ("count(" not in s.lower() or s.lstrip().upper().startswith("WITH")
                   or "FOR UPDATE" in s.upper())]  # not the plan query (MariaDB's batch count: a locking read)
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


def run(kind: str, rows: int, layout: str, action: str, do_explain: bool, shape: str = "base") -> dict:
    name, url = fresh(kind)
    engine = make_engine(url)
    try:
        fill(kind, engine, rows, layout, shape)
        expected, raw_s = raw(engine, action, shape)
        fill(kind, engine, rows, layout, shape)
        result, rss = sweep(url, action, do_explain, shape)
        assert result["changed"] == expected, (result["changed"], expected)
        plans = []
        if do_explain:
            fill(kind, engine, rows, layout, shape)
            plans = explain(kind, engine, [(s, p) for s, p in result["statements"]])
        return {"server": kind, "rows": rows, "layout": layout, "shape": shape, "action": action, "changed": expected,
                "raw_s": raw_s, "sweep_s": result["seconds"], "batches": result["batches"], "rss_mb": rss,
                "plans": plans}
    finally:
        engine.dispose()
        drop(kind, name)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], "--explain" in sys.argv, sys.argv[4])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("rows", nargs="*", type=int, default=[1_000_000],
                    help="table sizes (default 1,000,000); two or more add targets 1 (scaling) and 2 (memory)")
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--actions", default="delete,lock,anonymize")
    ap.add_argument("--layouts", default="interleaved,clustered")
    ap.add_argument("--shapes", default="base", help=f"comma-separated, of {', '.join(SHAPES)} (or 'all')")
    ap.add_argument("--explain", action="store_true")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--results", help="write the ratios and their targets to this file (scripts/bench_summary.py)")
    args = ap.parse_args()
    started = time.time()
    shapes = SHAPES if args.shapes == "all" else args.shapes.split(",")
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        ap.error(f"unknown shape {unknown[0]!r}; one of {', '.join(SHAPES)}")
    from scripts.bench_summary import result, shown, verdict, write_results

    print(f"{'server':<10} {'rows':>9} {'shape':<10} {'layout':<11} {'action':<9} {'changed':>8} {'raw r/s':>9} "
          f"{'sweep r/s':>9} {'batches':>7} {'ratio':>5} {'target':>6} {'RSS MB':>7}", flush=True)
    results, summary = [], []
    cases = [(k, sh, la, a) for sh in shapes for k in args.servers.split(",") for la in args.layouts.split(",")
             for a in args.actions.split(",")]
    for rows in args.rows:
        for kind, shape, layout, action in cases:
            r = run(kind, rows, layout, action, args.explain, shape)
            results.append(r)
            ratio = r["raw_s"] / r["sweep_s"]
            r["ratio"] = ratio
            print(f"{kind:<10} {rows:>9} {shape:<10} {layout:<11} {action:<9} {r['changed']:>8} "
                  f"{r['changed'] / r['raw_s']:>9.0f} {r['changed'] / r['sweep_s']:>9.0f} {r['batches']:>7} "
                  f"{shown(ratio, '>=', TARGET):>5} {'>=' + str(TARGET):>6} {r['rss_mb']:>7.1f}"
                  f"  {'met' if ratio >= TARGET else 'MISSED'}", flush=True)
            summary.append(result(f"{kind} {rows:,} {'' if shape == 'base' else shape + ' '}{layout} {action}",
                                  ratio, ">=", TARGET, rss_mb=round(r["rss_mb"], 1)))
            for plan in r["plans"]:
                print(plan, flush=True)
    print("ratio = sweep rows/s / raw statement rows/s (same rows, same run); RSS = peak of the sweep process")
    if len(args.rows) > 1:  # target 1's "must not grow" and target 2, between the smallest and largest size
        small, big = min(args.rows), max(args.rows)
        at = {(r["rows"], r["server"], r["shape"], r["layout"], r["action"]): r for r in results}
        print(f"\nfrom {small:,} to {big:,} rows (the sweep/raw ratio must not fall as the table grows; the peak RSS "
              f"within 20%):")
        for kind, shape, layout, action in cases:
            a, b = at[small, kind, shape, layout, action], at[big, kind, shape, layout, action]
            what = f"{kind} {'' if shape == 'base' else shape + ' '}{layout} {action}, ratio {big:,} / {small:,}"
            print(f"  {what}: {verdict(b['ratio'] / a['ratio'], '>=', 1.0, '')}")
            summary.append(result(what, b["ratio"] / a["ratio"], ">=", 1.0))
        for kind in args.servers.split(","):
            peak = {n: max(r["rss_mb"] for r in results if r["server"] == kind and r["rows"] == n)
                    for n in (small, big)}
            what = f"{kind} sweep peak RSS {big:,} / {small:,}"
            print(f"  {what} ({peak[big]:.1f} / {peak[small]:.1f} MB): "
                  f"{verdict(peak[big] / peak[small], '<=', 1.2, '')}")
            summary.append(result(what, peak[big] / peak[small], "<=", 1.2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    write_results(args.results, "bench_sweep.py", summary, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
