"""Discovery: personal data the data map does not know (SQL here, S3 in ``discovery_s3``). No Airflow.

For a SQL system: reflect every table and column the connection can read, compare with the data map
(tables and columns not declared; declared ones that disappeared or changed type since the last run),
sample undeclared text-like columns in bounded, read-only reads and classify them
(``include.retention.classify``); declared identity columns are sampled too, for values ``validate``
refuses. A ``Finding`` carries names, a classifier, a hit rate and a sample size, never a value
(docs/adr/0020-discovery-of-unmapped-personal-data.md).
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa

from include.retention.classify import classify, name_hint
from include.retention.identity import IdentityError
from include.retention.identity import validate as validate_identity
from include.retention.policy import Collection, Policy
from include.retention.progress import Steps
from include.retention.stores.sql_index import SUFFIX as DIGEST_SUFFIX

ROWS_PER_COLUMN = 200        # sampled values per column, at most
SECONDS_PER_SYSTEM = 60.0    # sampling stops (and says so) once a system took this long
STATEMENT_TIMEOUT_MS = 5000  # per statement, enforced by the database (SQLite: a progress handler)
KEY_RANGES = 4               # key-range samples per column where there is no TABLESAMPLE

# kind of finding -> what it means (the review page and the receipts use the names)
KINDS = {
    "unmapped_column": "a column the data map does not declare holds personal data",
    "unmapped_table": "a table the data map does not declare holds personal data",
    "missing_column": "a column the data map declares is gone",
    "missing_table": "a table the data map declares is gone",
    "type_changed": "a column the data map declares changed type since the last run",
    "bad_identity": "a declared identity column holds values an identity check refuses",
    "unsearched_identity": "a declared identity kind no request can carry",
    "unmapped_prefix": "objects under a prefix no collection covers hold personal data",
    "unmapped_metadata": "object metadata the data map does not declare holds personal data",
    "derived_column": "a column the data map does not declare is derived from a declared identity (lineage)",
    "derived_table": "a table the data map does not declare is derived from a declared identity (lineage)",
}
UNMAPPED_KINDS = ("unmapped_column", "unmapped_table", "unmapped_prefix", "unmapped_metadata", "derived_column",
                  "derived_table")
# found by reading lineage events (include/retention/lineage.py), not by looking at a system: a discovery run
# that does not see them does not resolve them
LINEAGE_KINDS = ("derived_column", "derived_table")


@dataclass(frozen=True)
class Finding:
    system: str
    collection: str            # table ('schema.table' outside the default schema) or 'bucket/prefix'
    column: str                # column, 'metadata:<key>', 'tag:<key>', 'content' or '' (the table / prefix)
    kind: str                  # one of KINDS
    classifier: str = ""       # email | phone | ipv4 | ipv6 | birth_date | name:<hint> | lineage:<identity kind>
                               # | identity kind | ''
    hit_rate: float = 0.0
    sample_size: int = 0
    detail: str = ""           # names only: a type change 'VARCHAR -> INTEGER', the declaring collection

    @property
    def finding_id(self) -> str:
        """Stable across runs: the place and the kind, not what was sampled."""
        raw = "\x1f".join((self.system, self.collection, self.column, self.kind))
        return hashlib.sha256(raw.encode()).hexdigest()[:20]

    @property
    def name(self) -> str:
        return f"{self.system}.{self.collection}" + (f".{self.column}" if self.column else "")

    def as_dict(self) -> dict[str, Any]:
        return {"finding_id": self.finding_id, **asdict(self)}


@dataclass
class Report:
    system: str
    findings: list[Finding] = field(default_factory=list)
    columns_seen: int = 0
    columns_sampled: int = 0
    not_sampled: list[str] = field(default_factory=list)  # over the time budget: named, never silently skipped
    types: dict[str, str] = field(default_factory=dict)   # 'table.column' -> type of declared columns
    lineage: bool = False  # findings of newly read lineage events: nothing unseen is resolved, no types kept

    def summary(self) -> dict[str, Any]:
        return {"system": self.system, "findings": len(self.findings), "columns_seen": self.columns_seen,
                "columns_sampled": self.columns_sampled, "not_sampled": self.not_sampled}


# ---- the data map's side ---------------------------------------------------------------------------------

def declared_columns(coll: Collection) -> set[str]:
    """Every column a collection names anywhere: columns, key, identities, references, markers, conditions."""
    cols = set(coll.columns) | set(coll.key_columns()) | {c for _, c in coll.identity_columns()}
    # an indexed identity's digest column (docs/adr/0022-indexed-identity-lookup.md): keyed digests, not values
    cols |= {f"{fld.column}{DIGEST_SUFFIX}" for _, fld in coll.identity_fields() if fld.lookup == "indexed"}
    for ref in coll.references:
        cols |= set(ref.source_columns())
    if coll.lock:
        cols |= {c for c in (coll.lock.at, coll.lock.reason) if c}
    if coll.anonymized_marker:
        cols.add(coll.anonymized_marker)
    cols |= {c.column for c in coll.legal_hold}
    for rule in coll.rules:
        cols |= set(rule.start.columns())
        cols |= {c.column for c in rule.when}
    cols |= {c.column for c in coll.consent}
    return {c for c in cols if c}


def declared_tables(policy: Policy, system: str) -> dict[str, tuple[str, Collection]]:
    """table -> (collection name, collection) of a SQL system."""
    return {coll.table: (name, coll) for name, coll in policy.systems[system].collections.items() if coll.table}


# ---- bounded, read-only reads ----------------------------------------------------------------------------

_SYSTEM_SCHEMAS = {"information_schema", "pg_catalog", "mysql", "performance_schema", "sys"}


def readable_tables(engine: sa.Engine) -> list[tuple[str | None, str]]:
    """(schema or None for the default one, table) the connection can read. PostgreSQL: every schema of its
    database but the system ones; MariaDB and SQLite: the connection's own database (another database on the
    same server is another system)."""
    inspector = sa.inspect(engine)
    out: list[tuple[str | None, str]] = [(None, t) for t in inspector.get_table_names()]
    if engine.dialect.name == "postgresql":
        default = inspector.default_schema_name
        for schema in inspector.get_schema_names():
            if schema == default or schema in _SYSTEM_SCHEMAS or schema.startswith("pg_"):
                continue
            out += [(schema, t) for t in inspector.get_table_names(schema=schema)]
    return out


@contextmanager
def read_only(engine: sa.Engine, timeout_ms: int = STATEMENT_TIMEOUT_MS) -> Iterator[sa.Connection]:
    """A read-only transaction whose every statement the database stops after ``timeout_ms``."""
    with engine.connect() as conn:
        dialect = engine.dialect.name
        if dialect == "postgresql":
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
        elif dialect in ("mysql", "mariadb"):
            # MariaDB's variable (seconds); MySQL's is max_execution_time (milliseconds, SELECTs only)
            limit = ("max_statement_time", f"{timeout_ms / 1000:.3f}") if engine.dialect._is_mariadb else (
                "max_execution_time", str(int(timeout_ms)))
            conn.exec_driver_sql(f"SET SESSION {limit[0]} = {limit[1]}")
            conn.exec_driver_sql("START TRANSACTION READ ONLY")
        elif dialect == "sqlite":
            raw = conn.connection.driver_connection
            raw.execute("PRAGMA query_only = 1")
            deadline = [0.0]

            def _stop() -> int:
                return 1 if time.monotonic() > deadline[0] else 0

            raw.set_progress_handler(_stop, 10_000)
            conn.info["deadline"] = deadline
        try:
            yield conn
        finally:
            try:
                conn.rollback()
            finally:
                if dialect == "sqlite":
                    raw.execute("PRAGMA query_only = 0")
                    raw.set_progress_handler(None, 0)
                elif dialect in ("mysql", "mariadb"):
                    conn.exec_driver_sql(f"SET SESSION {limit[0]} = 0")


def _arm(conn: sa.Connection, timeout_ms: int) -> None:
    if "deadline" in conn.info:
        conn.info["deadline"][0] = time.monotonic() + timeout_ms / 1000


def sample_column(conn: sa.Connection, table: sa.Table, column: str, budget: int = ROWS_PER_COLUMN,
                  timeout_ms: int = STATEMENT_TIMEOUT_MS) -> list[Any]:
    """At most ``budget`` non-NULL values of ``column``: PostgreSQL ``TABLESAMPLE BERNOULLI`` on a large table
    (else a plain ``LIMIT``), elsewhere ``KEY_RANGES`` key ranges spread over an integer primary key (else
    ``LIMIT``). The caller classifies and drops them."""
    col = table.c[column]
    _arm(conn, timeout_ms)
    base = sa.select(col).where(col.is_not(None))
    if conn.dialect.name == "postgresql":
        schema = table.schema or conn.exec_driver_sql("SELECT current_schema()").scalar()
        rows = conn.execute(sa.text("SELECT c.reltuples FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                                    "WHERE n.nspname = :s AND c.relname = :t"), {"s": schema, "t": table.name}
                            ).scalar() or -1
        if rows > budget * 10:
            percent = min(100.0, budget * 300.0 / rows)
            sampled = table.tablesample(sa.func.bernoulli(percent), name="s")
            return list(conn.execute(sa.select(sampled.c[column]).where(sampled.c[column].is_not(None))
                                     .limit(budget)).scalars())
        return list(conn.execute(base.limit(budget)).scalars())
    pk = list(table.primary_key.columns)
    if len(pk) == 1 and isinstance(pk[0].type, sa.Integer):
        low, high = conn.execute(sa.select(sa.func.min(pk[0]), sa.func.max(pk[0]))).one()
        if low is not None and high - low + 1 > budget:
            out: list[Any] = []
            per = max(1, budget // KEY_RANGES)
            for i in range(KEY_RANGES):
                start = low + (high - low) * i // KEY_RANGES
                out += conn.execute(base.where(pk[0] >= start).order_by(pk[0]).limit(per)).scalars()
            return out[:budget]
    return list(conn.execute(base.limit(budget)).scalars())


def _text_like(col_type: Any) -> bool:
    return isinstance(col_type, (sa.String, sa.Text, sa.JSON, sa.LargeBinary, sa.Enum)) or \
        type(col_type).__name__.upper() in ("JSONB", "JSON", "CITEXT", "INET", "CIDR", "UUID", "NULLTYPE")


def _type_name(col_type: Any) -> str:
    try:
        return str(col_type.compile())
    except Exception:  # noqa: BLE001 - a type without a generic spelling
        return type(col_type).__name__.upper()


def _sample_identity(report: Report, engine: sa.Engine, table: sa.Table, column: str, kind: str, ref: str, *,
                     out_of_time: bool, budget: int, timeout_ms: int) -> None:
    """A declared identity column: values ``normalise`` rejects are a finding."""
    if out_of_time:
        report.not_sampled.append(f"{ref}.{column}")
        return
    try:
        finding = _check_identity(engine, table, column, kind, report.system, ref, budget, timeout_ms)
    except sa.exc.DBAPIError:  # the statement timeout, a permission: named, not fatal
        report.not_sampled.append(f"{ref}.{column}")
        return
    report.columns_sampled += 1
    if finding:
        report.findings.append(finding)


def _sample_undeclared(report: Report, engine: sa.Engine, table: sa.Table, col: sa.Column, ref: str, kind: str,
                       coll_name: str | None, *, out_of_time: bool, budget: int, timeout_ms: int) -> None:
    """A column the data map does not declare: sampled (text-like) or judged by its name."""
    system = report.system
    hit = None
    if _text_like(col.type):
        if out_of_time:
            report.not_sampled.append(f"{ref}.{col.name}")
            hint = name_hint(col.name)
            if hint:
                report.findings.append(Finding(system, ref, col.name, kind, f"name:{hint}"))
            return
        try:
            with read_only(engine, timeout_ms) as conn:
                values = sample_column(conn, table, col.name, budget, timeout_ms)
        except sa.exc.DBAPIError:  # the statement timeout, a permission: named, not fatal
            report.not_sampled.append(f"{ref}.{col.name}")
            values = []
        else:
            report.columns_sampled += 1
        hit = classify(col.name, values)
        del values
    elif name_hint(col.name):  # a DATE birth_date, an INET-less numeric phone: the name says it
        hit = classify(col.name, [])
    if hit:
        report.findings.append(Finding(system, ref, col.name, kind, hit.classifier, hit.hit_rate,
                                       hit.sample_size, f"collection {system}.{coll_name}" if coll_name
                                       else _table_detail(table)))


# ---- one SQL system --------------------------------------------------------------------------------------

def discover_sql(policy: Policy, system: str, engine: sa.Engine, *, previous_types: dict[str, str] | None = None,
                 budget: int = ROWS_PER_COLUMN, seconds: float = SECONDS_PER_SYSTEM,
                 timeout_ms: int = STATEMENT_TIMEOUT_MS) -> Report:
    """Compare a SQL system's readable schema with the data map and sample what it does not declare."""
    report = Report(system)
    declared = declared_tables(policy, system)
    started = time.monotonic()
    seen_tables: set[str] = set()
    meta = sa.MetaData()
    tables = sorted(readable_tables(engine), key=lambda st: (st[0] or "", st[1]))
    steps = Steps(f"discovery of {system}", len(tables), "tables")
    for schema, tname in tables:
        ref = f"{schema}.{tname}" if schema else tname
        seen_tables.add(ref)
        table = sa.Table(tname, meta, schema=schema, autoload_with=engine)
        report.columns_seen += len(table.columns)
        coll_name, coll = declared.get(ref, (None, None))
        known = declared_columns(coll) if coll is not None else set()
        identity_cols = {c: k for k, c in coll.identity_columns()} if coll is not None else {}
        kind = "unmapped_column" if coll is not None else "unmapped_table"
        for col in table.columns:
            if col.name in known:
                report.types[f"{ref}.{col.name}"] = _type_name(col.type)
                if col.name in identity_cols and _text_like(col.type):
                    _sample_identity(report, engine, table, col.name, identity_cols[col.name], ref,
                                     out_of_time=time.monotonic() - started > seconds, budget=budget,
                                     timeout_ms=timeout_ms)
                continue
            _sample_undeclared(report, engine, table, col, ref, kind, coll_name,
                               out_of_time=time.monotonic() - started > seconds, budget=budget,
                               timeout_ms=timeout_ms)
        if coll is not None:
            for missing in sorted(known - set(table.columns.keys())):
                report.findings.append(Finding(system, ref, missing, "missing_column",
                                               detail=f"declared by {system}.{coll_name}"))
        steps.step(ref, f"{len(table.columns)} column(s)")
    for ref in sorted(set(declared) - seen_tables):
        report.findings.append(Finding(system, ref, "", "missing_table", detail=f"declared by {system}."
                                       f"{declared[ref][0]}"))
    for place, now in sorted(report.types.items()):
        before = (previous_types or {}).get(place)
        if before is not None and before != now:
            ref, _, column = place.rpartition(".")
            report.findings.append(Finding(system, ref, column, "type_changed", detail=f"{before} -> {now}"))
    report.findings += unsearched_identities(policy, system)
    return report


