"""Storage periods: ISO 8601 durations as the data map writes them, bounded, and their approximate length."""

from __future__ import annotations

import re

from dateutil.relativedelta import relativedelta

from include.retention.policy.base import short

_DURATION = re.compile(
    r"^P(?!$)(?:(?P<years>\d+)Y)?(?:(?P<months>\d+)M)?(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?=\d)(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+)S)?)?$"
)
# Longest storage period a data map may state: a longer one is a typo (P9999Y) that would only fail at run time.
MAX_PERIOD_YEARS = 100
_MAX_DAYS = MAX_PERIOD_YEARS * 365.2425


def parse_duration(text: str) -> relativedelta:
    """Parse a non-negative ISO 8601 duration (``P12M``, ``P10Y``, ``P30D``, ``PT0S``)."""
    if not isinstance(text, str):
        raise ValueError(f"storage period must be an ISO 8601 duration string such as 'P12M', got {text!r}")
    match = _DURATION.match(text.strip())
    if not match:
        hint = " (negative periods are not allowed)" if text.strip().startswith("-") else ""
        raise ValueError(f"{short(text)!r} is not an ISO 8601 duration such as 'P30D', 'P12M' or 'P10Y'{hint}")
    too_long = (
        f"{short(text)!r} is longer than {MAX_PERIOD_YEARS} years, the longest storage period a data map may state"
    )
    if any(len(v) > 9 for v in match.groupdict().values() if v):
        raise ValueError(too_long)
    parts = {k: int(v) for k, v in match.groupdict().items() if v}
    weeks = parts.pop("weeks", 0)
    days = parts.pop("days", 0) + 7 * weeks
    approx = (
        parts.get("years", 0) * 365.2425
        + parts.get("months", 0) * 365.2425 / 12
        + days
        + parts.get("hours", 0) / 24
        + parts.get("minutes", 0) / 1440
        + parts.get("seconds", 0) / 86400
    )
    if approx > _MAX_DAYS + 1e-6:
        raise ValueError(too_long)
    return relativedelta(days=days, **parts)


def approx_days(delta: relativedelta) -> float:
    return (
        delta.years * 365.2425
        + delta.months * 365.2425 / 12
        + delta.days
        + delta.hours / 24
        + delta.minutes / 1440
        + delta.seconds / 86400
    )
