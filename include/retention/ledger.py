"""The audit ledger: append-only, hash-chained entries that prove what was done.

Each entry holds time, DAG run, rule, policy digest, action, counts and digests;
subjects and primary keys appear only as keyed HMAC digests. ``entry_hash`` is the
SHA-256 of the entry's canonical JSON including the previous entry's hash, so an
edited, inserted or removed entry breaks the chain at a point ``verify`` reports.
A one-row head table (locked with SELECT ... FOR UPDATE) serialises writers and
lets ``verify`` detect a truncated tail.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from include.retention.masking import keyed_digest

GENESIS = "0" * 64
metadata = sa.MetaData()

entries = sa.Table(
    "ledger_entries",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=False),
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
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("entry_hash", sa.String(64), nullable=False),
    sa.Index("ix_ledger_rule", "rule_id", "recorded_at"),
    sa.Index("ix_ledger_request", "request_id"),
)

head = sa.Table(
    "ledger_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), nullable=False),
    sa.Column("entry_hash", sa.String(64), nullable=False),
)

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
    "seq", "recorded_at", "dag_id", "run_id", "rule_id", "request_id", "policy_digest", "system",
    "collection", "action", "outcome", "count", "subject_digest", "pk_digest", "details", "prev_hash",
)


def entry_hash(row: dict[str, Any]) -> str:
    canonical = json.dumps({k: row.get(k) for k in HASHED_FIELDS}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class RunRef:
    """Which run wrote an entry: an Airflow DAG run, or a command."""

    dag_id: str = "manual"
    run_id: str = "manual"


@dataclass
class VerifyResult:
    ok: bool
    entries: int
    first_broken_seq: int | None = None
    problem: str | None = None

    def __str__(self) -> str:
        if self.ok:
            return f"ledger OK: {self.entries} entries, chain intact"
        return f"ledger BROKEN at entry {self.first_broken_seq}: {self.problem} ({self.entries} entries checked)"


@dataclass
class Ledger:
    engine: sa.Engine
    key: bytes
    _ready: bool = field(default=False, repr=False)

    def ensure_schema(self) -> None:
        if self._ready:
            return
        metadata.create_all(self.engine, checkfirst=True)
        with self.engine.begin() as conn:
            if conn.execute(sa.select(head.c.id)).first() is None:
                try:
                    conn.execute(head.insert().values(id=1, seq=0, entry_hash=GENESIS))
                except sa.exc.IntegrityError:  # a concurrent writer created it first
                    pass
        self._ready = True

    def digest(self, value: str) -> str:
        return keyed_digest(self.key, value)

    def pk_digest(self, pks: Iterable[Any]) -> str:
        """Keyed digest of a batch of primary keys: proves which rows without naming them."""
        return keyed_digest(self.key, "\n".join(str(pk) for pk in pks))

    def append(
        self,
        *,
        run: RunRef,
        action: str,
        outcome: str,
        count: int = 0,
        rule_id: str | None = None,
        request_id: str | None = None,
        policy_digest: str | None = None,
        system: str | None = None,
        collection: str | None = None,
        subject_digest: str | None = None,
        pk_digest: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> int:
        """Append one entry, chained to the current head; returns its sequence number."""
        self.ensure_schema()
        with self.engine.begin() as conn:
            current = conn.execute(
                sa.select(head.c.seq, head.c.entry_hash).where(head.c.id == 1).with_for_update()
            ).one()
            row = {
                "seq": int(current.seq) + 1,
                "recorded_at": _now(),
                "dag_id": run.dag_id,
                "run_id": run.run_id,
                "rule_id": rule_id,
                "request_id": request_id,
                "policy_digest": policy_digest,
                "system": system,
                "collection": collection,
                "action": action,
                "outcome": outcome,
                "count": int(count),
                "subject_digest": subject_digest,
                "pk_digest": pk_digest,
                "details": json.dumps(details, sort_keys=True) if details else None,
                "prev_hash": current.entry_hash,
            }
            row["entry_hash"] = entry_hash(row)
            conn.execute(entries.insert().values(**row))
            conn.execute(head.update().where(head.c.id == 1).values(seq=row["seq"], entry_hash=row["entry_hash"]))
            return row["seq"]

    def rows(self, chunk: int = 5000, **where: Any) -> Iterator[dict[str, Any]]:
        """Entries in sequence order, read in bounded chunks."""
        self.ensure_schema()
        last = 0
        while True:
            query = sa.select(entries).where(entries.c.seq > last).order_by(entries.c.seq).limit(chunk)
            for name, value in where.items():
                query = query.where(entries.c[name] == value)
            with self.engine.connect() as conn:
                batch = [dict(r._mapping) for r in conn.execute(query)]
            if not batch:
                return
            yield from batch
            last = batch[-1]["seq"]

    def has_entry(self, **where: Any) -> bool:
        """Whether an entry with these field values exists (the ledger as the idempotency check)."""
        self.ensure_schema()
        query = sa.select(entries.c.seq).limit(1)
        for name, value in where.items():
            query = query.where(entries.c[name] == value)
        with self.engine.connect() as conn:
            return conn.execute(query).first() is not None

    def verify(self, record: bool = True) -> VerifyResult:
        """Walk the chain; report the first entry that is missing, edited or out of place."""
        self.ensure_schema()
        expected_seq, prev, count, result = 1, GENESIS, 0, None
        for row in self.rows():
            count += 1
            if row["seq"] != expected_seq:
                result = VerifyResult(False, count, expected_seq, f"entry {expected_seq} is missing")
                break
            if row["prev_hash"] != prev:
                result = VerifyResult(False, count, row["seq"], "does not link to the entry before it")
                break
            if entry_hash(row) != row["entry_hash"]:
                result = VerifyResult(False, count, row["seq"], "content does not match its hash (edited)")
                break
            prev, expected_seq = row["entry_hash"], expected_seq + 1
        if result is None:
            with self.engine.connect() as conn:
                current = conn.execute(sa.select(head.c.seq, head.c.entry_hash)).one()
            if int(current.seq) != expected_seq - 1 or current.entry_hash != prev:
                result = VerifyResult(False, count, expected_seq, "entries after this point were removed")
            else:
                result = VerifyResult(True, count)
        if record:
            with self.engine.begin() as conn:
                conn.execute(verifications.insert().values(
                    verified_at=_now(), ok=result.ok, entries=result.entries, problem=result.problem))
        return result
