"""The ``orphaned`` start event on real PostgreSQL, MariaDB (default collation) and SQLite: the marker is
stamped on unreferenced rows and cleared on referenced ones, the period counts from the stamp, a row exactly
a period after its stamp stays, a legal hold wins, and a row that gains a reference between plan and act is
not deleted (the NOT EXISTS is in the acting statement). Validation names file, path and problem."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from include.retention.errors import PolicyError
from include.retention.ledger import Ledger, RunRef, entries
from include.retention.policy import parse_policy
from include.retention.stores.sql import SqlStore, make_engine
from include.retention.sweep import LedgerRecorder, run_rule
from tests.conftest import KEY
from tests.policy_text import crm_policy

pytestmark = pytest.mark.integration

NOW = dt.datetime(2026, 11, 24, 12, 0, 0, tzinfo=dt.UTC)
EDGE = dt.datetime(2026, 5, 24, 12, 0, 0)  # NOW - P6M, naive UTC
OLD, NEW = EDGE - dt.timedelta(seconds=1), EDGE + dt.timedelta(days=1)

POLICY = crm_policy("""\
      people:
        table: o_people
        primary_key: id
        columns: [id, name, orphaned_since, legal_hold]
        legal_hold: [{column: legal_hold, equals: true}]
        rules:
          - {name: orphaned, start: {orphaned: orphaned_since}, action: delete, period: P6M}
      orders:
        table: o_orders
        primary_key: id
        columns: [id, person_id]
        references: [{to: crm.people, column: person_id, on_delete: delete}]
      notes:
        table: o_notes
        primary_key: id
        columns: [id, author]
        references: [{to: crm.people, column: author, on_delete: nullify}]
