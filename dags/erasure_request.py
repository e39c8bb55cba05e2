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
from include.retention.airflow.roles import PRIVACY_ACCESS_CONTROL
from include.retention.identity import EMAIL_PATTERN, IDENTITY_KINDS, PHONE_PATTERN

NO_CONTROL = r"^[^\u0000-\u001f\u007f]*$"  # no NUL, tab or line break: refused by the form, again by register


def _limit(kind: str) -> int:
    return IDENTITY_KINDS[kind][1]


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
        "email": Param(None, type=["null", "string"], pattern=EMAIL_PATTERN, maxLength=_limit("email"),
                       title="E-mail address",
                       description="The person's e-mail. Give at least one identity: e-mail, phone, customer "
                                   "reference or social-media handle."),
        "phone": Param(None, type=["null", "string"], pattern=PHONE_PATTERN, maxLength=_limit("phone"),
                       title="Phone (optional)"),
        "customer_ref": Param(None, type=["null", "string"], pattern=NO_CONTROL, maxLength=_limit("customer_ref"),
                              title="Customer reference (optional)"),
        "social_handle": Param(None, type=["null", "string"], pattern=NO_CONTROL,
                               maxLength=_limit("social_handle"), title="Social-media handle (optional)",
                               description="e.g. @zoe_m (direct messages received on social media)"),
        "mode": Param("erase", type="string", enum=["erase", "restrict"], title="Mode",
                      description="erase: delete (or anonymize) everywhere. restrict: lock, GDPR Art. 18."),
        "dry_run": Param(False, type="boolean", title="Dry run", description="Find and count only; change nothing."),
        "request_ref": Param(None, type=["null", "string"], maxLength=100, pattern=NO_CONTROL,
                             title="External request reference"),
        "note": Param(None, type=["null", "string"], maxLength=2000, pattern=r"^[^\u0000]*$", title="Note",
                      description="Free text for the receipt trail; stored encrypted."),
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
