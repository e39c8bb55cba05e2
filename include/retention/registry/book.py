"""The request book: subject requests (encrypted identities, digests, due dates), their details and receipts.
``Registry`` is the book, and holds the registry's other parts, sharing its engine and keys: ``systems`` (status
per system), ``suppression`` (the suppression list), ``recipients`` (Art. 19) and ``keys`` (key rotation)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from dateutil.relativedelta import relativedelta

from include.retention.clock import utcnow
from include.retention.errors import RetentionError
from include.retention.identity import IDENTITY_KINDS
from include.retention.registry.identities import (
    ERASURE_MODES,
    INTAKE_VERIFIED,
    Identities,
    NewRequest,
    Vault,
    validate_request,
)
from include.retention.registry.key_records import KeyRecords
from include.retention.registry.recipient_book import RecipientBook
from include.retention.registry.schema import (
    DIGEST_COLUMNS,
    NAMESPACE,
    OPEN_STATUSES,
    TEXT_LIMITS,
    Schema,
    chunks,
    receipts,
    request_details,
    request_systems,
    requests,
)
from include.retention.registry.suppression_list import SuppressionList
from include.retention.registry.system_states import SystemStates


class Registry:
    """The request book, and the registry's other parts as attributes (``systems``, ``suppression``,
    ``recipients``, ``keys``) sharing its engine, schema and keys."""

    def __init__(self, engine: sa.Engine, secret: bytes | None):
        """``secret`` None: a read-only view for pages and reports (statuses, dates, counts; never identities)."""
        self.engine = engine
        self.schema = Schema(engine)
        self.vault = Vault(secret)
        self.systems = SystemStates(engine)
        self.suppression = SuppressionList(self.schema, self.vault, self.identities_many)
        self.recipients = RecipientBook(self.schema)
        self.keys = KeyRecords(self.schema, self.vault, self.identities)

    def ensure_schema(self) -> None:
        """Create the tables (and add missing columns) once; safe when several first runs do it at the same time."""
        self.schema.ensure()

    def digest(self, kind: str, value: str) -> str:
        return self.vault.digest(kind, value)

    def digests(self, kind: str, value: str) -> list[str]:
        """The digests under every active key, current first (what a lookup must try)."""
        return self.vault.digests(kind, value)

    def identities(self, request_id: str) -> Identities:
        return self.identities_many([request_id])[request_id]

    def identities_many(self, request_ids: Iterable[str]) -> dict[str, Identities]:
        """Request id -> its identities (decrypted), one SELECT per chunk of 500; an unknown id is refused."""
        ids = list(dict.fromkeys(request_ids))
        tokens: dict[str, str] = {}
        with self.engine.connect() as conn:
            for chunk in chunks(ids):
                tokens.update(
                    conn.execute(
                        sa.select(requests.c.request_id, requests.c.identity_enc).where(
                            requests.c.request_id.in_(chunk)
                        )
                    ).all()
                )
        missing = [rid for rid in ids if rid not in tokens]
        if missing:
            raise RetentionError(f"unknown request {missing[0]}")
        return {rid: Identities(**self.vault.decrypt(tokens[rid])) for rid in ids}

    def request_id_for(self, dag_id: str, run_id: str) -> str:
        """Stable id of the request a DAG run carries: re-running the run reuses it."""
        return str(uuid.uuid5(NAMESPACE, f"{dag_id}/{run_id}"))

    def register(
        self,
        req: NewRequest,
        *,
        request_id: str | None = None,
        dag_id: str | None = None,
        run_id: str | None = None,
        policy_digest: str | None = None,
        received_at: dt.datetime | None = None,
    ) -> str:
        """Store a request (idempotent on ``request_id``); returns its id."""
        validate_request(req)
        self.ensure_schema()
        request_id = request_id or str(uuid.uuid4())
        received = received_at or utcnow()
        digests = {f"{k}_digest": self.digest(k, v) for k, v in req.identities.given().items() if k in DIGEST_COLUMNS}
        row = {
            "request_id": request_id,
            "mode": req.mode,
            "dry_run": req.dry_run,
            "source": req.source,
            "status": "pending",
            "identity_enc": self.vault.encrypt(req.identities.normalised()),
            "external_ref_enc": self.vault.encrypt(req.external_ref),
            "note_enc": self.vault.encrypt(req.note),
            "received_at": received,
            "due_at": received + relativedelta(months=1),
            "attempts": 0,
            "dag_id": dag_id,
            "run_id": run_id,
            "policy_digest": policy_digest,
            "key_id": self.vault.kid,
            **digests,
        }
        with self.engine.begin() as conn:
            exists = conn.execute(sa.select(requests.c.request_id).where(requests.c.request_id == request_id)).first()
            if exists is None:
                conn.execute(requests.insert().values(**row))
        return request_id

    def register_many(self, reqs: Iterable[NewRequest], source: str = "intake") -> list[str]:
        """Insert many requests in one statement (a web form's or a script's bulk intake)."""
        self.ensure_schema()
        rows, ids = [], []
        now = utcnow()
        for req in reqs:
            validate_request(req)
            request_id = str(uuid.uuid4())
            ids.append(request_id)
            rows.append(
                {
                    "request_id": request_id,
                    "mode": req.mode,
                    "dry_run": req.dry_run,
                    "source": source,
                    "status": "pending",
                    "identity_enc": self.vault.encrypt(req.identities.normalised()),
                    "external_ref_enc": self.vault.encrypt(req.external_ref),
                    "note_enc": self.vault.encrypt(req.note),
                    "received_at": now,
                    "due_at": now + relativedelta(months=1),
                    "attempts": 0,
                    "dag_id": None,
                    "run_id": None,
                    "policy_digest": None,
                    "key_id": self.vault.kid,
                    # every digest column in every row: an executemany takes its columns from the first row
                    **{
                        f"{k}_digest": (
                            self.digest(k, req.identities.given()[k]) if k in req.identities.given() else None
                        )
                        for k in DIGEST_COLUMNS
                    },
                }
            )
        with self.engine.begin() as conn:
            for i in range(0, len(rows), 500):
                conn.execute(requests.insert(), rows[i : i + 500])
        return ids

    def claim_pending(
        self,
        limit: int,
        dag_id: str,
        run_id: str,
        modes: Iterable[str] = ERASURE_MODES,
        verified_only: Iterable[str] = (),
        verified_source: str = INTAKE_VERIFIED,
    ) -> list[str]:
        """Take up to ``limit`` pending (or incomplete) requests of ``modes`` for one intake run; those of
        ``verified_only`` modes only if queued as verified (source ``verified_source``).

        A batch is acted on in one mode: it holds only requests of the oldest open request's mode and
        dry-run flag (an erasure never runs as a restriction's batch, a dry run never with real ones);
        the others wait for the next run."""
        self.ensure_schema()
        t = requests
        unchecked = t.c.mode.not_in(tuple(verified_only)) if verified_only else sa.true()
        open_ = (
            t.c.status.in_(("pending", "incomplete")),
            t.c.mode.in_(tuple(modes)),
            t.c.dag_id.is_(None) | (t.c.dag_id == dag_id),
            unchecked | (t.c.source == verified_source),
        )
        with self.engine.begin() as conn:
            first = conn.execute(
                sa.select(t.c.mode, t.c.dry_run).where(*open_).order_by(t.c.received_at, t.c.request_id).limit(1)
            ).first()
            if first is None:
                return []
            ids = list(
                conn.execute(
                    sa.select(t.c.request_id)
                    .where(*open_, t.c.mode == first.mode, t.c.dry_run == first.dry_run)
                    .order_by(t.c.received_at, t.c.request_id)
                    .limit(limit)
                    .with_for_update()
                ).scalars()
            )
            if ids:
                conn.execute(
                    t.update()
                    .where(t.c.request_id.in_(ids))
                    .values(status="in_progress", dag_id=dag_id, run_id=run_id, attempts=t.c.attempts + 1)
                )
        return ids

    def get(self, request_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(requests).where(requests.c.request_id == request_id)).one()._mapping
        return {k: v for k, v in row.items() if not k.endswith("_enc")}

    def get_many(self, request_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Request id -> its row without the encrypted fields (what ``get`` returns), one SELECT per chunk."""
        cols = [c for c in requests.c if not c.name.endswith("_enc")]
        out: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for chunk in chunks(list(request_ids)):
                for row in conn.execute(sa.select(*cols).where(requests.c.request_id.in_(chunk))):
                    out[row.request_id] = dict(row._mapping)
        return out

    def start(self, request_id: str, dag_id: str | None = None, run_id: str | None = None) -> None:
        values: dict[str, Any] = {"status": "in_progress", "attempts": requests.c.attempts + 1}
        if dag_id:
            values.update(dag_id=dag_id, run_id=run_id)
        with self.engine.begin() as conn:
            conn.execute(
                requests.update()
                .where(requests.c.request_id == request_id, requests.c.status != "complete")
                .values(**values)
            )

    def finish(self, request_id: str, status: str, error: str | None = None) -> None:
        self.finish_many([request_id], status, error)

    def finish_many(self, request_ids: Iterable[str], status: str, error: str | None = None) -> None:
        """Close requests with one status (and error): one UPDATE per chunk of 500."""
        with self.engine.begin() as conn:
            for chunk in chunks(list(request_ids)):
                conn.execute(
                    requests.update()
                    .where(requests.c.request_id.in_(chunk))
                    .values(status=status, last_error=error, completed_at=utcnow() if status == "complete" else None)
                )

    def reopen(self, request_ids: Iterable[str], system: str, error: str) -> list[str]:
        """Reopen completed erasures whose data was found again in ``system``: the request becomes
        ``incomplete`` (open, watched by the due-date alerts, taken again by the intake: no run owns it any
        more), the system ``failed`` with ``error``. Requests not complete are left as they are. Returns the
        reopened ids."""
        ids = sorted(set(request_ids))
        reopened: list[str] = []
        with self.engine.begin() as conn:
            for chunk in chunks(ids):
                done = list(conn.execute(sa.select(requests.c.request_id).where(
                    requests.c.request_id.in_(chunk), requests.c.status == "complete",
                    requests.c.mode == "erase").with_for_update()).scalars())
                if done:
                    conn.execute(requests.update().where(requests.c.request_id.in_(done),
                                                         requests.c.status == "complete")
                                 .values(status="incomplete", last_error=error, completed_at=None, dag_id=None,
                                         run_id=None))
                reopened += done
        if reopened:
            self.systems.set(reopened, system, "failed", error=error)
        return sorted(reopened)

    def details(self, request_id: str) -> dict[str, Any]:
        """What the request's type needs besides identities (decrypted); {} if nothing was stored."""
        return self.details_many([request_id]).get(request_id, {})

    def details_many(self, request_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """``details`` of many requests (those with any), one SELECT per chunk of 500."""
        out: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for chunk in chunks(list(request_ids)):
                for rid, token in conn.execute(
                    sa.select(request_details.c.request_id, request_details.c.details_enc).where(
                        request_details.c.request_id.in_(chunk)
                    )
                ):
                    out[rid] = self.vault.decrypt(token) if token else {}
        return out

    def update_details(self, request_id: str, **values: Any) -> dict[str, Any]:
        """Merge ``values`` into the request's details, stored encrypted only."""
        return self.update_details_many({request_id: values})[request_id]

    def update_details_many(self, values_by_request: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """``update_details`` for many requests: per chunk of 500 one SELECT, one DELETE, one multi-row INSERT."""
        self.ensure_schema()
        ids, out, now = list(values_by_request), {}, utcnow()
        for chunk in chunks(ids):
            old = self.details_many(chunk)
            out.update({rid: {**old.get(rid, {}), **values_by_request[rid]} for rid in chunk})
            with self.engine.begin() as conn:
                # only rows that exist are deleted (by key): a DELETE of absent keys takes InnoDB gap locks under
                # REPEATABLE READ, and two such writers inserting into the same gap deadlock each other
                there = list(conn.execute(sa.select(request_details.c.request_id).where(
                    request_details.c.request_id.in_(chunk))).scalars())
                if there:
                    conn.execute(request_details.delete().where(request_details.c.request_id.in_(there)))
                conn.execute(
                    request_details.insert(),
                    [
                        {"request_id": rid, "details_enc": self.vault.encrypt(out[rid]), "updated_at": now}
                        for rid in chunk
                    ],
                )
        return out

    def save_receipt(self, request_id: str, receipt: dict[str, Any]) -> None:
        self.save_receipts({request_id: receipt})

    def save_receipts(self, receipts_by_id: dict[str, dict[str, Any]]) -> None:
        """Store (replace) receipts: per chunk of 500 one DELETE and one multi-row INSERT."""
        now = utcnow()
        with self.engine.begin() as conn:
            for chunk in chunks(list(receipts_by_id)):
                # only existing rows are deleted, by key (no gap locks: see ``update_details_many``)
                there = list(conn.execute(sa.select(receipts.c.request_id).where(
                    receipts.c.request_id.in_(chunk))).scalars())
                if there:
                    conn.execute(receipts.delete().where(receipts.c.request_id.in_(there)))
                conn.execute(
                    receipts.insert(),
                    [
                        {
                            "request_id": rid,
                            "created_at": now,
                            "receipt": json.dumps(receipts_by_id[rid], sort_keys=True, default=str),
                        }
                        for rid in chunk
                    ],
                )

    def receipt(self, request_id: str) -> dict[str, Any] | None:
        return self.receipts_many([request_id]).get(request_id)

    def receipts_many(self, request_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The stored receipts of these requests (those with one), one SELECT per chunk of 500."""
        out: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for chunk in chunks(list(request_ids)):
                for rid, text in conn.execute(
                    sa.select(receipts.c.request_id, receipts.c.receipt).where(receipts.c.request_id.in_(chunk))
                ):
                    out[rid] = json.loads(text)
        return out

    def subject_digest(self, request_id: str) -> str | None:
        """The keyed digest the ledger names a request's subject by (its first identity, by kind order)."""
        return self.subject_digests([request_id])[request_id]

    def subject_digests(
        self, request_ids: Iterable[str], identities: dict[str, Identities] | None = None
    ) -> dict[str, str | None]:
        """``subject_digest`` of many requests (their identities read in one SELECT unless given)."""
        identities = identities if identities is not None else self.identities_many(request_ids)
        out: dict[str, str | None] = {}
        for rid in request_ids:
            given = identities[rid].normalised()
            kind = next((k for k in IDENTITY_KINDS if k in given), None)
            out[rid] = None if kind is None else self.digest(kind, given[kind])
        return out

    def open_requests(self) -> list[dict[str, Any]]:
        self.ensure_schema()
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    requests.c.request_id,
                    requests.c.mode,
                    requests.c.status,
                    requests.c.received_at,
                    requests.c.due_at,
                    requests.c.dry_run,
                    requests.c.source,
                    requests.c.dag_id,
                    requests.c.run_id,
                )
                .where(requests.c.status.in_(OPEN_STATUSES))
                .order_by(requests.c.due_at)
            ).all()
        return [dict(r._mapping) for r in rows]

    _LISTED = (
        "request_id",
        "mode",
        "status",
        "dry_run",
        "source",
        "received_at",
        "due_at",
        "completed_at",
        "attempts",
        "dag_id",
        "run_id",
    )

    def listing(self, *, open_only: bool, limit: int | None = None) -> list[dict[str, Any]]:
        """Requests with their status per system: open ones by due date, or the latest closed ones first."""
        self.ensure_schema()
        t, s = requests, request_systems
        query = sa.select(*(t.c[c] for c in self._LISTED))
        if open_only:
            query = query.where(t.c.status.in_(OPEN_STATUSES)).order_by(t.c.due_at, t.c.request_id)
        else:
            query = query.where(t.c.status.not_in(OPEN_STATUSES)).order_by(
                t.c.completed_at.desc(), t.c.received_at.desc(), t.c.request_id
            )
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
            systems: dict[str, dict[str, str]] = {}
            ids = [r["request_id"] for r in rows]
            for i in range(0, len(ids), 500):
                for r in conn.execute(
                    sa.select(s.c.request_id, s.c.system, s.c.status)
                    .where(s.c.request_id.in_(ids[i : i + 500]))
                    .order_by(s.c.system)
                ):
                    systems.setdefault(r.request_id, {})[r.system] = r.status
        for r in rows:
            r["systems"] = systems.get(r["request_id"], {})
        return rows

    def extend(self, request_id: str, months: int, reason: str) -> dict[str, Any]:
        """Extend the due date by ``months`` (1 or 2; GDPR Art. 12(3)), once per request, with a reason.
        Returns the old and new due dates."""
        if months not in (1, 2):
            raise RetentionError("an extension is 1 or 2 months (GDPR Art. 12(3): at most two further months)")
        reason = (reason or "").strip()
        if not reason or len(reason) > TEXT_LIMITS["note"] or "\x00" in reason:
            raise RetentionError(f"an extension needs a reason (1 to {TEXT_LIMITS['note']} characters)")
        self.ensure_schema()
        req = self.get(request_id)
        if req["status"] not in OPEN_STATUSES:
            raise RetentionError(f"request {request_id} is {req['status']}: only an open request can be extended")
        if self.details(request_id).get("extension"):
            raise RetentionError(
                f"request {request_id} was already extended: the due date can be extended only once (GDPR Art. 12(3))"
            )
        old = req["due_at"]
        new = old + relativedelta(months=months)
        with self.engine.begin() as conn:
            conn.execute(requests.update().where(requests.c.request_id == request_id).values(due_at=new))
        self.update_details(
            request_id,
            extension={
                "months": months,
                "reason": reason,
                "at": utcnow().isoformat(),
                "old_due_at": old.isoformat(),
                "new_due_at": new.isoformat(),
            },
        )
        return {"request_id": request_id, "months": months, "old_due_at": old, "new_due_at": new}
