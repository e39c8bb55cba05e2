"""Subject operations on records inside S3 objects (collections with a ``format``): a collaborator of ``S3Store``
that handles those collections and hands every other one to ``S3ObjectSubjects`` (docs/adr/0021).

An item of such a collection is an object key; a person's items are the keys where some version holds one of
their records. Erase rewrites the current version without their records (``erase: mask`` fields masked
instead), checks the rewrite (``s3_rewrite``), and then deletes every older version that holds one of their
records; versions under a legal hold, or locked by a lock that is not the subject's own, are kept as
exceptions. Restrict locks every version that holds one of their records (the ``retention-lock`` tag, plus an
Object Lock legal hold where the bucket has Object Lock): the whole object is then restricted, other people's
records in it too, because S3 cannot restrict part of an object. Rectify rewrites the fields carrying an old value
the way erase rewrites. Sweeps by a record field delete expired partitions whole and rewrite partly expired objects.
Counts are records (``deleted``, ``masked``, ``restricted``, ``rectified``, ``kept:<reason>``) and, for older
versions deleted, ``versions_deleted``.

This module imports nothing from Airflow.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from include.retention.errors import RetentionError, StoreUnavailable
from include.retention.identity import normalise
from include.retention.stores.base import (
    RESTRICTION,
    Claims,
    Subject,
    SubjectOutcome,
    claimed_keys,
    lock_reason_for,
    own_lock_reasons,
)
from include.retention.stores.s3_objects import LOCK_TAG, MAX_DELETE, S3Core, S3Object
from include.retention.stores.s3_record_files import LocalCopy, carried_over, upload_checked
from include.retention.stores.s3_record_read import RECORD_BATCH, ObjectRecords, RecordsUnreadable
from include.retention.stores.s3_record_sweep import RecordSweeps
from include.retention.stores.s3_records import (
    REWRITE_META,
    Corrector,
    Judge,
    RewriteNotVerified,
    Tally,
    identities,
    judge_version,
    key_digest,
)
from include.retention.stores.s3_rewrite import Expected, Sink, check_rewrite, write_version
from include.retention.stores.s3_subjects import lock_reason
from include.retention.stores.s3_writes import Purger

if TYPE_CHECKING:
    from include.retention.policy import Collection

log = logging.getLogger(__name__)

TEMP_PREFIX = ".retention-rewrite/"  # plain buckets: a rewrite is written here, checked, then copied over


def _count_rewrite(outcome: SubjectOutcome, ref: str, tally: Tally, changed_as: str) -> None:
    """What rewriting the current version does to each request's records."""
    for rid, n in tally.dropped.items():
        outcome.add(rid, ref, "deleted", n)
    for rid, n in tally.masked.items():
        outcome.add(rid, ref, changed_as, n)
    for rid in tally.per_request():
        outcome.add(rid, ref, "objects_rewritten")  # the records went from inside this many objects


