"""Suppression: erased identities survive only as keyed digests, and stay erased.

``enforce`` walks a collection's rows in primary-key batches, computes the digests of their
identity columns and removes rows whose digest is suppressed (same exceptions as an
erasure: held or statutorily locked rows are restricted instead). The retention sweep runs
it on collections with ``suppress_on_delete`` (a re-subscribe or re-import is removed);
``replay`` runs it on every collection of a restored backup with the digests of completed
erasures, so a restore cannot bring a person back.

``guard_subscribe`` is the check a sign-up form calls before inserting a subscriber.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa

from include.retention.erasure import SubjectScanner, SystemOutcome
from include.retention.errors import RetentionError
from include.retention.masking import normalise_identity
from include.retention.registry import Registry, suppression

log = logging.getLogger(__name__)
SUPPRESSIBLE = ("email", "phone", "customer_ref")


class Suppressed(RetentionError):
    """The identity was erased or unsubscribed and must not be stored again."""


def guard_subscribe(registry: Registry, email: str) -> None:
    """Refuse a (re-)subscription of a suppressed address; the message does not repeat it."""
    if registry.is_suppressed("email", email):
        raise Suppressed("this address was erased or unsubscribed and cannot be subscribed again")


def _erasure_digests(registry: Registry, digests: list[str], kind: str) -> set[str]:
    with registry.engine.connect() as conn:
        return set(conn.execute(sa.select(suppression.c.digest).where(
            suppression.c.kind == kind, suppression.c.request_id.is_not(None),
            suppression.c.digest.in_(digests))).scalars())


def enforce(scanner: SubjectScanner, registry: Registry, name: str, *, only_erasures: bool,
            batch_size: int = 1000, dry_run: bool = False) -> int:
    """Remove rows of collection ``name`` whose identities are suppressed; returns rows handled."""
    store = scanner.store
    coll, t = store.coll(name), store.table(name)
    pk = t.c[coll.primary_key]
    columns = [(kind, col) for kind, col in coll.identity_columns() if kind in SUPPRESSIBLE]
    if not columns:
        return 0
    outcome, handled, last = SystemOutcome(), 0, None
    while True:
        query = sa.select(pk, *(t.c[c] for _, c in columns)).order_by(pk).limit(batch_size)
        if last is not None:
            query = query.where(pk > last)
        with store.engine.connect() as conn:
            rows = conn.execute(query).all()
        if not rows:
            break
        last = rows[-1][0]
        matched: dict[Any, set[str]] = {}
        for i, (kind, _col) in enumerate(columns):
            by_digest: dict[str, list[Any]] = {}
            for row in rows:
                value = row[i + 1]
                if value:
                    by_digest.setdefault(registry.digest(kind, normalise_identity(kind, str(value))), []).append(row[0])
            if not by_digest:
                continue
            hits = (_erasure_digests(registry, list(by_digest), kind) if only_erasures
                    else registry.suppressed(kind, list(by_digest)))
            for digest in hits:
                for key in by_digest[digest]:
                    matched.setdefault(key, set()).add("suppressed")
        if matched:
            with store.engine.begin() as conn:
                scanner.handle(conn, name, matched, "erase", dry_run, outcome)
            handled += len(matched)
        if len(rows) < batch_size:
            break
    if handled:
        log.info("%s: %d suppressed row(s) %s", store.ref(name), handled, "found" if dry_run else "removed")
    return handled


def enforce_system(scanner: SubjectScanner, registry: Registry, *, replay: bool, dry_run: bool = False
                   ) -> dict[str, int]:
    """Sweep (collections with ``suppress_on_delete``) or replay (every identity collection) one system."""
    counts = {}
    for name in scanner.identity_collections():
        coll = scanner.store.coll(name)
        if replay or coll.suppress_on_delete:
            counts[scanner.store.ref(name)] = enforce(scanner, registry, name, only_erasures=replay, dry_run=dry_run)
    return counts
