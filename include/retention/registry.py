"""The request registry: subject requests, their status per system, receipts and the suppression list.

It lives beside the ledger (its own connection). A subject's identities are stored only
encrypted (Fernet, key derived from the product's secret) plus keyed HMAC digests for
matching; nothing else in the registry names a person. Due dates follow GDPR Art. 12(3):
one month from receipt.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from dateutil.relativedelta import relativedelta
from sqlalchemy.dialects.postgresql import insert as pg_insert

from include.retention.clock import utcnow
from include.retention.errors import RetentionError
from include.retention.identity import IDENTITY_KINDS, IdentityError, normalise
from include.retention.identity import validate as validate_identity
from include.retention.ledger import create_schema
from include.retention.masking import current_kid, keyed_digest, keyed_digests, keys_of

# Kinds with a digest column of their own in subject_requests (others: request_digests).
DIGEST_COLUMNS = ("email", "phone", "customer_ref")
# Text fields of a request besides identities: longest accepted value.
TEXT_LIMITS = {"external_ref": 100, "note": 2000}
OPEN_STATUSES = ("pending", "in_progress", "incomplete")
NAMESPACE = uuid.UUID("8f6d8a52-1b7c-4c5e-9a4e-2f1f0b6c9d11")

metadata = sa.MetaData()

requests = sa.Table(
    "subject_requests",
    metadata,
    sa.Column("request_id", sa.String(36), primary_key=True),
    sa.Column("mode", sa.String(16), nullable=False),  # erase | restrict
    sa.Column("dry_run", sa.Boolean, nullable=False, default=False),
    sa.Column("status", sa.String(16), nullable=False),  # pending | in_progress | incomplete | complete
    sa.Column("source", sa.String(32), nullable=False),  # form | api | intake
    sa.Column("identity_enc", sa.Text, nullable=False),
    sa.Column("email_digest", sa.String(64), index=True),
    sa.Column("phone_digest", sa.String(64), index=True),
    sa.Column("customer_ref_digest", sa.String(64), index=True),
    sa.Column("external_ref_enc", sa.Text),
    sa.Column("note_enc", sa.Text),
    sa.Column("received_at", sa.DateTime, nullable=False),
    sa.Column("due_at", sa.DateTime, nullable=False, index=True),
    sa.Column("completed_at", sa.DateTime),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("last_error", sa.Text),
    sa.Column("dag_id", sa.String(250)),
    sa.Column("run_id", sa.String(250)),
    sa.Column("policy_digest", sa.String(64)),
    sa.Column("key_id", sa.String(16)),  # the key of the digest columns; NULL: written before key ids (k0)
    sa.Index("ix_requests_status", "status", "received_at"),
)

request_systems = sa.Table(
    "request_systems",
    metadata,
    sa.Column("request_id", sa.String(36), primary_key=True),
    sa.Column("system", sa.String(100), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),  # pending | acted | verified | failed
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("counts", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Column("verified_at", sa.DateTime),
)

receipts = sa.Table(
    "request_receipts",
    metadata,
    sa.Column("request_id", sa.String(36), primary_key=True),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("receipt", sa.Text, nullable=False),
)

# Per request, what its type needs besides identities (access: format; rectify: the new values; the identity
# check's decision and reason), as one encrypted JSON document: nothing in it is readable without the key.
request_details = sa.Table(
    "request_details",
    metadata,
    sa.Column("request_id", sa.String(36), primary_key=True),
    sa.Column("details_enc", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)

suppression = sa.Table(
    "suppression_list",
    metadata,
    sa.Column("digest", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("request_id", sa.String(36)),
    sa.Column("added_at", sa.DateTime, nullable=False),
    sa.Column("key_id", sa.String(16)),  # the key of the digest; NULL: written before key ids (k0)
)


# Per request, each recipient of the data told of it (GDPR Art. 19: docs/adr/0010-notifying-recipients.md): status
# pending | sent | confirmed | waived | failed, the channel's last response (an SMTP or HTTP status, never a body).
RECIPIENT_SETTLED = ("sent", "confirmed", "waived")
request_recipients = sa.Table(
    "request_recipients",
    metadata,
    sa.Column("request_id", sa.String(36), primary_key=True),
    sa.Column("recipient", sa.String(100), primary_key=True),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("systems", sa.Text, nullable=False),  # JSON list
    sa.Column("categories", sa.Text, nullable=False),  # JSON list
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("response", sa.String(200)),
    sa.Column("note", sa.String(500)),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Column("settled_at", sa.DateTime),
)


def encryption_key(secret: bytes) -> bytes:
    """The registry's Fernet key, derived (HKDF) from the product secret: one secret to manage."""
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"retention-registry-v1").derive(secret)
    return base64.urlsafe_b64encode(derived)


