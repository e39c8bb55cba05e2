"""Corrections that cannot merge two people or half-apply (include/retention/requests/correction.py), on SQLite,
PostgreSQL and MariaDB (default collation): another person's address in any spelling is refused, a value that does
not fit a column of either system is refused before the first change, held and foreign-locked rows are kept as
exceptions."""

from __future__ import annotations

import datetime as dt
import json
import unicodedata
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from include.retention.connections import make_engine
from include.retention.demo import schema
from include.retention.identity import normalise
from include.retention.policy import parse_policy
from include.retention.requests.correction import Correction, CorrectionRefused
from include.retention.requests.receipts import build_receipt, render_markdown
from include.retention.stores.base import RESTRICTION, Subject, lock_reason_for
from include.retention.stores.sql import SqlStore
from include.retention.stores.sql_fit import Target, bind_value, storage_charsets
from tests.conftest import KEY
from tests.integration.test_rectify_withdraw import NEW, POLICY, ZOE, changes, seed, snapshot, stores, subject
from tests.policy_text import crm_policy

pytestmark = pytest.mark.integration

OTHER = "other@example.org"
ZOE_ACCENT = "zoë.müller@example.org"  # another person (seeded by test_rectify_withdraw.seed)


def correction(by_name: dict[str, SqlStore], new_values: dict[str, str], subjects: list[Subject] | None = None,
               policy=POLICY) -> Correction:
    return Correction(policy, by_name.__getitem__, list(by_name), subjects or subject(), new_values)


def apply_all(c: Correction, *, dry_run: bool = False) -> dict[str, dict[str, int]]:
    """check, then apply in every system; the request's counts per collection."""
    c.check()
    out: dict[str, dict[str, int]] = {}
    for system in c.systems:
        out.update(c.apply(system, dry_run=dry_run).per_request.get("r1", {}))
    return out


def assert_clean(message: str, *values: str) -> None:
    """A refusal names kinds and places, never a value (nor a recognisable part of one)."""
    low = message.lower()
    for value in values:
        assert value.strip().lower() not in low
        assert normalise("email", value) not in low
    assert "example.org" not in low and "@" not in low


# ---- 1. another person's address, in any spelling ------------------------------------------------
VARIANTS = (OTHER.upper(), f"  {OTHER}\t", "Other@Example.ORG",  # case and surrounding space
            unicodedata.normalize("NFD", ZOE_ACCENT.upper()),  # decomposed accents, capitals: the accented person
            unicodedata.normalize("NFD", ZOE_ACCENT))


def test_rectify_to_another_persons_address_is_refused_and_changes_nothing(db_url):
    engine = make_engine(db_url)
    seed(engine)
    before = snapshot(engine)
    for variant in VARIANTS:
        c = correction(stores(engine), {"email": variant})
        with pytest.raises(CorrectionRefused) as info:
            apply_all(c)
        message = str(info.value)
        assert "the new email is already an identity of" in message and "crm.contacts: 1" in message
        assert "mailing.subscribers: 1" in message and "nothing was changed" in message
        assert_clean(message, variant, ZOE)
        assert snapshot(engine) == before  # every row of both systems as it was
    engine.dispose()


def test_a_lookalike_that_is_nobodys_is_not_a_conflict(db_url):
    """Python's equality, not the collation's: MariaDB's default collation counts 'zöe' as 'zoe', a different
    address here that nobody holds: accepted and written exactly."""
    engine = make_engine(db_url)
    ids = seed(engine)[ZOE]
    new = "Zöe.Muller@Example.org"
    before = snapshot(engine)
    counts = apply_all(correction(stores(engine), {"email": new}))
    assert counts["crm.contacts"] == {"rectified": 1}
    after = snapshot(engine)
    assert set(changes(before, after)) == {("contacts", ids["contact"]), ("applicants", ids["applicant"]),
                                           ("support_tickets", ids["ticket"]), ("client_accounts", ids["account"]),
                                           ("subscribers", ids["subscriber"])}
    assert after["contacts"][ids["contact"]]["email"] == new
    engine.dispose()


