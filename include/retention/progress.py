"""Progress of long work: how far a running sweep is, per rule, read from its ledger entries.

A sweep writes an intent before each batch commits (``count``: the batch's planned rows) and settles it with
the real count afterwards; its intents also carry the rule's plan (``details.plan``: planned rows per action,
counts only). From these, per rule of a running run: the planned count, what is done so far, the rate and an
estimate of the time left. The page's running-work section and the sweep's task log both come from here;
nothing here holds personal data (rule ids, counts, times) and no digest column is read. Long access packages
and discovery runs log a line per collection or table through ``Steps``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from include.retention.clock import utcnow
from include.retention.ledger import INTENT, Ledger, RunRef, entries
from include.retention.settings import settings

log = logging.getLogger(__name__)

PLAN_KEY = "plan"  # an intent's details: the rule's planned rows per action
LOG_SECONDS_ENV = "RETENTION_PROGRESS_LOG_SECONDS"  # how often a sweep logs its progress (default 30 s)
STALLED_AFTER = dt.timedelta(minutes=10)  # no ledger entry for this long: the run's process may have stopped


def _when(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def time_left(seconds: float | None) -> str:
    """``~2 min left``; "estimating" until a batch is done."""
    if seconds is None:
        return "estimating the time left"
    if seconds < 60:
        return "less than a minute left"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"~{minutes} min left"
    return f"~{minutes // 60} h {minutes % 60} min left"


@dataclass
class RuleProgress:
    """One rule of one running sweep: planned rows, done so far, the batch in flight, the time left."""

    dag_id: str
    run_id: str
    rule_id: str
    system: str | None
    collection: str | None
    planned: int
    done: int
    in_flight: int
    started_at: dt.datetime
    updated_at: dt.datetime
    now: dt.datetime
    per_action: dict[str, dict[str, int]] = field(default_factory=dict)  # action -> {"planned", "done"}

    @property
    def stalled(self) -> bool:
        return self.now - self.updated_at > STALLED_AFTER

    @property
    def rate(self) -> float | None:
        """Rows per second since the rule's first batch."""
        elapsed = (self.now - self.started_at).total_seconds()
        return self.done / elapsed if self.done and elapsed > 0 else None

    @property
    def eta_seconds(self) -> float | None:
        rate = self.rate
        if rate is None or self.stalled:
            return None
        return max(self.planned - self.done, 0) / rate

    @property
    def percent(self) -> int:
        return min(100, int(self.done * 100 / self.planned)) if self.planned else 0

    def left(self) -> str:
        """``~2 min left``, or since when nothing happened."""
        if self.stalled:
            return f"no progress since {self.updated_at:%H:%M:%S} UTC"
        return time_left(self.eta_seconds)

    def line(self) -> str:
        """``rule X: 40,000 of 120,000 planned, ~2 min left``: the task log's line."""
        return f"rule {self.rule_id}: {self.done:,} of {self.planned:,} planned, {self.left()}"

    def as_dict(self) -> dict[str, Any]:
        eta = self.eta_seconds
        return {
            "dag_id": self.dag_id,
            "run_id": self.run_id,
            "rule_id": self.rule_id,
            "system": self.system,
            "collection": self.collection,
            "planned": self.planned,
            "done": self.done,
            "in_flight": self.in_flight,
            "percent": self.percent,
            "per_action": self.per_action,
            "rate_per_second": None if self.rate is None else round(self.rate, 2),
            "eta_seconds": None if eta is None else round(eta),
            "stalled": self.stalled,
            "started_at": self.started_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "updated_at": self.updated_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "left": self.left(),
            "line": self.line(),
        }


