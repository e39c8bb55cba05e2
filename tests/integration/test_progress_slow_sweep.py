"""A slow sweep on PostgreSQL (a row trigger sleeps on every delete): while it runs, its progress is read from
the ledger (planned rows, done so far, the time left) and its task log says how far it is; once it ended,
nothing is running."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa

from include.retention.ledger import Ledger, RunRef
from include.retention.policy import parse_policy
from include.retention.progress import LOG_SECONDS_ENV, running_sweeps
from include.retention.stores.sql import SqlStore, make_engine
from include.retention.sweep import run_rule
from tests.conftest import KEY
from tests.policy_text import crm_policy

pytestmark = pytest.mark.integration

RULE = "crm.slow.old"
ROWS = 24
SLEEP_PER_ROW = 0.15  # seconds: 24 rows in batches of 3, about 4 s in all
POLICY = parse_policy(
    crm_policy(
        """\
      slow:
        table: t_slow
        primary_key: id
        columns: [id, email, seen_at]
        identities: {email: email}
        rules:
          - {name: old, start: seen_at, action: delete, period: P30D}
""",
        defaults="{max_fraction: 1, batch_size: 3}",
    ),
    source="slow-policy.yaml",
)
RUN = RunRef("retention_sweep", "manual__slow")


def seed_slow_table(engine: sa.Engine, sleep_per_row: float = SLEEP_PER_ROW) -> None:
    """``ROWS`` expired rows, two fresh ones, and a trigger that makes each delete take ``sleep_per_row`` seconds.
    Wide rows (a few per page): PostgreSQL's sweep walks the table by pages, so its batches are a page or two each."""
    old = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(days=90)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE t_slow (id integer PRIMARY KEY, email varchar(200), seen_at timestamp, "
                "filler char(1800) NOT NULL DEFAULT '')"
            )
        )
        conn.execute(
            sa.text("INSERT INTO t_slow (id, email, seen_at) VALUES (:id, :email, :seen)"),
            [
                {"id": i, "email": f"slow{i}@example.org", "seen": old if i <= ROWS else old.replace(year=old.year + 1)}
                for i in range(1, ROWS + 3)
            ],
        )
        conn.execute(
            sa.text(f"""CREATE FUNCTION slow_delete() RETURNS trigger AS $$
            BEGIN PERFORM pg_sleep({sleep_per_row}); RETURN OLD; END $$ LANGUAGE plpgsql""")
        )
        conn.execute(
            sa.text("CREATE TRIGGER t_slow_delete BEFORE DELETE ON t_slow FOR EACH ROW EXECUTE FUNCTION slow_delete()")
        )


@contextmanager
def slow_sweep(
    url: str, ledger_engine: sa.Engine, *, key: bytes = KEY, sleep_per_row: float = SLEEP_PER_ROW, run: RunRef = RUN
) -> Iterator[Callable[[], dict[str, Any] | None]]:
    """Run the slow rule in a thread (its table in ``url``, its ledger ``ledger_engine`` keyed with ``key``); yields a
    function that returns its counts once it ended (None before)."""
    engine = make_engine(url)
    seed_slow_table(engine, sleep_per_row)
    store = SqlStore("crm", POLICY, engine, mask_key=KEY)
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            result["counts"] = run_rule(POLICY, RULE, store, Ledger(ledger_engine, key), run)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result["error"] = exc

    thread = threading.Thread(target=work, name="slow-sweep")
    thread.start()
    try:
        yield lambda: result.get("counts") if not thread.is_alive() else None
    finally:
        thread.join(120)
        engine.dispose()
    if "error" in result:
        raise result["error"]


@pytest.fixture
def pg_url(fresh_database):
    return fresh_database("postgresql", f"rt_progress_{uuid.uuid4().hex[:10]}")


def test_progress_of_a_running_sweep_from_its_ledger(pg_url, monkeypatch, caplog):
    monkeypatch.setenv(LOG_SECONDS_ENV, "0")  # a progress line after every ledger write of the rule
    ledger_engine = make_engine(pg_url)  # the ledger in the same database as the table (its own tables)
    ledger = Ledger(ledger_engine, b"")  # as the page reads it: no key
    seen = []
    with caplog.at_level(logging.INFO, logger="include.retention.progress"):
        with slow_sweep(pg_url, ledger_engine) as ended:
            deadline = time.monotonic() + 60
            while ended() is None and time.monotonic() < deadline:
                seen += [p.as_dict() for p in running_sweeps(ledger)]
                time.sleep(0.1)
    assert ended()["deleted"] == ROWS
    assert running_sweeps(ledger) == []  # nothing in flight once the rule ended

    assert seen, "no progress observed while the sweep ran"
    assert {(p["rule_id"], p["dag_id"], p["run_id"], p["planned"]) for p in seen} == {
        (RULE, RUN.dag_id, RUN.run_id, ROWS)
    }
    midway = [p for p in seen if 0 < p["done"] < ROWS]
    assert midway, f"no figure between 0 and {ROWS}: {[p['done'] for p in seen]}"
    assert all(p["in_flight"] > 0 for p in seen)  # a batch in flight
    assert all(p["eta_seconds"] is not None and p["eta_seconds"] > 0 and p["left"].endswith("left") for p in midway)
    dones = [p["done"] for p in seen]
    assert dones == sorted(dones)  # it only goes forward

    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"rule {RULE}: ")]
    assert any(f"of {ROWS} planned, " in line and not line.startswith(f"rule {RULE}: {ROWS} of") for line in lines)
    assert "@example.org" not in caplog.text
    ledger_engine.dispose()
