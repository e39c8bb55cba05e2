"""Batching of the SQL sweep: the batch sizer, the choice of walk, and what each walk records.

The sizer and the walk choice need no database. The last tests run ``act_in_batches`` on each engine
(``db_url``: SQLite, PostgreSQL, MariaDB) and check that every walk acts on exactly the eligible rows,
never more than a batch per transaction, and records per batch the same key digest the product computes
in Python (PostgreSQL aggregates it in the database, MariaDB returns the keys of its ordered DELETE).
"""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from include.retention.masking import STRATEGIES
from include.retention.policy import parse_policy
from include.retention.stores import sql as sqlmod
from include.retention.stores import sql_walks
from include.retention.stores.sql import SqlStore
from include.retention.stores.sql_walks import MAX_BATCH, BatchSizer, OrderedLimit

NOW = dt.datetime(2026, 11, 24)
KEY = b"k" * 32

POLICY = """
systems:
  db:
    kind: sql
    connection: db
    collections:
      events:
        table: events
        primary_key: id
        columns: [id, email, created_at, legal_hold, restricted_at, restriction_reason, anonymized_at]
        legal_hold: [{column: legal_hold, equals: true}]
        lock: {at: restricted_at, reason: restriction_reason}
        anonymized_marker: anonymized_at
        rules:
          - {name: old_delete, start: created_at, action: delete, period: P30D, max_fraction: 1}
          - {name: old_lock, start: created_at, action: lock, period: P30D, max_fraction: 1}
          - name: old_anonymize
            start: created_at
            action: anonymize
            period: P30D
            max_fraction: 1
            mask: {email: {strategy: redact}}
          - name: old_hash
            start: created_at
            action: anonymize
            period: P30D
            max_fraction: 1
            mask: {email: {strategy: hmac}}
"""


def events_table(md: sa.MetaData, index: bool = True) -> sa.Table:
    t = sa.Table(
        "events", md,
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("email", sa.String(200)), sa.Column("created_at", sa.DateTime),
        sa.Column("legal_hold", sa.Boolean), sa.Column("restricted_at", sa.DateTime),
        sa.Column("restriction_reason", sa.String(200)),
        sa.Column("anonymized_at", sa.DateTime),
    )
    if index:
        sa.Index("ix_events_created_at", t.c.created_at)
    return t


def offline_store(url: str, *, mariadb: bool = False, index: bool = True) -> SqlStore:
    engine = sa.create_engine(url)  # never connected
    if mariadb:
        engine.dialect.is_mariadb = True
    store = SqlStore("db", parse_policy(POLICY, source="t.yaml"), engine)
    store._tables["events"] = events_table(sa.MetaData(), index)
    return store


# ---- the sizer -------------------------------------------------------------------------------------------
def test_first_batch_is_the_policy_batch_size_capped():
    assert BatchSizer(1000).size == 1000
    assert BatchSizer(10 * MAX_BATCH).size == MAX_BATCH


def test_batches_grow_at_most_8x_towards_the_time_target():
    sizer = BatchSizer(1000)
    sizer.took(1000, 0.001)  # far faster than BATCH_SECONDS: grows, but only 8x
    assert sizer.size == 8000
    sizer.took(8000, sql_walks.BATCH_SECONDS / 2)  # twice as fast as wanted: doubles
    assert sizer.size == 16000
    for _ in range(10):
        sizer.took(sizer.size, 0.001)
    assert sizer.size == MAX_BATCH  # never above the ceiling: every batch a bounded transaction


def test_batches_shrink_at_most_4x_and_not_below_the_floor():
    sizer = BatchSizer(1000)
    sizer.took(1000, 100.0)
    assert sizer.size == 250
    for _ in range(5):
        sizer.took(sizer.size, 100.0)
    assert sizer.size == sql_walks.MIN_BATCH
    small = BatchSizer(10)  # a policy batch below MIN_BATCH is its own floor
    small.took(10, 100.0)
    assert small.size == 10


def test_a_short_batch_says_nothing_about_the_rate():
    sizer = BatchSizer(1000)
    sizer.took(10, 100.0)  # the end of the walk
    assert sizer.size == 1000


# ---- the walk choice -------------------------------------------------------------------------------------
PG = "postgresql+psycopg2://u@127.0.0.1:1/x"
MY = "mysql+pymysql://u@127.0.0.1:1/x"


