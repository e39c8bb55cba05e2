"""The audit ledger: append-only, keyed hash-chained entries that prove what was done.

Each entry holds time, DAG run, rule, policy digest, action, counts and digests;
subjects and primary keys appear only as keyed HMAC digests. ``entry_hash`` is the
HMAC-SHA256 (under a key derived from ``Ledger.key``) of the entry's canonical JSON
including the previous entry's hash, so someone with write access to the database but
without the key cannot edit, insert, remove, reorder or renumber entries and rehash the
rest: ``verify`` reports the first entry that does not match. A one-row head table
(locked with SELECT ... FOR UPDATE; ``BEGIN IMMEDIATE`` on SQLite) serialises writers.
The head is also anchored outside the database (``anchor``: a file, or an S3 object
under Object Lock), so a truncated tail with a moved head is found as well.

A change to a store is written as an *intent* before it commits and *settled* with the
real count after; an intent without outcome (a crash in between) is reported by
``verify`` and settled later by ``reconcile``. See docs/adr/0006-keyed-anchored-ledger.md.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypedDict, Unpack

import sqlalchemy as sa

from include.retention.clock import utcnow_iso
from include.retention.errors import LedgerBroken, RetentionError
from include.retention.masking import keyed_digest, keys_of

log = logging.getLogger(__name__)

GENESIS = "0" * 64
CHAIN_FORMAT = "hmac-sha256/2"
INTENT = "intent"
RECONCILED = "reconciled"
ANCHOR_FORMAT = "retention-ledger-anchor/1"
_CHAIN_KEY_LABEL = b"retention-ledger-chain/2"
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
    "seq", "recorded_at", "dag_id", "run_id", "rule_id", "request_id", "policy_digest", "system",
    "collection", "action", "outcome", "count", "subject_digest", "pk_digest", "details", "ref_seq", "prev_hash",
)

CHART_ACTIONS = ("lock", "anonymize", "delete", "erase", "restrict")
CHART_OUTCOMES = ("done", "verified", RECONCILED)


def chain_key(key: bytes) -> bytes:
    """The chain's own key, derived from the product secret (so a chain hash is never a subject digest)."""
    if not key:
        raise RetentionError("the audit ledger needs the HMAC key (RETENTION_HMAC_KEY or connection "
                             "'retention_keys') to write or verify its chain")
    return hmac.new(key, _CHAIN_KEY_LABEL, hashlib.sha256).digest()


_CANONICAL_KEYS = tuple(sorted((*HASHED_FIELDS, "format")))
_ENCODER = json.JSONEncoder(separators=(",", ":"))  # keys are inserted sorted: same bytes as sort_keys=True


def canonical(row: dict[str, Any]) -> bytes:
    """The bytes an entry's hash covers: every hashed field plus the chain format, as sorted JSON."""
    content = {k: CHAIN_FORMAT if k == "format" else row.get(k) for k in _CANONICAL_KEYS}
    return _ENCODER.encode(content).encode()


def _mac(ckey: bytes, row: dict[str, Any]) -> str:
    return hmac.digest(ckey, canonical(row), "sha256").hex()


def entry_hash(row: dict[str, Any], key: bytes) -> str:
    """HMAC-SHA256 of the entry under the chain key derived from ``key``."""
    return _mac(chain_key(key), row)


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


