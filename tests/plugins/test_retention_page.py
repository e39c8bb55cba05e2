"""The data-retention page (plugins/retention_page.py) on a real PostgreSQL ledger / registry database.

Two ways in:

* the plugin's own FastAPI app through ``TestClient``. Content tests replace Airflow's ``get_user``
  dependency with ``app.dependency_overrides[get_user] = lambda: <user>`` (the ``page`` fixture):
  the page's content, not Airflow's JWT handling, is under test there. The override is removed after
  each test; without it the same app answers 401 (``test_no_credentials_no_page``).
* Airflow's real API server app (``create_app()``, plugins discovered from ``plugins/``): the real
  ``get_user`` decides, with real JWTs from Airflow's auth manager, in a cookie or a Bearer header.
"""

from __future__ import annotations

import datetime as dt
import html
import importlib
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from include.retention import dashboard
from include.retention.ledger import Ledger, RunRef, entries
from include.retention.registry import Identities, NewRequest, Registry
from include.retention.stores.sql import make_engine
from tests.airflow.conftest import airflow_db  # noqa: F401 - fixture
from tests.conftest import KEY, PG_ADMIN, ROOT

pytestmark = pytest.mark.integration

OVERDUE_EMAIL = "erin.overdue-person@example.org"
EMAILS = (OVERDUE_EMAIL, "frank.open@example.org", "gina.done@example.org")
SAME = {"Origin": "http://testserver"}  # what a browser sends with a post from the page itself
RUN_ID = "manual__2025-01-01T00:00:00+00:00"
RULE = "crm.leads.inactivity"
DRY_RULE = "mailing.subscribers.unsubscribed"
BRAKE_RULE = "objects.access_logs.server_logs"


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _conn_json(url: str) -> str:
    """The URL as an AIRFLOW_CONN_* JSON value, as an operator would write it."""
    u = sa.engine.make_url(url)
    return json.dumps({"conn_type": "postgres", "host": u.host, "port": u.port, "login": u.username,
                       "password": u.password, "schema": u.database})


@pytest.fixture(scope="module")
def plugin():
    """The plugin module, imported on first use: importing Airflow while tests are collected would load its
    configuration before ``airflow db migrate`` wrote one (tests/airflow/test_purge.py then lacks a JWT secret)."""
    return importlib.import_module("plugins.retention_page")


@pytest.fixture
def ledger_db(fresh_database, monkeypatch, plugin):
    """A fresh PostgreSQL database named by AIRFLOW_CONN_RETENTION_LEDGER; dropped afterwards."""
    name = f"rt_page_{uuid.uuid4().hex[:10]}"
    url = fresh_database("postgresql", name)
    monkeypatch.setenv("AIRFLOW_CONN_RETENTION_LEDGER", _conn_json(url))
    monkeypatch.setenv("RETENTION_HMAC_KEY", KEY.decode())  # the key the seeded chain is keyed with
    monkeypatch.delenv("RETENTION_LEDGER_ANCHORS", raising=False)
    yield url
    plugin._engine_for.cache_clear()
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def seeded(ledger_db):
    """Requests (one overdue, one open, one complete) and ledger entries (sweeps, actions, erasures)."""
    engine = make_engine(ledger_db)
    registry, ledger = Registry(engine, KEY), Ledger(engine, KEY)
    now = _utcnow()
    overdue = registry.register(NewRequest(Identities(email=OVERDUE_EMAIL), mode="erase"),
                                received_at=now - dt.timedelta(days=40), dag_id="erasure_request", run_id=RUN_ID)
    open_ = registry.register(NewRequest(Identities(email=EMAILS[1]), mode="restrict", source="api"),
                              received_at=now - dt.timedelta(days=10))
    done = registry.register(NewRequest(Identities(email=EMAILS[2])), received_at=now - dt.timedelta(days=5))
    registry.start(open_)
    registry.systems.set([overdue], "crm", "failed", error=f"could not reach {OVERDUE_EMAIL}'s rows")
    registry.systems.set([open_], "crm", "verified")
    registry.systems.set([open_], "mailing", "acted")
    registry.finish(done, "complete")
    registry.recipients.plan(overdue, {
        name: {"channel": channel, "action": "erase", "systems": ["crm"], "categories": ["contact_data"]}
        for name, channel in (("hosting", "email"), ("it_maintenance", "manual"))})
    registry.recipients.set([overdue], "hosting", "sent")

    sweep = RunRef("retention_sweep", "scheduled__2025-06-01T00:00:00+00:00")
    ledger.append(run=RunRef("retention_sweep", "scheduled__old"), action="sweep", outcome="complete", rule_id=RULE,
                  count=9, details={"locked": 9, "anonymized": 0, "deleted": 0, "held": 0, "kept": 1})
    ledger.append(run=sweep, action="lock", outcome="done", count=3, rule_id=RULE)
    ledger.append(run=sweep, action="delete", outcome="done", count=7, rule_id=RULE)
    ledger.append(run=sweep, action="sweep", outcome="complete", rule_id=RULE, count=10, system="crm",
                  details={"total": 52, "in_scope": 52, "locked": 3, "anonymized": 0, "deleted": 7, "held": 2,
                           "kept": 40, "cascaded": {}, "would": {"locked": 3, "deleted": 7}})
    ledger.append(run=sweep, action="sweep", outcome="dry_run", rule_id=DRY_RULE, count=4,
                  details={"total": 20, "in_scope": 14, "locked": 0, "anonymized": 4, "deleted": 0, "held": 0,
                           "kept": 10, "cascaded": {}, "would": {"anonymized": 4}})
    ledger.append(run=sweep, action="sweep", outcome="brake_tripped", rule_id=BRAKE_RULE, count=80,
                  details={"total": 100, "max_fraction": 0.5, "would": {"deleted": 80}})
    subject = registry.digest("email", OVERDUE_EMAIL)
    ledger.append(run=RunRef("erasure_request", RUN_ID), action="erase", outcome="verified", count=2,
                  request_id=overdue, system="crm", subject_digest=subject)
    ledger.append(run=RunRef("erasure_request", RUN_ID), action="restrict", outcome="dry_run", count=1,
                  request_id=open_, system="crm")
    ledger.append(run=sweep, action="suppress", outcome="done", count=5, system="mailing")
    yield {"engine": engine, "registry": registry, "overdue": overdue, "open": open_, "done": done,
           "subject": subject}
    engine.dispose()


