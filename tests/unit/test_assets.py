"""What a sweep run changed per system (the extra of its asset events), from ledger entries."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from include.retention.assets import CHANGE_COUNTS, changes_per_system, swept_uri


def sweep(system, rule, outcome="complete", run="r1", **counts):
    details = {"locked": 0, "anonymized": 0, "deleted": 0, "held": 4, "kept": 9, "cascaded": {}, **counts}
    return {"dag_id": "retention_sweep", "run_id": run, "system": system, "rule_id": rule, "action": "sweep",
            "outcome": outcome, "details": json.dumps(details)}


def test_counts_per_system_with_cascades_across_databases_and_suppression():
    rows = [
        sweep("crm", "crm.leads.lifecycle", locked=2, deleted=3),
        sweep("crm", "crm.people.minors", deleted=1, cascaded={"crm.notes": 2}),
        sweep("mailing", "mailing.subscribers.gone", deleted=4, cascaded={"crm.notes": 5}),  # notes in the CRM
        sweep("objects", "objects.cvs.orphaned"),  # nothing due
        sweep("crm", "crm.leads.lifecycle", outcome="dry_run", deleted=50),  # dry runs change nothing
        sweep("crm", "crm.leads.lifecycle", outcome="brake_tripped", deleted=70),
        sweep("crm", "crm.leads.lifecycle", run="other", deleted=90),  # another run
        {"dag_id": "retention_sweep", "run_id": "r1", "system": "mailing", "action": "suppress", "outcome": "done",
         "count": 2, "details": None},
        {"dag_id": "retention_sweep", "run_id": "r1", "system": "mailing", "action": "suppress",
         "outcome": "dry_run", "count": 8, "details": None},
    ]
    out = changes_per_system(rows, "retention_sweep", "r1")
    assert set(out) == {"crm", "mailing"}  # objects changed nothing: no event
    assert {k: out["crm"][k] for k in CHANGE_COUNTS} == {"locked": 2, "anonymized": 0, "deleted": 4, "cascaded": 7,
                                                          "suppressed": 0}
    assert out["crm"]["rules"] == ["crm.leads.lifecycle", "crm.people.minors"]
    assert {k: out["mailing"][k] for k in CHANGE_COUNTS} == {"locked": 0, "anonymized": 0, "deleted": 4,
                                                              "cascaded": 0, "suppressed": 2}
    assert out["mailing"]["run_id"] == "r1" and swept_uri("crm") == "retention://crm/swept"


def test_a_system_changed_only_by_a_cascade_gets_its_event():
    out = changes_per_system([sweep("mailing", "mailing.subscribers.gone", cascaded={"crm.notes": 1})],
                             "retention_sweep", "r1")
    assert set(out) == {"crm"} and out["crm"]["cascaded"] == 1 and out["crm"]["rules"] == []


def test_digests_added_to_the_suppression_list_are_no_system_of_their_own():
    out = changes_per_system([sweep("mailing", "mailing.subscribers.gone", deleted=3,
                                    cascaded={"suppression_list": 3, "mailing.list_memberships": 2})],
                             "retention_sweep", "r1")
    assert set(out) == {"mailing"} and out["mailing"]["cascaded"] == 2


@given(st.lists(st.tuples(st.sampled_from(["crm", "mailing", "s3"]), st.integers(0, 5), st.integers(0, 5),
                          st.integers(0, 5), st.sampled_from(["complete", "dry_run", "brake_tripped"]))))
def test_an_event_exactly_for_each_system_with_committed_changes(entries):
    rows = [sweep(s, f"{s}.c.r{i}", outcome=o, locked=lk, anonymized=an, deleted=de)
            for i, (s, lk, an, de, o) in enumerate(entries)]
    out = changes_per_system(rows, "retention_sweep", "r1")
    expected = {}
    for s, lk, an, de, o in entries:
        if o == "complete":
            expected[s] = expected.get(s, 0) + lk + an + de
    assert set(out) == {s for s, n in expected.items() if n}
    for s, counts in out.items():
        assert counts["locked"] + counts["anonymized"] + counts["deleted"] == expected[s]
