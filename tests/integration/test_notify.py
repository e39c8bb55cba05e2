"""Telling recipients, requesters and the DPO without Airflow's runtime: a real SMTP server (aiosmtpd on
127.0.0.1) and a real HTTP server, the data map's recipients, the extension (Art. 12(3)) and the DPO's alert.

The servers are fixtures here; tests/airflow/test_notifications.py uses them too."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from dateutil.relativedelta import relativedelta

from include.retention.errors import PolicyError
from include.retention.policy import parse_policy
from include.retention.registry import Identities, NewRequest, Registry
from include.retention.stores.sql import make_engine
from tests.conftest import KEY, ROOT

pytestmark = pytest.mark.integration


# ---- servers -----------------------------------------------------------------------------------------------


class Mailbox:
    """Messages aiosmtpd accepted: (envelope recipients, parsed message)."""

    def __init__(self):
        self.messages: list[tuple[list[str], email.message.EmailMessage]] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
        msg = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        self.messages.append(([a.lower() for a in envelope.rcpt_tos], msg))
        return "250 OK"

    def to(self, address: str) -> list[email.message.EmailMessage]:
        return [m for rcpts, m in self.messages if address.lower() in rcpts]


def text_of(msg: email.message.EmailMessage) -> str:
    """Subject and every text part, decoded (the hook may base64- or QP-encode the body)."""
    parts = [str(msg["Subject"])]
    for part in msg.walk():
        if part.get_content_maintype() == "text":
            parts.append(part.get_content())
    return "\n".join(parts)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtp_server():
    """A real SMTP server on 127.0.0.1 (aiosmtpd), no TLS: (port, mailbox)."""
    from aiosmtpd.controller import Controller

    logging.getLogger("mail.log").setLevel(logging.WARNING)  # the server's own log names every address
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=_free_port())
    controller.start()
    yield controller.port, box
    controller.stop()


class Hook:
    """What the HTTP server received, and the statuses it answers with (then 200)."""

    def __init__(self):
        self.received: list[dict] = []
        self.statuses: list[int] = []


@pytest.fixture
def http_server():
    """A real HTTP server on 127.0.0.1 answering POSTs with ``hook.statuses`` in turn, then 200: (port, hook)."""
    hook = Hook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            hook.received.append({"path": self.path, "body": json.loads(body or b"{}"),
                                  "auth": self.headers.get("Authorization")})
            status = hook.statuses.pop(0) if hook.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_port, hook
    server.shutdown()
    server.server_close()


def smtp_conn(port: int, **extra) -> str:
    return json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": port,
                       "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "privacy@company.example",
                                 "retry_limit": 1, **extra}})


def http_conn(port: int) -> str:
    return json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": port, "schema": "http"})


# ---- the data map's recipients ---------------------------------------------------------------------------------

DEFAULT = (ROOT / "config" / "policy.yaml").read_text()


def test_default_map_names_the_processors_of_the_privacy_policy():
    policy = parse_policy(DEFAULT, "config/policy.yaml")
    assert set(policy.recipients) == {"hosting", "it_maintenance", "marketing_tools", "server_log_operator"}
    assert policy.recipients_of("crm") == ["hosting", "it_maintenance"]
    assert policy.recipients_of("objects", "access_logs") == ["hosting", "server_log_operator"]
    assert all(r.identity != "plain" or r.channel == "email" for r in policy.recipients.values())


@pytest.mark.parametrize("edit, where, problem", [
    (("notify: [hosting, it_maintenance]", "notify: [hosting, cloud]"), "systems.crm.notify[1]",
     "unknown recipient 'cloud'"),
    (("    channel: webhook\n", "    channel: webhook\n    address: x@y.example\n"),
     "recipients.marketing_tools.address", "'address' is for e-mail recipients"),
    (("    identity: digest  ", "    identity: plain  "), "recipients.marketing_tools.identity",
     "plaintext identities go only by e-mail"),
    (('address: "privacy@hosting.example"', 'address: "privacy+{email}@hosting.example"'),
     "recipients.hosting.address", "unknown field {email} in the address template"),
    (("    channel: email\n    address: \"privacy@site-operator.example\"\n", "    channel: manual\n"
      "    connection: smtp_default\n"), "recipients.server_log_operator.connection", "a manual recipient has no"),
    (("    channel: webhook\n", "    channel: pigeon\n"), "recipients.marketing_tools.channel", "Input should be"),
])
def test_bad_recipients_are_refused_naming_file_path_problem(edit, where, problem):
    old, new = edit
    assert old in DEFAULT
    with pytest.raises(PolicyError) as info:
        parse_policy(DEFAULT.replace(old, new, 1), "config/policy.yaml")
    assert str(info.value).startswith(f"config/policy.yaml: {where}: ") and problem in str(info.value)


def test_plan_tells_only_the_recipients_of_changed_systems():
    from include.retention.requests.notify import plan

    policy = parse_policy(DEFAULT, "p")
    states = {"crm": {"counts": {"collections": {"crm.contacts": {"deleted": 1}, "crm.leads": {}},
                                 "removed_along": {"objects.cvs": 2}}},
              "mailing": {"counts": {"collections": {"mailing.subscribers": {}}}}}
    planned = plan(policy, {"mode": "erase", "dry_run": False}, states)
    assert set(planned) == {"hosting", "it_maintenance"}  # mailing changed nothing: marketing tools not told
    assert planned["hosting"]["systems"] == ["crm", "objects"]
    assert planned["hosting"]["categories"] == ["applications", "contact_data"]
    assert plan(policy, {"mode": "erase", "dry_run": True}, states) == {}
    assert plan(policy, {"mode": "access", "dry_run": False}, states) == {}


# ---- the requester: extension (Art. 12(3)) -------------------------------------------------------------------


@pytest.fixture
def registry(tmp_path, monkeypatch):
    path = tmp_path / "ledger.db"
    monkeypatch.setenv("AIRFLOW_CONN_RETENTION_LEDGER", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    monkeypatch.setenv("RETENTION_HMAC_KEY", KEY.decode())
    monkeypatch.setenv("RETENTION_POLICY_PATH", str(ROOT / "config" / "policy.yaml"))
    engine = make_engine(f"sqlite:///{path}")
    registry = Registry(engine, KEY)
    registry.ensure_schema()
    yield registry
    engine.dispose()


def test_extension_moves_the_due_date_once_and_tells_the_requester(registry, smtp_server, monkeypatch, capsys):
    from include.retention import cli

    port, box = smtp_server
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", smtp_conn(port))
    rid = registry.register(NewRequest(Identities(email="Late.Answer@Example.org")))
    due = registry.get(rid)["due_at"]

    assert cli.main(["extend", rid, "--months", "2", "--reason", "three archives must be searched by hand"]) == 0
    assert registry.get(rid)["due_at"] == due + relativedelta(months=2)
    out = capsys.readouterr().out
    assert "notice to the requester: sent" in out and "@" not in out
    [notice] = box.to("late.answer@example.org")
    assert rid in text_of(notice) and "three archives must be searched by hand" in text_of(notice)
    assert "Art. 12(3)" in text_of(notice) and (due + relativedelta(months=2)).strftime("%Y-%m-%d") in text_of(notice)
    assert registry.details(rid)["extension"]["months"] == 2

    # a second extension is refused with a clear error; nothing moves, nothing is sent
    assert cli.main(["extend", rid, "--months", "1", "--reason", "again"]) == 2
    assert "already extended" in capsys.readouterr().err
    assert registry.get(rid)["due_at"] == due + relativedelta(months=2)
    assert len(box.messages) == 1


def test_extension_limits(registry, smtp_server, monkeypatch, capsys):
    from include.retention import cli

    port, box = smtp_server
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", smtp_conn(port))
    rid = registry.register(NewRequest(Identities(phone="+48 500 600 700")))
    assert cli.main(["extend", rid, "--months", "3", "--reason", "x"]) == 2  # at most two months
    assert "invalid choice" in capsys.readouterr().err
    assert cli.main(["extend", rid, "--months", "1", "--reason", "  "]) == 2
    assert "needs a reason" in capsys.readouterr().err
    assert cli.main(["extend", "no-such-request", "--months", "1", "--reason", "x"]) == 2
    # no e-mail address: recorded, not sent (and said so)
    assert cli.main(["extend", rid, "--months", "1", "--reason", "more time"]) == 0
    assert "recorded, not sent: the request has no e-mail address" in capsys.readouterr().out
    assert box.messages == []
    registry.finish(rid, "complete")
    rid2 = registry.register(NewRequest(Identities(email="done@example.org")))
    registry.finish(rid2, "complete")
    assert cli.main(["extend", rid2, "--months", "1", "--reason", "x"]) == 2
    assert "only an open request" in capsys.readouterr().err


def test_extension_without_mail_connection_says_not_sent(registry, monkeypatch, capsys):
    from include.retention import cli

    monkeypatch.delenv("AIRFLOW_CONN_SMTP_DEFAULT", raising=False)
    monkeypatch.delenv("RETENTION_NOTIFY_RECORD_ONLY", raising=False)
    rid = registry.register(NewRequest(Identities(email="someone@example.org")))
    assert cli.main(["extend", rid, "--months", "1", "--reason", "more time"]) == 0
    assert "notice to the requester: not sent: no connection 'smtp_default' configured" in capsys.readouterr().out
    assert registry.details(rid)["requester_notices"][0]["notice"] == "extension"
    # the demo's opt-in says it recorded the notice instead
    monkeypatch.setenv("RETENTION_NOTIFY_RECORD_ONLY", "1")
    rid = registry.register(NewRequest(Identities(email="someone.else@example.org")))
    assert cli.main(["extend", rid, "--months", "1", "--reason", "more time"]) == 0
    assert "recorded, not sent: no connection 'smtp_default' configured" in capsys.readouterr().out


# ---- the DPO: the due-date alert through SmtpNotifier and the webhook notifier -------------------------------


def test_due_date_alert_goes_by_mail_and_webhook_connections(registry, smtp_server, http_server, monkeypatch):
    from include.retention.airflow import deadlines
    from include.retention.connections import env_resolver
    from include.retention.ledger import Ledger

    port, box = smtp_server
    hport, hook = http_server
    hook.statuses = [503]  # the chat webhook is retried
    monkeypatch.setenv("AIRFLOW_CONN_RETENTION_ALERT_SMTP", smtp_conn(port, to="dpo@company.example"))
    monkeypatch.setenv("AIRFLOW_CONN_RETENTION_ALERT_WEBHOOK", http_conn(hport))
    monkeypatch.delenv("RETENTION_ALERT_WEBHOOK", raising=False)
    monkeypatch.setattr(deadlines, "airflow_resolver", env_resolver)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    late = registry.register(NewRequest(Identities(email="late.person@example.org")),
                             received_at=now - dt.timedelta(days=40))
    registry.register(NewRequest(Identities(email="fine.person@example.org")))
    deadlines.DueDateNotifier().notify({"dag": SimpleNamespace(dag_id="erasure_deadlines"), "run_id": "r1"})

    [mail] = box.to("dpo@company.example")
    assert late in text_of(mail) and "example.org" not in text_of(mail)
    assert len(hook.received) == 2 and hook.received[0]["body"] == hook.received[1]["body"]
    body = hook.received[-1]["body"]
    assert late in body["text"] and [r["request_id"] for r in body["requests"]] == [late]
    assert "example.org" not in json.dumps(body)
    assert [r["action"] for r in Ledger(registry.engine, KEY).rows()] == ["alert"]


def test_unconfigured_alert_channels_are_skipped(registry, monkeypatch):
    from include.retention.airflow import deadlines
    from include.retention.connections import env_resolver

    for name in ("AIRFLOW_CONN_RETENTION_ALERT_SMTP", "AIRFLOW_CONN_RETENTION_ALERT_WEBHOOK",
                 "RETENTION_ALERT_WEBHOOK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(deadlines, "airflow_resolver", env_resolver)
    deadlines.DueDateNotifier().notify({"dag": SimpleNamespace(dag_id="erasure_deadlines"), "run_id": "r1"})
