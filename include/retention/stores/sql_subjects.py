"""Subject operations of the SQL store: find, read, erase, restrict and re-scan one person's rows.

Equality is Python's (``include.retention.identity.normalise``): a scan reads the identity
columns in primary-key batches and compares normalised values, so no collation, ``lower()``
or ``trim()`` of any database can widen (or narrow) a match (ADR 0005). Acting is done per
chunk of claimed keys in one transaction that first locks the rows (``SELECT ... FOR UPDATE``;
SQLite transactions are ``BEGIN IMMEDIATE``), re-reads their identities and hold state and
acts only on rows a request still claims, with the guard repeated in the final statement.

Exceptions (GDPR Art. 17(3)) are kept and listed, never deleted: a legal hold, held
dependents a delete would cascade onto, and any lock that is not the subject's own earlier
restriction (a sweep's statutory lock, somebody else's reason). The subject's own restriction
is lifted by the erasure.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from include.retention.clock import utcnow
from include.retention.errors import RetentionError, SchemaMismatch
from include.retention.identity import normalise
from include.retention.masking import STRATEGIES
from include.retention.stores import sql_index
from include.retention.stores.base import (
    ERASURE_EXCEPTION,
    RESTRICTION,
    Claims,
    Subject,
    SubjectOutcome,
    claimed_keys,
    index_subjects,
    lock_reason_for,
    own_lock_reasons,
    renamed_lock_reasons,
)
from include.retention.stores.sql_fit import Target, bind_value, storage_charsets
from include.retention.stores.sql_keys import after, chunks, has_row_values, key_eq, key_in, key_of
from include.retention.stores.sql_predicates import bind_time

if TYPE_CHECKING:
    from include.retention.policy import Collection, IdentityField
    from include.retention.stores.sql_core import SqlCore

log = logging.getLogger(__name__)

SCAN_BATCH = 5000  # rows per identity scan query


class SqlSubjects:
    """The subject half of the store interface (a collaborator of ``SqlStore``: it reads the store's collections,
    tables, keys and predicates, and acts through its ``acts`` and ``cascade``)."""

    def __init__(self, store: SqlCore):
        self.store = store

    def _identity_cols(self, coll: Collection) -> list[str]:
        return sorted({f.column for _, f in coll.identity_fields()})

    def scan(self, collection_name: str) -> Iterator[list[tuple[Any, dict[str, set[str]]]]]:
        return self._scan(collection_name, owned_only=False)

    def scan_owned(self, collection_name: str) -> Iterator[list[tuple[Any, dict[str, set[str]]]]]:
        return self._scan(collection_name, owned_only=True)

    def _scan(self, collection_name: str, *, owned_only: bool) -> Iterator[list[tuple[Any, dict[str, set[str]]]]]:
        self.store.check(collection_name)  # holds and conditions typed before any row is judged by them
        coll, t = self.store.coll(collection_name), self.store.table(collection_name)
        keys = self.store.key_cols(collection_name, t)
        n = len(keys)
        fields = [(k, f) for k, f in coll.identity_fields() if not owned_only or f.erase == "row"]
        cols = sorted({f.column for _, f in fields})
        last = None
        while True:
            query = (sa.select(*keys, *(t.c[c] for c in cols)).order_by(*keys).limit(SCAN_BATCH)
                     .where(*after(keys, last, has_row_values(self.store.engine.dialect))))
            with self.store.engine.connect() as conn:
                rows = conn.execute(query).all()
            if not rows:
                return
            yield [(key_of(row[:n]), _identities(fields, dict(zip(cols, row[n:], strict=True)))) for row in rows]
            last = tuple(rows[-1][:n])
            if len(rows) < SCAN_BATCH:
                return

    def indexed_fields(self, collection_name: str) -> list[tuple[str, str]]:
        """(kind, column) of every identity field, when all of them declare ``lookup: indexed``; else []."""
        fields = self.store.coll(collection_name).identity_fields()
        if not fields or any(f.lookup != "indexed" for _, f in fields):
            return []
        return [(kind, f.column) for kind, f in fields]

    def check_index(self, collection_name: str) -> None:
        """Refuse a ``lookup: indexed`` collection whose database lacks the digest column, index or triggers."""
        t = self.store.table(collection_name)
        coll = self.store.coll(collection_name)
        for _kind, f in coll.identity_fields():
            if f.lookup != "indexed":
                continue
            missing = sql_index.problems(self.store.engine, t, f.column)
            if missing:
                raise SchemaMismatch(
                    f"{self.store.ref(collection_name)}.{f.column}: 'lookup: indexed' but table {t.name!r} lacks "
                    f"{', '.join(missing)}; print the DDL with `python -m include.retention.cli index-identities "
                    f"--ddl` for a DBA to run, then fill it with `index-identities --backfill`")

    def backfill_index(self, collection_name: str) -> int:
        """Fill the NULL digests of the collection's ``lookup: indexed`` columns (refused, naming what is missing,
        when the database lacks the digest column, index or triggers). Returns the rows digested."""
        self.store.check(collection_name)
        t = self.store.table(collection_name)
        fields = [(kind, f.column) for kind, f in self.store.coll(collection_name).identity_fields()
                  if f.lookup == "indexed"]
        return sql_index.backfill(self.store.engine, t, self.store.key_cols(collection_name, t), fields)

    def candidates(self, collection_name: str, subjects: list[Subject], *, owned_only: bool = False
                   ) -> Iterator[list[tuple[Any, dict[str, set[str]]]]]:
        """The rows whose digest columns hold one of the subjects' identity digests, or NULL (not digested yet),
        when every identity column is indexed; else ``scan`` (``owned_only``: ``scan_owned``). Python judges each
        candidate as in ``scan``; ``owned_only`` leaves out the fields that only mention someone (as
        ``scan_owned``)."""
        fields = self.indexed_fields(collection_name)
        if not fields:
            yield from self._scan(collection_name, owned_only=owned_only)
            return
        wanted = index_subjects(subjects)
        digests = {kind: sorted(sql_index.identity_digest(kind, v) for v in wanted.get(kind, {})) for kind, _ in fields}
        yield from self._indexed(collection_name, fields, digests, nulls=True, owned_only=owned_only)

    def index_candidates(self, collection_name: str, digests: dict[str, list[str]], *, undigested: bool = False
                         ) -> Iterator[list[tuple[Any, dict[str, set[str]]]]]:
        """As ``candidates``, for index digests (kind -> ``identity.index_digest`` values) rather than subjects; the
        rows not digested yet only with ``undigested``. Suppression enforcement's read (ADR 0022)."""
        fields = self.indexed_fields(collection_name)
        if not fields:
            raise RetentionError(f"{self.store.ref(collection_name)}: not every identity field is 'lookup: indexed'")
        yield from self._indexed(collection_name, fields, digests, nulls=undigested, owned_only=False)

    def _indexed(self, collection_name: str, fields: list[tuple[str, str]], digests: dict[str, list[str]], *,
                 nulls: bool, owned_only: bool) -> Iterator[list[tuple[Any, dict[str, set[str]]]]]:
        """Candidate rows through the digest columns (kind -> wanted digests), judged as ``_scan`` does."""
        self.store.check(collection_name)  # with ``check_index``: digest column, index and triggers are there
        by_column: dict[str, list[str]] = {}
        for kind, column in fields:
            by_column.setdefault(sql_index.digest_column(column), []).extend(digests.get(kind, []))
        coll, t = self.store.coll(collection_name), self.store.table(collection_name)
        keys = self.store.key_cols(collection_name, t)
        n = len(keys)
        cols = self._identity_cols(coll)
        judged = [(k, f) for k, f in coll.identity_fields() if not owned_only or f.erase == "row"]
        for rows in sql_index.candidate_batches(self.store.engine, t, keys, by_column, cols, nulls=nulls):
            yield [(key_of(row[:n]), _identities(judged, dict(zip(cols, row[n:], strict=True)))) for row in rows]

    @staticmethod
    def _row_claims(row: dict[str, Any], fields: list[tuple[str, IdentityField]],
                    wanted: dict[str, dict[str, set[str]]]) -> tuple[set[str], set[str], dict[str, str]]:
        """(request ids claiming the row as theirs, columns that only mention a subject, rid -> token source)."""
        whole: set[str] = set()
        mention_cols: set[str] = set()
        token_of: dict[str, str] = {}
        for kind, f in fields:
            value = normalise(kind, row[f.column])
            rids = wanted.get(kind, {}).get(value, set()) if value is not None else set()
            if not rids:
                continue
            for rid in rids:
                token_of.setdefault(rid, f"{kind}\x00{value}")
            if f.erase == "row":
                whole |= rids
            else:
                mention_cols.add(f.column)
        return whole, mention_cols, token_of

    def _state_columns(self, name: str, t: sa.Table, *, dependents: bool) -> list[Any]:
        """Hold and lock state of a row, evaluated by the database in the same statement that locks it."""
        coll = self.store.coll(name)
        cols: list[Any] = []
        held = self.store.predicates.held(name, t)
        cols.append((held if held is not None else sa.false()).label("_held"))
        deps = self.store.predicates.held_dependents(name, t) if dependents else []
        cols.append((sa.or_(*deps) if deps else sa.false()).label("_deps_held"))
        if coll.lock is not None:
            cols.append(t.c[coll.lock.at].label("_locked_at"))
            cols.append((t.c[coll.lock.reason] if coll.lock.reason else sa.null()).label("_lock_reason"))
        return cols

    def _locked_rows(self, conn, name: str, keys: list[Any], *, dependents: bool, lock: bool = True
                     ) -> list[dict[str, Any]]:
        coll, t = self.store.coll(name), self.store.table(name)
        cols = self.store.key_cols(name, t)
        query = (sa.select(*(c.label(f"_pk{i}") for i, c in enumerate(cols)),
                           *(t.c[c] for c in self._identity_cols(coll)),
                           *self._state_columns(name, t, dependents=dependents)).where(key_in(cols, keys)))
        out = []
        for r in conn.execute(query.with_for_update() if lock else query):
            row = dict(r._mapping)
            row["_pk"] = key_of([row.pop(f"_pk{i}") for i in range(len(cols))])
            out.append(row)
        if dependents and out:  # held dependents in other databases keep a row too
            elsewhere = self.store.cascade.held_elsewhere(conn, name, [r["_pk"] for r in out])
            for row in out:
                row["_deps_held"] = row["_deps_held"] or row["_pk"] in elsewhere
        return out

    def read(self, collection_name: str, claims: Claims) -> Iterator[list[dict[str, Any]]]:
        coll, t = self.store.coll(collection_name), self.store.table(collection_name)
        keys = self.store.key_cols(collection_name, t)
        cols = [t.c[c] for c in coll.columns]
        for chunk in chunks(sorted(claims)):
            with self.store.engine.connect() as conn:
                yield [dict(r._mapping) for r in conn.execute(sa.select(*cols).where(key_in(keys, chunk))
                                                              .order_by(*keys))]

    @staticmethod
    def _exception(row: dict[str, Any], own: set[str], *, deleting: bool) -> str | None:
        """Why a claimed row must be kept, or None."""
        if row["_held"]:
            return "legal_hold"
        if deleting and row["_deps_held"]:
            return "legal_hold_of_dependents"
        if row.get("_locked_at") is not None and row.get("_lock_reason") not in own:
            reason = row.get("_lock_reason") or ""
            return "statutory_lock" if reason.startswith("retention:") else "locked_for_another_reason"
        return None

    def erase(self, collection_name: str, claims: Claims, subjects: list[Subject], *, dry_run: bool
              ) -> SubjectOutcome:
        name = collection_name
        self.store.check(name)  # references and holds checked against the tables before anything is changed
        coll, ref = self.store.coll(name), self.store.ref(name)
        outcome = SubjectOutcome()
        keys = claimed_keys(self.store.name, claims)
        wanted = index_subjects(subjects)
        own = own_lock_reasons(subjects, self.store.mask_key)
        deleting = coll.erasure == "delete"
        changed_since = 0
        for chunk in chunks(keys):
            with self.store.engine.begin() as conn:
                rows = self._locked_rows(conn, name, chunk, dependents=deleting)
                whole_rows, mention_rows, kept_rows, gone_meanwhile = self._sort_rows(
                    rows, coll.identity_fields(), wanted, own, deleting, ref, outcome)
                changed_since += gone_meanwhile
                if not dry_run:
                    self._restrict_exceptions(conn, name, kept_rows)
                self._erase_mentions(conn, name, mention_rows, outcome, dry_run)
                if whole_rows:
                    self._erase_rows(conn, name, whole_rows, own, deleting, outcome, dry_run)
        if changed_since:
            log.warning("%s: %d claimed row(s) no longer carried the identity when acted on; left alone", ref,
                        changed_since)
        return outcome

    def _sort_rows(self, rows: list[dict[str, Any]], fields: list[tuple[str, IdentityField]],
                   wanted: dict[str, dict[str, set[str]]], own: set[str], deleting: bool, ref: str,
                   outcome: SubjectOutcome) -> tuple[list, list, list, int]:
        """An erasure's locked rows, sorted: (the subjects' own rows to erase, rows that only mention them, rows
        kept as exceptions (counted in ``outcome``), how many no longer carry any identity)."""
        whole_rows, mention_rows, kept_rows = [], [], []
        changed_since = 0
        for row in rows:
            whole, mention_cols, token_of = self._row_claims(row, fields, wanted)
            rids = whole or {rid for rid in token_of}
            if not rids:
                changed_since += 1  # no longer carries the identity: not ours to touch
                continue
            reason = self._exception(row, own, deleting=bool(whole) and deleting)
            if reason is not None:
                for rid in rids:
                    outcome.add(rid, ref, f"exception:{reason}")
                kept_rows.append((row, token_of[min(rids)]))
            elif whole:
                whole_rows.append((row, whole))
            else:
                mention_rows.append((row, mention_cols, set(token_of)))
        return whole_rows, mention_rows, kept_rows, changed_since

    def _erase_rows(self, conn, name: str, whole_rows: list[tuple[dict[str, Any], set[str]]], own: set[str],
                    deleting: bool, outcome: SubjectOutcome, dry_run: bool) -> None:
        """Delete (or anonymize) the subjects' own rows of a chunk, counting per request what went with them."""
        t, ref = self.store.table(name), self.store.ref(name)
        gone = [r["_pk"] for r, _ in whole_rows]
        lifted = {r["_pk"] for r, _ in whole_rows if r.get("_locked_at") is not None}
        for row, rids in whole_rows:
            for rid in rids:
                if row["_pk"] in lifted:
                    outcome.add(rid, ref, "lifted")
        if not deleting:
            n = len(gone) if dry_run else self._anonymize_subject_rows(conn, name, gone, own)
            self._count(outcome, whole_rows, ref, "anonymized", n)
            return
        children = self.store.acts.child_counts(conn, name, gone)
        for row, rids in whole_rows:
            for rid in rids:
                for child_ref, n in children.get(row["_pk"], {}).items():
                    outcome.add(rid, child_ref, "deleted_with_parent", n)
        if dry_run:
            self._count(outcome, whole_rows, ref, "deleted", len(gone))
            return
        cascaded: dict[str, int] = {}
        guard = self._erasable(name, t, own)
        n = self.store.acts.delete_keys(conn, name, gone, cascaded, guard=guard)
        self._count(outcome, whole_rows, ref, "deleted", n)
        for target, c in cascaded.items():
            outcome.add_total(target, c)

    @staticmethod
    def _count(outcome: SubjectOutcome, rows: list[tuple[dict[str, Any], set[str]]], ref: str, what: str,
               real: int) -> None:
        """Per-request counts of an action whose statement changed ``real`` rows (the truth for the ledger)."""
        for _row, rids in rows:
            for rid in rids:
                outcome.add(rid, ref, what)
        if real != len(rows):
            outcome.add_total(f"{ref}:{what}:changed_meanwhile", len(rows) - real)

    def _erasable(self, name: str, t: sa.Table, own: set[str], *, dependents: bool = True
                  ) -> sa.ColumnElement[bool]:
        """The guard repeated in the final statement: not held, no held dependents (unless ``dependents`` is
        False: a correction deletes nothing), unlocked or own lock."""
        coll = self.store.coll(name)
        preds = []
        held = self.store.predicates.held(name, t)
        if held is not None:
            preds.append(sa.not_(held))
        if dependents:
            preds += [sa.not_(d) for d in self.store.predicates.held_dependents(name, t)]
        if coll.lock is not None:
            free = t.c[coll.lock.at].is_(None)
            if coll.lock.reason and own:
                free = sa.or_(free, t.c[coll.lock.reason].in_(sorted(own)))
            preds.append(free)
        return sa.and_(*preds) if preds else sa.true()

    def _restrict_exceptions(self, conn, name: str, kept: list[tuple[dict[str, Any], str]]) -> None:
        """Kept rows are restricted (used for nothing else) unless they already carry a lock."""
        coll, t = self.store.coll(name), self.store.table(name)
        if coll.lock is None:
            return
        keys = self.store.key_cols(name, t)
        for row, token_source in kept:
            if row.get("_locked_at") is not None:
                continue
            values = {coll.lock.at: bind_time(t.c[coll.lock.at], utcnow())}
            if coll.lock.reason:
                values[coll.lock.reason] = lock_reason_for(ERASURE_EXCEPTION, token_source, self.store.mask_key)
            conn.execute(t.update().where(key_eq(keys, row["_pk"]), t.c[coll.lock.at].is_(None)).values(values))

    def _erase_mentions(self, conn, name: str, rows: list[tuple[dict[str, Any], set[str], set[str]]],
                        outcome: SubjectOutcome, dry_run: bool) -> None:
        """Rows that only mention a subject (``erase: mask`` fields): mask those fields, keep the row."""
        if not rows:
            return
        coll, t, ref = self.store.coll(name), self.store.table(name), self.store.ref(name)
        keys = self.store.key_cols(name, t)
        masks = {f.column: f.mask for _, f in coll.identity_fields() if f.erase == "mask"}
        for row, cols, rids in rows:
            if not dry_run:
                values = {}
                for c in cols:
                    strategy = STRATEGIES[masks[c].strategy]
                    values[c] = (strategy.sql(t.c[c], masks[c].value) if strategy.in_sql
                                 else strategy.python(row[c], masks[c].value, self.store.mask_key))
                conn.execute(t.update().where(key_eq(keys, row["_pk"])).values(values))
            for rid in rids:
                outcome.add(rid, ref, "masked")

    def _anonymize_subject_rows(self, conn, name: str, keys: list[Any], own: set[str]) -> int:
        coll, t = self.store.coll(name), self.store.table(name)
        mine = key_in(self.store.key_cols(name, t), keys)
        where = sa.and_(mine, self._erasable(name, t, own))
        n = self.store.acts.anonymize(conn, name, t, keys, where, coll.erasure_mask, utcnow())
        if coll.lock is not None and own and coll.lock.reason:
            # an anonymized row names nobody: the subject's own restriction of it has no object any more
            conn.execute(t.update().where(mine, t.c[coll.lock.reason].in_(sorted(own)))
                         .values({coll.lock.at: None, coll.lock.reason: None}))
        return n

    def restrict(self, collection_name: str, claims: Claims, subjects: list[Subject], *, dry_run: bool
                 ) -> SubjectOutcome:
        name = collection_name
        coll, t, ref = self.store.coll(name), self.store.table(name), self.store.ref(name)
        pk = self.store.key_cols(name, t)
        outcome = SubjectOutcome()
        keys = claimed_keys(self.store.name, claims)
        wanted = index_subjects(subjects)
        fields = coll.identity_fields()
        for chunk in chunks(keys):
            with self.store.engine.begin() as conn:
                for row in self._locked_rows(conn, name, chunk, dependents=False):
                    _whole, _mention, token_of = self._row_claims(row, fields, wanted)
                    if not token_of:
                        continue
                    if coll.lock is None:
                        what = "not_restrictable"  # verification reports it: the data map gives no lock marker
                    elif row.get("_locked_at") is not None:
                        what = "already_restricted"
                    else:
                        what = "restricted"
                        if not dry_run:
                            values = {coll.lock.at: bind_time(t.c[coll.lock.at], utcnow())}
                            if coll.lock.reason:
                                values[coll.lock.reason] = lock_reason_for(
                                    RESTRICTION, token_of[min(token_of)], self.store.mask_key)
                            n = conn.execute(t.update().where(key_eq(pk, row["_pk"]), t.c[coll.lock.at].is_(None))
                                             .values(values)).rowcount
                            what = "restricted" if n else "already_restricted"
                    for rid in token_of:
                        outcome.add(rid, ref, what)
        return outcome

    def remaining(self, collection_name: str, subjects: list[Subject], mode: str) -> dict[str, int]:
        # found as the request found them (through the index where declared): what the index cannot see (rows
        # changed with the triggers off) is the retention sweep's independent check's (ADR 0022)
        return self.left_of(collection_name, self.store.find(collection_name, subjects), subjects, mode)

    def left_of(self, collection_name: str, claims: Claims, subjects: list[Subject], mode: str) -> dict[str, int]:
        """Per request: of the ``claims`` (rows carrying the subjects' identities, found by the caller), those
        that may not stay after ``mode`` (not kept as an exception; for ``restrict``: not locked)."""
        name = collection_name
        own = own_lock_reasons(subjects, self.store.mask_key)
        # rectify: exceptions as it keeps them
        deleting = mode != "rectify" and self.store.coll(name).erasure == "delete"
        left: dict[str, int] = {}
        for chunk in chunks(sorted(claims)):
            with self.store.engine.connect() as conn:
                rows = self._locked_rows(conn, name, chunk, dependents=deleting, lock=False)
            for row in rows:
                if mode == "restrict":
                    allowed = row.get("_locked_at") is not None
                else:
                    allowed = self._exception(row, own, deleting=deleting) is not None
                if not allowed:
                    for rid in claims[row["_pk"]]:
                        left[rid] = left.get(rid, 0) + 1
        return left

    def _rectify_targets(self, collection_name: str, new_values: dict[str, str]) -> list[tuple[str, Target]]:
        """(kind, column) of every identity column of this collection that holds a kind being corrected."""
        t = self.store.table(collection_name)
        cache: dict[str, dict[str, str | None]] = self.__dict__.setdefault("_fit_charsets", {})
        if t.name not in cache:
            cache[t.name] = storage_charsets(self.store.engine, t.name)
        charsets = cache[t.name]
        out = []
        for kind, f in self.store.coll(collection_name).identity_fields():
            if kind in new_values:
                charset = charsets.get(f.column, charsets.get("*"))
                out.append((kind, Target(f"{self.store.ref(collection_name)}.{f.column}", t.c[f.column],
                                         self.store.engine.dialect.name, charset)))
        return out

    def rectify_problems(self, collection_name: str, claims: Claims, subjects: list[Subject],
                         new_values: dict[str, str]) -> list[str]:
        """Why the new values cannot be written into this collection's identity columns (type, width, character
        set; a unique column where the database's own collation finds the value on a row not claimed), or []."""
        problems: list[str] = []
        t = self.store.table(collection_name)
        pk = self.store.key_cols(collection_name, t)
        for kind, target in self._rectify_targets(collection_name, new_values):
            problem, value = bind_value(target, kind, new_values[kind])
            if problem:
                problems.append(problem)
            elif self._unique(t, target.column.name):
                with self.store.engine.connect() as conn:
                    taken = [key_of(r) for r in conn.execute(sa.select(*pk).where(target.column == value))]
                if any(k not in claims for k in taken):
                    problems.append(f"{target.where}: the column is unique and the database already counts the "
                                    f"new {kind} as the value of another record (its collation)")
        return problems

    @staticmethod
    def _unique(t: sa.Table, column: str) -> bool:
        """Whether ``column`` alone is unique (a unique constraint or index, or the primary key)."""
        sets = [[c.name for c in uc.columns] for uc in t.constraints if isinstance(uc, sa.UniqueConstraint)]
        sets += [[c.name for c in ix.columns] for ix in t.indexes if ix.unique]
        sets.append([c.name for c in t.primary_key.columns])
        return [column] in sets

    def rectify(self, collection_name: str, claims: Claims, subjects: list[Subject], new_values: dict[str, str],
                *, dry_run: bool) -> SubjectOutcome:
        """Replace the subjects' old identity values (the kinds in ``new_values``) with the new ones, in exactly
        the identity columns that hold an old value, of exactly the claimed rows (locked, re-read first)."""
        return self.rectify_all({collection_name: claims}, subjects, new_values, dry_run=dry_run)

    def rectify_all(self, claims: dict[str, Claims], subjects: list[Subject], new_values: dict[str, str], *,
                    dry_run: bool) -> SubjectOutcome:
        """``rectify`` of several collections of this system in ONE transaction: every change or none."""
        with self.store.engine.begin() as conn:
            return self.rectify_in(conn, claims, subjects, new_values, dry_run=dry_run)

    def rectify_in(self, conn, claims: dict[str, Claims], subjects: list[Subject], new_values: dict[str, str], *,
                   dry_run: bool) -> SubjectOutcome:
        """``rectify_all`` in the caller's transaction (``conn``), which it neither commits nor rolls back. Rows under
        legal hold or locked by a lock that is not the subjects' own are kept unchanged, counted as
        ``exception:<reason>``. A restriction of the subject's own, named by the old value, is renamed by the
        new one (a later request of the person with the new value still finds it their own). PostgreSQL checks
        deferred constraints at the end (``SET CONSTRAINTS ALL IMMEDIATE``): their failure is here, not at commit."""
        outcome = SubjectOutcome()
        keys = {name: claimed_keys(self.store.name, c) for name, c in claims.items() if c}
        binds: dict[tuple[str, str], Any] = {}
        for name in keys:
            for kind, target in self._rectify_targets(name, new_values):
                problem, value = bind_value(target, kind, new_values[kind])
                if problem:
                    raise RetentionError(f"rectify refused: {problem}; nothing was changed")
                binds[(name, target.column.name)] = value
        own = own_lock_reasons(subjects, self.store.mask_key)
        renamed = renamed_lock_reasons(subjects, new_values, self.store.mask_key)
        for name, names_keys in keys.items():
            for chunk in chunks(names_keys):
                self._rectify_chunk(conn, name, chunk, subjects, new_values, binds, own, renamed, outcome, dry_run)
        if keys and not dry_run and conn.dialect.name == "postgresql":
            conn.execute(sa.text("SET CONSTRAINTS ALL IMMEDIATE"))
        return outcome

    def _rectify_chunk(self, conn, name: str, chunk: list[Any], subjects: list[Subject], new_values: dict[str, str],
                       binds: dict[tuple[str, str], Any], own: set[str], renamed: dict[str, str],
                       outcome: SubjectOutcome, dry_run: bool) -> None:
        coll, t, ref = self.store.coll(name), self.store.table(name), self.store.ref(name)
        pk = self.store.key_cols(name, t)
        old = {s.request_id: s.identities for s in subjects}
        fields = [(kind, f) for kind, f in coll.identity_fields() if kind in new_values]
        guard = self._erasable(name, t, own, dependents=False)
        for row in self._locked_rows(conn, name, chunk, dependents=False):
            values: dict[str, Any] = {}
            rids: set[str] = set()
            for kind, f in fields:
                value = normalise(kind, row[f.column])
                owners = {rid for rid, ids in old.items() if value is not None and ids.get(kind) == value}
                if owners:
                    values[f.column] = binds[(name, f.column)]
                    rids |= owners
            if not values:
                continue  # no longer carries the old value: not ours to touch
            reason = self._exception(row, own, deleting=False)
            if reason is not None:  # kept exactly as it is (a statutory record, a hold, another's restriction)
                for rid in rids:
                    outcome.add(rid, ref, f"exception:{reason}")
                continue
            if row.get("_locked_at") is not None and coll.lock is not None and coll.lock.reason \
                    and row.get("_lock_reason") in renamed:
                values[coll.lock.reason] = renamed[row["_lock_reason"]]
            what = "rectified"
            if not dry_run:
                n = conn.execute(t.update().where(key_eq(pk, row["_pk"]), guard).values(values)).rowcount
                what = "rectified" if n else "changed_meanwhile"
            for rid in rids:
                outcome.add(rid, ref, what)

    def withdraw(self, collection_name: str, claims: Claims, subjects: list[Subject], consents: list[str] | None,
                 *, dry_run: bool) -> SubjectOutcome:
        """Set the consent columns of the subjects' own rows (not rows that only mention them) to their
        withdrawn value; a consent already withdrawn (column already set) is counted, not rewritten."""
        name = collection_name
        coll, t, ref = self.store.coll(name), self.store.table(name), self.store.ref(name)
        pk = self.store.key_cols(name, t)
        n_pk = len(pk)
        outcome = SubjectOutcome()
        chosen = [c for c in coll.consent if consents is None or c.name in consents]
        if not chosen:
            return outcome
        keys = claimed_keys(self.store.name, claims)
        wanted = index_subjects(subjects)
        fields = coll.identity_fields()
        now = utcnow()
        for chunk in chunks(keys):
            with self.store.engine.begin() as conn:
                rows = {r["_pk"]: r for r in self._locked_rows(conn, name, chunk, dependents=False)}
                current = {key_of(r[:n_pk]): r[n_pk:] for r in conn.execute(
                    sa.select(*pk, *(t.c[c.column] for c in chosen)).where(key_in(pk, list(rows))))} if rows else {}
                for key, row in rows.items():
                    whole, _mention, _tokens = self._row_claims(row, fields, wanted)
                    if not whole:
                        continue  # only mentions the subject: somebody else's consent
                    for i, consent in enumerate(chosen):
                        col = t.c[consent.column]
                        target = bind_time(col, now) if consent.withdrawn == "now" else consent.withdrawn
                        have = current[key][i]
                        done = have is not None if consent.withdrawn == "now" else have == consent.withdrawn
                        what = f"already_withdrawn:{consent.name}" if done else f"withdrawn:{consent.name}"
                        if not done and not dry_run:
                            guard = col.is_(None) if consent.withdrawn == "now" else sa.or_(
                                col.is_(None), col != consent.withdrawn)
                            n = conn.execute(t.update().where(key_eq(pk, key), guard).values({consent.column: target})
                                             ).rowcount
                            what = f"withdrawn:{consent.name}" if n else f"already_withdrawn:{consent.name}"
                        for rid in whole:
                            outcome.add(rid, ref, what)
        return outcome


def _identities(fields: list[tuple[str, IdentityField]], values: dict[str, Any]) -> dict[str, set[str]]:
    """A row's normalised identities by kind (``values``: column -> value), as ``scan`` gives them."""
    found: dict[str, set[str]] = {}
    for kind, f in fields:
        value = normalise(kind, values[f.column])
        if value is not None:
            found.setdefault(kind, set()).add(value)
    return found
