"""``cli concept``: the deletion concept lists every category of config/policy.yaml, in DIN 66398 order,
as Markdown, CSV and HTML, with the ledger's evidence; ``cli validate`` warns for personal data without a rule.

Golden files (tests/unit/golden/): the concept of the default map and of every-kind.yaml (every condition kind,
computed starts, start events, cascades, suppression, maskings, backups). After a deliberate change, rewrite them
with ``UPDATE_GOLDEN=1 pytest tests/unit/test_concept.py`` and read the diff."""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import re

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from include.retention import cli
from include.retention.concept import (
    HEADINGS,
    START_EVENTS,
    concept_frame,
    period_text,
    personal_without_rule,
    render_html,
    render_markdown,
    start_event,
    write_concept,
)
from include.retention.connections import env_resolver, hmac_key
from include.retention.describe import condition_text
from include.retention.errors import PolicyError
from include.retention.ledger import Ledger, RunRef
from include.retention.policy import Condition, load_policy, parse_policy
from include.retention.requests.access import describe_rule
from include.retention.stores.sql import make_engine
from tests.conftest import ROOT
from tests.policy_text import crm_policy

POLICY = ROOT / "config" / "policy.yaml"
GOLDEN = ROOT / "tests" / "unit" / "golden"
EVERY_KIND = GOLDEN / "every-kind.yaml"
NOW = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)


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
    assert out.startswith("# Deletion concept (DIN 66398 / ISO/IEC 27555): default retention policy\n")


def test_rows_follow_the_deletion_classes():
    df = concept_frame(load_policy(POLICY))
    df = df[df["section"] == "category"]
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


# ---- golden files and the three formats --------------------------------------------------------------------


def _fixed(path, source: str):
    """The map with a stable name and digest: the golden files do not change with a comment in the map."""
    return load_policy(path).model_copy(update={"source": source, "digest": "0" * 64})


MAPS = {"default": (POLICY, "config/policy.yaml"), "every-kind": (EVERY_KIND, "tests/unit/golden/every-kind.yaml")}


@pytest.mark.parametrize("name", MAPS)
def test_concept_matches_its_golden_files(name, tmp_path):
    path, source = MAPS[name]
    written = write_concept(_fixed(path, source), tmp_path, {}, "none (golden file)", now=NOW)
    for fmt in ("md", "csv"):
        golden = GOLDEN / f"deletion-concept-{name}.{fmt}"
        text = open(written[fmt], encoding="utf-8").read()
        if os.environ.get("UPDATE_GOLDEN"):
            golden.write_text(text, encoding="utf-8")
        assert text == golden.read_text(encoding="utf-8"), f"{golden} differs (UPDATE_GOLDEN=1 rewrites it)"


def _md_facts(md: str) -> list[str]:
    """Every statement of the Markdown: the title, each list item, each table cell (headings included)."""
    facts = []
    for line in md.splitlines():
        if line.startswith("# "):
            facts.append(line[2:])
        elif line.startswith("- "):
            facts.append(line[2:])
        elif line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            facts += [c for c in cells if c not in ("", "-")]
    return facts


@pytest.mark.parametrize("name", MAPS)
def test_markdown_csv_and_html_say_the_same(name):
    path, source = MAPS[name]
    policy = _fixed(path, source)
    df = concept_frame(policy, {}, generated_at="2026-12-01T09:00:00Z", evidence_note="none")
    md, page = render_markdown(policy, df), html.unescape(render_html(policy, df))
    cells = set(HEADINGS.values()) | {v for row in df.rename(columns=HEADINGS).itertuples(index=False) for v in row}
    facts = _md_facts(md)
    assert len(facts) > 100
    for fact in facts:
        # a cell of the deletion-class matrix lists categories: each is a category row of the CSV
        assert fact in cells or all(part in cells for part in fact.split(", ")), fact
        assert fact in page, fact
    # and the other way round: every category row of the CSV is in the Markdown
    for row in df[df["section"] == "category"].itertuples():
        assert f"| {row.deletion_class} | {row.category} |" in md


