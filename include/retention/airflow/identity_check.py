"""The identity check every subject-request DAG shares: "Identity verified?" before data leaves or changes.

The decisions (which request waits, what an answer means, closing a rejected request) are
``include.retention.requests.identity_decisions``'; here is the human-in-the-loop step that asks
(:class:`IdentityCheck`, Required actions) and the task bodies around it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param

from include.retention.airflow.request_runner import ids, request_context
from include.retention.requests import identity_decisions


def needs_check(request_ids: str | list[str]) -> bool:
    """Whether a person must confirm the requester's identity before anything leaves or changes."""
    with request_context() as ctx:
        return identity_decisions.needs_check(ctx, ids(request_ids))


def record_decision(request_ids: str | list[str], event: dict[str, Any]) -> str:
    """The identity check's answer (from the approval task's resume event) into the registry, encrypted."""
    with request_context() as ctx:
        return identity_decisions.record_decision(ctx, ids(request_ids), event)


def gate(request_ids: list[str], dag_id: str, run_id: str) -> list[str]:
    """After the identity check: the requests that may proceed; each rejected one is closed with its receipt."""
    with request_context() as ctx:
        return identity_decisions.gate(ctx, request_ids, dag_id, run_id)


class IdentityCheck(ApprovalOperator):
    """"Identity verified?": records the answer (and the reason typed in) in the registry before Approve lets
    the request proceed or Reject skips the next task; the request is then closed as rejected."""

    def __init__(self, *, request_task: str = "register", **kwargs: Any):
        super().__init__(**kwargs)
        self.request_task = request_task

    def execute_complete(self, context, event):  # noqa: ANN001 - the operator's signature
        if "error" not in event:
            record_decision(context["ti"].xcom_pull(task_ids=self.request_task), event)
        return super().execute_complete(context=context, event=event)


def identity_check_step(dag_label: str, what: str) -> IdentityCheck:
    """The Required-actions step of ``dag_label``; ``what`` says what the request would do."""
    return IdentityCheck(
        task_id="verify_identity",
        subject=f"Identity verified? ({dag_label})",
        body="Request {{ ti.xcom_pull(task_ids='register') }} (" + what + "): approve only once the requester "
             "has proven to be the person (e.g. a reply from the registered address). Reject closes the "
             "request and changes nothing; give the reason.\n\n"
             "{{ ti.xcom_pull(task_ids='resolve_person') or '' }}",
        defaults=["Reject"],
        params={"reason": Param("", type="string", maxLength=2000, title="Reason")},
        response_timeout=dt.timedelta(days=7),
        # a failed try (e.g. the registry unreachable while recording the answer) asks again
    )
