"""Masking strategies, registered by name; policies refer to them by that name.

A strategy either becomes a SQL expression (set-based, no row leaves the database)
or, for keyed hashes, is computed in Python for one bounded batch at a time.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Callable

import sqlalchemy as sa


class Strategy:
    name: str = ""
    in_sql: bool = True

    def sql(self, column: sa.ColumnElement, value: str | None) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def python(self, raw: Any, value: str | None, key: bytes) -> Any:
        raise NotImplementedError


class NullStrategy(Strategy):
    """Replace the value with NULL."""

    name = "null"

    def sql(self, column, value):
        return sa.null()


class RedactStrategy(Strategy):
    """Replace the value with a fixed text (``value``, default ``[redacted]``)."""

    name = "redact"

    def sql(self, column, value):
        return sa.literal(value if value is not None else "[redacted]")


class HmacStrategy(Strategy):
    """Replace the value with its keyed HMAC-SHA256 digest (hex): joinable, not reversible."""

    name = "hmac"
    in_sql = False

    def python(self, raw, value, key):
        if raw is None:
            return None
        return keyed_digest(key, str(raw))


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (NullStrategy(), RedactStrategy(), HmacStrategy())}


def keyed_digest(key: bytes, value: str, *, normalise: Callable[[str], str] | None = None) -> str:
    """HMAC-SHA256 of ``value`` under ``key``, hex. The one place identities become digests."""
    text = normalise(value) if normalise else value
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


def normalise_identity(kind: str, value: str) -> str:
    """Canonical form of an identity before hashing, so ``A@X.org`` and ``a@x.org `` match."""
    value = value.strip()
    if kind == "email":
        return value.lower()
    if kind == "phone":
        return "".join(ch for ch in value if ch.isdigit() or ch == "+")
    return value
