"""``cli diff`` compares records, not counts: for seven kinds of policy change on a mailing list (subscribers,
and list memberships with a composite key that go with their subscriber), the records newly (and no longer)
locked / deleted now and at the 30-day horizon are exactly the sets worked out by hand below, on SQLite,
PostgreSQL and MariaDB; the gate counts them (dependents included) against ``--threshold``.

The seed, at NOW (months back; "24m-15d" is 15 days short of 24 months):

  id  last open  last click  subscribed  country  held  restricted
   1  30m        30m         40m         DE
   2  30m        10m         40m         FR
   3  25m        1m          40m         DE
   4  -          -           40m         US
   5  24m-15d    -           40m         FR
   6  5m         24m-10d     40m         DE
   7  30m        2m          40m         FR       yes
   8  13m        13m         40m         DE
   9  -          26m         40m         FR             5 days ago

Memberships (subscriber, list): (1,1) (1,2) (2,1, left 40 days ago) (3,1) (3,2) (4,2) (5,1) (6,1, left 10 days
ago) (8,1) (9,3); their own rule deletes them 30 days after leaving: (2,1) now, (2,1) and (6,1) at 30 days.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest
import sqlalchemy as sa
from dateutil.relativedelta import relativedelta
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from include.retention import cli
from include.retention.ledger import Ledger, RunRef
from include.retention.policy import parse_policy
from include.retention.policy_diff import diff_records
from include.retention.stores.sql import SqlStore, make_engine
from include.retention.sweep import run_rule
from tests.conftest import KEY, airflow_uri
from tests.integration.test_cross_database import GONE_NOTES, GONE_PARENTS, dbs, server_db  # noqa: F401 - fixtures
from tests.integration.test_cross_database import NOW as CROSS_NAIVE_NOW
from tests.integration.test_cross_database import POLICY as CROSS_POLICY
from tests.policy_text import policy_text, sql_system

pytestmark = pytest.mark.integration

NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)
SUBS, MEMS = "mailing.subscribers", "mailing.memberships"
CROSS_NOW = CROSS_NAIVE_NOW.replace(tzinfo=dt.UTC)

COLLECTIONS = """\
subscribers:
  table: d_subscribers
  primary_key: id
  columns: [id, email, subscribed_at, last_open_at, last_click_at, country, legal_hold, restricted_at,
            restriction_reason, anonymized_at]
  identities: {{email: email}}
  lock: {{at: restricted_at, reason: restriction_reason}}
  anonymized_marker: anonymized_at
  legal_hold: [{{column: legal_hold, equals: true}}]
  rules:
{rules}
memberships:
  table: d_memberships
  primary_key: [subscriber_id, list_id]
  columns: [subscriber_id, list_id, left_at]
  references: [{{to: mailing.subscribers, column: subscriber_id, on_delete: delete}}]
  rules:
    - {{name: left_lists, start: left_at, action: delete, period: P30D}}
