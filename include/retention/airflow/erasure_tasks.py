"""Task bodies of ``erasure_request`` and ``erasure_intake``: the erasure flow
(``include.retention.requests.erasure_flow``) run inside a task. Only request ids cross XCom."""

from __future__ import annotations

from typing import Any

from include.retention.airflow.request_runner import mask_params, request_context
from include.retention.connections import policy_path
from include.retention.identity import IDENTITY_KINDS
from include.retention.policy import load_policy
from include.retention.requests import erasure_flow
from include.retention.requests.context import identity_systems


def register(params: dict[str, Any], dag_id: str, run_id: str) -> str:
    """Move the identities from the run's conf into the registry; return the request id."""
    mask_params(params, IDENTITY_KINDS)  # from here on, task logs show *** instead
    with request_context() as ctx:
        return erasure_flow.register(ctx, params, dag_id, run_id)


def systems() -> list[str]:
    """Systems holding identities (tables, buckets): one mapped task group each."""
    return identity_systems(load_policy(policy_path()))


def discover(request_ids: list[str], system: str) -> dict[str, int]:
    """Count what the request(s) will touch in this system (changes nothing)."""
    with request_context() as ctx:
        return erasure_flow.discover(ctx, request_ids, system)


def act(request_ids: list[str], system: str) -> dict[str, int]:
    """Erase or restrict (or, for a dry run, only count) the subjects' data in this system."""
    with request_context() as ctx:
        return erasure_flow.act(ctx, request_ids, system)


def verify(request_ids: list[str], system: str) -> int:
    """Fresh re-scan: nothing of the subjects may be left but restricted exceptions."""
    with request_context() as ctx:
        return erasure_flow.verify(ctx, request_ids, system)


def record(request_ids: list[str], system: str, dag_id: str, run_id: str) -> int:
    """One ledger entry per request and system, written once even if the task is retried."""
    with request_context() as ctx:
        return erasure_flow.record(ctx, request_ids, system, dag_id, run_id)


def finalize(request_ids: list[str], expected_systems: list[str]) -> list[dict[str, Any]]:
    """Close the request(s) with suppression and receipts; fails (no retry) when some stay open."""
    with request_context() as ctx:
        return erasure_flow.finalize_erasure(ctx, request_ids, expected_systems)


def claim(limit: int, dag_id: str, run_id: str) -> list[str]:
    """erasure_intake: take a batch of pending requests from the registry."""
    with request_context() as ctx:
        return erasure_flow.claim(ctx, limit, dag_id, run_id)


def resolve(request_ids: list[str]) -> str:
    """One person per request, resolved before anything is read or changed; the identity check's summary."""
    with request_context() as ctx:
        return erasure_flow.resolve(ctx, request_ids)
