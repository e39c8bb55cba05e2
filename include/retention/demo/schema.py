"""Tables of the demo CRM and mailing-list databases (SQLAlchemy Core, portable).

The same definitions create the tables on PostgreSQL, MariaDB/MySQL and SQLite:
integer keys, bounded strings, naive UTC timestamps. There are no database-level
foreign keys on purpose: the retention store deletes children before parents as the
policy's references say, and a constraint would hide a wrong data map. Every column
a retention rule counts from, every identity column and every reference column is
indexed, so sweeps and subject look-ups are range or equality scans.
"""

from __future__ import annotations

import sqlalchemy as sa

crm_metadata = sa.MetaData()
mailing_metadata = sa.MetaData()

EMAIL = 254
NAME = 200
REASON = 200  # the store truncates lock reasons to this length
S3_KEY = 512


def _pk() -> sa.Column:
    return sa.Column("id", sa.Integer, primary_key=True, autoincrement=True)


def _flag(name: str) -> sa.Column:
    return sa.Column(name, sa.Boolean, nullable=False, default=False, server_default=sa.false())


def _restriction() -> list[sa.Column]:
    """Art. 18 lock marker: when a row was restricted and why."""
    return [
        sa.Column("restricted_at", sa.DateTime, nullable=True),
        sa.Column("restriction_reason", sa.String(REASON), nullable=True),
    ]


def _indexes(table: str, *columns: str) -> list[sa.Index]:
    return [sa.Index(f"ix_{table}_{column}", column) for column in columns]


# ---- CRM ----------------------------------------------------------------------------------

contacts = sa.Table(
    "contacts",
    crm_metadata,
    _pk(),
    sa.Column("email", sa.String(EMAIL), nullable=False),
    sa.Column("phone", sa.String(32), nullable=True),
    sa.Column("full_name", sa.String(NAME), nullable=False),
    sa.Column("birth_date", sa.Date, nullable=True),
    _flag("is_minor"),
    _flag("legal_hold"),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("last_contact_at", sa.DateTime, nullable=False),
    *_restriction(),
    sa.Column("anonymized_at", sa.DateTime, nullable=True),
    # when a sweep first found nothing referring to the contact (crm.contacts.orphaned stamps and clears it)
    sa.Column("orphaned_since", sa.DateTime, nullable=True),
    # Deliberately NOT in config/policy.yaml: a column a team added without updating the data map. The
    # data_map_drift DAG finds it (`make demo` prints the finding; docs/adr/0020).
    sa.Column("secondary_email", sa.String(EMAIL), nullable=True),
    *_indexes("contacts", "email", "phone", "created_at", "last_contact_at", "orphaned_since"),
)

