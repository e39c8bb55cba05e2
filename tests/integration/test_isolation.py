"""MariaDB sessions run at REPEATABLE READ whatever the server's or user's default.

The batch walks (ADR 0015's set-based cascades, ADR 0016's range walk) rely on InnoDB's next-key locks: a
locking read holds the range it scanned, so the statements after it act on exactly the rows it counted. At
READ COMMITTED there are no gap locks; a site whose server defaults to it must not silently lose that.
"""

from __future__ import annotations

import urllib.parse

import sqlalchemy as sa

from include.retention.connections import make_engine

READ_COMMITTED_FIRST = urllib.parse.quote("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")


def _isolation(engine: sa.Engine) -> str:
    with engine.connect() as conn:
        return conn.exec_driver_sql("SELECT @@tx_isolation").scalar()


def test_mariadb_session_is_repeatable_read_over_a_read_committed_default(fresh_database):
    url = fresh_database("mariadb", "rt_isolation")
    # a login whose sessions start at READ COMMITTED (as a server default or init_command would make them)
    sep = "&" if "?" in url else "?"
    weakened = f"{url}{sep}init_command={READ_COMMITTED_FIRST}"
    plain = sa.create_engine(weakened)
    try:
        assert _isolation(plain) == "READ-COMMITTED"  # the setting takes, so the assertion below can fail
    finally:
        plain.dispose()
    ours = make_engine(weakened)
    try:
        assert _isolation(ours) == "REPEATABLE-READ"
        with ours.begin() as conn:  # and every new transaction of a pooled connection keeps it
            assert conn.exec_driver_sql("SELECT @@tx_isolation").scalar() == "REPEATABLE-READ"
    finally:
        ours.dispose()
