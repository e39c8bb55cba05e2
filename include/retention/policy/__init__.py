"""The data map and retention policy: YAML in git, validated into typed models.

A policy file describes systems (by Airflow connection id), their collections
(tables or S3 prefixes), identity fields, references between collections and
retention rules. ``load_policy`` refuses a wrong file before anything runs and
names the file, the path inside it and the problem.

``model`` and ``rules`` hold the pydantic models (``rules`` also ``cutoff``: when a stage's period ends),
``periods`` the ISO 8601 storage periods, ``load`` the YAML loader and its cache, ``checks`` (with ``check_sql``,
``check_s3``, ``check_references``, ``check_requests``) what a field-by-field check cannot see.
This package imports nothing from Airflow.
"""

from __future__ import annotations

from include.retention.policy.checks import policy_warnings
from include.retention.policy.load import MAX_DEPTH, MAX_POLICY_BYTES, load_policy, parse_policy
from include.retention.policy.model import (
    NOTICE_FIELDS,
    RECIPIENT_CHANNELS,
    RECIPIENT_IDENTITY,
    RECORD_FORMATS,
    S3_IDENTITY_SOURCES,
    Backups,
    CategoryInfo,
    Collection,
    Consent,
    Defaults,
    IdentityField,
    LockMarker,
    Policy,
    Recipient,
    Reference,
    System,
    referrers,
    s3_prefix,
)
from include.retention.policy.periods import MAX_PERIOD_YEARS, approx_days, parse_duration
from include.retention.policy.rules import (
    ACTION_ORDER,
    AGE_OPS,
    CONDITION_TESTS,
    MAX_KEY_COLUMNS,
    MAX_START_COLUMNS,
    RANGE_OPS,
    START_EVENTS,
    Action,
    Condition,
    Mask,
    Rule,
    Stage,
    Start,
    StartEvent,
    cutoff,
)

__all__ = [
    "ACTION_ORDER",
    "AGE_OPS",
    "CONDITION_TESTS",
    "MAX_DEPTH",
    "MAX_KEY_COLUMNS",
    "MAX_PERIOD_YEARS",
    "MAX_POLICY_BYTES",
    "MAX_START_COLUMNS",
    "NOTICE_FIELDS",
    "RANGE_OPS",
    "RECIPIENT_CHANNELS",
    "RECIPIENT_IDENTITY",
    "RECORD_FORMATS",
    "S3_IDENTITY_SOURCES",
    "START_EVENTS",
    "Action",
    "Backups",
    "CategoryInfo",
    "Collection",
    "Condition",
    "Consent",
    "Defaults",
    "IdentityField",
    "LockMarker",
    "Mask",
    "Policy",
    "Recipient",
    "Reference",
    "Rule",
    "Stage",
    "Start",
    "StartEvent",
    "System",
    "approx_days",
    "cutoff",
    "load_policy",
    "parse_duration",
    "parse_policy",
    "policy_warnings",
    "referrers",
    "s3_prefix",
]
