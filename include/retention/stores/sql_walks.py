"""How a SQL stage walks its table: one class per walk, chosen by ``choose_walk`` (ADR 0016, ADR 0025).

Every walk is linear in the table (no batch re-reads what an earlier one passed) and acts on one bounded batch per
transaction, with the full predicate repeated so that a row that changed in between is left alone:

- ``BlockWalk`` (PostgreSQL, when one statement does the batch): block ranges of the heap, ``DELETE``/``UPDATE ...
  WHERE ctid >= (b, 0) AND ctid < (b + k, 0) AND <predicate> RETURNING pk`` (a TID range scan, in physical order
  like the raw statement's scan, no sort). The blocks that existed when the stage began are walked; a row a
  concurrent ``UPDATE`` moves behind the walk meanwhile is acted on by the next run.
- ``IndexWalk`` (PostgreSQL, a table in start-column order): the start column's index, one statement per batch.
- ``RangeWalk`` (MariaDB, integer keys, one statement per batch): a locking read picks the range, the act follows.
- ``OrderWalk`` (MariaDB, a delete that takes nothing along): ``DELETE ... ORDER BY ... LIMIT ... RETURNING``.
- ``KeysetWalk`` (everything else): select the next keys on ``walk_order``, then act on exactly that range.

Sizes: the first batch covers ``batch_size`` rows, the next ones about ``BATCH_SECONDS`` each at the rate just
measured (``BatchSizer``), never more than ``MAX_BATCH`` rows. A walk uses the store only through its public
members (tables, keys, the acting statements, digests).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.base import SyntaxExtension

from include.retention.errors import RetentionError
from include.retention.masking import STRATEGIES
from include.retention.stores.base import Recorder, StageResult, begin_record, end_record, flush_record
from include.retention.stores.sql_keys import key_of, keys_text_in_db

if TYPE_CHECKING:
    from include.retention.stores.sql_core import SqlCore

# A batch is one transaction: at most MAX_BATCH rows (the policy's own ceiling for batch_size), sized to take
# about BATCH_SECONDS once the first batch has measured the rate, and not below MIN_BATCH (or batch_size).
MAX_BATCH = 100_000
MIN_BATCH = 100
BATCH_SECONDS = 0.5
# A block-range batch (PostgreSQL) spans the blocks holding about ``size`` matching rows at the density seen so
# far, but never more than SCAN_FACTOR x ``size`` rows of the table: it changes at most that many.
SCAN_FACTOR = 4
CORRELATED = 0.9  # |pg_stats.correlation| from which the start column's index order is the heap's order


class BatchSizer:
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


@dataclass
class Batch:
    """What one batch did, inside its transaction: the rows it changed, their digest, the ledger intent written
    before the commit, and what the walk needs next (``done``, ``covered`` rows for the sizer)."""

    changed: int
    digest: str
    intent: Any
    done: bool
    covered: int
    acted: bool  # the batch has an outcome to record (else the waiting outcome is written on its own)
    cascaded: dict[str, int] = field(default_factory=dict)


class Walk:
    """One stage's walk over a table: ``run`` opens one transaction per batch, ``next_batch`` acts on the next
    batch in it (None: nothing left)."""

    def __init__(self, store: SqlCore, name: str, order: list[sa.Column], action: str, reason: str,
                 now: dt.datetime, mask: dict):
        self.store, self.name, self.order = store, name, order
        self.action, self.reason, self.now, self.mask = action, reason, now, mask
        self.t = store.table(name)
        self.last: tuple | None = None  # the walk's position: the last row of the previous batch

    def run(self, predicate: Callable[[sa.Table], Any], sizer: BatchSizer, record: Recorder) -> StageResult:
        result = StageResult(action=self.action)
        while True:
            where = predicate(self.t)
            size = sizer.size
            started = time.perf_counter()
            with self.store.engine.begin() as conn:
                batch = self.next_batch(conn, where, size, record)
            if batch is None:
                break
            sizer.took(batch.covered, time.perf_counter() - started)
            if batch.acted:
                result.changed += batch.changed
                result.batches += 1
                for k, v in batch.cascaded.items():
                    result.cascaded[k] = result.cascaded.get(k, 0) + v
                end_record(record, batch.intent, self.action, batch.changed, batch.digest,
                           {"batch": result.batches, "cascaded": batch.cascaded})
            else:  # no intent of this batch to share the waiting outcome's transaction with: write it now
                flush_record(record)
            if batch.done:
                break
        return result

    def next_batch(self, conn, where: Any, size: int, record: Recorder) -> Batch | None:  # pragma: no cover
        raise NotImplementedError

    def reread(self, bound: tuple) -> dict[str, Any]:
        """How this batch is found again: the eligible rows (at ``now``) in (last, bound] of the walk."""
        return range_reread(self.order, self.last, bound, self.now)

    def in_range(self, bound: Any) -> list[Any]:
        """The walk's rows in (last, bound]."""
        return [*self.store.keys_after(self.order, self.last), *self.store.keys_upto(self.order, bound)]


