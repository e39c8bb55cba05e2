"""erasure_request: erase or restrict one person in every system, from the Airflow UI form or REST API.

The first task moves the identities from the run's conf into the request registry
(encrypted); every later task sees only the request id. Erasures and restrictions (the types listed in
``RETENTION_VERIFY_IDENTITY``, default every type) first wait for a person to confirm the
requester's identity (Required actions, ``verify_identity``, with a reason); Reject changes nothing and
closes the request as rejected (include/retention/requests/identity_decisions.py). Before that, ``resolve_person``
resolves the request's identities to one person (include/retention/requests/person.py): identities leading to somebody
else stop the request (status ``conflict``) unless the identity check's approver proceeds with the linked
ones. One task group per system discovers, acts, verifies and records; the request is complete only when all
verified.
"""

from __future__ import annotations

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import Param, dag, get_current_context, task

from include.retention.airflow.deadlines import answer_deadline
from include.retention.airflow.defaults import dag_args
from include.retention.airflow.erasure_group import fan_out
from include.retention.airflow.identity_check import identity_check_step
from include.retention.airflow.params import identity_params, trail_params


@dag(
    **dag_args("erasure_request", "erasure"),
    deadline=answer_deadline(),
    schedule=None,
    doc_md=__doc__,
    params={
        **identity_params(),
        "mode": Param("erase", type="string", enum=["erase", "restrict"], title="Mode",
                      description="erase: delete (or anonymize) everywhere. restrict: lock, GDPR Art. 18."),
        **trail_params(),
    },
)
def erasure_request():
    @task
    def register() -> list[str]:
        from include.retention.airflow import erasure_tasks

        context = get_current_context()
        return [erasure_tasks.register(dict(context["params"]), context["dag"].dag_id, context["run_id"])]

    @task
    def resolve_person(request_ids: list[str]) -> str:
        """One person per request: the identities resolved before anything is read or changed; returns the
        redacted summary (kinds, statuses, counts) the identity check shows."""
        from include.retention.airflow import erasure_tasks

        return erasure_tasks.resolve(request_ids)

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def needs_identity_check(request_ids: list[str]) -> bool:
        from include.retention.airflow import identity_check

        return identity_check.needs_check(request_ids)

    @task(trigger_rule="none_failed")
    def identity_gate(request_ids: list[str]) -> list[str]:
        """The request if it may proceed (approved, verified at intake, not required); [] once closed as rejected."""
        from include.retention.airflow import identity_check

        context = get_current_context()
        return identity_check.gate(request_ids, context["dag"].dag_id, context["run_id"])

    request_ids = register()
    resolved = resolve_person(request_ids)
    check = needs_identity_check(request_ids)
    resolved >> check
    verify = identity_check_step("erasure_request", "{{ params.mode }}")
    # Reject skips the task right after the approval (identity_confirmed); the gate runs on none_failed and closes
    # the request as rejected, so the systems' groups get no request and change nothing
    confirmed = EmptyOperator(task_id="identity_confirmed")
    gate = identity_gate(request_ids)
    check >> verify >> confirmed >> gate
    fan_out(gate)


erasure_request()
