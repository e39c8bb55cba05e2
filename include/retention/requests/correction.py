"""A correction (GDPR Art. 16, ``rectify``) in every system, checked everywhere before anything changes (ADR 0008).

1. ``check``: every collection of every system holding a corrected kind is scanned once, for the request's
   identities and the new values together. Refused when any record the request does not claim already carries a
   new value (it is somebody else's: the correction would merge two people, and an erasure of one would then
   erase the other), or when a new value does not fit a field it would be written to (type, width, character
   set, S3's limits). Refusals name the kind, the system.collection.field and the problem, never a value.
2. ``run``: every SQL system (``RectifiesTogether``) in an open transaction, one per database; they are committed
   only after every SQL system's changes ran without error, so a CHECK constraint, a trigger, a unique index or a
   lost connection in any of them rolls all of them back. Then the systems without transactions (S3), one after
   another: their rewrites cannot be undone, so they come last, once the SQL systems' changes are committed; one
   that stops part way leaves its ledger intent open and the request open, and a retry finishes it. Items under
   legal hold or under a lock that is not the subject's own are kept unchanged and counted as
   ``exception:<reason>``. A ``Journal`` (the flow: registry and ledger) hears per system what happened.
3. ``remaining``: the re-scan; items that still carry an old value and are not exceptions.

Equality is ``include.retention.identity.normalise``'s, as for every other right (ADR 0005).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from include.retention.errors import RetentionError
from include.retention.identity import normalise
from include.retention.masking import keyed_digest
from include.retention.policy import Policy
from include.retention.stores.base import Claims, RectifiesTogether, Store, Subject, SubjectOutcome

MAX_CLAIMED = 1000  # item digests kept in a correction's intent (a ledger entry's details stay small)
PROBE = "\x00new:"  # request id prefix of the pseudo-subjects carrying one new value each (no real id has a NUL)


class CorrectionRefused(RetentionError):
    """A correction that would merge two people or could not be written whole; nothing was changed."""


class CorrectionStopped(RetentionError):
    """A correction that failed when written: rolled back where the stores allow it; the request stays open and a
    retry (after the cause is removed) finishes it."""


class Journal(Protocol):
    """Hears, per system, what a correction did (the flow writes it to the registry and the ledger)."""

    def begin(self, system: str, planned: int) -> None:
        """Before the first change in ``system`` (``planned``: the items claimed there)."""

    def done(self, system: str, outcome: SubjectOutcome) -> None:
        """``system``'s changes are committed (a dry run: counted, nothing written)."""

    def rolled_back(self, system: str, why: str) -> None:
        """None of ``system``'s changes stays (``why``: the system that failed and the error's class and code)."""

    def unknown(self, system: str, why: str) -> None:
        """``system`` stopped part way or its commit failed: some of its changes may stay; a retry finishes it."""


def cause(exc: BaseException) -> str:
    """A failure's class and the database's error code, never its message (a database quotes the failing row)."""
    orig = getattr(exc, "orig", None) or exc
    code = getattr(orig, "pgcode", None) or getattr(orig, "sqlite_errorname", None)
    if code is None and orig.args and isinstance(orig.args[0], int):
        code = orig.args[0]  # MariaDB's error number
    return type(orig).__name__ + (f" {code}" if code else "")


def _close(conn: Any, *, commit: bool) -> None:
    """End ``conn``'s transaction (commit only when asked) and close it; raises only a failed commit."""
    try:
        if commit:
            conn.commit()
        else:
            with contextlib.suppress(Exception):  # a lost connection: the database rolls the transaction back
                conn.rollback()
    finally:
        with contextlib.suppress(Exception):
            conn.close()


