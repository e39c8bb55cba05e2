"""The per-system task group shared by erasure_request and erasure_intake: discover -> act -> verify -> record."""

from __future__ import annotations

from airflow.sdk import Asset, get_current_context, task, task_group

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


@task(trigger_rule="one_failed", retries=0)
def watcher() -> None:
    """Fails the run when any task failed: finalize runs on all_done and would otherwise hide it."""
    from airflow.sdk.exceptions import AirflowFailException

    raise AirflowFailException("a task of this run failed; the request stays open")


def fan_out(request_ids):
    """Wire the systems' groups in parallel and the final step after all of them."""
    systems = list_systems()
    groups = per_system.partial(request_ids=request_ids).expand(system=systems)
    done = finalize(request_ids, systems)
    groups >> done
    [request_ids, systems, groups, done] >> watcher()
    return done
