"""Anchors: the ledger head kept outside its database (a directory, or an S3 bucket under Object Lock), keyed,
each naming the one before it (docs/adr/0006-keyed-anchored-ledger.md)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa

from include.retention.errors import LedgerBroken, RetentionError
from include.retention.ledger.hashing import anchor_key
from include.retention.ledger.schema import ANCHOR_ACTION, ANCHOR_FORMAT, entries
from include.retention.settings import settings


@dataclass(frozen=True)
class Anchor:
    """The ledger head at one moment, kept where the ledger database's users cannot rewrite it.

    ``mac``: HMAC (under key ``kid``) of everything else in the document, so an anchor written or rewritten
    without the key is named by ``verify``; ``prev_seq`` / ``prev_mac`` name the previous anchor in the same
    place (None for the first), so a deleted anchor with a later one after it is named too.
    """

    seq: int
    entry_hash: str
    anchored_at: str
    where: str = ""
    kid: str = ""
    prev_seq: int | None = None
    prev_mac: str | None = None
    mac: str = ""

    def content(self) -> bytes:
        prev = None if self.prev_seq is None else {"seq": self.prev_seq, "mac": self.prev_mac}
        return json.dumps(
            {
                "format": ANCHOR_FORMAT,
                "seq": self.seq,
                "entry_hash": self.entry_hash,
                "anchored_at": self.anchored_at,
                "kid": self.kid,
                "prev": prev,
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()

    def signed(self, kid: str, secret: bytes) -> Anchor:
        unsigned = replace(self, kid=kid, mac="")
        return replace(unsigned, mac=hmac.digest(anchor_key(secret), unsigned.content(), "sha256").hex())

    def mac_ok(self, secret: bytes) -> bool:
        return hmac.compare_digest(hmac.digest(anchor_key(secret), self.content(), "sha256").hex(), self.mac)

    def to_json(self) -> bytes:
        doc = json.loads(self.content())
        doc["mac"] = self.mac
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Anchor:
        try:
            doc = json.loads(data)
            if doc.get("format") != ANCHOR_FORMAT:
                raise ValueError("unknown format")
            prev = doc["prev"]
            if prev is not None and not isinstance(prev, dict):
                raise ValueError("prev")
            return cls(
                int(doc["seq"]),
                str(doc["entry_hash"]),
                str(doc["anchored_at"]),
                where,
                str(doc["kid"]),
                None if prev is None else int(prev["seq"]),
                None if prev is None else str(prev["mac"]),
                str(doc["mac"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            raise LedgerBroken(f"anchor {where} is not a ledger anchor (unreadable or unknown format)") from None

    @property
    def sink(self) -> str:
        """Where the anchor's place is (``AnchorSink.location()``): its ``where`` without its name."""
        return self.where.rsplit("/", 1)[0]

    def name(self) -> str:
        """Sortable, unique per head: seq first, then part of the hash."""
        return f"{self.seq:015d}-{self.entry_hash[:16]}.json"


class AnchorSink(Protocol):
    def put(self, anchor: Anchor) -> str: ...

    def anchors(self) -> Iterator[Anchor]: ...

    def location(self) -> str: ...

    def limit(self) -> str | None: ...


DIRECTORY_LIMIT = (
    "anchors in a directory can be deleted by whoever can write to it: a truncated ledger whose "
    "newest anchor was deleted with it is not found (use an S3 bucket with Object Lock)"
)