class S3RecordSubjects(RecordSweeps):
    """Subject operations on collections of records inside objects (``format``); a collection of plain objects goes
    to the store's ``subjects`` (a collaborator of ``S3Store``)."""

    def __init__(self, store: S3Core):
        self.store = store
        self._memo: tuple[Any, ...] | None = None  # the last judge's (collection, subjects, values judged)

    def judge_for(self, coll: Collection, subjects: list[Subject]) -> Judge:
        """A judge of these subjects in this collection. It shares what the last judge of exactly the same subjects
        and collection judged (each distinct value's verdict: a function of the subjects and the collection's
        fields alone), so a request's find and its erase normalise each value once."""
        judge = Judge(coll, subjects)
        people = sorted((s.request_id, sorted(s.identities.items())) for s in subjects)
        if self._memo is not None and self._memo[0] is coll and self._memo[1] == people:
            judge.seen, judge.hits = self._memo[2], self._memo[3]
        else:
            self._memo = (coll, people, judge.seen, judge.hits)
        return judge

    def record_versions(self, coll: Collection, obj: S3Object) -> list[tuple[S3Object, bool]]:
        """(one data version, is it the current one) of an object, newest first."""
        if not self.store.bucket_info(coll.bucket).versioned:
            return [(obj, True)] if obj.live else []
        out = []
        for vid in obj.data_versions:
            current = obj.live and vid == obj.version_id
            out.append((obj if current else S3Object(obj.key, obj.last_modified, version_id=vid), current))
        return out

    def reader(self, coll: Collection, vobj: S3Object) -> ObjectRecords | None:
        head = self.store.head(coll.bucket, vobj)
        return None if head is None else ObjectRecords(self.store, coll, vobj, head)

    def unreadable(self, coll: Collection, obj: S3Object, exc: RecordsUnreadable) -> RecordsUnreadable:
        digest = key_digest(self.store.key, obj.key)
        return RecordsUnreadable(f"{self.store.name}: an object of {coll.bucket} (key digest {digest}) cannot be read "
                                 f"as {coll.format}: {exc}; nothing of it was changed")

    def judge(self, coll: Collection, vobj: S3Object, judge: Judge) -> Tally | None:
        reader = self.reader(coll, vobj)
        if reader is None:
            return None
        try:
            return judge_version(reader, judge, judge.fields())
        except RecordsUnreadable as exc:
            raise self.unreadable(coll, vobj, exc) from None

    def record_objects(self, coll: Collection, keys: list[str] | None = None) -> Iterator[S3Object]:
        """The collection's objects (or those under exactly ``keys``) as they are now."""
        if keys is None:
            for page in self.store.objects(coll.bucket, self.store.prefix(coll)):
                yield from (o for o, _ in self.store.subjects.scoped(coll, page))
        else:
            for page in self.store.subjects.objects_now(coll, keys):
                yield from (o for o, _ in page)

    def scan(self, collection_name: str) -> Iterator[list[tuple[Any, dict[str, set[str]]]]]:
        if self.store.coll(collection_name).format is None:
            yield from self.store.subjects.scan(collection_name)
            return
        yield from self._scan_records(collection_name, None)

    def candidates(self, collection_name: str, subjects: list[Subject]
                   ) -> Iterator[list[tuple[Any, dict[str, set[str]]]]]:
        """Parquet: only the records holding one of these subjects' values (found column by column)."""
        coll = self.store.coll(collection_name)
        if coll.format != "parquet":
            return self.scan(collection_name)
        return self._scan_records(collection_name, self.judge_for(coll, subjects))

    def _scan_records(self, collection_name: str, judge: Judge | None
                      ) -> Iterator[list[tuple[Any, dict[str, set[str]]]]]:
        coll = self.store.coll(collection_name)
        fields = [(kind, f.column.partition(":")[2]) for kind, f in coll.identity_fields()]
        columns = sorted({n for _, n in fields})
        seen: dict[Any, Any] = {}  # this scan's identity values, normalised once
        out: list[tuple[Any, dict[str, set[str]]]] = []
        without = 0  # versions whose header / schema has none of the identity fields
        for obj in self.record_objects(coll):
            for vobj, _ in self.record_versions(coll, obj):
                reader = self.reader(coll, vobj)
                if reader is None:
                    continue
                try:
                    yield from self.scan_version(reader, obj.key, fields, columns, out, seen, judge)
                except RecordsUnreadable as exc:
                    raise self.unreadable(coll, vobj, exc) from None
                names = reader.header if coll.format == "csv" else reader.schema.names if reader.schema else None
                without += names is not None and not set(columns) & set(names)
        if out:
            yield out
        if without:
            log.warning("%s: %d object version(s) of %s have none of the identity fields %s in their %s: nobody "
                        "can be found in them", self.store.ref(collection_name), without, coll.bucket,
                        ", ".join(columns), "header" if coll.format == "csv" else "schema")

    def scan_version(self, reader: ObjectRecords, key: str, fields: list[tuple[str, str]], columns: list[str],
                     out: list[tuple[Any, dict[str, set[str]]]], seen: dict[Any, Any], judge: Judge | None
                     ) -> Iterator[list[tuple[Any, dict[str, set[str]]]]]:
        """Add each record's identities to ``out`` (under the object's key); yield ``out`` whenever it is full."""
        for batch in reader.batches(columns, whole=judge is not None):
            for found in identities(batch, fields, seen, judge):
                if found:
                    out.append((key, found))
            if len(out) >= RECORD_BATCH:
                yield list(out)
                out.clear()

    def read(self, collection_name: str, claims: Claims) -> Iterator[list[dict[str, Any]]]:
        coll = self.store.coll(collection_name)
        if coll.format is None:
            yield from self.store.subjects.read(collection_name, claims)
            return
        subjects = getattr(claims, "subjects", None)
        if subjects is None:
            raise RetentionError(f"{self.store.ref(collection_name)}: records are read for the subjects a find found "
                                 "them for; these claims carry none (nothing was read)")
        judge = self.judge_for(coll, subjects)
        batch: list[dict[str, Any]] = []
        for obj in self.record_objects(coll, sorted(claims)):
            for vobj, _ in self.record_versions(coll, obj):
                reader = self.reader(coll, vobj)
                if reader is None:
                    continue
                try:
                    for part in reader.batches():
                        for record in part.records:
                            if record is None or judge(record) is None:
                                continue
                            batch.append({"key": obj.key, "version_id": vobj.version_id,
                                          "content": json.dumps(record, ensure_ascii=False, default=str)})
                            if len(batch) >= 100:
                                yield batch
                                batch = []
                except RecordsUnreadable as exc:
                    raise self.unreadable(coll, vobj, exc) from None
        if batch:
            yield batch

    def erase(self, collection_name: str, claims: Claims, subjects: list[Subject], *, dry_run: bool
              ) -> SubjectOutcome:
        coll, ref = self.store.coll(collection_name), self.store.ref(collection_name)
        if coll.format is None:
            return self.store.subjects.erase(collection_name, claims, subjects, dry_run=dry_run)
        outcome = SubjectOutcome()
        judge = self.judge_for(coll, subjects)
        own = own_lock_reasons(subjects, self.store.key)
        now = dt.datetime.now(dt.UTC)
        for obj in self.record_objects(coll, claimed_keys(ref, claims)):
            self.erase_object(coll, ref, obj, judge, own, now, outcome, dry_run)
        return outcome

    def erase_object(self, coll: Collection, ref: str, obj: S3Object, judge: Any, own: set[str],
                     now: dt.datetime, outcome: SubjectOutcome, dry_run: bool, changed_as: str = "masked") -> None:
        """Rewrite the current version as ``judge`` says (records dropped, fields masked or corrected: counted as
        ``changed_as``), delete the older versions holding records it claims; held versions are exceptions. The
        current version is downloaded once (to disk) and judged, rewritten and checked from there."""
        if not dry_run:
            self.refuse_suspended(coll.bucket)
        doomed: list[S3Object] = []
        for vobj, current in self.record_versions(coll, obj):
            local = self.local_copy(coll, vobj) if current and not dry_run else None
            try:
                if self.erase_version(coll, ref, vobj, current, judge, own, now, outcome, dry_run, changed_as, local):
                    doomed.append(vobj)
            finally:
                if local is not None:
                    local.close()
        if dry_run or not doomed:
            return
        self.before_old_versions_go(coll.bucket, obj.key)
        purger = Purger(self.store, coll.bucket, MAX_DELETE, None)
        for vobj in doomed:
            self.store.writes.release_own_hold(coll.bucket, vobj)
            purger.add_versions(obj.key, [vobj.version_id], counts=False)
        purger.flush()

    def local_copy(self, coll: Collection, vobj: S3Object) -> LocalCopy | None:
        head = self.store.head(coll.bucket, vobj)
        return None if head is None else LocalCopy(self.store, coll.bucket, vobj, head)

    def erase_version(self, coll: Collection, ref: str, vobj: S3Object, current: bool, judge: Any, own: set[str],
                      now: dt.datetime, outcome: SubjectOutcome, dry_run: bool, changed_as: str,
                      local: LocalCopy | None) -> bool:
        """Judge one version; count it; rewrite it (the current one). Is it to be deleted as an older version?
        The current version (``local``) is judged by writing its rewrite (to disk, checked there): nothing is
        uploaded unless it holds records to change and is not held."""
        tally = self.write_checked(coll, vobj, judge, local) if local is not None else self.judge(coll, vobj, judge)
        if tally is None or not tally.found:
            return False
        reason = self.store.subjects.exception(coll, vobj, own, now)
        if reason is not None:
            for rid, n in tally.per_request().items():
                outcome.add(rid, ref, f"exception:{reason}", n)
            return False
        if lock_reason(self.store.tags(coll.bucket, vobj)) is not None:
            for rid in tally.per_request():
                outcome.add(rid, ref, "lifted")
        if current:
            _count_rewrite(outcome, ref, tally, changed_as)
            if local is not None:
                self.commit(coll, vobj, now, local)
        else:
            for rid in tally.per_request():
                outcome.add(rid, ref, "versions_deleted")
        return bool(vobj.version_id)

    def before_old_versions_go(self, bucket: str, key: str) -> None:
        """Between a checked rewrite and the deletes of the versions it replaces (a seam tests interrupt)."""

    def write_checked(self, coll: Collection, vobj: S3Object, judge: Any, local: LocalCopy) -> Tally:
        """Write the version again (from its local copy, to a local file) without (or with masked) the records
        ``judge`` claims, and check the file (``check_rewrite``); what the writer did (its tally)."""
        reader = ObjectRecords(self.store, coll, vobj, local.head, local=local.path)
        meant = reader.tap = Expected(coll.format, judge, self.store.key)
        try:
            with open(local.output, "wb") as out:
                written = write_version(reader, judge, Sink(out, reader.gzip), self.store.key)
        except RecordsUnreadable as exc:
            raise self.unreadable(coll, vobj, exc) from None
        reader.tap = None
        if written.found or meant.tally.found:
            check_rewrite(self.store, coll, reader, written, meant, local.output)
        return written

    def refuse_suspended(self, bucket: str) -> None:
        """Versioning suspended: a PutObject replaces the null version in place, before any check could refuse the
        rewrite, and undoing it would delete the object: refused before anything is read or written."""
        if self.store.bucket_info(bucket).suspended:
            raise RetentionError(f"bucket {bucket}: versioning is suspended, so a rewrite cannot be written beside "
                                 "the original and checked before it replaces it; nothing was changed (enable "
                                 "versioning again, then retry)")

    def commit(self, coll: Collection, vobj: S3Object, now: dt.datetime, local: LocalCopy) -> None:
        """Make the checked rewrite (``local.output``) the current content of the key.

        The upload is checked to hold exactly the checked bytes (``upload_checked``). Versioned bucket: the new
        version goes on top of the key (the original stays below it until the caller deletes it). Plain bucket: the
        new content goes to a temporary key and is copied over the original (which stays whole until that copy,
        its ETag checked just before), then the temporary key goes.
        """
        bucket = coll.bucket
        head = local.head
        self.refuse_suspended(bucket)
        versioned = self.store.bucket_info(bucket).versioned
        tags = {k: v for k, v in (self.store.tags(bucket, vobj) or {}).items() if k != LOCK_TAG}  # own lock: lifted
        extra = carried_over(head, tags, {REWRITE_META: now.strftime("%Y-%m-%dT%H:%M:%SZ")})
        target = vobj.key if versioned else TEMP_PREFIX + key_digest(self.store.key, vobj.key)
        new_version, stored = upload_checked(self.store, bucket, target, extra, self.store.part_size, local.output)
        if not versioned:  # no versions here (a multipart upload may still be answered with version "null")
            new_version = None
        try:
            if not stored:
                raise RewriteNotVerified(f"{self.store.name}: a rewrite uploaded to {bucket} is not stored as it was "
                                         "checked; the original stays")
            if versioned:
                self.check_nothing_between(coll, vobj, new_version)
        except BaseException:
            self.undo(bucket, target, new_version)
            raise
        if not versioned:
            try:
                self.before_old_versions_go(bucket, vobj.key)
                if (self.store.call("head_object", Bucket=bucket, Key=vobj.key) or {}).get("ETag") != head.get("ETag"):
                    raise StoreUnavailable(f"{self.store.name}: an object of {bucket} changed while it was rewritten; "
                                           "it is left as it is now for the next run")
                self.store.call("copy_object", Bucket=bucket, Key=vobj.key,
                                CopySource={"Bucket": bucket, "Key": target}, MetadataDirective="COPY",
                                TaggingDirective="COPY")
            finally:  # the temporary key goes in any case (a process killed here leaves it for the next run)
                self.undo(bucket, target, None)

    def check_nothing_between(self, coll: Collection, vobj: S3Object, new_version: str | None) -> None:
        """The new version must sit right on the one it rewrote: a version written in between would be hidden by
        ours, and ours on a delete marker placed since the listing would bring a deleted object back (then ours
        goes, and the request stays open for the next run). A delete marker the listing did not show counts as
        placed in between wherever it is (a listing does not order delete markers among the versions)."""
        for page in self.store.objects(coll.bucket, vobj.key):
            for obj in page:
                if obj.key != vobj.key or new_version not in obj.data_versions:
                    continue
                below = obj.data_versions[obj.data_versions.index(new_version) + 1:]
                markers = set(obj.versions) - set(obj.data_versions)
                if below[:1] == [vobj.version_id] and markers <= set(vobj.versions):
                    return
        raise StoreUnavailable(f"{self.store.name}: an object of {coll.bucket} changed while it was rewritten; the "
                               "rewrite is undone and the object left for the next run")

    def undo(self, bucket: str, key: str, version: str | None) -> None:
        self.store.call("delete_object", Bucket=bucket, Key=key, **({"VersionId": version} if version else {}))

    def restrict(self, collection_name: str, claims: Claims, subjects: list[Subject], *, dry_run: bool
                 ) -> SubjectOutcome:
        coll, ref = self.store.coll(collection_name), self.store.ref(collection_name)
        if coll.format is None:
            return self.store.subjects.restrict(collection_name, claims, subjects, dry_run=dry_run)
        outcome = SubjectOutcome()
        judge = self.judge_for(coll, subjects)
        by_rid = {s.request_id: s for s in subjects}
        now = dt.datetime.now(dt.UTC)
        for obj in self.record_objects(coll, claimed_keys(ref, claims)):
            for vobj, _ in self.record_versions(coll, obj):
                tally = self.judge(coll, vobj, judge)
                if tally is None or not tally.found:
                    continue
                per = tally.per_request()
                if self.store.states.done(coll.bucket, "lock", vobj):
                    what = "already_restricted"
                else:
                    what = "restricted"
                    if not dry_run:
                        kind, value = sorted(by_rid[min(per)].identities.items())[0]
                        reason = lock_reason(self.store.tags(coll.bucket, vobj)) or lock_reason_for(
                            RESTRICTION, f"{kind}\x00{value}", self.store.key)
                        self.store.writes.lock(coll.bucket, vobj, reason, now)
                for rid, n in per.items():
                    outcome.add(rid, ref, what, n)
                    if what == "restricted":  # S3 locks whole versions: the others' records in it are locked too
                        outcome.add(rid, ref, "objects_locked")
                        others = tally.records - sum(per.values())
                        if others > 0:
                            outcome.add(rid, ref, "others_restricted", others)
        return outcome

    def remaining(self, collection_name: str, subjects: list[Subject], mode: str) -> dict[str, int]:
        coll = self.store.coll(collection_name)
        if coll.format is None:
            return self.store.subjects.remaining(collection_name, subjects, mode)
        judge = self.judge_for(coll, subjects)
        own = own_lock_reasons(subjects, self.store.key)
        now = dt.datetime.now(dt.UTC)
        left: dict[str, int] = {}
        for obj in self.record_objects(coll):
            for vobj, _ in self.record_versions(coll, obj):
                tally = self.judge(coll, vobj, judge)
                if tally is None or not tally.found:
                    continue
                if mode == "restrict":
                    allowed = self.store.states.done(coll.bucket, "lock", vobj)
                else:
                    allowed = self.store.subjects.exception(coll, vobj, own, now) is not None
                if not allowed:
                    for rid, n in tally.per_request().items():
                        left[rid] = left.get(rid, 0) + n
        return left

    def rectify_problems(self, collection_name: str, claims: Claims, subjects: list[Subject],
                         new_values: dict[str, str]) -> list[str]:
        """Records: a new value somebody else's record in the same object already carries (the object-level
        check of ``correction`` cannot see it), or one a Parquet column's type cannot hold; counted, never
        a value."""
        coll, ref = self.store.coll(collection_name), self.store.ref(collection_name)
        if coll.format is None:
            return self.store.subjects.rectify_problems(collection_name, claims, subjects, new_values)
        probes = [Subject(f"\x00probe:{kind}", {kind: normalise(kind, value)}) for kind, value in new_values.items()
                  if normalise(kind, value) is not None]
        judge = Judge(coll, [*subjects, *probes])
        fields = [(kind, f.column.partition(":")[2]) for kind, f in coll.identity_fields() if kind in new_values]
        found: dict[str, int] = {}
        for obj in self.record_objects(coll, claimed_keys(ref, claims)):
            for vobj, _ in self.record_versions(coll, obj):
                reader = self.reader(coll, vobj)
                if reader is None:
                    continue
                try:
                    for batch in reader.batches(judge.fields()):
                        for record in batch.records:
                            verdict = judge(record) if record is not None else None
                            if verdict is not None and all(r.startswith("\x00probe:") for r in verdict.rids):
                                for rid in verdict.rids:
                                    problem = (f"{ref}: the new {rid.partition(':')[2]} is already an identity of "
                                               "records that are not this person's")
                                    found[problem] = found.get(problem, 0) + 1
                    if coll.format == "parquet" and reader.schema is not None:
                        for kind, name in fields:
                            problem = self.parquet_misfit(ref, reader.schema, kind, name, new_values[kind])
                            if problem:
                                found[problem] = found.get(problem, 0) + 1
                except RecordsUnreadable as exc:
                    raise self.unreadable(coll, vobj, exc) from None
        return [f"{problem} ({n})" for problem, n in sorted(found.items())]

    @staticmethod
    def parquet_misfit(ref: str, schema: Any, kind: str, name: str, value: str) -> str | None:
        import pyarrow as pa

        if name not in schema.names:
            return None
        column_type = schema.field(name).type
        try:
            pa.array([value], type=column_type)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return f"{ref}.record:{name}: the new {kind} does not fit the Parquet column type {column_type}"
        return None

    def rectify(self, collection_name: str, claims: Claims, subjects: list[Subject], new_values: dict[str, str],
                *, dry_run: bool) -> SubjectOutcome:
        """Records carrying an old value get the new one (in every identity field of the kind) by rewriting the
        current version; older versions holding old values go; held versions are exceptions."""
        coll, ref = self.store.coll(collection_name), self.store.ref(collection_name)
        if coll.format is None:
            return self.store.subjects.rectify(collection_name, claims, subjects, new_values, dry_run=dry_run)
        outcome = SubjectOutcome()
        corrector = Corrector(coll, subjects, new_values)
        own = own_lock_reasons(subjects, self.store.key)
        now = dt.datetime.now(dt.UTC)
        for obj in self.record_objects(coll, claimed_keys(ref, claims)):
            self.erase_object(coll, ref, obj, corrector, own, now, outcome, dry_run, changed_as="rectified")
        return outcome