# ---- anchors -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Anchor:
    """The ledger head at one moment, kept where the ledger database's users cannot rewrite it."""

    seq: int
    entry_hash: str
    anchored_at: str
    where: str = ""

    def to_json(self) -> bytes:
        return json.dumps({"format": ANCHOR_FORMAT, "seq": self.seq, "entry_hash": self.entry_hash,
                           "anchored_at": self.anchored_at}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Anchor:
        try:
            doc = json.loads(data)
            if doc.get("format") != ANCHOR_FORMAT:
                raise ValueError("unknown format")
            return cls(int(doc["seq"]), str(doc["entry_hash"]), str(doc["anchored_at"]), where)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise LedgerBroken(f"anchor {where} is not a ledger anchor (unreadable or unknown format)") from None

    def name(self) -> str:
        """Sortable, unique per head: seq first, then part of the hash."""
        return f"{self.seq:015d}-{self.entry_hash[:16]}.json"


class AnchorSink(Protocol):
    def put(self, anchor: Anchor) -> str: ...

    def anchors(self) -> Iterator[Anchor]: ...


class DirectorySink:
    """One JSON file per anchor in a directory (the embedded demo: ``.demo/anchors/``)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def put(self, anchor: Anchor) -> str:
        self.path.mkdir(parents=True, exist_ok=True)
        target = self.path / anchor.name()
        tmp = self.path / f".{anchor.name()}.{os.getpid()}.tmp"
        tmp.write_bytes(anchor.to_json())
        os.replace(tmp, target)  # atomic: a reader sees the whole anchor or none
        return str(target)

    def anchors(self) -> Iterator[Anchor]:
        if not self.path.is_dir():
            return
        for file in sorted(self.path.glob("*.json")):
            yield Anchor.from_json(file.read_bytes(), str(file))

    def __repr__(self) -> str:
        return f"DirectorySink({str(self.path)!r})"


class S3Sink:
    """One object per anchor; in an Object Lock bucket written in COMPLIANCE mode (nobody can delete it)."""

    def __init__(self, client: Any, bucket: str, prefix: str = "ledger-anchors/", retain_days: int = 3653):
        self.client, self.bucket, self.prefix, self.retain_days = client, bucket, prefix, retain_days
        self._locked: bool | None = None

    def object_lock(self) -> bool:
        """Whether the bucket has Object Lock enabled (asked once)."""
        if self._locked is None:
            try:
                conf = self.client.get_object_lock_configuration(Bucket=self.bucket)
                self._locked = conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
            except self.client.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ObjectLockConfigurationNotFoundError":
                    raise
                self._locked = False
        return self._locked

    def put(self, anchor: Anchor) -> str:
        key = self.prefix + anchor.name()
        body = anchor.to_json()
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Body": body,
                                  "ContentType": "application/json",
                                  "ContentMD5": _content_md5(body)}
        if self.object_lock():
            kwargs["ObjectLockMode"] = "COMPLIANCE"
            kwargs["ObjectLockRetainUntilDate"] = dt.datetime.now(dt.UTC) + dt.timedelta(days=self.retain_days)
        self.client.put_object(**kwargs)
        return f"s3://{self.bucket}/{key}"

    def anchors(self) -> Iterator[Anchor]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith(".json"):
                    continue
                body = self.client.get_object(Bucket=self.bucket, Key=obj["Key"])["Body"].read()
                yield Anchor.from_json(body, f"s3://{self.bucket}/{obj['Key']}")

    def __repr__(self) -> str:
        return f"S3Sink('s3://{self.bucket}/{self.prefix}')"


def _content_md5(body: bytes) -> str:
    import base64

    return base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()


def anchor_sink(target: str | os.PathLike[str], s3_client: Any = None) -> AnchorSink:
    """A sink from ``s3://bucket/prefix`` (boto3's default client unless one is given) or a directory path."""
    text = str(target)
    if text.startswith("s3://"):
        bucket, _, prefix = text[len("s3://"):].partition("/")
        if not bucket:
            raise RetentionError(f"anchor location {text!r} names no bucket")
        if s3_client is None:
            import boto3

            s3_client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or None)
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return S3Sink(s3_client, bucket, prefix or "ledger-anchors/")
    return DirectorySink(text)


def _collect_anchors(anchors: Any) -> list[Anchor]:
    if anchors is None:
        return []
    if isinstance(anchors, (str, os.PathLike)):
        anchors = [anchor_sink(anchors)]
    elif hasattr(anchors, "anchors"):
        anchors = [anchors]
    out: list[Anchor] = []
    for item in anchors:
        if isinstance(item, Anchor):
            out.append(item)
        elif isinstance(item, (str, os.PathLike)):
            out.extend(anchor_sink(item).anchors())
        else:
            out.extend(item.anchors())
    return sorted(out, key=lambda a: (a.seq, a.where))


