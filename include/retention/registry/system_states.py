"""Each request's status per system: status, attempts, error, counts, when verified."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from include.retention.clock import utcnow
from include.retention.registry.schema import chunks, request_systems


class SystemStates:
    """The status of each request in each system (``request_systems``)."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine

    def set(
        self,
        request_ids: Iterable[str],
        system: str,
        status: str,
        *,
        counts: dict | None = None,
        error: str | None = None,
    ) -> None:
        """Upsert the status of one system for several requests (portable: update, then insert missing)."""
        ids = list(request_ids)
        now = utcnow()
        with self.engine.begin() as conn:
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                have = set(
                    conn.execute(
                        sa.select(request_systems.c.request_id).where(
                            request_systems.c.system == system, request_systems.c.request_id.in_(chunk)
                        )
                    ).scalars()
                )
                values: dict[str, Any] = {
                    "status": status,
                    "error": error,
                    "updated_at": now,
                    "attempts": request_systems.c.attempts + 1,
                }
                if counts is not None:
                    values["counts"] = json.dumps(counts, sort_keys=True)
                if status == "verified":
                    values["verified_at"] = now
                if have:
                    conn.execute(
                        request_systems.update()
                        .where(request_systems.c.system == system, request_systems.c.request_id.in_(have))
                        .values(values)
                    )
                missing = [r for r in chunk if r not in have]
                if missing:
                    conn.execute(
                        request_systems.insert(),
                        [
                            {
                                "request_id": r,
                                "system": system,
                                "status": status,
                                "error": error,
                                "updated_at": now,
                                "attempts": 1,
                                "counts": values.get("counts"),
                                "verified_at": now if status == "verified" else None,
                            }
                            for r in missing
                        ],
                    )

    def add_counts(self, per_request: dict[str, dict], system: str, status: str) -> None:
        """Add counts to what earlier attempts recorded: rows already gone are not found again,
        so the sum over attempts is the true count and a re-run adds nothing. Set-based: per chunk of
        500 requests one SELECT of the stored rows, one DELETE and one multi-row INSERT of the merged ones."""
        now = utcnow()
        t = request_systems
        with self.engine.begin() as conn:
            for chunk in chunks(list(per_request)):
                where = (t.c.system == system, t.c.request_id.in_(chunk))
                old = {r.request_id: dict(r._mapping) for r in conn.execute(sa.select(t).where(*where))}
                rows = []
                for rid in chunk:
                    row = old.get(rid) or {"request_id": rid, "system": system, "attempts": 1, "error": None}
                    counts = _merge(json.loads(row["counts"]) if row.get("counts") else {}, per_request[rid])
                    rows.append(
                        {
                            **row,
                            "counts": json.dumps(counts, sort_keys=True),
                            "status": status,
                            "updated_at": now,
                            "verified_at": now if status == "verified" else None,
                        }
                    )
                if old:
                    conn.execute(t.delete().where(*where))
                conn.execute(t.insert(), rows)

    def of(self, request_id: str) -> dict[str, dict[str, Any]]:
        return self.of_many([request_id]).get(request_id, {})

    def of_many(self, request_ids: Iterable[str]) -> dict[str, dict[str, dict[str, Any]]]:
        """Request id -> system -> status, attempts, error, counts, verified_at; one SELECT per chunk of 500."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        with self.engine.connect() as conn:
            for chunk in chunks(list(request_ids)):
                for r in conn.execute(
                    sa.select(request_systems)
                    .where(request_systems.c.request_id.in_(chunk))
                    .order_by(request_systems.c.request_id, request_systems.c.system)
                ):
                    out.setdefault(r.request_id, {})[r.system] = {
                        "status": r.status,
                        "attempts": r.attempts,
                        "error": r.error,
                        "counts": json.loads(r.counts) if r.counts else {},
                        "verified_at": r.verified_at,
                    }
        return out


def _merge(old: Any, new: Any) -> Any:
    """Sum nested count dictionaries."""
    if isinstance(old, dict) and isinstance(new, dict):
        return {k: _merge(old.get(k), new.get(k)) for k in old.keys() | new.keys()}
    if old is None:
        return new
    if new is None:
        return old
    return old + new if isinstance(old, int) and isinstance(new, int) else new
