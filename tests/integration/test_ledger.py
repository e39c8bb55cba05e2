"""The audit ledger on real databases: chains, verifies, and finds edits and removals."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import sqlalchemy as sa

from include.retention.ledger import Ledger, RunRef, entries, head
from include.retention.stores.sql import make_engine
from tests.conftest import KEY, ROOT

pytestmark = pytest.mark.integration


@pytest.fixture
def ledger(db_url):
    led = Ledger(make_engine(db_url), KEY)
    for i in range(5):
        led.append(run=RunRef("retention_sweep", "r1"), action="delete", outcome="done", count=i,
                   rule_id="crm.x.y", subject_digest=led.digest(f"person{i}@example.org"), pk_digest=led.pk_digest([i]))
    yield led
    led.engine.dispose()


def test_chain_verifies(ledger):
    result = ledger.verify()
    assert result.ok and result.entries == 5
    rows = list(ledger.rows())
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(rows[i]["prev_hash"] == rows[i - 1]["entry_hash"] for i in range(1, 5))
    assert "@" not in repr(rows)


def test_edited_entry_is_found(ledger):
    with ledger.engine.begin() as conn:
        conn.execute(entries.update().where(entries.c.seq == 3).values(count=999))
    result = ledger.verify()
    assert not result.ok and result.first_broken_seq == 3 and "edited" in result.problem


def test_edited_entry_with_recomputed_hash_breaks_the_next_link(ledger):
    from include.retention.ledger import entry_hash

    row = next(r for r in ledger.rows() if r["seq"] == 2)
    row["count"] = 0
    with ledger.engine.begin() as conn:
        conn.execute(entries.update().where(entries.c.seq == 2).values(count=0, entry_hash=entry_hash(row, KEY)))
    result = ledger.verify()
    assert not result.ok and result.first_broken_seq == 3 and "link" in result.problem


def test_removed_entry_is_found(ledger):
    with ledger.engine.begin() as conn:
        conn.execute(entries.delete().where(entries.c.seq == 2))
    result = ledger.verify()
    assert not result.ok and result.first_broken_seq == 2 and "missing" in result.problem


def test_removed_tail_is_found(ledger):
    with ledger.engine.begin() as conn:
        conn.execute(entries.delete().where(entries.c.seq == 5))
    result = ledger.verify()
    assert not result.ok and "removed" in result.problem
    with ledger.engine.connect() as conn:
        assert conn.execute(sa.select(head.c.seq)).scalar() == 5


def test_verify_cli_exit_codes(ledger, db_url):
    env = {**os.environ, "AIRFLOW_CONN_RETENTION_LEDGER": db_url.replace("+psycopg2", "").replace("+pymysql", "")
           .replace("postgresql", "postgres").replace("?charset=utf8mb4", ""), "PYTHONPATH": str(ROOT),
           "RETENTION_HMAC_KEY": KEY.decode()}
    if db_url.startswith("sqlite"):
        env["AIRFLOW_CONN_RETENTION_LEDGER"] = json.dumps({"conn_type": "sqlite", "host": db_url[len("sqlite:///"):]})
    ok = subprocess.run([sys.executable, "-m", "include.retention.cli", "verify"], env=env, capture_output=True,
                        text=True)
    assert ok.returncode == 0 and "ledger OK: 5 entries" in ok.stdout, ok.stderr
    with ledger.engine.begin() as conn:
        conn.execute(entries.update().where(entries.c.seq == 4).values(action="lock"))
    bad = subprocess.run([sys.executable, "-m", "include.retention.cli", "verify"], env=env, capture_output=True,
                         text=True)
    assert bad.returncode == 1 and "BROKEN at entry 4" in bad.stdout
