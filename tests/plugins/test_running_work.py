"""The page's running-work section and its JSON (``/retention/api/progress``) while a slow sweep runs on the
page's own PostgreSQL ledger database: a progress figure between nothing and all, the time left, no personal
data; nothing running once it ended."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from include.retention.stores.sql import make_engine
from tests.integration.test_progress_slow_sweep import ROWS, RULE, RUN, slow_sweep
from tests.plugins.test_retention_page import SAME, ledger_db, plugin  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration


@pytest.fixture
def client(ledger_db, plugin):  # noqa: F811 - the fixture above
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    plugin.app.dependency_overrides[plugin.get_user] = lambda: SimpleAuthManagerUser(username="dpo", role="viewer")
    try:
        yield TestClient(plugin.app, headers=SAME)
    finally:
        plugin.app.dependency_overrides.pop(plugin.get_user, None)


def test_running_sweep_on_the_page_and_its_json(client, ledger_db):  # noqa: F811
    assert client.get("/api/progress").json()["sweeps"] == []
    assert 'id="nothing-running"' in client.get("/").text
    engine = make_engine(ledger_db)
    figures, page = [], None
    with slow_sweep(ledger_db, engine) as ended:
        deadline = time.monotonic() + 60
        while ended() is None and time.monotonic() < deadline:
            r = client.get("/api/progress")
            assert r.status_code == 200, r.text
            for p in r.json()["sweeps"]:
                figures.append(p)
                if 0 < p["done"] < ROWS and page is None:
                    page = client.get("/").text
            time.sleep(0.1)
    midway = [p for p in figures if 0 < p["done"] < ROWS]
    assert midway, [p["done"] for p in figures]
    assert {(p["rule_id"], p["run_id"], p["planned"]) for p in figures} == {(RULE, RUN.run_id, ROWS)}
    assert all(p["left"].endswith("left") for p in midway)
    assert "@example.org" not in repr(figures)
    if page is not None:  # the page served meanwhile shows the rule's row (the poll may have caught the end)
        assert f'data-running-rule="{RULE}"' in page and f"{ROWS:,}" in page and "@example.org" not in page
        assert "have a batch in flight" in page  # its open intent is not a stopped run's
    assert client.get("/api/progress").json()["sweeps"] == []
    engine.dispose()