"""

LATEST = "{latest: [last_open_at, last_click_at], fallback: subscribed_at}"
EARLIEST = "{earliest: [last_open_at, last_click_at], fallback: subscribed_at}"


def rule(name: str = "no_engagement", start: str = LATEST, action: str = "delete", period: str = "P24M",
         when: str = "") -> str:
    cond = f", when: [{when}]" if when else ""
    return f"    - {{name: {name}, start: {start}, action: {action}, period: {period}{cond}}}"


def policy_yaml(*rules: str) -> str:
    return policy_text(sql_system("mailing", "mailing_db", COLLECTIONS.format(rules="\n".join(rules))),
                       defaults="{max_fraction: 1.0}")


BASE = policy_yaml(rule())
SPLIT = policy_yaml(rule("engaged_de", when="{column: country, equals: DE}"),
                    rule("engaged_fr", when="{column: country, equals: FR}"))

md = sa.MetaData()
subscribers = sa.Table(
    "d_subscribers", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("email", sa.String(100)), sa.Column("subscribed_at", sa.DateTime), sa.Column("last_open_at", sa.DateTime),
    sa.Column("last_click_at", sa.DateTime), sa.Column("country", sa.String(2)), sa.Column("legal_hold", sa.Boolean),
    sa.Column("restricted_at", sa.DateTime), sa.Column("restriction_reason", sa.String(100)),
    sa.Column("anonymized_at", sa.DateTime))
memberships = sa.Table(
    "d_memberships", md, sa.Column("subscriber_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("list_id", sa.Integer, primary_key=True, autoincrement=False), sa.Column("left_at", sa.DateTime))


def ago(months: int = 0, days: int = 0) -> dt.datetime:
    return (NOW - relativedelta(months=months) + dt.timedelta(days=days)).replace(tzinfo=None)


SEED = [  # id, open, click, country, held, restricted
    (1, ago(30), ago(30), "DE", False, None),
    (2, ago(30), ago(10), "FR", False, None),
    (3, ago(25), ago(1), "DE", False, None),
    (4, None, None, "US", False, None),
    (5, ago(24, 15), None, "FR", False, None),
    (6, ago(5), ago(24, 10), "DE", False, None),
    (7, ago(30), ago(2), "FR", True, None),
    (8, ago(13), ago(13), "DE", False, None),
    (9, None, ago(26), "FR", False, ago(0, -5)),
]
MEMBERSHIPS = [(1, 1, None), (1, 2, None), (2, 1, ago(0, -40)), (3, 1, None), (3, 2, None), (4, 2, None),
               (5, 1, None), (6, 1, ago(0, -10)), (8, 1, None), (9, 3, None)]


def members_of(ids: set[int]) -> set[tuple[int, int]]:
    return {(s, ls) for s, ls, _ in MEMBERSHIPS if s in ids}


def seed(engine: sa.Engine) -> None:
    md.drop_all(engine)
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(subscribers.insert(), [
            {"id": i, "email": f"s{i}@example.org", "subscribed_at": ago(40), "last_open_at": o, "last_click_at": c,
             "country": country, "legal_hold": held, "restricted_at": r,
             "restriction_reason": "retention:earlier" if r else None}
            for i, o, c, country, held, r in SEED])
        conn.execute(memberships.insert(), [{"subscriber_id": s, "list_id": ls, "left_at": left}
                                            for s, ls, left in MEMBERSHIPS])


# Each side's deletes, worked out from the seed by hand: subscribers due at (now, 30 days), and what goes with them.
OWN_MEMBERSHIP_RULE = {0: {(2, 1)}, 30: {(2, 1), (6, 1)}}
LATEST_24M = {0: {1, 4, 9}, 30: {1, 4, 5, 9}}  # 5's last open passes 24 months in 15 days; 7 is held
EARLIEST_24M = {0: {1, 2, 3, 4, 9}, 30: {1, 2, 3, 4, 5, 6, 9}}  # 6's earlier column passes in 10 days
SPLIT_24M = {0: {1, 9}, 30: {1, 5, 9}}  # DE and FR only: 4 (US) stays
LATEST_12M = {0: {1, 4, 5, 8, 9}, 30: {1, 4, 5, 8, 9}}  # 2 (10 months) is not due within 30 days either
DE_ONLY = {0: {1}, 30: {1}}
LOCK_24M = {0: {1, 4}, 30: {1, 4, 5}}  # 9 is locked already: not locked again
NOTHING = {0: set(), 30: set()}


def deleted(subs: dict[int, set[int]]) -> dict[int, tuple[set, set]]:
    """(subscribers, memberships) deleted per horizon: the subscribers' memberships go with them."""
    return {h: (subs[h], members_of(subs[h]) | OWN_MEMBERSHIP_RULE[h]) for h in (0, 30)}


CASES = {  # name: (old, new, old deletes, new deletes, old locks, new locks)
    "renamed": (BASE, policy_yaml(rule("inactive")), LATEST_24M, LATEST_24M, NOTHING, NOTHING),
    "split": (BASE, SPLIT, LATEST_24M, SPLIT_24M, NOTHING, NOTHING),
    "merged": (SPLIT, BASE, SPLIT_24M, LATEST_24M, NOTHING, NOTHING),
    "latest_to_earliest": (BASE, policy_yaml(rule(start=EARLIEST)), LATEST_24M, EARLIEST_24M, NOTHING, NOTHING),
    "shorter": (BASE, policy_yaml(rule(period="P12M")), LATEST_24M, LATEST_12M, NOTHING, NOTHING),
    "lock_to_delete": (policy_yaml(rule(action="lock")), BASE, NOTHING, LATEST_24M, LOCK_24M, NOTHING),
    "condition_added": (BASE, policy_yaml(rule(when="{column: country, equals: DE}")), LATEST_24M, DE_ONLY,
                        NOTHING, NOTHING),
}


