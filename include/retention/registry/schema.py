"""The registry's tables and constants, and creating them once per registry (safe when several first runs do
it at the same time)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from include.retention.ledger import create_schema

# Kinds with a digest column of their own in subject_requests (others: request_digests).
DIGEST_COLUMNS = ("email", "phone", "customer_ref")
# Text fields of a request besides identities: longest accepted value.
TEXT_LIMITS = {"external_ref": 100, "note": 2000}
OPEN_STATUSES = ("pending", "in_progress", "incomplete")
NAMESPACE = uuid.UUID("8f6d8a52-1b7c-4c5e-9a4e-2f1f0b6c9d11")

metadata = sa.MetaData()

requests = sa.Table(
    "subject_requests",
    metadata,
    sa.Column("request_id", sa.String(36), primary_key=True),
    sa.Column("mode", sa.String(16), nullable=False),  # erase | restrict
    sa.Column("dry_run", sa.Boolean, nullable=False, default=False),
    sa.Column("status", sa.String(16), nullable=False),  # pending | in_progress | incomplete | complete
    sa.Column("source", sa.String(32), nullable=False),  # form | api | intake
    sa.Column("identity_enc", sa.Text, nullable=False),
    sa.Column("email_digest", sa.String(64), index=True),
    sa.Column("phone_digest", sa.String(64), index=True),
    sa.Column("customer_ref_digest", sa.String(64), index=True),
    sa.Column("external_ref_enc", sa.Text),
    sa.Column("note_enc", sa.Text),
    sa.Column("received_at", sa.DateTime, nullable=False),
    sa.Column("due_at", sa.DateTime, nullable=False, index=True),
    sa.Column("completed_at", sa.DateTime),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("last_error", sa.Text),
    sa.Column("dag_id", sa.String(250)),
    sa.Column("run_id", sa.String(250)),
    sa.Column("policy_digest", sa.String(64)),
    sa.Column("key_id", sa.String(16)),  # the key of the digest columns; NULL: written before key ids (k0)
    sa.Index("ix_requests_status", "status", "received_at"),
)

request_systems = sa.Table(
    "request_systems",
    metadata,
    sa.Column("request_id", sa.String(36), primary_key=True),
    sa.Column("system", sa.String(100), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),  # pending | acted | verified | failed
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("counts", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Column("verified_at", sa.DateTime),
)

receipts = sa.Table(
    "request_receipts",
    metadata,
    sa.Column("request_id", sa.String(36), primary_key=True),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("receipt", sa.Text, nullable=False),
)

# Per request, what its type needs besides identities (access: format; rectify: the new values; the identity
# check's decision and reason), as one encrypted JSON document: nothing in it is readable without the key.
request_details = sa.Table(
    "request_details",
    metadata,
    sa.Column("request_id", sa.String(36), primary_key=True),
    sa.Column("details_enc", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)

suppression = sa.Table(
    "suppression_list",
    metadata,
    sa.Column("digest", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("request_id", sa.String(36)),
    sa.Column("added_at", sa.DateTime, nullable=False),
    sa.Column("key_id", sa.String(16)),  # the key of the digest; NULL: written before key ids (k0)
    # the entry's index digest (``identity.index_digest``, what ``lookup: indexed`` columns hold), encrypted with the
    # vault; NULL: listed before it was kept (ADR 0022: enforcement of that kind then reads collections in full)
    sa.Column("lookup_enc", sa.Text),
)


# Per request, each recipient of the data told of it (GDPR Art. 19: docs/adr/0010-notifying-recipients.md): status
# pending | sent | confirmed | waived | failed, the channel's last response (an SMTP or HTTP status, never a body).
RECIPIENT_SETTLED = ("sent", "confirmed", "waived")
request_recipients = sa.Table(
    "request_recipients",
    metadata,
    sa.Column("request_id", sa.String(36), primary_key=True),
    sa.Column("recipient", sa.String(100), primary_key=True),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("systems", sa.Text, nullable=False),  # JSON list
    sa.Column("categories", sa.Text, nullable=False),  # JSON list
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("response", sa.String(200)),
    sa.Column("note", sa.String(500)),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Column("settled_at", sa.DateTime),
)


class Schema:
    """The registry's tables on one engine, created (and missing columns added) once per object."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine
        self._ready = False

    def ensure(self) -> None:
        """Create the tables (and add missing columns) once; safe when several first runs do it at the same time:
        a table, index or column another run created meanwhile is a race to check again, not an error."""
        if self._ready:
            return
        create_schema(self.engine, metadata, self._add_missing_columns, "registry")
        self._ready = True

    def _add_missing_columns(self) -> None:
        """Registries created before key ids lack ``key_id`` (NULL = the one key of then, k0), those created before
        the suppression list kept index digests lack ``lookup_enc`` (NULL = none kept): add them."""
        inspector = sa.inspect(self.engine)
        for table, column, sql_type in ((requests, "key_id", "VARCHAR(16)"), (suppression, "key_id", "VARCHAR(16)"),
                                        (suppression, "lookup_enc", "TEXT")):
            if column not in {c["name"] for c in inspector.get_columns(table.name)}:
                with self.engine.begin() as conn:
                    conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {column} {sql_type}")


def chunks(items: list[Any], size: int = 500) -> Iterable[list[Any]]:
    """Bounded IN lists and multi-row INSERTs: ``size`` items at a time."""
    for i in range(0, len(items), size):
        yield items[i : i + size]
