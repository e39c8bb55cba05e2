"""The SQL store: SQLAlchemy Core, the same statements on PostgreSQL, MariaDB/MySQL and SQLite.

Every action is set-based and walks the table once, in bounded batches (one transaction, one
ledger intent + outcome each), acting with the full predicate repeated so that a row that
changed in between is left alone. PostgreSQL walks heap block ranges (``ctid``) with one
``DELETE``/``UPDATE ... RETURNING`` per batch, or the start column's index when the table lies
in that order; the other databases walk ``(start column, pk)`` (or the primary key when no index
leads with the start column): select the next keys, act on exactly that key range. Batches
grow or shrink to take about ``BATCH_SECONDS``. Memory holds one batch of keys, whatever the
table size. The expiry predicate is a plain range test on the start column, which an index on
it serves.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.base import SyntaxExtension

from include.retention import keytemplate
from include.retention.connections import make_engine
from include.retention.errors import RetentionError, SchemaMismatch
from include.retention.masking import STRATEGIES
from include.retention.policy import Collection, Condition, Policy, Reference, Rule, Stage, cutoff, referrers
from include.retention.stores.base import (
    DeferredOutcomes,
    Recorder,
    RulePlan,
    StageResult,
    Store,
    begin_record,
    end_record,
    flush_record,
)
from include.retention.stores.sql_cascade import SqlCascade
from include.retention.stores.sql_keys import (
    after,
    cols_eq,
    cols_in,
    has_row_values,
    key_in,
    key_of,
    key_text,
    upto,
    value_of,
)
from include.retention.stores.sql_orphans import SqlOrphans
from include.retention.stores.sql_subjects import SqlSubjects
from include.retention.values import CollectionRef

log = logging.getLogger(__name__)

# A batch is one transaction: at most MAX_BATCH rows (the policy's own ceiling for batch_size), sized to take
# about BATCH_SECONDS once the first batch has measured the rate, and not below MIN_BATCH (or batch_size).
MAX_BATCH = 100_000
MIN_BATCH = 100
BATCH_SECONDS = 0.5
# A block-range batch (PostgreSQL) spans the blocks holding about ``size`` matching rows at the density seen so
# far, but never more than SCAN_FACTOR x ``size`` rows of the table: it changes at most that many.
SCAN_FACTOR = 4
CORRELATED = 0.9  # |pg_stats.correlation| from which the start column's index order is the heap's order

# before_delete(collection_ref, rows): called inside the batch, before rows go, for what lives
# elsewhere (objects in S3, rows in another database). Rows carry the primary key and the
# columns named by the collection's references (and the identity columns to suppress: when a rule's or
# stage's ``suppress`` adds kinds, they are passed as ``suppress=[kinds]``).
BeforeDelete = Callable[..., dict[str, int]]


__all__ = ["SqlStore", "make_engine"]


def serialize_sqlite_writers(engine: sa.Engine) -> None:
    """SQLite has no SELECT ... FOR UPDATE: make every transaction BEGIN IMMEDIATE so that what a
    transaction reads cannot change before it writes (another writer waits, up to the busy timeout)."""
    if engine.dialect.name != "sqlite" or getattr(engine, "_retention_immediate", False):
        return

    @sa.event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_conn, _record):
        dbapi_conn.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _begin_immediate(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine._retention_immediate = True


class SqlStore(SqlOrphans, SqlSubjects, SqlCascade, Store):
    kind = "sql"

    def __init__(self, name: str, policy: Policy, engine: sa.Engine, *, mask_key: bytes = b"",
                 before_delete: BeforeDelete | None = None, stores: Callable[[str], Store] | None = None):
        super().__init__(name, policy)
        serialize_sqlite_writers(engine)
        self.engine = engine
        self.mask_key = mask_key
        self.before_delete = before_delete
        # system name -> its store: children in other databases are deleted through it (``SqlCascade``)
        self.stores = stores
        self._recording: Recorder | None = None  # the running stage's recorder (child systems' entries)
        self._tables: dict[str, sa.Table] = {}
        self._server_utf8: bool | None = None  # PostgreSQL's server_encoding is UTF8 (``_digest_in_db``)
        self._checked: set[str] = set()
        # collection -> identity kinds the delete stage now running there suppresses (Rule.suppress_kinds)
        self._suppressing: dict[str, list[str]] = {}
        # collections whose running delete stage is an orphan rule's: no dependents to take along (the predicate
        # says there are none), and the guard goes into the final DELETE itself
        self._orphan_stage: set[str] = set()

    # ---- schema -------------------------------------------------------------------------
    def coll(self, name: str) -> Collection:
        return self.policy.systems[self.name].collections[name]

    def target_cols(self, name: str, ref: Reference, t: sa.Table | None = None) -> list[sa.Column]:
        """The columns of this collection's table ``t`` that ``ref`` (a child's reference to it) points at, paired
        in order with the child's ``ref.source_columns()``: its ``to_columns`` / ``to_column``, else the key."""
        t = t if t is not None else self.table(name)
        return [t.c[c] for c in ref.target_columns(self.coll(name))]

    @staticmethod
    def source_cols(child: sa.Table, ref: Reference) -> list[sa.Column]:
        """The child table's referencing columns of ``ref`` (one, or several), in order."""
        return [child.c[c] for c in ref.source_columns()]

    def table(self, name: str) -> sa.Table:
        """The collection's table, reflected once (real column types make binds portable).

        The first call reflects every table of the system, so no reflection (a second connection)
        happens inside a transaction later: on SQLite that connection would wait for the first. They are
        reflected together (one set of catalogue queries where the dialect batches them, as PostgreSQL's
        does), and only what the store uses (``_reflect_tables``); a table the catalogue lists under another
        spelling (case-folding servers) or a view is then fully reflected on its own, as before.
        """
        if name not in self._tables:
            pending = {other: coll.table for other, coll in self.policy.systems[self.name].collections.items()
                       if other not in self._tables}
            together = _reflect_tables(self.engine, sorted(set(pending.values())))
            for other, table_name in pending.items():
                if table_name in together:
                    self._tables[other] = together[table_name]
                    continue
                try:
                    self._tables[other] = sa.Table(table_name, sa.MetaData(), autoload_with=self.engine)
                except sa.exc.NoSuchTableError:
                    if other == name:
                        raise SchemaMismatch(f"{self.name}: table {table_name!r} does not exist") from None
        if name not in self._tables:  # pragma: no cover - raised above
            raise SchemaMismatch(f"{self.name}: table {self.coll(name).table!r} does not exist")
        return self._tables[name]

    def check(self, collection_name: str) -> None:
        """The table has the declared columns, and every condition's values fit its column's type.

        A quoted ``"true"`` against a boolean column would compare as text on some databases and select
        exactly the rows it meant to spare: refused here, before anything runs, naming file, path and type.
        """
        if collection_name in self._checked:
            return
        from include.retention.conditions import check_condition
        from include.retention.errors import PolicyError

        coll = self.coll(collection_name)
        t = self.table(collection_name)
        present = set(t.c.keys())
        missing = [c for c in coll.columns if c not in present]
        if missing:
            raise SchemaMismatch(
                f"{self.name}.{collection_name}: table {coll.table!r} lacks declared column(s) {', '.join(missing)}"
            )
        base = f"systems.{self.name}.collections.{collection_name}"
        tests = [(f"{base}.legal_hold[{i}]", c) for i, c in enumerate(coll.legal_hold)]
        tests += [(f"{base}.rules[{r}].when[{i}]", c) for r, rule in enumerate(coll.rules)
                  for i, c in enumerate(rule.when)]
        for where, cond in tests:
            problem = check_condition(cond, t.c[cond.column].type, where)
            if problem:
                raise PolicyError(f"{self.policy.source or '<policy>'}: {problem}")
        for r, rule in enumerate(coll.rules):
            problem = self._check_start(rule, t, f"{base}.rules[{r}].start")
            if problem:
                raise PolicyError(f"{self.policy.source or '<policy>'}: {problem}")
        problem = self._check_references(collection_name)
        if problem:
            raise PolicyError(f"{self.policy.source or '<policy>'}: {problem}")
        self.check_index(collection_name)  # lookup: indexed (ADR 0022)
        self._checked.add(collection_name)
        for child_ref, _ref in self.policy.children(self.ref(collection_name)):
            c_sys, c_name = CollectionRef.parse(child_ref)
            if c_sys != self.name and self.stores is not None:  # its nullify columns, as reflected there
                self.stores(c_sys).check(c_name)

    def _check_references(self, name: str) -> str | None:
        """References between tables of this database, as its catalogue reports them (ADR 0012):

        - a reference points at columns unique in the target: its declared primary key, or columns the database
          reports a primary key, unique constraint or (not partial) unique index on, covering them; else a child
          would belong to every parent with the same value (two tenants' customers sharing a ``customer_id``);
        - ``nullify`` clears columns that can hold NULL.

        Checked for the references to this collection (from any database: the target's catalogue is here) and
        for this collection's own, and those of its children in this database (a delete here nullifies them)."""
        coll = self.coll(name)
        for owner, ref in referrers(self.policy, self.ref(name)):
            if ref.source_columns() and self.policy.system_of(owner).kind == "sql":
                problem = self._unique_problem(owner, ref, name)
                if problem:
                    return problem
        for ref in coll.references:
            to_sys, to_name = CollectionRef.parse(ref.to)
            if not ref.source_columns() or self.policy.systems[to_sys].kind != "sql":
                continue
            if to_sys == self.name:
                problem = self._unique_problem(self.ref(name), ref, to_name)
                if problem:
                    return problem
        for owner in [self.ref(name)] + [c for c, _ in self.policy.children(self.ref(name))]:
            o_sys, o_name = CollectionRef.parse(owner)
            if o_sys != self.name:
                continue
            t = self.table(o_name)
            for i, ref in enumerate(self.coll(o_name).references):
                if ref.on_delete != "nullify" or not ref.source_columns():
                    continue
                not_null = [c for c in ref.source_columns() if c in t.c and not t.c[c].nullable]
                if not_null:
                    return (f"systems.{o_sys}.collections.{o_name}.references[{i}].on_delete: 'nullify' would "
                            f"clear column(s) {', '.join(not_null)} of table {t.name}, which the database declares "
                            "NOT NULL: use 'on_delete: delete' (or let the column(s) hold NULL)")
        return None

    def _unique_problem(self, owner: str, ref: Reference, target: str) -> str | None:
        """The problem of ``owner``'s reference ``ref`` when the columns it points at in this database's
        collection ``target`` are not unique there (``_check_references``), else None."""
        t, coll = self.table(target), self.coll(target)
        cols = ref.target_columns(coll)
        if not all(c in t.c for c in cols) or _unique_on(t, cols, coll.key_columns()):
            return None  # a missing column is the declared-columns check's to report
        o_sys, o_name = CollectionRef.parse(owner)
        i = self.policy.collection(owner).references.index(ref)
        field = ("to_columns" if ref.to_columns else "to_column" if ref.to_column
                 else "columns" if ref.composite else "column")
        return (f"systems.{o_sys}.collections.{o_name}.references[{i}].{field}: column(s) {', '.join(cols)} of "
                f"{ref.to} (table {t.name}) are not unique there: neither its primary key nor a unique constraint or "
                f"unique index the database reports; a row of {owner} would belong to every {ref.to} row holding "
                "the same value(s) (name columns a primary key or unique constraint covers, e.g. all the columns of "
                "a tenant's key)")

    @staticmethod
    def _check_start(rule: Rule, t: sa.Table, where: str) -> str | None:
        """A computed start compares its columns with each other: all dates, or all timestamps with (or all
        without) time zone; anything else would compare by each database's own conversion rules."""
        from include.retention.conditions import column_kind, type_name

        if not rule.start.computed:
            return None
        seen: tuple[str, Any] | None = None
        for name in rule.start.columns():
            ctype = t.c[name].type
            kind = column_kind(ctype)
            op = "fallback" if name == rule.start.fallback else (
                "latest" if rule.start.latest is not None else "earliest")
            at = f"{where}.{op}" if op == "fallback" else f"{where}.{op}[{rule.start.columns().index(name)}]"
            if kind not in ("date", "datetime"):
                return (f"{at}: column {name!r} has type {type_name(ctype)}; a computed start compares dates or "
                        "timestamps")
            this = (kind, bool(getattr(ctype, "timezone", False)))
            if seen is not None and this != seen[0]:
                return (f"{at}: column {name!r} has type {type_name(ctype)}, {seen[1]!r} another; the columns of a "
                        "computed start must be of one type (all dates, or all timestamps with or all without time "
                        "zone)")
            seen = seen or (this, name)
        return None

    # ---- predicates ---------------------------------------------------------------------
    def _cond(self, t: sa.Table, cond: Condition, now: dt.datetime | None = None) -> sa.ColumnElement[bool]:
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
            bound = self._bind_time(col, edge)
            return col > bound if test == "younger_than" else col < bound
        # values converted to the column's own type (checked against it in ``check``)
        value = bind_condition(cond, col.type)
        if cond.in_ is not None:
            return col.in_(value)
        return {"equals": col.__eq__, "lt": col.__lt__, "le": col.__le__, "gt": col.__gt__,
                "ge": col.__ge__}[test](value)

    def held(self, name: str, t: sa.Table | None = None, now: dt.datetime | None = None
             ) -> sa.ColumnElement[bool] | None:
        """Legal hold of a row (NULL-safe: an unknown flag is not a hold)."""
        coll, t = self.coll(name), t if t is not None else self.table(name)
        if not coll.legal_hold:
            return None
        return sa.func.coalesce(sa.or_(*(self._cond(t, c, now) for c in coll.legal_hold)), sa.false())

    def _held_dependents(self, name: str, t: sa.Table, depth: int = 0, now: dt.datetime | None = None
                         ) -> list[sa.ColumnElement[bool]]:
        """EXISTS tests for rows that a delete of ``t``'s rows would cascade onto and that are held."""
        tests = []
        for child_ref, ref in self.policy.children(self.ref(name)):
            c_sys, c_name = CollectionRef.parse(child_ref)
            if c_sys != self.name or ref.on_delete != "delete":
                continue
            child = self.table(c_name).alias(f"held_{depth}_{c_name}")
            link = cols_eq(self.source_cols(child, ref), self.target_cols(name, ref, t))  # every pair equal
            inner = [self.held(c_name, child, now)] if self.coll(c_name).legal_hold else []
            inner += self._held_dependents(c_name, child, depth + 1, now)
            if inner:
                tests.append(sa.exists().where(link, sa.or_(*inner)))
        return tests

    def _base(self, name: str, rule: Rule, t: sa.Table, now: dt.datetime | None = None
              ) -> list[sa.ColumnElement[bool]]:
        preds = [self._cond(t, c, now) for c in rule.when]
        if rule.start.orphaned is not None:  # only rows nothing refers to (in the acting statement itself)
            preds.append(self.unreferenced(name, t))
        return preds

    @staticmethod
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

    def _band(self, name: str, rule: Rule, stage: Stage, now: dt.datetime, t: sa.Table) -> list[Any]:
        """Start event past this stage's period but not yet past the next (stronger) stage's."""
        col = self.start_expr(rule, t)
        idx = rule.stages.index(stage)
        preds = [col < self._bind_time(col, cutoff(now, stage, rule.start))]
        if idx + 1 < len(rule.stages):
            preds.append(col >= self._bind_time(col, cutoff(now, rule.stages[idx + 1], rule.start)))
        return preds

    @staticmethod
    def _bind_time(col: sa.Column, when: dt.datetime) -> dt.datetime:
        aware = getattr(col.type, "timezone", False)
        if aware:
            return when if when.tzinfo else when.replace(tzinfo=dt.UTC)
        return when.astimezone(dt.UTC).replace(tzinfo=None) if when.tzinfo else when

    def _not_done(self, name: str, stage: Stage, t: sa.Table) -> list[Any]:
        coll = self.coll(name)
        if stage.action == "lock":
            return [t.c[coll.lock.at].is_(None)]
        if stage.action == "anonymize":
            return [t.c[coll.anonymized_marker].is_(None)]
        return []

    def eligible(self, name: str, rule: Rule, stage: Stage, now: dt.datetime, t: sa.Table | None = None) -> Any:
        """The full predicate of rows this stage acts on now."""
        t = t if t is not None else self.table(name)
        preds = (self._base(name, rule, t, now) + self._band(name, rule, stage, now, t)
                 + self._not_done(name, stage, t))
        held = self.held(name, t, now)
        if held is not None:
            preds.append(sa.not_(held))
        if stage.action == "delete":
            preds += [sa.not_(test) for test in self._held_dependents(name, t, now=now)]
        return sa.and_(*preds)

    # ---- plan ---------------------------------------------------------------------------
    def plan(self, collection_name: str, rule: Rule, now: dt.datetime, *, for_act: bool = False) -> RulePlan:
        t = self.table(collection_name)
        scope = sa.and_(*self._base(collection_name, rule, t, now)) if rule.when else sa.true()
        first = rule.stages[0]
        start = self.start_expr(rule, t)
        past_first = start < self._bind_time(start, cutoff(now, first, rule.start))
        cols = [
            sa.func.count().label("total"),
            sa.func.sum(sa.case((scope, 1), else_=0)).label("in_scope"),
        ]
        for stage in rule.stages:
            cols.append(sa.func.sum(sa.case((self.eligible(collection_name, rule, stage, now, t), 1), else_=0))
                        .label(stage.action))
        delete_stage = next((s for s in rule.stages if s.action == "delete"), None)
        held_expr = sa.and_(scope, self._held_in_rule(collection_name, rule, t, now, past_first))
        cols.append(sa.func.sum(sa.case((held_expr, 1), else_=0)).label("held"))
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(*cols).select_from(t)).one()._mapping
            cascaded = {}
            eligible = {s.action: int(row[s.action] or 0) for s in rule.stages}
            held = int(row["held"] or 0)
            if delete_stage is not None and row[delete_stage.action]:
                cascaded = self._cascade_counts(conn, collection_name, rule, delete_stage, now)
                # parents a held row of another database keeps: held, as with held dependents in this one
                kept = self._held_elsewhere_count(conn, collection_name,
                                                  self.eligible(collection_name, rule, delete_stage, now, t))
                eligible[delete_stage.action] -= kept
                held += kept
        return RulePlan(
            total=int(row["total"] or 0),
            in_scope=int(row["in_scope"] or 0),
            eligible=eligible,
            held=held,
            cascaded=cascaded,
        )

    def _held_in_rule(self, name: str, rule: Rule, t: sa.Table, now: dt.datetime, past_first: Any
                      ) -> sa.ColumnElement[bool]:
        """A row the rule keeps for a hold: held and past its first period, or (a delete stage) in the delete band
        with held dependents."""
        held_tests = [h for h in [self.held(name, t, now)] if h is not None]
        held_parts = [sa.and_(past_first, sa.or_(*held_tests))] if held_tests else []
        delete_stage = next((s for s in rule.stages if s.action == "delete"), None)
        dependents = self._held_dependents(name, t, now=now) if delete_stage else []
        if dependents:
            # a row kept because its dependents are held is "held" only where it would be deleted
            in_band = sa.and_(*self._band(name, rule, delete_stage, now, t))
            held_parts.append(sa.and_(in_band, sa.or_(*dependents)))
        return sa.or_(*held_parts) if held_parts else sa.false()

    def count_kept(self, collection_name: str, rule: Rule, now: dt.datetime) -> int:
        """The rows of the rule's scope still in the table after it acted, neither held (as the plan counts holds)
        nor acted on (locked / anonymized in that stage's band; deleted rows are gone): read from the table, so a
        concurrent run's work is not counted as kept."""
        t = self.table(collection_name)
        scope = sa.and_(*self._base(collection_name, rule, t, now)) if rule.when else sa.true()
        start = self.start_expr(rule, t)
        past_first = start < self._bind_time(start, cutoff(now, rule.stages[0], rule.start))
        held = sa.func.coalesce(self._held_in_rule(collection_name, rule, t, now, past_first), sa.false())
        acted = [sa.and_(*self._band(collection_name, rule, s, now, t), sa.not_(sa.and_(*not_done)))
                 for s in rule.stages if (not_done := self._not_done(collection_name, s, t))]
        where = [scope, sa.not_(held)]
        if acted:
            where.append(sa.not_(sa.func.coalesce(sa.or_(*acted), sa.false())))
        delete_stage = next((s for s in rule.stages if s.action == "delete"), None)
        with self.engine.connect() as conn:
            n = int(conn.execute(sa.select(sa.func.count()).select_from(t).where(*where)).scalar() or 0)
            if delete_stage is not None:  # parents a held row of another database keeps: held, not kept
                n -= self._held_elsewhere_count(conn, collection_name,
                                                self.eligible(collection_name, rule, delete_stage, now, t))
        return max(n, 0)

    def _cascade_counts(self, conn, name: str, rule: Rule, stage: Stage, now: dt.datetime
                        ) -> dict[str, tuple[int, int]]:
        """Direct dependents a delete stage would take along, and each dependent table's size (for the brake)."""
        t = self.table(name)
        out = {}
        for child_ref, ref in self.policy.children(self.ref(name)):
            c_sys, c_name = CollectionRef.parse(child_ref)
            if c_sys != self.name or ref.on_delete != "delete":
                continue
            child = self.table(c_name)
            going = sa.select(*self.target_cols(name, ref, t)).where(self.eligible(name, rule, stage, now, t))
            n = conn.execute(sa.select(sa.func.count()).select_from(child)
                             .where(cols_in(self.source_cols(child, ref), going))).scalar() or 0
            total = conn.execute(sa.select(sa.func.count()).select_from(child)).scalar() or 0
            out[child_ref] = (int(n), int(total))
        going = sa.select(*self.key_cols(name, t)).where(self.eligible(name, rule, stage, now, t))
        out.update(self._other_cascade_counts(conn, name, going))
        return out

    # ---- act ----------------------------------------------------------------------------
    def apply_stage(self, collection_name: str, rule: Rule, stage: Stage, now: dt.datetime, batch_size: int,
                    reason: str, record: Recorder) -> StageResult:
        # A computed start has no column an index could walk (start.column is None): batches walk the key.
        # The stage's suppression kinds reach ``_delete_keys`` through ``_suppressing`` while it runs.
        kinds = rule.suppress_kinds(stage)
        if kinds:
            self._suppressing[collection_name] = kinds
        if rule.start.orphaned is not None and stage.action == "delete":
            self._orphan_stage.add(collection_name)
        try:
            return self.act_in_batches(
                collection_name, lambda t: self.eligible(collection_name, rule, stage, now, t),
                stage.action, batch_size, reason, record, mask=stage.mask, now=now, walk=rule.start.column,
            )
        finally:
            self._suppressing.pop(collection_name, None)
            self._orphan_stage.discard(collection_name)

    def walk_order(self, collection_name: str, walk: str | None) -> list[sa.Column]:
        """The key batches walk: ``(walk, pk)`` when an index leads with ``walk`` (the start column, whose range
        the predicate is: each batch is then an index range right after the previous one, whatever the table
        size), else the primary key alone (without such an index a ``(walk, pk)`` order would sort the table
        once per batch)."""
        t = self.table(collection_name)
        pk = self.key_cols(collection_name, t)
        if walk is None or walk == pk[0].name:
            return pk
        leading = {list(ix.columns)[0].name for ix in t.indexes if ix.columns}
        leading |= {list(c.columns)[0].name for c in t.constraints
                    if isinstance(c, sa.UniqueConstraint) and c.columns}
        return [t.c[walk], *pk] if walk in leading else pk

    def _row_values(self, order: list[Any]) -> bool:
        """A walk with a composite key compares row values where the dialect has them; the ``(start, pk)`` walk of
        a one-column key keeps its expansion ``start >= x AND (start > x OR pk > y)``, which PostgreSQL's planner
        serves from the index in the one-statement batches (a row value of scalar subqueries it does not)."""
        composite = len(order) > 2 or (len(order) == 2 and all(getattr(c, "primary_key", False) for c in order))
        return composite and has_row_values(self.engine.dialect)

    def _after(self, order: list[Any], last: tuple | None) -> list[Any]:
        """Rows strictly after ``last`` in walk order (a range an index on ``order[0]`` serves): ``sql_keys.after``."""
        return after(order, last, self._row_values(order))

    def _upto(self, order: list[Any], bound: tuple) -> list[Any]:
        return upto(order, bound, self._row_values(order))

    def _by_block(self, collection_name: str, action: str, mask: dict | None) -> bool:
        """PostgreSQL walks the heap by block ranges (``ctid``) with one statement per batch, when the batch's
        statement is all there is to it: not for deletes that take something along (their rows are locked first
        and go by key), nor for masks computed in Python (keyed hashes read the rows first)."""
        return self.engine.dialect.name == "postgresql" and self._one_statement_does(collection_name, action, mask)

    def _one_statement_does(self, collection_name: str, action: str, mask: dict | None) -> bool:
        """Is the batch's ``DELETE``/``UPDATE`` all there is to it (``_one_statement``)? Not for deletes that take
        something along, nor for masks computed in Python (keyed hashes read the rows first)."""
        if action == "delete":
            return not self._takes_along(collection_name)
        if action == "anonymize":
            return all(STRATEGIES[m.strategy].in_sql for m in (mask or {}).values())
        return action == "lock"

    def _in_index_order(self, t: sa.Table, order: list[sa.Column]) -> bool:
        """PostgreSQL: the table's rows lie in the order of the indexed start column (``pg_stats.correlation``
        near 1, e.g. an append-only event table): the index walk then reads only the expired range, in physical
        order, where a block walk would read the whole table."""
        if len(order) < 2:
            return False
        with self.engine.connect() as conn:
            corr = conn.execute(sa.text(
                "SELECT correlation FROM pg_stats WHERE schemaname = current_schema() AND tablename = :t "
                "AND attname = :c"), {"t": t.name, "c": order[0].name}).scalar()
        return corr is not None and abs(corr) >= CORRELATED

    def act_in_batches(self, collection_name: str, predicate: Callable[[sa.Table], Any], action: str,
                       batch_size: int, reason: str, record: Recorder, *, mask: dict | None = None,
                       now: dt.datetime | None = None, walk: str | None = None) -> StageResult:
        """Act on the rows matching ``predicate`` in bounded batches, one transaction and one ledger intent +
        outcome each.

        Two walks, both linear in the table (no batch re-reads what an earlier one passed):

        - PostgreSQL, when one statement does the batch: block ranges of the heap, ``DELETE``/``UPDATE ...
          WHERE ctid >= (b, 0) AND ctid < (b + k, 0) AND <predicate> RETURNING pk`` (a TID range scan, in
          physical order like the raw statement's scan, no sort). The blocks that existed when the stage began
          are walked; a row a concurrent ``UPDATE`` moves behind the walk meanwhile is acted on by the next run.
        - otherwise a keyset walk on ``walk_order`` (``(start column, pk)`` where an index leads with the start
          column): select the next keys, then act on exactly that range with the predicate repeated.

        Sizes: the first batch covers ``batch_size`` rows, the next ones about ``BATCH_SECONDS`` each at the
        rate just measured (``_BatchSizer``), never more than ``MAX_BATCH`` rows.
        """
        self._recording = record  # cascades into other systems record through it directly
        # each batch's outcome shares the ledger transaction of the next batch's intent (n + 1 writes, not 2n)
        deferred = DeferredOutcomes(record)
        try:
            result = self._act_in_batches(collection_name, predicate, action, batch_size, reason, deferred, mask,
                                          now, walk)
        except BaseException:
            # the last committed batch's outcome is written whatever failed after it
            _flush_after_failure(deferred)
            raise
        finally:
            self._recording = None
        deferred.flush()
        return result

    def _act_in_batches(self, collection_name: str, predicate: Callable[[sa.Table], Any], action: str,
                        batch_size: int, reason: str, record: Recorder, mask: dict | None, now: dt.datetime | None,
                        walk: str | None) -> StageResult:
        t = self.table(collection_name)
        now = now or dt.datetime.now(dt.UTC)
        order = self.walk_order(collection_name, walk)
        one_statement = self._by_block(collection_name, action, mask)
        by_block = one_statement and not self._in_index_order(t, order)
        # PostgreSQL, a table in start-column order: the index walk, but one statement per batch as well
        n_pk = len(self.coll(collection_name).key_columns())
        by_index = (one_statement and not by_block and len(order) == 2 and n_pk == 1
                    and self._digest_in_db(order[-1]))
        # MariaDB, when one statement acts on the batch and the keys are integers: the batch's keys stay in the server
        # (not when the predicate reads another table, an orphan rule's NOT EXISTS: the locking read does not lock
        # those rows, so the act could take other rows than the ones counted and digested)
        by_range = (not by_block and not by_index and self._by_range(collection_name, action, mask)
                    and not _reads_other_tables(predicate(t)))
        if by_range:
            order = self._range_order(t, order, predicate(t))
        by_order = not by_block and not by_range and self._by_order(collection_name, action)
        # Rows owning S3 objects: a batch's objects cost one listing and one DeleteObjects per 1,000 whatever the
        # batch's size, so such batches keep at least batch_size rows (time-based shrinking would multiply calls).
        owns = bool(self.policy.owned_objects(self.ref(collection_name)))
        sizer = _BatchSizer(batch_size, floor=batch_size if owns else MIN_BATCH)
        result = StageResult(action=action)
        if by_block:
            with self.engine.connect() as conn:
                blocks, per_block = conn.execute(sa.text(
                    "SELECT pg_relation_size(c.oid) / current_setting('block_size')::int, "
                    "CASE WHEN c.relpages > 0 AND c.reltuples > 0 THEN c.reltuples / c.relpages END "
                    "FROM pg_class c WHERE c.oid = CAST(:name AS regclass)"), {"name": t.name}).one()
            # an unanalysed table: assume full pages of narrow rows (small ranges, the sizer widens them)
            per_block = float(per_block or 200)
            density = per_block  # matching rows per block: all of them until a batch has measured it
        last: tuple | None = None
        block = 0
        while True:
            where = predicate(t)
            size = sizer.size
            started = time.perf_counter()
            intent = None
            cascaded: dict[str, int] = {}
            with self.engine.begin() as conn:
                if by_block:
                    if block >= blocks:
                        break
                    # about ``size`` matching rows at the density seen so far, at most 4x ``size`` rows scanned
                    span = max(1, int(min(size / density, SCAN_FACTOR * size / per_block)))
                    upto = min(blocks, block + span)
                    changed, digest = self._act_by_block(conn, collection_name, t, action, where, block, upto,
                                                         reason, now, mask or {})
                    keys = changed  # truthy when the batch acted (the keys stay in the database)
                    density = max(changed / (upto - block), per_block / 100, 1e-3)
                    reread = {"walk": "blocks", "first": block, "end": upto, "now": now}
                    block = upto
                    if changed:  # before the commit, as below: the statement has run, the batch is not yet durable
                        intent = begin_record(record, action, changed, digest, reread)
                    done = block >= blocks
                    covered = size if changed >= size // 2 else 0
                elif by_index:
                    picked, bound, changed, digest = self._act_by_index(
                        conn, collection_name, t, action, where, order, last, size, reason, now, mask or {})
                    if not picked:
                        break
                    keys = changed  # truthy when the batch acted (the keys stay in the database)
                    reread = _range_reread(order, last, bound, now)
                    last = bound
                    done, covered = picked < size, picked
                    if changed:  # before the commit: the statement has run, the batch is not yet durable
                        intent = begin_record(record, action, changed, digest, reread)
                elif by_range:
                    # MariaDB: lock the next ``size`` eligible rows and get their count, digest text and last key in
                    # one locking read, then act on exactly that range with the predicate repeated.
                    picked, bound, digest = self._pick_range(conn, t, order, where, last, size)
                    if not picked:
                        break
                    in_batch = [*self._after(order, last), *self._upto(order, bound), where]
                    changed = conn.execute(self._one_statement(collection_name, t, action, in_batch, reason, now,
                                                               mask or {})).rowcount
                    if changed != picked:
                        # the locks should make this impossible; never record a count or digest that is not the truth
                        raise RetentionError(
                            f"{self.name}.{collection_name}: a batch's {action} changed {changed} rows where the "
                            f"locking read counted {picked}; rolled back, nothing recorded")
                    keys = changed
                    reread = _range_reread(order, last, bound, now)
                    last = bound
                    done, covered = picked < size, picked
                    # before the commit: the statement has run, the batch is not yet durable
                    intent = begin_record(record, action, changed, digest, reread)
                elif by_order:
                    # MariaDB, a delete that takes nothing along: one DELETE ... ORDER BY <walk> LIMIT n RETURNING
                    # per batch, the next n eligible rows after the previous batch in index order.
                    rows = self._delete_in_order(conn, t, order, where, last, size)
                    if not rows:
                        break
                    keys = sorted(key_of(r[-n_pk:]) for r in rows)
                    changed = len(keys)
                    digest = self._pk_digest(keys)
                    reread = _range_reread(order, last, max(tuple(r) for r in rows), now)
                    last = reread["upto"]
                    done, covered = changed < size, changed
                    # before the commit: the statement has run, the batch is not yet durable
                    intent = begin_record(record, action, changed, digest, reread)
                else:
                    query = sa.select(*order).where(where, *self._after(order, last)).order_by(*order).limit(size)
                    rows = conn.execute(query).all()
                    if not rows:
                        break
                    keys = [key_of(r[-n_pk:]) for r in rows]
                    keys = sorted(keys) if len(order) > 1 else keys
                    bound = tuple(rows[-1])
                    done, covered = len(rows) < size, len(rows)
                    digest = self._pk_digest(keys)
                    reread = _range_reread(order, last, bound, now)
                    # The ledger says what may happen before the store commits it, so a crash between the two
                    # leaves an entry that says so (verify reports it, the rule's next run settles it). A delete
                    # that changes something outside this transaction (objects, digests, another database) is
                    # announced before anything goes; any other batch once its statements ran, with what they
                    # took along ("cascading": the next run settles a committed batch with those counts).
                    early = action == "delete" and self._writes_outside(collection_name)
                    if early:
                        intent = begin_record(record, action, len(keys), digest, reread)
                    # The batch is every eligible row in (last, bound] of the walk: acting on that key range
                    # with the full predicate repeated touches the same rows without a long IN list.
                    in_batch = sa.and_(*self._after(order, last), *self._upto(order, bound))
                    if action == "delete":
                        changed = self._delete(conn, collection_name, t, keys, in_batch, where, cascaded)
                    elif action == "lock":
                        changed = self._lock(conn, collection_name, t, in_batch, where, reason, now)
                    elif action == "anonymize":
                        changed = self._anonymize(conn, collection_name, t, keys, sa.and_(in_batch, where),
                                                  mask or {}, now)
                    else:  # pragma: no cover - the policy model refuses other actions
                        raise ValueError(action)
                    if not early:
                        intent = begin_record(record, action, changed, digest, {**reread, "cascading": cascaded})
                    last = bound
            sizer.took(covered, time.perf_counter() - started)
            if keys:
                result.changed += changed
                result.batches += 1
                for k, v in cascaded.items():
                    result.cascaded[k] = result.cascaded.get(k, 0) + v
                end_record(record, intent, action, changed, digest, {"batch": result.batches, "cascaded": cascaded})
            else:  # no intent of this batch to share the waiting outcome's transaction with: write it now
                flush_record(record)
            if done:
                break
        return result

    def _act_by_block(self, conn, name: str, t: sa.Table, action: str, where: Any, first: int, end: int,
                      reason: str, now: dt.datetime, mask: dict) -> tuple[int, str]:
        """PostgreSQL: act on the rows of heap blocks [first, end) that match ``where``; how many, and their
        ``_pk_digest`` (computed from the keys the statement returns, aggregated in the database)."""
        ctid = sa.literal_column("ctid")
        in_blocks = sa.and_(ctid >= sa.cast(sa.literal(f"({first},0)"), _TID),
                            ctid < sa.cast(sa.literal(f"({end},0)"), _TID))
        stmt = self._one_statement(name, t, action, [in_blocks, where], reason, now, mask)
        return self._returned_digest(conn, stmt, self.key_cols(name, t))

    def _one_statement(self, name: str, t: sa.Table, action: str, conds: list[Any], reason: str, now: dt.datetime,
                       mask: dict) -> Any:
        """The ``DELETE``/``UPDATE`` that does a whole batch (``_by_block`` says when one can) on ``conds``."""
        coll = self.coll(name)
        if action == "delete":
            return t.delete().where(*conds)
        if action == "lock":
            return t.update().where(*conds, t.c[coll.lock.at].is_(None)).values(self._lock_values(name, t, reason, now))
        marker = {coll.anonymized_marker: self._bind_time(t.c[coll.anonymized_marker], now)}
        return t.update().where(*conds).values(
            **{c: STRATEGIES[m.strategy].sql(t.c[c], m.value) for c, m in mask.items()}, **marker)

    def _act_by_index(self, conn, name: str, t: sa.Table, action: str, where: Any, order: list[sa.Column],
                      last: tuple | None, size: int, reason: str, now: dt.datetime, mask: dict
                      ) -> tuple[int, tuple | None, int, str]:
        """PostgreSQL, integer or text keys (``_digest_in_db``), the index walk in one statement: ``WITH picked AS
        (SELECT start, pk ... AND (start, pk) > last ORDER BY start, pk LIMIT n), acted AS (DELETE/UPDATE ... WHERE
        (start, pk) in (last, last of picked] AND <where> RETURNING pk)`` and one row back: how many were picked,
        the last of them (the next batch starts after it), how many were acted on and their ``_pk_digest``
        (aggregated in the database, as in ``_returned_digest``). No key crosses the wire."""
        start, pk = order
        picked = (sa.select(start.label("s"), pk.label("k")).where(where, *self._after(order, last))
                  .order_by(*order).limit(size).cte("picked"))
        last_picked = (sa.select(picked.c.s, picked.c.k).order_by(picked.c.s.desc(), picked.c.k.desc()).limit(1)
                       .cte("last_picked"))
        bound_s = sa.select(last_picked.c.s).scalar_subquery()
        bound_k = sa.select(last_picked.c.k).scalar_subquery()
        in_batch = [*self._after(order, last), *self._upto(order, (bound_s, bound_k)), where]
        acted = self._one_statement(name, t, action, in_batch, reason, now, mask).returning(pk).cte("acted")
        key = acted.c[pk.name]
        done = sa.select(sa.func.count().label("n"), _keys_text(key).label("text")).subquery("done")
        row = conn.execute(sa.select(
            sa.select(sa.func.count()).select_from(picked).scalar_subquery(), bound_s, bound_k,
            done.c.n, done.c.text)).one()
        n_picked, b_s, b_k, n_acted, text = row
        return int(n_picked), (b_s, b_k) if n_picked else None, int(n_acted), self._digest_text(text or "")

    def _returned_digest(self, conn, stmt, cols: list[sa.Column]) -> tuple[int, str]:
        """Run ``stmt ... RETURNING pk``: (rows, ``_pk_digest`` of their keys). For integer and text keys on PostgreSQL
        (``_digest_in_db``) the statement runs in a CTE whose keys the database sorts and joins (``_keys_text``: the
        very text ``_pk_digest`` hashes), so no key crosses the wire; otherwise the keys come back."""
        stmt = stmt.returning(*cols)
        pk = cols[0]
        if conn.dialect.name == "postgresql" and len(cols) == 1 and self._digest_in_db(pk):
            acted = stmt.cte("acted")
            n, text = conn.execute(sa.select(sa.func.count(), _keys_text(acted.c[pk.name]))).one()
            return int(n), self._digest_text(text or "")
        keys = sorted(key_of(r) for r in conn.execute(stmt))
        return len(keys), self._pk_digest(keys)

    def _digest_in_db(self, col: sa.Column) -> bool:
        """PostgreSQL can build the text ``_pk_digest`` hashes for keys of this column, in ``sorted()`` order:
        integers, and text in a UTF-8 database (``COLLATE "C"`` compares the UTF-8 bytes, whose order is the code
        points' order, Python's order of ``str``; not ``char(n)``, whose padding Python sees and ``::text`` drops,
        nor enums, ordered by declaration)."""
        if self.engine.dialect.name != "postgresql":
            return False
        if isinstance(col.type, sa.Integer):
            return True
        if not isinstance(col.type, sa.String) or isinstance(col.type, (sa.CHAR, sa.Enum)):
            return False
        if self._server_utf8 is None:
            with self.engine.connect() as conn:
                self._server_utf8 = conn.exec_driver_sql("SHOW server_encoding").scalar() == "UTF8"
        return self._server_utf8

    def _delete_in_order(self, conn, t: sa.Table, order: list[sa.Column], where: Any, last: tuple | None,
                         size: int) -> list[tuple]:
        """MariaDB: ``DELETE ... WHERE <where> AND <after last> ORDER BY <order> LIMIT size RETURNING <order>``:
        the next ``size`` eligible rows of the walk (an index range when an index leads with ``order[0]``)."""
        stmt = t.delete().where(where, *self._after(order, last)).ext(_OrderedLimit(order, size))
        return [tuple(r) for r in conn.execute(stmt.returning(*order))]

    def _by_range(self, collection_name: str, action: str, mask: dict | None) -> bool:
        """MariaDB, a one-column integer key, and one statement does the batch (a delete that takes nothing along, a
        lock, an anonymize with SQL masks): ``_pick_range`` then the act on that range, no key crosses the wire.
        Other keys keep their walks: ``GROUP_CONCAT`` orders text by the column's collation (``PAD SPACE``, case
        or accent folding), which is not Python's ``sorted()`` order the digest needs."""
        dialect = self.engine.dialect
        if dialect.name != "mysql" or not getattr(dialect, "is_mariadb", False):
            return False
        pk = self.key_cols(collection_name)
        return (len(pk) == 1 and isinstance(pk[0].type, sa.Integer)
                and self._one_statement_does(collection_name, action, mask))

    def _range_order(self, t: sa.Table, order: list[sa.Column], where: Any) -> list[sa.Column]:
        """MariaDB: walk the way the server itself would read the eligible rows. When its optimizer reads them
        through the start column's index (few of them), ``(start, pk)``; when it would scan the table (the raw
        statement's plan: many of them, or no usable index), the primary key: each batch a range of the clustered
        index read in order, where the start index would add a primary-key lookup per row in date order."""
        if len(order) < 2:
            return order
        with self.engine.connect() as conn:
            plan = conn.execute(_Explain(sa.select(order[-1]).where(where))).mappings().all()
        used = next((row["key"] for row in plan if row["table"] == t.name), None)
        leads = {ix.name for ix in t.indexes if ix.columns and list(ix.columns)[0].name == order[0].name}
        return order if used in leads else order[-1:]

    def _pick_range(self, conn, t: sa.Table, order: list[sa.Column], where: Any, last: tuple | None, size: int
                    ) -> tuple[int, tuple | None, str]:
        """MariaDB: the next ``size`` eligible rows after ``last`` in walk order, locked (``FOR UPDATE``: next-key
        locks on everything the read scanned, so no row enters, leaves or changes in the range before the commit),
        in one statement that returns one row: how many, the last of them (the batch's upper bound) and the
        ``_pk_digest`` of their keys, whose text ``GROUP_CONCAT(pk + 0 ORDER BY pk SEPARATOR '\\n')`` builds in the
        server: integer keys in numeric order, each printed as a number (``+ 0``: a ``ZEROFILL`` column would
        print ``000022``), the very text ``key_text`` joins. No key crosses the wire."""
        cols = [c.label(f"w{i}") for i, c in enumerate(order)]
        picked = (sa.select(*cols).where(where, *self._after(order, last)).order_by(*order).limit(size)
                  .with_for_update().subquery("picked"))
        key = picked.c[f"w{len(order) - 1}"]
        aggregates = [sa.func.count(), sa.func.aggregate_strings(key + 0, "\n").aggregate_order_by(key)]
        if len(order) == 1:
            aggregates.append(sa.func.max(key))
        else:  # the last (start, pk): the latest start, and the greatest key among the rows that have it
            start = picked.c.w0
            aggregates += [sa.func.max(start), sa.func.substring_index(
                sa.func.aggregate_strings(key + 0, ",").aggregate_order_by(start.desc(), key.desc()), ",", 1),
                sa.func.max(key)]
        # room for the batch's keys (20 digits and a separator each), set once per connection and size; a truncated
        # text is refused below
        room = max(1 << 20, 21 * size)
        if conn.info.get("retention_group_concat_max_len", 0) < room:
            conn.exec_driver_sql(f"SET SESSION group_concat_max_len = {room:d}")
            conn.info["retention_group_concat_max_len"] = room
        n, text, *bound = conn.execute(sa.select(*aggregates)).one()
        if not n:
            return 0, None, ""
        greatest = bound[-1]
        if len(order) > 1:
            bound = bound[:2]
            bound[1] = int(bound[1].decode("ascii") if isinstance(bound[1], bytes) else bound[1])
        text = text.decode("ascii") if isinstance(text, bytes) else text
        # whole: one key per separator, and the last one (the keys ascend) is the greatest in full; a text cut inside
        # its last key has as many separators as a whole one
        if text is None or text.count("\n") + 1 != n or text.rpartition("\n")[2] != str(int(greatest)):
            raise RetentionError(f"{self.name}: a batch's key list came back truncated ({n} keys); nothing acted on")
        return int(n), tuple(bound), self._digest_text(text)

    def _by_order(self, collection_name: str, action: str) -> bool:
        """MariaDB acts and returns the batch's keys in one ``DELETE ... ORDER BY ... LIMIT ... RETURNING`` when
        the delete takes nothing along (MySQL has no ``RETURNING``, and updates have none on MariaDB)."""
        dialect = self.engine.dialect
        return (dialect.name == "mysql" and bool(getattr(dialect, "is_mariadb", False))
                and action == "delete" and not self._takes_along(collection_name))

    def _digest_text(self, text: str) -> str:
        from include.retention.masking import keyed_digest

        return keyed_digest(self.mask_key, text)

    def _pk_digest(self, keys: list[Any]) -> str:
        from include.retention.masking import keyed_digest

        return keyed_digest(self.mask_key, key_text(keys))

    def _lock_values(self, name, t, reason, now) -> dict[str, Any]:
        coll = self.coll(name)
        values = {coll.lock.at: self._bind_time(t.c[coll.lock.at], now)}
        if coll.lock.reason:
            values[coll.lock.reason] = reason[:200]
        return values

    def _lock(self, conn, name, t, in_batch, where, reason, now) -> int:
        coll = self.coll(name)
        return conn.execute(t.update().where(in_batch, where, t.c[coll.lock.at].is_(None))
                            .values(self._lock_values(name, t, reason, now))).rowcount

    def _anonymize(self, conn, name, t, keys, where, mask, now) -> int:
        """Mask the rows of ``keys`` that still match ``where`` (which bounds them)."""
        coll = self.coll(name)
        pk = self.key_cols(name, t)
        n = len(pk)
        marker = {coll.anonymized_marker: self._bind_time(t.c[coll.anonymized_marker], now)}
        in_sql = {c: STRATEGIES[m.strategy].sql(t.c[c], m.value) for c, m in mask.items()
                  if STRATEGIES[m.strategy].in_sql}
        in_python = {c: m for c, m in mask.items() if not STRATEGIES[m.strategy].in_sql}
        if in_python:
            # Keyed hashes are computed here, one bounded batch at a time, written back in one executemany.
            rows = conn.execute(sa.select(*pk, *(t.c[c] for c in in_python)).where(where).with_for_update()).all()
            if not rows:
                return 0
            params = [
                {**{f"_pk{j}": r[j] for j in range(n)},
                 **{f"_v_{c}": STRATEGIES[m.strategy].python(r[n + i], m.value, self.mask_key)
                    for i, (c, m) in enumerate(in_python.items())}}
                for r in rows
            ]
            stmt = t.update().where(*(c == sa.bindparam(f"_pk{j}") for j, c in enumerate(pk))).values(
                **in_sql, **marker, **{c: sa.bindparam(f"_v_{c}") for c in in_python})
            conn.execute(stmt, params)
            return len(rows)
        return conn.execute(t.update().where(where).values(**in_sql, **marker)).rowcount

    def _delete(self, conn, name, t, keys, in_batch, where, cascaded: dict[str, int]) -> int:
        """Delete the batch's rows that still match ``where``; returns the rows the statement deleted."""
        if not self._takes_along(name):
            return conn.execute(t.delete().where(in_batch, where)).rowcount
        # PostgreSQL selects the locked rows by their key afterwards (``_delete_set``): a one-column key
        if self._set_cascade(name) and (conn.dialect.name != "postgresql" or len(self.key_cols(name, t)) == 1):
            return self._delete_set(conn, name, t, sa.and_(in_batch, where), cascaded)
        pk = self.key_cols(name, t)
        # Lock what will go before anything else goes with it (objects, digests, dependents): a legal hold
        # committed meanwhile waits for this transaction and cannot be overtaken.
        keys = [key_of(r) for r in conn.execute(sa.select(*pk).where(in_batch, where).with_for_update())]
        if not keys:
            return 0
        return self._delete_keys(conn, name, keys, cascaded, guard=where)

    def _set_cascade(self, name: str, above: tuple[str, ...] = ()) -> bool:
        """Whether a delete here takes along only rows of this database, in a tree of distinct tables (no objects,
        no digests, no other database, no table twice): ``_delete_set`` then does a batch in a few set-based
        statements instead of carrying its keys back and forth."""
        coll = self.coll(name)
        if (name in above or self.policy.owned_objects(self.ref(name)) or coll.suppress_on_delete
                or self._suppressing.get(name)):
            return False
        for child_ref, ref in self.policy.children(self.ref(name)):
            c_sys, c_name = CollectionRef.parse(child_ref)
            if c_sys != self.name or c_name in (*above, name):
                return False
            if ref.on_delete != "nullify" and not self._set_cascade(c_name, (*above, name)):
                return False
        return True

    def _delete_set(self, conn, name: str, t: sa.Table, rows: Any, cascaded: dict[str, int]) -> int:
        """Delete the rows ``rows`` selects (the batch's range and the full predicate) and their dependents
        (``_set_cascade``): lock them, then per dependent table one ``DELETE``/``UPDATE ... WHERE fk IN (SELECT
        ... WHERE rows)`` (deepest first), then the rows; returns the rows deleted.

        The lock comes first, so a legal hold committed meanwhile waits and cannot be overtaken. On PostgreSQL
        (read committed: a row inserted into the range later would be seen by the next statement) the locked
        keys themselves then select the rows, as one array (``pk = ANY(:keys)``); MariaDB's locking read holds
        the range it scanned (next-key locks: nothing can be inserted into it before the commit) and SQLite's
        ``BEGIN IMMEDIATE`` the database, so there the predicate selects the same rows in every statement."""
        pk = self.key_cols(name, t)
        keys = None
        if conn.dialect.name == "postgresql" and len(pk) == 1:
            keys = conn.execute(sa.select(pk[0]).where(rows).with_for_update()).scalars().all()
            if not keys:
                return 0
            # the range and predicate stay: they lead the planner to the batch's index range, the keys recheck it
            rows = sa.and_(rows, _any(pk[0], keys))
        elif not conn.execute(sa.select(sa.func.count()).select_from(t).where(rows).with_for_update()).scalar():
            return 0
        self._delete_dependents(conn, name, t, rows, cascaded, keys)
        return conn.execute(t.delete().where(rows)).rowcount

    def _delete_dependents(self, conn, name: str, t: sa.Table, rows: Any, cascaded: dict[str, int],
                           keys: list[Any] | None = None) -> None:
        """The dependents (in this database) of ``t``'s rows that ``rows`` selects: set-based, deepest first.
        ``keys``: those rows' keys (PostgreSQL), matched directly by a reference to the key (an index on the
        referencing column can serve it, as for the raw statement)."""
        for child_ref, ref in self.policy.children(self.ref(name)):
            c_name = CollectionRef.parse(child_ref).collection
            child = self.table(c_name)
            parent_cols, child_cols = self.target_cols(name, ref, t), self.source_cols(child, ref)
            set_ = sa.and_(*(c.is_not(None) for c in parent_cols))
            if keys is not None and len(parent_cols) == 1 and parent_cols[0].primary_key and len(
                    self.key_cols(name, t)) == 1:
                mine = _any(child_cols[0], keys, parent_cols[0].type)
            elif conn.dialect.name == "mysql":
                # a join with the batch's values as a derived table (``DELETE FROM child USING child, (SELECT DISTINCT
                # ...) AS b WHERE child.fk = b.k``: the index on the referencing column serves it): MariaDB before 11.1
                # runs a single-table ``DELETE ... IN (SELECT ...)`` as a dependent subquery per child row, a scan of
                # the child table per batch. DISTINCT keeps the derived table materialized (merged, the predicate's
                # tests on held children would name the table being deleted from: error 1093).
                labels = ["k"] if len(parent_cols) == 1 else [f"k{i}" for i in range(len(parent_cols))]
                batch = (sa.select(*(c.label(k) for c, k in zip(parent_cols, labels, strict=True))).where(rows, set_)
                         .distinct().subquery())
                mine = cols_eq(child_cols, [batch.c[k] for k in labels])
            else:
                mine = cols_in(child_cols, sa.select(*parent_cols).where(rows, set_))
            if ref.on_delete == "nullify":
                n = conn.execute(child.update().where(mine).values(_cleared(ref))).rowcount
                cascaded[f"{child_ref}:nullified"] = cascaded.get(f"{child_ref}:nullified", 0) + n
                continue
            self._delete_dependents(conn, c_name, child, mine, cascaded)
            n = conn.execute(child.delete().where(mine)).rowcount
            cascaded[child_ref] = cascaded.get(child_ref, 0) + n

    def _writes_outside(self, name: str, above: tuple[str, ...] = ()) -> bool:
        """Whether a delete here changes something outside this database's transaction: objects it owns, digests
        it keeps, rows in another database (also through dependents here that go along)."""
        coll = self.coll(name)
        if self.policy.owned_objects(self.ref(name)) or coll.suppress_on_delete or self._suppressing.get(name):
            return True
        for child_ref, ref in self.policy.children(self.ref(name)):
            c_sys, c_name = CollectionRef.parse(child_ref)
            if c_sys != self.name:
                return True
            if ref.on_delete == "delete" and c_name not in (*above, name) and self._writes_outside(c_name,
                                                                                                  (*above, name)):
                return True
        return False

    # ---- a stopped run's batch, re-read by its next run (include/retention/intents.py) ----------------------------
    def reconcile_batch(self, collection_name: str, rule: Rule, intent: dict[str, Any], reread: dict[str, Any]
                        ) -> tuple[int, dict[str, Any]] | None:
        """Re-read the rows of a batch whose outcome was never written. A batch is one transaction: it committed
        or rolled back whole. Rolled back, its rows are all still there as the walk found them (the keys of the
        rows that still match, in its range or among its keys, have the intent's digest): 0. Otherwise it
        committed: the intent's count (written once its statements ran; announced earlier, less what is still
        there), with what it took along."""
        t = self.table(collection_name)
        pk = self.key_cols(collection_name, t)
        walk = reread.get("walk")
        if walk == "keys":
            keys = [tuple(k) if isinstance(k, list) else k for k in reread["keys"]]
            conds = [key_in(pk, keys)]
            if reread.get("column"):  # a nullify: the reference (any of its columns) still set
                cols = reread["column"] if isinstance(reread["column"], list) else [reread["column"]]
                conds.append(sa.or_(*[t.c[c].is_not(None) for c in cols]))
        elif walk in ("range", "blocks"):
            stage = next((s for s in rule.stages if s.action == intent["action"]), None)
            if stage is None:
                return None
            conds = [self.eligible(collection_name, rule, stage, reread["now"], t)]
            if walk == "blocks":
                ctid = sa.literal_column("ctid")
                conds += [ctid >= sa.cast(sa.literal(f"({int(reread['first'])},0)"), _TID),
                          ctid < sa.cast(sa.literal(f"({int(reread['end'])},0)"), _TID)]
            else:
                order = [t.c[c] for c in reread["order"]]
                conds += [*self._after(order, reread["after"]), *self._upto(order, tuple(reread["upto"]))]
        else:
            return None
        planned = int(intent["count"])
        with self.engine.connect() as conn:
            left = [key_of(r) for r in conn.execute(sa.select(*pk).where(*conds).order_by(*pk))]
        if left and intent["pk_digest"] in (self._pk_digest(left), self._pk_digest(sorted(left))):
            return 0, {"how": "reread", "committed": False,
                       "note": f"rolled back: the batch's {len(left)} rows are still there as its intent found them"}
        count = max(planned - len(left), 0)
        cascaded = reread.get("cascading")
        note = f"committed: re-read, {len(left)} of the batch's rows still match"
        if cascaded is None and intent["action"] == "delete":
            note += " (what it took along in this database is not re-counted; other systems have their own entries)"
        return count, {"how": "reread", "committed": True, "cascaded": cascaded or {}, "note": note}

    def _takes_along(self, name: str) -> bool:
        """Whether deleting this collection's rows involves anything else (dependents, objects, digests)."""
        coll = self.coll(name)
        children = self.policy.children(self.ref(name)) if name not in self._orphan_stage else []
        return bool(children or self.policy.owned_objects(self.ref(name))
                    or coll.suppress_on_delete or self._suppressing.get(name))

    def _child_counts(self, conn, name: str, keys: list[Any]) -> dict[Any, dict[str, int]]:
        """Direct dependents per parent key, counted before a delete takes them along."""
        out: dict[Any, dict[str, int]] = {}
        for child_ref, ref in self.policy.children(self.ref(name)):
            c_sys, c_name = CollectionRef.parse(child_ref)
            if c_sys != self.name or ref.on_delete != "delete":
                continue
            fks = self.source_cols(self.table(c_name), ref)
            owners: dict[Any, list[Any]] = {}
            for key, value in self._referenced(conn, name, ref, keys):
                owners.setdefault(value, []).append(key)
            values = list(owners)
            for i in range(0, len(values), 500):
                for *parent, n in conn.execute(sa.select(*fks, sa.func.count()).where(key_in(fks, values[i:i + 500]))
                                               .group_by(*fks)):
                    for key in owners.get(key_of(parent), []):
                        out.setdefault(key, {})[child_ref] = n
        self._other_child_counts(conn, name, keys, out)
        return out

    def _referenced(self, conn, name: str, ref: Any, keys: list[Any]) -> list[tuple[Any, Any]]:
        """(key, the value a child's ``ref`` columns hold for that row) for the rows of ``keys``: the key itself,
        or the row's referenced columns (one value, or a tuple for a reference of several columns; rows where any
        of them is NULL have no children)."""
        coll, t = self.coll(name), self.table(name)
        target = self.target_cols(name, ref, t)
        if [c.name for c in target] == coll.key_columns():
            return [(k, k) for k in keys]
        pk = self.key_cols(name, t)
        n = len(pk)
        rows = conn.execute(sa.select(*pk, *target).where(key_in(pk, keys)))
        return [(key_of(r[:n]), v) for r in rows if (v := value_of(r[n:])) is not None]

    def _delete_keys(self, conn, name: str, keys: list[Any], cascaded: dict[str, int],
                     guard: Any | None = None, suppress: list[str] | None = None) -> int:
        """Delete rows by key: dependents first (as the references say), then owned objects, then the rows.

        ``guard`` (the predicate that selected them) is repeated in every statement, so a row that stopped
        qualifying is neither deleted nor has its dependents or objects removed. ``suppress``: identity kinds
        whose digests ``before_delete`` keeps (default: those of the delete stage running on this collection),
        besides the collection's deprecated ``suppress_on_delete``. Returns the rows deleted.
        """
        t, coll = self.table(name), self.coll(name)
        pk = self.key_cols(name, t)
        if guard is not None:
            keys = [key_of(r) for r in conn.execute(sa.select(*pk).where(key_in(pk, keys), guard).with_for_update())]
        # children in other databases first (their own batches and ledger entries); parents they hold stay
        keys = self._delete_other_children(conn, name, keys, cascaded) if keys else keys
        if not keys:
            return 0
        orphans = guard is not None and name in self._orphan_stage
        for child_ref, ref in self.policy.children(self.ref(name)) if not orphans else []:
            c_sys, c_name = CollectionRef.parse(child_ref)
            if c_sys != self.name:  # done above, through the other system's store
                continue
            child = self.table(c_name)
            parent_vals = sorted({v for _, v in self._referenced(conn, name, ref, keys)})
            mine = key_in(self.source_cols(child, ref), parent_vals)  # all of a reference's columns, pairwise
            if ref.on_delete == "nullify":
                n = conn.execute(child.update().where(mine).values(_cleared(ref))).rowcount
                cascaded[f"{child_ref}:nullified"] = cascaded.get(f"{child_ref}:nullified", 0) + n
            else:
                child_pk = self.key_cols(c_name, child)
                child_keys = [key_of(r) for r in conn.execute(sa.select(*child_pk).where(mine).with_for_update())]
                if child_keys:
                    n = self._delete_keys(conn, c_name, child_keys, cascaded)
                    cascaded[child_ref] = cascaded.get(child_ref, 0) + n
        extra = suppress if suppress is not None else self._suppressing.get(name, [])
        kinds = list(coll.suppress_on_delete) + [k for k in extra if k not in coll.suppress_on_delete]
        if self.before_delete and (self.policy.owned_objects(self.ref(name)) or kinds):
            cols = set(coll.key_columns()) | {c for r in coll.references for c in _template_cols(r, coll)}
            cols |= {c for kind, c in coll.identity_columns() if kind in kinds}
            rows = [dict(r._mapping) for r in conn.execute(sa.select(*(t.c[c] for c in cols))
                                                           .where(key_in(pk, keys)))]
            # the kinds go along only when a rule adds some (a callback of two arguments keeps working)
            told = self.before_delete(self.ref(name), rows, suppress=kinds) if len(kinds) > len(
                coll.suppress_on_delete) else self.before_delete(self.ref(name), rows)
            for k, v in told.items():
                cascaded[k] = cascaded.get(k, 0) + v
        # an orphan rule's rows are deleted only if still unreferenced in this very statement
        return conn.execute(t.delete().where(key_in(pk, keys), *([guard] if orphans else []))).rowcount

    def close(self) -> None:
        self.engine.dispose()


