"""The product's one notion of "now": UTC, naive for database columns, ISO text for the ledger."""

from __future__ import annotations

import datetime as dt


def utcnow() -> dt.datetime:
    """Now in UTC without tzinfo: what the registry's and stores' naive timestamp columns hold."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def utcnow_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
