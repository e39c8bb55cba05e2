"""The forecast is what a sweep then does: its 7-day figure equals a sweep run at now + 7 days, per rule,
on PostgreSQL, MariaDB, SQLite and moto S3; forecasting changes nothing; per-day figures by bisection
equal a plan for every day."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from dateutil.relativedelta import relativedelta

from include.retention.forecast import forecast
from include.retention.ledger import Ledger, RunRef
from include.retention.policy import parse_policy
from include.retention.stores.sql import SqlStore, make_engine
from include.retention.sweep import run_rule
from tests.conftest import KEY
from tests.policy_text import crm_policy
from tests.s3.conftest import PLAIN, conn_info, make_store, put, s3, s3_policy, snapshot  # noqa: F401 - fixtures
from tests.s3.test_s3_anonymize import LOG, LOGS

pytestmark = pytest.mark.integration

NOW = dt.datetime(2026, 11, 24, 12, 0, 0, tzinfo=dt.UTC)
WEEK = dt.timedelta(days=7)
PAST = {"lock": "locked", "anonymize": "anonymized", "delete": "deleted"}

POLICY = crm_policy("""\
      people:
        table: f_people
        primary_key: id
        columns: [id, email, closed_at, legal_hold]
        identities: {email: email}
        legal_hold: [{column: legal_hold, equals: true}]
        rules:
          - {name: closed, start: closed_at, action: delete, period: P6M}
      notes:
        table: f_notes
        primary_key: id
        columns: [id, person_id, written_at]
        references: [{column: person_id, to: crm.people, on_delete: delete}]
      leads:
        table: f_leads
        primary_key: id
        columns: [id, email, last_activity_at, legal_hold, restricted_at, restriction_reason]
        lock: {at: restricted_at, reason: restriction_reason}
        legal_hold: [{column: legal_hold, equals: true}]
        rules:
          - name: lifecycle
            start: last_activity_at
            stages: [{action: lock, after: P24M}, {action: delete, after: P36M}]
      visits:
        table: f_visits
        primary_key: id
        columns: [id, ip, seen_at, anonymized_at]
        anonymized_marker: anonymized_at
        rules:
          - {name: mask_ip, start: seen_at, action: anonymize, period: P30D, mask: {ip: {strategy: "null"}}}