""", defaults="{max_fraction: 1.0, batch_size: 2}")

md = sa.MetaData()
people = sa.Table("o_people", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                  sa.Column("name", sa.String(50)), sa.Column("orphaned_since", sa.DateTime),
                  sa.Column("legal_hold", sa.Boolean))
orders = sa.Table("o_orders", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                  sa.Column("person_id", sa.Integer))
notes = sa.Table("o_notes", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                 sa.Column("author", sa.Integer))

# id -> (stamp before the sweep, held); references: orders -> 1, 7; notes -> 2
ROWS = {1: (None, False), 2: (OLD, False), 3: (None, False), 4: (OLD, False), 5: (EDGE, False),
        6: (OLD, True), 7: (OLD, False), 8: (NEW, False), 9: (OLD, False)}


def _people(db_url: str) -> sa.Engine:
    """The tables of ROWS, orders of persons 1 and 7, a note by person 2."""
    engine = make_engine(db_url)
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(people.insert(), [{"id": i, "name": f"p{i}", "orphaned_since": s, "legal_hold": h}
                                       for i, (s, h) in ROWS.items()])
        conn.execute(orders.insert(), [{"id": 1, "person_id": 1}, {"id": 2, "person_id": 7}])
        conn.execute(notes.insert(), [{"id": 1, "author": 2}])
    return engine


@pytest.fixture
def arranged(db_url, tmp_path):
    engine = _people(db_url)
    policy = parse_policy(POLICY, source="orphans.yaml")
    ledger = Ledger(make_engine(f"sqlite:///{tmp_path / 'ledger.db'}"), KEY)
    ledger.ensure_schema()
    store = SqlStore("crm", policy, engine, mask_key=KEY)
    yield policy, store, ledger, engine
    store.close()
    ledger.engine.dispose()


def _state(engine) -> dict[int, dt.datetime | None]:
    with engine.connect() as conn:
        return {i: (s.replace(tzinfo=None, microsecond=0) if s else None)
                for i, s in conn.execute(sa.select(people.c.id, people.c.orphaned_since).order_by(people.c.id))}


def test_sweep_stamps_clears_and_deletes_exactly(arranged):
    policy, store, ledger, engine = arranged
    _, _, rule = policy.rule("crm.people.orphaned")
    store.check("people")
    # The forecast before any stamp: the stamped, unreferenced, unheld rows past the period (4, 9; 5 and 8 later).
    assert store.plan("people", rule, NOW).eligible == {"delete": 2}
    assert store.plan("people", rule, NOW + dt.timedelta(days=2)).eligible == {"delete": 4}

    counts = run_rule(policy, "crm.people.orphaned", store, ledger, RunRef("t", "r1"), now=NOW)

    assert counts["deleted"] == 2 and counts["cascaded"] == {}
    naive_now = NOW.replace(tzinfo=None)
    # 1, 2, 7 referenced (2 only by a nullify reference): no stamp; 3 stamped now; 4, 9 gone; 5 exactly a
    # period after its stamp stays; 6 held; 8 stamped a day later
    assert _state(engine) == {1: None, 2: None, 3: naive_now, 5: EDGE, 6: OLD, 7: None, 8: NEW}
    with ledger.engine.connect() as conn:
        rows = conn.execute(sa.select(entries.c.action, entries.c.outcome, entries.c.count)
                            .where(entries.c.rule_id == "crm.people.orphaned").order_by(entries.c.seq)).all()
    by_action: dict[str, int] = {}
    for action, outcome, n in rows:
        if outcome == "done":
            by_action[action] = by_action.get(action, 0) + n
    assert by_action == {"orphan_stamp": 1, "orphan_clear": 2, "delete": 2}
    # the next sweep a period later deletes the row stamped now, and only the rows past their stamp
    later = NOW + dt.timedelta(days=200)
    run_rule(policy, "crm.people.orphaned", store, ledger, RunRef("t", "r2"), now=later)
    assert set(_state(engine)) == {1, 2, 6, 7}


def test_a_reference_gained_between_plan_and_act_keeps_the_row(arranged):
    policy, store, ledger, engine = arranged
    _, _, rule = policy.rule("crm.people.orphaned")
    store.check("people")
    record = LedgerRecorder(ledger, {"run": RunRef("t", "r"), "rule_id": "crm.people.orphaned"})
    store.prepare_rule("people", rule, NOW, 2, record)
    assert store.plan("people", rule, NOW).eligible == {"delete": 2}
    with engine.begin() as conn:  # row 4 gets an order after the plan
        conn.execute(orders.insert().values(id=3, person_id=4))
    result = store.apply_stage("people", rule, rule.stages[0], NOW, 2, "retention:test", record)
    assert result.changed == 1
    assert 4 in _state(engine) and 9 not in _state(engine)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(orders)).scalar_one() == 3


def test_dry_run_stamps_nothing(arranged):
    policy, store, ledger, engine = arranged
    before = _state(engine)
    counts = run_rule(policy, "crm.people.orphaned", store, ledger, RunRef("t", "d"), now=NOW, dry_run=True)
    assert counts["deleted"] == 2 and _state(engine) == before


REFERRER = ("      refs: {table: r, primary_key: id, columns: [id, lonely_id],\n"
            "             references: [{to: crm.lonely, column: lonely_id}]}\n")


@pytest.mark.parametrize("start, referrer, problem", [
    ("{orphaned: orphaned_since}", "", "rules[0].start.orphaned: no collection's 'references' point at crm.lonely"),
    ("{orphaned: id}", REFERRER, "rules[0].start.orphaned: the marker column cannot be the primary key"),
    ("{orphaned: nope}", REFERRER, "rules[0].start.column: unknown column 'nope'"),
    ("{orphaned: orphaned_since, column: seen_at}", REFERRER,
     "'orphaned' names the column the period counts from; give no 'column'"),
])
def test_validation_names_file_path_and_problem(start, referrer, problem):
    text = ("version: 1\nsystems:\n  crm:\n    kind: sql\n    connection: c\n    collections:\n"
            "      lonely:\n        table: lonely\n        primary_key: id\n"
            "        columns: [id, orphaned_since, seen_at]\n"
            f"        rules: [{{name: gone, start: {start}, action: delete, period: P6M}}]\n" + referrer)
    with pytest.raises(PolicyError) as err:
        parse_policy(text, source="bad.yaml")
    assert "bad.yaml" in str(err.value) and "systems.crm.collections.lonely.rules[0]" in str(err.value)
    assert problem in str(err.value)


def test_s3_orphan_rule_needs_last_modified_and_owners():
    text = """