def test_walk_order_follows_an_index_on_the_start_column():
    store = offline_store("sqlite://")
    t = store.table("events")
    assert store.walk_order("events", "created_at") == [t.c.created_at, t.c.id]
    assert store.walk_order("events", None) == [t.c.id]
    bare = offline_store("sqlite://", index=False)
    assert bare.walk_order("events", "created_at") == [bare.table("events").c.id]


def test_postgresql_walks_blocks_when_one_statement_does_the_batch():
    store = offline_store(PG)
    assert sql_walks.by_block(store, "events", "delete", None)
    assert sql_walks.by_block(store, "events", "lock", None)
    assert sql_walks.by_block(store, "events", "anonymize", {"email": _mask("redact")})
    # keyed hash: Python reads rows
    assert not sql_walks.by_block(store, "events", "anonymize", {"email": _mask("hmac")})
    assert not sql_walks.by_order(store, "events", "delete")
    for url in ("sqlite://", MY):
        assert not sql_walks.by_block(offline_store(url), "events", "delete", None)


def test_mariadb_deletes_in_one_ordered_statement_but_mysql_and_updates_do_not():
    maria = offline_store(MY, mariadb=True)
    assert sql_walks.by_order(maria, "events", "delete")
    assert not sql_walks.by_order(maria, "events", "lock")
    assert not sql_walks.by_order(maria, "events", "anonymize")
    assert not sql_walks.by_order(offline_store(MY), "events", "delete")  # MySQL: no DELETE ... RETURNING
    assert not sql_walks.by_order(offline_store("sqlite://"), "events", "delete")


def test_deletes_that_take_something_along_never_use_a_one_statement_walk(monkeypatch):
    for store in (offline_store(PG), offline_store(MY, mariadb=True)):
        monkeypatch.setattr(store.acts, "takes_along", lambda name: True)
        assert not sql_walks.by_block(store, "events", "delete", None)
        assert not sql_walks.by_order(store, "events", "delete")


def test_ordered_limit_renders_after_where_and_before_returning():
    t = events_table(sa.MetaData())
    stmt = (t.delete().where(t.c.created_at < sa.bindparam("cut"))
            .ext(OrderedLimit([t.c.created_at, t.c.id], 500)).returning(t.c.created_at, t.c.id))
    text = " ".join(str(stmt.compile(dialect=mysql.dialect(is_mariadb=True))).split())
    assert text == ("DELETE FROM events WHERE events.created_at < %s ORDER BY events.created_at, events.id "
                    "LIMIT 500 RETURNING events.created_at, events.id")


def _mask(strategy: str):
    from include.retention.policy import Mask

    return Mask(strategy=strategy)


# ---- the walks on real databases -------------------------------------------------------------------------
class Recorder:
    """Intents and outcomes as the ledger would get them; checks an intent precedes each outcome."""

    def __init__(self):
        self.intents: list[tuple[str, int, str]] = []
        self.outcomes: list[tuple[str, int, str]] = []

    def intend(self, action, planned, pk_digest):
        self.intents.append((action, planned, pk_digest))
        return len(self.intents)

    def __call__(self, action, count, pk_digest, details, intent=None):
        assert intent == len(self.intents)  # settles the latest intent
        self.outcomes.append((action, count, pk_digest))


@pytest.fixture
def pg_url(fresh_database):
    import uuid

    return fresh_database("postgresql", f"rt_walk_{uuid.uuid4().hex[:8]}")


def seeded(url: str, n: int = 240) -> tuple[SqlStore, set[int]]:
    engine = sqlmod.make_engine(url)
    t = events_table(sa.MetaData())
    t.metadata.create_all(engine)
    rows, eligible = [], set()
    for i in range(n):
        old = i % 3 == 0  # interleaved: every third row past the period
        held = i % 21 == 0
        rows.append({"id": i * 7 + 1, "email": f"p{i}@example.org", "legal_hold": held,
                     "created_at": NOW - dt.timedelta(days=40 + i % 50 if old else i % 20)})
        if old and not held:
            eligible.add(i * 7 + 1)
    with engine.begin() as conn:
        conn.execute(t.insert(), rows)
    return SqlStore("db", parse_policy(POLICY, source="t.yaml"), engine, mask_key=KEY), eligible


