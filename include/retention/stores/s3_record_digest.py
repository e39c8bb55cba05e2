"""A digest of records in order, to check a rewrite (docs/adr/0021-records-inside-objects.md): ``canonical`` for one
record as compared (CSV rows, JSON lines), ``ColumnDigest`` for Parquet, column by column (no ``repr`` per record).

This module imports nothing from Airflow.
"""

from __future__ import annotations

import hashlib
from typing import Any


def canonical(record: Any) -> bytes:
    """One record as compared: field order, names, values and their Python types (repr)."""
    if isinstance(record, dict):
        return repr(list(record.items())).encode("utf-8", "surrogatepass")
    return repr(record).encode("utf-8", "surrogatepass")


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
            # many small chunks (a row group without a few records is slices of it): one column at a time, combined
            chunks = [column.combine_chunks()] if column.num_chunks > 8 else column.chunks
            for chunk in chunks:
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


def _streams(chunk: Any, kind: str) -> tuple[Any, Any, Any]:
    """(validity, lengths, values) of one array as canonical bytes (buffers, not copied where they need no change),
    whatever its offset and buffers."""
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
        return valid, b"", np.ascontiguousarray(values)
    if chunk.null_count:
        chunk = pc.fill_null(chunk, pa.scalar("" if pa.types.is_string(t) or pa.types.is_large_string(t) else b"",
                                              type=t))
    buffers = chunk.buffers()
    offsets = np.frombuffer(buffers[1], dtype="<i4" if kind == "var32" else "<i8",
                            count=chunk.offset + n + 1)[chunk.offset:]
    data = memoryview(buffers[2])[int(offsets[0]):int(offsets[-1])] if buffers[2] is not None else b""
    return valid, np.diff(offsets), data
