"""Every DAG imports cleanly, parses without touching a database, has retries and tags."""

from __future__ import annotations

import pytest

from tests.airflow.conftest import load_dag
from tests.conftest import ROOT

pytestmark = pytest.mark.airflow

EXPECTED = {"retention_sweep", "erasure_request", "erasure_intake", "erasure_deadlines", "erasure_metadata_purge",
            "data_map_drift"}


def test_dagbag_imports_without_errors():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    assert EXPECTED <= set(bag.dag_ids)
    for dag_id, dag in bag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        for task in dag.tasks:
            # the watcher only turns a failure elsewhere into a failed run; a person answers an approval once
            if task.task_id not in ("watcher", "approve_brake", "review_finding"):
                assert task.retries >= 1, f"{dag_id}.{task.task_id} has no retries"
        assert dag.max_active_runs == 1 or dag_id != "retention_sweep"


def test_retention_sweep_shape():
    dag = load_dag("retention_sweep")
    assert set(dag.task_ids) == {"plan_rules", "apply_rule", "brake_tripped", "approve_brake", "apply_approved",
                                 "summarize", "enforce_suppression", "check_erasures", "erasures_intact",
                                 "anchor_ledger", "announce_changes", "planned_batches", "sweep_batch",
                                 "finish_batches", "approved_batches", "sweep_approved_batch",
                                 "finish_approved_batches"}
    # records inside objects: one mapped task per batch of a sealed plan, completed before the summary and anchor
    assert {"finish_batches", "finish_approved_batches"} <= dag.get_task("summarize").upstream_task_ids
    assert {"finish_batches", "finish_approved_batches"} <= dag.get_task("anchor_ledger").upstream_task_ids
    assert dag.get_task("sweep_batch").downstream_task_ids == {"finish_batches"}
    # the check's entries are anchored with the run's; its verdict is a leaf, so a finding fails the run
    assert "check_erasures" in dag.get_task("anchor_ledger").upstream_task_ids
    assert dag.get_task("erasures_intact").downstream_task_ids == set()
    assert dag.params["dry_run"] is False
    apply = dag.get_task("apply_rule")
    assert apply.retry_exponential_backoff
    assert apply.map_index_template == "{{ rule_id }}"


def test_erasure_request_form_params():
    dag = load_dag("erasure_request")
    params = dag.params
    assert set(params.keys()) == {"email", "phone", "customer_ref", "social_handle", "mode", "dry_run", "request_ref",
                                  "note"}
    assert params.get_param("mode").schema["enum"] == ["erase", "restrict"]
    email = params.get_param("email")
    assert email.resolve("Person.Name@example.org") == "Person.Name@example.org"
    assert email.resolve(None) is None  # optional when a phone or customer reference is given
    with pytest.raises(Exception, match="does not match"):
        email.resolve("not-an-address")
    with pytest.raises(Exception, match="is not one of"):
        params.get_param("mode").resolve("delete-everything")
    # limits and characters are checked by the form already (and again when the request is registered)
    with pytest.raises(Exception, match="too long|is longer"):
        email.resolve("a" * 250 + "@example.org")
    with pytest.raises(Exception, match="does not match"):
        email.resolve("person\x00@example.org")
    with pytest.raises(Exception, match="does not match"):
        params.get_param("social_handle").resolve("@zoe\nnext")
    assert params.get_param("social_handle").resolve("@zoe_m") == "@zoe_m"
    groups = {t.task_id for t in dag.tasks}
    assert {"register", "resolve_person", "needs_identity_check", "verify_identity", "identity_confirmed",
            "identity_gate", "list_systems", "system.discover", "system.act", "system.verify", "system.record",
            "finalize", "watcher", "plan_notices", "send_notice", "manual_recipients", "confirm_recipients",
            "record_confirmations", "tell_requester"} == groups
