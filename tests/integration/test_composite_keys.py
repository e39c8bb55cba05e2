"""Composite primary keys (issue 15 item 5) on real PostgreSQL, MariaDB (default collation, case-insensitive)
and SQLite: list memberships keyed by ``(subscriber_id, list_id)``, campaign events by ``(list_id, seq)``.

Exact keys acted on (text keys that differ only in case or trailing space are different rows where the
database keeps them apart), rows exactly at the boundary kept, walks that cross batch boundaries inside one
subscriber, cascades onto composite-key children, lock / anonymize (a keyed hash computed in Python and written
back by key) / delete, subject erasure, and ledger digests of the exact tuples.
"""

from __future__ import annotations

import datetime as dt
import textwrap

import pytest
import sqlalchemy as sa

from include.retention.connections import make_engine
from include.retention.ledger import Ledger, RunRef
from include.retention.policy import parse_policy
from include.retention.stores.base import Subject
from include.retention.stores.sql import SqlStore
from include.retention.sweep import run_rule
from tests.conftest import KEY, fresh_tables

pytestmark = pytest.mark.integration

NOW = dt.datetime(2026, 11, 24, 12, 0, 0)
EDGE = NOW - dt.timedelta(days=730)  # P24M back from NOW (2024-11-24 12:00, not a leap-day span)

POLICY = textwrap.dedent("""\
    version: 1
    defaults: {max_fraction: 1.0, batch_size: 3}
    systems:
      mailing:
        kind: sql
        connection: mailing_db
        collections:
          subscribers:
            table: subscribers
            primary_key: id
            columns: [id, email, created_at]
            identities: {email: email}
            rules: [{name: old, start: created_at, action: delete, period: P10Y}]
          memberships:
            table: memberships
            primary_key: [subscriber_id, list_id]
            columns: [subscriber_id, list_id, joined_at, email, restricted_at, restriction_reason]
            identities: {email: email}
            lock: {at: restricted_at, reason: restriction_reason}
            references: [{to: mailing.subscribers, column: subscriber_id, on_delete: delete}]
            rules:
              - name: stale  # 'suppress' makes the delete lock its rows first: the keyset walk on every database
                start: joined_at
                suppress: [email]
                stages:
                  - {action: lock, after: P12M}
                  - {action: delete, after: P24M}
          events:
            table: events
            primary_key: [list_id, seq]
            columns: [list_id, seq, at, ip, anonymized_at]
            anonymized_marker: anonymized_at
            rules:
              - name: events
                start: at
                stages:
                  - {action: anonymize, after: P30D, mask: {ip: {strategy: hmac}}}
                  - {action: delete, after: P24M}
    """)

