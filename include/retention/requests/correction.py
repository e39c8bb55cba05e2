"""A correction (GDPR Art. 16, ``rectify``) in every system, checked everywhere before anything changes (ADR 0008).

1. ``check``: every collection of every system holding a corrected kind is scanned once, for the request's
   identities and the new values together. Refused when any record the request does not claim already carries a
   new value (it is somebody else's: the correction would merge two people, and an erasure of one would then
   erase the other), or when a new value does not fit a field it would be written to (type, width, character
   set, S3's limits). Refusals name the kind, the system.collection.field and the problem, never a value.
2. ``apply``: one system at a time; a SQL system's collections in one transaction (every change or none). Items
   under legal hold or under a lock that is not the subject's own are kept unchanged and counted as
   ``exception:<reason>``.
3. ``remaining``: the re-scan; items that still carry an old value and are not exceptions.

Equality is ``include.retention.identity.normalise``'s, as for every other right (ADR 0005).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from include.retention.errors import RetentionError
from include.retention.identity import normalise
from include.retention.policy import Policy
from include.retention.stores.base import Claims, Store, Subject, SubjectOutcome

PROBE = "\x00new:"  # request id prefix of the pseudo-subjects carrying one new value each (no real id has a NUL)


class CorrectionRefused(RetentionError):
    """A correction that would merge two people or could not be written whole; nothing was changed."""


@dataclass
class Correction:
    """One request's correction: ``new_values`` (kind -> new value as given) replace the subjects' old values."""

    policy: Policy
    store_of: Callable[[str], Store]
    systems: list[str]
    subjects: list[Subject]
    new_values: dict[str, str]
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
                    if not own:  # carries a new value and none of the request's identities
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

    def apply(self, system: str, *, dry_run: bool) -> SubjectOutcome:
        """Correct the request's items in ``system`` (all its collections in one transaction where it has them)."""
        if system not in self.claims:
            raise RetentionError(f"{system}: a correction is applied only after its check")
        return self.store_of(system).rectify_all(self.claims[system], self.subjects, self.new_values,
                                                 dry_run=dry_run)

    def remaining(self, system: str) -> int:
        """Items of ``system`` that still carry an old value of a corrected kind and are not kept as exceptions."""
        old = [Subject(s.request_id, {k: v for k, v in s.identities.items() if k in self.new_values})
               for s in self.subjects]
        old = [s for s in old if s.identities]
        if not old:
            return 0
        store = self.store_of(system)
        return sum(n for name in self.collections(system) for n in store.remaining(name, old, "rectify").values())
