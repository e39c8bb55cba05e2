"""Condition values against the real column type: a quoted ``"true"`` is not a boolean.

A data map's ``legal_hold`` and ``when`` conditions compare a column with YAML values. The
database would coerce a wrongly typed value in its own way (MariaDB and SQLite compare the
text ``'true'`` with a TINYINT(1) / BOOLEAN column as 0 and so *invert* a legal hold;
PostgreSQL fails on ``boolean = integer`` at run time), so a store checks every value
against the reflected column type before anything runs:

- boolean columns (PostgreSQL ``BOOLEAN``, MariaDB ``TINYINT(1)`` / ``BOOL``, SQLite ``BOOLEAN``)
  take YAML booleans only: ``true`` / ``false`` unquoted;
- integer columns take whole numbers, numeric / float columns numbers; never booleans or text;
- date columns take a YAML date or an ISO date string, timestamp columns a YAML date or
  date-time or an ISO string;
- text columns take text only (no number, boolean or date, no NUL, not longer than the column);
- UUID columns take a UUID as text; anything else (untyped SQLite columns, JSON, binary ...)
  cannot carry a condition.

Range tests (``lt``, ``le``, ``gt``, ``ge``) take number, date, timestamp and time columns only (an order
on text would be a collation's), with values checked as for ``equals``; ``older_than`` /
``younger_than`` take date and timestamp columns.

``check_condition`` is pure (no database); ``bind_value`` turns an accepted value into what
the driver needs. Messages name the path in the data map, the column type and the problem.
"""

from __future__ import annotations

import datetime as dt
import decimal
import importlib
import math
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.types import NullType, TypeEngine

from include.retention.policy import AGE_OPS, RANGE_OPS, Condition

KINDS = ("boolean", "integer", "numeric", "date", "datetime", "time", "string", "uuid")


def column_kind(column_type: TypeEngine) -> str | None:
    """What a condition on a column of this type compares: one of ``KINDS``, or None (unsupported)."""
    if isinstance(column_type, sa.Boolean):
        return "boolean"
    # MariaDB/MySQL have no boolean type: BOOL is TINYINT(1), reflected as such.
    if type(column_type).__name__ == "TINYINT" and getattr(column_type, "display_width", None) == 1:
        return "boolean"
    if isinstance(column_type, sa.Integer):
        return "integer"
    if isinstance(column_type, (sa.Numeric, sa.Float)):
        return "numeric"
    if isinstance(column_type, sa.DateTime):
        return "datetime"
    if isinstance(column_type, sa.Date):
        return "date"
    if isinstance(column_type, sa.Time):
        return "time"
    if isinstance(column_type, sa.Uuid):
        return "uuid"
    if isinstance(column_type, (sa.String, sa.Enum)):
        return "string"
    return None


def type_name(column_type: TypeEngine) -> str:
    """The column type as the database spells it (``TINYINT(1)``, ``VARCHAR(254)``), for messages."""
    if isinstance(column_type, NullType):
        return "(no declared type)"
    module = type(column_type).__module__
    try:
        if module.startswith("sqlalchemy.dialects."):
            dialect = importlib.import_module(f"sqlalchemy.dialects.{module.split('.')[2]}").dialect()
            return str(column_type.compile(dialect=dialect))
        return str(column_type.compile())
    except Exception:  # noqa: BLE001 - a dialect-specific type without a default compilation
        return type(column_type).__name__


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _yaml_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, dt.datetime):
        return "a date-time"
    if isinstance(value, dt.date):
        return "a date"
    if isinstance(value, str):
        return "quoted text" if value.strip().lower() in ("true", "false", "yes", "no", "on", "off") or _numeric(
            value) else "text"
    return type(value).__name__


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _parse_date(value: Any) -> dt.date | None:
    if isinstance(value, dt.datetime):
        return None
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            return None
    return None


def _parse_datetime(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day)
    if isinstance(value, str) and len(value.strip()) >= 10:
        try:
            return dt.datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    return None


def _parse_time(value: Any) -> dt.time | None:
    if isinstance(value, str):
        try:
            return dt.time.fromisoformat(value.strip())
        except ValueError:
            return None
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_boolean(value: Any, got: str, name: str) -> str | None:
    if isinstance(value, bool):
        return None
    return f"{got}; column type {name} is a boolean: write true or false without quotes"


def _check_integer(value: Any, got: str, name: str) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return None
    if isinstance(value, float):
        return f"{got}, not a whole number; column type {name} holds whole numbers"
    return f"{got}; column type {name} holds whole numbers: write the number without quotes"


def _check_numeric(value: Any, got: str, name: str) -> str | None:
    if not _is_number(value):
        return f"{got}; column type {name} holds numbers: write the number without quotes"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{got} that is not finite; column type {name} holds finite numbers"
    return None


def _check_date(value: Any, got: str, name: str) -> str | None:
    if _parse_date(value) is not None and not isinstance(value, bool):
        return None
    return f"{got}; column type {name} holds dates: write an ISO date such as 2024-01-31"


def _check_datetime(value: Any, got: str, name: str) -> str | None:
    if _parse_datetime(value) is not None:
        return None
    return f"{got}; column type {name} holds timestamps: write an ISO date or date-time such as 2024-01-31T12:00:00"


