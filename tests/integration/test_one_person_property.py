"""Property: over generated people (each with some of e-mail, phone, customer reference, spelled with other case,
spaces, NFD and phone formats; lookalikes that are different people; some sharing a value with another person,
e.g. a family phone, others nothing) and generated identity mixes, resolution says conflict exactly when the mix
spans two people: an identity found is held by somebody the proven identity does not belong to ("nobody" when the
proven identity is found nowhere). An erasure it allows deletes rows of the proven identity's holder only (SQLite,
the stores' own scans and erase)."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from include.retention.connections import make_engine
from include.retention.identity import normalise
from include.retention.policy import load_policy
from include.retention.requests import person
from include.retention.requests.scanner import SubjectScanner
from include.retention.stores.base import Subject
from include.retention.stores.sql import SqlStore
from tests.conftest import KEY
from tests.integration.test_one_person import (
    POLICY,
    SMS_OPTINS,
    Dbs,
    accounts,
    clicks,
    create,
    customers,
    ids,
    orders,
    subscribers,
)

pytestmark = pytest.mark.integration

KINDS = ("email", "phone", "customer_ref")
# per kind, values that normalise differently (lookalikes: an accent, a Cyrillic letter, case in a reference);
# the last one of each pool belongs to nobody
POOLS = {
    "email": ["ann@example.org", "änn@example.org", "\u0430nn@example.org", "ann@example.com", "ann@example.net"],
    "phone": ["+44 20 7946 0001", "+44 20 7946 0010", "+44 20 7946 0100", "+44 20 7946 1000", "+44 20 7946 0002"],
    "customer_ref": ["C-1", "c-1", "C-l", "C-1A", "C-9"],
}
NOBODY = 4


def spell(kind: str, value: str, variant: int) -> str:
    """Another spelling of the same identity (``normalise`` gives the same string)."""
    if kind == "email":
        value = [value, value.upper(), f"  {value} ", unicodedata.normalize("NFD", value.title())][variant % 4]
    elif kind == "phone":
        digits = value.removeprefix("+")
        value = [value, "00" + digits, f"+{digits[:2]} ({digits[2:4]}) {digits[4:8]}-{digits[8:]}", f" {value}"][
            variant % 4]
    else:
        value = [value, f" {value}", f"{value}  ", value][variant % 4]
    return value


people_st = st.lists(
    st.fixed_dictionaries({
        "kinds": st.sets(st.sampled_from(KINDS), min_size=1),
        "ref_on_account": st.booleans(),  # the reference only on an account pointing at the customer row
        "subscribed": st.booleans(),
        "variant": st.integers(0, 3),
        # per kind, the index of another person whose value this person shares (used when it is an earlier one)
        "shares": st.fixed_dictionaries({k: st.one_of(st.none(), st.integers(0, 3)) for k in KINDS}),
    }), min_size=1, max_size=4)
# per kind: absent, a person's index, or NOBODY
mix_st = st.fixed_dictionaries({k: st.one_of(st.none(), st.integers(0, NOBODY)) for k in KINDS}).filter(
    lambda m: any(v is not None for v in m.values()))


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    where = tmp_path_factory.mktemp("prop")
    dbs = Dbs(make_engine(f"sqlite:///{where / 'crm.db'}"), make_engine(f"sqlite:///{where / 'mailing.db'}"))
    yield dbs
    for e in dbs:
        e.dispose()


def value_index(people: list[dict], i: int, kind: str) -> int:
    """Which pool value person ``i`` holds for ``kind``: their own, or an earlier person's they share."""
    j = people[i]["shares"][kind]
    return j if j is not None and j < i else i


def holders(people: list[dict], kind: str, index: int | None) -> set[int]:
    return {i for i, p in enumerate(people) if index is not None and kind in p["kinds"]
            and value_index(people, i, kind) == index}


def seed(dbs: Dbs, people: list[dict]) -> dict[str, dict]:
    """Rows per person; returns table -> key -> person index."""
    create(dbs)
    owner: dict[str, dict] = {t: {} for t in ("customers", "orders", "accounts", "subscribers", "clicks",
                                             "sms_optins")}
    with dbs.crm.begin() as crm, dbs.mailing.begin() as mailing:
        for i, p in enumerate(people):
            v = {k: spell(k, POOLS[k][value_index(people, i, k)], p["variant"] + j) for j, k in enumerate(KINDS)
                 if k in p["kinds"]}
            on_customer = {k: v.get(k) for k in KINDS}
            if p["ref_on_account"] and len(p["kinds"]) > 1:
                on_customer["customer_ref"] = None
            crm.execute(customers.insert().values(id=i + 1, **on_customer, marketing_ok=True, note=str(i)))
            owner["customers"][i + 1] = i
            crm.execute(orders.insert().values(id=10 * (i + 1), customer_id=i + 1, total=1))
            owner["orders"][10 * (i + 1)] = i
            if "customer_ref" in v:
                crm.execute(accounts.insert().values(tenant="t", number=i + 1, customer_id=i + 1,
                                                      customer_ref=spell("customer_ref", v["customer_ref"], 1)))
                owner["accounts"][("t", i + 1)] = i
            if p["subscribed"] and ("email" in v or "phone" in v):
                mailing.execute(subscribers.insert().values(id=i + 1, email=v.get("email"), phone=v.get("phone")))
                owner["subscribers"][i + 1] = i
                mailing.execute(clicks.insert().values(id=100 * (i + 1), subscriber_id=i + 1, url="u"))
                owner["clicks"][100 * (i + 1)] = i
    return owner


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(people=people_st, mix=mix_st, variant=st.integers(0, 3))
def test_conflict_exactly_when_the_mix_spans_two_people(engine, tmp_path, people, mix, variant):
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(POLICY.replace(SMS_OPTINS, ""))  # no cascade across systems: one store at a time
    policy = load_policy(policy_file)
    owner_of_row = seed(engine, people)
    stores = {name: SqlStore(name, policy, getattr(engine, name), mask_key=KEY) for name in ("crm", "mailing")}

    asked = {k: spell(k, POOLS[k][who], variant) for k, who in mix.items() if who is not None}
    res = person.resolve(policy, stores.__getitem__, {k: normalise(k, v) for k, v in asked.items()})
    proven = next(k for k in KINDS if k in asked)
    assert res.proven == proven
    proven_holders = holders(people, proven, mix[proven])
    spans_two = any(holders(people, k, mix[k]) - proven_holders for k in asked if k != proven)
    assert res.conflict == spans_two, (people, mix, res.status)
    for k in asked:
        assert (res.status[k] == person.NOT_FOUND) == (not holders(people, k, mix[k]))
    if res.conflict:
        return
    # an allowed erasure deletes rows of exactly one person: the proven identity's owner
    before = ids(engine)
    subject = [Subject("r", {k: normalise(k, asked[k]) for k in res.act_kinds})]
    for store in stores.values():
        SubjectScanner(policy, store).act(subject, "erase", dry_run=False)
    after = ids(engine)
    gone = {owner_of_row[t][k] for t in before for k in before[t] - after[t]}
    assert gone <= proven_holders, (people, mix, gone)
    if proven != "customer_ref":
        assert not {i + 1 for i in proven_holders} & after["customers"]  # the proven identity's customer rows went
    for store in stores.values():
        store.close()
