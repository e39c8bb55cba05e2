"""One person per request (issue 21 item 1): a request's identities resolve to one person before anything is read
or changed, through the task bodies of every right on SQLite, PostgreSQL and MariaDB.

Person A (the proven e-mail) and person B live in a CRM (customers, their orders, accounts carrying a customer
reference) and a mailing list (subscribers and their clicks). A request mixing A's e-mail with B's phone or B's
customer reference stops before anything is read or changed (every row of A and B byte for byte, no package, no
suppression entry), closed as ``conflict`` with a receipt and a ledger entry of kinds and counts; identities that
one record carries together, or that a declared reference joins, proceed and act on exactly A's rows.
"""

from __future__ import annotations

import json
from typing import NamedTuple

import pytest
import sqlalchemy as sa

from include.retention.connections import make_engine
from include.retention.identity import normalise
from include.retention.ledger import Ledger
from include.retention.policy import load_policy
from include.retention.registry import INTAKE_VERIFIED, Identities, NewRequest, Registry
from include.retention.requests import person
from include.retention.stores.sql import SqlStore
from tests.conftest import airflow_uri

pytestmark = pytest.mark.integration

SMS_OPTINS = """\
      sms_optins:
        table: sms_optins
        primary_key: id
        columns: [id, customer_id, phone]
        identities: {phone: phone}
        references: [{to: crm.customers, column: customer_id, on_delete: delete}]
"""
POLICY = """\
version: 1
defaults: {max_fraction: 1.0}
systems:
  crm:
    kind: sql
    connection: crm_db
    collections:
      customers:
        table: customers
        primary_key: id
        columns: [id, email, phone, customer_ref, marketing_ok, note]
        identities: {email: email, phone: phone, customer_ref: customer_ref}
        consent: [{name: marketing, column: marketing_ok, withdrawn: false}]
      orders:
        table: orders
        primary_key: id
        columns: [id, customer_id, total]
        references: [{to: crm.customers, column: customer_id, on_delete: delete}]
      accounts:
        table: accounts
        primary_key: [tenant, number]
        columns: [tenant, number, customer_id, customer_ref]
        identities: {customer_ref: customer_ref}
        references: [{to: crm.customers, column: customer_id, on_delete: delete}]
  mailing:
    kind: sql
    connection: mailing_db
    collections:
      subscribers:
        table: subscribers
        primary_key: id
        columns: [id, email, phone, unsubscribed_at]
        identities: {email: email, phone: phone}
        consent: [{name: newsletter, column: unsubscribed_at, withdrawn: now}]
{SMS_OPTINS}      clicks:
        table: clicks
        primary_key: id
        columns: [id, subscriber_id, url]
        references: [{to: mailing.subscribers, column: subscriber_id, on_delete: delete}]
""".replace("{SMS_OPTINS}", SMS_OPTINS)

md = sa.MetaData()
customers = sa.Table("customers", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                     sa.Column("email", sa.String(200)), sa.Column("phone", sa.String(40)),
                     sa.Column("customer_ref", sa.String(40)), sa.Column("marketing_ok", sa.Boolean),
                     sa.Column("note", sa.String(100)))
orders = sa.Table("orders", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                  sa.Column("customer_id", sa.Integer), sa.Column("total", sa.Integer))
accounts = sa.Table("accounts", md, sa.Column("tenant", sa.String(20), primary_key=True),
                    sa.Column("number", sa.Integer, primary_key=True, autoincrement=False),
                    sa.Column("customer_id", sa.Integer), sa.Column("customer_ref", sa.String(40)))
subscribers = sa.Table("subscribers", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                       sa.Column("email", sa.String(200)), sa.Column("phone", sa.String(40)),
                       sa.Column("unsubscribed_at", sa.DateTime))
sms_optins = sa.Table("sms_optins", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                      sa.Column("customer_id", sa.Integer), sa.Column("phone", sa.String(40)))
clicks = sa.Table("clicks", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                  sa.Column("subscriber_id", sa.Integer), sa.Column("url", sa.String(100)))

