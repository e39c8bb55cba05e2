"""Deletes that take dependents of the same database along, set-based per batch (``SqlActs.delete_set``).

A parent (``events``, walked on its indexed start column) with children deleted with it (``notes``, some under
legal hold), grandchildren deleted with those (``replies``) and children whose reference is nullified
(``tags``), on SQLite, PostgreSQL and MariaDB: the sweep deletes exactly the eligible parents, exactly their
notes and replies, nullifies exactly their tags, in several bounded batches, and records the digest of the
batch's keys computed in Python; a row inserted into a running batch's range is not deleted by that batch.
"""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from include.retention.policy import parse_policy
from include.retention.stores import sql as sqlmod
from include.retention.stores import sql_walks
from include.retention.stores.sql import SqlStore
from tests.unit.test_sweep_batching import Recorder

NOW = dt.datetime(2026, 11, 24)
CUTOFF = NOW - dt.timedelta(days=30)
KEY = b"k" * 32
N = 240

POLICY = """
systems:
  db:
    kind: sql
    connection: db
    collections:
      events:
        table: events
        primary_key: id
        columns: [id, created_at, legal_hold]
        legal_hold: [{column: legal_hold, equals: true}]
        rules:
          - {name: old_delete, start: created_at, action: delete, period: P30D, max_fraction: 1}
      notes:
        table: notes
        primary_key: id
        columns: [id, event_id, held]
        legal_hold: [{column: held, equals: true}]
        references: [{to: db.events, column: event_id, on_delete: delete}]
      replies:
        table: replies
        primary_key: id
        columns: [id, note_id]
        references: [{to: db.notes, column: note_id, on_delete: delete}]
      tags:
        table: tags
        primary_key: id
        columns: [id, event_id]
        references: [{to: db.events, column: event_id, on_delete: nullify}]
"""


def _tables() -> sa.MetaData:
    md = sa.MetaData()
    events = sa.Table("events", md, sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
                      sa.Column("created_at", sa.DateTime), sa.Column("legal_hold", sa.Boolean))
    sa.Index("ix_events_created_at", events.c.created_at)
    sa.Table("notes", md, sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
             sa.Column("event_id", sa.BigInteger, index=True), sa.Column("held", sa.Boolean))
    sa.Table("replies", md, sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
             sa.Column("note_id", sa.BigInteger, index=True))
    sa.Table("tags", md, sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
             sa.Column("event_id", sa.BigInteger, index=True))
    return md


def seeded(url: str) -> tuple[SqlStore, dict]:
    """Every third event past the period (one exactly at the cutoff, which is not); events 0, 21, 42 ... under
    hold; a note for every even event (every 35th note held: its event is kept), a reply per note, a tag for
    every fifth event."""
    engine = sqlmod.make_engine(url)
    md = _tables()
    md.create_all(engine)
    events, notes, replies, tags = (md.tables[n] for n in ("events", "notes", "replies", "tags"))
    ev, nt, rp, tg = [], [], [], []
    eligible = set()
    for i in range(N):
        eid = i * 7 + 1
        old = i % 3 == 0
        created = NOW - dt.timedelta(days=40 + i % 50) if old else NOW - dt.timedelta(days=i % 20)
        if i == 1:
            created = CUTOFF  # exactly at the boundary: not yet past the period
        ev.append({"id": eid, "created_at": created, "legal_hold": i % 21 == 0})
        held_note = False
        if i % 2 == 0:
            held_note = i % 35 == 0
            nt.append({"id": 10_000 + eid, "event_id": eid, "held": held_note})
            rp.append({"id": 20_000 + eid, "note_id": 10_000 + eid})
        if i % 5 == 0:
            tg.append({"id": 30_000 + eid, "event_id": eid})
        if old and i % 21 != 0 and not held_note:
            eligible.add(eid)
    with engine.begin() as conn:
        for t, rows in ((events, ev), (notes, nt), (replies, rp), (tags, tg)):
            conn.execute(t.insert(), rows)
    store = SqlStore("db", parse_policy(POLICY, source="t.yaml"), engine, mask_key=KEY)
    return store, {"eligible": eligible, "notes": {r["id"]: r["event_id"] for r in nt},
                   "replies": {r["id"]: r["note_id"] for r in rp}, "tags": {r["id"]: r["event_id"] for r in tg}}


def _sweep(store: SqlStore, batch_size: int) -> tuple[sqlmod.StageResult, Recorder]:
    _, _, rule = store.policy.rule("db.events.old_delete")
    rec = Recorder()
    return store.apply_stage("events", rule, rule.stages[0], NOW, batch_size, "test", rec), rec


def _left(store: SqlStore, name: str, col: str | None = None) -> dict:
    t = store.table(name)
    with store.engine.connect() as conn:
        return dict(conn.execute(sa.select(t.c.id, t.c[col] if col else t.c.id)).all())


def test_the_set_based_path_is_the_one_taken(db_url, monkeypatch):
    store, _ = seeded(db_url)
    assert store.acts.set_cascade("events")

    def by_key(*a, **k):  # pragma: no cover - fails the test if reached
        raise AssertionError("per-key delete path used")

    monkeypatch.setattr(store.acts, "delete_keys", by_key)
    result, _ = _sweep(store, 7)
    assert result.changed > 0
    store.close()


