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

The store composes collaborators, each with the store as its one reference (``S3Core``): ``S3States``
(which stage an object is in), ``S3Writes`` (lock, anonymize, old versions), ``S3Owned`` (objects rows own,
orphans), ``S3ObjectSubjects`` and ``S3RecordSubjects`` (subject requests on objects, on records inside them).

This module imports nothing from Airflow.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from include.retention import keytemplate
from include.retention.errors import RetentionError, SchemaMismatch, StoreUnavailable
from include.retention.masking import keyed_digest
from include.retention.policy import Collection, Policy, Reference, Rule, Stage
from include.retention.stores.base import (
    Claims,
    Recorder,
    RulePlan,
    StageResult,
    Store,
    Subject,
    SubjectOutcome,
    begin_record,
    end_record,
)
from include.retention.stores.s3_objects import (
    ANONYMIZED_META,
    LOCK_TAG,
    MAX_DELETE,
    PART_SIZE,
    UTC,
    BucketInfo,
    ObjectsNotDeleted,
    Page,
    S3Object,
    make_client,
    owned_key,
)
from include.retention.stores.s3_orphans import Lookup, S3Owned
from include.retention.stores.s3_record_store import S3RecordSubjects
from include.retention.stores.s3_record_sweep import REWRITE_WALK
from include.retention.stores.s3_records import RECORD_COLUMNS
from include.retention.stores.s3_spool import Spool
from include.retention.stores.s3_states import S3States
from include.retention.stores.s3_subjects import S3ObjectSubjects
from include.retention.stores.s3_writes import Purger, S3Writes

if TYPE_CHECKING:
    from include.retention.connections import ConnInfo

__all__ = ["ANONYMIZED_META", "LOCK_TAG", "ObjectsNotDeleted", "S3Store", "make_client", "owned_key"]

log = logging.getLogger(__name__)


