"""Findings in the registry's database: first / last seen, decisions, reopening, resolving; and the
data-map snippet that maps a finding, checked by the policy loader."""

from __future__ import annotations

import datetime as dt

import pytest
import yaml

from include.retention.connections import make_engine
from include.retention.discovery import Finding, Report
from include.retention.errors import RetentionError
from include.retention.findings import FindingStore
from include.retention.mapping import snippet
from include.retention.policy import parse_policy
from tests.policy_text import crm_policy

pytestmark = pytest.mark.integration

T0 = dt.datetime(2026, 6, 1, 3, 0)
COPY = Finding("crm", "contacts_copy", "addr", "unmapped_table", "email", 1.0, 6, "key=id columns=id,addr,remark")
PHONE = Finding("crm", "contacts", "secondary_contact", "unmapped_column", "phone", 1.0, 6, "collection crm.contacts")
GONE = Finding("crm", "contacts", "fax_note", "missing_column", detail="declared by crm.contacts")


def test_lifecycle(db_url):
    store = FindingStore(make_engine(db_url))
    assert store.record(Report("crm", [COPY, PHONE, GONE], types={"contacts.email": "VARCHAR(254)"}), T0) == {
        "new": 3, "seen": 0, "reopened": 0, "resolved": 0}
    assert store.previous_types("crm") == {"contacts.email": "VARCHAR(254)"}
    assert [r["column_name"] for r in store.open_findings()] == ["fax_note", "secondary_contact", "addr"]
    store.decide(COPY.finding_id, "map", "dpo", now=T0)
    store.decide(PHONE.finding_id, "ignore", "dpo", "test numbers of the QA team", now=T0)
    with pytest.raises(RetentionError, match="needs a reason"):
        store.decide(GONE.finding_id, "ignore", "dpo", " ")
    with pytest.raises(RetentionError, match="expected one of"):
        store.decide(GONE.finding_id, "delete", "dpo")
    store.decide(GONE.finding_id, "not personal", "dpo", now=T0)
    assert store.open_findings() == []
    later = T0 + dt.timedelta(days=1)
    # still unmapped a day after 'map': open again; ignored stays ignored; not seen: resolved only if open/mapped
    assert store.record(Report("crm", [COPY, PHONE]), later) == {"new": 0, "seen": 2, "reopened": 1,
                                                                  "resolved": 0}
    row = store.get(COPY.finding_id)
    assert (row["status"], row["first_seen"], row["last_seen"]) == ("open", T0, later)
    assert store.get(PHONE.finding_id)["status"] == "ignored"
    assert store.get(GONE.finding_id)["status"] == "not_personal"
    assert store.record(Report("crm", []), later)["resolved"] == 1
    assert store.get(COPY.finding_id)["status"] == "resolved"
    with pytest.raises(RetentionError, match="no discovery finding"):
        store.decide("nope", "map", "dpo")


DERIVED = Finding("crm", "audience", "addr", "derived_table", "lineage:email", detail="derived from crm.contacts.email")


def test_lineage_findings_are_left_to_lineage(db_url):
    """A lineage report holds newly read events only: it resolves nothing and keeps no types; a discovery run
    that does not see a lineage finding (the table is still empty) does not resolve it either."""
    store = FindingStore(make_engine(db_url))
    store.record(Report("crm", [PHONE], types={"contacts.email": "VARCHAR(254)"}), T0)
    assert store.record(Report("crm", [DERIVED], lineage=True), T0) == {"new": 1, "seen": 0, "reopened": 0,
                                                                        "resolved": 0}
    assert store.get(PHONE.finding_id)["status"] == "open"
    assert store.previous_types("crm") == {"contacts.email": "VARCHAR(254)"}
    later = T0 + dt.timedelta(days=1)
    assert store.record(Report("crm", [], types={"contacts.email": "VARCHAR(254)"}), later)["resolved"] == 1
    assert (store.get(PHONE.finding_id)["status"], store.get(DERIVED.finding_id)["status"]) == ("resolved", "open")
    # mapped, then seen flowing into the same undeclared column again: open again
    store.decide(DERIVED.finding_id, "map", "dpo", now=later)
    assert store.record(Report("crm", [DERIVED], lineage=True), later)["reopened"] == 1
    assert store.get(DERIVED.finding_id)["status"] == "open"


def test_lineage_position(db_url):
    store = FindingStore(make_engine(db_url))
    path = "/var/lib/airflow/openlineage/" + "x" * 900 + ".jsonl"  # longer than any key column
    assert store.lineage_position(path) == ("", 0, False)
    store.save_lineage_position(path, "2049:77", 1234, False, now=T0)
    store.save_lineage_position(path, "2049:77", 1234, False, now=T0)  # the same again: still one row
    assert store.lineage_position(path) == ("2049:77", 1234, False)
    store.save_lineage_position(path, "2049:78", 99, True)
    assert store.lineage_position(path) == ("2049:78", 99, True)
    assert store.lineage_position(path + ".1") == ("", 0, False)


POLICY = crm_policy("""
    contacts:
      table: contacts
      primary_key: id
      columns: [id, email, created_at, fax_note]
      identities: {email: email}
""")


def test_snippets_load_and_declare_the_finding():
    policy = parse_policy(POLICY)
    phone = yaml.safe_load(snippet(policy, PHONE))["systems"]["crm"]["collections"]["contacts"]
    assert phone["columns"][-1] == "secondary_contact" and phone["identities"] == {
        "email": "email", "phone": "secondary_contact"}
    table = yaml.safe_load(snippet(policy, COPY))["systems"]["crm"]["collections"]["contacts_copy"]
    assert table == {"table": "contacts_copy", "primary_key": "id", "columns": ["id", "addr", "remark"],
                     "identities": {"email": "addr"}}
    dropped = yaml.safe_load(snippet(policy, GONE))["systems"]["crm"]["collections"]["contacts"]
    assert "fax_note" not in dropped["columns"]
    assert snippet(policy, Finding("crm", "contacts", "email", "bad_identity", "email", 0.2, 5)) == ""
    # a table without a primary key: the loader refuses the snippet, naming the finding
    with pytest.raises(RetentionError, match="crm.heap.x.*primary_key"):
        snippet(policy, Finding("crm", "heap", "x", "unmapped_table", "email", 1.0, 3, "key= columns=x"))


def test_s3_snippets_load():
    from tests.policy_text import policy_text, system

    policy = parse_policy(policy_text(system("objects", "s3", "objects_s3", """
        cvs:
          bucket: plain-bucket
          prefix: cvs/
          identities: {email: "metadata:owner-email"}
    """)))
    meta = Finding("objects", "plain-bucket/cvs/", "metadata:reviewer", "unmapped_metadata", "email", 1.0, 1)
    cvs = yaml.safe_load(snippet(policy, meta))["systems"]["objects"]["collections"]["cvs"]
    assert cvs["identities"] == {"email": ["metadata:owner-email", "metadata:reviewer"]}
    upload = Finding("objects", "plain-bucket/uploads/", "metadata:contact", "unmapped_prefix", "email", 1.0, 1)
    assert yaml.safe_load(snippet(policy, upload))["systems"]["objects"]["collections"] == {
        "plain_bucket_uploads": {"bucket": "plain-bucket", "prefix": "uploads/",
                                 "identities": {"email": "metadata:contact"}}}
    content = Finding("objects", "plain-bucket/exports/", "content", "unmapped_prefix", "email", 0.8, 10)
    assert yaml.safe_load(snippet(policy, content))["systems"]["objects"]["collections"] == {
        "plain_bucket_exports": {"bucket": "plain-bucket", "prefix": "exports/"}}
