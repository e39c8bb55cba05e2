"""What a batch of the SQL store does to its rows: lock, anonymize, delete (with what a delete takes along).

``SqlActs`` is a collaborator of ``SqlStore``: a walk (``include.retention.stores.sql_walks``) and a subject
request call it inside their own transaction. A delete takes its dependents along, children first: in this
database set-based (``delete_set``: a few statements per batch) or key by key (``delete_keys``), in other databases
through the store's ``cascade``; objects the rows own and digests of identities to suppress go through the store's
``before_delete`` callback.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from include.retention import keytemplate
from include.retention.masking import STRATEGIES
from include.retention.policy import Collection, Reference
from include.retention.stores.sql_keys import cols_eq, cols_in, key_in, key_of, pg_any, value_of
from include.retention.stores.sql_predicates import bind_time
from include.retention.values import CollectionRef

if TYPE_CHECKING:
    from include.retention.stores.sql_core import SqlCore


class SqlActs:
    """The acting statements of one store's batches (it reads the store's collections, tables, keys and policy)."""

    def __init__(self, store: SqlCore):
        self.store = store
        # collection -> identity kinds the delete stage now running there suppresses (Rule.suppress_kinds)
        self.suppressing: dict[str, list[str]] = {}
        # collections whose running delete stage is an orphan rule's: no dependents to take along (the predicate
        # says there are none), and the guard goes into the final DELETE itself
        self.orphan_stage: set[str] = set()

    def one_statement(self, name: str, t: sa.Table, action: str, conds: list[Any], reason: str, now: dt.datetime,
                      mask: dict) -> Any:
        """The ``DELETE``/``UPDATE`` that does a whole batch (``sql_walks.by_block`` says when one can) on ``conds``."""
        coll = self.store.coll(name)
        if action == "delete":
            return t.delete().where(*conds)
        if action == "lock":
            return t.update().where(*conds, t.c[coll.lock.at].is_(None)).values(self.lock_values(name, t, reason, now))
        marker = {coll.anonymized_marker: bind_time(t.c[coll.anonymized_marker], now)}
        return t.update().where(*conds).values(
            **{c: STRATEGIES[m.strategy].sql(t.c[c], m.value) for c, m in mask.items()}, **marker)

    def lock_values(self, name, t, reason, now) -> dict[str, Any]:
        coll = self.store.coll(name)
        values = {coll.lock.at: bind_time(t.c[coll.lock.at], now)}
        if coll.lock.reason:
            values[coll.lock.reason] = reason[:200]
        return values

    def lock(self, conn, name, t, in_batch, where, reason, now) -> int:
        coll = self.store.coll(name)
        return conn.execute(t.update().where(in_batch, where, t.c[coll.lock.at].is_(None))
                            .values(self.lock_values(name, t, reason, now))).rowcount

    def anonymize(self, conn, name, t, keys, where, mask, now) -> int:
        """Mask the rows of ``keys`` that still match ``where`` (which bounds them)."""
        coll = self.store.coll(name)
        pk = self.store.key_cols(name, t)
        n = len(pk)
        marker = {coll.anonymized_marker: bind_time(t.c[coll.anonymized_marker], now)}
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
                 **{f"_v_{c}": STRATEGIES[m.strategy].python(r[n + i], m.value, self.store.mask_key)
                    for i, (c, m) in enumerate(in_python.items())}}
                for r in rows
            ]
            stmt = t.update().where(*(c == sa.bindparam(f"_pk{j}") for j, c in enumerate(pk))).values(
                **in_sql, **marker, **{c: sa.bindparam(f"_v_{c}") for c in in_python})
            conn.execute(stmt, params)
            return len(rows)
        return conn.execute(t.update().where(where).values(**in_sql, **marker)).rowcount

    def delete(self, conn, name, t, keys, in_batch, where, cascaded: dict[str, int]) -> int:
        """Delete the batch's rows that still match ``where``; returns the rows the statement deleted."""
        if not self.takes_along(name):
            return conn.execute(t.delete().where(in_batch, where)).rowcount
        # PostgreSQL selects the locked rows by their key afterwards (``delete_set``): a one-column key
        if self.set_cascade(name) and (conn.dialect.name != "postgresql" or len(self.store.key_cols(name, t)) == 1):
            return self.delete_set(conn, name, t, sa.and_(in_batch, where), cascaded)
        pk = self.store.key_cols(name, t)
        # Lock what will go before anything else goes with it (objects, digests, dependents): a legal hold
        # committed meanwhile waits for this transaction and cannot be overtaken.
        keys = [key_of(r) for r in conn.execute(sa.select(*pk).where(in_batch, where).with_for_update())]
        if not keys:
            return 0
        return self.delete_keys(conn, name, keys, cascaded, guard=where)

    def set_cascade(self, name: str, above: tuple[str, ...] = ()) -> bool:
        """Whether a delete here takes along only rows of this database, in a tree of distinct tables (no objects,
        no digests, no other database, no table twice): ``delete_set`` then does a batch in a few set-based
        statements instead of carrying its keys back and forth."""
        coll = self.store.coll(name)
        if (name in above or self.store.policy.owned_objects(self.store.ref(name)) or coll.suppress_on_delete
                or self.suppressing.get(name)):
            return False
        for child_ref, ref in self.store.policy.children(self.store.ref(name)):
            c_sys, c_name = CollectionRef.parse(child_ref)
            if c_sys != self.store.name or c_name in (*above, name):
                return False
            if ref.on_delete != "nullify" and not self.set_cascade(c_name, (*above, name)):
                return False
        return True

    def delete_set(self, conn, name: str, t: sa.Table, rows: Any, cascaded: dict[str, int]) -> int:
        """Delete the rows ``rows`` selects (the batch's range and the full predicate) and their dependents
        (``set_cascade``): lock them, then per dependent table one ``DELETE``/``UPDATE ... WHERE fk IN (SELECT
        ... WHERE rows)`` (deepest first), then the rows; returns the rows deleted.

        The lock comes first, so a legal hold committed meanwhile waits and cannot be overtaken. On PostgreSQL
        (read committed: a row inserted into the range later would be seen by the next statement) the locked
        keys themselves then select the rows, as one array (``pk = ANY(:keys)``); MariaDB's locking read holds
        the range it scanned (next-key locks: nothing can be inserted into it before the commit) and SQLite's
        ``BEGIN IMMEDIATE`` the database, so there the predicate selects the same rows in every statement."""
        pk = self.store.key_cols(name, t)
        keys = None
        if conn.dialect.name == "postgresql" and len(pk) == 1:
            keys = conn.execute(sa.select(pk[0]).where(rows).with_for_update()).scalars().all()
            if not keys:
                return 0
            # the range and predicate stay: they lead the planner to the batch's index range, the keys recheck it
            rows = sa.and_(rows, pg_any(pk[0], keys))
        elif not conn.execute(sa.select(sa.func.count()).select_from(t).where(rows).with_for_update()).scalar():
            return 0
        self.delete_set_dependents(conn, name, t, rows, cascaded, keys)
        return conn.execute(t.delete().where(rows)).rowcount

    def delete_set_dependents(self, conn, name: str, t: sa.Table, rows: Any, cascaded: dict[str, int],
                              keys: list[Any] | None = None) -> None:
        """The dependents (in this database) of ``t``'s rows that ``rows`` selects: set-based, deepest first.
        ``keys``: those rows' keys (PostgreSQL), matched directly by a reference to the key (an index on the
        referencing column can serve it, as for the raw statement)."""
        for child_ref, ref in self.store.policy.children(self.store.ref(name)):
            c_name = CollectionRef.parse(child_ref).collection
            child = self.store.table(c_name)
            parent_cols, child_cols = self.store.target_cols(name, ref, t), self.store.source_cols(child, ref)
            set_ = sa.and_(*(c.is_not(None) for c in parent_cols))
            if keys is not None and len(parent_cols) == 1 and parent_cols[0].primary_key and len(
                    self.store.key_cols(name, t)) == 1:
                mine = pg_any(child_cols[0], keys, parent_cols[0].type)
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
                n = conn.execute(child.update().where(mine).values(cleared(ref))).rowcount
                cascaded[f"{child_ref}:nullified"] = cascaded.get(f"{child_ref}:nullified", 0) + n
                continue
            self.delete_set_dependents(conn, c_name, child, mine, cascaded)
            n = conn.execute(child.delete().where(mine)).rowcount
            cascaded[child_ref] = cascaded.get(child_ref, 0) + n

    def writes_outside(self, name: str, above: tuple[str, ...] = ()) -> bool:
        """Whether a delete here changes something outside this database's transaction: objects it owns, digests
        it keeps, rows in another database (also through dependents here that go along)."""
        coll = self.store.coll(name)
        if (self.store.policy.owned_objects(self.store.ref(name)) or coll.suppress_on_delete
                or self.suppressing.get(name)):
            return True
        for child_ref, ref in self.store.policy.children(self.store.ref(name)):
            c_sys, c_name = CollectionRef.parse(child_ref)
            if c_sys != self.store.name:
                return True
            if ref.on_delete == "delete" and c_name not in (*above, name) and self.writes_outside(c_name,
                                                                                                  (*above, name)):
                return True
        return False

    def takes_along(self, name: str) -> bool:
        """Whether deleting this collection's rows involves anything else (dependents, objects, digests)."""
        coll = self.store.coll(name)
        children = self.store.policy.children(self.store.ref(name)) if name not in self.orphan_stage else []
        return bool(children or self.store.policy.owned_objects(self.store.ref(name))
                    or coll.suppress_on_delete or self.suppressing.get(name))

    def child_counts(self, conn, name: str, keys: list[Any]) -> dict[Any, dict[str, int]]:
        """Direct dependents per parent key, counted before a delete takes them along."""
        out: dict[Any, dict[str, int]] = {}
        for child_ref, ref in self.store.policy.children(self.store.ref(name)):
            c_sys, c_name = CollectionRef.parse(child_ref)
            if c_sys != self.store.name or ref.on_delete != "delete":
                continue
            fks = self.store.source_cols(self.store.table(c_name), ref)
            owners: dict[Any, list[Any]] = {}
            for key, value in self.referenced(conn, name, ref, keys):
                owners.setdefault(value, []).append(key)
            values = list(owners)
            for i in range(0, len(values), 500):
                for *parent, n in conn.execute(sa.select(*fks, sa.func.count()).where(key_in(fks, values[i:i + 500]))
                                               .group_by(*fks)):
                    for key in owners.get(key_of(parent), []):
                        out.setdefault(key, {})[child_ref] = n
        self.store.cascade.other_child_counts(conn, name, keys, out)
        return out

    def referenced(self, conn, name: str, ref: Any, keys: list[Any]) -> list[tuple[Any, Any]]:
        """(key, the value a child's ``ref`` columns hold for that row) for the rows of ``keys``: the key itself,
        or the row's referenced columns (one value, or a tuple for a reference of several columns; rows where any
        of them is NULL have no children)."""
        coll, t = self.store.coll(name), self.store.table(name)
        target = self.store.target_cols(name, ref, t)
        if [c.name for c in target] == coll.key_columns():
            return [(k, k) for k in keys]
        pk = self.store.key_cols(name, t)
        n = len(pk)
        rows = conn.execute(sa.select(*pk, *target).where(key_in(pk, keys)))
        return [(key_of(r[:n]), v) for r in rows if (v := value_of(r[n:])) is not None]

    def delete_keys(self, conn, name: str, keys: list[Any], cascaded: dict[str, int],
                    guard: Any | None = None, suppress: list[str] | None = None) -> int:
        """Delete rows by key: dependents first (as the references say), then owned objects, then the rows.

        ``guard`` (the predicate that selected them) is repeated in every statement, so a row that stopped
        qualifying is neither deleted nor has its dependents or objects removed. ``suppress``: identity kinds
        whose digests ``before_delete`` keeps (default: those of the delete stage running on this collection),
        besides the collection's deprecated ``suppress_on_delete``. Returns the rows deleted.
        """
        t, coll = self.store.table(name), self.store.coll(name)
        pk = self.store.key_cols(name, t)
        if guard is not None:
            keys = [key_of(r) for r in conn.execute(sa.select(*pk).where(key_in(pk, keys), guard).with_for_update())]
        # children in other databases first (their own batches and ledger entries); parents they hold stay
        keys = self.store.cascade.delete_other_children(conn, name, keys, cascaded) if keys else keys
        if not keys:
            return 0
        orphans = guard is not None and name in self.orphan_stage
        for child_ref, ref in self.store.policy.children(self.store.ref(name)) if not orphans else []:
            c_sys, c_name = CollectionRef.parse(child_ref)
            if c_sys != self.store.name:  # done above, through the other system's store
                continue
            child = self.store.table(c_name)
            parent_vals = sorted({v for _, v in self.referenced(conn, name, ref, keys)})
            mine = key_in(self.store.source_cols(child, ref), parent_vals)  # all of a reference's columns, pairwise
            if ref.on_delete == "nullify":
                n = conn.execute(child.update().where(mine).values(cleared(ref))).rowcount
                cascaded[f"{child_ref}:nullified"] = cascaded.get(f"{child_ref}:nullified", 0) + n
            else:
                child_pk = self.store.key_cols(c_name, child)
                child_keys = [key_of(r) for r in conn.execute(sa.select(*child_pk).where(mine).with_for_update())]
                if child_keys:
                    n = self.delete_keys(conn, c_name, child_keys, cascaded)
                    cascaded[child_ref] = cascaded.get(child_ref, 0) + n
        extra = suppress if suppress is not None else self.suppressing.get(name, [])
        kinds = list(coll.suppress_on_delete) + [k for k in extra if k not in coll.suppress_on_delete]
        if self.store.before_delete and (self.store.policy.owned_objects(self.store.ref(name)) or kinds):
            cols = set(coll.key_columns()) | {c for r in coll.references for c in template_cols(r, coll)}
            cols |= {c for kind, c in coll.identity_columns() if kind in kinds}
            rows = [dict(r._mapping) for r in conn.execute(sa.select(*(t.c[c] for c in cols))
                                                           .where(key_in(pk, keys)))]
            # the kinds go along only when a rule adds some (a callback of two arguments keeps working)
            told = self.store.before_delete(self.store.ref(name), rows, suppress=kinds) if len(kinds) > len(
                coll.suppress_on_delete) else self.store.before_delete(self.store.ref(name), rows)
            for k, v in told.items():
                cascaded[k] = cascaded.get(k, 0) + v
        # an orphan rule's rows are deleted only if still unreferenced in this very statement
        return conn.execute(t.delete().where(key_in(pk, keys), *([guard] if orphans else []))).rowcount


def cleared(ref: Reference) -> dict[str, None]:
    """What ``on_delete: nullify`` writes: NULL in every column of the reference."""
    return dict.fromkeys(ref.source_columns())


def template_cols(ref, coll: Collection) -> list[str]:
    cols = [ref.column] if ref.column else []
    if ref.key_template:
        cols += [c for c in keytemplate.fields(ref.key_template) if c in coll.columns]
    return cols