def _reflect_tables(engine: sa.Engine, names: list[str]) -> dict[str, sa.Table]:
    """The tables of ``names`` that the catalogue lists under exactly that name, with what the store uses of them:
    columns with their types and nullability, the primary key, indexes and unique constraints (``walk_order``).
    ``MetaData.reflect`` also reads foreign keys (and reflects every table they refer to), comments, check
    constraints and table options, each a catalogue query of its own that the store never uses: here one query
    per kind of information for all the tables where the dialect batches them (PostgreSQL), half as many as
    ``reflect``'s. Views and other spellings are not returned (``SqlStore.table`` reflects those on its own)."""
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        columns = inspector.get_multi_columns(filter_names=names)
        found = [table for _schema, table in columns if table in names]
        if not found:
            return {}
        pks = inspector.get_multi_pk_constraint(filter_names=found)
        indexes = inspector.get_multi_indexes(filter_names=found)
        uniques = inspector.get_multi_unique_constraints(filter_names=found)
    out: dict[str, sa.Table] = {}
    for key, cols in columns.items():
        table_name = key[1]
        if table_name not in names:
            continue
        t = sa.Table(table_name, sa.MetaData(), *(sa.Column(c["name"], c["type"], nullable=c["nullable"])
                                                   for c in cols))
        pk = pks.get(key) or {}
        if pk.get("constrained_columns"):
            t.append_constraint(sa.PrimaryKeyConstraint(*pk["constrained_columns"], name=pk.get("name")))
        for ix in indexes.get(key) or []:  # on columns only: an expression index leads with no column
            if ix["column_names"] and all(c is not None and c in t.c for c in ix["column_names"]):
                # a partial unique index (``... WHERE``) says nothing of the rows outside it (``_unique_on``)
                partial = any(k.endswith("_where") and v is not None
                              for k, v in (ix.get("dialect_options") or {}).items())
                sa.Index(ix["name"], *(t.c[c] for c in ix["column_names"]), unique=bool(ix.get("unique")),
                         info={"partial": partial})
        for uq in uniques.get(key) or []:
            if uq["column_names"] and all(c in t.c for c in uq["column_names"]):
                t.append_constraint(sa.UniqueConstraint(*uq["column_names"], name=uq.get("name")))
        out[table_name] = t
    return out


