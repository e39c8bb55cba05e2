"""The audit ledger: append-only, keyed hash-chained entries that prove what was done.

Each entry holds time, DAG run, rule, policy digest, action, counts and digests;
subjects and primary keys appear only as keyed HMAC digests. ``entry_hash`` is the
HMAC-SHA256 (under a key derived from ``Ledger.key``) of the entry's canonical JSON
including the previous entry's hash, so someone with write access to the database but
without the key cannot edit, insert, remove, reorder or renumber entries and rehash the
rest: ``verify`` reports the first entry that does not match. A one-row head table
(locked with SELECT ... FOR UPDATE; ``BEGIN IMMEDIATE`` on SQLite) serialises writers.
The head is also anchored outside the database (``anchor``: a file, or an S3 object
under Object Lock), so a truncated tail with a moved head is found as well; an anchor is keyed,
names the anchor before it, and is recorded in the chain, so one rewritten or deleted is named.

The chain is under one key at a time: a ``rotate_keys`` entry co-signed by the new key hands it
over (``Ledger.rotate``); ``verify`` refuses a retired key after it and a chain that does not end
under the current key (docs/adr/0007-key-rotation.md).

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
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, TypedDict, Unpack

import sqlalchemy as sa

from include.retention.clock import utcnow_iso
from include.retention.errors import LedgerBroken, RetentionError
from include.retention.masking import current_kid, keyed_digest, keys_of
from include.retention.settings import settings

log = logging.getLogger(__name__)

GENESIS = "0" * 64
CHAIN_FORMAT = "hmac-sha256/2"
INTENT = "intent"
RECONCILED = "reconciled"
ROTATE_KEYS = "rotate_keys"  # the action of the entry that hands the chain over to a new key (ADR 0007)
ANCHOR_ACTION = "anchor"  # the action of the entry that records an anchor written outside (ADR 0006)
ANCHOR_FORMAT = "retention-ledger-anchor/2"
ANCHORS_DEMO_ENV = "RETENTION_LEDGER_ANCHORS_DEMO"  # set by `make demo`: its directory of anchors is a stand-in
_CHAIN_KEY_LABEL = b"retention-ledger-chain/2"
_ROTATION_KEY_LABEL = b"retention-ledger-rotation/1"
_ANCHOR_KEY_LABEL = b"retention-ledger-anchor/2"
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


def rotation_key(secret: bytes) -> bytes:
    """The key of a rotation entry's co-signature (the NEW key's), separate from its chain key."""
    return hmac.new(secret, _ROTATION_KEY_LABEL, hashlib.sha256).digest()


def anchor_key(secret: bytes) -> bytes:
    """The key of an anchor's keyed hash."""
    return hmac.new(secret, _ANCHOR_KEY_LABEL, hashlib.sha256).digest()


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


# ---- key rotation in the chain (docs/adr/0007-key-rotation.md) -----------------------------


def key_change(row: dict[str, Any]) -> dict[str, Any] | None:
    """The ``key_change`` of a ``rotate_keys`` entry (``{"from", "to", "proof"}``), or None for any other entry."""
    if row.get("action") != ROTATE_KEYS or not row.get("details"):
        return None
    try:
        details = json.loads(row["details"])
    except ValueError:
        return None
    change = details.get("key_change") if isinstance(details, dict) else None
    return change if isinstance(change, dict) else {} if change is not None else None


def _cosignature(row: dict[str, Any], new_secret: bytes) -> str:
    """HMAC under the new key of the rotation entry with its proof blank: only a holder of the new key makes it."""
    details = json.loads(row["details"])
    details["key_change"]["proof"] = ""
    blank = {**row, "details": json.dumps(details, sort_keys=True)}
    return hmac.digest(rotation_key(new_secret), canonical(blank), "sha256").hex()


def _cosigned_details(row: dict[str, Any], new_secret: bytes) -> str:
    details = json.loads(row["details"])
    details["key_change"]["proof"] = _cosignature(row, new_secret)
    return json.dumps(details, sort_keys=True)