class BlockWalk(Walk):
    """PostgreSQL: heap block ranges, one ``DELETE``/``UPDATE ... RETURNING`` per batch; the keys stay in the
    database (their digest is aggregated there)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        with self.store.engine.connect() as conn:
            blocks, per_block = conn.execute(sa.text(
                "SELECT pg_relation_size(c.oid) / current_setting('block_size')::int, "
                "CASE WHEN c.relpages > 0 AND c.reltuples > 0 THEN c.reltuples / c.relpages END "
                "FROM pg_class c WHERE c.oid = CAST(:name AS regclass)"), {"name": self.t.name}).one()
        self.blocks = blocks
        # an unanalysed table: assume full pages of narrow rows (small ranges, the sizer widens them)
        self.per_block = float(per_block or 200)
        self.density = self.per_block  # matching rows per block: all of them until a batch has measured it
        self.block = 0

    def next_batch(self, conn, where: Any, size: int, record: Recorder) -> Batch | None:
        if self.block >= self.blocks:
            return None
        first = self.block
        # about ``size`` matching rows at the density seen so far, at most 4x ``size`` rows scanned
        span = max(1, int(min(size / self.density, SCAN_FACTOR * size / self.per_block)))
        end = min(self.blocks, first + span)
        changed, digest = self.act(conn, where, first, end)
        self.density = max(changed / (end - first), self.per_block / 100, 1e-3)
        self.block = end
        intent = None
        if changed:  # before the commit, as below: the statement has run, the batch is not yet durable
            intent = begin_record(record, self.action, changed, digest,
                                  {"walk": "blocks", "first": first, "end": end, "now": self.now})
        return Batch(changed, digest, intent, done=end >= self.blocks,
                     covered=size if changed >= size // 2 else 0, acted=bool(changed))

    def act(self, conn, where: Any, first: int, end: int) -> tuple[int, str]:
        """Act on the rows of heap blocks [first, end) that match ``where``; how many, and their ``pk_digest``
        (computed from the keys the statement returns, aggregated in the database)."""
        stmt = self.store.acts.one_statement(self.name, self.t, self.action, [in_blocks(first, end), where],
                                             self.reason, self.now, self.mask)
        return self.store.returned_digest(conn, stmt, self.store.key_cols(self.name, self.t))


class IndexWalk(Walk):
    """PostgreSQL, a table in start-column order, integer or text keys (``SqlStore.digest_in_db``): the index walk
    in one statement per batch."""

    def next_batch(self, conn, where: Any, size: int, record: Recorder) -> Batch | None:
        picked, bound, changed, digest = self.act(conn, where, size)
        if not picked:
            return None
        reread = self.reread(bound)
        self.last = bound
        intent = None
        if changed:  # before the commit: the statement has run, the batch is not yet durable
            intent = begin_record(record, self.action, changed, digest, reread)
        return Batch(changed, digest, intent, done=picked < size, covered=picked, acted=bool(changed))

    def act(self, conn, where: Any, size: int) -> tuple[int, tuple | None, int, str]:
        """``WITH picked AS (SELECT start, pk ... AND (start, pk) > last ORDER BY start, pk LIMIT n), acted AS
        (DELETE/UPDATE ... WHERE (start, pk) in (last, last of picked] AND <where> RETURNING pk)`` and one row back:
        how many were picked, the last of them (the next batch starts after it), how many were acted on and their
        ``pk_digest`` (aggregated in the database, as in ``SqlStore.returned_digest``). No key crosses the wire."""
        order = self.order
        start, pk = order
        picked = (sa.select(start.label("s"), pk.label("k")).where(where, *self.store.keys_after(order, self.last))
                  .order_by(*order).limit(size).cte("picked"))
        last_picked = (sa.select(picked.c.s, picked.c.k).order_by(picked.c.s.desc(), picked.c.k.desc()).limit(1)
                       .cte("last_picked"))
        bound_s = sa.select(last_picked.c.s).scalar_subquery()
        bound_k = sa.select(last_picked.c.k).scalar_subquery()
        in_batch = [*self.in_range((bound_s, bound_k)), where]
        acted = (self.store.acts.one_statement(self.name, self.t, self.action, in_batch, self.reason, self.now,
                                               self.mask).returning(pk).cte("acted"))
        key = acted.c[pk.name]
        done = sa.select(sa.func.count().label("n"), keys_text_in_db(key).label("text")).subquery("done")
        row = conn.execute(sa.select(
            sa.select(sa.func.count()).select_from(picked).scalar_subquery(), bound_s, bound_k,
            done.c.n, done.c.text)).one()
        n_picked, b_s, b_k, n_acted, text = row
        return int(n_picked), (b_s, b_k) if n_picked else None, int(n_acted), self.store.digest_text(text or "")


class RangeWalk(Walk):
    """MariaDB, a one-column integer key, one statement per batch: lock the next ``size`` eligible rows and get their
    count, digest text and last key in one locking read (``pick``), then act on exactly that range with the
    predicate repeated. No key crosses the wire."""

    def next_batch(self, conn, where: Any, size: int, record: Recorder) -> Batch | None:
        picked, bound, digest = self.pick(conn, where, size)
        if not picked:
            return None
        in_batch = [*self.in_range(bound), where]
        stmt = self.store.acts.one_statement(self.name, self.t, self.action, in_batch, self.reason, self.now, self.mask)
        changed = conn.execute(stmt).rowcount
        if changed != picked:
            # the locks should make this impossible; never record a count or digest that is not the truth
            raise RetentionError(
                f"{self.store.name}.{self.name}: a batch's {self.action} changed {changed} rows where the "
                f"locking read counted {picked}; rolled back, nothing recorded")
        reread = self.reread(bound)
        self.last = bound
        # before the commit: the statement has run, the batch is not yet durable
        intent = begin_record(record, self.action, changed, digest, reread)
        return Batch(changed, digest, intent, done=picked < size, covered=picked, acted=bool(changed))

    def pick(self, conn, where: Any, size: int) -> tuple[int, tuple | None, str]:
        """The next ``size`` eligible rows after ``last`` in walk order, locked (``FOR UPDATE``: next-key locks on
        everything the read scanned, so no row enters, leaves or changes in the range before the commit), in one
        statement that returns one row: how many, the last of them (the batch's upper bound) and the ``pk_digest``
        of their keys, whose text ``GROUP_CONCAT(pk + 0 ORDER BY pk SEPARATOR '\\n')`` builds in the server:
        integer keys in numeric order, each printed as a number (``+ 0``: a ``ZEROFILL`` column would print
        ``000022``), the very text ``key_text`` joins."""
        order = self.order
        cols = [c.label(f"w{i}") for i, c in enumerate(order)]
        picked = (sa.select(*cols).where(where, *self.store.keys_after(order, self.last)).order_by(*order)
                  .limit(size).with_for_update().subquery("picked"))
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
            raise RetentionError(f"{self.store.name}: a batch's key list came back truncated ({n} keys); "
                                 "nothing acted on")
        return int(n), tuple(bound), self.store.digest_text(text)


class OrderWalk(Walk):
    """MariaDB, a delete that takes nothing along: one ``DELETE ... ORDER BY <walk> LIMIT n RETURNING`` per batch,
    the next n eligible rows after the previous batch in index order."""

    def next_batch(self, conn, where: Any, size: int, record: Recorder) -> Batch | None:
        rows = self.delete_in_order(conn, where, size)
        if not rows:
            return None
        n_pk = len(self.store.coll(self.name).key_columns())
        keys = sorted(key_of(r[-n_pk:]) for r in rows)
        changed = len(keys)
        digest = self.store.pk_digest(keys)
        reread = self.reread(max(tuple(r) for r in rows))
        self.last = reread["upto"]
        # before the commit: the statement has run, the batch is not yet durable
        intent = begin_record(record, self.action, changed, digest, reread)
        return Batch(changed, digest, intent, done=changed < size, covered=changed, acted=bool(keys))

    def delete_in_order(self, conn, where: Any, size: int) -> list[tuple]:
        """``DELETE ... WHERE <where> AND <after last> ORDER BY <order> LIMIT size RETURNING <order>``: the next
        ``size`` eligible rows of the walk (an index range when an index leads with ``order[0]``)."""
        stmt = (self.t.delete().where(where, *self.store.keys_after(self.order, self.last))
                .ext(OrderedLimit(self.order, size)))
        return [tuple(r) for r in conn.execute(stmt.returning(*self.order))]


class KeysetWalk(Walk):
    """Any database: select the next keys on ``walk_order``, then act on exactly that key range with the predicate
    repeated (deletes that take something along, masks computed in Python, SQLite, MySQL)."""

    def next_batch(self, conn, where: Any, size: int, record: Recorder) -> Batch | None:
        store, name, t, order, action = self.store, self.name, self.t, self.order, self.action
        n_pk = len(store.coll(name).key_columns())
        query = sa.select(*order).where(where, *store.keys_after(order, self.last)).order_by(*order).limit(size)
        rows = conn.execute(query).all()
        if not rows:
            return None
        keys = [key_of(r[-n_pk:]) for r in rows]
        keys = sorted(keys) if len(order) > 1 else keys
        bound = tuple(rows[-1])
        digest = store.pk_digest(keys)
        reread = self.reread(bound)
        cascaded: dict[str, int] = {}
        intent = None
        # The ledger says what may happen before the store commits it, so a crash between the two leaves an entry
        # that says so (verify reports it, the rule's next run settles it). A delete that changes something outside
        # this transaction (objects, digests, another database) is announced before anything goes; any other batch
        # once its statements ran, with what they took along ("cascading": the next run settles a committed batch
        # with those counts).
        early = action == "delete" and store.acts.writes_outside(name)
        if early:
            intent = begin_record(record, action, len(keys), digest, reread)
        # The batch is every eligible row in (last, bound] of the walk: acting on that key range with the full
        # predicate repeated touches the same rows without a long IN list.
        in_batch = sa.and_(*self.in_range(bound))
        if action == "delete":
            changed = store.acts.delete(conn, name, t, keys, in_batch, where, cascaded)
        elif action == "lock":
            changed = store.acts.lock(conn, name, t, in_batch, where, self.reason, self.now)
        elif action == "anonymize":
            changed = store.acts.anonymize(conn, name, t, keys, sa.and_(in_batch, where), self.mask, self.now)
        else:  # pragma: no cover - the policy model refuses other actions
            raise ValueError(action)
        if not early:
            intent = begin_record(record, action, changed, digest, {**reread, "cascading": cascaded})
        self.last = bound
        return Batch(changed, digest, intent, done=len(rows) < size, covered=len(rows), acted=bool(keys),
                     cascaded=cascaded)


# ---- the choice ----------------------------------------------------------------------------------------------
def choose_walk(store: SqlCore, name: str, predicate: Callable[[sa.Table], Any], action: str, reason: str,
                now: dt.datetime, mask: dict, walk: str | None) -> Walk:
    """The walk of a stage on ``name``: ``walk`` is the rule's start column (None for a computed start: batches
    walk the key)."""
    t = store.table(name)
    order = store.walk_order(name, walk)
    args = (reason, now, mask)
    one_statement = by_block(store, name, action, mask)
    if one_statement and not in_index_order(store, t, order):
        return BlockWalk(store, name, order, action, *args)
    # PostgreSQL, a table in start-column order: the index walk, but one statement per batch as well
    n_pk = len(store.coll(name).key_columns())
    if one_statement and len(order) == 2 and n_pk == 1 and store.digest_in_db(order[-1]):
        return IndexWalk(store, name, order, action, *args)
    # MariaDB, when one statement acts on the batch and the keys are integers: the batch's keys stay in the server
    # (not when the predicate reads another table, an orphan rule's NOT EXISTS: the locking read does not lock those
    # rows, so the act could take other rows than the ones counted and digested)
    if by_range(store, name, action, mask) and not reads_other_tables(predicate(t)):
        return RangeWalk(store, name, range_order(store, t, order, predicate(t)), action, *args)
    if by_order(store, name, action):
        return OrderWalk(store, name, order, action, *args)
    return KeysetWalk(store, name, order, action, *args)


def one_statement_does(store: SqlCore, name: str, action: str, mask: dict | None) -> bool:
    """Is the batch's ``DELETE``/``UPDATE`` all there is to it (``SqlActs.one_statement``)? Not for deletes that
    take something along, nor for masks computed in Python (keyed hashes read the rows first)."""
    if action == "delete":
        return not store.acts.takes_along(name)
    if action == "anonymize":
        return all(STRATEGIES[m.strategy].in_sql for m in (mask or {}).values())
    return action == "lock"


def by_block(store: SqlCore, name: str, action: str, mask: dict | None) -> bool:
    """PostgreSQL walks the heap by block ranges (``ctid``) with one statement per batch, when the batch's
    statement is all there is to it: not for deletes that take something along (their rows are locked first
    and go by key), nor for masks computed in Python (keyed hashes read the rows first)."""
    return store.engine.dialect.name == "postgresql" and one_statement_does(store, name, action, mask)


def by_range(store: SqlCore, name: str, action: str, mask: dict | None) -> bool:
    """MariaDB, a one-column integer key, and one statement does the batch (a delete that takes nothing along, a
    lock, an anonymize with SQL masks): ``RangeWalk``. Other keys keep their walks: ``GROUP_CONCAT`` orders text by
    the column's collation (``PAD SPACE``, case or accent folding), which is not Python's ``sorted()`` order the
    digest needs."""
    dialect = store.engine.dialect
    if dialect.name != "mysql" or not getattr(dialect, "is_mariadb", False):
        return False
    pk = store.key_cols(name)
    return len(pk) == 1 and isinstance(pk[0].type, sa.Integer) and one_statement_does(store, name, action, mask)


def by_order(store: SqlCore, name: str, action: str) -> bool:
    """MariaDB acts and returns the batch's keys in one ``DELETE ... ORDER BY ... LIMIT ... RETURNING`` when the
    delete takes nothing along (MySQL has no ``RETURNING``, and updates have none on MariaDB)."""
    dialect = store.engine.dialect
    return (dialect.name == "mysql" and bool(getattr(dialect, "is_mariadb", False))
            and action == "delete" and not store.acts.takes_along(name))


def in_index_order(store: SqlCore, t: sa.Table, order: list[sa.Column]) -> bool:
    """PostgreSQL: the table's rows lie in the order of the indexed start column (``pg_stats.correlation`` near 1,
    e.g. an append-only event table): the index walk then reads only the expired range, in physical order, where a
    block walk would read the whole table."""
    if len(order) < 2:
        return False
    with store.engine.connect() as conn:
        corr = conn.execute(sa.text(
            "SELECT correlation FROM pg_stats WHERE schemaname = current_schema() AND tablename = :t "
            "AND attname = :c"), {"t": t.name, "c": order[0].name}).scalar()
    return corr is not None and abs(corr) >= CORRELATED


def range_order(store: SqlCore, t: sa.Table, order: list[sa.Column], where: Any) -> list[sa.Column]:
    """MariaDB: walk the way the server itself would read the eligible rows. When its optimizer reads them through
    the start column's index (few of them), ``(start, pk)``; when it would scan the table (the raw statement's plan:
    many of them, or no usable index), the primary key: each batch a range of the clustered index read in order,
    where the start index would add a primary-key lookup per row in date order."""
    if len(order) < 2:
        return order
    with store.engine.connect() as conn:
        plan = conn.execute(Explain(sa.select(order[-1]).where(where))).mappings().all()
    used = next((row["key"] for row in plan if row["table"] == t.name), None)
    leads = {ix.name for ix in t.indexes if ix.columns and list(ix.columns)[0].name == order[0].name}
    return order if used in leads else order[-1:]


def reads_other_tables(where: Any) -> bool:
    """Does ``where`` read rows of other tables (a subquery: ``EXISTS``, ``IN (SELECT ...)``, a scalar select)?
    MariaDB's locking read (``RangeWalk.pick``) locks the rows it scans of the table itself, not those a subquery
    reads: another session can change them between the read and the act, and the act would then take other rows
    than the ones the read counted and digested (the same number of them, one row in, another out)."""
    from sqlalchemy.sql import visitors
    from sqlalchemy.sql.expression import Exists, ScalarSelect, Select

    return any(isinstance(e, (Exists, ScalarSelect, Select)) for e in visitors.iterate(where))


def range_reread(order: list[sa.Column], after: tuple | None, upto: tuple, now: dt.datetime) -> dict[str, Any]:
    """How a batch of a walk in ``order`` is found again: the eligible rows (at ``now``) in (after, upto]."""
    return {"walk": "range", "order": [c.name for c in order], "after": after, "upto": upto, "now": now}


# ---- statements SQLAlchemy does not have ----------------------------------------------------------------------
class _TID(sa.types.UserDefinedType):
    """PostgreSQL's ``tid`` (a row's block and offset), for block-range batches."""

    cache_ok = True

    def get_col_spec(self, **kw):
        return "tid"


TID = _TID()


def in_blocks(first: int, end: int) -> sa.ColumnElement[bool]:
    """PostgreSQL: the rows of heap blocks [first, end)."""
    ctid = sa.literal_column("ctid")
    return sa.and_(ctid >= sa.cast(sa.literal(f"({int(first)},0)"), TID),
                   ctid < sa.cast(sa.literal(f"({int(end)},0)"), TID))


class OrderedLimit(SyntaxExtension, sa.sql.ClauseElement):
    """``ORDER BY <columns> LIMIT n`` after a MariaDB ``DELETE``'s WHERE clause (SQLAlchemy has only the LIMIT)."""

    __visit_name__ = "retention_ordered_limit"
    inherit_cache = False  # n varies per batch; a statement is compiled once per batch anyway

    def __init__(self, order: list[sa.Column], n: int):
        self.order, self.n = list(order), int(n)

    def apply_to_delete(self, delete_stmt) -> None:
        delete_stmt.apply_syntax_extension_point(self.append_replacing_same_type, "post_criteria")


@compiles(OrderedLimit)
def _compile_ordered_limit(element: OrderedLimit, compiler, **kw) -> str:
    return f"ORDER BY {', '.join(compiler.process(c, **kw) for c in element.order)} LIMIT {element.n:d}"


class Explain(sa.sql.expression.Executable, sa.sql.ClauseElement):
    """``EXPLAIN <select>`` (MariaDB), its parameters bound as the select's own."""

    __visit_name__ = "retention_explain"
    inherit_cache = False

    def __init__(self, stmt: sa.Select):
        self.stmt = stmt


@compiles(Explain)
def _compile_explain(element: Explain, compiler, **kw) -> str:
    return f"EXPLAIN {compiler.process(element.stmt, **kw)}"
