"""Access packages are complete and hold nobody else's data (issue 21, item 5), on real servers.

A shop in one database (customers keyed by ``(tenant, id)``, their ``code`` unique), a mailing system in another.
The person's rows are found by their address (two accounts, in two tenants), then through every reference:
``to_column`` children (vouchers by the customer's code), composite children (orders by ``(tenant,
customer_id)``), grandchildren (order items, event notes) and children in the other database (events by the
customer's code). Lookalikes are not theirs: the same customer id in another tenant, child codes ``C1``, ``c1 ``,
``X9``, ``x9 `` (MariaDB's collation calls them equal to ``c1`` / ``x9``; where the engine's unique index allows
them, customers of other people hold ``C1`` and ``c1 `` too), a row that only mentions the person (``erase:
mask``) and that row's own children. The zip's JSON and CSV are compared with the expected rows exactly, and the
manifest's counts per collection and per way they were reached. A data map whose reference points at columns that
are not unique (a child would belong to every parent holding the value) is refused before any row is read.
"""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

from include.retention.connections import ConnInfo, make_engine
from include.retention.errors import PolicyError
from include.retention.identity import normalise
from include.retention.policy import Policy, parse_policy
from include.retention.requests.access import PackageBuilder
from include.retention.runtime import Runtime
from include.retention.stores.base import Subject
from tests.conftest import KEY
from tests.integration.test_cross_database import server_db  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration

REQUEST = "req-ann"
ANN = "ann@example.org"

SHOP = """\
      shop:
        kind: sql
        connection: shop_db
        collections:
          customers:
            table: customers
            primary_key: [tenant, id]
            columns: [tenant, id, email, code, referrer_email]
            identities:
              email:
                - email
                - {column: referrer_email, erase: mask, mask: {strategy: redact, value: erased}}
          vouchers:
            table: vouchers
            primary_key: id
            columns: [id, customer_code, amount]
            references: [{to: shop.customers, column: customer_code, to_column: code, on_delete: delete}]
"""
ORDERS = """\
          orders:
            table: orders
            primary_key: id
            columns: [id, tenant, customer_id, total]
            references: [{to: shop.customers, columns: [tenant, customer_id], to_columns: [tenant, id],
                          on_delete: delete}]
          order_items:
            table: order_items
            primary_key: [order_id, line]
            columns: [order_id, line, sku]
            references: [{to: shop.orders, column: order_id, on_delete: delete}]
"""
MAIL = """\
      mail:
        kind: sql
        connection: mail_db
        collections:
          events:
            table: events
            primary_key: id
            columns: [id, customer_code, kind]
            references: [{to: shop.customers, column: customer_code, to_column: code, on_delete: delete}]
          event_notes:
            table: event_notes
            primary_key: id
            columns: [id, event_id, note]
            references: [{to: mail.events, column: event_id, on_delete: delete}]
"""

md = sa.MetaData()
customers = sa.Table("customers", md, sa.Column("tenant", sa.String(10), primary_key=True),
                     sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                     sa.Column("email", sa.String(100)), sa.Column("code", sa.String(10), unique=True),
                     sa.Column("referrer_email", sa.String(100)))
vouchers = sa.Table("vouchers", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                    sa.Column("customer_code", sa.String(10)), sa.Column("amount", sa.Integer))
orders = sa.Table("orders", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                  sa.Column("tenant", sa.String(10)), sa.Column("customer_id", sa.Integer),
                  sa.Column("total", sa.Integer))
order_items = sa.Table("order_items", md, sa.Column("order_id", sa.Integer, primary_key=True, autoincrement=False),
                       sa.Column("line", sa.Integer, primary_key=True, autoincrement=False),
                       sa.Column("sku", sa.String(10)))
mail_md = sa.MetaData()
events = sa.Table("events", mail_md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                  sa.Column("customer_code", sa.String(10)), sa.Column("kind", sa.String(20)))
event_notes = sa.Table("event_notes", mail_md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                       sa.Column("event_id", sa.Integer), sa.Column("note", sa.String(40)))
DATA_TABLES = ("customers", "vouchers", "orders", "order_items", "events", "event_notes")

