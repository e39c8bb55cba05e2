"""The ledger's tables, entry fields and constants, and creating a schema safely when several first runs do it
at the same time."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict

import sqlalchemy as sa

log = logging.getLogger(__name__)

GENESIS = "0" * 64
CHAIN_FORMAT = "hmac-sha256/2"
INTENT = "intent"
RECONCILED = "reconciled"
ROTATE_KEYS = "rotate_keys"  # the action of the entry that hands the chain over to a new key (ADR 0007)
ANCHOR_ACTION = "anchor"  # the action of the entry that records an anchor written outside (ADR 0006)
ANCHOR_FORMAT = "retention-ledger-anchor/2"
ANCHORS_DEMO_ENV = "RETENTION_LEDGER_ANCHORS_DEMO"  # set by `make demo`: its directory of anchors is a stand-in
_SEQ = sa.BigInteger().with_variant(sa.Integer, "sqlite")

metadata = sa.MetaData()

entries = sa.Table(
    "ledger_entries",
    metadata,
    sa.Column("seq", _SEQ, primary_key=True, autoincrement=False),
    sa.Column("recorded_at", sa.String(32), nullable=False),
    sa.Column("dag_id", sa.String(250)),
    sa.Column("run_id", sa.String(250)),
    sa.Column("rule_id", sa.String(250)),
    sa.Column("request_id", sa.String(64)),
    sa.Column("policy_digest", sa.String(64)),
    sa.Column("system", sa.String(100)),
    sa.Column("collection", sa.String(200)),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("count", sa.Integer, nullable=False, default=0),
    sa.Column("subject_digest", sa.String(64)),
    sa.Column("pk_digest", sa.String(64)),
    sa.Column("details", sa.Text),
    sa.Column("ref_seq", _SEQ),  # an outcome entry: the seq of the intent it settles
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("entry_hash", sa.String(64), nullable=False),
    sa.Index("ix_ledger_rule", "rule_id", "recorded_at"),
    sa.Index("ix_ledger_request", "request_id"),
    sa.Index("ix_ledger_ref", "ref_seq"),
)

head = sa.Table(
    "ledger_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", _SEQ, nullable=False),
    sa.Column("entry_hash", sa.String(64), nullable=False),
)

# History of verifications ("Verify now", the CLI). Writable by anyone with database access:
# never the source of a displayed status (the page verifies afresh).
verifications = sa.Table(
    "ledger_verifications",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("verified_at", sa.String(32), nullable=False),
    sa.Column("ok", sa.Boolean, nullable=False),
    sa.Column("entries", sa.Integer, nullable=False),
    sa.Column("problem", sa.Text),
)

HASHED_FIELDS = (
    "seq",
    "recorded_at",
    "dag_id",
    "run_id",
    "rule_id",
    "request_id",
    "policy_digest",
    "system",
    "collection",
    "action",
    "outcome",
    "count",
    "subject_digest",
    "pk_digest",
    "details",
    "ref_seq",
    "prev_hash",
)

CHART_ACTIONS = ("lock", "anonymize", "delete", "erase", "restrict")
CHART_OUTCOMES = ("done", "verified", RECONCILED)


@dataclass(frozen=True)
class RunRef:
    """Which run wrote an entry: an Airflow DAG run, or a command."""

    dag_id: str = "manual"
    run_id: str = "manual"


class EntryFields(TypedDict, total=False):
    """The optional fields of a ledger entry, as ``append`` and ``intend`` take them by keyword."""

    count: int
    rule_id: str | None
    request_id: str | None
    policy_digest: str | None
    system: str | None
    collection: str | None
    subject_digest: str | None
    pk_digest: str | None
    details: dict[str, Any] | None


_RACE_MARKERS = ("already exists", "duplicate", "database is locked", "pg_type_typname_nsp_index", "1050", "1061")


def create_schema(engine: sa.Engine, tables: sa.MetaData, add_missing_columns: Callable[[], None], what: str) -> None:
    """``tables`` created (and missing columns added) on ``engine``; safe when several first runs do it at the same
    time: a table, index or column another run created meanwhile is a race to check again, not an error."""
    attempts = 8
    for attempt in range(attempts):
        try:
            tables.create_all(engine, checkfirst=True)
            add_missing_columns()
            return
        except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError) as exc:
            if attempt == attempts - 1 or not is_create_race(exc):
                raise
            log.info("%s schema created concurrently (attempt %d); checking again", what, attempt + 1)
            time.sleep(0.05 * (attempt + 1))


def is_create_race(exc: Exception) -> bool:
    """A concurrent first run created (or is creating) the same table / index: retry with checkfirst."""
    text = str(getattr(exc, "orig", exc)).lower()
    return any(marker in text for marker in _RACE_MARKERS)


def entry_fields(item: dict[str, Any]) -> dict[str, Any]:
    """The stored fields of an entry from ``append``'s keyword arguments (``run`` split into DAG and run id)."""
    run = item.get("run") or RunRef()
    return {
        "dag_id": run.dag_id,
        "run_id": run.run_id,
        **{
            k: item.get(k)
            for k in (
                "rule_id",
                "request_id",
                "policy_digest",
                "system",
                "collection",
                "action",
                "outcome",
                "subject_digest",
                "pk_digest",
            )
        },
        "count": int(item.get("count") or 0),
        "details": details_text(item.get("details")),
    }


def details_text(details: dict[str, Any] | None) -> str | None:
    return json.dumps(details, sort_keys=True) if details else None
