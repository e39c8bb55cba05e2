"""Orphans in SQL: rows nothing refers to any more, and rows that own a given S3 key
(docs/adr/0013-orphaned-start-event.md).

A rule with ``start: {orphaned: <marker column>}`` acts only on rows no referencing collection of the
same database refers to (``NOT EXISTS`` per reference, in the very statement that acts), and counts its
period from the marker: before each sweep of the rule, ``prepare_rule`` stamps the marker with the sweep's
time on unreferenced rows that have none, and clears it on rows referenced again. Both are set-based
``UPDATE``s in bounded key-range batches, one transaction and one ledger entry each.

``referenced_keys`` answers an S3 orphan rule: which of a batch of object keys some row still names.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from include.retention import keytemplate
from include.retention.policy import Reference, Rule, referrers
from include.retention.stores.base import Recorder
from include.retention.stores.sql_keys import cols_eq, key_of
from include.retention.stores.sql_predicates import bind_time
from include.retention.stores.sql_walks import BatchSizer
from include.retention.values import CollectionRef

if TYPE_CHECKING:
    from include.retention.stores.sql_core import SqlCore

IN_CHUNK = 500  # values per IN list


class SqlOrphans:
    """The orphan marker and the key look-up for S3 orphan rules (a collaborator of ``SqlStore``: it reads the
    store's collections, tables and keys, and walks like a sweep)."""

    def __init__(self, store: SqlCore):
        self.store = store

    def unreferenced(self, name: str, t: sa.Table) -> sa.ColumnElement[bool]:
        """Rows of ``t`` no referencing collection refers to (one ``NOT EXISTS`` per reference). A reference
        compares as the database does: under a case-insensitive collation ``'A'`` keeps ``'a'`` (kept, never
        deleted too early)."""
        tests = []
        for i, (owner, ref) in enumerate(referrers(self.store.policy, self.store.ref(name))):
            child = self.store.table(CollectionRef.parse(owner).collection).alias(f"orphan_ref_{i}")
            # a reference of several columns refers to a row only when every column equals its partner
            link = cols_eq(self.store.source_cols(child, ref), self.store.target_cols(name, ref, t))
            tests.append(sa.not_(sa.exists().where(link)))
        return sa.and_(*tests) if tests else sa.true()

    def prepare_rule(self, collection_name: str, rule: Rule, now: dt.datetime, batch_size: int,
                     record: Recorder) -> dict[str, int]:
        """Bring the orphan marker up to date: stamp ``now`` on unreferenced rows without a stamp, clear it on
        rows referenced again. Returns rows stamped / cleared."""
        from include.retention.conditions import column_kind, type_name
        from include.retention.errors import PolicyError

        marker = rule.start.orphaned
        if marker is None:
            return {}
        t = self.store.table(collection_name)
        col = t.c[marker]
        if column_kind(col.type) != "datetime":
            r_i = self.store.coll(collection_name).rules.index(rule)
            raise PolicyError(f"{self.store.policy.source or '<policy>'}: systems.{self.store.name}.collections."
                              f"{collection_name}.rules[{r_i}].start.orphaned: column {marker!r} has type "
                              f"{type_name(col.type)}; the orphan marker holds a timestamp")
        free = self.unreferenced(collection_name, t)
        steps = [("orphan_stamp", sa.and_(col.is_(None), free), {marker: bind_time(col, now)}),
                 ("orphan_clear", sa.and_(col.is_not(None), sa.not_(free)), {marker: None})]
        return self.mark_in_batches(collection_name, t, steps, batch_size, record)

    def mark_in_batches(self, name: str, t: sa.Table, steps: list[tuple[str, Any, dict[str, Any]]],
                        batch_size: int, record: Recorder) -> dict[str, int]:
        """Walk the table by primary-key ranges (one column, or a composite key as a row value) of about
        ``size`` rows, one transaction per range: for each step ``(action, where, values)`` select the keys in
        the range matching ``where`` and ``UPDATE ... SET values WHERE <range> AND where`` (repeated, so a row
        that changed meanwhile is left), one ledger entry per step that changed rows. The range bound comes
        from the key index alone, so each batch's ``NOT EXISTS`` tests only that range's rows (an index on the
        reference serves it) and the walk reads the table once. Sizes adapt like the sweep's (``BatchSizer``)."""
        pk = self.store.key_cols(name, t)
        sizer = BatchSizer(batch_size)
        totals = {action: 0 for action, _, _ in steps}
        last: tuple | None = None
        batch = 0
        while True:
            started = time.perf_counter()
            size = sizer.size
            changed = []
            with self.store.engine.begin() as conn:
                bound = conn.execute(sa.select(*pk).where(*self.store.keys_after(pk, last)).order_by(*pk)
                                     .offset(size - 1).limit(1)).first()
                in_range = [*self.store.keys_after(pk, last),
                            *(self.store.keys_upto(pk, tuple(bound)) if bound else [])]
                for action, where, values in steps:
                    stmt = t.update().where(*in_range, where).values(values)
                    if conn.dialect.update_returning:  # PostgreSQL, SQLite: the keys come back from the UPDATE
                        changed.append((action, *self.store.returned_digest(conn, stmt, pk)))
                        continue
                    # MariaDB: no UPDATE ... RETURNING; the keys are locked first, so the UPDATE changes exactly them
                    keys = sorted(key_of(r) for r in conn.execute(sa.select(*pk).where(*in_range, where)
                                                                  .with_for_update()))
                    if keys:
                        changed.append((action, conn.execute(stmt).rowcount, self.store.pk_digest(keys)))
            sizer.took(size if bound else 0, time.perf_counter() - started)
            batch += 1
            for action, n, digest in changed:
                if n:
                    totals[action] += n
                    record(action, n, digest, {"batch": batch})
            if bound is None:
                return totals
            last = tuple(bound)

    def referenced_keys(self, collection_name: str, reference: Reference, keys: list[str]) -> set[str]:
        """Which of ``keys`` (object keys of ``reference.to``) a row of this collection names: through the
        key column (the exact key), or through ``key_template`` (the key's fields are the row's columns; a
        template ending in ``/`` or ``...`` owns every key below it). Compared exactly in Python: the database's
        collation only narrows the candidates."""
        t = self.store.table(collection_name)
        if reference.key_template:
            template = reference.key_template
            pattern = keytemplate.regex(template + "..." if template.endswith("/") else template)
            names = keytemplate.fields(template)
            parsed = {k: m.groupdict() for k in keys if (m := pattern.fullmatch(k))}
            cols = [t.c[n] for n in names]
            wanted = {k: tuple(d[n] for n in names) for k, d in parsed.items()}
        else:
            cols = [t.c[reference.column]]
            wanted = {k: (k,) for k in keys}
        lead = cols[0]
        values = sorted({w[0] for w in wanted.values()})
        if isinstance(lead.type, sa.Integer):  # a key part that is no number names no row
            values = [int(v) for v in values if v.isdigit()]
        have: set[tuple[str, ...]] = set()
        with self.store.engine.connect() as conn:
            for i in range(0, len(values), IN_CHUNK):
                rows = conn.execute(sa.select(*cols).where(lead.in_(values[i:i + IN_CHUNK])))
                have |= {tuple(str(v) for v in row) for row in rows}
        return {k for k, w in wanted.items() if w in have}
