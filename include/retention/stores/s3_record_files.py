"""A rewrite's local files (docs/adr/0021-records-inside-objects.md): the version being rewritten, downloaded once to
disk (``LocalCopy``), and the rewrite, written to disk, checked there and uploaded from there (``upload_checked``)
so that what S3 stores is, byte for byte, what was checked.

Memory stays bounded by a row group / a batch and one upload part, whatever the object's size: the files are on
disk, in a private temporary directory (mode 0700) that goes when the rewrite is done (a killed process leaves it
in the system's temporary directory, like any temporary file).

This module imports nothing from Airflow.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from botocore.exceptions import BotoCoreError, ClientError

from include.retention.errors import StoreUnavailable
from include.retention.stores.s3_objects import CHUNK
from include.retention.stores.s3_record_read import SizedRaw

if TYPE_CHECKING:
    from include.retention.stores.s3_objects import S3Core, S3Object


class LocalCopy:
    """Exactly one version of an object (by its version id, else by its ETag: ``If-Match``), downloaded once into a
    temporary file; ``output`` is where its rewrite is written."""

    def __init__(self, store: S3Core, bucket: str, vobj: S3Object, head: dict[str, Any]):
        self.head = head
        self.dir = tempfile.TemporaryDirectory(prefix="retention-rewrite-")  # noqa: SIM115 - closed by close()
        self.path = os.path.join(self.dir.name, "original")
        self.output = os.path.join(self.dir.name, "rewrite")
        try:
            self._download(store, bucket, vobj)
        except BaseException:
            self.close()
            raise

    def _download(self, store: S3Core, bucket: str, vobj: S3Object) -> None:
        source = vobj.vid() or ({"IfMatch": self.head["ETag"]} if self.head.get("ETag") else {})
        body = store.call("get_object", Bucket=bucket, Key=vobj.key, **source)["Body"]
        size = 0
        try:
            with open(self.path, "wb") as f:
                for chunk in body.iter_chunks(CHUNK):
                    f.write(chunk)
                    size += len(chunk)
        except (BotoCoreError, ClientError) as exc:
            raise store.fail("GetObject", exc) from None
        finally:
            body.close()
        meant = self.head.get("ContentLength")
        if meant is not None and size != int(meant):
            raise StoreUnavailable(f"{store.name}: an object of {bucket} read {size} bytes of {meant}; nothing of it "
                                   "was changed")

    def close(self) -> None:
        self.dir.cleanup()
        release_memory()


def release_memory() -> None:
    """Give the memory Arrow freed back to the system (its allocator keeps it otherwise: the peak then grows with the
    row groups read before, not only with the largest)."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


def carried_over(head: dict[str, Any], tags: dict[str, str], metadata: dict[str, str]) -> dict[str, Any]:
    """What a rewrite of a version keeps of it (metadata, plus ``metadata``; content headers; ``tags``)."""
    extra: dict[str, Any] = {"Metadata": {**head.get("Metadata", {}), **metadata}}
    for name in ("ContentType", "ContentEncoding", "ContentDisposition", "ContentLanguage", "CacheControl"):
        if head.get(name):
            extra[name] = head[name]
    if tags:
        extra["Tagging"] = urlencode(tags)
    return extra


def _md5(data: bytes) -> Any:
    return hashlib.md5(data, usedforsecurity=False)


class _Window(SizedRaw):
    """``size`` bytes of an open file from ``start``: what one request uploads, streamed from disk (botocore and
    http.client read it in small blocks, and seek back to retry), never held in memory whole."""

    def __init__(self, f: Any, start: int, size: int):
        super().__init__(size)
        self.f, self.start = f, start

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.size - self.pos)
        if n <= 0:
            return 0
        self.f.seek(self.start + self.pos)
        data = self.f.read(n)
        buffer[:len(data)] = data
        self.pos += len(data)
        return len(data)


def _md5_of(f: Any, start: int, length: int) -> bytes:
    md5 = hashlib.md5(usedforsecurity=False)
    f.seek(start)
    left = length
    while left > 0 and (chunk := f.read(min(CHUNK * 16, left))):
        md5.update(chunk)
        left -= len(chunk)
    return md5.digest()


def upload_checked(store: S3Core, bucket: str, key: str, extra: dict[str, Any], part_size: int, path: str
                   ) -> tuple[str | None, bool]:
    """Upload the file at ``path`` to ``key`` (one PutObject, or a multipart upload of ``part_size`` parts), streamed
    from disk, every request with its Content-MD5 (S3 refuses a body that does not match it). Returns (the new
    version id, are the stored bytes the file's): the ETag S3 answers equals the MD5 those bytes make (one MD5, or
    the MD5 of the parts' MD5s and their count), or, where S3's ETag is no MD5 (SSE-KMS), the stored version read
    back has the file's SHA-256 (a read back that fails: not stored as checked)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if size <= part_size:
            md5 = _md5_of(f, 0, size)
            resp = store.call("put_object", Bucket=bucket, Key=key, Body=_Window(f, 0, size), ContentLength=size,
                              ContentMD5=base64.b64encode(md5).decode(), **extra)
            etag = md5.hex()
        else:
            resp, etag = _multipart(store, bucket, key, extra, part_size, f, size)
    version = resp.get("VersionId")
    if (resp.get("ETag") or "").strip('"') == etag:
        return version, True
    try:
        return version, _same_bytes(store, bucket, key, version, path)
    except StoreUnavailable:  # not read back: not known to be stored as checked (the caller removes it)
        return version, False


def _multipart(store: S3Core, bucket: str, key: str, extra: dict[str, Any], part_size: int, f: Any, size: int
               ) -> tuple[dict[str, Any], str]:
    upload_id = store.call("create_multipart_upload", Bucket=bucket, Key=key, **extra)["UploadId"]
    parts: list[dict[str, Any]] = []
    digests: list[bytes] = []
    try:
        for start in range(0, size, part_size):
            length = min(part_size, size - start)
            md5 = _md5_of(f, start, length)
            number = len(parts) + 1
            resp = store.call("upload_part", Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                              Body=_Window(f, start, length), ContentLength=length,
                              ContentMD5=base64.b64encode(md5).decode())
            parts.append({"ETag": resp["ETag"], "PartNumber": number})
            digests.append(md5)
        resp = store.call("complete_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id,
                          MultipartUpload={"Parts": parts})
    except BaseException:
        try:
            store.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        except (ClientError, BotoCoreError):  # the original failure is what matters; S3 expires parts
            pass
        raise
    return resp, f"{_md5(b''.join(digests)).hexdigest()}-{len(parts)}"


def _same_bytes(store: S3Core, bucket: str, key: str, version: str | None, path: str) -> bool:
    """Does the stored object (this version) hold exactly the file's bytes? (Read back, hashed, never decoded.)"""
    local, stored = hashlib.sha256(), hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK * 16):
            local.update(chunk)
    body = store.call("get_object", Bucket=bucket, Key=key, **({"VersionId": version} if version else {}))["Body"]
    try:
        for chunk in body.iter_chunks(CHUNK * 16):
            stored.update(chunk)
    except (BotoCoreError, ClientError) as exc:
        raise store.fail("GetObject", exc) from None
    finally:
        body.close()
    return local.digest() == stored.digest()
