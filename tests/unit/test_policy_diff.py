"""``cli diff OLD NEW``: which records a policy change would newly delete, against the real store (SQLite here);
a shortened period is reported per collection and fails the gate (exit 3); an unchanged policy reports zero.
(Record by record, all change kinds and databases: tests/integration/test_policy_diff_records.py.)"""

from __future__ import annotations

import datetime as dt
import json

import pytest
import sqlalchemy as sa
from dateutil.relativedelta import relativedelta

from include.retention import cli
from include.retention.forecast import rule_change
from include.retention.policy import parse_policy
from tests.policy_text import crm_policy

NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)

POLICY = crm_policy("""\
      applicants:
        table: applicants
        primary_key: id
        columns: [id, email, recruitment_closed_at, legal_hold]
        identities: {{email: email}}
        legal_hold: [{{column: legal_hold, equals: true}}]
        rules:
          - {{name: recruitment_closed, start: recruitment_closed_at, action: delete, period: {period}}}
""", defaults="{{max_fraction: 1.0}}") + "{extra}"

TICKETS_RULE = """\
      tickets:
        table: tickets
        primary_key: id
        columns: [id, closed_at]
        rules:
          - {name: after_closed, start: closed_at, action: delete, period: P36M}
"""
TICKETS_NO_RULE = """\
      tickets:
        table: tickets
        primary_key: id
        columns: [id, closed_at]
"""


def ago(**kw) -> dt.datetime:
    return (NOW - relativedelta(**kw)).replace(tzinfo=None)


@pytest.fixture
def world(tmp_path, monkeypatch):
    db = tmp_path / "crm.db"
    engine = sa.create_engine(f"sqlite:///{db}")
    md = sa.MetaData()
    applicants = sa.Table("applicants", md, sa.Column("id", sa.Integer, primary_key=True),
                          sa.Column("email", sa.String(100)), sa.Column("recruitment_closed_at", sa.DateTime),
                          sa.Column("legal_hold", sa.Boolean))
    tickets = sa.Table("tickets", md, sa.Column("id", sa.Integer, primary_key=True),
                       sa.Column("closed_at", sa.DateTime))
    md.create_all(engine)
    closed = [ago(days=10)] * 3 + [ago(months=2)] * 2 + [ago(months=7), None]
    with engine.begin() as conn:
        conn.execute(applicants.insert(), [{"id": i + 1, "email": f"a{i}@example.org", "recruitment_closed_at": c,
                                            "legal_hold": i == 1} for i, c in enumerate(closed)])
        conn.execute(tickets.insert(), [{"id": 1, "closed_at": ago(months=40)}, {"id": 2, "closed_at": ago(days=1)}])
    engine.dispose()
    monkeypatch.setenv("AIRFLOW_CONN_CRM_DB", json.dumps({"conn_type": "sqlite", "host": str(db)}))

    def write(name: str, period: str, extra: str = TICKETS_RULE) -> str:
        path = tmp_path / name
        path.write_text(POLICY.format(period=period, extra=extra))
        return str(path)

    return write


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["diff", *argv, "--now", NOW.isoformat()])
    out, err = capsys.readouterr()
    return code, out, err


def test_period_shortened_from_6_months_to_6_days_reports_the_rows_and_fails(world, capsys):
    old, new = world("old.yaml", "P6M"), world("new.yaml", "P6D")

    code, out, err = run(capsys, old, new)

    assert code == cli.DIFF_REFUSED == 3
    line = next(ln for ln in out.splitlines() if ln.startswith("crm.applicants "))
    # 3 closed 10 days ago + 2 two months ago, one of them under legal hold: 4 newly deleted now and at 30 days
    assert line.split() == ["crm.applicants", "delete", "4", "0", "4", "0"]
    assert "crm.applicants.recruitment_closed (shortened)" in out
    assert "records newly affected (locked, anonymized or deleted; dependents and owned objects included): " \
           "4 now, 4 within 30 days, 4 in all; newly deleted: 4 now, 4 within 30 days" in out
    assert "more than the threshold 0" in err
    assert "@" not in out + err  # counts only


def test_threshold_lets_a_small_change_through(world, capsys):
    old, new = world("old.yaml", "P6M"), world("new.yaml", "P6D")
    code, _, _ = run(capsys, old, new, "--threshold", "4")
    assert code == 0
    code, _, err = run(capsys, old, new, "--threshold", "3")
    assert code == 3 and "4 record(s)" in err


def test_unchanged_policy_reports_zero(world, capsys):
    old = world("old.yaml", "P6M")
    code, out, err = run(capsys, old, world("same.yaml", "P6M"))
    assert code == 0 and err == ""
    assert "no record is newly or no longer locked, anonymized or deleted" in out
    assert "0 now, 0 within 30 days, 0 in all; newly deleted: 0 now, 0 within 30 days" in out


def test_removed_rule_is_shown_first_and_json_has_the_numbers(world, capsys):
    old, new = world("old.yaml", "P6M"), world("new.yaml", "P6D", extra=TICKETS_NO_RULE)
    code, out, _ = run(capsys, old, new, "--json")
    diff = json.loads(out)
    assert code == 3
    assert [(r["rule_id"], r["change"]) for r in diff["rules"]] == [
        ("crm.tickets.after_closed", "removed"), ("crm.applicants.recruitment_closed", "shortened")]
    # the 40-month-old ticket would stay; the applicants' 4 go, now and within 30 days
    assert diff["collections"] == [
        {"action": "delete", "horizon": 0, "collection": "crm.applicants", "newly": 4, "no_longer": 0},
        {"action": "delete", "horizon": 0, "collection": "crm.tickets", "newly": 0, "no_longer": 1},
        {"action": "delete", "horizon": 30, "collection": "crm.applicants", "newly": 4, "no_longer": 0},
        {"action": "delete", "horizon": 30, "collection": "crm.tickets", "newly": 0, "no_longer": 1}]
    assert diff["newly_affected"] == [{"horizon": 0, "records": 4}, {"horizon": 30, "records": 4}]
    assert diff["gate"] == 4 and diff["errors"] == []


def test_rule_change_kinds():
    def pol(period: str, extra: str = TICKETS_RULE):
        return parse_policy(POLICY.format(period=period, extra=extra))

    rid = "crm.applicants.recruitment_closed"
    assert rule_change(pol("P6M"), pol("P6D"), rid) == "shortened"
    assert rule_change(pol("P6D"), pol("P6M"), rid) == "lengthened"
    assert rule_change(pol("P6M"), pol("P6M"), rid) == "unchanged"
    assert rule_change(pol("P6M"), pol("P6M", TICKETS_NO_RULE), "crm.tickets.after_closed") == "removed"
    assert rule_change(pol("P6M", TICKETS_NO_RULE), pol("P6M"), "crm.tickets.after_closed") == "added"


def test_negative_threshold_is_refused(world, capsys):
    old = world("old.yaml", "P6M")
    code, _, err = run(capsys, old, old, "--threshold", "-1")
    assert code == 2 and "--threshold" in err
