"""The predicates of the SQL store: conditions, legal holds, a rule's start event and bands, what a stage acts on.

Pure expressions over a reflected table (``condition``, ``bind_time``, ``start_expr``) and ``SqlPredicates``, which
needs the store's collections and tables (holds of dependents, an orphan rule's ``NOT EXISTS``). The expiry
predicate is a plain range test on the start column, which an index on it serves.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from include.retention.policy import Condition, Rule, Stage, cutoff
from include.retention.stores.sql_keys import cols_eq
from include.retention.values import CollectionRef

if TYPE_CHECKING:
    from include.retention.stores.sql_core import SqlCore


def condition(t: sa.Table, cond: Condition, now: dt.datetime | None = None) -> sa.ColumnElement[bool]:
    """One condition as SQL. ``older_than`` / ``younger_than`` count back from ``now`` (default: the current
    time): ``younger_than: P`` is ``column > now - P``, ``older_than: P`` is ``column < now - P``, a date
    being its midnight UTC (so a birth date exactly 18 years before today is not ``younger_than: P18Y``)."""
    from include.retention.conditions import bind_condition, column_kind
    from include.retention.policy import parse_duration

    col = t.c[cond.column]
    if cond.is_null is not None:
        return col.is_(None) if cond.is_null else col.is_not(None)
    test = cond.test
    if test in ("older_than", "younger_than"):
        edge = (now or dt.datetime.now(dt.UTC)) - parse_duration(cond.value)
        if column_kind(col.type) == "date":
            edge = edge.astimezone(dt.UTC).replace(tzinfo=None) if edge.tzinfo else edge
            day = edge.date()
            if test == "younger_than":  # col > edge  <=>  col > the edge's day
                return col > day
            # col < edge  <=>  col < the edge's day, or also that day when the edge is past its midnight
            return col <= day if edge.time() != dt.time(0) else col < day
        bound = bind_time(col, edge)
        return col > bound if test == "younger_than" else col < bound
    # values converted to the column's own type (checked against it in ``check``)
    value = bind_condition(cond, col.type)
    if cond.in_ is not None:
        return col.in_(value)
    return {"equals": col.__eq__, "lt": col.__lt__, "le": col.__le__, "gt": col.__gt__,
            "ge": col.__ge__}[test](value)


def bind_time(col: sa.Column, when: dt.datetime) -> dt.datetime:
    """``when`` as ``col`` compares it: aware for a column with time zone, naive UTC for one without."""
    aware = getattr(col.type, "timezone", False)
    if aware:
        return when if when.tzinfo else when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC).replace(tzinfo=None) if when.tzinfo else when


def start_expr(rule: Rule, t: sa.Table) -> sa.ColumnElement[Any]:
    """The rule's start event: its column (a plain range test an index serves), or for ``latest`` /
    ``earliest`` a portable CASE over the columns (GREATEST/LEAST treat NULL differently on PostgreSQL,
    MariaDB and SQLite): the first non-NULL column that is >= (<=) every other non-NULL one, else
    ``fallback`` (else NULL: never due)."""
    start = rule.start
    if not start.computed:
        return t.c[start.column]
    later = start.latest is not None
    cols = [t.c[c] for c in (start.latest if later else start.earliest)]
    whens = []
    for i, col in enumerate(cols):
        beats = [sa.or_(other.is_(None), col >= other if later else col <= other) for other in cols[i + 1:]]
        whens.append((sa.and_(col.is_not(None), *beats), col))
    fallback = t.c[start.fallback] if start.fallback else sa.null()
    return sa.case(*whens, else_=fallback)


class SqlPredicates:
    """The store's predicates that need its collections and tables (a collaborator of ``SqlStore``: it reads the
    store's ``policy``, ``coll``, ``table``, ``ref``, ``source_cols`` / ``target_cols`` and the orphan test)."""

    def __init__(self, store: SqlCore):
        self.store = store

    def held(self, name: str, t: sa.Table | None = None, now: dt.datetime | None = None
             ) -> sa.ColumnElement[bool] | None:
        """Legal hold of a row (NULL-safe: an unknown flag is not a hold)."""
        coll, t = self.store.coll(name), t if t is not None else self.store.table(name)
        if not coll.legal_hold:
            return None
        return sa.func.coalesce(sa.or_(*(condition(t, c, now) for c in coll.legal_hold)), sa.false())

    def held_dependents(self, name: str, t: sa.Table, depth: int = 0, now: dt.datetime | None = None
                         ) -> list[sa.ColumnElement[bool]]:
        """EXISTS tests for rows that a delete of ``t``'s rows would cascade onto and that are held."""
        tests = []
        for child_ref, ref in self.store.policy.children(self.store.ref(name)):
            c_sys, c_name = CollectionRef.parse(child_ref)
            if c_sys != self.store.name or ref.on_delete != "delete":
                continue
            child = self.store.table(c_name).alias(f"held_{depth}_{c_name}")
            link = cols_eq(self.store.source_cols(child, ref), self.store.target_cols(name, ref, t))  # every pair equal
            inner = [self.held(c_name, child, now)] if self.store.coll(c_name).legal_hold else []
            inner += self.held_dependents(c_name, child, depth + 1, now)
            if inner:
                tests.append(sa.exists().where(link, sa.or_(*inner)))
        return tests

    def base(self, name: str, rule: Rule, t: sa.Table, now: dt.datetime | None = None
              ) -> list[sa.ColumnElement[bool]]:
        preds = [condition(t, c, now) for c in rule.when]
        if rule.start.orphaned is not None:  # only rows nothing refers to (in the acting statement itself)
            preds.append(self.store.orphans.unreferenced(name, t))
        return preds

    def band(self, name: str, rule: Rule, stage: Stage, now: dt.datetime, t: sa.Table) -> list[Any]:
        """Start event past this stage's period but not yet past the next (stronger) stage's."""
        col = start_expr(rule, t)
        idx = rule.stages.index(stage)
        preds = [col < bind_time(col, cutoff(now, stage, rule.start))]
        if idx + 1 < len(rule.stages):
            preds.append(col >= bind_time(col, cutoff(now, rule.stages[idx + 1], rule.start)))
        return preds

    def not_done(self, name: str, stage: Stage, t: sa.Table) -> list[Any]:
        coll = self.store.coll(name)
        if stage.action == "lock":
            return [t.c[coll.lock.at].is_(None)]
        if stage.action == "anonymize":
            return [t.c[coll.anonymized_marker].is_(None)]
        return []

    def eligible(self, name: str, rule: Rule, stage: Stage, now: dt.datetime, t: sa.Table | None = None) -> Any:
        """The full predicate of rows this stage acts on now."""
        t = t if t is not None else self.store.table(name)
        preds = (self.base(name, rule, t, now) + self.band(name, rule, stage, now, t)
                 + self.not_done(name, stage, t))
        held = self.held(name, t, now)
        if held is not None:
            preds.append(sa.not_(held))
        if stage.action == "delete":
            preds += [sa.not_(test) for test in self.held_dependents(name, t, now=now)]
        return sa.and_(*preds)

    def held_in_rule(self, name: str, rule: Rule, t: sa.Table, now: dt.datetime, past_first: Any
                      ) -> sa.ColumnElement[bool]:
        """A row the rule keeps for a hold: held and past its first period, or (a delete stage) in the delete band
        with held dependents."""
        held_tests = [h for h in [self.held(name, t, now)] if h is not None]
        held_parts = [sa.and_(past_first, sa.or_(*held_tests))] if held_tests else []
        delete_stage = next((s for s in rule.stages if s.action == "delete"), None)
        dependents = self.held_dependents(name, t, now=now) if delete_stage else []
        if dependents:
            # a row kept because its dependents are held is "held" only where it would be deleted
            in_band = sa.and_(*self.band(name, rule, delete_stage, now, t))
            held_parts.append(sa.and_(in_band, sa.or_(*dependents)))
        return sa.or_(*held_parts) if held_parts else sa.false()

    def not_held(self, name: str, t: sa.Table) -> sa.ColumnElement[bool]:
        held = self.held(name, t)
        preds = ([sa.not_(held)] if held is not None else []) + [sa.not_(d) for d in self.held_dependents(name, t)]
        return sa.and_(*preds) if preds else sa.true()
