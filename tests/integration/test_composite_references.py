"""References of several columns (issue 21 item 4) on real PostgreSQL, MariaDB (default collation) and SQLite, and
across databases: orders and notes point at customers through ``(tenant_id, customer_id)``, and two tenants' different
customers share a ``customer_id`` (``c7``, ``c8``, ``c9``).

A sweep, an erasure and the orphan marker each touch exactly the rows of the right tenant: a child belongs to a parent
only when every column of the reference equals its partner. A held order keeps only its own tenant's customer. Every
kept row is compared byte for byte. Both spellings are run: a reference to the customers' composite primary key, and
one to a unique constraint the database reports (``(tenant_id, code)``). Validation refuses references to columns that
are not unique in the target (a one-column ``to_column: id``, a pair of columns), naming file, path and columns.
"""

from __future__ import annotations

import datetime as dt
import tempfile
import textwrap
import uuid

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from include.retention.connections import ConnInfo, make_engine
from include.retention.errors import PolicyError
from include.retention.ledger import Ledger, RunRef
from include.retention.policy import parse_policy
from include.retention.runtime import Runtime
from include.retention.stores.base import Subject
from include.retention.stores.sql import SqlStore
from include.retention.sweep import run_rule
from tests.conftest import KEY, MY_ADMIN, PG_ADMIN, fresh_tables

pytestmark = pytest.mark.integration

NOW = dt.datetime(2026, 11, 1)
OLD, RECENT, LONG_AGO = NOW - dt.timedelta(days=5), NOW - dt.timedelta(hours=1), NOW - dt.timedelta(days=400)
RULE = "shop.customers.gone"

