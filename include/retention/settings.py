"""Every ``RETENTION_*`` environment variable in one place: its type, default and what it is for.

``settings()`` reads the environment each time it is called (a test's ``monkeypatch.setenv`` counts at once);
the object is rebuilt only when a ``RETENTION_*`` variable changed. An empty variable counts as unset. An
invalid value raises ``SettingsError`` naming the variable, never its value (some of them are secrets).

docs/configuration.md is generated from this module: ``python -m include.retention.settings >
docs/configuration.md`` (a unit test fails when it is out of date).
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from include.retention.errors import RetentionError

PREFIX = "RETENTION_"
PORT = {"ge": 1, "le": 65535}


class SettingsError(RetentionError, ValueError):
    """A ``RETENTION_*`` variable holds a value of the wrong type or range (the message names it, not the value)."""


def _field(default: Any, doc: str, section: str, **constraints: Any) -> Any:
    return Field(default, description=doc, json_schema_extra={"section": section}, **constraints)


CORE, KEYS, DAGS, DISCOVERY, NOTICES, PURGE, PAGE, DEMO = (
    "Data map and connections",
    "Keys and ledger anchors",
    "DAGs: schedules, retries, deadlines",
    "Discovery of unmapped personal data",
    "Notices and alerts",
    "Metadata purge",
    "Data-retention page",
    "Demo and local UI",
)


class Settings(BaseSettings):
    """The deployment's ``RETENTION_*`` variables: field ``retries`` is ``RETENTION_RETRIES`` (``env_name``)."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, env_ignore_empty=True, extra="ignore", frozen=True)

    # data map and connections
    policy_path: str | None = _field(None, "the data map / policy YAML file (default: config/policy.yaml)", CORE)
    ledger_conn_id: str = _field("retention_ledger", "connection of the ledger and registry database", CORE)
    key_conn_id: str = _field("retention_keys", "connection whose password is the key without an id (k0)", CORE)
    verify_identity: str | None = _field(
        None,
        "request types that wait for an identity check, comma-separated, or `none` "
        "(default: access, rectify, withdraw, erase, restrict)",
        CORE,
    )

    # keys and anchors
    hmac_keys: SecretStr | None = _field(
        None, "keys for keyed digests and registry encryption, `kid:secret,...`, current key first", KEYS
    )
    hmac_key: SecretStr | None = _field(None, "one key without an id (k0), the oldest of the ring", KEYS)
    ledger_anchors: str | None = _field(
        None, "where the ledger head is anchored: a directory or `s3://bucket/prefix` (unset: not anchored)", KEYS
    )
    anchor_conn_id: str = _field("objects_s3", "aws connection for `s3://` ledger anchors", KEYS)
    ledger_anchors_demo: bool = _field(
        False,
        "the anchor directory stands in for a bucket (`make demo`): no warning that it cannot prove against truncation",
        KEYS,
    )

    # DAGs
    sweep_schedule: str = _field("@daily", "schedule of `retention_sweep`", DAGS)
    intake_schedule: str = _field("*/30 * * * *", "schedule of `erasure_intake`", DAGS)
    drift_schedule: str = _field("@daily", "schedule of `data_map_drift`", DAGS)
    deadline_schedule: str = _field("@hourly", "schedule of `erasure_deadlines`", DAGS)
    purge_schedule: str = _field("@daily", "schedule of `metadata_purge`", DAGS)
    retries: int = _field(3, "retries of every task (exponential backoff)", DAGS, ge=0)
    retry_delay_seconds: float = _field(30.0, "first retry delay of every task, seconds", DAGS, ge=0)
    deadline_alerts: bool = _field(
        True, "deadline alerts on the DAGs (`0` for `airflow dags test`, which fails on them)", DAGS
    )
    due_warning_days: float = _field(
        5.0, "alert this many days before a request's one-month due date", DAGS, ge=0, lt=28
    )
    sweep_deadline_hours: float = _field(
        12.0, "alert when a `retention_sweep` run is not done this long after it was queued", DAGS, gt=0
    )
    sweep_batch_objects: int = _field(
        200, "objects per mapped task of a `retention_sweep` of records inside objects (a sealed plan's batch)",
        DAGS, ge=1,
    )
    recipient_confirm_hours: float = _field(
        72.0, "how long an erasure waits for recipients to confirm before it times out", DAGS, gt=0
    )
    progress_log_seconds: float = _field(
        30.0,
        "how often a running sweep logs its progress, read from the ledger, seconds (`0`: after every ledger write)",
        DAGS,
        ge=0,
    )
    export_link_seconds: int = _field(
        7 * 24 * 3600,
        "lifetime of an access package's download link, seconds (S3 allows at most 7 days)",
        DAGS,
        gt=0,
        le=7 * 24 * 3600,
    )

    # discovery
    lineage_file: str | None = _field(
        None,
        "the OpenLineage provider's event file (its file transport's `log_file_path`), read by `data_map_drift` "
        "(unset: no lineage is read)",
        DISCOVERY,
    )

    # notices and alerts
    smtp_conn_id: str = _field("smtp_default", "SMTP connection of notices to recipients and requesters", NOTICES)
    mail_from: str | None = _field(None, "sender address of notices (default: the connection's from_email)", NOTICES)
    notify_record_only: bool = _field(
        False, "a channel without its connection counts as told: recorded, not sent (the demo)", NOTICES
    )
    webhook_timeout_seconds: float = _field(10.0, "timeout of one webhook post, seconds", NOTICES, gt=0)
    alert_webhook: str | None = _field(
        None, "older form: a plain URL for chat alerts (connection `retention_alert_webhook` comes first)", NOTICES
    )

    # metadata purge
    purge_after_days: int = _field(
        7, "days a finished erasure run keeps its personal data in Airflow's metadata DB", PURGE, ge=0
    )
    metadata_db_conn: SecretStr | None = _field(
        None, "SQLAlchemy URL of Airflow's metadata DB for the purge CLI inside a task (Airflow blocks it there)", PURGE
    )
    purge_runs: str | None = _field(
        None, "JSON list of `[dag_id, run_id]` to purge (`purge_cli --runs-from-env`; set by `metadata_purge`)", PURGE
    )

    # the page
    forecast_cache_seconds: float = _field(900.0, "how long the page reuses a forecast, seconds", PAGE, ge=0)
    forecast_wait_seconds: float = _field(
        5.0, "how long the page waits for a forecast before it says it is coming, seconds", PAGE, ge=0
    )

    # demo and local UI
    debug: bool = _field(False, "the CLI prints the traceback of an unexpected error", DEMO)
    demo_s3_port: int = _field(5055, "port of the demo's local S3 server (`make demo`)", DEMO, **PORT)
    ui_port: int = _field(8080, "port of the Airflow UI of `make ui` (scripts/ui.sh)", DEMO, **PORT)
    ui_start_timeout: int = _field(240, "seconds `make ui` waits for Airflow to become healthy", DEMO, gt=0)
    ui_stop_grace: int = _field(20, "seconds `make ui` waits after SIGTERM before SIGKILL", DEMO, ge=0)


