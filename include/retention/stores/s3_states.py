"""Which stage an object of an S3 collection is in for a rule: its start event, holds and locks, and the walk over a
collection's listing that classifies each page (a collaborator of ``S3Store``)."""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from include.retention import keytemplate
from include.retention.policy import Collection, Rule, cutoff
from include.retention.stores.s3_objects import (
    ANONYMIZED_META,
    LOCK_TAG,
    PREFETCH_THREADS,
    UTC,
    S3Core,
    S3Object,
    parse_date,
    tag_matches,
)

log = logging.getLogger(__name__)


class S3States:
    """Classifies objects for a rule (``classify``, ``walk``); reads objects' heads and tags through the store, a
    page at a time and in parallel (``prefetch``)."""

    def __init__(self, store: S3Core):
        self.store = store
        self.pool: ThreadPoolExecutor | None = None
        self.bands: tuple[Any, ...] = (None, None, [])  # (rule, now, [(cutoff, action), ...]) of ``action``

    def start(self, bucket: str, rule: Rule, obj: S3Object, match: re.Match[str] | None) -> dt.datetime | None:
        basis = rule.start.basis
        if basis == "key_date":
            return keytemplate.key_date(match) if match else None
        if basis == "metadata":
            if not obj.version_id and not obj.live:
                return None  # only delete markers: no object to read metadata from
            head = self.store.head(bucket, obj) or {}
            meta = {k.lower(): v for k, v in head.get("Metadata", {}).items()}
            return parse_date(meta.get((rule.start.name or "").lower()))
        if basis == "tag":
            if not obj.version_id and not obj.live:
                return None
            return parse_date((self.store.tags(bucket, obj) or {}).get(rule.start.name or ""))
        lm = obj.last_modified
        return lm if lm.tzinfo else lm.replace(tzinfo=UTC)

    def held(self, bucket: str, coll: Collection, obj: S3Object, now: dt.datetime) -> bool:
        """Legal hold: a tag condition of the collection, or S3's own legal hold / retention we did not set."""
        if not obj.version_id and not obj.live:
            return False  # only delete markers: nothing to hold
        if coll.legal_hold:
            tags = self.store.tags(bucket, obj) or {}
            if any(tag_matches(c, tags) for c in coll.legal_hold):
                return True
        if self.store.bucket_info(bucket).object_lock:
            head = self.store.head(bucket, obj) or {}
            if head.get("ObjectLockLegalHoldStatus") == "ON" and LOCK_TAG not in (self.store.tags(bucket, obj) or {}):
                return True
            until = head.get("ObjectLockRetainUntilDate")
            if until is not None and until > now:
                return True
        return False

    def done(self, bucket: str, action: str, obj: S3Object) -> bool:
        if action == "lock":
            if LOCK_TAG not in (self.store.tags(bucket, obj) or {}):
                return False
            # Under Object Lock a lock is complete only with the legal hold (a failed hold is retried).
            return not self.store.bucket_info(bucket).object_lock or (
                (self.store.head(bucket, obj) or {}).get("ObjectLockLegalHoldStatus") == "ON")
        if action == "anonymize":
            meta = (self.store.head(bucket, obj) or {}).get("Metadata", {})
            return any(k.lower() == ANONYMIZED_META for k in meta)
        return False

    def action(self, rule: Rule, start: dt.datetime, now: dt.datetime) -> str | None:
        # Stages are ordered by period; the strongest one whose period has ended applies. The cutoffs are
        # computed once per rule and instant, not per object (parsing the periods was a tenth of a sweep).
        if self.bands[0] is not rule or self.bands[1] != now:
            self.bands = (rule, now, [(cutoff(now, s, rule.start), s.action) for s in reversed(rule.stages)])
        return next((action for edge, action in self.bands[2] if start < edge), None)

    def classify(self, collection_name: str, rule: Rule, obj: S3Object, now: dt.datetime,
                 pattern: re.Pattern[str] | None, only: str | None = None) -> tuple[str | None, str]:
        """(stage action, state) of one object; state is out / kept / no_date / held / done / due.

        With ``only``, objects due for another stage are not examined further (state ``other``).
        """
        coll = self.store.coll(collection_name)
        match = pattern.fullmatch(obj.key) if pattern else None
        if pattern and not match:
            return None, "out"
        start = self.start(coll.bucket, rule, obj, match)
        if obj.gone:
            return None, "kept"
        if start is None:
            return None, "no_date"
        action = self.action(rule, start, now)
        if action is None or (not obj.live and action != "delete"):
            return action, "kept"
        if only and action != only:
            return action, "other"
        if self.held(coll.bucket, coll, obj, now):
            return action, "held"
        if self.done(coll.bucket, action, obj):
            return action, "done"
        return action, ("kept" if obj.gone else "due")

    def prefetch(self, coll: Collection, rule: Rule, page: list[S3Object], now: dt.datetime,
                 pattern: re.Pattern[str] | None, only: str | None) -> None:
        """Fetch the per-object facts ``classify`` will need for a page, many requests at a time.

        S3 has no batch HEAD or tagging call; one request after another would make a sweep of
        a large prefix take hours, so up to ``PREFETCH_THREADS`` run in parallel.
        """
        bucket, basis = coll.bucket, rule.start.basis
        locked_bucket = self.store.bucket_info(bucket).object_lock
        scoped = [(o, pattern.fullmatch(o.key) if pattern else None) for o in page]
        scoped = [(o, m) for o, m in scoped if m or not pattern]
        if basis in ("metadata", "tag"):  # the date itself is per-object
            self.fetch(bucket, [o for o, _ in scoped if o.version_id or o.live], head=basis == "metadata",
                       tags=basis == "tag")
        wanted: dict[str, list[S3Object]] = {"head": [], "tags": []}
        for obj, match in scoped:
            start = self.start(bucket, rule, obj, match)  # cached or free by now
            action = None if start is None or obj.gone else self.action(rule, start, now)
            if action is None or (only and action != only) or (not obj.live and action != "delete"):
                continue
            # (An anonymize rewrite reads tags too, but only for the few objects not done yet: lazily.)
            if coll.legal_hold or locked_bucket or action == "lock":
                wanted["tags"].append(obj)
            if locked_bucket or action == "anonymize":
                wanted["head"].append(obj)
        self.fetch(bucket, wanted["head"], head=True)
        self.fetch(bucket, wanted["tags"], tags=True)

    def fetch(self, bucket: str, objs: list[S3Object], *, head: bool = False, tags: bool = False) -> None:
        todo = [(self.store.head if head else self.store.tags, o) for o in objs
                if not o.gone and ((head and o.head is None) or (tags and o.tags is None))]
        if len(todo) < 2:
            return
        if self.pool is None:
            self.pool = ThreadPoolExecutor(max_workers=PREFETCH_THREADS, thread_name_prefix=f"s3-{self.store.name}")
        for future in [self.pool.submit(fn, bucket, o) for fn, o in todo]:
            future.result()  # re-raises StoreUnavailable from the worker

    def walk(self, collection_name: str, rule: Rule, now: dt.datetime, only: str | None = None):
        for page in self.walk_pages(collection_name, rule, now, only):
            yield from page

    def walk_pages(self, collection_name: str, rule: Rule, now: dt.datetime, only: str | None = None,
                   pages: Iterator[list[S3Object]] | None = None):
        """(object, action, state) per object, one listing page at a time (or one page of ``pages``, a plan's
        spool); an orphan rule's due objects that a row still references are ``referenced`` (looked up once per
        page)."""
        coll = self.store.coll(collection_name)
        pattern = keytemplate.regex(coll.key_template) if coll.key_template else None
        for page in pages if pages is not None else self.store.objects(coll.bucket, self.store.prefix(coll)):
            self.prefetch(coll, rule, page, now, pattern, only)
            classified = [(obj, *self.classify(collection_name, rule, obj, now, pattern, only)) for obj in page]
            orphans = rule.start.orphaned is not None
            yield self.store.row_owned.unowned(collection_name, classified) if orphans else classified