def test_a_record_the_request_claims_through_another_identity_is_not_a_conflict(db_url):
    """The new address already on a row that is the person's by their phone: theirs, not somebody else's."""
    engine = make_engine(db_url)
    ids = seed(engine)
    with engine.begin() as conn:
        conn.execute(schema.contacts.update().values(phone="+1 555 0100").where(
            schema.contacts.c.id != ids[ZOE]["contact"]))
        conn.execute(schema.contacts.update().values(phone="+44 20 7946 0000", email=NEW).where(
            schema.contacts.c.id == ids[OTHER]["contact"]))
        conn.execute(schema.subscribers.update().values(email="third@example.org").where(
            schema.subscribers.c.id == ids[OTHER]["subscriber"]))
        for table in (schema.applicants, schema.support_tickets):
            conn.execute(table.update().values(email="third@example.org").where(table.c.email == OTHER))
        conn.execute(schema.client_accounts.update().values(admin_email="third@example.org").where(
            schema.client_accounts.c.admin_email == OTHER))
    both = [Subject("r1", {"email": normalise("email", ZOE), "phone": normalise("phone", "+44 20 7946 0000")})]
    apply_all(correction(stores(engine), {"email": NEW}, both))
    with engine.connect() as conn:
        assert conn.execute(sa.select(schema.contacts.c.email).where(
            schema.contacts.c.id == ids[ZOE]["contact"])).scalar() == NEW
    engine.dispose()


# ---- 2. values that do not fit one of two systems ------------------------------------------------
NARROW_COLLECTIONS = """\
    people:
      table: people
      primary_key: id
      columns: [id, email, phone]
      identities: {email: email, phone: phone}
"""


def two_systems(tmp_path, db_url: str, crm_width: int, mailing_width: int):
    """crm on ``db_url`` (people: email VARCHAR(crm_width), phone VARCHAR(32)) and mailing on a SQLite file
    (people: email VARCHAR(mailing_width), phone BIGINT); the subject and another person in both."""
    policy = parse_policy(crm_policy(NARROW_COLLECTIONS, mailing=NARROW_COLLECTIONS),
                          source="test-policy.yaml")
    engines = {"crm": make_engine(db_url), "mailing": make_engine(f"sqlite:///{tmp_path / 'mailing.db'}")}
    for name, width, phone in (("crm", crm_width, sa.String(32)), ("mailing", mailing_width, sa.BigInteger)):
        md = sa.MetaData()
        t = sa.Table("people", md, sa.Column("id", sa.Integer, primary_key=True), sa.Column("email", sa.String(width)),
                     sa.Column("phone", phone))
        md.drop_all(engines[name])
        md.create_all(engines[name])
        with engines[name].begin() as conn:
            conn.execute(t.insert(), [{"id": 1, "email": ZOE, "phone": "48500600700" if name == "crm" else 48500600700},
                                      {"id": 2, "email": OTHER, "phone": None}])
    by_name = {name: SqlStore(name, policy, engines[name], mask_key=KEY) for name in engines}
    return policy, engines, by_name


def rows(engines) -> dict[str, list[tuple]]:
    out = {}
    for name, engine in engines.items():
        with engine.connect() as conn:
            out[name] = [tuple(r) for r in conn.execute(sa.text("SELECT id, email, phone FROM people ORDER BY id"))]
    return out


@pytest.mark.parametrize("narrow", ["crm", "mailing"])
def test_too_long_for_one_system_is_refused_before_any_change(tmp_path, db_url, narrow):
    widths = {"crm": 60, "mailing": 60, narrow: 24}
    policy, engines, by_name = two_systems(tmp_path, db_url, widths["crm"], widths["mailing"])
    before = rows(engines)
    new = "a.much.longer.address@example.org"  # 33 characters: fits 60, not 24
    with pytest.raises(CorrectionRefused) as info:
        apply_all(correction(by_name, {"email": new}, policy=policy))
    message = str(info.value)
    assert f"{narrow}.people.email: the new email has 33 characters, the column holds 24" in message
    assert_clean(message, new, ZOE)
    assert rows(engines) == before  # neither system changed
    for engine in engines.values():
        engine.dispose()


def test_phone_that_a_bigint_column_cannot_hold_is_refused_digits_are_written(tmp_path, db_url):
    policy, engines, by_name = two_systems(tmp_path, db_url, 60, 60)
    before = rows(engines)
    phone = [Subject("r1", {"phone": normalise("phone", "48 500 600 700")})]
    for bad in ("+48 111 222 333", "0048111222333", "99999999999999999999"):
        with pytest.raises(CorrectionRefused) as info:
            apply_all(correction(by_name, {"phone": bad}, phone, policy=policy))
        assert "mailing.people.phone:" in str(info.value) and "BIGINT" in str(info.value)
        assert "crm.people" not in str(info.value)  # a text column holds any of them
        assert "111" not in str(info.value) and "999" not in str(info.value)
        assert rows(engines) == before
    counts = apply_all(correction(by_name, {"phone": "48111222333"}, phone, policy=policy))
    assert counts == {"crm.people": {"rectified": 1}, "mailing.people": {"rectified": 1}}
    after = rows(engines)
    assert after["crm"][0] == (1, ZOE, "48111222333") and after["mailing"][0] == (1, ZOE, 48111222333)
    assert after["crm"][1:] == before["crm"][1:] and after["mailing"][1:] == before["mailing"][1:]
    for engine in engines.values():
        engine.dispose()