version: 1
systems:
  objects:
    kind: s3
    connection: s
    collections:
      cvs:
        bucket: b
        prefix: cvs/
        rules: [{name: orphaned, start: {orphaned: uploaded_at}, action: delete, period: P30D}]
"""
    with pytest.raises(PolicyError) as err:
        parse_policy(text, source="s3.yaml")
    msg = str(err.value)
    assert "s3.yaml" in msg and "systems.objects.collections.cvs.rules[0].start.orphaned" in msg
    assert "no collection's 'references' point at objects.cvs" in msg or "orphaned: last_modified" in msg


OWNING = POLICY.replace("columns: [id, name, orphaned_since, legal_hold]",
                        "columns: [id, name, orphaned_since, legal_hold]\n"
                        "        references: [{to: files.photos, key_template: \"photos/{id}/\"}]") + """
  files:
    kind: s3
    connection: files_s3
    collections:
      photos: {bucket: photos, prefix: photos/}
"""


def test_an_orphan_rule_whose_rows_own_objects_locks_rechecks_and_deletes_exactly(db_url):
    """Rows that own objects go by key (locked, re-checked, the objects first): still only the unreferenced ones,
    and the objects of exactly those rows."""
    engine = _people(db_url)
    policy = parse_policy(OWNING, source="owning.yaml")
    told: list[int] = []

    def before_delete(coll_ref, rows, **_):
        told.extend(r["id"] for r in rows)
        return {"files.photos": len(rows)}

    store = SqlStore("crm", policy, engine, mask_key=KEY, before_delete=before_delete)
    _, _, rule = policy.rule("crm.people.orphaned")
    try:
        store.check("people")
        result = store.apply_stage("people", rule, rule.stages[0], NOW, 1, "retention:test", lambda *a, **k: None)
    finally:
        store.close()
    assert result.changed == 2 and sorted(told) == [4, 9] and result.cascaded == {"files.photos": 2}
    assert set(_state(engine)) == set(ROWS) - {4, 9}
    engine.dispose()


TEXT_KEYS = """
version: 1
defaults: {max_fraction: 1.0, batch_size: 1}
systems:
  crm:
    kind: sql
    connection: crm_db
    collections:
      tags:
        table: o_tags
        primary_key: code
        columns: [code, orphaned_since]
        rules: [{name: orphaned, start: {orphaned: orphaned_since}, action: delete, period: P1D}]
      uses:
        table: o_uses
        primary_key: id
        columns: [id, tag_code]
        references: [{to: crm.tags, column: tag_code, on_delete: nullify}]