@pytest.fixture
def page(seeded, plugin):
    """The plugin's app with ``get_user`` overridden by a signed-in viewer (see the module docstring)."""
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    plugin.app.dependency_overrides[plugin.get_user] = lambda: SimpleAuthManagerUser(username="dpo", role="viewer")
    try:
        yield TestClient(plugin.app, headers=SAME)
    finally:
        plugin.app.dependency_overrides.pop(plugin.get_user, None)


class FabLikeUser:
    """What the FAB auth manager's get_user returns, as far as the page looks at it: a name and roles."""

    def __init__(self, name: str, *roles: str):
        self.username, self.roles = name, [SimpleNamespace(name=r) for r in roles]

    def get_name(self) -> str:
        return self.username


def as_privacy(plugin, role: str = "Privacy") -> None:
    plugin.app.dependency_overrides[plugin.get_user] = lambda: FabLikeUser("pia", role)


def _days_left(engine: sa.Engine, request_id: str) -> set[int]:
    """Days left as the page computes them (both sides of a midnight that may pass during the test)."""
    with engine.connect() as conn:
        due = conn.execute(sa.text("SELECT due_at FROM subject_requests WHERE request_id = :r"), {"r": request_id}
                           ).scalar_one()
    return {(due.date() - _utcnow().date()).days, (due.date() - (_utcnow() - dt.timedelta(minutes=5)).date()).days}


def _row(text: str, attr: str, value: str) -> list[str]:
    """The cells (tags stripped, whitespace collapsed) of the table row with ``attr="value"``."""
    match = re.search(rf'<tr[^>]*{attr}="{re.escape(value)}"[^>]*>(.*?)</tr>', text, re.S)
    assert match, f"no row {attr}={value}"
    cells = re.findall(r"<td[^>]*>(.*?)</td>", match.group(1), re.S)
    return [" ".join(html.unescape(re.sub(r"<[^>]+>", " ", c)).split()) for c in cells]


def _no_personal_data(text: str, seeded) -> None:
    for email in EMAILS:
        assert email not in text
        assert email.split("@")[0] not in text
    assert seeded["subject"] not in text  # not even the keyed digest is needed on the page


# ---- access ---------------------------------------------------------------------------------


def test_no_credentials_no_page(seeded, plugin):
    """Without a token (no override here): 401 for every route, and nothing is read or written."""
    client = TestClient(plugin.app)
    for method, path in (("GET", "/"), ("GET", "/api/summary"), ("POST", "/verify"), ("POST", "/api/verify")):
        resp = client.request(method, path)
        assert resp.status_code == 401, (method, path, resp.text)
        assert resp.json() == {"detail": "Not authenticated"}
    with seeded["engine"].connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM ledger_verifications")).scalar() == 0


# ---- the page ------------------------------------------------------------------------------


def test_page_lists_open_requests_overdue_first(page, seeded):
    resp = page.get("/")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    text = resp.text
    overdue, open_ = seeded["overdue"], seeded["open"]
    assert overdue in text and open_ in text
    open_part, closed_part = text.split('id="recent-requests"', 1)
    assert seeded["done"] not in open_part  # complete: not open any more ...
    assert _row(closed_part, "data-request-id", seeded["done"])[:3] == [seeded["done"], "erase", "complete"]
    assert overdue not in closed_part and open_ not in closed_part  # ... but listed as recently closed
    assert text.index(f'data-request-id="{overdue}"') < text.index(f'data-request-id="{open_}"')

    cells = _row(text, "data-request-id", overdue)
    assert cells[:3] == [overdue, "erase", "pending"]
    days, badge = cells[4].split(" ", 1)
    assert int(days) in _days_left(seeded["engine"], overdue) and int(days) < 0
    assert badge == "overdue"
    assert cells[5] == "crm: failed"
    assert cells[6] == "erasure_request"
    assert f'href="/dags/erasure_request/runs/{RUN_ID.replace(":", "%3A").replace("+", "%2B")}"' in text
    assert 'class="overdue"' in text.split(f'data-request-id="{overdue}"')[0].rsplit("<tr", 1)[1]

    assert cells[7] == "it_maintenance"  # the recipient still to confirm (hosting was told)
    cells = _row(text, "data-request-id", open_)
    assert cells[:3] == [open_, "restrict", "in_progress"]
    assert int(cells[4]) in _days_left(seeded["engine"], open_) and int(cells[4]) > 0
    assert cells[5] == "crm: verified, mailing: acted"
    assert "Open requests (2, overdue 1" in text
    assert 'id="forecast"' in text and 'id="recent-requests"' in text
    _no_personal_data(text, seeded)


