"""Forecast and policy diff: what the rules will lock, anonymize or delete in the coming days.

``Store.plan(collection, rule, now + d)`` counts what a sweep at that moment would act on and
changes nothing (SQL: one COUNT query per rule and date; S3: a listing), so the forecast for a
day is exactly what a sweep run on that day would do, if nothing else changes in between.

Figures per rule:

- ``due`` at day *d*: per action, the items a sweep at ``now + d days`` would act on (each item
  at its strongest stage: a row past its delete period counts as a delete, not also as a lock).
  ``due`` at day 0 is what the next sweep does now; the 7-, 30- and 90-day figures are ``due``
  at those days.
- ``new`` on day *d*: what becomes due that day (the increase of ``due`` per action over the day
  before, never negative: a locked row that becomes due for deletion is a new delete).

Per-day figures are found by bisection: a rule's ``due`` counts only grow as items pass their
periods (an item leaves the lock band only into a stronger one), so when they are equal at two
dates they are equal on every day between, and a quiet rule costs a few plans, not 90.

The policy diff (``include/retention/policy_diff.py``) compares two data maps record by record; from here
it takes ``rule_change`` (how a rule changed, for its report) and the horizon ``DIFF_DAYS``. No personal
data in any output: rule ids and counts only.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from include.retention.errors import RetentionError
from include.retention.policy import Policy, Rule
from include.retention.stores.base import Store
from include.retention.values import CollectionRef

log = logging.getLogger(__name__)

ACTIONS = ("lock", "anonymize", "delete")
DEFAULT_DAYS = (7, 30, 90)
MAX_DAYS = 366
DIFF_DAYS = 30  # the diff's second horizon: "within 30 days"

StoreFor = Callable[[str], Store]


def parse_days(text: str | Iterable[int]) -> list[int]:
    """``"7,30,90"`` -> ``[7, 30, 90]``; each a whole number of days from 1 to ``MAX_DAYS``."""
    parts = [str(p).strip() for p in (text.split(",") if isinstance(text, str) else text)]
    out: list[int] = []
    for part in parts:
        if not part:
            continue
        if not part.isdigit() or not 1 <= int(part) <= MAX_DAYS:
            raise RetentionError(f"--days: {part[:20]!r} is not a number of days from 1 to {MAX_DAYS}")
        out.append(int(part))
    if not out:
        raise RetentionError("--days: give at least one number of days, e.g. 7,30,90")
    return sorted(set(out))


def _zero() -> dict[str, int]:
    return dict.fromkeys(ACTIONS, 0)


@dataclass
class RuleForecaster:
    """Plans of one rule at ``now + offset`` days, each computed once."""

    policy: Policy
    rule_id: str
    store: Store
    now: dt.datetime
    _plans: dict[int, tuple[dict[str, int], int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        coll_ref, _coll, self.rule = self.policy.rule(self.rule_id)
        self.coll_name = CollectionRef.parse(coll_ref).collection
        self.store.check(self.coll_name)

    def due(self, offset: int) -> dict[str, int]:
        return self._plan(offset)[0]

    def cascaded(self, offset: int) -> int:
        """Rows in dependent collections the delete stage would take along at ``now + offset``."""
        return self._plan(offset)[1]

    def _plan(self, offset: int) -> tuple[dict[str, int], int]:
        if offset not in self._plans:
            plan = self.store.plan(self.coll_name, self.rule, self.now + dt.timedelta(days=offset))
            counts = _zero()
            counts.update({a: int(n) for a, n in plan.eligible.items()})
            self._plans[offset] = (counts, sum(n for n, _total in plan.cascaded.values()))
        return self._plans[offset]

    def per_day(self, last: int) -> list[dict[str, int]]:
        """``due`` for every offset 0..last, by bisection (equal ends: equal in between)."""
        out: list[dict[str, int] | None] = [None] * (last + 1)
        out[0], out[last] = self.due(0), self.due(last)
        stack = [(0, last)]
        while stack:
            lo, hi = stack.pop()
            if hi - lo <= 1:
                continue
            if out[lo] == out[hi]:
                for i in range(lo + 1, hi):
                    out[i] = dict(out[lo])  # type: ignore[arg-type]
                continue
            mid = (lo + hi) // 2
            out[mid] = self.due(mid)
            stack += [(lo, mid), (mid, hi)]
        return out  # type: ignore[return-value]


def _stages(rule: Rule) -> list[dict[str, str]]:
    return [{"action": s.action, "after": s.after} for s in rule.stages]


def forecast_rule(policy: Policy, rule_id: str, store: Store, now: dt.datetime, days: Iterable[int],
                  *, per_day: bool = True) -> dict[str, Any]:
    """One rule's forecast: due now, due at each horizon, and (``per_day``) what becomes due each day."""
    days = sorted(set(days))
    coll_ref, _coll, rule = policy.rule(rule_id)
    out: dict[str, Any] = {"rule_id": rule_id, "system": coll_ref.partition(".")[0], "collection": coll_ref,
                           "category": rule.category, "stages": _stages(rule), "error": None}
    fc = RuleForecaster(policy, rule_id, store, now)
    series = fc.per_day(days[-1]) if per_day else None
    due_now = fc.due(0)
    out["now"] = {**due_now, "cascaded": fc.cascaded(0)}
    out["horizons"] = [{"days": d, "until": (now + dt.timedelta(days=d)).date().isoformat(),
                        "counts": {**fc.due(d), "cascaded": fc.cascaded(d)}, "total": sum(fc.due(d).values())}
                       for d in days]
    if series is not None:
        out["per_day"] = [
            {"day": (now + dt.timedelta(days=i)).date().isoformat(), "offset": i, "due": series[i],
             "new": {a: max(series[i][a] - series[i - 1][a], 0) for a in ACTIONS}}
            for i in range(1, len(series))
        ]
    return out


