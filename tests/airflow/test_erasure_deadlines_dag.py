"""erasure_deadlines: an overdue or nearly due request fails the check and the notifier records the alert."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from include.retention.ledger import Ledger
from include.retention.registry import Identities, NewRequest, Registry
from include.retention.stores.sql import make_engine
from tests.airflow.conftest import run_dag, task_states
from tests.conftest import KEY

pytestmark = [pytest.mark.airflow, pytest.mark.integration]


@pytest.fixture
def registry(airflow_db, fresh_database, monkeypatch):
    url = fresh_database("postgresql", f"rt_deadline_{uuid.uuid4().hex[:8]}")
    engine = make_engine(url)
    u = engine.url
    monkeypatch.setenv("AIRFLOW_CONN_RETENTION_LEDGER", f"postgres://{u.username}@{u.host}:{u.port}/{u.database}")
    monkeypatch.setenv("RETENTION_HMAC_KEY", KEY.decode())
    yield Registry(engine, KEY), Ledger(engine, KEY)
    engine.dispose()


def test_no_request_due_means_no_alert(registry):
    reg, ledger = registry
    reg.register(NewRequest(Identities(email="fresh.request@example.org")))
    run = run_dag("erasure_deadlines", {})
    assert run.state == "success"
    assert [r for r in ledger.rows() if r["action"] == "alert"] == []


def test_overdue_request_raises_alert_without_personal_data(registry):
    reg, ledger = registry
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    ago = lambda days: now - dt.timedelta(days=days)  # noqa: E731
    late = reg.register(NewRequest(Identities(email="late.request@example.org")), received_at=ago(40))
    soon = reg.register(NewRequest(Identities(email="soon.request@example.org")), received_at=ago(28))
    fine = reg.register(NewRequest(Identities(email="fine.request@example.org")))
    run = run_dag("erasure_deadlines", {})
    assert run.state == "failed" and task_states(run)["check_due_dates"] == ["failed"]
    alerts = [r for r in ledger.rows() if r["action"] == "alert"]
    assert len(alerts) == 1 and alerts[0]["count"] == 2
    assert late in alerts[0]["details"] and soon in alerts[0]["details"] and fine not in alerts[0]["details"]
    assert alerts[0]["details"].index(late) < alerts[0]["details"].index(soon)  # most overdue first
    assert "@example.org" not in repr(alerts)
