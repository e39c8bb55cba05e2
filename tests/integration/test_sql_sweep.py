"""Sweeps on real PostgreSQL, MariaDB and SQLite: exactly the expected rows are deleted,
locked, anonymized or left alone; the ledger records it and verifies."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from include.retention.errors import SafetyBrakeTripped, SchemaMismatch
from include.retention.ledger import Ledger, RunRef
from include.retention.policy import parse_policy
from include.retention.stores.sql import SqlStore, make_engine
from include.retention.sweep import run_rule
from tests.conftest import KEY
from tests.policy_text import crm_policy

pytestmark = pytest.mark.integration

NOW = dt.datetime(2026, 11, 24, 12, 0, 0, tzinfo=dt.UTC)

POLICY = crm_policy("""\
      people:
        table: t_people
        primary_key: id
        columns: [id, email, created_at, is_minor, legal_hold, restricted_at, restriction_reason]
        identities: {email: email}
        lock: {at: restricted_at, reason: restriction_reason}
        legal_hold: [{column: legal_hold, equals: true}]
        rules:
          - {name: minors, start: created_at, when: [{column: is_minor, equals: true}], action: delete, period: P0D}
      notes:
        table: t_notes
        primary_key: id
        columns: [id, person_id, body, written_at, legal_hold]
        references: [{column: person_id, to: crm.people, on_delete: delete}]
        legal_hold: [{column: legal_hold, equals: true}]
        rules:
          - {name: old_notes, start: written_at, action: delete, period: P12M}
      tags:
        table: t_tags
        primary_key: id
        columns: [id, person_id, label]
        references: [{column: person_id, to: crm.people, on_delete: nullify}]
      leads:
        table: t_leads
        primary_key: id
        columns: [id, email, last_activity_at, legal_hold, restricted_at, restriction_reason]
        lock: {at: restricted_at, reason: restriction_reason}
        legal_hold: [{column: legal_hold, equals: true}]
        rules:
          - name: lifecycle
            start: last_activity_at
            stages: [{action: lock, after: P24M}, {action: delete, after: P36M}]
      accounts:
        table: t_accounts
        primary_key: id
        columns: [id, user_email, contract_end_at, restricted_at, restriction_reason]
        lock: {at: restricted_at, reason: restriction_reason}
        rules:
          - name: bookkeeping
            start: {column: contract_end_at, round_up: year}
            stages: [{action: lock, after: P0D}, {action: delete, after: P10Y}]
      visits:
        table: t_visits
        primary_key: id
        columns: [id, ip, email, seen_at, anonymized_at]
        anonymized_marker: anonymized_at
        rules:
          - name: mask_visitors
            start: seen_at
            action: anonymize
            period: P30D
            mask: {ip: {strategy: "null"}, email: {strategy: hmac}}
