"""Lineage: a declared identity column flowing into a place the data map does not declare. No Airflow.

Airflow's OpenLineage provider, given the file transport in append mode
(``AIRFLOW__OPENLINEAGE__TRANSPORT='{"type": "file", "log_file_path": "...", "append": true}'``), writes one
JSON event a line; a SQL operator's events carry column lineage (the ``columnLineage`` facet of each output:
output column -> input namespace, table, column), parsed from its SQL. This module reads those lines in
bounded steps from a remembered offset, maps OpenLineage namespaces (``postgres://host:port``,
``mysql://host:port``) to the data map's SQL systems by their connections, and turns every flow from a
declared identity column into a column or table the data map does not declare into a ``Finding``
(``derived_column`` / ``derived_table``, "derived from crm.contacts.email"): names only, before any sampling
(docs/adr/0020-discovery-of-unmapped-personal-data.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from include.retention.connections import ConnInfo, Resolver
from include.retention.discovery import Finding, declared_columns, declared_tables
from include.retention.errors import RetentionError
from include.retention.policy import Policy
from include.retention.settings import settings
from include.retention.stores.kinds import holds_rows

LINEAGE_FILE_ENV = "RETENTION_LINEAGE_FILE"  # the file transport's log_file_path; unset: no lineage is read
MAX_BYTES_PER_RUN = 16 * 1024 * 1024         # read at most this much of the file per run; the rest next run
MAX_LINE_BYTES = 4 * 1024 * 1024             # a longer line is skipped (counted), never held whole

# OpenLineage's namespace schemes -> the data map's SQL dialects; default ports as the provider's hooks use
_SCHEMES = {"postgres": "postgres", "postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}
_DEFAULT_PORTS = {"postgres": 5432, "mysql": 3306}
_LOCAL = {"localhost", "127.0.0.1", "::1"}
_DEFAULT_SCHEMA = {"postgres": "public"}  # discovery names tables of the default schema without it
# events whose data flowed: a finished run, or a job / dataset event (no eventType) declaring static lineage
_FLOWED = {"COMPLETE", None}


def lineage_file() -> str | None:
    """The configured event file (``RETENTION_LINEAGE_FILE``), or None: lineage is then not read."""
    return (settings().lineage_file or "").strip() or None


# ---- where the data map's systems are, in OpenLineage's names ---------------------------------------------

@dataclass(frozen=True)
class Endpoint:
    """A SQL system's database as OpenLineage names it: ``scheme://host:port``, then ``database.[schema.]table``."""

    system: str
    scheme: str
    host: str
    port: int | None
    database: str

    def serves(self, scheme: str, host: str, port: int | None) -> bool:
        if scheme != self.scheme or (port or _DEFAULT_PORTS.get(scheme)) != (self.port or
                                                                           _DEFAULT_PORTS.get(scheme)):
            return False
        return host == self.host or (host in _LOCAL and self.host in _LOCAL)


def endpoint(system: str, info: ConnInfo) -> Endpoint | None:
    """A connection's place in OpenLineage's naming (None: a kind lineage does not name, e.g. SQLite)."""
    scheme = _SCHEMES.get(info.conn_type.lower())
    if scheme is None or not info.host or not info.schema:
        return None
    return Endpoint(system, scheme, info.host.lower(), info.port, info.schema)


def endpoints(policy: Policy, resolver: Resolver) -> tuple[list[Endpoint], list[str]]:
    """The data map's SQL systems as endpoints, and the systems whose connection could not be resolved."""
    out, unresolved = [], []
    for name, spec in policy.systems.items():
        if not holds_rows(policy, name):
            continue
        try:
            ep = endpoint(name, resolver(spec.connection))
        except RetentionError:
            unresolved.append(name)
            continue
        if ep is not None:
            out.append(ep)
    return out, unresolved


def _split_namespace(namespace: str) -> tuple[str, str, int | None] | None:
    parts = urlsplit(namespace)
    scheme = _SCHEMES.get(parts.scheme.lower())
    try:
        port = parts.port
    except ValueError:
        return None
    if scheme is None or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port


