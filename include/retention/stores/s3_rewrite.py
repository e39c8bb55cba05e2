"""Records written back: a version of an object rewritten without a person's records (or with their fields
masked), in its own format, and what a correct rewrite must hold (``Expected``, computed apart from the writer),
checked by ``check_rewrite``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zlib
from typing import TYPE_CHECKING, Any

from include.retention.stores.s3_objects import S3Object
from include.retention.stores.s3_record_digest import ColumnDigest, canonical
from include.retention.stores.s3_record_read import Batch, ObjectRecords, RecordsUnreadable, digest_of, line_ending
from include.retention.stores.s3_records import (
    Decide,
    RewriteNotVerified,
    Tally,
    Verdict,
    claimed,
    key_digest,
    verdicts,
)

if TYPE_CHECKING:
    from include.retention.policy import Collection
    from include.retention.stores.s3_objects import S3Core


class Sink(io.RawIOBase):
    """What a writer writes: (gzipped, if the original was) into ``out`` (a local file: the rewrite is checked there
    before it is uploaded)."""

    def __init__(self, out: Any, gzip: bool):
        super().__init__()
        self.upload, self.pos = out, 0
        self.zip = zlib.compressobj(6, zlib.DEFLATED, 31) if gzip else None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        data = bytes(data)
        self.upload.write(self.zip.compress(data) if self.zip else data)
        self.pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self.pos

    def finish(self) -> None:
        if self.zip is not None:
            self.upload.write(self.zip.flush())
            self.zip = None


def _masked(record: dict[str, Any], verdict: Verdict, key: bytes, fmt: str) -> dict[str, Any]:
    out = dict(record)
    for name, value in verdict.changes(record, key).items():
        out[name] = ("" if value is None else str(value)) if fmt == "csv" else value
    return out


def write_version(reader: ObjectRecords, decide: Decide, sink: Sink, key: bytes) -> Tally:
    """Write the version's records without the dropped ones and with the masked fields masked."""
    tally = Tally()
    fmt = reader.fmt
    if fmt == "parquet":
        tally.digest = None  # the check's digest of what must remain is ``Expected``'s, not the writer's
    writer = None
    header_written = False
    group: list[Any] = []  # Parquet: the kept slices of the row group being read
    try:
        for batch in reader.batches(whole=bool(getattr(decide, "memo", False))):
            if fmt == "parquet":
                writer = _parquet_batch(reader, batch, decide, sink, key, tally, writer, group)
                continue
            if fmt == "csv" and not header_written:
                sink.write(reader.header_raw)
                header_written = True
            for record, raw in zip(batch.records, batch.raws or [], strict=True):
                if record is None:
                    sink.write(raw)
                    continue
                tally.records += 1
                verdict = decide(record)
                if verdict is not None:
                    tally.count(verdict)
                if verdict is not None and verdict.drop:
                    tally.removed += 1
                    continue
                if verdict is not None:
                    record = _masked(record, verdict, key, fmt)
                    sink.write(_encode(record, fmt, reader.header, line_ending(raw)))
                else:
                    sink.write(raw)
                tally.kept += 1
                tally.digest.update(canonical(record) + b"\n")
        if fmt == "csv" and reader.header is not None and not header_written:
            sink.write(reader.header_raw)  # a header-only file stays one
        if fmt == "parquet" and writer is None:
            writer = _parquet_writer(reader, sink)
    finally:
        if writer is not None:
            writer.close()
    sink.finish()
    return tally


def _encode(record: dict[str, Any], fmt: str, header: list[str] | None, ending: str) -> bytes:
    if fmt == "jsonl":
        try:
            return (json.dumps(record, ensure_ascii=False) + ending).encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (valid as a JSON escape, not as UTF-8): escaped again
            return (json.dumps(record) + ending).encode("utf-8")
    out = io.StringIO()
    csv.writer(out, lineterminator=ending).writerow([record[h] for h in header or []])
    return out.getvalue().encode("utf-8")


def _parquet_writer(reader: ObjectRecords, sink: Sink) -> Any:
    import pyarrow.parquet as pq

    if reader.schema is None:
        reader.parquet_file()
    return pq.ParquetWriter(sink, reader.schema, compression=reader.compression)


def _kept_table(batch: Batch, judged: list[Verdict | None], key: bytes) -> Any:
    """The batch's table without the dropped records and with the masked / corrected fields changed (Parquet)."""
    hits = claimed(judged)
    return _without(_changed_table(batch, hits, key), [i for i, verdict in hits if verdict.drop])


def _changed_table(batch: Batch, hits: list[tuple[int, Verdict]], key: bytes) -> Any:
    """The batch's table with the masked / corrected fields of the records ``hits`` keeps changed (Parquet)."""
    import pyarrow as pa

    changed = {i: verdict.changes(batch.record(i), key) for i, verdict in hits if not verdict.drop}
    table = batch.table
    if changed:
        for name in sorted({n for changes in changed.values() for n in changes}):
            idx = table.schema.get_field_index(name)
            values = table.column(idx).to_pylist()
            for i, changes in changed.items():
                if name in changes:
                    values[i] = changes[name]
            try:
                column = pa.array(values, type=table.schema.field(idx).type)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                raise RecordsUnreadable(f"the new value does not fit Parquet column {name!r} "
                                        f"({table.schema.field(idx).type})") from None
            table = table.set_column(idx, table.schema.field(idx), column)
    return table


