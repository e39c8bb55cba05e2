"""Records inside S3 objects (docs/adr/0021-records-inside-objects.md): who a record belongs to (``Judge``,
``Corrector``: a verdict per record, Parquet judged column by column), what a pass over a version found
(``Tally``), and retention by a record field (``Expiry``, a partition's span from its key's date).
Reading an object's records is ``s3_record_read``; the digest a rewrite is checked by, ``s3_record_digest``;
the rewrite itself, ``s3_rewrite``.

This module imports nothing from Airflow.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dateutil.relativedelta import relativedelta

from include.retention import keytemplate
from include.retention.errors import StoreUnavailable
from include.retention.identity import normalise
from include.retention.masking import STRATEGIES, keyed_digest
from include.retention.stores.base import index_subjects
from include.retention.stores.s3_record_read import Batch, ObjectRecords

if TYPE_CHECKING:
    from include.retention.policy import Collection, Mask

log = logging.getLogger(__name__)

NORMALISED_CACHE = 100_000  # distinct identity values remembered per judge (values repeat across records)
JUDGED_SLICE = 10_000  # distinct values made Python objects together
REWRITE_META = "retention-rewritten"  # metadata of a rewritten object: when
RECORD_COLUMNS = ["key", "version_id", "content"]  # per record in an access package (JSON of the record)


class RewriteNotVerified(StoreUnavailable):
    """The re-read of a rewritten object did not show exactly what was meant to be written: the rewrite is
    undone (the original stays) and nothing older is deleted."""


def mask_value(mask: Mask, raw: Any, key: bytes) -> Any:
    if mask.strategy == "null":
        return None
    if mask.strategy == "redact":
        return mask.value if mask.value is not None else "[redacted]"
    return STRATEGIES[mask.strategy].python(raw, mask.value, key)


# ---- who a record belongs to ------------------------------------------------------------------

@dataclass
class Verdict:
    rids: set[str]
    drop: bool  # the record is the person's: it goes; else only ``masks`` fields are masked
    masks: dict[str, Mask] = field(default_factory=dict)
    sets: dict[str, Any] = field(default_factory=dict)  # fields given a new value (a correction)

    def changes(self, record: dict[str, Any], key: bytes) -> dict[str, Any]:
        """Field -> its new value in this record (masked, or corrected)."""
        out = {name: mask_value(mask, record.get(name), key) for name, mask in self.masks.items()}
        out.update(self.sets)
        return out


class Corrector:
    """A correction: records carrying one of the subjects' old values (any identity field of a corrected kind) get
    the new value in that field; nothing is dropped."""

    memo = True  # its verdict depends on ``fields()`` only (see ``verdicts``)
    seen: dict[tuple[Any, ...], Verdict | None]
    hits: dict[Any, Any]

    def __init__(self, coll: Collection, subjects: list[Any], new_values: dict[str, str]):
        self.seen, self.hits = {}, {}
        self.old = {(kind, value): s.request_id for s in subjects for kind, value in s.identities.items()
                    if kind in new_values}
        self.new_values = new_values
        self.targets = [(kind, f.column.partition(":")[2]) for kind, f in coll.identity_fields()
                        if kind in new_values]

    def fields(self) -> list[str]:
        return sorted({n for _, n in self.targets})

    def __call__(self, record: Any) -> Verdict | None:
        if not isinstance(record, dict):
            return None
        rids, sets = set(), {}
        for kind, name in self.targets:
            rid = self.old.get((kind, normalise(kind, record.get(name))))
            if rid is not None:
                rids.add(rid)
                sets[name] = self.new_values[kind]
        return Verdict(rids, False, sets=sets) if rids else None


class Judge:
    """Which records belong to (``erase: row``) or mention (``erase: mask``) one of the subjects; Python's
    ``normalise`` decides equality."""

    memo = True  # its verdict depends on ``fields()`` only (see ``verdicts``)
    seen: dict[tuple[Any, ...], Verdict | None]
    hits: dict[Any, Any]

    def __init__(self, coll: Collection, subjects: list[Any]):
        self.wanted = index_subjects(subjects)
        self.seen, self.hits = {}, {}
        self.rows: list[tuple[str, str]] = []
        self.mentions: list[tuple[str, str, Mask]] = []
        for kind, f in coll.identity_fields():
            name = f.column.partition(":")[2]
            if f.erase == "mask" and f.mask is not None:
                self.mentions.append((kind, name, f.mask))
            else:
                self.rows.append((kind, name))

    def fields(self) -> list[str]:
        return sorted({n for _, n in self.rows} | {n for _, n, _ in self.mentions})

    def _rids(self, kind: str, raw: Any) -> set[str]:
        value = normalise(kind, raw)
        return set(self.wanted.get(kind, {}).get(value, ())) if value is not None else set()

    def __call__(self, record: Any) -> Verdict | None:
        if not isinstance(record, dict):
            return None
        rids: set[str] = set()
        for kind, name in self.rows:
            rids |= self._rids(kind, record.get(name))
        if rids:
            return Verdict(rids, True)
        masks: dict[str, Mask] = {}
        for kind, name, mask in self.mentions:
            found = self._rids(kind, record.get(name))
            if found:
                rids |= found
                masks[name] = mask
        return Verdict(rids, False, masks) if rids else None


class Verdicts(list):  # type: ignore[type-arg]
    """One verdict (or None) per record; ``rows``: the only indices that may hold a verdict (None: any)."""

    rows: list[int] | None = None


def claimed(judged: list[Verdict | None]) -> list[tuple[int, Verdict]]:
    """(index, verdict) of the records a verdict claims, in order."""
    rows = getattr(judged, "rows", None)
    indices = range(len(judged)) if rows is None else rows
    return [(i, v) for i in indices if (v := judged[i]) is not None]


def verdicts(batch: Batch, decide: Decide) -> list[Verdict | None]:
    """One verdict per record of the batch. A judge whose verdict depends on its ``fields()`` only and is None
    unless one field's value alone claims the record (``memo``: ``Judge``, ``Corrector``) reads Parquet column by
    column: each distinct value of a field is judged once, and only the records holding a claimed value are
    judged as records (no other record is made a Python object). The verdicts of a Parquet batch are kept with the
    batch for the same judge (a rewrite and its ``Expected`` tap read the same batch)."""
    table = batch.table
    if table is None or batch.rows is not None or not getattr(decide, "memo", False):
        return [decide(record) if record is not None else None for record in batch.records]
    if batch.judged is not None and batch.judged[0] is decide:
        return batch.judged[1]
    out = _column_verdicts(table, decide)
    batch.judged = (decide, out)
    return out


def _column_verdicts(table: Any, decide: Any) -> list[Verdict | None]:
    import pyarrow as pa

    names = [name for name in decide.fields() if name in table.column_names]
    if not names:
        return [decide({})] * table.num_rows
    rows = matching_rows(table, names, lambda name, value: decide({name: value}) is not None, decide.hits)
    seen = decide.seen
    if rows is None:  # types read value by value
        rows = list(range(table.num_rows))
    out = Verdicts([None] * table.num_rows)
    out.rows = rows
    if not rows:
        return out
    picked = table.select(names)
    if len(rows) < table.num_rows:
        picked = picked.take(pa.array(rows, type=pa.int64()))
    fields = tuple(names)  # part of the key: objects of one collection may carry different fields
    for i, values in zip(rows, zip(*(picked.column(name).to_pylist() for name in names), strict=True),
                         strict=True):
        try:
            verdict = seen[fields, values]
        except KeyError:
            if len(seen) >= NORMALISED_CACHE:
                seen.clear()
            verdict = seen[fields, values] = decide(dict(zip(names, values, strict=True)))
        except TypeError:  # unhashable values (lists, maps): asked every time
            verdict = decide(dict(zip(names, values, strict=True)))
        out[i] = verdict
    return out


def matching_rows(table: Any, names: list[str], matches: Callable[[str, Any], bool],
                  seen: dict[Any, Any]) -> list[int] | None:
    """Rows of a Parquet slice where some field's value, judged alone (``matches``), matches; None where a field's
    type cannot be compared column-wise (the caller reads every record). Each distinct value is judged once per
    ``seen`` (per field and type: the values judged so far and those that matched, as Arrow arrays)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    hit = None
    for name in names:
        column = table.column(name)
        if pa.types.is_nested(column.type) or pa.types.is_dictionary(column.type):
            return None
        state = seen.setdefault((name, str(column.type)), {"known": None, "claimed": None})
        distinct = pc.unique(column)
        distinct = distinct.filter(pc.is_valid(distinct))
        known = state["known"]
        new = distinct if known is None else distinct.filter(pc.invert(pc.is_in(distinct, value_set=known)))
        if len(new):
            claimed = [value for start in range(0, len(new), JUDGED_SLICE)  # few Python objects at once
                       for value in new.slice(start, JUDGED_SLICE).to_pylist() if matches(name, value)]
            if known is not None and len(known) + len(new) > NORMALISED_CACHE:
                known = None  # forgotten (those that matched are kept): judged again when they recur
            state["known"] = new if known is None else pa.concat_arrays([known, new])
            if claimed and state["claimed"] is not None:
                claimed = [value for value in claimed if value not in set(state["claimed"].to_pylist())]
            if claimed:
                more = pa.array(claimed, type=column.type)
                state["claimed"] = more if state["claimed"] is None else pa.concat_arrays([state["claimed"], more])
        if state["claimed"] is not None:
            mask = pc.is_in(column, value_set=state["claimed"]).to_numpy(zero_copy_only=False)
            hit = mask if hit is None else hit | mask
    return [] if hit is None else np.flatnonzero(hit).tolist()


