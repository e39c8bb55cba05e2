"""erasure_deadlines: alert when subject requests come near or past their one-month due date.

The check task fails (the run turns red in the UI) and its on-failure notifier records the
alert in the ledger and tells the DPO through Airflow's notifier classes: the SMTP provider's
SmtpNotifier (connection ``retention_alert_smtp``, extra.to = the DPO) and a chat webhook
(HTTP connection ``retention_alert_webhook``). Configured by connection; unconfigured ones are skipped.

It watches every open request except those a queued or running erasure_request / access_request run registered
itself: that run's Airflow deadline alert watches them (include/retention/airflow/deadlines.py, README "Deadline
alerts").
"""

from __future__ import annotations

from airflow.sdk import dag, task

from include.retention.airflow.deadlines import DueDateNotifier
from include.retention.airflow.defaults import dag_args
from include.retention.settings import settings


@dag(
    **dag_args("erasure_deadlines", "erasure", "monitoring"),
    schedule=settings().deadline_schedule,
    max_active_runs=1,
    doc_md=__doc__,
)
def erasure_deadlines():
    @task(on_failure_callback=DueDateNotifier())
    def check_due_dates() -> int:
        from include.retention.airflow import deadlines

        return deadlines.check_due_dates()

    check_due_dates()


erasure_deadlines()