def _check_time(value: Any, got: str, name: str) -> str | None:
    if _parse_time(value) is not None:
        return None
    return f"{got}; column type {name} holds times of day: write an ISO time such as '12:30:00'"


def _check_uuid(value: Any, got: str, name: str) -> str | None:
    if isinstance(value, str):
        try:
            uuid.UUID(value)
            return None
        except ValueError:
            pass
    return f"{got}; column type {name} holds UUIDs: write one as text"


_KIND_CHECKS = {
    "boolean": _check_boolean,
    "integer": _check_integer,
    "numeric": _check_numeric,
    "date": _check_date,
    "datetime": _check_datetime,
    "time": _check_time,
    "uuid": _check_uuid,
}


def _check_text(value: Any, got: str, column_type: TypeEngine) -> str | None:
    name = type_name(column_type)
    if not isinstance(value, str):
        return f"{got}; column type {name} holds text: quote the value"
    if "\x00" in value:
        return f"the value contains a NUL character, which column type {name} cannot hold"
    length = getattr(column_type, "length", None)
    if length and len(value) > length:
        return f"the value is {len(value)} characters long, longer than column type {name} holds: it can never match"
    return None


def check_value(value: Any, column_type: TypeEngine) -> str | None:
    """The problem with comparing a column of ``column_type`` to one YAML value, or None."""
    kind = column_kind(column_type)
    name = type_name(column_type)
    if kind is None:
        return f"conditions cannot test a column of type {name} (only boolean, number, date, time and text columns)"
    got = f"{_show(value)} is {_yaml_kind(value)}"
    check = _KIND_CHECKS.get(kind)
    if check is not None:
        return check(value, got, name)
    return _check_text(value, got, column_type)


def check_condition(cond: Condition, column_type: TypeEngine, where: str) -> str | None:
    """The problem with ``cond``'s ``equals`` / ``in`` values for a column of ``column_type``, or None.

    ``where`` is the condition's path in the data map (``systems.crm.collections.leads.legal_hold[0]``);
    the message starts with it plus ``.equals`` or ``.in[i]`` and names the column type, so a store
    refuses with ``f"{policy.source}: {problem}"``. ``is_null`` tests fit every column.
    """
    if cond.is_null is not None:
        return None
    if cond.in_ is not None:
        for i, value in enumerate(cond.in_):
            problem = check_value(value, column_type)
            if problem:
                return f"{where}.in[{i}]: {problem}"
        return None
    test = cond.test
    if test in RANGE_OPS + AGE_OPS:
        kind = column_kind(column_type)
        allowed = ("date", "datetime") if test in AGE_OPS else ("integer", "numeric", "date", "datetime", "time")
        if kind not in allowed:
            what = "dates or timestamps" if test in AGE_OPS else "numbers, dates, timestamps or times"
            held = {"string": "text", "boolean": "booleans", "uuid": "UUIDs", "integer": "whole numbers",
                    "numeric": "numbers", "time": "times of day"}.get(kind or "", kind or "values of no known kind")
            why = " (an order on text follows a collation, not a value)" if kind == "string" else ""
            return f"{where}.{test}: {test!r} compares {what}; column type {type_name(column_type)} holds {held}{why}"
        if test in AGE_OPS:
            return None  # the period was parsed with the data map
    problem = check_value(cond.value, column_type)
    return f"{where}.{test}: {problem}" if problem else None


def bind_value(cond_value: Any, column_type: TypeEngine) -> Any:
    """An accepted condition value as the driver needs it for a column of ``column_type``.

    ISO strings become ``date`` / ``datetime`` / ``time``; a YAML date for a timestamp column
    becomes midnight; an aware date-time for a column without time zone becomes naive UTC (the
    product stores naive UTC) and a naive one for a ``TIMESTAMP WITH TIME ZONE`` column is taken
    as UTC; MariaDB's TINYINT(1) gets 1 / 0; DECIMAL columns get ``Decimal``. Raises ``ValueError``
    for a value ``check_value`` refuses.
    """
    problem = check_value(cond_value, column_type)
    if problem:
        raise ValueError(problem)
    kind = column_kind(column_type)
    if kind == "boolean":
        return int(cond_value) if not isinstance(column_type, sa.Boolean) else bool(cond_value)
    if kind == "numeric":
        if isinstance(column_type, sa.Float) or not getattr(column_type, "asdecimal", True):
            return float(cond_value)
        return decimal.Decimal(str(cond_value))
    if kind == "date":
        return _parse_date(cond_value)
    if kind == "datetime":
        value = _parse_datetime(cond_value)
        assert value is not None
        if getattr(column_type, "timezone", False):
            return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo else value
    if kind == "time":
        return _parse_time(cond_value)
    if kind == "uuid":
        parsed = uuid.UUID(cond_value)
        return parsed if getattr(column_type, "as_uuid", True) else str(parsed)
    return cond_value


def bind_condition(cond: Condition, column_type: TypeEngine) -> Any:
    """``bind_value`` of ``equals`` or a range bound, or the list of ``in`` values (None for an ``is_null``
    test and for ``older_than`` / ``younger_than``, whose bound the store computes from its now)."""
    if cond.is_null is not None or cond.test in AGE_OPS:
        return None
    if cond.in_ is not None:
        return [bind_value(v, column_type) for v in cond.in_]
    return bind_value(cond.value, column_type)