def _kid_after(row: dict[str, Any], ckeys: list[tuple[str, bytes]]) -> str | None:
    """The id of the key the chain is under after ``row``: its own key, or the key a rotation hands over to."""
    canon = canonical(row)
    for kid, ckey in ckeys:
        if hmac.compare_digest(hmac.digest(ckey, canon, "sha256").hex(), row["entry_hash"] or ""):
            change = key_change(row)
            return str(change["to"]) if change and isinstance(change.get("to"), str) else kid
    return None


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
    """The ledger head at one moment, kept where the ledger database's users cannot rewrite it.

    ``mac``: HMAC (under key ``kid``) of everything else in the document, so an anchor written or rewritten
    without the key is named by ``verify``; ``prev_seq`` / ``prev_mac`` name the previous anchor in the same
    place (None for the first), so a deleted anchor with a later one after it is named too.
    """

    seq: int
    entry_hash: str
    anchored_at: str
    where: str = ""
    kid: str = ""
    prev_seq: int | None = None
    prev_mac: str | None = None
    mac: str = ""

    def content(self) -> bytes:
        prev = None if self.prev_seq is None else {"seq": self.prev_seq, "mac": self.prev_mac}
        return json.dumps({"format": ANCHOR_FORMAT, "seq": self.seq, "entry_hash": self.entry_hash,
                           "anchored_at": self.anchored_at, "kid": self.kid, "prev": prev},
                          sort_keys=True, separators=(",", ":")).encode()

    def signed(self, kid: str, secret: bytes) -> Anchor:
        unsigned = replace(self, kid=kid, mac="")
        return replace(unsigned, mac=hmac.digest(anchor_key(secret), unsigned.content(), "sha256").hex())

    def mac_ok(self, secret: bytes) -> bool:
        return hmac.compare_digest(hmac.digest(anchor_key(secret), self.content(), "sha256").hex(), self.mac)

    def to_json(self) -> bytes:
        doc = json.loads(self.content())
        doc["mac"] = self.mac
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Anchor:
        try:
            doc = json.loads(data)
            if doc.get("format") != ANCHOR_FORMAT:
                raise ValueError("unknown format")
            prev = doc["prev"]
            if prev is not None and not isinstance(prev, dict):
                raise ValueError("prev")
            return cls(int(doc["seq"]), str(doc["entry_hash"]), str(doc["anchored_at"]), where, str(doc["kid"]),
                       None if prev is None else int(prev["seq"]), None if prev is None else str(prev["mac"]),
                       str(doc["mac"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise LedgerBroken(f"anchor {where} is not a ledger anchor (unreadable or unknown format)") from None

    @property
    def sink(self) -> str:
        """Where the anchor's place is (``AnchorSink.location()``): its ``where`` without its name."""
        return self.where.rsplit("/", 1)[0]

    def name(self) -> str:
        """Sortable, unique per head: seq first, then part of the hash."""
        return f"{self.seq:015d}-{self.entry_hash[:16]}.json"


class AnchorSink(Protocol):
    def put(self, anchor: Anchor) -> str: ...

    def anchors(self) -> Iterator[Anchor]: ...

    def location(self) -> str: ...

    def limit(self) -> str | None: ...


DIRECTORY_LIMIT = ("anchors in a directory can be deleted by whoever can write to it: a truncated ledger whose "
                   "newest anchor was deleted with it is not found (use an S3 bucket with Object Lock)")


class DirectorySink:
    """One JSON file per anchor in a directory (the embedded demo: ``.demo/anchors/``)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path).absolute()

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

    def location(self) -> str:
        return str(self.path)

    def limit(self) -> str | None:
        """What this sink cannot prove (None in `make demo`, where the directory stands in for a bucket)."""
        return None if settings().ledger_anchors_demo else DIRECTORY_LIMIT

    def __repr__(self) -> str:
        return f"DirectorySink({str(self.path)!r})"


class S3Sink:
    """One object per anchor; in an Object Lock bucket written in COMPLIANCE mode (nobody can delete it).

    Read back by *version*: a delete marker hides nothing, and a newer version written over an anchor
    is read (and checked) besides the original, which a COMPLIANCE lock keeps.
    """

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
        versions: dict[str, list[dict[str, Any]]] = {}
        pages = self.client.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=self.prefix)
        for page in pages:
            for version in page.get("Versions", []):  # delete markers are listed apart: ignored
                if version["Key"].endswith(".json"):
                    versions.setdefault(version["Key"], []).append(version)
        for key in sorted(versions):
            # oldest first: the original (kept by a COMPLIANCE lock), then anything written over it
            listed = sorted(enumerate(versions[key]), key=lambda iv: (iv[1]["LastModified"], -iv[0]))
            first: bytes | None = None
            for _, version in listed:
                vid = version.get("VersionId")
                extra = {} if vid in (None, "null") else {"VersionId": vid}
                body = self.client.get_object(Bucket=self.bucket, Key=key, **extra)["Body"].read()
                if first is None:
                    first = body
                    yield Anchor.from_json(body, f"s3://{self.bucket}/{key}")
                elif body != first:
                    yield Anchor.from_json(body, f"s3://{self.bucket}/{key}?versionId={vid}")

    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def limit(self) -> str | None:
        if self.object_lock():
            return None
        return (f"bucket {self.bucket!r} has no Object Lock: whoever can delete its objects can remove the newest "
                "anchor along with a truncated tail")

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


def anchor_sinks(targets: str, s3_client: Any = None) -> list[AnchorSink]:
    """Every place named in ``targets``, separated by commas (``RETENTION_LEDGER_ANCHORS``): a second witness
    (another bucket or account, another host's directory) must be bent too before a cut goes unseen."""
    places = [t.strip() for t in str(targets).split(",") if t.strip()]
    if not places:
        raise RetentionError(f"anchor location {targets!r} names no place")
    return [anchor_sink(place, s3_client) for place in places]


@dataclass
class ReadAnchors:
    """The anchors of one sink, read once (the page reads them first, to show an unreachable sink as such)."""

    where: str
    found: list[Anchor]
    limitation: str | None = None

    def anchors(self) -> Iterator[Anchor]:
        return iter(self.found)

    def location(self) -> str:
        return self.where

    def limit(self) -> str | None:
        return self.limitation


def read_anchors(target: AnchorSink | str | os.PathLike[str], s3_client: Any = None) -> ReadAnchors:
    sink = anchor_sink(target, s3_client) if isinstance(target, (str, os.PathLike)) else target
    return ReadAnchors(sink.location(), list(sink.anchors()), sink.limit())


@dataclass
class _AnchorSet:
    anchors: list[Anchor] = field(default_factory=list)
    locations: set[str] = field(default_factory=set)  # the places read in full (their recorded anchors must be there)
    limits: list[str] = field(default_factory=list)


def _collect_anchors(anchors: Any) -> _AnchorSet:
    out = _AnchorSet()
    if anchors is None:
        return out
    if isinstance(anchors, (str, os.PathLike)) or hasattr(anchors, "anchors"):
        anchors = [anchors]
    for item in anchors:
        if isinstance(item, Anchor):
            out.anchors.append(item)
            continue
        sink = anchor_sink(item) if isinstance(item, (str, os.PathLike)) else item
        out.anchors.extend(sink.anchors())
        if hasattr(sink, "location"):
            out.locations.add(sink.location())
        limit = sink.limit() if hasattr(sink, "limit") else None
        if limit and limit not in out.limits:
            out.limits.append(limit)
    out.anchors.sort(key=lambda a: (a.seq, a.where))
    return out


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
    key_id: str | None = None  # the key the chain is under after its last entry
    warnings: list[str] = field(default_factory=list)  # what the anchors given cannot prove

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
        for warning in self.warnings:
            text += f"; warning: {warning}"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "entries": self.entries, "first_broken_seq": self.first_broken_seq,
                "problem": self.problem, "unreconciled": self.unreconciled[:100],
                "unreconciled_count": self.unreconciled_count, "anchors_checked": self.anchors_checked,
                "head_seq": self.head_seq, "verified_at": self.verified_at, "key_id": self.key_id,
                "warnings": list(self.warnings)}


# ---- schema creation under concurrency ------------------------------------------------------

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
            if attempt == attempts - 1 or not _is_create_race(exc):
                raise
            log.info("%s schema created concurrently (attempt %d); checking again", what, attempt + 1)
            time.sleep(0.05 * (attempt + 1))


def _is_create_race(exc: Exception) -> bool:
    """A concurrent first run created (or is creating) the same table / index: retry with checkfirst."""
    text = str(getattr(exc, "orig", exc)).lower()
    return any(marker in text for marker in _RACE_MARKERS)


@dataclass
class Ledger:
    engine: sa.Engine
    key: bytes
    _ready: bool = field(default=False, repr=False)
    # (head entry_hash, key id the chain is under after it), as this object last wrote or read it
    _head_kid: tuple[str, str] | None = field(default=None, repr=False)

    # ---- schema -----------------------------------------------------------------------------
    def ensure_schema(self) -> None:
        """Create tables and the head row once; safe when several first runs do it at the same time."""
        if self._ready:
            return
        if self.engine.dialect.name == "sqlite":
            self._ensure_sqlite_schema()
            self._ready = True
            return
        create_schema(self.engine, metadata, self._add_missing_columns, "ledger")
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

    def _chain_many(self, conn: sa.Connection, many: list[dict[str, Any]], *, rotate: bool = False) -> list[int]:
        """Write entries after the head, in order, inside the caller's write transaction.

        Entries are chained under the key the chain is under (its head's, ADR 0007), not necessarily the
        current key: only ``rotate`` (one ``rotate_keys`` entry) hands the chain over to the current key.
        """
        current = conn.execute(
            sa.select(head.c.seq, head.c.entry_hash).where(head.c.id == 1).with_for_update()
        ).one()
        ring = dict(keys_of(self.key))
        seq, prev, now = int(current.seq), current.entry_hash, utcnow_iso()
        kid = self._chain_kid(conn, seq, prev)
        ckeys = {k: chain_key(secret) for k, secret in ring.items()}
        rows = []
        for fields in many:
            row = {k: None for k in HASHED_FIELDS}
            row.update(fields)
            seq += 1
            row.update(seq=seq, recorded_at=now, prev_hash=prev)
            if key_change(row) is not None:
                raise RetentionError("only Ledger.rotate writes a key change")
            to = current_kid(self.key)
            if rotate and kid != to:
                details = json.loads(row["details"] or "{}")
                details["key_change"] = {"from": kid, "to": to, "proof": ""}
                row["details"] = json.dumps(details, sort_keys=True)
                row["details"] = _cosigned_details(row, ring[to])  # the new key co-signs ...
            row["entry_hash"] = prev = _mac(ckeys[kid], row)  # ... the chain key of before seals it
            if rotate:
                kid = to
            rows.append(row)
        for i in range(0, len(rows), 1000):
            conn.execute(entries.insert(), rows[i:i + 1000])
        conn.execute(head.update().where(head.c.id == 1).values(seq=seq, entry_hash=prev))
        self._head_kid = (prev, kid)
        return [r["seq"] for r in rows]

    def _chain_kid(self, conn: sa.Connection, seq: int, head_hash: str) -> str:
        """The id of the key to chain under after the head: the head entry's (or the key its rotation hands over
        to); the current key for an empty ledger, a one-key ring, or a head under no key of the ring."""
        ring = keys_of(self.key)
        if seq == 0 or len(ring) == 1:
            return ring[0][0]
        if self._head_kid is not None and self._head_kid[0] == head_hash:
            return self._head_kid[1]
        row = conn.execute(sa.select(entries).where(entries.c.seq == seq)).first()
        kid = _kid_after(dict(row._mapping), [(k, chain_key(s)) for k, s in ring]) if row is not None else None
        if kid is None or kid not in dict(ring):
            log.warning("the ledger head (entry %d) is under no key of this key ring: writing under the current key "
                        "%r; verify will say more", seq, ring[0][0])
            return ring[0][0]
        return kid

    def rotate(self, *, run: RunRef, count: int = 0, details: dict[str, Any] | None = None) -> int:
        """Write the ``rotate_keys`` entry: when the chain is under an older key than the current one, it hands the
        chain over (``details.key_change``: from, to, and a proof made with the NEW key, besides the chain hash
        under the old one). From it on, ``verify`` refuses entries under the older key. Returns its seq."""
        self.ensure_schema()
        fields = _entry_fields({"run": run, "action": ROTATE_KEYS, "outcome": "done", "count": count,
                                "details": details})
        with self._writing() as conn:
            return self._chain_many(conn, [fields], rotate=True)[0]

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

    def anchor(self, sink: AnchorSink | str | os.PathLike[str], *, check: bool = True,
               run: RunRef | None = None) -> Anchor:
        """Write the head to ``sink`` (outside this database), keyed with the current key and naming the previous
        anchor there, and record it as an ``anchor`` entry (sink, where, seq, keyed hash): ``verify`` then names an
        anchor the chain knows of that went missing or changed. With ``check``, a chain that does not verify
        (against the sink's earlier anchors too) is refused: an anchor must never bless tampering."""
        sink = anchor_sink(sink) if isinstance(sink, (str, os.PathLike)) else sink
        if check:
            result = self.verify(record=False, anchors=sink)
            if not result.ok:
                raise LedgerBroken(f"not anchoring a broken ledger: {result}")
        self.ensure_schema()
        kid, secret = keys_of(self.key)[0]
        location = sink.location()
        with self._writing() as conn:  # holds the head: the anchored head is the head when the entry is written
            current = conn.execute(
                sa.select(head.c.seq, head.c.entry_hash).where(head.c.id == 1).with_for_update()).one()
            prev = _last_anchor(conn, location)
            anchor = Anchor(int(current.seq), current.entry_hash, utcnow_iso(), prev_seq=prev and prev[0],
                            prev_mac=prev and prev[1]).signed(kid, secret)
            where = sink.put(anchor)
            details = {"sink": location, "where": where, "seq": anchor.seq, "mac": anchor.mac}
            self._chain_many(conn, [_entry_fields({"run": run or RunRef(), "action": ANCHOR_ACTION,
                                                   "outcome": "done", "details": details})])
        log.info("ledger head %d anchored at %s", anchor.seq, where)
        return replace(anchor, where=where)

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
    def verify(self, record: bool = True, *, anchors: Any = None, chunk: int = 5000,
               current_key: bool = True) -> VerifyResult:
        """Walk the chain in chunks; report the first entry that is missing, edited, out of place, under a key it
        may not be under, or disagrees with an anchor, and the intents that have no outcome yet.

        ``anchors``: a sink, a directory / ``s3://`` location, or a list of those or of ``Anchor``.
        ``current_key``: the chain must end under the key ring's current key (reached through recorded
        rotations); ``rotate-keys`` alone verifies without it, before it hands the chain over.
        Safe while others append: entries written during the walk are walked too before the head is
        compared, so a live ledger is never reported as truncated.
        """
        self.ensure_schema()
        found = _collect_anchors(anchors)
        # every active key, current first: entries written before a rotation verify under their key
        walk = _Walk(list(keys_of(self.key)), found, current_key=current_key)
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
        result.key_id = walk.kid()
        result.warnings = list(found.limits)
        if record:
            with self.engine.begin() as conn:
                conn.execute(verifications.insert().values(
                    verified_at=result.verified_at, ok=result.ok, entries=result.entries, problem=result.problem))
        return result

    def has_entry_after(self, seq: int) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(entries.c.seq).where(entries.c.seq > seq).limit(1)).first() is not None


def _last_anchor(conn: sa.Connection, location: str) -> tuple[int, str] | None:
    """(seq, keyed hash) of the newest anchor the ledger recorded for ``location`` (among its last 100)."""
    query = (sa.select(entries.c.details).where(entries.c.action == ANCHOR_ACTION, entries.c.outcome == "done")
             .order_by(entries.c.seq.desc()).limit(100))
    for (text,) in conn.execute(query):
        recorded = _recorded_anchor(text)
        if recorded is not None and recorded["sink"] == location:
            return int(recorded["seq"]), str(recorded["mac"])
    return None


def _recorded_anchor(details: str | None) -> dict[str, Any] | None:
    """The details of an ``anchor`` entry (sink, where, seq, mac), or None when they are not that."""
    try:
        doc = json.loads(details or "")
    except ValueError:
        return None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str) for k in ("sink", "where", "mac")):
        return None
    return doc if isinstance(doc.get("seq"), int) else None