md = sa.MetaData()
customers = sa.Table(
    "customers", md,
    sa.Column("tenant_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("id", sa.String(20), primary_key=True),
    sa.Column("code", sa.String(20), nullable=False), sa.Column("email", sa.String(100)),
    sa.Column("created_at", sa.DateTime), sa.Column("orphaned_since", sa.DateTime),
    sa.UniqueConstraint("tenant_id", "code", name="uq_customer_code"))
orders = sa.Table(
    "orders", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("tenant_id", sa.Integer), sa.Column("customer_id", sa.String(20)),
    sa.Column("customer_code", sa.String(20)), sa.Column("item", sa.String(50)),
    sa.Column("open", sa.Boolean, nullable=False))
notes = sa.Table(
    "notes", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("tenant_id", sa.Integer), sa.Column("customer_id", sa.String(20)),
    sa.Column("customer_code", sa.String(20)), sa.Column("body", sa.String(50)))

# (tenant, id, code, email, created_at, orphaned_since)
CUSTOMERS = [
    (1, "c7", "K7", "ann@t1.example", OLD, None),  # expired: goes, with orders 1, 2 (not tenant 2's order 3)
    (2, "c7", "K7", "bob@t2.example", RECENT, LONG_AGO),  # stays; referenced: its stale orphan stamp is cleared
    (1, "c8", "K8", "cy@t1.example", OLD, None),  # expired, but its own order 4 is held: stays
    (2, "c8", "K8", "di@t2.example", OLD, None),  # expired: goes (tenant 1's held order is not its)
    (1, "c9", "K9", "ed@t1.example", OLD, None),  # expired: goes (tenant 2's open order 7 is not its)
    (2, "c9", "K9", "fay@t2.example", RECENT, None),
    (1, "c5", "K5", "gus@t1.example", RECENT, LONG_AGO),  # nobody's orders: an orphan (tenant 2's c5 has one)
    (2, "c5", "K5", "hal@t2.example", RECENT, None),
    (2, "c4", "K4", "ivy@t2.example", RECENT, None),  # unreferenced (order 11 is tenant 1's c4): stamped
]
# (id, tenant, customer_id, customer_code, item, open)
ORDERS = [
    (1, 1, "c7", "K7", "t1 book", False), (2, 1, "c7", "K7", "t1 lamp", False), (3, 2, "c7", "K7", "t2 desk", False),
    (4, 1, "c8", "K8", "t1 held", True), (5, 1, "c8", "K8", "t1 sibling", False), (6, 2, "c8", "K8", "t2 chair", False),
    (7, 2, "c9", "K9", "t2 open", True), (8, 2, "c5", "K5", "t2 pen", False),
    (9, None, "c7", "K7", "no tenant", False), (10, 3, "c7", "K7", "tenant 3", False),
    (11, 1, "c4", "K4", "dangling", False),
]
# (id, tenant, customer_id, customer_code, body)
NOTES = [(1, 1, "c7", "K7", "n1"), (2, 2, "c7", "K7", "n2"), (3, 1, "c9", "K9", "n3"), (4, 2, "c8", "K8", "n4"),
         (5, 1, "c8", "K8", "n5"), (6, None, "c8", "K8", "n6")]
# differ from tenant 1's c7 / K7 only by case or trailing space: MariaDB's default collation calls them equal
LOOKALIKE_ORDERS = [(12, 1, "C7", "k7", "t1 upper", False), (13, 1, "c7 ", "K7 ", "t1 padded", False)]
LOOKALIKE_NOTES = [(7, 1, "C7", "k7", "n7")]

GONE_CUSTOMERS = {(1, "c7"), (2, "c8"), (1, "c9")}
GONE_ORDERS = {1, 2, 6}
NULLIFIED_NOTES = {1, 3, 4}

# the two spellings: the reference's columns in orders and notes, and the customers' columns they point at
SPELLINGS = {
    # the composite primary key: orders name no 'to_columns' (the key, in order), notes name them
    "key": ("{columns: [tenant_id, customer_id], to: shop.customers, on_delete: delete}",
            "{columns: [tenant_id, customer_id], to: shop.customers, to_columns: [tenant_id, id], on_delete: nullify}",
            ("tenant_id", "customer_id")),
    # a unique constraint the database reports, (tenant_id, code); the notes name it in another order
    "unique": ("{columns: [tenant_id, customer_code], to: shop.customers, to_columns: [tenant_id, code], "
               "on_delete: delete}",
               "{columns: [customer_code, tenant_id], to: shop.customers, to_columns: [code, tenant_id], "
               "on_delete: nullify}",
               ("tenant_id", "customer_code")),
}


def policy_text(spelling: str, *, split: bool = False, orphans: bool = False, orders_ref: str | None = None) -> str:
    """Customers in system ``shop``; orders and notes there too, or (``split``) in system ``sales`` of another
    database. ``orphans``: the customers' rule counts from the orphan marker instead of ``created_at``."""
    order_ref, note_ref, _ = SPELLINGS[spelling]
    rule = ("{name: gone, start: {orphaned: orphaned_since}, action: delete, period: P6M}" if orphans
            else "{name: gone, start: created_at, action: delete, period: P1D}")
    shop = textwrap.dedent(f"""\
        customers:
          table: customers
          primary_key: [tenant_id, id]
          columns: [tenant_id, id, code, email, created_at, orphaned_since]
          identities: {{email: email}}
          rules: [{rule}]
        """)
    children = textwrap.dedent(f"""\
        orders:
          table: orders
          primary_key: id
          columns: [id, tenant_id, customer_id, customer_code, item, open]
          legal_hold: [{{column: open, equals: true}}]
          references: [{orders_ref or order_ref}]
        notes:
          table: notes
          primary_key: id
          columns: [id, tenant_id, customer_id, customer_code, body]
          references: [{note_ref}]
        """)
    out = "version: 1\ndefaults: {max_fraction: 1.0, batch_size: 2}\nsystems:\n"
    out += "  shop:\n    kind: sql\n    connection: shop_db\n    collections:\n"
    out += textwrap.indent(shop + ("" if split else children), " " * 6)
    if split:
        out += "  sales:\n    kind: sql\n    connection: sales_db\n    collections:\n"
        out += textwrap.indent(children, " " * 6)
    return out


def _rows(engine: sa.Engine, table: sa.Table) -> set[tuple]:
    """Every row of ``table``, all columns, as stored (the byte-for-byte check)."""
    with engine.connect() as conn:
        return {tuple(r) for r in conn.execute(sa.select(table))}


def _fill(engine: sa.Engine, which: str, lookalikes: bool = False) -> None:
    with engine.begin() as conn:
        if which in ("all", "parents"):
            conn.execute(customers.insert(), [dict(zip(("tenant_id", "id", "code", "email", "created_at",
                                                        "orphaned_since"), c, strict=True)) for c in CUSTOMERS])
        if which in ("all", "children"):
            conn.execute(orders.insert(), [dict(zip(("id", "tenant_id", "customer_id", "customer_code", "item",
                                                     "open"), o, strict=True))
                                           for o in ORDERS + (LOOKALIKE_ORDERS if lookalikes else [])])
            conn.execute(notes.insert(), [dict(zip(("id", "tenant_id", "customer_id", "customer_code", "body"), n,
                                                   strict=True))
                                          for n in NOTES + (LOOKALIKE_NOTES if lookalikes else [])])


def _expected(spelling: str, gone_customers: set, gone_orders: set, nullified: set, lookalikes: bool = False):
    """(customers, orders, notes) rows as they must be: the rest exactly as seeded; a nullified note has every
    column of its reference NULL and nothing else changed."""
    cleared = {"tenant_id", "customer_id"} if spelling == "key" else {"tenant_id", "customer_code"}
    names = ("id", "tenant_id", "customer_id", "customer_code", "body")
    kept_customers = {c for c in CUSTOMERS if (c[0], c[1]) not in gone_customers}
    all_orders = ORDERS + (LOOKALIKE_ORDERS if lookalikes else [])
    all_notes = NOTES + (LOOKALIKE_NOTES if lookalikes else [])
    kept_orders = {o for o in all_orders if o[0] not in gone_orders}
    kept_notes = {tuple(None if n[0] in nullified and col in cleared else v for col, v in zip(names, n, strict=True))
                  for n in all_notes}
    return kept_customers, kept_orders, kept_notes


def _owner(spelling: str, row: tuple) -> tuple:
    """The (tenant, customer id) an order or note refers to under ``spelling`` (by key, or by unique code)."""
    if spelling == "key":
        return row[1], row[2]
    by_code = {(c[0], c[2]): (c[0], c[1]) for c in CUSTOMERS}
    return by_code.get((row[1], row[3]), (row[1], row[3]))


@pytest.fixture(params=list(SPELLINGS))
def spelling(request) -> str:
    return request.param


@pytest.fixture
def one_db(db_url, tmp_path, spelling):
    """Customers, orders and notes in one database (each of the three), the store and a ledger."""
    engine = fresh_tables(db_url, md)
    _fill(engine, "all")
    policy = parse_policy(policy_text(spelling), source="tenants.yaml")
    store = SqlStore("shop", policy, engine, mask_key=KEY)
    ledger = Ledger(make_engine(f"sqlite:///{tmp_path / 'ledger.db'}"), KEY)
    yield policy, store, ledger, engine
    store.close()
    ledger.engine.dispose()


def test_sweep_deletes_and_nullifies_exactly_the_expired_tenants_children(one_db, spelling):
    policy, store, ledger, engine = one_db
    _, _, rule = policy.rule(RULE)
    plan = store.plan("customers", rule, NOW)
    # (1, c8) is held by its own open order; the brake sees exactly the orders of the three that go
    assert plan.eligible == {"delete": 3} and plan.held == 1
    assert plan.cascaded["shop.orders"] == (len(GONE_ORDERS), len(ORDERS))
    counts = run_rule(policy, RULE, store, ledger, RunRef("t", "1"), now=NOW)
    assert counts["deleted"] == 3 and counts["held"] == 1
    assert counts["cascaded"] == {"shop.orders": len(GONE_ORDERS), "shop.notes:nullified": len(NULLIFIED_NOTES)}
    want = _expected(spelling, GONE_CUSTOMERS, GONE_ORDERS, NULLIFIED_NOTES)
    assert (_rows(engine, customers), _rows(engine, orders), _rows(engine, notes)) == want
    assert ledger.verify().ok
    again = run_rule(policy, RULE, store, ledger, RunRef("t", "2"), now=NOW)
    assert again["deleted"] == 0 and (_rows(engine, customers), _rows(engine, orders), _rows(engine, notes)) == want


def test_erasure_of_one_person_takes_only_her_tenants_orders(one_db, spelling):
    policy, store, _, engine = one_db
    ann = Subject("r1", {"email": "ann@t1.example"})  # tenant 1's c7; tenant 2's c7 is bob
    dry = store.erase("customers", store.find("customers", [ann]), [ann], dry_run=True)
    assert dry.per_request["r1"]["shop.orders"] == {"deleted_with_parent": 2}
    out = store.erase("customers", store.find("customers", [ann]), [ann], dry_run=False)
    assert out.per_request["r1"] == {"shop.customers": {"deleted": 1}, "shop.orders": {"deleted_with_parent": 2}}
    assert out.totals["shop.orders"] == 2 and out.totals["shop.notes:nullified"] == 1
    assert (_rows(engine, customers), _rows(engine, orders), _rows(engine, notes)) == _expected(
        spelling, {(1, "c7")}, {1, 2}, {1})
    assert store.remaining("customers", [ann], "erase") == {}
    # cy's own order is open: she stays, an exception; ed goes although tenant 2's c9 has an open order
    cy, ed = Subject("r2", {"email": "cy@t1.example"}), Subject("r3", {"email": "ed@t1.example"})
    out = store.erase("customers", store.find("customers", [cy, ed]), [cy, ed], dry_run=False)
    assert out.per_request["r2"] == {"shop.customers": {"exception:legal_hold_of_dependents": 1}}
    assert out.per_request["r3"] == {"shop.customers": {"deleted": 1}}
    assert out.totals.get("shop.orders", 0) == 0 and out.totals["shop.notes:nullified"] == 1
    assert (_rows(engine, customers), _rows(engine, orders), _rows(engine, notes)) == _expected(
        spelling, {(1, "c7"), (1, "c9")}, {1, 2}, {1, 3})
    assert store.remaining("customers", [cy, ed], "erase") == {}


def test_orphan_marker_follows_every_column_of_the_reference(db_url, tmp_path, spelling):
    engine = fresh_tables(db_url, md)
    _fill(engine, "all")
    policy = parse_policy(policy_text(spelling, orphans=True), source="tenants.yaml")
    store = SqlStore("shop", policy, engine, mask_key=KEY)
    ledger = Ledger(make_engine(f"sqlite:///{tmp_path / 'ledger.db'}"), KEY)
    referenced = {_owner(spelling, row) for row in ORDERS + NOTES}
    assert {(c[0], c[1]) for c in CUSTOMERS} - referenced == {(1, "c5"), (2, "c4")}
    counts = run_rule(policy, RULE, store, ledger, RunRef("t", "1"), now=NOW)
    # (1, c5) was stamped long ago and is still unreferenced: deleted (tenant 2's c5 has an order, it does not);
    # (2, c4) is stamped now (order 11 is tenant 1's c4); (2, c7) is referenced again: its stamp is cleared
    assert counts["deleted"] == 1
    stamps = {(c[0], c[1]): c[5] for c in _rows(engine, customers)}
    assert (1, "c5") not in stamps and stamps.pop((2, "c4")) == NOW and stamps.pop((2, "c7")) is None
    assert stamps == {(c[0], c[1]): c[5] for c in CUSTOMERS if (c[0], c[1]) not in {(1, "c5"), (2, "c4"), (2, "c7")}}
    assert _rows(engine, orders) == set(ORDERS) and _rows(engine, notes) == set(NOTES)
    done = {}
    for r in ledger.rows():
        if r["outcome"] == "done":
            done[r["action"]] = done.get(r["action"], 0) + r["count"]
    assert done == {"orphan_stamp": 1, "orphan_clear": 1, "delete": 1}
    store.close()
    ledger.engine.dispose()


# ---- across databases -------------------------------------------------------------------------------------------

PAIRS = [("postgresql", "mariadb"), ("mariadb", "postgresql")]


@pytest.fixture
def server_db(fresh_database):
    """Factory: a fresh database on ``kind``'s server, dropped after the test."""
    made = []

    def make(kind: str) -> str:
        name = f"rt_{uuid.uuid4().hex[:10]}"
        made.append((kind, name))
        return fresh_database(kind, name)

    yield make
    for kind, name in made:
        admin = sa.create_engine(PG_ADMIN if kind == "postgresql" else MY_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)' if kind == "postgresql"
                                 else f"DROP DATABASE IF EXISTS `{name}`"))
        admin.dispose()


