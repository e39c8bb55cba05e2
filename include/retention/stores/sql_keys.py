"""Primary keys of SQL collections: one column, or several (a composite key such as ``(subscriber_id, list_id)``).

A key value is the column's value for a one-column key (as it always was) and a tuple for a composite key.
Walks compare keys in lexicographic order: a row-value comparison ``(a, b) > (x, y)`` where the dialect has
it (PostgreSQL, MariaDB/MySQL, SQLite >= 3.15), else the equivalent expansion ``a >= x AND (a > x OR b > y)``
(which also leads with a plain range test on the first column, so an index on it serves the walk).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa


def key_of(values: Sequence[Any]) -> Any:
    """The key of a row from its key columns' values: the value itself, or a tuple for a composite key."""
    values = tuple(values)
    return values[0] if len(values) == 1 else values


def key_in(cols: list[sa.ColumnElement[Any]], keys: Iterable[Any]) -> sa.ColumnElement[bool]:
    """Rows whose key is one of ``keys`` (a tuple ``IN`` for a composite key)."""
    keys = list(keys)
    if len(cols) == 1:
        return cols[0].in_(keys)
    return sa.tuple_(*cols).in_([tuple(k) for k in keys])


def key_eq(cols: list[sa.ColumnElement[Any]], key: Any) -> sa.ColumnElement[bool]:
    """The row of one key."""
    if len(cols) == 1:
        return cols[0] == key
    return sa.and_(*(c == v for c, v in zip(cols, key, strict=True)))


def cols_eq(left: Sequence[Any], right: Sequence[Any]) -> sa.ColumnElement[bool]:
    """Every column of ``left`` equals its partner in ``right`` (a reference of one or several columns: a row
    whose referencing columns are NULL, any of them, matches nothing)."""
    return sa.and_(*(a == b for a, b in zip(left, right, strict=True)))


def cols_in(cols: Sequence[Any], select: sa.Select) -> sa.ColumnElement[bool]:
    """``cols`` (one, or several as a row value) are among the rows ``select`` returns (as many columns)."""
    if len(cols) == 1:
        return cols[0].in_(select)
    return sa.tuple_(*cols).in_(select)


def value_of(values: Sequence[Any]) -> Any:
    """The value a reference's columns hold (``key_of``), or None when any of them is NULL (it refers to nothing)."""
    values = tuple(values)
    return None if any(v is None for v in values) else key_of(values)


def has_row_values(dialect: sa.engine.Dialect) -> bool:
    """Whether the dialect compares row values (``(a, b) > (x, y)``) lexicographically."""
    if dialect.name in ("postgresql", "mysql", "mariadb"):
        return True
    if dialect.name == "sqlite":
        return sqlite3.sqlite_version_info >= (3, 15)
    return False


def _lexicographic(cols: list[Any], vals: Sequence[Any], strict: str, last: str) -> sa.ColumnElement[bool]:
    """``cols`` compared with ``vals`` in order, expanded: ``c0 >= v0 AND (c0 > v0 OR <the rest>)`` for after
    (``strict`` '>', ``last`` '>'), ``c0 <= v0 AND (c0 < v0 OR <the rest>)`` for up to (``strict`` '<', ``last``
    '<=')."""
    ops = {">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b}
    if len(cols) == 1:
        return ops[last](cols[0], vals[0])
    weak = strict + "="
    return sa.and_(ops[weak](cols[0], vals[0]),
                   sa.or_(ops[strict](cols[0], vals[0]), _lexicographic(cols[1:], vals[1:], strict, last)))


def after(order: list[Any], last: Sequence[Any] | None, row_values: bool) -> list[sa.ColumnElement[bool]]:
    """Rows strictly after ``last`` in the walk ``order`` (a range an index on ``order[0]`` serves)."""
    if last is None:
        return []
    if len(order) == 1:
        return [order[0] > last[0]]
    if row_values:
        return [order[0] >= last[0], sa.tuple_(*order) > sa.tuple_(*last)]
    expr = _lexicographic(order, last, ">", ">")
    return list(expr.clauses)


def upto(order: list[Any], bound: Sequence[Any], row_values: bool) -> list[sa.ColumnElement[bool]]:
    """Rows at or before ``bound`` in the walk ``order``."""
    if len(order) == 1:
        return [order[0] <= bound[0]]
    if row_values:
        return [order[0] <= bound[0], sa.tuple_(*order) <= sa.tuple_(*bound)]
    expr = _lexicographic(order, bound, "<", "<=")
    return list(expr.clauses)


def key_text(keys: Iterable[Any]) -> str:
    """The text a batch's key digest hashes: one key per line. A one-column key is its ``str`` (unchanged, so
    existing ledgers verify); a composite key is the JSON list of its values' ``str`` (quotes, commas and line
    breaks inside a value are escaped: no two different tuples give the same line)."""
    return "\n".join(json.dumps([str(v) for v in k], ensure_ascii=False, separators=(",", ":"))
                     if isinstance(k, tuple) else str(k) for k in keys)


def keys_text_in_db(key: Any) -> sa.ColumnElement[str]:
    """PostgreSQL: the text ``key_text`` joins, from a batch's keys in the database: ``array_to_string(array_agg(k
    ORDER BY k), E'\\n')`` with ``k`` the key (text ``COLLATE "C"``: ``_code_point_order``), the same text as
    ``string_agg(k::text, E'\\n' ORDER BY k)`` (a key's text is its output function's either way; neither can be
    NULL). The keys are sorted as themselves, PostgreSQL's one-datum sort of an aggregate ordered by its own argument,
    and turned into text once sorted; ``string_agg`` sorted (text, key) pairs: at 50,000 keys that sort took as long
    as the ``DELETE`` itself."""
    from sqlalchemy.dialects.postgresql import aggregate_order_by

    k = _code_point_order(key)
    return sa.func.array_to_string(sa.func.array_agg(aggregate_order_by(k, k)), sa.literal("\n"), type_=sa.Text)


def _code_point_order(key: Any) -> Any:
    """A key as the digest's aggregate (``keys_text_in_db``) orders it: integers as they are, text by code point."""
    return key if isinstance(key.type, sa.Integer) else key.collate("C")


def pg_any(col: Any, values: list[Any], type_: Any = None) -> sa.ColumnElement[bool]:
    """PostgreSQL: ``col = ANY(:values)``, one array parameter however many values (no statement text that grows
    with the batch, no per-value bind for SQLAlchemy to render)."""
    from sqlalchemy.dialects.postgresql import ARRAY

    return col == sa.any_(sa.bindparam(None, list(values), type_=ARRAY(type_ if type_ is not None else col.type)))


def chunks(items: list[Any], n: int = 500) -> Iterator[list[Any]]:
    """``items`` in consecutive parts of at most ``n`` (bounded IN lists, bounded locks)."""
    for i in range(0, len(items), n):
        yield items[i:i + n]