class DirectorySink:
    """One JSON file per anchor in a directory (the embedded demo: ``.demo/anchors/``)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path).absolute()

    def put(self, anchor: Anchor) -> str:
        self.path.mkdir(parents=True, exist_ok=True)
        target = self.path / anchor.name()
        tmp = self.path / f".{anchor.name()}.{os.getpid()}.tmp"
        tmp.write_bytes(anchor.to_json())
        os.replace(tmp, target)  # atomic: a reader sees the whole anchor or none
        return str(target)

    def anchors(self) -> Iterator[Anchor]:
        if not self.path.is_dir():
            return
        for file in sorted(self.path.glob("*.json")):
            yield Anchor.from_json(file.read_bytes(), str(file))

    def location(self) -> str:
        return str(self.path)

    def limit(self) -> str | None:
        """What this sink cannot prove (None in `make demo`, where the directory stands in for a bucket)."""
        return None if settings().ledger_anchors_demo else DIRECTORY_LIMIT

    def __repr__(self) -> str:
        return f"DirectorySink({str(self.path)!r})"


class S3Sink:
    """One object per anchor; in an Object Lock bucket written in COMPLIANCE mode (nobody can delete it).

    Read back by *version*: a delete marker hides nothing, and a newer version written over an anchor
    is read (and checked) besides the original, which a COMPLIANCE lock keeps.
    """

    def __init__(self, client: Any, bucket: str, prefix: str = "ledger-anchors/", retain_days: int = 3653):
        self.client, self.bucket, self.prefix, self.retain_days = client, bucket, prefix, retain_days
        self._locked: bool | None = None

    def object_lock(self) -> bool:
        """Whether the bucket has Object Lock enabled (asked once)."""
        if self._locked is None:
            try:
                conf = self.client.get_object_lock_configuration(Bucket=self.bucket)
                self._locked = conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
            except self.client.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ObjectLockConfigurationNotFoundError":
                    raise
                self._locked = False
        return self._locked

    def put(self, anchor: Anchor) -> str:
        key = self.prefix + anchor.name()
        body = anchor.to_json()
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "Body": body,
            "ContentType": "application/json",
            "ContentMD5": content_md5(body),
        }
        if self.object_lock():
            kwargs["ObjectLockMode"] = "COMPLIANCE"
            kwargs["ObjectLockRetainUntilDate"] = dt.datetime.now(dt.UTC) + dt.timedelta(days=self.retain_days)
        self.client.put_object(**kwargs)
        return f"s3://{self.bucket}/{key}"

    def anchors(self) -> Iterator[Anchor]:
        versions: dict[str, list[dict[str, Any]]] = {}
        pages = self.client.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=self.prefix)
        for page in pages:
            for version in page.get("Versions", []):  # delete markers are listed apart: ignored
                if version["Key"].endswith(".json"):
                    versions.setdefault(version["Key"], []).append(version)
        for key in sorted(versions):
            # oldest first: the original (kept by a COMPLIANCE lock), then anything written over it
            listed = sorted(enumerate(versions[key]), key=lambda iv: (iv[1]["LastModified"], -iv[0]))
            first: bytes | None = None
            for _, version in listed:
                vid = version.get("VersionId")
                extra = {} if vid in (None, "null") else {"VersionId": vid}
                body = self.client.get_object(Bucket=self.bucket, Key=key, **extra)["Body"].read()
                if first is None:
                    first = body
                    yield Anchor.from_json(body, f"s3://{self.bucket}/{key}")
                elif body != first:
                    yield Anchor.from_json(body, f"s3://{self.bucket}/{key}?versionId={vid}")

    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def limit(self) -> str | None:
        if self.object_lock():
            return None
        return (
            f"bucket {self.bucket!r} has no Object Lock: whoever can delete its objects can remove the newest "
            "anchor along with a truncated tail"
        )

    def __repr__(self) -> str:
        return f"S3Sink('s3://{self.bucket}/{self.prefix}')"


def content_md5(body: bytes) -> str:
    """The Content-MD5 header of ``body`` (an Object Lock bucket refuses a PUT without one)."""
    return base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()


def anchor_sink(target: str | os.PathLike[str], s3_client: Any = None) -> AnchorSink:
    """A sink from ``s3://bucket/prefix`` (boto3's default client unless one is given) or a directory path."""
    text = str(target)
    if text.startswith("s3://"):
        bucket, _, prefix = text[len("s3://") :].partition("/")
        if not bucket:
            raise RetentionError(f"anchor location {text!r} names no bucket")
        if s3_client is None:
            import boto3

            s3_client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or None)
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return S3Sink(s3_client, bucket, prefix or "ledger-anchors/")
    return DirectorySink(text)


def anchor_sinks(targets: str, s3_client: Any = None) -> list[AnchorSink]:
    """Every place named in ``targets``, separated by commas (``RETENTION_LEDGER_ANCHORS``): a second witness
    (another bucket or account, another host's directory) must be bent too before a cut goes unseen."""
    places = [t.strip() for t in str(targets).split(",") if t.strip()]
    if not places:
        raise RetentionError(f"anchor location {targets!r} names no place")
    return [anchor_sink(place, s3_client) for place in places]


@dataclass
class ReadAnchors:
    """The anchors of one sink, read once (the page reads them first, to show an unreachable sink as such)."""

    where: str
    found: list[Anchor]
    limitation: str | None = None

    def anchors(self) -> Iterator[Anchor]:
        return iter(self.found)

    def location(self) -> str:
        return self.where

    def limit(self) -> str | None:
        return self.limitation


def read_anchors(target: AnchorSink | str | os.PathLike[str], s3_client: Any = None) -> ReadAnchors:
    sink = anchor_sink(target, s3_client) if isinstance(target, (str, os.PathLike)) else target
    return ReadAnchors(sink.location(), list(sink.anchors()), sink.limit())


@dataclass
class AnchorSet:
    anchors: list[Anchor] = field(default_factory=list)
    locations: set[str] = field(default_factory=set)  # the places read in full (their recorded anchors must be there)
    limits: list[str] = field(default_factory=list)


def collect_anchors(anchors: Any) -> AnchorSet:
    out = AnchorSet()
    if anchors is None:
        return out
    if isinstance(anchors, (str, os.PathLike)) or hasattr(anchors, "anchors"):
        anchors = [anchors]
    for item in anchors:
        if isinstance(item, Anchor):
            out.anchors.append(item)
            continue
        sink = anchor_sink(item) if isinstance(item, (str, os.PathLike)) else item
        out.anchors.extend(sink.anchors())
        if hasattr(sink, "location"):
            out.locations.add(sink.location())
        limit = sink.limit() if hasattr(sink, "limit") else None
        if limit and limit not in out.limits:
            out.limits.append(limit)
    out.anchors.sort(key=lambda a: (a.seq, a.where))
    return out


def last_anchor(conn: sa.Connection, location: str) -> tuple[int, str] | None:
    """(seq, keyed hash) of the newest anchor the ledger recorded for ``location`` (among its last 100)."""
    query = (
        sa.select(entries.c.details)
        .where(entries.c.action == ANCHOR_ACTION, entries.c.outcome == "done")
        .order_by(entries.c.seq.desc())
        .limit(100)
    )
    for (text,) in conn.execute(query):
        recorded = recorded_anchor(text)
        if recorded is not None and recorded["sink"] == location:
            return int(recorded["seq"]), str(recorded["mac"])
    return None


def recorded_anchor(details: str | None) -> dict[str, Any] | None:
    """The details of an ``anchor`` entry (sink, where, seq, mac), or None when they are not that."""
    try:
        doc = json.loads(details or "")
    except ValueError:
        return None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str) for k in ("sink", "where", "mac")):
        return None
    return doc if isinstance(doc.get("seq"), int) else None