@pytest.fixture(params=PAIRS, ids=[f"{p}-to-{c}" for p, c in PAIRS])
def split(request, server_db, tmp_path, spelling):
    """Customers in one server's database, orders and notes (with lookalikes) in the other's, and a Runtime."""
    parent_kind, child_kind = request.param
    urls = {"shop": server_db(parent_kind), "sales": server_db(child_kind)}
    shop, sales = fresh_tables(urls["shop"], md), fresh_tables(urls["sales"], md)
    _fill(shop, "parents")
    _fill(sales, "children", lookalikes=True)
    conns = {"shop_db": ConnInfo("sql", extra={"sqlalchemy_url": urls["shop"]}),
             "sales_db": ConnInfo("sql", extra={"sqlalchemy_url": urls["sales"]}),
             "retention_ledger": ConnInfo("sqlite", host=str(tmp_path / "ledger.db"))}
    rt = Runtime(parse_policy(policy_text(spelling, split=True), source="tenants.yaml"), conns.__getitem__, key=KEY)
    yield rt, shop, sales
    rt.close()
    shop.dispose()
    sales.dispose()


def test_sweep_across_databases_matches_every_column_exactly(split, spelling):
    rt, shop, sales = split
    store, ledger = rt.store("shop"), rt.ledger()
    _, _, rule = rt.policy.rule(RULE)
    plan = store.plan("customers", rule, NOW)
    assert plan.eligible == {"delete": 3} and plan.held == 1
    n, total = plan.cascaded["sales.orders"]  # the child database's collation may count lookalikes: stricter only
    assert total == len(ORDERS) + len(LOOKALIKE_ORDERS) and n >= len(GONE_ORDERS)
    counts = run_rule(rt.policy, RULE, store, ledger, RunRef("t", "1"), now=NOW)
    assert counts["deleted"] == 3 and counts["held"] == 1
    assert counts["cascaded"] == {"sales.orders": len(GONE_ORDERS), "sales.notes:nullified": len(NULLIFIED_NOTES)}
    kept_customers, kept_orders, kept_notes = _expected(spelling, GONE_CUSTOMERS, GONE_ORDERS, NULLIFIED_NOTES,
                                                        lookalikes=True)
    assert _rows(shop, customers) == kept_customers
    assert _rows(sales, orders) == kept_orders and _rows(sales, notes) == kept_notes  # lookalikes untouched
    settled = {}
    for r in ledger.rows():
        if r["action"] == "delete" and r["outcome"] == "done":
            settled[r["system"]] = settled.get(r["system"], 0) + r["count"]
    assert settled == {"shop": 3, "sales": len(GONE_ORDERS)}
    assert ledger.verify().ok