class S3Store(Store):
    kind = "s3"

    def __init__(self, name: str, policy: Policy, client: Any, *, key: bytes = b"", endpoint: str | None = None,
                 part_size: int = PART_SIZE):
        super().__init__(name, policy)
        self.client = client
        self.key = key
        self.endpoint = endpoint or client.meta.endpoint_url
        self.part_size = part_size
        self._buckets: dict[str, BucketInfo] = {}
        self._spool: Spool | None = None  # the last plan's due objects, for its delete stage (s3_spool)
        self.referenced: Lookup | None = None  # an orphan rule's look-up of owners (wired by ``Runtime``)
        # collaborators, each with its own part of the store's work
        self.states = S3States(self)
        self.writes = S3Writes(self)
        self.row_owned = S3Owned(self)
        self.subjects = S3ObjectSubjects(self)
        self.records = S3RecordSubjects(self)

    @classmethod
    def from_conn(cls, name: str, policy: Policy, info: ConnInfo, *, key: bytes = b"", **kwargs: Any) -> S3Store:
        """Build from an Airflow ``aws`` connection (see ``make_client``)."""
        client, endpoint = make_client(info)
        return cls(name, policy, client, key=key, endpoint=endpoint, **kwargs)

    def fail(self, operation: str, exc: Exception) -> StoreUnavailable:
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

    def call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        try:
            return getattr(self.client, operation)(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self.fail(operation, exc) from None

    def pages(self, operation: str, size: Callable[[], int] | None = None, **kwargs: Any
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
                raise self.fail(operation, exc) from None
            yield page

    def _sized_pages(self, operation: str, size: Callable[[], int], params: dict[str, Any]
                     ) -> Iterator[dict[str, Any]]:
        # What the paginator does, with the page size chosen again before every request.
        params = dict(params)
        while True:
            page = self.call(operation, **params, MaxKeys=max(1, min(size(), 1000)))
            yield page
            if not page.get("IsTruncated"):
                return
            if operation == "list_objects_v2":
                params["ContinuationToken"] = page["NextContinuationToken"]
            else:
                params["KeyMarker"], params["VersionIdMarker"] = page["NextKeyMarker"], page["NextVersionIdMarker"]

    @staticmethod
    def missing(exc: ClientError) -> bool:
        code = exc.response.get("Error", {}).get("Code", "")
        return code in ("404", "NoSuchKey", "NoSuchVersion", "405", "MethodNotAllowed")

    def digest(self, keys: list[str]) -> str:
        """Keyed digest of a batch of object keys: proves which objects without naming them."""
        return keyed_digest(self.key, "\n".join(keys))

    def close(self) -> None:
        self.release_plan()
        if self.states.pool is not None:
            self.states.pool.shutdown(wait=True)
        self.client.close()

    def coll(self, name: str) -> Collection:
        return self.policy.systems[self.name].collections[name]

    @staticmethod
    def prefix(coll: Collection) -> str:
        if coll.prefix is not None:
            return coll.prefix
        return keytemplate.literal_head(coll.key_template) if coll.key_template else ""

    def bucket_info(self, bucket: str) -> BucketInfo:
        if bucket not in self._buckets:
            status = self.call("get_bucket_versioning", Bucket=bucket).get("Status")
            try:
                conf = self.client.get_object_lock_configuration(Bucket=bucket)
                locked = conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ObjectLockConfigurationNotFoundError":
                    raise self.fail("GetObjectLockConfiguration", exc) from None
                locked = False
            except BotoCoreError as exc:
                raise self.fail("GetObjectLockConfiguration", exc) from None
            # A suspended bucket still holds old versions: treat it as versioned.
            self._buckets[bucket] = BucketInfo(versioned=status in ("Enabled", "Suspended"), object_lock=locked,
                                               suspended=status == "Suspended")
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
            raise self.fail("HeadBucket", exc) from None
        except BotoCoreError as exc:
            raise self.fail("HeadBucket", exc) from None
        self.bucket_info(coll.bucket)

    def objects(self, bucket: str, prefix: str, after: str = "", size: Callable[[], int] | None = None
                ) -> Iterator[Page]:
        """The keys under ``prefix`` (and after the key ``after``), one listing page at a time (of ``size()``
        entries, versions and delete markers in a versioned bucket, when given; else 1,000)."""
        if not self.bucket_info(bucket).versioned:
            start = {"StartAfter": after} if after else {}
            for page in self.pages("list_objects_v2", size, Bucket=bucket, Prefix=prefix, **start):
                yield Page((S3Object(o["Key"], o["LastModified"]) for o in page.get("Contents", [])),
                           more=bool(page.get("IsTruncated")))
            return
        carry: S3Object | None = None  # the last key of a page may continue on the next one
        checked, relisted = not after, None  # after a KeyMarker: the first key's versions (see _first_key)
        for page in self.pages("list_object_versions", size, Bucket=bucket, Prefix=prefix,
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
        for page in self.pages("list_object_versions", Bucket=bucket, Prefix=key):
            own += [(v, False) for v in page.get("Versions", []) if v["Key"] == key]
            own += [(m, True) for m in page.get("DeleteMarkers", []) if m["Key"] == key]
        return own

    def head(self, bucket: str, obj: S3Object) -> dict[str, Any] | None:
        if obj.head is None and not obj.gone:
            try:
                obj.head = self.client.head_object(Bucket=bucket, Key=obj.key, **obj.vid())
            except ClientError as exc:
                if not self.missing(exc):
                    raise self.fail("HeadObject", exc) from None
                obj.gone = True
            except BotoCoreError as exc:
                raise self.fail("HeadObject", exc) from None
        return obj.head

    def tags(self, bucket: str, obj: S3Object) -> dict[str, str] | None:
        if obj.tags is None and not obj.gone:
            try:
                tag_set = self.client.get_object_tagging(Bucket=bucket, Key=obj.key, **obj.vid())["TagSet"]
            except ClientError as exc:
                if not self.missing(exc):
                    raise self.fail("GetObjectTagging", exc) from None
                obj.gone = True
                return None
            except BotoCoreError as exc:
                raise self.fail("GetObjectTagging", exc) from None
            obj.tags = {t["Key"]: t["Value"] for t in tag_set}
        return obj.tags

    def is_locked(self, bucket: str, key: str, version_id: str | None = None) -> bool:
        """Is the object restricted (locked)? The ``retention-lock`` tag, or a legal hold under Object Lock.

        What the company's jobs call before processing an object.
        """
        obj = S3Object(key, dt.datetime.now(UTC), version_id=version_id)
        tags = self.tags(bucket, obj)
        if tags is None:
            return False
        if LOCK_TAG in tags:
            return True
        if self.bucket_info(bucket).object_lock:
            return (self.head(bucket, obj) or {}).get("ObjectLockLegalHoldStatus") == "ON"
        return False

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
        now = now if now.tzinfo else now.replace(tzinfo=UTC)
        self.release_plan()
        if rule.start.basis == "record":
            return self.records.plan_records(collection_name, rule, now)
        spool = Spool(collection_name, rule, now) if for_act and self.spools(collection_name, rule) else None
        total = in_scope = held = already = no_date = 0
        eligible = {s.action: 0 for s in rule.stages}
        try:
            for obj, action, state in self.states.walk(collection_name, rule, now):
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

    def apply_stage(self, collection_name: str, rule: Rule, stage: Stage, now: dt.datetime, batch_size: int,
                    reason: str, record: Recorder) -> StageResult:
        now = now if now.tzinfo else now.replace(tzinfo=UTC)
        if rule.start.basis == "record":
            return self.records.sweep_records(collection_name, rule, stage, now, batch_size, record)
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
                for obj, action, state in self.states.walk(collection_name, rule, now, only=stage.action):
                    if state != "due" or action != stage.action:
                        continue
                    acted = (self.writes.lock(bucket, obj, reason, now) if stage.action == "lock"
                             else self.writes.anonymize(bucket, obj, stage, now))
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
        if intent["action"] == "delete" and reread.get("walk") == REWRITE_WALK:
            return self.records.reconcile_rewrite(collection_name, rule, reread)
        if intent["action"] != "delete" or reread.get("walk") != "keys":
            return None
        bucket, keys = self.coll(collection_name).bucket, list(reread["keys"])
        left = [key for key in keys
                if any(v["Key"] == key for page in self.pages("list_object_versions", Bucket=bucket, Prefix=key)
                       for v in page.get("Versions", []))]
        count = len(keys) - len(left)
        return count, {"how": "reread", "committed": count > 0,
                       "note": f"re-listed: {count} of the batch's {len(keys)} objects are gone, {len(left)} still "
                               "there"}

    def _delete_due(self, collection_name: str, rule: Rule, now: dt.datetime, bucket: str, purger: Purger,
                    pages: Iterator[list[S3Object]] | None) -> None:
        """Delete what is due for deletion now, classified page by page: a fresh listing's pages, or the pages
        of the plan's spool (classified again, tags and HEADs read again where the rule needs them)."""
        for page in self.states.walk_pages(collection_name, rule, now, only="delete", pages=pages):
            for obj, action, state in page:
                if state == "due" and action == "delete":
                    self.writes.release_own_hold(bucket, obj)
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

    def maps_batches(self, collection_name: str, rule: Rule) -> bool:
        """A rule counting from a record field is swept as a sealed plan cut into batches of objects, one mapped
        task each (``include/retention/record_batches.py``)."""
        return rule.start.basis == "record"

    def plan_batches(self, collection_name: str, rule: Rule, now: dt.datetime) -> RulePlan:
        """The plan of a record rule that keeps its due objects (``s3_spool``) for ``planned_keys``."""
        now = now if now.tzinfo else now.replace(tzinfo=UTC)
        self.release_plan()
        spool = Spool(collection_name, rule, now)
        try:
            plan = self.records.plan_records(collection_name, rule, now, spool)
        except BaseException:
            spool.close()
            raise
        self._spool = spool
        return plan

    def planned_keys(self, collection_name: str, rule: Rule, now: dt.datetime, size: int) -> Iterator[list[str]]:
        """The keys of the objects ``plan_batches`` found due, ``size`` at a time, in listing order (read once)."""
        now = now if now.tzinfo else now.replace(tzinfo=UTC)
        spool = self._take_spool(collection_name, rule, now)
        if spool is None:
            raise RetentionError(f"{self.ref(collection_name)}: no plan of this rule at this instant to cut into "
                                 "batches")
        try:
            for page in spool.pages(size):
                yield [obj.key for obj in page]
        finally:
            spool.close()

    def apply_batch(self, collection_name: str, rule: Rule, stage: Stage, now: dt.datetime, batch_size: int,
                    keys: list[str], record: Recorder) -> StageResult:
        """One batch of a sealed plan: its objects, classified again at the plan's instant, deleted whole or
        rewritten (``batch_size``: objects per DeleteObjects request)."""
        now = now if now.tzinfo else now.replace(tzinfo=UTC)
        return self.records.sweep_records(collection_name, rule, stage, now, batch_size, record, keys)

    def release_plan(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    def due_keys(self, collection_name: str, rule: Rule, now: dt.datetime) -> Iterator[list[tuple[str, Any]]]:
        """(action, object key) of the objects ``plan`` at ``now`` counts as due, a listing page at a time."""
        now = now if now.tzinfo else now.replace(tzinfo=UTC)
        for page in self.states.walk_pages(collection_name, rule, now):
            yield [(action, obj.key) for obj, action, state in page if state == "due"]

    # ---- objects rows own (``S3Owned``) ------------------------------------------------------------------------
    def delete_referenced(self, coll_ref: str, reference: Reference, rows: list[dict[str, Any]]) -> int:
        return self.row_owned.delete_referenced(coll_ref, reference, rows)

    def referenced_due(self, reference: Reference, rows: list[dict[str, Any]]) -> list[Any]:
        return self.row_owned.referenced_due(reference, rows)

    # ---- subjects: objects (``S3ObjectSubjects``), records inside objects (``S3RecordSubjects``) -----------------
    def find(self, collection_name: str, subjects: list[Subject], *, exhaustive: bool = False) -> Claims:
        claims = super().find(collection_name, subjects, exhaustive=exhaustive)
        if self.coll(collection_name).format is not None:
            claims.subjects = list(subjects)  # ``read`` returns only these subjects' records of the objects
        return claims

    def read_columns(self, collection_name: str) -> list[str]:
        if self.coll(collection_name).format:
            return RECORD_COLUMNS
        return ["bucket", "key", "version_id", "size", "last_modified", "content_type"]

    def scan(self, collection_name: str) -> Iterator[list[tuple[Any, dict[str, set[str]]]]]:
        return self.records.scan(collection_name)

    def candidates(self, collection_name: str, subjects: list[Subject], *, owned_only: bool = False
                   ) -> Iterator[list[tuple[Any, dict[str, set[str]]]]]:
        if owned_only:
            return self.scan_owned(collection_name)
        return self.records.candidates(collection_name, subjects)

    def read(self, collection_name: str, claims: Claims) -> Iterator[list[dict[str, Any]]]:
        return self.records.read(collection_name, claims)

    def erase(self, collection_name: str, claims: Claims, subjects: list[Subject], *, dry_run: bool
              ) -> SubjectOutcome:
        return self.records.erase(collection_name, claims, subjects, dry_run=dry_run)

    def restrict(self, collection_name: str, claims: Claims, subjects: list[Subject], *, dry_run: bool
                 ) -> SubjectOutcome:
        return self.records.restrict(collection_name, claims, subjects, dry_run=dry_run)

    def remaining(self, collection_name: str, subjects: list[Subject], mode: str) -> dict[str, int]:
        return self.records.remaining(collection_name, subjects, mode)

    def rectify(self, collection_name: str, claims: Claims, subjects: list[Subject], new_values: dict[str, str],
                *, dry_run: bool) -> SubjectOutcome:
        return self.records.rectify(collection_name, claims, subjects, new_values, dry_run=dry_run)

    def rectify_problems(self, collection_name: str, claims: Claims, subjects: list[Subject],
                         new_values: dict[str, str]) -> list[str]:
        return self.records.rectify_problems(collection_name, claims, subjects, new_values)

    def owned_keys(self, collection_name: str, key: str, is_prefix: bool) -> list[str]:
        return self.subjects.owned_keys(collection_name, key, is_prefix)

    def stream_object(self, collection_name: str, key: str) -> Iterator[bytes]:
        return self.subjects.stream_object(collection_name, key)
