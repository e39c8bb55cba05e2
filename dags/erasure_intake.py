"""erasure_intake: process pending requests from the registry in batches, many subjects per query.

Requests arrive in the registry from a web form, a script or the REST API
(`python -m include.retention.cli submit`), not as one DAG run each.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, task

from include.retention.airflow.defaults import dag_args
from include.retention.airflow.erasure_group import fan_out
from include.retention.settings import settings


@dag(
    **dag_args("erasure_intake", "erasure"),
    schedule=settings().intake_schedule,
    max_active_runs=1,
    doc_md=__doc__,
    params={"batch_size": Param(500, type="integer", minimum=1, maximum=5000, title="Requests per run")},
)
def erasure_intake():
    @task
    def claim() -> list[str]:
        from include.retention.airflow import erasure_tasks

        context = get_current_context()
        return erasure_tasks.claim(int(context["params"]["batch_size"]), context["dag"].dag_id, context["run_id"])

    fan_out(claim())


erasure_intake()
