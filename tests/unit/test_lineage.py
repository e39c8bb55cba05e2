"""include/retention/lineage.py on recorded OpenLineage events: the file read in bounded steps from a remembered
offset (an unfinished last line waits, a rotated file starts over), namespaces mapped to the data map's systems
by their connections, and a declared identity column flowing into an undeclared place a finding, names only."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from include.retention.connections import parse_conn
from include.retention.errors import RetentionError
from include.retention.lineage import (
    Endpoint,
    Position,
    endpoints,
    lineage_findings,
    locate,
    merge_detail,
    read_events,
)
from include.retention.mapping import snippet
from include.retention.policy import parse_policy
from tests.policy_text import crm_policy

RECORDED = Path(__file__).parent / "recorded" / "openlineage_sql_copy.jsonl"  # START, COMPLETE, the DAG's COMPLETE
PG = "postgres://127.0.0.1:5432"

POLICY = parse_policy(crm_policy("""
    contacts:
      table: contacts
      primary_key: id
      columns: [id, email, created_at]
      identities: {email: email}
    archive:
      table: contacts_archive
      primary_key: id
      columns: [id, email]
      identities: {email: email}
""", mailing="""
    subscribers:
      table: subscribers
      primary_key: id
      columns: [id, email]
      identities: {email: email}
