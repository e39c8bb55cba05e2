"""`make bench`: one person with ``lookup: indexed`` (ADR 0022) against the raw indexed statements, same run.

    scripts/bench_lookup.py [ROWS ...] [--server postgresql|mariadb ...] [--intake N] [--sample N] [--backfill]
                            [--scan] [--check] [--repeat N] [--results FILE]

Per server (default both) and size (default 100,000 and 1,000,000 rows): a fresh database with a table
``contacts(id, email, note)`` of ROWS other people and the digest column, index and triggers ``cli
index-identities`` prints. The other people's digests are written by the filling statement itself (their
addresses are already in normal form, so SQL's SHA-256 is the product's digest: checked against Python's on a
sample); ``--backfill`` leaves them NULL and times the product's backfill instead (minutes at 1M rows, tens of
minutes at 10M on MariaDB). Then one subject in three spellings (case, surrounding spaces) and one lookalike (an
accent) that must survive, digested by the product's backfill. Timed, each the best of ``--repeat`` (default 3),
each erasure on its own copy of the subject's rows:

- erasure: the product's ``find`` (through the digest index) + ``erase`` + ``remaining`` (the request's own
  verification, through the index too: the retention sweep's independent check covers what the index cannot
  see) against the raw statements: ``DELETE`` + the verifying ``SELECT count(*)`` (PostgreSQL:
  ``lower(trim(email)) = :x`` over an index on that expression; MariaDB: ``email IN (<the three spellings>)``
  over an index on ``email`` under its default collation, and the same spellings compared as bytes, since that
  collation also matches the lookalike);
- access package: the product's ``PackageBuilder`` (find, read, CSV and JSON files, one zip; warmed once: pandas
  imported, as in a running worker) against the raw indexed ``SELECT`` of the person's rows;
- with ``--scan``: erasure with ``lookup: scan`` (the full read of before the index), for comparison;
- with ``--check``: the retention sweep's independent check of erasures over the whole table (printed, no target).

Then, at the largest size not above 1,000,000 rows, intake of ``--intake`` people (default 1,000; two rows
each, every tenth with a lookalike that must stay): one batch as the erasure intake runs it (identity
resolution, ``find``, ``erase``, ``remaining``: one ``IN`` query per 500 digests and step) against the same
steps one person at a time (``--sample`` people, default 100, extrapolated), both after an untimed batch of five
(statement caches and lazy imports warm, as in a running worker).

Each size runs in its own spawned interpreter, whose peak RSS (VmHWM) after the one-person timings is its
memory figure (before the intake, which only the smaller size runs).

Prints each ratio next to its target (product / raw <= 20; the largest size's time over the smallest's <= 1.5:
flat; the largest size's peak RSS over the smallest's <= 1.2; intake: the one-at-a-time loop / the batch >= 20)
and checks the outcome: exactly the subjects' rows gone, every lookalike kept, the package holding exactly the
subject's rows. ``--results FILE``: the ratios as JSON for
scripts/bench_summary.py. The machine's load is printed with each size (the cores may be shared).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from include.retention.identity import normalise  # noqa: E402
from include.retention.policy import parse_policy  # noqa: E402
from include.retention.stores import sql_index  # noqa: E402
from include.retention.stores.base import Subject  # noqa: E402
from include.retention.stores.sql import SqlStore, make_engine  # noqa: E402

SERVERS = {
    "postgresql": "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres",
    "mariadb": "mysql+pymysql://root@127.0.0.1:3306/mysql?charset=utf8mb4",
}
TARGET_RAW, TARGET_FLAT, TARGET_INTAKE, TARGET_RSS = 20.0, 1.5, 20.0, 1.2
INTAKE_MAX_ROWS = 1_000_000
SPELLINGS = ["zoe.subject@bench.example", "  ZOE.Subject@bench.example ", "ZOE.SUBJECT@BENCH.EXAMPLE"]
LOOKALIKE = "zoë.subject@bench.example"
MASK_KEY = b"bench-key-" + b"x" * 32
POLICY = """version: 1
systems:
  crm:
    kind: sql
    connection: crm_db
    collections:
      contacts:
        table: contacts
        primary_key: id
        columns: [id, email, note]
        identities: {email: %s}
