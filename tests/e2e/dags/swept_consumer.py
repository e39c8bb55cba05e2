"""A downstream DAG of the end-to-end stack only (its own DAG bundle, tests/e2e/conftest.py): scheduled on the
``retention://<system>/swept`` assets that retention_sweep's announce_changes emits, it returns what the
triggering events carried (per asset: each event's extra), so the test can compare it with the sweep's ledger."""

from __future__ import annotations

from airflow.sdk import Asset, dag, get_current_context, task

SYSTEMS = ("crm", "mailing", "objects")


@dag(
    dag_id="e2e_swept_consumer",
    schedule=Asset(f"retention://{SYSTEMS[0]}/swept")
    | Asset(f"retention://{SYSTEMS[1]}/swept")
    | Asset(f"retention://{SYSTEMS[2]}/swept"),
    catchup=False,
    tags=["e2e"],
)
def e2e_swept_consumer():
    @task
    def seen() -> dict:
        events = get_current_context()["triggering_asset_events"]
        return {
            asset.uri: [dict(event.extra or {}) for event in found]
            for asset, found in events.items()
            if isinstance(asset, Asset)
        }  # the alias it came through is a key too

    seen()


e2e_swept_consumer()
