"""Key rotation on PostgreSQL, MariaDB and SQLite: a new key is added while old digests still match,
then `cli rotate-keys` moves the registry to it; every suppressed subject stays suppressed, every
registry entry stays decryptable and every ledger entry verifiable (docs/adr/0007-key-rotation.md)."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from include.retention import cli
from include.retention.erasure import SubjectScanner
from include.retention.ledger import Ledger, RunRef, entries
from include.retention.masking import KeyRing, keyed_digest
from include.retention.registry import Identities, NewRequest, Registry, suppression
from include.retention.registry import requests as requests_table
from include.retention.stores.sql import SqlStore, make_engine
from include.retention.suppression import enforce_system
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
    registry.suppress(rid)
    registry.update_details(rid, channel="letter")
    registry.suppress_values([("email", GONE)], reason="retention:mailing.subscribers")
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

    # a new key added: old digests still match, old entries still decrypt and verify
    registry = Registry(engine, RING)
    assert registry.is_suppressed("email", SUBJECT) and registry.is_suppressed("email", GONE)
    assert registry.identities(rid).email == SUBJECT.lower()
    ledger = Ledger(engine, RING)
    assert ledger.verify(record=False).ok
    rid2 = registry.register(NewRequest(Identities(email="second.person@example.org")))  # written under k1
    ledger.append(run=RunRef(), action="erase", outcome="done", request_id=rid2)
    assert ledger.verify(record=False).ok

    _env(monkeypatch, db_url)
    assert cli.main(["rotate-keys"]) == 0
    out = capsys.readouterr().out
    assert "rotated to key 'k1': 1 request(s)" in out and "key 'k0': 1 suppression digest(s)" in out

    # the registry is wholly under k1: the new key alone decrypts it and finds the erased subject
    only_new = Registry(engine, NEW_ONLY)
    assert only_new.identities(rid).email == SUBJECT.lower()
    assert only_new.identities(rid).phone == "+48500100200"
    assert only_new.details(rid)["channel"] == "letter"
    assert only_new.is_suppressed("email", SUBJECT) and only_new.is_suppressed("phone", "+48 500 100 200")
    assert only_new.get(rid)["email_digest"] == keyed_digest(NEW.encode(), SUBJECT.lower())
    with engine.connect() as conn:
        assert set(conn.execute(sa.select(requests_table.c.key_id)).scalars()) == {"k1"}
        assert all(t.startswith("k1:") for t in conn.execute(sa.select(requests_table.c.identity_enc)).scalars())
        keys = dict(conn.execute(sa.select(suppression.c.digest, suppression.c.key_id)).all())
    # the deleted subscriber's digest has no plaintext to re-digest: it stays under k0, and matches with the ring
    assert keys[keyed_digest(OLD.encode(), GONE)] == "k0"
    assert not only_new.is_suppressed("email", GONE)
    rotated = Registry(engine, RING)
    for value in (SUBJECT, GONE):
        assert rotated.is_suppressed("email", value)

    # every ledger entry verifies under the active keys; exactly one audit entry for the rotation
    result = Ledger(engine, RING).verify(record=False)
    assert result.ok, result
    with engine.connect() as conn:
        audits = conn.execute(sa.select(entries).where(entries.c.action == "rotate_keys")).all()
    assert len(audits) == 1 and audits[0].count == 1 + 2  # one request, its two suppression entries
    assert json.loads(audits[0].details)["kept"] == {"k0": 1}
    # the old entries need the old key: it stays active for verification
    assert not Ledger(engine, NEW_ONLY).verify(record=False).ok

    # a second run finds nothing to do, and is audited too
    assert cli.main(["rotate-keys"]) == 0
    assert "0 request(s)" in capsys.readouterr().out
    assert Ledger(engine, RING).verify(record=False).ok
    engine.dispose()


def test_old_key_cannot_append_after_rotation(db_url):
    engine = make_engine(db_url)
    _history(engine)
    Ledger(engine, RING).append(run=RunRef("cli", "rotate-keys"), action="rotate_keys", outcome="done")
    Ledger(engine, OLD_ONLY).append(run=RunRef(), action="erase", outcome="done")  # someone holding k0 only
    result = Ledger(engine, RING).verify(record=False)
    assert not result.ok and "older key cannot append after a rotation" in result.problem
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
    registry.suppress(rid)
    store = SqlStore("crm", policy, engine, mask_key=RING)
    scanner = SubjectScanner(policy, store)

    before = enforce_system(scanner, Registry(reg_engine, RING), replay=True, dry_run=True)
    assert sum(before.values()) > 0
    assert enforce_system(scanner, Registry(reg_engine, NEW_ONLY), replay=True, dry_run=True) != before
    Registry(reg_engine, RING).rotate()
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