def _without(table: Any, dropped: list[int]) -> Any:
    """The table without the rows at ``dropped`` (ascending): slices of it between them, not a copy (memory stays one
    row group however many records go)."""
    import pyarrow as pa

    if not dropped:
        return table
    pieces, start = [], 0
    for i in dropped:
        if i > start:
            pieces.append(table.slice(start, i - start))
        start = i + 1
    if start < table.num_rows:
        pieces.append(table.slice(start))
    return pa.concat_tables(pieces) if pieces else table.slice(0, 0)


def _parquet_batch(reader: ObjectRecords, batch: Batch, decide: Decide, sink: Sink, key: bytes, tally: Tally,
                   writer: Any, group: list[Any]) -> Any:
    """Judge one slice of a row group; what stays is written as one row group when the group's last slice is in."""
    import pyarrow as pa

    judged = verdicts(batch, decide)
    tally.records += len(judged)
    for _, verdict in claimed(judged):
        tally.count(verdict)
    kept = _kept_table(batch, judged, key)
    tally.removed += len(judged) - kept.num_rows
    tally.kept += kept.num_rows
    if writer is None:
        writer = _parquet_writer(reader, sink)
    if kept.num_rows:
        group.append(kept)
    if batch.last and group:
        writer.write_table(pa.concat_tables(group), row_group_size=sum(t.num_rows for t in group))
        group.clear()
    return writer


class Expected:
    """What a correct rewrite of a version holds (records, and the digest over them in order), computed from the
    original's records as they are read for the rewrite (a ``tap`` on its reader: the same pass, the same bytes)
    but apart from the writer: its own verdicts of ``decide``, its own records kept and masked, its own digest.
    A writer that leaves out, adds or changes a record, whatever its tally says, is caught by the comparison
    with the re-read of what it wrote (``check_rewrite``)."""

    def __init__(self, fmt: str | None, decide: Decide, key: bytes):
        self.fmt, self.decide, self.key = fmt, decide, key
        self.records = 0
        self.digest: Any = ColumnDigest() if fmt == "parquet" else hashlib.sha256()
        self.tally = Tally()  # what its verdicts claim in the original (records, per request dropped / masked)

    def __call__(self, batch: Batch) -> None:
        if self.fmt == "parquet":
            import pyarrow as pa

            judged = verdicts(batch, self.decide)
            self.tally.records += len(judged)
            hits = claimed(judged)
            for _, verdict in hits:
                self.tally.count(verdict)
            dropped = {i for i, verdict in hits if verdict.drop}
            # a filter, not the writer's slices (``_without``): a fault there is caught by the check
            kept = _changed_table(batch, hits, self.key).filter(
                pa.array([i not in dropped for i in range(len(judged))], type=pa.bool_()))
            self.records += kept.num_rows
            self.digest.update_table(kept)
            return
        for record in batch.records:
            if record is None:
                continue
            verdict = self.decide(record)
            self.tally.records += 1
            if verdict is not None:
                self.tally.count(verdict)
            if verdict is not None and verdict.drop:
                continue
            if verdict is not None:
                record = _masked(record, verdict, self.key, self.fmt or "")
            self.records += 1
            self.digest.update(canonical(record) + b"\n")


def check_rewrite(store: S3Core, coll: Collection, reader: ObjectRecords, written: Tally, meant: Expected,
                  path: str) -> None:
    """Re-read the rewrite (the local file at ``path``, before it is uploaded) and compare it with what the original
    says must remain (``meant``: records in order and content, masked ones as masked, and what its verdicts
    claimed), with the writer's tally and with the original's schema / header."""
    problems = []
    expected = meant.tally
    if written.dropped != expected.dropped or written.masked != expected.masked or \
            written.records != expected.records:
        problems.append("the writer's count of records differs from the original's")
    again = ObjectRecords(store, coll, S3Object(reader.obj.key, reader.obj.last_modified), {}, gzip=reader.gzip,
                          local=path)
    try:
        count, digest = digest_of(again)
    except RecordsUnreadable as exc:
        raise RewriteNotVerified(f"{store.name}: a rewritten object of {coll.bucket} reads back unreadable "
                                 f"({exc}); the original stays") from None
    if count != meant.records or count != written.records - written.removed:
        problems.append(f"{count} records read back, {meant.records} meant")
    if digest.hexdigest() != meant.digest.hexdigest() or (
            written.digest is not None and digest.hexdigest() != written.digest.hexdigest()):
        problems.append("the records read back differ from those meant to stay")
    if coll.format == "parquet" and not again.schema.equals(reader.schema, check_metadata=True):
        problems.append("the Parquet schema changed")
    if coll.format == "csv" and again.header != reader.header and written.records - written.removed:
        problems.append("the CSV header changed")
    if problems:
        raise RewriteNotVerified(f"{store.name}: a rewrite in {coll.bucket} (key digest "
                                 f"{key_digest(store.key, reader.obj.key)}) did not check out: "
                                 f"{'; '.join(problems)}; the original stays")
