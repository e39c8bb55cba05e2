"""Shared fixtures: real databases (PostgreSQL, MariaDB, SQLite) and an isolated AIRFLOW_HOME.

A database that cannot be reached is a skip on a developer machine and a failure under
CI=true, where .ci/run has started them.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]

# Airflow reads its configuration at import: set it before any test imports airflow.
_AF_HOME = os.environ.setdefault("RETENTION_TEST_AIRFLOW_HOME", tempfile.mkdtemp(prefix="retention-airflow-"))
os.environ["AIRFLOW_HOME"] = _AF_HOME
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")
# SQLite metadata DB: wait for another writer (e.g. an approval responder process) instead of failing after 5 s
os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS", "tests.airflow_db_args.CONNECT_ARGS")
os.environ.setdefault("RETENTION_HMAC_KEY", "test-hmac-key-" + "x" * 32)
os.environ.setdefault("RETENTION_RETRY_DELAY_SECONDS", "1")
# dag.test() of a DAG with a deadline alert fails in Airflow 3.3.2 (include/retention/airflow/deadlines.py); the
# deadline tests (tests/airflow/test_deadline_alerts.py) turn them on for their own parses
os.environ.setdefault("RETENTION_DEADLINE_ALERTS", "0")

PG_ADMIN = os.environ.get("RETENTION_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
MY_ADMIN = os.environ.get("RETENTION_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/mysql?charset=utf8mb4")
IN_CI = os.environ.get("CI", "").lower() == "true"

KEY = b"k" * 32


def _unavailable(what: str, exc: Exception):
    msg = f"{what} is not reachable ({type(exc).__name__}); start it or run `make services`"
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


def _fresh_database(kind: str, name: str) -> str:
    """Create (or re-create) database ``name`` on the machine's server of ``kind``; return its URL."""
    admin = PG_ADMIN if kind == "postgresql" else MY_ADMIN
    try:
        engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            if kind == "postgresql":
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
            else:
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
                conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
        engine.dispose()
    except sa.exc.OperationalError as exc:
        _unavailable(kind, exc)
    url = sa.engine.make_url(admin).set(database=name)
    return url.render_as_string(hide_password=False)


def fresh_tables(db_url: str, metadata: sa.MetaData) -> sa.Engine:
    """An engine on ``db_url`` with ``metadata``'s tables dropped and created again, empty."""
    from include.retention.connections import make_engine

    engine = make_engine(db_url)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    return engine


def airflow_uri(url: str, port: int | None = None) -> str:
    """The ``AIRFLOW_CONN_*`` URI of a PostgreSQL / MariaDB SQLAlchemy URL (optionally via another port)."""
    u = sa.engine.make_url(url)
    scheme = "postgres" if u.drivername.startswith("postgresql") else "mysql"
    return f"{scheme}://{u.username}@{u.host}:{port or u.port}/{u.database}"


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def db_url(request, tmp_path) -> str:
    """A fresh, empty database on each of the three engines."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    name = f"rt_{uuid.uuid4().hex[:10]}"
    url = _fresh_database(request.param, name)
    yield url
    admin = sa.create_engine(PG_ADMIN if request.param == "postgresql" else MY_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if request.param == "postgresql":
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        else:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
    admin.dispose()


@pytest.fixture
def fresh_database():
    """Factory: fresh_database('postgresql'|'mariadb', name) -> URL."""
    return _fresh_database


@pytest.fixture(scope="session")
def moto_url():
    """S3 through moto's threaded server over real HTTP (not the in-process mock)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def pytest_collection_modifyitems(session, config, items):
    """The leak scan runs last: it purges and checkpoints the session's SQLite metadata DB from another process,
    after which an approval answered by a second process (tests/airflow/conftest.py's responder) was seen to go
    unnoticed by a later ``dag.test()`` in the same session."""
    last = [i for i in items if i.path.name == "test_leak_scan.py"]
    if last:
        items[:] = [i for i in items if i.path.name != "test_leak_scan.py"] + last
