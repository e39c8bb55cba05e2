"""Objects rows own: deleted with their rows, found for the policy diff; and objects no row references any more
(an S3 rule with ``start: {orphaned: last_modified}``;
docs/adr/0013-orphaned-start-event.md).

Such a rule acts only on objects past its period (counted from their upload) that no row of the
collections whose ``references`` point at this one names. The look-up is one query per referencing
collection and listing page (at most 1,000 keys), made right before that page's objects are deleted:
a row that came to name an object after the listing keeps it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterator
from typing import Any

from include.retention.errors import RetentionError
from include.retention.policy import Reference
from include.retention.stores.s3_objects import (
    MAX_DELETE,
    UTC,
    OwnedKeys,
    S3Core,
    S3Object,
    owned_key,
)
from include.retention.stores.s3_writes import Purger
from include.retention.values import CollectionRef

log = logging.getLogger(__name__)

# (S3 collection ref, keys) -> the keys some row still references; wired by ``Runtime`` across stores.
Lookup = Callable[[str, list[str]], set[str]]


class S3Owned:
    """Objects other systems' rows own, and the page of an orphan rule with the still-referenced objects kept (a
    collaborator of ``S3Store``)."""

    def __init__(self, store: S3Core):
        self.store = store

    def unowned(self, collection_name: str, classified: list[tuple[Any, str | None, str]]
                ) -> list[tuple[Any, str | None, str]]:
        """The page with every due object that a row still references marked ``referenced`` (kept)."""
        due = [obj.key for obj, _action, state in classified if state == "due"]
        if not due:
            return classified
        if self.store.referenced is None:
            raise RetentionError(f"{self.store.name}: an 'orphaned' rule needs the owners' stores to look keys up "
                                 "(open the store through Runtime); nothing was deleted")
        taken = self.store.referenced(self.store.ref(collection_name), due)
        return [(obj, action, "referenced" if state == "due" and obj.key in taken else state)
                for obj, action, state in classified]

    def delete_referenced(self, coll_ref: str, reference: Reference, rows: list[dict[str, Any]]) -> int:
        """Delete the objects (all versions) that ``rows`` of ``coll_ref`` reference; return how many.

        ``reference.key_template`` filled from a row names an exact key, or a prefix when it ends
        in ``/`` or ``...``; otherwise ``reference.column`` holds the exact key. Objects under a
        legal hold stay (and are counted in the log); keys outside the collection's prefix are refused.

        The whole batch of rows is found with one forward listing (``owned_objects``), not one per row;
        tags and HEADs are read only where a legal-hold condition or Object Lock needs them, a page at a time.
        """
        target = CollectionRef.parse(reference.to).collection
        coll = self.store.coll(target)
        bucket, base = coll.bucket, self.store.prefix(coll)
        now = dt.datetime.now(UTC)
        purger = Purger(self.store, bucket, MAX_DELETE, None)
        held = outside = 0
        wanted: list[tuple[str, bool]] = []
        for row in rows:
            key, is_prefix = owned_key(reference, row)
            if key is None:
                continue
            if not key.startswith(base):
                outside += 1
                continue
            wanted.append((key, is_prefix))
        locked_bucket = self.store.bucket_info(bucket).object_lock
        for page in self.owned_objects(bucket, OwnedKeys(wanted)):
            holdable = [o for o in page if o.version_id or o.live]
            if coll.legal_hold or locked_bucket:
                self.store.states.fetch(bucket, holdable, tags=True)
            if locked_bucket:
                self.store.states.fetch(bucket, holdable, head=True)
            for obj in page:
                if self.store.states.held(bucket, coll, obj, now):
                    held += 1
                    continue
                self.store.writes.release_own_hold(bucket, obj)
                purger.add(obj)
        purger.flush()
        if held or outside:
            log.warning("%s: %d objects referenced from %s kept under legal hold, %d references outside prefix "
                        "of %s ignored", self.store.name, held, coll_ref, outside, reference.to)
        log.info("%s: deleted %d objects (%d versions) owned by %d rows of %s", self.store.name, purger.objects,
                 purger.versions, len(rows), coll_ref)
        return purger.objects

    def referenced_due(self, reference: Reference, rows: list[dict[str, Any]]) -> list[Any]:
        """The keys ``delete_referenced`` would delete for ``rows`` (inside the prefix, not held), one listing."""
        coll = self.store.coll(CollectionRef.parse(reference.to).collection)
        bucket, base = coll.bucket, self.store.prefix(coll)
        now = dt.datetime.now(UTC)
        wanted = [(key, is_prefix) for key, is_prefix in (owned_key(reference, row) for row in rows)
                  if key is not None and key.startswith(base)]
        if not wanted:
            return []
        locked_bucket = self.store.bucket_info(bucket).object_lock
        out: list[Any] = []
        for page in self.owned_objects(bucket, OwnedKeys(wanted)):
            holdable = [o for o in page if o.version_id or o.live]
            if coll.legal_hold or locked_bucket:
                self.store.states.fetch(bucket, holdable, tags=True)
            if locked_bucket:
                self.store.states.fetch(bucket, holdable, head=True)
            out += [obj.key for obj in page if not self.store.states.held(bucket, coll, obj, now)]
        return out

    def owned_objects(self, bucket: str, wanted: OwnedKeys) -> Iterator[list[S3Object]]:
        """The objects of ``wanted``, a page at a time, from one forward listing of their common prefix.

        When the next wanted key lies beyond a page, the listing jumps there (a new request starting just
        before it) instead of paging through the keys in between: at most one request per wanted key, and
        at most one per 1,000 keys between the first and the last wanted one plus one per jump.
        In a versioned bucket a wanted key the listing did not show is listed once more on its own, without a
        marker: moto 5 drops the first version after a KeyMarker (a key with one version vanishes from the
        page); on S3 these are keys that do not exist (one request each).
        """
        yield from self.owned_listing(bucket, wanted)
        for key, is_prefix in wanted.unseen() if self.store.bucket_info(bucket).versioned else []:
            own = [obj for page in self.store.objects(bucket, key) for obj in page if is_prefix or obj.key == key]
            if own:
                yield own

    def owned_listing(self, bucket: str, wanted: OwnedKeys) -> Iterator[list[S3Object]]:
        prefix = wanted.common_prefix()
        while not wanted.done():
            jumped = False
            for page in self.store.objects(bucket, prefix, after=wanted.seek(), size=wanted.page_size):
                wanted.listed(sum(len(obj.versions) or 1 for obj in page))
                found = [obj for obj in page if wanted.match(obj.key)]
                if found:
                    yield found
                if wanted.done():
                    return
                if page.more and page and page[-1].key < wanted.seek():
                    jumped = True  # the next wanted key is further on than the next page would start
                    break
            if not jumped:
                return