class _Walk:
    """The state of one verification: where the chain is, under which key, which anchors and intents are open."""

    def __init__(self, ring: list[tuple[str, bytes]], anchors: _AnchorSet, *, current_key: bool = True):
        # ring: (key id, secret), current first. ``cur`` is the index of the key the chain is under: every
        # entry must be keyed with it; only a rotation entry co-signed by a newer key moves it there.
        self.ring = ring
        self.ckeys = [(kid, chain_key(secret)) for kid, secret in ring]
        self.current_key = current_key
        self.cur: int | None = None
        self.segment_start = 1  # the first entry under the key the chain is under now
        self.pending = list(anchors.anchors)
        self.by_where = {a.where: a for a in anchors.anchors}
        self.locations = anchors.locations
        self.seen: dict[tuple[str, int], set[str]] = {}  # (sink, seq) -> keyed hashes of anchors checked there
        self.expected_seq, self.prev, self.count, self.checked = 1, GENESIS, 0, 0
        self.intents: set[int] = set()
        self.head_seq: int | None = None

    def kid(self) -> str | None:
        return None if self.cur is None else self.ckeys[self.cur][0]

    def broken(self, seq: int, problem: str) -> VerifyResult:
        return VerifyResult(False, self.count, seq, problem)

    def start(self) -> VerifyResult | None:
        while self.pending and self.pending[0].seq <= 0:  # an anchor of the empty ledger
            a = self.pending.pop(0)
            if problem := self._anchor_problem(a):
                return self.broken(0, problem)
            if a.seq < 0 or a.entry_hash != GENESIS:
                return self.broken(0, f"anchor {a.where} records no entry of this ledger")
            self._seen(a)
        return None

    def _anchor_problem(self, a: Anchor) -> str | None:
        """An anchor must be keyed with an active key and name an earlier anchor of its place that is there."""
        secret = dict(self.ring).get(a.kid)
        if secret is None:
            return f"anchor {a.where} is keyed with {a.kid!r}, which is not in the key ring"
        if not a.mac_ok(secret):
            return f"anchor {a.where} does not match its keyed hash (written or rewritten without the key)"
        if a.prev_seq is not None and a.prev_mac not in self.seen.get((a.sink, a.prev_seq), set()):
            return (f"anchor {a.where} follows an anchor of entry {a.prev_seq} that is missing from "
                    f"{a.sink} (deleted or rewritten)")
        return None

    def _seen(self, a: Anchor) -> None:
        self.seen.setdefault((a.sink, a.seq), set()).add(a.mac)
        self.checked += 1

    def step(self, row: dict[str, Any]) -> VerifyResult | None:
        """Check one entry; the first problem found ends the walk."""
        self.count += 1
        seq, expected = row["seq"], self.expected_seq
        if seq < expected:
            return self.broken(seq, f"entry {seq} was put before entry {expected}")
        if seq != expected:
            return self.broken(expected, f"entry {expected} is missing")
        if problem := self._key_problem(row):
            return self.broken(seq, problem)
        if row["prev_hash"] != self.prev:
            return self.broken(seq, "does not link to the entry before it")
        while self.pending and self.pending[0].seq <= seq:
            a = self.pending.pop(0)
            if problem := self._anchor_problem(a):
                return self.broken(seq, problem)
            if a.seq == seq and not hmac.compare_digest(a.entry_hash, row["entry_hash"]):
                return self.broken(seq, f"differs from anchor {a.where} (rewritten with the key at or before "
                                        f"this entry)")
            self._seen(a)
        if row["action"] == ANCHOR_ACTION and (problem := self._recorded_anchor_problem(row)):
            return self.broken(seq, problem)
        if row["outcome"] == INTENT:
            self.intents.add(seq)
        if row["ref_seq"] is not None:
            ref = int(row["ref_seq"])
            if ref not in self.intents:
                return self.broken(seq, f"settles entry {ref}, which is not an open intent before it")
            self.intents.discard(ref)
        self.prev, self.expected_seq = row["entry_hash"], expected + 1
        return None

    def _key_problem(self, row: dict[str, Any]) -> str | None:
        """The entry must be keyed with the key the chain is under (any active key for the first entry); a
        rotation entry must be co-signed by the key it hands over to, which becomes the chain's key."""
        canon = canonical(row)
        order = range(len(self.ckeys)) if self.cur is None else [self.cur, *(
            i for i in range(len(self.ckeys)) if i != self.cur)]
        used = next((i for i in order if hmac.compare_digest(
            hmac.digest(self.ckeys[i][1], canon, "sha256").hex(), row["entry_hash"] or "")), None)
        if used is None:
            return "content does not match its keyed hash (edited, inserted, moved or rehashed without the key)"
        if self.cur is not None and used != self.cur:
            now, other = self.ckeys[self.cur][0], self.ckeys[used][0]
            if used > self.cur:
                return (f"keyed with {other!r} after the chain moved on to key {now!r} (a retired key cannot "
                        f"append or rewrite after a rotation)")
            return f"keyed with {other!r} while the chain is under {now!r}, and no rotation entry hands it over"
        self.cur = used
        change = key_change(row)
        if change is None:
            return None
        to, from_ = change.get("to"), change.get("from")
        kid = self.ckeys[used][0]
        if from_ != kid or not isinstance(to, str) or not isinstance(change.get("proof"), str):
            return f"a key rotation that does not say it hands over from {kid!r}, the key it is keyed with, to a key"
        index = next((i for i, (k, _) in enumerate(self.ring) if k == to), None)
        if index is None:
            return f"hands the chain over to key {to!r}, which is not in the key ring (RETENTION_HMAC_KEYS)"
        if index >= used:
            return f"hands the chain over from {kid!r} to {to!r}, which is not a newer key"
        if not hmac.compare_digest(_cosignature(row, self.ring[index][1]), change["proof"]):
            return (f"a key rotation to {to!r} without its co-signature under {to!r} (forged by someone without "
                    f"the new key)")
        self.cur, self.segment_start = index, row["seq"] + 1
        return None

    def _recorded_anchor_problem(self, row: dict[str, Any]) -> str | None:
        """An ``anchor`` entry names an anchor written outside: in a place read in full, it must be there, unchanged."""
        recorded = _recorded_anchor(row["details"])
        if recorded is None:
            return "an anchor entry that does not say which anchor it records"
        if recorded["sink"] not in self.locations:
            return None  # a place not given to this verification
        found = self.by_where.get(recorded["where"])
        if found is None:
            return f"records the anchor of entry {recorded['seq']} at {recorded['where']}, which is missing"
        if found.seq != recorded["seq"] or not hmac.compare_digest(found.mac, recorded["mac"]):
            return f"records the anchor of entry {recorded['seq']} at {recorded['where']}, which was changed"
        return None

    def finish(self, head_seq: int, head_hash: str) -> VerifyResult:
        """After the last entry: the head and the anchors must agree with where the chain ended, and the chain
        must end under the current key."""
        last = self.expected_seq - 1
        beyond = [a for a in self.pending if a.seq > last]
        for a in beyond:
            if problem := self._anchor_problem(a):
                return self.broken(last + 1, problem)
            self._seen(a)
        if beyond:
            return self.broken(last + 1, f"entries after {last} were removed (anchor {beyond[0].where} "
                                         f"records entry {beyond[0].seq})")
        if head_seq > last:
            return self.broken(last + 1, f"entries after {last} were removed (the head says {head_seq})")
        if head_seq < last:
            return self.broken(head_seq + 1, f"entries after the head ({head_seq}) were added behind its back")
        if not hmac.compare_digest(head_hash, self.prev):
            return self.broken(last, "the head does not match the last entry")
        if self.current_key and self.cur is not None and self.cur != 0:
            old, new = self.ckeys[self.cur][0], self.ckeys[0][0]
            return self.broken(self.segment_start, (
                f"entries {self.segment_start}-{last} are under key {old!r}, but the current key is {new!r} and no "
                f"rotation entry hands the chain over to it: either `cli rotate-keys` has not run since {new!r} "
                f"was added, or the rotation and what followed were cut or rewritten with the old key"))
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
