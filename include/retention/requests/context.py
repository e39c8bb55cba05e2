"""What a request flow works with: the data map, the open stores, the ledger and the registry.

The flows in ``include.retention.requests`` never look a connection up themselves: whoever runs them builds a
``RequestContext`` with its own resolver (Airflow's connection lookup in ``include.retention.airflow``, the
``AIRFLOW_CONN_*`` environment in the CLI) and passes it in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from include.retention.connections import Resolver, env_resolver, policy_path
from include.retention.errors import RetentionError
from include.retention.policy import Policy, load_policy
from include.retention.registry import Identities, Registry
from include.retention.requests import person
from include.retention.requests.scanner import Subject, SubjectScanner
from include.retention.runtime import Runtime


class Refused(RetentionError):
    """A request the flow will not act on as it stands (malformed, unconfirmed, refused): retrying it does not
    help, so a task runner fails it at once (``include.retention.airflow`` turns it into a failure without retry)."""


def identity_systems(policy: Policy) -> list[str]:
    """Systems holding identities (tables, buckets): the ones a subject request searches."""
    return [name for name, system in policy.systems.items() if any(c.identities for c in system.collections.values())]


def _no_mask(value: str) -> None:
    return None


class RequestContext:
    """Policy, stores, ledger and registry for one step of a request; closed at the end of it.

    ``mask`` hides a value from the runner's logs (Airflow's ``mask_secret`` inside a task; nothing in the CLI)."""

    def __init__(self, resolver: Resolver = env_resolver, policy: Policy | None = None,
                 mask: Callable[[str], None] = _no_mask) -> None:
        self.policy: Policy = policy if policy is not None else load_policy(policy_path())
        self.runtime = Runtime(self.policy, resolver)
        self.ledger = self.runtime.ledger()
        self.registry = Registry(self.ledger.engine, self.runtime.key)
        self.registry.ensure_schema()
        self.mask = mask

    def __enter__(self) -> RequestContext:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.runtime.close()

    def systems(self) -> list[str]:
        return identity_systems(self.policy)

    def subjects(self, request_ids: list[str]) -> list[Subject]:
        """The requests' subjects with only the identities resolved to one person (``requests.person``),
        read (and decrypted) in one SELECT per 500 requests; refused on a conflict nobody decided."""
        acting = self.acting_identities(request_ids)
        return [Subject(rid, acting[rid].normalised()) for rid in request_ids]

    def acting_identities(self, request_ids: list[str]) -> dict[str, Identities]:
        """Per request, the identities it acts with (proven and linked; resolved here first if no task did)."""
        identities = self.registry.identities_many(request_ids)
        details = self.registry.details_many(request_ids)
        if any(person.DETAILS_KEY not in details.get(rid, {}) for rid in request_ids):
            person.resolve_requests(self.policy, self.runtime.store, self.registry, request_ids)
            details = self.registry.details_many(request_ids)
        return {rid: Identities(person.acting(identities[rid].normalised(), details.get(rid, {}), rid))
                for rid in request_ids}

    def scanner(self, system: str) -> SubjectScanner:
        return SubjectScanner(self.policy, self.runtime.store(system))
