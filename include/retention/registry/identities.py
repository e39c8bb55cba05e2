"""A request's identities and what a new request carries, and the registry's keys: keyed digests for matching,
Fernet encryption (under a key derived from the product secret) for everything that names a person."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from include.retention.errors import RetentionError
from include.retention.identity import IDENTITY_KINDS, IdentityError, index_digest, normalise
from include.retention.identity import validate as validate_identity
from include.retention.masking import current_kid, keyed_digest, keyed_digests, keys_of
from include.retention.registry.schema import TEXT_LIMITS


def encryption_key(secret: bytes) -> bytes:
    """The registry's Fernet key, derived (HKDF) from the product secret: one secret to manage."""
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"retention-registry-v1").derive(secret)
    return base64.urlsafe_b64encode(derived)


class Identities:
    """The identities a request carries: kind (``IDENTITY_KINDS``) -> value as given."""

    def __init__(self, values: dict[str, str | None] | None = None, **kinds: str | None):
        merged = {**(values or {}), **kinds}
        self.values = {k: v for k, v in merged.items() if v is not None and v != ""}

    def given(self) -> dict[str, str]:
        return dict(self.values)

    def normalised(self) -> dict[str, str]:
        return {k: n for k, v in self.values.items() if (n := normalise(k, v)) is not None}

    def __getattr__(self, kind: str) -> str | None:  # identities.email, identities.phone ...
        if kind in IDENTITY_KINDS:
            return self.__dict__.get("values", {}).get(kind)
        raise AttributeError(kind)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Identities) and other.values == self.values

    def __repr__(self) -> str:  # never the values
        return f"Identities({', '.join(sorted(self.values))})"


@dataclass
class NewRequest:
    identities: Identities
    mode: str = "erase"
    dry_run: bool = False
    source: str = "form"
    external_ref: str | None = None
    note: str | None = None


MODES = ("erase", "restrict", "access", "rectify", "withdraw")
# Modes erasure_intake takes from the queue; access_request takes the others (ADR 0008).
ERASURE_MODES = ("erase", "restrict")
# `cli submit --identity-verified`: queued with the requester's identity verified (no identity check; ADR 0014)
INTAKE_VERIFIED = "intake-verified"


def validate_request(req: NewRequest) -> None:
    """Refuse a malformed request with a message that names the field, never its value."""
    if req.mode not in MODES:
        raise RetentionError(f"mode must be one of {', '.join(MODES)}, got {str(req.mode)[:20]!r}")
    given = req.identities.given()
    if not given:
        raise RetentionError(f"a request needs at least one identity: {', '.join(IDENTITY_KINDS)}")
    for kind, value in given.items():
        validate_identity(kind, value)
    for name, limit in TEXT_LIMITS.items():
        value = getattr(req, name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise IdentityError(f"{name} must be a string")
        if len(value) > limit:
            raise IdentityError(f"{name} is longer than {limit} characters")
        if "\x00" in value:
            raise IdentityError(f"{name} contains a NUL character")


class Vault:
    """The registry's keys: ``digest`` for matching, ``encrypt`` / ``decrypt`` for identities and details.
    ``secret`` None: a view without keys (pages and reports; statuses, dates, counts, never identities)."""

    def __init__(self, secret: bytes | None):
        self.secret = secret or b""
        # Tokens are "<key id>:<Fernet token>" (a Fernet token has no ':'); older ones, without an id,
        # are tried under every active key (docs/adr/0007-key-rotation.md).
        self.kid = current_kid(secret) if secret else None
        self._fernets = {kid: Fernet(encryption_key(key)) for kid, key in keys_of(secret)} if secret else {}
        self._fernet = self._fernets[self.kid] if secret else None

    def digest(self, kind: str, value: str) -> str:
        if not self.secret:
            raise RetentionError("this registry view has no key: no digest can be computed")
        return keyed_digest(self.secret, normalise(kind, value) or "")

    def lookup(self, kind: str, value: str) -> str:
        """The encrypted index digest of a suppression entry (``lookup_enc``): ``index_digest`` of the same
        normalised value the keyed ``digest`` is computed from, under the current key."""
        return self.encrypt(index_digest(kind, value))

    def digests(self, kind: str, value: str) -> list[str]:
        """The digests under every active key, current first (what a lookup must try)."""
        if not self.secret:  # the same refusal as ``digest``
            raise RetentionError("this registry view has no key: no digest can be computed")
        return keyed_digests(self.secret, normalise(kind, value) or "")

    @property
    def active_kids(self) -> list[str]:
        """The ids of the active keys (current first); empty for a view without keys."""
        return list(self._fernets)

    def need_key(self) -> Fernet:
        if self._fernet is None:
            raise RetentionError("this registry view has no key: identities can be neither stored nor read")
        return self._fernet

    def encrypt(self, value: Any) -> str | None:
        if value is None:
            return None
        return f"{self.kid}:{self.need_key().encrypt(json.dumps(value).encode()).decode()}"

    def decrypt(self, token: str | None) -> Any:
        if token is None:
            return None
        self.need_key()
        kid, sep, body = token.rpartition(":")
        fernet = self._fernets.get(kid) if sep else MultiFernet(list(self._fernets.values()))
        if fernet is None:
            raise RetentionError(
                f"registry entry is encrypted under key {kid!r}, which is not an active key "
                "(put it back in RETENTION_HMAC_KEYS)"
            )
        try:
            return json.loads(fernet.decrypt(body.encode()))
        except InvalidToken:
            raise RetentionError("registry entry cannot be decrypted with the configured key") from None