"""))
CONNS = {"crm_db": "postgres://postgres@localhost:5432/Crm", "mailing_db": "mysql://root@127.0.0.1:3306/mailing"}


def resolver(conn_id: str):
    if conn_id not in CONNS:
        raise RetentionError(f"connection {conn_id!r} is not defined")
    return parse_conn(CONNS[conn_id])


def recorded() -> list[dict]:
    return [json.loads(line) for line in RECORDED.read_text().splitlines()]


def copy_event(target: str, fields: dict[str, tuple[str, str, str]], schema: list[str] | None,
               event_type: str = "COMPLETE", target_ns: str = PG) -> dict:
    """The recorded COMPLETE event with another output: ``fields`` output column -> (namespace, table, column)."""
    event = copy.deepcopy(recorded()[1])
    event["eventType"] = event_type
    out = event["outputs"][0]
    out["namespace"], out["name"] = target_ns, target
    out["facets"]["columnLineage"]["fields"] = {
        col: {"inputFields": [{"namespace": ns, "name": name, "field": f, "transformations": []}],
              "transformationDescription": "", "transformationType": ""} for col, (ns, name, f) in fields.items()}
    if schema is None:
        del out["facets"]["schema"]
    else:
        out["facets"]["schema"]["fields"] = [{"name": c, "type": "varchar", "fields": []} for c in schema]
    return event


def test_endpoints_from_connections():
    eps, unresolved = endpoints(POLICY, resolver)
    assert eps == [Endpoint("crm", "postgres", "localhost", 5432, "Crm"),
                   Endpoint("mailing", "mysql", "127.0.0.1", 3306, "mailing")]
    assert unresolved == []
    eps, unresolved = endpoints(POLICY, lambda c: resolver(c) if c == "crm_db" else resolver("nope"))
    assert [e.system for e in eps] == ["crm"] and unresolved == ["mailing"]


def test_locate_maps_namespaces_to_systems():
    eps, _ = endpoints(POLICY, resolver)
    crm, mailing = eps
    # 127.0.0.1 is the connection's localhost; the provider lower-cases PostgreSQL's database name
    assert locate(eps, PG, "crm.public.contacts") == (crm, "contacts")
    assert locate(eps, "postgres://localhost", "crm.sales.leads") == (crm, "sales.leads")  # default port
    assert locate(eps, PG, "public.contacts") == (crm, "contacts")  # no database named: the only one there
    assert locate(eps, "mysql://127.0.0.1:3306", "mailing.subscribers") == (mailing, "subscribers")
    assert locate(eps, PG, "other_db.public.contacts") is None  # another database on the same server
    assert locate(eps, "postgres://10.0.0.9:5432", "crm.public.contacts") is None
    assert locate(eps, "mysql://127.0.0.1:3307", "mailing.subscribers") is None
    assert locate(eps, "s3://bucket", "exports/x.csv") is None
    assert locate(eps, "postgres://127.0.0.1:notaport", "crm.public.contacts") is None


def test_recorded_sql_copy_into_an_unmapped_table():
    """The provider's own events of ``INSERT INTO audience (contact_id, addr) SELECT id, email FROM contacts``:
    its SQL parser names the SELECT's columns (``email``), not the target's (``addr``): the finding is the
    table's, saying which column lineage named. The START event and the DAG's event add nothing."""
    eps, _ = endpoints(POLICY, resolver)
    events = recorded()
    assert [e["eventType"] for e in events] == ["START", "COMPLETE", "COMPLETE"]
    found = lineage_findings(POLICY, eps, events)
    assert [(f.system, f.collection, f.column, f.kind, f.classifier, f.hit_rate, f.sample_size, f.detail)
            for f in found] == [("crm", "audience", "", "derived_table", "lineage:email", 0.0, 0,
                                 "derived from crm.contacts.email; the lineage names column email, which the "
                                 "table does not have")]
    assert lineage_findings(POLICY, eps, events[:1]) == []  # START: nothing has flowed yet


def test_column_findings_and_what_is_not_one():
    eps, _ = endpoints(POLICY, resolver)
    src = (PG, "crm.public.contacts", "email")
    events = [
        # aliased: the output column is named
        copy_event("crm.public.audience", {"addr": src, "contact_id": (PG, "crm.public.contacts", "id")},
                   ["contact_id", "addr"]),
        # into a declared table's undeclared column; a second source merges into the same finding
        copy_event("crm.public.contacts_archive", {"email_copy": src}, ["id", "email", "email_copy"]),
        copy_event("crm.public.contacts_archive", {"email_copy": ("mysql://127.0.0.1:3306", "mailing.subscribers",
                                                                  "email")}, ["id", "email", "email_copy"]),
        # into a declared column: mapped, no finding
        copy_event("crm.public.contacts_archive", {"email": src}, ["id", "email"]),
        # a declared table whose every column is declared, the lineage naming a SELECT alias: no finding
        copy_event("crm.public.contacts_archive", {"mail": src}, ["id", "email"]),
        # a column that is not an identity: no finding
        copy_event("crm.public.audience", {"created": (PG, "crm.public.contacts", "created_at")}, ["created"]),
        # a database no system connects to: the source system's finding, the place named by its namespace
        copy_event("warehouse.public.people", {"mail": src}, None, target_ns="postgres://10.0.0.9:5432"),
        # a failed run: nothing flowed
        copy_event("crm.public.failed_copy", {"addr": src}, None, event_type="FAIL"),
    ]
    no_lineage = copy.deepcopy(events[0])
    del no_lineage["outputs"][0]["facets"]["columnLineage"]
    found = lineage_findings(POLICY, eps, [*events, no_lineage, {"eventType": "COMPLETE"}, {}])
    got = sorted((f.system, f.collection, f.column, f.kind, f.detail) for f in found)
    assert got == [
        ("crm", "audience", "addr", "derived_table", "derived from crm.contacts.email"),
        ("crm", "contacts_archive", "email_copy", "derived_column",
         "derived from crm.contacts.email, mailing.subscribers.email"),
        ("crm", "postgres://10.0.0.9:5432/warehouse.public.people", "mail", "derived_table",
         "derived from crm.contacts.email; outside every system of the data map"),
    ]
    # the declared table's new column has a snippet; a new table waits for discovery's sampling (its key)
    column = next(f for f in found if f.kind == "derived_column")
    assert "email_copy" in snippet(POLICY, column) and "email:" in snippet(POLICY, column)
    assert all(snippet(POLICY, f) == "" for f in found if f.kind == "derived_table")


def test_a_later_read_adds_its_sources_to_the_stored_detail():
    assert merge_detail("derived from crm.contacts.email", "derived from mailing.subscribers.email") == (
        "derived from crm.contacts.email, mailing.subscribers.email")
    assert merge_detail("", "derived from crm.contacts.email; outside every system of the data map") == (
        "derived from crm.contacts.email; outside every system of the data map")
    assert merge_detail("derived from crm.contacts.email", "derived from crm.contacts.email") == (
        "derived from crm.contacts.email")


def test_no_system_reachable_no_finding():
    assert lineage_findings(POLICY, [], recorded()) == []


# ---- the file ---------------------------------------------------------------------------------------------

def lines_of(events: list[dict]) -> bytes:
    return b"".join(json.dumps(e).encode() + b"\n" for e in events)


def test_read_remembers_the_offset_and_waits_for_an_unfinished_line(tmp_path):
    path = tmp_path / "openlineage.jsonl"
    events = recorded()
    whole = lines_of(events)
    path.write_bytes(whole[:-40])  # the writer is in the middle of the last event
    first = read_events(str(path), Position())
    assert [e["eventType"] for e in first.events] == ["START", "COMPLETE"]
    assert first.position.offset == len(lines_of(events[:2])) and first.unreadable == 0
    again = read_events(str(path), first.position)
    assert again.events == [] and again.position.offset == first.position.offset
    path.write_bytes(whole)  # finished
    rest = read_events(str(path), first.position)
    assert [e["job"]["name"] for e in rest.events] == ["crm_audience_export"]
    assert rest.position.offset == len(whole) and not rest.restarted


def test_read_is_bounded_and_skips_what_is_not_an_event(tmp_path):
    path = tmp_path / "openlineage.jsonl"
    events = recorded()
    path.write_bytes(lines_of(events[:1]) + b"not json\n" + b"[1, 2]\n" + b'{"x": "' + b"y" * 500 + b'"}\n'
                     + lines_of(events[1:]))
    size = path.stat().st_size
    longest = max(len(json.dumps(e)) for e in events) + 1
    seen, position, steps = [], Position(), 0
    while position.offset < size:
        batch = read_events(str(path), position, max_bytes=longest, max_line=longest)
        assert batch.bytes_read <= longest
        seen += batch.events
        position = batch.position
        steps += 1
        assert steps < 20
    assert [e.get("eventType") for e in seen] == ["START", None, "COMPLETE", "COMPLETE"]  # None: the {"x": ...}
    # a line longer than max_line is skipped, across reads, and counted once
    position, unreadable, seen = Position(), 0, []
    while position.offset < size:
        batch = read_events(str(path), position, max_bytes=300, max_line=300)
        unreadable += batch.unreadable
        seen += batch.events
        position = batch.position
    assert seen == [] and unreadable == 2 + len(events) + 1  # 'not json', '[1, 2]', the long ones


def test_read_starts_over_on_a_rotated_or_truncated_file(tmp_path):
    path = tmp_path / "openlineage.jsonl"
    events = recorded()
    path.write_bytes(lines_of(events))
    done = read_events(str(path), Position()).position
    path.write_bytes(lines_of(events[:1]))  # truncated: shorter than the offset
    batch = read_events(str(path), done)
    assert batch.restarted and [e["eventType"] for e in batch.events] == ["START"]
    os.replace(path, tmp_path / "openlineage.jsonl.1")
    path.write_bytes(lines_of(events))  # rotated: another file, longer than the old offset
    batch = read_events(str(path), batch.position)
    assert batch.restarted and len(batch.events) == 3


def test_missing_file_is_an_error_the_task_reports(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_events(str(tmp_path / "nope.jsonl"), Position())


def test_receipts_name_a_lineage_finding_once():
    """A receipt's unmapped candidates include lineage findings; a place sampling found too is named once."""
    from include.retention.requests.receipts import unmapped_section

    rows = [{"system": "crm", "collection": "audience", "column_name": "addr", "kind": kind}
            for kind in ("derived_table", "unmapped_table")]
    assert unmapped_section(rows, ["crm", "mailing"]) == [{
        "system": "crm", "count": 1, "names": ["crm.audience.addr"],
        "statement": "1 unmapped candidate columns/prefixes were known at the time (crm.audience.addr)"}]
