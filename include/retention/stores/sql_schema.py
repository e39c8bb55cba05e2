"""The SQL store's schema: its tables reflected once, and what ``SqlStore.check`` checks against the catalogue
(references pointing at unique columns, ``nullify`` on nullable columns, a computed start's column types)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from include.retention.policy import Policy, Reference, Rule, referrers
from include.retention.values import CollectionRef

if TYPE_CHECKING:
    from include.retention.stores.sql_core import SqlCore


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


def reflect_tables(engine: sa.Engine, names: list[str]) -> dict[str, sa.Table]:
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
                # a partial unique index (``... WHERE``) says nothing of the rows outside it (``unique_on``)
                partial = any(k.endswith("_where") and v is not None
                              for k, v in (ix.get("dialect_options") or {}).items())
                sa.Index(ix["name"], *(t.c[c] for c in ix["column_names"]), unique=bool(ix.get("unique")),
                         info={"partial": partial})
        for uq in uniques.get(key) or []:
            if uq["column_names"] and all(c in t.c for c in uq["column_names"]):
                t.append_constraint(sa.UniqueConstraint(*uq["column_names"], name=uq.get("name")))
        out[table_name] = t
    return out


def unique_on(t: sa.Table, cols: list[str], declared_key: list[str]) -> bool:
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


def key_problem(store: SqlCore, name: str) -> str | None:
    """The problem of the collection's declared ``primary_key`` when it is not unique in the database, else None.
    Rows are read, changed and deleted by their declared key: a key two rows share (``id`` of a table keyed by
    ``(tenant, id)``) would take another tenant's row along with the person's, or hand it out in an access package.

    Where the catalogue reports a primary key, unique constraint or unique index, the declared key must cover one
    of them. Where it reports none (a view, a table without keys), the rows are asked: no two may share the key
    now (compared by the database, as its statements compare)."""
    t, coll = store.table(name), store.coll(name)
    cols = coll.key_columns()
    if not all(c in t.c for c in cols) or unique_on(t, cols, []):
        return None  # a missing column is the declared-columns check's to report
    path = f"systems.{store.name}.collections.{name}.primary_key"
    if not _reports_uniqueness(t):
        if not _shared_key(store.engine, t, cols):
            return None
        return (f"{path}: two rows of {t.name} (which the database gives no primary key or unique constraint) share "
                f"a value of {', '.join(cols)}; rows are read, changed and deleted by this key, so one row's erasure "
                "or access would take the other along (declare the columns that identify one row)")
    return (f"{path}: column(s) {', '.join(cols)} of table {t.name} are not unique there: neither the primary key "
            "nor a unique constraint or unique index the database reports is covered by them; rows are read, "
            "changed and deleted by this key, so one row's erasure or access would take every row holding the same "
            "key (declare all the columns of the table's key, e.g. [tenant_id, id], or make them unique in the "
            "database)")


def _reports_uniqueness(t: sa.Table) -> bool:
    return bool(t.primary_key.columns) or any(isinstance(c, sa.UniqueConstraint) for c in t.constraints) or any(
        ix.unique for ix in t.indexes)


def _shared_key(engine: sa.Engine, t: sa.Table, cols: list[str]) -> bool:
    """Whether two rows of ``t`` hold the same (non-NULL) values in ``cols`` now."""
    key = [t.c[c] for c in cols]
    query = (sa.select(*key).where(*(c.is_not(None) for c in key)).group_by(*key)
             .having(sa.func.count() > 1).limit(1))
    with engine.connect() as conn:
        return conn.execute(query).first() is not None


def check_references(store: SqlCore, name: str) -> str | None:
    """References between tables of this database, as its catalogue reports them (ADR 0012):

    - a reference points at columns unique in the target: its declared primary key, or columns the database
      reports a primary key, unique constraint or (not partial) unique index on, covering them; else a child
      would belong to every parent with the same value (two tenants' customers sharing a ``customer_id``);
    - ``nullify`` clears columns that can hold NULL.

    Checked for the references to this collection (from any database: the target's catalogue is here) and
    for this collection's own, and those of its children in this database (a delete here nullifies them)."""
    coll = store.coll(name)
    for owner, ref in referrers(store.policy, store.ref(name)):
        if ref.source_columns() and _holds_rows(store.policy, owner):
            problem = unique_problem(store, owner, ref, name)
            if problem:
                return problem
    for ref in coll.references:
        to_sys, to_name = CollectionRef.parse(ref.to)
        if not ref.source_columns() or not _holds_rows(store.policy, to_sys):
            continue
        if to_sys == store.name:
            problem = unique_problem(store, store.ref(name), ref, to_name)
            if problem:
                return problem
    for owner in [store.ref(name)] + [c for c, _ in store.policy.children(store.ref(name))]:
        o_sys, o_name = CollectionRef.parse(owner)
        if o_sys != store.name:
            continue
        t = store.table(o_name)
        for i, ref in enumerate(store.coll(o_name).references):
            if ref.on_delete != "nullify" or not ref.source_columns():
                continue
            not_null = [c for c in ref.source_columns() if c in t.c and not t.c[c].nullable]
            if not_null:
                return (f"systems.{o_sys}.collections.{o_name}.references[{i}].on_delete: 'nullify' would "
                        f"clear column(s) {', '.join(not_null)} of table {t.name}, which the database declares "
                        "NOT NULL: use 'on_delete: delete' (or let the column(s) hold NULL)")
    return None

def unique_problem(store: SqlCore, owner: str, ref: Reference, target: str) -> str | None:
    """The problem of ``owner``'s reference ``ref`` when the columns it points at in this database's
    collection ``target`` are not unique there (``check_references``), else None."""
    t, coll = store.table(target), store.coll(target)
    cols = ref.target_columns(coll)
    if not all(c in t.c for c in cols) or unique_on(t, cols, coll.key_columns()):
        return None  # a missing column is the declared-columns check's to report
    o_sys, o_name = CollectionRef.parse(owner)
    i = store.policy.collection(owner).references.index(ref)
    field = ("to_columns" if ref.to_columns else "to_column" if ref.to_column
             else "columns" if ref.composite else "column")
    return (f"systems.{o_sys}.collections.{o_name}.references[{i}].{field}: column(s) {', '.join(cols)} of "
            f"{ref.to} (table {t.name}) are not unique there: neither its primary key nor a unique constraint or "
            f"unique index the database reports; a row of {owner} would belong to every {ref.to} row holding "
            "the same value(s) (name columns a primary key or unique constraint covers, e.g. all the columns of "
            "a tenant's key)")

def check_start(rule: Rule, t: sa.Table, where: str) -> str | None:
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


def _holds_rows(policy: Policy, ref: str) -> bool:
    """Whether ``ref``'s system is a SQL one (its rows, with their columns, are in a catalogue this check can read).
    Data-map validation against the catalogue, inside the SQL store: the one place here that names a kind
    (``stores.kinds`` answers the same for the layers above, which have only the data map)."""
    return policy.systems[ref.partition(".")[0]].kind == "sql"
