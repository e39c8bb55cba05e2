"""A batch's re-read, sealed into its intent: whatever keys and walk bounds a table can have come back as they went
in, only under an active key, and never readable in the entry."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from include.retention.errors import RetentionError
from include.retention.intents import seal, unseal
from include.retention.masking import KeyRing

KEY = b"k" * 32

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1), st.text(max_size=40),
    st.datetimes(), st.datetimes(timezones=st.just(dt.UTC)), st.dates(),
    st.decimals(allow_nan=False, allow_infinity=False, places=4), st.uuids(), st.binary(max_size=20),
    st.floats(allow_nan=False, allow_infinity=False))
keys = st.one_of(scalars, st.tuples(scalars, scalars), st.tuples(scalars, scalars, scalars))


@settings(max_examples=200, deadline=None)
@given(st.lists(keys, max_size=30), st.one_of(st.none(), st.tuples(scalars, scalars)))
def test_keys_and_bounds_come_back_as_they_were(batch, after):
    value = {"walk": "keys", "keys": batch, "after": after, "now": dt.datetime(2026, 11, 1), "cascading": {"a": 1}}
    back = unseal(KEY, seal(KEY, value))
    assert back == value
    assert [type(k) for k in back["keys"]] == [type(k) for k in batch]


def test_sealed_text_names_no_key_and_needs_the_key():
    secret = "zoe@example.org"
    token = seal(KEY, {"keys": [secret, 123456789]})
    assert secret not in token and "123456789" not in token and token.startswith("k0:")
    json.dumps({"reread": token})  # fits a ledger entry's JSON details
    with pytest.raises(RetentionError, match="not an active key"):
        unseal(KeyRing([("k1", b"x" * 32)]), token)
    with pytest.raises(RetentionError, match="cannot be decrypted"):
        unseal(b"y" * 32, token)


def test_a_rotated_keyring_still_unseals_what_the_old_key_sealed():
    old = seal(KEY, {"upto": (decimal.Decimal("1.50"), uuid.UUID(int=7))})
    ring = KeyRing([("k1", b"n" * 32), ("k0", KEY)])
    assert unseal(ring, old) == {"upto": (decimal.Decimal("1.50"), uuid.UUID(int=7))}
    assert seal(ring, 1).startswith("k1:")
