"""References across databases: a parent's delete in one SQL system takes its children in another along.

The parent's batch (its rows locked, ``SELECT ... FOR UPDATE``) hands the values the children reference to
the child system's store, children first (docs/adr/0012-composite-keys-and-cross-database-cascades.md):

1. ``held_dependents``: parent values with a child under legal hold (or with held dependents of its own) in
   the other system: those parents are kept, and so are all their children (as in one database; the plan
   counts them as held).
2. ``delete_dependents``: the other system deletes (or nullifies) the children of the remaining values in
   bounded batches of its own, each one transaction there and one ledger entry of that system (intent before,
   real count after). Values are compared exactly in Python (the other database's collation may call ``abc``
   and ``ABC `` equal: that would widen the delete). It returns the values that still have children (a hold
   placed meanwhile): those parents are kept too.
3. The parent's own statement deletes the rest and commits.

A failure in the other system raises before the parent's statement: the parent batch rolls back and keeps its
rows; children already deleted in committed child batches are gone and recorded, and a retry deletes the
rest: every child and parent counted once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from include.retention.errors import RetentionError
from include.retention.stores.base import Recorder, begin_record, collection_recorder, end_record
from include.retention.stores.sql_keys import chunks, key_in, key_of, value_of
from include.retention.values import CollectionRef

if TYPE_CHECKING:
    from include.retention.policy import Reference
    from include.retention.stores.base import Store
    from include.retention.stores.sql_core import SqlCore

CHILD_BATCH = 1000  # child rows per transaction of the other system


class SqlCascade:
    """The cross-database half of a store's deletes, both the parent's and the child's side (a collaborator of
    ``SqlStore``: it reads the store's collections, tables, keys and predicates, and reaches other systems through
    the store's ``stores``)."""

    def __init__(self, store: SqlCore):
        self.store = store
        self.recording: Recorder | None = None  # the running stage's recorder (child systems' entries)

    def other_children(self, name: str) -> list[tuple[str, Reference, Store]]:
        """(child ref, reference, the child system's store) for children in other databases."""
        out = []
        for child_ref, ref in self.store.policy.children(self.store.ref(name)):
            c_sys = CollectionRef.parse(child_ref).system
            if c_sys == self.store.name:
                continue
            if self.store.stores is None:
                raise RetentionError(f"{self.store.ref(name)}: {child_ref} references it from another database, and "
                                     "this store was opened without the other systems' stores (use Runtime)")
            out.append((child_ref, ref, self.store.stores(c_sys)))
        return out

    def delete_other_children(self, conn, name: str, keys: list[Any], cascaded: dict[str, int]) -> list[Any]:
        """Children in other databases first; returns the parent keys that may go now (the others are kept)."""
        others = self.other_children(name)
        if not others:
            return keys
        kept = self.held_elsewhere(conn, name, keys)
        links = [(child_ref, ref, store, self.store.acts.referenced(conn, name, ref, keys))
                 for child_ref, ref, store in others]
        for child_ref, ref, store, pairs in links:
            values = sorted({v for k, v in pairs if k not in kept})
            if not values:
                continue
            counts, left = store.delete_dependents(child_ref.partition(".")[2], ref, values, record=self.recording,
                                                   parent=self.store.ref(name))
            kept |= {k for k, v in pairs if v in left}
            for k, n in counts.items():
                cascaded[k] = cascaded.get(k, 0) + n
        return [k for k in keys if k not in kept]

    def held_elsewhere(self, conn, name: str, keys: list[Any]) -> set[Any]:
        """Of ``keys``, the rows a held row of another database references (through an ``on_delete: delete``
        reference): they are kept, as rows with held dependents in the same database are."""
        kept: set[Any] = set()
        for child_ref, ref, store in self.other_children(name):
            if ref.on_delete != "delete" or not keys:
                continue
            pairs = self.store.acts.referenced(conn, name, ref, keys)
            held = store.held_dependents(CollectionRef.parse(child_ref).collection, ref.source_columns(),
                                         sorted({v for _, v in pairs}))
            kept |= {k for k, v in pairs if v in held}
        return kept

    def other_child_counts(self, conn, name: str, keys: list[Any], out: dict[Any, dict[str, int]]) -> None:
        """Add to ``out`` (parent key -> child ref -> rows) the direct dependents in other databases."""
        for child_ref, ref, store in self.other_children(name):
            if ref.on_delete != "delete":
                continue
            pairs = self.store.acts.referenced(conn, name, ref, keys)
            per = store.dependents_of(child_ref.partition(".")[2], ref.source_columns(), sorted({v for _, v in pairs}))
            for key, value in pairs:
                if per.get(value):
                    out.setdefault(key, {})[child_ref] = per[value]

    def held_elsewhere_count(self, conn, name: str, where: Any) -> int:
        """Rows matching ``where`` that a held row of another database references (the plan's ``held``). The
        rows stream in parts; each part's referenced values go to the child store (its own connection)."""
        refs = [(child_ref, ref, store) for child_ref, ref, store in self.other_children(name)
                if ref.on_delete == "delete"]
        if not refs:
            return 0
        t = self.store.table(name)
        pk = self.store.key_cols(name, t)
        width = len(pk)
        # each reference's referenced columns (one, or several), labelled apart: two references may share a column
        spans, cols = [], []
        for i, (_, ref, _) in enumerate(refs):
            targets = self.store.target_cols(name, ref, t)
            spans.append((width + len(cols), width + len(cols) + len(targets)))
            cols += [c.label(f"_ref{i}_{j}") for j, c in enumerate(targets)]
        n = 0
        result = conn.execution_options(stream_results=True, yield_per=5000).execute(
            sa.select(*pk, *cols).where(where))
        for part in result.partitions():
            kept: set[Any] = set()
            for (child_ref, ref, store), (lo, hi) in zip(refs, spans, strict=True):
                of_row = [(key_of(r[:width]), value_of(r[lo:hi])) for r in part]
                values = sorted({v for _, v in of_row if v is not None})
                held = store.held_dependents(CollectionRef.parse(child_ref).collection, ref.source_columns(), values)
                kept |= {k for k, v in of_row if v is not None and v in held}
            n += len(kept)
        return n

    def other_cascade_counts(self, conn, name: str, going: sa.Select) -> dict[str, tuple[int, int]]:
        """Rows in other databases a delete of ``going``'s parents (one column: the referenced values) would take
        along, and each child collection's size: the brake weighs them like same-database dependents."""
        out = {}
        for child_ref, ref, store in self.other_children(name):
            if ref.on_delete != "delete":
                continue
            c_name = CollectionRef.parse(child_ref).collection
            cols = self.store.target_cols(name, ref)
            n = 0
            result = conn.execution_options(stream_results=True, yield_per=5000).execute(
                going.with_only_columns(*cols).distinct())
            for part in result.partitions():
                values = [v for r in part if (v := value_of(r)) is not None]
                n += store.count_dependents(c_name, ref.source_columns(), values)
            out[child_ref] = (n, store.count_rows(c_name))
        return out

    def held_dependents(self, collection_name: str, column: str | list[str], values: list[Any]) -> set[Any]:
        """Of ``values``, those held by a row here whose ``column`` holds exactly that value (legal hold, or held
        dependents of its own): their parents must stay. Several columns: ``values`` are tuples, matched on every
        column."""
        self.store.check(collection_name)  # the child's holds typed against its columns before they decide anything
        t = self.store.table(collection_name)
        held = self.store.predicates.held(collection_name, t)
        tests = ([held] if held is not None else []) + self.store.predicates.held_dependents(collection_name, t)
        if not tests or not values:
            return set()
        fks, wanted, out = _fk_cols(t, column), set(values), set()
        with self.store.engine.connect() as conn:
            for chunk in chunks(values):
                found = conn.execute(sa.select(*fks).distinct().where(key_in(fks, chunk), sa.or_(*tests)))
                out |= {v for r in found if (v := key_of(r)) in wanted}
        return out

    def count_dependents(self, collection_name: str, column: str | list[str], values: list[Any]) -> int:
        """Rows here whose ``column`` (or columns: tuples in ``values``) holds one of ``values`` (for the brake: a
        collation that widens the match only makes it stricter)."""
        fks = _fk_cols(self.store.table(collection_name), column)
        n = 0
        with self.store.engine.connect() as conn:
            for chunk in chunks(values):
                n += conn.execute(sa.select(sa.func.count()).where(key_in(fks, chunk))).scalar() or 0
        return int(n)

    def dependents_of(self, collection_name: str, column: str | list[str], values: list[Any]) -> dict[Any, int]:
        """Per value of ``values``, the rows here whose ``column`` (or columns: tuples) holds exactly that value
        (compared in Python: the per-request counts of an erasure)."""
        fks, wanted, out = _fk_cols(self.store.table(collection_name), column), set(values), {}
        with self.store.engine.connect() as conn:
            for chunk in chunks(values):
                for r in conn.execute(sa.select(*fks).where(key_in(fks, chunk))):
                    if (v := key_of(r)) in wanted:
                        out[v] = out.get(v, 0) + 1
        return out

    def count_rows(self, collection_name: str) -> int:
        with self.store.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(self.store.table(collection_name))).scalar())

    def delete_dependents(self, collection_name: str, reference: Reference, values: list[Any], *,
                          record: Recorder | None = None, parent: str = "") -> tuple[dict[str, int], set[Any]]:
        """Delete (``on_delete: delete``) or clear the reference of (``nullify``) the rows here whose reference's
        columns hold exactly one of ``values`` (tuples: every column), in bounded batches, each one transaction here
        and (with ``record``) one ledger entry of this system. Returns the counts (this collection's, and what its
        deletes took along) and the values that still have rows here afterwards (held: their parents stay)."""
        self.store.check(collection_name)
        name, t = collection_name, self.store.table(collection_name)
        ref = self.store.ref(name)
        fks = self.store.source_cols(t, reference)
        guard = (self.store.predicates.not_held(name, t) if reference.on_delete == "delete"
                 else sa.and_(*(c.is_not(None) for c in fks)))
        rec = collection_recorder(record, self.store.name, ref)
        counts: dict[str, int] = {}
        left: set[Any] = set()
        outer, self.recording = self.recording, record  # a cascade further on records its own entries too
        try:
            for chunk in chunks(sorted(values)):
                left |= self._delete_dependents_of(name, t, reference, chunk, guard, rec, parent, counts)
        finally:
            self.recording = outer
        return counts, left

    def _delete_dependents_of(self, name: str, t: sa.Table, reference: Reference, chunk: list[Any], guard: Any,
                              rec: Recorder | None, parent: str, counts: dict[str, int]) -> set[Any]:
        """``delete_dependents`` for one chunk of values, walking the rows here by key in batches of
        ``CHILD_BATCH``; returns the values still referenced afterwards."""
        pk, fks = self.store.key_cols(name, t), self.store.source_cols(t, reference)
        n_pk, ref = len(pk), self.store.ref(name)
        deleting = reference.on_delete == "delete"
        action = "delete" if deleting else "nullify"
        exact, last = set(chunk), None
        while True:
            intent, digest, cascaded, changed = None, "", {}, 0
            with self.store.engine.begin() as conn:
                rows = conn.execute(sa.select(*pk, *fks)
                                    .where(key_in(fks, chunk), guard, *self.store.keys_after(pk, last))
                                    .order_by(*pk).limit(CHILD_BATCH).with_for_update()).all()
                if not rows:
                    break
                last = tuple(rows[-1][:n_pk])
                keys = sorted(key_of(r[:n_pk]) for r in rows if key_of(r[n_pk:]) in exact)  # every column, exactly
                if keys:
                    digest = self.store.pk_digest(keys)
                    # announced before it commits: before anything goes when the delete changes something outside
                    # this transaction, else once the statement ran, with its real count (the keys, sealed, let the
                    # rule's next run tell whether it committed: include/retention/intents.py)
                    reread = {"walk": "keys", "keys": keys, "column": None if deleting else reference.source_columns(),
                              "cascaded_from": parent}
                    early = deleting and self.store.acts.writes_outside(name)
                    if rec is not None and early:
                        intent = begin_record(rec, action, len(keys), digest, reread)
                    if deleting:
                        changed = self.store.acts.delete_keys(conn, name, keys, cascaded, guard=guard)
                    else:
                        changed = conn.execute(t.update().where(key_in(pk, keys), guard)
                                               .values(dict.fromkeys(reference.source_columns()))).rowcount
                    if rec is not None and not early:
                        intent = begin_record(rec, action, changed, digest, {**reread, "cascading": cascaded})
            if keys:  # committed: the real count
                what = ref if deleting else f"{ref}:nullified"
                counts[what] = counts.get(what, 0) + changed
                for k, v in cascaded.items():
                    counts[k] = counts.get(k, 0) + v
                if rec is not None:
                    end_record(rec, intent, action, changed, digest, {"cascaded_from": parent, "cascaded": cascaded})
            if len(rows) < CHILD_BATCH:
                break
        if not deleting:
            return set()
        with self.store.engine.connect() as conn:
            return {v for r in conn.execute(sa.select(*fks).distinct().where(key_in(fks, chunk)))
                    if (v := key_of(r)) in exact}


def _fk_cols(t: sa.Table, column: str | list[str]) -> list[sa.Column]:
    """A reference's columns of ``t``: one name, or the list of a reference of several columns."""
    return [t.c[column]] if isinstance(column, str) else [t.c[c] for c in column]
