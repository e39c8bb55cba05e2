"""Connections: Airflow connection ids -> ``ConnInfo`` -> SQLAlchemy engines, the ledger and the key.

The one low module every other one may import (it imports no store, no Airflow). Inside
Airflow the resolver is Airflow's own ``Connection.get`` (``include.retention.airflow.sweep_tasks``);
outside it (CLI, scripts, tests) ``env_resolver`` parses the same ``AIRFLOW_CONN_*`` values.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import sqlalchemy as sa

from include.retention.errors import RetentionError
from include.retention.masking import LEGACY_KID, KeyRing
from include.retention.settings import reveal, settings

if TYPE_CHECKING:
    from include.retention.ledger import Ledger

LEDGER_CONN_ID = settings().ledger_conn_id
KEY_CONN_ID = settings().key_conn_id
DEFAULT_POLICY = os.path.join(os.path.dirname(__file__), "..", "..", "config", "policy.yaml")


def policy_path() -> str:
    return settings().policy_path or os.path.abspath(DEFAULT_POLICY)


@dataclass(frozen=True)
class ConnInfo:
    conn_type: str
    host: str | None = None
    port: int | None = None
    login: str | None = None
    password: str | None = None
    schema: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


Resolver = Callable[[str], ConnInfo]

_DRIVERS = {
    "postgres": "postgresql+psycopg2", "postgresql": "postgresql+psycopg2",
    "mysql": "mysql+pymysql", "mariadb": "mysql+pymysql", "sqlite": "sqlite",
}


def sqlalchemy_url(info: ConnInfo) -> str:
    """A SQLAlchemy URL for a SQL connection (an explicit ``extra.sqlalchemy_url`` wins)."""
    if info.extra.get("sqlalchemy_url"):
        return info.extra["sqlalchemy_url"]
    driver = _DRIVERS.get(info.conn_type)
    if driver is None:
        raise RetentionError(f"connection type {info.conn_type!r} is not a SQL database this product supports")
    if driver == "sqlite":
        return f"sqlite:///{info.host or info.schema}"
    auth = ""
    if info.login:
        auth = quote(info.login, safe="") + (f":{quote(info.password, safe='')}" if info.password else "") + "@"
    port = f":{info.port}" if info.port else ""
    url = f"{driver}://{auth}{info.host or 'localhost'}{port}/{info.schema or ''}"
    if driver.startswith("mysql"):
        url += "?charset=utf8mb4"
    return url


def parse_conn(value: str) -> ConnInfo:
    """Parse an ``AIRFLOW_CONN_*`` value (JSON or URI form) like Airflow does."""
    value = value.strip()
    if value.startswith("{"):
        data = json.loads(value)
        extra = data.get("extra") or {}
        return ConnInfo(data.get("conn_type", ""), data.get("host"), data.get("port"), data.get("login"),
                        data.get("password"), data.get("schema"),
                        json.loads(extra) if isinstance(extra, str) else extra)
    parts = urlsplit(value)
    extra = dict(parse_qsl(parts.query))
    if "__extra__" in extra:
        extra = json.loads(extra["__extra__"])
    return ConnInfo(parts.scheme.replace("-", "_"), unquote(parts.hostname or "") or None, parts.port,
                    unquote(parts.username) if parts.username else None,
                    unquote(parts.password) if parts.password else None,
                    unquote(parts.path.lstrip("/")) or None, extra)


def env_resolver(conn_id: str) -> ConnInfo:
    value = os.environ.get(f"AIRFLOW_CONN_{conn_id.upper()}")
    if not value:
        raise RetentionError(f"connection {conn_id!r} is not defined (set AIRFLOW_CONN_{conn_id.upper()})")
    return parse_conn(value)


def make_engine(url: str) -> sa.Engine:
    # hide_parameters: a failing statement's bound values (e-mails, keys) stay out of the message.
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "hide_parameters": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 30}
    elif url.startswith(("mysql", "mariadb")):
        # The batch walks rely on InnoDB's next-key locks (ADR 0015, 0016): a locking read holds the range it
        # scanned until the commit. Under READ COMMITTED (a server or user default some sites set) there are no
        # gap locks, so the session is pinned to REPEATABLE READ whatever the server's default.
        kwargs["isolation_level"] = "REPEATABLE READ"
    return sa.create_engine(url, **kwargs)


def engine_for(resolver: Resolver, conn_id: str) -> sa.Engine:
    return make_engine(sqlalchemy_url(resolver(conn_id)))


MIN_KEY_BYTES = 32
HOW_TO_MAKE_A_KEY = ("make one with `make secrets` (writes .env) or "
                     "`python3 -c 'import secrets; print(secrets.token_hex(32))'`")
# Every placeholder secret that ever appeared in this repository (compose defaults, examples):
# anyone can read them, so a digest under one of them can be reversed by hashing a list of addresses.
PLACEHOLDER_KEYS = frozenset({
    "change-me-to-a-long-random-secret", "change-me-in-production", "change-me", "changeme",
    "minio-secret", "demo-secret", "testing", "secret", "root", "airflow", "ledger", "crm", "mailing",
})
_KID = re.compile(r"[A-Za-z0-9_.-]{1,16}")


def check_key(secret: str, where: str) -> bytes:
    """Refuse a key that is short or public, naming where it came from and how to make one."""
    raw = secret.encode()
    lowered = secret.strip().lower()
    if lowered in PLACEHOLDER_KEYS or "change-me" in lowered or "changeme" in lowered:
        raise RetentionError(f"{where} is a placeholder published in this repository, not a secret; "
                             f"{HOW_TO_MAKE_A_KEY}")
    if len(raw) < MIN_KEY_BYTES:
        raise RetentionError(f"{where} is {len(raw)} bytes; an HMAC key needs at least {MIN_KEY_BYTES}; "
                             f"{HOW_TO_MAKE_A_KEY}")
    return raw


def _parse_keys(text: str) -> list[tuple[str, bytes]]:
    """``RETENTION_HMAC_KEYS``: ``kid:secret`` pairs separated by commas, the current key first."""
    out: list[tuple[str, bytes]] = []
    for n, part in enumerate(p.strip() for p in text.split(",")):
        kid, sep, secret = part.partition(":")
        where = f"RETENTION_HMAC_KEYS entry {n + 1}"
        if not sep or not _KID.fullmatch(kid):
            raise RetentionError(f"{where} is not 'kid:secret' (kid: 1-16 of A-Z a-z 0-9 _ . -); "
                                 "example: RETENTION_HMAC_KEYS=k2:<new secret>,k1:<old secret>")
        if any(kid == k for k, _ in out):
            raise RetentionError(f"{where}: key id {kid!r} is given twice")
        out.append((kid, check_key(secret, f"{where} ({kid})")))
    return out


def hmac_key(resolver: Resolver) -> KeyRing:
    """The keys for keyed digests and registry encryption, current first (docs/adr/0007-key-rotation.md).

    ``RETENTION_HMAC_KEYS`` (``kid:secret,...``, first = current) and/or one key without an id, id
    ``k0``: ``RETENTION_HMAC_KEY`` or the password of connection ``retention_keys`` (it then comes
    last, as the oldest). As ``bytes`` the result is the current key.
    """
    ring = _parse_keys(keys) if (keys := reveal(settings().hmac_keys) or "").strip() else []
    single, where = reveal(settings().hmac_key), "RETENTION_HMAC_KEY"
    if not single:
        where = f"the password of connection {KEY_CONN_ID!r}"
        try:
            single = resolver(KEY_CONN_ID).password
        except Exception:  # noqa: BLE001 - any lookup failure means "not configured"
            single = None
    if single:
        raw = check_key(single, where)
        if not any(secret == raw for _, secret in ring):
            if any(kid == LEGACY_KID for kid, _ in ring):
                raise RetentionError(f"RETENTION_HMAC_KEYS names a key {LEGACY_KID!r} that differs from {where}; "
                                     f"{LEGACY_KID!r} is the id of {where}")
            ring.append((LEGACY_KID, raw))
    if not ring:
        raise RetentionError(
            f"no HMAC key: set RETENTION_HMAC_KEYS (kid:secret,... current first), RETENTION_HMAC_KEY or the "
            f"password of connection {KEY_CONN_ID!r} (at least {MIN_KEY_BYTES} bytes); {HOW_TO_MAKE_A_KEY}"
        )
    return KeyRing(ring)


def open_ledger(resolver: Resolver, key: bytes | None = None) -> Ledger:
    """The audit ledger on connection ``retention_ledger`` (the one place that opens it)."""
    from include.retention.ledger import Ledger

    return Ledger(engine_for(resolver, LEDGER_CONN_ID), key if key is not None else hmac_key(resolver))