CUSTOMERS = [
    {"tenant": "t1", "id": 1, "email": "Ann@Example.org", "code": "c1", "referrer_email": None},  # Ann
    {"tenant": "t1", "id": 3, "email": "dan@example.org", "code": "d1", "referrer_email": ANN},  # mentions Ann
    {"tenant": "t2", "id": 7, "email": ANN, "code": "x9", "referrer_email": None},  # Ann's second account
    {"tenant": "t3", "id": 9, "email": "zed@example.org", "code": "z9", "referrer_email": None},  # Zed
]
# customers whose codes differ from Ann's only by case / a trailing space: where the unique index allows them
# (PostgreSQL, SQLite; MariaDB's default collation calls them equal to 'c1' and refuses them, ``urls`` checks that)
LOOKALIKES = [
    {"tenant": "t2", "id": 1, "email": "bob@example.org", "code": "C1", "referrer_email": None},  # same id, tenant t2
    {"tenant": "t1", "id": 2, "email": "cat@example.org", "code": "c1 ", "referrer_email": None},
]
VOUCHERS = [{"id": 200, "customer_code": "c1", "amount": 5}, {"id": 201, "customer_code": "C1", "amount": 6},
            {"id": 202, "customer_code": "c1 ", "amount": 7}, {"id": 203, "customer_code": "c1", "amount": 8},
            {"id": 204, "customer_code": "d1", "amount": 9}, {"id": 205, "customer_code": None, "amount": 1},
            {"id": 206, "customer_code": "x9", "amount": 2}, {"id": 207, "customer_code": "z9", "amount": 3},
            {"id": 208, "customer_code": "X9", "amount": 4}]
ORDER_ROWS = [{"id": 10, "tenant": "t1", "customer_id": 1, "total": 100},
              {"id": 11, "tenant": "t1", "customer_id": 1, "total": 110},
              {"id": 12, "tenant": "t2", "customer_id": 1, "total": 120},  # Bob's: same customer id, other tenant
              {"id": 13, "tenant": "t1", "customer_id": 2, "total": 130},
              {"id": 14, "tenant": None, "customer_id": 1, "total": 140},
              {"id": 15, "tenant": "T1", "customer_id": 1, "total": 150},
              {"id": 16, "tenant": "t2", "customer_id": 7, "total": 160},  # Ann's second account's
              {"id": 17, "tenant": "t1", "customer_id": 7, "total": 170}]  # that id in another tenant: nobody's
ITEMS = [{"order_id": 10, "line": 1, "sku": "a"}, {"order_id": 10, "line": 2, "sku": "b"},
         {"order_id": 11, "line": 1, "sku": "c"}, {"order_id": 12, "line": 1, "sku": "d"},
         {"order_id": 13, "line": 1, "sku": "e"}, {"order_id": 15, "line": 1, "sku": "f"},
         {"order_id": 16, "line": 1, "sku": "g"}, {"order_id": 17, "line": 1, "sku": "h"}]
EVENTS = [{"id": 300, "customer_code": "c1", "kind": "open"}, {"id": 301, "customer_code": "C1", "kind": "open"},
          {"id": 302, "customer_code": "c1 ", "kind": "click"}, {"id": 303, "customer_code": None, "kind": "x"},
          {"id": 304, "customer_code": "c1", "kind": "click"}, {"id": 305, "customer_code": "d1", "kind": "open"},
          {"id": 306, "customer_code": "x9", "kind": "open"}, {"id": 307, "customer_code": "z9", "kind": "open"},
          {"id": 308, "customer_code": "x9 ", "kind": "click"}]
NOTES = [{"id": 400, "event_id": 300, "note": "n0"}, {"id": 401, "event_id": 301, "note": "n1"},
         {"id": 402, "event_id": 304, "note": "n2"}, {"id": 403, "event_id": 305, "note": "n3"},
         {"id": 404, "event_id": 306, "note": "n4"}, {"id": 405, "event_id": 307, "note": "n5"},
         {"id": 406, "event_id": 308, "note": "n6"}]

PAIRS = [("postgresql", "mariadb"), ("mariadb", "postgresql"), ("sqlite", "mariadb"), ("postgresql", "sqlite")]


@pytest.fixture(params=PAIRS, ids=[f"{s}-to-{m}" for s, m in PAIRS])
def urls(request, server_db):  # noqa: F811
    shop_kind, mail_kind = request.param
    out = {"shop": server_db(shop_kind), "mail": server_db(mail_kind)}
    shop, mail = make_engine(out["shop"]), make_engine(out["mail"])
    md.create_all(shop)
    mail_md.create_all(mail)
    with shop.begin() as conn:
        for table, rows in ((customers, CUSTOMERS), (vouchers, VOUCHERS), (orders, ORDER_ROWS), (order_items, ITEMS)):
            conn.execute(table.insert(), rows)
    for row in LOOKALIKES:
        if shop_kind == "mariadb":  # the unique index on code refuses them: the lookalikes are children only
            with pytest.raises(sa.exc.IntegrityError), shop.begin() as conn:
                conn.execute(customers.insert(), [row])
        else:
            with shop.begin() as conn:
                conn.execute(customers.insert(), [row])
    with mail.begin() as conn:
        conn.execute(events.insert(), EVENTS)
        conn.execute(event_notes.insert(), NOTES)
    shop.dispose()
    mail.dispose()
    return out