def test_page_shows_last_sweep_per_rule(page, seeded):
    text = page.get("/").text
    cells = _row(text, "data-rule-id", RULE)  # the newer of its two sweeps
    assert cells[:8] == [RULE, "applied", "complete", "3", "0", "7", "2", "40"]
    assert cells[9] == "scheduled__2025-06-01T00:00:00+00:00"
    assert 'href="/dags/retention_sweep/runs/scheduled__2025-06-01T00%3A00%3A00%2B00%3A00"' in text
    assert _row(text, "data-rule-id", DRY_RULE)[:8] == [DRY_RULE, "dry run", "dry_run", "0", "4", "0", "0", "10"]
    assert _row(text, "data-rule-id", BRAKE_RULE)[:6] == [BRAKE_RULE, "not applied", "brake_tripped", "", "", "80"]
    assert "scheduled__old" not in text


def test_page_draws_actions_chart(page, seeded):
    text = page.get("/").text
    svg = re.search(r'<svg id="actions-chart".*?</svg>', text, re.S).group(0)
    today = _utcnow().date().isoformat()
    for action in ("lock", "delete", "erase"):
        assert f'class="bar bar-{action}"' in svg
    assert 'class="bar bar-anonymize"' not in svg and 'class="bar bar-restrict"' not in svg  # dry runs don't count
    assert f"<title>{today}: 12" in svg  # lock 3 + delete 7 + erase 2 (suppress and sweep are not actions)
    assert svg.count("<g>") == 90
    assert "lock 3" in text and "delete 7" in text and "erase 2" in text
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing from elsewhere


def _status(text: str) -> str:
    return " ".join(re.search(r'<p id="verification-status"[^>]*>(.*?)</p>', text, re.S).group(1).split())


def test_status_is_a_fresh_verify_not_the_history_table(page, seeded, plugin):
    status = _status(page.get("/").text)
    assert status.startswith("Chain intact: 9 entries checked, verified at ") and "(on this page load)" in status
    with seeded["engine"].connect() as conn:  # showing the page records nothing
        assert conn.execute(sa.text("SELECT count(*) FROM ledger_verifications")).scalar() == 0

    as_privacy(plugin)
    resp = page.post("/verify", follow_redirects=False)  # "Verify now" (privacy role): adds to the history
    assert resp.status_code == 303 and resp.headers["location"] == "./#verification"
    with seeded["engine"].connect() as conn:
        row = conn.execute(sa.text("SELECT verified_at, ok, entries FROM ledger_verifications")).one()
    assert row.ok and row.entries == 9

    with seeded["engine"].begin() as conn:  # someone edits an entry behind the ledger's back ...
        conn.execute(entries.update().where(entries.c.action == "delete").values(count=1))
        # ... and rewrites the history so that it says "intact"
        conn.execute(sa.text("UPDATE ledger_verifications SET ok = TRUE, problem = NULL"))
    status = _status(page.get("/").text)
    assert status.startswith("Chain BROKEN at entry 3: content does not match its keyed hash"), status
    assert page.get("/api/summary").json()["verification"]["first_broken_seq"] == 3
    result = page.post("/api/verify").json()
    assert result["ok"] is False and result["first_broken_seq"] == 3
    assert page.post("/verify", headers={"Origin": "http://elsewhere.example"}).status_code == 403
    assert page.post("/verify", headers={"Origin": "null"}).status_code == 403


def test_status_shows_intents_without_outcome(page, seeded):
    ledger = Ledger(seeded["engine"], KEY)
    intent = ledger.intend(run=RunRef("retention_sweep", "r"), action="delete", count=4, rule_id=RULE)
    text = page.get("/").text
    assert _status(text).startswith("Chain intact: 10 entries")
    assert re.search(r'<p id="unreconciled" class="bad">1 intent\(s\) without\s+outcome', text)
    assert re.search(rf"entries\s+{intent}\.", text)
    ledger.settle(intent, count=4)
    assert 'id="unreconciled"' not in page.get("/").text


def test_status_without_key_is_not_intact(page, seeded, monkeypatch):
    monkeypatch.delenv("RETENTION_HMAC_KEY")
    monkeypatch.delenv("AIRFLOW_CONN_RETENTION_KEYS", raising=False)
    status = _status(page.get("/").text)
    assert status.startswith("Not verified: cannot verify: no HMAC key") and "intact" not in status
    assert page.get("/api/summary").json()["verification"]["ok"] is None


