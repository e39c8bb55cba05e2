"""The request registry under concurrency: two first runs creating its schema at once, two erasures of one person
finishing at once (both receipts, one suppression row per identity), each on SQLite, PostgreSQL and MariaDB.
Every worker has its own engine (its own connections), as separate task processes would."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from include.retention.connections import make_engine
from include.retention.registry import Identities, NewRequest, Registry, metadata, suppression
from tests.conftest import KEY
from tests.policy_text import crm_policy

pytestmark = pytest.mark.integration


def _in_parallel(n: int, work: Callable[[int, threading.Barrier], object]) -> list[object]:
    barrier = threading.Barrier(n)
    with ThreadPoolExecutor(n) as pool:
        return [f.result() for f in [pool.submit(work, i, barrier) for i in range(n)]]


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_two_first_runs_create_the_registry_at_once(db_url):
    """Two first runs create the registry's tables at the same moment, five times over on fresh schemas: both
    succeed every time and each can register a request with its own registry right after."""
    for round_ in range(5):
        engine = make_engine(db_url)
        metadata.drop_all(engine)
        engine.dispose()

        def first_run(_i: int, barrier: threading.Barrier) -> Registry:
            registry = Registry(make_engine(db_url), KEY)
            barrier.wait()
            registry.ensure_schema()
            return registry

        registries = _in_parallel(2, first_run)
        ids = [r.register(NewRequest(Identities(email=f"first{round_}.{i}@example.org")))
               for i, r in enumerate(registries)]
        for r in registries:
            r.engine.dispose()
        assert len(set(ids)) == 2
        assert {t.name for t in metadata.sorted_tables} <= _tables(db_url)
        check = Registry(make_engine(db_url), KEY)
        assert {r["status"] for r in check.get_many(ids).values()} == {"pending"}
        check.engine.dispose()


def test_two_first_runs_add_a_missing_column_at_once(db_url):
    """A registry from before key ids (no ``key_id`` column): two first runs of the new version add it at once."""
    engine = make_engine(db_url)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    with engine.begin() as conn:
        for table in ("subject_requests", "suppression_list"):
            conn.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN key_id")
    engine.dispose()

    def first_run(_i: int, barrier: threading.Barrier) -> None:
        registry = Registry(make_engine(db_url), KEY)
        try:
            barrier.wait()
            registry.ensure_schema()
        finally:
            registry.engine.dispose()

    _in_parallel(2, first_run)
    engine = make_engine(db_url)
    for table in ("subject_requests", "suppression_list"):
        assert "key_id" in {c["name"] for c in sa.inspect(engine).get_columns(table)}
    engine.dispose()


def _suppression_rows(engine: sa.Engine) -> list[tuple[str, str, str | None]]:
    with engine.connect() as conn:
        return sorted(conn.execute(sa.select(suppression.c.digest, suppression.c.kind, suppression.c.request_id)
                                   ).all())


def test_two_suppressions_of_one_person_at_once(db_url):
    """``suppression.add_many`` of two requests for the same person, started together ten times: neither fails on the
    list's unique key, the person is listed once per identity, under one of the two requests."""
    registry = Registry(make_engine(db_url), KEY)
    registry.ensure_schema()
    for round_ in range(10):
        ident = Identities(email=f"Twice.{round_}@Example.org", phone=f"+49 30 12345{round_:02d}")
        rids = [registry.register(NewRequest(ident)) for _ in range(2)]

        def finish(i: int, barrier: threading.Barrier, rids: list[str] = rids) -> int:
            mine = Registry(make_engine(db_url), KEY)
            try:
                barrier.wait()
                return mine.suppression.add_many([rids[i]])
            finally:
                mine.engine.dispose()

        added = _in_parallel(2, finish)
        assert sum(added) == 2  # two digests (email, phone), each added by exactly one of the two
        rows = [r for r in _suppression_rows(registry.engine) if r[2] in rids]
        assert sorted(r[1] for r in rows) == ["email", "phone"]
        assert {r[0] for r in rows} == {registry.digest("email", ident.email), registry.digest("phone", ident.phone)}
        assert registry.suppression.contains("email", f"twice.{round_}@example.org")
    # a digest an unsubscribe listed earlier (no request) is marked as the erasure's, not written twice
    registry.suppression.add_values([("email", "late@example.org")], reason="retention:test")
    rid = registry.register(NewRequest(Identities(email="late@example.org")))
    assert registry.suppression.add_many([rid]) == 0
    assert [r[2] for r in _suppression_rows(registry.engine) if r[0] == registry.digest("email", "late@example.org")
            ] == [rid]
    registry.engine.dispose()


POLICY = crm_policy("""\
          people:
            table: people
            primary_key: id
            columns: [id, email]
            identities: {email: email}
""")


def test_two_erasures_of_one_person_finish_at_once(db_url, tmp_path, monkeypatch):
    """erasure_request's ``finalize`` for two requests of the same person, in two threads at once (every system
    recorded): both requests end complete with a receipt, and the person is on the suppression list once."""
    from include.retention.airflow import erasure_tasks

    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(POLICY)
    monkeypatch.setenv("RETENTION_POLICY_PATH", str(policy_file))
    monkeypatch.setenv("AIRFLOW_CONN_RETENTION_LEDGER", json.dumps({"conn_type": "sqlite",
                                                                     "extra": {"sqlalchemy_url": db_url}}))
    monkeypatch.setenv("AIRFLOW_CONN_CRM_DB", json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "crm.db")}))
    # the CRM as an erasure leaves it: the person's row gone, somebody else's kept (``finalize`` resolves the
    # request's identities to one person, ADR 0018, before it writes the suppression list)
    crm = make_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    with crm.begin() as conn:
        conn.execute(sa.text("CREATE TABLE people (id INTEGER PRIMARY KEY, email VARCHAR(100))"))
        conn.execute(sa.text("INSERT INTO people VALUES (1, 'somebody.else@example.org')"))
    crm.dispose()
    secret = os.environ["RETENTION_HMAC_KEY"].encode()
    registry = Registry(make_engine(db_url), secret)
    registry.ensure_schema()
    for round_ in range(3):
        ident = Identities(email=f"both.{round_}@example.org")
        rids = [registry.register(NewRequest(ident), dag_id="erasure_request", run_id=f"r{round_}-{i}")
                for i in range(2)]
        for rid in rids:
            registry.start(rid)
            registry.systems.set([rid], "crm", "recorded")

        def finalize(i: int, barrier: threading.Barrier, rids: list[str] = rids) -> list[dict]:
            barrier.wait()
            return erasure_tasks.finalize([rids[i]], ["crm"])

        results = _in_parallel(2, finalize)
        assert [r[0]["status"] for r in results] == ["complete", "complete"]
        assert {r["status"] for r in registry.get_many(rids).values()} == {"complete"}
        assert set(registry.receipts_many(rids)) == set(rids)
        listed = [r for r in _suppression_rows(registry.engine) if r[0] == registry.digest("email", ident.email)]
        assert len(listed) == 1 and listed[0][2] in rids
    registry.engine.dispose()
