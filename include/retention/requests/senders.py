"""A ``Sender`` outside Airflow (the CLI): the same ``AIRFLOW_CONN_*`` connections, read from the environment,
mail through ``smtplib`` and webhooks through ``requests``. Inside a task the Airflow providers send
(``include.retention.airflow.notify_tasks.AirflowSender``); both post webhooks with ``post_json``."""

from __future__ import annotations

import html
import smtplib
from email.message import EmailMessage
from typing import Any

from include.retention.connections import ConnInfo, Resolver, env_resolver
from include.retention.errors import RetentionError
from include.retention.settings import settings

WEBHOOK_TIMEOUT = settings().webhook_timeout_seconds


def notice_html(body: str) -> str:
    """Mail goes out as HTML: the plain-text template, kept as it is."""
    return f'<pre style="font-family: inherit; white-space: pre-wrap">{html.escape(body)}</pre>'


def _extra(conn: Any) -> dict[str, Any]:
    """A connection's extra: an Airflow ``Connection``'s ``extra_dejson`` or a ``ConnInfo``'s ``extra``."""
    return (conn.extra_dejson if hasattr(conn, "extra_dejson") else conn.extra) or {}


def webhook_url(conn: Any, endpoint: str | None) -> str:
    """The URL of an HTTP connection (host, port, scheme) plus ``endpoint`` (or the connection's own)."""
    scheme = (conn.schema or "").lower() if (conn.schema or "").lower() in ("http", "https") else (
        "https" if conn.conn_type == "https" else "http")
    host = conn.host or ""
    if "://" in host:  # a host written as a URL
        scheme, _, host = host.partition("://")
    base = f"{scheme}://{host.rstrip('/')}" + (f":{conn.port}" if conn.port else "")
    path = endpoint or _extra(conn).get("endpoint") or ""
    return base + ("/" + path.lstrip("/") if path else "")


def post_json(conn: Any, endpoint: str | None, payload: dict[str, Any]) -> int:
    """POST ``payload`` through an HTTP connection (headers from ``extra.headers``); returns the status."""
    import requests

    headers = {"Content-Type": "application/json", **(_extra(conn).get("headers") or {})}
    auth = (conn.login, conn.password or "") if conn.login else None
    response = requests.post(webhook_url(conn, endpoint), json=payload, headers=headers, auth=auth,
                             timeout=WEBHOOK_TIMEOUT)
    response.close()
    return response.status_code


class EnvSender:
    """``Sender`` over connections from a resolver (default: the ``AIRFLOW_CONN_*`` environment)."""

    def __init__(self, resolver: Resolver = env_resolver) -> None:
        self.resolver = resolver

    def _conn(self, conn_id: str | None) -> ConnInfo | None:
        if not conn_id:
            return None
        try:
            return self.resolver(conn_id)
        except RetentionError:
            return None

    def configured(self, conn_id: str | None) -> bool:
        return self._conn(conn_id) is not None

    def secret(self, conn_id: str | None) -> str | None:
        conn = self._conn(conn_id)
        return conn.password if conn is not None else None

    def send(self, conn_id: str, to: str, subject: str, body: str) -> None:
        """One message: SSL unless ``extra.disable_ssl``, else STARTTLS unless ``extra.disable_tls`` (the SMTP
        provider's connection fields); the sender is ``RETENTION_MAIL_FROM`` or ``extra.from_email``."""
        conn = self._conn(conn_id)
        if conn is None:
            raise RetentionError(f"connection {conn_id!r} is not configured")
        extra = conn.extra or {}
        sender = settings().mail_from or extra.get("from_email")
        if not sender:
            raise RetentionError(f"connection {conn_id!r} has no from_email (extra) and RETENTION_MAIL_FROM is unset")
        msg = EmailMessage()
        msg["Subject"], msg["From"], msg["To"], msg["X-Retention-Notice"] = subject, sender, to, "1"
        msg.set_content(notice_html(body), subtype="html")
        timeout = float(extra.get("timeout", 30))
        if not extra.get("disable_ssl"):
            server: smtplib.SMTP = smtplib.SMTP_SSL(conn.host or "localhost", conn.port or 465, timeout=timeout)
        else:
            server = smtplib.SMTP(conn.host or "localhost", conn.port or 587, timeout=timeout)
        with server:
            if extra.get("disable_ssl") and not extra.get("disable_tls"):
                server.starttls()
            if conn.login:
                server.login(conn.login, conn.password or "")
            server.send_message(msg)

    def post(self, conn_id: str, endpoint: str | None, payload: dict[str, Any]) -> int:
        conn = self._conn(conn_id)
        if conn is None:
            raise RetentionError(f"connection {conn_id!r} is not configured")
        return post_json(conn, endpoint, payload)