def test_status_checks_anchors(page, seeded, monkeypatch, tmp_path):
    ledger = Ledger(seeded["engine"], KEY)
    ledger.anchor(tmp_path)
    monkeypatch.setenv("RETENTION_LEDGER_ANCHORS", str(tmp_path))
    monkeypatch.delenv("RETENTION_LEDGER_ANCHORS_DEMO", raising=False)
    status = _status(page.get("/").text)
    assert "1 anchor(s) match" in status  # a directory of anchors: the page says what it cannot prove
    assert "Warning: anchors in a directory can be deleted by whoever can write to it" in status
    monkeypatch.setenv("RETENTION_LEDGER_ANCHORS_DEMO", "1")  # make demo: the directory stands in for a bucket
    assert "Warning" not in _status(page.get("/").text)
    with seeded["engine"].begin() as conn:  # truncate and move the head back
        last = conn.execute(sa.text("SELECT entry_hash FROM ledger_entries WHERE seq = 7")).scalar_one()
        conn.execute(sa.text("DELETE FROM ledger_entries WHERE seq > 7"))
        conn.execute(sa.text("UPDATE ledger_head SET seq = 7, entry_hash = :h"), {"h": last})
    monkeypatch.delenv("RETENTION_LEDGER_ANCHORS")
    text = page.get("/").text
    assert _status(text).startswith("Chain intact: 7 entries") and "No anchor location configured" in text
    monkeypatch.setenv("RETENTION_LEDGER_ANCHORS", str(tmp_path))
    assert _status(page.get("/").text).startswith("Chain BROKEN at entry 8: entries after 7 were removed")
    (tmp_path / "000000000000009-x.json").write_text("{not an anchor")
    status = _status(page.get("/").text)
    assert status.startswith("Chain not verified: anchor ") and "is not a ledger anchor" in status


def test_summary_json_is_the_page_data(page, seeded):
    data = page.get("/api/summary").json()
    items = data["requests"]["items"]
    assert [r["request_id"] for r in items] == [seeded["overdue"], seeded["open"]]
    assert items[0]["overdue"] is True and items[0]["days_left"] in _days_left(seeded["engine"], seeded["overdue"])
    assert items[1]["systems"] == {"crm": "verified", "mailing": "acted"}
    assert set(items[0]) == {"request_id", "mode", "status", "dry_run", "source", "received_at", "due_at",
                             "completed_at", "days_left", "overdue", "attempts", "dag_id", "run_id", "systems",
                             "unconfirmed_recipients"}
    sweeps = {s["rule_id"]: s for s in data["sweeps"]}
    assert sweeps[RULE]["counts"] == {"locked": 3, "anonymized": 0, "deleted": 7, "held": 2, "kept": 40}
    assert sweeps[RULE]["dry_run"] is False and sweeps[DRY_RULE]["dry_run"] is True
    assert sweeps[BRAKE_RULE]["outcome"] == "brake_tripped" and sweeps[BRAKE_RULE]["counts"]["deleted"] == 80
    assert len(data["chart"]["series"]) == 90
    assert data["chart"]["totals"] == {"lock": 3, "anonymize": 0, "delete": 7, "erase": 2, "restrict": 0}
    assert data["verification"]["ok"] is True and data["verification"]["entries"] == 9
    assert data["verification"]["unreconciled"] == [] and data["verification"]["verified_at"]
    text = json.dumps(data)
    assert "_enc" not in text and "digest" not in text
    _no_personal_data(text, seeded)


def test_reads_no_identity_columns(page, seeded, plugin):
    """Every statement the page sends: no ``*_enc`` or digest column, no ``SELECT *``."""
    statements: list[str] = []
    engine = plugin.ledger_engine()
    listener = lambda conn, cursor, statement, *args: statements.append(statement)  # noqa: E731
    sa.event.listen(engine, "before_cursor_execute", listener)
    try:
        assert page.get("/").status_code == 200 and page.get("/api/summary").status_code == 200
    finally:
        sa.event.remove(engine, "before_cursor_execute", listener)
    assert any("subject_requests" in s for s in statements)
    for statement in statements:
        assert "_enc" not in statement and "*" not in statement.split("FROM")[0]
        if "_digest" in statement:  # only the chain walk of the fresh verification reads digests (to hash them)
            assert re.search(r"FROM ledger_entries (WHERE ledger_entries.seq > \S+ )?ORDER BY ledger_entries.seq",
                             " ".join(statement.split())), statement


def test_chart_window_is_ninety_days(seeded):
    later = dashboard.actions_per_day(seeded["engine"], now=_utcnow() + dt.timedelta(days=90))
    assert later["max"] == 0 and len(later["series"]) == 90
    assert dashboard.actions_per_day(seeded["engine"], now=_utcnow() + dt.timedelta(days=89))["max"] == 12


def test_empty_database_shows_an_empty_page(ledger_db, plugin):
    """A ledger database nobody wrote to yet: tables are created, the page says there is nothing."""
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    plugin.app.dependency_overrides[plugin.get_user] = lambda: SimpleAuthManagerUser(username="dpo", role="viewer")
    try:
        client = TestClient(plugin.app, headers=SAME)
        text = client.get("/").text
        assert "No open requests." in text and "No sweep recorded yet." in text
        assert _status(text).startswith("Chain intact: 0 entries checked")
        assert "<svg" in text
        assert client.post("/api/verify").status_code == 403  # a viewer does not verify
        as_privacy(plugin)
        assert client.post("/api/verify").json()["ok"] is True
    finally:
        plugin.app.dependency_overrides.pop(plugin.get_user, None)
    engine = make_engine(ledger_db)
    assert {"ledger_entries", "ledger_verifications", "subject_requests", "request_systems"} <= set(
        sa.inspect(engine).get_table_names())
    engine.dispose()


def test_missing_connection_is_a_clear_503(monkeypatch, plugin):
    monkeypatch.delenv("AIRFLOW_CONN_RETENTION_LEDGER", raising=False)
    plugin.app.dependency_overrides[plugin.get_user] = lambda: object()
    try:
        resp = TestClient(plugin.app).get("/api/summary")
    finally:
        plugin.app.dependency_overrides.pop(plugin.get_user, None)
    assert resp.status_code == 503
    assert "AIRFLOW_CONN_RETENTION_LEDGER" in resp.json()["detail"]


