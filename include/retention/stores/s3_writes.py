"""Writes to S3 in the shape S3 wants them: DeleteObjects in batches of at most 1,000, and
streamed rewrites (one PutObject, or a multipart upload for large objects).

This module imports nothing from Airflow.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from include.retention.masking import keyed_digest
from include.retention.stores.s3_objects import _NOT_IN_ADDRESS, MAX_DELETE, ObjectsNotDeleted

if TYPE_CHECKING:
    from include.retention.stores.s3 import S3Store
    from include.retention.stores.s3_objects import S3Object

log = logging.getLogger(__name__)


def _safe_cut(data: bytes) -> int:
    """Where to cut a very long line: after the last character that no IP address contains."""
    ends = [m.end() for m in _NOT_IN_ADDRESS.finditer(data[-4096:])]
    return len(data) - 4096 + ends[-1] if ends else len(data)


class Purger:
    """Collects object versions and deletes them with DeleteObjects, at most ``limit`` entries per request.

    ``on_batch(keys, versions, errors)`` is called after each request with the keys of the objects
    that went (each object counted once), before per-key errors are raised.
    """

    def __init__(self, store: S3Store, bucket: str, limit: int,
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
        resp = self.store._call("delete_objects", Bucket=self.bucket,
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

    def __init__(self, store: S3Store, bucket: str, key: str, extra: dict[str, Any], part_size: int):
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
            self.upload_id = self.store._call("create_multipart_upload", Bucket=self.bucket, Key=self.key,
                                              **self.extra)["UploadId"]
        number = len(self.parts) + 1
        resp = self.store._call("upload_part", Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                                PartNumber=number, Body=data)
        self.parts.append({"ETag": resp["ETag"], "PartNumber": number})

    def complete(self) -> str | None:
        """Make the new content the object; returns its version id (versioned buckets)."""
        if self.upload_id is None:
            resp = self.store._call("put_object", Bucket=self.bucket, Key=self.key, Body=bytes(self.buffer),
                                    **self.extra)
        else:
            if self.buffer:
                self._part(bytes(self.buffer))
            resp = self.store._call("complete_multipart_upload", Bucket=self.bucket, Key=self.key,
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
