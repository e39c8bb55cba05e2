"""Issue 15's data-map constructs on real PostgreSQL, MariaDB (default collation) and SQLite: computed start
events (``latest`` / ``earliest`` / ``fallback``), range and age conditions, per-rule suppression on the default
data map. Exact keys, NULLs in every position, rows exactly at the boundary."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
import sqlalchemy as sa
from dateutil.relativedelta import relativedelta

from include.retention.connections import ConnInfo
from include.retention.demo import schema, seed
from include.retention.errors import PolicyError
from include.retention.ledger import Ledger, RunRef
from include.retention.policy import load_policy, parse_policy
from include.retention.registry import Identities, NewRequest
from include.retention.runtime import Runtime
from include.retention.stores.sql import SqlStore, make_engine
from include.retention.sweep import run_rule
from tests.conftest import KEY
from tests.policy_text import crm_policy

pytestmark = pytest.mark.integration

NOW = dt.datetime(2026, 11, 24, 12, 0, 0, tzinfo=dt.UTC)
EDGE = dt.datetime(2024, 11, 24, 12, 0, 0)  # NOW - P24M, naive UTC
OLD, NEW, BEFORE = EDGE - dt.timedelta(days=1), EDGE + dt.timedelta(days=1), EDGE - dt.timedelta(seconds=1)

POLICY = crm_policy("""\
      subs:
        table: c_subs
        primary_key: id
        columns: [id, opened_at, clicked_at, subscribed_at, legal_hold]
        legal_hold: [{column: legal_hold, equals: true}]
        rules:
          - name: inactive
            start: {latest: [opened_at, clicked_at], fallback: subscribed_at}
            action: delete
            period: P24M
      subs_tz:
        table: c_subs_tz
        primary_key: id
        columns: [id, opened_at, clicked_at, subscribed_at, legal_hold]
        legal_hold: [{column: legal_hold, equals: true}]
        rules:
          - name: inactive
            start: {latest: [opened_at, clicked_at], fallback: subscribed_at}
            action: delete
            period: P24M
      first_touch:
        table: c_first
        primary_key: id
        columns: [id, opened_at, clicked_at, subscribed_at, legal_hold]
        legal_hold: [{column: legal_hold, equals: true}]
        rules:
          - name: earliest
            start: {earliest: [opened_at, clicked_at], fallback: subscribed_at}
            action: delete
            period: P24M
      rounded:
        table: c_rounded
        primary_key: id
        columns: [id, a, b]
        rules:
          - name: yearly
            start: {latest: [a, b], round_up: year}
            action: delete
            period: P24M
      people:
        table: c_people
        primary_key: id
        columns: [id, name, birth_date, score, ratio, seen_at, litigation_at]
        legal_hold: [{column: litigation_at, younger_than: P6M}]
        rules:
          - {name: minors, start: seen_at, when: [{column: birth_date, younger_than: P18Y}], action: delete,
             period: P0D}
          - {name: adults, start: seen_at, when: [{column: birth_date, older_than: P18Y}], action: delete,
             period: P0D}
          - {name: low, start: seen_at, when: [{column: score, lt: 3}], action: delete, period: P0D}
          - {name: low_or_3, start: seen_at, when: [{column: score, le: 3}], action: delete, period: P0D}
          - {name: high, start: seen_at, when: [{column: ratio, gt: 0.5}], action: delete, period: P0D}
          - {name: half_or_more, start: seen_at, when: [{column: ratio, ge: 0.5}], action: delete, period: P0D}
          - {name: born_before_2000, start: seen_at, when: [{column: birth_date, lt: 2000-01-01}], action: delete,
             period: P0D}
          - {name: seen_since, start: seen_at, when: [{column: seen_at, ge: "2026-11-23T12:00:00"}],
             action: delete, period: P0D}
