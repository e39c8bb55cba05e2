"""Objects no row references any more (an S3 rule with ``start: {orphaned: last_modified}``;
docs/adr/0013-orphaned-start-event.md).

Such a rule acts only on objects past its period (counted from their upload) that no row of the
collections whose ``references`` point at this one names. The look-up is one query per referencing
collection and listing page (at most 1,000 keys), made right before that page's objects are deleted:
a row that came to name an object after the listing keeps it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from include.retention.errors import RetentionError

# (S3 collection ref, keys) -> the keys some row still references; wired by ``Runtime`` across stores.
Lookup = Callable[[str, list[str]], set[str]]


class S3Orphans:
    """Mixin of ``S3Store``: drop the still-referenced objects from a page an orphan rule classified."""

    referenced: Lookup | None = None

    def unowned(self, collection_name: str, classified: list[tuple[Any, str | None, str]]
                ) -> list[tuple[Any, str | None, str]]:
        """The page with every due object that a row still references marked ``referenced`` (kept)."""
        due = [obj.key for obj, _action, state in classified if state == "due"]
        if not due:
            return classified
        if self.referenced is None:
            raise RetentionError(f"{self.name}: an 'orphaned' rule needs the owners' stores to look keys up "
                                 "(open the store through Runtime); nothing was deleted")
        taken = self.referenced(self.ref(collection_name), due)
        return [(obj, action, "referenced" if state == "due" and obj.key in taken else state)
                for obj, action, state in classified]