A = {"email": "Ann.Smith@Example.org", "phone": "+44 20 7946 0001", "customer_ref": "C-1001"}
B = {"email": "bob.jones@example.org", "phone": "+44 20 7946 0002", "customer_ref": "C-2002"}
# D: a customer row with an e-mail only, and an account (carrying D's customer reference) that references it
D = {"email": "dee@example.org", "customer_ref": "C-4004"}
# E shares a family phone with A's subscription; E's account (E's customer reference) points at E's customer row
SHARED_PHONE, E_REF = "+44 20 7946 0555", "C-5005"
# F: a customer row with an e-mail only; F's phone on an SMS opt-in in the other system, pointing at that row
F = {"email": "fay@example.org", "phone": "+44 20 7946 0666"}
# the request's spelling: other case, spaces, another phone format
ASKED_A = {"email": " ann.smith@EXAMPLE.org ", "phone": "0044 20 7946 0001", "customer_ref": " C-1001"}
MIXES = {"b-phone": {"email": ASKED_A["email"], "phone": B["phone"]},
         "b-customer-ref": {"email": ASKED_A["email"], "customer_ref": B["customer_ref"]}}

# rows: person -> table -> ids
ROWS = {"A": {"customers": [1], "orders": [10, 11], "accounts": [("t1", 1)], "subscribers": [1], "clicks": [100, 101]},
        "B": {"customers": [2], "orders": [20], "accounts": [("t1", 2)], "subscribers": [2], "clicks": [200]},
        "D": {"customers": [4], "orders": [40], "accounts": [("t2", 1)]},
        "F": {"customers": [6], "sms_optins": [1]}}


MAILING_TABLES = {"subscribers", "sms_optins", "clicks"}


class Dbs(NamedTuple):
    """The CRM's and the mailing list's engines (one database on a server; two SQLite files, as two SQLite
    writers on one file would wait for each other in a cascade across the systems)."""

    crm: sa.Engine
    mailing: sa.Engine

    def of(self, table: sa.Table) -> sa.Engine:
        return self.mailing if table.name in MAILING_TABLES else self.crm


def create(dbs: Dbs) -> None:
    for engine in {id(e): e for e in dbs}.values():
        md.drop_all(engine)
        md.create_all(engine)


def seed(dbs: Dbs) -> None:
    create(dbs)
    with dbs.crm.begin() as conn:
        conn.execute(customers.insert(), [
            {"id": 1, "email": A["email"], "phone": A["phone"], "customer_ref": A["customer_ref"], "marketing_ok": True,
             "note": "a"},
            {"id": 2, "email": B["email"], "phone": B["phone"], "customer_ref": B["customer_ref"], "marketing_ok": True,
             "note": "b"},
            # a lookalike of A (accent): somebody else
            {"id": 3, "email": "ann.smith@exämple.org", "phone": None, "customer_ref": None, "marketing_ok": True,
             "note": "lookalike"},
            {"id": 4, "email": D["email"], "phone": None, "customer_ref": None, "marketing_ok": True, "note": "d"},
            {"id": 5, "email": "eve@example.org", "phone": SHARED_PHONE, "customer_ref": None, "marketing_ok": True,
             "note": "e"},
            {"id": 6, "email": F["email"], "phone": None, "customer_ref": None, "marketing_ok": True, "note": "f"}])
        conn.execute(orders.insert(), [{"id": i, "customer_id": c, "total": i}
                                       for i, c in ((10, 1), (11, 1), (20, 2), (30, 3), (40, 4))])
        conn.execute(accounts.insert(), [
            {"tenant": "t1", "number": 1, "customer_id": 1, "customer_ref": A["customer_ref"]},
            {"tenant": "t1", "number": 2, "customer_id": 2, "customer_ref": B["customer_ref"]},
            {"tenant": "t2", "number": 1, "customer_id": 4, "customer_ref": D["customer_ref"]},
            {"tenant": "t2", "number": 2, "customer_id": 5, "customer_ref": E_REF}])
    with dbs.mailing.begin() as conn:
        conn.execute(sms_optins.insert(), [{"id": 1, "customer_id": 6, "phone": "0044 (20) 7946-0666"},
                                           {"id": 2, "customer_id": 2, "phone": B["phone"]}])
        conn.execute(subscribers.insert(), [{"id": 1, "email": A["email"], "phone": SHARED_PHONE},
                                            {"id": 2, "email": B["email"].upper(), "phone": B["phone"]},
                                            {"id": 3, "email": "ann.smith@exämple.org", "phone": None}])
        conn.execute(clicks.insert(), [{"id": 100, "subscriber_id": 1, "url": "u"},
                                       {"id": 101, "subscriber_id": 1, "url": "v"},
                                       {"id": 200, "subscriber_id": 2, "url": "w"},
                                       {"id": 300, "subscriber_id": 3, "url": "x"}])


