"""Subject requests on a SQL system: find a set of subjects' rows, erase or restrict them, verify.

Everything is set-based across many subjects: one ``IN`` list of identity values per
collection and identity column (in chunks), one delete per chunk of keys. Collections are
handled children first; deleting a row takes its dependents (as the references say) and
its objects in S3 (objects first) with it, through ``SqlStore._delete_keys``.

GDPR Art. 17(3) exceptions: a row under legal hold, a row already locked for a statutory
period, or a row whose dependents are held is *restricted* instead of deleted, and listed
as an exception in the receipt.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from include.retention.policy import Policy
from include.retention.registry import utcnow
from include.retention.stores.sql import SqlStore

log = logging.getLogger(__name__)
CHUNK = 500


@dataclass
class Subject:
    request_id: str
    identities: dict[str, str]  # kind -> normalised value


@dataclass
class SystemOutcome:
    """Per request: collection ref -> counts (deleted / anonymized / restricted / exceptions / cascaded)."""

    per_request: dict[str, dict[str, dict[str, int]]] = field(default_factory=lambda: defaultdict(dict))
    # What deletes took along for all requests together: dependents and objects (by collection ref).
    totals: dict[str, int] = field(default_factory=dict)

    def add(self, request_id: str, coll_ref: str, key: str, n: int = 1) -> None:
        counts = self.per_request[request_id].setdefault(coll_ref, {})
        counts[key] = counts.get(key, 0) + n


def collection_order(policy: Policy, system: str) -> list[str]:
    """Collection names of ``system``, children before parents (references point child -> parent)."""
    colls = policy.systems[system].collections
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        for child_ref, _ in policy.children(f"{system}.{name}"):
            c_sys, _, c_name = child_ref.partition(".")
            if c_sys == system:
                visit(c_name)
        order.append(name)

    for name in colls:
        visit(name)
    return order


def _identity_expr(t: sa.Table, kind: str, column: str) -> sa.ColumnElement:
    col = t.c[column]
    if kind == "email":
        return sa.func.lower(sa.func.trim(col))
    if kind == "phone":
        expr = col
        for ch in (" ", "-", "(", ")", "."):
            expr = sa.func.replace(expr, ch, "")
        return expr
    return col


class SubjectScanner:
    """Finds and acts on rows of given subjects in one SQL system."""

    def __init__(self, policy: Policy, store: SqlStore):
        self.policy = policy
        self.store = store
        self.system = store.name

    def identity_collections(self) -> list[str]:
        return [n for n in collection_order(self.policy, self.system)
                if self.policy.systems[self.system].collections[n].identities]

    def match(self, name: str, subjects: list[Subject], conn=None) -> dict[Any, set[str]]:
        """Primary key -> request ids whose identities this row carries."""
        coll, t = self.store.coll(name), self.store.table(name)
        pk = t.c[coll.primary_key]
        out: dict[Any, set[str]] = defaultdict(set)
        own = conn is None
        conn = conn or self.store.engine.connect()
        try:
            for kind, column in coll.identity_columns():
                by_value: dict[str, list[str]] = defaultdict(list)
                for s in subjects:
                    if kind in s.identities:
                        by_value[s.identities[kind]].append(s.request_id)
                values = list(by_value)
                expr = _identity_expr(t, kind, column)
                for i in range(0, len(values), CHUNK):
                    for key, value in conn.execute(sa.select(pk, expr).where(expr.in_(values[i:i + CHUNK]))):
                        out[key].update(by_value.get(value, []))
        finally:
            if own:
                conn.close()
        return out

    def _exceptions(self, conn, name: str, keys: list[Any]) -> dict[Any, str]:
        """Rows that must be kept (restricted) rather than deleted, with the reason."""
        coll, t = self.store.coll(name), self.store.table(name)
        pk = t.c[coll.primary_key]
        reasons: dict[Any, str] = {}
        tests: list[tuple[str, Any]] = []
        held = self.store.held(name, t)
        if held is not None:
            tests.append(("legal_hold", held))
        if coll.lock is not None:
            lock_col = t.c[coll.lock.at]
            statutory = lock_col.is_not(None)
            if coll.lock.reason:
                statutory = sa.and_(statutory, t.c[coll.lock.reason].like("retention:%"))
            tests.append(("statutory_lock", statutory))
        dependents = self.store._held_dependents(name, t)
        if dependents:
            tests.append(("legal_hold_of_dependents", sa.or_(*dependents)))
        for reason, test in tests:
            for i in range(0, len(keys), CHUNK):
                for key in conn.execute(sa.select(pk).where(pk.in_(keys[i:i + CHUNK]), test)).scalars():
                    reasons.setdefault(key, reason)
        return reasons

    def _restrict(self, conn, name: str, keys: list[Any], reason: str) -> int:
        coll, t = self.store.coll(name), self.store.table(name)
        if coll.lock is None or not keys:
            return 0
        pk = t.c[coll.primary_key]
        values = {coll.lock.at: utcnow()}
        if coll.lock.reason:
            values[coll.lock.reason] = reason[:200]
        n = 0
        for i in range(0, len(keys), CHUNK):
            n += conn.execute(t.update().where(pk.in_(keys[i:i + CHUNK]), t.c[coll.lock.at].is_(None))
                              .values(values)).rowcount
        return n

    def _child_counts(self, conn, name: str, keys: list[Any]) -> dict[Any, dict[str, int]]:
        """Direct dependents per parent key, counted before a delete takes them along."""
        out: dict[Any, dict[str, int]] = defaultdict(dict)
        for child_ref, ref in self.policy.children(self.store.ref(name)):
            c_sys, _, c_name = child_ref.partition(".")
            if c_sys != self.system or ref.on_delete != "delete":
                continue
            child = self.store.table(c_name)
            fk = child.c[ref.column]
            for i in range(0, len(keys), CHUNK):
                for parent, n in conn.execute(sa.select(fk, sa.func.count()).where(fk.in_(keys[i:i + CHUNK]))
                                              .group_by(fk)):
                    out[parent][child_ref] = n
        return out

    # ---- the request -----------------------------------------------------------------
    def act(self, subjects: list[Subject], mode: str, dry_run: bool) -> SystemOutcome:
        """Erase (or restrict) every row of these subjects in this system, children first."""
        outcome = SystemOutcome()
        for s in subjects:
            outcome.per_request[s.request_id]  # every request gets an entry, even with nothing found
        for name in self.identity_collections():
            with self.store.engine.begin() as conn:
                matches = self.match(name, subjects, conn)
                if matches:
                    self.handle(conn, name, matches, mode, dry_run, outcome)
            log.info("%s: %s handled for %d rows", self.store.ref(name), mode, len(matches))
        return outcome

    def handle(self, conn, name: str, matches: dict[Any, set[str]], mode: str, dry_run: bool,
               outcome: SystemOutcome) -> None:
        """Erase or restrict the matched rows of one collection inside ``conn``'s transaction."""
        coll, ref = self.store.coll(name), self.store.ref(name)
        keys = sorted(matches)
        if mode == "restrict":
            already: set[Any] = set()
            if coll.lock is not None:
                t = self.store.table(name)
                pk = t.c[coll.primary_key]
                for i in range(0, len(keys), CHUNK):
                    already |= set(conn.execute(sa.select(pk).where(
                        pk.in_(keys[i:i + CHUNK]), t.c[coll.lock.at].is_not(None))).scalars())
            if not dry_run:
                self._restrict(conn, name, keys, "restriction-request")
            for key, rids in matches.items():
                for rid in rids:
                    outcome.add(rid, ref, "already_restricted" if key in already else "restricted")
            return
        exceptions = self._exceptions(conn, name, keys)
        kept = [k for k in keys if k in exceptions]
        gone = [k for k in keys if k not in exceptions]
        for key in kept:
            for rid in matches[key]:
                outcome.add(rid, ref, f"exception:{exceptions[key]}")
        if not dry_run:
            self._restrict(conn, name, kept, "erasure-exception")
        if coll.erasure == "anonymize":
            if not dry_run and gone:
                t = self.store.table(name)
                pk = t.c[coll.primary_key]
                for i in range(0, len(gone), CHUNK):
                    chunk = gone[i:i + CHUNK]
                    self.store._anonymize(conn, name, t, chunk, pk.in_(chunk), coll.erasure_mask, utcnow())
            for key in gone:
                for rid in matches[key]:
                    outcome.add(rid, ref, "anonymized")
            return
        children = self._child_counts(conn, name, gone)
        for key in gone:
            for rid in matches[key]:
                outcome.add(rid, ref, "deleted")
                for child_ref, n in children.get(key, {}).items():
                    outcome.add(rid, child_ref, "deleted_with_parent", n)
        if not dry_run:
            cascaded: dict[str, int] = {}
            for i in range(0, len(gone), CHUNK):
                self.store._delete_keys(conn, name, gone[i:i + CHUNK], cascaded)
            for target, n in cascaded.items():
                outcome.totals[target] = outcome.totals.get(target, 0) + n

    def remaining(self, subjects: list[Subject], mode: str) -> dict[str, dict[str, int]]:
        """Verification re-scan: per request, rows of the subject still present and not allowed to be."""
        left: dict[str, dict[str, int]] = defaultdict(dict)
        for name in self.identity_collections():
            coll, t = self.store.coll(name), self.store.table(name)
            pk = t.c[coll.primary_key]
            with self.store.engine.connect() as conn:
                matches = self.match(name, subjects, conn)
                if not matches:
                    continue
                keys = sorted(matches)
                allowed: set[Any] = set()
                if coll.lock is not None:
                    # restricted rows are the allowed exceptions (erase) or the goal (restrict)
                    for i in range(0, len(keys), CHUNK):
                        allowed |= set(conn.execute(sa.select(pk).where(
                            pk.in_(keys[i:i + CHUNK]), t.c[coll.lock.at].is_not(None))).scalars())
            for key in keys:
                if key not in allowed:
                    for rid in matches[key]:
                        left[rid][self.store.ref(name)] = left[rid].get(self.store.ref(name), 0) + 1
        return left