def _unique_on(t: sa.Table, cols: list[str], declared_key: list[str]) -> bool:
    """Whether no two rows of ``t`` can hold the same values in ``cols`` (none of them NULL): ``cols`` cover the
    declared primary key, or the primary key, a unique constraint or a unique index (not a partial one) the
    database reports."""
    wanted = set(cols)
    sets = [set(declared_key), {c.name for c in t.primary_key.columns}]
    sets += [{c.name for c in uq.columns} for uq in t.constraints if isinstance(uq, sa.UniqueConstraint)]
    for ix in t.indexes:
        partial = ix.info.get("partial", False) or any(
            k.endswith("_where") and v is not None for k, v in ix.dialect_kwargs.items())
        if ix.unique and not partial and all(isinstance(e, sa.Column) for e in ix.expressions):
            sets.append({c.name for c in ix.columns})
    return any(s and s <= wanted for s in sets)


def _range_reread(order: list[sa.Column], after: tuple | None, upto: tuple, now: dt.datetime) -> dict[str, Any]:
    """How a batch of a walk in ``order`` is found again: the eligible rows (at ``now``) in (after, upto]."""
    return {"walk": "range", "order": [c.name for c in order], "after": after, "upto": upto, "now": now}


def _reads_other_tables(where: Any) -> bool:
    """Does ``where`` read rows of other tables (a subquery: ``EXISTS``, ``IN (SELECT ...)``, a scalar select)?
    MariaDB's locking read (``_pick_range``) locks the rows it scans of the table itself, not those a subquery reads:
    another session can change them between the read and the act, and the act would then take other rows than the
    ones the read counted and digested (the same number of them, one row in, another out)."""
    from sqlalchemy.sql import visitors
    from sqlalchemy.sql.expression import Exists, ScalarSelect, Select

    return any(isinstance(e, (Exists, ScalarSelect, Select)) for e in visitors.iterate(where))


