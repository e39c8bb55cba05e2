"""Task bodies of ``access_request``: access (Art. 15/20), rectify (Art. 16), withdraw (consent, Art. 7(3)), the
flow of ``include.retention.requests.access_flow`` run inside a task. Only the request id and counts cross XCom.
"""

from __future__ import annotations

from typing import Any

from include.retention.airflow.request_runner import mask_params, request_context
from include.retention.requests import access_flow


def register(params: dict[str, Any], dag_id: str, run_id: str) -> str:
    """Identities (and new values) from the run's conf into the registry, encrypted; returns the request id."""
    mask_params(params, access_flow.MASKED)
    with request_context() as ctx:
        return access_flow.register(ctx, params, dag_id, run_id)


def act(request_id: str, dag_id: str, run_id: str) -> dict[str, Any]:
    """Do what the request asks, in every system; returns counts only."""
    with request_context() as ctx:
        return access_flow.act(ctx, request_id, dag_id, run_id)


def finalize(request_id: str, acted: bool, dag_id: str, run_id: str) -> dict[str, Any]:
    """Close the request: complete, rejected (identity not verified) or incomplete; save the receipt."""
    with request_context() as ctx:
        return access_flow.finalize_access(ctx, request_id, acted, dag_id, run_id)