"""


def policy_for(lookup: str):
    spec = "{column: email, lookup: indexed}" if lookup == "indexed" else "email"
    return parse_policy(POLICY % spec, source="bench-policy.yaml")


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


def fill(engine: sa.Engine, rows: int, digests: bool) -> None:
    """``rows`` other people, ids 1..rows, made by the server (generate_series / MariaDB's sequence engine), with
    their digests when ``digests`` (SQL's SHA-256 of ``email\\0<address>``: the addresses are in normal form), then
    the index and triggers of the DDL."""
    dialect = engine.dialect.name
    statements = sql_index.ddl(dialect, "contacts", "email", ["id"])
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE contacts (id BIGINT PRIMARY KEY, email VARCHAR(254), note VARCHAR(20))")
        conn.exec_driver_sql(statements[0])  # the digest column
        if dialect == "postgresql":
            digest = ("encode(sha256(convert_to('email', 'UTF8') || decode('00', 'hex') || convert_to(e, 'UTF8')), "
                      "'hex')") if digests else "NULL"
            conn.exec_driver_sql(f"INSERT INTO contacts SELECT g, e, 'n', {digest} FROM "
                                 f"(SELECT g, 'p' || g || '@bench.example' AS e FROM generate_series(1, {rows}) g) s")
            conn.exec_driver_sql("CREATE INDEX contacts_email_raw ON contacts (lower(trim(email)))")
        else:
            digest = "SHA2(CONCAT('email', CHAR(0), e), 256)" if digests else "NULL"
            conn.exec_driver_sql(f"INSERT INTO contacts SELECT seq, e, 'n', {digest} FROM "
                                 f"(SELECT seq, CONCAT('p', seq, '@bench.example') AS e FROM seq_1_to_{rows}) s")
            conn.exec_driver_sql("CREATE INDEX contacts_email_raw ON contacts (email)")
        for statement in statements[1:]:
            conn.exec_driver_sql(statement)
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE contacts" if dialect == "postgresql" else "ANALYZE TABLE contacts")
        if digests:  # the server's digests are the product's
            sample = conn.execute(sa.text("SELECT email, email_ndigest FROM contacts WHERE id IN (1, :m, :n)"),
                                  {"m": max(rows // 2, 1), "n": rows}).all()
            if any(d != sql_index.value_digest("email", e) for e, d in sample):
                raise SystemExit("bench_lookup: the server's digests differ from the product's")


def add_rows(engine: sa.Engine, start: int, emails: list[str], note: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO contacts (id, email, note) VALUES (:i, :e, :n)"),
                     [{"i": start + i, "e": e, "n": note} for i, e in enumerate(emails)])


def notes(engine: sa.Engine, note: str) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.execute(sa.text("SELECT email FROM contacts WHERE note = :n"), {"n": note}).scalars())


def clear(engine: sa.Engine, note: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM contacts WHERE note = :n"), {"n": note})


def raw_where(dialect: str) -> tuple[str, dict]:
    """The raw indexed predicate of the subject's rows, and its binds."""
    if dialect == "postgresql":
        return "lower(trim(email)) = :x", {"x": SPELLINGS[0]}
    # the index under the default collation, then the exact spellings (the collation also matches the lookalike)
    return "email IN :x AND CAST(email AS BINARY) IN :x", {"x": SPELLINGS}


def raw_statement(sql: str, dialect: str) -> sa.TextClause:
    statement = sa.text(sql)
    return statement if dialect == "postgresql" else statement.bindparams(sa.bindparam("x", expanding=True))


def raw_erasure(engine: sa.Engine) -> float:
    """DELETE of the subject's rows and the verifying count, through the raw index; seconds."""
    where, binds = raw_where(engine.dialect.name)
    t0 = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(raw_statement(f"DELETE FROM contacts WHERE {where}", engine.dialect.name), binds)
    with engine.connect() as conn:
        left = conn.execute(raw_statement(f"SELECT count(*) FROM contacts WHERE {where}", engine.dialect.name),
                            binds).scalar()
    seconds = time.perf_counter() - t0
    if left:
        raise SystemExit("bench_lookup: the raw DELETE left rows")
    return seconds


def raw_access(engine: sa.Engine) -> tuple[float, int]:
    where, binds = raw_where(engine.dialect.name)
    t0 = time.perf_counter()
    with engine.connect() as conn:
        rows = conn.execute(raw_statement(f"SELECT id, email, note FROM contacts WHERE {where}", engine.dialect.name),
                            binds).all()
    return time.perf_counter() - t0, len(rows)


def product_erasure(engine: sa.Engine, lookup: str) -> float:
    """find + erase + verify of one person with ``lookup``; seconds."""
    store = SqlStore("crm", policy_for(lookup), engine, mask_key=MASK_KEY)
    subject = [Subject("r1", {"email": normalise("email", SPELLINGS[0])})]
    store.check("contacts")  # reflection and the schema check, as every run does once
    t0 = time.perf_counter()
    claims = store.find("contacts", subject)
    store.erase("contacts", claims, subject, dry_run=False)
    left = store.remaining("contacts", subject, "erase")
    seconds = time.perf_counter() - t0
    if left:
        raise SystemExit(f"bench_lookup: {lookup}: the verification finds {left} row(s) left")
    return seconds


def product_access(engine: sa.Engine) -> tuple[float, int]:
    """The person's access package (find, read, files, zip) with ``lookup: indexed``; seconds and rows."""
    from include.retention.requests.access import PackageBuilder

    policy = policy_for("indexed")
    store = SqlStore("crm", policy, engine, mask_key=MASK_KEY)
    subject = Subject("bench", {"email": normalise("email", SPELLINGS[0])})
    store.check("contacts")
    with tempfile.TemporaryDirectory() as tmp:
        builder = PackageBuilder(policy, lambda _system: store, [subject], request_id="bench", workdir=tmp)
        t0 = time.perf_counter()
        result = builder.build()
        seconds = time.perf_counter() - t0
        builder.close()
    return seconds, sum(result.rows.values())


def one_person(engine: sa.Engine, rows: int, scan: bool, repeat: int) -> dict[str, float]:
    """Each timing the best of ``repeat`` (the erasures each on a fresh copy of the subject's rows)."""
    policy = policy_for("indexed")
    out: dict[str, list[float]] = {"raw_access": [], "access": [], "raw": [], "indexed": [], "scan": []}
    base = rows + 1
    add_rows(engine, base, [*SPELLINGS, LOOKALIKE], "s")
    SqlStore("crm", policy, engine).backfill_index("contacts")  # the subject's rows digested
    product_access(engine)  # warm: pandas and the zip writer imported once, as in a running worker
    for _ in range(repeat):
        seconds, n = raw_access(engine)
        out["raw_access"].append(seconds)
        if n != len(SPELLINGS):
            raise SystemExit(f"bench_lookup: the raw SELECT found {n} rows, not {len(SPELLINGS)}")
        seconds, n = product_access(engine)
        out["access"].append(seconds)
        if n != len(SPELLINGS):
            raise SystemExit(f"bench_lookup: the access package holds {n} rows, not {len(SPELLINGS)}")
    clear(engine, "s")
    for _ in range(repeat):
        for how in ("raw", "indexed", *(("scan",) if scan else ())):
            base += 10
            add_rows(engine, base, [*SPELLINGS, LOOKALIKE], "s")
            SqlStore("crm", policy, engine).backfill_index("contacts")
            out[how].append(raw_erasure(engine) if how == "raw" else product_erasure(engine, how))
            if notes(engine, "s") != [LOOKALIKE]:
                raise SystemExit(f"bench_lookup: {how}: not exactly the subject's rows went (the lookalike stays)")
            clear(engine, "s")
    return {k: min(v) for k, v in out.items() if v}


def independent_check(engine: sa.Engine, rows: int) -> float:
    """The retention sweep's independent check (every identity against the suppression list's erasures) over the
    table, with one erased person found again; seconds. Printed, not a target: it reads the whole table daily."""
    from include.retention.erasure_check import check_system
    from include.retention.registry import Identities, NewRequest, Registry

    registry = Registry(engine, MASK_KEY)
    rid = registry.register(NewRequest(Identities(email=SPELLINGS[0])))
    registry.suppression.add_many([rid])
    add_rows(engine, rows + 500, [SPELLINGS[1]], "c")
    store = SqlStore("crm", policy_for("indexed"), engine, mask_key=MASK_KEY)
    store.check("contacts")
    t0 = time.perf_counter()
    _checked, found = check_system(store, registry)
    seconds = time.perf_counter() - t0
    if found != {rid: {"crm.contacts": 1}}:
        raise SystemExit("bench_lookup: the independent check did not find exactly the erased person's row")
    clear(engine, "c")
    return seconds


def people(n: int, tag: str) -> list[str]:
    return [f"person.{tag}{i}@intake.example" for i in range(n)]


def intake_step(store: SqlStore, policy, wanted: dict[str, str]) -> None:
    """What the erasure intake does for a batch in this system: resolve each person, find, erase, verify."""
    from include.retention.requests import person

    resolved = person.resolve_many(policy, lambda _s: store, {rid: {"email": v} for rid, v in wanted.items()})
    subjects = [Subject(rid, {"email": v}) for rid, v in wanted.items() if resolved[rid].may_act]
    claims = store.find("contacts", subjects)
    store.erase("contacts", claims, subjects, dry_run=False)
    left = store.remaining("contacts", subjects, "erase")
    if left:
        raise SystemExit(f"bench_lookup: intake: the verification finds rows left for {len(left)} request(s)")


def intake(engine: sa.Engine, rows: int, n: int, sample: int) -> dict[str, float]:
    """``n`` people (two spellings each, every tenth with a lookalike) as one batch, and ``sample`` others one at
    a time, extrapolated to ``n``; seconds each."""
    policy = policy_for("indexed")
    store = SqlStore("crm", policy, engine, mask_key=MASK_KEY)
    out: dict[str, float] = {}
    start = rows + 1000
    # warm first (untimed): statement caches and lazy imports, as in a running worker; then the batch, the loop
    for label, count in (("warm", 5), ("batch", n), ("loop", sample)):
        emails = people(count, label)
        add_rows(engine, start, [e.upper() for e in emails] + [f" {e} " for e in emails], "i")
        lookalikes = [e.replace("person.", "persön.") for e in emails[::10]]
        add_rows(engine, start + 2 * count, lookalikes, "l")
        start += 3 * count
        store.backfill_index("contacts")
        store.check("contacts")
        wanted = {f"r{i}": normalise("email", e) for i, e in enumerate(emails)}
        t0 = time.perf_counter()
        if label == "batch":
            intake_step(store, policy, wanted)
        else:
            for rid, value in wanted.items():
                intake_step(store, policy, {rid: value})
        out[label] = time.perf_counter() - t0
        if notes(engine, "i") or notes(engine, "l") != sorted(lookalikes):
            raise SystemExit(f"bench_lookup: intake ({label}): not exactly the people's rows went")
        clear(engine, "l")
    del out["warm"]
    out["loop_per_person"] = out["loop"] / sample
    out["loop"] = out["loop_per_person"] * n
    return out


def peak_kib() -> int:
    """This process's peak RSS (VmHWM: since its exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_apart(kind: str, rows: int, args: argparse.Namespace, with_intake: bool) -> dict[str, float]:
    """``run`` in a fresh interpreter (spawned), so each size's peak RSS is its own."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(run, (kind, rows, args, with_intake))


def run(kind: str, rows: int, args: argparse.Namespace, with_intake: bool) -> dict[str, float]:
    import logging

    logging.disable(logging.INFO)
    name = f"bl_{uuid.uuid4().hex[:8]}"
    url = fresh(kind, name)
    engine = make_engine(url)
    try:
        t0 = time.perf_counter()
        fill(engine, rows, digests=not args.backfill)
        out = {"fill": time.perf_counter() - t0, "backfill": 0.0}
        if args.backfill:
            t0 = time.perf_counter()
            SqlStore("crm", policy_for("indexed"), engine).backfill_index("contacts")
            out["backfill"] = time.perf_counter() - t0
        out.update(one_person(engine, rows, args.scan, args.repeat))
        out["peak_mib"] = peak_kib() / 1024  # fill (the server's), one person's erasures and packages
        if args.check:
            out["check"] = independent_check(engine, rows)
        if with_intake:
            out.update({f"intake_{k}": v for k, v in intake(engine, rows, args.intake, args.sample).items()})
        return out
    finally:
        engine.dispose()
        drop(kind, name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("rows", nargs="*", type=int, default=[100_000, 1_000_000])
    ap.add_argument("--server", action="append", choices=sorted(SERVERS), help="default: both")
    ap.add_argument("--intake", type=int, default=1000, help="people in the intake batch (default 1,000)")
    ap.add_argument("--sample", type=int, default=100, help="people of the one-at-a-time loop (default 100)")
    ap.add_argument("--repeat", type=int, default=3, help="one person's timings: the best of N (default 3)")
    ap.add_argument("--backfill", action="store_true",
                    help="leave the other people's digests to the product's backfill, and time it")
    ap.add_argument("--scan", action="store_true", help="also time the erasure with lookup: scan (a full read)")
    ap.add_argument("--check", action="store_true",
                    help="also time the retention sweep's independent check of erasures over the whole table")
    ap.add_argument("--results", help="write the ratios and their targets to this file (scripts/bench_summary.py)")
    args = ap.parse_args()
    started = time.time()
    import logging

    logging.disable(logging.INFO)
    from scripts.bench_summary import result, verdict, write_results

    intake_rows = max([r for r in args.rows if r <= INTAKE_MAX_ROWS] or [min(args.rows)])
    results = []
    for kind in args.server or ["postgresql", "mariadb"]:
        times: dict[int, dict[str, float]] = {}
        for rows in args.rows:
            load = os.getloadavg()[0]
            r = times[rows] = run_apart(kind, rows, args, with_intake=rows == intake_rows)
            erase, access = r["indexed"] / max(r["raw"], 1e-6), r["access"] / max(r["raw_access"], 1e-6)
            print(f"{kind} {rows:>11,} rows (load {load:.1f}): fill {r['fill']:.1f} s"
                  + (f", backfill {r['backfill']:.1f} s" if args.backfill else "")
                  + f"; erasure raw DELETE + count {r['raw'] * 1000:.1f} ms, indexed find+erase+verify "
                  f"{r['indexed'] * 1000:.1f} ms" + (f", scan {r['scan']:.2f} s" if args.scan else "")
                  + f"; access raw SELECT {r['raw_access'] * 1000:.1f} ms, package {r['access'] * 1000:.1f} ms"
                  + (f"; independent check {r['check']:.1f} s ({rows / r['check']:,.0f} rows/s)" if args.check else "")
                  + f"; peak RSS {r['peak_mib']:.1f} MiB")
            print(f"  erasure indexed / raw: {verdict(erase, '<=', TARGET_RAW)}")
            print(f"  access package indexed / raw: {verdict(access, '<=', TARGET_RAW)}")
            results.append(result(f"{kind}: one person's erasure indexed / raw statements, {rows:,} rows", erase, "<=",
                                  TARGET_RAW))
            results.append(result(f"{kind}: one person's access package indexed / raw SELECT, {rows:,} rows", access,
                                  "<=", TARGET_RAW))
            if "intake_batch" in r:
                speedup = r["intake_loop"] / max(r["intake_batch"], 1e-6)
                print(f"  intake of {args.intake:,} people: batch {r['intake_batch']:.2f} s, one at a time "
                      f"{r['intake_loop_per_person'] * 1000:.1f} ms per person ({args.sample} timed) = "
                      f"{r['intake_loop']:.1f} s")
                print(f"  intake one at a time / batch: {verdict(speedup, '>=', TARGET_INTAKE)}")
                results.append(result(f"{kind}: intake of {args.intake:,} people, one at a time / batch, {rows:,} rows",
                                      speedup, ">=", TARGET_INTAKE))
        if len(args.rows) > 1:
            big, small = max(args.rows), min(args.rows)
            for what, key in (("erasure", "indexed"), ("access package", "access")):
                flat = times[big][key] / max(times[small][key], 1e-6)
                print(f"  {kind} indexed {what} {big:,} / {small:,} rows: {verdict(flat, '<=', TARGET_FLAT)}")
                results.append(result(f"{kind}: indexed {what} {big:,} / {small:,} rows", flat, "<=", TARGET_FLAT))
            rss = times[big]["peak_mib"] / max(times[small]["peak_mib"], 1e-6)
            print(f"  {kind} peak RSS {big:,} / {small:,} rows: {verdict(rss, '<=', TARGET_RSS)}")
            results.append(result(f"{kind}: peak RSS of one person's erasures and packages {big:,} / {small:,} rows",
                                  rss, "<=", TARGET_RSS, big_mib=round(times[big]["peak_mib"], 1),
                                  small_mib=round(times[small]["peak_mib"], 1)))
    print("outcome check: OK (exactly the subjects' rows went, every lookalike stayed, the package held the "
          "subject's rows)")
    write_results(args.results, "bench_lookup.py", results, started,
                  ["one run: single cells are noisy (milliseconds on shared cores); the load average is printed"])
    return 0  # a missed target is reported (the summary); a wrong outcome exits above


if __name__ == "__main__":
    os.environ.setdefault("RETENTION_HMAC_KEY", "bench-hmac-key-" + "x" * 32)
    raise SystemExit(main())
