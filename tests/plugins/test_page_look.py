"""The page in the Airflow UI's look: its theme tokens, light and dark following the UI, keyboard access, and the
forecast fetched without a reload (GET /retention/api/forecast). The browser side: tests/e2e/test_browser.py."""

from __future__ import annotations

import re

import pytest

from include.retention import dashboard
from tests.plugins.test_retention_page import (  # noqa: F401 - fixtures
    _no_personal_data,
    ledger_db,
    page,
    plugin,
    seeded,
)

pytestmark = pytest.mark.integration
DARK_BG = "oklch(0.23185 0.0323 266.44)"  # the UI's black (its dark bg token)


def _vars(css: str, selector: str) -> dict[str, str]:
    block = re.search(re.escape(selector) + r"\s*\{([^}]*)\}", css)
    assert block, f"no rule {selector}"
    return dict(re.findall(r"(--[a-z]+):\s*([^;]+);", block.group(1)))


def test_theme_tokens_light_dark_and_the_uis_own_switch(page, seeded):
    text = page.get("/").text
    css = text.split("<style>", 1)[1].split("</style>", 1)[0]
    light, dark = _vars(css, ":root"), _vars(css, ":root.dark")
    assert light["--bg"] == "#ffffff" and dark["--bg"] == DARK_BG
    assert set(light) == set(dark)  # every colour has its dark twin
    assert light["--fg"] == DARK_BG and dark["--fg"] != light["--fg"]
    system_dark = _vars(css, "@media (prefers-color-scheme: dark) { :root:not(.light)")
    assert system_dark["--bg"] == DARK_BG  # the UI's "system" setting: the browser's preference
    assert '"Segoe UI"' in css and "focus-visible" in css  # the style sheet verbatim (not HTML-escaped)
    script = text.split("</style>", 1)[1].split("</head>", 1)[0]
    # the UI (next-themes): class "dark" / "light" on its <html>, the choice in localStorage["theme"]
    assert 'classList.contains("dark")' in script and 'localStorage.getItem("theme")' in script
    assert "MutationObserver" in script and 'e.key === "theme"' in script


def test_keyboard_skip_link_and_chart_as_a_table(page, seeded):
    text = page.get("/").text
    body = text.split("<body>", 1)[1]
    assert body.lstrip().startswith('<a class="skip" href="#requests">')  # first Tab stop
    assert 'id="requests"' in text
    chart = re.search(r'<svg id="actions-chart"[^>]*aria-label="([^"]*)"', text)
    assert chart and "delete 7" in " ".join(chart.group(1).split())
    table = text.split('id="chart-table"', 1)[1].split("</details>", 1)[0]
    assert "<summary>" in table and re.search(r"<td>\d{4}-\d\d-\d\d</td>", table)
    _no_personal_data(text, seeded)


def test_forecast_being_computed_is_fetched_not_reloaded(page, seeded, monkeypatch):
    pending = {"ok": None, "pending": True, "problem": "the forecast is being computed: it appears here when ready",
               "days": 90, "series": [], "rules": [], "problems": []}
    ready = {"ok": True, "days": 90, "actions": ["lock", "anonymize", "delete"], "series": [], "max": 0,
             "rules": [{"rule_id": "crm.leads.inactivity", "collection": "crm.leads", "category": "leads",
                        "now": {"delete": 2}, "horizons": [{"days": 7, "counts": {"delete": 3}}], "error": None}]}
    answers = iter([pending, ready])
    monkeypatch.setattr(dashboard, "forecast_for_page", lambda now=None, wait=None: next(answers))
    text = page.get("/").text
    box = text.split('id="forecast-body"', 1)[1].split("</div>", 1)[0]
    assert 'data-pending="true"' in box and "appears here when ready" in box and "reload" not in box
    assert 'fetch("api/forecast"' in text and "textContent" in text
    fetched = page.get("/api/forecast").json()
    assert fetched == ready


def test_forecast_endpoint_needs_a_user(seeded, plugin):
    from fastapi.testclient import TestClient

    assert TestClient(plugin.app).get("/api/forecast").status_code == 401


def test_a_failed_forecast_is_said_not_pending_forever(monkeypatch):
    monkeypatch.setattr(dashboard, "_forecast_cache", {})
    monkeypatch.setattr(dashboard, "_forecast_failed", {})
    monkeypatch.setenv("RETENTION_POLICY_PATH", "/nonexistent/policy.yaml")
    result = dashboard.forecast_for_page(wait=30)
    assert result["ok"] is False and "policy.yaml" in result["problem"] and not result.get("pending")
