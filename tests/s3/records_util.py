"""Building and decoding CSV, gzipped JSON-lines and Parquet objects for the records tests, independently of the
store's own codecs (csv.DictReader, json, pyarrow.parquet.read_table)."""

from __future__ import annotations

import csv
import gzip
import io
import json
import unicodedata
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

ZOE = "zoë@example.org"  # the person (NFC)
LOOKALIKES_GONE = [unicodedata.normalize("NFD", ZOE), " ZOË@Example.ORG "]  # normalise-equal: they go
LOOKALIKES_KEPT = ["zoe@example.org", "zoë@exаmple.org", "zoë+news@example.org", "zoë@example.org.uk"]  # others
FIELDS = ["email", "referrer", "ts", "ip", "amount"]


def records(n_others: int = 4, zoe: bool = True, day: str = "2026-05-01", seed: int = 0) -> list[dict[str, Any]]:
    """Another person's records, lookalikes, and (``zoe``) the person's own records and one mentioning them."""
    out = []
    for i in range(n_others):
        out.append({"email": f"person{seed}.{i}@example.org", "referrer": "", "ts": f"{day}T0{i % 10}:00:00",
                    "ip": f"192.0.2.{i % 250}", "amount": str(i * 7 + seed)})
    for i, email in enumerate(LOOKALIKES_KEPT):
        out.append({"email": email, "referrer": "", "ts": f"{day}T10:0{i}:00", "ip": "198.51.100.7",
                    "amount": str(100 + i)})
    if zoe:
        for i, email in enumerate([ZOE, *LOOKALIKES_GONE]):
            out.insert(2 * i + 1, {"email": email, "referrer": "", "ts": f"{day}T11:0{i}:00", "ip": "203.0.113.9",
                                   "amount": str(200 + i)})
        out.append({"email": "friend@example.org", "referrer": ZOE, "ts": f"{day}T12:00:00", "ip": "203.0.113.10",
                    "amount": "300"})
    return out


def is_zoes(record: dict[str, Any]) -> bool:
    return unicodedata.normalize("NFC", str(record.get("email") or "")).strip().lower() == ZOE


def expected_after(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What erasing Zoe leaves: their records gone, the referrer field naming them masked, nothing else changed."""
    out = []
    for r in recs:
        if is_zoes(r):
            continue
        if unicodedata.normalize("NFC", str(r.get("referrer") or "")).strip().lower() == ZOE:
            r = {**r, "referrer": "erased"}
        out.append(r)
    return out


def encode(fmt: str, recs: list[dict[str, Any]], gz: bool = False) -> bytes:
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, FIELDS, lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(recs)
        data = buf.getvalue().encode("utf-8")
    elif fmt == "jsonl":
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs).encode("utf-8")
    else:
        table = pa.Table.from_pylist(recs, schema=pa.schema([(f, pa.string()) for f in FIELDS]))
        buf = io.BytesIO()
        pq.write_table(table, buf, row_group_size=3, compression="zstd")  # several row groups
        data = buf.getvalue()
    return gzip.compress(data) if gz else data


def decode(fmt: str, data: bytes, gz: bool = False) -> list[dict[str, Any]]:
    if gz:
        data = gzip.decompress(data)
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))
    if fmt == "jsonl":
        return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
    return pq.read_table(io.BytesIO(data)).to_pylist()


def body(s3: Any, bucket: str, key: str, version: str | None = None) -> bytes:
    extra = {"VersionId": version} if version and version != "null" else {}
    return s3.get_object(Bucket=bucket, Key=key, **extra)["Body"].read()