def test_erasure_across_databases_takes_only_her_tenants_orders(split, spelling):
    rt, shop, sales = split
    store = rt.store("shop")
    ann, cy = Subject("r1", {"email": "ann@t1.example"}), Subject("r2", {"email": "cy@t1.example"})
    out = store.erase("customers", store.find("customers", [ann, cy]), [ann, cy], dry_run=False)
    assert out.per_request["r1"] == {"shop.customers": {"deleted": 1}, "sales.orders": {"deleted_with_parent": 2}}
    assert out.per_request["r2"] == {"shop.customers": {"exception:legal_hold_of_dependents": 1}}
    assert out.totals["sales.orders"] == 2 and out.totals["sales.notes:nullified"] == 1
    kept_customers, kept_orders, kept_notes = _expected(spelling, {(1, "c7")}, {1, 2}, {1}, lookalikes=True)
    assert _rows(shop, customers) == kept_customers
    assert _rows(sales, orders) == kept_orders and _rows(sales, notes) == kept_notes
    assert store.remaining("customers", [ann, cy], "erase") == {}


# ---- validation ---------------------------------------------------------------------------------------------------

def _refused(engine: sa.Engine, policy_yaml: str, tmp_path) -> str:
    """Run the sweep and an erasure on customers under ``policy_yaml``: both refused before any change."""
    policy = parse_policy(policy_yaml, source="bad.yaml")  # the file itself is well formed
    before = (_rows(engine, customers), _rows(engine, orders), _rows(engine, notes))
    store = SqlStore("shop", policy, engine, mask_key=KEY)
    ledger = Ledger(make_engine(f"sqlite:///{tmp_path / f'{uuid.uuid4().hex[:6]}.db'}"), KEY)
    with pytest.raises(PolicyError) as info:
        run_rule(policy, RULE, store, ledger, RunRef("t", "1"), now=NOW)
    store.close()
    store = SqlStore("shop", policy, engine, mask_key=KEY)
    ann = Subject("r1", {"email": "ann@t1.example"})
    with pytest.raises(PolicyError) as again:
        store.erase("customers", {(1, "c7"): {"r1"}}, [ann], dry_run=False)
    store.close()
    ledger.engine.dispose()
    assert str(again.value) == str(info.value)
    assert (_rows(engine, customers), _rows(engine, orders), _rows(engine, notes)) == before
    return str(info.value)