def test_default_concept_states_each_fact_right():
    df = concept_frame(load_policy(POLICY))
    by_rule = df[df["section"] == "category"].set_index("rule", drop=False)
    md = render_markdown(load_policy(POLICY), concept_frame(load_policy(POLICY)))
    assert "= null" not in md and "guess" not in md
    minors = by_rule.loc["crm.contacts.minors"]
    assert minors["conditions"] == "birth_date younger than 18 years (birth_date > now - P18Y)"
    # named start events, never guessed: the inactivity rule counts from the last engagement
    engaged = by_rule.loc["mailing.subscribers.no_engagement"]
    assert engaged["start_event"] == START_EVENTS["end_of_process"]
    assert engaged["deletion_class"] == "3 years after end of process"
    assert engaged["start"] == "last_engaged_at (else subscribed_at)"
    assert engaged["also_deleted"] == ("mailing.list_memberships rows referring to it; mailing.campaign_events rows "
                                       "referring to it")
    # an orphan rule deletes only contacts nothing refers to: it takes no rows along, and no row goes by it
    assert by_rule.loc["crm.contacts.orphaned"]["also_deleted"] == ""
    inquiries = df[(df["section"] == "category") & (df["collection"] == "crm.inquiries") & (df["rule"] == "")]
    assert list(inquiries["stages"]) == ["whenever crm.contacts rows go: crm.contacts.minors, erasure requests"]
    # campaign events: anonymized by their rule, and deleted with their subscriber
    events = df[(df["section"] == "category") & (df["collection"] == "mailing.campaign_events")]
    assert set(events["deletion_class"]) == {"30 days after collection", "deleted with its mailing.subscribers row"}
    assert "mailing.subscribers.unsubscribed" in events[events["rule"] == ""].iloc[0]["stages"]
    supp = df[df["section"] == "suppression"].iloc[0]
    assert supp["standard_period"] == "as long as the erasure must be honoured"
    assert "no plaintext" in supp["content"] and "prevent re-contact after erasure" in supp["purpose"]
    assert "mailing.subscribers.unsubscribed (email)" in supp["added_by"]
    backups = df[df["section"] == "backup"].set_index("system")
    assert backups.loc["crm", "standard_period"] == "35 days" and "replay crm" in backups.loc["crm", "restore"]
    assert backups.loc["objects", "standard_period"] == "30 days"
    masks = df[df["section"] == "masking"].set_index("masked_column")
    assert masks.loc["ip_address", "remains"] == ("/24 (IPv4) and /48 (IPv6) network prefix kept: pseudonymous, "
                                                  "not anonymous")
    assert masks.loc["admin_email", "remains"].startswith("nothing remains")
    assert df[df["section"] == "gap"].empty  # the default map leaves nothing open


def test_a_rule_without_start_event_is_counted_from_its_start_and_listed_as_open():
    policy = load_policy(EVERY_KIND)
    df = concept_frame(policy)
    cold = df[(df["section"] == "category") & (df["rule"] == "crm.people.cold")].iloc[0]
    assert cold["start_event"] == START_EVENTS["not_stated"] and cold["event"] == ""
    assert cold["deletion_class"] == ("3 years, counted from the later of last_seen_at, last_order_at "
                                      "(else created_at)")
    gaps = list(df[df["section"] == "gap"]["note"])
    assert ("crm.people.cold: start event not stated in the data map (counted from the later of last_seen_at, "
            "last_order_at (else created_at))") in gaps
    assert "archive: backups not declared in the data map" in gaps
    assert start_event(policy.rule("crm.people.closed")[2]) == "end_of_relationship"


def test_every_condition_kind_in_rules_and_legal_holds():
    df = concept_frame(load_policy(EVERY_KIND))
    df = df[df["section"] == "category"].set_index("rule", drop=False)
    assert df.loc["crm.people.closed"]["conditions"] == (
        'score > 7 and score <= 10 and status in ("closed", "gone") and closed_at is not null and note is null')
    assert df.loc["crm.people.cold"]["conditions"] == 'score < 3 and score >= 0 and status = "cold"'
    assert df.loc["crm.people.very_old"]["conditions"] == (
        "birth_date older than 100 years (birth_date < now - P100Y) and signed_on >= 2020-01-01")
    assert df.loc["crm.people.minors"]["legal_hold"] == (
        'legal_hold = true or litigation_at younger than 3 years (litigation_at > now - P3Y) or region in '
        '("court-a", "court-b")')
    assert df.loc["files.invoices.orphaned"]["legal_hold"] == 'tag hold in ("yes", "true") or tag case is not null'
    # the access package's README says the same
    people = load_policy(EVERY_KIND).collection("crm.people")
    assert describe_rule(people.rules[0]).endswith("where birth_date younger than 18 years (birth_date > now - P18Y)")


def test_cascades_are_listed_under_the_parent_and_the_dependent():
    df = concept_frame(load_policy(EVERY_KIND))
    minors = df[df["rule"] == "crm.people.minors"].iloc[0]
    assert minors["also_deleted"] == ("crm.orders rows referring to it; crm.notes rows referring to it (via "
                                      "crm.orders); files.invoices objects a crm.orders row names; crm.tags: "
                                      "reference cleared, row kept")
    notes = df[df["collection"] == "crm.notes"].iloc[0]
    assert notes["deletion_class"] == "deleted with its crm.orders row"
    assert notes["stages"] == "whenever crm.orders rows go: with their crm.people rows"
    invoices = df[(df["collection"] == "files.invoices") & (df["rule"] == "")].iloc[0]
    assert invoices["deletion_class"] == "deleted with the crm.orders row that names it"


