"""The chain's keys and hashes: an entry's canonical bytes, its keyed hash, and the co-signed hand-over of the
chain to a new key (docs/adr/0007-key-rotation.md)."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from include.retention.errors import RetentionError
from include.retention.ledger.schema import CHAIN_FORMAT, HASHED_FIELDS, ROTATE_KEYS

_CHAIN_KEY_LABEL = b"retention-ledger-chain/2"
_ROTATION_KEY_LABEL = b"retention-ledger-rotation/1"
_ANCHOR_KEY_LABEL = b"retention-ledger-anchor/2"


def chain_key(key: bytes) -> bytes:
    """The chain's own key, derived from the product secret (so a chain hash is never a subject digest)."""
    if not key:
        raise RetentionError(
            "the audit ledger needs the HMAC key (RETENTION_HMAC_KEY or connection "
            "'retention_keys') to write or verify its chain"
        )
    return hmac.new(key, _CHAIN_KEY_LABEL, hashlib.sha256).digest()


def rotation_key(secret: bytes) -> bytes:
    """The key of a rotation entry's co-signature (the NEW key's), separate from its chain key."""
    return hmac.new(secret, _ROTATION_KEY_LABEL, hashlib.sha256).digest()


def anchor_key(secret: bytes) -> bytes:
    """The key of an anchor's keyed hash."""
    return hmac.new(secret, _ANCHOR_KEY_LABEL, hashlib.sha256).digest()


_CANONICAL_KEYS = tuple(sorted((*HASHED_FIELDS, "format")))
_ENCODER = json.JSONEncoder(separators=(",", ":"))  # keys are inserted sorted: same bytes as sort_keys=True


def canonical(row: dict[str, Any]) -> bytes:
    """The bytes an entry's hash covers: every hashed field plus the chain format, as sorted JSON."""
    content = {k: CHAIN_FORMAT if k == "format" else row.get(k) for k in _CANONICAL_KEYS}
    return _ENCODER.encode(content).encode()


def mac(ckey: bytes, row: dict[str, Any]) -> str:
    return hmac.digest(ckey, canonical(row), "sha256").hex()


def entry_hash(row: dict[str, Any], key: bytes) -> str:
    """HMAC-SHA256 of the entry under the chain key derived from ``key``."""
    return mac(chain_key(key), row)


# ---- key rotation in the chain (docs/adr/0007-key-rotation.md) -----------------------------


def key_change(row: dict[str, Any]) -> dict[str, Any] | None:
    """The ``key_change`` of a ``rotate_keys`` entry (``{"from", "to", "proof"}``), or None for any other entry."""
    if row.get("action") != ROTATE_KEYS or not row.get("details"):
        return None
    try:
        details = json.loads(row["details"])
    except ValueError:
        return None
    change = details.get("key_change") if isinstance(details, dict) else None
    return change if isinstance(change, dict) else {} if change is not None else None


def cosignature(row: dict[str, Any], new_secret: bytes) -> str:
    """HMAC under the new key of the rotation entry with its proof blank: only a holder of the new key makes it."""
    details = json.loads(row["details"])
    details["key_change"]["proof"] = ""
    blank = {**row, "details": json.dumps(details, sort_keys=True)}
    return hmac.digest(rotation_key(new_secret), canonical(blank), "sha256").hex()


def cosigned_details(row: dict[str, Any], new_secret: bytes) -> str:
    details = json.loads(row["details"])
    details["key_change"]["proof"] = cosignature(row, new_secret)
    return json.dumps(details, sort_keys=True)


def kid_after(row: dict[str, Any], ckeys: list[tuple[str, bytes]]) -> str | None:
    """The id of the key the chain is under after ``row``: its own key, or the key a rotation hands over to."""
    canon = canonical(row)
    for kid, ckey in ckeys:
        if hmac.compare_digest(hmac.digest(ckey, canon, "sha256").hex(), row["entry_hash"] or ""):
            change = key_change(row)
            return str(change["to"]) if change and isinstance(change.get("to"), str) else kid
    return None
