"""Hypothesis: the data-map loader and request validation let only the project's own errors escape.

``parse_policy`` gets random YAML-ish structures, random bytes and random mutations of
config/policy.yaml (values replaced, keys dropped or duplicated, lines cut, characters changed);
``validate_request`` and ``identity.validate`` get random text, kinds, modes and notes. Any outcome
is fine except an exception that is not a ``PolicyError`` / ``RetentionError``: a traceback
instead of a message.
"""

from __future__ import annotations

import datetime as dt

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from include.retention.errors import PolicyError, RetentionError
from include.retention.identity import IDENTITY_KINDS
from include.retention.identity import validate as validate_identity
from include.retention.policy import Policy, parse_policy
from include.retention.registry import Identities, NewRequest, validate_request
from tests.conftest import ROOT

POLICY_TEXT = (ROOT / "config" / "policy.yaml").read_text()
POLICY_DATA = yaml.safe_load(POLICY_TEXT)
FUZZ = settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))

FIELD_NAMES = sorted({
    "systems", "kind", "connection", "collections", "table", "primary_key", "columns", "identities", "references",
    "rules", "name", "start", "stages", "action", "after", "period", "mask", "strategy", "value", "when", "column",
    "equals", "in", "is_null", "legal_hold", "lock", "at", "reason", "max_fraction", "batch_size", "defaults",
    "version", "bucket", "prefix", "key_template", "basis", "round_up", "to", "on_delete", "categories",
    "anonymized_marker", "erasure", "erasure_mask", "suppress_on_delete", "sql", "s3", "delete", "P12M",
})

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10**30, max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30), st.sampled_from(FIELD_NAMES),
    st.dates(), st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30)),
    st.sampled_from(["P0D", "P12M", "P9999Y", "-P1D", "PT0S", "P1Y6M", "P" + "9" * 30 + "D", "true", "0.5"]),
)
keys = st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=12))
structures = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)),
    max_leaves=30,
)


def _parse(raw) -> None:
    try:
        result = parse_policy(raw, source="fuzz.yaml")
    except PolicyError as exc:
        message = str(exc)
        assert message.startswith("fuzz.yaml:"), message
        assert "\n" not in message, message
    else:
        assert isinstance(result, Policy)


@FUZZ
@given(structures)
def test_random_structures(data):
    _parse(yaml.safe_dump({"systems": data} if isinstance(data, dict) else data, allow_unicode=True))


@FUZZ
@given(st.dictionaries(st.sampled_from(FIELD_NAMES), structures, max_size=6))
def test_random_top_level_mappings(data):
    _parse(yaml.safe_dump(data, allow_unicode=True))


@FUZZ
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_random_bytes_and_text(raw):
    _parse(raw)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*prefix, i))


ALL_PATHS = [p for p in _paths(POLICY_DATA) if p]


def _mutate(data, path, op, value):
    import copy

    data = copy.deepcopy(data)
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if op == "replace":
        parent[last] = value
    elif op == "delete":
        del parent[last]
    elif op == "wrap":
        parent[last] = [parent[last]]
    elif op == "add" and isinstance(parent, dict):
        parent[f"{last}_x"] = value
    return data


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(ALL_PATHS), st.sampled_from(["replace", "delete", "wrap", "add"]),
                          structures), min_size=1, max_size=3))
def test_mutations_of_the_default_policy(mutations):
    data = POLICY_DATA
    for path, op, value in mutations:
        try:
            data = _mutate(data, path, op, value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed the path
    _parse(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))


LINES = POLICY_TEXT.splitlines(keepends=True)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["drop", "duplicate", "char", "indent", "swap"]),
                          st.integers(min_value=0, max_value=len(LINES) - 1),
                          st.integers(min_value=0, max_value=200), st.characters()), min_size=1, max_size=4))
def test_text_mutations_of_the_default_policy(edits):
    lines = list(LINES)
    for op, i, pos, char in edits:
        i %= len(lines)
        if op == "drop":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "char":
            line = lines[i]
            pos %= max(len(line), 1)
            lines[i] = line[:pos] + char + line[pos + 1:]
        elif op == "indent":
            lines[i] = " " + lines[i]
        elif op == "swap" and i + 1 < len(lines):
            lines[i], lines[i + 1] = lines[i + 1], lines[i]
        if not lines:
            break
    _parse("".join(lines))


def test_a_duplicated_line_with_a_key_is_always_refused():
    """Every single-line duplicate of a 'key: value' line is a duplicate key, refused with its line."""
    checked = 0
    for i, line in enumerate(LINES):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-")) or ":" not in stripped or stripped.endswith(":"):
            continue
        if stripped.count("[") != stripped.count("]") or stripped.count("{") != stripped.count("}"):
            continue  # the first line of a flow collection written over several lines
        text = "".join(LINES[:i + 1] + [line] + LINES[i + 1:])
        try:
            parse_policy(text, source="dup.yaml")
        except PolicyError as exc:
            assert f"(line {i + 2}): duplicate key" in str(exc), (i, str(exc))
            checked += 1
        else:
            raise AssertionError(f"line {i + 1} duplicated was accepted")
    assert checked > 50


# ---- requests -----------------------------------------------------------------------------

identity_values = st.one_of(st.text(max_size=300), st.none(), st.integers(), st.binary(max_size=20),
                            st.sampled_from(["zoe@example.com", "+49 30 1234567", "C-10001", "@zoe", " ", "\x00"]))


def _messages() -> str:
    """The words validation messages are made of: a value that is itself one of them ("emai") is not a leak."""
    out = []
    for kind in [*IDENTITY_KINDS, "passport", "", "EMAIL"]:
        for probe in ("", " ", "x", "x" * 300, "a\x00b", "\n", 7, None, "((((((", "1....."):
            try:
                validate_identity(kind, probe)
            except RetentionError as exc:
                out.append(str(exc))
    return "\n".join(out)


MESSAGES = _messages()


@FUZZ
@given(st.sampled_from([*IDENTITY_KINDS, "passport", "", "EMAIL"]), identity_values)
def test_identity_validate(kind, value):
    try:
        out = validate_identity(kind, value)
    except RetentionError as exc:
        if isinstance(value, str) and len(value) >= 4 and value not in MESSAGES:
            assert value not in str(exc)
    else:
        assert isinstance(out, str) and out


@FUZZ
@given(st.dictionaries(st.sampled_from([*IDENTITY_KINDS, "passport"]), identity_values, max_size=4),
       st.one_of(st.sampled_from(["erase", "restrict", "delete", ""]), st.text(max_size=30), st.none(), st.integers()),
       st.one_of(st.none(), st.text(max_size=2100), st.integers()),
       st.one_of(st.none(), st.text(max_size=120)), st.booleans())
def test_validate_request(identities, mode, note, external_ref, dry_run):
    req = NewRequest(Identities(identities), mode=mode, note=note, external_ref=external_ref, dry_run=dry_run)
    try:
        validate_request(req)
    except RetentionError:
        pass