# ---- in Airflow ----------------------------------------------------------------------------


def _clear_plugin_caches(plugins_manager) -> None:
    for value in vars(plugins_manager).values():
        if callable(getattr(value, "cache_clear", None)):
            value.cache_clear()


@pytest.fixture
def airflow_plugins(monkeypatch):
    """Airflow's plugins manager reading this repository's plugins/ (its caches cleared around the test)."""
    from airflow import plugins_manager, settings

    monkeypatch.setattr(settings, "PLUGINS_FOLDER", str(ROOT / "plugins"))
    _clear_plugin_caches(plugins_manager)
    yield plugins_manager
    _clear_plugin_caches(plugins_manager)


def test_plugins_manager_discovers_the_page(airflow_plugins):
    airflow_plugins.ensure_plugins_loaded()
    assert not {k: v for k, v in airflow_plugins.get_import_errors().items() if "retention_page" in k}
    info = {p["name"]: p for p in airflow_plugins.get_plugin_info()}["retention_page"]
    assert str(info["source"]) == "$PLUGINS_FOLDER/retention_page.py"
    assert info["fastapi_apps"] == [{"app": "fastapi.applications.FastAPI", "url_prefix": "/retention",
                                     "name": "Data retention"}]
    apps, _ = airflow_plugins.get_fastapi_plugins()
    assert [a["url_prefix"] for a in apps if a["name"] == "Data retention"] == ["/retention"]
    external_views, _ = airflow_plugins._get_ui_plugins()  # what the UI's navigation is built from
    assert {"name": "Data retention", "href": "/retention/", "destination": "nav",
            "url_route": "data-retention"} in external_views