def dump(dbs: Dbs) -> dict[str, list[tuple]]:
    """Every row of every table, in the database's own representation."""
    out = {}
    for t in md.sorted_tables:
        with dbs.of(t).connect() as conn:
            out[t.name] = sorted((tuple(r) for r in conn.execute(sa.select(t))), key=repr)
    return out


def ids(dbs: Dbs) -> dict[str, set]:
    out = {}
    for t in md.sorted_tables:
        pk = list(t.primary_key.columns)
        with dbs.of(t).connect() as conn:
            out[t.name] = {tuple(r) if len(pk) > 1 else r[0] for r in conn.execute(sa.select(*pk))}
    return out


def without(before: dict[str, set], *people: str) -> dict[str, set]:
    return {t: keys - {k for p in people for k in ROWS[p].get(t, [])} for t, keys in before.items()}


@pytest.fixture
def world(db_url, tmp_path, monkeypatch):
    if db_url.startswith("sqlite"):
        mailing_url = f"sqlite:///{tmp_path / 'mailing.db'}"
        dbs = Dbs(make_engine(db_url), make_engine(mailing_url))
    else:
        mailing_url, dbs = db_url, Dbs(*[make_engine(db_url)] * 2)
    seed(dbs)
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(POLICY)
    monkeypatch.setenv("RETENTION_POLICY_PATH", str(policy_file))
    monkeypatch.setenv("RETENTION_VERIFY_IDENTITY", "access,rectify,erase")
    for conn_id, url in (("CRM_DB", db_url), ("MAILING_DB", mailing_url)):
        conn = (json.dumps({"conn_type": "sqlite", "host": url.removeprefix("sqlite:///")})
                if url.startswith("sqlite") else airflow_uri(url))
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id}", conn)
    ledger_path = tmp_path / "ledger.db"
    monkeypatch.setenv("AIRFLOW_CONN_RETENTION_LEDGER", json.dumps({"conn_type": "sqlite", "host": str(ledger_path)}))
    import os

    secret = os.environ["RETENTION_HMAC_KEY"].encode()
    ledger = Ledger(make_engine(f"sqlite:///{ledger_path}"), secret)
    registry = Registry(ledger.engine, secret)
    registry.ensure_schema()
    yield {"engine": dbs, "ledger": ledger, "registry": registry, "policy": load_policy(policy_file)}
    for engine in dbs:
        engine.dispose()


def request(world, identities: dict[str, str], mode: str = "erase", decision: str | None = "approved",
            dry_run: bool = False, **details) -> str:
    """A request registered and started as register() leaves it, the identity check answered with ``decision``."""
    registry = world["registry"]
    rid = registry.register(NewRequest(Identities(identities), mode=mode, dry_run=dry_run), dag_id="t", run_id="r")
    registry.start(rid)
    if details:
        registry.update_details(rid, **details)
    if decision:
        registry.update_details(rid, identity_check={"decision": decision})
    return rid


def stores(world) -> dict[str, SqlStore]:
    return {name: SqlStore(name, world["policy"], getattr(world["engine"], name)) for name in ("crm", "mailing")}


def resolve(world, identities: dict[str, str]) -> person.Resolution:
    s = stores(world)
    return person.resolve(world["policy"], s.__getitem__, {k: normalise(k, v) for k, v in identities.items()})


