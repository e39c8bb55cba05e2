"""Deterministic demo data for the CRM and mailing-list databases.

Ages are spread relative to ``now`` so that every rule of ``config/policy.yaml`` has
rows to act on, rows to keep and rows past their period under legal hold, and no
rule touches more than about a third of its table (the safety brake stops at half).
Generated times keep a few days' distance from every rule's cut-off, so a sweep run
some days after seeding still sees the same counts.

    python -m include.retention.demo.seed --crm-url sqlite:///crm.db --mailing-url sqlite:///mailing.db
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import random
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from dateutil.relativedelta import relativedelta

from include.retention.demo import schema
from include.retention.masking import truncate_ips

log = logging.getLogger(__name__)

CHUNK = 1000
DEFAULT_SEED = 20260101
# Distance kept from every rule's cut-off (see the module docstring).
MARGIN = dt.timedelta(days=5)
LEAD_LOCK_REASON = "retention:crm.leads.inactivity"
ACCOUNT_LOCK_REASON = "retention:crm.client_accounts.contract_end"

FIRST_NAMES = (
    "anna", "piotr", "maria", "tomasz", "katarzyna", "jan", "agnieszka", "michal", "ewa", "pawel",
    "olivia", "liam", "emma", "noah", "sofia", "lucas", "mia", "leon", "hannah", "felix",
    "chloe", "mateo", "ines", "jonas", "elena", "david", "sara", "marek", "julia", "adam",
)
LAST_NAMES = (
    "nowak", "kowalski", "wisniewska", "wojcik", "kaminski", "lewandowska", "zielinski", "szymanska",
    "muller", "schmidt", "fischer", "weber", "meyer", "wagner", "smith", "jones", "taylor", "brown",
    "martin", "bernard", "dubois", "rossi", "russo", "garcia", "lopez", "novak", "horvat", "jensen",
)
COMPANIES = (
    "Northwind Traders", "Contoso Logistics", "Fabrikam Health", "Tailspin Travel", "Wingtip Toys",
    "Adventure Works", "Blue Yonder Air", "Litware Labs", "Proseware Finance", "Woodgrove Retail",
    "Alpine Ski House", "Coho Vineyard", "Humongous Insurance", "Lucerne Publishing", "Margie's Travel",
)
INQUIRY_TEXTS = (
    "Could you send me more details about your {topic} services?",
    "We are looking for a partner for {topic}. Can we schedule a call?",
    "Question about pricing for {topic} for a team of {n} people.",
    "Is it possible to extend our existing {topic} project?",
)
TOPICS = ("mobile app", "web platform", "data pipeline", "cloud migration", "QA automation", "UX audit")
TICKET_SUBJECTS = (
    "Cannot log in", "Invoice question", "Feature request: export to CSV", "Slow dashboard",
    "Password reset e-mail not received", "API rate limit", "Bug in report filters",
)
SOCIAL_TEXTS = (
    "Hi! Are you hiring {topic} developers?", "Loved your blog post on {topic}.",
    "Can you recommend a {topic} case study?", "Do you work with startups on {topic}?",
)
LISTS = ("blog-weekly", "product-news", "engineering", "events")


# ---- helpers -------------------------------------------------------------------------------


def _naive_utc(when: dt.datetime) -> dt.datetime:
    if when.tzinfo is not None:
        when = when.astimezone(dt.UTC).replace(tzinfo=None)
    return when.replace(microsecond=0)


def _person(n: int) -> tuple[str, str, str]:
    """Name and e-mail of person ``n``; the same ``n`` in CRM and mailing list is the same person."""
    first = FIRST_NAMES[(n * 7) % len(FIRST_NAMES)]
    last = LAST_NAMES[(n * 11 + n // len(FIRST_NAMES)) % len(LAST_NAMES)]
    return f"{first.title()} {last.title()}", f"{first}.{last}{n}@example.org", first


def _phone(n: int) -> str:
    # Ofcom's range for fiction (+44 7700 900xxx), widened so numbers stay unique.
    return f"+44 7700 9{n:05d}"


def _ip(rng: random.Random) -> str:
    if rng.random() < 0.15:
        return f"2001:db8:{rng.randint(0, 0xffff):x}::{rng.randint(1, 0xffff):x}"
    net = rng.choice(("192.0.2", "198.51.100", "203.0.113"))
    return f"{net}.{rng.randint(1, 254)}"


def _labels(rng: random.Random, spec: dict[str, int], scale: int) -> list[str]:
    """Bucket labels, ``count * scale`` of each, shuffled."""
    labels = [label for label, count in spec.items() for _ in range(count * scale)]
    rng.shuffle(labels)
    return labels


class _Clock:
    """Times relative to ``now``, picked at random inside a window but away from its edges."""

    def __init__(self, rng: random.Random, now: dt.datetime):
        self.rng = rng
        self.now = now

    def ago(self, **period: int) -> dt.datetime:
        return self.now - relativedelta(**period)

    def between(self, oldest: dt.datetime, newest: dt.datetime) -> dt.datetime:
        lo, hi = oldest + MARGIN, newest - MARGIN
        if lo >= hi:
            return (oldest + (newest - oldest) / 2).replace(microsecond=0)
        return (lo + (hi - lo) * self.rng.random()).replace(microsecond=0)

    def after(self, start: dt.datetime, days: int) -> dt.datetime:
        """A time up to ``days`` after ``start``, never after now."""
        return min(start + dt.timedelta(days=self.rng.uniform(0.5, days)), self.now).replace(microsecond=0)


def _insert(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    for i in range(0, len(rows), CHUNK):
        conn.execute(table.insert(), rows[i:i + CHUNK])


def _fix_sequences(conn: sa.Connection, tables: list[sa.Table]) -> None:
    """Explicit ids do not advance PostgreSQL sequences; move them past the largest id."""
    if conn.dialect.name != "postgresql":
        return
    for table in tables:
        conn.execute(sa.text(
            f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
            f"COALESCE((SELECT MAX(id) FROM {table.name}), 0) + 1, false)"
        ))


def _begin(engine: sa.Engine, now: dt.datetime, seed: int, reset: bool, part: str,
           drop: Callable[[sa.Engine], None], create: Callable[[sa.Engine], None]) -> tuple[random.Random, _Clock]:
    """The part's tables ready (created if missing; dropped first with ``reset``); its generator and clock."""
    if reset:
        drop(engine)
    create(engine)
    rng = random.Random(f"{part}:{seed}")
    return rng, _Clock(rng, _naive_utc(now))


