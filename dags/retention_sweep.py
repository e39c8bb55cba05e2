"""retention_sweep: enforce every retention rule of the data map, one mapped task per rule.

A rule on records inside S3 objects (a collection with a ``format``) is planned by its ``apply_rule`` task, which
seals the plan in the ledger; its objects are then deleted or rewritten by one mapped ``sweep_batch`` task per
batch of objects (``RETENTION_SWEEP_BATCH_OBJECTS``), and ``finish_batches`` completes the rule once every batch
is done.

A rule whose safety brake trips changes nothing and fails its task. A person can then approve
the tripped rules in the Airflow UI (Required actions, human-in-the-loop); approved rules run
again with the brake released, rejected ones leave the run failed.

Every run also checks, independently of any index, that no erased person is found again in a SQL
table (check_erasures): a hit reopens the erasure's request and fails the run, alerting the DPO
(erasures_intact).
"""

from __future__ import annotations

import datetime as dt

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import AssetAlias, Param, dag, get_current_context, task

from include.retention.airflow.deadlines import sweep_deadline
from include.retention.airflow.defaults import dag_args
from include.retention.airflow.notify_tasks import failure_alert
from include.retention.airflow.sweep_tasks import SWEPT_ALIAS
from include.retention.settings import settings

SCHEDULE = settings().sweep_schedule


