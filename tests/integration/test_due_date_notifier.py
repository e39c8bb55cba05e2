"""The due-date notifier on its own: ledger entry and webhook payload (a real HTTP server), no identity."""

from __future__ import annotations

import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace

import pytest

from include.retention.connections import make_engine
from include.retention.ledger import Ledger
from include.retention.registry import Identities, NewRequest, Registry
from tests.conftest import KEY

pytestmark = pytest.mark.integration


@pytest.fixture
def webhook():
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/alert", received
    server.shutdown()


def test_notifier_records_and_posts_request_ids_only(tmp_path, monkeypatch, webhook):
    from include.retention.airflow import deadlines

    url, received = webhook
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setenv("AIRFLOW_CONN_RETENTION_LEDGER", json.dumps({"conn_type": "sqlite",
                                                                    "host": str(tmp_path / "ledger.db")}))
    monkeypatch.setenv("RETENTION_HMAC_KEY", KEY.decode())
    monkeypatch.setenv("RETENTION_ALERT_WEBHOOK", url)
    monkeypatch.setattr(deadlines, "airflow_resolver", __import__("include.retention.connections",
                                                                  fromlist=["env_resolver"]).env_resolver)
    registry = Registry(engine, KEY)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    late = registry.register(NewRequest(Identities(email="late.person@example.org")),
                             received_at=now - dt.timedelta(days=40))
    registry.register(NewRequest(Identities(email="fine.person@example.org")))
    deadlines.DueDateNotifier().notify({"dag": SimpleNamespace(dag_id="erasure_deadlines"), "run_id": "r1"})
    alerts = [r for r in Ledger(engine, KEY).rows() if r["action"] == "alert"]
    assert len(alerts) == 1 and alerts[0]["count"] == 1 and late in alerts[0]["details"]
    assert len(received) == 1 and [r["request_id"] for r in received[0]["requests"]] == [late]
    assert "@" not in json.dumps(received) and "@" not in repr(alerts)
    engine.dispose()