# ---- verification result --------------------------------------------------------------------


@dataclass
class VerifyResult:
    ok: bool
    entries: int
    first_broken_seq: int | None = None
    problem: str | None = None
    unreconciled: list[int] = field(default_factory=list)  # seqs of intents without outcome (first 1,000)
    unreconciled_count: int = 0
    anchors_checked: int = 0
    head_seq: int | None = None
    verified_at: str = field(default_factory=utcnow_iso)

    def __str__(self) -> str:
        if self.ok:
            text = f"ledger OK: {self.entries} entries, chain intact"
            if self.anchors_checked:
                text += f", {self.anchors_checked} anchor(s) match"
        else:
            text = (f"ledger BROKEN at entry {self.first_broken_seq}: {self.problem} "
                    f"({self.entries} entries checked)")
        if self.unreconciled_count:
            shown = ", ".join(str(s) for s in self.unreconciled[:10])
            more = ", ..." if self.unreconciled_count > 10 else ""
            text += f"; {self.unreconciled_count} unreconciled intent(s): seq {shown}{more}"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "entries": self.entries, "first_broken_seq": self.first_broken_seq,
                "problem": self.problem, "unreconciled": self.unreconciled[:100],
                "unreconciled_count": self.unreconciled_count, "anchors_checked": self.anchors_checked,
                "head_seq": self.head_seq, "verified_at": self.verified_at}


# ---- schema creation under concurrency ------------------------------------------------------

_RACE_MARKERS = ("already exists", "duplicate", "database is locked", "pg_type_typname_nsp_index", "1050", "1061")


def _is_create_race(exc: Exception) -> bool:
    """A concurrent first run created (or is creating) the same table / index: retry with checkfirst."""
    text = str(getattr(exc, "orig", exc)).lower()
    return any(marker in text for marker in _RACE_MARKERS)