def expected(case: str) -> dict[tuple[str, int, str], tuple[int, int]]:
    """(action, horizon, collection) -> (newly, no longer), from the hand-made sets (only non-zero ones)."""
    _, _, old_del, new_del, old_lock, new_lock = CASES[case]
    out = {}
    od, nd = deleted(old_del), deleted(new_del)
    for h in (0, 30):
        for coll, i in ((SUBS, 0), (MEMS, 1)):
            pair = (len(nd[h][i] - od[h][i]), len(od[h][i] - nd[h][i]))
            if any(pair):
                out[("delete", h, coll)] = pair
        pair = (len(new_lock[h] - old_lock[h]), len(old_lock[h] - new_lock[h]))
        if any(pair):
            out[("lock", h, SUBS)] = pair
    return out


def expected_gate(case: str) -> int:
    """Records newly deleted or locked now or at 30 days, each once (from the hand-made sets)."""
    _, _, old_del, new_del, old_lock, new_lock = CASES[case]
    od, nd = deleted(old_del), deleted(new_del)
    records = set()
    for h in (0, 30):
        records |= {(SUBS, i) for i in (nd[h][0] - od[h][0]) | (new_lock[h] - old_lock[h])}
        records |= {(MEMS, m) for m in nd[h][1] - od[h][1]}
    return len(records)


@pytest.fixture
def stores(db_url):
    engine = make_engine(db_url)
    seed(engine)
    opened = []

    def open_pair(old_text: str, new_text: str):
        old, new = parse_policy(old_text, source="old.yaml"), parse_policy(new_text, source="new.yaml")
        pair = [SqlStore("mailing", p, make_engine(db_url), mask_key=KEY) for p in (old, new)]
        opened.extend(pair)
        return old, new, pair

    yield open_pair
    for store in opened:
        store.close()
    engine.dispose()


def test_in_one_database_only_counts_leave_it(stores):
    """Both maps on one database: each statement the diff sends is one aggregate (no key, no row comes back)."""
    old, new, (s_old, s_new) = stores(BASE, policy_yaml(rule(start=EARLIEST)))
    for store in (s_old, s_new):  # reflection (catalogue queries) first, as any store use does
        store.table("subscribers")
    sent: list[str] = []
    sa.event.listen(s_new.engine, "before_cursor_execute", lambda *a: sent.append(a[2]))
    sa.event.listen(s_old.engine, "before_cursor_execute", lambda *a: sent.append(a[2]))
    diff = diff_records(old, new, lambda _s: s_old, lambda _s: s_new, NOW)
    assert diff["gate"] == 5
    queries = [q for q in sent if q.lstrip().upper().startswith("SELECT")]
    assert len(queries) == 2  # one per collection, both horizons in it
    assert all(q.lstrip().upper().startswith("SELECT SUM(CASE WHEN") for q in queries), queries[0][:80]


def test_the_hand_made_sets_are_what_the_cases_say():
    """The expectations themselves, spelled out for the case of issue 22 (latest -> earliest)."""
    assert expected("latest_to_earliest") == {
        ("delete", 0, SUBS): (2, 0), ("delete", 0, MEMS): (2, 0),  # 2 and 3; (3,1) (3,2): (2,1) goes anyway
        ("delete", 30, SUBS): (3, 0), ("delete", 30, MEMS): (2, 0)}  # and 6, whose (6,1) goes anyway
    assert expected("renamed") == {}
    assert expected("lock_to_delete")[("delete", 0, MEMS)] == (4, 0)  # (1,1) (1,2) (4,2) (9,3)