""", defaults="{max_fraction: 1.0, batch_size: 2}")

md = sa.MetaData()
people = sa.Table("f_people", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                  sa.Column("email", sa.String(200)), sa.Column("closed_at", sa.DateTime),
                  sa.Column("legal_hold", sa.Boolean))
notes = sa.Table("f_notes", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                 sa.Column("person_id", sa.Integer), sa.Column("written_at", sa.DateTime))
leads = sa.Table("f_leads", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                 sa.Column("email", sa.String(200)), sa.Column("last_activity_at", sa.DateTime),
                 sa.Column("legal_hold", sa.Boolean), sa.Column("restricted_at", sa.DateTime),
                 sa.Column("restriction_reason", sa.String(200)))
visits = sa.Table("f_visits", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                  sa.Column("ip", sa.String(64)), sa.Column("seen_at", sa.DateTime),
                  sa.Column("anonymized_at", sa.DateTime))


def ago(**kw) -> dt.datetime:
    return (NOW - relativedelta(**kw)).replace(tzinfo=None)


def seed(engine: sa.Engine) -> None:
    md.drop_all(engine)
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(people.insert(), [
            {"id": 1, "email": "a@example.org", "closed_at": ago(months=7), "legal_hold": False},  # due now
            {"id": 2, "email": "b@example.org", "closed_at": ago(months=6, days=-3), "legal_hold": False},  # in 3 d
            {"id": 3, "email": "c@example.org", "closed_at": ago(months=6, days=-6), "legal_hold": None},  # in 6 d
            {"id": 4, "email": "d@example.org", "closed_at": ago(months=6, days=-10), "legal_hold": False},  # 10 d
            {"id": 5, "email": "e@example.org", "closed_at": ago(months=6, days=-2), "legal_hold": True},  # held
            {"id": 6, "email": "f@example.org", "closed_at": None, "legal_hold": False},  # open: never due
        ])
        conn.execute(notes.insert(), [{"id": 10 + i, "person_id": i, "written_at": ago(days=1)} for i in (1, 2, 4)])
        conn.execute(leads.insert(), [{"restricted_at": None, "restriction_reason": None, **row} for row in [
            {"id": 30, "email": "l30@example.org", "last_activity_at": ago(months=40), "legal_hold": False},
            {"id": 31, "email": "l31@example.org", "last_activity_at": ago(months=36, days=-4), "legal_hold": False},
            {"id": 32, "email": "l32@example.org", "last_activity_at": ago(months=24, days=-5), "legal_hold": False},
            {"id": 33, "email": "l33@example.org", "last_activity_at": ago(months=30), "legal_hold": False},
            {"id": 34, "email": "l34@example.org", "last_activity_at": ago(months=24, days=-20), "legal_hold": False},
            {"id": 35, "email": "l35@example.org", "last_activity_at": ago(months=36, days=-2), "legal_hold": False,
             "restricted_at": ago(days=3), "restriction_reason": "retention:crm.leads.lifecycle"},
        ]])
        conn.execute(visits.insert(), [
            {"id": 50 + i, "ip": f"203.0.113.{i}", "seen_at": ago(days=d), "anonymized_at": None}
            for i, d in enumerate((40, 31, 29, 25, 24, 10, 1))
        ])


def table_state(engine: sa.Engine) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for t in md.sorted_tables
                for r in conn.execute(sa.select(t).order_by(t.c.id))]


@pytest.fixture
def env(db_url, tmp_path):
    engine = make_engine(db_url)
    seed(engine)
    policy = parse_policy(POLICY, source="test-policy.yaml")
    store = SqlStore("crm", policy, engine, mask_key=KEY)
    ledger = Ledger(make_engine(f"sqlite:///{tmp_path / 'ledger.db'}"), KEY)
    yield policy, store, ledger, engine
    engine.dispose()


def test_seven_day_forecast_is_what_a_sweep_at_now_plus_7_days_does(env):
    policy, store, ledger, engine = env
    before = table_state(engine)

    result = forecast(policy, lambda _system: store, NOW, [7, 30])

    assert table_state(engine) == before  # read-only
    assert result["errors"] == 0
    by_rule = {r["rule_id"]: r for r in result["rules"]}
    week = {rid: next(h["counts"] for h in r["horizons"] if h["days"] == 7) for rid, r in by_rule.items()}
    # the seed: what the week brings on top of what is due now
    assert by_rule["crm.people.closed"]["now"]["delete"] == 1 and week["crm.people.closed"]["delete"] == 3
    assert week["crm.people.closed"]["cascaded"] == 2  # notes of persons 1 and 2
    assert by_rule["crm.leads.lifecycle"]["now"] == {"lock": 2, "anonymize": 0, "delete": 1, "cascaded": 0}
    assert week["crm.leads.lifecycle"]["lock"] == 2 and week["crm.leads.lifecycle"]["delete"] == 3
    assert by_rule["crm.visits.mask_ip"]["now"]["anonymize"] == 2 and week["crm.visits.mask_ip"]["anonymize"] == 5

    for rule_id in policy.rule_ids():
        counts = run_rule(policy, rule_id, store, ledger, RunRef("test", "week"), now=NOW + WEEK)
        done = {a: counts[PAST[a]] for a in ("lock", "anonymize", "delete")}
        assert done == {a: week[rule_id][a] for a in done}, rule_id
        assert sum(counts["cascaded"].values()) == week[rule_id]["cascaded"], rule_id
    # and after that sweep, nothing more is due at that moment
    again = forecast(policy, lambda _system: store, NOW + WEEK, [1], per_day=False)
    assert all(not any(r["now"][a] for a in ("lock", "anonymize", "delete")) for r in again["rules"])


def test_per_day_by_bisection_equals_a_plan_for_every_day(env):
    policy, store, _, _ = env
    result = forecast(policy, lambda _system: store, NOW, [30])
    for r in result["rules"]:
        _, _, rule = policy.rule(r["rule_id"])
        coll = r["collection"].partition(".")[2]
        for point in r["per_day"]:
            plan = store.plan(coll, rule, NOW + dt.timedelta(days=point["offset"]))
            assert point["due"] == {a: plan.eligible.get(a, 0) for a in ("lock", "anonymize", "delete")}
    people_days = {p["offset"]: p["new"]["delete"] for p in result["rules"][0]["per_day"] if p["new"]["delete"]}
    # persons 2, 3 and 4 become due the day after their period ends (start < cutoff); 4's six months end
    # on day 10 (Dec 4 minus six months is June 4, past its June 3), the held person 5 never
    assert people_days == {4: 1, 7: 1, 10: 1}
    assert sum(p["total"] for p in result["series"]) >= 3 and len(result["series"]) == 30


# ---- S3 (moto) ------------------------------------------------------------------------------------

S3_NOW = dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.UTC)
RULE = "objects.access_logs.server_logs"


def test_s3_seven_day_forecast_is_what_a_sweep_at_now_plus_7_days_does(s3, make_store, tmp_path):  # noqa: F811
    days = [dt.date(2025, 6, 1), dt.date(2025, 6, 18), dt.date(2025, 7, 20),  # delete: now, within 7, later
            dt.date(2026, 5, 10), dt.date(2026, 5, 19), dt.date(2026, 6, 1), dt.date(2026, 6, 14)]
    for d in days:
        put(s3, PLAIN, f"logs/{d:%Y/%m/%d}/access-{d:%Y-%m-%d}.log", LOG)
    policy = s3_policy(LOGS.format(bucket=PLAIN))
    ledger = Ledger(make_engine(f"sqlite:///{tmp_path / 'ledger.db'}"), KEY)
    before = snapshot(s3, PLAIN)

    result = forecast(policy, lambda _system: make_store(policy), S3_NOW, [7, 30])

    assert snapshot(s3, PLAIN) == before  # listings only: nothing rewritten, tagged or deleted
    (rule,) = result["rules"]
    week = next(h["counts"] for h in rule["horizons"] if h["days"] == 7)
    # every log past 30 days and not yet past 12 months is in the anonymize band
    assert (rule["now"]["delete"], rule["now"]["anonymize"]) == (1, 3)
    assert (week["delete"], week["anonymize"]) == (2, 3)
    counts = run_rule(policy, RULE, make_store(policy), ledger, RunRef("test", "week"), now=S3_NOW + WEEK)
    assert (counts["deleted"], counts["anonymized"]) == (week["delete"], week["anonymize"])


def test_page_data_has_the_next_90_days_and_never_fails(tmp_path):
    from include.retention import dashboard

    engine = make_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    seed(engine)
    policy = parse_policy(POLICY, source="test-policy.yaml")
    store = SqlStore("crm", policy, engine, mask_key=b"")

    view = dashboard.forecast(NOW, policy=policy, store_for=lambda _system: store)

    assert view["ok"] is True and view["problems"] == []
    assert len(view["series"]) == 90 and view["series"][0]["day"] == "2026-11-25"
    assert [t["days"] for t in view["totals"]] == [7, 30, 90]
    assert view["totals"][0]["counts"] == {"lock": 2, "anonymize": 5, "delete": 6}
    assert set(view["actions"]) == {"lock", "anonymize", "delete"} and "@" not in str(view)

    def unreachable(_system):
        raise sa.exc.OperationalError("SELECT", {}, Exception("connection refused for someone@example.org"))

    broken = dashboard.forecast(NOW, policy=policy, store_for=unreachable)
    assert broken["ok"] is False and broken["problem"] == "no forecast: OperationalError"
    engine.dispose()