def test_width_counts_characters_not_bytes(tmp_path, db_url):
    """VARCHAR(24) holds 24 characters of two (and four) UTF-8 bytes each on every database; one more is refused."""
    policy, engines, by_name = two_systems(tmp_path, db_url, 24, 24)
    fits = "ü" * 10 + "𝒶" * 2 + "@example.org"  # 24 characters, 40 bytes
    assert len(fits) == 24
    with pytest.raises(CorrectionRefused):
        apply_all(correction(by_name, {"email": "ü" + fits}, policy=policy))
    apply_all(correction(by_name, {"email": fits}, policy=policy))
    assert [r[1] for r in (rows(engines)["crm"][0], rows(engines)["mailing"][0])] == [fits, fits]
    for engine in engines.values():
        engine.dispose()


# ---- 3. held and locked rows are exceptions; the person's other rows are corrected ---------------
def test_statutory_lock_and_legal_hold_are_kept_and_listed(db_url):
    engine = make_engine(db_url)
    ids = seed(engine)[ZOE]
    sweep_lock = "retention:crm.client_accounts.contract_end"
    own = lock_reason_for(RESTRICTION, f"email\x00{normalise('email', ZOE)}", KEY)
    someone_else = lock_reason_for(RESTRICTION, "email\x00somebody@example.net", KEY)
    at = dt.datetime(2026, 1, 1)
    with engine.begin() as conn:  # the invoice locked by a sweep, a held ticket, the person's own restriction
        conn.execute(schema.client_accounts.update().where(schema.client_accounts.c.id == ids["account"])
                     .values(restricted_at=at, restriction_reason=sweep_lock))
        conn.execute(schema.support_tickets.update().where(schema.support_tickets.c.id == ids["ticket"])
                     .values(legal_hold=True))
        conn.execute(schema.applicants.update().where(schema.applicants.c.id == ids["applicant"])
                     .values(restricted_at=at, restriction_reason=own))
        conn.execute(schema.subscribers.update().where(schema.subscribers.c.id == ids["subscriber"])
                     .values(restricted_at=at, restriction_reason=someone_else))
    before = snapshot(engine)
    c = correction(stores(engine), {"email": NEW})
    dry = apply_all(c, dry_run=True)
    assert snapshot(engine) == before
    counts = apply_all(correction(stores(engine), {"email": NEW}))
    assert counts == dry == {
        "crm.contacts": {"rectified": 1}, "crm.applicants": {"rectified": 1},
        "crm.support_tickets": {"exception:legal_hold": 1},
        "crm.client_accounts": {"exception:statutory_lock": 1},
        "mailing.subscribers": {"exception:locked_for_another_reason": 1}}
    after = snapshot(engine)
    assert changes(before, after) == {("contacts", ids["contact"]): {"email"},
                                      ("applicants", ids["applicant"]): {"email", "restriction_reason"}}
    # the person's own restriction now names the new address: a later request with it still finds it theirs
    assert after["applicants"][ids["applicant"]]["restriction_reason"] == lock_reason_for(
        RESTRICTION, f"email\x00{normalise('email', NEW)}", KEY)
    assert after["applicants"][ids["applicant"]]["restricted_at"] == at
    # the re-scan: what still carries the old value is exactly the exceptions
    assert c.remaining("crm") == 0 and c.remaining("mailing") == 0
    # the receipt lists them, counts and reasons only
    request = {"request_id": "r1", "mode": "rectify", "dry_run": False, "status": "complete", "received_at": at,
               "due_at": at}
    systems = {s: {"status": "recorded", "counts": {"collections": {
        ref: n for ref, n in counts.items() if ref.startswith(f"{s}.")}}} for s in ("crm", "mailing")}
    receipt = build_receipt(request, systems, ["crm", "mailing"], "d" * 64)
    assert sorted((e["collection"], e["reason"], e["items"]) for e in receipt["exceptions"]) == [
        ("crm.client_accounts", "statutory_lock", 1), ("crm.support_tickets", "legal_hold", 1),
        ("mailing.subscribers", "locked_for_another_reason", 1)]
    assert {e["handled_as"] for e in receipt["exceptions"]} == {
        "kept unchanged, not corrected (legal hold or a lock that is not the person's own)"}
    assert "example" not in json.dumps(receipt) + render_markdown(receipt)
    engine.dispose()