@pytest.mark.parametrize("case", list(CASES))
def test_newly_and_no_longer_affected_records_are_exact(stores, case):
    old_text, new_text, *_ = CASES[case]
    old, new, (s_old, s_new) = stores(old_text, new_text)

    diff = diff_records(old, new, lambda _s: s_old, lambda _s: s_new, NOW)

    assert diff["errors"] == []
    got = {(r["action"], r["horizon"], r["collection"]): (r["newly"], r["no_longer"]) for r in diff["collections"]}
    assert got == expected(case)
    want = {h: sum(n for (a, hh, _c), (n, _g) in expected(case).items() if hh == h) for h in (0, 30)}
    assert diff["newly_affected"] == [{"horizon": h, "records": want[h]} for h in (0, 30)]
    assert diff["gate"] == expected_gate(case)
    assert "@" not in json.dumps(diff)  # counts and collection names only


@pytest.mark.parametrize("case", list(CASES))
def test_maps_on_two_copies_of_the_data_compare_by_keys_in_the_spool(tmp_path, case):
    """Where the two maps reach the system through different connections (here: two SQLite copies of the same
    data), the keys of each side go through the on-disk spool: the same exact answers."""
    old_text, new_text, *_ = CASES[case]
    pair = []
    for side, text in (("old", old_text), ("new", new_text)):
        engine = make_engine(f"sqlite:///{tmp_path / f'{side}.db'}")
        seed(engine)
        pair.append(SqlStore("mailing", parse_policy(text, source=f"{side}.yaml"), engine, mask_key=KEY))
    s_old, s_new = pair

    diff = diff_records(s_old.policy, s_new.policy, lambda _s: s_old, lambda _s: s_new, NOW)

    got = {(r["action"], r["horizon"], r["collection"]): (r["newly"], r["no_longer"]) for r in diff["collections"]}
    assert diff["errors"] == [] and got == expected(case)
    want = {h: sum(n for (_a, hh, _c), (n, _g) in expected(case).items() if hh == h) for h in (0, 30)}
    assert diff["newly_affected"] == [{"horizon": h, "records": want[h]} for h in (0, 30)]
    assert diff["gate"] == expected_gate(case)
    for store in pair:
        store.close()


def test_the_same_records_counted_once_whatever_the_actions(stores):
    """A record newly locked by one rule and newly deleted by another counts once in the gate."""
    both = policy_yaml(rule("lock_early", action="lock", period="P12M"), rule(start=EARLIEST))
    old, new, (s_old, s_new) = stores(BASE, both)
    diff = diff_records(old, new, lambda _s: s_old, lambda _s: s_new, NOW)
    got = {(r["action"], r["horizon"], r["collection"]): (r["newly"], r["no_longer"]) for r in diff["collections"]}
    # lock at 12 months (latest): 1, 4, 5, 8, 9 minus 9 (locked already) -> 1, 4, 5, 8, whatever the delete rule says
    assert got[("lock", 0, SUBS)] == (4, 0)
    # newly anything now: subscribers 1, 2, 3, 4, 5, 8 (1 and 4 are deleted by both maps, but newly locked),
    # memberships (3,1) (3,2)
    assert diff["newly_affected"][0] == {"horizon": 0, "records": 8}


def run_cli(capsys, monkeypatch, tmp_path, db_url, old_text, new_text, *argv):
    if db_url.startswith("sqlite"):
        conn = json.dumps({"conn_type": "sqlite", "host": sa.engine.make_url(db_url).database})
    else:
        conn = airflow_uri(db_url)
    monkeypatch.setenv("AIRFLOW_CONN_MAILING_DB", conn)
    (tmp_path / "old.yaml").write_text(old_text)
    (tmp_path / "new.yaml").write_text(new_text)
    code = cli.main(["diff", str(tmp_path / "old.yaml"), str(tmp_path / "new.yaml"), *argv, "--now", NOW.isoformat()])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("threshold, code", [(4, cli.DIFF_REFUSED), (5, 0), (6, 0)])
def test_gate_against_threshold_below_at_and_above(db_url, capsys, monkeypatch, tmp_path, threshold, code):
    """latest -> earliest newly deletes 4 records now and 5 within 30 days (subscribers 2, 3, 6 and the
    memberships (3,1) (3,2)): a threshold of 4 refuses it, 5 and 6 let it through."""
    seed_engine = make_engine(db_url)
    seed(seed_engine)
    seed_engine.dispose()
    got, out, err = run_cli(capsys, monkeypatch, tmp_path, db_url, BASE, policy_yaml(rule(start=EARLIEST)),
                            "--threshold", str(threshold))
    assert got == code, err
    lines = {tuple(ln.split()[:2]): ln.split()[2:] for ln in out.splitlines() if ln.startswith("mailing.")}
    assert lines[(SUBS, "delete")] == ["2", "0", "3", "0"]
    assert lines[(MEMS, "delete")] == ["2", "0", "2", "0"]
    assert "4 now, 5 within 30 days, 5 in all" in out
    assert ("refused" in err and "5 record(s)" in err) == (code != 0)
    assert "@" not in out + err