@given(st.sampled_from(["equals", "in", "is_null", "lt", "le", "gt", "ge", "older_than", "younger_than"]),
       st.integers(min_value=0, max_value=10_000), st.sampled_from(["Y", "M", "D"]))
def test_a_condition_reads_as_its_test(kind, n, unit):
    value = {"equals": n, "in": [n, n + 1], "is_null": bool(n % 2), "older_than": f"P{n % 99 + 1}{unit}",
             "younger_than": f"P{n % 99 + 1}{unit}"}.get(kind, n)
    text = condition_text(Condition.model_validate({"column": "col_x", kind: value}))
    assert text.startswith("col_x ")
    assert ("null" in text) == (kind == "is_null")
    if kind in ("older_than", "younger_than"):
        assert f"now - {value})" in text and ("<" if kind == "older_than" else ">") in text
    elif kind not in ("is_null",):
        assert str(n) in text


# ---- validation of start_event and backups ------------------------------------------------------------------

ONE = crm_policy("""\
    people:
      table: people
      primary_key: id
      columns: [id, email, created_at]
      identities: {email: email}
      rules:
        - {name: old, start: created_at, action: delete, period: P1Y, start_event: START}
    """)


@pytest.mark.parametrize(("start", "backups", "message"), [
    ("lastcontact", "", "systems.crm.collections.people.rules[0].start_event.event: unknown start event "
                        "'lastcontact'; known: collection, object_upload, last_contact"),
    ("object_upload", "", "systems.crm.collections.people.rules[0]: start_event 'object_upload' needs an S3 start "
                          "counted from 'last_modified'"),
    ("no_longer_referenced", "", "rules[0]: start_event 'no_longer_referenced' needs 'start: {orphaned: ...}'"),
    ("{description: x}", "", "rules[0].start_event.event: Field required"),
    ("collection", "{retention: P35X, where: dumps}", "/p.yaml: systems.crm.backups.retention: 'P35X' is not an "
                                                      "ISO 8601 duration"),
    ("collection", "{retention: -P1D, where: dumps}", "negative periods are not allowed"),
    ("collection", "{retention: P35D}", "systems.crm.backups.where: Field required"),
    ("collection", "{retention: P35D, where: ''}", "systems.crm.backups.where: String should have at least 1"),
    ("collection", "{retention: 35, where: d}", "systems.crm.backups.retention: Input should be a valid string"),
    ("collection", "{retention: P35D, where: d, restore: sweep}", "systems.crm: backups.restore: this system holds "
                                                                  "identities"),
    ("collection", "{retention: P35D, where: d, restore: rsync}", "systems.crm.backups.restore: Input should be "
                                                                  "'replay' or 'sweep'"),
    ("collection", "{retention: P35D, where: d, keep: 3}", "systems.crm.backups.keep: unknown field"),
])
def test_bad_start_event_or_backups_are_refused_naming_file_and_path(start, backups, message):
    text = ONE.replace("START", start)
    if backups:
        text = text.replace("    connection: crm_db\n", f"    connection: crm_db\n    backups: {backups}\n")
    with pytest.raises(PolicyError) as exc:
        parse_policy(text, source="/p.yaml")
    assert str(exc.value).startswith("/p.yaml: ") and message in str(exc.value), str(exc.value)


def test_replay_needs_identities():
    text = crm_policy("""\
        logs:
          table: logs
          primary_key: id
          columns: [id, at]
          rules: [{name: old, start: at, action: delete, period: P1Y}]
        """).replace("    connection: crm_db\n", "    connection: crm_db\n    backups: {retention: P7D, where: d}\n")
    with pytest.raises(PolicyError, match=r"systems\.crm: backups\.restore: 'replay' re-applies erasures"):
        parse_policy(text)
    assert parse_policy(text.replace("where: d}", "where: d, restore: sweep}")).systems["crm"].backups.restore == \
        "sweep"


def test_a_row_that_goes_only_with_a_parent_nothing_deletes_is_an_open_point():
    policy = parse_policy("categories: {logins: sign-ins}\n" + crm_policy("""\
        accounts:
          table: accounts
          primary_key: id
          columns: [id, created_at]
        logins:
          table: logins
          primary_key: id
          columns: [id, account_id, at]
          references: [{to: crm.accounts, column: account_id, on_delete: delete}]
          categories: [logins]
        """))
    df = concept_frame(policy)
    row = df[(df["section"] == "category") & (df["collection"] == "crm.logins")].iloc[0]
    assert row["stages"] == "whenever crm.accounts rows go: nothing deletes them"
    assert "crm.logins: logins: goes only with its crm.accounts rows, and nothing deletes those" in list(
        df[df["section"] == "gap"]["note"])
