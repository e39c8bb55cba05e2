"""Concurrent first runs and concurrent writers on one ledger: nothing crashes, no append is lost.

Each writer has its own engine (its own connections), as separate task processes would; on SQLite
the file is shared, which is where an unserialised ledger used to lose appends.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from include.retention.ledger import Ledger, RunRef, entries, head
from include.retention.stores.sql import make_engine
from tests.conftest import KEY, ROOT

pytestmark = pytest.mark.integration

WRITERS = 8
PER_WRITER = 25


def _in_parallel(n: int, work: Callable[[int, threading.Barrier], object]) -> list[object]:
    barrier = threading.Barrier(n)
    with ThreadPoolExecutor(n) as pool:
        return [f.result() for f in [pool.submit(work, i, barrier) for i in range(n)]]


def test_concurrent_first_ensure_schema(db_url):
    """Eight first runs create the tables at the same moment: none crashes, one head row."""
    def first_run(i: int, barrier: threading.Barrier) -> int:
        led = Ledger(make_engine(db_url), KEY)
        try:
            barrier.wait()
            led.ensure_schema()
            return led.append(run=RunRef("first", f"run{i}"), action="sweep", outcome="complete")
        finally:
            led.engine.dispose()

    seqs = _in_parallel(WRITERS, first_run)
    assert sorted(seqs) == list(range(1, WRITERS + 1))
    led = Ledger(make_engine(db_url), KEY)
    with led.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(head)).scalar() == 1
    assert led.verify(record=False).ok
    led.engine.dispose()


def test_two_concurrent_first_ensure_schema_calls(db_url):
    """Exactly the issue's case: two first runs, repeated on fresh schemas."""
    for _ in range(3):
        engine = make_engine(db_url)
        Ledger(engine, KEY).ensure_schema()
        with engine.begin() as conn:
            for table in ("ledger_verifications", "ledger_head", "ledger_entries"):
                conn.execute(sa.text(f"DROP TABLE {table}"))
        engine.dispose()

        def first(i: int, barrier: threading.Barrier) -> None:
            led = Ledger(make_engine(db_url), KEY)
            try:
                barrier.wait()
                led.ensure_schema()
            finally:
                led.engine.dispose()

        _in_parallel(2, first)
    led = Ledger(make_engine(db_url), KEY)
    assert led.current_head() == (0, "0" * 64)
    led.engine.dispose()


def test_eight_writers_lose_no_append(db_url):
    Ledger(make_engine(db_url), KEY).ensure_schema()

    def writer(i: int, barrier: threading.Barrier) -> list[int]:
        led = Ledger(make_engine(db_url), KEY)
        try:
            barrier.wait()
            out = []
            for n in range(PER_WRITER):
                if n % 5 == 0:  # intents and outcomes interleave with plain appends
                    intent = led.intend(run=RunRef("w", str(i)), action="delete", count=n, rule_id=f"r{i}")
                    out += [intent, led.settle(intent, count=n)]
                else:
                    out.append(led.append(run=RunRef("w", str(i)), action="lock", outcome="done", count=n))
            return out
        finally:
            led.engine.dispose()

    results = _in_parallel(WRITERS, writer)
    seqs = sorted(s for r in results for s in r)
    total = WRITERS * (PER_WRITER + PER_WRITER // 5)
    assert seqs == list(range(1, total + 1))  # every append got its own sequence number
    led = Ledger(make_engine(db_url), KEY)
    with led.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(entries)).scalar() == total
    result = led.verify(record=False)
    assert result.ok and result.entries == total and result.unreconciled == [], str(result)
    led.engine.dispose()


_PROCESS_WRITER = """
import sys
from include.retention.ledger import Ledger, RunRef
from include.retention.stores.sql import make_engine
led = Ledger(make_engine(sys.argv[1]), sys.argv[2].encode())
for n in range(int(sys.argv[3])):
    led.append(run=RunRef("proc", sys.argv[4]), action="lock", outcome="done", count=n)
"""


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_eight_writer_processes_on_sqlite(db_url):
    """Separate processes on one SQLite file (the embedded demo's ledger), starting on an empty file."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", _PROCESS_WRITER, db_url, KEY.decode(), str(PER_WRITER), str(i)],
                              env=env, stderr=subprocess.PIPE, text=True) for i in range(WRITERS)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * WRITERS, errors
    led = Ledger(make_engine(db_url), KEY)
    result = led.verify(record=False)
    assert result.ok and result.entries == WRITERS * PER_WRITER, str(result)
    led.engine.dispose()


def test_verify_while_writers_append_is_never_a_false_alarm(db_url):
    """The page verifies while sweeps write: entries appended during the walk are not "removed"."""
    Ledger(make_engine(db_url), KEY).ensure_schema()
    stop = threading.Event()

    def writer(i: int, barrier: threading.Barrier) -> int:
        led = Ledger(make_engine(db_url), KEY)
        try:
            barrier.wait()
            n = 0
            while not stop.is_set() and n < 400:
                led.append(run=RunRef("w", str(i)), action="lock", outcome="done", count=n)
                n += 1
            return n
        finally:
            led.engine.dispose()

    results: list[str] = []

    def verifier(i: int, barrier: threading.Barrier) -> int:
        led = Ledger(make_engine(db_url), KEY)
        try:
            barrier.wait()
            for _ in range(15):
                result = led.verify(record=False, chunk=7)  # small chunks: many reads while others write
                results.append(str(result) if not result.ok else "ok")
            stop.set()
            return 0
        finally:
            led.engine.dispose()

    _in_parallel(4, lambda i, b: verifier(i, b) if i == 0 else writer(i, b))
    assert results and all(r == "ok" for r in results), results
    led = Ledger(make_engine(db_url), KEY)
    assert led.verify(record=False).ok
    led.engine.dispose()
