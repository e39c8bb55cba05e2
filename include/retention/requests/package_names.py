"""Zip entry names for objects in an access package: safe to extract anywhere, one entry per object.

An S3 key is any text: ``../../etc/x``, ``/a``, ``//a``, ``a\\b``, control characters, 1,024 bytes. An entry
name built from it as it is could leave the extraction folder, be read as a Windows path, or collapse two
keys onto one entry (``/a``, ``//a`` and ``a`` all become ``a`` once leading slashes go). So the key is split
at ``/`` and each part percent-encoded where it is not plain: ``%``, ``\\``, control and format characters
(Unicode categories C*, Zl, Zp); an empty part is ``%2F`` (a ``/`` cannot occur inside a part, so this is
unambiguous), ``.`` and ``..`` are ``%2E`` / ``%2E%2E``. The encoding is one to one (each part decodes back),
so different keys give different names, and a plain key (``cvs/17/cv.pdf``) keeps its name. A name longer
than ``MAX_NAME_BYTES`` (UTF-8), or one that would be a file where another name needs a folder (``a`` and
``a/b``), becomes flat, is cut on a character boundary and ends with ``~`` and 16 hex digits of the key's
SHA-256; the names an ``EntryNames`` gave out are remembered, so even then no two objects share one.
The manifest maps every entry back to its collection and original key.
"""

from __future__ import annotations

import hashlib
import unicodedata

MAX_NAME_BYTES = 200
DIGEST_CHARS = 16
_SPECIAL = {"": "%2F", ".": "%2E", "..": "%2E%2E"}


def _plain(ch: str) -> bool:
    if ch in "%\\":
        return False
    cat = unicodedata.category(ch)
    return not (cat.startswith("C") or cat in ("Zl", "Zp"))


def encode_part(part: str) -> str:
    """One ``/``-separated part of a key as a safe path segment (percent-encoding what is not plain)."""
    if part in _SPECIAL:
        return _SPECIAL[part]
    return "".join(ch if _plain(ch) else "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
                   for ch in part)


def encode_key(key: str) -> str:
    """The whole key as a relative path of safe segments (one to one: different keys, different paths)."""
    return "/".join(encode_part(p) for p in key.split("/"))


def _cut(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes on a character boundary, never in a ``%XX`` escape."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    out = data[:limit].decode("utf-8", "ignore")
    pct = out.rfind("%", max(len(out) - 2, 0))
    return out[:pct] if pct != -1 else out


class EntryNames:
    """Entry names of one zip: ``prefix`` + the encoded key, bounded, unique, and extractable together.

    S3 has no folders: ``a`` and ``a/b`` are both keys, but ``a`` cannot be a file and a folder on disk. So a name
    is taken as it is only when it is short enough, not given out yet, not a folder of an earlier name and has no
    earlier file name as a folder; otherwise the object gets a flat name in ``prefix`` (every ``/`` of the
    encoded key as ``%2F``), cut to the bound, with ``~`` and the key's digest (and ``~n`` should even that be
    taken)."""

    def __init__(self, max_bytes: int = MAX_NAME_BYTES):
        self.max_bytes = max_bytes
        self.used: set[str] = set()
        self.dirs: set[str] = set()

    def _free(self, name: str) -> bool:
        parts = name.split("/")
        folders = ["/".join(parts[:i]) for i in range(1, len(parts))]
        return name not in self.used and name not in self.dirs and not any(f in self.used for f in folders)

    def name(self, prefix: str, key: str) -> str:
        name = prefix + encode_key(key)
        if len(name.encode("utf-8")) > self.max_bytes or not self._free(name):
            digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:DIGEST_CHARS]
            suffix = f"~{digest}"
            flat = prefix + encode_key(key).replace("/", "%2F")
            head = _cut(flat, self.max_bytes - len(suffix) - 6)  # room for a "~n" counter
            name, n = head + suffix, 1
            while not self._free(name):
                n += 1
                name = f"{head}{suffix}~{n}"
        self.used.add(name)
        parts = name.split("/")
        self.dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
        return name

    def reserve(self, name: str) -> None:
        """A name taken by something else in the zip (``manifest.json``, a data file)."""
        self.used.add(name)