@pytest.mark.parametrize("rule", ["old_delete", "old_lock", "old_anonymize", "old_hash"])
def test_every_walk_acts_on_exactly_the_eligible_rows_in_bounded_batches(db_url, rule):
    store, eligible = seeded(db_url)
    policy = store.policy
    _, _, r = policy.rule(f"db.events.{rule}")
    stage = r.stages[0]
    rec = Recorder()
    result = store.apply_stage("events", r, stage, NOW, 7, "test", rec)
    t = store.table("events")
    assert result.changed == len(eligible) == sum(c for _, c, _ in rec.outcomes)
    assert result.batches == len(rec.intents) == len(rec.outcomes) > 1
    assert all(planned <= sql_walks.MAX_BATCH for _, planned, _ in rec.intents)
    with store.engine.connect() as conn:
        if stage.action == "delete":
            left = set(conn.execute(sa.select(t.c.id)).scalars())
            assert not (left & eligible) and len(left) == 240 - len(eligible)
        else:
            marker = t.c.restricted_at if stage.action == "lock" else t.c.anonymized_at
            done = set(conn.execute(sa.select(t.c.id).where(marker.is_not(None))).scalars())
            assert done == eligible
    store.close()


@pytest.mark.parametrize("rule", ["old_delete", "old_lock", "old_anonymize"])
def test_one_batch_records_the_python_digest_of_its_keys(db_url, rule):
    store, eligible = seeded(db_url)
    _, _, r = store.policy.rule(f"db.events.{rule}")
    rec = Recorder()
    store.apply_stage("events", r, r.stages[0], NOW, 10_000, "test", rec)
    expected = store.pk_digest(sorted(eligible))
    assert rec.intents == [(r.stages[0].action, len(eligible), expected)]
    assert rec.outcomes == [(r.stages[0].action, len(eligible), expected)]
    store.close()


def test_sql_masks_are_the_ones_the_walk_choice_knows():
    assert STRATEGIES["redact"].in_sql and not STRATEGIES["hmac"].in_sql


@pytest.mark.parametrize("rule", ["old_delete", "old_lock", "old_anonymize"])
def test_postgresql_index_walk_in_one_statement_for_a_table_in_date_order(pg_url, rule, monkeypatch):
    db_url = pg_url  # PostgreSQL's walk: on PostgreSQL only (no skip on the other servers)
    store, eligible = seeded(db_url)
    # as pg_stats.correlation >= 0.9 says
    monkeypatch.setattr(sql_walks, "in_index_order", lambda store, t, order: True)
    calls = []
    real = sql_walks.IndexWalk.act
    monkeypatch.setattr(sql_walks.IndexWalk, "act", lambda *a, **k: calls.append(1) or real(*a, **k))
    _, _, r = store.policy.rule(f"db.events.{rule}")
    rec = Recorder()
    result = store.apply_stage("events", r, r.stages[0], NOW, 7, "test", rec)
    assert calls and result.changed == len(eligible) == sum(c for _, c, _ in rec.outcomes)
    assert result.batches == len(rec.intents) > 1
    store.close()
    # one batch: the database's digest is the Python digest of the eligible keys
    engine = sqlmod.make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE events"))
    engine.dispose()
    store, eligible = seeded(db_url)
    monkeypatch.setattr(sql_walks, "in_index_order", lambda store, t, order: True)
    one = Recorder()
    store.apply_stage("events", r, r.stages[0], NOW, 10_000, "test", one)
    assert one.intents == [(r.stages[0].action, len(eligible), store.pk_digest(sorted(eligible)))]
    store.close()


# keys whose code-point order differs from a natural-language collation's ("B" < "a" < "Ä" < "ß" < "é")
TEXT_KEYS = ["a", "B", "Z", "_x", "a b", "ab", "Äpfel", "éclair", "zz", "ß", "k-1", "K-2", "日本", "emoji-😀"]