def erase(world, rid: str) -> list[str]:
    """erasure_request's bodies after register: resolve, the gate after the identity check, then each system."""
    from include.retention.airflow import erasure_tasks, identity_check

    summary = erasure_tasks.resolve([rid])
    assert "@" not in summary and "7946" not in summary and "C-" not in summary  # kinds and counts only
    proceed = identity_check.gate([rid], "t", "r")
    for system in erasure_tasks.systems() if proceed else []:
        erasure_tasks.discover(proceed, system)
        erasure_tasks.act(proceed, system)
        erasure_tasks.verify(proceed, system)
        erasure_tasks.record(proceed, system, "t", "r")
    if proceed:
        erasure_tasks.finalize(proceed, erasure_tasks.systems())
    return proceed


def suppressed(world) -> int:
    with world["registry"].engine.connect() as conn:
        return conn.execute(sa.text("SELECT COUNT(*) FROM suppression_list")).scalar()


def assert_stopped(world, rid: str, before: dict) -> None:
    registry = world["registry"]
    assert dump(world["engine"]) == before  # every row of A and B byte for byte
    assert registry.get(rid)["status"] == "conflict"
    assert suppressed(world) == 0
    receipt = registry.receipt(rid)
    assert receipt["verification"] == person.STOPPED_VERIFICATION
    assert receipt["person"]["decision"] == "stopped" and receipt["person"]["dropped"] == []
    assert all(s["collections"] == {} for s in receipt["systems"].values())
    entries = [e for e in world["ledger"].rows() if e["request_id"] == rid]
    assert [(e["action"], e["outcome"], e["count"]) for e in entries] == [("identity_resolution", "conflict", 0)]
    text = json.dumps(receipt) + json.dumps([e["details"] for e in entries], default=str)
    for who in (A, B):
        for value in who.values():
            assert value not in text and normalise("email", value) not in text


# ---- resolution ------------------------------------------------------------------------------------------------
def test_resolution_per_kind(world):
    linked = resolve(world, ASKED_A)
    assert linked.status == {"email": "found", "phone": "linked", "customer_ref": "linked"} and not linked.conflict
    assert linked.counts["email"] == {"crm.customers": 1, "mailing.subscribers": 1}
    assert linked.counts["customer_ref"] == {"crm.customers": 1, "crm.accounts": 1}
    phone = resolve(world, MIXES["b-phone"])
    assert phone.status == {"email": "found", "phone": "conflicting"} and phone.act_kinds == ["email"]
    assert "another email" in phone.why["phone"]
    ref = resolve(world, MIXES["b-customer-ref"])
    assert ref.status == {"email": "found", "customer_ref": "conflicting"}
    # joined by a reference (an account carrying D's customer reference points at D's customer row)
    assert resolve(world, D).status == {"email": "found", "customer_ref": "linked"}
    # somebody else's record never links: E's reference reaches E's customer row, which shares a phone with A's
    # subscription but holds another e-mail
    shared = resolve(world, {"email": A["email"], "phone": SHARED_PHONE, "customer_ref": E_REF})
    assert shared.status == {"email": "found", "phone": "conflicting", "customer_ref": "conflicting"}
    assert "no record or reference" in shared.why["customer_ref"]
    # across systems: F's SMS opt-in (mailing) points at F's customer row (CRM)
    assert resolve(world, F).status == {"email": "found", "phone": "linked"}
    # found nowhere: harmless
    nowhere = resolve(world, {"email": A["email"], "phone": "+1 555 0100 999"})
    assert nowhere.status == {"email": "found", "phone": "not found"} and not nowhere.conflict
    # the proven e-mail found nowhere: another identity found is tied to nothing proven
    unproven = resolve(world, {"email": "nobody@example.org", "phone": A["phone"]})
    assert unproven.status == {"email": "not found", "phone": "conflicting"}
    assert "no record or reference" in unproven.why["phone"]
    # without an e-mail the phone is the proven identity
    assert resolve(world, {"phone": B["phone"], "customer_ref": B["customer_ref"]}).proven == "phone"
    summary = phone.summary()
    assert "CONFLICT" in summary and all(v not in summary for v in (*A.values(), *B.values()))


