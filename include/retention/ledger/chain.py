"""The ``Ledger``: appending entries to the keyed hash chain under its head (intents, outcomes, rotations,
anchor records), reading them, and walking them to verify."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Unpack

import sqlalchemy as sa

import include.retention.ledger.queries as queries
from include.retention.clock import utcnow_iso
from include.retention.errors import LedgerBroken, RetentionError
from include.retention.ledger.anchors import Anchor, AnchorSink, anchor_sink, collect_anchors, last_anchor
from include.retention.ledger.hashing import chain_key, cosigned_details, key_change, kid_after, mac
from include.retention.ledger.schema import (
    ANCHOR_ACTION,
    CHART_ACTIONS,
    CHART_OUTCOMES,
    GENESIS,
    HASHED_FIELDS,
    INTENT,
    RECONCILED,
    ROTATE_KEYS,
    EntryFields,
    RunRef,
    create_schema,
    details_text,
    entries,
    entry_fields,
    head,
    is_create_race,
    metadata,
    verifications,
)
from include.retention.ledger.verify import ChainWalk, VerifyResult
from include.retention.masking import current_kid, keyed_digest, keys_of

log = logging.getLogger(__name__)


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
            if not is_create_race(exc):
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
            if (
                all(inspector.has_table(t.name) for t in metadata.sorted_tables)
                and "ref_seq" in {c["name"] for c in inspector.get_columns("ledger_entries")}
                and conn.execute(sa.select(head.c.id)).first() is not None
            ):
                return
        with self._writing() as conn:
            metadata.create_all(conn, checkfirst=True)
            self._add_missing_columns(conn)
            if conn.execute(sa.select(head.c.id)).first() is None:
                conn.execute(head.insert().values(id=1, seq=0, entry_hash=GENESIS))

    def _add_missing_columns(self, conn: sa.Connection | None = None) -> None:
        """Ledgers created before intents existed lack ``ref_seq``: add it (and its index); inside ``conn``'s
        transaction when given."""
        columns = {
            c["name"] for c in sa.inspect(conn if conn is not None else self.engine).get_columns("ledger_entries")
        }
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
        rows = [entry_fields(item) for item in items]
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
        current = conn.execute(sa.select(head.c.seq, head.c.entry_hash).where(head.c.id == 1).with_for_update()).one()
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
                row["details"] = cosigned_details(row, ring[to])  # the new key co-signs ...
            row["entry_hash"] = prev = mac(ckeys[kid], row)  # ... the chain key of before seals it
            if rotate:
                kid = to
            rows.append(row)
        for i in range(0, len(rows), 1000):
            conn.execute(entries.insert(), rows[i : i + 1000])
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
        kid = kid_after(dict(row._mapping), [(k, chain_key(s)) for k, s in ring]) if row is not None else None
        if kid is None or kid not in dict(ring):
            log.warning(
                "the ledger head (entry %d) is under no key of this key ring: writing under the current key "
                "%r; verify will say more",
                seq,
                ring[0][0],
            )
            return ring[0][0]
        return kid

    def rotate(self, *, run: RunRef, count: int = 0, details: dict[str, Any] | None = None) -> int:
        """Write the ``rotate_keys`` entry: when the chain is under an older key than the current one, it hands the
        chain over (``details.key_change``: from, to, and a proof made with the NEW key, besides the chain hash
        under the old one). From it on, ``verify`` refuses entries under the older key. Returns its seq."""
        self.ensure_schema()
        fields = entry_fields(
            {"run": run, "action": ROTATE_KEYS, "outcome": "done", "count": count, "details": details}
        )
        with self._writing() as conn:
            return self._chain_many(conn, [fields], rotate=True)[0]

    def intend(self, *, action: str, run: RunRef | None = None, **fields: Unpack[EntryFields]) -> int:
        """Say what may happen before the store change commits (``count``: planned); returns the intent's seq.

        A crash between this and ``settle`` leaves an intent that ``verify`` reports and ``reconcile``
        settles later: the ledger never lacks an entry for a change that committed.
        """
        return self.append(run=run or RunRef(), action=action, outcome=INTENT, **fields)

    def settle(
        self,
        intent_seq: int,
        *,
        count: int,
        outcome: str = "done",
        details: dict[str, Any] | None = None,
        then_intend: dict[str, Any] | None = None,
    ) -> int:
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
            following = entry_fields({"run": RunRef(), **then_intend, "outcome": INTENT})
        return self._settle(intent_seq, count=count, outcome=outcome, details=details, following=following)

    def reconcile(self, intent_seq: int, count: int, note: str, details: dict[str, Any] | None = None) -> int:
        """Settle an intent left open by a crash, with the count found afterwards (``note``: how it was found;
        ``details``: more of it, e.g. what the batch took along). See ``include.retention.intents``."""
        return self._settle(intent_seq, count=count, outcome=RECONCILED, details={**(details or {}), "note": note})

    def _settle(
        self,
        intent_seq: int,
        *,
        count: int,
        outcome: str,
        details: dict[str, Any] | None,
        following: dict[str, Any] | None = None,
    ) -> int:
        self.ensure_schema()
        with self._writing() as conn:
            # head first: it serialises writers, so the "already settled" check below cannot race
            conn.execute(sa.select(head.c.seq).where(head.c.id == 1).with_for_update()).one()
            intent = conn.execute(sa.select(entries).where(entries.c.seq == intent_seq)).first()
            if intent is None or intent.outcome != INTENT:
                raise RetentionError(f"ledger entry {intent_seq} is not an intent")
            done = conn.execute(
                sa.select(entries.c.seq, entries.c.count, entries.c.outcome).where(entries.c.ref_seq == intent_seq)
            ).first()
            if done is not None:
                if done.count == int(count) and done.outcome == outcome:
                    return self._chain(conn, following) if following is not None else int(done.seq)
                raise RetentionError(
                    f"intent {intent_seq} was already settled by entry {done.seq} ({done.outcome}, count {done.count})"
                )
            fields = {
                k: getattr(intent, k)
                for k in (
                    "dag_id",
                    "run_id",
                    "rule_id",
                    "request_id",
                    "policy_digest",
                    "system",
                    "collection",
                    "action",
                    "subject_digest",
                    "pk_digest",
                )
            }
            merged = {"planned": int(intent.count), **(details or {})}
            fields.update(outcome=outcome, count=int(count), ref_seq=int(intent_seq), details=details_text(merged))
            return self._chain_many(conn, [fields, *([following] if following is not None else [])])[-1]

    def open_intents(self, **where: Any) -> list[dict[str, Any]]:
        """Intents without an outcome entry (oldest first), e.g. for the next run to reconcile."""
        self.ensure_schema()
        outcome = entries.alias("outcome")
        query = (
            sa.select(entries)
            .where(entries.c.outcome == INTENT)
            .where(~sa.exists().where(outcome.c.ref_seq == entries.c.seq))
            .order_by(entries.c.seq)
        )
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

    def anchor(
        self, sink: AnchorSink | str | os.PathLike[str], *, check: bool = True, run: RunRef | None = None
    ) -> Anchor:
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
                sa.select(head.c.seq, head.c.entry_hash).where(head.c.id == 1).with_for_update()
            ).one()
            prev = last_anchor(conn, location)
            anchor = Anchor(
                int(current.seq), current.entry_hash, utcnow_iso(), prev_seq=prev and prev[0], prev_mac=prev and prev[1]
            ).signed(kid, secret)
            where = sink.put(anchor)
            details = {"sink": location, "where": where, "seq": anchor.seq, "mac": anchor.mac}
            self._chain_many(
                conn,
                [
                    entry_fields(
                        {"run": run or RunRef(), "action": ANCHOR_ACTION, "outcome": "done", "details": details}
                    )
                ],
            )
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

    # ---- the page's queries (include.retention.ledger.queries) -------------------------------------
    def requests_with_entry(self, request_ids: Iterable[str], **where: Any) -> dict[str, list[dict[str, Any]]]:
        """Per request id, its entries with these field values (oldest first); one SELECT per 500 requests."""
        self.ensure_schema()
        return queries.requests_with_entry(self.engine, request_ids, **where)

    def last_sweeps(self) -> list[dict[str, Any]]:
        """The latest ``sweep`` entry of each rule (the page's "last sweep per rule")."""
        self.ensure_schema()
        return queries.last_sweeps(self.engine)

    def actions_per_day(
        self, first_day: dt.date, actions: Iterable[str] = CHART_ACTIONS, outcomes: Iterable[str] = CHART_OUTCOMES
    ) -> dict[tuple[str, str], int]:
        """Sum of counts per (UTC day, action) since ``first_day``, over entries that record a real change."""
        self.ensure_schema()
        return queries.actions_per_day(self.engine, first_day, actions, outcomes)

    def verification_history(self, limit: int = 1) -> list[dict[str, Any]]:
        """Recorded verifications, newest first. History only: anyone with database access can write it."""
        self.ensure_schema()
        return queries.verification_history(self.engine, limit)

    # ---- verification -------------------------------------------------------------------------
    def verify(
        self, record: bool = True, *, anchors: Any = None, chunk: int = 5000, current_key: bool = True
    ) -> VerifyResult:
        """Walk the chain in chunks; report the first entry that is missing, edited, out of place, under a key it
        may not be under, or disagrees with an anchor, and the intents that have no outcome yet.

        ``anchors``: a sink, a directory / ``s3://`` location, or a list of those or of ``Anchor``.
        ``current_key``: the chain must end under the key ring's current key (reached through recorded
        rotations); ``rotate-keys`` alone verifies without it, before it hands the chain over.
        Safe while others append: entries written during the walk are walked too before the head is
        compared, so a live ledger is never reported as truncated.
        """
        self.ensure_schema()
        found = collect_anchors(anchors)
        # every active key, current first: entries written before a rotation verify under their key
        walk = ChainWalk(list(keys_of(self.key)), found, current_key=current_key)
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
                conn.execute(
                    verifications.insert().values(
                        verified_at=result.verified_at, ok=result.ok, entries=result.entries, problem=result.problem
                    )
                )
        return result

    def has_entry_after(self, seq: int) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(entries.c.seq).where(entries.c.seq > seq).limit(1)).first() is not None
