"""access_request: the other rights of one person, from the Airflow UI form, the REST API or the intake queue.

- **access** (GDPR Art. 15; ``format: portable`` for Art. 20): every system searched, one zip written to
  the data map's exports collection (deleted by its own retention rule); the receipt carries an expiring
  link, the file's SHA-256 and counts.
- **rectify** (Art. 16): one identity value (e-mail, phone) replaced by a new one everywhere.
- **withdraw** (Art. 7(3)): the data map's consent columns set; the retention rules then act as usual.

Access, rectify and withdraw requests wait for a person to confirm the requester's identity (Required actions,
``verify_identity``) unless ``RETENTION_VERIFY_IDENTITY`` leaves their type out or the intake path
queued them as verified (include/retention/requests/identity_decisions.py). After a correction, every recipient
of the changed systems is told (GDPR Art. 19, one mapped ``send_notice`` per recipient, as after an
erasure); the request is complete only when each is confirmed or waived, and then the requester hears
back (``tell_requester``). The first task moves the identities into the registry (encrypted); later tasks
see only the request id. See docs/adr/0008-access-package.md.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, task

from include.retention.airflow.deadlines import answer_deadline
from include.retention.airflow.defaults import dag_args
from include.retention.airflow.erasure_group import tell_recipients
from include.retention.airflow.erasure_group import tell_requester as completion_notice
from include.retention.airflow.identity_check import identity_check_step
from include.retention.airflow.params import identity_params, limit, trail_params
from include.retention.identity import EMAIL_PATTERN, PHONE_PATTERN


@dag(
    **dag_args("access_request", "access"),
    deadline=answer_deadline(),
    schedule=None,
    doc_md=__doc__,
    params={
        **identity_params(),
        "mode": Param("access", type="string", enum=["access", "rectify", "withdraw"], title="Request",
                      description="access: a copy of the person's data. rectify: replace an e-mail or phone. "
                                  "withdraw: withdraw consents (newsletter, future recruitment)."),
        "format": Param("human", type="string", enum=["human", "portable"], title="Package format (access)",
                        description="human: CSV and JSON per collection with a README. portable (Art. 20): "
                                    "JSON per collection and one flat CSV."),
        "new_email": Param(None, type=["null", "string"], pattern=EMAIL_PATTERN, maxLength=limit("email"),
                           title="New e-mail (rectify)", description="Replaces the e-mail given above."),
        "new_phone": Param(None, type=["null", "string"], pattern=PHONE_PATTERN, maxLength=limit("phone"),
                           title="New phone (rectify)", description="Replaces the phone given above."),
        "consents": Param(None, type=["null", "array"], items={"type": "string"}, title="Consents (withdraw)",
                          description="Names from the data map (newsletter, future_recruitment). Empty: all."),
        **trail_params(),
    },
)
def access_request():
    @task
    def register() -> str:
        from include.retention.airflow import access_tasks

        context = get_current_context()
        return access_tasks.register(dict(context["params"]), context["dag"].dag_id, context["run_id"])

    @task
    def resolve_person(request_id: str) -> str:
        """One person per request, before anything is read or changed; the identity check shows the summary."""
        from include.retention.airflow import erasure_tasks

        return erasure_tasks.resolve([request_id])

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def needs_identity_check(request_id: str) -> bool:
        from include.retention.airflow import identity_check

        return identity_check.needs_check(request_id)

    verify_identity = identity_check_step("access_request", "{{ params.mode }}")

    @task(trigger_rule="none_failed")
    def act(request_id: str) -> dict:
        from include.retention.airflow import access_tasks

        context = get_current_context()
        return access_tasks.act(request_id, context["dag"].dag_id, context["run_id"])

    @task(trigger_rule="all_done")
    def finalize(request_id: str) -> dict:
        from include.retention.airflow import access_tasks

        context = get_current_context()
        acted = context["ti"].xcom_pull(task_ids="act") is not None
        return access_tasks.finalize(request_id, acted, context["dag"].dag_id, context["run_id"])

    @task(trigger_rule="one_failed", retries=0)
    def watcher() -> None:
        """Fails the run when any task failed: finalize runs on all_done and would otherwise hide it."""
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException("a task of this run failed; the request stays open")

    request_id = register()
    resolved = resolve_person(request_id)
    check = needs_identity_check(request_id)
    resolved >> check
    acted = act(request_id)
    check >> verify_identity >> acted
    # Art. 19 after a correction (access and withdraw concern no recipient: plan_notices finds none)
    planned, sent, confirmed = tell_recipients(request_id, after=acted)
    done = finalize(request_id)
    [acted, sent, confirmed] >> done
    told = completion_notice(request_id)  # the requester hears back once the request is complete
    done >> told
    [resolved, check, acted, planned, sent, done, told] >> watcher()


access_request()
