"""Faults and races on the real databases: the ledger cut between a change and its entry, a legal hold
placed while a batch is being deleted, two erasures of one subject at once. Stores end exact; the
ledger accounts for every change or says which intent is open."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
import sqlalchemy as sa

from include.retention.connections import make_engine
from include.retention.ledger import Ledger, RunRef
from include.retention.policy import parse_policy
from include.retention.requests.scanner import SubjectScanner
from include.retention.stores.base import Subject
from include.retention.stores.sql import SqlStore
from include.retention.sweep import run_rule
from tests.conftest import KEY, fresh_tables
from tests.policy_text import crm_policy

pytestmark = pytest.mark.integration

NOW = dt.datetime(2026, 11, 1)
md = sa.MetaData()
people = sa.Table("people", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                  sa.Column("email", sa.String(254)), sa.Column("legal_hold", sa.Boolean, nullable=False),
                  sa.Column("created_at", sa.DateTime))
notes = sa.Table("notes", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                 sa.Column("person_id", sa.Integer), sa.Column("body", sa.String(50)))

POLICY = parse_policy(crm_policy("""\
          people:
            table: people
            primary_key: id
            columns: [id, email, legal_hold, created_at]
            identities: {email: email}
            legal_hold: [{column: legal_hold, equals: true}]
            rules:
              - {name: old, start: created_at, action: delete, period: P1D}
          notes:
            table: notes
            primary_key: id
            columns: [id, person_id, body]
            references: [{to: crm.people, column: person_id, on_delete: delete}]
    """, defaults="{max_fraction: 1.0, batch_size: 10}"), source="faults.yaml")


@pytest.fixture
def engine(db_url):
    engine = fresh_tables(db_url, md)
    with engine.begin() as conn:
        conn.execute(people.insert(), [{"id": i, "email": f"p{i % 7}@example.org", "legal_hold": False,
                                        "created_at": NOW - dt.timedelta(days=5)} for i in range(1, 31)])
        conn.execute(notes.insert(), [{"id": i, "person_id": i, "body": "n"} for i in range(1, 31)])
    yield engine
    engine.dispose()


def count(engine, table) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()


def test_ledger_cut_between_change_and_entry_leaves_an_intent(engine, tmp_path, monkeypatch):
    ledger = Ledger(make_engine(f"sqlite:///{tmp_path / 'ledger.db'}"), KEY)
    store = SqlStore("crm", POLICY, engine, mask_key=KEY)
    real_settle = Ledger.settle

    def cut(self, *args, **kwargs):
        raise sa.exc.OperationalError("settle", {}, Exception("connection to the ledger lost"))

    monkeypatch.setattr(Ledger, "settle", cut)
    with pytest.raises(sa.exc.OperationalError):
        run_rule(POLICY, "crm.people.old", store, ledger, RunRef("t", "1"), now=NOW)
    assert count(engine, people) == 20  # the first batch of 10 committed in the store...
    result = ledger.verify()
    assert result.unreconciled_count == 1  # ... and the ledger says so: an intent without outcome
    intent = next(r for r in ledger.rows() if r["outcome"] == "intent")
    assert intent["count"] == 10 and intent["action"] == "delete"
    monkeypatch.setattr(Ledger, "settle", real_settle)

    counts = run_rule(POLICY, "crm.people.old", store, ledger, RunRef("t", "2"), now=NOW)
    assert counts["deleted"] == 20 and count(engine, people) == 0 and count(engine, notes) == 0
    ledger.reconcile(intent["seq"], 10, "store re-counted after the ledger outage: 10 rows gone")
    final = ledger.verify()
    assert final.ok and final.unreconciled_count == 0
    done = [r for r in ledger.rows() if r["action"] == "delete" and r["outcome"] in ("done", "reconciled")]
    assert sum(r["count"] for r in done) == 30  # every deleted row accounted for once


def test_hold_placed_during_a_delete_batch_waits_for_it(engine, tmp_path):
    """A legal hold on a row of the batch being deleted, committed while the batch handles what goes along
    (objects, digests), cannot slip in between: the batch has locked its rows, the hold waits, and then finds
    the row gone (0 rows updated, the holder knows). Before, the row was deleted after the hold committed."""
    ledger = Ledger(make_engine(f"sqlite:///{tmp_path / 'ledger.db'}"), KEY)
    holder = make_engine(engine.url.render_as_string(hide_password=False))
    outcome: dict[str, int] = {}

    def place_hold():
        with holder.begin() as conn:
            outcome["held_rows"] = conn.execute(people.update().where(people.c.id == 5).values(legal_hold=True)
                                                ).rowcount

    thread = threading.Thread(target=place_hold)

    def before_delete(_coll_ref, rows):
        if not thread.is_alive() and "held_rows" not in outcome:
            thread.start()
            thread.join(timeout=1.0)
            outcome["blocked"] = int(thread.is_alive())  # still waiting for the batch's lock
        return {}

    policy = POLICY.model_copy(deep=True)
    object.__setattr__(policy.systems["crm"].collections["people"], "suppress_on_delete", ["email"])
    store = SqlStore("crm", policy, engine, mask_key=KEY, before_delete=before_delete)
    counts = run_rule(policy, "crm.people.old", store, ledger, RunRef("t", "1"), now=NOW)
    thread.join(timeout=60)
    assert outcome == {"blocked": 1, "held_rows": 0}
    assert counts["deleted"] == 30 and count(engine, people) == 0 and count(engine, notes) == 0
    holder.dispose()


def test_two_erasures_of_one_subject_at_once(engine):
    store_a = SqlStore("crm", POLICY, engine, mask_key=KEY)
    store_b = SqlStore("crm", POLICY, make_engine(engine.url.render_as_string(hide_password=False)), mask_key=KEY)
    subject = Subject("r1", {"email": "p3@example.org"})
    results, errors = [], []

    def erase(store):
        try:
            results.append(SubjectScanner(POLICY, store).act([subject], "erase", dry_run=False))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=erase, args=(s,)) for s in (store_a, store_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    deleted = sum(r.per_request["r1"].get("crm.people", {}).get("deleted", 0) for r in results)
    with engine.connect() as conn:
        left = [e for e in conn.execute(sa.select(people.c.email)).scalars() if e == "p3@example.org"]
    assert left == [] and count(engine, people) == 26
    # honest counts: the two runs together report exactly the 4 rows that went, not 8 (the second one waited
    # for the first one's row locks and then found nothing left to claim)
    assert deleted == 4
    store_b.engine.dispose()


def test_two_sweeps_at_once_count_each_row_once(engine, tmp_path):
    """Two overlapping runs of one rule: every row goes once, and the counts (and the ledger) add up to the
    rows that really went, not twice as many (the statements' real rowcounts are recorded)."""
    ledger = Ledger(make_engine(f"sqlite:///{tmp_path / 'ledger.db'}"), KEY)
    url = engine.url.render_as_string(hide_password=False)
    results, errors = [], []

    def sweep(n):
        store = SqlStore("crm", POLICY, make_engine(url), mask_key=KEY)
        try:
            results.append(run_rule(POLICY, "crm.people.old", store, ledger, RunRef("t", f"run{n}"), now=NOW))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)
        finally:
            store.engine.dispose()

    threads = [threading.Thread(target=sweep, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert count(engine, people) == 0 and count(engine, notes) == 0
    assert sum(r["deleted"] for r in results) == 30
    done = [r for r in ledger.rows() if r["action"] == "delete" and r["outcome"] == "done"]
    assert sum(r["count"] for r in done) == 30
    assert ledger.verify().ok and ledger.verify().unreconciled_count == 0