def locate(eps: Iterable[Endpoint], namespace: str, name: str) -> tuple[Endpoint, str] | None:
    """(endpoint, table as discovery names it: ``table`` or ``schema.table``) of an OpenLineage dataset, or
    None when no system of the data map holds it."""
    parts = _split_namespace(namespace)
    if parts is None:
        return None
    scheme, host, port = parts
    names = name.split(".")
    serving = [ep for ep in eps if ep.serves(scheme, host, port)]
    if scheme == "postgres" and len(names) == 3:
        database, schema, table = names
    elif scheme == "postgres" and len(names) == 2 and len(serving) == 1:  # no database named: the one there
        (database, schema, table) = (serving[0].database, *names)
    elif scheme == "mysql" and len(names) == 2:  # MySQL's schema is its database
        database, schema, table = names[0], None, names[1]
    else:
        return None
    for ep in serving:  # the provider lower-cases PostgreSQL's names
        if ep.database == database or (scheme == "postgres" and ep.database.lower() == database):
            ref = table if schema in (None, _DEFAULT_SCHEMA.get(scheme)) else f"{schema}.{table}"
            return ep, ref
    return None


# ---- reading the event file in bounded steps ---------------------------------------------------------------

@dataclass
class Position:
    """How far the file was read: a byte offset, the file it was taken in (device:inode), and whether the
    next read starts inside an over-long line that is being skipped."""

    offset: int = 0
    file_id: str = ""
    skipping: bool = False


@dataclass
class Batch:
    events: list[dict[str, Any]] = field(default_factory=list)
    position: Position = field(default_factory=Position)
    bytes_read: int = 0
    unreadable: int = 0   # lines that were not a JSON object, or longer than MAX_LINE_BYTES
    restarted: bool = False  # the file was replaced or truncated since the last read: read from its start


def file_id(path: str) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def read_events(path: str, since: Position, max_bytes: int = MAX_BYTES_PER_RUN,
                max_line: int = MAX_LINE_BYTES) -> Batch:
    """The complete JSON lines after ``since`` (about ``max_bytes``: whole lines, at least one), and the
    position after the last of them. A last line without its newline is being written: it is left for the next
    read. No more than ``max_line + 1`` bytes are held at once."""
    batch = Batch(position=Position(since.offset, since.file_id, since.skipping))
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        current = f"{st.st_dev}:{st.st_ino}"
        if (since.file_id and current != since.file_id) or st.st_size < since.offset:
            batch.position = Position(0, current, False)  # rotated or truncated: its events are new
            batch.restarted = True
        batch.position.file_id = current
        fh.seek(batch.position.offset)
        while True:
            line = fh.readline(max_line + 1)
            complete = line.endswith(b"\n")
            if not line or (not complete and len(line) <= max_line):
                break  # the end, or the writer's last, unfinished line: read it next time
            if batch.bytes_read and batch.bytes_read + len(line) > max_bytes:
                break  # this run's share is read; the rest is the next run's
            batch.bytes_read += len(line)
            batch.position.offset += len(line)
            if batch.position.skipping or not complete:
                # a line longer than max_line: skipped up to its newline (across reads), counted once
                if not batch.position.skipping:
                    batch.unreadable += 1
                batch.position.skipping = not complete
                continue
            try:
                event = json.loads(line)
            except ValueError:
                batch.unreadable += 1
                continue
            if isinstance(event, dict):
                batch.events.append(event)
            else:
                batch.unreadable += 1
    return batch


# ---- column lineage -> findings ---------------------------------------------------------------------------

@dataclass
class _Flow:
    finding: Finding
    sources: set[str] = field(default_factory=set)
    note: str = ""


def _column_lineage(dataset: dict[str, Any]) -> dict[str, Any]:
    facet = (dataset.get("facets") or {}).get("columnLineage") or {}
    fields = facet.get("fields") if isinstance(facet, dict) else None
    return fields if isinstance(fields, dict) else {}