def env_name(field: str) -> str:
    """The variable of a settings field: ``purge_after_days`` -> ``RETENTION_PURGE_AFTER_DAYS``."""
    return PREFIX + field.upper()


def reveal(secret: SecretStr | None) -> str | None:
    """The text of a secret setting (None when unset)."""
    return None if secret is None else secret.get_secret_value()


@functools.lru_cache(maxsize=8)
def _build(environ: tuple[tuple[str, str], ...]) -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        problems = [f"{env_name(str(err['loc'][0]))}: {err['msg']}" for err in exc.errors()]
        raise SettingsError("invalid setting: " + "; ".join(problems)) from None  # the value stays out


def settings() -> Settings:
    """The current ``RETENTION_*`` settings (read from the environment now; rebuilt only when one changed)."""
    return _build(tuple(sorted((k, v) for k, v in os.environ.items() if k.upper().startswith(PREFIX))))


def _default(info: Any) -> str:
    if info.default is None:
        return "unset"
    if isinstance(info.default, bool):
        return "`1`" if info.default else "`0`"
    return f"`{info.default:g}`" if isinstance(info.default, float) else f"`{info.default}`"


def _type(info: Any) -> str:
    ann = info.annotation
    if ann in (SecretStr, SecretStr | None):
        return "secret"
    names = {bool: "boolean (`1`/`0`, `true`/`false`)", int: "whole number", float: "number"}
    text = names.get(ann, "text")
    bounds = [
        f"{sym} {getattr(m, attr):g}"
        for m in info.metadata
        for attr, sym in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"))
        if getattr(m, attr, None) is not None
    ]
    return f"{text}, {', '.join(bounds)}" if bounds else text


def markdown() -> str:
    """docs/configuration.md: every variable by section, with type, default and what it is for."""
    lines = [
        "# Configuration",
        "",
        "<!-- generated by `python -m include.retention.settings > docs/configuration.md`; do not edit -->",
        "",
        "Every `RETENTION_*` environment variable the project reads (`include/retention/settings.py`). An "
        "empty variable counts as unset; an invalid value stops the program with an error naming the "
        "variable. Connections (`AIRFLOW_CONN_*`) are Airflow's own and not listed here.",
        "",
    ]
    sections: dict[str, list[str]] = {}
    for name, info in Settings.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        sections.setdefault(str(extra["section"]), []).append(
            f"| `{env_name(name)}` | {_type(info)} | {_default(info)} | {info.description} |"
        )
    for section, rows in sections.items():
        lines += [f"## {section}", "", "| variable | type | default | what |", "|---|---|---|---|", *rows, ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(markdown())
