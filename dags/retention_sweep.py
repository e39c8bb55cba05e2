"""retention_sweep: enforce every retention rule of the data map, one mapped task per rule."""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import Param, dag, get_current_context, task

from include.retention.airflow.defaults import DEFAULT_ARGS

SCHEDULE = os.environ.get("RETENTION_SWEEP_SCHEDULE", "@daily")


@dag(
    dag_id="retention_sweep",
    schedule=SCHEDULE,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["privacy", "retention"],
    doc_md=__doc__,
    params={
        "dry_run": Param(False, type="boolean", title="Dry run",
                         description="Count what each rule would lock, anonymize or delete; change nothing."),
        "systems": Param([], type="array", items={"type": "string"}, title="Only these systems",
                         description="System names from the data map (e.g. crm, mailing). Empty: all."),
    },
)
def retention_sweep():
    @task
    def plan_rules() -> list[str]:
        from include.retention.airflow import sweep_tasks

        return sweep_tasks.list_rules(get_current_context()["params"]["systems"])

    @task(map_index_template="{{ rule_id }}")
    def apply_rule(rule_id: str) -> dict:
        from include.retention.airflow import sweep_tasks

        context = get_current_context()
        context["rule_id"] = rule_id
        return sweep_tasks.apply_rule(rule_id, dry_run=bool(context["params"]["dry_run"]),
                                      dag_id=context["dag"].dag_id, run_id=context["run_id"])

    @task(trigger_rule="all_done")
    def summarize(results, expected: list[str]) -> str:
        from include.retention.airflow import sweep_tasks

        return sweep_tasks.summarize(list(results), expected)

    @task
    def enforce_suppression() -> dict:
        """Subscribers whose e-mail digest is suppressed (erased or unsubscribed) are removed again."""
        from include.retention.airflow import sweep_tasks

        context = get_current_context()
        return sweep_tasks.enforce_suppression(dry_run=bool(context["params"]["dry_run"]),
                                               dag_id=context["dag"].dag_id, run_id=context["run_id"],
                                               systems=context["params"]["systems"] or None)

    rules = plan_rules()
    summarize(apply_rule.expand(rule_id=rules), rules)
    rules >> enforce_suppression()


retention_sweep()