def test_reference_to_columns_that_are_not_unique_is_refused(db_url, tmp_path):
    engine = fresh_tables(db_url, md)
    _fill(engine, "all")
    # one column: 'id' alone is not unique (two tenants' c7): the sweep would take both tenants' orders
    message = _refused(engine, policy_text("key", orders_ref="{column: customer_id, to: shop.customers, to_column: id, "
                                                             "on_delete: delete}"), tmp_path)
    assert message.startswith("bad.yaml: systems.shop.collections.orders.references[0].to_column: column(s) id of "
                              "shop.customers (table customers) are not unique there"), message
    # two columns that no key, constraint or index covers
    message = _refused(engine, policy_text("key", orders_ref="{columns: [tenant_id, customer_id], to: shop.customers, "
                                                             "to_columns: [tenant_id, email], on_delete: delete}"),
                       tmp_path)
    assert message.startswith("bad.yaml: systems.shop.collections.orders.references[0].to_columns: column(s) "
                              "tenant_id, email of shop.customers"), message
    assert "ann@" not in message  # names columns, never values
    engine.dispose()


def test_unique_index_reported_by_the_database_is_accepted_and_a_partial_one_is_not(db_url, tmp_path):
    engine = fresh_tables(db_url, md)
    _fill(engine, "all")
    by_email = policy_text("key", orders_ref="{columns: [tenant_id, customer_id], to: shop.customers, "
                                             "to_columns: [tenant_id, email], on_delete: delete}")
    if engine.dialect.name != "mysql":  # MariaDB has no partial indexes
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE UNIQUE INDEX ix_partial ON customers (tenant_id, email) "
                                 "WHERE created_at > '2000-01-01'")
        assert "to_columns: column(s) tenant_id, email" in _refused(engine, by_email, tmp_path)
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP INDEX ix_partial")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE UNIQUE INDEX ix_email ON customers (tenant_id, email)")
    policy = parse_policy(by_email, source="ok.yaml")
    store = SqlStore("shop", policy, engine, mask_key=KEY)
    store.check("customers")  # accepted: the database reports (tenant_id, email) unique
    store.close()
    # and the reference to the unique constraint (tenant_id, code) of the table's definition
    store = SqlStore("shop", parse_policy(policy_text("unique"), source="ok.yaml"), engine, mask_key=KEY)
    store.check("customers")
    store.close()
    engine.dispose()