class Identities:
    """The identities a request carries: kind (``IDENTITY_KINDS``) -> value as given."""

    def __init__(self, values: dict[str, str | None] | None = None, **kinds: str | None):
        merged = {**(values or {}), **kinds}
        self.values = {k: v for k, v in merged.items() if v is not None and v != ""}

    def given(self) -> dict[str, str]:
        return dict(self.values)

    def normalised(self) -> dict[str, str]:
        return {k: n for k, v in self.values.items() if (n := normalise(k, v)) is not None}

    def __getattr__(self, kind: str) -> str | None:  # identities.email, identities.phone ...
        if kind in IDENTITY_KINDS:
            return self.__dict__.get("values", {}).get(kind)
        raise AttributeError(kind)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Identities) and other.values == self.values

    def __repr__(self) -> str:  # never the values
        return f"Identities({', '.join(sorted(self.values))})"


@dataclass
class NewRequest:
    identities: Identities
    mode: str = "erase"
    dry_run: bool = False
    source: str = "form"
    external_ref: str | None = None
    note: str | None = None


MODES = ("erase", "restrict", "access", "rectify", "withdraw")
# Modes erasure_intake takes from the queue; access_request takes the others (ADR 0008).
ERASURE_MODES = ("erase", "restrict")
# `cli submit --identity-verified`: queued with the requester's identity verified (no identity check; ADR 0014)
INTAKE_VERIFIED = "intake-verified"


