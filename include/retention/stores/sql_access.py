"""Read-only lookups an access package needs from a SQL store (ADR 0008): whose rows are a person's own, the
values a reference points at, and the rows that reference given values (children, in this database or
another one).

Every match is decided in Python, exactly: the database's ``IN`` only narrows the rows read (bounded
batches of ``CHUNK`` values), so no collation widens it (MariaDB's default collation calls ``'A1'`` and
``'a1 '`` equal to ``'a1'``; a child of ``'A1'`` is not a child of ``'a1'``). Nothing here writes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from include.retention.identity import normalise
from include.retention.stores.base import Claims, Subject, index_subjects
from include.retention.stores.sql_keys import chunks, key_in, key_of

if TYPE_CHECKING:
    from include.retention.policy import Reference
    from include.retention.stores.sql_core import SqlCore


class SqlAccess:
    """The read-only half of an access request (a collaborator of ``SqlStore``: it reads the store's collections,
    tables and keys)."""

    def __init__(self, store: SqlCore):
        self.store = store

    def owned(self, collection_name: str, claims: Claims, subjects: list[Subject]
              ) -> tuple[Claims, dict[Any, set[str]]]:
        """Split ``claims`` into the rows that are the subjects' own (an ``erase: row`` identity field holds one
        of their values) and the rows that only mention them (``erase: mask`` fields): key -> the columns that
        mention them. Rows that carry neither any more are dropped."""
        coll, t = self.store.coll(collection_name), self.store.table(collection_name)
        pk = self.store.key_cols(collection_name, t)
        fields = coll.identity_fields()
        if all(f.erase == "row" for _, f in fields):
            return claims, {}
        wanted = index_subjects(subjects)
        cols = sorted({f.column for _, f in fields})
        owned, mentioned = Claims(), {}
        for chunk in chunks(sorted(claims)):
            with self.store.engine.connect() as conn:
                rows = conn.execute(sa.select(*pk, *(t.c[c] for c in cols)).where(key_in(pk, chunk))).all()
            for row in rows:
                key, values = key_of(row[:len(pk)]), dict(zip(cols, row[len(pk):], strict=True))
                whole, mention = set(), set()
                for kind, f in fields:
                    value = normalise(kind, values[f.column])
                    rids = wanted.get(kind, {}).get(value, set()) if value is not None else set()
                    if rids and f.erase == "row":
                        whole |= rids & set(claims.get(key, ()))
                    elif rids:
                        mention.add(f.column)
                if whole:
                    for rid in whole:
                        owned.add(key, rid)
                elif mention:
                    mentioned[key] = mention
        return owned, mentioned

    def column_values(self, collection_name: str, keys: list[Any], columns: list[str]) -> dict[Any, tuple]:
        """Per key of ``keys``: the row's values of ``columns`` (what its children's references hold)."""
        t = self.store.table(collection_name)
        pk = self.store.key_cols(collection_name, t)
        out: dict[Any, tuple] = {}
        for chunk in chunks(sorted(keys)):
            with self.store.engine.connect() as conn:
                for row in conn.execute(sa.select(*pk, *(t.c[c] for c in columns)).where(key_in(pk, chunk))):
                    out[key_of(row[:len(pk)])] = tuple(row[len(pk):])
        return out

    def children(self, collection_name: str, reference: Reference, parent_values: list[tuple]) -> dict[Any, tuple]:
        """The rows here whose ``reference`` columns hold exactly one of ``parent_values`` (tuples paired with
        ``reference.source_columns()``; all pairs equal, compared in Python): child key -> the value tuple.
        A tuple with a NULL matches nothing."""
        t = self.store.table(collection_name)
        pk, src = self.store.key_cols(collection_name, t), [t.c[c] for c in reference.source_columns()]
        exact = {tuple(v) for v in parent_values if all(x is not None for x in v)}
        out: dict[Any, tuple] = {}
        n = len(pk)
        for chunk in chunks(sorted(exact, key=repr)):
            test = src[0].in_([v[0] for v in chunk]) if len(src) == 1 else sa.tuple_(*src).in_(chunk)
            with self.store.engine.connect() as conn:
                for row in conn.execute(sa.select(*pk, *src).where(test)):
                    value = tuple(row[n:])
                    if value in exact:  # Python's equality: 'A1' != 'a1' != 'a1 ', '1' != 1
                        out[key_of(row[:n])] = value
        return out
