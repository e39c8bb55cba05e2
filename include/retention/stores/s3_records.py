"""Records inside S3 objects: CSV (a header line), JSON lines and Parquet, gzipped where the key ends ``.gz`` or
the object's Content-Encoding says ``gzip`` (docs/adr/0021-records-inside-objects.md).

Reading is streamed: lines in batches of ``RECORD_BATCH`` (CSV, JSON lines), one row group at a time (Parquet,
read through ranged GETs of exactly one object version), so memory is bounded by a batch or a row group, never
by the object. A rewrite writes what is kept through ``Upload`` (a new version of the key in a versioned bucket;
a temporary key copied over the original in a plain one), then re-reads what it wrote and checks it before
anything older is deleted: the record count is the old count minus the records removed, the schema (Parquet)
or header (CSV) is the same, and a digest over every record written in order equals the digest of the records
it was meant to hold (every other record unchanged in content, masked ones exactly as masked). Kept CSV rows
and JSON lines are copied byte for byte.

This module imports nothing from Airflow.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import logging
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dateutil.relativedelta import relativedelta

from include.retention import keytemplate
from include.retention.errors import StoreUnavailable
from include.retention.identity import normalise
from include.retention.masking import STRATEGIES, keyed_digest
from include.retention.stores.base import index_subjects
from include.retention.stores.s3_objects import CHUNK

if TYPE_CHECKING:
    from include.retention.policy import Collection, Mask
    from include.retention.stores.s3_objects import S3Core, S3Object

log = logging.getLogger(__name__)

RECORD_BATCH = 1000  # CSV rows / JSON lines judged and written together
PARQUET_SLICE = 10_000  # Parquet records turned into Python objects together (a row group is read whole)
NORMALISED_CACHE = 100_000  # distinct identity values remembered per judge (values repeat across records)
REWRITE_META = "retention-rewritten"  # metadata of a rewritten object: when
RECORD_COLUMNS = ["key", "version_id", "content"]  # per record in an access package (JSON of the record)


class RecordsUnreadable(StoreUnavailable):
    """An object of a records collection cannot be read as its format says: nothing of it is changed, and a
    request touching it stays open (it is never reported done)."""


class RewriteNotVerified(StoreUnavailable):
    """The re-read of a rewritten object did not show exactly what was meant to be written: the rewrite is
    undone (the original stays) and nothing older is deleted."""


def is_gzip(key: str, head: dict[str, Any] | None) -> bool:
    encoding = ((head or {}).get("ContentEncoding") or "").lower()
    return key.endswith(".gz") or "gzip" in encoding


def canonical(record: Any) -> bytes:
    """One record as compared: field order, names, values and their Python types (repr)."""
    if isinstance(record, dict):
        return repr(list(record.items())).encode("utf-8", "surrogatepass")
    return repr(record).encode("utf-8", "surrogatepass")


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


# ---- reading ------------------------------------------------------------------------------------

def _decompressed(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """gunzip, member after member (``cat a.gz b.gz`` is one gzip stream of two members)."""
    d, started = zlib.decompressobj(31), False
    for chunk in chunks:
        pending = chunk
        while pending:
            started = True
            try:
                out = d.decompress(pending)
            except zlib.error:
                raise RecordsUnreadable("the object is not valid gzip") from None
            if out:
                yield out
            if d.eof:
                pending = d.unused_data
                d, started = zlib.decompressobj(31), False
            else:
                pending = b""
    if started:
        raise RecordsUnreadable("the object's gzip stream ends early")


def _lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Lines with their endings, exactly as stored; linear in the bytes even for very long lines."""
    carry = bytearray()
    for chunk in chunks:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                carry += chunk[start:]
                break
            if carry:
                carry += chunk[start:end + 1]
                yield bytes(carry)
                carry.clear()
            else:
                yield chunk[start:end + 1]
            start = end + 1
    if carry:
        yield bytes(carry)


def line_ending(raw: bytes) -> str:
    return "\r\n" if raw.endswith(b"\r\n") else "\n" if raw.endswith(b"\n") else ""