@contextmanager
def data_reads():
    """The data tables any statement of any engine reads while inside (catalogue queries are not reads)."""
    seen: list[str] = []
    pattern = re.compile(r"\bFROM\s+[`\"]?(" + "|".join(DATA_TABLES) + r")\b[`\"]?", re.IGNORECASE)

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.extend(m.group(1).lower() for m in pattern.finditer(statement))

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", record)


def policy_text(*parts: str) -> str:
    return "version: 1\nsystems:\n" + "".join(parts)


def runtime(policy: Policy, urls: dict[str, str], tmp_path) -> Runtime:
    conns = {"shop_db": ConnInfo("sql", extra={"sqlalchemy_url": urls["shop"]}),
             "mail_db": ConnInfo("sql", extra={"sqlalchemy_url": urls["mail"]}),
             "retention_ledger": ConnInfo("sqlite", host=str(tmp_path / "ledger.db"))}
    return Runtime(policy, conns.__getitem__, key=KEY)


def package(policy: Policy, urls, tmp_path, fmt: str = "human"):
    rt = runtime(policy, urls, tmp_path)
    builder = PackageBuilder(policy, rt.store, [Subject(REQUEST, {"email": normalise("email", ANN)})],
                             request_id=REQUEST, fmt=fmt, workdir=str(tmp_path))
    try:
        result = builder.build()
        with zipfile.ZipFile(result.path) as zf:
            files = {name: zf.read(name) for name in zf.namelist()}
    finally:
        builder.close()
        rt.close()
    return result, files


def rows_of(files: dict[str, bytes], ref: str) -> list[dict]:
    return json.loads(files[f"data/{ref}.json"])


def csv_of(files: dict[str, bytes], ref: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(files[f"data/{ref}.csv"].decode("utf-8"))))


def as_csv(rows: list[dict]) -> list[dict]:
    return [{k: "" if v is None else str(v) for k, v in r.items()} for r in rows]


ANN_ROW, ANN_SECOND = CUSTOMERS[0], CUSTOMERS[2]
DAN_MENTION = {"tenant": "t1", "id": 3, "email": None, "code": None, "referrer_email": ANN}  # only the mention
EXPECTED = {
    "shop.customers": [ANN_ROW, DAN_MENTION, ANN_SECOND],  # in key order: (t1, 1), (t1, 3), (t2, 7)
    "shop.vouchers": [VOUCHERS[0], VOUCHERS[3], VOUCHERS[6]],  # c1, c1, x9
    "mail.events": [EVENTS[0], EVENTS[4], EVENTS[6]],  # c1, c1, x9
    "mail.event_notes": [NOTES[0], NOTES[2], NOTES[4]],
}
COMPOSITE_EXPECTED = {**EXPECTED, "shop.orders": [ORDER_ROWS[0], ORDER_ROWS[1], ORDER_ROWS[6]],
                      "shop.order_items": [ITEMS[0], ITEMS[1], ITEMS[2], ITEMS[6]]}
HOW = {
    "shop.customers": {"identity": 3},
    "shop.vouchers": {"shop.vouchers (customer_code) -> shop.customers (code)": 3},
    "mail.events": {"mail.events (customer_code) -> shop.customers (code)": 3},
    "mail.event_notes": {"mail.event_notes (event_id) -> mail.events (id)": 3},
}
COMPOSITE_HOW = {**HOW, "shop.orders": {"shop.orders (tenant, customer_id) -> shop.customers (tenant, id)": 3},
                 "shop.order_items": {"shop.order_items (order_id) -> shop.orders (id)": 4}}


def check(result, files, expected: dict[str, list[dict]], how: dict[str, dict[str, int]]) -> None:
    data = {name for name in files if name.startswith("data/")}
    assert data == {f"data/{ref}.{ext}" for ref in expected for ext in ("csv", "json")}
    for ref, rows in expected.items():
        assert rows_of(files, ref) == rows, ref  # exactly these rows, in key order, every column
        assert csv_of(files, ref) == as_csv(rows), ref
    manifest = json.loads(files["manifest.json"])
    colls = {ref: c for s in manifest["systems"].values() for ref, c in s["collections"].items()}
    assert set(colls) == set(expected)
    assert {ref: c["rows"] for ref, c in colls.items()} == {ref: len(rows) for ref, rows in expected.items()}
    assert {ref: c["found_through"] for ref, c in colls.items()} == how
    assert colls["shop.customers"]["only_mentioning"] == 1 and colls["shop.customers"]["identities_searched"] == [
        "email"]
    assert result.rows == {ref: len(rows) for ref, rows in expected.items()}
    assert set(manifest["systems"]) == {"shop", "mail"}  # mail holds no identity: reached through shop
    readme = files["README.md"].decode()
    assert ("- mail / mail.event_notes: 3 row(s) (3 referencing your rows through mail.event_notes (event_id) -> "
            "mail.events (id))") in readme
    assert "- shop / shop.customers: 3 row(s) (searched by email)" in readme
    assert ("- shop / shop.vouchers: 3 row(s) (3 referencing your rows through shop.vouchers (customer_code) -> "
            "shop.customers (code))") in readme
    blob = b"".join(files.values()).decode("utf-8", "replace")
    for other in ("bob@example.org", "cat@example.org", "dan@example.org", "zed@example.org"):
        assert other not in blob, other


