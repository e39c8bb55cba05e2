"""The SQL store's predicates, compiled for PostgreSQL, MySQL/MariaDB and SQLite without a database.

The tables come from the demo schema and are put into the store's table cache, so nothing
is reflected; only the generated SQL text and its bound values are checked.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from include.retention.demo import schema
from include.retention.policy import Policy, cutoff, load_policy
from include.retention.stores.sql import SqlStore

ROOT = Path(__file__).resolve().parents[2]
NOW = dt.datetime(2026, 11, 24, 12, 0, 0)
DIALECTS = {"postgresql": postgresql.dialect(), "mysql": mysql.dialect(), "sqlite": sqlite.dialect()}
METADATA = {"crm": schema.crm_metadata, "mailing": schema.mailing_metadata}


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(ROOT / "config" / "policy.yaml")


@pytest.fixture(scope="module")
def stores(policy):
    out = {}
    for system, metadata in METADATA.items():
        store = SqlStore(system, policy, sa.create_engine("sqlite://"))
        store._tables.update({name: metadata.tables[coll.table]
                              for name, coll in policy.systems[system].collections.items()})
        out[system] = store
    yield out
    for store in out.values():
        store.close()


def compiled(stores, policy, rule_id: str, action: str, dialect: str) -> tuple[str, list]:
    """SQL text of ``SELECT pk WHERE <eligible>`` for one stage, and its bound values."""
    coll_ref, coll, rule = policy.rule(rule_id)
    system, _, name = coll_ref.partition(".")
    store = stores[system]
    stage = next(s for s in rule.stages if s.action == action)
    t = store.table(name)
    query = sa.select(t.c[coll.primary_key]).where(store.eligible(name, rule, stage, NOW))
    result = query.compile(dialect=DIALECTS[dialect])
    return " ".join(str(result).split()), list(result.params.values())


def _bind(dialect: str) -> str:
    return {"postgresql": r"%\(\w+\)s", "mysql": r"%s", "sqlite": r"\?"}[dialect]


ALL_RULE_STAGES = [
    ("crm.contacts.minors", "delete", "contacts.created_at"),
    ("crm.inquiries.after_last_contact", "delete", "inquiries.last_contact_at"),
    ("crm.leads.inactivity", "lock", "leads.last_activity_at"),
    ("crm.leads.inactivity", "delete", "leads.last_activity_at"),
    ("crm.applicants.recruitment_closed", "delete", "applicants.recruitment_closed_at"),
    ("crm.applicants.future_recruitment_consent", "delete", "applicants.recruitment_closed_at"),
    ("crm.support_tickets.after_closed", "delete", "support_tickets.closed_at"),
    ("crm.client_accounts.contract_end", "lock", "client_accounts.contract_end_at"),
    ("crm.client_accounts.contract_end", "delete", "client_accounts.contract_end_at"),
    ("crm.social_messages.after_answered", "delete", "social_messages.answered_at"),
    ("mailing.subscribers.unsubscribed", "delete", "subscribers.unsubscribed_at"),
    ("mailing.campaign_events.mask_ip", "anonymize", "campaign_events.occurred_at"),
]


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(("rule_id", "action", "column"), ALL_RULE_STAGES)
def test_expiry_is_a_plain_range_test_on_the_start_column(stores, policy, dialect, rule_id, action, column):
    sql, params = compiled(stores, policy, rule_id, action, dialect)
    # Bare column on the left: an index on it serves the test (no function around it).
    assert re.search(rf"(?<![\w(]){re.escape(column)} < {_bind(dialect)}", sql), sql
    assert not re.search(rf"\w\({re.escape(column)}\b", sql), sql
    _, _, rule = policy.rule(rule_id)
    stage = next(s for s in rule.stages if s.action == action)
    assert cutoff(NOW, stage, rule.start) in params


@pytest.mark.parametrize("dialect", DIALECTS)
def test_lock_requires_the_row_not_yet_locked(stores, policy, dialect):
    sql, _ = compiled(stores, policy, "crm.leads.inactivity", "lock", dialect)
    assert "leads.restricted_at IS NULL" in sql
    sql, _ = compiled(stores, policy, "crm.leads.inactivity", "delete", dialect)
    assert "restricted_at" not in sql  # locked rows are still deleted when the statutory period ends


@pytest.mark.parametrize("dialect", DIALECTS)
def test_anonymize_requires_the_row_not_yet_anonymized(stores, policy, dialect):
    sql, _ = compiled(stores, policy, "mailing.campaign_events.mask_ip", "anonymize", dialect)
    assert "campaign_events.anonymized_at IS NULL" in sql


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(("rule_id", "action", "table"), [
    ("crm.inquiries.after_last_contact", "delete", "inquiries"),
    ("crm.leads.inactivity", "lock", "leads"),
    ("crm.client_accounts.contract_end", "delete", "client_accounts"),
    ("mailing.subscribers.unsubscribed", "delete", "subscribers"),
])
def test_legal_hold_is_excluded_null_safe(stores, policy, dialect, rule_id, action, table):
    sql, _ = compiled(stores, policy, rule_id, action, dialect)
    hold = rf"coalesce\({table}\.legal_hold = (true|1), (false|0)\)"
    # Without a native boolean type (MySQL, SQLite) SQLAlchemy renders NOT as "= 0".
    negated = rf"NOT {hold}" if DIALECTS[dialect].supports_native_boolean else rf"{hold} = 0"
    assert re.search(negated, sql, re.IGNORECASE), sql


@pytest.mark.parametrize("dialect", DIALECTS)
def test_two_stage_band_has_both_bounds(stores, policy, dialect):
    _, _, rule = policy.rule("crm.leads.inactivity")
    lock, delete = rule.stages
    sql, params = compiled(stores, policy, "crm.leads.inactivity", "lock", dialect)
    bind = _bind(dialect)
    assert re.search(rf"leads\.last_activity_at < {bind}", sql), sql
    assert re.search(rf"leads\.last_activity_at >= {bind}", sql), sql
    assert cutoff(NOW, lock, rule.start) in params and cutoff(NOW, delete, rule.start) in params
    assert params.index(cutoff(NOW, lock, rule.start)) < params.index(cutoff(NOW, delete, rule.start))
    # The strongest stage has no lower bound: everything older is deleted.
    sql, _ = compiled(stores, policy, "crm.leads.inactivity", "delete", dialect)
    assert ">=" not in sql


@pytest.mark.parametrize("dialect", DIALECTS)
def test_round_up_year_binds_first_of_january(stores, policy, dialect):
    # the lock stage overrides round_up (none): it binds the exact instant, bounded below by the delete stage
    _, params = compiled(stores, policy, "crm.client_accounts.contract_end", "lock", dialect)
    assert dt.datetime(2026, 1, 1) not in params and dt.datetime(2016, 1, 1) in params
    _, params = compiled(stores, policy, "crm.client_accounts.contract_end", "delete", dialect)
    assert dt.datetime(2016, 1, 1) in params and dt.datetime(2026, 1, 1) not in params


@pytest.mark.parametrize("dialect", DIALECTS)
def test_when_conditions_are_part_of_the_predicate(stores, policy, dialect):
    sql, params = compiled(stores, policy, "crm.applicants.recruitment_closed", "delete", dialect)
    assert re.search(r"applicants\.future_consent = ", sql) or "applicants.future_consent IS false" in sql, sql
    sql, _ = compiled(stores, policy, "mailing.subscribers.no_engagement", "delete", dialect)
    assert "subscribers.unsubscribed_at IS NULL" in sql
    # a computed start (latest engagement, else the subscription) is a CASE, not GREATEST/LEAST
    assert re.search(r"CASE WHEN \(?subscribers\.last_engaged_at IS NOT NULL\)? THEN subscribers\.last_engaged_at "
                     r"ELSE subscribers\.subscribed_at END < ", sql), sql


@pytest.mark.parametrize("dialect", DIALECTS)
def test_delete_keeps_parents_of_held_dependents(stores, policy, dialect):
    sql, _ = compiled(stores, policy, "crm.contacts.minors", "delete", dialect)
    for child in ("inquiries", "leads", "applicants", "support_tickets"):
        alias = f"held_0_{child}"
        assert re.search(
            rf"NOT \(EXISTS \(SELECT \* FROM {child} AS {alias} WHERE {alias}\.contact_id = contacts\.id "
            rf"AND coalesce\({alias}\.legal_hold = ", sql, re.IGNORECASE), sql
    # Correlated to the outer row, not a cross join with a second copy of contacts.
    assert sql.count("FROM contacts") == 1


@pytest.mark.parametrize("dialect", DIALECTS)
def test_no_exists_where_no_held_dependents(stores, policy, dialect):
    # Memberships and events have no legal hold: deleting subscribers needs no EXISTS test.
    sql, _ = compiled(stores, policy, "mailing.subscribers.unsubscribed", "delete", dialect)
    assert "EXISTS" not in sql
    # A lock does not cascade, so held dependents do not matter for it.
    sql, _ = compiled(stores, policy, "crm.client_accounts.contract_end", "lock", dialect)
    assert "EXISTS" not in sql