def test_rectify_of_one_system_is_one_transaction(db_url):
    """A failure half-way (here: a trigger-like failure injected into the second collection's statement) leaves
    every collection of the system as it was."""
    engine = make_engine(db_url)
    seed(engine)
    before = snapshot(engine)
    crm = stores(engine)["crm"]
    c = correction({"crm": crm}, {"email": NEW})
    c.check()
    calls = {"n": 0}

    @sa.event.listens_for(engine, "before_cursor_execute")
    def fail_second_update(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("UPDATE"):
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("injected failure")

    with pytest.raises(Exception, match="injected failure"):
        c.apply("crm", dry_run=False)
    sa.event.remove(engine, "before_cursor_execute", fail_second_update)
    assert calls["n"] == 2
    assert snapshot(engine) == before
    engine.dispose()


# ---- 4. property: accepted exactly when it fits every column, then written everywhere -------------
LETTERS = st.characters(categories=("Ll", "Lu", "Nd", "Mn"), exclude_characters="@")  # Mn: decomposed accents
EMAILS = st.builds(lambda local, domain: f"{local}@{domain}.org",
                   st.text(LETTERS, min_size=1, max_size=24), st.text(LETTERS, min_size=1, max_size=12))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(new=EMAILS)
def test_accepted_exactly_when_it_fits_every_column(tmp_path_factory, new):
    assume(normalise("email", new) not in (normalise("email", ZOE), OTHER))
    tmp = tmp_path_factory.mktemp("fit")
    policy, engines, by_name = two_systems(tmp, f"sqlite:///{tmp / 'crm.db'}", 28, 22)
    before = rows(engines)
    fits = len(new) <= 22
    try:
        counts = apply_all(correction(by_name, {"email": new}, policy=policy))
    except CorrectionRefused as exc:
        assert not fits, str(exc)
        assert ("mailing.people.email" in str(exc)) and (("crm.people.email" in str(exc)) == (len(new) > 28))
        assert rows(engines) == before
    else:
        assert fits
        assert counts == {"crm.people": {"rectified": 1}, "mailing.people": {"rectified": 1}}
        after = rows(engines)
        assert after["crm"][0][1] == new and after["mailing"][0][1] == new  # exactly as given
        assert after["crm"][1:] == before["crm"][1:] and after["mailing"][1:] == before["mailing"][1:]
    for engine in engines.values():
        engine.dispose()


# ---- what the database itself decides: character sets, a unique column under its collation ------
def one_table(url: str, column_sql: str, rows_: list[tuple[int, str]]) -> tuple[sa.Engine, dict[str, SqlStore]]:
    policy = parse_policy(crm_policy("""\
        people:
          table: people
          primary_key: id
          columns: [id, email]
          identities: {email: email}
        """), source="test-policy.yaml")
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS people"))
        conn.execute(sa.text(f"CREATE TABLE people (id INTEGER PRIMARY KEY, email {column_sql})"))
        for rid, email in rows_:
            conn.execute(sa.text("INSERT INTO people VALUES (:i, :e)"), {"i": rid, "e": email})
    return engine, {"crm": SqlStore("crm", policy, engine, mask_key=KEY)}


def emails(engine) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text("SELECT id, email FROM people ORDER BY id"))]


@pytest.mark.parametrize("charset, refused, accepted", [
    ("latin1", "żoe@example.org", "zöe@example.org"),  # ż is not in MariaDB's latin1 (cp1252), ö is
    ("utf8mb3", "zoe😀@example.org", "żoe@example.org"),  # utf8mb3: the Basic Multilingual Plane only
])
@pytest.mark.parametrize("db_url", ["mariadb"], indirect=True)
def test_mariadb_column_character_set_decides_what_fits(db_url, charset, refused, accepted):
    engine, by_name = one_table(db_url, f"VARCHAR(60) CHARACTER SET {charset}", [(1, ZOE), (2, OTHER)])
    policy = by_name["crm"].policy
    before = emails(engine)
    with pytest.raises(CorrectionRefused) as info:
        apply_all(correction(by_name, {"email": refused}, policy=policy))
    assert f"crm.people.email: the new email has a character the column's character set ({charset})" in str(info.value)
    assert emails(engine) == before
    apply_all(correction(by_name, {"email": accepted}, policy=policy))
    assert emails(engine) == [(1, accepted), (2, OTHER)]  # stored exactly as given
    engine.dispose()