def _flush_after_failure(deferred: DeferredOutcomes) -> None:
    """Write the waiting outcome while an exception propagates; if the ledger fails too, the intent stays open
    (``verify`` reports it, ``reconcile`` settles it) and the first exception is the one raised."""
    try:
        deferred.flush()
    except Exception as exc:  # noqa: BLE001 - the original exception goes on
        log.warning("could not record the outcome of the last committed batch (%s); its intent stays open",
                    type(exc).__name__)


def _keys_text(key: Any) -> sa.ColumnElement[str]:
    """PostgreSQL: the text ``_pk_digest`` hashes, from a batch's keys in the database: ``array_to_string(array_agg(k
    ORDER BY k), E'\\n')`` with ``k`` the key (text ``COLLATE "C"``: ``_code_point_order``), the same text as
    ``string_agg(k::text, E'\\n' ORDER BY k)`` (a key's text is its output function's either way; neither can be
    NULL). The keys are sorted as themselves, PostgreSQL's one-datum sort of an aggregate ordered by its own argument,
    and turned into text once sorted; ``string_agg`` sorted (text, key) pairs: at 50,000 keys that sort took as long
    as the ``DELETE`` itself."""
    from sqlalchemy.dialects.postgresql import aggregate_order_by

    k = _code_point_order(key)
    return sa.func.array_to_string(sa.func.array_agg(aggregate_order_by(k, k)), sa.literal("\n"), type_=sa.Text)