# ---- erasure -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mix", sorted(MIXES))
def test_mixed_erasure_stops_before_anything_changes(world, mix):
    before = dump(world["engine"])
    rid = request(world, MIXES[mix], decision="not required")  # nobody at an identity check: stopped
    assert erase(world, rid) == []
    assert_stopped(world, rid, before)


def test_mixed_erasure_never_acts_on_all_even_when_the_tasks_are_called(world):
    from include.retention.airflow import erasure_tasks

    before = dump(world["engine"])
    rid = request(world, MIXES["b-phone"], decision="verified at intake")
    for system in ("crm", "mailing"):
        with pytest.raises(person.Unresolved, match="more than one person"):
            erasure_tasks.act([rid], system)
    assert dump(world["engine"]) == before and suppressed(world) == 0


@pytest.mark.parametrize("mix", sorted(MIXES))
def test_mixed_erasure_approved_acts_on_the_linked_identities_only(world, mix):
    before = ids(world["engine"])
    rid = request(world, MIXES[mix], decision="approved")
    assert erase(world, rid) == [rid]
    assert ids(world["engine"]) == without(before, "A")  # exactly A's rows gone, B's all there
    registry = world["registry"]
    assert registry.get(rid)["status"] == "complete"
    receipt = registry.receipt(rid)
    dropped = [k for k in MIXES[mix] if k != "email"]
    assert receipt["person"]["decision"] == person.LINKED_ONLY and receipt["person"]["dropped"] == dropped
    assert suppressed(world) == 1  # A's e-mail only: never B's phone or reference
    assert registry.suppression.contains("email", A["email"]) and not registry.suppression.contains("phone", B["phone"])


@pytest.mark.parametrize("who", ["A", "D", "F"])
def test_linked_erasure_acts_on_exactly_the_persons_rows(world, who):
    before = ids(world["engine"])
    asked = {"A": ASKED_A, "D": D, "F": F}[who]
    rid = request(world, asked)
    assert erase(world, rid) == [rid]
    assert ids(world["engine"]) == without(before, who)
    receipt = world["registry"].receipt(rid)
    assert receipt["status"] == "complete" and "conflict" not in receipt["person"]
    last = [k for k in asked if k != "email"][-1]
    assert world["registry"].suppression.contains(last, asked[last])


def test_intake_batch_stops_only_the_conflicting_request(world):
    from include.retention.airflow import erasure_tasks

    registry = world["registry"]
    mixed, linked = registry.register_many([NewRequest(Identities(MIXES["b-customer-ref"])),
                                            NewRequest(Identities(D))], source=INTAKE_VERIFIED)
    before = ids(world["engine"])
    claimed = erasure_tasks.claim(10, "erasure_intake", "i1")
    assert claimed == [linked]
    assert registry.get(mixed)["status"] == "conflict"
    for system in erasure_tasks.systems():
        erasure_tasks.discover(claimed, system)
        erasure_tasks.act(claimed, system)
        erasure_tasks.verify(claimed, system)
        erasure_tasks.record(claimed, system, "erasure_intake", "i1")
    erasure_tasks.finalize(claimed, erasure_tasks.systems())
    assert ids(world["engine"]) == without(before, "D")
    assert registry.receipt(mixed)["verification"] == person.STOPPED_VERIFICATION

    # handed to erasure_request by id, the stopped request waits for a person even though verified at intake;
    # Approve acts with the linked identities only: A's rows go, B's stay
    from include.retention.airflow import identity_check

    assert erasure_tasks.register({"request_id": mixed}, "erasure_request", "r2") == mixed
    assert identity_check.needs_check([mixed]) is True
    identity_check.record_decision([mixed], {"chosen_options": ["Approve"]})
    assert erase(world, mixed) == [mixed]
    assert ids(world["engine"]) == without(before, "D", "A")
    assert registry.get(mixed)["status"] == "complete"
    assert registry.receipt(mixed)["person"]["dropped"] == ["customer_ref"]


# ---- access, rectify, withdraw -----------------------------------------------------------------------------------
def access_act(world, rid: str) -> dict:
    from include.retention.airflow import access_tasks, erasure_tasks

    erasure_tasks.resolve([rid])
    out = access_tasks.act(rid, "t", "r")
    access_tasks.finalize(rid, True, "t", "r")
    return out


