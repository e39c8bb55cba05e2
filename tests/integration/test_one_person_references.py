"""One person per request through a reference to columns that are not the target's key (``to_column`` /
``to_columns``): a row links only to the row whose referenced columns hold its values, never to a row whose *key*
happens to equal them (SQLite, PostgreSQL, MariaDB; hypothesis on SQLite).

Ann's customer row has no member number (NULL); Bob's SMS opt-in carries Bob's phone and member number 7, which is
also the id of Ann's customer row. A request of Ann's e-mail with Bob's phone spans two people: the phone must be
``conflicting`` (an SMS opt-in tied to Ann by nothing), and an approved erasure acting with the linked identities
only must leave Bob's opt-in alone.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from include.retention.connections import make_engine
from include.retention.identity import normalise
from include.retention.policy import parse_policy
from include.retention.requests import person
from include.retention.requests.scanner import SubjectScanner
from include.retention.stores.base import Subject
from include.retention.stores.sql import SqlStore
from tests.conftest import KEY, fresh_tables

pytestmark = pytest.mark.integration

# plain: one column to a non-key column; tenants: two columns (tenant, member number) to two non-key-only columns
# of a table keyed by (tenant, id)
POLICIES = {
    "plain": """\
version: 1
defaults: {max_fraction: 1.0}
systems:
  crm:
    kind: sql
    connection: crm_db
    collections:
      customers:
        table: ref_customers
        primary_key: id
        columns: [id, tenant, email, member_no]
        identities: {email: email}
      sms_optins:
        table: ref_sms_optins
        primary_key: id
        columns: [id, tenant, member_no, phone]
        identities: {phone: phone}
        references: [{to: crm.customers, column: member_no, to_column: member_no, on_delete: delete}]
""",
    "tenants": """\
version: 1
defaults: {max_fraction: 1.0}
systems:
  crm:
    kind: sql
    connection: crm_db
    collections:
      customers:
        table: ref_customers
        primary_key: [tenant, id]
        columns: [id, tenant, email, member_no]
        identities: {email: email}
      sms_optins:
        table: ref_sms_optins
        primary_key: id
        columns: [id, tenant, member_no, phone]
        identities: {phone: phone}
        references: [{to: crm.customers, columns: [tenant, member_no], to_columns: [tenant, member_no],
                      on_delete: delete}]
""",
}

md = sa.MetaData()
customers = sa.Table("ref_customers", md, sa.Column("tenant", sa.String(10), primary_key=True),
                     sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                     sa.Column("email", sa.String(100)), sa.Column("member_no", sa.Integer),
                     sa.UniqueConstraint("member_no"),  # what both references point at is unique (NULLs aside)
                     sa.UniqueConstraint("id"))  # the plain data map's primary key: id
sms_optins = sa.Table("ref_sms_optins", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                      sa.Column("tenant", sa.String(10)), sa.Column("member_no", sa.Integer),
                      sa.Column("phone", sa.String(40)))

ANN, BOB, BOB_PHONE = "ann@example.org", "bob@example.org", "+44 20 7946 0002"


def seed(engine: sa.Engine, ann: dict, bob: dict, optin: dict) -> None:
    with engine.begin() as conn:
        conn.execute(sms_optins.delete())
        conn.execute(customers.delete())
        conn.execute(customers.insert(), [{"email": ANN, **ann}, {"email": BOB, **bob}])
        conn.execute(sms_optins.insert(), [{"id": 1, "phone": BOB_PHONE, **optin}])


def rows(engine: sa.Engine) -> dict[str, list[tuple]]:
    with engine.connect() as conn:
        return {t.name: sorted(tuple(r) for r in conn.execute(sa.select(t))) for t in (customers, sms_optins)}


def resolve(policy, engine, asked: dict[str, str]) -> person.Resolution:
    store = SqlStore("crm", policy, engine, mask_key=KEY)
    try:
        return person.resolve(policy, {"crm": store}.__getitem__, {k: normalise(k, v) for k, v in asked.items()})
    finally:
        store.close()


@pytest.mark.parametrize("shape", sorted(POLICIES))
def test_a_null_referenced_column_never_links_by_the_targets_key(db_url, shape):
    policy = parse_policy(POLICIES[shape], source=f"{shape}.yaml")
    engine = fresh_tables(db_url, md)
    try:
        # Ann: (t1, 7), no member number; Bob: (t1, 2), member number 7; Bob's opt-in references member 7 of t1
        seed(engine, {"tenant": "t1", "id": 7, "member_no": None}, {"tenant": "t1", "id": 2, "member_no": 7},
             {"tenant": "t1", "member_no": 7})
        res = resolve(policy, engine, {"email": ANN, "phone": BOB_PHONE})
        assert res.status == {"email": "found", "phone": "conflicting"}, res.status
        assert res.act_kinds == ["email"]
        # an approved erasure acts with the linked identities only: Ann's row goes, Bob's row and opt-in stay
        before = rows(engine)
        store = SqlStore("crm", policy, engine, mask_key=KEY)
        SubjectScanner(policy, store).act([Subject("r", {k: normalise(k, v) for k, v in
                                                         {"email": ANN, "phone": BOB_PHONE}.items()
                                                         if k in res.act_kinds})], "erase", dry_run=False)
        store.close()
        after = rows(engine)
        assert after["ref_sms_optins"] == before["ref_sms_optins"]
        assert [r for r in after["ref_customers"] if r[2] == BOB] == [r for r in before["ref_customers"]
                                                                        if r[2] == BOB]
        assert not [r for r in after["ref_customers"] if r[2] == ANN]
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def sqlite_engine(tmp_path_factory):
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('refs') / 'crm.db'}")
    md.create_all(engine)
    yield engine
    engine.dispose()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.sampled_from(sorted(POLICIES)), ann_id=st.integers(1, 3), ann_member=st.one_of(st.none(),
       st.integers(1, 3)), bob_member=st.one_of(st.none(), st.integers(1, 3)),
       optin_member=st.one_of(st.none(), st.integers(1, 3)), optin_tenant=st.sampled_from(["t1", "t2"]))
def test_linked_exactly_when_the_referenced_columns_hold_the_values(sqlite_engine, shape, ann_id, ann_member,
                                                                    bob_member, optin_member, optin_tenant):
    """The opt-in (Bob's phone) is linked to Ann exactly when its referencing columns equal Ann's row's referenced
    columns (the tenant too, for the reference of two columns), whatever keys the rows have."""
    assume(ann_member is None or ann_member != bob_member)  # member numbers are unique
    policy = parse_policy(POLICIES[shape], source=f"{shape}.yaml")
    seed(sqlite_engine, {"tenant": "t1", "id": ann_id, "member_no": ann_member},
         {"tenant": "t1", "id": 10, "member_no": bob_member}, {"tenant": optin_tenant, "member_no": optin_member})
    res = resolve(policy, sqlite_engine, {"email": ANN, "phone": BOB_PHONE})
    refers_to_ann = (ann_member is not None and optin_member == ann_member
                     and (shape == "plain" or optin_tenant == "t1"))
    assert res.status["phone"] == ("linked" if refers_to_ann else "conflicting"), res.status