def rule_progress(entries: Iterable[dict[str, Any]], now: dt.datetime | None = None) -> RuleProgress | None:
    """The progress of one rule in one run from its ledger entries (``Ledger.rows(rule_id=, run_id=)``); None
    when no batch intent of the rule is among them. Batches of cascades into other collections are not counted:
    the plan is the rule's own collection's."""
    now = _aware(now or utcnow())
    intents: dict[int, dict[str, Any]] = {}
    settled: dict[int, int] = {}
    plan: dict[str, int] = {}
    first = last = None
    own = None
    for row in entries:
        when = _when(row.get("recorded_at"))
        if row.get("outcome") == INTENT:
            try:
                details = json.loads(row.get("details") or "{}")
            except ValueError:
                details = {}
            details = details if isinstance(details, dict) else {}
            if own is None and PLAN_KEY in details:
                own = row.get("collection")
            if isinstance(details.get(PLAN_KEY), dict):
                plan = {str(k): int(v) for k, v in details[PLAN_KEY].items() if isinstance(v, int)}
            intents[int(row["seq"])] = row
            first = first or when
        elif row.get("ref_seq") is not None:
            settled[int(row["ref_seq"])] = int(row.get("count") or 0)
        if when is not None and (last is None or when > last):
            last = when
    mine = {seq: r for seq, r in intents.items() if own is None or r.get("collection") == own}
    if not mine:
        return None
    any_row = next(iter(mine.values()))
    per_action: dict[str, dict[str, int]] = {a: {"planned": n, "done": 0} for a, n in plan.items()}
    in_flight = 0
    for seq, row in mine.items():
        action = str(row.get("action"))
        slot = per_action.setdefault(action, {"planned": 0, "done": 0})
        if seq in settled:
            slot["done"] += settled[seq]
        else:
            in_flight += int(row.get("count") or 0)
    for action, slot in per_action.items():
        if action not in plan:  # an intent without the plan (an older run): its batches are what is known
            slot["planned"] = sum(int(r.get("count") or 0) for r in mine.values() if r.get("action") == action)
    planned = sum(s["planned"] for s in per_action.values())
    done = sum(s["done"] for s in per_action.values())
    return RuleProgress(
        dag_id=any_row.get("dag_id") or "manual",
        run_id=any_row.get("run_id") or "manual",
        rule_id=any_row.get("rule_id") or "",
        system=any_row.get("system"),
        collection=own or any_row.get("collection"),
        planned=max(planned, done),
        done=done,
        in_flight=in_flight,
        started_at=first or now,
        updated_at=last or now,
        now=now,
        per_action=per_action,
    )


# what progress reads of an entry: never its digests (subject, keys, chain)
_COLUMNS = (
    "seq",
    "recorded_at",
    "dag_id",
    "run_id",
    "rule_id",
    "system",
    "collection",
    "action",
    "outcome",
    "count",
    "details",
    "ref_seq",
)


def rule_entries(ledger: Ledger, run: RunRef, rule_id: str) -> list[dict[str, Any]]:
    """The entries of one rule in one run, in sequence order, without their digest columns."""
    e = entries
    query = (
        sa.select(*(e.c[c] for c in _COLUMNS))
        .where(e.c.rule_id == rule_id, e.c.run_id == run.run_id, e.c.dag_id == run.dag_id)
        .order_by(e.c.seq)
    )
    with ledger.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def running_sweeps(ledger: Ledger, now: dt.datetime | None = None) -> list[RuleProgress]:
    """Rules with a batch in flight (an open intent), each with its run's progress so far, oldest run first."""
    now = now or utcnow()
    e, settled = entries, entries.alias("settled")
    query = (
        sa.select(e.c.dag_id, e.c.run_id, e.c.rule_id)
        .distinct()
        .where(e.c.outcome == INTENT, e.c.rule_id.is_not(None), e.c.run_id.is_not(None))
        .where(~sa.exists().where(settled.c.ref_seq == e.c.seq))
    )
    ledger.ensure_schema()
    with ledger.engine.connect() as conn:
        keys = sorted((r.dag_id or "", r.run_id, r.rule_id) for r in conn.execute(query))
    out = []
    for dag_id, run_id, rule_id in keys:
        progress = rule_progress(rule_entries(ledger, RunRef(dag_id, run_id), rule_id), now)
        if progress is not None:
            out.append(progress)
    return out


class SweepProgressLog:
    """The sweep task's progress lines: at most one per ``LOG_SECONDS_ENV`` seconds, read from the ledger."""

    def __init__(self, ledger: Ledger, run: RunRef, rule_id: str, every: float | None = None):
        self.ledger, self.run, self.rule_id = ledger, run, rule_id
        self.every = settings().progress_log_seconds if every is None else every
        self._last = time.monotonic()

    def tick(self) -> None:
        """Called after each ledger write of the rule's batches."""
        if time.monotonic() - self._last < self.every:
            return
        self._last = time.monotonic()
        try:
            self.report()
        except Exception as exc:  # noqa: BLE001 - a progress line never fails the batch it follows
            log.warning("no progress line for rule %s: %s", self.rule_id, type(exc).__name__)

    def report(self) -> RuleProgress | None:
        progress = rule_progress(rule_entries(self.ledger, self.run, self.rule_id))
        if progress is not None:
            log.info("%s", progress.line())
        return progress


class Steps:
    """A line per finished step of a long job (an access package's collections, discovery's tables): which
    one, how many of how many, and the time left at the pace so far. Names and counts only."""

    def __init__(self, what: str, total: int, unit: str):
        self.what, self.total, self.unit = what, total, unit
        self.done = 0
        self.started = time.monotonic()

    def step(self, name: str, detail: str = "") -> str:
        self.done += 1
        elapsed = time.monotonic() - self.started
        left = (self.total - self.done) * elapsed / self.done if self.done < self.total else 0.0
        tail = time_left(left) if self.done < self.total else "done"
        line = f"{self.what}: {name} ({self.done} of {self.total} {self.unit}){', ' + detail if detail else ''}, {tail}"
        log.info("%s", line)
        return line