def test_airflow_cli_lists_the_plugin_from_the_plugins_folder(tmp_path):
    """``airflow plugins`` with AIRFLOW__CORE__PLUGINS_FOLDER pointing at plugins/, as a deployment sets it."""
    import os

    env = {**os.environ, "PYTHONPATH": str(ROOT), "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
           "AIRFLOW_HOME": str(tmp_path)}
    proc = subprocess.run([str(Path(sys.executable).parent / "airflow"), "plugins", "--output", "json"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    listed = {p["name"]: p for p in json.loads(proc.stdout)}
    assert listed["retention_page"]["external_views"][0]["href"] == "/retention/"
    assert listed["retention_page"]["fastapi_apps"][0]["url_prefix"] == "/retention"


@pytest.fixture
def airflow_api(airflow_db, airflow_plugins, seeded, monkeypatch):
    """Airflow's API server app in-process, with the plugin mounted by Airflow itself, and its auth manager."""
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "False")
    from airflow.api_fastapi.app import create_app, get_auth_manager, purge_cached_app

    app = create_app()
    assert any(getattr(r, "path", None) == "/retention" for r in app.routes)
    yield TestClient(app, headers=SAME), get_auth_manager()
    purge_cached_app()


def test_real_auth_cookie_and_bearer(airflow_api, seeded):
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    client, auth_manager = airflow_api
    token = auth_manager.generate_jwt(SimpleAuthManagerUser(username="dpo", role="viewer"))

    resp = client.get("/retention/", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200 and seeded["overdue"] in resp.text and "Signed in as dpo" in resp.text
    client.cookies.set("_token", token)  # what the UI's login leaves in the browser
    try:
        resp = client.get("/retention/")
        assert resp.status_code == 200 and seeded["overdue"] in resp.text
        assert client.get("/retention/api/summary").json()["requests"]["overdue"] == 1
        assert client.post("/retention/verify", follow_redirects=False).status_code == 403  # viewer
        client.cookies.set("_token", auth_manager.generate_jwt(SimpleAuthManagerUser(username="boss", role="admin")))
        assert client.post("/retention/verify", follow_redirects=False).status_code == 303
        assert client.post("/retention/verify", headers={"Origin": "null"}).status_code == 403
    finally:
        client.cookies.clear()
    _no_personal_data(resp.text, seeded)


def test_real_auth_origin_check_cookie_versus_bearer(airflow_api, seeded):
    """A browser session (the ``_token`` cookie) must post from this origin; a script's explicit Bearer token is
    the only credential Airflow then reads (no other site can make a browser send it), so it needs no Origin."""
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    client, auth_manager = airflow_api
    bare = TestClient(client.app)  # sends no Origin of its own
    token = auth_manager.generate_jwt(SimpleAuthManagerUser(username="boss", role="admin"))
    assert bare.post("/retention/api/verify", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    bare.cookies.set("_token", token)
    try:
        assert bare.post("/retention/api/verify").status_code == 403  # the cookie alone, no Origin
        assert bare.post("/retention/api/verify", headers={"Sec-Fetch-Site": "same-site",
                                                           "Origin": "http://testserver"}).status_code == 403
        # a made-up Bearer next to the cookie: Airflow reads the header only, and refuses it
        assert bare.post("/retention/api/verify", headers={"Authorization": "Bearer forged"}).status_code in (401, 403)
        assert bare.post("/retention/api/verify", headers=SAME).status_code == 200
    finally:
        bare.cookies.clear()
    with seeded["engine"].connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM ledger_verifications")).scalar() == 2


def test_real_auth_rejects_missing_invalid_and_expired_tokens(airflow_api, seeded):
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    client, auth_manager = airflow_api
    assert client.get("/retention/api/summary").status_code == 401
    assert client.post("/retention/verify").status_code == 401
    assert client.get("/retention/", headers={"Authorization": "Bearer not-a-jwt"}).status_code == 403
    forged = auth_manager.generate_jwt(SimpleAuthManagerUser(username="dpo", role="viewer"))[:-4] + "AAAA"
    assert client.get("/retention/", headers={"Authorization": f"Bearer {forged}"}).status_code == 403
    expired = auth_manager.generate_jwt(SimpleAuthManagerUser(username="dpo", role="viewer"),
                                        expiration_time_in_seconds=-3600)
    resp = client.get("/retention/", headers={"Authorization": f"Bearer {expired}"})
    # 401 (expired); 403 when an earlier test changed the JWT secret: rejected either way
    assert resp.status_code in (401, 403) and seeded["overdue"] not in resp.text
    # a browser without a session is sent to Airflow's login page, and back here afterwards
    resp = client.get("/retention/", headers={"Accept": "text/html"}, follow_redirects=False)
    assert resp.status_code == 303
    assert resp.headers["location"].startswith("/auth/login?next=") and "%2Fretention%2F" in resp.headers["location"]
    with seeded["engine"].connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM ledger_verifications")).scalar() == 0


# ---- roles, origin check and the request intake (issue 9, item 5) ---------------------------

VIEWERS = (("dpo", "viewer"), ("u", "user"), ("o", "op"))  # simple auth manager roles without page actions


@pytest.mark.parametrize("who", [FabLikeUser("dpo", "Viewer"), FabLikeUser("u", "User"), FabLikeUser("o", "Op"),
                                 *VIEWERS])
def test_only_the_privacy_role_verifies_or_submits(seeded, plugin, who):
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    user = who if isinstance(who, FabLikeUser) else SimpleAuthManagerUser(username=who[0], role=who[1])
    plugin.app.dependency_overrides[plugin.get_user] = lambda: user
    try:
        client = TestClient(plugin.app, headers=SAME)
        text = client.get("/").text
        assert "Verify now" not in text and 'id="request-form"' not in text
        assert "for the privacy role" in text
        for path in ("/verify", "/api/verify"):
            resp = client.post(path)
            assert resp.status_code == 403 and "Privacy or Admin" in resp.json()["detail"], (path, resp.text)
        resp = client.post("/requests", json={"email": "x.person@example.org"})
        assert resp.status_code == 403
    finally:
        plugin.app.dependency_overrides.pop(plugin.get_user, None)
    with seeded["engine"].connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM ledger_verifications")).scalar() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM subject_requests")).scalar() == 3  # the seeded ones


@pytest.mark.parametrize("who", [FabLikeUser("pia", "Privacy"), FabLikeUser("al", "Admin"),
                                 FabLikeUser("v", "Viewer", "Privacy"), ("boss", "admin"), ("boss", "ADMIN")])
def test_privacy_role_and_admin_verify(seeded, plugin, who):
    """FAB's ``Privacy`` and ``Admin`` exactly; the simple auth manager's admin role (which Airflow itself reads
    upper-cased: ``admin`` in its users list is its ``ADMIN``)."""
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    user = who if isinstance(who, FabLikeUser) else SimpleAuthManagerUser(username=who[0], role=who[1])
    plugin.app.dependency_overrides[plugin.get_user] = lambda: user
    try:
        client = TestClient(plugin.app, headers=SAME)
        text = client.get("/").text
        assert "Verify now" in text and 'id="request-form"' in text
        assert client.post("/api/verify").json()["ok"] is True
    finally:
        plugin.app.dependency_overrides.pop(plugin.get_user, None)


@pytest.mark.parametrize("role", ["PRIVACY", "privacy", "admin", "ADMIN", "Privacy ", " Admin", "Privacy\x00",
                                  "Prіvacy", "Administrator", ""])  # (the i of the 6th is Cyrillic)
def test_role_names_match_exactly(seeded, plugin, role):
    """A FAB role whose name only looks like Privacy or Admin gets no page actions: names are case-sensitive."""
    plugin.app.dependency_overrides[plugin.get_user] = lambda: FabLikeUser("mallory", role)
    try:
        client = TestClient(plugin.app, headers=SAME)
        assert 'id="request-form"' not in client.get("/").text
        for path in ("/verify", "/api/verify"):
            assert client.post(path).status_code == 403, (role, path)
        assert client.post("/requests", json={"email": "x.person@example.org"}).status_code == 403
    finally:
        plugin.app.dependency_overrides.pop(plugin.get_user, None)
    with seeded["engine"].connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM ledger_verifications")).scalar() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM subject_requests")).scalar() == 3


