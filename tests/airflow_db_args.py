"""Connect arguments for the tests' Airflow metadata DB (``AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS``).

On the embedded SQLite metadata DB, ``dag.test()`` and a second process (the approval responder of
tests/airflow/conftest.py) write at the same time: wait for the other writer for up to a minute instead of
SQLite's default 5 s. Any other database gets no extra arguments.
"""

from __future__ import annotations

import os

_CONN = os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "")
CONNECT_ARGS: dict = {"timeout": 60} if (not _CONN or _CONN.startswith("sqlite")) else {}