def test_nullify_of_a_not_null_column_is_refused(db_url, tmp_path):
    strict = sa.MetaData()
    for table in (customers, orders):
        table.to_metadata(strict)
    sa.Table("notes", strict, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
             sa.Column("tenant_id", sa.Integer, nullable=False), sa.Column("customer_id", sa.String(20)),
             sa.Column("customer_code", sa.String(20)), sa.Column("body", sa.String(50)))
    engine = fresh_tables(db_url, strict)
    _fill(engine, "parents")
    with engine.begin() as conn:
        conn.execute(orders.insert(), [dict(zip(("id", "tenant_id", "customer_id", "customer_code", "item", "open"), o,
                                                strict=True)) for o in ORDERS])
        conn.execute(notes.insert(), [{"id": 1, "tenant_id": 1, "customer_id": "c7", "customer_code": "K7",
                                       "body": "n1"}])
    message = _refused(engine, policy_text("key"), tmp_path)
    assert message.startswith("bad.yaml: systems.shop.collections.notes.references[0].on_delete: 'nullify' would "
                              "clear column(s) tenant_id of table notes, which the database declares NOT NULL"), message
    engine.dispose()


# ---- any tenants, any ids: the sweep against a model of the reference -------------------------------------------

PARENT = st.tuples(st.integers(1, 3), st.sampled_from(["a", "b", "B", "b "]), st.booleans())  # expired or not
CHILD_REF = st.tuples(st.one_of(st.none(), st.integers(1, 3)), st.one_of(st.none(), st.sampled_from(["a", "b", "B"])))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parents=st.lists(PARENT, max_size=8, unique_by=lambda p: p[:2]),
       children=st.lists(st.tuples(CHILD_REF, st.booleans()), max_size=10),
       notes_of=st.lists(CHILD_REF, max_size=6), split=st.booleans())
