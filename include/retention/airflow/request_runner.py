"""How a task runs a request flow (``include.retention.requests``): Airflow's connection lookup builds the flow's
context, ``mask_secret`` hides what names the person, and a ``Refused`` fails the task without a retry."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from include.retention.requests.context import Refused, RequestContext


def mask(value: str) -> None:
    """From here on, the task log shows *** instead of ``value``."""
    from airflow.sdk.log import mask_secret

    mask_secret(value)


def mask_params(params: dict[str, Any], fields: Iterable[str]) -> None:
    """Hide the conf's identities (and new values) from the task log before anything else runs."""
    for name in fields:
        if isinstance(params.get(name), str) and params[name]:
            mask(params[name])


@contextmanager
def request_context() -> Iterator[RequestContext]:
    """The flow's context over Airflow's connections, closed at the end of the step; a refusal fails the task at
    once (a malformed or unconfirmed request is not retried), any other error is the task's to retry."""
    from include.retention.airflow.sweep_tasks import airflow_resolver

    try:
        with RequestContext(airflow_resolver, mask=mask) as ctx:
            yield ctx
    except Refused as exc:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(str(exc)) from None


def ids(request_ids: str | list[str] | None) -> list[str]:
    """One request (access_request's register) or a batch (erasure_request, erasure_intake)."""
    return [request_ids] if isinstance(request_ids, str) else list(request_ids or [])
