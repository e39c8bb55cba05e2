"""Suppression: erased identities survive only as keyed digests, and stay erased.

``enforce`` walks a collection's items in bounded batches (``Store.scan``), computes the digests
of their normalised identities and erases items whose digest is suppressed, through the same
``Store.erase`` as a subject request (so the same exceptions apply: held or locked items are
kept). The retention sweep runs it on collections where a delete suppresses (a rule's or stage's
``suppress``, or the deprecated ``suppress_on_delete``: a re-subscribe or re-import is removed);
``replay`` runs it on every identity collection of a restored backup with
the digests of completed erasures, so a restore cannot bring a person back.

``guard_subscribe`` is the check a sign-up form calls before inserting a subscriber.
"""

from __future__ import annotations

import logging

from include.retention.errors import RetentionError
from include.retention.registry import Registry
from include.retention.requests.scanner import SubjectScanner
from include.retention.stores.base import Claims, Subject, SubjectOutcome

log = logging.getLogger(__name__)


class Suppressed(RetentionError):
    """The identity was erased or unsubscribed and must not be stored again."""


def guard_subscribe(registry: Registry, email: str) -> None:
    """Refuse a (re-)subscription of a suppressed address; the message does not repeat it."""
    if registry.suppression.contains("email", email):
        raise Suppressed("this address was erased or unsubscribed and cannot be subscribed again")


def enforce(scanner: SubjectScanner, registry: Registry, name: str, *, only_erasures: bool,
            dry_run: bool = False) -> int:
    """Erase items of collection ``name`` whose identities are suppressed; returns items handled."""
    store = scanner.store
    outcome, handled = SubjectOutcome(), 0
    for batch in store.scan(name):
        # every value under every active key (digests made before a key rotation still match)
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
        if claims:
            outcome.merge(store.erase(name, claims, subjects, dry_run=dry_run))
            handled += len(claims)
    if handled:
        log.info("%s: %d suppressed item(s) %s", store.ref(name), handled, "found" if dry_run else "handled")
    return handled


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
