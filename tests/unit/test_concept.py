"""``cli concept``: the deletion concept lists every category of config/policy.yaml, in DIN 66398 order,
as Markdown, CSV and HTML, with the ledger's evidence; ``cli validate`` warns for personal data without a rule."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from include.retention import cli
from include.retention.concept import START_EVENTS, concept_frame, period_text, personal_without_rule, start_event
from include.retention.connections import env_resolver, hmac_key
from include.retention.ledger import Ledger, RunRef
from include.retention.policy import load_policy, parse_policy
from include.retention.stores.sql import make_engine
from tests.conftest import ROOT
from tests.policy_text import crm_policy

POLICY = ROOT / "config" / "policy.yaml"


@pytest.fixture
def no_ledger(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_RETENTION_LEDGER", raising=False)
    monkeypatch.setenv("RETENTION_POLICY_PATH", str(POLICY))


def test_concept_lists_every_category_of_the_default_policy(tmp_path, capsys, no_ledger):
    policy = load_policy(POLICY)
    assert policy.categories

    code = cli.main(["concept", "--out", str(tmp_path)])

    out, err = capsys.readouterr()
    assert code == 0 and "no evidence from the ledger" in err
    md = (tmp_path / "deletion-concept.md").read_text()
    csv = pd.read_csv(tmp_path / "deletion-concept.csv", keep_default_na=False)
    page = (tmp_path / "deletion-concept.html").read_text()
    for category in policy.categories:
        assert f"| {category} |" in md, category
        assert category in set(csv["category"]), category
        assert f"<td>{category}</td>" in page, category
    # every rule is in it, with its stages
    assert set(policy.rule_ids()) <= set(csv["rule"])
    assert "## Deletion classes" in md and "end of process (Ende des Vorgangs)" in md
    assert "<table" in page and "@" not in md + page


def test_concept_on_stdout_is_markdown(capsys, no_ledger):
    assert cli.main(["concept"]) == 0
    out, _ = capsys.readouterr()
    assert out.startswith("# Deletion concept:")


def test_rows_follow_the_deletion_classes():
    df = concept_frame(load_policy(POLICY))
    order = list(START_EVENTS.values())
    ranks = [order.index(e) for e in df["start_event"]]
    assert ranks == sorted(ranks)  # start event first (DIN 66398 matrix columns) ...
    for event in set(df["start_event"]):
        days = [float(d) for d in df[df["start_event"] == event]["period_days"] if d]
        assert days == sorted(days)  # ... then the standard period


def test_evidence_from_the_ledger(tmp_path, capsys, monkeypatch):
    db = tmp_path / "ledger.db"
    monkeypatch.setenv("AIRFLOW_CONN_RETENTION_LEDGER", json.dumps({"conn_type": "sqlite", "host": str(db)}))
    monkeypatch.setenv("RETENTION_POLICY_PATH", str(POLICY))
    ledger = Ledger(make_engine(f"sqlite:///{db}"), hmac_key(env_resolver))
    run = RunRef("retention_sweep", "r1")
    ledger.append(run=run, action="sweep", outcome="complete", count=0, rule_id="crm.contacts.minors")
    ledger.append(run=run, action="delete", outcome="done", count=2, rule_id="crm.leads.inactivity")
    ledger.append(run=run, action="sweep", outcome="complete", count=2, rule_id="crm.leads.inactivity",
                  details={"locked": 0, "anonymized": 0, "deleted": 2, "held": 1, "kept": 7})

    assert cli.main(["concept", "--out", str(tmp_path / "out")]) == 0

    capsys.readouterr()
    csv = pd.read_csv(tmp_path / "out" / "deletion-concept.csv", keep_default_na=False, dtype=str)
    row = csv[csv["rule"] == "crm.leads.inactivity"].iloc[0]
    assert row["ledger seq"] == "2-3" and row["outcome"] == "complete"
    assert row["counts"] == "locked 0, anonymized 0, deleted 2, held 1, kept 7"
    assert csv[csv["rule"] == "crm.contacts.minors"].iloc[0]["ledger seq"] == "1-1"


def test_terms():
    assert period_text("P36M") == "3 years" and period_text("P0D") == "immediately"
    assert period_text("P18M") == "1 year, 6 months" and period_text("P30D") == "30 days"
    policy = load_policy(POLICY)
    assert start_event(policy.rule("crm.support_tickets.after_closed")[2]) == "end_of_process"
    assert start_event(policy.rule("crm.client_accounts.contract_end")[2]) == "end_of_relationship"


WITHOUT_RULE = crm_policy("""\
          people:
            table: people
            primary_key: id
            columns: [id, email, created_at]
            identities: {email: email}
          visits:
            table: visits
            primary_key: id
            columns: [id, seen_at]
            rules:
              - {name: old, start: seen_at, action: delete, period: P30D}
    """)


def test_validate_warns_for_personal_data_without_a_rule(tmp_path, capsys):
    path = tmp_path / "policy.yaml"
    path.write_text(WITHOUT_RULE)
    assert personal_without_rule(parse_policy(WITHOUT_RULE)) == [("crm.people", "")]

    assert cli.main(["validate", str(path)]) == 0

    out, err = capsys.readouterr()
    assert "valid" in out
    assert "warning:" in err and "crm.people holds personal data (identities) but no rule ends it" in err
    assert "crm.visits" not in err


def test_validate_of_the_default_policy_warns_for_nothing(capsys):
    assert cli.main(["validate", str(POLICY)]) == 0
    assert "warning" not in capsys.readouterr().err
