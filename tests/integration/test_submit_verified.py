"""`cli submit --identity-verified` (ADR 0014): rows queued with it are taken by erasure_intake's claim; rows
queued without it stay pending while their type needs the identity check, and are taken once it does not."""

from __future__ import annotations

import json

import pytest

from include.retention import cli
from include.retention.airflow.identity_check import VERIFIED_SOURCE, verify_modes
from include.retention.registry import Registry
from include.retention.stores.sql import make_engine
from tests.conftest import ROOT

pytestmark = pytest.mark.integration
KEY = b"submit-verified-key-" + b"x" * 32


@pytest.fixture
def registry(tmp_path, monkeypatch):
    db = tmp_path / "ledger.db"
    monkeypatch.setenv("AIRFLOW_CONN_RETENTION_LEDGER", json.dumps({"conn_type": "sqlite", "host": str(db)}))
    monkeypatch.setenv("RETENTION_HMAC_KEY", KEY.decode())
    monkeypatch.setenv("RETENTION_POLICY_PATH", str(ROOT / "config" / "policy.yaml"))
    engine = make_engine(f"sqlite:///{db}")
    yield Registry(engine, KEY)
    engine.dispose()


def submit(tmp_path, capsys, name: str, rows: str, *flags: str) -> str:
    path = tmp_path / name
    path.write_text("email,mode\n" + rows)
    assert cli.main(["submit", str(path), *flags]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def test_only_verified_rows_of_checked_types_are_claimed(registry, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RETENTION_VERIFY_IDENTITY", raising=False)  # the default: access, rectify, erase
    assert "(identity verified)" in submit(tmp_path, capsys, "a.csv", "a@example.org,erase\n", "--identity-verified")
    assert "(identity verified)" not in submit(tmp_path, capsys, "b.csv", "b@example.org,erase\n")
    with registry.engine.connect() as conn:
        sources = dict(conn.exec_driver_sql("SELECT source, count(*) FROM subject_requests GROUP BY source").all())
    assert sources == {VERIFIED_SOURCE: 1, "intake": 1}

    claimed = registry.claim_pending(100, "erasure_intake", "run-1", verified_only=verify_modes())
    assert [registry.get(rid)["source"] for rid in claimed] == [VERIFIED_SOURCE]
    with registry.engine.connect() as conn:
        statuses = dict(conn.exec_driver_sql("SELECT source, status FROM subject_requests").all())
    assert statuses == {VERIFIED_SOURCE: "in_progress", "intake": "pending"}  # the other one waits
    assert registry.claim_pending(100, "erasure_intake", "run-2", verified_only=verify_modes()) == []

    # a restriction is not a checked type by default: taken without verification
    submit(tmp_path, capsys, "c.csv", "c@example.org,restrict\n")
    assert len(registry.claim_pending(100, "erasure_intake", "run-3", verified_only=verify_modes())) == 1

    # a deployment without the check (the demo): everything queued is taken
    monkeypatch.setenv("RETENTION_VERIFY_IDENTITY", "none")
    assert len(registry.claim_pending(100, "erasure_intake", "run-4", verified_only=verify_modes())) == 1