@dag(
    **dag_args("retention_sweep", "retention"),
    deadline=sweep_deadline(),
    schedule=SCHEDULE,
    max_active_runs=1,
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

    def _apply(rule_id: str, brake_approved: bool) -> dict:
        from include.retention.airflow import sweep_tasks

        context = get_current_context()
        context["rule_id"] = rule_id
        return sweep_tasks.apply_rule(rule_id, dry_run=bool(context["params"]["dry_run"]),
                                      dag_id=context["dag"].dag_id, run_id=context["run_id"],
                                      brake_approved=brake_approved)

    @task(map_index_template="{{ rule_id }}")
    def apply_rule(rule_id: str) -> dict:
        return _apply(rule_id, brake_approved=False)

    @task(trigger_rule="all_done")
    def planned_batches(results) -> list[dict]:
        """The batches of the rules swept as a sealed plan (records inside objects): rule id, batch, plan seq."""
        from include.retention.airflow import sweep_tasks

        return sweep_tasks.planned_batches(results)

    @task(map_index_template="{{ batch_label }}")
    def sweep_batch(rule_id: str, batch: int, plan: int) -> dict:
        """One batch of objects of a sealed plan: deleted whole or rewritten, each with its ledger intent."""
        from include.retention.airflow import sweep_tasks

        context = get_current_context()
        context["batch_label"] = f"{rule_id} #{batch}"
        return sweep_tasks.sweep_batch(rule_id, batch, plan, dag_id=context["dag"].dag_id, run_id=context["run_id"])

    @task(trigger_rule="all_done")
    def finish_batches(results) -> list[dict]:
        """A sealed plan whose batches are all done completes its rule (its sweep entry, the summed counts)."""
        from include.retention.airflow import sweep_tasks

        context = get_current_context()
        return sweep_tasks.finish_sealed(results, dag_id=context["dag"].dag_id, run_id=context["run_id"])

    @task.short_circuit(trigger_rule="all_done", ignore_downstream_trigger_rules=False)
    def brake_tripped() -> list[str]:
        """The rules of this run whose safety brake tripped; nothing to approve skips the approval."""
        from include.retention.airflow import sweep_tasks

        context = get_current_context()
        return sweep_tasks.tripped_rules(context["dag"].dag_id, context["run_id"])

    approve = ApprovalOperator(
        task_id="approve_brake",
        subject="Safety brake tripped in retention_sweep",
        body="These rules would touch more of their collection than their max_fraction allows and "
             "changed nothing: {{ ti.xcom_pull(task_ids='brake_tripped') | join(', ') }}. "
             "Approve to apply them once with the brake released.",
        defaults=["Reject"],
        response_timeout=dt.timedelta(hours=20),
        retries=0,
    )

    @task(map_index_template="{{ rule_id }}")
    def apply_approved(rule_id: str) -> dict:
        return _apply(rule_id, brake_approved=True)

    @task(trigger_rule="all_done")
    def summarize(results, approved, finished, finished_approved, expected: list[str]) -> str:
        from include.retention.airflow import sweep_tasks

        return sweep_tasks.summarize([*(results or []), *(approved or []), *(finished or []),
                                      *(finished_approved or [])], expected)

    @task
    def enforce_suppression() -> dict:
        """Subscribers whose e-mail digest is suppressed (erased or unsubscribed) are removed again."""
        from include.retention.airflow import sweep_tasks

        context = get_current_context()
        return sweep_tasks.enforce_suppression(dry_run=bool(context["params"]["dry_run"]),
                                               dag_id=context["dag"].dag_id, run_id=context["run_id"],
                                               systems=context["params"]["systems"] or None)

    @task(trigger_rule="all_done")
    def check_erasures() -> dict:
        """Every SQL identity compared with the suppression list's digests of erased people, independent of any
        index (ADR 0022): an erased person found again reopens the request."""
        from include.retention.airflow import sweep_tasks

        context = get_current_context()
        return sweep_tasks.check_erasures(dry_run=bool(context["params"]["dry_run"]),
                                          dag_id=context["dag"].dag_id, run_id=context["run_id"],
                                          systems=context["params"]["systems"] or None)

    @task(on_failure_callback=failure_alert("an erased person was found again"))  # AirflowFailException: no retry
    def erasures_intact(checked: dict) -> None:
        """A leaf: fails the run, and alerts the DPO, when the check found an erased person again."""
        from include.retention.airflow import sweep_tasks

        sweep_tasks.erasures_intact(checked)

    @task(trigger_rule="all_done", outlets=[AssetAlias(SWEPT_ALIAS)])
    def announce_changes() -> dict:
        """An asset event retention://<system>/swept per system this run changed, counts in the extra."""
        from include.retention.airflow import sweep_tasks

        context = get_current_context()
        return sweep_tasks.announce_changes(context["outlet_events"], dag_id=context["dag"].dag_id,
                                            run_id=context["run_id"])

    @task(trigger_rule="all_done")
    def anchor_ledger() -> dict:
        """Anchor the ledger's head outside its database (RETENTION_LEDGER_ANCHORS), after the run's entries."""
        from include.retention.airflow import sweep_tasks

        return sweep_tasks.anchor_ledger()

    rules = plan_rules()
    results = apply_rule.expand(rule_id=rules)
    swept = sweep_batch.expand_kwargs(planned_batches(results))  # records inside objects: one task per batch
    finished = finish_batches(results)
    swept >> finished
    tripped = brake_tripped()
    results >> tripped >> approve
    approved = apply_approved.expand(rule_id=tripped)
    approve >> approved
    swept_approved = sweep_batch.override(task_id="sweep_approved_batch").expand_kwargs(
        planned_batches.override(task_id="approved_batches")(approved))
    finished_approved = finish_batches.override(task_id="finish_approved_batches")(approved)
    swept_approved >> finished_approved
    # a leaf: a rule that did not complete (its task, or a batch of its sealed plan, failed) fails the run
    summarize(results, approved, finished, finished_approved, rules)
    suppressed = enforce_suppression()
    rules >> suppressed
    checked = check_erasures()  # after the suppression's removals: what is left is found again
    suppressed >> checked
    erasures_intact(checked)
    # also a leaf, after every entry of the run
    [results, approved, finished, finished_approved, suppressed, checked] >> anchor_ledger()
    # a leaf: downstream DAGs schedule on its events
    [results, approved, finished, finished_approved, suppressed] >> announce_changes()


retention_sweep()
