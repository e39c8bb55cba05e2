"""data_map_drift: find personal data the data map does not know, one mapped task per system, then ask.

First, where ``RETENTION_LINEAGE_FILE`` names the OpenLineage provider's event file, the events written since
the last run are read: a declared identity column flowing into a column or table the data map does not declare
is a finding before anything is sampled ("derived from crm.contacts.email").

Each system's connection is read (read-only, bounded samples, statement timeouts): tables, columns, prefixes
and metadata the data map does not declare that hold personal data, declared ones that are gone or changed
type, identity columns holding values an identity check refuses. Findings are stored without values; each open
one waits in Required actions (human-in-the-loop ``review_finding``): *map* (the page shows the validated YAML
snippet), *ignore* (with a reason) or *not personal*. Decisions and who made them go to the ledger.
"""

from __future__ import annotations

import datetime as dt

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Param, dag, get_current_context, task

from include.retention.airflow.defaults import dag_args
from include.retention.settings import settings

SCHEDULE = settings().drift_schedule
OPTIONS = ["map", "ignore", "not personal"]


@dag(
    **dag_args("data_map_drift", "retention", "discovery"),
    schedule=SCHEDULE,
    max_active_runs=1,
    doc_md=__doc__,
    params={
        "systems": Param([], type="array", items={"type": "string"}, title="Only these systems",
                         description="System names from the data map (e.g. crm, objects). Empty: all."),
        "review": Param(True, type="boolean", title="Ask for a decision per open finding",
                        description="Off: discover and store the findings only (they stay open)."),
    },
)
def data_map_drift():
    @task
    def read_lineage() -> dict:
        from include.retention.airflow import discovery_tasks

        context = get_current_context()
        return discovery_tasks.read_lineage(dag_id=context["dag"].dag_id, run_id=context["run_id"])

    @task(trigger_rule="all_done")  # a lineage file that cannot be read does not stop discovery
    def plan_systems() -> list[str]:
        from include.retention.airflow import discovery_tasks

        return discovery_tasks.list_systems(get_current_context()["params"]["systems"])

    @task(map_index_template="{{ system }}")
    def discover(system: str) -> dict:
        from include.retention.airflow import discovery_tasks

        context = get_current_context()
        context["system"] = system
        return discovery_tasks.run_system(system, dag_id=context["dag"].dag_id, run_id=context["run_id"])

    @task(trigger_rule="all_done")
    def open_findings() -> list[dict]:
        """The open findings of the systems discovered (a system whose discovery failed keeps its old ones)."""
        from include.retention.airflow import discovery_tasks

        params = get_current_context()["params"]
        return discovery_tasks.review_items(params["systems"]) if params["review"] else []

    @task
    def review_kwargs(items: list[dict]) -> list[dict]:
        return [{"subject": item["subject"], "body": item["body"]} for item in items]

    review = HITLOperator.partial(
        task_id="review_finding",
        options=OPTIONS,
        params={"reason": Param("", type="string", maxLength=2000, title="Reason",
                                description="Why it is ignored or not personal (required for 'ignore'); "
                                            "never a value from the data.")},
        response_timeout=dt.timedelta(hours=20),
        retries=0,
    )

    @task(trigger_rule="all_done")
    def record_decisions(items: list[dict]) -> dict:
        from include.retention.airflow import discovery_tasks

        context = get_current_context()
        ti = context["ti"]
        responses = [ti.xcom_pull(task_ids="review_finding", map_indexes=i) for i in range(len(items))]
        return discovery_tasks.record_decisions(items, responses, dag_id=context["dag"].dag_id,
                                                run_id=context["run_id"])

    systems = plan_systems()
    read_lineage() >> systems
    found = discover.expand(system=systems)
    items = open_findings()
    found >> items
    reviews = review.expand_kwargs(review_kwargs(items))
    reviews >> record_decisions(items)


data_map_drift()