@pytest.mark.parametrize("mode", ["access", "rectify", "withdraw"])
@pytest.mark.parametrize("mix", sorted(MIXES))
def test_mixed_access_rectify_withdraw_stop_before_anything_is_read_or_changed(world, mix, mode):
    before = dump(world["engine"])
    extra = {"new_values": {"email": "new@example.org"}} if mode == "rectify" else {}
    rid = request(world, MIXES[mix], mode=mode, decision="not required", dry_run=mode == "access",
                  format="human", **extra)
    assert access_act(world, rid) == {"stopped": "conflict"}
    assert_stopped(world, rid, before)
    assert "package" not in world["registry"].details(rid)  # no package built


def test_linked_access_reads_exactly_the_persons_rows(world):
    rid = request(world, ASKED_A, mode="access", decision="not required", dry_run=True, format="human")
    out = access_act(world, rid)
    assert out["rows"] == 1 + 2 + 1 + 1 + 2  # customer, orders, account, subscriber, clicks
    counts = world["registry"].systems.of(rid)["crm"]["counts"]["collections"]
    assert counts == {"crm.customers": {"rows": 1}, "crm.orders": {"rows": 2}, "crm.accounts": {"rows": 1}}


def test_mixed_access_approved_reads_the_linked_identities_only(world):
    rid = request(world, MIXES["b-phone"], mode="access", decision="approved", dry_run=True, format="human")
    out = access_act(world, rid)
    assert out["rows"] == 7  # A's rows only (B's phone dropped)
    assert world["registry"].receipt(rid)["person"]["dropped"] == ["phone"]


def test_linked_rectify_and_withdraw_change_exactly_the_persons_rows(world):
    before = dump(world["engine"])
    rid = request(world, {"email": ASKED_A["email"], "phone": ASKED_A["phone"]}, mode="rectify",
                  decision="approved", new_values={"phone": "+44 20 7946 0999"})
    access_act(world, rid)
    rid = request(world, {"email": ASKED_A["email"], "customer_ref": ASKED_A["customer_ref"]}, mode="withdraw",
                  decision="approved", consents=None)
    access_act(world, rid)
    after = dump(world["engine"])
    changed = {t: sorted(set(after[t]) - set(before[t]), key=repr) for t in before if after[t] != before[t]}
    assert set(changed) == {"customers", "subscribers"}
    assert [r[0] for r in changed["customers"]] == [1] and changed["customers"][0][2] == "+44 20 7946 0999"
    assert changed["customers"][0][4] in (False, 0)
    assert [r[0] for r in changed["subscribers"]] == [1] and changed["subscribers"][0][3] is not None


# ---- the decision on its own: records, what they carry, the references joining them ----------------------------
def decide(ids: dict[str, str], records: dict[str, tuple[set[str], set[str]]], edges=()):
    recs = {("c", name): (frozenset(carried), frozenset(other)) for name, (carried, other) in records.items()}
    return person._decide(ids, recs, [(("c", a), ("c", b)) for a, b in edges])


def test_decide_never_links_through_somebody_elses_record():
    ids = {"email": "a", "phone": "p", "customer_ref": "c"}
    # A's row -> B's row (another e-mail) <- a row carrying the reference: B's row must not bridge
    res = decide(ids, {"mine": ({"email"}, set()), "bs": ({"phone"}, {"email"}), "ref": ({"customer_ref"}, set())},
                 edges=[("mine", "bs"), ("ref", "bs")])
    assert res.status == {"email": "found", "phone": "conflicting", "customer_ref": "conflicting"}
    # the same chain through a row of nobody in particular links
    res = decide(ids, {"mine": ({"email"}, set()), "mid": ({"phone"}, set()), "ref": ({"customer_ref"}, set())},
                 edges=[("mine", "mid"), ("ref", "mid")])
    assert res.status == {"email": "found", "phone": "linked", "customer_ref": "linked"}


