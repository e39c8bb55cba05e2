"""The S3 store: object retention, lock, log anonymization and deletion through boto3.

A collection is a bucket plus a prefix, optionally with a key template that names the
parts of a key (``cvs/{applicant_id}/...``, ``logs/{yyyy}/{mm}/{dd}/...``); the template
is matched against the whole key, ``...`` matches any rest. Listing is paginated and
handled one page (at most 1,000 keys) at a time, so memory never holds a bucket.

Design decisions (see also the README of the data map):

- **Delete** uses DeleteObjects with at most 1,000 entries per request. In a versioned
  bucket every version and delete marker of the object goes, so nothing is recoverable;
  a key whose current version is a delete marker but older versions remain is purged
  by the delete stage too. Per-key errors of a response are recorded (what did go is
  in the ledger) and then raised as ``ObjectsNotDeleted``; they are never swallowed.
- **Lock** (restriction, Art. 18) always writes the tag ``retention-lock=<reason>@<date>``,
  which the rest of the sweep and the company's jobs read (``is_locked``). Where the
  bucket has Object Lock, the object version also gets a legal hold, which S3 itself
  enforces. Without Object Lock the documented equivalent is a bucket policy that denies
  reads of tagged objects to everyone but the retention role::

      {"Effect": "Deny", "NotPrincipal": {"AWS": "<retention role arn>"},
       "Action": ["s3:GetObject", "s3:GetObjectVersion"], "Resource": "arn:aws:s3:::<bucket>/*",
       "Condition": {"StringLike": {"s3:ExistingObjectTag/retention-lock": "*"}}}

  A later delete stage lifts its own legal hold before deleting; a legal hold set by
  anyone else (no ``retention-lock`` tag) or an Object Lock retention date in the future
  is a legal hold this store never overrides.
- **Legal-hold conditions** of an S3 collection test object tags: a condition's
  ``column`` is a tag name (``{column: legal-hold, equals: "true"}``).
- **Anonymize** rewrites a text object line by line with the stage's masking strategies
  (``truncate_ip``), streaming from GetObject into a multipart upload (or one PutObject
  if it fits in one part), and replaces the object only when every byte was read and the
  upload completed. The new object carries the metadata ``retention-anonymized=<date>``
  (written atomically with the content), so the next run skips it; in a versioned bucket
  the older versions, which still hold full addresses, are deleted afterwards.
- Ledger entries and logs carry keyed digests of keys and counts, never keys: keys can
  hold names and e-mail addresses. Errors name the system, bucket and endpoint only.

This module imports nothing from Airflow.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from botocore.exceptions import BotoCoreError, ClientError

from include.retention import keytemplate
from include.retention.errors import SchemaMismatch, StoreUnavailable
from include.retention.masking import STRATEGIES, keyed_digest
from include.retention.policy import Collection, Policy, Reference, Rule, Stage, cutoff
from include.retention.stores.base import Recorder, RulePlan, StageResult, Store, begin_record, end_record
from include.retention.stores.s3_objects import (
    _TAG_SAFE,
    _UTC,
    ANONYMIZED_META,
    CHUNK,
    LOCK_TAG,
    MAX_DELETE,
    MAX_LINE,
    PART_SIZE,
    PREFETCH_THREADS,
    BucketInfo,
    ObjectsNotDeleted,
    OwnedKeys,
    Page,
    S3Object,
    make_client,
    owned_key,
    parse_date,
    tag_matches,
)
from include.retention.stores.s3_orphans import S3Orphans
from include.retention.stores.s3_record_store import S3Records
from include.retention.stores.s3_spool import Spool
from include.retention.stores.s3_writes import Purger, Upload, _safe_cut
from include.retention.values import CollectionRef

if TYPE_CHECKING:
    from include.retention.connections import ConnInfo

__all__ = ["ANONYMIZED_META", "LOCK_TAG", "ObjectsNotDeleted", "S3Store", "make_client", "owned_key"]

log = logging.getLogger(__name__)


class S3Store(S3Orphans, S3Records, Store):
    kind = "s3"

    def __init__(self, name: str, policy: Policy, client: Any, *, key: bytes = b"", endpoint: str | None = None,
                 part_size: int = PART_SIZE):
        super().__init__(name, policy)
        self.client = client
        self.key = key
        self.endpoint = endpoint or client.meta.endpoint_url
        self.part_size = part_size
        self._buckets: dict[str, BucketInfo] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._bands: tuple[Any, ...] = (None, None, [])  # (rule, now, [(cutoff, action), ...]) of _action
        self._spool: Spool | None = None  # the last plan's due objects, for its delete stage (s3_spool)

    @classmethod
    def from_conn(cls, name: str, policy: Policy, info: ConnInfo, *, key: bytes = b"", **kwargs: Any) -> S3Store:
        """Build from an Airflow ``aws`` connection (see ``make_client``)."""
        client, endpoint = make_client(info)
        return cls(name, policy, client, key=key, endpoint=endpoint, **kwargs)

    # ---- calls ----------------------------------------------------------------------------
    def _fail(self, operation: str, exc: Exception) -> StoreUnavailable:
        # Never str(exc): botocore puts the request URL, and so the object key, into some messages.
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = err.get("Code", "error")
            return StoreUnavailable(
                f"{self.name}: S3 {operation} at {self.endpoint} failed with {code} (HTTP {status})")
        return StoreUnavailable(
            f"{self.name}: S3 endpoint {self.endpoint} is unreachable or failed during {operation} "
            f"({type(exc).__name__})")

    def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        try:
            return getattr(self.client, operation)(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(operation, exc) from None

    def _pages(self, operation: str, size: Callable[[], int] | None = None, **kwargs: Any
               ) -> Iterator[dict[str, Any]]:
        """The pages of a listing; with ``size``, each request asks for ``size()`` entries (at most 1,000)."""
        if size is not None:
            yield from self._sized_pages(operation, size, kwargs)
            return
        pages = iter(self.client.get_paginator(operation).paginate(**kwargs, PaginationConfig={"PageSize": 1000}))
        while True:
            try:
                page = next(pages)
            except StopIteration:
                return
            except (ClientError, BotoCoreError) as exc:
                raise self._fail(operation, exc) from None
            yield page

    def _sized_pages(self, operation: str, size: Callable[[], int], params: dict[str, Any]
                     ) -> Iterator[dict[str, Any]]:
        # What the paginator does, with the page size chosen again before every request.
        params = dict(params)
        while True:
            page = self._call(operation, **params, MaxKeys=max(1, min(size(), 1000)))
            yield page
            if not page.get("IsTruncated"):
                return
            if operation == "list_objects_v2":
                params["ContinuationToken"] = page["NextContinuationToken"]
            else:
                params["KeyMarker"], params["VersionIdMarker"] = page["NextKeyMarker"], page["NextVersionIdMarker"]

    @staticmethod
    def _missing(exc: ClientError) -> bool:
        code = exc.response.get("Error", {}).get("Code", "")
        return code in ("404", "NoSuchKey", "NoSuchVersion", "405", "MethodNotAllowed")

    def digest(self, keys: list[str]) -> str:
        """Keyed digest of a batch of object keys: proves which objects without naming them."""
        return keyed_digest(self.key, "\n".join(keys))

    def close(self) -> None:
        self.release_plan()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self.client.close()

    # ---- schema ---------------------------------------------------------------------------
    def coll(self, name: str) -> Collection:
        return self.policy.systems[self.name].collections[name]

    @staticmethod
    def prefix(coll: Collection) -> str:
        if coll.prefix is not None:
            return coll.prefix
        return keytemplate.literal_head(coll.key_template) if coll.key_template else ""

    def bucket_info(self, bucket: str) -> BucketInfo:
        if bucket not in self._buckets:
            status = self._call("get_bucket_versioning", Bucket=bucket).get("Status")
            try:
                conf = self.client.get_object_lock_configuration(Bucket=bucket)
                locked = conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ObjectLockConfigurationNotFoundError":
                    raise self._fail("GetObjectLockConfiguration", exc) from None
                locked = False
            except BotoCoreError as exc:
                raise self._fail("GetObjectLockConfiguration", exc) from None
            # A suspended bucket still holds old versions: treat it as versioned.
            self._buckets[bucket] = BucketInfo(versioned=status in ("Enabled", "Suspended"), object_lock=locked)
        return self._buckets[bucket]

    def check(self, collection_name: str) -> None:
        coll = self.coll(collection_name)
        try:
            self.client.head_bucket(Bucket=coll.bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchBucket"):
                raise SchemaMismatch(f"{self.name}.{collection_name}: bucket {coll.bucket!r} does not exist "
                                     f"at {self.endpoint}") from None
            raise self._fail("HeadBucket", exc) from None
        except BotoCoreError as exc:
            raise self._fail("HeadBucket", exc) from None
        self.bucket_info(coll.bucket)

    # ---- listing --------------------------------------------------------------------------
    def objects(self, bucket: str, prefix: str, after: str = "", size: Callable[[], int] | None = None
                ) -> Iterator[Page]:
        """The keys under ``prefix`` (and after the key ``after``), one listing page at a time (of ``size()``
        entries, versions and delete markers in a versioned bucket, when given; else 1,000)."""
        if not self.bucket_info(bucket).versioned:
            start = {"StartAfter": after} if after else {}
            for page in self._pages("list_objects_v2", size, Bucket=bucket, Prefix=prefix, **start):
                yield Page((S3Object(o["Key"], o["LastModified"]) for o in page.get("Contents", [])),
                           more=bool(page.get("IsTruncated")))
            return
        carry: S3Object | None = None  # the last key of a page may continue on the next one
        checked, relisted = not after, None  # after a KeyMarker: the first key's versions (see _first_key)
        for page in self._pages("list_object_versions", size, Bucket=bucket, Prefix=prefix,
                                **({"KeyMarker": after} if after else {})):
            entries = [(v, False) for v in page.get("Versions", [])]
            entries += [(m, True) for m in page.get("DeleteMarkers", [])]
            if relisted is not None:
                entries = [e for e in entries if e[0]["Key"] != relisted]
            elif not checked and entries:
                checked = True
                first = min(e["Key"] for e, _ in entries)
                whole = self._first_key(bucket, first, entries)
                if whole is not None:
                    relisted = first
                    entries = [e for e in entries if e[0]["Key"] != first] + whole
            # Stable sort by key only: S3 lists each key's versions newest first.
            entries.sort(key=lambda e: e[0]["Key"])
            out: list[S3Object] = [carry] if carry else []
            for entry, is_marker in entries:
                if not out or out[-1].key != entry["Key"]:
                    out.append(S3Object(entry["Key"], entry["LastModified"], live=False))
                obj = out[-1]
                obj.versions.append(entry["VersionId"])
                if is_marker:
                    continue
                obj.data_versions.append(entry["VersionId"])
                if entry.get("IsLatest"):
                    obj.live, obj.version_id, obj.last_modified = True, entry["VersionId"], entry["LastModified"]
                elif obj.version_id is None:  # newest data version so far
                    obj.version_id, obj.last_modified = entry["VersionId"], entry["LastModified"]
            carry = out.pop() if page.get("IsTruncated") and out else None
            yield Page(out, more=bool(page.get("IsTruncated")))
        if carry:
            yield Page([carry])

    def _first_key(self, bucket: str, key: str, entries: list[tuple[dict[str, Any], bool]]
                   ) -> list[tuple[dict[str, Any], bool]] | None:
        """Every version of the first key of a listing that started after a KeyMarker, if the page lacks some.

        S3 starts such a listing with the key after the marker, all its versions; some S3-compatible
        servers (moto 5) leave out that key's newest version. A key always has exactly one latest
        entry: if the page shows none, the key is listed again on its own, so no version is missed.
        None: the page is whole.
        """
        if any(e.get("IsLatest") for e, _ in entries if e["Key"] == key):
            return None
        own = []
        for page in self._pages("list_object_versions", Bucket=bucket, Prefix=key):
            own += [(v, False) for v in page.get("Versions", []) if v["Key"] == key]
            own += [(m, True) for m in page.get("DeleteMarkers", []) if m["Key"] == key]
        return own

    def head(self, bucket: str, obj: S3Object) -> dict[str, Any] | None:
        if obj.head is None and not obj.gone:
            try:
                obj.head = self.client.head_object(Bucket=bucket, Key=obj.key, **obj.vid())
            except ClientError as exc:
                if not self._missing(exc):
                    raise self._fail("HeadObject", exc) from None
                obj.gone = True
            except BotoCoreError as exc:
                raise self._fail("HeadObject", exc) from None
        return obj.head

    def tags(self, bucket: str, obj: S3Object) -> dict[str, str] | None:
        if obj.tags is None and not obj.gone:
            try:
                tag_set = self.client.get_object_tagging(Bucket=bucket, Key=obj.key, **obj.vid())["TagSet"]
            except ClientError as exc:
                if not self._missing(exc):
                    raise self._fail("GetObjectTagging", exc) from None
                obj.gone = True
                return None
            except BotoCoreError as exc:
                raise self._fail("GetObjectTagging", exc) from None
            obj.tags = {t["Key"]: t["Value"] for t in tag_set}
        return obj.tags

    def is_locked(self, bucket: str, key: str, version_id: str | None = None) -> bool:
        """Is the object restricted (locked)? The ``retention-lock`` tag, or a legal hold under Object Lock.

        What the company's jobs call before processing an object.
        """
        obj = S3Object(key, dt.datetime.now(_UTC), version_id=version_id)
        tags = self.tags(bucket, obj)
        if tags is None:
            return False
        if LOCK_TAG in tags:
            return True
        if self.bucket_info(bucket).object_lock:
            return (self.head(bucket, obj) or {}).get("ObjectLockLegalHoldStatus") == "ON"
        return False

    # ---- classification -------------------------------------------------------------------
    def _start(self, bucket: str, rule: Rule, obj: S3Object, match: re.Match[str] | None) -> dt.datetime | None:
        basis = rule.start.basis
        if basis == "key_date":
            return keytemplate.key_date(match) if match else None
        if basis == "metadata":
            if not obj.version_id and not obj.live:
                return None  # only delete markers: no object to read metadata from
            head = self.head(bucket, obj) or {}
            meta = {k.lower(): v for k, v in head.get("Metadata", {}).items()}
            return parse_date(meta.get((rule.start.name or "").lower()))
        if basis == "tag":
            if not obj.version_id and not obj.live:
                return None
            return parse_date((self.tags(bucket, obj) or {}).get(rule.start.name or ""))
        lm = obj.last_modified
        return lm if lm.tzinfo else lm.replace(tzinfo=_UTC)

    def _held(self, bucket: str, coll: Collection, obj: S3Object, now: dt.datetime) -> bool:
        """Legal hold: a tag condition of the collection, or S3's own legal hold / retention we did not set."""
        if not obj.version_id and not obj.live:
            return False  # only delete markers: nothing to hold
        if coll.legal_hold:
            tags = self.tags(bucket, obj) or {}
            if any(tag_matches(c, tags) for c in coll.legal_hold):
                return True
        if self.bucket_info(bucket).object_lock:
            head = self.head(bucket, obj) or {}
            if head.get("ObjectLockLegalHoldStatus") == "ON" and LOCK_TAG not in (self.tags(bucket, obj) or {}):
                return True
            until = head.get("ObjectLockRetainUntilDate")
            if until is not None and until > now:
                return True
        return False

    def _done(self, bucket: str, action: str, obj: S3Object) -> bool:
        if action == "lock":
            if LOCK_TAG not in (self.tags(bucket, obj) or {}):
                return False
            # Under Object Lock a lock is complete only with the legal hold (a failed hold is retried).
            return not self.bucket_info(bucket).object_lock or (
                (self.head(bucket, obj) or {}).get("ObjectLockLegalHoldStatus") == "ON")
        if action == "anonymize":
            meta = (self.head(bucket, obj) or {}).get("Metadata", {})
            return any(k.lower() == ANONYMIZED_META for k in meta)
        return False

    def _action(self, rule: Rule, start: dt.datetime, now: dt.datetime) -> str | None:
        # Stages are ordered by period; the strongest one whose period has ended applies. The cutoffs are
        # computed once per rule and instant, not per object (parsing the periods was a tenth of a sweep).
        if self._bands[0] is not rule or self._bands[1] != now:
            self._bands = (rule, now, [(cutoff(now, s, rule.start), s.action) for s in reversed(rule.stages)])
        return next((action for edge, action in self._bands[2] if start < edge), None)

    def classify(self, collection_name: str, rule: Rule, obj: S3Object, now: dt.datetime,
                 pattern: re.Pattern[str] | None, only: str | None = None) -> tuple[str | None, str]:
        """(stage action, state) of one object; state is out / kept / no_date / held / done / due.

        With ``only``, objects due for another stage are not examined further (state ``other``).
        """
        coll = self.coll(collection_name)
        match = pattern.fullmatch(obj.key) if pattern else None
        if pattern and not match:
            return None, "out"
        start = self._start(coll.bucket, rule, obj, match)
        if obj.gone:
            return None, "kept"
        if start is None:
            return None, "no_date"
        action = self._action(rule, start, now)
        if action is None or (not obj.live and action != "delete"):
            return action, "kept"
        if only and action != only:
            return action, "other"
        if self._held(coll.bucket, coll, obj, now):
            return action, "held"
        if self._done(coll.bucket, action, obj):
            return action, "done"
        return action, ("kept" if obj.gone else "due")

    def _prefetch(self, coll: Collection, rule: Rule, page: list[S3Object], now: dt.datetime,
                  pattern: re.Pattern[str] | None, only: str | None) -> None:
        """Fetch the per-object facts ``classify`` will need for a page, many requests at a time.

        S3 has no batch HEAD or tagging call; one request after another would make a sweep of
        a large prefix take hours, so up to ``PREFETCH_THREADS`` run in parallel.
        """
        bucket, basis = coll.bucket, rule.start.basis
        locked_bucket = self.bucket_info(bucket).object_lock
        scoped = [(o, pattern.fullmatch(o.key) if pattern else None) for o in page]
        scoped = [(o, m) for o, m in scoped if m or not pattern]
        if basis in ("metadata", "tag"):  # the date itself is per-object
            self._fetch(bucket, [o for o, _ in scoped if o.version_id or o.live], head=basis == "metadata",
                        tags=basis == "tag")
        wanted: dict[str, list[S3Object]] = {"head": [], "tags": []}
        for obj, match in scoped:
            start = self._start(bucket, rule, obj, match)  # cached or free by now
            action = None if start is None or obj.gone else self._action(rule, start, now)
            if action is None or (only and action != only) or (not obj.live and action != "delete"):
                continue
            # (An anonymize rewrite reads tags too, but only for the few objects not done yet: lazily.)
            if coll.legal_hold or locked_bucket or action == "lock":
                wanted["tags"].append(obj)
            if locked_bucket or action == "anonymize":
                wanted["head"].append(obj)
        self._fetch(bucket, wanted["head"], head=True)
        self._fetch(bucket, wanted["tags"], tags=True)

    def _fetch(self, bucket: str, objs: list[S3Object], *, head: bool = False, tags: bool = False) -> None:
        todo = [(self.head if head else self.tags, o) for o in objs
                if not o.gone and ((head and o.head is None) or (tags and o.tags is None))]
        if len(todo) < 2:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=PREFETCH_THREADS, thread_name_prefix=f"s3-{self.name}")
        for future in [self._pool.submit(fn, bucket, o) for fn, o in todo]:
            future.result()  # re-raises StoreUnavailable from the worker

    def _walk(self, collection_name: str, rule: Rule, now: dt.datetime, only: str | None = None):
        for page in self._walk_pages(collection_name, rule, now, only):
            yield from page

    def _walk_pages(self, collection_name: str, rule: Rule, now: dt.datetime, only: str | None = None,
                    pages: Iterator[list[S3Object]] | None = None):
        """(object, action, state) per object, one listing page at a time (or one page of ``pages``, a plan's
        spool); an orphan rule's due objects that a row still references are ``referenced`` (looked up once per
        page)."""
        coll = self.coll(collection_name)
        pattern = keytemplate.regex(coll.key_template) if coll.key_template else None
        for page in pages if pages is not None else self.objects(coll.bucket, self.prefix(coll)):
            self._prefetch(coll, rule, page, now, pattern, only)
            classified = [(obj, *self.classify(collection_name, rule, obj, now, pattern, only)) for obj in page]
            yield self.unowned(collection_name, classified) if rule.start.orphaned is not None else classified

    # ---- plan -----------------------------------------------------------------------------
    def spools(self, collection_name: str, rule: Rule) -> bool:
        """Does the plan of ``rule`` keep its due objects for the delete stage (``s3_spool``)?

        Where the act stage would classify a kept object exactly as a fresh listing would show it: in a
        versioned bucket (the planned versions are deleted by version id, their dates never change), and in
        an unversioned one when the date comes from the key or is read again at act time (metadata, tag).
        Not for an unversioned bucket dated by ``last_modified``: an object overwritten after the plan would be
        deleted by its key on the plan's old date; there the delete stage lists the bucket again.
        """
        if not any(s.action == "delete" for s in rule.stages):
            return False
        return self.bucket_info(self.coll(collection_name).bucket).versioned or rule.start.basis != "last_modified"

    def plan(self, collection_name: str, rule: Rule, now: dt.datetime, *, for_act: bool = False) -> RulePlan:
        """Count what ``rule`` would touch at ``now``; ``for_act`` (a sweep about to act, not a dry run, forecast or
        page): keep the due objects in a spool for the delete stage, until it reads them or ``release_plan``."""
        now = now if now.tzinfo else now.replace(tzinfo=_UTC)
        self.release_plan()
        if rule.start.basis == "record":
            return self.plan_records(collection_name, rule, now)
        spool = Spool(collection_name, rule, now) if for_act and self.spools(collection_name, rule) else None
        total = in_scope = held = already = no_date = 0
        eligible = {s.action: 0 for s in rule.stages}
        try:
            for obj, action, state in self._walk(collection_name, rule, now):
                total += 1
                if state == "out":
                    continue
                in_scope += 1
                if state == "held":
                    held += 1
                elif state == "done":
                    already += 1
                elif state == "due":
                    eligible[action] += 1
                    if spool is not None and action == "delete":
                        spool.add(obj)
                elif state == "no_date":
                    no_date += 1
        except BaseException:
            if spool is not None:
                spool.close()
            raise
        self._spool = spool
        if no_date:
            log.warning("%s.%s: %d objects carry no readable %s date and are kept", self.name, collection_name,
                        no_date, rule.start.basis)
        return RulePlan(total=total, in_scope=in_scope, eligible=eligible, held=held, already=already)

    # ---- act ------------------------------------------------------------------------------
    def apply_stage(self, collection_name: str, rule: Rule, stage: Stage, now: dt.datetime, batch_size: int,
                    reason: str, record: Recorder) -> StageResult:
        now = now if now.tzinfo else now.replace(tzinfo=_UTC)
        if rule.start.basis == "record":
            return self.sweep_records(collection_name, rule, stage, now, batch_size, record)
        coll = self.coll(collection_name)
        bucket = coll.bucket
        result = StageResult(action=stage.action)
        if stage.action == "delete":
            intent: list[Any] = [None]

            def before_batch(keys: list[str]) -> None:
                intent[0] = begin_record(record, "delete", len(keys), self.digest(keys),
                                         {"walk": "keys", "keys": list(keys)})

            def on_batch(keys: list[str], versions: int, errors: int) -> None:
                result.batches += 1
                result.changed += len(keys)
                end_record(record, intent[0], "delete", len(keys), self.digest(keys),
                           {"batch": result.batches, "versions": versions, "errors": errors})

            purger = Purger(self, bucket, min(batch_size, MAX_DELETE), on_batch, before_batch)
            spool = self._take_spool(collection_name, rule, now)
            try:
                self._delete_due(collection_name, rule, now, bucket, purger,
                                 spool.pages() if spool is not None else None)
            finally:
                if spool is not None:
                    spool.close()
        else:
            done: list[str] = []

            def flush() -> None:
                if done:
                    result.batches += 1
                    result.changed += len(done)
                    record(stage.action, len(done), self.digest(done), {"batch": result.batches})
                    done.clear()

            try:
                for obj, action, state in self._walk(collection_name, rule, now, only=stage.action):
                    if state != "due" or action != stage.action:
                        continue
                    acted = (self._lock(bucket, obj, reason, now) if stage.action == "lock"
                             else self._anonymize(bucket, obj, stage, now))
                    if acted:
                        done.append(obj.key)
                    if len(done) >= batch_size:
                        flush()
            finally:
                flush()  # what changed before a failure is recorded too
        log.info("%s.%s: %s %d objects in %d batches", self.name, collection_name, stage.action, result.changed,
                 result.batches)
        return result

    def reconcile_batch(self, collection_name: str, rule: Rule, intent: dict[str, Any], reread: dict[str, Any]
                        ) -> tuple[int, dict[str, Any]] | None:
        """A delete batch whose run stopped before its outcome: the batch's objects (its keys, sealed in the intent)
        that still have a version are still there; the others went (S3 deletes object by object: a batch may
        have gone in part)."""
        if intent["action"] != "delete" or reread.get("walk") != "keys":
            return None
        bucket, keys = self.coll(collection_name).bucket, list(reread["keys"])
        left = [key for key in keys
                if any(v["Key"] == key for page in self._pages("list_object_versions", Bucket=bucket, Prefix=key)
                       for v in page.get("Versions", []))]
        count = len(keys) - len(left)
        return count, {"how": "reread", "committed": count > 0,
                       "note": f"re-listed: {count} of the batch's {len(keys)} objects are gone, {len(left)} still "
                               "there"}

    def _delete_due(self, collection_name: str, rule: Rule, now: dt.datetime, bucket: str, purger: Purger,
                    pages: Iterator[list[S3Object]] | None) -> None:
        """Delete what is due for deletion now, classified page by page: a fresh listing's pages, or the pages
        of the plan's spool (classified again, tags and HEADs read again where the rule needs them)."""
        for page in self._walk_pages(collection_name, rule, now, only="delete", pages=pages):
            for obj, action, state in page:
                if state == "due" and action == "delete":
                    self._release_own_hold(bucket, obj)
                    purger.add(obj)
            if rule.start.orphaned is not None:  # right after the page's owners were looked up
                purger.flush()
        purger.flush()

    def _take_spool(self, collection_name: str, rule: Rule, now: dt.datetime) -> Spool | None:
        """The spool of the plan just made of this very rule at this instant, if any (it is used once)."""
        spool, self._spool = self._spool, None
        if spool is not None and not spool.matches(collection_name, rule, now):
            spool.close()
            return None
        return spool

    def release_plan(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    def _lock(self, bucket: str, obj: S3Object, reason: str, now: dt.datetime) -> bool:
        tags = self.tags(bucket, obj)
        if tags is None:
            return False
        if LOCK_TAG not in tags:
            value = _TAG_SAFE.sub("_", f"{reason}@{now:%Y-%m-%d}")[:256]
            tag_set = [{"Key": k, "Value": v} for k, v in {**tags, LOCK_TAG: value}.items()]
            # PutObjectTagging replaces the whole set, so existing tags are written back with ours.
            self._call("put_object_tagging", Bucket=bucket, Key=obj.key, Tagging={"TagSet": tag_set}, **obj.vid())
            obj.tags = {**tags, LOCK_TAG: value}
        # Tag first: a failed legal hold then leaves a visibly locked object that the next run completes.
        if self.bucket_info(bucket).object_lock and (self.head(bucket, obj) or {}).get(
                "ObjectLockLegalHoldStatus") != "ON":
            self._call("put_object_legal_hold", Bucket=bucket, Key=obj.key, LegalHold={"Status": "ON"}, **obj.vid())
        return True

    def _release_own_hold(self, bucket: str, obj: S3Object) -> None:
        """Before deleting: lift a legal hold this store set as a lock (tagged ``retention-lock``)."""
        if not (self.bucket_info(bucket).object_lock and obj.version_id):
            return
        head = self.head(bucket, obj) or {}
        if head.get("ObjectLockLegalHoldStatus") == "ON" and LOCK_TAG in (self.tags(bucket, obj) or {}):
            self._call("put_object_legal_hold", Bucket=bucket, Key=obj.key, LegalHold={"Status": "OFF"},
                       VersionId=obj.version_id)

    # ---- anonymize ------------------------------------------------------------------------
    def _anonymize(self, bucket: str, obj: S3Object, stage: Stage, now: dt.datetime) -> bool:
        head = self.head(bucket, obj)
        tags = self.tags(bucket, obj)
        if head is None or tags is None:
            return False
        masks = [(STRATEGIES[m.strategy], m.value) for m in stage.mask.values()]

        def rewrite(block: bytes) -> bytes:
            # latin-1 maps each byte to one character and back: every byte outside an address survives.
            text = block.decode("latin-1")
            for strategy, value in masks:
                text = strategy.text(text, value)
            return text.encode("latin-1")

        extra: dict[str, Any] = {
            "Metadata": {**head.get("Metadata", {}), ANONYMIZED_META: now.strftime("%Y-%m-%dT%H:%M:%SZ")}}
        for name in ("ContentType", "ContentEncoding", "ContentDisposition", "ContentLanguage", "CacheControl"):
            if head.get(name):
                extra[name] = head[name]
        if tags:
            extra["Tagging"] = urlencode(tags)
        # Read exactly the version that was classified (or fail if it changed in between).
        source = {"VersionId": obj.version_id} if obj.version_id else {"IfMatch": head["ETag"]}
        body = self._call("get_object", Bucket=bucket, Key=obj.key, **source)["Body"]
        upload = Upload(self, bucket, obj.key, extra, self.part_size)
        try:
            read, carry = 0, b""
            for chunk in body.iter_chunks(CHUNK):
                read += len(chunk)
                carry += chunk
                cut = carry.rfind(b"\n") + 1
                if not cut and len(carry) > MAX_LINE:
                    cut = _safe_cut(carry)
                if cut:
                    upload.write(rewrite(carry[:cut]))
                    carry = carry[cut:]
            upload.write(rewrite(carry))
            if read != head.get("ContentLength", read):
                raise StoreUnavailable(f"{self.name}: S3 object read short during anonymization "
                                       f"({read} of {head.get('ContentLength')} bytes); object left unchanged")
            new_version = upload.complete()
        except BaseException as exc:
            upload.abort()
            if isinstance(exc, (ClientError, BotoCoreError)):
                raise self._fail("GetObject", exc) from None
            raise
        finally:
            body.close()
        if self.bucket_info(bucket).versioned:
            self._drop_old_versions(bucket, obj.key, keep=new_version)
        return True

    def _drop_old_versions(self, bucket: str, key: str, keep: str | None) -> None:
        """After a rewrite in a versioned bucket: older versions still hold the original content."""
        purger = Purger(self, bucket, MAX_DELETE, None)
        for page in self.objects(bucket, key):
            for obj in page:
                if obj.key != key:
                    continue
                if keep not in obj.data_versions:
                    log.warning("%s: rewritten object not found among its versions in bucket %s; older versions "
                                "kept for the next run", self.name, bucket)
                    return
                # Versions are listed newest first: only those older than the rewrite hold original content
                # (a newer one would be somebody else's write after ours).
                purger.add_versions(key, obj.data_versions[obj.data_versions.index(keep) + 1:], counts=False)
        purger.flush()

    # ---- references from SQL rows ---------------------------------------------------------
    def delete_referenced(self, coll_ref: str, reference: Reference, rows: list[dict[str, Any]]) -> int:
        """Delete the objects (all versions) that ``rows`` of ``coll_ref`` reference; return how many.

        ``reference.key_template`` filled from a row names an exact key, or a prefix when it ends
        in ``/`` or ``...``; otherwise ``reference.column`` holds the exact key. Objects under a
        legal hold stay (and are counted in the log); keys outside the collection's prefix are refused.

        The whole batch of rows is found with one forward listing (``owned_objects``), not one per row;
        tags and HEADs are read only where a legal-hold condition or Object Lock needs them, a page at a time.
        """
        target = CollectionRef.parse(reference.to).collection
        coll = self.coll(target)
        bucket, base = coll.bucket, self.prefix(coll)
        now = dt.datetime.now(_UTC)
        purger = Purger(self, bucket, MAX_DELETE, None)
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
        locked_bucket = self.bucket_info(bucket).object_lock
        for page in self.owned_objects(bucket, OwnedKeys(wanted)):
            holdable = [o for o in page if o.version_id or o.live]
            if coll.legal_hold or locked_bucket:
                self._fetch(bucket, holdable, tags=True)
            if locked_bucket:
                self._fetch(bucket, holdable, head=True)
            for obj in page:
                if self._held(bucket, coll, obj, now):
                    held += 1
                    continue
                self._release_own_hold(bucket, obj)
                purger.add(obj)
        purger.flush()
        if held or outside:
            log.warning("%s: %d objects referenced from %s kept under legal hold, %d references outside prefix "
                        "of %s ignored", self.name, held, coll_ref, outside, reference.to)
        log.info("%s: deleted %d objects (%d versions) owned by %d rows of %s", self.name, purger.objects,
                 purger.versions, len(rows), coll_ref)
        return purger.objects

    def due_keys(self, collection_name: str, rule: Rule, now: dt.datetime) -> Iterator[list[tuple[str, Any]]]:
        """(action, object key) of the objects ``plan`` at ``now`` counts as due, a listing page at a time."""
        now = now if now.tzinfo else now.replace(tzinfo=_UTC)
        for page in self._walk_pages(collection_name, rule, now):
            yield [(action, obj.key) for obj, action, state in page if state == "due"]

    def referenced_due(self, reference: Reference, rows: list[dict[str, Any]]) -> list[Any]:
        """The keys ``delete_referenced`` would delete for ``rows`` (inside the prefix, not held), one listing."""
        coll = self.coll(CollectionRef.parse(reference.to).collection)
        bucket, base = coll.bucket, self.prefix(coll)
        now = dt.datetime.now(_UTC)
        wanted = [(key, is_prefix) for key, is_prefix in (owned_key(reference, row) for row in rows)
                  if key is not None and key.startswith(base)]
        if not wanted:
            return []
        locked_bucket = self.bucket_info(bucket).object_lock
        out: list[Any] = []
        for page in self.owned_objects(bucket, OwnedKeys(wanted)):
            holdable = [o for o in page if o.version_id or o.live]
            if coll.legal_hold or locked_bucket:
                self._fetch(bucket, holdable, tags=True)
            if locked_bucket:
                self._fetch(bucket, holdable, head=True)
            out += [obj.key for obj in page if not self._held(bucket, coll, obj, now)]
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
        yield from self._owned_listing(bucket, wanted)
        for key, is_prefix in wanted.unseen() if self.bucket_info(bucket).versioned else []:
            own = [obj for page in self.objects(bucket, key) for obj in page if is_prefix or obj.key == key]
            if own:
                yield own

    def _owned_listing(self, bucket: str, wanted: OwnedKeys) -> Iterator[list[S3Object]]:
        prefix = wanted.common_prefix()
        while not wanted.done():
            jumped = False
            for page in self.objects(bucket, prefix, after=wanted.seek(), size=wanted.page_size):
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