md = sa.MetaData()
subscribers = sa.Table("subscribers", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                       sa.Column("email", sa.String(100)), sa.Column("created_at", sa.DateTime))
memberships = sa.Table(
    "memberships", md,
    sa.Column("subscriber_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("list_id", sa.String(20), primary_key=True),
    sa.Column("joined_at", sa.DateTime, index=True), sa.Column("email", sa.String(100)),
    sa.Column("restricted_at", sa.DateTime), sa.Column("restriction_reason", sa.String(200)))
events = sa.Table("events", md, sa.Column("list_id", sa.String(20), primary_key=True),
                  sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
                  sa.Column("at", sa.DateTime), sa.Column("ip", sa.String(64)), sa.Column("anonymized_at", sa.DateTime))

OLD, LOCKABLE, RECENT = EDGE - dt.timedelta(days=1), NOW - dt.timedelta(days=400), NOW - dt.timedelta(days=2)
# (subscriber_id, list_id, joined_at): one subscriber's memberships straddle several batches of 3; list ids
# that differ only in case sit under different subscribers (MariaDB's key would refuse them side by side)
MEMBERSHIPS = [
    (1, "news", OLD), (1, "offers", OLD), (1, "zeta", OLD), (1, "alpha", OLD), (1, "beta", RECENT),
    (2, "NEWS", OLD), (2, "news2", EDGE), (2, "offers", EDGE - dt.timedelta(seconds=1)),
    (3, "News", LOCKABLE), (3, "b", OLD), (4, "a", EDGE + dt.timedelta(seconds=1)), (4, "news", OLD),
    (5, "x", OLD),
]
DELETED = {(s, lst) for s, lst, at in MEMBERSHIPS if at < EDGE}
LOCKED = {(s, lst) for s, lst, at in MEMBERSHIPS if EDGE <= at < NOW - dt.timedelta(days=365)}


def _at(seq: int) -> dt.datetime:
    return [OLD, EDGE, EDGE - dt.timedelta(seconds=1), NOW - dt.timedelta(days=31), RECENT][seq % 5]


EVENTS = [(lst, seq, _at(seq)) for lst in ("news", "NEWS2", "offers") for seq in range(1, 8)]


@pytest.fixture
def env(db_url, tmp_path):
    engine = fresh_tables(db_url, md)
    with engine.begin() as conn:
        conn.execute(subscribers.insert(), [{"id": i, "email": f"s{i}@example.org", "created_at": NOW}
                                            for i in range(1, 6)])
        conn.execute(memberships.insert(), [{"subscriber_id": s, "list_id": lst, "joined_at": at,
                                             "email": f"s{s}@example.org"} for s, lst, at in MEMBERSHIPS])
        conn.execute(events.insert(), [{"list_id": lst, "seq": seq, "at": at, "ip": f"192.0.2.{seq}"}
                                       for lst, seq, at in EVENTS])
    policy = parse_policy(POLICY, source="composite.yaml")
    store = SqlStore("mailing", policy, engine, mask_key=KEY)
    ledger = Ledger(make_engine(f"sqlite:///{tmp_path / 'ledger.db'}"), KEY)
    yield policy, store, ledger, engine
    store.close()
    ledger.engine.dispose()


def keys(engine, table, *where) -> set[tuple]:
    cols = [c for c in table.primary_key.columns]
    with engine.connect() as conn:
        return {tuple(r) for r in conn.execute(sa.select(*cols).where(*where))}


def test_walk_on_a_composite_key_acts_on_exactly_the_expired_memberships(env):
    policy, store, ledger, engine = env
    order = [c.name for c in store.walk_order("memberships", "joined_at")]
    assert order == ["joined_at", "subscriber_id", "list_id"]  # the index on joined_at leads the walk
    counts = run_rule(policy, "mailing.memberships.stale", store, ledger, RunRef("t", "1"), now=NOW)
    assert counts["deleted"] == len(DELETED) and counts["locked"] == len(LOCKED)
    everything = {(s, lst) for s, lst, _ in MEMBERSHIPS}
    assert keys(engine, memberships) == everything - DELETED
    assert keys(engine, memberships, memberships.c.restricted_at.is_not(None)) == LOCKED
    # rows exactly at the edge (2, news2) and one second after it (4, a) stay
    assert {(2, "news2"), (4, "a")} <= keys(engine, memberships)
    rows = [r for r in ledger.rows() if r["action"] == "delete" and r["outcome"] == "done"]
    assert sum(r["count"] for r in rows) == len(DELETED) and len(rows) >= 2  # a first batch of 3, then larger ones
    assert ledger.verify().ok
    again = run_rule(policy, "mailing.memberships.stale", store, ledger, RunRef("t", "2"), now=NOW)
    assert again["deleted"] == 0 and again["locked"] == 0


def test_composite_key_without_an_index_walks_the_key_and_masks_by_key(env):
    policy, store, ledger, engine = env
    assert [c.name for c in store.walk_order("events", "at")] == ["list_id", "seq"]
    counts = run_rule(policy, "mailing.events.events", store, ledger, RunRef("t", "1"), now=NOW)
    gone = {(lst, seq) for lst, seq, at in EVENTS if at < EDGE}
    masked = {(lst, seq) for lst, seq, at in EVENTS if EDGE <= at < NOW - dt.timedelta(days=30)}
    assert counts["deleted"] == len(gone) and counts["anonymized"] == len(masked)
    assert keys(engine, events) == {(lst, seq) for lst, seq, _ in EVENTS} - gone
    with engine.connect() as conn:
        rows = {(r.list_id, r.seq): r for r in conn.execute(sa.select(events))}
    for key, row in rows.items():
        if key in masked:  # each row got the keyed hash of its own address, by its own key
            assert row.anonymized_at is not None and row.ip != f"192.0.2.{key[1]}" and len(row.ip) > 12
        else:
            assert row.anonymized_at is None and row.ip == f"192.0.2.{key[1]}"
    assert len({rows[k].ip for k in masked}) == len({k[1] for k in masked})  # same address, same hash


def test_ledger_digest_is_over_the_exact_tuples(env, tmp_path):
    policy, store, _, engine = env
    ledger = Ledger(make_engine(f"sqlite:///{tmp_path / 'one-batch.db'}"), KEY)
    one_batch = parse_policy(POLICY.replace("batch_size: 3", "batch_size: 1000"), source="composite.yaml")
    store = SqlStore("mailing", one_batch, engine, mask_key=KEY)
    run_rule(one_batch, "mailing.memberships.stale", store, ledger, RunRef("t", "1"), now=NOW)
    (entry,) = [r for r in ledger.rows() if r["action"] == "delete" and r["outcome"] == "done"]
    assert entry["pk_digest"] == store.pk_digest(sorted(DELETED))
    assert store.pk_digest([(1, "a,b")]) != store.pk_digest([(1, "a"), ("b",)])  # unambiguous tuples
    ledger.engine.dispose()
    store.close()


def test_cascade_onto_composite_key_children_and_erasure_by_identity(env):
    policy, store, _, engine = env
    subject = Subject("r1", {"email": "s1@example.org"})
    claims = store.find("memberships", [subject])
    assert set(claims) == {(1, lst) for lst in ("news", "offers", "zeta", "alpha", "beta")}
    # the parent's erasure takes its memberships along by their composite keys, nobody else's
    parent = store.find("subscribers", [subject])
    outcome = store.erase("subscribers", parent, [subject], dry_run=False)
    assert outcome.totals.get("mailing.memberships") == 5
    assert keys(engine, subscribers) == {(2,), (3,), (4,), (5,)}
    assert keys(engine, memberships) == {(s, lst) for s, lst, _ in MEMBERSHIPS if s != 1}
    # erasure on the composite-key collection itself: exactly subscriber 3's rows
    s3 = Subject("r2", {"email": "s3@example.org"})
    out = store.erase("memberships", store.find("memberships", [s3]), [s3], dry_run=False)
    assert out.per_request["r2"]["mailing.memberships"] == {"deleted": 2}
    assert keys(engine, memberships) == {(s, lst) for s, lst, _ in MEMBERSHIPS if s not in (1, 3)}
