"""Discovery findings, kept in the registry's database (the ledger's connection): names and numbers only.

One row per finding id (``Finding.finding_id``: system, place, kind), with first / last seen, status and who
decided it. ``open`` until a person decides: ``mapped`` (the data map will declare it: a later run that still
sees it opens it again), ``ignored`` or ``not_personal`` (with a reason); ``resolved`` when a run no longer
sees an open or mapped one. The last seen types of declared columns live beside them (``type_changed``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from include.retention.clock import utcnow
from include.retention.discovery import LINEAGE_KINDS, Finding, Report
from include.retention.errors import RetentionError

STATUSES = ("open", "mapped", "ignored", "not_personal", "resolved")
DECISIONS = {"map": "mapped", "ignore": "ignored", "not personal": "not_personal"}
UNSEEN = ("open", "mapped")  # statuses a run that no longer sees the finding resolves

metadata = sa.MetaData()
findings = sa.Table(
    "discovery_findings", metadata,
    sa.Column("finding_id", sa.String(20), primary_key=True),
    sa.Column("system", sa.String(100), nullable=False, index=True),
    sa.Column("collection", sa.String(500), nullable=False),
    sa.Column("column_name", sa.String(300), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("classifier", sa.String(64), nullable=False),
    sa.Column("hit_rate", sa.Float, nullable=False),
    sa.Column("sample_size", sa.Integer, nullable=False),
    sa.Column("detail", sa.String(500), nullable=False),
    sa.Column("first_seen", sa.DateTime, nullable=False),
    sa.Column("last_seen", sa.DateTime, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("decided_by", sa.String(250)),
    sa.Column("decided_at", sa.DateTime),
    sa.Column("reason", sa.String(2000)),
)
column_types = sa.Table(
    "discovery_column_types", metadata,
    sa.Column("system", sa.String(100), primary_key=True),
    sa.Column("place", sa.String(600), primary_key=True),  # table.column
    sa.Column("type_name", sa.String(200), nullable=False),
)
lineage_reads = sa.Table(  # how far the lineage event file was read (include/retention/lineage.py)
    "discovery_lineage_reads", metadata,
    sa.Column("source", sa.String(64), primary_key=True),  # sha256 of the file's path (any length fits a key)
    sa.Column("file_id", sa.String(100), nullable=False),
    sa.Column("byte_offset", sa.BigInteger, nullable=False),
    sa.Column("skipping", sa.Boolean, nullable=False),
    sa.Column("read_at", sa.DateTime, nullable=False),
)


class FindingStore:
    def __init__(self, engine: sa.Engine):
        self.engine = engine
        self._ready = False

    def ensure_schema(self) -> None:
        if not self._ready:
            metadata.create_all(self.engine, checkfirst=True)
            self._ready = True

    def previous_types(self, system: str) -> dict[str, str]:
        self.ensure_schema()
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(column_types.c.place, column_types.c.type_name)
                                .where(column_types.c.system == system))
            return {place: name for place, name in rows}

    def record(self, report: Report, now: dt.datetime | None = None) -> dict[str, int]:
        """Store one system's run: new findings open, seen ones updated (a ``mapped`` one still seen opens
        again), unseen open / mapped ones resolved, the declared columns' types kept for the next run.
        Lineage findings are left to lineage: a discovery run does not resolve them, and a lineage report
        (newly read events only) resolves nothing and keeps no types."""
        self.ensure_schema()
        now = (now or utcnow()).replace(tzinfo=None)
        counts = {"new": 0, "seen": 0, "reopened": 0, "resolved": 0}
        by_id = {f.finding_id: f for f in report.findings}
        with self.engine.begin() as conn:
            rows = conn.execute(sa.select(findings.c.finding_id, findings.c.status, findings.c.kind)
                                .where(findings.c.system == report.system)).all()
            known = {r.finding_id: r.status for r in rows}
            resolvable = set() if report.lineage else {r.finding_id for r in rows if r.kind not in LINEAGE_KINDS}
            for fid, f in by_id.items():
                values = {"collection": f.collection, "column_name": f.column, "kind": f.kind,
                          "classifier": f.classifier, "hit_rate": f.hit_rate, "sample_size": f.sample_size,
                          "detail": f.detail[:500], "last_seen": now}
                if fid not in known:
                    conn.execute(findings.insert().values(finding_id=fid, system=f.system, first_seen=now,
                                                          status="open", **values))
                    counts["new"] += 1
                    continue
                if known[fid] in ("mapped", "resolved"):
                    values.update(status="open")
                    counts["reopened"] += 1
                conn.execute(findings.update().where(findings.c.finding_id == fid).values(**values))
                counts["seen"] += 1
            gone = [fid for fid, status in known.items() if fid not in by_id and status in UNSEEN
                    and fid in resolvable]
            if gone:
                conn.execute(findings.update().where(findings.c.finding_id.in_(gone)).values(status="resolved"))
                counts["resolved"] = len(gone)
            if report.lineage:
                return counts
            conn.execute(column_types.delete().where(column_types.c.system == report.system))
            if report.types:
                conn.execute(column_types.insert(), [{"system": report.system, "place": p, "type_name": t[:200]}
                                                     for p, t in report.types.items()])
        return counts

    def lineage_position(self, source: str) -> tuple[str, int, bool]:
        """(file id, byte offset, skipping an over-long line) of the last read of ``source``; ('', 0, False)
        before the first."""
        self.ensure_schema()
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(lineage_reads.c.file_id, lineage_reads.c.byte_offset,
                                         lineage_reads.c.skipping).where(lineage_reads.c.source == _key(source))
                               ).first()
        return (row.file_id, int(row.byte_offset), bool(row.skipping)) if row else ("", 0, False)

    def save_lineage_position(self, source: str, file_id: str, offset: int, skipping: bool,
                              now: dt.datetime | None = None) -> None:
        self.ensure_schema()
        values = {"file_id": file_id[:100], "byte_offset": offset, "skipping": skipping,
                  "read_at": (now or utcnow()).replace(tzinfo=None)}
        key = _key(source)
        with self.engine.begin() as conn:  # one drift run at a time (max_active_runs=1): no concurrent first read
            if conn.execute(sa.select(lineage_reads.c.source).where(lineage_reads.c.source == key)).first():
                conn.execute(lineage_reads.update().where(lineage_reads.c.source == key).values(**values))
            else:
                conn.execute(lineage_reads.insert().values(source=key, **values))

    def decide(self, finding_id: str, decision: str, decided_by: str, reason: str | None = None,
               now: dt.datetime | None = None) -> dict[str, Any]:
        """Record a person's decision (``map`` / ``ignore`` / ``not personal``); returns the finding after it."""
        if decision not in DECISIONS:
            raise RetentionError(f"decision {decision!r} on finding {finding_id}: expected one of "
                                 f"{', '.join(DECISIONS)}")
        if decision == "ignore" and not (reason or "").strip():
            raise RetentionError(f"finding {finding_id}: 'ignore' needs a reason")
        self.ensure_schema()
        with self.engine.begin() as conn:
            done = conn.execute(findings.update().where(findings.c.finding_id == finding_id).values(
                status=DECISIONS[decision], decided_by=decided_by[:250], reason=(reason or None) and reason[:2000],
                decided_at=(now or utcnow()).replace(tzinfo=None))).rowcount
        if not done:
            raise RetentionError(f"no discovery finding {finding_id!r}")
        return self.get(finding_id)

    def get(self, finding_id: str) -> dict[str, Any]:
        self.ensure_schema()
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(findings).where(findings.c.finding_id == finding_id)).mappings().first()
        if row is None:
            raise RetentionError(f"no discovery finding {finding_id!r}")
        return dict(row)

    def listing(self, *, statuses: Iterable[str] = ("open",), systems: Iterable[str] | None = None
                ) -> list[dict[str, Any]]:
        """Findings of ``statuses`` (none while discovery never ran: the table is not created by reading)."""
        if not self._ready and not sa.inspect(self.engine).has_table(findings.name):
            return []
        query = sa.select(findings).where(findings.c.status.in_(list(statuses)))
        if systems is not None:
            query = query.where(findings.c.system.in_(list(systems)))
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(findings.c.system, findings.c.collection, findings.c.column_name,
                                               findings.c.kind)).mappings().all()
        return [dict(r) for r in rows]

    def open_findings(self, systems: Iterable[str] | None = None) -> list[dict[str, Any]]:
        return self.listing(systems=systems)


def _key(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


def place(row: dict[str, Any]) -> str:
    """``system.collection.column`` of a stored finding (names only)."""
    return f"{row['system']}.{row['collection']}" + (f".{row['column_name']}" if row["column_name"] else "")


def as_finding(row: dict[str, Any]) -> Finding:
    return Finding(row["system"], row["collection"], row["column_name"], row["kind"], row["classifier"],
                   row["hit_rate"], row["sample_size"], row["detail"])