def test_unique_column_where_the_collation_sees_a_duplicate_is_refused(db_url):
    """'zöe.new' is not 'zoe.new' (Python's equality, ADR 0005): no conflict of identities. MariaDB's default
    collation counts them equal, and a unique index there would refuse the write half-way: refused before it.
    PostgreSQL and SQLite store it."""
    engine, by_name = one_table(db_url, "VARCHAR(60) UNIQUE", [(1, ZOE), (2, NEW)])
    policy = by_name["crm"].policy
    new = "zöe.new@example.org"
    if engine.dialect.name in ("mysql", "mariadb"):
        with pytest.raises(CorrectionRefused) as info:
            apply_all(correction(by_name, {"email": new}, policy=policy))
        assert "crm.people.email: the column is unique and the database already counts the new email" \
            in str(info.value)
        assert emails(engine) == [(1, ZOE), (2, NEW)]
    else:
        apply_all(correction(by_name, {"email": new}, policy=policy))
        assert emails(engine) == [(1, new), (2, NEW)]
    engine.dispose()


# ---- property: Python's verdict is the database's, column by column -------------------------------
ANY_TEXT = st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=70)  # no surrogates, no controls
NUMBERS = st.from_regex(r"[1-9][0-9]{0,20}", fullmatch=True)  # digits that stay the same number


@pytest.mark.parametrize("db_url", ["postgresql", "mariadb"], indirect=True)
def test_python_and_the_database_agree_on_what_fits(db_url):
    """Every value Python accepts, the database stores (the same identity); every value Python refuses, the
    database refuses too (for text: exactly; for numbers: digit strings, the only ones that keep their identity)."""
    engine = make_engine(db_url)
    columns = {"v12": "VARCHAR(12)", "c6": "CHAR(6)", "n": "BIGINT"}
    if engine.dialect.name in ("mysql", "mariadb"):
        columns |= {"l12": "VARCHAR(12) CHARACTER SET latin1", "m12": "VARCHAR(12) CHARACTER SET utf8mb3",
                    "tt": "TINYTEXT"}
    else:
        columns |= {"s": "SMALLINT"}
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS fit"))
        conn.execute(sa.text("CREATE TABLE fit (id INTEGER PRIMARY KEY, "
                             + ", ".join(f"{c} {sql}" for c, sql in columns.items()) + ")"))
    t = sa.Table("fit", sa.MetaData(), autoload_with=engine)
    charsets = storage_charsets(engine, "fit")
    targets = {c: Target(f"crm.fit.{c}", t.c[c], engine.dialect.name, charsets.get(c, charsets.get("*")))
               for c in columns}

    def stored(column: str, value: Any) -> tuple[bool, Any]:
        with engine.connect() as conn:
            trans = conn.begin()
            try:
                conn.execute(sa.text(f"INSERT INTO fit (id, {column}) VALUES (1, :v)"), {"v": value})
                return True, conn.execute(sa.text(f"SELECT {column} FROM fit")).scalar()
            except sa.exc.DBAPIError:
                return False, None
            finally:
                trans.rollback()

    def check(column: str, value: str) -> None:
        numeric = isinstance(t.c[column].type, sa.Integer)
        kind = "phone" if numeric else "email"
        problem, bound = bind_value(targets[column], kind, value)
        accepted, back = stored(column, value)
        assert accepted == (problem is None), (column, problem)
        if accepted:
            assert stored(column, bound) == (True, back)  # what Python binds is what the database keeps
            assert normalise(kind, back) == normalise(kind, value)

    edges = ["a" * 12, "a" * 13, "ü" * 12, "ü" * 13, "😀" * 12, "😀" * 13, "abcdefghijkl   ", "abcdefghijk  x",
             "abcdef ", "abcdefg", "é" * 6, "ż", "z" * 255, "z" * 255 + " ", "ü" * 128, "ü" * 127 + " "]
    for column in sorted(columns):
        for value in edges if not isinstance(t.c[column].type, sa.Integer) else [
                "9223372036854775807", "9223372036854775808", "32767", "32768", "18446744073709551616"]:
            check(column, value)

    @settings(max_examples=200, deadline=None, database=None)
    @given(column=st.sampled_from(sorted(columns)), data=st.data())
    def agree(column, data):
        check(column, data.draw(NUMBERS if isinstance(t.c[column].type, sa.Integer) else ANY_TEXT))

    agree()
    engine.dispose()
