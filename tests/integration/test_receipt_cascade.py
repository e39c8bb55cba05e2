"""A receipt counts each record once: erasing a subscriber on a real database deletes their campaign events and
list memberships with them (on_delete: delete); the store reports them twice (counted before the delete, and as
the cascade's real count), the receipt's line per collection once, equal to the rows really gone. It also says by
when the copies in the backups expire."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from include.retention.demo import schema
from include.retention.policy import load_policy
from include.retention.requests.receipts import build_receipt, collection_lines, render_markdown
from include.retention.requests.scanner import Subject, SubjectScanner
from include.retention.stores.sql import SqlStore, make_engine
from tests.conftest import KEY, ROOT

pytestmark = pytest.mark.integration

NOW = dt.datetime(2026, 11, 1)
EMAIL = "cascade.person@example.org"


def seed(engine) -> None:
    schema.mailing_metadata.drop_all(engine)
    schema.mailing_metadata.create_all(engine)
    with engine.begin() as conn:
        for email, events in ((EMAIL, 6), ("bystander@example.org", 3)):
            sid = conn.execute(schema.subscribers.insert().values(
                email=email, subscribed_at=NOW)).inserted_primary_key[0]
            for name in ("news", "offers"):
                conn.execute(schema.list_memberships.insert().values(subscriber_id=sid, list_name=name, joined_at=NOW))
            for i in range(events):
                conn.execute(schema.campaign_events.insert().values(
                    subscriber_id=sid, campaign=f"c{i}", kind="open", occurred_at=NOW, ip_address="192.0.2.1"))


def count(engine, table) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def test_erased_subscriber_receipt_counts_the_cascade_once(db_url):
    engine = make_engine(db_url)
    try:
        seed(engine)
        policy = load_policy(ROOT / "config" / "policy.yaml")
        scanner = SubjectScanner(policy, SqlStore("mailing", policy, engine, mask_key=KEY))
        before = {t.name: count(engine, t) for t in (schema.subscribers, schema.list_memberships,
                                                     schema.campaign_events)}

        outcome = scanner.act([Subject("r1", {"email": EMAIL})], "erase", dry_run=False)

        gone = {t.name: before[t.name] - count(engine, t) for t in (schema.subscribers, schema.list_memberships,
                                                                    schema.campaign_events)}
        assert gone == {"subscribers": 1, "list_memberships": 2, "campaign_events": 6}  # the bystander's stay
        # the store reports the six events twice: counted before the delete, and the cascade's real count
        assert outcome.per_request["r1"]["mailing.campaign_events"] == {"deleted_with_parent": 6}
        assert outcome.totals["mailing.campaign_events"] == 6
        # what erasure_tasks.act() saves for one request, and finalize() turns into the receipt
        counts = {"collections": outcome.per_request["r1"], "removed_along": outcome.totals}
        request = {"request_id": "r1", "mode": "erase", "dry_run": False, "status": "complete",
                   "received_at": NOW, "due_at": NOW + dt.timedelta(days=30),
                   "completed_at": NOW + dt.timedelta(hours=1)}
        receipt = build_receipt(request, {"mailing": {"status": "recorded", "counts": counts}}, ["mailing"],
                                policy.digest, policy=policy)
        assert receipt["systems"]["mailing"]["records_left"] == {
            f"mailing.{name}": n for name, n in gone.items()}
        lines = collection_lines(receipt["systems"]["mailing"])
        assert lines["mailing.campaign_events"] == {"with_parent": 6}
        text = render_markdown(receipt)
        events = [line for line in text.splitlines() if "campaign_events" in line]
        assert events == ["| mailing | recorded | mailing.campaign_events | deleted 6 with the rows they belong to |"]
        assert ("- copies in backups of mailing (nightly encrypted dumps of mailing_db at the hosting provider) "
                "expire by 2026-12-06 (completion + 35 days); a restore replays the completed erasures before use"
                ) in text
        assert EMAIL not in text and "@" not in text
    finally:
        engine.dispose()
