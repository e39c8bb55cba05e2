"""What the data-retention page (and the deletion concept) read from the ledger: last sweeps, changes per day,
recorded verifications, entries per request. Each takes the engine of a ledger whose schema exists."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from include.retention.ledger.schema import CHART_ACTIONS, CHART_OUTCOMES, entries, verifications


def requests_with_entry(engine: sa.Engine, request_ids: Iterable[str], **where: Any) -> dict[str, list[dict[str, Any]]]:
    """Per request id, its entries with these field values (oldest first); one SELECT per 500 requests."""
    ids, out = list(request_ids), {}
    for i in range(0, len(ids), 500):
        query = sa.select(entries).where(entries.c.request_id.in_(ids[i : i + 500])).order_by(entries.c.seq)
        for name, value in where.items():
            query = query.where(entries.c[name] == value)
        with engine.connect() as conn:
            for row in conn.execute(query):
                out.setdefault(row.request_id, []).append(dict(row._mapping))
    return out


def last_sweeps(engine: sa.Engine) -> list[dict[str, Any]]:
    """The latest ``sweep`` entry of each rule (the page's "last sweep per rule")."""
    e = entries
    latest = (
        sa.select(e.c.rule_id, sa.func.max(e.c.seq).label("seq"))
        .where(e.c.action == "sweep", e.c.rule_id.is_not(None))
        .group_by(e.c.rule_id)
        .subquery()
    )
    query = (
        sa.select(
            e.c.seq,
            e.c.rule_id,
            e.c.system,
            e.c.collection,
            e.c.outcome,
            e.c.count,
            e.c.recorded_at,
            e.c.dag_id,
            e.c.run_id,
            e.c.details,
        )
        .join(latest, e.c.seq == latest.c.seq)
        .order_by(e.c.rule_id)
    )
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def actions_per_day(
    engine: sa.Engine,
    first_day: dt.date,
    actions: Iterable[str] = CHART_ACTIONS,
    outcomes: Iterable[str] = CHART_OUTCOMES,
) -> dict[tuple[str, str], int]:
    """Sum of counts per (UTC day, action) since ``first_day``, over entries that record a real change."""
    e = entries
    # recorded_at is an ISO 8601 string: its first 10 characters are the (UTC) day
    day = sa.func.substr(e.c.recorded_at, sa.literal_column("1"), sa.literal_column("10"))
    query = (
        sa.select(day.label("day"), e.c.action, sa.func.sum(e.c.count).label("n"))
        .where(
            e.c.action.in_(list(actions)),
            e.c.outcome.in_(list(outcomes)),
            e.c.recorded_at >= f"{first_day.isoformat()}T00:00:00",
        )
        .group_by(day, e.c.action)
    )
    with engine.connect() as conn:
        return {(r.day, r.action): int(r.n or 0) for r in conn.execute(query)}


def verification_history(engine: sa.Engine, limit: int = 1) -> list[dict[str, Any]]:
    """Recorded verifications, newest first. History only: anyone with database access can write it."""
    v = verifications
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(v.c.verified_at, v.c.ok, v.c.entries, v.c.problem).order_by(v.c.id.desc()).limit(limit)
        )
        return [
            {"verified_at": r.verified_at, "ok": bool(r.ok), "entries": r.entries, "problem": r.problem} for r in rows
        ]
