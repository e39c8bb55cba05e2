"""Key rotation on PostgreSQL, MariaDB and SQLite: a new key is added while old digests still match,
then `cli rotate-keys` moves the registry to it; every suppressed subject stays suppressed, every
registry entry stays decryptable and every ledger entry verifiable (docs/adr/0007-key-rotation.md)."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from include.retention import cli
from include.retention.ledger import Ledger, RunRef, entries, entry_hash
from include.retention.masking import KeyRing, keyed_digest
from include.retention.registry import Identities, NewRequest, Registry, suppression
from include.retention.registry import requests as requests_table
from include.retention.requests.scanner import SubjectScanner
from include.retention.requests.suppression import enforce_system
from include.retention.stores.sql import SqlStore, make_engine
from tests.integration.test_erasure import SUBJECT, seed_subject_world, sql_only_policy

pytestmark = pytest.mark.integration

OLD = "0ld-key-" + "a1" * 16  # the single key of before (no id: k0)
NEW = "n3w-key-" + "b2" * 16
OLD_ONLY = KeyRing([("k0", OLD.encode())])
RING = KeyRing([("k1", NEW.encode()), ("k0", OLD.encode())])
NEW_ONLY = KeyRing([("k1", NEW.encode())])
GONE = "deleted.subscriber@example.org"  # suppressed by a delete: no plaintext survives it


def _history(engine) -> str:
    """Under the old key alone (as before key ids): an erasure request, its suppression, a deleted
    subscriber's digest and ledger entries (an intent and its outcome)."""
    registry = Registry(engine, OLD.encode())
    rid = registry.register(NewRequest(Identities(email=SUBJECT, phone="+48 500 100 200"), note="by phone"))
    registry.suppression.add(rid)
    registry.update_details(rid, channel="letter")
    registry.suppression.add_values([("email", GONE)], reason="retention:mailing.subscribers")
    ledger = Ledger(engine, OLD.encode())
    seq = ledger.intend(action="erase", count=1, request_id=rid, subject_digest=registry.subject_digest(rid))
    ledger.settle(seq, count=1)
    return rid


def _env(monkeypatch, db_url):
    monkeypatch.setenv("AIRFLOW_CONN_RETENTION_LEDGER",
                       json.dumps({"conn_type": "sqlite", "extra": {"sqlalchemy_url": db_url}}))
    monkeypatch.setenv("RETENTION_HMAC_KEYS", f"k1:{NEW}")
    monkeypatch.setenv("RETENTION_HMAC_KEY", OLD)