@dataclass
class Correction:
    """One request's correction: ``new_values`` (kind -> new value as given) replace the subjects' old values."""

    policy: Policy
    store_of: Callable[[str], Store]
    systems: list[str]
    subjects: list[Subject]
    new_values: dict[str, str]
    # systems an earlier attempt may have changed in part (its ledger intent is open), each with the digests of the
    # items that attempt claimed (``claimed_digests``, kept in its intent): an item there that carries the new value
    # and no old one is the person's own, already corrected, only if it is one of those; any other is somebody
    # else's (the correction would merge two people) and refuses, as in a system not resumed
    resumed: dict[str, frozenset[str]] = field(default_factory=dict)
    key: bytes = b""  # the digests' key (the ledger's)
    # system -> collection -> the items the request claims there (filled by ``check``)
    claims: dict[str, dict[str, Claims]] = field(default_factory=dict)

    def collections(self, system: str) -> list[str]:
        """The collections of ``system`` that hold a corrected kind, in the store's order."""
        store = self.store_of(system)
        return [name for name in store.subject_collections()
                if set(self.new_values) & set(self.policy.collection(store.ref(name)).identities)]

    def check(self) -> None:
        """Find the request's items; raise ``CorrectionRefused`` if the correction may not or cannot be made."""
        probes = []
        for kind, value in sorted(self.new_values.items()):
            normalised = normalise(kind, value)
            if normalised is None:
                raise CorrectionRefused(f"rectify refused: the new {kind} is empty; nothing was changed")
            probes.append(Subject(PROBE + kind, {kind: normalised}))
        taken: dict[str, dict[str, int]] = {}  # kind -> collection ref -> records of somebody else
        for system in self.systems:
            store = self.store_of(system)
            per: dict[str, Claims] = {}
            for name in self.collections(system):
                mine = Claims()
                for key, rids in store.find(name, [*self.subjects, *probes]).items():
                    own = [rid for rid in rids if not rid.startswith(PROBE)]
                    for rid in own:
                        mine.add(key, rid)
                    # a new value and none of the request's identities: somebody else's, unless resumed and claimed
                    if not own and self.item_digest(system, store.ref(name), key) not in self.resumed.get(system, ()):
                        for rid in rids:
                            kind = rid[len(PROBE):]
                            counts = taken.setdefault(kind, {})
                            counts[store.ref(name)] = counts.get(store.ref(name), 0) + 1
                per[name] = mine
            self.claims[system] = per
        if taken:
            raise CorrectionRefused("rectify refused: " + "; ".join(
                f"the new {kind} is already an identity of {sum(where.values())} record(s) that are not this "
                f"person's ({', '.join(f'{ref}: {n}' for ref, n in sorted(where.items()))})"
                for kind, where in sorted(taken.items())) + "; nothing was changed")
        problems = [problem for system in self.systems for name, mine in self.claims[system].items() if mine
                    for problem in self.store_of(system).rectify_problems(name, mine, self.subjects, self.new_values)]
        if problems:
            raise CorrectionRefused("rectify refused: " + "; ".join(problems) + "; nothing was changed")

    def item_digest(self, system: str, ref: str, item: Any) -> str:
        """A keyed digest of one item (an earlier attempt's claims are compared by it; never the key in clear)."""
        return keyed_digest(self.key, f"{system}\x00{ref}\x00{item!r}")[:32]

    def claimed_digests(self, system: str) -> list[str] | None:
        """The digests of the items the request claims in ``system`` (after ``check``), for its intent; None when
        there are more than ``MAX_CLAIMED`` (a resumed attempt then takes every item carrying the new value and no
        old one for somebody else's: it refuses rather than risk merging two people)."""
        store = self.store_of(system)
        out = sorted({self.item_digest(system, store.ref(name), item)
                      for name, mine in self.claims.get(system, {}).items() for item in mine})
        return out if len(out) <= MAX_CLAIMED else None

    def apply(self, system: str, *, dry_run: bool) -> SubjectOutcome:
        """Correct the request's items in ``system`` (all its collections in one transaction where it has them)."""
        if system not in self.claims:
            raise RetentionError(f"{system}: a correction is applied only after its check")
        return self.store_of(system).rectify_all(self.claims[system], self.subjects, self.new_values,
                                                 dry_run=dry_run)

    def planned(self, system: str) -> int:
        """Items the request claims in ``system`` (after ``check``)."""
        return sum(len(found) for found in self.claims.get(system, {}).values())

    def run(self, journal: Journal, *, dry_run: bool) -> None:
        """Apply the checked correction: every SQL system together (all or nothing), then the others (S3) one by
        one; ``journal`` hears each system's outcome. Raises ``CorrectionStopped`` when a system failed."""
        together = [s for s in self.systems if isinstance(self.store_of(s), RectifiesTogether)]
        self._together(together, journal, dry_run)
        for system in self.systems:
            if system in together:
                continue
            journal.begin(system, self.planned(system))
            try:
                outcome = self.apply(system, dry_run=dry_run)
            except Exception as exc:
                journal.unknown(system, f"stopped part way ({cause(exc)}); the SQL systems are corrected")
                raise
            journal.done(system, outcome)

    def _together(self, systems: list[str], journal: Journal, dry_run: bool) -> None:
        """Every system of ``systems`` in an open transaction (one per database), committed after all of them ran."""
        if system := next((s for s in systems if s not in self.claims), None):
            raise RetentionError(f"{system}: a correction is applied only after its check")
        for system in systems:  # intents before any transaction opens (the ledger may share a database file)
            journal.begin(system, self.planned(system))
        opened: dict[str, Any] = {}  # database -> its connection, in the order opened
        database: dict[str, str] = {}  # system -> its database (systems with items only)
        outcomes = {system: SubjectOutcome() for system in systems}
        current = None
        try:
            for current in systems:
                if not any(self.claims[current].values()):
                    continue  # nothing of the person here: no transaction
                store: Any = self.store_of(current)
                db = database[current] = store.database()
                if db not in opened:
                    opened[db] = store.begin_correction()
                outcomes[current] = store.rectify_in(opened[db], self.claims[current], self.subjects,
                                                     self.new_values, dry_run=dry_run)
        except Exception as exc:
            for conn in opened.values():
                _close(conn, commit=False)
            why = f"{current} failed when written ({cause(exc)}); every SQL system was rolled back"
            for system in systems:
                journal.rolled_back(system, why)
            raise CorrectionStopped(f"rectify rolled back: {why}; nothing was changed") from None
        except BaseException:
            for conn in opened.values():
                _close(conn, commit=False)
            raise
        self._commit(systems, opened, database, outcomes, journal, dry_run)

    @staticmethod
    def _commit(systems: list[str], opened: dict[str, Any], database: dict[str, str],
                outcomes: dict[str, SubjectOutcome], journal: Journal, dry_run: bool) -> None:
        """Commit database after database (a dry run rolls back); tell the journal what each system's outcome is."""
        committed: set[str] = set()
        failed: tuple[str, str] | None = None  # database, cause
        for db, conn in opened.items():
            try:
                _close(conn, commit=failed is None and not dry_run)  # after a failed commit: rolled back
            except Exception as exc:
                failed = (db, cause(exc))
            else:
                if failed is None:
                    committed.add(db)
        for system in systems:
            db = database.get(system)
            if db is None or db in committed:
                journal.done(system, outcomes[system])
            elif failed is not None and db == failed[0]:
                journal.unknown(system, f"its commit failed ({failed[1]}); whether it committed is unknown")
            else:
                why = failed[1] if failed else "?"
                journal.rolled_back(system, f"not committed: an earlier database's commit failed ({why})")
        if failed is not None:
            raise CorrectionStopped(f"rectify stopped: a commit failed ({failed[1]}); a retry finishes it")

    def remaining(self, system: str) -> int:
        """Items of ``system`` that still carry an old value of a corrected kind and are not kept as exceptions."""
        old = [Subject(s.request_id, {k: v for k, v in s.identities.items() if k in self.new_values})
               for s in self.subjects]
        old = [s for s in old if s.identities]
        if not old:
            return 0
        store = self.store_of(system)
        return sum(n for name in self.collections(system) for n in store.remaining(name, old, "rectify").values())
