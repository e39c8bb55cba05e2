"""References of several columns in the data map (issue 21 item 4): what loading accepts and refuses, naming file,
path and columns. Whether the target's columns are unique is the database's to say (tests/integration/
test_composite_references.py); here: columns exist, pair up, and nullify does not clear a key."""

from __future__ import annotations

import textwrap

import pytest

from include.retention.errors import PolicyError
from include.retention.policy import parse_policy

ORDERS = "systems.shop.collections.orders"


def _policy(reference: str, *, orders_key: str = "id", extra: str = "") -> str:
    return textwrap.dedent("""\
        version: 1
        systems:
          shop:
            kind: sql
            connection: shop_db
            collections:
              customers:
                table: customers
                primary_key: [tenant_id, id]
                columns: [tenant_id, id, code, created_at, orphaned_since]
                rules: [{rule}]
              orders:
                table: orders
                primary_key: ORDERS_KEY
                columns: [id, tenant_id, customer_id, customer_code]
                references: [REFERENCE]
        """).replace("{rule}", "{name: gone, start: created_at, action: delete, period: P1D}").replace(
        "ORDERS_KEY", orders_key).replace("REFERENCE", reference) + extra


def _refused(text: str) -> str:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, source="refs.yaml")
    return str(info.value)


def test_a_reference_of_several_columns_loads_and_is_a_child():
    policy = parse_policy(_policy("{columns: [tenant_id, customer_id], to: shop.customers, on_delete: delete}"),
                          source="refs.yaml")
    ((child, ref),) = policy.children("shop.customers")
    assert child == "shop.orders" and ref.composite
    assert ref.source_columns() == ["tenant_id", "customer_id"]
    assert ref.target_columns(policy.collection("shop.customers")) == ["tenant_id", "id"]  # the key, in order
    named = parse_policy(_policy("{columns: [customer_code, tenant_id], to: shop.customers, to_columns: [code, "
                                 "tenant_id], on_delete: nullify}"), source="refs.yaml")
    (_, ref), = named.children("shop.customers")
    assert ref.target_columns(named.collection("shop.customers")) == ["code", "tenant_id"]


@pytest.mark.parametrize(("reference", "where", "problem"), [
    ("{columns: [tenant_id, customer_id], to: shop.customers, to_columns: [tenant_id], on_delete: delete}",
     f"{ORDERS}.references[0]", "'columns' has 2 column(s) and 'to_columns' 1: they pair up one to one"),
    ("{columns: [tenant_id, customer_no], to: shop.customers, on_delete: delete}",
     f"{ORDERS}.references[0].columns[1]", "unknown column 'customer_no'"),
    ("{columns: [tenant_id, customer_id], to: shop.customers, to_columns: [tenant_id, ident], on_delete: delete}",
     f"{ORDERS}.references[0].to_columns[1]", "unknown column 'ident' of shop.customers"),
    ("{columns: [tenant_id, customer_id, customer_code], to: shop.customers, on_delete: delete}",
     f"{ORDERS}.references[0].to_columns", "shop.customers's primary key has 2 column(s) (tenant_id, id) and "
                                           "'columns' 3: name the referenced columns with 'to_columns'"),
    ("{column: customer_id, to: shop.customers, on_delete: delete}",
     f"{ORDERS}.references[0].to_column", "shop.customers has a composite primary key (tenant_id, id)"),
    ("{columns: [tenant_id, customer_id], to: shop.customers, on_delete: delete, column: customer_id}",
     f"{ORDERS}.references[0]", "give either 'column' or 'columns', not both"),
], ids=["lengths", "unknown-column", "unknown-to-column", "key-length", "one-column-to-composite-key", "both"])
def test_wrong_references_are_refused_naming_path_and_columns(reference, where, problem):
    message = _refused(_policy(reference))
    assert message.startswith(f"refs.yaml: {where}: "), message
    assert problem in message, message


def test_nullify_of_a_key_column_is_refused():
    message = _refused(_policy("{columns: [tenant_id, customer_id], to: shop.customers, on_delete: nullify}",
                               orders_key="[tenant_id, id]"))
    assert message.startswith(f"refs.yaml: {ORDERS}.references[0].on_delete: 'nullify' would clear column(s) "
                              "tenant_id of the primary key"), message


def test_several_columns_to_s3_objects_are_refused():
    extra = textwrap.indent(textwrap.dedent("""\
        files:
          kind: s3
          connection: files_s3
          collections:
            cvs: {bucket: cvs, key_template: "cvs/{tenant}/{id}"}
        """), "  ")
    message = _refused(_policy("{columns: [tenant_id, customer_id], to: files.cvs}", extra=extra))
    assert message.startswith(f"refs.yaml: {ORDERS}.references[0].columns: a reference to S3 objects names one "
                              "'column' or a 'key_template'"), message


def test_an_orphaned_start_accepts_a_reference_of_several_columns():
    text = _policy("{columns: [tenant_id, customer_id], to: shop.customers, on_delete: delete}").replace(
        "start: created_at", "start: {orphaned: orphaned_since}")
    policy = parse_policy(text, source="refs.yaml")
    assert policy.rule("shop.customers.gone")[2].start.orphaned == "orphaned_since"
