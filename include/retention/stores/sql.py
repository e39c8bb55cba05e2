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

The store composes collaborators, each a class of its own with the store as its one reference: the batch walks
(``sql_walks``), predicates (``sql_predicates``), acting statements (``sql_acts``), cross-database cascades
(``sql_cascade``), the orphan marker (``sql_orphans``), subject requests (``sql_subjects``, ``sql_access``).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa

from include.retention.connections import make_engine
from include.retention.errors import SchemaMismatch
from include.retention.policy import Collection, Policy, Reference, Rule, Stage, cutoff
from include.retention.stores.base import (
    Claims,
    DeferredOutcomes,
    Recorder,
    RulePlan,
    StageResult,
    Store,
    Subject,
    SubjectOutcome,
)
from include.retention.stores.sql_access import SqlAccess
from include.retention.stores.sql_acts import SqlActs
from include.retention.stores.sql_cascade import SqlCascade
from include.retention.stores.sql_keys import (
    after,
    cols_in,
    has_row_values,
    key_in,
    key_of,
    key_text,
    keys_text_in_db,
    upto,
)
from include.retention.stores.sql_orphans import SqlOrphans
from include.retention.stores.sql_predicates import SqlPredicates, bind_time, start_expr
from include.retention.stores.sql_schema import (
    check_references,
    check_start,
    key_problem,
    reflect_tables,
    serialize_sqlite_writers,
)
from include.retention.stores.sql_subjects import SqlSubjects
from include.retention.stores.sql_walks import MIN_BATCH, BatchSizer, choose_walk, in_blocks
from include.retention.values import CollectionRef

log = logging.getLogger(__name__)

# before_delete(collection_ref, rows): called inside the batch, before rows go, for what lives
# elsewhere (objects in S3, rows in another database). Rows carry the primary key and the
# columns named by the collection's references (and the identity columns to suppress: when a rule's or
# stage's ``suppress`` adds kinds, they are passed as ``suppress=[kinds]``).
BeforeDelete = Callable[..., dict[str, int]]


__all__ = ["SqlStore", "make_engine", "serialize_sqlite_writers"]