""", defaults="{max_fraction: 0.9, batch_size: 2}")

md = sa.MetaData()
people = sa.Table("t_people", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                  sa.Column("email", sa.String(200)), sa.Column("created_at", sa.DateTime, index=True),
                  sa.Column("is_minor", sa.Boolean), sa.Column("legal_hold", sa.Boolean),
                  sa.Column("restricted_at", sa.DateTime), sa.Column("restriction_reason", sa.String(200)))
notes = sa.Table("t_notes", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                 sa.Column("person_id", sa.Integer), sa.Column("body", sa.Text),
                 sa.Column("written_at", sa.DateTime, index=True), sa.Column("legal_hold", sa.Boolean))
tags = sa.Table("t_tags", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                sa.Column("person_id", sa.Integer), sa.Column("label", sa.String(50)))
leads = sa.Table("t_leads", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                 sa.Column("email", sa.String(200)), sa.Column("last_activity_at", sa.DateTime, index=True),
                 sa.Column("legal_hold", sa.Boolean), sa.Column("restricted_at", sa.DateTime),
                 sa.Column("restriction_reason", sa.String(200)))
accounts = sa.Table("t_accounts", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                    sa.Column("user_email", sa.String(200)), sa.Column("contract_end_at", sa.DateTime, index=True),
                    sa.Column("restricted_at", sa.DateTime), sa.Column("restriction_reason", sa.String(200)))
visits = sa.Table("t_visits", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                  sa.Column("ip", sa.String(64)), sa.Column("email", sa.String(200)),
                  sa.Column("seen_at", sa.DateTime, index=True), sa.Column("anonymized_at", sa.DateTime))


def ago(**kw) -> dt.datetime:
    from dateutil.relativedelta import relativedelta

    return (NOW - relativedelta(**kw)).replace(tzinfo=None)


def seed(engine: sa.Engine) -> None:
    md.drop_all(engine)
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(people.insert(), [
            {"id": i, "email": f"p{i}@example.org", "created_at": ago(days=10), "is_minor": i in (2, 3, 5),
             "legal_hold": i == 5, "restricted_at": None, "restriction_reason": None} for i in range(1, 7)
        ])
        conn.execute(notes.insert(), [
            {"id": 10, "person_id": 2, "body": "x", "written_at": ago(days=1), "legal_hold": False},
            {"id": 11, "person_id": 3, "body": "x", "written_at": ago(days=1), "legal_hold": True},  # holds person 3
            {"id": 12, "person_id": 1, "body": "old", "written_at": ago(months=13), "legal_hold": False},
            {"id": 13, "person_id": 1, "body": "old held", "written_at": ago(months=13), "legal_hold": True},
            {"id": 14, "person_id": 4, "body": "new", "written_at": ago(months=11), "legal_hold": None},
            {"id": 15, "person_id": 6, "body": "old", "written_at": ago(months=14), "legal_hold": None},
        ])
        conn.execute(tags.insert(), [{"id": 20, "person_id": 2, "label": "a"},
                                     {"id": 21, "person_id": 1, "label": "b"}])
        conn.execute(leads.insert(), [{"restricted_at": None, "restriction_reason": None, **row} for row in [
            {"id": 30, "email": "l30@example.org", "last_activity_at": ago(months=40), "legal_hold": False},  # delete
            {"id": 31, "email": "l31@example.org", "last_activity_at": ago(months=30), "legal_hold": False},  # lock
            {"id": 32, "email": "l32@example.org", "last_activity_at": ago(months=12), "legal_hold": False},  # keep
            {"id": 33, "email": "l33@example.org", "last_activity_at": ago(months=50), "legal_hold": True},  # held
            {"id": 34, "email": "l34@example.org", "last_activity_at": None, "legal_hold": False},  # no start
            {"id": 35, "email": "l35@example.org", "last_activity_at": ago(months=25), "legal_hold": False,
             "restricted_at": ago(days=3), "restriction_reason": "earlier"},  # already locked
            {"id": 36, "email": "l36@example.org", "last_activity_at": ago(months=37), "legal_hold": False},  # delete
        ]])
        conn.execute(accounts.insert(), [{"restricted_at": None, "restriction_reason": None, **row} for row in [
            {"id": 40, "user_email": "a40@example.org", "contract_end_at": dt.datetime(2015, 6, 1)},  # delete
            {"id": 41, "user_email": "a41@example.org", "contract_end_at": dt.datetime(2016, 3, 1)},  # lock
            {"id": 42, "user_email": "a42@example.org", "contract_end_at": dt.datetime(2025, 12, 31)},  # lock
            {"id": 43, "user_email": "a43@example.org", "contract_end_at": dt.datetime(2026, 3, 1)},  # keep
            {"id": 44, "user_email": "a44@example.org", "contract_end_at": None},  # active
        ]])
        conn.execute(visits.insert(), [
            {"id": 50 + i, "ip": f"203.0.113.{i}", "email": f"v{i}@example.org",
             "seen_at": ago(days=31 + i) if i < 5 else ago(days=2), "anonymized_at": None} for i in range(8)
        ])


@pytest.fixture
def env(db_url, tmp_path):
    engine = make_engine(db_url)
    seed(engine)
    policy = parse_policy(POLICY, source="test-policy.yaml")
    store = SqlStore("crm", policy, engine, mask_key=KEY)
    ledger = Ledger(make_engine(f"sqlite:///{tmp_path / 'ledger.db'}"), KEY)
    yield policy, store, ledger, engine
    engine.dispose()


def ids(engine, table, where=None) -> set[int]:
    query = sa.select(table.c.id)
    if where is not None:
        query = query.where(where)
    with engine.connect() as conn:
        return set(conn.execute(query).scalars())


def sweep(env, rule_id, **kw):
    policy, store, ledger, _ = env
    return run_rule(policy, rule_id, store, ledger, RunRef("test", "run1"), now=NOW, **kw)


def test_minors_deleted_with_dependents_first_holds_win(env):
    _, _, ledger, engine = env
    counts = sweep(env, "crm.people.minors")
    # 2 is a minor; 3 is a minor whose note 11 is held; 5 is a minor under hold.
    assert counts["deleted"] == 1 and counts["held"] == 2
    assert ids(engine, people) == {1, 3, 4, 5, 6}
    assert ids(engine, notes) == {11, 12, 13, 14, 15}  # note 10 went with person 2
    with engine.connect() as conn:
        assert dict(conn.execute(sa.select(tags.c.id, tags.c.person_id)).all()) == {20: None, 21: 1}
    assert counts["cascaded"] == {"crm.notes": 1, "crm.tags:nullified": 1}
    assert ledger.verify().ok


def test_delete_past_period_only_and_never_held(env):
    _, _, _, engine = env
    counts = sweep(env, "crm.notes.old_notes")
    assert (counts["deleted"], counts["held"], counts["kept"]) == (2, 1, 3)
    assert ids(engine, notes) == {10, 11, 13, 14}


def test_two_stage_lifecycle_locks_and_deletes_exact_rows(env):
    _, _, ledger, engine = env
    counts = sweep(env, "crm.leads.lifecycle")
    assert ids(engine, leads) == {31, 32, 33, 34, 35}
    assert ids(engine, leads, leads.c.restricted_at.is_not(None)) == {31, 35}
    with engine.connect() as conn:
        reasons = dict(conn.execute(sa.select(leads.c.id, leads.c.restriction_reason)).all())
    assert reasons[31] == "retention:crm.leads.lifecycle" and reasons[35] == "earlier"  # not locked again
    assert (counts["deleted"], counts["locked"], counts["held"]) == (2, 1, 1)
    # batches of 2: 2 deletions in one batch, 1 lock in one batch, plus the rule's summary entry
    done = [r for r in ledger.rows() if r["outcome"] == "done"]
    assert [(r["action"], r["count"]) for r in done] == [("delete", 2), ("lock", 1)]
    assert all(r["pk_digest"] and len(r["pk_digest"]) == 64 for r in done)


def test_round_up_to_end_of_year(env):
    _, _, _, engine = env
    counts = sweep(env, "crm.accounts.bookkeeping")
    assert ids(engine, accounts) == {41, 42, 43, 44}
    assert ids(engine, accounts, accounts.c.restricted_at.is_not(None)) == {41, 42}
    assert (counts["deleted"], counts["locked"]) == (1, 2)


def test_anonymize_masks_once(env):
    _, _, _, engine = env
    counts = sweep(env, "crm.visits.mask_visitors")
    assert counts["anonymized"] == 5
    with engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(sa.select(visits))}
    for i in range(8):
        row = rows[50 + i]
        if i < 5:
            assert row.ip is None and row.anonymized_at is not None
            assert len(row.email) == 64 and "@" not in row.email
        else:
            assert row.ip == f"203.0.113.{i}" and row.email == f"v{i}@example.org"
    again = sweep(env, "crm.visits.mask_visitors")
    assert again["anonymized"] == 0
    with engine.connect() as conn:
        assert {r.id: r.email for r in conn.execute(sa.select(visits))} == {k: v.email for k, v in rows.items()}


def snapshot(engine):
    with engine.connect() as conn:
        return {t.name: sorted(tuple(r) for r in conn.execute(sa.select(t))) for t in md.sorted_tables}


def test_dry_run_changes_nothing_and_reports_counts(env):
    _, _, ledger, engine = env
    before = snapshot(engine)
    for rule_id in ("crm.people.minors", "crm.leads.lifecycle", "crm.visits.mask_visitors", "crm.notes.old_notes"):
        counts = sweep(env, rule_id, dry_run=True)
        assert counts["dry_run"]
    assert snapshot(engine) == before
    leads_dry = [r for r in ledger.rows(rule_id="crm.leads.lifecycle")]
    assert [r["outcome"] for r in leads_dry] == ["dry_run"]
    assert '"deleted": 2' in leads_dry[0]["details"] and '"locked": 1' in leads_dry[0]["details"]


def test_second_run_changes_nothing_more(env):
    _, _, _, engine = env
    for rule_id in ("crm.people.minors", "crm.leads.lifecycle", "crm.accounts.bookkeeping", "crm.notes.old_notes"):
        sweep(env, rule_id)
    after_first = snapshot(engine)
    for rule_id in ("crm.people.minors", "crm.leads.lifecycle", "crm.accounts.bookkeeping", "crm.notes.old_notes"):
        counts = sweep(env, rule_id)
        assert counts["deleted"] == counts["locked"] == counts["anonymized"] == 0
    assert snapshot(engine) == after_first


def test_safety_brake_trips_and_leaves_table_intact(env):
    policy, store, ledger, engine = env
    tight = parse_policy(POLICY.replace("max_fraction: 0.9", "max_fraction: 0.2"), source="tight.yaml")
    store.policy = tight
    before = snapshot(engine)
    with pytest.raises(SafetyBrakeTripped) as exc:
        run_rule(tight, "crm.leads.lifecycle", store, ledger, RunRef("test", "r"), now=NOW)
    assert "3 of 7" in str(exc.value) and "nothing was changed" in str(exc.value)
    assert snapshot(engine) == before
    assert [r["outcome"] for r in ledger.rows()] == ["brake_tripped"]


def test_declared_column_missing_in_database_is_refused_before_acting(env):
    policy, store, ledger, engine = env
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE t_visits DROP COLUMN anonymized_at"))
    store._tables.clear()
    with pytest.raises(SchemaMismatch, match="lacks declared column"):
        sweep(env, "crm.visits.mask_visitors")
    assert ids(engine, visits) == set(range(50, 58))


def test_no_personal_data_in_ledger(env):
    _, _, ledger, engine = env
    for rule_id in ("crm.people.minors", "crm.leads.lifecycle", "crm.visits.mask_visitors"):
        sweep(env, rule_id)
    text = repr(list(ledger.rows()))
    assert "@example.org" not in text and "203.0.113" not in text


def test_tables_reflected_together_and_a_view_or_missing_table_on_its_own(env):
    """A system's tables are reflected in one go; a collection on a view still gets its columns, and a
    missing table fails only the collection that names it."""
    _, _, _, engine = env
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE VIEW v_people AS SELECT id, email, created_at FROM t_people"))
    policy = parse_policy("""
version: 1
systems:
  crm:
    kind: sql
    connection: crm_db
    collections:
      people: {table: t_people, primary_key: id, columns: [id, email, created_at]}
      people_view: {table: v_people, primary_key: id, columns: [id, email, created_at]}
      gone: {table: t_gone, primary_key: id, columns: [id]}
""", source="view-policy.yaml")
    store = SqlStore("crm", policy, engine, mask_key=KEY)
    try:
        assert {"id", "email", "created_at", "is_minor"} <= set(store.table("people").c.keys())
        assert set(store.table("people_view").c.keys()) == {"id", "email", "created_at"}
        with pytest.raises(SchemaMismatch, match="'t_gone' does not exist"):
            store.table("gone")
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("DROP VIEW v_people"))
