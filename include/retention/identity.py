"""Identities of a data subject: the kinds a request may carry, what equality means for each, limits.

Python decides equality, once, here: a stored value and a requested value are the same identity
when ``normalise`` gives the same string. Stores read candidate values and compare them with
this function; no database collation, ``lower()`` or ``trim()`` takes part in the decision
(ADR 0005). Errors name the field and the problem, never the value.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from include.retention.errors import RetentionError

# kind -> (form title, longest accepted value). Every kind a data map declares must be one of these.
IDENTITY_KINDS: dict[str, tuple[str, int]] = {
    "email": ("E-mail address", 254),
    "phone": ("Phone number", 32),
    "customer_ref": ("Customer reference", 64),
    "social_handle": ("Social-media handle", 100),
}
# The e-mail shape checked by the trigger form (JSON schema) and by ``validate``.
# (\u escapes: the same pattern works in Python's re and in the browser's JavaScript.)
EMAIL_PATTERN = r"^[^@\s\u0000-\u001f\u007f]+@[^@\s\u0000-\u001f\u007f]+\.[^@\s\u0000-\u001f\u007f]+$"
PHONE_PATTERN = r"^\+?[0-9 ()./-]{6,32}$"
_EMAIL = re.compile(EMAIL_PATTERN)
_PHONE = re.compile(PHONE_PATTERN)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HANDLE_LEAD = re.compile(r"^[\s@]+")


class IdentityError(RetentionError):
    """A requested identity is malformed; the message names the field, never the value."""


def _text(value: str) -> str:
    # NFC: "e" + combining diaeresis and the precomposed "ë" are one character, as a reader sees them.
    return unicodedata.normalize("NFC", value).strip()


def normalise(kind: str, value: object) -> str | None:
    """Canonical form of one identity value, or None when it holds none (NULL, empty, blank).

    - email: NFC, surrounding white space removed, lower-case (``str.lower``, not ``casefold``:
      ``straße`` and ``strasse`` stay different mailboxes). Accents and scripts are kept:
      ``zoë`` is not ``zoe``, a Cyrillic ``а`` is not a Latin ``a``.
    - phone: digits only (any script's decimal digits as 0-9), a leading ``+`` or ``00`` as ``+``.
    - customer_ref: NFC, surrounding white space removed, case kept.
    - social_handle: NFC, white space and leading ``@`` removed, lower-case.

    Idempotent (``normalise(k, normalise(k, v)) == normalise(k, v)``): an index digest, a keyed digest and a
    comparison all see the same form however often a value was normalised before (lower-casing can turn a
    pair NFC did not compose into one it does, e.g. ``J`` + caron: NFC runs again after it).
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    text = _text(str(value))
    if kind == "email":
        out = unicodedata.normalize("NFC", text.lower())  # NFC again: lower-casing can make a composable pair
    elif kind == "phone":
        digits = "".join(str(unicodedata.decimal(ch)) for ch in text if unicodedata.decimal(ch, None) is not None)
        if text.startswith("+"):
            out = "+" + digits
        elif digits.startswith("00"):
            out = "+" + digits[2:]
        else:
            out = digits
    elif kind == "social_handle":  # every leading @ and white space, in any mix ("@ @a" is "a")
        out = unicodedata.normalize("NFC", _HANDLE_LEAD.sub("", text).strip().lower())
    elif kind == "customer_ref":
        out = text
    else:
        raise IdentityError(f"unknown identity kind {kind!r}; known: {', '.join(IDENTITY_KINDS)}")
    return out or None


def index_digest(kind: str, value: object) -> str:
    """The unkeyed digest ``lookup: indexed`` compares (ADR 0022): SHA-256 (hex) of kind, NUL and the normalised
    value, or ``""`` for a value that holds no identity. A store's ``<column>_ndigest`` holds it next to the value;
    the suppression list holds it only encrypted (``lookup_enc``)."""
    normal = normalise(kind, value)
    return hashlib.sha256(f"{kind}\x00{normal}".encode()).hexdigest() if normal is not None else ""


def validate(kind: str, value: object) -> str:
    """Check one requested identity; return its normalised form. Raises ``IdentityError``."""
    if kind not in IDENTITY_KINDS:
        raise IdentityError(f"unknown identity field {kind!r}; known: {', '.join(IDENTITY_KINDS)}")
    if not isinstance(value, str):
        raise IdentityError(f"{kind} must be a string")
    limit = IDENTITY_KINDS[kind][1]
    if len(value) > limit:
        raise IdentityError(f"{kind} is longer than {limit} characters")
    if _CONTROL.search(value):
        raise IdentityError(f"{kind} contains a control character (NUL, tab, line break ...)")
    if kind == "email" and not _EMAIL.match(value.strip()):
        raise IdentityError("email is not a valid e-mail address")
    if kind == "phone" and not _PHONE.match(value.strip()):
        raise IdentityError("phone must be 6 to 32 digits, spaces and ()./- with an optional leading +")
    out = normalise(kind, value)
    if out is None:
        raise IdentityError(f"{kind} is empty")
    if kind == "phone" and len(out.lstrip("+")) < 6:
        raise IdentityError("phone must have at least 6 digits")
    return out
