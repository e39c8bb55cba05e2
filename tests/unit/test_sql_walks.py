"""The walk factory (``sql_walks.choose_walk``): which walk a stage takes on which collection, and a walk run alone.

SQLite tables are real (a database file); the PostgreSQL and MariaDB choices that need no server (the MariaDB
walks, and the reasons a PostgreSQL stage does not walk blocks) use a store whose engine never connects.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from include.retention.policy import Mask, parse_policy
from include.retention.stores import sql_walks
from include.retention.stores.sql import SqlStore
from include.retention.stores.sql_walks import (
    BatchSizer,
    KeysetWalk,
    OrderWalk,
    RangeWalk,
    choose_walk,
)
from tests.unit.test_sweep_batching import KEY, MY, NOW, POLICY, Recorder, events_table, offline_store

SCHEMAS = {
    # start column indexed: the walk follows (start, pk)
    "indexed": "CREATE INDEX ix_events_created_at ON events (created_at)",
    # no index leads with the start column: the walk follows the primary key
    "bare": None,
}


def sqlite_store(tmp_path, schema: str = "indexed", rows: int = 60) -> tuple[SqlStore, set[int]]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'walks.db'}")
    t = events_table(sa.MetaData(), index=False)
    t.metadata.create_all(engine)
    eligible = set()
    with engine.begin() as conn:
        if SCHEMAS[schema]:
            conn.exec_driver_sql(SCHEMAS[schema])
        for i in range(rows):
            old = i % 2 == 0
            conn.execute(t.insert().values(id=i + 1, email=f"p{i}@example.org", legal_hold=i % 10 == 0,
                                           created_at=NOW - dt.timedelta(days=40 if old else 1)))
            if old and i % 10:
                eligible.add(i + 1)
    return SqlStore("db", parse_policy(POLICY, source="t.yaml"), engine, mask_key=KEY), eligible


def _choose(store: SqlStore, rule_name: str, walk: str | None = "created_at"):
    _, _, rule = store.policy.rule(f"db.events.{rule_name}")
    stage = rule.stages[0]
    predicate = lambda t: store.eligible("events", rule, stage, NOW, t)  # noqa: E731
    mask = {c: m for c, m in (stage.mask or {}).items()}
    return choose_walk(store, "events", predicate, stage.action, "test", NOW, mask, walk), predicate


def test_sqlite_walks_keys_in_start_order_for_every_action(tmp_path):
    store, _ = sqlite_store(tmp_path)
    for rule in ("old_delete", "old_lock", "old_anonymize", "old_hash"):
        walk, _ = _choose(store, rule)
        assert type(walk) is KeysetWalk, rule
        assert [c.name for c in walk.order] == ["created_at", "id"]
    walk, _ = _choose(store, "old_delete", walk=None)  # a computed start: the key alone
    assert [c.name for c in walk.order] == ["id"]
    store.close()


def test_sqlite_without_an_index_on_the_start_walks_the_key(tmp_path):
    store, _ = sqlite_store(tmp_path, "bare")
    walk, _ = _choose(store, "old_lock")
    assert type(walk) is KeysetWalk and [c.name for c in walk.order] == ["id"]
    store.close()


def test_a_keyset_walk_run_alone_acts_on_exactly_the_eligible_rows(tmp_path):
    store, eligible = sqlite_store(tmp_path)
    walk, predicate = _choose(store, "old_lock")
    rec = Recorder()
    sizer = BatchSizer(4, floor=4)
    sizer.took = lambda rows, seconds: None  # 4 rows a batch throughout
    result = walk.run(predicate, sizer, rec)
    t = store.table("events")
    with store.engine.connect() as conn:
        locked = set(conn.execute(sa.select(t.c.id).where(t.c.restricted_at.is_not(None))).scalars())
    assert locked == eligible and result.changed == len(eligible)
    assert result.batches == len(rec.outcomes) == -(-len(eligible) // 4)
    assert [o[:2] for o in rec.outcomes] == [i[:2] for i in rec.intents]
    store.close()


def test_mariadb_deletes_in_order_and_locks_by_range_with_integer_keys():
    maria = offline_store(MY, mariadb=True)
    delete, _ = _choose(maria, "old_delete", walk=None)
    lock, _ = _choose(maria, "old_lock", walk=None)
    redact, _ = _choose(maria, "old_anonymize", walk=None)
    hashed, _ = _choose(maria, "old_hash", walk=None)  # a keyed hash is computed in Python: keys come back
    # a one-column integer key and one statement per batch: the range walk (deletes too: it comes first)
    assert type(delete) is RangeWalk and type(lock) is RangeWalk and type(redact) is RangeWalk
    assert type(hashed) is KeysetWalk


def test_mariadb_text_keys_delete_in_order_and_a_delete_taking_something_along_walks_keys(monkeypatch):
    text_key = offline_store(MY, mariadb=True)
    text_key._tables["events"] = sa.Table(
        "events", sa.MetaData(), sa.Column("id", sa.String(40), primary_key=True),
        *(sa.Column(c) for c in ("email", "created_at", "legal_hold", "restricted_at", "restriction_reason",
                                 "anonymized_at")))
    delete, _ = _choose(text_key, "old_delete", walk=None)
    lock, _ = _choose(text_key, "old_lock", walk=None)
    assert type(delete) is OrderWalk and type(lock) is KeysetWalk
    monkeypatch.setattr(text_key.acts, "takes_along", lambda name: True)
    delete, _ = _choose(text_key, "old_delete", walk=None)
    assert type(delete) is KeysetWalk


def test_postgresql_keeps_the_keyset_walk_when_one_statement_does_not_do_the_batch():
    pg = offline_store("postgresql+psycopg2://u@h/db")
    assert not sql_walks.by_block(pg, "events", "anonymize", {"email": Mask(strategy="hmac")})
    hashed, _ = _choose(pg, "old_hash", walk=None)
    assert type(hashed) is KeysetWalk