def test_a_collection_the_old_map_does_not_know(stores):
    """The new map adds the memberships: their own rule's and the cascade's records are all newly deleted (the old
    map's sweep deleted subscribers 1, 4 and 9 without touching a table it did not know)."""
    without = BASE.split("      memberships:")[0]
    old, new, (s_old, s_new) = stores(without, BASE)
    diff = diff_records(old, new, lambda _s: s_old, lambda _s: s_new, NOW)
    got = {(r["action"], r["horizon"], r["collection"]): (r["newly"], r["no_longer"]) for r in diff["collections"]}
    assert got == {("delete", 0, MEMS): (len(members_of({1, 4, 9}) | {(2, 1)}), 0),
                   ("delete", 30, MEMS): (len(members_of({1, 4, 5, 9}) | {(2, 1), (6, 1)}), 0)}


def test_a_map_that_cannot_be_compared_fails_the_diff(db_url, capsys, monkeypatch, tmp_path):
    """A rule on a column the table lacks: no verdict on partial counts (exit 2, the collection named)."""
    engine = make_engine(db_url)
    seed(engine)
    engine.dispose()
    broken = policy_yaml(rule(start="last_seen_at")).replace("anonymized_at]", "anonymized_at, last_seen_at]")
    code, out, err = run_cli(capsys, monkeypatch, tmp_path, db_url, BASE, broken, "--threshold", "100")
    assert code == 2, err
    assert "not compared: mailing.subscribers" in out and "last_seen_at" in out
    assert "could not be compared (mailing.subscribers" in err


# ---- across databases: subscribers in one, CRM notes that go with them in another ------------------------------

CROSS_MEMBERS_YAML = """\
      list_members:
        table: x_members
        primary_key: [subscriber_id, list_id]
        columns: [subscriber_id, list_id]
        references: [{to: mailing.subscribers, column: subscriber_id, on_delete: delete}]
"""
cross_members = sa.Table("x_members", sa.MetaData(), sa.Column("subscriber_id", sa.String(20), primary_key=True),
                         sa.Column("list_id", sa.Integer, primary_key=True, autoincrement=False))
CROSS_MEMBERS = [("a1", 1), ("a1", 2), ("a3", 1), ("k1", 1)]


@pytest.fixture
def cross(dbs, tmp_path):
    from include.retention.connections import ConnInfo
    from include.retention.runtime import Runtime

    mailing = make_engine(dbs["mailing"])
    cross_members.create(mailing)
    with mailing.begin() as conn:  # a1's two lists, a3's (kept with a3), k1's
        conn.execute(cross_members.insert(), [{"subscriber_id": s, "list_id": ls} for s, ls in CROSS_MEMBERS])
    mailing.dispose()
    conns = {"mailing_db": ConnInfo("sql", extra={"sqlalchemy_url": dbs["mailing"]}),
             "crm_db": ConnInfo("sql", extra={"sqlalchemy_url": dbs["crm"]})}
    opened = []

    def runtime(period: str, name: str = "gone") -> Runtime:
        text = CROSS_POLICY.replace("{name: gone, start: created_at, action: delete, period: P1D}",
                                    f"{{name: {name}, start: created_at, action: delete, period: {period}}}")
        assert "\n  crm:\n" in text
        text = text.replace("\n  crm:\n", "\n" + CROSS_MEMBERS_YAML + "  crm:\n")
        rt = Runtime(parse_policy(text, source=f"{period}.yaml"), conns.__getitem__, key=KEY)
        opened.append(rt)
        return rt

    yield runtime
    for rt in opened:
        rt.close()


