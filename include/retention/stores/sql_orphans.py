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
from typing import Any

import sqlalchemy as sa

from include.retention import keytemplate
from include.retention.policy import Reference, Rule, referrers
from include.retention.stores.base import Recorder
from include.retention.stores.sql_keys import key_of

IN_CHUNK = 500  # values per IN list


class SqlOrphans:
    """Mixin of ``SqlStore``: the orphan marker and the key look-up for S3 orphan rules."""

    def unreferenced(self, name: str, t: sa.Table) -> sa.ColumnElement[bool]:
        """Rows of ``t`` no referencing collection refers to (one ``NOT EXISTS`` per reference). A reference
        compares as the database does: under a case-insensitive collation ``'A'`` keeps ``'a'`` (kept, never
        deleted too early)."""
        coll = self.coll(name)
        tests = []
        for i, (owner, ref) in enumerate(referrers(self.policy, self.ref(name))):
            child = self.table(owner.partition(".")[2]).alias(f"orphan_ref_{i}")
            tests.append(sa.not_(sa.exists().where(child.c[ref.column] == t.c[ref.to_column or coll.key_columns()[0]])))
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
        t = self.table(collection_name)
        col = t.c[marker]
        if column_kind(col.type) != "datetime":
            r_i = self.coll(collection_name).rules.index(rule)
            raise PolicyError(f"{self.policy.source or '<policy>'}: systems.{self.name}.collections."
                              f"{collection_name}.rules[{r_i}].start.orphaned: column {marker!r} has type "
                              f"{type_name(col.type)}; the orphan marker holds a timestamp")
        free = self.unreferenced(collection_name, t)
        steps = (("orphan_stamp", sa.and_(col.is_(None), free), self._bind_time(col, now)),
                 ("orphan_clear", sa.and_(col.is_not(None), sa.not_(free)), None))
        return {action: self._mark_in_batches(collection_name, t, action, where, {marker: value}, batch_size, record)
                for action, where, value in steps}

    def _mark_in_batches(self, name: str, t: sa.Table, action: str, where: Any, values: dict[str, Any],
                         batch_size: int, record: Recorder) -> int:
        """``UPDATE ... SET values WHERE where`` over the primary key, ``batch_size`` keys per transaction: select
        the next keys, update that key range with ``where`` repeated (a row that changed meanwhile is left)."""
        pk = self.key_cols(name, t)  # one column, or a composite key (walked as a row value)
        last, total, batch = None, 0, 0
        while True:
            with self.engine.begin() as conn:
                rows = conn.execute(sa.select(*pk).where(where, *self._after(pk, last)).order_by(*pk)
                                    .limit(batch_size)).all()
                if not rows:
                    break
                keys = [key_of(r) for r in rows]
                n = conn.execute(t.update().where(*self._after(pk, last), *self._upto(pk, tuple(rows[-1])), where)
                                 .values(values)).rowcount
            last = tuple(rows[-1])
            if n:
                batch += 1
                total += n
                record(action, n, self._pk_digest(keys), {"batch": batch})
            if len(keys) < batch_size:
                break
        return total

    # ---- S3 objects no row owns -------------------------------------------------------------
    def referenced_keys(self, collection_name: str, reference: Reference, keys: list[str]) -> set[str]:
        """Which of ``keys`` (object keys of ``reference.to``) a row of this collection names: through the
        key column (the exact key), or through ``key_template`` (the key's fields are the row's columns; a
        template ending in ``/`` or ``...`` owns every key below it). Compared exactly in Python: the database's
        collation only narrows the candidates."""
        t = self.table(collection_name)
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
        with self.engine.connect() as conn:
            for i in range(0, len(values), IN_CHUNK):
                rows = conn.execute(sa.select(*cols).where(lead.in_(values[i:i + IN_CHUNK])))
                have |= {tuple(str(v) for v in row) for row in rows}
        return {k for k, w in wanted.items() if w in have}