"""


def test_text_keys_compare_as_the_database_does_and_never_delete_a_referenced_row(db_url, tmp_path):
    """A child naming 'ABC' keeps parent 'abc' where the collation says they are equal (MariaDB's default) and
    not elsewhere; 'abc ' (trailing space) likewise on MariaDB (PAD SPACE). A row referenced byte for byte is
    kept everywhere."""
    meta = sa.MetaData()
    tags = sa.Table("o_tags", meta, sa.Column("code", sa.String(20), primary_key=True),
                    sa.Column("orphaned_since", sa.DateTime))
    uses = sa.Table("o_uses", meta, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                    sa.Column("tag_code", sa.String(20)))
    engine = make_engine(db_url)
    meta.create_all(engine)
    with engine.begin() as conn:
        conn.execute(tags.insert(), [{"code": c, "orphaned_since": OLD} for c in ("abc", "same", "gone", "pad")])
        conn.execute(uses.insert(), [{"id": 1, "tag_code": "ABC"}, {"id": 2, "tag_code": "same"},
                                     {"id": 3, "tag_code": "pad "}])
    policy = parse_policy(TEXT_KEYS, source="text.yaml")
    ledger = Ledger(make_engine(f"sqlite:///{tmp_path / 'ledger.db'}"), KEY)
    ledger.ensure_schema()
    store = SqlStore("crm", policy, engine, mask_key=KEY)
    try:
        run_rule(policy, "crm.tags.orphaned", store, ledger, RunRef("t", "x"), now=NOW)
        with engine.connect() as conn:
            left = set(conn.execute(sa.select(tags.c.code)).scalars())
    finally:
        store.close()
        ledger.engine.dispose()
    if engine.dialect.name == "mysql":
        assert left == {"abc", "same", "pad"}
    else:
        assert left == {"same"}


def test_the_forecast_of_a_week_is_what_a_sweep_a_week_later_does(arranged):
    """Forecasting changes nothing (no stamps); a sweep at now + 7 days stamps the new orphan with its own now (not
    due), clears the stale stamps and deletes exactly the forecast's rows."""
    from include.retention.forecast import forecast

    policy, store, ledger, engine = arranged
    before = _state(engine)
    result = forecast(policy, lambda _system: store, NOW, [7])
    week = next(h["counts"] for h in result["rules"][0]["horizons"] if h["days"] == 7)
    assert _state(engine) == before
    assert result["rules"][0]["now"]["delete"] == 2 and week["delete"] == 4  # 4, 9; then 5 and 8
    counts = run_rule(policy, "crm.people.orphaned", store, ledger, RunRef("t", "week"),
                      now=NOW + dt.timedelta(days=7))
    assert counts["deleted"] == week["delete"]
    assert set(_state(engine)) == set(ROWS) - {4, 5, 8, 9}


def test_mariadb_batch_records_the_rows_it_deleted_when_references_change_meanwhile(tmp_path, fresh_database):
    """MariaDB: an orphan rule's ``NOT EXISTS`` reads the referencing table, which a locking read of the orphans does
    not lock. Between a batch's choice of rows and its delete, row 9 (chosen) gains a reference and row 4 (stamped,
    referenced when chosen) loses its own: whatever the batch then deletes, its ledger digest and count are those of
    the rows really gone, and a row referenced at the delete stays."""
    import uuid

    from include.retention.stores import sql_walks
    from tests.unit.test_sweep_batching import Recorder

    url = fresh_database("mariadb", f"rt_orph_{uuid.uuid4().hex[:8]}")
    engine = _people(url)
    policy = parse_policy(POLICY, source="orphans.yaml")
    store = SqlStore("crm", policy, engine, mask_key=KEY)
    _, _, rule = policy.rule("crm.people.orphaned")
    store.check("people")
    store.prepare_rule("people", rule, NOW, 10, lambda *a, **k: None)
    with engine.begin() as conn:  # row 4 referenced after its stamp: not eligible now
        conn.execute(orders.insert().values(id=3, person_id=4))
    swapped = []
    real = sql_walks.RangeWalk.pick

    def pick_then_swap(self, conn, where, size):
        picked = real(self, conn, where, size)
        if not swapped:
            with engine.connect() as other:  # another session: 9 referenced, 4 no longer
                other.execute(orders.insert().values(id=4, person_id=9))
                other.execute(orders.delete().where(orders.c.id == 3))
                other.commit()
            swapped.append(1)
        return picked

    before = set(_state(engine))
    rec = Recorder()
    sql_walks.RangeWalk.pick, saved = pick_then_swap, sql_walks.RangeWalk.pick
    try:
        result = store.apply_stage("people", rule, rule.stages[0], NOW, 10, "retention:test", rec)
    finally:
        sql_walks.RangeWalk.pick = saved
    gone = sorted(before - set(_state(engine)))
    assert result.changed == len(gone) == sum(n for _, n, _ in rec.outcomes) == 1
    assert [d for _, _, d in rec.outcomes] == [store.pk_digest(gone)]
    with engine.connect() as conn:
        referenced = set(conn.execute(sa.select(orders.c.person_id)).scalars())
    assert not (referenced & set(gone))  # nothing referenced when the batch ended is gone
    assert gone == ([4] if swapped else [9])  # (one statement chooses and deletes: no window, row 9 goes)
    store.close()