class SqlStore(Store):
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
        self._tables: dict[str, sa.Table] = {}
        self._server_utf8: bool | None = None  # PostgreSQL's server_encoding is UTF8 (``digest_in_db``)
        self._checked: set[str] = set()
        # collaborators, each with its own part of the store's work
        self.predicates = SqlPredicates(self)
        self.acts = SqlActs(self)
        self.cascade = SqlCascade(self)
        self.orphans = SqlOrphans(self)
        self.access = SqlAccess(self)
        self.subjects = SqlSubjects(self)

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
        does), and only what the store uses (``reflect_tables``); a table the catalogue lists under another
        spelling (case-folding servers) or a view is then fully reflected on its own, as before.
        """
        if name not in self._tables:
            pending = {other: coll.table for other, coll in self.policy.systems[self.name].collections.items()
                       if other not in self._tables}
            together = reflect_tables(self.engine, sorted(set(pending.values())))
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
            problem = check_start(rule, t, f"{base}.rules[{r}].start")
            if problem:
                raise PolicyError(f"{self.policy.source or '<policy>'}: {problem}")
        problem = key_problem(self, collection_name) or check_references(self, collection_name)
        if problem:
            raise PolicyError(f"{self.policy.source or '<policy>'}: {problem}")
        self.subjects.check_index(collection_name)  # lookup: indexed (ADR 0022)
        self._checked.add(collection_name)
        for child_ref, _ref in self.policy.children(self.ref(collection_name)):
            c_sys, c_name = CollectionRef.parse(child_ref)
            if c_sys != self.name and self.stores is not None:  # its nullify columns, as reflected there
                self.stores(c_sys).check(c_name)

    def plan(self, collection_name: str, rule: Rule, now: dt.datetime, *, for_act: bool = False) -> RulePlan:
        t = self.table(collection_name)
        scope = sa.and_(*self.predicates.base(collection_name, rule, t, now)) if rule.when else sa.true()
        first = rule.stages[0]
        start = start_expr(rule, t)
        past_first = start < bind_time(start, cutoff(now, first, rule.start))
        cols = [
            sa.func.count().label("total"),
            sa.func.sum(sa.case((scope, 1), else_=0)).label("in_scope"),
        ]
        for stage in rule.stages:
            cols.append(sa.func.sum(sa.case((self.eligible(collection_name, rule, stage, now, t), 1), else_=0))
                        .label(stage.action))
        delete_stage = next((s for s in rule.stages if s.action == "delete"), None)
        held_expr = sa.and_(scope, self.predicates.held_in_rule(collection_name, rule, t, now, past_first))
        cols.append(sa.func.sum(sa.case((held_expr, 1), else_=0)).label("held"))
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(*cols).select_from(t)).one()._mapping
            cascaded = {}
            eligible = {s.action: int(row[s.action] or 0) for s in rule.stages}
            held = int(row["held"] or 0)
            if delete_stage is not None and row[delete_stage.action]:
                cascaded = self._cascade_counts(conn, collection_name, rule, delete_stage, now)
                # parents a held row of another database keeps: held, as with held dependents in this one
                kept = self.cascade.held_elsewhere_count(conn, collection_name,
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

    def count_kept(self, collection_name: str, rule: Rule, now: dt.datetime) -> int:
        """The rows of the rule's scope still in the table after it acted, neither held (as the plan counts holds)
        nor acted on (locked / anonymized in that stage's band; deleted rows are gone): read from the table, so a
        concurrent run's work is not counted as kept."""
        t = self.table(collection_name)
        scope = sa.and_(*self.predicates.base(collection_name, rule, t, now)) if rule.when else sa.true()
        start = start_expr(rule, t)
        past_first = start < bind_time(start, cutoff(now, rule.stages[0], rule.start))
        held = sa.func.coalesce(self.predicates.held_in_rule(collection_name, rule, t, now, past_first), sa.false())
        acted = [sa.and_(*self.predicates.band(collection_name, rule, s, now, t), sa.not_(sa.and_(*not_done)))
                 for s in rule.stages if (not_done := self.predicates.not_done(collection_name, s, t))]
        where = [scope, sa.not_(held)]
        if acted:
            where.append(sa.not_(sa.func.coalesce(sa.or_(*acted), sa.false())))
        delete_stage = next((s for s in rule.stages if s.action == "delete"), None)
        with self.engine.connect() as conn:
            n = int(conn.execute(sa.select(sa.func.count()).select_from(t).where(*where)).scalar() or 0)
            if delete_stage is not None:  # parents a held row of another database keeps: held, not kept
                n -= self.cascade.held_elsewhere_count(conn, collection_name,
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
        out.update(self.cascade.other_cascade_counts(conn, name, going))
        return out

    def apply_stage(self, collection_name: str, rule: Rule, stage: Stage, now: dt.datetime, batch_size: int,
                    reason: str, record: Recorder) -> StageResult:
        # A computed start has no column an index could walk (start.column is None): batches walk the key.
        # The stage's suppression kinds reach ``SqlActs.delete_keys`` through ``acts.suppressing`` while it runs.
        kinds = rule.suppress_kinds(stage)
        if kinds:
            self.acts.suppressing[collection_name] = kinds
        if rule.start.orphaned is not None and stage.action == "delete":
            self.acts.orphan_stage.add(collection_name)
        try:
            return self.act_in_batches(
                collection_name, lambda t: self.eligible(collection_name, rule, stage, now, t),
                stage.action, batch_size, reason, record, mask=stage.mask, now=now, walk=rule.start.column,
            )
        finally:
            self.acts.suppressing.pop(collection_name, None)
            self.acts.orphan_stage.discard(collection_name)

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

    def keys_after(self, order: list[Any], last: tuple | None) -> list[Any]:
        """Rows strictly after ``last`` in walk order (a range an index on ``order[0]`` serves): ``sql_keys.after``."""
        return after(order, last, self._row_values(order))

    def keys_upto(self, order: list[Any], bound: tuple) -> list[Any]:
        return upto(order, bound, self._row_values(order))

    def act_in_batches(self, collection_name: str, predicate: Callable[[sa.Table], Any], action: str,
                       batch_size: int, reason: str, record: Recorder, *, mask: dict | None = None,
                       now: dt.datetime | None = None, walk: str | None = None) -> StageResult:
        """Act on the rows matching ``predicate`` in bounded batches, one transaction and one ledger intent +
        outcome each, on the walk ``choose_walk`` picks (``include.retention.stores.sql_walks``)."""
        self.cascade.recording = record  # cascades into other systems record through it directly
        # each batch's outcome shares the ledger transaction of the next batch's intent (n + 1 writes, not 2n)
        deferred = DeferredOutcomes(record)
        try:
            walker = choose_walk(self, collection_name, predicate, action, reason, now or dt.datetime.now(dt.UTC),
                                 mask or {}, walk)
            # Rows owning S3 objects: a batch's objects cost one listing and one DeleteObjects per 1,000 whatever the
            # batch's size, so such batches keep at least batch_size rows (time-based shrinking would multiply calls).
            owns = bool(self.policy.owned_objects(self.ref(collection_name)))
            result = walker.run(predicate, BatchSizer(batch_size, floor=batch_size if owns else MIN_BATCH), deferred)
        except BaseException:
            # the last committed batch's outcome is written whatever failed after it
            _flush_after_failure(deferred)
            raise
        finally:
            self.cascade.recording = None
        deferred.flush()
        return result

    def returned_digest(self, conn, stmt, cols: list[sa.Column]) -> tuple[int, str]:
        """Run ``stmt ... RETURNING pk``: (rows, ``pk_digest`` of their keys). For integer and text keys on PostgreSQL
        (``digest_in_db``) the statement runs in a CTE whose keys the database sorts and joins (``keys_text_in_db``: the
        very text ``pk_digest`` hashes), so no key crosses the wire; otherwise the keys come back."""
        stmt = stmt.returning(*cols)
        pk = cols[0]
        if conn.dialect.name == "postgresql" and len(cols) == 1 and self.digest_in_db(pk):
            acted = stmt.cte("acted")
            n, text = conn.execute(sa.select(sa.func.count(), keys_text_in_db(acted.c[pk.name]))).one()
            return int(n), self.digest_text(text or "")
        keys = sorted(key_of(r) for r in conn.execute(stmt))
        return len(keys), self.pk_digest(keys)

    def digest_in_db(self, col: sa.Column) -> bool:
        """PostgreSQL can build the text ``pk_digest`` hashes for keys of this column, in ``sorted()`` order:
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

    def digest_text(self, text: str) -> str:
        from include.retention.masking import keyed_digest

        return keyed_digest(self.mask_key, text)

    def pk_digest(self, keys: list[Any]) -> str:
        from include.retention.masking import keyed_digest

        return keyed_digest(self.mask_key, key_text(keys))

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
                conds.append(in_blocks(reread["first"], reread["end"]))
            else:
                order = [t.c[c] for c in reread["order"]]
                conds += [*self.keys_after(order, reread["after"]), *self.keys_upto(order, tuple(reread["upto"]))]
        else:
            return None
        planned = int(intent["count"])
        with self.engine.connect() as conn:
            left = [key_of(r) for r in conn.execute(sa.select(*pk).where(*conds).order_by(*pk))]
        if left and intent["pk_digest"] in (self.pk_digest(left), self.pk_digest(sorted(left))):
            return 0, {"how": "reread", "committed": False,
                       "note": f"rolled back: the batch's {len(left)} rows are still there as its intent found them"}
        count = max(planned - len(left), 0)
        cascaded = reread.get("cascading")
        note = f"committed: re-read, {len(left)} of the batch's rows still match"
        if cascaded is None and intent["action"] == "delete":
            note += " (what it took along in this database is not re-counted; other systems have their own entries)"
        return count, {"how": "reread", "committed": True, "cascaded": cascaded or {}, "note": note}

    def close(self) -> None:
        self.engine.dispose()

    def key_cols(self, name: str, t: sa.Table | None = None) -> list[sa.Column]:
        """The primary key's columns of ``t`` (default: the collection's table): one, or several."""
        t = t if t is not None else self.table(name)
        return [t.c[c] for c in self.coll(name).key_columns()]

    # ---- predicates (``SqlPredicates``) ----------------------------------------------------------------------
    def eligible(self, name: str, rule: Rule, stage: Stage, now: dt.datetime, t: sa.Table | None = None) -> Any:
        """The full predicate of rows this stage acts on now."""
        return self.predicates.eligible(name, rule, stage, now, t)

    def held(self, name: str, t: sa.Table | None = None, now: dt.datetime | None = None
             ) -> sa.ColumnElement[bool] | None:
        """Legal hold of a row (NULL-safe: an unknown flag is not a hold)."""
        return self.predicates.held(name, t, now)

    start_expr = staticmethod(start_expr)

    # ---- the orphan marker, objects rows own (``SqlOrphans``) ------------------------------------------------
    def prepare_rule(self, collection_name: str, rule: Rule, now: dt.datetime, batch_size: int,
                     record: Recorder) -> dict[str, int]:
        return self.orphans.prepare_rule(collection_name, rule, now, batch_size, record)

    def referenced_keys(self, collection_name: str, reference: Reference, keys: list[str]) -> set[str]:
        return self.orphans.referenced_keys(collection_name, reference, keys)

    # ---- references between rows (``SqlAccess``, ``SqlCascade``) ---------------------------------------------
    def owned(self, collection_name: str, claims: Claims, subjects: list[Subject]
              ) -> tuple[Claims, dict[Any, set[str]]]:
        return self.access.owned(collection_name, claims, subjects)

    def column_values(self, collection_name: str, keys: list[Any], columns: list[str]) -> dict[Any, tuple]:
        return self.access.column_values(collection_name, keys, columns)

    def children(self, collection_name: str, reference: Any, parent_values: list[tuple]) -> dict[Any, tuple]:
        return self.access.children(collection_name, reference, parent_values)

    def held_dependents(self, collection_name: str, column: str | list[str], values: list[Any]) -> set[Any]:
        return self.cascade.held_dependents(collection_name, column, values)

    def delete_dependents(self, collection_name: str, reference: Any, values: list[Any], *,
                          record: Recorder | None = None, parent: str = "") -> tuple[dict[str, int], set[Any]]:
        return self.cascade.delete_dependents(collection_name, reference, values, record=record, parent=parent)

    def count_dependents(self, collection_name: str, column: str | list[str], values: list[Any]) -> int:
        return self.cascade.count_dependents(collection_name, column, values)

    def dependents_of(self, collection_name: str, column: str | list[str], values: list[Any]) -> dict[Any, int]:
        return self.cascade.dependents_of(collection_name, column, values)

    def count_rows(self, collection_name: str) -> int:
        return self.cascade.count_rows(collection_name)

    # ---- subjects (``SqlSubjects``) --------------------------------------------------------------------------
    def scan(self, collection_name: str) -> Iterator[list[tuple[Any, dict[str, set[str]]]]]:
        return self.subjects.scan(collection_name)

    def scan_owned(self, collection_name: str) -> Iterator[list[tuple[Any, dict[str, set[str]]]]]:
        return self.subjects.scan_owned(collection_name)

    def candidates(self, collection_name: str, subjects: list[Subject], *, owned_only: bool = False
                   ) -> Iterator[list[tuple[Any, dict[str, set[str]]]]]:
        return self.subjects.candidates(collection_name, subjects, owned_only=owned_only)

    def indexed_fields(self, collection_name: str) -> list[tuple[str, str]]:
        return self.subjects.indexed_fields(collection_name)

    def index_candidates(self, collection_name: str, digests: dict[str, list[str]], *, undigested: bool = False
                         ) -> Iterator[list[tuple[Any, dict[str, set[str]]]]]:
        return self.subjects.index_candidates(collection_name, digests, undigested=undigested)

    def backfill_index(self, collection_name: str) -> int:
        return self.subjects.backfill_index(collection_name)

    def read_columns(self, collection_name: str) -> list[str]:
        return list(self.coll(collection_name).columns)

    def read(self, collection_name: str, claims: Claims) -> Iterator[list[dict[str, Any]]]:
        return self.subjects.read(collection_name, claims)

    def erase(self, collection_name: str, claims: Claims, subjects: list[Subject], *, dry_run: bool
              ) -> SubjectOutcome:
        return self.subjects.erase(collection_name, claims, subjects, dry_run=dry_run)

    def restrict(self, collection_name: str, claims: Claims, subjects: list[Subject], *, dry_run: bool
                 ) -> SubjectOutcome:
        return self.subjects.restrict(collection_name, claims, subjects, dry_run=dry_run)

    def remaining(self, collection_name: str, subjects: list[Subject], mode: str) -> dict[str, int]:
        return self.subjects.remaining(collection_name, subjects, mode)

    def left_of(self, collection_name: str, claims: Claims, subjects: list[Subject], mode: str) -> dict[str, int]:
        return self.subjects.left_of(collection_name, claims, subjects, mode)

    def rectify(self, collection_name: str, claims: Claims, subjects: list[Subject], new_values: dict[str, str],
                *, dry_run: bool) -> SubjectOutcome:
        return self.subjects.rectify(collection_name, claims, subjects, new_values, dry_run=dry_run)

    def rectify_all(self, claims: dict[str, Claims], subjects: list[Subject], new_values: dict[str, str], *,
                    dry_run: bool) -> SubjectOutcome:
        return self.subjects.rectify_all(claims, subjects, new_values, dry_run=dry_run)

    def rectify_problems(self, collection_name: str, claims: Claims, subjects: list[Subject],
                         new_values: dict[str, str]) -> list[str]:
        return self.subjects.rectify_problems(collection_name, claims, subjects, new_values)

    def database(self) -> str:
        url = self.engine.url
        if url.get_backend_name() != "sqlite":
            return url.render_as_string(hide_password=True)
        if not url.database or url.database == ":memory:" or url.query.get("mode") == "memory":
            return f"sqlite-memory:{id(self.engine)}"
        return "sqlite:" + os.path.realpath(url.database)  # two engines on one file: one writer, one transaction

    def begin_correction(self) -> sa.Connection:
        conn = self.engine.connect()
        try:
            conn.begin()
        except BaseException:
            conn.close()
            raise
        return conn

    def rectify_in(self, conn: sa.Connection, claims: dict[str, Claims], subjects: list[Subject],
                   new_values: dict[str, str], *, dry_run: bool) -> SubjectOutcome:
        return self.subjects.rectify_in(conn, claims, subjects, new_values, dry_run=dry_run)

    def withdraw(self, collection_name: str, claims: Claims, subjects: list[Subject], consents: list[str] | None,
                 *, dry_run: bool) -> SubjectOutcome:
        return self.subjects.withdraw(collection_name, claims, subjects, consents, dry_run=dry_run)

def _flush_after_failure(deferred: DeferredOutcomes) -> None:
    """Write the waiting outcome while an exception propagates; if the ledger fails too, the intent stays open
    (``verify`` reports it, ``reconcile`` settles it) and the first exception is the one raised."""
    try:
        deferred.flush()
    except Exception as exc:  # noqa: BLE001 - the original exception goes on
        log.warning("could not record the outcome of the last committed batch (%s); its intent stays open",
                    type(exc).__name__)