def forecast(policy: Policy, store_for: StoreFor, now: dt.datetime | None = None,
             days: Iterable[int] = DEFAULT_DAYS, *, per_day: bool = True,
             rule_ids: Iterable[str] | None = None) -> dict[str, Any]:
    """Every rule's forecast plus the totals per horizon and per day. Read-only.

    A rule whose store cannot be planned (unreachable, schema mismatch) gets ``error`` and no
    counts; the others are still forecast.
    """
    now = now or dt.datetime.now(dt.UTC)
    days = sorted(set(days))
    rules: list[dict[str, Any]] = []
    for rule_id in (list(rule_ids) if rule_ids is not None else policy.rule_ids()):
        try:
            rules.append(forecast_rule(policy, rule_id, store_for(rule_id.partition(".")[0]), now, days,
                                       per_day=per_day))
        except RetentionError as exc:
            log.info("forecast of %s failed: %s", rule_id, exc)
            coll_ref, _coll, rule = policy.rule(rule_id)
            rules.append({"rule_id": rule_id, "system": coll_ref.partition(".")[0], "collection": coll_ref,
                          "category": rule.category, "stages": _stages(rule), "error": str(exc)})
    ok = [r for r in rules if not r["error"]]
    totals = {d: _zero() for d in days}
    for r in ok:
        for h in r["horizons"]:
            for a in ACTIONS:
                totals[h["days"]][a] += h["counts"][a]
    result: dict[str, Any] = {
        "now": now.isoformat(), "policy_digest": policy.digest, "days": days, "actions": list(ACTIONS),
        "rules": rules, "backlog": {a: sum(r["now"][a] for r in ok) for a in ACTIONS},
        "totals": [{"days": d, "counts": totals[d], "total": sum(totals[d].values())} for d in days],
        "errors": len(rules) - len(ok),
    }
    if per_day:
        series = []
        for i in range(1, days[-1] + 1):
            counts = _zero()
            for r in ok:
                for a in ACTIONS:
                    counts[a] += r["per_day"][i - 1]["new"][a]
            series.append({"day": (now + dt.timedelta(days=i)).date().isoformat(), "counts": counts,
                           "total": sum(counts.values())})
        result["series"] = series
        result["max"] = max((p["total"] for p in series), default=0)
    return result


def forecast_table(result: dict[str, Any]) -> str:
    """Plain-text table: per rule, what is due now and within each horizon (lock/anonymize/delete)."""
    days = result["days"]
    header = ["rule", "now", *(f"{d} days" for d in days)]
    rows = [header]

    def cell(counts: dict[str, int]) -> str:
        return "/".join(str(counts.get(a, 0)) for a in ACTIONS)

    for r in result["rules"]:
        if r["error"]:
            rows.append([r["rule_id"], "ERROR", *("-" for _ in days)])
            continue
        rows.append([r["rule_id"], cell(r["now"]), *(cell(h["counts"]) for h in r["horizons"])])
    rows.append(["total", cell(result["backlog"]), *(cell(t["counts"]) for t in result["totals"])])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.append("counts: lock/anonymize/delete due by then (what a sweep on that day acts on); "
                 f"forecast from {result['now'][:19]}Z, policy digest {result['policy_digest'][:16]}")
    return "\n".join(lines)


# ---- policy diff ----------------------------------------------------------------------------

def _period_days(after: str) -> float:
    from include.retention.policy import approx_days, parse_duration

    return approx_days(parse_duration(after))


def rule_change(old: Policy, new: Policy, rule_id: str) -> str:
    """``removed``, ``added``, ``shortened`` (a stage ends sooner or a stronger action appears),
    ``lengthened``, ``changed`` (start, conditions, masks) or ``unchanged``."""
    in_old, in_new = rule_id in old.rule_ids(), rule_id in new.rule_ids()
    if not in_new:
        return "removed"
    if not in_old:
        return "added"
    r_old, r_new = old.rule(rule_id)[2], new.rule(rule_id)[2]
    p_old = {s.action: _period_days(s.after) for s in r_old.stages}
    p_new = {s.action: _period_days(s.after) for s in r_new.stages}
    if any(a not in p_old or p_new[a] < p_old[a] for a in p_new):
        return "shortened"
    if p_old != p_new:
        return "lengthened"
    dump = ("start", "when", "stages")
    if r_old.model_dump(include=set(dump)) != r_new.model_dump(include=set(dump)):
        return "changed"
    return "unchanged"


CHANGE_ORDER = {"removed": 0, "shortened": 1, "added": 2, "changed": 3, "lengthened": 4, "unchanged": 5}
