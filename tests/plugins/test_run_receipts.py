"""The receipts view on a DAG run's page (plugin external view, destination ``dag_run``): content, access, no identity.

Fixtures come from test_retention_page.py (a real PostgreSQL ledger / registry, seeded requests and entries)."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from include.retention.ledger import Ledger, RunRef
from include.retention.requests.receipts import build_receipt
from tests.conftest import KEY
from tests.plugins.test_retention_page import (  # noqa: F401 - fixtures
    OVERDUE_EMAIL,
    RUN_ID,
    SAME,
    _no_personal_data,
    _row,
    airflow_api,
    airflow_db,
    airflow_plugins,
    ledger_db,
    page,
    plugin,
    seeded,
)

pytestmark = pytest.mark.integration
INTAKE_RUN = "scheduled__2025-06-02T00:00:00+00:00"


def _url(dag_id: str, run_id: str, api: bool = False) -> str:
    """As the UI builds it from the view's href: encodeURIComponent of both ids."""
    return f"{'/api' if api else ''}/runs/{quote(dag_id, safe='')}/{quote(run_id, safe='')}"


@pytest.fixture
def receipts(seeded):
    """The overdue request (erasure_request, RUN_ID) gets counts and its receipt; two requests of an intake run."""
    registry, engine = seeded["registry"], seeded["engine"]
    rid = seeded["overdue"]
    registry.systems.set([rid], "crm", "verified", counts={"collections": {
        "crm.leads": {"deleted": 2, "exception:legal_hold": 1}, "crm.contacts": {"anonymized": 1}}})
    seq = max(r["seq"] for r in Ledger(engine, KEY).rows(run_id=RUN_ID, action="erase"))
    receipt = build_receipt(registry.get(rid), registry.systems.of_many([rid])[rid], ["crm"], "d" * 64,
                            ledger_entries={"crm": {"seq": seq, "entry_hash": "e" * 64}})
    registry.save_receipts({rid: receipt})
    intake = []
    for i in range(2):
        from include.retention.registry import Identities, NewRequest

        intake.append(registry.register(NewRequest(Identities(email=f"intake.person{i}@example.org"),
                                                   source="intake"), dag_id="erasure_intake", run_id=INTAKE_RUN))
    Ledger(engine, KEY).append(run=RunRef("erasure_intake", INTAKE_RUN), action="erase", outcome="verified", count=3,
                               request_id=intake[0], system="mailing",
                               subject_digest=registry.digest("email", "intake.person0@example.org"))
    return {"request_id": rid, "seq": seq, "intake": intake}


@pytest.fixture
def allowed(plugin, monkeypatch):
    seen = []
    monkeypatch.setattr(plugin, "may_read_runs", lambda user, dag_id: seen.append(dag_id) or True)
    return seen


def test_run_page_shows_the_runs_receipt_counts_and_ledger_entries(page, seeded, receipts, allowed):
    resp = page.get(_url("erasure_request", RUN_ID))
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    text = resp.text
    assert allowed == ["erasure_request"]
    # the run's requests are the registry's (the seeded ledger also has an entry of another request in this run)
    assert f'data-request-id="{receipts["request_id"]}"' in text and 'data-request-id="' + seeded["open"] not in text
    assert seeded["done"] not in text
    assert _row(text, "data-collection", "crm.contacts")[:4] == ["crm", "verified", "crm.contacts", "anonymized 1"]
    assert _row(text, "data-collection", "crm.leads")[3].startswith("deleted 2")
    assert "Exceptions (kept): crm / crm.leads: 1 (legal_hold)" in " ".join(text.split())
    assert f"Ledger entries proving it: {receipts['seq']}" in text
    assert _row(text, "data-seq", str(receipts["seq"]))[3:] == ["erase", "verified", "crm", "2"]
    _no_personal_data(text, seeded)
    assert "could not reach" not in text  # a system's error text is never shown (it may name the subject)

    data = page.get(_url("erasure_request", RUN_ID, api=True)).json()
    assert [r["request_id"] for r in data["requests"]] == [receipts["request_id"]]
    assert data["requests"][0]["has_receipt"] and data["requests"][0]["ledger_seqs"] == [receipts["seq"]]
    _no_personal_data(str(data), seeded)


def test_intake_run_lists_each_of_its_requests(page, seeded, receipts, allowed):
    text = page.get(_url("erasure_intake", INTAKE_RUN)).text
    for rid in receipts["intake"]:
        assert f'data-request-id="{rid}"' in text
    assert text.count("No receipt yet") == 2
    assert "intake.person" not in text and seeded["overdue"] not in text
    _no_personal_data(text, seeded)


def test_runs_without_requests_say_so(page, seeded, allowed):
    other = page.get(_url("erasure_request", "manual__never")).text
    assert 'id="no-requests"' in other and "No request in this run" in other
    sweep = page.get(_url("retention_sweep", "scheduled__2025-06-01T00:00:00+00:00")).text
    assert "this run carries no request" in sweep and "Ledger entries of this run" in sweep
    assert _row(sweep, "data-seq", "3")[3:5] == ["delete", "done"]


def test_who_may_not_read_the_dags_runs_sees_nothing(page, seeded, receipts, plugin, monkeypatch):
    monkeypatch.setattr(plugin, "may_read_runs", lambda user, dag_id: False)
    for api in (False, True):
        resp = page.get(_url("erasure_request", RUN_ID, api=api))
        assert resp.status_code == 403 and receipts["request_id"] not in resp.text


def test_no_credentials_no_receipts(seeded, receipts, plugin):
    resp = TestClient(plugin.app).get(_url("erasure_request", RUN_ID))
    assert resp.status_code == 401 and receipts["request_id"] not in resp.text


def test_real_auth_and_the_run_page_tab(airflow_api, seeded, receipts, airflow_plugins):
    """Airflow's own app and auth manager: a signed-in viewer reads the run's receipts; the view is registered for
    the DAG-run page with the ids the UI fills in."""
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    client, auth_manager = airflow_api
    token = auth_manager.generate_jwt(SimpleAuthManagerUser(username="dpo", role="viewer"))
    resp = client.get("/retention" + _url("erasure_request", RUN_ID), headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200 and receipts["request_id"] in resp.text and OVERDUE_EMAIL not in resp.text
    assert client.get("/retention" + _url("erasure_request", RUN_ID)).status_code == 401
    external_views, _ = airflow_plugins._get_ui_plugins()
    assert {"name": "Receipts", "href": "/retention/runs/{DAG_ID}/{RUN_ID}", "destination": "dag_run",
            "url_route": "receipts"} in external_views