def _code_point_order(key: Any) -> Any:
    """A key as the digest's aggregate (``_keys_text``) orders it: integers as they are, text by code point."""
    return key if isinstance(key.type, sa.Integer) else key.collate("C")


def _any(col: Any, values: list[Any], type_: Any = None) -> sa.ColumnElement[bool]:
    """PostgreSQL: ``col = ANY(:values)``, one array parameter however many values (no statement text that grows
    with the batch, no per-value bind for SQLAlchemy to render)."""
    from sqlalchemy.dialects.postgresql import ARRAY

    return col == sa.any_(sa.bindparam(None, list(values), type_=ARRAY(type_ if type_ is not None else col.type)))


class _TID(sa.types.UserDefinedType):
    """PostgreSQL's ``tid`` (a row's block and offset), for block-range batches."""

    cache_ok = True

    def get_col_spec(self, **kw):
        return "tid"


_TID = _TID()


class _OrderedLimit(SyntaxExtension, sa.sql.ClauseElement):
    """``ORDER BY <columns> LIMIT n`` after a MariaDB ``DELETE``'s WHERE clause (SQLAlchemy has only the LIMIT)."""

    __visit_name__ = "retention_ordered_limit"
    inherit_cache = False  # n varies per batch; a statement is compiled once per batch anyway

    def __init__(self, order: list[sa.Column], n: int):
        self.order, self.n = list(order), int(n)

    def apply_to_delete(self, delete_stmt) -> None:
        delete_stmt.apply_syntax_extension_point(self.append_replacing_same_type, "post_criteria")


