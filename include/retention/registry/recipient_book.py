"""The recipients told of each request (GDPR Art. 19): planned, sent, confirmed or waived."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from include.retention.clock import utcnow
from include.retention.errors import RetentionError
from include.retention.registry.schema import (
    OPEN_STATUSES,
    RECIPIENT_SETTLED,
    Schema,
    chunks,
    request_recipients,
    requests,
)


class RecipientBook:
    """Per request, the recipients it concerns and how far telling each has come (``request_recipients``)."""

    def __init__(self, schema: Schema):
        self.schema, self.engine = schema, schema.engine

    def plan(self, request_id: str, planned: dict[str, dict[str, Any]]) -> None:
        """Record the recipients a request concerns (name -> channel, action, systems, categories); a recipient
        already recorded keeps its status (a retry or a re-run does not tell it twice)."""
        self.plan_many({request_id: planned})

    def plan_many(self, planned_by_request: dict[str, dict[str, dict[str, Any]]]) -> None:
        """``plan`` for many requests: per chunk of 500 one SELECT and one multi-row INSERT."""
        self.schema.ensure()
        now, t = utcnow(), request_recipients
        with self.engine.begin() as conn:
            for chunk in chunks(list(planned_by_request)):
                have = {
                    (r.request_id, r.recipient)
                    for r in conn.execute(sa.select(t.c.request_id, t.c.recipient).where(t.c.request_id.in_(chunk)))
                }
                rows = [
                    {
                        "request_id": rid,
                        "recipient": name,
                        "channel": info["channel"],
                        "status": "pending",
                        "action": info["action"],
                        "systems": json.dumps(sorted(info["systems"])),
                        "categories": json.dumps(sorted(info["categories"])),
                        "attempts": 0,
                        "updated_at": now,
                    }
                    for rid in chunk
                    for name, info in sorted(planned_by_request[rid].items())
                    if (rid, name) not in have
                ]
                if rows:
                    conn.execute(t.insert(), rows)

    def of(self, request_id: str) -> dict[str, dict[str, Any]]:
        """The request's recipients: name -> channel, status, action, systems, categories, attempts, response."""
        return self.of_many([request_id]).get(request_id, {})

    def of_many(self, request_ids: Iterable[str]) -> dict[str, dict[str, dict[str, Any]]]:
        """``of`` of many requests: request id -> name -> ...; one SELECT per chunk of 500."""
        self.schema.ensure()
        t = request_recipients
        out: dict[str, dict[str, dict[str, Any]]] = {}
        with self.engine.connect() as conn:
            for chunk in chunks(list(request_ids)):
                for r in conn.execute(
                    sa.select(t).where(t.c.request_id.in_(chunk)).order_by(t.c.request_id, t.c.recipient)
                ):
                    out.setdefault(r.request_id, {})[r.recipient] = {
                        "channel": r.channel,
                        "status": r.status,
                        "action": r.action,
                        "systems": json.loads(r.systems),
                        "categories": json.loads(r.categories),
                        "attempts": r.attempts,
                        "response": r.response,
                        "note": r.note,
                        "settled_at": r.settled_at,
                    }
        return out

    def set(
        self,
        request_ids: Iterable[str],
        recipient: str,
        status: str,
        *,
        response: str | None = None,
        note: str | None = None,
        attempt: bool = False,
    ) -> None:
        """Move a recipient's status (``attempt``: count one try of its channel); ``response``: a status code."""
        now = utcnow()
        values: dict[str, Any] = {
            "status": status,
            "updated_at": now,
            "settled_at": now if status in RECIPIENT_SETTLED else None,
        }
        if response is not None:
            values["response"] = response[:200]
        if note is not None:
            values["note"] = note[:500]
        if attempt:
            values["attempts"] = request_recipients.c.attempts + 1
        with self.engine.begin() as conn:
            t = request_recipients
            conn.execute(
                t.update().where(t.c.request_id.in_(list(request_ids)), t.c.recipient == recipient).values(**values)
            )

    def waive(self, request_id: str, recipient: str, reason: str) -> None:
        """Close a recipient without telling it (e.g. it no longer holds the data): the reason is kept."""
        if recipient not in self.of(request_id):
            raise RetentionError(f"request {request_id} has no recipient {recipient!r}")
        self.set([request_id], recipient, "waived", note=reason)

    def settled(self, request_id: str) -> bool:
        return all(r["status"] in RECIPIENT_SETTLED for r in self.of(request_id).values())

    def unconfirmed(self, with_notes: bool = False) -> dict[str, list[str]]:
        """Open requests -> their recipients not yet confirmed or waived (for pages and alerts; names only, with
        ``with_notes`` followed by why, e.g. "hosting (not sent: no connection 'smtp_default' configured)")."""
        self.schema.ensure()
        t, r = requests, request_recipients
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(r.c.request_id, r.c.recipient, r.c.note)
                .join(t, t.c.request_id == r.c.request_id)
                .where(t.c.status.in_(OPEN_STATUSES), r.c.status.not_in(RECIPIENT_SETTLED))
                .order_by(r.c.request_id, r.c.recipient)
            ).all()
        out: dict[str, list[str]] = {}
        for row in rows:
            name = f"{row.recipient} ({row.note})" if with_notes and row.note else row.recipient
            out.setdefault(row.request_id, []).append(name)
        return out
