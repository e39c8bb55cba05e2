"""The safety brake counts what deletes take along: a small share of parents can be most of their children."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from include.retention.connections import make_engine
from include.retention.errors import SafetyBrakeTripped
from include.retention.ledger import Ledger, RunRef
from include.retention.policy import parse_policy
from include.retention.stores.sql import SqlStore
from include.retention.sweep import run_rule
from tests.conftest import KEY, fresh_tables
from tests.policy_text import crm_policy

pytestmark = pytest.mark.integration

NOW = dt.datetime(2026, 11, 1)
md = sa.MetaData()
people = sa.Table("people", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                  sa.Column("created_at", sa.DateTime))
orders = sa.Table("orders", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                  sa.Column("person_id", sa.Integer))


def policy(max_fraction: float):
    return parse_policy(crm_policy("""\
              people:
                table: people
                primary_key: id
                columns: [id, created_at]
                rules: [{name: old, start: created_at, action: delete, period: P1D}]
              orders:
                table: orders
                primary_key: id
                columns: [id, person_id]
                references: [{to: crm.people, column: person_id, on_delete: delete}]
        """, defaults=f"{{max_fraction: {max_fraction}}}"), source="brake.yaml")


@pytest.fixture
def engine(db_url):
    engine = fresh_tables(db_url, md)
    with engine.begin() as conn:
        # 1 of 10 people is expired, but 9 of 10 orders are that person's
        conn.execute(people.insert(), [{"id": i, "created_at": NOW - dt.timedelta(days=5 if i == 1 else 0)}
                                       for i in range(1, 11)])
        conn.execute(orders.insert(), [{"id": i, "person_id": 1 if i < 10 else 2} for i in range(1, 11)])
    yield engine
    engine.dispose()


def test_brake_trips_on_cascaded_share_and_changes_nothing(engine, tmp_path):
    p = policy(0.5)
    ledger = Ledger(make_engine(f"sqlite:///{tmp_path / 'l.db'}"), KEY)
    with pytest.raises(SafetyBrakeTripped, match=r"9 of 10 rows of crm.orders \(deleted with their parents\)"):
        run_rule(p, "crm.people.old", SqlStore("crm", p, engine, mask_key=KEY), ledger, RunRef("t", "1"), now=NOW)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(orders)).scalar() == 10
        assert conn.execute(sa.select(sa.func.count()).select_from(people)).scalar() == 10
    tripped = [r for r in ledger.rows() if r["outcome"] == "brake_tripped"]
    assert len(tripped) == 1 and '"crm.orders": 9' in tripped[0]["details"]


def test_brake_trips_at_exactly_max_fraction_of_children(engine, tmp_path):
    p = policy(0.9)  # 9 of 10 orders is exactly 0.9: trips ("at or above")
    ledger = Ledger(make_engine(f"sqlite:///{tmp_path / 'l.db'}"), KEY)
    with pytest.raises(SafetyBrakeTripped):
        run_rule(p, "crm.people.old", SqlStore("crm", p, engine, mask_key=KEY), ledger, RunRef("t", "1"), now=NOW)
    counts = run_rule(policy(0.95), "crm.people.old", SqlStore("crm", policy(0.95), engine, mask_key=KEY), ledger,
                      RunRef("t", "2"), now=NOW)
    assert counts["deleted"] == 1 and counts["cascaded"] == {"crm.orders": 9}