def _table_detail(table: sa.Table) -> str:
    """An undeclared table's key and columns (names), for the data-map snippet that would declare it."""
    key = ",".join(c.name for c in table.primary_key.columns)
    return f"key={key} columns={','.join(table.columns.keys())}"


def _check_identity(engine: sa.Engine, table: sa.Table, column: str, kind: str, system: str, ref: str,
                    budget: int, timeout_ms: int) -> Finding | None:
    with read_only(engine, timeout_ms) as conn:
        values = [v for v in sample_column(conn, table, column, budget, timeout_ms) if str(v).strip()]
    refused = 0
    for value in values:
        try:
            validate_identity(kind, value if isinstance(value, str) else str(value))
        except IdentityError:
            refused += 1
    size = len(values)
    del values
    if not refused:
        return None
    return Finding(system, ref, column, "bad_identity", kind, round(refused / size, 4), size)


def unsearched_identities(policy: Policy, system: str) -> list[Finding]:
    """Identity kinds a collection declares that no request can carry (``request_fields`` leaves them out)."""
    kinds = set(policy.request_kinds())
    out = []
    for name, coll in policy.systems[system].collections.items():
        for kind, fld in coll.identity_fields():
            if kind not in kinds:
                out.append(Finding(system, coll.table or f"{coll.bucket}/{coll.prefix or ''}", fld.column,
                                   "unsearched_identity", kind, detail=f"collection {system}.{name}"))
    return out


def sqlite_interrupted(exc: BaseException) -> bool:
    """Whether a SQLite error is the progress handler's stop (the statement timeout)."""
    return isinstance(getattr(exc, "orig", exc), sqlite3.OperationalError) and "interrupted" in str(exc)