@dataclass
class Ledger:
    engine: sa.Engine
    key: bytes
    _ready: bool = field(default=False, repr=False)

    # ---- schema -----------------------------------------------------------------------------
    def ensure_schema(self) -> None:
        """Create tables and the head row once; safe when several first runs do it at the same time."""
        if self._ready:
            return
        if self.engine.dialect.name == "sqlite":
            self._ensure_sqlite_schema()
            self._ready = True
            return
        attempts = 8
        for attempt in range(attempts):
            try:
                metadata.create_all(self.engine, checkfirst=True)
                self._add_missing_columns()
                break
            except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError) as exc:
                if attempt == attempts - 1 or not _is_create_race(exc):
                    raise
                log.info("ledger schema created concurrently (attempt %d); checking again", attempt + 1)
                time.sleep(0.05 * (attempt + 1))
        try:
            with self.engine.begin() as conn:
                if conn.execute(sa.select(head.c.id)).first() is None:
                    conn.execute(head.insert().values(id=1, seq=0, entry_hash=GENESIS))
        except sa.exc.IntegrityError:  # a concurrent first run inserted it first
            pass
        except sa.exc.OperationalError as exc:
            if not _is_create_race(exc):
                raise
            with self.engine.connect() as conn:  # SQLite: the other writer held the lock; it made the row
                if conn.execute(sa.select(head.c.id)).first() is None:
                    raise
        self._ready = True

    def _ensure_sqlite_schema(self) -> None:
        """SQLite: tables, indexes, the missing ``ref_seq`` and the head row in ONE write transaction (``BEGIN
        IMMEDIATE``): one durable commit instead of one per statement (pysqlite runs DDL outside a transaction
        of its own, each ``CREATE`` a commit), and a concurrent first run waits for it and then finds it all. A
        ledger that has it all already is only read (no write lock: readers of a read-only file keep working)."""
        with self.engine.connect() as conn:
            inspector = sa.inspect(conn)
            if (all(inspector.has_table(t.name) for t in metadata.sorted_tables)
                    and "ref_seq" in {c["name"] for c in inspector.get_columns("ledger_entries")}
                    and conn.execute(sa.select(head.c.id)).first() is not None):
                return
        with self._writing() as conn:
            metadata.create_all(conn, checkfirst=True)
            self._add_missing_columns(conn)
            if conn.execute(sa.select(head.c.id)).first() is None:
                conn.execute(head.insert().values(id=1, seq=0, entry_hash=GENESIS))

    def _add_missing_columns(self, conn: sa.Connection | None = None) -> None:
        """Ledgers created before intents existed lack ``ref_seq``: add it (and its index); inside ``conn``'s
        transaction when given."""
        columns = {c["name"] for c in sa.inspect(conn if conn is not None else self.engine)
                   .get_columns("ledger_entries")}
        if "ref_seq" in columns:
            return
        type_ = "INTEGER" if self.engine.dialect.name == "sqlite" else "BIGINT"
        index = next(i for i in entries.indexes if i.name == "ix_ledger_ref")
        if conn is not None:
            conn.exec_driver_sql(f"ALTER TABLE ledger_entries ADD COLUMN ref_seq {type_}")
            index.create(conn, checkfirst=True)
            return
        with self.engine.begin() as conn:
            conn.exec_driver_sql(f"ALTER TABLE ledger_entries ADD COLUMN ref_seq {type_}")
        index.create(self.engine, checkfirst=True)

    @contextmanager
    def _writing(self) -> Iterator[sa.Connection]:
        """A write transaction that holds the head: FOR UPDATE on servers, BEGIN IMMEDIATE on SQLite."""
        with self.engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                # pysqlite begins lazily (DEFERRED): two writers both read the head, then one fails to
                # upgrade its lock. IMMEDIATE takes the write lock first; others wait (busy timeout).
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.commit()
            except BaseException:
                conn.rollback()
                raise

    # ---- digests ------------------------------------------------------------------------------
    def digest(self, value: str) -> str:
        return keyed_digest(self.key, value)

    def pk_digest(self, pks: Iterable[Any]) -> str:
        """Keyed digest of a batch of primary keys: proves which rows without naming them."""
        return keyed_digest(self.key, "\n".join(str(pk) for pk in pks))

    # ---- writing ------------------------------------------------------------------------------
    def append(self, *, run: RunRef, action: str, outcome: str, **fields: Unpack[EntryFields]) -> int:
        """Append one entry, chained to the current head; returns its sequence number."""
        if unknown := fields.keys() - EntryFields.__optional_keys__:
            raise TypeError(f"append() got unexpected keyword arguments: {sorted(unknown)}")
        return self.append_many([dict(run=run, action=action, outcome=outcome, **fields)])[0]

    def append_many(self, items: list[dict[str, Any]]) -> list[int]:
        """Append entries (each: ``append``'s keyword arguments) in one write transaction, chained in order:
        one head read, one multi-row INSERT per 1,000 entries and one head update, whatever their number."""
        rows = [_entry_fields(item) for item in items]
        if not rows:
            return []
        self.ensure_schema()
        with self._writing() as conn:
            return self._chain_many(conn, rows)

    def _chain(self, conn: sa.Connection, fields: dict[str, Any]) -> int:
        """Write one entry after the head, inside the caller's write transaction."""
        return self._chain_many(conn, [fields])[0]

    def _chain_many(self, conn: sa.Connection, many: list[dict[str, Any]]) -> list[int]:
        """Write entries after the head, in order, inside the caller's write transaction."""
        current = conn.execute(
            sa.select(head.c.seq, head.c.entry_hash).where(head.c.id == 1).with_for_update()
        ).one()
        seq, prev, ckey, now = int(current.seq), current.entry_hash, chain_key(self.key), utcnow_iso()
        rows = []
        for fields in many:
            row = {k: None for k in HASHED_FIELDS}
            row.update(fields)
            seq += 1
            row.update(seq=seq, recorded_at=now, prev_hash=prev)
            row["entry_hash"] = prev = _mac(ckey, row)
            rows.append(row)
        for i in range(0, len(rows), 1000):
            conn.execute(entries.insert(), rows[i:i + 1000])
        conn.execute(head.update().where(head.c.id == 1).values(seq=seq, entry_hash=prev))
        return [r["seq"] for r in rows]

    def intend(self, *, action: str, run: RunRef | None = None, **fields: Unpack[EntryFields]) -> int:
        """Say what may happen before the store change commits (``count``: planned); returns the intent's seq.

        A crash between this and ``settle`` leaves an intent that ``verify`` reports and ``reconcile``
        settles later: the ledger never lacks an entry for a change that committed.
        """
        return self.append(run=run or RunRef(), action=action, outcome=INTENT, **fields)

    def settle(self, intent_seq: int, *, count: int, outcome: str = "done",
               details: dict[str, Any] | None = None, then_intend: dict[str, Any] | None = None) -> int:
        """Record the outcome of intent ``intent_seq`` with the REAL count; returns the outcome's seq.

        Idempotent for a retried call (same count): the existing outcome's seq is returned.

        ``then_intend`` (``intend``'s keyword arguments): the next intent, written right after the outcome in the
        same transaction, and its seq is returned instead. A sweep settles a committed batch together with the
        intent of the next one (written, as every intent, before that batch commits): one durable ledger write
        per batch instead of two, and the outcome is still written only after its batch committed.
        """
        if outcome == INTENT:
            raise RetentionError("an outcome cannot be another intent")
        following = None
        if then_intend is not None:
            if unknown := then_intend.keys() - EntryFields.__optional_keys__ - {"action", "run"}:
                raise TypeError(f"then_intend got unexpected keys: {sorted(unknown)}")
            following = _entry_fields({"run": RunRef(), **then_intend, "outcome": INTENT})
        return self._settle(intent_seq, count=count, outcome=outcome, details=details, following=following)

    def reconcile(self, intent_seq: int, count: int, note: str, details: dict[str, Any] | None = None) -> int:
        """Settle an intent left open by a crash, with the count found afterwards (``note``: how it was found;
        ``details``: more of it, e.g. what the batch took along). See ``include.retention.intents``."""
        return self._settle(intent_seq, count=count, outcome=RECONCILED, details={**(details or {}), "note": note})

    def _settle(self, intent_seq: int, *, count: int, outcome: str, details: dict[str, Any] | None,
                following: dict[str, Any] | None = None) -> int:
        self.ensure_schema()
        with self._writing() as conn:
            # head first: it serialises writers, so the "already settled" check below cannot race
            conn.execute(sa.select(head.c.seq).where(head.c.id == 1).with_for_update()).one()
            intent = conn.execute(sa.select(entries).where(entries.c.seq == intent_seq)).first()
            if intent is None or intent.outcome != INTENT:
                raise RetentionError(f"ledger entry {intent_seq} is not an intent")
            done = conn.execute(sa.select(entries.c.seq, entries.c.count, entries.c.outcome)
                                .where(entries.c.ref_seq == intent_seq)).first()
            if done is not None:
                if done.count == int(count) and done.outcome == outcome:
                    return self._chain(conn, following) if following is not None else int(done.seq)
                raise RetentionError(f"intent {intent_seq} was already settled by entry {done.seq} "
                                     f"({done.outcome}, count {done.count})")
            fields = {k: getattr(intent, k) for k in ("dag_id", "run_id", "rule_id", "request_id", "policy_digest",
                                                      "system", "collection", "action", "subject_digest",
                                                      "pk_digest")}
            merged = {"planned": int(intent.count), **(details or {})}
            fields.update(outcome=outcome, count=int(count), ref_seq=int(intent_seq), details=_details_text(merged))
            return self._chain_many(conn, [fields, *([following] if following is not None else [])])[-1]

    def open_intents(self, **where: Any) -> list[dict[str, Any]]:
        """Intents without an outcome entry (oldest first), e.g. for the next run to reconcile."""
        self.ensure_schema()
        outcome = entries.alias("outcome")
        query = (sa.select(entries).where(entries.c.outcome == INTENT)
                 .where(~sa.exists().where(outcome.c.ref_seq == entries.c.seq)).order_by(entries.c.seq))
        for name, value in where.items():
            query = query.where(entries.c[name] == value)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    # ---- anchors ------------------------------------------------------------------------------
    def current_head(self) -> tuple[int, str]:
        """The head as stored: (seq, entry_hash)."""
        self.ensure_schema()
        with self.engine.connect() as conn:
            current = conn.execute(sa.select(head.c.seq, head.c.entry_hash).where(head.c.id == 1)).one()
        return int(current.seq), current.entry_hash

    def anchor(self, sink: AnchorSink | str | os.PathLike[str], *, check: bool = True) -> Anchor:
        """Write the head to ``sink`` (outside this database). With ``check``, a chain that does not
        verify (against the sink's earlier anchors too) is refused: an anchor must never bless tampering."""
        sink = anchor_sink(sink) if isinstance(sink, (str, os.PathLike)) else sink
        if check:
            result = self.verify(record=False, anchors=sink)
            if not result.ok:
                raise LedgerBroken(f"not anchoring a broken ledger: {result}")
        seq, hash_ = self.current_head()
        anchor = Anchor(seq, hash_, utcnow_iso())
        where = sink.put(anchor)
        log.info("ledger head %d anchored at %s", seq, where)
        return Anchor(anchor.seq, anchor.entry_hash, anchor.anchored_at, where)

    # ---- reading ------------------------------------------------------------------------------
    def rows(self, chunk: int = 5000, *, after: int | None = None, **where: Any) -> Iterator[dict[str, Any]]:
        """Entries in sequence order (after seq ``after``), read in bounded chunks."""
        self.ensure_schema()
        last = after  # None: no lower bound, so an entry slipped in before seq 1 is read too
        while True:
            query = sa.select(entries).order_by(entries.c.seq).limit(chunk)
            if last is not None:
                query = query.where(entries.c.seq > last)
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

    def requests_with_entry(self, request_ids: Iterable[str], **where: Any) -> dict[str, list[dict[str, Any]]]:
        """Per request id, its entries with these field values (oldest first); one SELECT per 500 requests."""
        self.ensure_schema()
        ids, out = list(request_ids), {}
        for i in range(0, len(ids), 500):
            query = sa.select(entries).where(entries.c.request_id.in_(ids[i:i + 500])).order_by(entries.c.seq)
            for name, value in where.items():
                query = query.where(entries.c[name] == value)
            with self.engine.connect() as conn:
                for row in conn.execute(query):
                    out.setdefault(row.request_id, []).append(dict(row._mapping))
        return out

    def last_sweeps(self) -> list[dict[str, Any]]:
        """The latest ``sweep`` entry of each rule (the page's "last sweep per rule")."""
        self.ensure_schema()
        e = entries
        latest = (sa.select(e.c.rule_id, sa.func.max(e.c.seq).label("seq"))
                  .where(e.c.action == "sweep", e.c.rule_id.is_not(None)).group_by(e.c.rule_id).subquery())
        query = (sa.select(e.c.seq, e.c.rule_id, e.c.system, e.c.collection, e.c.outcome, e.c.count,
                           e.c.recorded_at, e.c.dag_id, e.c.run_id, e.c.details)
                 .join(latest, e.c.seq == latest.c.seq).order_by(e.c.rule_id))
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def actions_per_day(self, first_day: dt.date, actions: Iterable[str] = CHART_ACTIONS,
                        outcomes: Iterable[str] = CHART_OUTCOMES) -> dict[tuple[str, str], int]:
        """Sum of counts per (UTC day, action) since ``first_day``, over entries that record a real change."""
        self.ensure_schema()
        e = entries
        # recorded_at is an ISO 8601 string: its first 10 characters are the (UTC) day
        day = sa.func.substr(e.c.recorded_at, sa.literal_column("1"), sa.literal_column("10"))
        query = (sa.select(day.label("day"), e.c.action, sa.func.sum(e.c.count).label("n"))
                 .where(e.c.action.in_(list(actions)), e.c.outcome.in_(list(outcomes)),
                        e.c.recorded_at >= f"{first_day.isoformat()}T00:00:00")
                 .group_by(day, e.c.action))
        with self.engine.connect() as conn:
            return {(r.day, r.action): int(r.n or 0) for r in conn.execute(query)}

    def verification_history(self, limit: int = 1) -> list[dict[str, Any]]:
        """Recorded verifications, newest first. History only: anyone with database access can write it."""
        self.ensure_schema()
        v = verifications
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(v.c.verified_at, v.c.ok, v.c.entries, v.c.problem)
                                .order_by(v.c.id.desc()).limit(limit))
            return [{"verified_at": r.verified_at, "ok": bool(r.ok), "entries": r.entries, "problem": r.problem}
                    for r in rows]

    # ---- verification -------------------------------------------------------------------------
    def verify(self, record: bool = True, *, anchors: Any = None, chunk: int = 5000) -> VerifyResult:
        """Walk the chain in chunks; report the first entry that is missing, edited, out of place, or
        disagrees with an anchor, and the intents that have no outcome yet.

        ``anchors``: a sink, a directory / ``s3://`` location, or a list of those or of ``Anchor``.
        Safe while others append: entries written during the walk are walked too before the head is
        compared, so a live ledger is never reported as truncated.
        """
        self.ensure_schema()
        # every active key, current first: entries written before a rotation verify under their key
        walk = _Walk([(kid, chain_key(secret)) for kid, secret in keys_of(self.key)], _collect_anchors(anchors))
        result = walk.start()
        last = None
        for _ in range(1000):  # catch up with writers: the head only moves forward
            if result is None:
                for row in self.rows(chunk=chunk, after=last):
                    result = walk.step(row)
                    if result is not None:
                        break
            if result is not None:
                break
            last = walk.expected_seq - 1
            head_seq, head_hash = self.current_head()
            walk.head_seq = head_seq
            if head_seq > last and self.has_entry_after(last):
                continue  # appended while we walked: walk those too
            result = walk.finish(head_seq, head_hash)
            break
        else:
            result = walk.broken(walk.expected_seq, "the ledger kept growing during verification; try again")
        open_ = sorted(walk.intents)
        result.head_seq = walk.head_seq
        result.anchors_checked = walk.checked
        result.unreconciled, result.unreconciled_count = open_[:1000], len(open_)
        if record:
            with self.engine.begin() as conn:
                conn.execute(verifications.insert().values(
                    verified_at=result.verified_at, ok=result.ok, entries=result.entries, problem=result.problem))
        return result

    def has_entry_after(self, seq: int) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(entries.c.seq).where(entries.c.seq > seq).limit(1)).first() is not None


