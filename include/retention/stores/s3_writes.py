"""Writes to S3 in the shape S3 wants them: DeleteObjects in batches of at most 1,000, and
streamed rewrites (one PutObject, or a multipart upload for large objects); ``S3Writes``: what a stage or a subject
request writes to one object (lock tag and legal hold, anonymized rewrite, old versions dropped).

This module imports nothing from Airflow.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from botocore.exceptions import BotoCoreError, ClientError

from include.retention.errors import StoreUnavailable
from include.retention.masking import STRATEGIES, keyed_digest
from include.retention.stores.s3_objects import (
    ANONYMIZED_META,
    CHUNK,
    LOCK_TAG,
    MAX_DELETE,
    MAX_LINE,
    NOT_IN_ADDRESS,
    TAG_SAFE,
    ObjectsNotDeleted,
)

if TYPE_CHECKING:
    from include.retention.policy import Stage
    from include.retention.stores.s3_objects import S3Core, S3Object

log = logging.getLogger(__name__)


def safe_cut(data: bytes) -> int:
    """Where to cut a very long line: after the last character that no IP address contains."""
    ends = [m.end() for m in NOT_IN_ADDRESS.finditer(data[-4096:])]
    return len(data) - 4096 + ends[-1] if ends else len(data)


class Purger:
    """Collects object versions and deletes them with DeleteObjects, at most ``limit`` entries per request.

    ``on_batch(keys, versions, errors)`` is called after each request with the keys of the objects
    that went (each object counted once), before per-key errors are raised.
    """

    def __init__(self, store: S3Core, bucket: str, limit: int,
                 on_batch: Callable[[list[str], int, int], None] | None,
                 before_batch: Callable[[list[str]], None] | None = None):
        self.store, self.bucket, self.limit, self.on_batch = store, bucket, min(limit, MAX_DELETE), on_batch
        self.before_batch = before_batch  # called with the objects about to go, before the request
        self.versioned = store.bucket_info(bucket).versioned
        self.buffer: list[tuple[dict[str, str], bool]] = []
        self.objects = self.versions = self.calls = 0

    def add(self, obj: S3Object) -> None:
        if self.versioned:
            self.add_versions(obj.key, obj.versions, counts=True)
        else:
            self._push({"Key": obj.key}, True)

    def add_versions(self, key: str, versions: list[str], *, counts: bool) -> None:
        for i, version in enumerate(versions):
            self._push({"Key": key, "VersionId": version}, counts and i == 0)

    def _push(self, entry: dict[str, str], counts: bool) -> None:
        self.buffer.append((entry, counts))
        if len(self.buffer) >= self.limit:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        batch, self.buffer = self.buffer, []
        if self.before_batch:
            self.before_batch([e["Key"] for e, counts in batch if counts])
        resp = self.store.call("delete_objects", Bucket=self.bucket,
                               Delete={"Objects": [e for e, _ in batch], "Quiet": True})
        self.calls += 1
        errors = resp.get("Errors", [])
        failed = {e.get("Key") for e in errors}
        keys = [e["Key"] for e, counts in batch if counts and e["Key"] not in failed]
        self.objects += len(keys)
        self.versions += len(batch) - len(errors)
        if self.on_batch:
            self.on_batch(keys, len(batch) - len(errors), len(errors))
        if errors:
            codes: dict[str, int] = {}
            for e in errors:
                codes[e.get("Code", "error")] = codes.get(e.get("Code", "error"), 0) + 1
            first = keyed_digest(self.store.key, errors[0].get("Key", ""))[:16]
            raise ObjectsNotDeleted(
                f"{self.store.name}: S3 refused to delete {len(errors)} of {len(batch)} object versions in bucket "
                f"{self.bucket!r} ({', '.join(f'{c} x{n}' for c, n in sorted(codes.items()))}); "
                f"first key digest {first}")


class Upload:
    """The rewritten object: one PutObject if it fits in one part, else a multipart upload."""

    def __init__(self, store: S3Core, bucket: str, key: str, extra: dict[str, Any], part_size: int):
        self.store, self.bucket, self.key, self.extra, self.part_size = store, bucket, key, extra, part_size
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []

    def write(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) > self.part_size:  # ">": the last part may hold the rest whole
            self._part(bytes(self.buffer[:self.part_size]))
            del self.buffer[:self.part_size]

    def _part(self, data: bytes) -> None:
        if self.upload_id is None:
            self.upload_id = self.store.call("create_multipart_upload", Bucket=self.bucket, Key=self.key,
                                             **self.extra)["UploadId"]
        number = len(self.parts) + 1
        resp = self.store.call("upload_part", Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                               PartNumber=number, Body=data)
        self.parts.append({"ETag": resp["ETag"], "PartNumber": number})

    def complete(self) -> str | None:
        """Make the new content the object; returns its version id (versioned buckets)."""
        if self.upload_id is None:
            resp = self.store.call("put_object", Bucket=self.bucket, Key=self.key, Body=bytes(self.buffer),
                                   **self.extra)
        else:
            if self.buffer:
                self._part(bytes(self.buffer))
            resp = self.store.call("complete_multipart_upload", Bucket=self.bucket, Key=self.key,
                                   UploadId=self.upload_id, MultipartUpload={"Parts": self.parts})
        self.upload_id = None
        self.buffer = bytearray()
        return resp.get("VersionId")

    def abort(self) -> None:
        if self.upload_id is not None:
            try:
                self.store.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
            except (ClientError, BotoCoreError):  # the original failure is what matters; S3 expires parts
                log.warning("%s: could not abort a multipart upload in bucket %s", self.store.name, self.bucket)
            self.upload_id = None


class S3Writes:
    """What a stage or a subject request writes to one object: the lock tag (and legal hold), an anonymized
    rewrite, old versions dropped (a collaborator of ``S3Store``)."""

    def __init__(self, store: S3Core):
        self.store = store

    def lock(self, bucket: str, obj: S3Object, reason: str, now: dt.datetime) -> bool:
        tags = self.store.tags(bucket, obj)
        if tags is None:
            return False
        if LOCK_TAG not in tags:
            value = TAG_SAFE.sub("_", f"{reason}@{now:%Y-%m-%d}")[:256]
            tag_set = [{"Key": k, "Value": v} for k, v in {**tags, LOCK_TAG: value}.items()]
            # PutObjectTagging replaces the whole set, so existing tags are written back with ours.
            self.store.call("put_object_tagging", Bucket=bucket, Key=obj.key, Tagging={"TagSet": tag_set}, **obj.vid())
            obj.tags = {**tags, LOCK_TAG: value}
        # Tag first: a failed legal hold then leaves a visibly locked object that the next run completes.
        if self.store.bucket_info(bucket).object_lock and (self.store.head(bucket, obj) or {}).get(
                "ObjectLockLegalHoldStatus") != "ON":
            self.store.call("put_object_legal_hold", Bucket=bucket, Key=obj.key, LegalHold={"Status": "ON"},
                            **obj.vid())
        return True

    def release_own_hold(self, bucket: str, obj: S3Object) -> None:
        """Before deleting: lift a legal hold this store set as a lock (tagged ``retention-lock``)."""
        if not (self.store.bucket_info(bucket).object_lock and obj.version_id):
            return
        head = self.store.head(bucket, obj) or {}
        if head.get("ObjectLockLegalHoldStatus") == "ON" and LOCK_TAG in (self.store.tags(bucket, obj) or {}):
            self.store.call("put_object_legal_hold", Bucket=bucket, Key=obj.key, LegalHold={"Status": "OFF"},
                            VersionId=obj.version_id)

    def anonymize(self, bucket: str, obj: S3Object, stage: Stage, now: dt.datetime) -> bool:
        head = self.store.head(bucket, obj)
        tags = self.store.tags(bucket, obj)
        if head is None or tags is None:
            return False
        masks = [(STRATEGIES[m.strategy], m.value) for m in stage.mask.values()]

        def rewrite(block: bytes) -> bytes:
            # latin-1 maps each byte to one character and back: every byte outside an address survives.
            text = block.decode("latin-1")
            for strategy, value in masks:
                text = strategy.text(text, value)
            return text.encode("latin-1")

        extra: dict[str, Any] = {
            "Metadata": {**head.get("Metadata", {}), ANONYMIZED_META: now.strftime("%Y-%m-%dT%H:%M:%SZ")}}
        for name in ("ContentType", "ContentEncoding", "ContentDisposition", "ContentLanguage", "CacheControl"):
            if head.get(name):
                extra[name] = head[name]
        if tags:
            extra["Tagging"] = urlencode(tags)
        # Read exactly the version that was classified (or fail if it changed in between).
        source = {"VersionId": obj.version_id} if obj.version_id else {"IfMatch": head["ETag"]}
        body = self.store.call("get_object", Bucket=bucket, Key=obj.key, **source)["Body"]
        upload = Upload(self.store, bucket, obj.key, extra, self.store.part_size)
        try:
            read, carry = 0, b""
            for chunk in body.iter_chunks(CHUNK):
                read += len(chunk)
                carry += chunk
                cut = carry.rfind(b"\n") + 1
                if not cut and len(carry) > MAX_LINE:
                    cut = safe_cut(carry)
                if cut:
                    upload.write(rewrite(carry[:cut]))
                    carry = carry[cut:]
            upload.write(rewrite(carry))
            if read != head.get("ContentLength", read):
                raise StoreUnavailable(f"{self.store.name}: S3 object read short during anonymization "
                                       f"({read} of {head.get('ContentLength')} bytes); object left unchanged")
            new_version = upload.complete()
        except BaseException as exc:
            upload.abort()
            if isinstance(exc, (ClientError, BotoCoreError)):
                raise self.store.fail("GetObject", exc) from None
            raise
        finally:
            body.close()
        if self.store.bucket_info(bucket).versioned:
            self.drop_old_versions(bucket, obj.key, keep=new_version)
        return True

    def drop_old_versions(self, bucket: str, key: str, keep: str | None) -> None:
        """After a rewrite in a versioned bucket: older versions still hold the original content."""
        purger = Purger(self.store, bucket, MAX_DELETE, None)
        for page in self.store.objects(bucket, key):
            for obj in page:
                if obj.key != key:
                    continue
                if keep not in obj.data_versions:
                    log.warning("%s: rewritten object not found among its versions in bucket %s; older versions "
                                "kept for the next run", self.store.name, bucket)
                    return
                # Versions are listed newest first: only those older than the rewrite hold original content
                # (a newer one would be somebody else's write after ours).
                purger.add_versions(key, obj.data_versions[obj.data_versions.index(keep) + 1:], counts=False)
        purger.flush()
