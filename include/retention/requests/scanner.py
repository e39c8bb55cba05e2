"""Subject requests in one system: find a set of subjects' items, erase or restrict them, verify.

Kind-agnostic orchestration over the store interface (``Store.find`` / ``erase`` / ``restrict`` /
``remaining``): collections children first (a row's dependents and owned objects go with it,
inside the store), one ``find`` per collection for many subjects at once, exceptions and
counts per request. Which item belongs to whom, and what must be kept, is the store's to judge
(ADR 0005); nothing here looks at a table or a bucket.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from include.retention.errors import RetentionError
from include.retention.policy import Policy
from include.retention.stores.base import Store, Subject, SubjectOutcome, collection_order

__all__ = ["MODES", "Subject", "SubjectOutcome", "SubjectScanner", "check_request_kinds", "collection_order"]

log = logging.getLogger(__name__)

MODES = ("erase", "restrict")
# Backwards-compatible name of the per-system outcome.
SystemOutcome = SubjectOutcome


def check_request_kinds(policy: Policy, kinds: set[str] | list[str]) -> None:
    """Refuse identities the data map cannot search: a request by them could never find anything,
    and its receipt would claim "nothing left" for what was never looked at."""
    unknown = sorted(set(kinds) - set(policy.request_kinds()))
    if unknown:
        raise RetentionError(f"no collection of the data map holds {', '.join(unknown)}; searchable: "
                             f"{', '.join(policy.request_kinds())}")


class SubjectScanner:
    """Finds and acts on the items of given subjects in one system (any kind of store)."""

    def __init__(self, policy: Policy, store: Store):
        self.policy = policy
        self.store = store
        self.system = store.name

    def identity_collections(self) -> list[str]:
        return self.store.subject_collections()

    def searched(self) -> dict[str, list[str]]:
        """Per collection ref, the identity kinds looked for (the receipt says what was, and was not, searched)."""
        return self.store.searched_kinds()

    def act(self, subjects: list[Subject], mode: str, dry_run: bool,
            on_collection: Callable[[SubjectOutcome], None] | None = None) -> SubjectOutcome:
        """Erase (or restrict) every item of these subjects in this system, children first.

        ``on_collection`` gets each collection's outcome as soon as it is done, so a try that fails in a
        later collection does not lose the counts of what it already changed (a retry finds those gone).
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        outcome = SubjectOutcome()
        for s in subjects:
            outcome.per_request[s.request_id]  # every request gets an entry, even with nothing found
        for name in self.identity_collections():
            claims = self.store.find(name, subjects)
            if claims:
                operation = self.store.erase if mode == "erase" else self.store.restrict
                part = operation(name, claims, subjects, dry_run=dry_run)
                outcome.merge(part)
                if on_collection is not None:
                    on_collection(part)
            log.info("%s: %s%s handled for %d item(s)", self.store.ref(name), mode, " (dry run)" if dry_run else "",
                     len(claims))
        return outcome

    def remaining(self, subjects: list[Subject], mode: str) -> dict[str, dict[str, int]]:
        """Verification re-scan: per request, per collection, items still present and not allowed to be."""
        left: dict[str, dict[str, int]] = {}
        for name in self.identity_collections():
            for rid, n in self.store.remaining(name, subjects, mode).items():
                if n:
                    left.setdefault(rid, {})[self.store.ref(name)] = n
        return left
