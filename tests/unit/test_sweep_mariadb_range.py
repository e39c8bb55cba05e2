"""MariaDB's range walk (``sql_walks.RangeWalk``): per batch one locking read returns the count, the digest text
(``GROUP_CONCAT`` in the server) and the bound, then one ``DELETE``/``UPDATE`` acts on exactly that range.

On a real MariaDB: exactly the eligible rows in several bounded batches, held rows kept, the digest the server
builds equal to the Python ``pk_digest`` of the keys, both walks (the primary key where the optimizer would scan the
table, ``(start, pk)`` where it would use the start column's index), a row inserted into a batch's range meanwhile
waits for the batch and is not counted, and a count the act does not confirm is refused with nothing recorded.
"""

from __future__ import annotations

import datetime as dt
import uuid

import pymysql
import pytest
import sqlalchemy as sa

from include.retention.errors import RetentionError
from include.retention.policy import parse_policy
from include.retention.stores import sql as sqlmod
from include.retention.stores import sql_walks
from include.retention.stores.sql import SqlStore
from tests.unit.test_sweep_batching import KEY, NOW, POLICY, Recorder, events_table

MY_ADMIN = "mysql+pymysql://root@127.0.0.1:3306/mysql"


@pytest.fixture
def my_url(fresh_database):
    name = f"rt_range_{uuid.uuid4().hex[:8]}"
    yield fresh_database("mariadb", name)
    admin = sa.create_engine(MY_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
    admin.dispose()


def seeded(url: str, n: int = 240, expired_every: int = 3) -> tuple[SqlStore, set[int], set[int]]:
    """Rows ``i*7+1``: every ``expired_every``-th past the period, every 21st of all held; returns the store, the
    eligible keys and the held expired keys."""
    engine = sqlmod.make_engine(url)
    t = events_table(sa.MetaData())
    t.metadata.create_all(engine)
    rows, eligible, held = [], set(), set()
    for i in range(n):
        old = i % expired_every == 0
        hold = i % 21 == 0
        rows.append({"id": i * 7 + 1, "email": f"p{i}@example.org", "legal_hold": hold,
                     "created_at": NOW - dt.timedelta(days=40 + i % 50 if old else i % 20)})
        if old:
            (held if hold else eligible).add(i * 7 + 1)
    with engine.begin() as conn:
        conn.execute(t.insert(), rows)
        conn.execute(sa.text("ANALYZE TABLE events"))
    return SqlStore("db", parse_policy(POLICY, source="t.yaml"), engine, mask_key=KEY), eligible, held


def _spy(store, monkeypatch) -> list[tuple[int, tuple]]:
    """Record each ``RangeWalk.pick`` call's (size, walk columns)."""
    calls = []
    real = sql_walks.RangeWalk.pick

    def spy(walk, conn, where, size):
        calls.append((size, tuple(c.name for c in walk.order)))
        return real(walk, conn, where, size)

    monkeypatch.setattr(sql_walks.RangeWalk, "pick", spy)
    return calls


def _done(store, action) -> set[int]:
    t = store.table("events")
    with store.engine.connect() as conn:
        if action == "delete":
            return set(conn.execute(sa.select(t.c.id)).scalars())
        marker = t.c.restricted_at if action == "lock" else t.c.anonymized_at
        return set(conn.execute(sa.select(t.c.id).where(marker.is_not(None))).scalars())


@pytest.mark.parametrize("walk", ["pk", "start"])
@pytest.mark.parametrize("rule", ["old_delete", "old_lock", "old_anonymize"])
def test_range_walk_acts_on_exactly_the_eligible_rows_in_bounded_batches(my_url, rule, walk, monkeypatch):
    store, eligible, held = seeded(my_url)
    if walk == "start":  # as the optimizer says for a selective predicate (see the test below)
        monkeypatch.setattr(sql_walks, "range_order", lambda store, t, order, where: order)
    calls = _spy(store, monkeypatch)
    monkeypatch.setattr(sql_walks.BatchSizer, "took", lambda self, rows, seconds: None)  # 7 rows a batch throughout
    for module in (sqlmod, sql_walks):
        monkeypatch.setattr(module, "key_of", lambda r: pytest.fail("a key came back to Python"))
    _, _, r = store.policy.rule(f"db.events.{rule}")
    action = r.stages[0].action
    rec = Recorder()
    result = store.apply_stage("events", r, r.stages[0], NOW, 7, "test", rec)
    assert calls and all(cols == (("created_at", "id") if walk == "start" else ("id",)) for _, cols in calls)
    assert result.changed == len(eligible) == sum(c for _, c, _ in rec.outcomes)
    assert result.batches == len(rec.intents) == len(rec.outcomes) == -(-len(eligible) // 7)
    assert [i[:2] for i in rec.intents] == [o[:2] for o in rec.outcomes]
    assert all(0 < planned <= size == 7 for (_, planned, _), (size, _) in zip(rec.intents, calls, strict=False))
    done = _done(store, action)
    if action == "delete":
        assert not (done & eligible) and held <= done and len(done) == 240 - len(eligible)
    else:
        assert done == eligible and not (done & held)
    # the batches' digests, in walk order, are the Python digests of consecutive runs of the eligible keys
    store.close()
    if walk == "pk":
        keys = sorted(eligible)
    else:
        created = {i * 7 + 1: NOW - dt.timedelta(days=40 + i % 50) for i in range(240) if i * 7 + 1 in eligible}
        keys = sorted(eligible, key=lambda k: (created[k], k))
    at = 0
    for _, n, digest in rec.outcomes:
        assert digest == store.pk_digest(sorted(keys[at:at + n]))
        at += n
    assert at == len(keys)


@pytest.mark.parametrize("rule", ["old_delete", "old_lock", "old_anonymize"])
def test_one_batch_digest_built_in_the_server_equals_the_python_one(my_url, rule, monkeypatch):
    store, eligible, _ = seeded(my_url)
    calls = _spy(store, monkeypatch)
    _, _, r = store.policy.rule(f"db.events.{rule}")
    rec = Recorder()
    store.apply_stage("events", r, r.stages[0], NOW, 10_000, "test", rec)
    expected = store.pk_digest(sorted(eligible))
    assert len(calls) == 1
    assert rec.intents == [(r.stages[0].action, len(eligible), expected)]
    assert rec.outcomes == [(r.stages[0].action, len(eligible), expected)]
    store.close()


def test_walk_follows_the_optimizer_primary_key_for_many_rows_start_index_for_few(my_url, monkeypatch):
    store, _, _ = seeded(my_url, n=240, expired_every=3)  # a third expired: MariaDB scans the table
    _, _, r = store.policy.rule("db.events.old_delete")
    t = store.table("events")
    order = store.walk_order("events", "created_at")
    where = store.eligible("events", r, r.stages[0], NOW, t)
    assert [c.name for c in sql_walks.range_order(store, t, order, where)] == ["id"]
    store.close()
    engine = sqlmod.make_engine(my_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE events"))
    engine.dispose()
    store, eligible, _ = seeded(my_url, n=4000, expired_every=400)  # 10 of 4,000 expired: the index range
    t = store.table("events")
    order = store.walk_order("events", "created_at")
    where = store.eligible("events", r, r.stages[0], NOW, t)
    assert [c.name for c in sql_walks.range_order(store, t, order, where)] == ["created_at", "id"]
    calls = _spy(store, monkeypatch)
    rec = Recorder()
    assert store.apply_stage("events", r, r.stages[0], NOW, 4, "test", rec).changed == len(eligible) > 4
    assert calls and all(cols == ("created_at", "id") for _, cols in calls)
    assert not (_done(store, "delete") & eligible)
    store.close()


def _other_connection(url: str):
    u = sa.engine.make_url(url)
    conn = pymysql.connect(host=u.host, port=u.port or 3306, user=u.username, database=u.database, autocommit=False)
    conn.cursor().execute("SET SESSION innodb_lock_wait_timeout = 1")
    return conn


@pytest.mark.parametrize("rule", ["old_delete", "old_lock"])
def test_a_row_inserted_into_a_batch_range_waits_and_a_hold_cannot_be_overtaken(my_url, rule, monkeypatch):
    """Between a batch's locking read and its act another transaction can neither insert an eligible row into the
    range nor put a picked row on hold: both wait (here: time out); the batch acts on exactly what it counted."""
    store, eligible, _ = seeded(my_url)
    real = sql_walks.RangeWalk.pick
    tried = []

    def pick_then_interfere(walk, conn, where, size):
        n, bound, digest = real(walk, conn, where, size)
        if n and not tried:
            other = _other_connection(my_url)
            try:
                cur = other.cursor()
                for stmt in (  # an eligible row in the gap before the first picked key, a hold on it
                        f"INSERT INTO events (id, email, created_at, legal_hold) VALUES (3, 'new', "
                        f"'{(NOW - dt.timedelta(days=60)):%Y-%m-%d}', 0)",
                        "UPDATE events SET legal_hold = 1 WHERE id = 1 + 7 * 3"):
                    with pytest.raises(pymysql.err.OperationalError) as err:
                        cur.execute(stmt)
                    assert err.value.args[0] == 1205  # lock wait timeout
                    tried.append(stmt)
            finally:
                other.rollback()
                other.close()
        return n, bound, digest

    monkeypatch.setattr(sql_walks.RangeWalk, "pick", pick_then_interfere)
    _, _, r = store.policy.rule(f"db.events.{rule}")
    rec = Recorder()
    result = store.apply_stage("events", r, r.stages[0], NOW, 5, "test", rec)
    assert len(tried) == 2
    assert result.changed == len(eligible) == sum(c for _, c, _ in rec.outcomes)
    if rule == "old_delete":  # neither the inserted row (id 3) nor anything else beyond the eligible rows went
        left = _done(store, "delete")
        assert not (left & eligible) and len(left) == 240 - len(eligible) and 3 not in left
    else:
        assert _done(store, "lock") == eligible
    store.close()


def test_a_count_the_act_does_not_confirm_is_refused_and_nothing_recorded(my_url, monkeypatch):
    store, eligible, _ = seeded(my_url)
    real = sql_walks.RangeWalk.pick
    monkeypatch.setattr(sql_walks.RangeWalk, "pick", lambda *a: (lambda n, b, d: (n - 1, b, d))(*real(*a)))
    _, _, r = store.policy.rule("db.events.old_delete")
    rec = Recorder()
    with pytest.raises(RetentionError, match="rolled back, nothing recorded"):
        store.apply_stage("events", r, r.stages[0], NOW, 10_000, "test", rec)
    assert rec.intents == [] and rec.outcomes == []
    assert eligible <= _done(store, "delete")  # the batch rolled back: every row still there
    store.close()


def test_range_walk_only_for_mariadb_integer_keys_and_one_statement_batches(monkeypatch):
    from tests.unit.test_sweep_batching import MY, _mask, offline_store

    maria = offline_store(MY, mariadb=True)
    assert sql_walks.by_range(maria, "events", "delete", None) and sql_walks.by_range(maria, "events", "lock", None)
    assert sql_walks.by_range(maria, "events", "anonymize", {"email": _mask("redact")})
    assert not sql_walks.by_range(maria, "events", "anonymize", {"email": _mask("hmac")})  # computed in Python
    assert not sql_walks.by_range(offline_store(MY), "events", "delete", None)  # MySQL: not measured, not tested
    assert not sql_walks.by_range(offline_store("sqlite://"), "events", "delete", None)
    text_key = offline_store(MY, mariadb=True)
    text_key._tables["events"] = sa.Table("events", sa.MetaData(), sa.Column("id", sa.String(40), primary_key=True),
                                          *(sa.Column(c) for c in ("email", "created_at", "legal_hold",
                                                                   "restricted_at", "restriction_reason",
                                                                   "anonymized_at")))
    assert not sql_walks.by_range(text_key, "events", "delete", None)  # collation order is not sorted() order
    monkeypatch.setattr(maria.acts, "takes_along", lambda name: True)
    assert not sql_walks.by_range(maria, "events", "delete", None) and sql_walks.by_range(maria, "events", "lock", None)


def test_a_truncated_key_list_is_refused_before_anything_is_acted_on(my_url):
    """``GROUP_CONCAT`` cuts its text at ``group_concat_max_len`` (with only a warning): a batch whose text lacks keys
    is refused, nothing acted on or recorded. (Here the session limit is forced low behind the store's back.)"""
    store, eligible, _ = seeded(my_url)
    store.engine.dispose()

    @sa.event.listens_for(store.engine, "connect")
    def _small(dbapi_conn, record):
        dbapi_conn.cursor().execute("SET SESSION group_concat_max_len = 40")
        record.info["retention_group_concat_max_len"] = 1 << 40  # the store believes it has set room

    _, _, r = store.policy.rule("db.events.old_delete")
    rec = Recorder()
    with pytest.raises(RetentionError, match="truncated"):
        store.apply_stage("events", r, r.stages[0], NOW, 10_000, "test", rec)
    assert rec.intents == [] and eligible <= _done(store, "delete")
    store.close()


@pytest.mark.parametrize("keys", ["zerofill", "negative"])
def test_the_digest_text_is_python_s_for_keys_the_server_prints_otherwise_or_orders_as_text(my_url, keys):
    """``ZEROFILL`` keys print as ``000022`` in ``GROUP_CONCAT`` (Python's ``str`` of the key is ``22``) and negative
    keys sort before positive ones as numbers, not as text: the recorded digest is still ``pk_digest`` of the keys,
    in one batch and over several."""
    engine = sqlmod.make_engine(my_url)
    key_type = "INT(6) UNSIGNED ZEROFILL" if keys == "zerofill" else "BIGINT"
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE events (id {key_type} PRIMARY KEY, email VARCHAR(200), "
                             "created_at DATETIME, legal_hold BOOL, restricted_at DATETIME, "
                             "restriction_reason VARCHAR(200), anonymized_at DATETIME, "
                             "KEY ix_events_created_at (created_at))"))
        ids = [i * 7 + 1 if keys == "zerofill" else i * 7 - 800 for i in range(240)]
        conn.execute(sa.text("INSERT INTO events (id, email, created_at, legal_hold) VALUES (:id, 'x', :c, :h)"),
                     [{"id": k, "c": NOW - dt.timedelta(days=40 if i % 3 == 0 else 1), "h": i % 21 == 0}
                      for i, k in enumerate(ids)])
    eligible = sorted(k for i, k in enumerate(ids) if i % 3 == 0 and i % 21 != 0)
    store = SqlStore("db", parse_policy(POLICY, source="t.yaml"), engine, mask_key=KEY)
    _, _, r = store.policy.rule("db.events.old_lock")
    one = Recorder()
    store.apply_stage("events", r, r.stages[0], NOW, 10_000, "test", one)
    assert one.intents == [("lock", len(eligible), store.pk_digest(eligible))]
    _, _, r = store.policy.rule("db.events.old_delete")
    several = Recorder()
    store.apply_stage("events", r, r.stages[0], NOW, 7, "test", several)
    at = 0
    for _, n, digest in several.outcomes:
        assert digest == store.pk_digest(eligible[at:at + n])
        at += n
    assert at == len(eligible) and len(several.outcomes) > 1
    with engine.connect() as conn:
        assert sorted(conn.execute(sa.text("SELECT id FROM events")).scalars()) == sorted(set(ids) - set(eligible))
    store.close()


def test_a_key_list_cut_inside_its_last_key_is_refused(my_url):
    """``GROUP_CONCAT`` may cut the text inside its last key, leaving as many separators as a whole text has
    (``1\\n2\\n300`` cut to ``1\\n2\\n3``): refused like any truncated text, nothing acted on or recorded."""
    engine = sqlmod.make_engine(my_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE events (id BIGINT PRIMARY KEY, email VARCHAR(200), created_at DATETIME, "
                             "legal_hold BOOL, restricted_at DATETIME, restriction_reason VARCHAR(200), "
                             "anonymized_at DATETIME, KEY ix_events_created_at (created_at))"))
        conn.execute(sa.text("INSERT INTO events (id, email, created_at, legal_hold) VALUES (:id, 'x', :c, 0)"),
                     [{"id": k, "c": NOW - dt.timedelta(days=40)} for k in (1, 2, 300)])
    engine.dispose()

    @sa.event.listens_for(engine, "connect")
    def _small(dbapi_conn, record):
        dbapi_conn.cursor().execute("SET SESSION group_concat_max_len = 5")  # '1\n2\n300' -> '1\n2\n3'
        record.info["retention_group_concat_max_len"] = 1 << 40  # the store believes it has set room

    store = SqlStore("db", parse_policy(POLICY, source="t.yaml"), engine, mask_key=KEY)
    _, _, r = store.policy.rule("db.events.old_delete")
    rec = Recorder()
    with pytest.raises(RetentionError, match="truncated"):
        store.apply_stage("events", r, r.stages[0], NOW, 10_000, "test", rec)
    assert rec.intents == [] and rec.outcomes == []
    with engine.connect() as conn:
        assert sorted(conn.execute(sa.text("SELECT id FROM events")).scalars()) == [1, 2, 300]
    store.close()
