"""The data map in words: conditions, periods and start events, written once for every document that states
them (the deletion concept, an access package's README, receipts).

A condition reads as the test the stores make (``birth_date > now - P18Y`` for ``younger_than: P18Y``), never
as a guess; a period as years, months and days. Pure functions over the policy model; no database.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from include.retention.policy import Condition, Rule, Start, parse_duration

_OPS = {"lt": "<", "le": "<=", "gt": ">", "ge": ">="}


def value_text(value: Any) -> str:
    """A condition value as the data map writes it: ``true``, ``3``, ``"text"``, ``2024-01-31``."""
    if isinstance(value, (dt.date, dt.datetime, dt.time)):
        return value.isoformat()
    return json.dumps(value, default=str, ensure_ascii=False)


def condition_text(cond: Condition, *, s3: bool = False) -> str:
    """One condition as the test it makes. ``s3``: the condition names an object tag, not a column."""
    subject = f"tag {cond.column}" if s3 else cond.column
    test, value = cond.test, cond.value
    if test == "equals":
        return f"{subject} = {value_text(value)}"
    if test == "in":
        return f"{subject} in ({', '.join(value_text(v) for v in value)})"
    if test == "is_null":
        return f"{subject} is {'' if value else 'not '}null"
    if test in _OPS:
        return f"{subject} {_OPS[test]} {value_text(value)}"
    # age tests count back from the sweep's now, exact at the boundary; NULL matches neither
    if test == "younger_than":
        return f"{subject} younger than {period_text(value)} ({cond.column} > now - {value})"
    return f"{subject} older than {period_text(value)} ({cond.column} < now - {value})"


def conditions_text(conds: list[Condition], *, joiner: str = " and ", s3: bool = False) -> str:
    """Several conditions: ``and`` for a rule's ``when`` (all must hold), ``or`` for legal holds (any holds)."""
    return joiner.join(condition_text(c, s3=s3) for c in conds)


def period_text(after: str) -> str:
    """``P36M`` -> ``3 years``, ``P18M`` -> ``1 year, 6 months``, ``P0D`` -> ``immediately``."""
    d = parse_duration(after)
    parts = []
    for unit, n in (("year", d.years), ("month", d.months), ("day", d.days), ("hour", d.hours),
                    ("minute", d.minutes), ("second", d.seconds)):
        if n:
            parts.append(f"{n} {unit}{'s' if n != 1 else ''}")
    return ", ".join(parts) if parts else "immediately"


def start_text(start: Start) -> str:
    """What a rule's period counts from, in words (the column or object attribute, rounding included)."""
    if start.orphaned is not None:
        text = ("the upload of an object no row refers to any more" if start.basis != "column"
                or start.orphaned == "last_modified" else f"the time a sweep first found nothing referring to "
                                                          f"the row ({start.orphaned})")
    elif start.basis == "column":
        text = start.describe()
    elif start.basis == "last_modified":
        text = "the object's last modification (upload)"
    elif start.basis == "key_date":
        text = "the date in the object's key"
    elif start.basis == "record":
        text = f"the time in each record's field {start.name} (records inside the objects)"
    else:
        text = f"the date in the object's {start.basis} {start.name}"
    if start.round_up:
        text += f" (from the end of that {start.round_up})"
    return text


def stages_text(rule: Rule) -> str:
    """``lock after 2 years; delete after 3 years``."""
    out = []
    for stage in rule.stages:
        period = period_text(stage.after)
        text = f"{stage.action} {period}" if period == "immediately" else f"{stage.action} after {period}"
        if stage.round_up == "none" and rule.start.round_up:
            text += " (from the event itself)"
        out.append(text)
    return "; ".join(out)