def test_sweep_matches_a_model_of_every_column(parents, children, notes_of, split):
    """SQLite (one file, or parents and children in two): a customer goes when expired and no open order of its own
    (every column equal, none NULL) holds it; exactly its orders go and its notes' references are cleared."""
    with tempfile.TemporaryDirectory() as tmp:
        urls = {"shop": f"sqlite:///{tmp}/shop.db", "sales": f"sqlite:///{tmp}/sales.db" if split else None}
        urls["sales"] = urls["sales"] or urls["shop"]
        shop, sales = fresh_tables(urls["shop"], md), (fresh_tables(urls["sales"], md) if split else None)
        sales = sales or shop
        with shop.begin() as conn:
            if parents:
                conn.execute(customers.insert(), [{"tenant_id": t, "id": i, "code": f"K{n}", "email": f"{n}@x.example",
                                                   "created_at": OLD if old else RECENT}
                                                  for n, (t, i, old) in enumerate(parents)])
        with sales.begin() as conn:
            if children:
                conn.execute(orders.insert(), [{"id": n, "tenant_id": t, "customer_id": i, "customer_code": None,
                                                "item": f"o{n}", "open": o} for n, ((t, i), o) in enumerate(children)])
            if notes_of:
                conn.execute(notes.insert(), [{"id": n, "tenant_id": t, "customer_id": i, "customer_code": None,
                                               "body": f"n{n}"} for n, (t, i) in enumerate(notes_of)])
        conns = {"shop_db": ConnInfo("sql", extra={"sqlalchemy_url": urls["shop"]}),
                 "sales_db": ConnInfo("sql", extra={"sqlalchemy_url": urls["sales"]}),
                 "retention_ledger": ConnInfo("sqlite", host=f"{tmp}/ledger.db")}
        rt = Runtime(parse_policy(policy_text("key", split=split), source="model.yaml"), conns.__getitem__, key=KEY)
        system = "sales" if split else "shop"
        counts = run_rule(rt.policy, RULE, rt.store("shop"), rt.ledger(), RunRef("t", "1"), now=NOW)
        # the model: Python's equality on both columns, NULL refers to nothing
        held = {(t, i) for (t, i), o in children if o and t is not None and i is not None}
        gone = {(t, i) for t, i, old in parents if old and (t, i) not in held}
        gone_orders = {n for n, ((t, i), _) in enumerate(children) if (t, i) in gone}
        cleared = {n for n, (t, i) in enumerate(notes_of) if (t, i) in gone}
        assert counts["deleted"] == len(gone)
        assert counts["cascaded"].get(f"{system}.orders", 0) == len(gone_orders)
        assert counts["cascaded"].get(f"{system}.notes:nullified", 0) == len(cleared)
        assert {(c[0], c[1]) for c in _rows(shop, customers)} == {(t, i) for t, i, _ in parents} - gone
        assert {o[0] for o in _rows(sales, orders)} == set(range(len(children))) - gone_orders
        assert _rows(sales, notes) == {(n, None, None, None, f"n{n}") if n in cleared else (n, t, i, None, f"n{n}")
                                       for n, (t, i) in enumerate(notes_of)}
        rt.close()
        shop.dispose()
        sales.dispose()
