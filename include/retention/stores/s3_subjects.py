"""Subject operations of the S3 store: objects that carry a person's identity in the key,
in object metadata or in a tag (``identities: {email: "key:email" | "metadata:subject-email" | "tag:..."}``).

As in SQL, Python decides equality (``include.retention.identity.normalise``). Acting re-lists
each claimed key and re-reads its tags and head first, so an object that changed since it was
found is judged as it is now. Erase deletes every version (and delete marker) of the object;
restrict writes the ``retention-lock`` tag (plus an Object Lock legal hold where the bucket has
Object Lock). Kept as exceptions: tag legal holds, Object Lock holds or retention dates not set by
this product, and locks that are not the subject's own restriction.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from include.retention import keytemplate
from include.retention.identity import normalise
from include.retention.stores.base import (
    RESTRICTION,
    Claims,
    Subject,
    SubjectOutcome,
    claimed_keys,
    index_subjects,
    lock_reason_for,
    own_lock_reasons,
    renamed_lock_reasons,
)
from include.retention.stores.s3_objects import LOCK_TAG, OwnedKeys, S3Core, S3Object
from include.retention.stores.s3_writes import Purger

if TYPE_CHECKING:
    from include.retention.policy import Collection

log = logging.getLogger(__name__)

# What S3 accepts (a correction checks every new value against these before the first write)
MAX_KEY_BYTES = 1024  # an object key, UTF-8
MAX_METADATA_BYTES = 2048  # user metadata: names and values together, UTF-8 bytes
MAX_TAG_VALUE = 256  # characters of one tag value
_TAG_VALUE = re.compile(r"[\w\s+\-=.:/@]*")  # letters, digits, spaces and + - = . _ : / @


def _decode_metadata(value: str | None) -> str | None:
    """S3 metadata is ASCII: non-ASCII values arrive RFC 2047-encoded (``=?utf-8?b?...?=``)."""
    if value is None or "=?" not in value:
        return value
    from email.header import decode_header, make_header

    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError):
        return value


def lock_reason(tags: dict[str, str] | None) -> str | None:
    """The reason part of a ``retention-lock`` tag value (``<reason>@<date>``)."""
    value = (tags or {}).get(LOCK_TAG)
    return None if value is None else value.rsplit("@", 1)[0]


class S3ObjectSubjects:
    """The subject half of the store interface for collections whose items are objects (a collaborator of
    ``S3Store``; records inside objects: ``S3RecordSubjects``)."""

    def __init__(self, store: S3Core):
        self.store = store

    def sources(self, coll: Collection) -> tuple[bool, bool]:
        """Whether identities need the object's head (metadata) / tags."""
        sources = {f.column.partition(":")[0] for _, f in coll.identity_fields()}
        return "metadata" in sources, "tag" in sources

    def identities(self, coll: Collection, obj: S3Object, match: Any) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for kind, f in coll.identity_fields():
            source, _, name = f.column.partition(":")
            raw: Any = None
            if source == "key":
                # a key part is URL-safe text: "zoe%40example.org" is the address it encodes
                raw = unquote(match.group(name)) if match is not None and name in match.groupdict() else None
            elif source == "metadata":
                head = self.store.head(coll.bucket, obj) or {}
                meta = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}
                raw = _decode_metadata(meta.get(name.lower()))
            elif source == "tag":
                raw = (self.store.tags(coll.bucket, obj) or {}).get(name)
            value = normalise(kind, raw)
            if value is not None:
                found.setdefault(kind, set()).add(value)
        return found

    def scoped(self, coll: Collection, page: list[S3Object]) -> list[tuple[S3Object, Any]]:
        pattern = keytemplate.regex(coll.key_template) if coll.key_template else None
        out = []
        for obj in page:
            if not obj.version_id and not obj.live:
                continue  # only delete markers: no content, nobody's data
            match = pattern.fullmatch(obj.key) if pattern else None
            if pattern is not None and match is None:
                continue
            out.append((obj, match))
        need_head, need_tags = self.sources(coll)
        objs = [o for o, _ in out]
        if need_head:
            self.store.states.fetch(coll.bucket, objs, head=True)
        if need_tags:
            self.store.states.fetch(coll.bucket, objs, tags=True)
        return out

    def scan(self, collection_name: str) -> Iterator[list[tuple[Any, dict[str, set[str]]]]]:
        coll = self.store.coll(collection_name)
        for page in self.store.objects(coll.bucket, self.store.prefix(coll)):
            yield [(obj.key, self.identities(coll, obj, m)) for obj, m in self.scoped(coll, page)]

    def objects_now(self, coll: Collection, keys: list[str], *, facts: bool = False
             ) -> Iterator[list[tuple[S3Object, Any]]]:
        """The objects under exactly ``keys`` as they are now, a page at a time from one forward listing
        (``owned_objects``, as ``delete_referenced`` reads owned objects), not one listing per key. With
        ``facts``, what ``exception`` / ``S3States.done`` read is fetched for the page in parallel first: tags (the
        ``retention-lock`` tag and tag legal holds) and, where the bucket has Object Lock, heads."""
        if not keys:
            return
        locked_bucket = self.store.bucket_info(coll.bucket).object_lock
        for page in self.store.row_owned.owned_objects(coll.bucket, OwnedKeys([(k, False) for k in keys])):
            scoped = self.scoped(coll, page)
            if facts:
                objs = [o for o, _ in scoped]
                self.store.states.fetch(coll.bucket, objs, tags=True)
                if locked_bucket:
                    self.store.states.fetch(coll.bucket, objs, head=True)
            yield scoped

    def current(self, coll: Collection, key: str) -> tuple[S3Object, Any] | None:
        """The object under exactly ``key`` as it is now (a fresh listing), or None if it is gone."""
        return next((pair for page in self.objects_now(coll, [key]) for pair in page), None)

    def claimed_now(self, coll: Collection, keys: list[str], wanted: dict[str, dict[str, set[str]]]
                     ) -> Iterator[tuple[S3Object, dict[str, str]]]:
        """The claimed objects still there and, per claiming request, the identity each is claimed by now
        (``kind\\0value``); an object gone or no longer carrying a wanted identity is left out."""
        for page in self.objects_now(coll, keys, facts=True):
            for obj, match in page:
                token_of: dict[str, str] = {}
                for kind, values in self.identities(coll, obj, match).items():
                    for value in values:
                        for rid in wanted.get(kind, {}).get(value, set()):
                            token_of.setdefault(rid, f"{kind}\x00{value}")
                if token_of:
                    yield obj, token_of

    def exception(self, coll: Collection, obj: S3Object, own: set[str], now: dt.datetime) -> str | None:
        if self.store.states.held(coll.bucket, coll, obj, now):
            return "legal_hold"
        reason = lock_reason(self.store.tags(coll.bucket, obj))
        if reason is not None and reason not in own:
            return "statutory_lock" if reason.startswith("retention:") else "locked_for_another_reason"
        return None

    def read(self, collection_name: str, claims: Claims) -> Iterator[list[dict[str, Any]]]:
        coll = self.store.coll(collection_name)
        batch: list[dict[str, Any]] = []
        for page in self.objects_now(coll, sorted(claims)):
            self.store.states.fetch(coll.bucket, [o for o, _ in page], head=True)
            for obj, _ in page:
                head = self.store.head(coll.bucket, obj) or {}
                batch.append({"bucket": coll.bucket, "key": obj.key, "version_id": obj.version_id,
                              "size": head.get("ContentLength"), "last_modified": obj.last_modified,
                              "content_type": head.get("ContentType")})
                if len(batch) >= 100:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def erase(self, collection_name: str, claims: Claims, subjects: list[Subject], *, dry_run: bool
              ) -> SubjectOutcome:
        coll, ref = self.store.coll(collection_name), self.store.ref(collection_name)
        outcome = SubjectOutcome()
        keys = claimed_keys(ref, claims)
        wanted = index_subjects(subjects)
        own = own_lock_reasons(subjects, self.store.key)
        now = dt.datetime.now(dt.UTC)
        deleted_by_key: dict[str, set[str]] = {}

        def on_batch(gone: list[str], _versions: int, _errors: int) -> None:
            for key in gone:
                for rid in deleted_by_key.get(key, set()):
                    outcome.add(rid, ref, "deleted")

        purger = Purger(self.store, coll.bucket, 1000, on_batch)
        # an object gone or changed since it was found is not listed: not ours to touch
        for obj, token_of in self.claimed_now(coll, keys, wanted):
            reason = self.exception(coll, obj, own, now)
            if reason is not None:
                for rid in token_of:
                    outcome.add(rid, ref, f"exception:{reason}")
                # Not tagged as restricted: under a foreign Object Lock hold our tag would later make that
                # hold look like our own, and an erasure lifts its own holds.
                continue
            if lock_reason(self.store.tags(coll.bucket, obj)) is not None:
                for rid in token_of:
                    outcome.add(rid, ref, "lifted")
            if dry_run:
                for rid in token_of:
                    outcome.add(rid, ref, "deleted")
                continue
            deleted_by_key[obj.key] = set(token_of)
            self.store.writes.release_own_hold(coll.bucket, obj)
            purger.add(obj)
        purger.flush()  # raises ObjectsNotDeleted for what S3 refused: the request stays open
        return outcome

    def restrict(self, collection_name: str, claims: Claims, subjects: list[Subject], *, dry_run: bool
                 ) -> SubjectOutcome:
        coll, ref = self.store.coll(collection_name), self.store.ref(collection_name)
        outcome = SubjectOutcome()
        wanted = index_subjects(subjects)
        now = dt.datetime.now(dt.UTC)
        for obj, token_of in self.claimed_now(coll, claimed_keys(ref, claims), wanted):
            if self.store.states.done(coll.bucket, "lock", obj):
                what = "already_restricted"
            else:
                what = "restricted"
                if not dry_run:
                    reason = lock_reason(self.store.tags(coll.bucket, obj)) or lock_reason_for(
                        RESTRICTION, token_of[min(token_of)], self.store.key)
                    self.store.writes.lock(coll.bucket, obj, reason, now)
            for rid in token_of:
                outcome.add(rid, ref, what)
        return outcome

    def remaining(self, collection_name: str, subjects: list[Subject], mode: str) -> dict[str, int]:
        coll = self.store.coll(collection_name)
        claims = self.store.find(collection_name, subjects)
        own = own_lock_reasons(subjects, self.store.key)
        now = dt.datetime.now(dt.UTC)
        left: dict[str, int] = {}
        for page in self.objects_now(coll, sorted(claims), facts=True):
            for obj, _ in page:
                if mode == "restrict":
                    allowed = self.store.states.done(coll.bucket, "lock", obj)
                else:
                    allowed = self.exception(coll, obj, own, now) is not None
                if not allowed:
                    for rid in claims[obj.key]:
                        left[rid] = left.get(rid, 0) + 1
        return left

    def owned_keys(self, collection_name: str, key: str, is_prefix: bool) -> list[str]:
        """Live keys a SQL row references: the key itself, or every key under the prefix; only inside the
        collection's prefix (a row cannot reach other data)."""
        coll = self.store.coll(collection_name)
        if not key.startswith(self.store.prefix(coll)):
            return []
        out = []
        for page in self.store.objects(coll.bucket, key):
            out += [o.key for o in page if o.live and (is_prefix or o.key == key)]
        return sorted(set(out))

    def stream_object(self, collection_name: str, key: str) -> Iterator[bytes]:
        """The current version's bytes, in 1 MiB chunks, exactly as stored."""
        coll = self.store.coll(collection_name)
        body = self.store.call("get_object", Bucket=coll.bucket, Key=key)["Body"]
        try:
            yield from body.iter_chunks(1024 * 1024)
        finally:
            body.close()

    def rectify_changes(self, coll: Collection, obj: S3Object, match: Any, old: dict[str, dict[str, str]],
                        new_values: dict[str, str]) -> tuple[set[str], dict[str, str], dict[str, str], str]:
        """What correcting ``obj`` writes: (requests whose old value it carries, metadata name -> new value,
        tag -> new value, the new key)."""
        meta_changes: dict[str, str] = {}
        tag_changes: dict[str, str] = {}
        new_key = obj.key
        rids: set[str] = set()
        for kind, f in coll.identity_fields():
            if kind not in new_values:
                continue
            source, _, fname = f.column.partition(":")
            if source == "key":
                raw = unquote(match.group(fname)) if match is not None and fname in match.groupdict() else None
            elif source == "metadata":
                stored = (self.store.head(coll.bucket, obj) or {}).get("Metadata") or {}
                raw = _decode_metadata({k.lower(): v for k, v in stored.items()}.get(fname.lower()))
            else:
                raw = (self.store.tags(coll.bucket, obj) or {}).get(fname)
            value = normalise(kind, raw)
            owners = {rid for rid, ids in old.items() if value is not None and ids.get(kind) == value}
            if not owners:
                continue
            rids |= owners
            if source == "key":
                start, end = match.span(fname)
                new_key = obj.key[:start] + quote(new_values[kind], safe="@+") + obj.key[end:]
            elif source == "metadata":
                meta_changes[fname.lower()] = new_values[kind]
            else:
                tag_changes[fname] = new_values[kind]
        return rids, meta_changes, tag_changes, new_key

    def rectify_problems(self, collection_name: str, claims: Claims, subjects: list[Subject],
                         new_values: dict[str, str]) -> list[str]:
        """What S3 would refuse, checked on every claimed object that carries an old value: a key longer than
        1,024 bytes, user metadata over 2 KB (names and values, UTF-8 bytes, as written), a tag value over 256
        characters or with characters a tag cannot hold. Counted per field and problem, never a value."""
        coll, ref = self.store.coll(collection_name), self.store.ref(collection_name)
        old = {s.request_id: s.identities for s in subjects}
        found: dict[str, int] = {}
        for page in self.objects_now(coll, claimed_keys(ref, claims), facts=True):
            for obj, match in page:
                rids, meta, tag_changes, new_key = self.rectify_changes(coll, obj, match, old, new_values)
                if not rids:
                    continue
                problems = []
                if new_key != obj.key and len(new_key.encode("utf-8")) > MAX_KEY_BYTES:
                    problems.append(f"{ref}.key: the new value makes the object key longer than {MAX_KEY_BYTES} "
                                    "bytes")
                if meta:
                    head = self.store.head(coll.bucket, obj) or {}
                    metadata = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}
                    metadata.update({k: _ascii_header(v) for k, v in meta.items()})
                    size = sum(len(k.encode("utf-8")) + len(v.encode("utf-8")) for k, v in metadata.items())
                    if size > MAX_METADATA_BYTES:
                        names = ", ".join(f"metadata:{k}" for k in sorted(meta))
                        problems.append(f"{ref}.{names}: the new value makes the object's user metadata larger "
                                        f"than {MAX_METADATA_BYTES} bytes")
                for name, value in sorted(tag_changes.items()):
                    if len(value) > MAX_TAG_VALUE:
                        problems.append(f"{ref}.tag:{name}: the new value is longer than a tag value may be "
                                        f"({MAX_TAG_VALUE} characters)")
                    elif not _TAG_VALUE.fullmatch(value):
                        problems.append(f"{ref}.tag:{name}: the new value has characters a tag value cannot hold "
                                        "(letters, digits, spaces and + - = . _ : / @ only)")
                for problem in problems:
                    found[problem] = found.get(problem, 0) + 1
        return [f"{problem} ({n} object(s))" for problem, n in sorted(found.items())]

    def rectify(self, collection_name: str, claims: Claims, subjects: list[Subject], new_values: dict[str, str],
                *, dry_run: bool) -> SubjectOutcome:
        """Objects carrying an old value: a metadata field is rewritten (copy in place), a tag re-tagged, a key
        part moved (copy to the new key, then every version of the old key deleted). Objects under legal hold or
        locked by a lock that is not the subject's own are kept as they are, counted as ``exception:<reason>``;
        the subject's own restriction is renamed by the new value."""
        coll, ref = self.store.coll(collection_name), self.store.ref(collection_name)
        outcome = SubjectOutcome()
        old = {s.request_id: s.identities for s in subjects}
        own = own_lock_reasons(subjects, self.store.key)
        renamed = renamed_lock_reasons(subjects, new_values, self.store.key)
        now = dt.datetime.now(dt.UTC)
        for page in self.objects_now(coll, claimed_keys(ref, claims), facts=True):
            for obj, match in page:
                rids, meta_changes, tag_changes, new_key = self.rectify_changes(coll, obj, match, old, new_values)
                if not rids:
                    continue  # no longer carries the old value: not ours to touch
                reason = self.exception(coll, obj, own, now)
                if reason is not None:
                    for rid in rids:
                        outcome.add(rid, ref, f"exception:{reason}")
                    continue
                tags = dict(self.store.tags(coll.bucket, obj) or {})
                held_by = lock_reason(tags)
                if held_by in renamed:
                    tag_changes[LOCK_TAG] = renamed[held_by] + tags[LOCK_TAG][len(held_by):]
                if not dry_run:
                    self._write_rectified(coll, obj, tags, meta_changes, tag_changes, new_key)
                for rid in rids:
                    outcome.add(rid, ref, "rectified")
        return outcome

    def _write_rectified(self, coll: Collection, obj: S3Object, tags: dict[str, str], meta_changes: dict[str, str],
                         tag_changes: dict[str, str], new_key: str) -> None:
        """Write one object's corrected metadata, tags or key (``rectify``)."""
        key = obj.key
        head = self.store.head(coll.bucket, obj) or {}
        metadata = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}
        metadata.update({k: _ascii_header(v) for k, v in meta_changes.items()})
        tags.update(tag_changes)
        if new_key != key or meta_changes:
            copied = self.store.call("copy_object", Bucket=coll.bucket, Key=new_key,
                                     CopySource={"Bucket": coll.bucket, "Key": key, **obj.vid()},
                                     Metadata=metadata, MetadataDirective="REPLACE",
                                     **({"ContentType": head["ContentType"]} if head.get("ContentType")
                                   else {}))
            if tags:
                self.store.call("put_object_tagging", Bucket=coll.bucket, Key=new_key,
                                Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]})
            if new_key != key:  # every version of the old key goes: they all carry the old value
                purger = Purger(self.store, coll.bucket, 1000, None)
                for listed in self.store.objects(coll.bucket, key):
                    for o in listed:
                        if o.key == key:
                            purger.add(o)
                purger.flush()
            elif obj.version_id:  # older versions still hold the old metadata
                self.store.writes.drop_old_versions(coll.bucket, key, copied.get("VersionId"))
        elif tag_changes:
            self.store.call("put_object_tagging", Bucket=coll.bucket, Key=key, **obj.vid(),
                            Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]})


def _ascii_header(value: str) -> str:
    """S3 metadata is ASCII: a non-ASCII value is written RFC 2047-encoded (what ``_decode_metadata`` reads)."""
    if value.isascii():
        return value
    from email.header import Header

    return Header(value, "utf-8").encode()
