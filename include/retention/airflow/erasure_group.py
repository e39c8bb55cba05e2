"""The per-system task group shared by erasure_request and erasure_intake: discover -> act -> verify -> record."""

from __future__ import annotations

import datetime as dt

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Asset, get_current_context, task, task_group

from include.retention.airflow.notify_tasks import failure_alert
from include.retention.settings import settings

# How long a manual recipient's confirmation may take before the step alerts the DPO (then waits once more).
CONFIRM_HOURS = settings().recipient_confirm_hours

# Emitted by a successful finalize: erasure_run_purge (dags/metadata_purge.py) then removes the run's
# conf, XComs and audit-log rows from Airflow's metadata DB right away (include/retention/airflow/purge.py).
ERASURE_RUN_DONE = Asset(name="retention_erasure_run_done", uri="retention://erasure-runs/done",
                         group="privacy")


def _named(system: str) -> dict:
    context = get_current_context()
    context["system_name"] = system  # readable map index: the system's name
    return context


@task(map_index_template="{{ system_name }}")
def discover(request_ids: list[str], system: str) -> dict:
    from include.retention.airflow import erasure_tasks

    _named(system)
    return erasure_tasks.discover(request_ids, system) if request_ids else {}


@task(map_index_template="{{ system_name }}")
def act(request_ids: list[str], system: str) -> dict:
    from include.retention.airflow import erasure_tasks

    _named(system)
    return erasure_tasks.act(request_ids, system) if request_ids else {}


@task(map_index_template="{{ system_name }}")
def verify(request_ids: list[str], system: str) -> int:
    from include.retention.airflow import erasure_tasks

    _named(system)
    return erasure_tasks.verify(request_ids, system) if request_ids else 0


@task(map_index_template="{{ system_name }}")
def record(request_ids: list[str], system: str) -> int:
    from include.retention.airflow import erasure_tasks

    context = _named(system)
    if not request_ids:
        return 0
    return erasure_tasks.record(request_ids, system, context["dag"].dag_id, context["run_id"])


@task_group(group_id="system")
def per_system(system: str, request_ids: list[str]):
    found = discover(request_ids, system)
    acted = act(request_ids, system)
    checked = verify(request_ids, system)
    recorded = record(request_ids, system)
    found >> acted >> checked >> recorded
    return recorded


@task
def list_systems() -> list[str]:
    from include.retention.airflow import erasure_tasks

    return erasure_tasks.systems()


@task(trigger_rule="all_done", outlets=[ERASURE_RUN_DONE])
def finalize(request_ids: list[str], systems: list[str]) -> list[dict]:
    from include.retention.airflow import erasure_tasks

    return erasure_tasks.finalize(request_ids, systems) if request_ids else []


@task
def plan_notices(request_ids: list[str]) -> list[str]:
    """Art. 19: record the recipients each request concerns; the ones told automatically, mapped below."""
    from include.retention.airflow import notify_tasks

    return notify_tasks.plan_notices(request_ids) if request_ids else []


@task(map_index_template="{{ recipient_name }}")
def send_notice(request_ids: list[str], recipient: str) -> dict:
    """One recipient (e-mail or webhook); a failed delivery raises and the task retries with backoff."""
    from include.retention.airflow import notify_tasks

    get_current_context()["recipient_name"] = recipient
    return notify_tasks.send_notice(request_ids, recipient)


@task.short_circuit(ignore_downstream_trigger_rules=False)
def manual_recipients(request_ids: list[str]) -> list[str]:
    """Recipients a person tells (and confirms here); none skips the approval."""
    from include.retention.airflow import notify_tasks

    return notify_tasks.manual_pending(request_ids) if request_ids else []


@task
def record_confirmations(request_ids: list[str], names: list[str]) -> int:
    from include.retention.airflow import notify_tasks

    return notify_tasks.confirm_manual(request_ids, names)


@task
def tell_requester(request_ids: list[str]) -> dict:
    """Art. 12: the requester hears back (completion notice) once the request is complete."""
    from include.retention.airflow import notify_tasks

    return notify_tasks.completion_notices(request_ids) if request_ids else {}


def _confirm_step() -> ApprovalOperator:
    overdue = failure_alert("a recipient's confirmation is overdue")
    return ApprovalOperator(
        task_id="confirm_recipients",
        subject="Tell the recipients of the data (GDPR Art. 19)",
        body="These recipients must be told by hand of this run's request(s): "
             "{{ ti.xcom_pull(task_ids='manual_recipients') | join(', ') }}. Request id(s): "
             "{% set ids = ti.xcom_pull(task_ids=('claim' if dag.dag_id == 'erasure_intake' else 'register')) %}"
             "{{ ids if ids is string else ids | join(', ') }}. "
             "Tell each of them (request id, action, categories: see the run's receipt and the data map), then "
             "Approve. Reject leaves the request open.",
        response_timeout=dt.timedelta(hours=CONFIRM_HOURS),
        retries=1,  # the timeout alerts the DPO (on retry) and waits once more before the run fails
        retry_delay=dt.timedelta(seconds=1),
        on_retry_callback=overdue,
        on_failure_callback=overdue,
    )


@task(trigger_rule="one_failed", retries=0, on_failure_callback=failure_alert("an erasure run failed"))
def watcher() -> None:
    """Fails the run when any task failed: finalize runs on all_done and would otherwise hide it."""
    from airflow.sdk.exceptions import AirflowFailException

    raise AirflowFailException("a task of this run failed; the request stays open")


def tell_recipients(request_ids, after):
    """Art. 19 after ``after`` changed the systems: plan, one mapped notice task per recipient, and the approval
    step for recipients told by hand. ``request_ids``: one id (access_request) or a batch. Returns the tasks
    the request's finalize waits for: (planned, sent, confirmed)."""
    planned = plan_notices(request_ids)
    after >> planned
    sent = send_notice.partial(request_ids=request_ids).expand(recipient=planned)
    manual = manual_recipients(request_ids)
    planned >> manual
    confirm = _confirm_step()
    confirmed = record_confirmations(request_ids, manual)
    manual >> confirm >> confirmed
    return planned, sent, confirmed


def fan_out(request_ids):
    """Wire the systems' groups in parallel and the final step after all of them."""
    systems = list_systems()
    groups = per_system.partial(request_ids=request_ids).expand(system=systems)
    # Art. 19: after every system recorded, each concerned recipient is told (one mapped task per recipient);
    # recipients told by hand wait in the approval step; finalize counts them all.
    planned, sent, confirmed = tell_recipients(request_ids, after=groups)
    done = finalize(request_ids, systems)
    [groups, sent, confirmed] >> done
    told = tell_requester(request_ids)
    done >> told
    [request_ids, systems, groups, planned, sent, done, told] >> watcher()  # not the approval: Reject skips its
    # direct downstream tasks; finalize then fails (the request stays open) and that wakes the watcher
    return done
