"""Bad inputs, as a careless or hostile user gives them: each is refused with its message, and no store changes.

Three families, counted in docs/reliability.md ("Bad inputs"):

- data maps: every bad file is refused by ``load_policy`` with file, path and problem, and the same file
  behind ``RETENTION_POLICY_PATH`` makes ``cli replay`` (which would write to the CRM and the ledger)
  refuse before it opens anything;
- command lines and CSV files for ``cli.main``: one line on stderr naming the file (and CSV row), exit 2;
- requests for ``Registry.register`` / ``validate_request``: refused naming the field, never the value,
  on SQLite, PostgreSQL and MariaDB registries.

After each input every table of the seeded CRM and mailing databases and of the ledger / registry
database is read back and compared with the snapshot taken before, and the SQLite files byte for byte.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from include.retention import cli
from include.retention.errors import PolicyError, RetentionError, SafetyBrakeTripped
from include.retention.ledger import Ledger, RunRef
from include.retention.policy import load_policy, parse_policy
from include.retention.registry import Identities, NewRequest, Registry, validate_request
from tests.conftest import ROOT

KEY = b"test-hmac-key-" + b"x" * 32
POLICY_TEXT = (ROOT / "config" / "policy.yaml").read_text()
NOW = dt.datetime(2026, 1, 15, 12, 0)


# ---- the stores ---------------------------------------------------------------------------


def snapshot(engine: sa.Engine) -> dict[str, list[str]]:
    """Every row of every table, as sorted text: equal snapshots mean equal contents."""
    out = {}
    with engine.connect() as conn:
        for name in sorted(sa.inspect(conn).get_table_names()):
            table = sa.Table(name, sa.MetaData(), autoload_with=conn)
            out[name] = sorted(repr(tuple(row)) for row in conn.execute(sa.select(table)))
    return out


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """Seeded CRM and mailing databases, a ledger with an entry and a registry with a request."""
    from include.retention.demo.seed import seed_crm, seed_mailing

    base = tmp_path_factory.mktemp("stores")
    for name, seed in (("crm.db", seed_crm), ("mailing.db", seed_mailing)):
        engine = sa.create_engine(f"sqlite:///{base / name}")
        seed(engine, NOW)
        engine.dispose()
    engine = sa.create_engine(f"sqlite:///{base / 'ledger.db'}")
    ledger = Ledger(engine, KEY)
    ledger.ensure_schema()
    ledger.append(run=RunRef("test", "seed"), action="sweep", outcome="done", count=1, rule_id="crm.leads.inactivity")
    Registry(engine, KEY).register(NewRequest(Identities(email="kept@example.com")))
    engine.dispose()
    return base


class World:
    """The stores of one test and the environment the CLI reads them through."""

    def __init__(self, base: Path):
        self.base = base
        self.files = [base / "crm.db", base / "mailing.db", base / "ledger.db"]
        self.engines = [sa.create_engine(f"sqlite:///{path}") for path in self.files]
        self.before: tuple[Any, Any] | None = None

    def state(self):
        return [snapshot(e) for e in self.engines], [file_digest(p) for p in self.files]

    def freeze(self) -> None:
        self.before = self.state()

    def assert_unchanged(self) -> None:
        rows, digests = self.state()
        assert rows == self.before[0], "a store's rows changed"
        assert digests == self.before[1], "a store's file changed"
        assert sum(len(r) for snap in rows for r in snap.values()) > 100  # the comparison compared something

    def close(self) -> None:
        for engine in self.engines:
            engine.dispose()


@pytest.fixture
def world(template, tmp_path, monkeypatch) -> World:
    for name in ("crm.db", "mailing.db", "ledger.db"):
        shutil.copy(template / name, tmp_path / name)
    conn = {"crm_db": "crm.db", "mailing_db": "mailing.db", "retention_ledger": "ledger.db"}
    for conn_id, name in conn.items():
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}",
                           json.dumps({"conn_type": "sqlite", "host": str(tmp_path / name)}))
    monkeypatch.setenv("AIRFLOW_CONN_OBJECTS_S3", json.dumps({"conn_type": "aws", "extra": {
        "endpoint_url": "http://127.0.0.1:9", "aws_access_key_id": "x", "aws_secret_access_key": "x"}}))
    monkeypatch.setenv("RETENTION_HMAC_KEY", KEY.decode())
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY_TEXT)
    monkeypatch.setenv("RETENTION_POLICY_PATH", str(policy))
    w = World(tmp_path)
    w.freeze()
    yield w
    w.close()


def run_cli(capsys, args: list[str]) -> tuple[int, str]:
    rc = cli.main(args)
    captured = capsys.readouterr()
    return rc, captured.err


def assert_one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


# ---- 1. data maps -------------------------------------------------------------------------

CONTACTS = "systems.crm.collections.contacts"
LEADS = "systems.crm.collections.leads"


def sub(old: str, new: str, count: int = 1):
    def mutate(text: str) -> str:
        assert old in text, old
        return text.replace(old, new, count)
    return mutate


def raw(text: str):
    return lambda _text: text


BAD_POLICIES = [
    ("duplicate_period", sub("            period: P0D\n", "            period: P0D\n            period: P36M\n"),
     (f"{CONTACTS}.rules[0].period (line ", "): duplicate key 'period' (first given on line")),
    ("duplicate_system", sub("systems:\n  crm:\n", "systems:\n  mailing: {kind: sql, connection: x, collections: {}}\n"
                                                  "  crm:\n"),
     ("systems.mailing (line ", "): duplicate key 'mailing' (first given on line 27)")),
    ("duplicate_in_flow_mapping", sub("identities: {email: email, phone: phone}",
                                      "identities: {email: email, email: phone}"),
     (f"{CONTACTS}.identities.email (line ", "): duplicate key 'email'")),
    ("period_9999_years", sub("period: P0D", "period: P9999Y"), "'P9999Y' is longer than 100 years"),
    ("period_101_years", sub("period: P0D", "period: P101Y"), "'P101Y' is longer than 100 years"),
    ("period_1201_months", sub("period: P0D", "period: P1201M"), "'P1201M' is longer than 100 years"),
    ("period_36600_days", sub("period: P0D", "period: P36600D"), "'P36600D' is longer than 100 years"),
    ("period_huge_digits", sub("period: P0D", "period: P" + "9" * 5000 + "D"), "is longer than 100 years"),
    ("period_negative", sub("period: P0D", "period: -P1D"), "negative periods are not allowed"),
    ("period_words", sub("period: P0D", "period: 12 months"), "'12 months' is not an ISO 8601 duration"),
    ("period_number", sub("period: P0D", "period: 12"), "Input should be a valid string (got a number"),
    ("max_fraction_true", sub("max_fraction: 0.5", "max_fraction: true"),
     "defaults.max_fraction: Input should be a valid number (got a boolean"),
    ("max_fraction_quoted", sub("max_fraction: 0.5", "max_fraction: '0.5'"), "(got quoted text"),
    ("max_fraction_nan", sub("max_fraction: 0.5", "max_fraction: .nan"), "defaults.max_fraction: Input should be a "
                                                                          "finite number"),
    ("max_fraction_inf", sub("max_fraction: 0.5", "max_fraction: .inf"), "finite number"),
    ("max_fraction_zero", sub("max_fraction: 0.5", "max_fraction: 0"), "greater than 0"),
    ("max_fraction_above_one", sub("max_fraction: 0.5", "max_fraction: 1.5"), "less than or equal to 1"),
    ("batch_size_true", sub("batch_size: 1000", "batch_size: yes"), "defaults.batch_size: Input should be a valid "
                                                                      "integer (got a boolean"),
    ("batch_size_float", sub("batch_size: 1000", "batch_size: 1000.5"), "defaults.batch_size: Input should be a "
                                                                          "valid integer"),
    ("batch_size_zero", sub("batch_size: 1000", "batch_size: 0"), "greater than or equal to 1"),
    ("connection_boolean", sub("connection: crm_db", "connection: yes"),
     "systems.crm.connection: Input should be a valid string (got a boolean"),
    ("key_on_is_boolean", sub("version: 1\n", "version: 1\non: 3\n"), "key 'on' is read as a boolean"),
    ("key_number", sub("  crm:\n", "  1:\n"), "systems (line 27): key '1' is read as a number"),
    ("key_null", sub("  crm:\n", "  ~:\n"), "key '~' is read as null"),
    ("alias_bomb", raw("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
                       "c: [*b, *b, *b, *b, *b, *b, *b, *b]\nsystems: {}\n"), "line 2: alias '*a' is not supported"),
    ("alias_shared_hold", sub("legal_hold: [{column: legal_hold, equals: true}]",
                              "legal_hold: &hold [{column: legal_hold, equals: true}]"), None),
    ("merge_key", sub("    kind: sql\n    connection: crm_db\n", "    <<: {kind: sql}\n    connection: crm_db\n"),
     "systems.crm (line 28): merge keys ('<<') are not supported"),
    ("deep_nesting", raw("systems: " + "[" * 300 + "]" * 300 + "\n"), "nested deeper than 40 levels"),
    ("impossible_date", sub("policy_version: \"2026.1\"", "policy_version: 2026-13-45"),
     "policy_version (line 6): value '2026-13-45' cannot be read (month must be in 1..12)"),
    ("date_for_text", sub("policy_version: \"2026.1\"", "policy_version: 2026-01-31"),
     "policy_version: Input should be a valid string"),
    ("is_null_quoted", sub("legal_hold: [{column: legal_hold, equals: true}]",
                           "legal_hold: [{column: legal_hold, is_null: 'yes'}]"),
     f"{CONTACTS}.legal_hold[0].is_null: Input should be a valid boolean (got quoted text"),
    ("in_empty", sub("legal_hold: [{column: legal_hold, equals: true}]", "legal_hold: [{column: legal_hold, in: []}]"),
     f"{CONTACTS}.legal_hold[0]: 'in' needs at least one value"),
    ("in_null", sub("legal_hold: [{column: legal_hold, equals: true}]",
                    "legal_hold: [{column: legal_hold, in: [null]}]"), "'in' cannot hold null"),
    ("equals_list", sub("legal_hold: [{column: legal_hold, equals: true}]",
                        "legal_hold: [{column: legal_hold, equals: [true, false]}]"), "'equals' takes one value"),
    ("condition_two_tests", sub("legal_hold: [{column: legal_hold, equals: true}]",
                                "legal_hold: [{column: legal_hold, equals: true, is_null: false}]"),
     "a condition needs exactly one of 'equals', 'in', 'is_null'"),
    ("unknown_identity_kind", sub("identities: {email: email, phone: phone}", "identities: {mail: email}"),
     f"{CONTACTS}.identities.mail: unknown identity kind 'mail'"),
    ("version_true", sub("version: 1\n", "version: true\n"), "version: version must be the number 1"),
    ("version_two", sub("version: 1\n", "version: 2\n"), "version: Input should be 1"),
    ("bad_indentation", sub("    kind: sql\n    connection: crm_db\n", "    kind: sql\n   connection: crm_db\n"),
     "not valid YAML"),
    ("tab_indentation", sub("    kind: sql\n", "\tkind: sql\n"), "not valid YAML"),
    ("not_utf8", lambda text: text.replace("default retention policy", "d\xe9faut").encode("latin-1"),
     "not UTF-8 text"),
    ("top_level_list", raw("- systems\n"), "the top level must be a mapping"),
    ("empty_file", raw(""), "the top level must be a mapping"),
    ("unknown_field", sub("            action: delete\n            period: P0D\n",
                          "            action: delete\n            perod: P0D\n"), "unknown field"),
    ("unknown_start_column", sub("start: created_at", "start: created"), "unknown column 'created'"),
    ("unknown_kind", sub("    kind: sql\n    connection: crm_db\n", "    kind: mysql\n    connection: crm_db\n"),
     "systems.crm.kind: Input should be 'sql' or 's3'"),
    ("rule_name_with_dash", sub("- name: minors", "- name: minors-2"), "must be letters, digits and underscores"),
    ("reference_cycle", sub("        categories: [contact_data]\n",
                            "        categories: [contact_data]\n        references:\n"
                            "          - {to: crm.inquiries, column: id, on_delete: delete}\n"), "reference cycle"),
    ("unknown_reference_system", sub("to: crm.contacts, column: contact_id", "to: crmx.contacts, column: contact_id"),
     "unknown system 'crmx'"),
    ("stronger_stage_first", sub("{action: lock, after: P24M}", "{action: lock, after: P48M}"),
     "stage 'lock' after P48M cannot follow the stronger 'delete' after P36M"),
    ("two_stages_same_period", sub("{action: lock, after: P24M}", "{action: lock, after: P36M}"),
     "two stages of one rule cannot end at the same period"),
    ("unknown_mask_strategy", sub("strategy: truncate_ip", "strategy: scramble"), "unknown masking strategy"),
    ("lock_stage_without_marker", sub("        categories: [project_requests]\n"
                                      "        lock: {at: restricted_at, reason: restriction_reason}\n",
                                      "        categories: [project_requests]\n"),
     "a 'lock' stage needs the collection's 'lock' marker columns"),
]


def _write_policy(tmp_path: Path, mutate) -> Path:
    content = mutate(POLICY_TEXT)
    path = tmp_path / "bad-policy.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.mark.parametrize(("mutate", "fragment"), [(m, f) for _, m, f in BAD_POLICIES if f],
                         ids=[name for name, _, f in BAD_POLICIES if f])
def test_bad_data_map_is_refused_and_nothing_runs(world, capsys, monkeypatch, mutate, fragment):
    path = _write_policy(world.base, mutate)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    if isinstance(fragment, tuple):  # several parts, in order (line numbers between them move with the map)
        assert re.search(".*".join(re.escape(f) for f in fragment), message), message
        fragment = fragment[-1]
    else:
        assert fragment in message, message
    assert "\n" not in message
    # The same file behind the CLI: refused before any store or the ledger is opened.
    monkeypatch.setenv("RETENTION_POLICY_PATH", str(path))
    rc, err = run_cli(capsys, ["replay", "--system", "crm"])
    assert rc == 2
    assert fragment in assert_one_line(err)
    rc, err = run_cli(capsys, ["validate", str(path)])
    assert rc == 2 and fragment in assert_one_line(err)
    world.assert_unchanged()


def test_aliases_are_refused_even_when_harmless(tmp_path):
    """Anchors with aliases would let one edit change several holds at once; the format has no use for them."""
    text = POLICY_TEXT.replace("legal_hold: [{column: legal_hold, equals: true}]",
                               "legal_hold: &hold [{column: legal_hold, equals: true}]", 1)
    text = text.replace("legal_hold: [{column: legal_hold, equals: true}]", "legal_hold: *hold", 1)
    with pytest.raises(PolicyError, match=r"alias '\*hold' is not supported"):
        parse_policy(text, source="p.yaml")
    # An anchor alone changes nothing and is accepted.
    assert parse_policy(BAD_POLICIES_BY_NAME["alias_shared_hold"](POLICY_TEXT), source="p.yaml").systems


BAD_POLICIES_BY_NAME = {name: mutate for name, mutate, _ in BAD_POLICIES}


def test_a_policy_larger_than_the_limit_is_refused_unread(world, tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_bytes(POLICY_TEXT.encode() + b"#" * 2_100_000)
    with pytest.raises(PolicyError, match=r"huge\.yaml: the policy file is larger than 2 MB"):
        load_policy(path)
    world.assert_unchanged()


@pytest.mark.parametrize("where", ["directory", "missing"])
def test_policy_path_that_is_not_a_file(world, capsys, monkeypatch, where):
    path = world.base if where == "directory" else world.base / "nope.yaml"
    fragment = "is a directory, not a policy file" if where == "directory" else "cannot read the policy file"
    monkeypatch.setenv("RETENTION_POLICY_PATH", str(path))
    for args in (["replay", "--system", "crm"], ["validate", str(path)]):
        rc, err = run_cli(capsys, args)
        line = assert_one_line(err)
        assert rc == 2 and str(path) in line and fragment in line, line
    world.assert_unchanged()


# ---- 2. command lines and CSV files -------------------------------------------------------

BOM = "\ufeff"
GOOD_ROW = "ok@example.com,,erase\n"

BAD_CSVS = [
    # name, file bytes (None: no file), fragment
    ("missing_file", None, "cannot read (No such file or directory)"),
    ("empty_file", b"", "empty file: expected a header row"),
    ("blank_lines_only", b"\n\n  \n", "empty file"),
    ("header_only", b"email,mode\n", "no requests: the file has a header but no rows"),
    ("not_utf8", "email,mode\nok@example.com,erase\nz\xf6e@example.com,erase\n".encode("latin-1"),
     "line 3: not UTF-8 text"),
    ("utf16", (BOM + "email\nok@example.com\n").encode("utf-16"), "line 1: not UTF-8 text"),
    ("unknown_column", b"email,name\nok@example.com,Zoe\n", "row 1: unknown column(s) 'name'; known: email"),
    ("misspelt_identity", b"e-mail,mode\nok@example.com,erase\n", "unknown column(s) 'e-mail'"),
    ("duplicate_column", b"email,email\na@example.com,b@example.com\n", "row 1: column(s) email given twice"),
    ("no_identity_column", b"mode,note\nerase,hi\n", "row 1: no identity column"),
    ("bad_mode", ("email,phone,mode\n" + GOOD_ROW + "ok2@example.com,,nuke\n").encode(),
     "row 3: mode must be one of erase, restrict"),
    ("access_mode_in_queue", ("email,phone,mode\n" + GOOD_ROW + "ok2@example.com,,access\n").encode(),
     "row 3: mode must be one of erase, restrict for the queue"),
    ("bad_email_after_good_row", ("email,phone,mode\n" + GOOD_ROW + "not-an-address,,erase\n").encode(),
     "row 3: email is not a valid e-mail address; nothing was queued"),
    ("bad_phone", b"email,phone\nok@example.com,call me maybe\n", "row 2: phone must be 6 to 32 digits"),
    ("short_phone", b"phone\n12345\n", "row 2: phone must be"),
    ("email_too_long", ("email\n" + "a" * 1000 + "@example.com\n").encode(),
     "row 2: email is longer than 254 characters"),
    ("email_one_megabyte", ("email\n" + "a" * 1_000_000 + "@example.com\n").encode(),
     "row 2: not a readable CSV row (field larger than field limit"),
    ("customer_ref_too_long", ("customer_ref\n" + "C" * 65 + "\n").encode(), "row 2: customer_ref is longer than 64"),
    ("social_handle_too_long", ("social_handle\n@" + "h" * 100 + "\n").encode(), "social_handle is longer than 100"),
    ("line_break_in_quoted_email", b'email\n"ok@exa\nmple.com"\n', "row 2: email contains a control character"),
    ("control_character", b"customer_ref\nC-\x07-1\n", "row 2: customer_ref contains a control character"),
    ("nul_in_note", b"email,note\nok@example.com,a\x00b\n", "row 2: note contains a NUL character"),
    ("note_too_long", ("email,note\nok@example.com," + "n" * 2001 + "\n").encode(), "row 2: note is longer than 2000"),
    ("request_ref_too_long", ("email,request_ref\nok@example.com," + "R" * 101 + "\n").encode(),
     "row 2: external_ref is longer than 100"),
    ("row_without_identity", b"email,mode\n,restrict\n", "row 2: a request needs at least one identity"),
    ("too_many_fields", b"email,mode\nok@example.com,erase,extra\n", "row 2: 3 fields but the header has 2 columns"),
    ("unterminated_quote", b'email\n"ok@example.com\n', "not a readable CSV row"),
    ("several_bad_rows", b"email\nx\ny\nz\n", "row 2: email is not a valid e-mail address (and 2 more rows"),
]


@pytest.mark.parametrize(("content", "fragment"), [(c, f) for _, c, f in BAD_CSVS], ids=[n for n, _, _ in BAD_CSVS])
def test_bad_submit_csv_is_refused_whole(world, capsys, content, fragment):
    path = world.base / "requests.csv"
    if content is not None:
        path.write_bytes(content)
    rc, err = run_cli(capsys, ["submit", str(path)])
    line = assert_one_line(err)
    assert rc == 2
    assert line.startswith(f"error: {path}: "), line
    assert fragment in line, line
    for secret in ("ok@example.com", "not-an-address", "call me maybe", "a" * 50):
        assert secret not in line, line
    world.assert_unchanged()


def test_submit_directory(world, capsys):
    rc, err = run_cli(capsys, ["submit", str(world.base)])
    assert rc == 2 and f"{world.base}: is a directory, not a file" in assert_one_line(err)
    world.assert_unchanged()


BAD_ARGS = [
    (["replay", "--system", "nope"], "systems: unknown system 'nope'; known: crm, mailing, objects"),
    (["replay", "--system", "objects"], "systems.objects: nothing to replay"),
    (["replay", "--system", ""], "unknown system ''"),
    (["replay"], "the following arguments are required: --system"),
    (["replay", "--system", "crm", "--wet-run"], "unrecognized arguments: --wet-run"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "the following arguments are required: command"),
    (["submit"], "the following arguments are required: csv"),
    (["validate", "a.yaml", "b.yaml"], "unrecognized arguments: b.yaml"),
    (["export", "--out", "/nonexistent-dir/ledger.csv"], "/nonexistent-dir/ledger.csv: No such file or directory"),
]


@pytest.mark.parametrize(("args", "fragment"), BAD_ARGS, ids=[" ".join(a) or "(none)" for a, _ in BAD_ARGS])
def test_bad_command_line(world, capsys, args, fragment):
    rc, err = run_cli(capsys, args)
    line = assert_one_line(err)
    assert rc == 2 and fragment in line, line
    world.assert_unchanged()


def test_replay_of_a_system_without_identities_says_so(world, capsys, monkeypatch, tmp_path):
    text = POLICY_TEXT.replace("        identities: {email: user_email}\n", "")
    text = text.replace("identities: {email: email, phone: phone}", "identities: {}")
    path = tmp_path / "no-identities.yaml"
    path.write_text(text)
    policy = load_policy(path)
    system = next((s for s, spec in policy.systems.items() if spec.kind == "sql"
                   and not any(c.identities for c in spec.collections.values())), None)
    if system is None:  # make one: a system whose only collection has no identities
        archive = ("  archive:\n    kind: sql\n    connection: crm_db\n    collections:\n      notes:\n"
                   "        table: notes\n        primary_key: id\n        columns: [id]\n")
        assert "\nsystems:\n" in text
        text = text.replace("\nsystems:\n", "\nsystems:\n" + archive, 1)  # first under systems, wherever it ends
        path.write_text(text)
        system = "archive"
    monkeypatch.setenv("RETENTION_POLICY_PATH", str(path))
    rc, err = run_cli(capsys, ["replay", "--system", system])
    line = assert_one_line(err)
    assert rc == 2 and f"systems.{system}: nothing to replay: no collection" in line, line
    world.assert_unchanged()


def test_valid_submit_with_an_excel_bom_is_accepted(world, capsys):
    """The counterpart: a good CSV saved by Excel (BOM, CRLF) queues every row and changes only the registry."""
    path = world.base / "requests.csv"
    path.write_bytes((BOM + "email,phone,customer_ref,social_handle,mode,request_ref,note\r\n"
                      "Zoe@Example.com,+49 30 1234567,,,restrict,REF-1,by phone\r\n"
                      "Ann@Example.com,+49 30 7654321,,,erase,,\r\n").encode())
    rc = cli.main(["submit", str(path)])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "queued 2 request(s)" in out.out
    crm_before, mailing_before = world.before[0][0], world.before[0][1]
    rows, _ = world.state()
    assert rows[0] == crm_before and rows[1] == mailing_before
    assert len(rows[2]["subject_requests"]) == len(world.before[0][2]["subject_requests"]) + 2


def test_submit_rows_with_different_identity_kinds(world, capsys):
    path = world.base / "requests.csv"
    path.write_bytes(b"email,customer_ref,social_handle\nzoe@example.com,,\n,C-10001,@zoe\n")
    rc = cli.main(["submit", str(path)])
    assert rc == 0, capsys.readouterr().err
    rows, _ = world.state()
    assert len(rows[2]["subject_requests"]) == len(world.before[0][2]["subject_requests"]) + 2


# ---- 3. requests --------------------------------------------------------------------------

BAD_REQUESTS = [
    ("no_identity", NewRequest(Identities()), "a request needs at least one identity"),
    ("blank_identities", NewRequest(Identities(email="", phone="")), "a request needs at least one identity"),
    ("mode_delete", NewRequest(Identities(email="zoe@example.com"), mode="delete"), "mode must be one of erase"),
    ("mode_none", NewRequest(Identities(email="zoe@example.com"), mode=None), "mode must be one of erase"),
    ("email_no_at", NewRequest(Identities(email="zoe.example.com")), "email is not a valid e-mail address"),
    ("email_one_megabyte", NewRequest(Identities(email="z" * 1_000_000 + "@example.com")),
     "email is longer than 254 characters"),
    ("email_nul", NewRequest(Identities(email="zoe\x00@example.com")), "email contains a control character"),
    ("email_newline", NewRequest(Identities(email="zoe@example.com\nbcc@example.com")), "control character"),
    ("email_whitespace", NewRequest(Identities(email="   ")), "email is not a valid e-mail address"),
    ("email_not_text", NewRequest(Identities(email=12345)), "email must be a string"),
    ("phone_letters", NewRequest(Identities(phone="call me")), "phone must be 6 to 32 digits"),
    ("phone_short", NewRequest(Identities(phone="+1 23")), "phone must be"),
    ("customer_ref_long", NewRequest(Identities(customer_ref="C" * 65)), "customer_ref is longer than 64"),
    ("customer_ref_tab", NewRequest(Identities(customer_ref="C-1\t2")), "customer_ref contains a control character"),
    ("social_handle_long", NewRequest(Identities(social_handle="@" + "h" * 100)), "social_handle is longer than 100"),
    ("unknown_kind", NewRequest(Identities({"passport": "X1234567"})), "unknown identity field 'passport'"),
    ("note_long", NewRequest(Identities(email="zoe@example.com"), note="n" * 2001), "note is longer than 2000"),
    ("note_nul", NewRequest(Identities(email="zoe@example.com"), note="a\x00b"), "note contains a NUL character"),
    ("note_not_text", NewRequest(Identities(email="zoe@example.com"), note=["x"]), "note must be a string"),
    ("external_ref_long", NewRequest(Identities(email="zoe@example.com"), external_ref="R" * 101),
     "external_ref is longer than 100"),
]
SECRETS = ("zoe", "call me", "X1234567", "C-1")


@pytest.mark.parametrize(("req", "fragment"), [(r, f) for _, r, f in BAD_REQUESTS], ids=[n for n, _, _ in BAD_REQUESTS])
def test_bad_request_is_refused_by_register(world, req, fragment):
    registry = Registry(world.engines[2], KEY)
    with pytest.raises(RetentionError) as info:
        registry.register(req)
    message = str(info.value)
    assert fragment in message, message
    assert not any(s in message for s in SECRETS), message
    with pytest.raises(RetentionError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        validate_request(req)
    with pytest.raises(RetentionError):
        registry.register_many([NewRequest(Identities(email="fine@example.com")), req])
    world.assert_unchanged()


def test_bad_requests_change_nothing_on_every_engine(db_url):
    """The same requests against a registry on SQLite, PostgreSQL and MariaDB."""
    engine = sa.create_engine(db_url)
    registry = Registry(engine, KEY)
    registry.register(NewRequest(Identities(email="kept@example.com", phone="+49 30 1234567")))
    before = snapshot(engine)
    assert before["subject_requests"]
    for name, req, fragment in BAD_REQUESTS:
        with pytest.raises(RetentionError) as info:
            registry.register(req)
        assert fragment in str(info.value), name
        with pytest.raises(RetentionError):
            registry.register_many([NewRequest(Identities(email="fine@example.com")), req])
        assert snapshot(engine) == before, name
    engine.dispose()


# ---- 4. the brake at exactly max_fraction -------------------------------------------------


class _Store:
    def __init__(self, plan):
        self.plan_ = plan
        self.acted = False

    def check(self, name):
        pass

    def plan(self, name, rule, now, for_act=False):
        return self.plan_

    def release_plan(self):
        pass

    def __getattr__(self, name):  # any action would be a change
        raise AssertionError(f"the store was asked to {name}")


class _Ledger:
    def __init__(self):
        self.entries = []

    def append(self, **entry):
        self.entries.append(entry)
        return len(self.entries)


@pytest.mark.parametrize(("affected", "total", "max_fraction", "trips"), [
    (50, 100, 0.5, True),   # a P6D typo for P6M: exactly half the applicants
    (49, 100, 0.5, False),
    (3, 30, 0.1, True),     # 0.1 * 30 is 3.0000000000000004 in floats
    (1, 3, 0.3333, True),
    (100, 100, 1.0, False),  # max_fraction 1: no brake
])
def test_brake_trips_at_max_fraction(affected, total, max_fraction, trips):
    from include.retention.stores.base import RulePlan
    from include.retention.sweep import run_rule

    text = POLICY_TEXT.replace("max_fraction: 0.5", f"max_fraction: {max_fraction}", 1)
    policy = parse_policy(text, source="p.yaml")
    rule_id = "crm.leads.inactivity"
    store = _Store(RulePlan(total=total, in_scope=total, eligible={"delete": affected}, held=0))
    ledger = _Ledger()
    if trips:
        with pytest.raises(SafetyBrakeTripped, match="at or above its max_fraction"):
            run_rule(policy, rule_id, store, ledger, RunRef("t", "t"), now=NOW, dry_run=True)
        assert [e["outcome"] for e in ledger.entries] == ["brake_tripped"]
    else:
        counts = run_rule(policy, rule_id, store, ledger, RunRef("t", "t"), now=NOW, dry_run=True)
        assert counts["deleted"] == affected
