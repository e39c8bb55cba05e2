"""The data map's records-inside-objects parts: ``format``, ``record:`` identities, a record start field; what
validation refuses, naming file, path and problem."""

from __future__ import annotations

import re

import pytest

from include.retention.errors import PolicyError
from tests.s3.conftest import s3_policy

BASE = "systems.objects.collections.events"


def events(extra: str, fmt: str | None = "parquet") -> str:
    head = "events:\n  bucket: b\n  key_template: \"events/dt={yyyy}-{mm}-{dd}/...\"\n"
    if fmt:
        head += f"  format: {fmt}\n"
    return head + "".join(f"  {line}\n" for line in extra.splitlines())


def test_a_parquet_collection_loads():
    policy = s3_policy(events("""\
identities:
  email: ["record:email", {column: "record:referrer_email", erase: mask, mask: {strategy: redact}}]
rules:
  - {name: events, start: {basis: record, name: ts}, action: delete, period: P12M}"""))
    coll = policy.collection("objects.events")
    assert coll.format == "parquet"
    assert [(k, f.column, f.erase) for k, f in coll.identity_fields()] == [
        ("email", "record:email", "row"), ("email", "record:referrer_email", "mask")]
    assert coll.rules[0].start.basis == "record" and coll.rules[0].start.name == "ts"


@pytest.mark.parametrize(("extra", "fmt", "problem"), [
    ('identities: {email: "record:email"}', None,
     f"{BASE}.identities.email: identity 'record:email' is a field of records, but the collection declares no "
     "'format'"),
    ('identities: {email: "metadata:email"}', "csv",
     f"{BASE}.identities.email: a collection of csv records holds its identities in records ('record:<field>')"),
    ('identities: {email: {column: "metadata:email", erase: mask, mask: {strategy: redact}}}', None,
     f"{BASE}.identities.email: S3 objects are erased whole ('erase: mask' is for SQL columns and record fields)"),
    ("rules: [{name: r, start: {basis: record, name: ts}, action: delete, period: P1Y}]", None,
     f"{BASE}.rules[0].start: the start is the record field 'ts', but the collection declares no 'format'"),
    ("rules: [{name: r, start: {basis: record}, action: delete, period: P1Y}]", "jsonl",
     "basis 'record' needs 'name'"),
    ("rules: [{name: r, start: {basis: record, name: ts}, action: lock, period: P1Y}]", "jsonl",
     f"{BASE}.rules[0].stages[0]: records counted from a record field are deleted one by one; a 'lock' stage"),
    ("rules: [{name: r, start: {basis: key_date}, action: anonymize, period: P1Y, mask: {ip: {strategy: "
     "truncate_ip}}}]", "parquet",
     f"{BASE}.rules[0].stages[0]: an 'anonymize' stage rewrites text line by line, which would break parquet"),
    ("format: xml", None, "format"),
])
def test_what_cannot_work_is_refused(extra, fmt, problem):
    with pytest.raises(PolicyError, match="^test-policy.yaml: .*" + re.escape(problem)):
        s3_policy(events(extra, fmt))


def test_format_on_a_sql_collection_is_refused():
    from tests.policy_text import sql_system

    crm = sql_system("crm", "crm_db", """\
      leads:
        table: leads
        primary_key: id
        columns: [id]
        format: csv
""")
    with pytest.raises(PolicyError, match=re.escape("systems.crm.collections.leads.format: 'format' describes "
                                                    "records inside S3 objects")):
        s3_policy(events(""), crm)


def test_the_deletion_concept_describes_a_record_start():
    from include.retention.concept import concept_rows
    from include.retention.describe import start_text

    policy = s3_policy(events("""\
identities: {email: "record:email"}
rules:
  - {name: events, start: {basis: record, name: ts}, action: delete, period: P12M}"""))
    assert start_text(policy.collection("objects.events").rules[0].start) == (
        "the time in each record's field ts (records inside the objects)")
    assert "the time in each record's field ts" in str(concept_rows(policy))
