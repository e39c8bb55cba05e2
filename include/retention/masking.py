"""Masking strategies, registered by name; policies refer to them by that name.

A strategy either becomes a SQL expression (set-based, no row leaves the database)
or, for keyed hashes, is computed in Python for one bounded batch at a time.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import re
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa


class Strategy:
    name: str = ""
    in_sql: bool = True

    def sql(self, column: sa.ColumnElement, value: str | None) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def python(self, raw: Any, value: str | None, key: bytes) -> Any:
        raise NotImplementedError

    def remains(self, value: str | None) -> str:
        """What is left of a masked value (the deletion concept states it per column)."""
        return f"not stated by the strategy {self.name!r}"


class NullStrategy(Strategy):
    """Replace the value with NULL."""

    name = "null"

    def sql(self, column, value):
        return sa.null()

    def remains(self, value):
        return "nothing remains (NULL)"


class RedactStrategy(Strategy):
    """Replace the value with a fixed text (``value``, default ``[redacted]``)."""

    name = "redact"

    def sql(self, column, value):
        return sa.literal(value if value is not None else "[redacted]")

    def remains(self, value):
        return "nothing remains (a fixed text)"


class HmacStrategy(Strategy):
    """Replace the value with its keyed HMAC-SHA256 digest (hex): joinable, not reversible."""

    name = "hmac"
    in_sql = False

    def python(self, raw, value, key):
        if raw is None:
            return None
        return keyed_digest(key, str(raw))

    def remains(self, value):
        return "keyed digest (HMAC-SHA256): pseudonymous, not anonymous (linkable while the key exists)"


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (NullStrategy(), RedactStrategy(), HmacStrategy())}


def keyed_digest(key: bytes, value: str, *, normalise: Callable[[str], str] | None = None) -> str:
    """HMAC-SHA256 of ``value`` under ``key``, hex. The one place identities become digests."""
    text = normalise(value) if normalise else value
    return hmac.digest(key, text.encode("utf-8"), "sha256").hex()  # hmac.new(...).hexdigest(), one C call


# ---- key ids (docs/adr/0007-key-rotation.md) ------------------------------------------------

LEGACY_KID = "k0"  # the id of a single key given without one (RETENTION_HMAC_KEY, connection retention_keys)


class KeyRing(bytes):
    """The active keys, newest first. As ``bytes`` it IS the current key, so every caller that
    digests, encrypts or chains under one key keeps working; ``ring`` adds the older keys (by id)
    that lookups and verification still accept."""

    kid: str
    ring: tuple[tuple[str, bytes], ...]

    def __new__(cls, keys: list[tuple[str, bytes]] | tuple[tuple[str, bytes], ...]) -> KeyRing:
        if not keys:
            raise ValueError("a key ring needs at least one key")
        obj = super().__new__(cls, keys[0][1])
        obj.kid = keys[0][0]
        obj.ring = tuple((kid, bytes(secret)) for kid, secret in keys)
        return obj

    def __repr__(self) -> str:  # never the secrets
        return f"KeyRing({', '.join(kid for kid, _ in self.ring)})"

    def __reduce__(self):  # copy / pickle keep the ring
        return (KeyRing, (self.ring,))


def keys_of(key: bytes) -> tuple[tuple[str, bytes], ...]:
    """Every active (key id, secret), current first; a plain ``bytes`` key is the one key ``k0``."""
    return key.ring if isinstance(key, KeyRing) else ((LEGACY_KID, bytes(key)),)


def current_kid(key: bytes) -> str:
    return keys_of(key)[0][0]


def keyed_digests(key: bytes, value: str) -> list[str]:
    """``keyed_digest`` of ``value`` under every active key, current first: what a lookup must try."""
    out: list[str] = []
    for _, secret in keys_of(key):
        digest = keyed_digest(secret, value)
        if digest not in out:
            out.append(digest)
    return out


# ---- IP addresses in free text (server access logs) ----------------------------------------

# IPv4: four dotted numbers not glued to further digits or dots-with-digits (a version "1.2.3.4.5" is not one).
_IPV4 = re.compile(r"(?<![0-9.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?![0-9]|\.[0-9])")
# IPv6 candidates: a run of hex digits, colons and dots holding a colon; ipaddress decides.
_IPV6 = re.compile(r"(?<![0-9A-Za-z:.])[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*")


def parse_ip_prefixes(value: str | None) -> tuple[int, int]:
    """``"24/48"`` -> (IPv4 prefix length, IPv6 prefix length); ``None`` gives the default /24 and /48."""
    if value is None:
        return 24, 48
    v4, sep, v6 = str(value).partition("/")
    try:
        p4, p6 = int(v4), int(v6 if sep else 48)
    except ValueError:
        raise ValueError(f"truncate_ip takes 'IPv4 prefix/IPv6 prefix' such as '24/48', got {value!r}") from None
    if not (0 <= p4 <= 32 and 0 <= p6 <= 128):
        raise ValueError(f"truncate_ip prefixes must be 0-32 (IPv4) and 0-128 (IPv6), got {value!r}")
    return p4, p6


def truncate_ips(text: str, prefixes: tuple[int, int] = (24, 48)) -> str:
    """Replace every IPv4 / IPv6 address in ``text`` by its network address; all other characters unchanged.

    Anything that parses as an address is truncated, even where it is not one (say a version
    number): erring towards masking is the safe side for personal data.
    """
    p4, p6 = prefixes
    text = _IPV6.sub(lambda m: _truncate_v6(m.group(0), p6, p4), text)
    return _IPV4.sub(lambda m: _truncate_v4(m.group(0), p4), text)


@functools.lru_cache(maxsize=65536)  # logs repeat the same addresses line after line
def _truncate_v4(token: str, prefix: int) -> str:
    octets = [int(part) for part in token.split(".")]
    if any(o > 255 for o in octets):
        return token
    value = int.from_bytes(bytes(octets), "big") & ((0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF)
    return ".".join(str(b) for b in value.to_bytes(4, "big"))


@functools.lru_cache(maxsize=65536)
def _truncate_v6(token: str, prefix: int, prefix4: int = 24) -> str:
    # A sentence may end in ".", a "host:port" in ":"; try the token, then without trailing punctuation.
    for end in range(len(token), 1, -1):
        head = token[:end]
        # Cheap test first: an IPv6 address has "::", seven colons, or six and a dotted IPv4 tail
        # (times like 12:30:45 have none of these).
        colons = head.count(":")
        if "::" not in head and colons < 7 and not (colons == 6 and "." in head):
            if head[-1] not in ".:":
                break
            continue
        try:
            addr = ipaddress.IPv6Address(head)
        except ValueError:
            if head[-1] not in ".:":
                break
            continue
        return _mask_v6(addr, prefix, prefix4) + token[end:]
    return token


def _mask_v6(addr: ipaddress.IPv6Address, prefix: int, prefix4: int) -> str:
    """An IPv6 address's network; an IPv4-mapped one (``::ffff:192.0.2.33`` or ``::ffff:c000:221``, as dual-stack
    servers log IPv4 clients) is an IPv4 address: it is masked with the IPv4 prefix and written in the mapped
    dotted form (``::ffff:192.0.2.0`` at /24), so its network stays for statistics."""
    mapped = addr.ipv4_mapped
    if mapped is not None:
        return f"::ffff:{_truncate_v4(str(mapped), prefix4)}"
    return str(ipaddress.IPv6Network(f"{addr}/{prefix}", strict=False).network_address)


class TruncateIpStrategy(Strategy):
    """Truncate IP addresses to their network: IPv4 to /24 and IPv6 to /48, or ``value`` ``"v4/v6"``.
    An IPv4-mapped IPv6 address (``::ffff:192.0.2.33``) is an IPv4 address and is masked as one
    (``::ffff:192.0.2.0``).

    Works on a column (computed in Python, one batch at a time) and, through ``text``, on
    whole lines of a log object (the S3 store).
    """

    name = "truncate_ip"
    in_sql = False

    def python(self, raw, value, key):
        if raw is None:
            return None
        return truncate_ips(str(raw), parse_ip_prefixes(value))

    def text(self, line: str, value: str | None) -> str:
        return truncate_ips(line, parse_ip_prefixes(value))

    def remains(self, value):
        p4, p6 = parse_ip_prefixes(value)
        return f"/{p4} (IPv4) and /{p6} (IPv6) network prefix kept: pseudonymous, not anonymous"


STRATEGIES[TruncateIpStrategy.name] = TruncateIpStrategy()
