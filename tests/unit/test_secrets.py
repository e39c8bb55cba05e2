"""Secrets: the HMAC key refuses short and published values with how to make one; RETENTION_HMAC_KEYS
carries key ids; `make secrets` (scripts/make_secrets.py) writes fresh values and never overwrites a .env."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import pytest
from cryptography.fernet import Fernet

from include.retention.connections import MIN_KEY_BYTES, PLACEHOLDER_KEYS, hmac_key
from include.retention.errors import RetentionError
from include.retention.masking import KeyRing, keys_of
from tests.conftest import ROOT

GOOD = "a" * 8 + "0123456789abcdef" * 3  # 56 bytes
HOW = re.compile(r"make one with `make secrets`.*token_hex\(32\)")


def _load_script():
    spec = importlib.util.spec_from_file_location("make_secrets", ROOT / "scripts" / "make_secrets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _no_connection(conn_id):
    raise RetentionError("not defined")


@pytest.fixture
def env(monkeypatch):
    for name in ("RETENTION_HMAC_KEY", "RETENTION_HMAC_KEYS"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("key", ["change-me-to-a-long-random-secret", "change-me-in-production", "minio-secret",
                                 "CHANGE-ME-to-a-long-random-secret-of-more-than-32-bytes"])
def test_placeholders_from_the_repository_are_refused(env, key):
    env.setenv("RETENTION_HMAC_KEY", key)
    with pytest.raises(RetentionError, match="placeholder published in this repository") as exc:
        hmac_key(_no_connection)
    assert HOW.search(str(exc.value))


def test_every_placeholder_that_was_a_compose_default_is_listed():
    assert {"change-me-to-a-long-random-secret", "change-me-in-production", "minio-secret", "root"} <= PLACEHOLDER_KEYS


@pytest.mark.parametrize("key", ["x" * (MIN_KEY_BYTES - 1), "short", "é" * 15])
def test_short_keys_are_refused_with_how_to_make_one(env, key):
    env.setenv("RETENTION_HMAC_KEY", key)
    with pytest.raises(RetentionError, match=r"RETENTION_HMAC_KEY is \d+ bytes; an HMAC key needs at least 32") as exc:
        hmac_key(_no_connection)
    assert HOW.search(str(exc.value))


def test_a_short_connection_password_is_refused_too(env):
    from include.retention.connections import ConnInfo

    with pytest.raises(RetentionError, match="the password of connection 'retention_keys' is 5 bytes"):
        hmac_key(lambda conn_id: ConnInfo("generic", password="short"))


def test_no_key_at_all_says_how_to_make_one(env):
    with pytest.raises(RetentionError, match="no HMAC key") as exc:
        hmac_key(_no_connection)
    assert HOW.search(str(exc.value))


def test_good_keys_are_accepted(env):
    env.setenv("RETENTION_HMAC_KEY", "x" * MIN_KEY_BYTES)
    assert hmac_key(_no_connection) == b"x" * MIN_KEY_BYTES
    env.setenv("RETENTION_HMAC_KEY", "test-hmac-key-" + "x" * 32)  # tests/conftest.py's key
    key = hmac_key(_no_connection)
    assert keys_of(key) == (("k0", b"test-hmac-key-" + b"x" * 32),)


def test_key_ring_current_first_single_key_last_as_k0(env):
    env.setenv("RETENTION_HMAC_KEYS", f"k2:{GOOD}2, k1:{GOOD}1")
    env.setenv("RETENTION_HMAC_KEY", f"{GOOD}0")
    ring = hmac_key(_no_connection)
    assert isinstance(ring, KeyRing) and ring.kid == "k2" and ring == f"{GOOD}2".encode()
    assert [kid for kid, _ in ring.ring] == ["k2", "k1", "k0"]
    assert "k2" in repr(ring) and GOOD not in repr(ring)
    env.setenv("RETENTION_HMAC_KEY", f"{GOOD}1")  # the same secret as k1: not added twice
    assert [kid for kid, _ in hmac_key(_no_connection).ring] == ["k2", "k1"]


@pytest.mark.parametrize("value, problem", [
    (GOOD, "is not 'kid:secret'"),
    (f"k1:{GOOD},k1:{GOOD}x", "key id 'k1' is given twice"),
    ("k1:short", "entry 1 \\(k1\\) is 5 bytes"),
    (f"k2:{GOOD},k1:change-me-in-production", "entry 2 \\(k1\\) is a placeholder"),
    (f"bad id:{GOOD}", "is not 'kid:secret'"),
])
def test_bad_key_lists_are_refused(env, value, problem):
    env.setenv("RETENTION_HMAC_KEYS", value)
    with pytest.raises(RetentionError, match=problem) as exc:
        hmac_key(_no_connection)
    assert GOOD not in str(exc.value)


def test_k0_in_the_list_must_be_the_single_key(env):
    env.setenv("RETENTION_HMAC_KEYS", f"k0:{GOOD}a")
    env.setenv("RETENTION_HMAC_KEY", f"{GOOD}b")
    with pytest.raises(RetentionError, match="'k0' is the id of RETENTION_HMAC_KEY"):
        hmac_key(_no_connection)


def test_secrets_script_writes_fresh_values_and_never_overwrites(tmp_path, env):
    target = tmp_path / ".env"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_secrets.py"), "--env-file", str(target)],
                          capture_output=True, text=True, check=True)
    assert "written with fresh secrets" in proc.stdout
    first = target.read_text()
    values = dict(line.split("=", 1) for line in first.splitlines() if line and not line.startswith("#"))
    script = _load_script()
    assert set(values) == set(script.SECRETS)
    assert target.stat().st_mode & 0o077 == 0  # readable by the owner only
    Fernet(values["AIRFLOW_FERNET_KEY"].encode())  # a valid Fernet key
    env.setenv("RETENTION_HMAC_KEYS", values["RETENTION_HMAC_KEYS"])
    assert hmac_key(_no_connection).kid == "k1"  # accepted by the code
    for name, value in values.items():
        assert len(value) >= 32 and "$" not in value, name
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_secrets.py"), "--env-file", str(target)],
                          capture_output=True, text=True, check=True)
    assert "exists, left unchanged" in proc.stdout and target.read_text() == first
    other = tmp_path / "other.env"
    script.write_env(other)
    assert set(other.read_text().splitlines()).isdisjoint(
        line for line in first.splitlines() if not line.startswith("#"))  # fresh every time


def test_makefile_has_the_secrets_target():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^secrets:\n\tpython3 scripts/make_secrets.py$", makefile, re.M)
