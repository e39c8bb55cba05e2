"""A quoted value cannot invert a legal hold: condition values are checked against the reflected column
type before anything runs (sweep and erasure), on SQLite, PostgreSQL and MariaDB; the right types act exactly."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from include.retention.connections import make_engine
from include.retention.errors import PolicyError
from include.retention.ledger import Ledger, RunRef
from include.retention.policy import parse_policy
from include.retention.requests.scanner import SubjectScanner
from include.retention.stores.base import Subject
from include.retention.stores.sql import SqlStore
from include.retention.sweep import run_rule
from tests.conftest import KEY, fresh_tables
from tests.policy_text import crm_policy

pytestmark = pytest.mark.integration

NOW = dt.datetime(2026, 11, 1)
md = sa.MetaData()
notes = sa.Table("notes", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                 sa.Column("email", sa.String(254)), sa.Column("legal_hold", sa.Boolean, nullable=False),
                 sa.Column("score", sa.Integer), sa.Column("created_at", sa.DateTime))


def policy(hold: str, when: str = "[]"):
    return parse_policy(crm_policy(f"""\
              notes:
                table: notes
                primary_key: id
                columns: [id, email, legal_hold, score, created_at]
                identities: {{email: email}}
                legal_hold: [{hold}]
                rules:
                  - {{name: old, start: created_at, action: delete, period: P1D, when: {when}}}
        """, defaults="{max_fraction: 1.0}"), source="typed.yaml")


@pytest.fixture
def engine(db_url):
    engine = fresh_tables(db_url, md)
    with engine.begin() as conn:
        conn.execute(notes.insert(), [
            {"id": i, "email": "zoe@example.org", "legal_hold": i % 2 == 0, "score": i,
             "created_at": NOW - dt.timedelta(days=10)} for i in range(1, 7)])
    yield engine
    engine.dispose()


def snapshot(engine):
    with engine.connect() as conn:
        return sorted(tuple(r) for r in conn.execute(sa.select(notes)))


@pytest.mark.parametrize("hold, when, message", [
    ('{column: legal_hold, equals: "true"}', "[]", r"legal_hold\[0\]\.equals: .*quoted text"),
    ("{column: legal_hold, equals: 1}", "[]", r"legal_hold\[0\]\.equals: .*number"),
    ("{column: legal_hold, equals: true}", '[{column: score, equals: "3"}]', r"rules\[0\]\.when\[0\]\.equals"),
    ("{column: legal_hold, equals: true}", "[{column: created_at, equals: yesterday}]", r"when\[0\]\.equals"),
])
def test_mistyped_condition_refuses_sweep_and_erasure_and_changes_nothing(engine, tmp_path, hold, when, message):
    p = policy(hold, when)
    before = snapshot(engine)
    store = SqlStore("crm", p, engine, mask_key=KEY)
    ledger = Ledger(make_engine(f"sqlite:///{tmp_path / 'ledger.db'}"), KEY)
    with pytest.raises(PolicyError, match=message) as exc:
        run_rule(p, "crm.notes.old", store, ledger, RunRef("t", "t"), now=NOW)
    assert str(exc.value).startswith("typed.yaml: systems.crm.collections.notes.")
    with pytest.raises(PolicyError, match=message):
        SubjectScanner(p, store).act([Subject("r", {"email": "zoe@example.org"})], "erase", dry_run=False)
    assert snapshot(engine) == before


def test_typed_hold_spares_exactly_the_held_rows(engine, tmp_path):
    p = policy("{column: legal_hold, equals: true}", "[{column: score, in: [1, 2, 3, 4]}]")
    store = SqlStore("crm", p, engine, mask_key=KEY)
    ledger = Ledger(make_engine(f"sqlite:///{tmp_path / 'ledger.db'}"), KEY)
    counts = run_rule(p, "crm.notes.old", store, ledger, RunRef("t", "t"), now=NOW)
    assert (counts["deleted"], counts["held"]) == (2, 2)
    with engine.connect() as conn:
        assert sorted(conn.execute(sa.select(notes.c.id)).scalars()) == [2, 4, 5, 6]
