"""Records written back: a version of an object rewritten without a person's records (or with their fields
masked), in its own format, and what a correct rewrite must hold (``expected_of``), computed apart from the writer.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zlib
from typing import Any

from include.retention.stores.s3_record_digest import ColumnDigest, canonical
from include.retention.stores.s3_record_read import Batch, ObjectRecords, RecordsUnreadable, line_ending
from include.retention.stores.s3_records import Decide, Tally, Verdict, verdicts


class Sink(io.RawIOBase):
    """What a writer writes: (gzipped, if the original was) into the upload; the digest of the bytes."""

    def __init__(self, upload: Any, gzip: bool):
        super().__init__()
        self.upload, self.pos = upload, 0
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
        tally.digest = ColumnDigest()
    writer = None
    header_written = False
    group: list[Any] = []  # Parquet: the kept slices of the row group being read
    try:
        for batch in reader.batches():
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
        return (json.dumps(record, ensure_ascii=False) + ending).encode("utf-8")
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
    import pyarrow as pa

    keep = [verdict is None or not verdict.drop for verdict in judged]
    changed = {i: verdict.changes(batch.record(i), key) for i, verdict in enumerate(judged)
               if verdict is not None and not verdict.drop}
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
    return table if all(keep) else table.filter(pa.array(keep, type=pa.bool_()))


def _parquet_batch(reader: ObjectRecords, batch: Batch, decide: Decide, sink: Sink, key: bytes, tally: Tally,
                   writer: Any, group: list[Any]) -> Any:
    """Judge one slice of a row group; what stays is written as one row group when the group's last slice is in."""
    import pyarrow as pa

    judged = verdicts(batch, decide)
    tally.records += len(judged)
    for verdict in judged:
        if verdict is not None:
            tally.count(verdict)
    kept = _kept_table(batch, judged, key)
    tally.removed += len(judged) - kept.num_rows
    tally.kept += kept.num_rows
    tally.digest.update_table(kept)
    if writer is None:
        writer = _parquet_writer(reader, sink)
    if kept.num_rows:
        group.append(kept)
    if batch.last and group:
        writer.write_table(pa.concat_tables(group), row_group_size=sum(t.num_rows for t in group))
        group.clear()
    return writer


def expected_of(reader: ObjectRecords, decide: Decide, key: bytes) -> tuple[int, Any]:
    """(records, digest over them in order) that a correct rewrite of this version holds, computed on its own from
    the original (not by the writer): what the check of a rewrite compares the re-read with."""
    if reader.fmt == "parquet":
        columns, n = ColumnDigest(), 0
        for batch in reader.batches():
            kept = _kept_table(batch, verdicts(batch, decide), key)
            n += kept.num_rows
            columns.update_table(kept)
        return n, columns
    digest, n = hashlib.sha256(), 0
    for batch in reader.batches():
        for record in batch.records:
            if record is None:
                continue
            verdict = decide(record)
            if verdict is not None and verdict.drop:
                continue
            if verdict is not None:
                record = _masked(record, verdict, key, reader.fmt or "")
            n += 1
            digest.update(canonical(record) + b"\n")
    return n, digest