inquiries = sa.Table(
    "inquiries",
    crm_metadata,
    _pk(),
    sa.Column("contact_id", sa.Integer, nullable=False),
    sa.Column("email", sa.String(EMAIL), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    # S3 key in bucket crm-attachments, e.g. inquiries/17/file.pdf
    sa.Column("attachment_key", sa.String(S3_KEY), nullable=True),
    sa.Column("last_contact_at", sa.DateTime, nullable=False),
    _flag("legal_hold"),
    *_restriction(),
    *_indexes("inquiries", "contact_id", "email", "last_contact_at"),
)

leads = sa.Table(
    "leads",
    crm_metadata,
    _pk(),
    sa.Column("contact_id", sa.Integer, nullable=False),
    sa.Column("email", sa.String(EMAIL), nullable=False),
    sa.Column("company", sa.String(NAME), nullable=True),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("last_activity_at", sa.DateTime, nullable=False),
    _flag("legal_hold"),
    *_restriction(),
    *_indexes("leads", "contact_id", "email", "last_activity_at"),
)

applicants = sa.Table(
    "applicants",
    crm_metadata,
    _pk(),
    sa.Column("contact_id", sa.Integer, nullable=False),
    sa.Column("email", sa.String(EMAIL), nullable=False),
    sa.Column("full_name", sa.String(NAME), nullable=False),
    # S3 key of the CV, e.g. cvs/17/cv.pdf
    sa.Column("cv_key", sa.String(S3_KEY), nullable=True),
    sa.Column("recruitment_closed_at", sa.DateTime, nullable=True),
    _flag("future_consent"),
    _flag("legal_hold"),
    *_restriction(),
    *_indexes("applicants", "contact_id", "email", "recruitment_closed_at"),
)

support_tickets = sa.Table(
    "support_tickets",
    crm_metadata,
    _pk(),
    sa.Column("contact_id", sa.Integer, nullable=False),
    sa.Column("email", sa.String(EMAIL), nullable=False),
    sa.Column("subject", sa.String(300), nullable=False),
    sa.Column("closed_at", sa.DateTime, nullable=True),
    _flag("legal_hold"),
    *_restriction(),
    *_indexes("support_tickets", "contact_id", "email", "closed_at"),
)

client_accounts = sa.Table(
    "client_accounts",
    crm_metadata,
    _pk(),
    sa.Column("org_name", sa.String(NAME), nullable=False),
    sa.Column("admin_email", sa.String(EMAIL), nullable=False),
    sa.Column("user_email", sa.String(EMAIL), nullable=False),
    sa.Column("user_name", sa.String(NAME), nullable=False),
    sa.Column("customer_ref", sa.String(64), nullable=True),  # the account's customer number
    sa.Column("contract_end_at", sa.DateTime, nullable=True),
    _flag("legal_hold"),
    *_restriction(),
    sa.Column("anonymized_at", sa.DateTime, nullable=True),
    *_indexes("client_accounts", "admin_email", "user_email", "contract_end_at"),
)

social_messages = sa.Table(
    "social_messages",
    crm_metadata,
    _pk(),
    sa.Column("handle", sa.String(100), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("received_at", sa.DateTime, nullable=False, server_default=sa.func.current_timestamp()),
    sa.Column("answered_at", sa.DateTime, nullable=True),
    _flag("legal_hold"),
    *_restriction(),
    *_indexes("social_messages", "handle", "received_at", "answered_at"),
)

# ---- mailing list ---------------------------------------------------------------------------

subscribers = sa.Table(
    "subscribers",
    mailing_metadata,
    _pk(),
    sa.Column("email", sa.String(EMAIL), nullable=False),
    sa.Column("subscribed_at", sa.DateTime, nullable=False),
    sa.Column("unsubscribed_at", sa.DateTime, nullable=True),
    # last open or click; NULL: never engaged
    sa.Column("last_engaged_at", sa.DateTime, nullable=True),
    _flag("legal_hold"),
    sa.Column("anonymized_at", sa.DateTime, nullable=True),
    *_restriction(),
    *_indexes("subscribers", "email", "subscribed_at", "unsubscribed_at", "last_engaged_at"),
)

list_memberships = sa.Table(
    "list_memberships",
    mailing_metadata,
    _pk(),
    sa.Column("subscriber_id", sa.Integer, nullable=False),
    sa.Column("list_name", sa.String(100), nullable=False),
    sa.Column("joined_at", sa.DateTime, nullable=False),
    *_indexes("list_memberships", "subscriber_id"),
)

campaign_events = sa.Table(
    "campaign_events",
    mailing_metadata,
    _pk(),
    sa.Column("subscriber_id", sa.Integer, nullable=False),
    sa.Column("campaign", sa.String(100), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # 'open' or 'click'
    sa.Column("occurred_at", sa.DateTime, nullable=False),
    sa.Column("ip_address", sa.String(45), nullable=True),
    # set when the IP address was masked by retention
    sa.Column("anonymized_at", sa.DateTime, nullable=True),
    *_indexes("campaign_events", "subscriber_id", "occurred_at"),
)


def create_crm(engine: sa.Engine) -> None:
    """Create the CRM tables that do not exist yet."""
    crm_metadata.create_all(engine, checkfirst=True)


def create_mailing(engine: sa.Engine) -> None:
    """Create the mailing-list tables that do not exist yet."""
    mailing_metadata.create_all(engine, checkfirst=True)


def drop_crm(engine: sa.Engine) -> None:
    """Drop the CRM tables that exist."""
    crm_metadata.drop_all(engine, checkfirst=True)


def drop_mailing(engine: sa.Engine) -> None:
    """Drop the mailing-list tables that exist."""
    mailing_metadata.drop_all(engine, checkfirst=True)
