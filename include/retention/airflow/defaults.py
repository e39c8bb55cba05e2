"""default_args shared by the DAGs: retries with exponential backoff."""

from __future__ import annotations

import datetime as dt
import os

DEFAULT_ARGS = {
    "owner": "data-protection",
    "retries": int(os.environ.get("RETENTION_RETRIES", "3")),
    "retry_delay": dt.timedelta(seconds=float(os.environ.get("RETENTION_RETRY_DELAY_SECONDS", "30"))),
    "retry_exponential_backoff": True,
    "max_retry_delay": dt.timedelta(minutes=30),
}