def _write(engine: sa.Engine, metadata: sa.MetaData, rows: dict[str, list[dict[str, Any]]],
           what: str) -> dict[str, int]:
    """Insert ``rows`` (per table of ``metadata``) in one transaction, sequences moved past them; rows per table."""
    with engine.begin() as conn:
        for name, table_rows in rows.items():
            _insert(conn, metadata.tables[name], table_rows)
        _fix_sequences(conn, [metadata.tables[name] for name in rows])
    counts = {name: len(table_rows) for name, table_rows in rows.items()}
    log.info("seeded %s: %s", what, counts)
    return counts


# ---- CRM -----------------------------------------------------------------------------------


def seed_crm(engine: sa.Engine, now: dt.datetime, scale: int = 1, seed: int = DEFAULT_SEED, *,
             reset: bool = False) -> dict[str, int]:
    """Insert demo CRM rows into empty tables (created if missing; dropped first with ``reset``).

    Returns rows per table.
    """
    rng, clock = _begin(engine, now, seed, reset, "crm", schema.drop_crm, schema.create_crm)
    rows = _crm_rows(rng, clock, scale)
    return _write(engine, schema.crm_metadata, rows, "CRM")


def _crm_rows(rng: random.Random, clock: _Clock, scale: int) -> dict[str, list[dict[str, Any]]]:
    contacts, minors_with_held_child = _contacts(rng, clock, scale)
    adults = [c for c in contacts if not c["is_minor"]]
    minors = [c for c in contacts if c["is_minor"]]

    def owner() -> dict[str, Any]:
        # Dependent rows (held ones especially) belong to adults, so exactly the chosen minors
        # are kept back by a held dependent.
        return rng.choice(adults)

    inquiries = _inquiries(rng, clock, scale, owner, minors)
    leads = _leads(rng, clock, scale, owner)
    applicants = _applicants(rng, clock, scale, owner)
    tickets = _tickets(rng, clock, scale, owner, [c for c in minors if c["id"] in minors_with_held_child])
    _settle_contact_times(clock, contacts, [
        (inquiries, "last_contact_at"), (leads, "last_activity_at"),
        (applicants, "recruitment_closed_at"), (tickets, "closed_at"),
    ])
    _stamp_orphans(clock, contacts, [inquiries, leads, applicants, tickets], scale)
    return {
        "contacts": contacts, "inquiries": inquiries, "leads": leads, "applicants": applicants,
        "support_tickets": tickets, "client_accounts": _client_accounts(rng, clock, scale),
        "social_messages": _social_messages(rng, clock, scale),
    }


