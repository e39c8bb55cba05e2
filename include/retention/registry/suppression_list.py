"""The suppression list: keyed digests of identities that must not come back (erased persons, unsubscribed
addresses), never the identities themselves."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from include.retention.clock import utcnow
from include.retention.errors import RetentionError
from include.retention.registry.identities import Identities, Vault
from include.retention.registry.schema import Schema, chunks, requests, suppression


class SuppressionList:
    """Digests on the suppression list: added by erasures (``add``) and deletes (``add_values``), looked up by
    kind and digest. ``identities_many``: the request book's, to read the identities of erased requests."""

    def __init__(self, schema: Schema, vault: Vault, identities_many: Callable[[Iterable[str]], dict[str, Identities]]):
        self.schema, self.engine, self.vault = schema, schema.engine, vault
        self._identities_many = identities_many

    def add(self, request_id: str) -> int:
        """Keep the erased identities as keyed digests so they cannot come back."""
        return self.add_many([request_id])

    def add_many(self, request_ids: Iterable[str], identities: dict[str, Identities] | None = None) -> int:
        """``add`` for many requests, set-based: one SELECT of the digests already listed (under any
        active key: an address suppressed before a rotation is not added twice), one multi-row INSERT of the
        new ones; an entry a delete put there (an unsubscribe) is marked as this erasure's too."""
        self.schema.ensure()  # key_id column on registries created before key ids
        ids = list(request_ids)
        identities = identities if identities is not None else self._identities_many(ids)
        candidates: dict[str, tuple[str, str, list[str], str]] = {}  # digest -> (kind, request, every key's, lookup)
        for rid in ids:
            for kind, value in identities[rid].normalised().items():
                digest = self.vault.digest(kind, value)
                if digest not in candidates:  # first request wins
                    candidates[digest] = (kind, rid, self.vault.digests(kind, value), self.vault.lookup(kind, value))
        now, added = utcnow(), 0
        with self.engine.begin() as conn:
            every = [d for _kind, _rid, cands, _lookup in candidates.values() for d in cands]
            listed: dict[str, tuple[str | None, bool]] = {}  # digest -> (request id, has lookup_enc)
            for chunk in chunks(every):
                listed.update((d, (r, has)) for d, r, has in conn.execute(
                    sa.select(suppression.c.digest, suppression.c.request_id, suppression.c.lookup_enc.is_not(None))
                    .where(suppression.c.digest.in_(chunk))))
            new = []
            for digest, (kind, rid, cands, lookup) in sorted(candidates.items()):
                found = next((c for c in cands if c in listed), None)
                if found is None:
                    new.append({"digest": digest, "kind": kind, "request_id": rid, "added_at": now,
                                "key_id": self.vault.kid, "lookup_enc": lookup})
                    continue
                if listed[found][0] is None:  # already suppressed by a delete: mark it as an erasure too
                    conn.execute(
                        suppression.update()
                        .where(suppression.c.digest == found, suppression.c.request_id.is_(None))
                        .values(request_id=rid)
                    )
                if not listed[found][1]:  # listed before index digests were kept: this erasure holds the value
                    conn.execute(suppression.update()
                                 .where(suppression.c.digest == found, suppression.c.lookup_enc.is_(None))
                                 .values(lookup_enc=lookup))
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
        for chunk in chunks(sorted(rows, key=lambda r: r["digest"])):  # one order: two writers cannot deadlock
            stmt = _insert_ignoring_duplicates(conn.dialect.name).values(chunk)
            added += max(conn.execute(stmt).rowcount, 0)
        return added

    def add_values(self, values: list[tuple[str, str]], reason: str) -> int:
        """Suppress (kind, plaintext) pairs by digest, set-based; returns how many were new."""
        every = {self.vault.digest(kind, value): (kind, self.vault.digests(kind, value), self.vault.lookup(kind, value))
                 for kind, value in values}
        if not every:
            return 0
        self.schema.ensure()
        now, added = utcnow(), 0
        by_kind = {}  # read before the transaction (its own connection: a SQLite writer's BEGIN IMMEDIATE waits for it)
        for kind in sorted({k for k, _, _ in every.values()}):
            mine = {d: (cands, lookup) for d, (k, cands, lookup) in every.items() if k == kind}
            by_kind[kind] = (mine, self.listed(kind, [c for cands, _ in mine.values() for c in cands]))
        with self.engine.begin() as conn:
            for kind, (mine, have) in by_kind.items():
                new = [
                    {"digest": d, "kind": kind, "request_id": None, "added_at": now, "key_id": self.vault.kid,
                     "lookup_enc": lookup}
                    for d, (cands, lookup) in mine.items()
                    if not have.intersection(cands)
                ]
                added += self._insert_new_digests(conn, new)
                for d in have.intersection(mine):  # listed under the current key before index digests were kept
                    conn.execute(suppression.update()
                                 .where(suppression.c.digest == d, suppression.c.lookup_enc.is_(None))
                                 .values(lookup_enc=mine[d][1]))
        return added

    def listed(self, kind: str, digests: Iterable[str], *, erasures_only: bool = False) -> set[str]:
        """Which of these digests are on the suppression list (``erasures_only``: put there by an erasure)."""
        digests = list(digests)
        if not digests:
            return set()
        self.schema.ensure()
        out: set[str] = set()
        with self.engine.connect() as conn:
            for i in range(0, len(digests), 500):
                query = sa.select(suppression.c.digest).where(
                    suppression.c.kind == kind, suppression.c.digest.in_(digests[i : i + 500])
                )
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
        self.schema.ensure()
        out: dict[str, str] = {}
        with self.engine.connect() as conn:
            for chunk in chunks(digests):
                out.update(conn.execute(sa.select(suppression.c.digest, suppression.c.request_id).where(
                    suppression.c.kind == kind, suppression.c.digest.in_(chunk),
                    suppression.c.request_id.is_not(None))).all())
        return out

    def _matchable(self, kinds: Iterable[str], erasures_only: bool) -> list[sa.ColumnElement[bool]]:
        """Entries of these kinds whose digest is under an active key (the others can match nothing any more)."""
        where = [suppression.c.kind.in_(sorted(kinds)),
                 sa.func.coalesce(suppression.c.key_id, sa.literal("k0")).in_(self.vault.active_kids)]
        if erasures_only:
            where.append(suppression.c.request_id.is_not(None))
        return where

    def without_lookup(self, kinds: Iterable[str], *, erasures_only: bool = False) -> int:
        """How many entries of these kinds (``erasures_only``: of erasures) that can still match lack ``lookup_enc``
        (listed before index digests were kept): while any does, enforcement on those kinds reads in full."""
        self.vault.need_key()
        self.schema.ensure()
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(suppression).where(
                *self._matchable(kinds, erasures_only), suppression.c.lookup_enc.is_(None))).scalar_one())

    def lookup_pages(self, kind: str, *, erasures_only: bool = False, size: int = 500) -> Iterator[list[str | None]]:
        """The index digests of the entries of ``kind`` that can still match, decrypted ``size`` at a time (one SELECT
        per page, by digest). None for an entry without one (listed meanwhile by a process from before them): the
        caller must then read in full."""
        self.schema.ensure()
        last = ""
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    sa.select(suppression.c.digest, suppression.c.lookup_enc)
                    .where(*self._matchable([kind], erasures_only), suppression.c.digest > last)
                    .order_by(suppression.c.digest).limit(size)).all()
            if rows:
                yield [self._lookup_of(token) for _digest, token in rows]
            if len(rows) < size:
                return
            last = rows[-1].digest

    def _lookup_of(self, token: str | None) -> str | None:
        if token is None:
            return None
        try:
            return self.vault.decrypt(token)
        except RetentionError:  # under a key no longer active (never written so): treated as missing, read in full
            return None

    def backfill_lookups(self, chunk: int = 500) -> dict[str, int]:
        """Add ``lookup_enc`` to the entries listed before it was kept, where the registry still holds the value:
        entries of erasures whose request is there (its identity, encrypted), checked against the entry's own
        digest. Entries of deletes (no request: the value is gone) cannot be filled; counted in ``left``."""
        self.vault.need_key()
        self.schema.ensure()
        done = {"filled": 0, "left": 0}
        last = ""
        while True:
            with self.engine.connect() as conn:  # read, then write (the write guarded: still without one)
                rows = conn.execute(
                    sa.select(suppression.c.digest, suppression.c.kind, suppression.c.request_id)
                    .where(suppression.c.lookup_enc.is_(None), suppression.c.digest > last)
                    .order_by(suppression.c.digest).limit(chunk)).all()
                known = {r.request_id for r in rows if r.request_id is not None}
                if known:
                    known &= set(conn.execute(sa.select(requests.c.request_id)
                                              .where(requests.c.request_id.in_(sorted(known)))).scalars())
            given = {rid: ids.normalised() for rid, ids in self._identities_many(sorted(known)).items()}
            with self.engine.begin() as conn:
                for entry in rows:
                    value = given.get(entry.request_id, {}).get(entry.kind)
                    if value is None or entry.digest not in self.vault.digests(entry.kind, value):
                        done["left"] += 1
                        continue
                    conn.execute(suppression.update().where(suppression.c.digest == entry.digest,
                                                            suppression.c.lookup_enc.is_(None))
                                 .values(lookup_enc=self.vault.lookup(entry.kind, value)))
                    done["filled"] += 1
            if len(rows) < chunk:
                return done
            last = rows[-1].digest

    def contains(self, kind: str, value: str) -> bool:
        return bool(self.listed(kind, self.vault.digests(kind, value)))


def _insert_ignoring_duplicates(dialect: str) -> Any:
    """An INSERT into the suppression list that skips a digest already there instead of failing on its key."""
    if dialect == "postgresql":
        return pg_insert(suppression).on_conflict_do_nothing(index_elements=["digest"])
    if dialect == "sqlite":
        return suppression.insert().prefix_with("OR IGNORE")
    if dialect in ("mysql", "mariadb"):
        return suppression.insert().prefix_with("IGNORE")
    raise RetentionError(f"suppression list: no duplicate-skipping insert for database {dialect!r}")
