"""A data map's ``primary_key`` must be unique in the database (SQLite, PostgreSQL, MariaDB).

Every subject operation and sweep reads, changes and deletes rows by their declared key (``WHERE id IN (...)``).
A multi-tenant table keyed by ``(tenant, id)`` in the database, declared ``primary_key: id`` in the data map, holds
two tenants' different people under ``id = 5``: an erasure of the one would delete the other (the delete is by
key), an access package would hand out the other's row. ``SqlStore.check`` refuses such a key before anything is
read or changed (as it refuses a reference to columns that are not unique, ADR 0012); a declared key the database
makes unique (its primary key, a unique constraint, a unique index) is accepted; on a view (no key reported) the rows
are asked whether two share it.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from include.retention.errors import PolicyError
from include.retention.identity import normalise
from include.retention.policy import parse_policy
from include.retention.requests.access import PackageBuilder
from include.retention.requests.scanner import SubjectScanner
from include.retention.stores.base import Subject
from include.retention.stores.sql import SqlStore
from tests.conftest import KEY, fresh_tables

pytestmark = pytest.mark.integration

POLICY = """\
version: 1
defaults: {max_fraction: 1.0}
systems:
  shop:
    kind: sql
    connection: shop_db
    collections:
      customers:
        table: dk_customers
        primary_key: {KEY}
        columns: [tenant, id, email]
        identities: {email: email}
"""

ANN, BOB = "ann@example.org", "bob@example.org"


def table(md: sa.MetaData, unique: str) -> sa.Table:
    """(tenant, id) the primary key; ``unique``: what else the database says is unique."""
    extra = [sa.UniqueConstraint("id")] if unique == "constraint" else []
    t = sa.Table("dk_customers", md, sa.Column("tenant", sa.String(10), primary_key=True),
                 sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                 sa.Column("email", sa.String(100)), *extra)
    if unique == "index":
        sa.Index("dk_customers_id", t.c.id, unique=True)
    return t


def rows(engine: sa.Engine, t: sa.Table) -> list[tuple]:
    with engine.connect() as conn:
        return sorted(tuple(r) for r in conn.execute(sa.select(t)))


def test_a_declared_key_the_database_does_not_make_unique_is_refused(db_url, tmp_path):
    md = sa.MetaData()
    t = table(md, "none")
    engine = fresh_tables(db_url, md)
    with engine.begin() as conn:  # two tenants, two people, one id
        conn.execute(t.insert(), [{"tenant": "t1", "id": 5, "email": ANN}, {"tenant": "t2", "id": 5, "email": BOB}])
    before = rows(engine, t)
    policy = parse_policy(POLICY.replace("{KEY}", "id"), source="tenants.yaml")
    store = SqlStore("shop", policy, engine, mask_key=KEY)
    subject = [Subject("r", {"email": normalise("email", ANN)})]
    try:
        with pytest.raises(PolicyError, match=r"tenants\.yaml: systems\.shop\.collections\.customers\.primary_key"):
            SubjectScanner(policy, store).act(subject, "erase", dry_run=False)
        assert rows(engine, t) == before  # Bob's row (t2, 5) is still there, and so is Ann's
        builder = PackageBuilder(policy, {"shop": store}.__getitem__, subject, request_id="r",
                                 workdir=str(tmp_path))
        try:
            with pytest.raises(PolicyError, match="primary_key"):
                builder.build()  # no package holding Bob's row
        finally:
            builder.close()
    finally:
        store.close()
        engine.dispose()


@pytest.mark.parametrize("declared,unique", [("[tenant, id]", "none"), ("id", "constraint"), ("id", "index")])
def test_a_declared_key_the_database_makes_unique_is_accepted(db_url, declared, unique):
    md = sa.MetaData()
    t = table(md, unique)
    engine = fresh_tables(db_url, md)
    with engine.begin() as conn:
        conn.execute(t.insert(), [{"tenant": "t1", "id": 5, "email": ANN}, {"tenant": "t2", "id": 6, "email": BOB}])
    policy = parse_policy(POLICY.replace("{KEY}", declared), source="tenants.yaml")
    store = SqlStore("shop", policy, engine, mask_key=KEY)
    try:
        SubjectScanner(policy, store).act([Subject("r", {"email": normalise("email", ANN)})], "erase", dry_run=False)
        assert rows(engine, t) == [("t2", 6, BOB)]
    finally:
        store.close()
        engine.dispose()


@pytest.mark.parametrize("shared", [True, False])
def test_a_view_is_asked_whether_two_rows_share_the_key(db_url, shared):
    """A view (or a table the database gives no key) reports no uniqueness: its rows are asked. Two rows sharing
    the declared key refuse it before anything is changed; a key no two rows share is accepted."""
    md = sa.MetaData()
    t = table(md, "none")
    engine = fresh_tables(db_url, md)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP VIEW IF EXISTS dk_view"))
        conn.execute(t.insert(), [{"tenant": "t1", "id": 5, "email": ANN},
                                  {"tenant": "t2", "id": 5 if shared else 6, "email": BOB}])
        conn.execute(sa.text("CREATE VIEW dk_view AS SELECT tenant, id, email FROM dk_customers"))
    policy = parse_policy(POLICY.replace("{KEY}", "id").replace("table: dk_customers", "table: dk_view"),
                          source="tenants.yaml")
    store = SqlStore("shop", policy, engine, mask_key=KEY)
    try:
        if shared:
            with pytest.raises(PolicyError, match=r"primary_key: two rows of dk_view \(.*\) share a value of id"):
                store.check("customers")
        else:
            store.check("customers")
            claims = store.find("customers", [Subject("r", {"email": normalise("email", ANN)})])
            assert list(claims) == [5]
        assert rows(engine, t) == sorted([("t1", 5, ANN), ("t2", 5 if shared else 6, BOB)])
    finally:
        store.close()
        with engine.begin() as conn:
            conn.execute(sa.text("DROP VIEW dk_view"))
        engine.dispose()