@compiles(_OrderedLimit)
def _compile_ordered_limit(element: _OrderedLimit, compiler, **kw) -> str:
    return f"ORDER BY {', '.join(compiler.process(c, **kw) for c in element.order)} LIMIT {element.n:d}"


class _Explain(sa.sql.expression.Executable, sa.sql.ClauseElement):
    """``EXPLAIN <select>`` (MariaDB), its parameters bound as the select's own."""

    __visit_name__ = "retention_explain"
    inherit_cache = False

    def __init__(self, stmt: sa.Select):
        self.stmt = stmt


@compiles(_Explain)
def _compile_explain(element: _Explain, compiler, **kw) -> str:
    return f"EXPLAIN {compiler.process(element.stmt, **kw)}"


class _BatchSizer:
    """Rows per batch: ``batch_size`` first, then what takes about ``BATCH_SECONDS`` at the rate just measured
    (at most 8x more or 4x fewer than the last batch), never more than ``MAX_BATCH``."""

    def __init__(self, first: int, floor: int = MIN_BATCH):
        self.size = max(1, min(first, MAX_BATCH))
        self.floor = min(self.size, floor)

    def took(self, rows: int, seconds: float) -> None:
        if rows < self.size // 2:  # a short batch (the end of the walk) says nothing about the rate
            return
        wanted = int(self.size * BATCH_SECONDS / max(seconds, 1e-4))
        self.size = max(self.floor, min(wanted, self.size * 8, MAX_BATCH), self.size // 4)


def _cleared(ref: Reference) -> dict[str, None]:
    """What ``on_delete: nullify`` writes: NULL in every column of the reference."""
    return dict.fromkeys(ref.source_columns())


def _template_cols(ref, coll: Collection) -> list[str]:
    cols = [ref.column] if ref.column else []
    if ref.key_template:
        cols += [c for c in keytemplate.fields(ref.key_template) if c in coll.columns]
    return cols