@dataclass
class Batch:
    """Records read together: ``records[i]`` is None for what is no record (a blank line); ``raws[i]`` its bytes
    (CSV, JSON lines); ``table`` a slice of a row group (Parquet: its records are made Python objects only when
    ``records`` is asked for)."""

    rows: list[Any] | None
    raws: list[bytes] | None = None
    table: Any = None
    last: bool = True  # Parquet: the last slice of its row group

    @property
    def records(self) -> list[Any]:
        if self.rows is None:
            self.rows = self.table.to_pylist()
        return self.rows

    def count(self) -> int:
        """Records in the batch (blank lines are none)."""
        if self.rows is None:
            return self.table.num_rows
        return sum(record is not None for record in self.rows)

    def record(self, i: int) -> Any:
        return self.rows[i] if self.rows is not None else self.table.slice(i, 1).to_pylist()[0]


def verdicts(batch: Batch, decide: Decide) -> list[Verdict | None]:
    """One verdict per record of the batch. A judge whose verdict depends on its ``fields()`` only and is None
    unless one field's value alone claims the record (``memo``: ``Judge``, ``Corrector``) reads Parquet column by
    column: each distinct value of a field is judged once, and only the records holding a claimed value are
    judged as records (no other record is made a Python object)."""
    table = batch.table
    if table is None or batch.rows is not None or not getattr(decide, "memo", False):
        return [decide(record) if record is not None else None for record in batch.records]
    import pyarrow as pa

    names = [name for name in decide.fields() if name in table.column_names]
    if not names:
        return [decide({})] * table.num_rows
    rows = matching_rows(table, names, lambda name, value: decide({name: value}) is not None,
                         decide.hits)  # type: ignore[attr-defined]
    seen = decide.seen  # type: ignore[attr-defined]
    if rows is None:  # types read value by value
        rows = list(range(table.num_rows))
    out: list[Verdict | None] = [None] * table.num_rows
    if not rows:
        return out
    picked = table.select(names)
    if len(rows) < table.num_rows:
        picked = picked.take(pa.array(rows, type=pa.int64()))
    for i, values in zip(rows, zip(*(picked.column(name).to_pylist() for name in names), strict=True),
                         strict=True):
        try:
            verdict = seen[values]
        except KeyError:
            if len(seen) >= NORMALISED_CACHE:
                seen.clear()
            verdict = seen[values] = decide(dict(zip(names, values, strict=True)))
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
            claimed = [value for value in new.to_pylist() if matches(name, value)]
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
    for values in zip(*(batch.table.column(name).to_pylist() for name in names), strict=True):
        try:
            found = seen[values]
        except KeyError:
            if len(seen) >= NORMALISED_CACHE:
                seen.clear()
            found = seen[values] = _identities_of(dict(zip(names, values, strict=True)), fields)
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


class ColumnDigest:
    """A digest of records in order, column by column (Parquet): per column, its values as canonical bytes
    (integers, floats, times and dates: their fixed-width values, nulls as zero, plus the validity of each;
    strings and binaries: validity, lengths and bytes) or, for any other type, the ``repr`` of its Python values
    (as ``canonical``). The same for the same records in the same order however they are cut into row groups or
    slices; any changed, missing, added or moved value changes it."""

    def __init__(self) -> None:
        self.columns: dict[str, tuple[str, list[Any]]] = {}
        self.started: set[str] = set()

    def update_table(self, table: Any) -> None:
        if not table.num_rows:
            return
        for name, column in zip(table.column_names, table.columns, strict=True):
            kind = _stream_kind(column.type)
            entry = self.columns.setdefault(name, (str(column.type), [hashlib.sha256() for _ in range(3)]))
            streams = entry[1]
            for chunk in column.chunks:
                if not len(chunk):
                    continue
                if kind is None:  # the separator goes before every chunk but the column's first
                    text = repr(chunk.to_pylist())[1:-1].encode("utf-8", "surrogatepass")
                    streams[2].update(b", " + text if name in self.started else text)
                    self.started.add(name)
                    continue
                for digest, data in zip(streams, _streams(chunk, kind), strict=True):
                    digest.update(data)

    def hexdigest(self) -> str:
        out = hashlib.sha256()
        for name, (type_name, streams) in self.columns.items():
            out.update(repr((name, type_name, [d.hexdigest() for d in streams])).encode("utf-8", "surrogatepass"))
        return out.hexdigest()


def _stream_kind(column_type: Any) -> str | None:
    import pyarrow as pa

    t = column_type
    if (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_timestamp(t) or pa.types.is_date(t)
            or pa.types.is_time(t) or pa.types.is_duration(t)) and t.bit_width in (8, 16, 32, 64):
        return "fixed"
    if pa.types.is_string(t) or pa.types.is_binary(t):
        return "var32"
    if pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        return "var64"
    return None