@pytest.mark.parametrize("headers", [
    {"Origin": "null"}, {"Origin": "NULL"}, {"Origin": "http://evil.example"},
    {"Referer": "http://evil.example/x"}, {"Sec-Fetch-Site": "cross-site"},
    {},  # neither Origin nor Referer
    {"Origin": "https://testserver"}, {"Referer": "https://testserver/retention/"},  # another scheme
    {"Origin": "http://testserver:8080"}, {"Origin": "http://testserver.evil.example"},  # another port, host
    {"Origin": "http://evil.example", "Referer": "http://testserver/"},  # Origin wins over a Referer
    {"Origin": "http://testserver", "Sec-Fetch-Site": "same-site"},  # a sibling subdomain's page
    {"Origin": "http://testserver", "Sec-Fetch-Site": "none"},
    {"Origin": "testserver"}, {"Origin": "http://"}, {"Origin": "http://testserver:99999"}, {"Referer": "/retention/"},
    {"Origin": "http://user@evil.example#@testserver"},
])
def test_origin_check_refuses_null_and_foreign_origins(seeded, plugin, headers):
    as_privacy(plugin)
    try:
        client = TestClient(plugin.app)  # no Origin of its own: each case sends exactly its headers
        for path in ("/verify", "/api/verify", "/requests"):
            resp = client.post(path, headers=headers, data={"email": "x.person@example.org"})
            assert resp.status_code == 403 and resp.json()["detail"] == "cross-origin request refused", (path, headers)
        ok = client.post("/api/verify", headers={"Origin": "http://testserver", "Referer": "http://testserver/"})
        assert ok.status_code == 200
    finally:
        plugin.app.dependency_overrides.pop(plugin.get_user, None)
    with seeded["engine"].connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM ledger_verifications")).scalar() == 1
        assert conn.execute(sa.text("SELECT count(*) FROM subject_requests")).scalar() == 3


@pytest.mark.parametrize("headers", [
    {"Origin": "http://testserver"}, {"Origin": "HTTP://TestServer:80"}, {"Referer": "http://testserver/retention/"},
    {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},
])
def test_origin_check_accepts_this_origin(seeded, plugin, headers):
    as_privacy(plugin)
    try:
        resp = TestClient(plugin.app).post("/api/verify", headers=headers)
        assert resp.status_code == 200 and resp.json()["ok"] is True, headers
    finally:
        plugin.app.dependency_overrides.pop(plugin.get_user, None)


def test_origin_check_compares_scheme_host_and_port_of_the_request(seeded, plugin):
    """Served over https on port 8443, an https Origin of that port is ours; the http one is not."""
    as_privacy(plugin)
    try:
        client = TestClient(plugin.app, base_url="https://privacy.example:8443")
        assert client.post("/api/verify", headers={"Origin": "https://privacy.example:8443"}).status_code == 200
        for origin in ("http://privacy.example:8443", "https://privacy.example", "https://privacy.example:443"):
            assert client.post("/api/verify", headers={"Origin": origin}).status_code == 403, origin
    finally:
        plugin.app.dependency_overrides.pop(plugin.get_user, None)


@pytest.fixture
def intake(seeded, plugin, monkeypatch):
    """A privacy user on the page; triggering is recorded instead of creating a DAG run (the e2e test does that)."""
    triggered: list[tuple] = []
    allowed = {"erasure_request": True}
    monkeypatch.setattr(plugin, "may_trigger", lambda user, dag_id: allowed.get(dag_id, False))
    monkeypatch.setattr(plugin, "trigger_run", lambda dag_id, run_id, conf, user: triggered.append(
        (dag_id, run_id, conf, user.get_name())))
    as_privacy(plugin)
    try:
        yield SimpleNamespace(client=TestClient(plugin.app, headers=SAME), triggered=triggered, allowed=allowed,
                              **seeded)
    finally:
        plugin.app.dependency_overrides.pop(plugin.get_user, None)


def test_intake_form_registers_encrypted_and_triggers_with_the_id_only(intake):
    address = "Zoe.Intake@example.org"
    resp = intake.client.post("/requests", data={"email": address, "mode": "restrict", "dry_run": "true"},
                              headers={"Origin": "http://testserver"}, follow_redirects=False)
    assert resp.status_code == 303, resp.text
    request_id = resp.headers["location"].split("submitted=")[1].split("#")[0]
    [(dag_id, run_id, conf, who)] = intake.triggered
    assert (dag_id, conf, who) == ("erasure_request", {"request_id": request_id}, "pia")
    assert address.lower() not in json.dumps(intake.triggered).lower()
    registry = Registry(intake.engine, KEY)
    req = registry.get(request_id)
    assert (req["dag_id"], req["run_id"], req["mode"], req["dry_run"], req["source"], req["status"]) == (
        "erasure_request", run_id, "restrict", True, "page", "pending")
    assert registry.identities(request_id).email.lower() == address.lower()
    with intake.engine.connect() as conn:  # encrypted at rest: the address appears in no column
        row = conn.execute(sa.text("SELECT * FROM subject_requests WHERE request_id = :r"), {"r": request_id}).one()
    assert address.lower() not in repr(tuple(row)).lower()
    page = intake.client.get(resp.headers["location"].split("#")[0]).text
    assert f"Request <code>{request_id}</code> registered" in page and request_id in page
    assert address.lower() not in page.lower()


def test_intake_json(intake):
    resp = intake.client.post("/requests", json={"email": "json.person@example.org", "phone": "+49 30 1234567"})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert set(body) == {"request_id", "dag_id", "run_id"} and body["dag_id"] == "erasure_request"
    assert intake.triggered == [("erasure_request", body["run_id"], {"request_id": body["request_id"]}, "pia")]
    assert Registry(intake.engine, KEY).get(body["request_id"])["mode"] == "erase"