class _Walk:
    """The state of one verification: where the chain is, which anchors and intents are still open."""

    def __init__(self, ckeys: list[tuple[str, bytes]], anchors: list[Anchor]):
        # ckeys: (key id, chain key), newest first. ``level`` is the index of the key the last entry
        # verified under: a later entry may use that key or a newer one, never an older one (a
        # retired key, leaked or not, cannot append after the first entry under its successor).
        self.ckeys, self.pending = ckeys, anchors
        self.level = len(ckeys) - 1
        self.expected_seq, self.prev, self.count, self.checked = 1, GENESIS, 0, 0
        self.intents: set[int] = set()
        self.head_seq: int | None = None

    def broken(self, seq: int, problem: str) -> VerifyResult:
        return VerifyResult(False, self.count, seq, problem)

    def start(self) -> VerifyResult | None:
        while self.pending and self.pending[0].seq <= 0:  # an anchor of the empty ledger
            a = self.pending.pop(0)
            if a.seq < 0 or a.entry_hash != GENESIS:
                return self.broken(0, f"anchor {a.where} records no entry of this ledger")
            self.checked += 1
        return None

    def step(self, row: dict[str, Any]) -> VerifyResult | None:
        """Check one entry; the first problem found ends the walk."""
        self.count += 1
        seq, expected = row["seq"], self.expected_seq
        if seq < expected:
            return self.broken(seq, f"entry {seq} was put before entry {expected}")
        if seq != expected:
            return self.broken(expected, f"entry {expected} is missing")
        used = self._key_index(row)
        if used is None:
            return self.broken(seq, "content does not match its keyed hash (edited, inserted, moved or "
                                    "rehashed without the key)")
        if used > self.level:
            return self.broken(seq, f"keyed with {self.ckeys[used][0]!r} after the chain moved on to key "
                                    f"{self.ckeys[self.level][0]!r} (an older key cannot append after a rotation)")
        self.level = used
        if row["prev_hash"] != self.prev:
            return self.broken(seq, "does not link to the entry before it")
        while self.pending and self.pending[0].seq <= seq:
            a = self.pending.pop(0)
            if a.seq == seq and not hmac.compare_digest(a.entry_hash, row["entry_hash"]):
                return self.broken(seq, f"differs from anchor {a.where} (rewritten with the key at or before "
                                        f"this entry)")
            self.checked += 1
        if row["outcome"] == INTENT:
            self.intents.add(seq)
        if row["ref_seq"] is not None:
            ref = int(row["ref_seq"])
            if ref not in self.intents:
                return self.broken(seq, f"settles entry {ref}, which is not an open intent before it")
            self.intents.discard(ref)
        self.prev, self.expected_seq = row["entry_hash"], expected + 1
        return None

    def _key_index(self, row: dict[str, Any]) -> int | None:
        """Index of the active key the entry's hash was made with (the current level's first), or None."""
        canon = canonical(row)
        order = [self.level, *(i for i in range(len(self.ckeys)) if i != self.level)]
        for i in order:
            if hmac.compare_digest(hmac.digest(self.ckeys[i][1], canon, "sha256").hex(), row["entry_hash"] or ""):
                return i
        return None

    def finish(self, head_seq: int, head_hash: str) -> VerifyResult:
        """After the last entry: the head and the anchors must agree with where the chain ended."""
        last = self.expected_seq - 1
        beyond = [a for a in self.pending if a.seq > last]
        if beyond:
            return self.broken(last + 1, f"entries after {last} were removed (anchor {beyond[0].where} "
                                         f"records entry {beyond[0].seq})")
        if head_seq > last:
            return self.broken(last + 1, f"entries after {last} were removed (the head says {head_seq})")
        if head_seq < last:
            return self.broken(head_seq + 1, f"entries after the head ({head_seq}) were added behind its back")
        if not hmac.compare_digest(head_hash, self.prev):
            return self.broken(last, "the head does not match the last entry")
        return VerifyResult(True, self.count)


def _entry_fields(item: dict[str, Any]) -> dict[str, Any]:
    """The stored fields of an entry from ``append``'s keyword arguments (``run`` split into DAG and run id)."""
    run = item.get("run") or RunRef()
    return {"dag_id": run.dag_id, "run_id": run.run_id,
            **{k: item.get(k) for k in ("rule_id", "request_id", "policy_digest", "system", "collection", "action",
                                        "outcome", "subject_digest", "pk_digest")},
            "count": int(item.get("count") or 0), "details": _details_text(item.get("details"))}


def _details_text(details: dict[str, Any] | None) -> str | None:
    return json.dumps(details, sort_keys=True) if details else None