def test_deletes_across_databases_are_compared_record_by_record(cross):
    """Old: 10 days, nothing due now; new: 1 day (renamed too). Newly deleted now: a1, a2, a4, a5 (a3 stays: its
    note 5 is held in the other database, and so is its list membership) and their notes 1, 2, 3, 6, 7, 8 exactly
    ('A1' and 'a1 ' are not a1's, whatever MariaDB's collation says; deals are nullified, not deleted), and a1's two
    list memberships in the subscribers' own database. In 30 days both maps delete everything but a3 and what is
    its: no difference then."""
    old, new = cross("P10D"), cross("P1D", name="expired")

    diff = diff_records(old.policy, new.policy, old.store, new.store, CROSS_NOW)

    assert diff["errors"] == []
    got = {(r["action"], r["horizon"], r["collection"]): (r["newly"], r["no_longer"]) for r in diff["collections"]}
    assert got == {("delete", 0, "mailing.subscribers"): (len(GONE_PARENTS), 0),
                   ("delete", 0, "crm.notes"): (len(GONE_NOTES), 0),
                   ("delete", 0, "mailing.list_members"): (2, 0)}
    assert diff["newly_affected"] == [{"horizon": 0, "records": 12}, {"horizon": 30, "records": 0}]


# ---- property: the diff is what the two maps' sweeps do --------------------------------------------------------

START = {"latest": LATEST, "earliest": EARLIEST, "open": "last_open_at"}
STAGES = {"delete": "action: delete, period: {p}", "lock": "action: lock, period: {p}",
          "anonymize": 'action: anonymize, period: {p}, mask: {{email: {{strategy: "null"}}}}',
          "anonymize_then_delete": 'stages: [{{action: anonymize, after: P6M, mask: {{email: {{strategy: "null"}}}}}}, '
                                   '{{action: delete, after: {p}}}]',
          "lock_then_delete": "stages: [{{action: lock, after: P6M}}, {{action: delete, after: {p}}}]"}


@st.composite
def data_maps(draw):
    """One subscriber rule (start, action, period, condition) and whether memberships have their own rule."""
    start, stages = draw(st.sampled_from(sorted(START))), draw(st.sampled_from(sorted(STAGES)))
    period = draw(st.sampled_from(["P12M", "P24M"] if stages.endswith("then_delete") else ["P1M", "P12M", "P24M"]))
    when = draw(st.sampled_from(["", "{column: country, equals: DE}"]))
    name = draw(st.sampled_from(["a", "b"]))
    cond = f", when: [{when}]" if when else ""
    text = policy_yaml(f"    - {{name: {name}, start: {START[start]}, {STAGES[stages].format(p=period)}{cond}}}")
    return text if draw(st.booleans()) else text.replace(
        "    - {name: left_lists, start: left_at, action: delete, period: P30D}\n", "    []\n").replace(
        "  rules:\n    []\n", "  rules: []\n")


days = st.one_of(st.none(), st.integers(0, 1100))
people = st.lists(st.tuples(days, days, st.sampled_from(["DE", "FR"]), st.booleans(), st.booleans(), st.booleans()),
                  min_size=1, max_size=8)


def sweep_effect(path, text: str, at: dt.datetime, ledger) -> dict[str, set]:
    """Run every rule of ``text`` at ``at`` on the copy ``path``; what it deleted and locked, by key."""
    engine = make_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        subs_before = {r.id: r.restricted_at for r in conn.execute(sa.select(subscribers))}
        plain_before = {r.id for r in conn.execute(sa.select(subscribers.c.id).where(
            subscribers.c.anonymized_at.is_(None)))}
        mems_before = {(r.subscriber_id, r.list_id) for r in conn.execute(sa.select(memberships))}
    pol = parse_policy(text, source="p.yaml")
    store = SqlStore("mailing", pol, engine, mask_key=KEY)
    for rid in pol.rule_ids():
        run_rule(pol, rid, store, ledger, RunRef("prop", rid), now=at)
    with engine.connect() as conn:
        subs_after = {r.id: r.restricted_at for r in conn.execute(sa.select(subscribers))}
        masked = {r.id for r in conn.execute(sa.select(subscribers.c.id).where(
            subscribers.c.anonymized_at.is_not(None)))} & plain_before
        mems_after = {(r.subscriber_id, r.list_id) for r in conn.execute(sa.select(memberships))}
    engine.dispose()
    return {"delete " + SUBS: set(subs_before) - set(subs_after), "delete " + MEMS: mems_before - mems_after,
            "lock " + SUBS: {i for i, r in subs_after.items() if r is not None and subs_before[i] is None},
            "anonymize " + SUBS: masked}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(old_text=data_maps(), new_text=data_maps(), rows=people, member_of=st.lists(st.tuples(
    st.integers(1, 8), st.integers(1, 3), st.one_of(st.none(), st.integers(0, 90))), max_size=10))
