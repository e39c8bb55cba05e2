"""erasure_intake: 200 queued requests processed together (set-based), one receipt each."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from include.retention.demo import schema
from include.retention.registry import Identities, NewRequest, receipts, request_systems
from tests.airflow.conftest import run_dag, task_states
from tests.airflow.test_erasure_request_dag import snapshot, world  # noqa: F401 - fixture

pytestmark = [pytest.mark.airflow, pytest.mark.integration]
N = 200


def add_many(world, n):
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    emails = [f"bulk.person{i}@example.org" for i in range(n)]
    with world["crm"].begin() as conn:
        conn.execute(schema.contacts.insert(), [
            {"email": e, "full_name": "Bulk", "created_at": now, "last_contact_at": now} for e in emails])
        ids = dict(conn.execute(sa.select(schema.contacts.c.email, schema.contacts.c.id)
                                .where(schema.contacts.c.email.in_(emails))).all())
        conn.execute(schema.support_tickets.insert(), [
            {"contact_id": ids[e], "email": e, "subject": "help"} for e in emails])
    with world["mailing"].begin() as conn:
        conn.execute(schema.subscribers.insert(), [{"email": e.upper(), "subscribed_at": now} for e in emails])
    return emails


def count(engine, table, column, values):
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table).where(
            sa.func.lower(table.c[column]).in_(values))).scalar()


# the default data map's systems holding identities: crm, mailing and reporting (the nightly Parquet export)
SYSTEMS = 3


def test_two_hundred_requests_in_one_intake_run(world):
    emails = add_many(world, N)
    others = snapshot(world["crm"], world["mailing"], {"contact": -1, "subscriber": -1})
    registry = world["registry"]
    ids = registry.register_many([NewRequest(Identities(email=e)) for e in emails]
                                 + [NewRequest(Identities(email="nobody.here@example.org"))])

    run = run_dag("erasure_intake", {"batch_size": 500})
    assert run.state == "success", task_states(run)

    assert count(world["crm"], schema.contacts, "email", emails) == 0
    assert count(world["crm"], schema.support_tickets, "email", emails) == 0
    assert count(world["mailing"], schema.subscribers, "email", emails) == 0
    after = snapshot(world["crm"], world["mailing"], {"contact": -1, "subscriber": -1})
    for table, rows in after.items():
        assert rows == [r for r in others[table] if not any("bulk.person" in str(v).lower() for v in r)]

    assert {registry.get(r)["status"] for r in ids} == {"complete"}
    with registry.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(receipts).where(
            receipts.c.request_id.in_(ids))).scalar() == N + 1
        assert conn.execute(sa.select(sa.func.count()).select_from(request_systems).where(
            request_systems.c.status == "recorded")).scalar() == SYSTEMS * (N + 1)
    receipt = registry.receipt(ids[7])
    assert receipt["systems"]["crm"]["collections"]["crm.contacts"] == {"deleted": 1}
    assert receipt["systems"]["mailing"]["collections"]["mailing.subscribers"] == {"deleted": 1}
    assert registry.receipt(ids[-1])["systems"]["crm"]["collections"] == {}
    per_request = [r for r in world["ledger"].rows() if r["request_id"] in set(ids)]
    assert len(per_request) == SYSTEMS * (N + 1)
    assert world["ledger"].verify().ok
    assert all(registry.suppression.contains("email", e) for e in emails[:5])

    # nothing pending: the next run is a no-op and succeeds
    assert run_dag("erasure_intake", {"batch_size": 500}).state == "success"