def validate_request(req: NewRequest) -> None:
    """Refuse a malformed request with a message that names the field, never its value."""
    if req.mode not in MODES:
        raise RetentionError(f"mode must be one of {', '.join(MODES)}, got {str(req.mode)[:20]!r}")
    given = req.identities.given()
    if not given:
        raise RetentionError(f"a request needs at least one identity: {', '.join(IDENTITY_KINDS)}")
    for kind, value in given.items():
        validate_identity(kind, value)
    for name, limit in TEXT_LIMITS.items():
        value = getattr(req, name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise IdentityError(f"{name} must be a string")
        if len(value) > limit:
            raise IdentityError(f"{name} is longer than {limit} characters")
        if "\x00" in value:
            raise IdentityError(f"{name} contains a NUL character")


class Registry:
    def __init__(self, engine: sa.Engine, secret: bytes | None):
        """``secret`` None: a read-only view for pages and reports (statuses, dates, counts; never identities)."""
        self.engine = engine
        self.secret = secret or b""
        # Tokens are "<key id>:<Fernet token>" (a Fernet token has no ':'); older ones, without an id,
        # are tried under every active key (docs/adr/0007-key-rotation.md).
        self.kid = current_kid(secret) if secret else None
        self._fernets = {kid: Fernet(encryption_key(key)) for kid, key in keys_of(secret)} if secret else {}
        self._fernet = self._fernets[self.kid] if secret else None
        self._ready = False

    def ensure_schema(self) -> None:
        """Create the tables (and add missing columns) once; safe when several first runs do it at the same time:
        a table, index or column another run created meanwhile is a race to check again, not an error."""
        if self._ready:
            return
        create_schema(self.engine, metadata, self._add_missing_columns, "registry")
        self._ready = True

    def _add_missing_columns(self) -> None:
        """Registries created before key ids lack ``key_id``: add it (NULL = the one key of then, k0)."""
        inspector = sa.inspect(self.engine)
        for table in (requests, suppression):
            if "key_id" not in {c["name"] for c in inspector.get_columns(table.name)}:
                with self.engine.begin() as conn:
                    conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN key_id VARCHAR(16)")

    # ---- identities -------------------------------------------------------------
    def digest(self, kind: str, value: str) -> str:
        if not self.secret:
            raise RetentionError("this registry view has no key: no digest can be computed")
        return keyed_digest(self.secret, normalise(kind, value) or "")

    def digests(self, kind: str, value: str) -> list[str]:
        """The digests under every active key, current first (what a lookup must try)."""
        if not self.secret:  # the same refusal as ``digest``
            raise RetentionError("this registry view has no key: no digest can be computed")
        return keyed_digests(self.secret, normalise(kind, value) or "")

    def _need_key(self) -> Fernet:
        if self._fernet is None:
            raise RetentionError("this registry view has no key: identities can be neither stored nor read")
        return self._fernet

    def _enc(self, value: Any) -> str | None:
        if value is None:
            return None
        return f"{self.kid}:{self._need_key().encrypt(json.dumps(value).encode()).decode()}"

    def _dec(self, token: str | None) -> Any:
        if token is None:
            return None
        self._need_key()
        kid, sep, body = token.rpartition(":")
        fernet = self._fernets.get(kid) if sep else MultiFernet(list(self._fernets.values()))
        if fernet is None:
            raise RetentionError(f"registry entry is encrypted under key {kid!r}, which is not an active key "
                                 "(put it back in RETENTION_HMAC_KEYS)")
        try:
            return json.loads(fernet.decrypt(body.encode()))
        except InvalidToken:
            raise RetentionError("registry entry cannot be decrypted with the configured key") from None

    def identities(self, request_id: str) -> Identities:
        return self.identities_many([request_id])[request_id]

    def identities_many(self, request_ids: Iterable[str]) -> dict[str, Identities]:
        """Request id -> its identities (decrypted), one SELECT per chunk of 500; an unknown id is refused."""
        ids = list(dict.fromkeys(request_ids))
        tokens: dict[str, str] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(ids):
                tokens.update(conn.execute(sa.select(requests.c.request_id, requests.c.identity_enc)
                                           .where(requests.c.request_id.in_(chunk))).all())
        missing = [rid for rid in ids if rid not in tokens]
        if missing:
            raise RetentionError(f"unknown request {missing[0]}")
        return {rid: Identities(**self._dec(tokens[rid])) for rid in ids}

    # ---- requests -------------------------------------------------------------
    def request_id_for(self, dag_id: str, run_id: str) -> str:
        """Stable id of the request a DAG run carries: re-running the run reuses it."""
        return str(uuid.uuid5(NAMESPACE, f"{dag_id}/{run_id}"))

    def register(self, req: NewRequest, *, request_id: str | None = None, dag_id: str | None = None,
                 run_id: str | None = None, policy_digest: str | None = None,
                 received_at: dt.datetime | None = None) -> str:
        """Store a request (idempotent on ``request_id``); returns its id."""
        validate_request(req)
        self.ensure_schema()
        request_id = request_id or str(uuid.uuid4())
        received = received_at or utcnow()
        digests = {f"{k}_digest": self.digest(k, v) for k, v in req.identities.given().items()
                   if k in DIGEST_COLUMNS}
        row = {
            "request_id": request_id, "mode": req.mode, "dry_run": req.dry_run, "source": req.source,
            "status": "pending", "identity_enc": self._enc(req.identities.normalised()),
            "external_ref_enc": self._enc(req.external_ref), "note_enc": self._enc(req.note),
            "received_at": received, "due_at": received + relativedelta(months=1), "attempts": 0,
            "dag_id": dag_id, "run_id": run_id, "policy_digest": policy_digest, "key_id": self.kid, **digests,
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
            rows.append({
                "request_id": request_id, "mode": req.mode, "dry_run": req.dry_run, "source": source,
                "status": "pending", "identity_enc": self._enc(req.identities.normalised()),
                "external_ref_enc": self._enc(req.external_ref), "note_enc": self._enc(req.note),
                "received_at": now, "due_at": now + relativedelta(months=1), "attempts": 0,
                "dag_id": None, "run_id": None, "policy_digest": None, "key_id": self.kid,
                # every digest column in every row: an executemany takes its columns from the first row
                **{f"{k}_digest": (self.digest(k, req.identities.given()[k]) if k in req.identities.given() else None)
                   for k in DIGEST_COLUMNS},
            })
        with self.engine.begin() as conn:
            for i in range(0, len(rows), 500):
                conn.execute(requests.insert(), rows[i:i + 500])
        return ids

    def claim_pending(self, limit: int, dag_id: str, run_id: str, modes: Iterable[str] = ERASURE_MODES,
                      verified_only: Iterable[str] = (), verified_source: str = INTAKE_VERIFIED) -> list[str]:
        """Take up to ``limit`` pending (or incomplete) requests of ``modes`` for one intake run; those of
        ``verified_only`` modes only if queued as verified (source ``verified_source``).

        A batch is acted on in one mode: it holds only requests of the oldest open request's mode and
        dry-run flag (an erasure never runs as a restriction's batch, a dry run never with real ones);
        the others wait for the next run."""
        self.ensure_schema()
        t = requests
        unchecked = t.c.mode.not_in(tuple(verified_only)) if verified_only else sa.true()
        open_ = (t.c.status.in_(("pending", "incomplete")), t.c.mode.in_(tuple(modes)),
                 t.c.dag_id.is_(None) | (t.c.dag_id == dag_id), unchecked | (t.c.source == verified_source))
        with self.engine.begin() as conn:
            first = conn.execute(sa.select(t.c.mode, t.c.dry_run).where(*open_)
                                 .order_by(t.c.received_at, t.c.request_id).limit(1)).first()
            if first is None:
                return []
            ids = list(conn.execute(
                sa.select(t.c.request_id).where(*open_, t.c.mode == first.mode, t.c.dry_run == first.dry_run)
                .order_by(t.c.received_at, t.c.request_id).limit(limit).with_for_update()
            ).scalars())
            if ids:
                conn.execute(t.update().where(t.c.request_id.in_(ids))
                             .values(status="in_progress", dag_id=dag_id, run_id=run_id, attempts=t.c.attempts + 1))
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
            for chunk in _chunks(list(request_ids)):
                for row in conn.execute(sa.select(*cols).where(requests.c.request_id.in_(chunk))):
                    out[row.request_id] = dict(row._mapping)
        return out

    def start(self, request_id: str, dag_id: str | None = None, run_id: str | None = None) -> None:
        values: dict[str, Any] = {"status": "in_progress", "attempts": requests.c.attempts + 1}
        if dag_id:
            values.update(dag_id=dag_id, run_id=run_id)
        with self.engine.begin() as conn:
            conn.execute(requests.update().where(requests.c.request_id == request_id,
                                                 requests.c.status != "complete").values(**values))

    def set_system(self, request_ids: Iterable[str], system: str, status: str, *, counts: dict | None = None,
                   error: str | None = None) -> None:
        """Upsert the status of one system for several requests (portable: update, then insert missing)."""
        ids = list(request_ids)
        now = utcnow()
        with self.engine.begin() as conn:
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                have = set(conn.execute(sa.select(request_systems.c.request_id).where(
                    request_systems.c.system == system, request_systems.c.request_id.in_(chunk))).scalars())
                values: dict[str, Any] = {"status": status, "error": error, "updated_at": now,
                                          "attempts": request_systems.c.attempts + 1}
                if counts is not None:
                    values["counts"] = json.dumps(counts, sort_keys=True)
                if status == "verified":
                    values["verified_at"] = now
                if have:
                    conn.execute(request_systems.update().where(request_systems.c.system == system,
                                                                request_systems.c.request_id.in_(have)).values(values))
                missing = [r for r in chunk if r not in have]
                if missing:
                    conn.execute(request_systems.insert(), [
                        {"request_id": r, "system": system, "status": status, "error": error, "updated_at": now,
                         "attempts": 1, "counts": values.get("counts"),
                         "verified_at": now if status == "verified" else None} for r in missing])

    def set_system_counts(self, per_request: dict[str, dict], system: str, status: str) -> None:
        """Add counts to what earlier attempts recorded: rows already gone are not found again,
        so the sum over attempts is the true count and a re-run adds nothing. Set-based: per chunk of
        500 requests one SELECT of the stored rows, one DELETE and one multi-row INSERT of the merged ones."""
        now = utcnow()
        t = request_systems
        with self.engine.begin() as conn:
            for chunk in _chunks(list(per_request)):
                where = (t.c.system == system, t.c.request_id.in_(chunk))
                old = {r.request_id: dict(r._mapping) for r in conn.execute(sa.select(t).where(*where))}
                rows = []
                for rid in chunk:
                    row = old.get(rid) or {"request_id": rid, "system": system, "attempts": 1, "error": None}
                    counts = _merge(json.loads(row["counts"]) if row.get("counts") else {}, per_request[rid])
                    rows.append({**row, "counts": json.dumps(counts, sort_keys=True), "status": status,
                                 "updated_at": now, "verified_at": now if status == "verified" else None})
                if old:
                    conn.execute(t.delete().where(*where))
                conn.execute(t.insert(), rows)

    def systems(self, request_id: str) -> dict[str, dict[str, Any]]:
        return self.systems_many([request_id]).get(request_id, {})

    def systems_many(self, request_ids: Iterable[str]) -> dict[str, dict[str, dict[str, Any]]]:
        """Request id -> system -> status, attempts, error, counts, verified_at; one SELECT per chunk of 500."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(list(request_ids)):
                for r in conn.execute(sa.select(request_systems).where(request_systems.c.request_id.in_(chunk))
                                      .order_by(request_systems.c.request_id, request_systems.c.system)):
                    out.setdefault(r.request_id, {})[r.system] = {
                        "status": r.status, "attempts": r.attempts, "error": r.error,
                        "counts": json.loads(r.counts) if r.counts else {}, "verified_at": r.verified_at}
        return out

    def finish(self, request_id: str, status: str, error: str | None = None) -> None:
        self.finish_many([request_id], status, error)

    def finish_many(self, request_ids: Iterable[str], status: str, error: str | None = None) -> None:
        """Close requests with one status (and error): one UPDATE per chunk of 500."""
        with self.engine.begin() as conn:
            for chunk in _chunks(list(request_ids)):
                conn.execute(requests.update().where(requests.c.request_id.in_(chunk)).values(
                    status=status, last_error=error, completed_at=utcnow() if status == "complete" else None))

    # ---- request details (encrypted) --------------------------------------------------
    def details(self, request_id: str) -> dict[str, Any]:
        """What the request's type needs besides identities (decrypted); {} if nothing was stored."""
        return self.details_many([request_id]).get(request_id, {})

    def details_many(self, request_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """``details`` of many requests (those with any), one SELECT per chunk of 500."""
        out: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(list(request_ids)):
                for rid, token in conn.execute(sa.select(request_details.c.request_id, request_details.c.details_enc)
                                               .where(request_details.c.request_id.in_(chunk))):
                    out[rid] = self._dec(token) if token else {}
        return out

    def update_details(self, request_id: str, **values: Any) -> dict[str, Any]:
        """Merge ``values`` into the request's details, stored encrypted only."""
        return self.update_details_many({request_id: values})[request_id]

    def update_details_many(self, values_by_request: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """``update_details`` for many requests: per chunk of 500 one SELECT, one DELETE, one multi-row INSERT."""
        self.ensure_schema()
        ids, out, now = list(values_by_request), {}, utcnow()
        for chunk in _chunks(ids):
            old = self.details_many(chunk)
            out.update({rid: {**old.get(rid, {}), **values_by_request[rid]} for rid in chunk})
            with self.engine.begin() as conn:
                conn.execute(request_details.delete().where(request_details.c.request_id.in_(chunk)))
                conn.execute(request_details.insert(), [{"request_id": rid, "details_enc": self._enc(out[rid]),
                                                         "updated_at": now} for rid in chunk])
        return out

    # ---- receipts and suppression -----------------------------------------------------
    def save_receipt(self, request_id: str, receipt: dict[str, Any]) -> None:
        self.save_receipts({request_id: receipt})

    def save_receipts(self, receipts_by_id: dict[str, dict[str, Any]]) -> None:
        """Store (replace) receipts: per chunk of 500 one DELETE and one multi-row INSERT."""
        now = utcnow()
        with self.engine.begin() as conn:
            for chunk in _chunks(list(receipts_by_id)):
                conn.execute(receipts.delete().where(receipts.c.request_id.in_(chunk)))
                conn.execute(receipts.insert(), [
                    {"request_id": rid, "created_at": now,
                     "receipt": json.dumps(receipts_by_id[rid], sort_keys=True, default=str)} for rid in chunk])

    def receipt(self, request_id: str) -> dict[str, Any] | None:
        return self.receipts_many([request_id]).get(request_id)

    def receipts_many(self, request_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The stored receipts of these requests (those with one), one SELECT per chunk of 500."""
        out: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(list(request_ids)):
                for rid, text in conn.execute(sa.select(receipts.c.request_id, receipts.c.receipt)
                                              .where(receipts.c.request_id.in_(chunk))):
                    out[rid] = json.loads(text)
        return out

    def subject_digest(self, request_id: str) -> str | None:
        """The keyed digest the ledger names a request's subject by (its first identity, by kind order)."""
        return self.subject_digests([request_id])[request_id]

    def subject_digests(self, request_ids: Iterable[str],
                        identities: dict[str, Identities] | None = None) -> dict[str, str | None]:
        """``subject_digest`` of many requests (their identities read in one SELECT unless given)."""
        identities = identities if identities is not None else self.identities_many(request_ids)
        out: dict[str, str | None] = {}
        for rid in request_ids:
            given = identities[rid].normalised()
            kind = next((k for k in IDENTITY_KINDS if k in given), None)
            out[rid] = None if kind is None else self.digest(kind, given[kind])
        return out

    def suppress(self, request_id: str) -> int:
        """Keep the erased identities as keyed digests so they cannot come back."""
        return self.suppress_many([request_id])

    def suppress_many(self, request_ids: Iterable[str], identities: dict[str, Identities] | None = None) -> int:
        """``suppress`` for many requests, set-based: one SELECT of the digests already listed (under any
        active key: an address suppressed before a rotation is not added twice), one multi-row INSERT of the
        new ones; an entry a delete put there (an unsubscribe) is marked as this erasure's too."""
        self.ensure_schema()  # key_id column on registries created before key ids
        ids = list(request_ids)
        identities = identities if identities is not None else self.identities_many(ids)
        candidates: dict[str, tuple[str, str, list[str]]] = {}  # digest -> (kind, request, every key's digest)
        for rid in ids:
            for kind, value in identities[rid].normalised().items():
                digest = self.digest(kind, value)
                candidates.setdefault(digest, (kind, rid, self.digests(kind, value)))  # first request wins
        now, added = utcnow(), 0
        with self.engine.begin() as conn:
            every = [d for _kind, _rid, cands in candidates.values() for d in cands]
            listed: dict[str, str | None] = {}
            for chunk in _chunks(every):
                listed.update(conn.execute(sa.select(suppression.c.digest, suppression.c.request_id)
                                           .where(suppression.c.digest.in_(chunk))).all())
            new = []
            for digest, (kind, rid, cands) in sorted(candidates.items()):
                found = next((c for c in cands if c in listed), None)
                if found is None:
                    new.append({"digest": digest, "kind": kind, "request_id": rid, "added_at": now,
                                "key_id": self.kid})
                elif listed[found] is None:  # already suppressed by a delete: mark it as an erasure too
                    conn.execute(suppression.update().where(suppression.c.digest == found,
                                                            suppression.c.request_id.is_(None))
                                 .values(request_id=rid))
            # an upsert: another erasure of the same person finishing at the same time may have listed a digest
            # since the SELECT above (its row is kept; this one's is not written twice)
            added = self._insert_new_digests(conn, new)
        return added

    @staticmethod
    def _insert_new_digests(conn: sa.Connection, rows: list[dict[str, Any]]) -> int:
        """Insert suppression rows, skipping digests already listed (also by a concurrent transaction): ``INSERT
        ... ON CONFLICT DO NOTHING`` (PostgreSQL), ``INSERT IGNORE`` (MariaDB), ``INSERT OR IGNORE`` (SQLite).
        Returns how many were new."""
        added = 0
        for chunk in _chunks(sorted(rows, key=lambda r: r["digest"])):  # one order: two writers cannot deadlock
            stmt = _insert_ignoring_duplicates(conn.dialect.name).values(chunk)
            added += max(conn.execute(stmt).rowcount, 0)
        return added

    def suppress_values(self, values: list[tuple[str, str]], reason: str) -> int:
        """Suppress (kind, plaintext) pairs by digest, set-based; returns how many were new."""
        every = {self.digest(kind, value): (kind, self.digests(kind, value)) for kind, value in values}
        if not every:
            return 0
        self.ensure_schema()
        now, added = utcnow(), 0
        with self.engine.begin() as conn:
            for kind in {k for k, _ in every.values()}:
                mine = {d: cands for d, (k, cands) in every.items() if k == kind}
                have = self.suppressed(kind, [c for cands in mine.values() for c in cands])
                new = [{"digest": d, "kind": kind, "request_id": None, "added_at": now, "key_id": self.kid}
                       for d, cands in mine.items() if not have.intersection(cands)]
                added += self._insert_new_digests(conn, new)
        return added

    def suppressed(self, kind: str, digests: Iterable[str], *, erasures_only: bool = False) -> set[str]:
        """Which of these digests are on the suppression list (``erasures_only``: put there by an erasure)."""
        digests = list(digests)
        if not digests:
            return set()
        self.ensure_schema()
        out: set[str] = set()
        with self.engine.connect() as conn:
            for i in range(0, len(digests), 500):
                query = sa.select(suppression.c.digest).where(suppression.c.kind == kind,
                                                              suppression.c.digest.in_(digests[i:i + 500]))
                if erasures_only:
                    query = query.where(suppression.c.request_id.is_not(None))
                out |= set(conn.execute(query).scalars())
        return out

    def erased_by(self, kind: str, digests: Iterable[str]) -> dict[str, str]:
        """Of these digests, those an erasure put on the suppression list: digest -> the erasure's request id.
        One SELECT per 500 digests."""
        digests = sorted(set(digests))
        if not digests:
            return {}
        self.ensure_schema()
        out: dict[str, str] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(digests):
                out.update(conn.execute(sa.select(suppression.c.digest, suppression.c.request_id).where(
                    suppression.c.kind == kind, suppression.c.digest.in_(chunk),
                    suppression.c.request_id.is_not(None))).all())
        return out

    def reopen(self, request_ids: Iterable[str], system: str, error: str) -> list[str]:
        """Reopen completed erasures whose data was found again in ``system``: the request becomes
        ``incomplete`` (open, watched by the due-date alerts, taken again by the intake: no run owns it any
        more), the system ``failed`` with ``error``. Requests not complete are left as they are. Returns the
        reopened ids."""
        ids = sorted(set(request_ids))
        reopened: list[str] = []
        with self.engine.begin() as conn:
            for chunk in _chunks(ids):
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
            self.set_system(reopened, system, "failed", error=error)
        return sorted(reopened)

    def is_suppressed(self, kind: str, value: str) -> bool:
        return bool(self.suppressed(kind, self.digests(kind, value)))

    # ---- key rotation (docs/adr/0007-key-rotation.md) ---------------------------------------
    def rotate(self, chunk: int = 500) -> dict[str, Any]:
        """Re-encrypt every request (and its details) and re-digest its digest columns and its suppression entries under
        the current key, ``chunk`` rows per transaction (a crash leaves a consistent mix: run it again).
        Digests of deletes (no request: the address itself is gone) cannot be re-digested; they stay
        under their key, counted in ``kept`` per key id: that key must stay active."""
        self._need_key()
        self.ensure_schema()
        kid = self.kid
        done: dict[str, Any] = {"key_id": kid, "requests": 0, "suppression": 0, "merged": 0}
        while True:  # requests not under the current key (a rotated row leaves the selection)
            with self.engine.begin() as conn:
                rows = conn.execute(sa.select(requests.c.request_id, requests.c.identity_enc,
                                              requests.c.external_ref_enc, requests.c.note_enc)
                                    .where(self._not_current(requests.c.key_id)).order_by(requests.c.request_id)
                                    .limit(chunk)).all()
                for row in rows:
                    given = self._dec(row.identity_enc)
                    conn.execute(requests.update().where(requests.c.request_id == row.request_id).values(
                        identity_enc=self._enc(given), external_ref_enc=self._enc(self._dec(row.external_ref_enc)),
                        note_enc=self._enc(self._dec(row.note_enc)), key_id=kid,
                        **{f"{k}_digest": (self.digest(k, given[k]) if k in given else None) for k in DIGEST_COLUMNS}))
                done["requests"] += len(rows)
            if len(rows) < chunk:
                break
        done["details"] = 0
        last = ""
        while True:  # request details: encrypted only, no digests
            with self.engine.begin() as conn:
                rows = conn.execute(sa.select(request_details.c.request_id, request_details.c.details_enc)
                                    .where(request_details.c.request_id > last).order_by(request_details.c.request_id)
                                    .limit(chunk)).all()
                for row in rows:
                    if not row.details_enc.startswith(f"{kid}:"):
                        conn.execute(request_details.update().where(request_details.c.request_id == row.request_id)
                                     .values(details_enc=self._enc(self._dec(row.details_enc))))
                        done["details"] += 1
            if len(rows) < chunk:
                break
            last = rows[-1].request_id
        last = ""
        while True:  # suppression entries of erasures: their request holds the identity to re-digest
            with self.engine.begin() as conn:
                rows = conn.execute(sa.select(suppression.c.digest, suppression.c.kind, suppression.c.request_id)
                                    .where(suppression.c.request_id.is_not(None), suppression.c.digest > last,
                                           self._not_current(suppression.c.key_id))
                                    .order_by(suppression.c.digest).limit(chunk)).all()
                for entry in rows:
                    given = self.identities(entry.request_id).normalised() if self._known(conn, entry) else {}
                    if entry.kind not in given:
                        continue
                    new = self.digest(entry.kind, given[entry.kind])
                    if conn.execute(sa.select(suppression.c.digest).where(suppression.c.digest == new)).first():
                        # already there under the current key (a delete since the key was added): keep that one
                        conn.execute(suppression.update().where(suppression.c.digest == new,
                                                                suppression.c.request_id.is_(None))
                                     .values(request_id=entry.request_id))
                        conn.execute(suppression.delete().where(suppression.c.digest == entry.digest))
                        done["merged"] += 1
                    else:
                        conn.execute(suppression.update().where(suppression.c.digest == entry.digest)
                                     .values(digest=new, key_id=kid))
                    done["suppression"] += 1
            if len(rows) < chunk:
                break
            last = rows[-1].digest
        key_col = sa.func.coalesce(suppression.c.key_id, sa.literal("k0"))
        with self.engine.connect() as conn:
            kept = conn.execute(sa.select(key_col, sa.func.count()).where(self._not_current(suppression.c.key_id))
                                .group_by(key_col)).all()
        done["kept"] = {k: int(n) for k, n in kept}
        return done

    def _not_current(self, column: sa.ColumnElement) -> sa.ColumnElement:
        return sa.or_(column.is_(None), column != self.kid)

    @staticmethod
    def _known(conn: sa.Connection, entry: Any) -> bool:
        return conn.execute(sa.select(requests.c.request_id).where(requests.c.request_id == entry.request_id)
                            ).first() is not None

    def open_requests(self) -> list[dict[str, Any]]:
        self.ensure_schema()
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(requests.c.request_id, requests.c.mode, requests.c.status,
                                          requests.c.received_at, requests.c.due_at, requests.c.dry_run,
                                          requests.c.source, requests.c.dag_id, requests.c.run_id)
                                .where(requests.c.status.in_(OPEN_STATUSES)).order_by(requests.c.due_at)).all()
        return [dict(r._mapping) for r in rows]

    # ---- what pages and reports show: statuses, dates, counts; never identities ---------------
    _LISTED = ("request_id", "mode", "status", "dry_run", "source", "received_at", "due_at", "completed_at",
               "attempts", "dag_id", "run_id")

    def listing(self, *, open_only: bool, limit: int | None = None) -> list[dict[str, Any]]:
        """Requests with their status per system: open ones by due date, or the latest closed ones first."""
        self.ensure_schema()
        t, s = requests, request_systems
        query = sa.select(*(t.c[c] for c in self._LISTED))
        if open_only:
            query = query.where(t.c.status.in_(OPEN_STATUSES)).order_by(t.c.due_at, t.c.request_id)
        else:
            query = query.where(t.c.status.not_in(OPEN_STATUSES)).order_by(
                t.c.completed_at.desc(), t.c.received_at.desc(), t.c.request_id)
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
            systems: dict[str, dict[str, str]] = {}
            ids = [r["request_id"] for r in rows]
            for i in range(0, len(ids), 500):
                for r in conn.execute(sa.select(s.c.request_id, s.c.system, s.c.status)
                                      .where(s.c.request_id.in_(ids[i:i + 500])).order_by(s.c.system)):
                    systems.setdefault(r.request_id, {})[r.system] = r.status
        for r in rows:
            r["systems"] = systems.get(r["request_id"], {})
        return rows

    # ---- recipients told of a request (Art. 19) and the due-date extension (Art. 12(3)) ----------------
    def plan_recipients(self, request_id: str, planned: dict[str, dict[str, Any]]) -> None:
        """Record the recipients a request concerns (name -> channel, action, systems, categories); a recipient
        already recorded keeps its status (a retry or a re-run does not tell it twice)."""
        self.plan_recipients_many({request_id: planned})

    def plan_recipients_many(self, planned_by_request: dict[str, dict[str, dict[str, Any]]]) -> None:
        """``plan_recipients`` for many requests: per chunk of 500 one SELECT and one multi-row INSERT."""
        self.ensure_schema()
        now, t = utcnow(), request_recipients
        with self.engine.begin() as conn:
            for chunk in _chunks(list(planned_by_request)):
                have = {(r.request_id, r.recipient) for r in conn.execute(
                    sa.select(t.c.request_id, t.c.recipient).where(t.c.request_id.in_(chunk)))}
                rows = [{"request_id": rid, "recipient": name, "channel": info["channel"], "status": "pending",
                         "action": info["action"], "systems": json.dumps(sorted(info["systems"])),
                         "categories": json.dumps(sorted(info["categories"])), "attempts": 0, "updated_at": now}
                        for rid in chunk for name, info in sorted(planned_by_request[rid].items())
                        if (rid, name) not in have]
                if rows:
                    conn.execute(t.insert(), rows)

    def recipients(self, request_id: str) -> dict[str, dict[str, Any]]:
        """The request's recipients: name -> channel, status, action, systems, categories, attempts, response."""
        return self.recipients_many([request_id]).get(request_id, {})

    def recipients_many(self, request_ids: Iterable[str]) -> dict[str, dict[str, dict[str, Any]]]:
        """``recipients`` of many requests: request id -> name -> ...; one SELECT per chunk of 500."""
        self.ensure_schema()
        t = request_recipients
        out: dict[str, dict[str, dict[str, Any]]] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(list(request_ids)):
                for r in conn.execute(sa.select(t).where(t.c.request_id.in_(chunk))
                                      .order_by(t.c.request_id, t.c.recipient)):
                    out.setdefault(r.request_id, {})[r.recipient] = {
                        "channel": r.channel, "status": r.status, "action": r.action,
                        "systems": json.loads(r.systems), "categories": json.loads(r.categories),
                        "attempts": r.attempts, "response": r.response, "note": r.note, "settled_at": r.settled_at}
        return out

    def set_recipient(self, request_ids: Iterable[str], recipient: str, status: str, *, response: str | None = None,
                      note: str | None = None, attempt: bool = False) -> None:
        """Move a recipient's status (``attempt``: count one try of its channel); ``response``: a status code."""
        now = utcnow()
        values: dict[str, Any] = {"status": status, "updated_at": now,
                                  "settled_at": now if status in RECIPIENT_SETTLED else None}
        if response is not None:
            values["response"] = response[:200]
        if note is not None:
            values["note"] = note[:500]
        if attempt:
            values["attempts"] = request_recipients.c.attempts + 1
        with self.engine.begin() as conn:
            t = request_recipients
            conn.execute(t.update().where(t.c.request_id.in_(list(request_ids)), t.c.recipient == recipient)
                         .values(**values))

    def waive_recipient(self, request_id: str, recipient: str, reason: str) -> None:
        """Close a recipient without telling it (e.g. it no longer holds the data): the reason is kept."""
        if recipient not in self.recipients(request_id):
            raise RetentionError(f"request {request_id} has no recipient {recipient!r}")
        self.set_recipient([request_id], recipient, "waived", note=reason)

    def recipients_settled(self, request_id: str) -> bool:
        return all(r["status"] in RECIPIENT_SETTLED for r in self.recipients(request_id).values())

    def unconfirmed_recipients(self, with_notes: bool = False) -> dict[str, list[str]]:
        """Open requests -> their recipients not yet confirmed or waived (for pages and alerts; names only, with
        ``with_notes`` followed by why, e.g. "hosting (not sent: no connection 'smtp_default' configured)")."""
        self.ensure_schema()
        t, r = requests, request_recipients
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(r.c.request_id, r.c.recipient, r.c.note)
                                .join(t, t.c.request_id == r.c.request_id)
                                .where(t.c.status.in_(OPEN_STATUSES), r.c.status.not_in(RECIPIENT_SETTLED))
                                .order_by(r.c.request_id, r.c.recipient)).all()
        out: dict[str, list[str]] = {}
        for row in rows:
            name = f"{row.recipient} ({row.note})" if with_notes and row.note else row.recipient
            out.setdefault(row.request_id, []).append(name)
        return out

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
            raise RetentionError(f"request {request_id} was already extended: the due date can be extended "
                                 "only once (GDPR Art. 12(3))")
        old = req["due_at"]
        new = old + relativedelta(months=months)
        with self.engine.begin() as conn:
            conn.execute(requests.update().where(requests.c.request_id == request_id).values(due_at=new))
        self.update_details(request_id, extension={"months": months, "reason": reason, "at": utcnow().isoformat(),
                                                   "old_due_at": old.isoformat(), "new_due_at": new.isoformat()})
        return {"request_id": request_id, "months": months, "old_due_at": old, "new_due_at": new}


def _chunks(items: list[Any], size: int = 500) -> Iterable[list[Any]]:
    """Bounded IN lists and multi-row INSERTs: ``size`` items at a time."""
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _merge(old: Any, new: Any) -> Any:
    """Sum nested count dictionaries."""
    if isinstance(old, dict) and isinstance(new, dict):
        return {k: _merge(old.get(k), new.get(k)) for k in old.keys() | new.keys()}
    if old is None:
        return new
    if new is None:
        return old
    return old + new if isinstance(old, int) and isinstance(new, int) else new


def _insert_ignoring_duplicates(dialect: str) -> Any:
    """An INSERT into the suppression list that skips a digest already there instead of failing on its key."""
    if dialect == "postgresql":
        return pg_insert(suppression).on_conflict_do_nothing(index_elements=["digest"])
    if dialect == "sqlite":
        return suppression.insert().prefix_with("OR IGNORE")
    if dialect in ("mysql", "mariadb"):
        return suppression.insert().prefix_with("IGNORE")
    raise RetentionError(f"suppression list: no duplicate-skipping insert for database {dialect!r}")