Owner = Callable[[], dict[str, Any]]


def _inquiries(rng: random.Random, clock: _Clock, scale: int, owner: Owner,
               minors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    now = clock.now
    inquiries: list[dict[str, Any]] = []

    def inquiry(contact: dict[str, Any], last_contact_at: dt.datetime, held: bool) -> None:
        n = len(inquiries) + 1
        inquiries.append({
            "id": n, "contact_id": contact["id"], "email": contact["email"],
            "message": rng.choice(INQUIRY_TEXTS).format(topic=rng.choice(TOPICS), n=rng.randint(2, 40)),
            "attachment_key": f"inquiries/{n}/file.pdf" if rng.random() < 0.4 else None,
            "last_contact_at": last_contact_at, "legal_hold": held,
            "restricted_at": None, "restriction_reason": None,
        })

    for label in _labels(rng, {"expired": 36, "expired_held": 6, "fresh_held": 3, "fresh": 75}, scale):
        held = label.endswith("held")
        if label.startswith("expired"):
            when = clock.between(clock.ago(months=36), clock.ago(months=12))
        else:
            when = clock.between(clock.ago(months=12), now)
        inquiry(owner(), when, held)
    # Every minor reached us through the contact form (deleted with them by crm.contacts.minors).
    for contact in minors:
        inquiry(contact, clock.between(clock.ago(months=6), now), False)
    return inquiries


def _leads(rng: random.Random, clock: _Clock, scale: int, owner: Owner) -> list[dict[str, Any]]:
    now = clock.now
    leads = []
    spec = {"lock": 12, "lock_done": 3, "lock_held": 2, "delete": 5, "delete_locked": 3, "delete_held": 3,
            "fresh": 32}
    for i, label in enumerate(_labels(rng, spec, scale), start=1):
        if label.startswith("lock"):
            when = clock.between(clock.ago(months=36), clock.ago(months=24))
        elif label.startswith("delete"):
            when = clock.between(clock.ago(months=60), clock.ago(months=36))
        else:
            when = clock.between(clock.ago(months=24), now)
        locked = label in ("lock_done", "delete_locked")
        contact = owner()
        leads.append({
            "id": i, "contact_id": contact["id"], "email": contact["email"],
            "company": rng.choice(COMPANIES) if rng.random() < 0.8 else None,
            "description": f"Estimate for a {rng.choice(TOPICS)}, budget {rng.randint(2, 60) * 5}k EUR",
            "last_activity_at": when, "legal_hold": label.endswith("held"),
            "restricted_at": clock.after(when + relativedelta(months=24), 20) if locked else None,
            "restriction_reason": LEAD_LOCK_REASON if locked else None,
        })
    return leads


def _applicants(rng: random.Random, clock: _Clock, scale: int, owner: Owner) -> list[dict[str, Any]]:
    now = clock.now
    applicants = []
    spec = {"open": 8, "recent": 16, "expired": 14, "expired_held": 4,
            "consent_open": 3, "consent_recent": 8, "consent_expired": 5, "consent_expired_held": 2}
    for i, label in enumerate(_labels(rng, spec, scale), start=1):
        consent = label.startswith("consent")
        period = 24 if consent else 6
        if label.endswith("open"):
            closed = None
        elif "expired" in label:
            closed = clock.between(clock.ago(months=period + 24), clock.ago(months=period))
        else:
            closed = clock.between(clock.ago(months=period), now)
        contact = owner()
        applicants.append({
            "id": i, "contact_id": contact["id"], "email": contact["email"], "full_name": contact["full_name"],
            "cv_key": f"cvs/{i}/cv.pdf" if rng.random() < 0.9 else None,
            "recruitment_closed_at": closed, "future_consent": consent, "legal_hold": label.endswith("held"),
            "restricted_at": None, "restriction_reason": None,
        })
    return applicants


def _tickets(rng: random.Random, clock: _Clock, scale: int, owner: Owner,
             minors_with_held_child: list[dict[str, Any]]) -> list[dict[str, Any]]:
    now = clock.now
    tickets: list[dict[str, Any]] = []

    def ticket(contact: dict[str, Any], closed: dt.datetime | None, held: bool) -> None:
        tickets.append({
            "id": len(tickets) + 1, "contact_id": contact["id"], "email": contact["email"],
            "subject": rng.choice(TICKET_SUBJECTS), "closed_at": closed, "legal_hold": held,
            "restricted_at": None, "restriction_reason": None,
        })

    for label in _labels(rng, {"open": 15, "recent": 58, "expired": 22, "expired_held": 5}, scale):
        if label == "open":
            closed = None
        elif label.startswith("expired"):
            closed = clock.between(clock.ago(months=72), clock.ago(months=36))
        else:
            closed = clock.between(clock.ago(months=36), now)
        ticket(owner(), closed, label.endswith("held"))
    # A minor whose open ticket is under legal hold cannot be deleted: the hold wins.
    for contact in minors_with_held_child:
        ticket(contact, None, True)
    return tickets


def _contacts(rng: random.Random, clock: _Clock, scale: int) -> tuple[list[dict[str, Any]], set[int]]:
    """Contacts, and the ids of the minors who get a dependent row under legal hold."""
    now = clock.now
    spec = {"minor": 20, "minor_held": 1, "minor_held_child": 2, "adult_held": 5, "adult": 172}
    contacts = []
    held_child = set()
    for n, label in enumerate(_labels(rng, spec, scale), start=1):
        full_name, email, _ = _person(n)
        minor = label.startswith("minor")
        if minor:
            birth: dt.date | None = (now - dt.timedelta(days=rng.randint(14 * 365 + 4, 17 * 365 + 300))).date()
            created = clock.between(clock.ago(months=12), now)
        else:
            birth = (now - dt.timedelta(days=rng.randint(20 * 365, 65 * 365))).date() if rng.random() < 0.6 else None
            created = clock.between(clock.ago(years=6), clock.ago(months=1))
        contacts.append({
            "id": n, "email": email, "phone": _phone(n) if rng.random() < 0.7 else None,
            "full_name": full_name, "birth_date": birth, "is_minor": minor,
            "legal_hold": label in ("minor_held", "adult_held"),
            "created_at": created, "last_contact_at": created,
            "restricted_at": None, "restriction_reason": None, "anonymized_at": None, "orphaned_since": None,
            # the unmapped column (schema.contacts): every ninth contact left a second address (no rng draw, so
            # every other seeded value stays as it was)
            "secondary_email": email.replace("@example.org", ".private@example.net") if n % 9 == 0 else None,
        })
        if label == "minor_held_child":
            held_child.add(n)
    return contacts, held_child


def _stamp_orphans(clock: _Clock, contacts: list[dict[str, Any]], children: list[list[dict[str, Any]]],
                   scale: int) -> None:
    """``orphaned_since`` as earlier sweeps of crm.contacts.orphaned would have left it: of the contacts nothing
    refers to, a third stamped more than six months ago (the rule deletes them; the first one is under legal
    hold), a third stamped since, a third not yet (the next sweep stamps them); two referenced contacts carry a
    stale stamp (the next sweep clears it). Its own random stream: the other tables stay as they were."""
    orng = random.Random(f"orphans:{scale}")
    oclock = _Clock(orng, clock.now)
    edge = clock.ago(months=6)
    referenced = {row["contact_id"] for rows in children for row in rows}
    orphans = [c for c in contacts if c["id"] not in referenced]
    for i, contact in enumerate(orphans):
        last = contact["last_contact_at"]
        if i % 3 == 0 and last < edge - 2 * MARGIN:
            contact["orphaned_since"] = oclock.between(max(last, clock.ago(months=24)), edge)
            contact["legal_hold"] = contact["legal_hold"] or i == 0
        elif i % 3 != 2:
            contact["orphaned_since"] = oclock.between(max(last, edge), clock.now)
    for contact in [c for c in contacts if c["id"] in referenced][:2 * scale]:
        contact["orphaned_since"] = oclock.between(clock.ago(months=24), edge)


def _settle_contact_times(clock: _Clock, contacts: list[dict[str, Any]],
                          children: list[tuple[list[dict[str, Any]], str]]) -> None:
    """A contact exists before its first dependent row and was last in touch at its latest one."""
    by_id = {c["id"]: c for c in contacts}
    for rows, column in children:
        for row in rows:
            when = row[column]
            if when is None:
                continue
            contact = by_id[row["contact_id"]]
            contact["created_at"] = min(contact["created_at"], when - dt.timedelta(days=clock.rng.randint(1, 30)))
            contact["last_contact_at"] = max(contact["last_contact_at"], when)


def _client_accounts(rng: random.Random, clock: _Clock, scale: int) -> list[dict[str, Any]]:
    now = clock.now
    this_year = dt.datetime(now.year, 1, 1)
    # The rule counts ten years from the end of the contract's year (round_up: year).
    delete_edge = dt.datetime((now - relativedelta(years=10)).year, 1, 1)
    spec = {"active": 31, "future_end": 5, "ended_this_year": 8, "lock": 16, "lock_done": 5, "lock_held": 2,
            "delete": 10, "delete_held": 3}
    rows = []
    for i, label in enumerate(_labels(rng, spec, scale), start=1):
        if label == "active":
            end = None
        elif label == "future_end":
            end = clock.between(clock.now + relativedelta(months=1), clock.now + relativedelta(years=2))
        elif label == "ended_this_year":
            end = clock.between(this_year, now)
        elif label.startswith("lock"):
            end = clock.between(delete_edge, this_year)
        else:
            end = clock.between(delete_edge - relativedelta(years=4), delete_edge)
        org = rng.choice(COMPANIES)
        domain = org.lower().replace("'", "").replace(" ", "-") + ".example.com"
        full_name, _, first = _person(10_000 + i)
        locked = label == "lock_done"
        rows.append({
            "id": i, "org_name": org, "admin_email": f"admin@{domain}", "customer_ref": f"C-{10_000 + i}",
            "user_email": f"{first}.{full_name.split()[-1].lower()}{i}@{domain}", "user_name": full_name,
            "contract_end_at": end, "legal_hold": label.endswith("held"),
            "restricted_at": clock.after(dt.datetime(end.year + 1, 1, 1), 10) if locked else None,
            "restriction_reason": ACCOUNT_LOCK_REASON if locked else None, "anonymized_at": None,
        })
    return rows


def _social_messages(rng: random.Random, clock: _Clock, scale: int) -> list[dict[str, Any]]:
    """Answered messages go at the next sweep (crm.social_messages.after_answered), unanswered ones three months
    after they came in (crm.social_messages.unanswered)."""
    now = clock.now
    rows = []
    spec = {"answered": 14, "answered_held": 3, "unanswered": 30, "unanswered_expired": 10,
            "unanswered_expired_held": 2}
    for i, label in enumerate(_labels(rng, spec, scale), start=1):
        if label.startswith("unanswered_expired"):
            received = clock.between(clock.ago(months=12), clock.ago(months=3))
        elif label == "unanswered":
            received = clock.between(clock.ago(months=3), now)
        else:
            received = clock.between(clock.ago(months=24), clock.ago(days=1))
        answered = clock.after(received, 3) if label.startswith("answered") else None
        _, _, first = _person(20_000 + i)
        rows.append({
            "id": i, "handle": f"@{first}_{rng.randint(100, 9999)}",
            "body": rng.choice(SOCIAL_TEXTS).format(topic=rng.choice(TOPICS)),
            "received_at": received, "answered_at": answered, "legal_hold": label.endswith("held"),
            "restricted_at": None, "restriction_reason": None,
        })
    return rows


# ---- mailing list --------------------------------------------------------------------------


def seed_mailing(engine: sa.Engine, now: dt.datetime, scale: int = 1, seed: int = DEFAULT_SEED, *,
                 reset: bool = False) -> dict[str, int]:
    """Insert demo mailing-list rows into empty tables (created if missing; dropped first with ``reset``).

    Returns rows per table.
    """
    rng, clock = _begin(engine, now, seed, reset, "mailing", schema.drop_mailing, schema.create_mailing)
    subscribers = _subscribers(rng, clock, scale)
    memberships = _memberships(rng, clock, subscribers)
    events = _campaign_events(rng, clock, subscribers)
    rows = {"subscribers": subscribers, "list_memberships": memberships, "campaign_events": events}
    return _write(engine, schema.mailing_metadata, rows, "mailing list")


def _subscribers(rng: random.Random, clock: _Clock, scale: int) -> list[dict[str, Any]]:
    now = clock.now
    spec = {"unsub_expired": 45, "unsub_expired_held": 4, "unsub_recent": 10, "dormant": 30, "dormant_held": 3,
            "never_old": 24, "never_old_held": 2, "never_recent": 20, "active": 162}
    rows = []
    # Subscribers are people 131..430 (per scale unit), so about a third are CRM contacts too.
    offset = 130 * scale
    for i, label in enumerate(_labels(rng, spec, scale), start=1):
        unsubscribed = engaged = None
        if label.startswith("unsub"):
            if label == "unsub_recent":
                unsubscribed = clock.between(clock.ago(days=30), now)
            else:
                unsubscribed = clock.between(clock.ago(months=30), clock.ago(days=30))
            subscribed = clock.between(unsubscribed - relativedelta(years=4), unsubscribed - relativedelta(months=2))
            engaged = max(unsubscribed - dt.timedelta(days=rng.randint(1, 60)), subscribed)
        elif label.startswith("dormant"):
            engaged = clock.between(clock.ago(months=60), clock.ago(months=36))
            subscribed = engaged - dt.timedelta(days=rng.randint(30, 900))
        elif label.startswith("never_old"):
            subscribed = clock.between(clock.ago(months=72), clock.ago(months=36))
        elif label == "never_recent":
            subscribed = clock.between(clock.ago(months=36), now)
        else:
            subscribed = clock.between(clock.ago(years=6), clock.ago(months=1))
            engaged = clock.between(max(subscribed, clock.ago(months=36)), now)
        if engaged is not None:
            engaged = _away_from_mask_edge(clock, engaged)
        _, email, _ = _person(offset + i)
        rows.append({
            "id": i, "email": email, "subscribed_at": subscribed, "unsubscribed_at": unsubscribed,
            "last_engaged_at": engaged, "legal_hold": label.endswith("held"), "anonymized_at": None,
            "restricted_at": None, "restriction_reason": None,
        })
    return rows


def _away_from_mask_edge(clock: _Clock, when: dt.datetime) -> dt.datetime:
    """Keep event times off the 30-day edge of mailing.campaign_events.mask_ip."""
    edge = clock.ago(days=30)
    if abs(when - edge) < MARGIN:
        return edge - MARGIN - dt.timedelta(days=1)
    return when


def _memberships(rng: random.Random, clock: _Clock, subscribers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for sub in subscribers:
        until = sub["unsubscribed_at"] or clock.now
        for name in rng.sample(LISTS, rng.randint(1, 3)):
            joined = min(sub["subscribed_at"] + dt.timedelta(days=rng.randint(0, 365)), until)
            rows.append({"id": len(rows) + 1, "subscriber_id": sub["id"], "list_name": name, "joined_at": joined})
    return rows


def _campaign_events(rng: random.Random, clock: _Clock, subscribers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Opens and clicks ending at each subscriber's last engagement; older IPs mostly masked already."""
    events = []
    for sub in subscribers:
        last = sub["last_engaged_at"]
        if last is None:
            continue
        times = [last] + [
            _away_from_mask_edge(clock, (sub["subscribed_at"] + (last - sub["subscribed_at"]) * rng.random())
                                 .replace(microsecond=0))
            for _ in range(rng.randint(0, 7))
        ]
        for when in sorted(times):
            events.append({
                "subscriber_id": sub["id"], "campaign": f"blog-digest-{when:%Y-%m}",
                "kind": "click" if rng.random() < 0.3 else "open", "occurred_at": when,
                "ip_address": _ip(rng) if rng.random() < 0.95 else None, "anonymized_at": None,
            })
    # As if earlier sweeps had run: the youngest events past 30 days (a quarter of all events)
    # still wait for masking, older ones had their IP truncated 31-37 days after they happened.
    edge = clock.ago(days=30)
    old = sorted((e for e in events if e["occurred_at"] < edge), key=lambda e: e["occurred_at"], reverse=True)
    for event in old[round(0.25 * len(events)):]:
        event["ip_address"] = truncate_ips(event["ip_address"]) if event["ip_address"] else None
        event["anonymized_at"] = clock.after(event["occurred_at"] + dt.timedelta(days=30), 7)
    events.sort(key=lambda e: (e["occurred_at"], e["subscriber_id"]))
    for n, event in enumerate(events, start=1):
        event["id"] = n
    return events


# ---- object keys and CLI -------------------------------------------------------------------


def crm_object_keys(engine: sa.Engine) -> dict[str, list[str]]:
    """The S3 keys the CRM rows reference (attachments, CVs), to put matching objects in place."""
    with engine.connect() as conn:
        attachments = conn.execute(sa.select(schema.inquiries.c.attachment_key)
                                   .where(schema.inquiries.c.attachment_key.is_not(None))
                                   .order_by(schema.inquiries.c.id)).scalars().all()
        cvs = conn.execute(sa.select(schema.applicants.c.cv_key).where(schema.applicants.c.cv_key.is_not(None))
                           .order_by(schema.applicants.c.id)).scalars().all()
    return {"inquiries.attachment_key": list(attachments), "applicants.cv_key": list(cvs)}


def reset_and_seed(crm_url: str | None, mailing_url: str | None, now: dt.datetime, scale: int = 1,
                   seed: int = DEFAULT_SEED) -> dict[str, int]:
    """Drop and recreate the demo tables, then seed them; returns rows per table."""
    from include.retention.stores.sql import make_engine

    counts: dict[str, int] = {}
    for url, fill in ((crm_url, seed_crm), (mailing_url, seed_mailing)):
        if not url:
            continue
        engine = make_engine(url)
        try:
            counts.update(fill(engine, now, scale, seed, reset=True))
        finally:
            engine.dispose()
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Create and seed the demo CRM and mailing-list databases.")
    parser.add_argument("--crm-url", help="SQLAlchemy URL of the CRM database")
    parser.add_argument("--mailing-url", help="SQLAlchemy URL of the mailing-list database")
    parser.add_argument("--scale", type=int, default=1, help="multiplies every row count (200 contacts per unit)")
    parser.add_argument("--now", help="ISO 8601 instant the ages count back from (default: now, UTC)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    args = parser.parse_args(argv)
    if not (args.crm_url or args.mailing_url):
        parser.error("give --crm-url, --mailing-url or both")
    if args.scale < 1:
        parser.error("--scale must be at least 1")
    now = dt.datetime.fromisoformat(args.now) if args.now else dt.datetime.now(dt.UTC)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    counts = reset_and_seed(args.crm_url, args.mailing_url, now, args.scale, args.seed)
    for table, n in counts.items():
        log.info("%-18s %7d rows", table, n)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