def _streams(chunk: Any, kind: str) -> tuple[bytes, bytes, bytes]:
    """(validity, lengths, values) of one array as canonical bytes, whatever its offset and buffers."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n, t = len(chunk), chunk.type
    valid = (np.ones(n, dtype=np.uint8) if not chunk.null_count
             else chunk.is_valid().to_numpy(zero_copy_only=False).astype(np.uint8))
    if kind == "fixed":
        width = t.bit_width // 8
        values = np.frombuffer(chunk.buffers()[1], dtype=f"<u{width}", count=chunk.offset + n)[chunk.offset:]
        if chunk.null_count:
            values = np.where(valid.astype(bool), values, 0).astype(f"<u{width}")
        return valid.tobytes(), b"", values.tobytes()
    if chunk.null_count:
        chunk = pc.fill_null(chunk, pa.scalar("" if pa.types.is_string(t) or pa.types.is_large_string(t) else b"",
                                              type=t))
    buffers = chunk.buffers()
    offsets = np.frombuffer(buffers[1], dtype="<i4" if kind == "var32" else "<i8",
                            count=chunk.offset + n + 1)[chunk.offset:]
    data = memoryview(buffers[2])[int(offsets[0]):int(offsets[-1])] if buffers[2] is not None else b""
    return valid.tobytes(), np.diff(offsets).tobytes(), bytes(data)


class _Capture:
    """The lines ``csv.reader`` consumes, kept as bytes so a kept row is copied exactly."""

    def __init__(self, lines: Iterator[bytes]):
        self.lines, self.taken = lines, []

    def __iter__(self) -> _Capture:
        return self

    def __next__(self) -> str:
        line = next(self.lines)
        self.taken.append(line)
        try:
            return line.decode("utf-8")
        except UnicodeDecodeError:
            raise RecordsUnreadable("a CSV line is not UTF-8") from None


class RangeFile(io.RawIOBase):
    """One object version, read by ranged GETs (what pyarrow seeks in a Parquet file)."""

    def __init__(self, store: S3Core, bucket: str, obj: S3Object, size: int, etag: str | None):
        super().__init__()
        self.store, self.bucket, self.obj, self.size, self.pos = store, bucket, obj, size, 0
        self.source = {"VersionId": obj.version_id} if obj.version_id else ({"IfMatch": etag} if etag else {})

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.pos + offset if whence == 1 else self.size + offset
        return self.pos

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.size - self.pos)
        if n <= 0:
            return 0
        body = self.store.call("get_object", Bucket=self.bucket, Key=self.obj.key,
                               Range=f"bytes={self.pos}-{self.pos + n - 1}", **self.source)["Body"]
        try:
            data = body.read()
        finally:
            body.close()
        buffer[:len(data)] = data
        self.pos += len(data)
        return len(data)


class ObjectRecords:
    """The records of one object version, read batch by batch."""

    def __init__(self, store: S3Core, coll: Collection, obj: S3Object, head: dict[str, Any],
                 gzip: bool | None = None):
        self.store, self.coll, self.obj, self.head = store, coll, obj, head
        self.fmt = coll.format
        # ``gzip``: as the original was (a rewrite's temporary key does not end in .gz)
        self.gzip = (is_gzip(obj.key, head) if gzip is None else gzip) and self.fmt != "parquet"
        self.header: list[str] | None = None  # CSV
        self.header_raw: bytes = b""
        self.schema: Any = None  # Parquet
        self.compression = "snappy"

    def _chunks(self) -> Iterator[bytes]:
        source = self.obj.vid() or ({"IfMatch": self.head["ETag"]} if self.head.get("ETag") else {})
        body = self.store.call("get_object", Bucket=self.coll.bucket, Key=self.obj.key, **source)["Body"]
        try:
            chunks = body.iter_chunks(CHUNK)
            yield from (_decompressed(chunks) if self.gzip else chunks)
        finally:
            body.close()

    def batches(self, columns: list[str] | None = None) -> Iterator[Batch]:
        """Batches of records; ``columns`` (Parquet): read only these (those the object has)."""
        if self.fmt == "parquet":
            yield from self._parquet(columns)
        elif self.fmt == "csv":
            yield from self._csv()
        else:
            yield from self._jsonl()

    def _jsonl(self) -> Iterator[Batch]:
        records: list[Any] = []
        raws: list[bytes] = []
        for number, raw in enumerate(_lines(self._chunks()), 1):
            text = raw.strip()
            if not text:
                record = None
            else:
                try:
                    record = json.loads(text)
                except (ValueError, UnicodeDecodeError):
                    raise RecordsUnreadable(f"line {number} is not JSON") from None
            records.append(record)
            raws.append(raw)
            if len(records) >= RECORD_BATCH:
                yield Batch(records, raws)
                records, raws = [], []
        if records:
            yield Batch(records, raws)

    def _csv(self) -> Iterator[Batch]:
        capture = _Capture(_lines(self._chunks()))
        reader = csv.reader(capture)
        records: list[Any] = []
        raws: list[bytes] = []
        try:
            for row in reader:
                raw = b"".join(capture.taken)
                capture.taken.clear()
                if self.header is None:
                    if row and row[0].startswith("\ufeff"):
                        row[0] = row[0][1:]
                    if len(set(row)) != len(row):
                        raise RecordsUnreadable("the CSV header names a column twice")
                    self.header, self.header_raw = row, raw
                    continue
                if not row:
                    records.append(None)
                elif len(row) != len(self.header):
                    raise RecordsUnreadable(f"CSV row {reader.line_num} has {len(row)} fields, the header "
                                            f"{len(self.header)}")
                else:
                    records.append(dict(zip(self.header, row, strict=True)))
                raws.append(raw)
                if len(records) >= RECORD_BATCH:
                    yield Batch(records, raws)
                    records, raws = [], []
        except csv.Error as exc:
            raise RecordsUnreadable(f"CSV line {reader.line_num}: {type(exc).__name__}") from None
        if records:
            yield Batch(records, raws)

    def parquet_file(self) -> Any:
        import pyarrow.parquet as pq

        size = int(self.head.get("ContentLength") or 0)
        try:
            pf = pq.ParquetFile(RangeFile(self.store, self.coll.bucket, self.obj, size, self.head.get("ETag")))
        except StoreUnavailable:
            raise
        except Exception as exc:  # pyarrow's ArrowInvalid and friends
            raise RecordsUnreadable(f"not a Parquet file ({type(exc).__name__})") from None
        self.schema = pf.schema_arrow
        if pf.metadata.num_row_groups and pf.metadata.row_group(0).num_columns:
            codec = pf.metadata.row_group(0).column(0).compression.lower()
            self.compression = {"uncompressed": "none", "lz4_raw": "lz4"}.get(codec, codec)
        return pf

    def _parquet(self, columns: list[str] | None) -> Iterator[Batch]:
        pf = self.parquet_file()
        names = None if columns is None else [c for c in columns if c in pf.schema_arrow.names]
        if names == []:
            # none of the fields asked for: the records still count, with no fields
            for i in range(pf.metadata.num_row_groups):
                yield Batch([{}] * pf.metadata.row_group(i).num_rows)
            return
        for i in range(pf.metadata.num_row_groups):
            try:
                table = pf.read_row_group(i, columns=names)
            except StoreUnavailable:
                raise
            except Exception as exc:
                raise RecordsUnreadable(f"Parquet row group {i} unreadable ({type(exc).__name__})") from None
            if not table.num_rows:
                yield Batch([], table=table)
            for start in range(0, table.num_rows, PARQUET_SLICE):
                part = table.slice(start, PARQUET_SLICE)
                yield Batch(None, table=part, last=start + PARQUET_SLICE >= table.num_rows)


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
    for batch in reader.batches(columns):
        tally.records += batch.count()
        for verdict in verdicts(batch, decide):
            if verdict is not None:
                tally.count(verdict)
    return tally


def digest_of(reader: ObjectRecords) -> tuple[int, Any]:
    """(records, digest over them in order) of a version, as ``write_version`` computes it for what it keeps."""
    if reader.fmt == "parquet":
        columns, n = ColumnDigest(), 0
        for batch in reader.batches():
            n += batch.table.num_rows
            columns.update_table(batch.table)
        return n, columns
    digest, n = hashlib.sha256(), 0
    for batch in reader.batches():
        for record in batch.records:
            if record is None:
                continue
            n += 1
            digest.update(canonical(record) + b"\n")
    return n, digest


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