""", defaults="{max_fraction: 1.0, batch_size: 3}")

md = sa.MetaData()


def _subs_table(name: str, tz: bool) -> sa.Table:
    return sa.Table(name, md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                    sa.Column("opened_at", sa.DateTime(timezone=tz)), sa.Column("clicked_at", sa.DateTime(timezone=tz)),
                    sa.Column("subscribed_at", sa.DateTime(timezone=tz)), sa.Column("legal_hold", sa.Boolean))


subs, subs_tz, first = _subs_table("c_subs", False), _subs_table("c_subs_tz", True), _subs_table("c_first", False)
rounded = sa.Table("c_rounded", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                   sa.Column("a", sa.DateTime), sa.Column("b", sa.DateTime))
people = sa.Table("c_people", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                  sa.Column("name", sa.String(50)), sa.Column("birth_date", sa.Date), sa.Column("score", sa.Integer),
                  sa.Column("ratio", sa.Numeric(5, 2)), sa.Column("seen_at", sa.DateTime),
                  sa.Column("litigation_at", sa.DateTime))
three = sa.Table("c_three", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                 sa.Column("a", sa.DateTime), sa.Column("b", sa.DateTime), sa.Column("c", sa.DateTime),
                 sa.Column("f", sa.DateTime))

# (id, opened_at, clicked_at, subscribed_at, held): NULL in every position, rows exactly at the edge
SUB_ROWS = [
    (1, OLD, OLD, NEW, False), (2, OLD, NEW, OLD, False), (3, NEW, OLD, OLD, False),
    (4, None, OLD, NEW, False), (5, OLD, None, NEW, False), (6, None, NEW, OLD, False), (7, NEW, None, OLD, False),
    (8, None, None, OLD, False), (9, None, None, NEW, False), (10, None, None, None, False),
    (11, EDGE, None, OLD, False), (12, BEFORE, EDGE, None, False), (13, BEFORE, None, None, False),
    (14, None, BEFORE, EDGE, False), (15, None, None, EDGE, False), (16, None, None, BEFORE, False),
    (17, OLD, OLD, None, True),
]
LATEST_GONE = {1, 4, 5, 8, 13, 14, 16}  # the later non-NULL engagement (else the subscription) before the edge
EARLIEST_GONE = {1, 2, 3, 4, 5, 8, 12, 13, 14, 16}


def _utc(value: dt.datetime | None, aware: bool) -> dt.datetime | None:
    return value.replace(tzinfo=dt.UTC) if (value is not None and aware) else value


def seed_tables(engine: sa.Engine) -> None:
    md.drop_all(engine)
    md.create_all(engine)
    aware = engine.dialect.name == "postgresql"  # timestamptz there; elsewhere DateTime(timezone) is naive
    with engine.begin() as conn:
        for table, tz in ((subs, False), (subs_tz, aware), (first, False)):
            conn.execute(table.insert(), [
                {"id": i, "opened_at": _utc(o, tz), "clicked_at": _utc(c, tz), "subscribed_at": _utc(s, tz),
                 "legal_hold": h} for i, o, c, s, h in SUB_ROWS])
        year = dt.datetime(2024, 1, 1)  # floor_year(NOW - P24M)
        last = year - dt.timedelta(seconds=1)
        conn.execute(rounded.insert(), [
            {"id": 1, "a": last, "b": None}, {"id": 2, "a": None, "b": year}, {"id": 3, "a": dt.datetime(2023, 6, 1),
                                                                              "b": year},
            {"id": 4, "a": dt.datetime(2023, 6, 1), "b": last}, {"id": 5, "a": None, "b": None},
        ])
        seen = dt.datetime(2026, 11, 23, 12)  # NOW - 1 day
        conn.execute(people.insert(), [{"name": f"p{r[0]}", "seen_at": seen, "litigation_at": None, **dict(zip(
            ("id", "birth_date", "score", "ratio"), r, strict=True))} for r in [
            (1, dt.date(2008, 11, 24), 2, 0.5),    # 18 today: not younger than 18 (a date is its midnight)
            (2, dt.date(2008, 11, 25), 3, 0.51),   # 18 tomorrow: a minor
            (3, dt.date(2008, 11, 23), -1, 0.49),
            (4, None, None, None),
            (5, dt.date(2010, 1, 1), 4, 0.0),
            (6, dt.date(1999, 12, 31), 100, 1),
            (7, dt.date(2000, 1, 1), 0, 0.5),
        ]])
        conn.execute(people.update().where(people.c.id == 5).values(litigation_at=dt.datetime(2026, 6, 1)))  # held
        conn.execute(people.update().where(people.c.id == 6).values(litigation_at=dt.datetime(2026, 5, 24, 12)))
        conn.execute(people.update().where(people.c.id == 7).values(seen_at=dt.datetime(2026, 11, 23, 11, 59, 59)))
        points = [None, dt.datetime(2020, 1, 1), dt.datetime(2021, 1, 1), dt.datetime(2022, 1, 1)]
        conn.execute(three.insert(), [{"id": n, "a": a, "b": b, "c": c, "f": dt.datetime(1999, 1, 1)}
                                      for n, (a, b, c) in enumerate(itertools.product(points, repeat=3))])


@pytest.fixture
def env(db_url, tmp_path):
    engine = make_engine(db_url)
    seed_tables(engine)
    policy = parse_policy(POLICY, source="constructs.yaml")
    store = SqlStore("crm", policy, engine, mask_key=KEY)
    ledger = Ledger(make_engine(f"sqlite:///{tmp_path / 'ledger.db'}"), KEY)
    yield policy, store, ledger, engine
    store.close()
    ledger.engine.dispose()


def ids(engine, table) -> set[int]:
    with engine.connect() as conn:
        return set(conn.execute(sa.select(table.c.id)).scalars())


def eligible_ids(store: SqlStore, policy, rule_id: str) -> set[int]:
    coll_ref, coll, rule = policy.rule(rule_id)
    name = coll_ref.partition(".")[2]
    store.check(name)
    t = store.table(name)
    with store.engine.connect() as conn:
        return set(conn.execute(sa.select(t.c[coll.primary_key]).where(
            store.eligible(name, rule, rule.stages[-1], NOW, t))).scalars())


def sweep(env, rule_id):
    policy, store, ledger, _ = env
    return run_rule(policy, rule_id, store, ledger, RunRef("test", "run1"), now=NOW)


# ---- computed starts ------------------------------------------------------------------------


@pytest.mark.parametrize(("rule_id", "table", "gone"), [
    ("crm.subs.inactive", subs, LATEST_GONE),
    ("crm.subs_tz.inactive", subs_tz, LATEST_GONE),
    ("crm.first_touch.earliest", first, EARLIEST_GONE),
])
def test_computed_start_deletes_exactly_the_expected_rows(env, rule_id, table, gone):
    policy, store, ledger, engine = env
    all_ids = {r[0] for r in SUB_ROWS}
    assert eligible_ids(store, policy, rule_id) == gone
    _, _, rule = policy.rule(rule_id)
    plan = store.plan(rule_id.split(".")[1], rule, NOW)
    assert plan.eligible == {"delete": len(gone)} and plan.held == 1  # 17: past the period, under legal hold
    counts = sweep(env, rule_id)
    assert counts["deleted"] == len(gone)
    assert ids(engine, table) == all_ids - gone
    assert ledger.verify().ok
    assert sweep(env, rule_id)["deleted"] == 0  # idempotent


def test_computed_start_rounds_up_to_the_year(env):
    policy, store, _, engine = env
    # floor_year(NOW - P24M) = 2024-01-01: the later column must be before it
    assert eligible_ids(store, policy, "crm.rounded.yearly") == {1, 4}
    assert sweep(env, "crm.rounded.yearly")["deleted"] == 2
    assert ids(engine, rounded) == {2, 3, 5}


@pytest.mark.parametrize("later", [True, False])
def test_start_expression_matches_python_for_every_null_pattern(env, later):
    """Three columns, each NULL or one of three instants, in every order: the CASE is max()/min() of the
    non-NULL values, else the fallback (a NULL anywhere does not make the result NULL, unlike SQLite max())."""
    policy, store, _, engine = env
    doc = parse_policy(POLICY.replace("      people:", f"""      three:
        table: c_three
        primary_key: id
        columns: [id, a, b, c, f]
        rules:
          - {{name: r, start: {{{'latest' if later else 'earliest'}: [a, b, c], fallback: f}}, action: delete,
             period: P1D}}
      people:"""), source="three.yaml")
    _, _, rule = doc.rule("crm.three.r")
    t = three
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t.c.id, t.c.a, t.c.b, t.c.c, store.start_expr(rule, t))).all()
    assert len(rows) == 64
    pick = max if later else min
    for _id, a, b, c, got in rows:
        values = [v for v in (a, b, c) if v is not None]
        want = pick(values) if values else dt.datetime(1999, 1, 1)
        if isinstance(got, str):  # SQLite hands a CASE over DATETIME columns back as text
            got = dt.datetime.fromisoformat(got)
        assert got == want, (a, b, c, got)


def test_computed_start_of_mixed_or_non_time_types_is_refused(env, db_url):
    _, _, _, engine = env
    text = POLICY.replace("start: {latest: [opened_at, clicked_at], fallback: subscribed_at}",
                          "start: {latest: [opened_at, legal_hold]}", 1)
    store = SqlStore("crm", parse_policy(text, source="mixed.yaml"), engine, mask_key=KEY)
    with pytest.raises(PolicyError) as info:
        store.check("subs")
    msg = str(info.value)
    assert msg.startswith("mixed.yaml: systems.crm.collections.subs.rules[0].start.latest[1]: "), msg
    assert "a computed start compares dates or timestamps" in msg
    mixed = sa.Table("c_mixed", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True),
                     sa.Column("a", sa.DateTime), sa.Column("b", sa.Date))
    mixed.create(engine)
    text = POLICY.replace("      people:", """      mixed:
        table: c_mixed
        primary_key: id
        columns: [id, a, b]
        rules:
          - {name: m, start: {earliest: [a], fallback: b}, action: delete, period: P1D}
      people:""")
    store = SqlStore("crm", parse_policy(text, source="mixed.yaml"), engine, mask_key=KEY)
    with pytest.raises(PolicyError, match=r"mixed\.yaml: systems\.crm\.collections\.mixed\.rules\[0\]\.start\."
                                          r"fallback: column 'b' has type DATE, 'a' another; the columns of a "
                                          r"computed start must be of one type"):
        store.check("mixed")


def test_computed_start_naming_a_missing_column_is_refused():
    bad = POLICY.replace("start: {latest: [opened_at, clicked_at], fallback: subscribed_at}",
                         "start: {latest: [opened_at, last_click_at], fallback: subscribed_at}", 1)
    with pytest.raises(PolicyError, match=r"^constructs\.yaml: systems\.crm\.collections\.subs\.rules\[0\]\.start\."
                                          r"latest\[1\]: unknown column 'last_click_at'"):
        parse_policy(bad, source="constructs.yaml")


# ---- range and age conditions -----------------------------------------------------------------


@pytest.mark.parametrize(("rule", "expected"), [
    ("minors", {2}),                     # 5 is a minor too, but under legal hold (litigation 6 months ago)
    ("adults", {1, 3, 6, 7}),            # 6 is not held: litigation exactly 6 months ago is not younger than P6M
    ("low", {1, 3, 7}),                  # score 3 is not < 3; NULL never matches
    ("low_or_3", {1, 2, 3, 7}),
    ("high", {2, 6}),                    # 0.5 is not > 0.5
    ("half_or_more", {1, 2, 6, 7}),
    ("born_before_2000", {6}),           # 7 (2000-01-01) is not before 2000-01-01
    ("seen_since", {1, 2, 3, 4, 6}),     # 7 was seen one second before the bound; 5 is held
])
def test_range_and_age_conditions_select_exactly(env, rule, expected):
    policy, store, _, engine = env
    assert eligible_ids(store, policy, f"crm.people.{rule}") == expected
    counts = sweep(env, f"crm.people.{rule}")
    assert counts["deleted"] == len(expected)
    assert ids(engine, people) == set(range(1, 8)) - expected


def test_age_legal_hold_is_exact_at_the_boundary(env):
    _, store, _, engine = env
    t = store.table("people")
    with engine.connect() as conn:
        def held(now):
            return set(conn.execute(sa.select(t.c.id).where(store.held("people", t, now))).scalars())

        # litigation 2026-06-01 (5) holds for six months; 2026-05-24 12:00 (6) is exactly six months before NOW
        assert held(NOW) == {5}
        assert held(NOW - dt.timedelta(seconds=1)) == {5, 6}
        assert held(dt.datetime(2026, 12, 1, 0, 0, 0, tzinfo=dt.UTC)) == set()
        assert held(dt.datetime(2026, 11, 30, 23, 59, 59, tzinfo=dt.UTC)) == {5}


@pytest.mark.parametrize(("cond", "problem"), [
    ("{column: name, lt: m}", (".when[0].lt: 'lt' compares numbers, dates, timestamps or times; column type ",
                               "holds text")),
    ("{column: score, younger_than: P18Y}", (".when[0].younger_than: 'younger_than' compares dates or timestamps; "
                                             "column type ", "holds whole numbers")),
    ("{column: score, ge: '3'}", (".when[0].ge: '3' is quoted text; column type ", "holds whole numbers")),
    ("{column: birth_date, gt: true}", None),
])
def test_range_on_a_wrong_column_is_refused(env, cond, problem):
    _, _, _, engine = env
    text = POLICY.replace("when: [{column: score, lt: 3}]", f"when: [{cond}]")
    if problem is None:  # refused by the data map itself
        with pytest.raises(PolicyError, match=r"^r\.yaml: systems\.crm\.collections\.people\.rules\[2\]\.when\[0\]: "
                                              r"'gt' takes one number, date or date-time"):
            parse_policy(text, source="r.yaml")
        return
    store = SqlStore("crm", parse_policy(text, source="r.yaml"), engine, mask_key=KEY)
    with pytest.raises(PolicyError) as info:
        store.check("people")
    msg = str(info.value)
    assert msg.startswith("r.yaml: systems.crm.collections.people.rules[2]"), msg
    assert all(part in msg for part in problem), msg


# ---- the default data map: suppression belongs to the rule ------------------------------------


@pytest.fixture
def mailing(db_url, tmp_path):
    from pathlib import Path

    policy = load_policy(Path(__file__).resolve().parents[2] / "config" / "policy.yaml")
    engine = make_engine(db_url)
    seed.seed_mailing(engine, NOW, reset=True)
    conns = {"retention_ledger": ConnInfo("sqlite", host=str(tmp_path / "ledger.db"))}
    runtime = Runtime(policy, conns.__getitem__, key=KEY)
    runtime._stores["mailing"] = SqlStore("mailing", policy, engine, mask_key=KEY, before_delete=runtime.before_delete)
    yield policy, runtime, engine
    runtime.close()


def _emails(engine, where) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.select(schema.subscribers.c.email).where(where)).scalars())


def test_default_map_suppresses_unsubscribed_not_inactive(mailing):
    policy, runtime, engine = mailing
    s = schema.subscribers
    edge = (NOW - relativedelta(months=36)).replace(tzinfo=None)
    start = sa.case((s.c.last_engaged_at.is_not(None), s.c.last_engaged_at), else_=s.c.subscribed_at)
    not_held = sa.func.coalesce(s.c.legal_hold, sa.false()) == sa.false()
    inactive = _emails(engine, sa.and_(s.c.unsubscribed_at.is_(None), start < edge, not_held))
    unsubscribed = _emails(engine, sa.and_(s.c.unsubscribed_at < (NOW - dt.timedelta(days=30)).replace(tzinfo=None),
                                           not_held))
    assert len(inactive) == 54 and len(unsubscribed) == 45
    store, ledger = runtime.store("mailing"), runtime.ledger()
    done = run_rule(policy, "mailing.subscribers.no_engagement", store, ledger, RunRef("t", "r"), now=NOW)
    assert done["deleted"] == 54 and "suppression_list" not in done["cascaded"]
    done = run_rule(policy, "mailing.subscribers.unsubscribed", store, ledger, RunRef("t", "r"), now=NOW)
    assert done["deleted"] == 45 and done["cascaded"]["suppression_list"] == 45
    registry = runtime.registry()
    assert all(registry.suppression.contains("email", e) for e in unsubscribed)
    assert not any(registry.suppression.contains("email", e) for e in inactive)  # they may subscribe again
    assert not _emails(engine, s.c.email.in_(inactive | unsubscribed))

    # An erasure suppresses as before (the request's identities, when it completes) ...
    erased = sorted(_emails(engine, s.c.id > 0))[0]
    rid = registry.register(NewRequest(Identities(email=erased)))
    registry.suppression.add(rid)
    assert registry.suppression.contains("email", erased)
    # ... and the sweep's enforcement removes suppressed re-subscriptions: the unsubscribed address that comes
    # back and the erased one go, a returning inactive subscriber stays.
    from include.retention.requests.scanner import SubjectScanner
    from include.retention.requests.suppression import enforce_system

    back = sorted(unsubscribed)[0]
    returning = sorted(inactive)[0]
    with engine.begin() as conn:
        top = conn.execute(sa.select(sa.func.max(s.c.id))).scalar()
        conn.execute(s.insert(), [{"id": top + 1 + i, "email": e, "subscribed_at": NOW.replace(tzinfo=None),
                                   "legal_hold": False} for i, e in enumerate((back, returning))])
    counts = enforce_system(SubjectScanner(policy, store), registry, replay=False)
    assert counts == {"mailing.subscribers": 2}
    assert back not in _emails(engine, s.c.id > 0) and erased not in _emails(engine, s.c.id > 0)
    assert returning in _emails(engine, s.c.id > 0)


def test_digests_made_under_suppress_on_delete_stay_valid(mailing, tmp_path):
    """A map that still says ``suppress_on_delete`` keeps suppressing every delete there; digests it made stay
    on the list and are enforced under the new map."""
    policy, runtime, engine = mailing
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "config" / "policy.yaml").read_text()
    old_text = text.replace("        legal_hold: [{column: legal_hold, equals: true}]\n        # Withdrawing",
                            "        legal_hold: [{column: legal_hold, equals: true}]\n"
                            "        suppress_on_delete: [email]\n        # Withdrawing", 1)
    assert old_text != text
    old = parse_policy(old_text, source="old.yaml")
    conns = {"retention_ledger": ConnInfo("sqlite", host=str(tmp_path / "ledger.db"))}
    old_runtime = Runtime(old, conns.__getitem__, key=KEY)
    old_runtime._stores["mailing"] = SqlStore("mailing", old, engine, mask_key=KEY,
                                              before_delete=old_runtime.before_delete)
    s = schema.subscribers
    before = _emails(engine, s.c.id > 0)
    try:
        done = run_rule(old, "mailing.subscribers.no_engagement", old_runtime.store("mailing"), old_runtime.ledger(),
                        RunRef("t", "old"), now=NOW)
    finally:
        old_runtime._stores.pop("mailing")
        old_runtime.close()
    assert done["deleted"] == 54 and done["cascaded"]["suppression_list"] == 54
    gone = before - _emails(engine, s.c.id > 0)
    registry = runtime.registry()  # the same registry database, the new map
    assert len(gone) == 54 and all(registry.suppression.contains("email", e) for e in gone)
    from include.retention.requests.scanner import SubjectScanner
    from include.retention.requests.suppression import enforce_system

    with engine.begin() as conn:
        top = conn.execute(sa.select(sa.func.max(s.c.id))).scalar()
        conn.execute(s.insert(), {"id": top + 1, "email": sorted(gone)[0], "subscribed_at": NOW.replace(tzinfo=None),
                                  "legal_hold": False})
    assert enforce_system(SubjectScanner(policy, runtime.store("mailing")), registry, replay=False) == {
        "mailing.subscribers": 1}