@pytest.mark.parametrize("body, message", [
    ({}, "a request needs at least one identity"),
    ({"email": "not-an-address"}, "email"),
    ({"email": "a@example.org", "mode": "delete-everything"}, "mode must be one of erase, restrict"),
    ({"email": "a@example.org", "mode": "ERASE"}, "mode must be one of erase, restrict"),
    ({"email": "a@example.org", "mode": "a@example.org"}, "mode must be one of erase, restrict"),
    ({"email": "a@example.org", "shoe_size": "44"}, "unknown field(s): shoe_size"),
    ({"email": ["a@example.org"]}, "email must be a string"),
    ({"email": "a\x00b@example.org"}, "email"),
    ({"email": "a" * 300 + "@example.org"}, "email"),
])
def test_intake_refuses_bad_requests_naming_the_field_not_the_value(intake, body, message):
    resp = intake.client.post("/requests", json=body)
    assert resp.status_code == 400, resp.text
    detail = resp.json()["detail"]
    assert detail.startswith("request refused: ") and message in detail, detail
    for kind in ("email", "phone"):  # identities are never echoed
        if isinstance(body.get(kind), str):
            assert body[kind] not in detail
    assert intake.triggered == []
    with intake.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM subject_requests")).scalar() == 3


def test_intake_needs_the_auth_managers_permission_to_trigger(intake):
    intake.allowed["erasure_request"] = False  # FAB: a Privacy role without the DAG's access_control
    resp = intake.client.post("/requests", json={"email": "p@example.org"})
    assert resp.status_code == 403 and "not allowed to trigger erasure_request" in resp.json()["detail"]
    assert intake.triggered == []
    with intake.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM subject_requests")).scalar() == 3


def test_intake_trigger_failure_leaves_the_request_open_not_lost(intake, plugin, monkeypatch):
    def fail(*args):
        raise RuntimeError("dag not found")

    monkeypatch.setattr(plugin, "trigger_run", fail)
    with pytest.raises(RuntimeError):
        intake.client.post("/requests", json={"email": "lost.person@example.org"})
    with intake.engine.connect() as conn:
        status = conn.execute(sa.text("SELECT status FROM subject_requests WHERE source = 'page'")).scalar_one()
    assert status == "incomplete"  # listed on the page as open; no DAG run holds the identity


@pytest.mark.parametrize("mode", ["access", "rectify", "withdraw"])
@pytest.mark.parametrize("as_json", [True, False])
def test_intake_refuses_modes_erasure_request_does_not_run(intake, mode, as_json):
    """The page triggers erasure_request, which runs erase and restrict: any other mode is refused before anything
    is registered or triggered, naming the mode (it used to answer 201 and leave a run to fail)."""
    body = {"email": "m.person@example.org", "mode": mode}
    resp = intake.client.post("/requests", json=body) if as_json else intake.client.post(
        "/requests", data=body, follow_redirects=False)
    assert resp.status_code == 400, resp.text
    detail = resp.json()["detail"]
    assert detail == (f"request refused: mode '{mode}' is not run by erasure_request (it runs erase, restrict); "
                      f"{mode} requests go to access_request")
    assert intake.triggered == []
    with intake.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM subject_requests")).scalar() == 3


@pytest.mark.parametrize("mode", ["erase", "restrict"])
def test_intake_takes_the_modes_erasure_request_runs(intake, mode):
    resp = intake.client.post("/requests", json={"email": "ok.person@example.org", "mode": mode})
    assert resp.status_code == 201, resp.text
    assert Registry(intake.engine, KEY).get(resp.json()["request_id"])["mode"] == mode
    assert [t[0] for t in intake.triggered] == ["erasure_request"]


def test_the_modes_the_page_takes_are_the_dags(intake):
    """Guard against drift: the page's modes are exactly erasure_request's mode parameter (dags/erasure_request.py)."""
    from include.retention.registry import ERASURE_MODES

    text = (ROOT / "dags" / "erasure_request.py").read_text()
    enum = re.search(r'"mode": Param\("erase", type="string", enum=\[([^\]]*)\]', text).group(1)
    assert tuple(m.strip().strip('"') for m in enum.split(",")) == ERASURE_MODES
    page = intake.client.get("/").text
    assert re.findall(r"<option>(\w+)</option>", page) == list(ERASURE_MODES)


def test_intake_without_origin_is_refused(intake):
    resp = TestClient(intake.client.app).post("/requests", json={"email": "no.origin@example.org"})
    assert resp.status_code == 403 and resp.json()["detail"] == "cross-origin request refused"
    assert intake.triggered == []


def test_page_lists_open_discovery_findings(page, seeded):
    """Open findings of data_map_drift: where, kind, classifier, hit rate, sample size; decided ones are gone."""
    from include.retention.discovery import Finding, Report
    from include.retention.findings import FindingStore

    store = FindingStore(seeded["engine"])
    assert "No open finding." in page.get("/").text  # discovery never ran: no table, an empty section
    shown = Finding("crm", "contacts", "secondary_email", "unmapped_column", "email", 0.75, 40)
    decided = Finding("crm", "contacts_copy", "addr", "unmapped_table", "email", 1.0, 12)
    store.record(Report("crm", [shown, decided]))
    store.decide(decided.finding_id, "not personal", "dpo")
    text = page.get("/").text
    assert _row(text, "data-finding-id", shown.finding_id)[:5] == [
        "crm.contacts.secondary_email", "unmapped column", "email", "0.75", "40"]
    assert decided.finding_id not in text
    data = page.get("/api/summary").json()
    assert [f["place"] for f in data["findings"]] == ["crm.contacts.secondary_email"]
