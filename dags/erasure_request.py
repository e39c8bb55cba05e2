"""erasure_request: erase or restrict one person in every system, from the Airflow UI form or REST API.

The first task moves the identities from the run's conf into the request registry
(encrypted); every later task sees only the request id. One task group per system
discovers, acts, verifies and records; the request is complete only when all verified.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, get_current_context, task

from include.retention.airflow.defaults import DEFAULT_ARGS
from include.retention.airflow.erasure_group import fan_out
from include.retention.airflow.params import identity_params, trail_params
from include.retention.airflow.roles import PRIVACY_ACCESS_CONTROL


@dag(
    dag_id="erasure_request",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    default_args=DEFAULT_ARGS,
    tags=["privacy", "erasure"],
    access_control=PRIVACY_ACCESS_CONTROL,  # FAB: only the Privacy role (and Admin); see roles.py
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

    fan_out(register())


erasure_request()
