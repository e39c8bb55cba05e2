"""Identity equality (Python's, once) and the data map's identity declarations."""

from __future__ import annotations

import textwrap
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from include.retention.errors import PolicyError
from include.retention.identity import IdentityError, normalise, validate
from include.retention.policy import load_policy, parse_policy
from tests.conftest import ROOT
from tests.policy_text import crm_policy


@pytest.mark.parametrize("kind, a, b, same", [
    ("email", " Zoe.Muller@Example.ORG ", "zoe.muller@example.org", True),
    ("email", "zoë.müller@example.org", "zoe.muller@example.org", False),
    ("email", unicodedata.normalize("NFD", "zoë@example.org"), "zoë@example.org", True),
    ("email", "zoe.mullеr@example.org", "zoe.muller@example.org", False),  # Cyrillic е
    ("email", "straße@example.org", "strasse@example.org", False),
    ("email", "\u212aate@example.org", "kate@example.org", True),  # Kelvin sign: NFC makes it a K
    ("phone", "+48 500-100-200", "+48500100200", True),
    ("phone", "0048 500 100 200", "+48500100200", True),
    ("phone", "500 100 200", "+48500100200", False),
    ("phone", "+٤٨٥٠٠١٠٠٢٠٠", "+48500100200", True),  # Arabic-Indic digits
    ("customer_ref", " C-10001 ", "C-10001", True),
    ("customer_ref", "c-10001", "C-10001", False),
    ("social_handle", "@Zoe_M", "zoe_m", True),
    ("social_handle", "@@zoe_m", "zoe_m", True),
])
def test_equality(kind, a, b, same):
    assert (normalise(kind, a) == normalise(kind, b)) is same


@pytest.mark.parametrize("kind, value", [("email", ""), ("email", "   "), ("email", None), ("phone", "--")])
def test_no_identity(kind, value):
    assert normalise(kind, value) is None


def test_normalise_is_idempotent():
    for kind, value in [("email", " Zoë@X.org"), ("phone", "0048 1"), ("social_handle", "@@A"),
                        ("customer_ref", " x ")]:
        once = normalise(kind, value)
        assert normalise(kind, once) == once


MARKS = ["", *(chr(c) for c in range(0x300, 0x370)), "\u0345", "\u0342", "\u20d7"]
KINDS = ["email", "phone", "customer_ref", "social_handle"]


@pytest.mark.parametrize("kind", KINDS)
def test_normalise_is_idempotent_on_every_code_point_with_and_without_a_combining_mark(kind):
    """Lower-casing can make a pair NFC composes (``J`` + caron -> ``ǰ``): NFC runs after it, so a value
    normalised twice (the registry's digests normalise what they are handed) is the value normalised once."""
    bad = []
    for cp in range(0x20, 0x30000):
        if 0xD800 <= cp < 0xE000:
            continue
        ch = chr(cp)  # with every mark where lower-casing changes the character (where a new pair can appear)
        marks = MARKS if kind in ("email", "social_handle") and ch.lower() != ch else ("", "\u0301")
        for mark in marks:
            once = normalise(kind, ch + mark)
            if once is not None and normalise(kind, once) != once:
                bad.append((hex(cp), mark))
    assert bad == []


@pytest.mark.parametrize("kind, value, once", [
    ("email", "J\u030c@X.org", "\u01f0@x.org"),  # composed only after lower-casing
    ("social_handle", "@ @Zoe", "zoe"),
    ("social_handle", " @\u3000@zoe ", "zoe"),
])
def test_normalise_of_the_formerly_unstable_forms(kind, value, once):
    assert normalise(kind, value) == once and normalise(kind, once) == once


@settings(max_examples=400, deadline=None)
@given(kind=st.sampled_from(KINDS),
       value=st.text(st.one_of(st.characters(), st.sampled_from([" ", "@", "\u3000", "\u0301", "\u030c", "\u0345",
                                                                  "J", "\u0130", "\u03a3"])), max_size=12))
def test_normalise_is_idempotent_on_any_text(kind, value):
    once = normalise(kind, value)
    assert once is None or normalise(kind, once) == once


@pytest.mark.parametrize("kind, value, message", [
    ("email", "a" * 250 + "@example.org", "longer than 254"),
    ("email", "zoe\x00@example.org", "control character"),
    ("email", "zoe@example.org\n", "control character"),
    ("email", "not-an-address", "not a valid e-mail"),
    ("phone", "12", "6 to 32 digits"),
    ("customer_ref", "x" * 65, "longer than 64"),
    ("social_handle", "@", "is empty"),
    ("passport", "X1", "unknown identity field"),
    ("email", 42, "must be a string"),
])
def test_validate_refuses_without_repeating_the_value(kind, value, message):
    with pytest.raises(IdentityError, match=message) as exc:
        validate(kind, value)
    if isinstance(value, str) and len(value) > 3:
        assert value.strip("\x00\n") not in str(exc.value)


BASE = crm_policy("""\
          people:
            table: people
            primary_key: id
            columns: [id, email, passport_no]
            identities: {IDENTITIES}
    """) + "{EXTRA}"


def policy(identities: str, extra: str = "") -> str:
    return BASE.replace("{IDENTITIES}", identities).replace("{EXTRA}", extra)


def test_identity_kind_no_request_field_carries_is_refused():
    with pytest.raises(PolicyError, match=r"identities\.passport: .*identity kind 'passport'"):
        parse_policy(policy("{email: email, passport: passport_no}"), source="map.yaml")


def test_request_field_matching_no_collection_is_refused():
    with pytest.raises(PolicyError, match=r"request_fields\[1\]: request field 'phone' matches no collection"):
        parse_policy(policy("{email: email}", "request_fields: [email, phone]\n"), source="map.yaml")


def test_mask_field_needs_a_mask_and_not_the_primary_key():
    with pytest.raises(PolicyError, match="'erase: mask' needs 'mask'"):
        parse_policy(policy("{email: {column: email, erase: mask}}"), source="map.yaml")
    with pytest.raises(PolicyError, match="primary key cannot be masked"):
        parse_policy(policy("{customer_ref: {column: id, erase: mask, mask: {strategy: 'null'}}}"), source="m.yaml")


S3_MAP = textwrap.dedent("""\
    version: 1
    systems:
      objects:
        kind: s3
        connection: objects_s3
        collections:
          exports:
            bucket: exports
            key_template: "exports/{email}/..."
            identities: {IDENTITIES}
    """)


@pytest.mark.parametrize("identities, message", [
    ("{email: email}", "S3 identities are 'key:<template field>', 'metadata:<name>' or 'tag:<name>'"),
    ("{email: 'key:address'}", "the key template has no field {address}"),
    ("{email: 'tag:'}", "S3 identities are"),
])
def test_s3_identity_sources_are_checked(identities, message):
    with pytest.raises(PolicyError, match=message):
        parse_policy(S3_MAP.replace("{IDENTITIES}", identities), source="s3.yaml")


def test_default_map_reaches_every_request_field():
    p = load_policy(ROOT / "config" / "policy.yaml")
    assert p.request_kinds() == ["customer_ref", "email", "phone", "social_handle"]
