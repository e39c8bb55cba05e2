"""Indexed identity lookup (``lookup: indexed``; docs/adr/0022-indexed-identity-lookup.md).

An identity column declared ``lookup: indexed`` has a companion column ``<column>_ndigest`` that holds
``identity_digest(kind, normalise(kind, value))`` (computed in Python, so exact on every engine and collation),
an index on it, and triggers that set it to NULL whenever a row is inserted or the identity column changes
without the digest being written in the same statement. A request's candidates are then
``WHERE <digest> IN (...)`` and ``WHERE <digest> IS NULL``: a row whose digest is current is found by value,
a row nobody has digested yet (new, changed) is always a candidate, and ``normalise`` judges every candidate as before.

The DBA creates column, index and triggers (``ddl``, printed by ``cli index-identities --ddl``; never run by the
product); ``problems`` refuses a collection whose database lacks any of them; ``backfill`` fills the digests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

from include.retention.identity import index_digest

SUFFIX = "_ndigest"
IN_BATCH = 500  # digests per candidate query (bounded IN lists)
BACKFILL_BATCH = 1000  # rows per backfill transaction
NULL_BATCH = 5000  # rows not digested yet, per batch of a candidate read


def digest_column(column: str) -> str:
    return f"{column}{SUFFIX}"


def identity_digest(kind: str, normalised: str) -> str:
    """The value of a digest column: SHA-256 of kind and normalised identity (hex). Unkeyed on purpose: it sits
    next to the value it digests, in the same row, and is cleared when that value changes (ADR 0022)."""
    return hashlib.sha256(f"{kind}\x00{normalised}".encode()).hexdigest()


def object_names(table: str, column: str) -> dict[str, str]:
    """Names of the index and triggers (within PostgreSQL's 63 and MariaDB's 64 characters)."""
    tag = hashlib.sha256(f"{table}.{column}".encode()).hexdigest()[:10]
    base = f"rtn_{table[:20]}_{column[:20]}_{tag}"
    return {"index": f"{base}_ix", "function": f"{base}_fn", "insert": f"{base}_ti", "update": f"{base}_tu"}


def ddl(dialect: str, table: str, column: str, key_columns: list[str]) -> list[str]:
    """The statements a DBA runs once for ``lookup: indexed`` on ``table.column``, for ``dialect``."""
    d, n = digest_column(column), object_names(table, column)
    if dialect == "postgresql":
        q = lambda s: '"' + s.replace('"', '""') + '"'  # noqa: E731
        return [
            f"ALTER TABLE {q(table)} ADD COLUMN {q(d)} varchar(64)",
            f"CREATE INDEX {q(n['index'])} ON {q(table)} ({q(d)})",
            f"CREATE OR REPLACE FUNCTION {q(n['function'])}() RETURNS trigger LANGUAGE plpgsql AS $rtn$\n"
            f"BEGIN\n"
            f"  IF TG_OP = 'INSERT' THEN\n"
            f"    NEW.{q(d)} := NULL;\n"
            f"  ELSIF (NEW.{q(column)}::text COLLATE \"C\") IS DISTINCT FROM (OLD.{q(column)}::text COLLATE \"C\")\n"
            f"        AND NEW.{q(d)} IS NOT DISTINCT FROM OLD.{q(d)} THEN\n"
            f"    NEW.{q(d)} := NULL;\n"
            f"  END IF;\n"
            f"  RETURN NEW;\n"
            f"END $rtn$",
            f"CREATE TRIGGER {q(n['update'])} BEFORE INSERT OR UPDATE ON {q(table)} FOR EACH ROW "
            f"EXECUTE FUNCTION {q(n['function'])}()",
        ]
    if dialect in ("mysql", "mariadb"):
        q = lambda s: "`" + s.replace("`", "``") + "`"  # noqa: E731
        return [
            f"ALTER TABLE {q(table)} ADD COLUMN {q(d)} VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL",
            f"CREATE INDEX {q(n['index'])} ON {q(table)} ({q(d)})",
            f"CREATE TRIGGER {q(n['insert'])} BEFORE INSERT ON {q(table)} FOR EACH ROW SET NEW.{q(d)} = NULL",
            f"CREATE TRIGGER {q(n['update'])} BEFORE UPDATE ON {q(table)} FOR EACH ROW SET NEW.{q(d)} = IF("
            f"NOT (CAST(NEW.{q(column)} AS BINARY) <=> CAST(OLD.{q(column)} AS BINARY))"
            f" AND (NEW.{q(d)} <=> OLD.{q(d)}), NULL, NEW.{q(d)})",
        ]
    if dialect == "sqlite":
        q = lambda s: '"' + s.replace('"', '""') + '"'  # noqa: E731
        row = " AND ".join(f"{q(k)} = NEW.{q(k)}" for k in key_columns)
        return [
            f"ALTER TABLE {q(table)} ADD COLUMN {q(d)} TEXT",
            f"CREATE INDEX {q(n['index'])} ON {q(table)} ({q(d)})",
            f"CREATE TRIGGER {q(n['insert'])} AFTER INSERT ON {q(table)} FOR EACH ROW WHEN NEW.{q(d)} IS NOT NULL "
            f"BEGIN UPDATE {q(table)} SET {q(d)} = NULL WHERE {row}; END",
            f"CREATE TRIGGER {q(n['update'])} AFTER UPDATE OF {q(column)} ON {q(table)} FOR EACH ROW "
            f"WHEN CAST(NEW.{q(column)} AS BLOB) IS NOT CAST(OLD.{q(column)} AS BLOB) AND NEW.{q(d)} IS OLD.{q(d)} "
            f"BEGIN UPDATE {q(table)} SET {q(d)} = NULL WHERE {row}; END",
        ]
    raise ValueError(f"lookup: indexed: no DDL for dialect {dialect!r} (postgresql, mariadb/mysql, sqlite)")


def _triggers(conn: sa.Connection, dialect: str, table: str) -> set[str]:
    """Names of the enabled triggers on ``table``."""
    if dialect == "postgresql":
        sql = ("SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
               "WHERE c.relname = :t AND pg_table_is_visible(c.oid) AND NOT t.tgisinternal AND t.tgenabled <> 'D'")
    elif dialect in ("mysql", "mariadb"):
        sql = ("SELECT TRIGGER_NAME FROM information_schema.TRIGGERS "
               "WHERE EVENT_OBJECT_SCHEMA = DATABASE() AND EVENT_OBJECT_TABLE = :t")
    else:
        sql = "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = :t"
    return {r[0] for r in conn.execute(sa.text(sql), {"t": table})}


def problems(engine: sa.Engine, t: sa.Table, column: str) -> list[str]:
    """What the database lacks for ``lookup: indexed`` on ``t.column`` (digest column, index, triggers), or []."""
    d, n = digest_column(column), object_names(t.name, column)
    dialect = engine.dialect.name
    out = []
    if d not in t.c:
        out.append(f"column {d!r}")
    if index_on(t, d) is None:
        out.append(f"an index leading with {d!r}")
    with engine.connect() as conn:
        have = _triggers(conn, dialect, t.name)
    wanted = [n["update"]] if dialect == "postgresql" else [n["insert"], n["update"]]
    out += [f"trigger {name!r}" for name in wanted if name not in have]
    return out


def candidate_batches(engine: sa.Engine, t: sa.Table, keys: list[sa.Column], digests: dict[str, list[str]],
                      identity_cols: list[str], *, nulls: bool = True) -> Iterator[list[sa.Row]]:
    """Rows (keys, identity columns) that may carry one of ``digests`` (digest column -> wanted digests): the rows
    whose digest is one of them, one query per batch of at most ``IN_BATCH`` digests (all on one connection: a
    person's lookup is a few queries, a checkout per query would double them), then the rows whose digest is NULL,
    one query per digest column (apart: MariaDB reads the whole table for ``IN (...) OR ... IS NULL``; not with
    ``nulls`` False), in batches of ``NULL_BATCH`` (``undigested``). A row may come more than once."""
    cols = [*keys, *(t.c[c] for c in identity_cols)]
    queries = [_hinted(engine, t, d, sa.select(*cols).where(t.c[d].in_(values[i:i + IN_BATCH])))
               for d, values in digests.items() for i in range(0, len(values), IN_BATCH)]
    if queries:
        with engine.connect() as conn:
            for query in queries:
                yield list(conn.execute(query))
    for d in digests if nulls else []:
        yield from undigested(engine, _hinted(engine, t, d, sa.select(*cols).where(t.c[d].is_(None))))


def undigested(engine: sa.Engine, query: sa.Select) -> Iterator[list[sa.Row]]:
    """The rows of ``query`` (the rows not digested yet: after the DDL before its backfill, after a bulk load, the
    whole table) in batches of ``NULL_BATCH``, memory bounded by a batch: PostgreSQL and MariaDB stream them
    through a server-side cursor (the caller may write between batches on other connections: reads take no
    locks there). SQLite reads them first and closes the statement (an open statement would hold the file's
    lock while the caller writes): there memory holds them all."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = list(conn.execute(query))
        else:
            result = conn.execution_options(stream_results=True, max_row_buffer=NULL_BATCH).execute(query)
            for part in result.partitions(NULL_BATCH):
                yield list(part)
            return
    for i in range(0, len(rows), NULL_BATCH):
        yield rows[i:i + NULL_BATCH]


def _hinted(engine: sa.Engine, t: sa.Table, column: str, query: sa.Select) -> sa.Select:
    """``query`` with MariaDB's ``FORCE INDEX`` on the digest column's index: its statistics count the NULLs of the
    DDL's time and would read the table."""
    index = index_on(t, column)
    if index is None:
        return query
    hint = f"FORCE INDEX ({engine.dialect.identifier_preparer.quote(index)})"
    return query.with_hint(t, hint, "mysql").with_hint(t, hint, "mariadb")


def index_on(t: sa.Table, column: str) -> str | None:
    """The name of an index of ``t`` leading with ``column``, or None."""
    for ix in t.indexes:
        if ix.columns and list(ix.columns)[0].name == column and ix.name:
            return ix.name
    return None


def backfill(engine: sa.Engine, t: sa.Table, keys: list[sa.Column], fields: list[tuple[str, str]],
             batch: int = BACKFILL_BATCH) -> int:
    """Fill the NULL digests of ``fields`` ((kind, column) pairs) from the values, ``batch`` rows a transaction:
    each batch's rows are locked and re-read before their digests are written. Returns the rows digested."""
    done = 0
    for kind, column in fields:
        d = t.c[digest_column(column)]
        while True:
            with engine.begin() as conn:
                query = sa.select(*keys, t.c[column]).where(d.is_(None)).limit(batch)
                if engine.dialect.name != "sqlite":
                    query = query.with_for_update(skip_locked=engine.dialect.name == "postgresql")
                rows = list(conn.execute(query))
                if rows:  # one executemany: the digests computed in Python, by primary key
                    update = (t.update().where(*(k == sa.bindparam(f"_k{i}") for i, k in enumerate(keys)))
                              .values({d.name: sa.bindparam("_digest")}))
                    conn.execute(update, [{**{f"_k{i}": v for i, v in enumerate(row[:-1])},
                                           "_digest": value_digest(kind, row[-1])} for row in rows])
                done += len(rows)
            if len(rows) < batch:
                break
    return done


def value_digest(kind: str, value: Any) -> str:
    """The digest a backfill writes for ``value`` ("" for a value that holds no identity): ``identity.index_digest``
    (the registry, a lower layer, computes the same for the suppression list)."""
    return index_digest(kind, value)
