"""S3 objects as the store sees them: listing entries, bucket facts, tags, dates, clients, owned keys.

This module imports nothing from Airflow.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import boto3
from botocore.config import Config
from botocore.utils import parse_timestamp as botocore_parse_timestamp

from include.retention import keytemplate
from include.retention.errors import StoreUnavailable
from include.retention.policy import Collection, Condition, Reference

if TYPE_CHECKING:
    from include.retention.connections import ConnInfo

log = logging.getLogger(__name__)

LOCK_TAG = "retention-lock"
ANONYMIZED_META = "retention-anonymized"
MAX_DELETE = 1000  # S3's limit of entries per DeleteObjects request
PART_SIZE = 8 * 1024 * 1024  # multipart part size of a rewrite; S3 needs >= 5 MiB for all but the last
CHUNK = 64 * 1024
PREFETCH_THREADS = 16  # parallel HEAD / GetObjectTagging requests per page
MAX_LINE = 1024 * 1024  # a "line" longer than this is cut at a character no IP address contains
NOT_IN_ADDRESS = re.compile(rb"[^0-9A-Za-z:.]")
TAG_SAFE = re.compile(r"[^\w .:/=+\-@]")
UTC = dt.UTC

# Short timeouts and few retries: an unreachable endpoint should fail a task in seconds, not hang it.
CLIENT_CONFIG = Config(connect_timeout=3, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"})




class ObjectsNotDeleted(StoreUnavailable):
    """S3 refused to delete some object versions (per-key errors of a DeleteObjects response)."""


def parse_date(text: str | None) -> dt.datetime | None:
    """An ISO 8601 date or timestamp from metadata or a tag; naive values are UTC."""
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_timestamp(value: str) -> dt.datetime:
    """A timestamp of an S3 response: ISO 8601 in XML bodies (``2026-11-25T03:55:08.000Z``) parsed directly,
    anything else (HTTP dates of headers, epoch seconds) by botocore's own parser."""
    try:
        parsed = dt.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return botocore_parse_timestamp(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# ---- objects ------------------------------------------------------------------------------


@dataclass
class S3Object:
    """One key of a listing: its current data version, and every version when the bucket is versioned."""

    key: str
    last_modified: dt.datetime
    version_id: str | None = None  # the data version acted on; None in an unversioned bucket
    live: bool = True  # False: a delete marker is current and only older versions remain
    versions: list[str] = field(default_factory=list)  # every version id incl. delete markers
    data_versions: list[str] = field(default_factory=list)  # versions with content, newest first
    head: dict[str, Any] | None = None
    tags: dict[str, str] | None = None
    gone: bool = False  # vanished between listing and a per-object call

    def vid(self) -> dict[str, str]:
        return {"VersionId": self.version_id} if self.version_id else {}


class Page(list):
    """One listing page of objects; ``more``: the listing continues after it."""

    def __init__(self, objects: Iterable[S3Object] = (), more: bool = False):
        super().__init__(objects)
        self.more = more


@dataclass(frozen=True)
class BucketInfo:
    versioned: bool
    object_lock: bool
    suspended: bool = False  # versioning suspended: a PutObject replaces the null version in place


def _tag_text(value: Any) -> str:
    if isinstance(value, bool):  # YAML ``true`` against a tag value "true"
        return "true" if value else "false"
    return str(value)


def tag_matches(cond: Condition, tags: dict[str, str]) -> bool:
    """A legal-hold condition against object tags: ``column`` names the tag."""
    value = tags.get(cond.column)
    if cond.is_null is not None:
        return (value is None) == cond.is_null
    if value is None:
        return False
    if cond.in_ is not None:
        return value in {_tag_text(v) for v in cond.in_}
    return value == _tag_text(cond.equals)


def make_client(info: ConnInfo) -> tuple[Any, str]:
    """A boto3 S3 client for an Airflow ``aws`` connection, and the endpoint to name in errors.

    login/password are the key pair; extra holds ``endpoint_url`` (MinIO, moto) and ``region_name``.
    """
    extra = dict(info.extra or {})
    endpoint = extra.get("endpoint_url") or (info.host if info.host and "://" in info.host else None)
    # S3-compatible servers generally want path-style addressing.
    config = CLIENT_CONFIG.merge(Config(s3={"addressing_style": "path"})) if endpoint else CLIENT_CONFIG
    session = boto3.session.Session()
    # A listing page holds 1,000 LastModified values; botocore's generic (dateutil) parser of them cost
    # a third of a listing's client time (docs/benchmarks.md, "S3 (target 3)").
    session._session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=parse_timestamp)
    client = session.client(
        "s3",
        endpoint_url=endpoint,
        region_name=extra.get("region_name") or "us-east-1",
        aws_access_key_id=info.login or extra.get("aws_access_key_id"),
        aws_secret_access_key=info.password or extra.get("aws_secret_access_key"),
        aws_session_token=extra.get("aws_session_token"),
        config=config,
    )
    return client, endpoint or "AWS S3"


