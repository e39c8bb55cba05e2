"""`cli submit --identity-verified` (ADR 0014): rows queued with it are taken by erasure_intake's claim; rows
queued without it stay pending while their type needs the identity check, and are taken once it does not."""

from __future__ import annotations

import pytest

from include.retention import cli
from include.retention.requests.identity_decisions import VERIFIED_SOURCE, verify_modes
from tests.integration.test_notify import registry  # noqa: F401 - the fixture (SQLite registry, env set)

pytestmark = pytest.mark.integration


def submit(tmp_path, capsys, name: str, rows: str, *flags: str) -> str:
    path = tmp_path / name
    path.write_text("email,mode\n" + rows)
    assert cli.main(["submit", str(path), *flags]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def test_only_verified_rows_of_checked_types_are_claimed(registry, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RETENTION_VERIFY_IDENTITY", raising=False)  # the default: every request type
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

    # a restriction is checked by default too (it changes the person's data's use): it waits as well ...
    submit(tmp_path, capsys, "c.csv", "c@example.org,restrict\n")
    assert registry.claim_pending(100, "erasure_intake", "run-3", verified_only=verify_modes()) == []
    # ... unless the operator turns the check off for that type alone
    monkeypatch.setenv("RETENTION_VERIFY_IDENTITY", "access,rectify,withdraw,erase")
    [rid] = registry.claim_pending(100, "erasure_intake", "run-3b", verified_only=verify_modes())
    assert registry.get(rid)["mode"] == "restrict"

    # a deployment without the check (the demo): everything queued is taken
    monkeypatch.setenv("RETENTION_VERIFY_IDENTITY", "none")
    assert len(registry.claim_pending(100, "erasure_intake", "run-4", verified_only=verify_modes())) == 1


def test_the_identity_check_covers_every_type_by_default(monkeypatch):
    from include.retention.errors import RetentionError
    from include.retention.registry import MODES

    monkeypatch.delenv("RETENTION_VERIFY_IDENTITY", raising=False)
    assert verify_modes() == set(MODES)  # withdraw (consents) and restrict included
    monkeypatch.setenv("RETENTION_VERIFY_IDENTITY", " access , withdraw ")
    assert verify_modes() == {"access", "withdraw"}
    monkeypatch.setenv("RETENTION_VERIFY_IDENTITY", "none")
    assert verify_modes() == set()
    monkeypatch.setenv("RETENTION_VERIFY_IDENTITY", "access,withdrawl")  # a typo must not switch a check off
    with pytest.raises(RetentionError, match="RETENTION_VERIFY_IDENTITY: unknown request type.*'withdrawl'"):
        verify_modes()
