"""The data map's S3 parts: what validation refuses, and how key templates read keys."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from include.retention.errors import PolicyError
from include.retention.keytemplate import key_date
from include.retention.keytemplate import literal_head as template_prefix
from include.retention.keytemplate import regex as template_regex
from include.retention.policy import Reference
from include.retention.stores.s3 import owned_key
from tests.policy_text import sql_system
from tests.s3.conftest import s3_policy

CRM = sql_system("crm", "crm_db", """\
      applicants:
        table: applicants
        primary_key: id
        columns: [id, cv_key]
        references: [{ref}]
""")
CVS = """\
cvs:
  bucket: cvs
  prefix: cvs/
"""


@pytest.mark.parametrize(("ref", "problem"), [
    ("{to: objects.letters, column: cv_key}",
     "systems.crm.collections.applicants.references[0].to: unknown collection 'objects.letters'"),
    ("{to: files.cvs, column: cv_key}",
     "systems.crm.collections.applicants.references[0].to: unknown system 'files'"),
    ('{to: objects.cvs, key_template: "cvs/{applicant}/"}',
     "references[0].key_template: unknown column 'applicant' in key template"),
    ('{to: objects.cvs, key_template: "{id}/"}',
     "references[0].key_template: the key template must start with objects.cvs's prefix 'cvs/'"),
    ("{to: objects.cvs}", "a reference needs 'column' (or 'columns', or, to S3, 'key_template')"),
])
def test_references_into_s3_are_checked(ref, problem):
    with pytest.raises(PolicyError, match="^test-policy.yaml: .*" + re.escape(problem)):
        s3_policy(CVS, CRM.format(ref=ref))


def test_a_valid_reference_loads():
    policy = s3_policy(CVS, CRM.format(ref="{to: objects.cvs, column: cv_key}"))
    assert [r.to for r in policy.owned_objects("crm.applicants")] == ["objects.cvs"]


@pytest.mark.parametrize(("rule", "problem"), [
    ("{name: r, start: created_at, action: delete, period: P1Y}",
     "rules[0].start: S3 rules count from 'last_modified', 'key_date', 'metadata' or 'tag'"),
    ("{name: r, start: {basis: key_date}, action: delete, period: P1Y}",
     "basis 'key_date' needs a key_template with {yyyy}, {mm}, {dd}"),
    ("{name: r, start: {basis: last_modified}, action: anonymize, period: P30D, mask: {ip: {strategy: truncate_ip}}}",
     "an 'anonymize' stage rewrites objects, which resets LastModified"),
    ("{name: r, start: {basis: tag, name: d}, action: anonymize, period: P30D, mask: {ip: {strategy: redact}}}",
     "strategy 'redact' cannot rewrite object content"),
    ("{name: r, start: {basis: tag, name: d}, action: anonymize, period: P30D,"
     " mask: {ip: {strategy: truncate_ip, value: '24/200'}}}",
     "mask.ip.value: truncate_ip prefixes must be 0-32 (IPv4) and 0-128 (IPv6)"),
    ("{name: r, start: {basis: metadata}, action: delete, period: P1Y}",
     "basis 'metadata' needs 'name'"),
])
def test_s3_rules_are_checked(rule, problem):
    with pytest.raises(PolicyError, match=re.escape(problem)):
        s3_policy(f"{CVS}  rules: [{rule}]\n")


def test_key_template_must_sit_under_the_prefix():
    with pytest.raises(PolicyError, match="key_template: the key template must start with the collection's prefix"):
        s3_policy("logs:\n  bucket: b\n  prefix: logs/\n  key_template: 'archive/{yyyy}/...'\n")


def test_key_templates_read_keys():
    pattern = template_regex("logs/{yyyy}/{mm}/{dd}/...")
    assert template_prefix("logs/{yyyy}/{mm}/{dd}/...") == "logs/"
    assert key_date(pattern.fullmatch("logs/2025/02/28/a/b.log")) == dt.datetime(2025, 2, 28, tzinfo=dt.UTC)
    assert key_date(pattern.fullmatch("logs/2025/02/30/x.log")) is None  # not a date: no period can be counted
    assert pattern.fullmatch("logs/2025/2/28/x.log") is None
    repeated = template_regex("logs/{yyyy}/{yyyy}-{mm}-{dd}-...")
    assert repeated.fullmatch("logs/2025/2025-01-02-x") and not repeated.fullmatch("logs/2024/2025-01-02-x")
    cvs = template_regex("cvs/{applicant_id}/...")
    assert cvs.fullmatch("cvs/17/cv.pdf")["applicant_id"] == "17" and not cvs.fullmatch("cvs/cv.pdf")


def test_owned_key_fills_templates_safely():
    ref = Reference(to="objects.cvs", key_template="cvs/{id}/")
    assert owned_key(ref, {"id": 17}) == ("cvs/17/", True)
    assert owned_key(ref, {"id": None}) == (None, False)
    assert owned_key(ref, {"id": "1/../"}) == (None, False)
    assert owned_key(Reference(to="o.c", key_template="cvs/{id}/..."), {"id": 3}) == ("cvs/3/", True)
    assert owned_key(Reference(to="o.c", key_template="cvs/{id}.pdf"), {"id": 3}) == ("cvs/3.pdf", False)
    assert owned_key(Reference(to="o.c", column="cv_key"), {"cv_key": "cvs/3/a b.pdf"}) == ("cvs/3/a b.pdf", False)
    assert owned_key(Reference(to="o.c", column="cv_key"), {"cv_key": ""}) == (None, False)
