"""include/retention/settings.py: every RETENTION_* variable typed, defaulted, read at call time, documented."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from include.retention.errors import RetentionError
from include.retention.settings import Settings, SettingsError, env_name, markdown, reveal, settings

ROOT = Path(__file__).resolve().parents[2]
READ_IN = ("include", "plugins", "dags", "scripts")


@pytest.fixture
def clean(monkeypatch):
    """No RETENTION_* variable from the test session (conftest sets a key and a few switches)."""
    for name in Settings.model_fields:
        monkeypatch.delenv(env_name(name), raising=False)
    return monkeypatch


def test_defaults_when_nothing_is_set(clean):
    s = settings()
    assert s.ledger_conn_id == "retention_ledger" and s.key_conn_id == "retention_keys"
    assert s.policy_path is None and s.ledger_anchors is None and s.hmac_key is None and s.hmac_keys is None
    assert s.purge_after_days == 7 and s.retries == 3 and s.retry_delay_seconds == 30.0
    assert s.deadline_alerts is True and s.notify_record_only is False and s.ledger_anchors_demo is False
    assert s.export_link_seconds == 7 * 24 * 3600
    assert (s.sweep_schedule, s.intake_schedule, s.deadline_schedule) == ("@daily", "*/30 * * * *", "@hourly")


def test_values_are_read_when_called_and_typed(clean):
    clean.setenv("RETENTION_PURGE_AFTER_DAYS", "30")
    clean.setenv("RETENTION_NOTIFY_RECORD_ONLY", "true")
    clean.setenv("RETENTION_DEADLINE_ALERTS", "0")
    clean.setenv("RETENTION_DUE_WARNING_DAYS", "2.5")
    s = settings()
    assert s.purge_after_days == 30 and isinstance(s.purge_after_days, int)
    assert s.notify_record_only is True and s.deadline_alerts is False and s.due_warning_days == 2.5
    clean.setenv("RETENTION_PURGE_AFTER_DAYS", "0")
    assert settings().purge_after_days == 0  # changed between two calls: read again
    clean.delenv("RETENTION_PURGE_AFTER_DAYS")
    assert settings().purge_after_days == 7


def test_an_empty_variable_counts_as_unset(clean):
    clean.setenv("RETENTION_VERIFY_IDENTITY", "")  # empty must not switch identity checks off
    clean.setenv("RETENTION_RETRIES", "")
    clean.setenv("RETENTION_LEDGER_ANCHORS", "")
    s = settings()
    assert s.verify_identity is None and s.retries == 3 and s.ledger_anchors is None


def test_secrets_stay_hidden_and_can_be_read(clean):
    secret = "k1:" + "s" * 40
    clean.setenv("RETENTION_HMAC_KEYS", secret)
    s = settings()
    assert reveal(s.hmac_keys) == secret and reveal(s.hmac_key) is None
    assert secret not in repr(s) and secret not in str(s)


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("RETENTION_PURGE_AFTER_DAYS", "a week", "valid integer"),
        ("RETENTION_PURGE_AFTER_DAYS", "-1", "greater than or equal to 0"),
        ("RETENTION_RETRIES", "3.5", "valid integer"),
        ("RETENTION_NOTIFY_RECORD_ONLY", "perhaps", "valid boolean"),
        ("RETENTION_EXPORT_LINK_SECONDS", "864000", "less than or equal to 604800"),
        ("RETENTION_DUE_WARNING_DAYS", "30", "less than 28"),
        ("RETENTION_UI_PORT", "70000", "less than or equal to 65535"),
        ("RETENTION_WEBHOOK_TIMEOUT_SECONDS", "-3", "greater than 0"),
    ],
)
def test_an_invalid_value_names_the_variable_not_the_value(clean, variable, value, problem):
    clean.setenv(variable, value)
    with pytest.raises(SettingsError) as exc:
        settings()
    text = str(exc.value)
    assert text.startswith(f"invalid setting: {variable}: ") and problem in text
    assert value not in text.replace(variable, "")
    assert exc.value.__cause__ is None and exc.value.__suppress_context__  # no chained pydantic error with the value
    assert isinstance(exc.value, RetentionError) and isinstance(exc.value, ValueError)


def test_every_invalid_variable_is_named(clean):
    clean.setenv("RETENTION_RETRIES", "x")
    clean.setenv("RETENTION_UI_STOP_GRACE", "y")
    with pytest.raises(SettingsError, match="RETENTION_RETRIES: .*; RETENTION_UI_STOP_GRACE: "):
        settings()


def test_a_setting_fixed_again_works_at_once(clean):
    clean.setenv("RETENTION_RETRIES", "many")
    with pytest.raises(SettingsError):
        settings()
    clean.setenv("RETENTION_RETRIES", "5")
    assert settings().retries == 5


def test_every_variable_the_code_reads_is_a_setting():
    """A RETENTION_* name in the code, the compose file or the Makefile that is no field here is undocumented."""
    named: set[str] = set()
    files = [p for d in READ_IN for p in (ROOT / d).rglob("*") if p.suffix in (".py", ".sh")]
    files += [ROOT / "docker-compose.yaml", ROOT / "Makefile"]
    for path in files:
        named |= set(re.findall(r"(?<![A-Z_])RETENTION_[A-Z0-9_]+", path.read_text(encoding="utf-8")))
    fields = {env_name(f) for f in Settings.model_fields}
    assert named - fields == set()


def test_every_setting_has_a_doc_and_a_section():
    for name, info in Settings.model_fields.items():
        assert info.description and len(info.description) > 10, name
        assert isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("section"), name


def test_configuration_doc_is_up_to_date():
    """docs/configuration.md is generated: `python -m include.retention.settings > docs/configuration.md`."""
    on_disk = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert on_disk == markdown(), "docs/configuration.md is out of date: regenerate it (see its first lines)"
    for name in Settings.model_fields:
        assert f"`{env_name(name)}`" in on_disk


def test_the_module_prints_the_doc():
    proc = subprocess.run(
        [sys.executable, "-m", "include.retention.settings"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=True,
    )
    assert proc.stdout == markdown()
