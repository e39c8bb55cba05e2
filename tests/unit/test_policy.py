"""The default policy loads; every kind of wrong file is refused naming file, path and problem."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import os
import re
from pathlib import Path

import pytest
import yaml
from dateutil.relativedelta import relativedelta

from include.retention.errors import PolicyError
from include.retention.policy import ACTION_ORDER, Stage, Start, cutoff, load_policy, parse_duration

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "config" / "policy.yaml"
RULE_ID = re.compile(r"^[A-Za-z_]\w*\.[A-Za-z_]\w*\.[A-Za-z_]\w*$")


@pytest.fixture(scope="module")
def default_data() -> dict:
    return yaml.safe_load(DEFAULT.read_text())


def _coll(data: dict, system: str, collection: str) -> dict:
    return data["systems"][system]["collections"][collection]


# ---- the default file ---------------------------------------------------------------------


def test_default_policy_loads():
    policy = load_policy(DEFAULT)
    assert set(policy.systems) >= {"crm", "mailing"}
    assert policy.systems["crm"].connection == "crm_db"
    assert policy.systems["mailing"].connection == "mailing_db"
    ids = policy.rule_ids(["crm", "mailing"])
    assert len(ids) == 13
    assert len(set(ids)) == len(ids)
    assert all(RULE_ID.match(rule_id) for rule_id in policy.rule_ids())
    assert {
        "crm.contacts.minors", "crm.inquiries.after_last_contact", "crm.leads.inactivity",
        "crm.applicants.recruitment_closed", "crm.applicants.future_recruitment_consent",
        "crm.support_tickets.after_closed", "crm.client_accounts.contract_end",
        "crm.social_messages.after_answered", "crm.social_messages.unanswered", "crm.contacts.orphaned",
        "mailing.subscribers.unsubscribed",
        "mailing.subscribers.no_engagement",
        "mailing.campaign_events.mask_ip",
    } <= set(ids)


def test_default_policy_digest_is_sha256_of_the_file_bytes():
    policy = load_policy(DEFAULT)
    assert policy.digest == hashlib.sha256(DEFAULT.read_bytes()).hexdigest()
    assert policy.source == str(DEFAULT)


def test_default_policy_stages_are_ordered_weakest_first():
    policy = load_policy(DEFAULT)
    now = dt.datetime(2026, 11, 24)
    for rule_id in policy.rule_ids():
        _, _, rule = policy.rule(rule_id)
        actions = [s.action for s in rule.stages]
        assert actions == sorted(actions, key=ACTION_ORDER.__getitem__), rule_id
        edges = [cutoff(now, s, rule.start) for s in rule.stages]
        assert edges == sorted(edges, reverse=True), rule_id  # later stages reach further back


def test_default_policy_two_stage_rules():
    policy = load_policy(DEFAULT)
    _, _, leads = policy.rule("crm.leads.inactivity")
    assert [(s.action, s.after) for s in leads.stages] == [("lock", "P24M"), ("delete", "P36M")]
    _, accounts, contract = policy.rule("crm.client_accounts.contract_end")
    assert [(s.action, s.after) for s in contract.stages] == [("lock", "P0D"), ("delete", "P10Y")]
    assert contract.start.column == "contract_end_at" and contract.start.round_up == "year"
    assert accounts.lock is not None and accounts.lock.at == "restricted_at"


def test_default_policy_references_cascade_from_parents():
    policy = load_policy(DEFAULT)
    children = {child for child, ref in policy.children("crm.contacts") if ref.on_delete == "delete"}
    assert children >= {"crm.inquiries", "crm.leads", "crm.applicants", "crm.support_tickets"}
    children = {child for child, ref in policy.children("mailing.subscribers") if ref.on_delete == "delete"}
    assert children == {"mailing.list_memberships", "mailing.campaign_events"}


def test_default_policy_declares_legal_hold_where_rules_delete_or_lock():
    policy = load_policy(DEFAULT)
    for rule_id in policy.rule_ids(["crm", "mailing"]):
        _, coll, _ = policy.rule(rule_id)
        if coll.table != "campaign_events":
            assert [c.column for c in coll.legal_hold] == ["legal_hold"], rule_id
        for category in coll.categories:
            assert category in policy.categories


# ---- refused files ------------------------------------------------------------------------


def _unknown_column(d):
    _coll(d, "crm", "inquiries")["rules"][0]["start"] = "last_contacted_at"


def _unknown_system(d):
    _coll(d, "crm", "inquiries")["references"][0]["to"] = "crmx.contacts"


def _unknown_collection(d):
    _coll(d, "crm", "inquiries")["references"][0]["to"] = "crm.contact"


def _negative_period(d):
    _coll(d, "crm", "leads")["rules"][0]["stages"][0]["after"] = "-P1D"


def _negative_period_shorthand(d):
    _coll(d, "crm", "inquiries")["rules"][0]["period"] = "-P1D"


def _unparseable_period(d):
    _coll(d, "crm", "inquiries")["rules"][0]["period"] = "12 months"


def _reference_cycle(d):
    _coll(d, "crm", "contacts")["references"] = [{"to": "crm.inquiries", "column": "id", "on_delete": "delete"}]


def _cross_database_cycle(d):
    _coll(d, "mailing", "subscribers")["references"] = [{"to": "crm.leads", "column": "id", "on_delete": "delete"}]
    _coll(d, "crm", "leads")["references"] = [{"to": "mailing.subscribers", "column": "id", "on_delete": "delete"}]


def _composite_key_missing_column(d):
    _coll(d, "mailing", "list_memberships")["primary_key"] = ["subscriber_id", "list_idx"]


def _composite_key_named_twice(d):
    _coll(d, "mailing", "list_memberships")["primary_key"] = ["subscriber_id", "subscriber_id"]


def _reference_to_composite_key(d):
    _coll(d, "mailing", "list_memberships")["primary_key"] = ["subscriber_id", "list_name"]
    _coll(d, "mailing", "campaign_events")["references"] = [
        {"to": "mailing.list_memberships", "column": "subscriber_id", "on_delete": "delete"}]


def _no_on_delete(d):
    del _coll(d, "crm", "inquiries")["references"][0]["on_delete"]


def _typo(d):
    rule = _coll(d, "crm", "inquiries")["rules"][0]
    rule["perod"] = rule.pop("period")


def _unknown_strategy(d):
    _coll(d, "mailing", "campaign_events")["rules"][0]["mask"]["ip_address"]["strategy"] = "scramble"


def _anonymize_without_mask(d):
    del _coll(d, "mailing", "campaign_events")["rules"][0]["mask"]


def _max_fraction_above_one(d):
    _coll(d, "crm", "inquiries")["rules"][0]["max_fraction"] = 1.5


def _duplicate_rule_name(d):
    _coll(d, "crm", "applicants")["rules"][1]["name"] = "recruitment_closed"


def _unknown_category(d):
    _coll(d, "crm", "inquiries")["categories"] = ["inquiries", "telepathy"]


def _computed_start_missing_column(d):
    _coll(d, "mailing", "subscribers")["rules"][1]["start"] = {"latest": ["last_engaged_at", "last_click_at"],
                                                               "fallback": "subscribed_at"}


def _computed_start_missing_fallback(d):
    _coll(d, "mailing", "subscribers")["rules"][1]["start"]["fallback"] = "signed_up_at"


def _computed_start_and_column(d):
    _coll(d, "mailing", "subscribers")["rules"][1]["start"]["column"] = "subscribed_at"


def _fallback_without_computed_start(d):
    _coll(d, "crm", "inquiries")["rules"][0]["start"] = {"column": "last_contact_at", "fallback": "last_contact_at"}


def _range_with_a_list(d):
    _coll(d, "crm", "contacts")["rules"][0]["when"] = [{"column": "birth_date", "lt": ["2008-01-01"]}]


def _age_not_a_period(d):
    _coll(d, "crm", "contacts")["rules"][0]["when"] = [{"column": "birth_date", "younger_than": "18 years"}]


def _two_tests(d):
    _coll(d, "crm", "contacts")["rules"][0]["when"] = [{"column": "birth_date", "younger_than": "P18Y",
                                                        "gt": "2000-01-01"}]


def _suppress_unknown_kind(d):
    _coll(d, "mailing", "subscribers")["rules"][0]["suppress"] = ["phone"]


def _suppress_without_delete(d):
    _coll(d, "mailing", "campaign_events")["rules"][0]["suppress"] = ["email"]


def _suppress_on_lock_stage(d):
    _coll(d, "crm", "leads")["rules"][0]["stages"][0]["suppress"] = ["email"]


def _s3_legal_hold_range(d):
    _coll(d, "objects", "cvs")["legal_hold"] = [{"column": "legal-hold", "gt": 1}]


SUBSCRIBERS = "systems.mailing.collections.subscribers"
INQUIRIES = "systems.crm.collections.inquiries"
INVALID = [
    (_computed_start_missing_column, f"{SUBSCRIBERS}.rules[1].start.latest[1]", "unknown column 'last_click_at'"),
    (_computed_start_missing_fallback, f"{SUBSCRIBERS}.rules[1].start.fallback", "unknown column 'signed_up_at'"),
    (_computed_start_and_column, f"{SUBSCRIBERS}.rules[1].start",
     "give one of 'column', 'latest', 'earliest' (got column, latest)"),
    (_fallback_without_computed_start, f"{INQUIRIES}.rules[0].start", "'fallback' applies to a computed start"),
    (_range_with_a_list, "systems.crm.collections.contacts.rules[0].when[0]",
     "'lt' takes one number, date or date-time"),
    (_age_not_a_period, "systems.crm.collections.contacts.rules[0].when[0]",
     "'younger_than': '18 years' is not an ISO 8601 duration"),
    (_two_tests, "systems.crm.collections.contacts.rules[0].when[0]", "a condition needs exactly one of"),
    (_suppress_unknown_kind, f"{SUBSCRIBERS}.rules[0].suppress", "'phone' is not among the collection's identities"),
    (_suppress_without_delete, "systems.mailing.collections.campaign_events.rules[0]",
     "'suppress' applies to deletes, and this rule deletes nothing"),
    (_suppress_on_lock_stage, "systems.crm.collections.leads.rules[0].stages[0]",
     "'suppress' applies to 'delete' stages, not to 'lock'"),
    (_s3_legal_hold_range, "systems.objects.collections.cvs.legal_hold[0].gt", "an S3 legal hold tests a tag's text"),
    (_unknown_column, f"{INQUIRIES}.rules[0].start.column", "unknown column 'last_contacted_at'"),
    (_unknown_system, f"{INQUIRIES}.references[0].to", "unknown system 'crmx'"),
    (_unknown_collection, f"{INQUIRIES}.references[0].to", "unknown collection 'crm.contact'"),
    (_negative_period, "systems.crm.collections.leads.rules[0].stages[0].after", "negative periods are not allowed"),
    (_negative_period_shorthand, f"{INQUIRIES}.rules[0]", "negative periods are not allowed"),
    (_unparseable_period, f"{INQUIRIES}.rules[0]", "'12 months' is not an ISO 8601 duration"),
    (_reference_cycle, "systems.crm.collections.contacts.references[0].to",
     "reference cycle: crm.contacts -> crm.inquiries -> crm.contacts"),
    (_cross_database_cycle, "systems.crm.collections.leads.references[0].to",
     "reference cycle across databases: crm.leads -> mailing.subscribers -> crm.leads"),
    (_composite_key_missing_column, "systems.mailing.collections.list_memberships.primary_key[1]",
     "unknown column 'list_idx'"),
    (_composite_key_named_twice, "systems.mailing.collections.list_memberships.primary_key[1]",
     "column 'subscriber_id' is named twice in the key"),
    (_reference_to_composite_key, "systems.mailing.collections.campaign_events.references[0].to_column",
     "mailing.list_memberships has a composite primary key"),
    (_no_on_delete, f"{INQUIRIES}.references[0].on_delete", "crm.contacts can have rows deleted"),
    (_typo, f"{INQUIRIES}.rules[0].perod", "unknown field"),
    (_unknown_strategy, "systems.mailing.collections.campaign_events.rules[0].mask.ip_address.strategy",
     "unknown masking strategy 'scramble'"),
    (_anonymize_without_mask, "systems.mailing.collections.campaign_events.rules[0]",
     "an 'anonymize' stage needs 'mask'"),
    (_max_fraction_above_one, f"{INQUIRIES}.rules[0].max_fraction", "less than or equal to 1"),
    (_duplicate_rule_name, "systems.crm.collections.applicants.rules[1].name",
     "duplicate rule name 'recruitment_closed'"),
    (_unknown_category, f"{INQUIRIES}.categories", "unknown data category 'telepathy'"),
]


@pytest.mark.parametrize(("mutate", "where", "problem"), INVALID, ids=[m.__name__.strip("_") for m, _, _ in INVALID])
def test_invalid_policy_is_refused(tmp_path, default_data, mutate, where, problem):
    data = copy.deepcopy(default_data)
    mutate(data)
    path = tmp_path / "broken-policy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert f": {where}" in message, message
    assert problem in message, message


def test_invalid_yaml_is_refused_with_line(tmp_path):
    path = tmp_path / "broken-policy.yaml"
    path.write_text("systems:\n  crm:\n    kind: sql\n   connection: crm_db\n")
    with pytest.raises(PolicyError, match=r"broken-policy\.yaml: line 4, column \d+ not valid YAML"):
        load_policy(path)


def test_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- systems\n")
    with pytest.raises(PolicyError, match=r"list\.yaml: the top level must be a mapping"):
        load_policy(path)


# ---- the parse cache (load_policy parses a file once per process while its bytes stay the same) -----------


def _count_parses(monkeypatch) -> list[str]:
    from include.retention.policy import load as policy_module

    parsed: list[str] = []
    real = policy_module.parse_policy

    def counting(raw, source="<policy>"):
        parsed.append(source)
        return real(raw, source=source)

    monkeypatch.setattr(policy_module, "parse_policy", counting)
    return parsed


def test_an_unchanged_policy_file_is_parsed_once(tmp_path, monkeypatch):
    path = tmp_path / "policy.yaml"
    path.write_bytes(DEFAULT.read_bytes())
    parsed = _count_parses(monkeypatch)
    first = load_policy(path)
    assert load_policy(str(path)) is first and load_policy(path) is first
    assert parsed == [str(path)]
    assert first.digest == hashlib.sha256(DEFAULT.read_bytes()).hexdigest() and first.source == str(path)
    # the same bytes under another path: its own parse (the source names that file)
    other = tmp_path / "copy.yaml"
    other.write_bytes(DEFAULT.read_bytes())
    assert load_policy(other).source == str(other) and parsed == [str(path), str(other)]


def test_a_changed_policy_file_is_read_again_even_with_the_same_size_and_mtime(tmp_path, monkeypatch):
    path = tmp_path / "policy.yaml"
    text = DEFAULT.read_text()
    assert "name: default retention policy\n" in text
    path.write_text(text)
    parsed = _count_parses(monkeypatch)
    before = load_policy(path)
    stat = path.stat()
    # an edit within the file system's mtime granularity: same size, mtime put back
    path.write_text(text.replace("name: default retention policy\n", "name: changed retention policy\n"))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    after = load_policy(path)
    assert after is not before and len(parsed) == 2
    assert (before.name, after.name) == ("default retention policy", "changed retention policy")
    assert after.digest == hashlib.sha256(path.read_bytes()).hexdigest() != before.digest
    # and back: the first text's policy again (its digest), not the second's
    path.write_text(text)
    assert load_policy(path).digest == before.digest


def test_a_refused_policy_file_is_refused_on_every_load_until_fixed(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("- systems\n")
    for _ in range(2):
        with pytest.raises(PolicyError, match=r"the top level must be a mapping"):
            load_policy(path)
    path.write_bytes(DEFAULT.read_bytes())
    assert load_policy(path).name == "default retention policy"
    path.write_text("- systems\n")  # broken again after a good load: refused, not the cached good one
    with pytest.raises(PolicyError, match=r"the top level must be a mapping"):
        load_policy(path)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(PolicyError, match=r"nope\.yaml: cannot read the policy file"):
        load_policy(tmp_path / "nope.yaml")


def test_more_problems_are_counted(tmp_path, default_data):
    data = copy.deepcopy(default_data)
    _unknown_column(data)
    _unknown_system(data)
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(PolicyError, match=r"and 1 more problems"):
        load_policy(path)


# ---- durations and cut-offs ---------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("P12M", relativedelta(months=12)),
    ("P10Y", relativedelta(years=10)),
    ("P30D", relativedelta(days=30)),
    ("P2W", relativedelta(days=14)),
    ("P1Y6M", relativedelta(years=1, months=6)),
    ("P0D", relativedelta()),
    ("PT0S", relativedelta()),
    ("PT36H", relativedelta(hours=36)),
    ("P1DT12H30M", relativedelta(days=1, hours=12, minutes=30)),
])
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["P", "PT", "12 months", "P1.5Y", "1Y", "P1H", "", "-P1D"])
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError, match="not an ISO 8601 duration"):
        parse_duration(text)


def test_parse_duration_says_negative_is_not_allowed():
    with pytest.raises(ValueError, match="negative periods are not allowed"):
        parse_duration("-P1D")


def test_parse_duration_refuses_non_strings():
    with pytest.raises(ValueError, match="must be an ISO 8601 duration string"):
        parse_duration(12)  # type: ignore[arg-type]


def test_cutoff_plain():
    now = dt.datetime(2026, 11, 24, 15, 30)
    assert cutoff(now, Stage(action="delete", after="P12M"), Start(column="x")) == dt.datetime(2025, 11, 24, 15, 30)
    assert cutoff(now, Stage(action="delete", after="P0D"), Start(column="x")) == now
    # Month arithmetic clamps to the month's last day.
    assert cutoff(dt.datetime(2026, 3, 31), Stage(action="delete", after="P1M"), Start(column="x")) == dt.datetime(
        2026, 2, 28)


def test_cutoff_round_up_year_counts_from_the_end_of_the_start_year():
    now = dt.datetime(2026, 11, 24, 12)
    stage, start = Stage(action="delete", after="P10Y"), Start(column="contract_end_at", round_up="year")
    edge = cutoff(now, stage, start)
    assert edge == dt.datetime(2016, 1, 1)
    # Ended mid-2015: the year ended 2015-12-31, ten years later is 2025-12-31, before now.
    assert dt.datetime(2015, 6, 1) < edge
    assert dt.datetime(2015, 12, 31, 23, 59) < edge
    # Ended in 2016: expires only at the end of 2026.
    assert not dt.datetime(2016, 3, 1) < edge
    assert not dt.datetime(2016, 1, 1) < edge


def test_cutoff_round_up_year_applies_to_a_zero_period_too():
    """A P0D stage with round_up: year acts on 1 January after the start event, not on the day."""
    now = dt.datetime(2026, 11, 24, 12)
    edge = cutoff(now, Stage(action="lock", after="P0D"), Start(column="contract_end_at", round_up="year"))
    assert edge == dt.datetime(2026, 1, 1)


def test_cutoff_stage_round_up_overrides_the_start():
    now = dt.datetime(2026, 11, 24, 12)
    stage = Stage(action="lock", after="P0D", round_up="none")
    assert cutoff(now, stage, Start(column="contract_end_at", round_up="year")) == now


def test_cutoff_round_up_month():
    now = dt.datetime(2026, 11, 24, 12)
    edge = cutoff(now, Stage(action="delete", after="P1M"), Start(column="x", round_up="month"))
    assert edge == dt.datetime(2026, 10, 1)


def test_cutoff_keeps_timezone():
    now = dt.datetime(2026, 11, 24, 12, tzinfo=dt.UTC)
    assert cutoff(now, Stage(action="delete", after="P30D"), Start(column="x")) == dt.datetime(
        2026, 10, 25, 12, tzinfo=dt.UTC)


# ---- loader holes: duplicate keys, periods over 100 years, lax types ------------------------


def test_duplicate_key_is_refused_with_line_and_key_path(tmp_path):
    once = "            period: P0D\n"
    text = DEFAULT.read_text().replace(once, once + "            period: P36M\n", 1)
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert str(info.value).startswith(
        f"{path}: systems.crm.collections.contacts.rules[0].period (line 50): duplicate key 'period' "
        "(first given on line 49)")


@pytest.mark.parametrize("text", ["P100Y", "P1200M", "P36524D", "P5217W", "P99Y11M30D"])
def test_periods_up_to_100_years_are_accepted(text):
    assert parse_duration(text)


@pytest.mark.parametrize("text", ["P101Y", "P9999Y", "P1201M", "P36525D", "P5218W", "P100YT24H", "P" + "9" * 40 + "Y"])
def test_periods_over_100_years_are_refused(text):
    with pytest.raises(ValueError, match="is longer than 100 years"):
        parse_duration(text)


@pytest.mark.parametrize(("old", "new", "problem"), [
    ("max_fraction: 0.5", "max_fraction: true", "Input should be a valid number (got a boolean"),
    ("max_fraction: 0.5", "max_fraction: .nan", "Input should be a finite number"),
    ("batch_size: 1000", "batch_size: '1000'", "Input should be a valid integer (got quoted text"),
    ("connection: crm_db", "connection: off", "Input should be a valid string (got a boolean"),
    ("version: 1\n", "version: true\n", "version must be the number 1"),
    ("legal_hold: [{column: legal_hold, equals: true}]", "legal_hold: [{column: legal_hold, is_null: 1}]",
     "Input should be a valid boolean"),
    ("identities: {email: email, phone: phone}", "identities: {email: email, 3: phone}", "key '3' is read as a number"),
])
def test_lax_types_are_refused(tmp_path, old, new, problem):
    text = DEFAULT.read_text()
    assert old in text
    path = tmp_path / "lax.yaml"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(PolicyError, match=re.escape(problem)):
        load_policy(path)


# ---- computed starts, ranges, per-rule suppression (issue 15) ----------------------------------


def test_default_policy_suppresses_unsubscribes_not_inactivity():
    policy = load_policy(DEFAULT)
    _, subscribers, unsub = policy.rule("mailing.subscribers.unsubscribed")
    _, _, inactive = policy.rule("mailing.subscribers.no_engagement")
    assert subscribers.suppress_on_delete == []
    assert unsub.suppress_kinds(unsub.stages[0]) == ["email"]
    assert inactive.suppress_kinds(inactive.stages[0]) == []
    assert subscribers.suppress_kinds() == ["email"]  # the sweep still enforces the suppression list here
    assert inactive.start.latest == ["last_engaged_at"] and inactive.start.fallback == "subscribed_at"
    assert inactive.start.columns() == ["last_engaged_at", "subscribed_at"]
    _, _, minors = policy.rule("crm.contacts.minors")
    assert [(c.column, c.test, c.value) for c in minors.when] == [("birth_date", "younger_than", "P18Y")]
    from include.retention.policy import policy_warnings

    assert policy_warnings(policy) == []


def test_stage_suppress_overrides_the_rules(default_data):
    from include.retention.policy import parse_policy

    data = copy.deepcopy(default_data)
    rule = _coll(data, "crm", "leads")["rules"][0]
    rule["suppress"] = ["email"]
    rule["stages"][1]["suppress"] = []
    policy = parse_policy(yaml.safe_dump(data, sort_keys=False))
    _, _, leads = policy.rule("crm.leads.inactivity")
    assert [leads.suppress_kinds(s) for s in leads.stages] == [[], []]
    rule["stages"][1]["suppress"] = None
    policy = parse_policy(yaml.safe_dump(data, sort_keys=False))
    _, _, leads = policy.rule("crm.leads.inactivity")
    assert [leads.suppress_kinds(s) for s in leads.stages] == [[], ["email"]]


def test_suppress_on_delete_still_loads_and_warns(tmp_path, default_data, capsys):
    """Existing maps keep working (and their digests stay valid); ``cli validate`` says it is deprecated."""
    from include.retention import cli

    data = copy.deepcopy(default_data)
    _coll(data, "mailing", "subscribers")["suppress_on_delete"] = ["email"]
    path = tmp_path / "old-policy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    policy = load_policy(path)
    assert policy.systems["mailing"].collections["subscribers"].suppress_kinds() == ["email"]
    assert cli.main(["validate", str(path)]) == 0
    err = capsys.readouterr().err
    assert f"warning: {path}: {SUBSCRIBERS}.suppress_on_delete: deprecated" in err, err


@pytest.mark.parametrize(("start", "columns", "text"), [
    ({"latest": ["a", "b"], "fallback": "c"}, ["a", "b", "c"], "the later of a, b (else c)"),
    ({"earliest": ["a", "b"]}, ["a", "b"], "the earlier of a, b"),
    ({"latest": ["a"], "fallback": "c", "round_up": "month"}, ["a", "c"], "a (else c)"),
    ({"column": "a"}, ["a"], "a"),
])
def test_computed_start_model(start, columns, text):
    s = Start(**start)
    assert s.columns() == columns and s.describe() == text
    assert s.computed == ("column" not in start)


@pytest.mark.parametrize(("start", "problem"), [
    ({"latest": []}, "needs at least one column"),
    ({"latest": ["a", "a"]}, "named twice"),
    ({"latest": ["a"], "fallback": "a"}, "named twice"),
    ({"earliest": ["a"], "latest": ["b"]}, "give one of"),
    ({"basis": "last_modified", "latest": ["a"]}, "basis 'last_modified' has none"),
    ({"latest": [f"c{i}" for i in range(9)]}, "at most 8 columns"),
])
def test_computed_start_refused(start, problem):
    with pytest.raises(ValueError, match=problem):
        Start(**start)


def test_computed_start_cutoff_rounds_like_a_column():
    now = dt.datetime(2026, 11, 24, 12)
    stage = Stage(action="delete", after="P36M")
    assert cutoff(now, stage, Start(latest=["a", "b"], round_up="year")) == dt.datetime(2023, 1, 1)
    assert cutoff(now, stage, Start(earliest=["a", "b"], round_up="month")) == dt.datetime(2023, 11, 1)
