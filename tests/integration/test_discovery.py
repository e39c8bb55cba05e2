"""Discovery on PostgreSQL, MariaDB (default collation) and SQLite: exactly the personal data the data map
misses is found, with classifier, hit rate and sample size, and nothing else; no sampled value leaves."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from include.retention.classify import classify, name_hint
from include.retention.connections import make_engine
from include.retention.discovery import Finding, discover_sql, sample_column
from include.retention.policy import parse_policy
from tests.conftest import fresh_tables
from tests.policy_text import crm_policy

pytestmark = pytest.mark.integration

POLICY = crm_policy("""
    contacts:
      table: contacts
      primary_key: id
      columns: [id, email, created_at, fax_note]
      identities: {email: email}
    old_exports:
      table: old_exports
      primary_key: id
      columns: [id]
""")

EMAILS = ["anna.kowalska@example.org", "bob@example.com", "carla+news@example.net", "dmitri@example.de",
          "eve@mail.example.org", "frank@example.io"]
PHONES = ["+48 601 234 567", "0049 30 1234567", "030 123 45 67", "+1 (212) 555-0101", "+44 20 7946 0958",
          "06 12 34 56 78"]
IPS = ["203.0.113.7", "198.51.100.23", "2001:db8::17", "192.0.2.200", "2001:db8:85a3::8a2e:370:7334",
       "10.11.12.13"]

metadata = sa.MetaData()
contacts = sa.Table(
    "contacts", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("email", sa.String(254)),
    sa.Column("created_at", sa.DateTime),
    sa.Column("secondary_contact", sa.String(40)),  # new, undeclared: phones (no name hint: content only)
    sa.Column("score", sa.Integer),                 # new, undeclared, not text: nothing
    sa.Column("sku", sa.String(20)),                # new, undeclared, text, nothing personal
    # fax_note: declared, dropped
)
contacts_copy = sa.Table(  # undeclared table holding e-mails
    "contacts_copy", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("addr", sa.String(254)),
    sa.Column("remark", sa.Text),
)
events = sa.Table(  # undeclared table, a JSON-ish text column holding IPs, and a column named email without any
    "events", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("payload", sa.Text),
    sa.Column("email", sa.String(10)),
    sa.Column("happened_on", sa.String(10)),
)


def seed(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(contacts.insert(), [
            {"id": i + 1, "email": EMAILS[i] if i != 3 else "n/a", "secondary_contact": PHONES[i], "score": i,
             "sku": f"SKU-{1000 + i}"} for i in range(6)])
        conn.execute(contacts_copy.insert(), [
            {"id": i + 1, "addr": EMAILS[i], "remark": "called back, all fine"} for i in range(6)])
        conn.execute(events.insert(), [
            {"id": i + 1, "payload": json.dumps({"ip": IPS[i], "path": f"/page/{i}"}),
             "email": ["yes", "no"][i % 2], "happened_on": f"2026-0{i + 1}-15"} for i in range(6)])


def test_exact_findings_on_each_database(db_url):
    policy = parse_policy(POLICY)
    engine = fresh_tables(db_url, metadata)
    seed(engine)
    report = discover_sql(policy, "crm", engine)
    got = {(f.collection, f.column, f.kind, f.classifier, f.hit_rate, f.sample_size) for f in report.findings}
    assert got == {
        ("contacts", "secondary_contact", "unmapped_column", "phone", 1.0, 6),
        ("contacts", "fax_note", "missing_column", "", 0.0, 0),
        ("contacts", "email", "bad_identity", "email", round(1 / 6, 4), 6),
        ("contacts_copy", "addr", "unmapped_table", "email", 1.0, 6),
        ("events", "payload", "unmapped_table", "ipv4", round(4 / 6, 4), 6),
        ("events", "email", "unmapped_table", "name:email", 0.0, 6),  # a name hint only: flagged as such
        ("old_exports", "", "missing_table", "", 0.0, 0),
    }
    assert len(report.findings) == len(got)
    text = json.dumps([f.as_dict() for f in report.findings]) + json.dumps(report.summary())
    for value in [*EMAILS, *PHONES, *IPS, "n/a", "SKU-1000"]:
        assert value not in text
    assert report.not_sampled == []
    # a second run: the same ids; a declared column that changed type since is a finding
    again = discover_sql(policy, "crm", engine, previous_types={**report.types, "contacts.email": "INTEGER"})
    assert {f.finding_id for f in report.findings} <= {f.finding_id for f in again.findings}
    changed = [f for f in again.findings if f.kind == "type_changed"]
    assert [(f.collection, f.column) for f in changed] == [("contacts", "email")]
    assert changed[0].detail.startswith("INTEGER -> ")
    engine.dispose()


def test_sampling_is_bounded_and_read_only(db_url):
    engine = fresh_tables(db_url, metadata)
    with engine.begin() as conn:
        conn.execute(contacts_copy.insert(), [{"id": i, "addr": f"p{i}@example.org"} for i in range(1, 1001)])
    from include.retention.discovery import read_only

    with read_only(engine) as conn:
        values = sample_column(conn, contacts_copy, "addr", budget=40)
        assert len(values) == 40
        with pytest.raises(sa.exc.DBAPIError):
            conn.execute(contacts_copy.delete())
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(contacts_copy)).scalar() == 1000
    # key ranges (MariaDB, SQLite) spread over the table, not the first 40 rows
    if engine.dialect.name != "postgresql":
        assert max(int(v[1:].split("@")[0]) for v in values) > 700
    else:  # planner statistics say 1,000 rows: a Bernoulli sample, still at most the budget
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE contacts_copy")
            conn.commit()
        with read_only(engine) as conn:
            sampled = sample_column(conn, contacts_copy, "addr", budget=40)
        assert len(sampled) == 40 and sampled != values
    engine.dispose()


def test_statement_timeout(db_url):
    from include.retention.discovery import read_only

    engine = fresh_tables(db_url, metadata)
    with read_only(engine, timeout_ms=200) as conn:
        if engine.dialect.name == "postgresql":
            with pytest.raises(sa.exc.OperationalError, match="statement timeout"):
                conn.exec_driver_sql("SELECT pg_sleep(3)")
        elif engine.dialect.name == "mysql":
            assert float(conn.exec_driver_sql("SELECT @@max_statement_time").scalar()) == pytest.approx(0.2)
        else:
            from include.retention.discovery import _arm

            _arm(conn, 200)
            with pytest.raises(sa.exc.OperationalError, match="interrupted"):
                conn.exec_driver_sql("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) "
                                     "SELECT count(*) FROM n").scalar()
    with engine.connect() as conn:  # the session is usable again, without the limit
        assert conn.exec_driver_sql("SELECT 1").scalar() == 1
    engine.dispose()


def test_time_budget_names_what_was_not_sampled(tmp_path):
    engine = fresh_tables(f"sqlite:///{tmp_path / 'db.sqlite'}", metadata)
    seed(engine)
    report = discover_sql(parse_policy(POLICY), "crm", engine, seconds=-1)
    assert "contacts_copy.addr" in report.not_sampled and report.columns_sampled == 0
    # a name hint is still reported; nothing else pretends to have been checked
    assert {(f.collection, f.column, f.classifier) for f in report.findings if f.kind == "unmapped_table"} == {
        ("events", "email", "name:email")}


@pytest.mark.parametrize("name,hint", [("secondary_email", "email"), ("eMail", "email"), ("email_digest", None),
                                       ("mobileNumber", "phone"), ("ip_address", "ip"), ("birth_date", "birth_date"),
                                       ("sku", None), ("file_name", None), ("tel", "phone")])
def test_name_hints(name, hint):
    assert name_hint(name) == hint


@pytest.mark.parametrize("values,expected", [
    (["2026-05-01", "2025-12-31"], None),                      # dates of events, not births, not phones
    (["1984-03-02", "02.11.1990"], "birth_date"),
    (["SKU-1000", "order 42"], None),
    (["v1.2.3.4 build", "release 10.0.0.1.5"], None),          # version strings are not IPs
    (["::1", "fe80::1ff:fe23:4567:890a"], "ipv6"),
    (["12:30:45", "a::b::c"], None),
])
def test_classifier_lookalikes(values, expected):
    hit = classify("x", values)
    assert (hit.classifier if hit else None) == expected


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=20))
def test_a_classification_never_carries_a_value(values):
    hit = classify("notes", values)
    if hit is not None:
        assert set(vars(hit)) == {"classifier", "hit_rate", "sample_size"}
        assert isinstance(hit.hit_rate, float) and 0 <= hit.hit_rate <= 1
        assert hit.sample_size == sum(1 for v in values if v.strip())


def test_finding_id_is_stable_and_ignores_the_numbers():
    a = Finding("crm", "contacts", "x", "unmapped_column", "email", 0.5, 10)
    b = Finding("crm", "contacts", "x", "unmapped_column", "phone", 1.0, 200)
    assert a.finding_id == b.finding_id != Finding("crm", "contacts", "y", "unmapped_column").finding_id


def test_other_schemas_and_unsearched_kinds(db_url):
    """PostgreSQL: a table in another schema of the database is read too (MariaDB, SQLite: the connection's
    database only). A declared identity kind no request may carry is a finding of its own."""
    policy = parse_policy(POLICY.replace("identities: {email: email}", "identities: {email: email, phone: "
                                                                         "secondary_contact}")
                          .replace("columns: [id, email, created_at, fax_note]",
                                   "columns: [id, email, created_at, fax_note, secondary_contact]")
                          .replace("version: 1\n", "version: 1\nrequest_fields: [email]\n"))
    engine = fresh_tables(db_url, metadata)
    seed(engine)
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE SCHEMA analytics")
            conn.exec_driver_sql("CREATE TABLE analytics.contacts_copy (id INTEGER PRIMARY KEY, who TEXT)")
            conn.exec_driver_sql("INSERT INTO analytics.contacts_copy VALUES (1, 'anna@example.org'), "
                                 "(2, 'bob@example.org')")
    report = discover_sql(policy, "crm", engine)
    got = {(f.collection, f.column, f.kind, f.classifier) for f in report.findings
           if f.kind in ("unsearched_identity", "unmapped_table") and f.collection != "events"}
    expected = {("contacts", "secondary_contact", "unsearched_identity", "phone"),
                ("contacts_copy", "addr", "unmapped_table", "email")}
    if engine.dialect.name == "postgresql":
        expected.add(("analytics.contacts_copy", "who", "unmapped_table", "email"))
    assert got == expected
    engine.dispose()


@settings(max_examples=80, deadline=None)
@given(st.lists(st.one_of(
    st.uuids().map(str),
    st.binary(min_size=16, max_size=32).map(bytes.hex),
    st.datetimes(min_value=dt.datetime(2015, 1, 1)).map(lambda d: d.isoformat()),
    st.decimals(min_value=0, max_value=10**6, places=2).map(str),
    st.from_regex(r"[A-Z]{2,4}-[0-9]{3,6}", fullmatch=True),
), min_size=1, max_size=30))
def test_lookalikes_are_not_personal(values):
    """Ids, digests, recent timestamps, amounts and order codes: no classifier fires (the name says nothing)."""
    assert classify("col", values) is None


def test_a_column_the_connection_cannot_read_is_named_not_fatal(fresh_database):
    """PostgreSQL: a role without SELECT on one table gets every other finding, and that table's columns named
    as not sampled."""
    import uuid

    url = fresh_database("postgresql", f"rt_{uuid.uuid4().hex[:10]}")
    engine = fresh_tables(url, metadata)
    seed(engine)
    role = f"disc_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
        conn.exec_driver_sql(f"GRANT SELECT ON contacts, events TO {role}")
    limited = make_engine(str(sa.engine.make_url(url).set(username=role)))
    try:
        report = discover_sql(parse_policy(POLICY), "crm", limited)
        assert sorted(report.not_sampled) == ["contacts_copy.addr", "contacts_copy.remark"]
        assert ("contacts", "secondary_contact") in {(f.collection, f.column) for f in report.findings}
    finally:
        limited.dispose()
        with engine.begin() as conn:
            conn.exec_driver_sql(f"REVOKE ALL ON contacts, events FROM {role}")
            conn.exec_driver_sql(f"REVOKE ALL ON SCHEMA public FROM {role}")
            conn.exec_driver_sql(f"DROP ROLE {role}")
        engine.dispose()


def test_an_indexed_identitys_digest_column_is_declared(tmp_path):
    """``lookup: indexed`` adds ``<column>_ndigest`` (keyed digests, ADR 0022): not a finding."""
    policy = parse_policy(POLICY.replace("identities: {email: email}",
                                         "identities: {email: {column: email, lookup: indexed}}"))
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE contacts (id INTEGER PRIMARY KEY, email VARCHAR(254), created_at "
                             "TIMESTAMP, fax_note TEXT, email_ndigest VARCHAR(64))")
        conn.exec_driver_sql("INSERT INTO contacts (id, email, email_ndigest) VALUES (1, 'a@example.org', "
                             "'k1:3f786850e387550fdab836ed7e6dc881de23001b')")
    assert [f.kind for f in discover_sql(policy, "crm", engine).findings] == ["missing_table"]
    assert name_hint("email_ndigest") is None
    engine.dispose()
