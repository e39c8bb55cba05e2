"""Classifiers for discovery: is a sampled column (or an object's text) personal data, and of which kind?

Values are classified in pandas and forgotten: the result is a classifier name, a hit rate and a sample
size, never a value (docs/adr/0020-discovery-of-unmapped-personal-data.md).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

# A column is classified as a kind when at least this share of its sampled non-empty values holds one.
MIN_HIT_RATE = 0.3

_EMAIL = r"[^@\s\"'<>,;:()\[\]{}]+@[A-Za-z0-9\u00c0-\uffff-]+(?:\.[A-Za-z0-9\u00c0-\uffff-]+)*\.[A-Za-z]{2,}"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = rf"(?<![0-9A-Za-z.]){_OCTET}(?:\.{_OCTET}){{3}}(?![0-9A-Za-z.])"
_IPV6_CANDIDATE = re.compile(r"(?<![0-9A-Fa-f:])[0-9A-Fa-f:]*:[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*(?![0-9A-Fa-f:])")
_PHONE = r"(?:\+|00|0)?[0-9][0-9 ()/-]{5,30}[0-9]"
_DATE = re.compile(r"^(?:(\d{4})-(\d{2})-(\d{2})|(\d{2})[./](\d{2})[./](\d{4}))$")

# Column-name hints: a name token -> the kind it suggests. Tokens are the name's parts split at '_', '-', '.'
# and camelCase; a name that also has a token of NOT_PERSONAL_TOKENS (digests, hashes) hints nothing.
NAME_HINTS = {
    "email": "email", "mail": "email", "e_mail": "email", "emails": "email",
    "phone": "phone", "mobile": "phone", "tel": "phone", "telephone": "phone", "fax": "phone",
    "ip": "ip", "ipv4": "ip", "ipv6": "ip", "ip_address": "ip",
    "birth": "birth_date", "birthday": "birth_date", "dob": "birth_date", "birthdate": "birth_date",
    "name": "name", "firstname": "name", "lastname": "name", "surname": "name", "fullname": "name",
    "address": "address", "street": "address", "zip": "address", "postcode": "address",
    "iban": "bank_account", "ssn": "national_id", "passport": "national_id",
}
NOT_PERSONAL_TOKENS = frozenset({"digest", "ndigest", "hash", "hmac", "enc", "encrypted", "sha256", "count", "id",
                                 "kid", "domain", "file", "table", "column", "bucket", "key"})


@dataclass(frozen=True)
class Classification:
    classifier: str          # email | phone | ipv4 | ipv6 | birth_date | name:<kind> (a name hint only)
    hit_rate: float          # share of the sampled non-empty values that hold one (0.0 for a name hint only)
    sample_size: int         # sampled non-empty values


def name_hint(name: str) -> str | None:
    """The kind a column (or metadata key) name suggests, or None: ``secondary_email`` -> ``email``."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    tokens = [t.lower() for t in re.split(r"[_\-.\s]+", spaced) if t]
    if not tokens or NOT_PERSONAL_TOKENS & set(tokens):
        return None
    joined = "_".join(tokens)
    if joined in NAME_HINTS:
        return NAME_HINTS[joined]
    for token in tokens:
        if token in NAME_HINTS:
            return NAME_HINTS[token]
    return None


def _valid_ipv6(text: str) -> bool:
    for candidate in _IPV6_CANDIDATE.findall(text):
        try:
            if ipaddress.ip_address(candidate.strip(".")).version == 6:
                return True
        except ValueError:
            continue
    return False


def _birth_date(text: str, today: dt.date) -> bool:
    match = _DATE.match(text)
    if not match:
        return False
    y, m, d = (match.group(1), match.group(2), match.group(3)) if match.group(1) else (
        match.group(6), match.group(5), match.group(4))
    try:
        day = dt.date(int(y), int(m), int(d))
    except ValueError:
        return False
    return dt.date(today.year - 110, 1, 1) <= day <= dt.date(today.year - 14, 12, 31)


def hit_rates(values: pd.Series, today: dt.date | None = None) -> dict[str, float]:
    """Per content classifier, the share of ``values`` (text, non-empty) that hold one."""
    n = len(values)
    if not n:
        return {}
    today = today or dt.date.today()
    text = values.astype(str).str.strip()
    digits = text.str.count(r"[0-9]")
    dated = text.str.match(r"^\d{4}-\d{2}-\d{2}") | text.str.fullmatch(r"\d{2}[./-]\d{2}[./-]\d{4}")
    phone_like = text.str.fullmatch(_PHONE) & digits.between(7, 15) & ~dated & (
        text.str.match(r"^(?:\+|00|0)") | text.str.contains(r"[ ()/-]", regex=True))
    hits = {
        "email": text.str.contains(_EMAIL, regex=True),
        "phone": phone_like,
        "ipv4": text.str.contains(_IPV4, regex=True),
        "ipv6": text.map(_valid_ipv6).astype(bool),
        "birth_date": text.map(lambda v: _birth_date(v, today)).astype(bool),
    }
    return {name: float(mask.sum()) / n for name, mask in hits.items()}


def classify(name: str, values: Iterable[object], today: dt.date | None = None) -> Classification | None:
    """What a sampled column (or metadata key, or text lines) ``name`` holds, or None when nothing personal.

    The content classifier with the highest hit rate wins if it reaches ``MIN_HIT_RATE``; else a name hint
    (``name:email``, hit rate 0.0) still flags it: a column named ``email`` with no address today is a place
    addresses go tomorrow. The values are dropped here; only names and numbers leave."""
    series = pd.Series([v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values], dtype=object)
    series = series[series.notna()].astype(str)
    series = series[series.str.strip() != ""]
    rates = hit_rates(series, today)
    size = len(series)
    del series
    if rates:
        best = max(rates, key=lambda k: (rates[k], k == "email"))
        if rates[best] >= MIN_HIT_RATE:
            return Classification(best, round(rates[best], 4), size)
    hint = name_hint(name)
    if hint:
        return Classification(f"name:{hint}", 0.0, size)
    return None