def test_the_diff_is_the_difference_of_what_the_two_sweeps_do(old_text, new_text, rows, member_of):
    """Any two data maps of this shape, any data: per action, horizon and collection, the diff's counts are the
    differences of the record sets that a real sweep under each map deletes, locks and anonymizes then."""
    import shutil
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base.db"
        engine = make_engine(f"sqlite:///{base}")
        md.create_all(engine)
        with engine.begin() as conn:
            conn.execute(subscribers.insert(), [
                {"id": i + 1, "email": f"p{i}@example.org", "subscribed_at": ago(40), "country": country,
                 "legal_hold": held, "anonymized_at": ago(0, -2) if masked else None,
                 "last_open_at": None if o is None else ago(0, -o), "last_click_at": None if c is None else ago(0, -c),
                 "restricted_at": ago(0, -1) if locked else None, "restriction_reason": "x" if locked else None}
                for i, (o, c, country, held, locked, masked) in enumerate(rows)])
            mems = {(s, ls): left for s, ls, left in member_of if s <= len(rows)}
            if mems:
                conn.execute(memberships.insert(), [
                    {"subscriber_id": s, "list_id": ls, "left_at": None if left is None else ago(0, -left)}
                    for (s, ls), left in mems.items()])
        engine.dispose()
        s_old = SqlStore("mailing", parse_policy(old_text, source="old.yaml"), make_engine(f"sqlite:///{base}"))
        s_new = SqlStore("mailing", parse_policy(new_text, source="new.yaml"), make_engine(f"sqlite:///{base}"))
        diff = diff_records(s_old.policy, s_new.policy, lambda _s: s_old, lambda _s: s_new, NOW)
        s_old.close()
        s_new.close()
        want = {}
        ledger = Ledger(make_engine(f"sqlite:///{Path(tmp) / 'ledger.db'}"), KEY)
        for h in (0, 30):
            effects = []
            for side, text in (("old", old_text), ("new", new_text)):
                copy = Path(tmp) / f"{side}-{h}.db"
                shutil.copy(base, copy)
                effects.append(sweep_effect(copy, text, NOW + dt.timedelta(days=h), ledger))
            for key in effects[0]:
                action, coll = key.split()
                pair = (len(effects[1][key] - effects[0][key]), len(effects[0][key] - effects[1][key]))
                if any(pair):
                    want[(action, h, coll)] = pair
        got = {(r["action"], r["horizon"], r["collection"]): (r["newly"], r["no_longer"]) for r in diff["collections"]}
        assert diff["errors"] == [] and got == want


# ---- references of several columns: accounts per tenant, contacts that go with their account ---------------------

TENANTS = """\
accounts:
  table: t_accounts
  primary_key: [tenant_id, id]
  columns: [tenant_id, id, closed_at]
  rules:
    - {{name: closed, start: closed_at, action: delete, period: {period}}}
"""
TENANT_CONTACTS = """\
contacts:
  table: t_contacts
  primary_key: id
  columns: [id, tenant_id, account_id, legal_hold]
  legal_hold: [{column: legal_hold, equals: true}]
  references:
    - {to: {system}.accounts, columns: [tenant_id, account_id], to_columns: [tenant_id, id], on_delete: delete}
"""
t_md = sa.MetaData()
t_accounts = sa.Table("t_accounts", t_md, sa.Column("tenant_id", sa.Integer, primary_key=True, autoincrement=False),
                      sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                      sa.Column("closed_at", sa.DateTime))
t_contacts = sa.Table("t_contacts", t_md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                      sa.Column("tenant_id", sa.Integer), sa.Column("account_id", sa.Integer),
                      sa.Column("legal_hold", sa.Boolean))
