"""What the DAGs share: default_args (retries with exponential backoff) and the common DAG arguments.

Importing this module imports nothing from Airflow, so DAG files stay cheap to parse.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from include.retention.airflow.roles import PRIVACY_ACCESS_CONTROL, PRIVACY_DAG_IDS
from include.retention.settings import settings

DEFAULT_ARGS = {
    "owner": "data-protection",
    "retries": settings().retries,
    "retry_delay": dt.timedelta(seconds=settings().retry_delay_seconds),
    "retry_exponential_backoff": True,
    "max_retry_delay": dt.timedelta(minutes=30),
}

START_DATE = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def dag_args(dag_id: str, *tags: str) -> dict[str, Any]:
    """The arguments every DAG here passes: its id, start date, no catchup, ``DEFAULT_ARGS``, tags
    ``privacy`` plus ``tags``; and for the DAGs that carry identities (``PRIVACY_DAG_IDS``)
    ``access_control``: FAB lets only the Privacy role (and Admin) see them (roles.py)."""
    args: dict[str, Any] = {"dag_id": dag_id, "start_date": START_DATE, "catchup": False,
                            "default_args": DEFAULT_ARGS, "tags": ["privacy", *tags]}
    if dag_id in PRIVACY_DAG_IDS:
        args["access_control"] = PRIVACY_ACCESS_CONTROL
    return args
