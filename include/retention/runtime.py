"""Wiring: turns the data map's connection ids into open stores, the ledger and the keys.

Connections are looked up through a resolver (conn_id -> ``ConnInfo``). Inside Airflow
the resolver is Airflow's own connection lookup (``include.retention.airflow.glue``);
outside it (CLI, tests) ``env_resolver`` reads the same ``AIRFLOW_CONN_*`` variables.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from include.retention.errors import RetentionError
from include.retention.ledger import Ledger
from include.retention.policy import Policy
from include.retention.stores.base import Store

LEDGER_CONN_ID = os.environ.get("RETENTION_LEDGER_CONN_ID", "retention_ledger")
KEY_CONN_ID = os.environ.get("RETENTION_KEY_CONN_ID", "retention_keys")
DEFAULT_POLICY = os.path.join(os.path.dirname(__file__), "..", "..", "config", "policy.yaml")


def policy_path() -> str:
    return os.environ.get("RETENTION_POLICY_PATH", os.path.abspath(DEFAULT_POLICY))


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


def hmac_key(resolver: Resolver) -> bytes:
    """The keyed-digest key: ``RETENTION_HMAC_KEY`` or the password of connection ``retention_keys``."""
    key = os.environ.get("RETENTION_HMAC_KEY")
    if not key:
        try:
            key = resolver(KEY_CONN_ID).password
        except Exception:  # noqa: BLE001 - any lookup failure means "not configured"
            key = None
    if not key or len(key) < 16:
        raise RetentionError(
            f"no HMAC key of at least 16 characters: set RETENTION_HMAC_KEY or the password of connection "
            f"{KEY_CONN_ID!r}"
        )
    return key.encode()


class Runtime:
    """Opens each system's store once and wires cross-store deletes (rows -> their objects)."""

    def __init__(self, policy: Policy, resolver: Resolver = env_resolver, key: bytes | None = None):
        self.policy = policy
        self.resolver = resolver
        self.key = key if key is not None else hmac_key(resolver)
        self._stores: dict[str, Store] = {}
        self._ledger: Ledger | None = None

    def ledger(self) -> Ledger:
        if self._ledger is None:
            from include.retention.stores.sql import make_engine

            self._ledger = Ledger(make_engine(sqlalchemy_url(self.resolver(LEDGER_CONN_ID))), self.key)
        return self._ledger

    def store(self, system: str) -> Store:
        if system not in self._stores:
            spec = self.policy.systems[system]
            info = self.resolver(spec.connection)
            if spec.kind == "sql":
                from include.retention.stores.sql import SqlStore, make_engine

                self._stores[system] = SqlStore(system, self.policy, make_engine(sqlalchemy_url(info)),
                                                mask_key=self.key, before_delete=self.before_delete)
            else:
                from include.retention.stores.s3 import S3Store

                self._stores[system] = S3Store.from_conn(system, self.policy, info, key=self.key)
        return self._stores[system]

    def before_delete(self, coll_ref: str, rows: list[dict[str, Any]]) -> dict[str, int]:
        """Called by a SQL store before it deletes rows: delete what they own elsewhere, first."""
        counts: dict[str, int] = {}
        coll = self.policy.collection(coll_ref)
        if coll.suppress_on_delete:
            counts["suppression_list"] = self.suppress_rows(coll_ref, rows)
        for reference in self.policy.owned_objects(coll_ref):
            store = self.store(reference.to.partition(".")[0])
            counts[reference.to] = counts.get(reference.to, 0) + store.delete_owned(coll_ref, reference, rows)
        return counts

    def registry(self):
        from include.retention.registry import Registry

        if getattr(self, "_registry", None) is None:
            self._registry = Registry(self.ledger().engine, self.key)
            self._registry.ensure_schema()
        return self._registry

    def suppress_rows(self, coll_ref: str, rows: list[dict[str, Any]]) -> int:
        """Add the keyed digests of rows' identities to the suppression list (before the rows go)."""
        coll = self.policy.collection(coll_ref)
        values = [(kind, row[col]) for kind, col in coll.identity_columns() if kind in coll.suppress_on_delete
                  for row in rows if row.get(col)]
        return self.registry().suppress_values(values, reason=f"retention:{coll_ref}")

    def close(self) -> None:
        for store in self._stores.values():
            store.close()
        if self._ledger is not None:
            self._ledger.engine.dispose()