def identities(batch: Batch, fields: list[tuple[str, str]], seen: dict[Any, Any], judge: Judge | None = None
               ) -> Iterator[dict[str, set[str]]]:
    """Per record of the batch (blank lines skipped), its identities: kind -> normalised values (empty: none).
    Parquet is read column by column, each distinct combination of values normalised once (``seen``); with a
    ``judge``, only the records holding one of its subjects' values (the others may be left out: ``candidates``)."""
    if batch.table is not None and batch.rows is None and judge is not None:
        import pyarrow as pa

        names = [name for name in judge.fields() if name in batch.table.column_names]
        rows = matching_rows(batch.table, names, lambda name, value: judge({name: value}) is not None, judge.hits)
        if rows is not None:
            batch = Batch(None, table=batch.table.take(pa.array(rows, type=pa.int64())))
    if batch.table is None or batch.rows is not None:
        for record in batch.records:
            if isinstance(record, dict):
                yield _identities_of(record, fields)
        return
    names = [name for name in sorted({n for _, n in fields}) if name in batch.table.column_names]
    if not names:
        yield from ({} for _ in range(batch.table.num_rows))
        return
    present = tuple(names)  # part of the key: objects of one collection may carry different fields
    for values in zip(*(batch.table.column(name).to_pylist() for name in names), strict=True):
        try:
            found = seen[present, values]
        except KeyError:
            if len(seen) >= NORMALISED_CACHE:
                seen.clear()
            found = seen[present, values] = _identities_of(dict(zip(names, values, strict=True)), fields)
        except TypeError:
            found = _identities_of(dict(zip(names, values, strict=True)), fields)
        yield found