@pytest.mark.parametrize("walk", ["blocks", "index"])
@pytest.mark.parametrize("rule", ["old_delete", "old_lock"])
def test_postgresql_text_keys_digest_in_the_database_equals_the_python_one(pg_url, rule, walk, monkeypatch):
    """Text keys on PostgreSQL: the database builds the digest's text (``COLLATE "C"``: code-point order, as
    Python's ``sorted``) instead of returning the keys; one batch's digest is the Python digest of its keys, and
    several batches act on exactly the eligible rows."""
    engine = sqlmod.make_engine(pg_url)
    md = sa.MetaData()
    # a natural-language collation on the key (the server default here is C.UTF-8, which orders as Python does)
    t = sa.Table("events", md, sa.Column("id", sa.String(40, collation="und-x-icu"), primary_key=True),
                 sa.Column("email", sa.String(200)), sa.Column("created_at", sa.DateTime),
                 sa.Column("legal_hold", sa.Boolean), sa.Column("restricted_at", sa.DateTime),
                 sa.Column("restriction_reason", sa.String(200)), sa.Column("anonymized_at", sa.DateTime))
    sa.Index("ix_events_created_at", t.c.created_at)
    md.create_all(engine)
    keys = [f"{k}{i}" for i in range(12) for k in TEXT_KEYS]
    eligible = {k for i, k in enumerate(keys) if i % 3 == 0 and i % 21 != 0}
    with engine.begin() as conn:
        conn.execute(t.insert(), [{"id": k, "email": "x", "legal_hold": i % 21 == 0,
                                   "created_at": NOW - dt.timedelta(days=40 + i % 50 if i % 3 == 0 else i % 20)}
                                  for i, k in enumerate(keys)])
    store = SqlStore("db", parse_policy(POLICY, source="t.yaml"), engine, mask_key=KEY)
    assert store.digest_in_db(store.table("events").c.id)
    monkeypatch.setattr(sql_walks, "in_index_order", lambda store, tab, order: walk == "index")
    for module in (sqlmod, sql_walks):
        monkeypatch.setattr(module, "key_of", lambda r: pytest.fail("a key came back to Python"))
    _, _, r = store.policy.rule(f"db.events.{rule}")
    one = Recorder()
    store.apply_stage("events", r, r.stages[0], NOW, 10_000, "test", one)
    assert one.intents == [(r.stages[0].action, len(eligible), store.pk_digest(sorted(eligible)))]
    with engine.connect() as conn:
        if rule == "old_delete":
            assert set(conn.execute(sa.select(t.c.id)).scalars()) == set(keys) - eligible
        else:
            assert set(conn.execute(sa.select(t.c.id).where(t.c.restricted_at.is_not(None))).scalars()) == eligible
    store.close()


def test_text_keys_that_postgresql_cannot_order_like_python_come_back():
    store = offline_store("postgresql+psycopg2://u@h/db")
    store._server_utf8 = True
    assert store.digest_in_db(sa.Column("k", sa.Text())) and store.digest_in_db(sa.Column("k", sa.BigInteger()))
    assert not store.digest_in_db(sa.Column("k", sa.CHAR(8)))  # padding: Python sees it, ::text drops it
    assert not store.digest_in_db(sa.Column("k", sa.Enum("b", "a", name="e")))  # ordered by declaration
    store._server_utf8 = False
    assert not store.digest_in_db(sa.Column("k", sa.Text()))
    assert not offline_store("sqlite://").digest_in_db(sa.Column("k", sa.BigInteger()))


# ---- the ledger: a batch's outcome shares the next batch's intent's transaction ----------------------------
def _ledger_recorder(tmp_path, rule: str):
    from include.retention.ledger import Ledger, RunRef
    from include.retention.sweep import LedgerRecorder

    ledger = Ledger(sqlmod.make_engine(f"sqlite:///{tmp_path / 'ledger.db'}"), KEY)
    ledger.ensure_schema()
    return ledger, LedgerRecorder(ledger, {"run": RunRef("t", "1"), "rule_id": f"db.events.{rule}", "system": "db",
                                           "collection": "db.events"})