def test_to_column_grandchildren_and_the_other_database(urls, tmp_path):
    policy = parse_policy(policy_text(SHOP, MAIL), source="access.yaml")  # the real loader, cross-check included
    with data_reads() as reads:
        result, files = package(policy, urls, tmp_path)
    check(result, files, EXPECTED, HOW)
    assert set(reads) == {"customers", "vouchers", "events", "event_notes"}  # ``data_reads`` sees reads


def test_composite_references(urls, tmp_path):
    policy = parse_policy(policy_text(SHOP + ORDERS, MAIL), source="access.yaml")
    result, files = package(policy, urls, tmp_path)
    check(result, files, COMPOSITE_EXPECTED, COMPOSITE_HOW)


def test_portable_format_lists_the_same_rows(urls, tmp_path):
    policy = parse_policy(policy_text(SHOP + ORDERS, MAIL), source="access.yaml")
    result, files = package(policy, urls, tmp_path, fmt="portable")
    for ref, rows in COMPOSITE_EXPECTED.items():
        assert rows_of(files, ref) == rows, ref
    flat = list(csv.DictReader(io.StringIO(files["data.csv"].decode("utf-8"))))
    records = {(r["collection"], r["record"]) for r in flat}
    assert len(records) == sum(len(rows) for rows in COMPOSITE_EXPECTED.values())
    assert {r["value"] for r in flat if r["collection"] == "shop.order_items" and r["field"] == "sku"} == {
        "a", "b", "c", "g"}


# References to columns that are not unique in their target: a child would belong to every row holding the value.
NOT_UNIQUE = {
    # the multi-tenant bug: customer ids repeat across tenants (t1/1 is Ann, t2/1 Bob)
    "id-without-tenant": (
        SHOP + ORDERS.replace("columns: [tenant, customer_id], to_columns: [tenant, id]",
                              "column: customer_id, to_column: id"), MAIL,
        "systems.shop.collections.orders.references[0].to_column: column(s) id of shop.customers"),
    # a grandchild, through a collection nobody is searched in by identity (orders 10 and 11 share customer 1)
    "grandchild": (
        SHOP + ORDERS.replace("column: order_id, on_delete", "column: order_id, to_column: customer_id, on_delete"),
        MAIL, "systems.shop.collections.order_items.references[0].to_column: column(s) customer_id of shop.orders"),
    # from the other database: Ann's address is on two accounts
    "other-database": (
        SHOP, MAIL.replace("column: customer_code, to_column: code", "column: customer_code, to_column: email"),
        "systems.mail.collections.events.references[0].to_column: column(s) email of shop.customers"),
}


@pytest.mark.parametrize("case", list(NOT_UNIQUE))
def test_a_reference_to_columns_that_are_not_unique_is_refused_before_anything_is_read(case, urls, tmp_path):
    shop, mail, where = NOT_UNIQUE[case]
    policy = parse_policy(policy_text(shop, mail), source="access.yaml")
    with data_reads() as reads, pytest.raises(PolicyError) as err:
        package(policy, urls, tmp_path)
    message = str(err.value)
    assert message.startswith(f"access.yaml: {where} ") and "are not unique there" in message, message
    assert reads == []  # not one row read, of any table
    assert not list(tmp_path.rglob("*.zip"))  # no package built
    for value in (ANN, "c1", "x9", "bob@example.org"):
        assert value not in message


def test_nothing_found_lists_what_was_searched(urls, tmp_path):
    policy = parse_policy(policy_text(SHOP, MAIL), source="access.yaml")
    rt = runtime(policy, urls, tmp_path)
    builder = PackageBuilder(policy, rt.store, [Subject(REQUEST, {"email": "nobody@example.org"})],
                             request_id=REQUEST, workdir=str(tmp_path))
    try:
        result = builder.build()
        with zipfile.ZipFile(result.path) as zf:
            manifest = json.loads(zf.read("manifest.json"))
            assert not [n for n in zf.namelist() if n.startswith("data/")]
    finally:
        builder.close()
        rt.close()
    assert manifest["systems"]["shop"]["collections"] == {"shop.customers": {
        "categories": [], "identities_searched": ["email"], "found_through": {"identity": 0}, "rows": 0,
        "only_mentioning": 0, "files": []}}
