"""Reading the records inside one S3 object version: CSV (a header line), JSON lines and Parquet, gzipped where the
key ends ``.gz`` or the object's Content-Encoding says ``gzip`` (docs/adr/0021-records-inside-objects.md).

Reading is streamed: lines in batches of ``RECORD_BATCH`` (CSV, JSON lines), one row group at a time (Parquet, read
through ranged GETs of exactly one object version, or from a local copy of it: ``local``), so memory is bounded by a
batch or a row group, never by the object. Kept CSV rows and JSON lines keep their bytes (``Batch.raws``), so a
rewrite copies them exactly.

This module imports nothing from Airflow.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from include.retention.errors import StoreUnavailable
from include.retention.stores.s3_objects import CHUNK
from include.retention.stores.s3_record_digest import ColumnDigest, canonical

if TYPE_CHECKING:
    from include.retention.policy import Collection
    from include.retention.stores.s3_objects import S3Core, S3Object

RECORD_BATCH = 1000  # CSV rows / JSON lines judged and written together
PARQUET_SLICE = 10_000  # Parquet records turned into Python objects together (a row group is read whole)


class RecordsUnreadable(StoreUnavailable):
    """An object of a records collection cannot be read as its format says: nothing of it is changed, and a
    request touching it stays open (it is never reported done)."""


def is_gzip(key: str, head: dict[str, Any] | None) -> bool:
    encoding = ((head or {}).get("ContentEncoding") or "").lower()
    return key.endswith(".gz") or "gzip" in encoding


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


def _file_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


class _TwiceNamed(ValueError):
    """A JSON object naming a field twice (json keeps the last value only: the first would never be judged)."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _TwiceNamed
    return out


_JSON = json.JSONDecoder(object_pairs_hook=_no_duplicates)  # built once: json.loads with a hook builds one per call


def json_record(text: bytes) -> Any:
    """One JSON line (its encoding detected as ``json.loads`` does); a field named twice raises ``_TwiceNamed``."""
    return _JSON.decode(text.decode(json.detect_encoding(text), "surrogatepass"))


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
    judged: Any = None  # Parquet: (judge, its verdicts on this batch), see ``s3_records.verdicts``

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


class SizedRaw(io.RawIOBase):
    """A readable, seekable raw stream of ``size`` bytes; subclasses read at ``pos`` (``readinto``)."""

    def __init__(self, size: int):
        super().__init__()
        self.size, self.pos = size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.pos + offset if whence == 1 else self.size + offset
        return self.pos


class RangeFile(SizedRaw):
    """One object version, read by ranged GETs (what pyarrow seeks in a Parquet file)."""

    def __init__(self, store: S3Core, bucket: str, obj: S3Object, size: int, etag: str | None):
        super().__init__(size)
        self.store, self.bucket, self.obj = store, bucket, obj
        self.source = {"VersionId": obj.version_id} if obj.version_id else ({"IfMatch": etag} if etag else {})

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
                 gzip: bool | None = None, local: str | None = None):
        self.store, self.coll, self.obj, self.head = store, coll, obj, head
        self.local = local  # a file holding exactly this version's bytes: read from there, not from S3
        self.tap: Callable[[Batch], None] | None = None  # sees every batch read, before the reader's caller does
        self.fmt = coll.format
        # ``gzip``: as the original was (a rewrite's temporary key does not end in .gz)
        self.gzip = (is_gzip(obj.key, head) if gzip is None else gzip) and self.fmt != "parquet"
        self.header: list[str] | None = None  # CSV
        self.header_raw: bytes = b""
        self.schema: Any = None  # Parquet
        self.compression = "snappy"

    def _chunks(self) -> Iterator[bytes]:
        if self.local is not None:
            yield from (_decompressed(_file_chunks(self.local)) if self.gzip else _file_chunks(self.local))
            return
        source = self.obj.vid() or ({"IfMatch": self.head["ETag"]} if self.head.get("ETag") else {})
        body = self.store.call("get_object", Bucket=self.coll.bucket, Key=self.obj.key, **source)["Body"]
        try:
            chunks = body.iter_chunks(CHUNK)
            yield from (_decompressed(chunks) if self.gzip else chunks)
        finally:
            body.close()

    def batches(self, columns: list[str] | None = None, whole: bool = False) -> Iterator[Batch]:
        """Batches of records; ``columns`` (Parquet): read only these (those the object has); ``whole`` (Parquet):
        a row group as one batch (for readers that never make all its records Python objects at once)."""
        batches = (self._parquet(columns, whole) if self.fmt == "parquet" else
                   self._csv() if self.fmt == "csv" else self._jsonl())
        for batch in batches:
            if self.tap is not None:
                self.tap(batch)
            yield batch

    def _jsonl(self) -> Iterator[Batch]:
        records: list[Any] = []
        raws: list[bytes] = []
        for number, raw in enumerate(_lines(self._chunks()), 1):
            text = raw.strip()
            if not text:
                record = None
            else:
                try:
                    record = json_record(text)
                except _TwiceNamed:
                    raise RecordsUnreadable(f"line {number} names a field twice") from None
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
            source = self.local if self.local is not None else RangeFile(self.store, self.coll.bucket, self.obj, size,
                                                                         self.head.get("ETag"))
            pf = pq.ParquetFile(source)
        except StoreUnavailable:
            raise
        except Exception as exc:  # pyarrow's ArrowInvalid and friends
            raise RecordsUnreadable(f"not a Parquet file ({type(exc).__name__})") from None
        self.schema = pf.schema_arrow
        if pf.metadata.num_row_groups and pf.metadata.row_group(0).num_columns:
            codec = pf.metadata.row_group(0).column(0).compression.lower()
            self.compression = {"uncompressed": "none", "lz4_raw": "lz4"}.get(codec, codec)
        return pf

    def _parquet(self, columns: list[str] | None, whole: bool = False) -> Iterator[Batch]:
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
            elif whole:
                yield Batch(None, table=table)
                continue
            for start in range(0, table.num_rows, PARQUET_SLICE):
                part = table.slice(start, PARQUET_SLICE)
                yield Batch(None, table=part, last=start + PARQUET_SLICE >= table.num_rows)

def digest_of(reader: ObjectRecords) -> tuple[int, Any]:
    """(records, digest over them in order) of a version, as ``write_version`` computes it for what it keeps."""
    if reader.fmt == "parquet":
        columns, n = ColumnDigest(), 0
        for batch in reader.batches(whole=True):
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
