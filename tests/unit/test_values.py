"""include/retention/values.py: collection refs, the status and outcome enums, the recorder protocols."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from include.retention.errors import RetentionError
from include.retention.ledger import Ledger
from include.retention.stores.base import DeferredOutcomes, begin_record, collection_recorder, flush_record
from include.retention.stores.sql import make_engine
from include.retention.sweep import LedgerRecorder
from include.retention.values import (
    NAME,
    CascadeRecorder,
    CollectionRef,
    FlushingRecorder,
    IntentRecorder,
    Outcome,
    RecipientStatus,
    RequestStatus,
    SharingRecorder,
    SystemStatus,
)

names = st.from_regex(NAME, fullmatch=True).filter(lambda s: len(s) <= 64)


@given(names, names)
def test_a_ref_round_trips(system, collection):
    ref = CollectionRef(system, collection)
    text = str(ref)
    assert text == f"{system}.{collection}"
    assert CollectionRef.parse(text) == ref
    assert tuple(CollectionRef.parse(text)) == (system, collection)
    assert text.partition(".") == (system, ".", collection)  # the same split as the code it replaces


@given(st.text(max_size=40))
def test_parse_accepts_exactly_system_dot_collection(text):
    system, sep, collection = text.partition(".")
    valid = bool(sep) and NAME.fullmatch(system) is not None and NAME.fullmatch(collection) is not None
    if valid:
        assert str(CollectionRef.parse(text)) == text
    else:
        with pytest.raises(RetentionError):
            CollectionRef.parse(text)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("contacts", "is not a collection ref: expected 'system.collection'"),
        ("crm.contacts.old_delete", "is not a collection ref"),  # a rule id, not a collection ref
        (".contacts", "system must be a name"),
        ("crm.", "collection must be a name"),
        ("crm.con tacts", "collection must be a name"),
        ("9crm.contacts", "system must be a name"),
    ],
)
def test_a_bad_ref_is_refused_with_what_was_expected(text, problem):
    with pytest.raises(RetentionError, match=problem):
        CollectionRef.parse(text)


def test_a_ref_is_a_value():
    a, b = CollectionRef.parse("crm.contacts"), CollectionRef("crm", "contacts")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert CollectionRef.parse(a) is a
    assert sorted([CollectionRef.parse("mailing.list"), a]) == [a, CollectionRef.parse("mailing.list")]
    with pytest.raises(AttributeError):
        a.system = "other"  # frozen


def test_statuses_and_outcomes_are_the_stored_strings():
    assert RequestStatus.COMPLETE == "complete" and RequestStatus.IN_PROGRESS == "in_progress"
    assert SystemStatus.VERIFIED == "verified" and RecipientStatus.WAIVED == "waived"
    assert Outcome.DRY_RUN == "dry_run" and f"{Outcome.DONE}" == "done" and str(Outcome.INTENT) == "intent"
    assert json.dumps({"outcome": Outcome.BRAKE_TRIPPED}) == '{"outcome": "brake_tripped"}'
    assert "pending" in (RequestStatus.PENDING, RequestStatus.INCOMPLETE)


def test_the_registry_and_the_ledger_hold_the_same_words():
    from include.retention import ledger, registry

    assert set(registry.OPEN_STATUSES) <= set(RequestStatus)
    assert set(registry.RECIPIENT_SETTLED) <= set(RecipientStatus)
    assert {ledger.INTENT, ledger.RECONCILED} <= set(Outcome)


@pytest.fixture
def ledger(tmp_path):
    """A real ledger on SQLite."""
    led = Ledger(make_engine(f"sqlite:///{tmp_path / 'ledger.db'}"), b"k" * 32)
    led.ensure_schema()
    return led


def test_the_ledger_recorder_fulfils_every_recorder_protocol(ledger):
    rec = LedgerRecorder(ledger, {"system": "crm", "collection": "crm.contacts"})
    for proto in (IntentRecorder, SharingRecorder, CascadeRecorder):
        assert isinstance(rec, proto), proto
    assert not isinstance(rec, FlushingRecorder)
    deferred = DeferredOutcomes(rec)
    assert isinstance(deferred, IntentRecorder) and isinstance(deferred, FlushingRecorder)


def test_a_plain_callable_is_a_recorder_without_intents():
    calls = []

    def record(action, count, pk_digest, details, intent=None):
        calls.append((action, count, intent))

    assert not isinstance(record, IntentRecorder) and not isinstance(record, CascadeRecorder)
    assert begin_record(record, "delete", 3, "d") is None
    flush_record(record)  # nothing held back: nothing happens
    deferred = DeferredOutcomes(record)
    assert deferred.intend("delete", 3, "d") is None
    deferred("delete", 3, "d", {})
    assert calls == [("delete", 3, None)]


def test_intents_go_through_the_protocol_and_outcomes_share_the_next_intent(ledger):
    common = {"system": "crm", "collection": "crm.contacts", "rule_id": "crm.contacts.old_delete"}
    deferred = DeferredOutcomes(LedgerRecorder(ledger, common))
    first = begin_record(deferred, "delete", 2, "d1", reread={"walk": "range"})
    rows = list(ledger.rows())
    assert [(r["outcome"], r["count"]) for r in rows] == [(Outcome.INTENT, 2)]
    assert json.loads(rows[0]["details"])["walk"] == "range"  # the recorder rereads: it was given the reread
    deferred("delete", 2, "d1", {"batch": 1}, intent=first)
    assert len(list(ledger.rows())) == 1  # the outcome waits for the next intent
    second = begin_record(deferred, "delete", 1, "d2")
    deferred("delete", 1, "d2", {"batch": 2}, intent=second)
    flush_record(deferred)
    rows = list(ledger.rows())
    assert [(r["outcome"], r["count"], r["ref_seq"]) for r in rows] == [
        (Outcome.INTENT, 2, None),
        (Outcome.DONE, 2, first),
        (Outcome.INTENT, 1, None),
        (Outcome.DONE, 1, second),
    ]
    assert ledger.open_intents() == [] and ledger.verify(record=False).ok


def test_a_cascade_through_deferred_outcomes_gets_its_own_entries_without_attribute_forwarding(ledger, monkeypatch):
    """``collection_recorder`` unwraps ``DeferredOutcomes`` itself: from Python 3.12 ``isinstance`` against a
    runtime protocol does not see ``for_collection`` forwarded by ``__getattr__`` (simulated: forwarding off)."""
    rec = LedgerRecorder(ledger, {"system": "crm", "collection": "crm.contacts"})
    deferred = DeferredOutcomes(rec)

    def no_forwarding(self, name):
        raise AttributeError(name)

    monkeypatch.setattr(DeferredOutcomes, "__getattr__", no_forwarding)
    child = collection_recorder(deferred, "billing", "billing.invoices")
    assert isinstance(child, LedgerRecorder) and child is not rec
    assert collection_recorder(lambda *a, **k: None, "billing", "billing.invoices") is None
    assert collection_recorder(DeferredOutcomes(lambda *a, **k: None), "billing", "billing.invoices") is None