def _identities_of(record: dict[str, Any], fields: list[tuple[str, str]]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for kind, name in fields:
        value = normalise(kind, record.get(name))
        if value is not None:
            found.setdefault(kind, set()).add(value)
    return found



@dataclass
class Tally:
    """What a pass over one version found or did: records in it, per request dropped / masked, and the digest of
    the records that remain (in order)."""

    records: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    masked: dict[str, int] = field(default_factory=dict)
    removed: int = 0
    kept: int = 0
    digest: Any = field(default_factory=hashlib.sha256)

    def count(self, verdict: Verdict) -> None:
        target = self.dropped if verdict.drop else self.masked
        for rid in verdict.rids:
            target[rid] = target.get(rid, 0) + 1

    @property
    def found(self) -> bool:
        return bool(self.dropped or self.masked)

    def per_request(self) -> dict[str, int]:
        out = dict(self.dropped)
        for rid, n in self.masked.items():
            out[rid] = out.get(rid, 0) + n
        return out


Decide = Callable[[Any], "Verdict | None"]


def judge_version(reader: ObjectRecords, decide: Decide, columns: list[str] | None) -> Tally:
    tally = Tally()
    for batch in reader.batches(columns, whole=bool(getattr(decide, "memo", False))):
        tally.records += batch.count()
        for _, verdict in claimed(verdicts(batch, decide)):
            tally.count(verdict)
    return tally



def key_digest(key: bytes, object_key: str) -> str:
    """What errors and logs name an object by."""
    return keyed_digest(key, object_key)[:16]


# ---- retention by a record field ---------------------------------------------------------------

def record_time(value: Any) -> dt.datetime | None:
    """A record's start field as an aware instant (naive is UTC): a timestamp, a date, or ISO 8601 text; None
    for anything else (such a record is kept: no period can be counted)."""
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    if isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            parsed = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    return None


EXPIRED = "expired"


class Expiry:
    """Which records are past their storage period: the start field before ``edge``. Counts as one pseudo-request
    (``EXPIRED``) in a ``Tally``; ``undated`` counts records whose field holds no readable time (kept)."""

    def __init__(self, name: str, edge: dt.datetime):
        self.name, self.edge, self.undated = name, edge, 0

    def fields(self) -> list[str]:
        return [self.name]

    def __call__(self, record: Any) -> Verdict | None:
        if not isinstance(record, dict):
            return None
        when = record_time(record.get(self.name))
        if when is None:
            self.undated += 1
            return None
        return Verdict({EXPIRED}, True) if when < self.edge else None


def partition_span(match: re.Match[str] | None) -> tuple[dt.datetime, dt.datetime] | None:
    """[start, end) of the partition a key's date names (``{yyyy}`` a year ... ``{hh}`` an hour); None without."""
    if match is None:
        return None
    start = keytemplate.key_date(match)
    if start is None:
        return None
    parts = match.groupdict()
    step = (relativedelta(hours=1) if parts.get("hh") else relativedelta(days=1) if parts.get("dd")
            else relativedelta(months=1) if parts.get("mm") else relativedelta(years=1))
    return start, start + step