def _schema_columns(dataset: dict[str, Any]) -> set[str] | None:
    facet = (dataset.get("facets") or {}).get("schema") or {}
    fields = facet.get("fields") if isinstance(facet, dict) else None
    if not isinstance(fields, list):
        return None
    return {f["name"] for f in fields if isinstance(f, dict) and isinstance(f.get("name"), str)}


def lineage_findings(policy: Policy, eps: list[Endpoint], events: Iterable[dict[str, Any]]) -> list[Finding]:
    """Every output column (or table) the data map does not declare that an event's column lineage derives
    from a declared identity column. One finding per place and kind, naming every source seen."""
    identities: dict[tuple[str, str], dict[str, tuple[str, str]]] = {}  # (system, table) -> column -> (coll, kind)
    tables: dict[str, dict[str, Any]] = {}
    for ep in eps:
        tables[ep.system] = declared_tables(policy, ep.system)
        for ref, (coll_name, coll) in tables[ep.system].items():
            identities[(ep.system, ref)] = {col: (coll_name, kind) for kind, col in coll.identity_columns()}
    flows: dict[str, _Flow] = {}
    for event in events:
        if event.get("eventType") not in _FLOWED:
            continue
        for output in event.get("outputs") or []:
            if not isinstance(output, dict):
                continue
            lineage = _column_lineage(output)
            if not lineage:
                continue
            target = locate(eps, str(output.get("namespace", "")), str(output.get("name", "")))
            columns = _schema_columns(output)
            for out_col, spec in lineage.items():
                for src in (spec or {}).get("inputFields") or []:
                    if not isinstance(src, dict):
                        continue
                    source = locate(eps, str(src.get("namespace", "")), str(src.get("name", "")))
                    if source is None:
                        continue
                    src_ep, src_ref = source
                    known = identities.get((src_ep.system, src_ref), {}).get(str(src.get("field", "")))
                    if known is None:
                        continue
                    coll_name, kind = known
                    _add(flows, tables, target, output, columns, str(out_col), src_ep.system,
                         f"{src_ep.system}.{coll_name}.{src.get('field')}", kind)
    out = []
    for flow in flows.values():
        f = flow.finding
        detail = f"derived from {', '.join(sorted(flow.sources))}" + flow.note
        out.append(Finding(f.system, f.collection, f.column, f.kind, f.classifier, detail=detail[:500]))
    return out


def _add(flows: dict[str, _Flow], tables: dict[str, dict[str, Any]],
         target: tuple[Endpoint, str] | None, output: dict[str, Any], columns: set[str] | None, out_col: str,
         src_system: str, source: str, kind: str) -> None:
    classifier = f"lineage:{kind}"
    note = ""
    if target is None:  # a database no system of the data map connects to: the finding is the source's
        place = f"{output.get('namespace')}/{output.get('name')}"[:500]
        finding = Finding(src_system, place, out_col, "derived_table", classifier)
        note = "; outside every system of the data map"
    else:
        ep, ref = target
        declared = tables[ep.system].get(ref)
        named = columns is None or out_col in columns  # the SQL parser names SELECT columns, not always targets
        column = out_col if named else ""
        if not named:
            note = f"; the lineage names column {out_col}, which the table does not have"
        if declared is None:
            finding = Finding(ep.system, ref, column, "derived_table", classifier)
        else:
            known = declared_columns(declared[1])
            if named and out_col in known:
                return
            if not named and columns is not None and columns <= known:
                return  # every column the table has is declared
            finding = Finding(ep.system, ref, column, "derived_column", classifier)
    flow = flows.setdefault(finding.finding_id, _Flow(finding, note=note))
    flow.sources.add(source)


def merge_detail(before: str, now: str) -> str:
    """A stored lineage finding's detail with a new read's: every source either names (a read sees only the
    events written since the last one)."""
    def sources(detail: str) -> tuple[list[str], str]:
        head, _, note = detail.partition("; ")
        if not head.startswith("derived from "):
            return [], ""
        return head.removeprefix("derived from ").split(", "), note

    old, _ = sources(before)
    new, note = sources(now)
    if not new:
        return now
    merged = f"derived from {', '.join(sorted(set(old) | set(new)))}" + (f"; {note}" if note else "")
    return merged[:500]
