"""Suppression: erased identities survive only as keyed digests, and stay erased.

``enforce`` walks a collection's items in bounded batches, computes the digests of their normalised
identities and erases items whose digest is suppressed, through the same
``Store.erase`` as a subject request (so the same exceptions apply: held or locked items are
kept). The retention sweep runs it on collections where a delete suppresses (a rule's or stage's
``suppress``, or the deprecated ``suppress_on_delete``: a re-subscribe or re-import is removed);
``replay`` runs it on every identity collection of a restored backup with
the digests of completed erasures, so a restore cannot bring a person back. The items are the collection's
candidates through its ``lookup: indexed`` columns (each entry keeps its index digest encrypted, ``lookup_enc``)
when every identity field is indexed and every entry that can match has one; else every item (``Store.scan``;
docs/adr/0022-indexed-identity-lookup.md).

``guard_subscribe`` is the check a sign-up form calls before inserting a subscriber.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterator
from typing import Any

from include.retention.errors import RetentionError
from include.retention.registry import Registry
from include.retention.requests.scanner import SubjectScanner
from include.retention.stores.base import Claims, Store, Subject, SubjectOutcome

log = logging.getLogger(__name__)


class Suppressed(RetentionError):
    """The identity was erased or unsubscribed and must not be stored again."""


def guard_subscribe(registry: Registry, email: str) -> None:
    """Refuse a (re-)subscription of a suppressed address; the message does not repeat it."""
    if registry.suppression.contains("email", email):
        raise Suppressed("this address was erased or unsubscribed and cannot be subscribed again")


def enforce(scanner: SubjectScanner, registry: Registry, name: str, *, only_erasures: bool,
            dry_run: bool = False) -> int:
    """Erase items of collection ``name`` whose identities are suppressed; returns items handled.

    The items are read through the index (``_by_index``) where the collection and the list allow it, else in full
    (``Store.scan``); either way each item is judged here the same way, and an item is handed to ``Store.erase``
    once."""
    store = scanner.store
    outcome, handled, seen = SubjectOutcome(), 0, set()
    for batch in _items(store, registry, name, only_erasures):
        claims, subjects = _suppressed([(k, f) for k, f in batch if k not in seen], registry, only_erasures)
        if claims:
            seen.update(claims)
            outcome.merge(store.erase(name, claims, subjects, dry_run=dry_run))
            handled += len(claims)
    if handled:
        log.info("%s: %d suppressed item(s) %s", store.ref(name), handled, "found" if dry_run else "handled")
    return handled


def _suppressed(batch: list[tuple[Any, dict[str, set[str]]]], registry: Registry, only_erasures: bool
                ) -> tuple[Claims, list[Subject]]:
    """The items of ``batch`` whose normalised identities are on the list (digests under every active key: digests
    made before a key rotation still match), and one subject per suppressed identity."""
    by_digest: dict[tuple[str, str], tuple[str, list]] = {}
    for key, found in batch:
        for kind, values in found.items():
            for value in values:
                current, *older = registry.digests(kind, value)
                by_digest.setdefault((kind, current), (value, []))[1].append(key)
                for digest in older:
                    by_digest.setdefault((kind, digest), (current, []))
    claims, subjects = Claims(), []
    for kind in {k for k, _ in by_digest}:
        digests = [d for k, d in by_digest if k == kind]
        hits = set()
        for digest in registry.suppression.listed(kind, digests, erasures_only=only_erasures):
            value, keys = by_digest[(kind, digest)]
            hits.add(digest if keys else value)  # an older key's digest stands for the current one
        for digest in sorted(hits):
            value, keys = by_digest[(kind, digest)]
            subject = Subject(f"suppressed:{digest[:12]}", {kind: value})
            subjects.append(subject)
            for key in keys:
                claims.add(key, subject.request_id)
    return claims, subjects


def _items(store: Store, registry: Registry, name: str, only_erasures: bool
           ) -> Iterator[list[tuple[Any, dict[str, set[str]]]]]:
    """What enforcement judges: through the index when every identity field of the collection is ``lookup:
    indexed`` and every entry of those kinds that can still match carries its index digest (``lookup_enc``), else
    every item (``Store.scan``). Entries without one are counted in the log, never named."""
    fields = store.indexed_fields(name)
    if not fields:
        yield from store.scan(name)
        return
    kinds = sorted({kind for kind, _ in fields})
    missing = registry.suppression.without_lookup(kinds, erasures_only=only_erasures)
    if missing:
        log.info("%s: %d suppression entr(y/ies) of %s listed before index digests were kept: read in full",
                 store.ref(name), missing, "/".join(kinds))
        yield from store.scan(name)
        return
    complete = yield from _by_index(store, registry, name, kinds, only_erasures)
    if not complete:  # an entry without an index digest was listed meanwhile (a process from before them)
        log.info("%s: a suppression entry without an index digest appeared: read in full", store.ref(name))
        yield from store.scan(name)


def _by_index(store: Store, registry: Registry, name: str, kinds: list[str], only_erasures: bool
              ) -> Generator[list[tuple[Any, dict[str, set[str]]]], None, bool]:
    """The candidates of every entry's index digest (the list read 500 entries at a time, one indexed query per
    page and column), then the items not digested yet. Returns False when an entry had no index digest."""
    complete = True
    for kind in kinds:
        for page in registry.suppression.lookup_pages(kind, erasures_only=only_erasures):
            complete = complete and None not in page
            wanted = sorted({d for d in page if d})  # "" (no identity): no item is judged by it
            if wanted:  # read before anything is erased: the store's read connection is closed by then
                yield from list(store.index_candidates(name, {kind: wanted}))
    # streamed in bounded batches (they may be the whole table before a backfill); the store closes what a write
    # between batches would wait for (SQLite's statement)
    yield from store.index_candidates(name, {}, undigested=True)
    return complete


def enforce_system(scanner: SubjectScanner, registry: Registry, *, replay: bool, dry_run: bool = False
                   ) -> dict[str, int]:
    """Sweep (collections whose deletes suppress: ``Collection.suppress_kinds``) or replay (every identity
    collection) one system."""
    counts = {}
    for name in scanner.identity_collections():
        coll = scanner.policy.systems[scanner.system].collections[name]
        if replay or coll.suppress_kinds():
            counts[scanner.store.ref(name)] = enforce(scanner, registry, name, only_erasures=replay, dry_run=dry_run)
    return counts