class OwnedKeys:
    """The keys and prefixes a batch of rows owns, matched against one ascending listing.

    Sorted, with what lies inside a wanted prefix dropped, the targets are disjoint ranges of
    keys (an exact key, or every key starting with a prefix) in listing order, so a listing is
    matched by one forward pointer. ``seek`` is where a new listing should start to reach the
    next target unseen: a listing may jump over keys between targets instead of paging through
    them. (S3 lists keys in UTF-8 byte order, which is code point order: Python's order.)
    """

    def __init__(self, wanted: list[tuple[str, bool]]):
        targets: list[tuple[str, bool]] = []
        for key, is_prefix in sorted(set(wanted)):
            if targets and targets[-1][1] and key.startswith(targets[-1][0]):
                continue  # inside a prefix already wanted
            targets.append((key, is_prefix))
        self.targets, self.i = targets, 0
        self.seen: set[int] = set()  # targets some listed key matched
        self.entries = 0  # listing entries (keys, or versions and delete markers) read so far

    def listed(self, entries: int) -> None:
        """Count a page's entries (for ``page_size``)."""
        self.entries += entries

    def page_size(self) -> int:
        """How many entries the next listing request should ask for: about what the targets still ahead take,
        by the entries per target passed so far (a quarter more, and 16), so that the last page of a batch does
        not run on over keys nobody wants; 1,000 at most. Before any target is passed: 4 per target and 16."""
        ahead = len(self.targets) - self.i
        per_target = self.entries / self.i if self.i else 4.0
        return min(MAX_DELETE, int(ahead * per_target * 1.25) + 16)

    def __len__(self) -> int:
        return len(self.targets)

    def common_prefix(self) -> str:
        return os.path.commonprefix([t for t, _ in self.targets]) if self.targets else ""

    def done(self) -> bool:
        return self.i >= len(self.targets)

    def seek(self) -> str:
        """A key just before the next target (listing starts after it): the target without its last character."""
        return self.targets[self.i][0][:-1] if not self.done() else ""

    def match(self, key: str) -> bool:
        """Is ``key`` owned? Keys must be given in ascending order."""
        while self.i < len(self.targets):
            target, is_prefix = self.targets[self.i]
            if key == target or (is_prefix and key.startswith(target)):
                self.seen.add(self.i)
                return True
            if key < target:
                return False
            self.i += 1  # the listing is past this target
        return False

    def unseen(self) -> list[tuple[str, bool]]:
        """The targets no listed key matched."""
        return [t for i, t in enumerate(self.targets) if i not in self.seen]


def owned_key(reference: Reference, row: dict[str, Any]) -> tuple[str | None, bool]:
    """(key or prefix, is it a prefix) a row references; (None, False) if the row names none."""
    if reference.key_template:
        return keytemplate.fill(reference.key_template, row)
    value = row.get(reference.column) if reference.column else None
    return (str(value), False) if value not in (None, "") else (None, False)


class S3Core(Protocol):
    """What the S3 store's collaborators (``S3States``, ``S3Writes``, ``S3Owned``, ``S3ObjectSubjects``,
    ``S3RecordSubjects``) and object helpers (``Purger``, ``Upload``, ``ObjectRecords``) use of it: ``S3Store`` is
    the one implementation. The collaborators reach each other through it (``states``, ``writes``, ``row_owned``,
    ``subjects``)."""

    name: str
    client: Any
    key: bytes
    part_size: int
    referenced: Callable[[str, list[str]], set[str]] | None
    states: Any
    writes: Any
    row_owned: Any
    subjects: Any

    def ref(self, collection_name: str) -> str: ...

    def coll(self, name: str) -> Collection: ...

    def prefix(self, coll: Collection) -> str: ...

    def call(self, operation: str, **kwargs: Any) -> dict[str, Any]: ...

    def fail(self, operation: str, exc: Exception) -> StoreUnavailable: ...

    def digest(self, keys: list[str]) -> str: ...

    def bucket_info(self, bucket: str) -> BucketInfo: ...

    def objects(self, bucket: str, prefix: str, after: str = "", size: Callable[[], int] | None = None
                ) -> Iterator[Page]: ...

    def head(self, bucket: str, obj: S3Object) -> dict[str, Any] | None: ...

    def tags(self, bucket: str, obj: S3Object) -> dict[str, str] | None: ...

    def find(self, collection_name: str, subjects: list[Any], *, exhaustive: bool = False) -> Any: ...