def test_rotation_keeps_suppression_registry_and_ledger(db_url, monkeypatch, capsys):
    engine = make_engine(db_url)
    rid = _history(engine)

    # a new key added: old digests still match, old entries still decrypt and verify, but the chain is not
    # under the current key until rotate-keys hands it over (a chain cut before a rotation looks the same)
    registry = Registry(engine, RING)
    assert registry.suppression.contains("email", SUBJECT) and registry.suppression.contains("email", GONE)
    assert registry.identities(rid).email == SUBJECT.lower()
    ledger = Ledger(engine, RING)
    assert ledger.verify(record=False, current_key=False).ok
    rid2 = registry.register(NewRequest(Identities(email="second.person@example.org")))  # written under k1
    ledger.append(run=RunRef(), action="erase", outcome="done", request_id=rid2)  # chained under k0, the chain's
    pending = ledger.verify(record=False)
    assert not pending.ok and pending.first_broken_seq == 1 and pending.key_id == "k0"
    assert "current key is 'k1'" in pending.problem and "rotate-keys" in pending.problem
    assert Ledger(engine, OLD_ONLY).verify(record=False).ok  # every entry so far is under k0 alone

    _env(monkeypatch, db_url)
    assert cli.main(["rotate-keys"]) == 0
    out = capsys.readouterr().out
    assert "rotated to key 'k1': 1 request(s)" in out and "key 'k0': 1 suppression digest(s)" in out

    # the registry is wholly under k1: the new key alone decrypts it and finds the erased subject
    only_new = Registry(engine, NEW_ONLY)
    assert only_new.identities(rid).email == SUBJECT.lower()
    assert only_new.identities(rid).phone == "+48500100200"
    assert only_new.details(rid)["channel"] == "letter"
    assert only_new.suppression.contains("email", SUBJECT) and only_new.suppression.contains("phone", "+48 500 100 200")
    assert only_new.get(rid)["email_digest"] == keyed_digest(NEW.encode(), SUBJECT.lower())
    with engine.connect() as conn:
        assert set(conn.execute(sa.select(requests_table.c.key_id)).scalars()) == {"k1"}
        assert all(t.startswith("k1:") for t in conn.execute(sa.select(requests_table.c.identity_enc)).scalars())
        keys = dict(conn.execute(sa.select(suppression.c.digest, suppression.c.key_id)).all())
    # the deleted subscriber's digest has no plaintext to re-digest: it stays under k0, and matches with the ring
    assert keys[keyed_digest(OLD.encode(), GONE)] == "k0"
    assert not only_new.suppression.contains("email", GONE)
    rotated = Registry(engine, RING)
    for value in (SUBJECT, GONE):
        assert rotated.suppression.contains("email", value)

    # every ledger entry verifies under the active keys; exactly one audit entry for the rotation
    result = Ledger(engine, RING).verify(record=False)
    assert result.ok, result
    assert result.key_id == "k1"
    with engine.connect() as conn:
        audits = conn.execute(sa.select(entries).where(entries.c.action == "rotate_keys")).all()
    assert len(audits) == 1 and audits[0].count == 1 + 2  # one request, its two suppression entries
    details = json.loads(audits[0].details)
    assert details["kept"] == {"k0": 1}
    change = details["key_change"]  # sealed by the old key's chain hash, co-signed by the new key
    assert change["from"] == "k0" and change["to"] == "k1" and len(change["proof"]) == 64
    assert audits[0].entry_hash == entry_hash(dict(audits[0]._mapping), OLD.encode())
    # what follows is chained under k1
    Ledger(engine, RING).append(run=RunRef(), action="erase", outcome="done")
    with engine.connect() as conn:
        after = conn.execute(sa.select(entries).order_by(entries.c.seq.desc()).limit(1)).one()
    assert after.entry_hash == entry_hash(dict(after._mapping), NEW.encode())
    # the old entries need the old key: it stays active for verification
    assert not Ledger(engine, NEW_ONLY).verify(record=False).ok

    # a second run finds nothing to do, and is audited too (no second key change: the chain is under k1)
    assert cli.main(["rotate-keys"]) == 0
    assert "0 request(s)" in capsys.readouterr().out
    assert Ledger(engine, RING).verify(record=False).ok
    with engine.connect() as conn:
        last = json.loads(conn.execute(sa.select(entries.c.details).where(entries.c.action == "rotate_keys")
                                       .order_by(entries.c.seq.desc()).limit(1)).scalar_one())
    assert "key_change" not in last
    engine.dispose()


def test_old_key_cannot_append_after_rotation(db_url):
    engine = make_engine(db_url)
    _history(engine)
    rotation = Ledger(engine, RING).rotate(run=RunRef("cli", "rotate-keys"))
    Ledger(engine, OLD_ONLY).append(run=RunRef(), action="erase", outcome="done")  # someone holding k0 only
    result = Ledger(engine, RING).verify(record=False)
    assert not result.ok and result.first_broken_seq == rotation + 1
    assert "retired key cannot append or rewrite after a rotation" in result.problem
    engine.dispose()


def test_replay_matches_digests_under_every_active_key(db_url, tmp_path):
    """A store restored from a backup: replay finds the erased subject by its old-key digest (new key
    added, not rotated yet) and by its new-key digest after the rotation."""
    policy = sql_only_policy()
    engine = make_engine(db_url)
    seed_subject_world(engine)
    reg_engine = make_engine(f"sqlite:///{tmp_path / 'registry.db'}")  # the registry's own database
    registry = Registry(reg_engine, OLD.encode())
    rid = registry.register(NewRequest(Identities(email=SUBJECT)))
    registry.suppression.add(rid)
    store = SqlStore("crm", policy, engine, mask_key=RING)
    scanner = SubjectScanner(policy, store)

    before = enforce_system(scanner, Registry(reg_engine, RING), replay=True, dry_run=True)
    assert sum(before.values()) > 0
    assert enforce_system(scanner, Registry(reg_engine, NEW_ONLY), replay=True, dry_run=True) != before
    Registry(reg_engine, RING).keys.rotate()
    assert enforce_system(scanner, Registry(reg_engine, RING), replay=True, dry_run=True) == before
    assert enforce_system(scanner, Registry(reg_engine, NEW_ONLY), replay=True, dry_run=True) == before
    engine.dispose()
    reg_engine.dispose()


def test_registry_from_before_key_ids_gets_the_column(db_url):
    """A registry created before key ids: its tables get ``key_id`` (NULL = k0) and keep working."""
    engine = make_engine(db_url)
    registry = Registry(engine, OLD.encode())
    registry.ensure_schema()
    with engine.begin() as conn:
        for table in ("subject_requests", "suppression_list"):
            conn.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN key_id")
    Registry(engine, RING).ensure_schema()
    columns = {c["name"] for c in sa.inspect(engine).get_columns("suppression_list")}
    assert "key_id" in columns
    engine.dispose()
