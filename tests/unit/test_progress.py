"""Progress of a running sweep from its ledger entries (include/retention/progress.py), on rows as the ledger
returns them."""

from __future__ import annotations

import datetime as dt
import json
import logging

from include.retention.progress import STALLED_AFTER, Steps, rule_progress, time_left

T0 = dt.datetime(2026, 12, 1, 10, 0, 0, tzinfo=dt.UTC)


def _at(seconds: float) -> str:
    return (T0 + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def intent(
    seq: int, count: int, at: float, *, action: str = "delete", collection: str = "crm.leads", plan: dict | None = None
) -> dict:
    details = {"owner": "x", **({"plan": plan} if plan is not None else {})}
    return {
        "seq": seq,
        "recorded_at": _at(at),
        "dag_id": "retention_sweep",
        "run_id": "r1",
        "rule_id": "crm.leads.old",
        "system": "crm",
        "collection": collection,
        "action": action,
        "outcome": "intent",
        "count": count,
        "details": json.dumps(details),
        "ref_seq": None,
    }


def outcome(seq: int, of: int, count: int, at: float, action: str = "delete") -> dict:
    return {
        "seq": seq,
        "recorded_at": _at(at),
        "dag_id": "retention_sweep",
        "run_id": "r1",
        "rule_id": "crm.leads.old",
        "system": "crm",
        "collection": "crm.leads",
        "action": action,
        "outcome": "done",
        "count": count,
        "details": "{}",
        "ref_seq": of,
    }


def test_planned_done_and_time_left_from_intents():
    plan = {"delete": 120_000}
    rows = [
        intent(1, 20_000, 0, plan=plan),
        outcome(2, 1, 20_000, 30),
        intent(3, 20_000, 30, plan=plan),
        outcome(4, 3, 20_000, 60),
        intent(5, 20_000, 60, plan=plan),
    ]
    p = rule_progress(rows, now=T0 + dt.timedelta(seconds=60))
    assert (p.planned, p.done, p.in_flight, p.percent) == (120_000, 40_000, 20_000, 33)
    assert p.eta_seconds == 120.0
    assert p.line() == "rule crm.leads.old: 40,000 of 120,000 planned, ~2 min left"
    assert p.as_dict()["per_action"] == {"delete": {"planned": 120_000, "done": 40_000}}


def test_two_stages_and_cascades_into_other_collections():
    plan = {"delete": 10, "lock": 6}
    rows = [
        intent(1, 10, 0, plan=plan),
        intent(2, 4, 1, collection="crm.notes"),
        outcome(3, 2, 4, 2),
        outcome(4, 1, 10, 2),
        intent(5, 6, 3, action="lock", plan=plan),
    ]
    p = rule_progress(rows, now=T0 + dt.timedelta(seconds=4))
    assert (p.planned, p.done, p.in_flight) == (16, 10, 6)  # the cascade's 4 rows are not the rule's plan
    assert p.per_action == {"delete": {"planned": 10, "done": 10}, "lock": {"planned": 6, "done": 0}}


def test_no_batch_done_yet_is_an_estimate_to_come_and_a_stopped_run_says_so():
    rows = [intent(1, 500, 0, plan={"delete": 2000})]
    p = rule_progress(rows, now=T0 + dt.timedelta(seconds=5))
    assert p.eta_seconds is None and p.line() == "rule crm.leads.old: 0 of 2,000 planned, estimating the time left"
    late = rule_progress(rows, now=T0 + STALLED_AFTER + dt.timedelta(seconds=1))
    assert late.stalled and late.line() == "rule crm.leads.old: 0 of 2,000 planned, no progress since 10:00:00 UTC"
    assert rule_progress([], now=T0) is None


def test_intents_without_a_plan_count_their_batches():
    p = rule_progress([intent(1, 3, 0), outcome(2, 1, 3, 1), intent(3, 3, 1)], now=T0 + dt.timedelta(seconds=2))
    assert (p.planned, p.done) == (6, 3)


def test_time_left_words():
    assert [time_left(s) for s in (None, 5, 90, 3 * 3600 + 600)] == [
        "estimating the time left",
        "less than a minute left",
        "~2 min left",
        "~3 h 10 min left",
    ]


def test_steps_log_a_line_per_step(caplog):
    steps = Steps("access package r-1", 3, "collections")
    with caplog.at_level(logging.INFO, logger="include.retention.progress"):
        steps.step("crm.contacts", "2 row(s)")
        steps.step("crm.inquiries")
        last = steps.step("mailing.subscribers")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("access package r-1: crm.contacts (1 of 3 collections), 2 row(s), ")
    assert lines[1].startswith("access package r-1: crm.inquiries (2 of 3 collections), ")
    assert last == "access package r-1: mailing.subscribers (3 of 3 collections), done"


def test_a_progress_line_that_cannot_be_read_does_not_fail_the_sweep(caplog):
    import sqlalchemy as sa

    from include.retention.ledger import Ledger, RunRef
    from include.retention.progress import SweepProgressLog

    engine = sa.create_engine("sqlite://")  # no ledger tables: reading the rule's entries fails
    progress = SweepProgressLog(Ledger(engine, b""), RunRef("retention_sweep", "r1"), "crm.leads.old", every=0)
    with caplog.at_level(logging.WARNING, logger="include.retention.progress"):
        progress.tick()
    assert "no progress line for rule crm.leads.old: OperationalError" in caplog.text