# (tenant, account, closed months ago); contacts (id, tenant, account, held): 6 is tenant 3's, whose account 1 does
# not exist (account 1 of tenants 1 and 2 is not its parent); 7 is held and keeps account (2, 1) and contact 3
ACCOUNTS = [(1, 1, 40), (1, 2, 10), (2, 1, 10), (2, 2, 40)]
CONTACTS = [(1, 1, 1, False), (2, 1, 2, False), (3, 2, 1, False), (4, 2, 2, False), (5, 1, 2, False),
            (6, 3, 1, False), (7, 2, 1, True)]


def tenant_text(period: str, contacts_system: str) -> str:
    contacts = TENANT_CONTACTS.replace("{system}", "crm")
    if contacts_system == "crm":
        return policy_text(sql_system("crm", "crm_db", TENANTS.format(period=period) + contacts),
                           defaults="{max_fraction: 1.0}")
    return policy_text(sql_system("crm", "crm_db", TENANTS.format(period=period)),
                       sql_system("other", "other_db", contacts), defaults="{max_fraction: 1.0}")


def seed_tenants(accounts_engine: sa.Engine, contacts_engine: sa.Engine) -> None:
    t_accounts.create(accounts_engine)
    t_contacts.create(contacts_engine)
    with accounts_engine.begin() as conn:
        conn.execute(t_accounts.insert(), [{"tenant_id": t, "id": i, "closed_at": ago(m)} for t, i, m in ACCOUNTS])
    with contacts_engine.begin() as conn:
        conn.execute(t_contacts.insert(), [{"id": i, "tenant_id": t, "account_id": a, "legal_hold": h}
                                           for i, t, a, h in CONTACTS])


# by hand: the old map (36 months) deletes accounts (1,1) and (2,2) with contacts 1 and 4; the new one (6 months)
# also (1,2) with contacts 2 and 5, not (2,1): its contact 7 is held (and so 3 stays with it)
TENANT_WANT = {("delete", 0, "crm.accounts"): (1, 0), ("delete", 30, "crm.accounts"): (1, 0)}


def test_references_of_several_columns_in_one_database(db_url):
    engine = make_engine(db_url)
    seed_tenants(engine, engine)
    pair = [SqlStore("crm", parse_policy(tenant_text(p, "crm"), source=f"{p}.yaml"), engine, mask_key=KEY)
            for p in ("P36M", "P6M")]
    diff = diff_records(pair[0].policy, pair[1].policy, lambda _s: pair[0], lambda _s: pair[1], NOW)
    got = {(r["action"], r["horizon"], r["collection"]): (r["newly"], r["no_longer"]) for r in diff["collections"]}
    assert diff["errors"] == []
    assert got == {**TENANT_WANT, ("delete", 0, "crm.contacts"): (2, 0), ("delete", 30, "crm.contacts"): (2, 0)}
    engine.dispose()


@pytest.mark.parametrize("kinds", [("sqlite", "mariadb"), ("postgresql", "sqlite")], ids=["sqlite-mariadb",
                                                                                         "postgresql-sqlite"])
def test_references_of_several_columns_across_databases(server_db, kinds):
    from include.retention.connections import ConnInfo
    from include.retention.runtime import Runtime

    urls = {"crm": server_db(kinds[0]), "other": server_db(kinds[1])}
    engines = {k: make_engine(u) for k, u in urls.items()}
    seed_tenants(engines["crm"], engines["other"])
    conns = {"crm_db": ConnInfo("sql", extra={"sqlalchemy_url": urls["crm"]}),
             "other_db": ConnInfo("sql", extra={"sqlalchemy_url": urls["other"]})}
    old, new = (Runtime(parse_policy(tenant_text(p, "other"), source=f"{p}.yaml"), conns.__getitem__, key=KEY)
                for p in ("P36M", "P6M"))
    diff = diff_records(old.policy, new.policy, old.store, new.store, NOW)
    old.close()
    new.close()
    got = {(r["action"], r["horizon"], r["collection"]): (r["newly"], r["no_longer"]) for r in diff["collections"]}
    assert diff["errors"] == []
    assert got == {**TENANT_WANT, ("delete", 0, "other.contacts"): (2, 0), ("delete", 30, "other.contacts"): (2, 0)}
    for e in engines.values():
        e.dispose()