@pytest.mark.parametrize("rule", ["old_delete", "old_lock", "old_hash"])
def test_a_stage_writes_the_ledger_once_per_batch_plus_once(db_url, rule, tmp_path, monkeypatch):
    """n batches: n + 1 ledger write transactions (each outcome with the next intent), the entries as before:
    intent, outcome, intent, outcome ... each outcome settling the intent right before it."""
    from include.retention.ledger import Ledger

    store, eligible = seeded(db_url)
    ledger, rec = _ledger_recorder(tmp_path, rule)
    writes = []
    real = Ledger._writing
    monkeypatch.setattr(Ledger, "_writing", lambda self: writes.append(1) or real(self))
    _, _, r = store.policy.rule(f"db.events.{rule}")
    result = store.apply_stage("events", r, r.stages[0], NOW, 7, "test", rec)
    rows = list(ledger.rows())
    assert result.batches > 2 and len(writes) == result.batches + 1
    assert [row["outcome"] for row in rows] == ["intent", "done"] * result.batches
    assert all(rows[i + 1]["ref_seq"] == rows[i]["seq"] for i in range(0, len(rows), 2))
    assert sum(row["count"] for row in rows if row["outcome"] == "done") == result.changed == len(eligible)
    verified = ledger.verify(record=False)
    assert verified.ok and verified.unreconciled_count == 0
    store.close()


@pytest.mark.parametrize("rule", ["old_delete", "old_lock"])
def test_a_failure_after_a_committed_batch_still_records_its_outcome(db_url, rule, tmp_path):
    """The store committed batch 1, then its next statement fails: batch 1's outcome (waiting for batch 2's
    intent) is written before the error goes on, with the real count; nothing is left open."""
    store, eligible = seeded(db_url)
    ledger, rec = _ledger_recorder(tmp_path, rule)
    armed = []

    @sa.event.listens_for(store.engine, "commit")
    def _committed(conn):
        if ledger.open_intents():  # the commit of a batch whose intent is written
            armed.append(1)

    @sa.event.listens_for(store.engine, "before_cursor_execute")
    def _fail(conn, cursor, statement, parameters, context, executemany):
        if armed:
            raise RuntimeError("the store went away")

    _, _, r = store.policy.rule(f"db.events.{rule}")
    with pytest.raises(RuntimeError, match="went away"):
        store.apply_stage("events", r, r.stages[0], NOW, 7, "test", rec)
    assert armed
    sa.event.remove(store.engine, "before_cursor_execute", _fail)
    t = store.table("events")
    with store.engine.connect() as conn:
        if rule == "old_delete":
            changed = len(eligible) - conn.execute(
                sa.select(sa.func.count()).where(t.c.id.in_(sorted(eligible)))).scalar()
        else:
            changed = conn.execute(sa.select(sa.func.count()).where(t.c.restricted_at.is_not(None))).scalar()
    rows = list(ledger.rows())
    assert [row["outcome"] for row in rows] == ["intent", "done"]
    assert rows[1]["ref_seq"] == rows[0]["seq"] and rows[1]["count"] == changed > 0
    verified = ledger.verify(record=False)
    assert verified.ok and verified.unreconciled_count == 0
    store.close()


def test_a_table_is_reflected_with_what_the_store_uses_and_nothing_it_refers_to(db_url):
    """Columns and types, primary key, indexes and unique constraints (the walk's order follows an index leading with
    the start column, or a unique constraint); foreign keys are not read, so a table they refer to (outside the
    system) is not reflected along."""
    engine = sqlmod.make_engine(db_url)
    md = sa.MetaData()
    sa.Table("owners", md, sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False))
    t = events_table(md, index=False)
    t.append_column(sa.Column("owner_id", sa.BigInteger, sa.ForeignKey("owners.id")))
    t.append_constraint(sa.UniqueConstraint("created_at", "id", name="uq_events_created"))
    md.create_all(engine)
    store = SqlStore("db", parse_policy(POLICY, source="t.yaml"), engine, mask_key=KEY)
    table = store.table("events")
    assert set(table.metadata.tables) == {"events"}
    assert [c.name for c in table.primary_key] == ["id"] and table.c.id.primary_key
    assert isinstance(table.c.created_at.type, sa.DateTime) and isinstance(table.c.email.type, sa.String)
    assert [c.name for c in store.walk_order("events", "created_at")] == ["created_at", "id"]  # the unique one
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE INDEX ix_events_email ON events (email, created_at)"))
    store = SqlStore("db", parse_policy(POLICY, source="t.yaml"), engine, mask_key=KEY)
    indexes = {ix.name: [c.name for c in ix.columns] for ix in store.table("events").indexes}
    assert indexes["ix_events_email"] == ["email", "created_at"]
    assert [c.name for c in store.walk_order("events", "email")] == ["email", "id"]
    assert [c.name for c in store.walk_order("events", "legal_hold")] == ["id"]
    engine.dispose()
