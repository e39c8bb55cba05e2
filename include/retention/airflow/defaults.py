"""default_args shared by the DAGs: retries with exponential backoff."""

from __future__ import annotations

import datetime as dt

DEFAULT_ARGS = {
    "owner": "data-protection",
    "retries": 3,
    "retry_delay": dt.timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": dt.timedelta(minutes=30),
}