def test_decide_needs_every_record_of_an_identity_tied_to_the_proven_one():
    ids = {"email": "a", "phone": "p"}
    # the phone on A's row and on a row of somebody without an e-mail (a family phone): not A's to act on
    res = decide(ids, {"mine": ({"email", "phone"}, set()), "family": ({"phone"}, set())})
    assert res.status == {"email": "found", "phone": "conflicting"} and res.act_kinds == ["email"]
    res = decide(ids, {"family": ({"phone"}, set()), "mine": ({"email", "phone"}, set())})
    assert res.status["phone"] == "conflicting"
    # a value of a kind found nowhere says nothing about anybody; the proven identity's own rows are A's
    res = decide({"email": "a", "phone": "p", "customer_ref": "x"},
                 {"mine": ({"email"}, {"phone", "customer_ref"}), "ph": ({"phone"}, {"customer_ref"})},
                 edges=[("ph", "mine")])
    assert res.status == {"email": "found", "phone": "linked", "customer_ref": "not found"}


# ---- through the index (``lookup: indexed``, ADR 0022) ---------------------------------------------------------------
INDEXED_POLICY = (POLICY
                  .replace("identities: {email: email, phone: phone, customer_ref: customer_ref}",
                           "identities: {email: {column: email, lookup: indexed}, phone: {column: phone, lookup: "
                           "indexed}, customer_ref: {column: customer_ref, lookup: indexed}}")
                  .replace("identities: {customer_ref: customer_ref}",
                           "identities: {customer_ref: {column: customer_ref, lookup: indexed}}")
                  .replace("identities: {email: email, phone: phone}",
                           "identities: {email: {column: email, lookup: indexed}, phone: {column: phone, lookup: "
                           "indexed}}")
                  .replace("identities: {phone: phone}", "identities: {phone: {column: phone, lookup: indexed}}"))


def test_resolution_through_the_index_reads_candidates_and_decides_as_the_scan(world, monkeypatch):
    """Every identity column indexed: resolving a request reads only the rows carrying a requested identity (or
    not digested yet), never a whole table, and decides exactly as the full scan; rows added after the backfill
    (no digest yet) included."""
    from include.retention.policy import parse_policy
    from include.retention.stores import sql_index

    indexed = parse_policy(INDEXED_POLICY, source="indexed-policy.yaml")
    for system in ("crm", "mailing"):
        engine = getattr(world["engine"], system)
        with engine.begin() as conn:
            for coll in indexed.systems[system].collections.values():
                for _kind, field in coll.identity_fields():
                    for statement in sql_index.ddl(engine.dialect.name, coll.table, field.column, coll.key_columns()):
                        conn.exec_driver_sql(statement)
        store = SqlStore(system, indexed, engine)
        for name in indexed.systems[system].collections:
            if store.indexed_fields(name):
                store.backfill_index(name)
    with world["engine"].crm.begin() as conn:  # after the backfill: another row of A's, B's phone on a new row
        conn.execute(accounts.insert().values(tenant="t3", number=1, customer_id=1, customer_ref=" C-1001 "))
        conn.execute(customers.insert().values(id=7, email="gus@example.org", phone=B["phone"], note="g"))

    def resolved(policy, identities):
        s = {name: SqlStore(name, policy, getattr(world["engine"], name)) for name in ("crm", "mailing")}
        return person.resolve(policy, s.__getitem__, {k: normalise(k, v) for k, v in identities.items()})

    asked = [ASKED_A, *MIXES.values(), D, F, {"email": A["email"], "phone": SHARED_PHONE, "customer_ref": E_REF},
             {"email": "nobody@example.org", "phone": A["phone"]},
             {"phone": B["phone"], "customer_ref": B["customer_ref"]}]
    scanned = [resolved(world["policy"], ids) for ids in asked]

    def no_full_read(self, collection_name, *, owned_only):
        raise AssertionError(f"{collection_name} read in full")

    from include.retention.stores.sql_subjects import SqlSubjects

    monkeypatch.setattr(SqlSubjects, "_scan", no_full_read)
    assert [resolved(indexed, ids) for ids in asked] == scanned
    assert scanned[0].counts["customer_ref"] == {"crm.customers": 1, "crm.accounts": 2}
    assert scanned[-1].counts["phone"]["crm.customers"] == 2  # B's row and Gus's, added after the backfill