def test_exactly_the_eligible_rows_and_their_dependents_go_in_bounded_batches(db_url, monkeypatch):
    monkeypatch.setattr(sql_walks, "MAX_BATCH", 9)  # batches of at most 9 rows: many of them
    store, seed = seeded(db_url)
    eligible = seed["eligible"]
    result, rec = _sweep(store, 7)
    assert result.batches == len(rec.intents) == len(rec.outcomes) >= len(eligible) // 9
    assert result.changed == len(eligible) == sum(n for _, n, _ in rec.outcomes)
    assert all(planned <= 9 for _, planned, _ in rec.intents)
    left = set(_left(store, "events"))
    assert left == {i * 7 + 1 for i in range(N)} - eligible
    assert 1 * 7 + 1 in left  # the row exactly at the cutoff
    gone_notes = {n for n, e in seed["notes"].items() if e in eligible}
    assert set(_left(store, "notes")) == set(seed["notes"]) - gone_notes
    gone_replies = {r for r, n in seed["replies"].items() if n in gone_notes}
    assert set(_left(store, "replies")) == set(seed["replies"]) - gone_replies
    tags = _left(store, "tags", "event_id")
    assert set(tags) == set(seed["tags"])  # nullified, not deleted
    assert {t for t, e in tags.items() if e is None} == {t for t, e in seed["tags"].items() if e in eligible}
    assert result.cascaded == {"db.notes": len(gone_notes), "db.replies": len(gone_replies),
                               "db.tags:nullified": sum(e in eligible for e in seed["tags"].values())}
    store.close()


def test_one_batch_records_the_python_digest_of_its_keys(db_url):
    store, seed = seeded(db_url)
    result, rec = _sweep(store, 10_000)
    expected = store.pk_digest(sorted(seed["eligible"]))
    assert rec.intents == [("delete", len(seed["eligible"]), expected)]
    assert rec.outcomes == [("delete", len(seed["eligible"]), expected)]
    store.close()


def test_a_row_inserted_into_a_running_batch_is_not_deleted_by_it(db_url, monkeypatch):
    """PostgreSQL: the insert commits, and the batch (acting on the keys it locked) leaves the row and its note;
    MariaDB and SQLite: the batch holds its range (next-key locks) or the database, so the insert waits."""
    store, seed = seeded(db_url)
    dialect = store.engine.dialect.name
    other = sqlmod.make_engine(db_url) if dialect != "sqlite" else sa.create_engine(
        db_url, connect_args={"timeout": 0.2})
    events, notes = _tables().tables["events"], _tables().tables["notes"]
    new_id, attempts = 999_999, []
    original = store.acts.delete_set_dependents

    def insert_meanwhile(conn, name, t, rows, cascaded, *keys):
        if name == "events" and not attempts:  # first batch: older than every row, so inside its range
            attempts.append(1)
            try:
                with other.begin() as oc:
                    if dialect == "mysql":
                        oc.execute(sa.text("SET SESSION innodb_lock_wait_timeout = 1"))
                    oc.execute(events.insert().values(id=new_id, created_at=NOW - dt.timedelta(days=900),
                                                      legal_hold=False))
                    oc.execute(notes.insert().values(id=new_id, event_id=new_id, held=False))
                attempts.append("committed")
            except sa.exc.OperationalError:
                attempts.append("waited")
        return original(conn, name, t, rows, cascaded, *keys)

    monkeypatch.setattr(store.acts, "delete_set_dependents", insert_meanwhile)
    result, rec = _sweep(store, 7)
    other.dispose()
    assert result.changed == len(seed["eligible"]) == sum(n for _, n, _ in rec.outcomes)
    if dialect == "postgresql":
        assert attempts == [1, "committed"]
        assert new_id in _left(store, "events") and new_id in _left(store, "notes")
    else:
        assert attempts == [1, "waited"]
        assert new_id not in _left(store, "events")
    store.close()


@pytest.mark.parametrize("change", ["objects", "other_database"])
def test_anything_beyond_this_database_keeps_the_per_key_path(change):
    text = POLICY
    if change == "objects":
        text = text.replace("columns: [id, created_at, legal_hold]\n",
                            "columns: [id, created_at, legal_hold, file_key]\n"
                            "        references: [{to: files.docs, column: file_key}]\n")
        text += ("  files:\n    kind: s3\n    connection: s3\n    collections:\n"
                 "      docs: {bucket: b, prefix: docs/}\n")
    else:
        text = text.replace("references: [{to: db.events, column: event_id, on_delete: nullify}]",
                            "references: [{to: other.events, column: event_id, on_delete: nullify}]")
        text += ("  other:\n    kind: sql\n    connection: other\n    collections:\n"
                 "      events:\n        table: events\n        primary_key: id\n        columns: [id]\n")
    store = SqlStore("db", parse_policy(text, source="t.yaml"), sa.create_engine("sqlite://"))
    if change == "other_database":  # the tags reference another system's table now: events has that child
        store = SqlStore("other", store.policy, sa.create_engine("sqlite://"))
    assert not store.acts.set_cascade("events")
