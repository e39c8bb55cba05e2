"""Sweeps of records inside S3 objects by a record field (docs/adr/0021, "Sweeps"): a mixin of ``S3RecordSubjects``.

Each object of the collection is classified at the sweep's instant: out of the key template, kept (its partition
starts after the period's edge, or only delete markers), held (its current version, or for a partition to go whole
any version), expired (its whole partition is past the period: it
goes whole, every version) or mixed (its records decide: an object holding expired records is rewritten without
them, its older versions holding expired records deleted). A sweep walks the whole collection (one task per rule),
or only the objects of one batch of a sealed plan (``keys``: one mapped task per batch, ``include/retention/
record_batches.py``): the batch's objects are listed and classified again under the plan's instant, so a batch run
twice, or after its objects changed, acts only on what is still due.

Every DeleteObjects batch and every rewrite is announced in the ledger before and settled after, and its intent
carries, sealed, how to find it again (``reread``): the partitions' keys (``S3Store.reconcile_batch`` counts those
no longer listed), or the rewritten object's key and the instant (``reconcile_rewrite``: done when none of its
versions holds an expired record any more).

This module imports nothing from Airflow.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from include.retention import keytemplate
from include.retention.policy import cutoff
from include.retention.stores.base import RulePlan, StageResult, SubjectOutcome, begin_record, end_record
from include.retention.stores.s3_objects import MAX_DELETE, S3Core, S3Object
from include.retention.stores.s3_record_read import RecordsUnreadable
from include.retention.stores.s3_records import EXPIRED, Expiry, partition_span, record_time
from include.retention.stores.s3_writes import Purger

if TYPE_CHECKING:
    import re

    from include.retention.policy import Collection, Rule, Stage
    from include.retention.stores.base import Recorder
    from include.retention.stores.s3_spool import Spool

log = logging.getLogger(__name__)

REWRITE_WALK = "record_rewrite"  # the ``walk`` of a rewrite's sealed reread


class RecordSweeps:
    """Plan and act of a rule counting from a record field (mixed into ``S3RecordSubjects``)."""

    store: S3Core  # and S3RecordSubjects' reader, unreadable, judge, record_versions, erase_object

    def record_edge(self, rule: Rule, now: dt.datetime) -> dt.datetime:
        # Validation allows delete stages only, one per rule: its end of period.
        return max(cutoff(now, stage, rule.start) for stage in rule.stages)

    def record_state(self, coll: Collection, rule: Rule, obj: S3Object, now: dt.datetime, edge: dt.datetime,
                     pattern: re.Pattern[str] | None) -> str:
        """out / kept / held / expired / mixed (the module's docstring) of one object as listed."""
        match = pattern.fullmatch(obj.key) if pattern else None
        if pattern is not None and match is None:
            return "out"
        if not obj.version_id and not obj.live:
            return "kept"  # only delete markers: no records
        span = partition_span(match)
        if span is not None and span[0] >= edge:
            return "kept"  # partition pruning: no record of it can be expired
        if self.store.states.held(coll.bucket, coll, obj, now):
            return "held"
        expired = span is not None and span[1] <= edge and self.footer_agrees(coll, obj, rule, edge)
        if expired and self.older_held(coll, obj, now):
            return "held"  # an expired partition goes whole, every version: a hold on any of them keeps it
        return "expired" if expired else "mixed"

    def older_held(self, coll: Collection, obj: S3Object, now: dt.datetime) -> bool:
        """Is an older data version of the object under a legal hold (a tag condition, or S3's own)? (A rewrite
        judges each version itself; a partition deleted whole must ask before.)"""
        if not self.store.bucket_info(coll.bucket).versioned:
            return False
        return any(self.store.states.held(coll.bucket, coll, S3Object(obj.key, obj.last_modified, version_id=vid),
                                          now) for vid in obj.data_versions if vid != obj.version_id)

    def record_walk(self, collection_name: str, rule: Rule, now: dt.datetime, keys: list[str] | None = None
                    ) -> Iterator[tuple[S3Object, str]]:
        """(object, state) of every object of the collection (a listing), or of the objects under exactly ``keys``
        as they are now (a batch of a sealed plan; a key gone since is left out)."""
        coll = self.store.coll(collection_name)
        pattern = keytemplate.regex(coll.key_template) if coll.key_template else None
        edge = self.record_edge(rule, now)
        if keys is None:
            pages: Iterator[list[S3Object]] = iter(self.store.objects(coll.bucket, self.store.prefix(coll)))
        else:
            pages = ([o for o, _ in page] for page in self.store.subjects.objects_now(coll, sorted(keys)))
        for page in pages:
            for obj in page:
                yield obj, self.record_state(coll, rule, obj, now, edge, pattern)

    def footer_agrees(self, coll: Collection, obj: S3Object, rule: Rule, edge: dt.datetime) -> bool:
        """Parquet: does the footer's statistics of the start field confirm every record is before ``edge``? Where
        they do not (a late record in an old partition, or no statistics), the records are read instead of the
        partition going whole. Other formats have no such index: the key's date decides."""
        if coll.format != "parquet":
            return True
        reader = self.reader(coll, obj)
        if reader is None:
            return False
        try:
            meta = reader.parquet_file().metadata
        except RecordsUnreadable as exc:
            raise self.unreadable(coll, obj, exc) from None
        names = reader.schema.names
        if rule.start.name not in names:
            return True  # no record carries a time: the key's date is all there is
        column = names.index(rule.start.name)
        for i in range(meta.num_row_groups):
            stats = meta.row_group(i).column(column).statistics
            latest = record_time(stats.max) if stats is not None and stats.has_min_max else None
            if latest is None or latest >= edge:
                return False
        return True

    def expired_records(self, coll: Collection, obj: S3Object, expiry: Expiry) -> bool:
        for vobj, _ in self.record_versions(coll, obj):
            tally = self.judge(coll, vobj, expiry)
            if tally is not None and tally.found:
                return True
        return False

    def plan_records(self, collection_name: str, rule: Rule, now: dt.datetime, spool: Spool | None = None
                     ) -> RulePlan:
        """Objects of the collection, and those a sweep would delete whole or rewrite (records read where the key's
        date does not decide); ``spool``: where the due objects are written (a plan to be cut into batches)."""
        coll = self.store.coll(collection_name)
        expiry = Expiry(rule.start.name or "", self.record_edge(rule, now))
        total = in_scope = held = due = 0
        for obj, state in self.record_walk(collection_name, rule, now):
            total += 1
            if state == "out":
                continue
            in_scope += 1
            held += state == "held"
            if state == "expired" or (state == "mixed" and self.expired_records(coll, obj, expiry)):
                due += 1
                if spool is not None:
                    spool.add(obj)
        if expiry.undated:
            log.warning("%s.%s: %d records carry no readable %s time and are kept", self.store.name, collection_name,
                        expiry.undated, "start field")
        return RulePlan(total=total, in_scope=in_scope, eligible={"delete": due}, held=held)

    def sweep_records(self, collection_name: str, rule: Rule, stage: Stage, now: dt.datetime, batch_size: int,
                      record: Recorder, keys: list[str] | None = None) -> StageResult:
        """Expired partitions go whole (every version, in DeleteObjects batches); an object with some expired
        records is rewritten without them and its older versions holding expired records go. Each batch / each
        rewrite is announced in the ledger before and settled after (records removed in its details). ``keys``:
        only these objects (one batch of a sealed plan), classified again now."""
        coll = self.store.coll(collection_name)
        ref = self.store.ref(collection_name)
        expiry = Expiry(rule.start.name or "", self.record_edge(rule, now))
        result = StageResult(action="delete")
        intent: list[Any] = [None]

        def before_batch(keys: list[str]) -> None:
            intent[0] = begin_record(record, "delete", len(keys), self.store.digest(keys),
                                     {"walk": "keys", "keys": list(keys)})

        def on_batch(keys: list[str], versions: int, errors: int) -> None:
            result.batches += 1
            result.changed += len(keys)
            end_record(record, intent[0], "delete", len(keys), self.store.digest(keys),
                       {"batch": result.batches, "versions": versions, "errors": errors, "partitions": len(keys)})

        purger = Purger(self.store, coll.bucket, min(batch_size, MAX_DELETE), on_batch, before_batch)
        for obj, state in self.record_walk(collection_name, rule, now, keys):
            if state == "expired":
                self.store.writes.release_own_hold(coll.bucket, obj)
                purger.add(obj)
            elif state == "mixed" and self.expired_records(coll, obj, expiry):
                self.sweep_rewrite(coll, ref, obj, expiry, now, record, result)
        purger.flush()
        log.info("%s.%s: %d objects deleted whole or rewritten without expired records", self.store.name,
                 collection_name, result.changed)
        return result

    def sweep_rewrite(self, coll: Collection, ref: str, obj: S3Object, expiry: Expiry, now: dt.datetime,
                      record: Recorder, result: StageResult) -> None:
        """Rewrite one partly expired object (an intent before, the records removed after)."""
        digest = self.store.digest([obj.key])
        token = begin_record(record, "delete", 1, digest, {"walk": REWRITE_WALK, "keys": [obj.key], "now": now})
        outcome = SubjectOutcome()
        self.erase_object(coll, ref, obj, expiry, set(), now, outcome, False)
        counts = outcome.per_request.get(EXPIRED, {}).get(ref, {})
        removed = counts.get("deleted", 0)
        changed = 1 if removed or counts.get("versions_deleted") else 0
        result.batches += 1
        result.changed += changed
        end_record(record, token, "delete", changed, digest,
                   {"batch": result.batches, "records": removed, "rewritten": changed,
                    "versions": counts.get("versions_deleted", 0),
                    "kept": sum(n for k, n in counts.items() if k.startswith("exception:"))})

    def reconcile_rewrite(self, collection_name: str, rule: Rule, reread: dict[str, Any]
                          ) -> tuple[int, dict[str, Any]]:
        """A rewrite whose run stopped before its outcome: done (1) when no version of the object holds an expired
        record any more (judged under the instant of its sweep), else not done (0; the next plan finds it due
        again and rewrites it)."""
        coll = self.store.coll(collection_name)
        now = reread["now"]
        expiry = Expiry(rule.start.name or "", self.record_edge(rule, now))
        left = any(self.expired_records(coll, obj, expiry) for page in
                   self.store.subjects.objects_now(coll, list(reread["keys"])) for obj, _ in page)
        count = 0 if left else 1
        return count, {"how": "reread", "committed": bool(count),
                       "note": "re-read: the object's versions still hold expired records; the rewrite did not finish"
                               if left else "re-read: no version of the object holds an expired record any more"}
