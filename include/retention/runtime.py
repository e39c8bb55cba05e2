"""Wiring: turns the data map's connection ids into open stores, the ledger and the keys.

Connections are looked up through a resolver (conn_id -> ``ConnInfo``). Inside Airflow
the resolver is Airflow's own connection lookup (``include.retention.airflow.glue``);
outside it (CLI, tests) ``env_resolver`` reads the same ``AIRFLOW_CONN_*`` variables.
"""

from __future__ import annotations

from typing import Any

from include.retention.connections import (  # noqa: F401 - re-exported for callers of the old home
    KEY_CONN_ID,
    LEDGER_CONN_ID,
    ConnInfo,
    Resolver,
    engine_for,
    env_resolver,
    hmac_key,
    open_ledger,
    parse_conn,
    policy_path,
    sqlalchemy_url,
)
from include.retention.ledger import Ledger
from include.retention.policy import Policy
from include.retention.stores.base import Store
from include.retention.values import CollectionRef


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
            self._ledger = open_ledger(self.resolver, self.key)
        return self._ledger

    def store(self, system: str) -> Store:
        if system not in self._stores:
            spec = self.policy.systems[system]
            info = self.resolver(spec.connection)
            if spec.kind == "sql":  # store construction: the one place that knows the kinds
                from include.retention.connections import make_engine
                from include.retention.stores.sql import SqlStore

                self._stores[system] = SqlStore(system, self.policy, make_engine(sqlalchemy_url(info)),
                                                mask_key=self.key, before_delete=self.before_delete,
                                                stores=self.store)
            else:
                from include.retention.stores.s3 import S3Store

                self._stores[system] = S3Store.from_conn(system, self.policy, info, key=self.key)
                self._stores[system].referenced = self.referenced_keys  # orphan rules look owners up
        return self._stores[system]

    def before_delete(self, coll_ref: str, rows: list[dict[str, Any]], suppress: list[str] | None = None
                      ) -> dict[str, int]:
        """Called by a SQL store before it deletes rows: keep the digests the deleting rule (``suppress``, else
        the collection's deprecated ``suppress_on_delete``) asks for, and delete what they own elsewhere, first."""
        counts: dict[str, int] = {}
        coll = self.policy.collection(coll_ref)
        kinds = list(suppress) if suppress is not None else list(coll.suppress_on_delete)
        if kinds:
            counts["suppression_list"] = self.suppress_rows(coll_ref, rows, kinds)
        for reference in self.policy.owned_objects(coll_ref):
            store = self.store(CollectionRef.parse(reference.to).system)
            counts[reference.to] = counts.get(reference.to, 0) + store.delete_referenced(coll_ref, reference, rows)
        return counts

    def referenced_keys(self, coll_ref: str, keys: list[str]) -> set[str]:
        """Which of ``keys`` (objects of S3 collection ``coll_ref``) a row of any referencing collection names."""
        from include.retention.policy import referrers

        found: set[str] = set()
        for owner, reference in referrers(self.policy, coll_ref):
            system, name = CollectionRef.parse(owner)
            found |= self.store(system).referenced_keys(name, reference, [k for k in keys if k not in found])
        return found

    def registry(self):
        from include.retention.registry import Registry

        if getattr(self, "_registry", None) is None:
            self._registry = Registry(self.ledger().engine, self.key)
            self._registry.ensure_schema()
        return self._registry

    def suppress_rows(self, coll_ref: str, rows: list[dict[str, Any]], kinds: list[str] | None = None) -> int:
        """Add the keyed digests of rows' identities of ``kinds`` (default: the collection's
        ``suppress_on_delete``) to the suppression list (before the rows go)."""
        coll = self.policy.collection(coll_ref)
        kinds = list(kinds) if kinds is not None else list(coll.suppress_on_delete)
        values = [(kind, row[col]) for kind, col in coll.identity_columns() if kind in kinds
                  for row in rows if row.get(col)]
        return self.registry().suppression.add_values(values, reason=f"retention:{coll_ref}")

    def close(self) -> None:
        for store in self._stores.values():
            store.close()
        if self._ledger is not None:
            self._ledger.engine.dispose()
