"""``python -m include.retention.airflow.purge_cli --days N [--dry-run]``: purge erasure runs' metadata.

Prints the rows changed per table as one JSON line (the last line of stdout, so a BashOperator
pushes it as its XCom). Needs the Airflow metadata DB, like ``airflow db clean``.

Inside an Airflow task (the ``erasure_metadata_purge`` DAG), the Task SDK's supervisor points
``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`` at ``airflow-db-not-allowed:///`` before task code runs,
and a BashOperator's child process inherits that. So when ``RETENTION_METADATA_DB_CONN`` is set
it is used as the metadata DB URL instead; without it, a blocked URL is an error (exit code 2).

``--run DAG_ID/RUN_ID`` (repeatable) or ``--runs-from-env`` (``RETENTION_PURGE_RUNS``: a JSON list
of ``[dag_id, run_id]``, how ``erasure_run_purge`` passes the runs of its triggering asset events
without putting run ids into a shell command) purges just those runs, right after they finish
(``--wait`` seconds at most; a run not finished by then is left to the daily purge).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from include.retention.settings import reveal, settings

METADATA_CONN_ENV = "RETENTION_METADATA_DB_CONN"
_BLOCKED_PREFIX = "airflow-db-not-allowed"
_CONN_VARS = ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__SQL_ALCHEMY_CONN")


def _point_at_metadata_db() -> str | None:
    """Apply ``RETENTION_METADATA_DB_CONN`` before Airflow reads its config; return an error, if any."""
    url = reveal(settings().metadata_db_conn)
    if url:
        os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = url
        os.environ.pop("AIRFLOW__CORE__SQL_ALCHEMY_CONN", None)
        return None
    if any(os.environ.get(var, "").startswith(_BLOCKED_PREFIX) for var in _CONN_VARS):
        return (f"the metadata DB is blocked in this process (running inside an Airflow task); "
                f"set {METADATA_CONN_ENV} to the metadata DB's SQLAlchemy URL on the worker")
    return None


def _parser(default_days: int) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m include.retention.airflow.purge_cli",
        description="Purge conf, XCom, rendered fields and audit-log rows of finished erasure runs.")
    parser.add_argument("--days", type=int, default=default_days,
                        help=f"keep runs that finished fewer than this many days ago "
                             f"(default: RETENTION_PURGE_AFTER_DAYS, now {default_days}); 0 purges all finished")
    parser.add_argument("--dag-id", dest="dag_ids", action="append",
                        help="DAG whose runs to purge (repeatable; default: erasure_request and erasure_intake)")
    parser.add_argument("--dry-run", action="store_true", help="count what would change; change nothing")
    parser.add_argument("--run", dest="runs", action="append", default=[], metavar="DAG_ID/RUN_ID",
                        help="purge only this run (repeatable); implies --days 0")
    parser.add_argument("--runs-from-env", action="store_true",
                        help=f"purge only the runs listed in {RUNS_ENV} (JSON list of [dag_id, run_id])")
    parser.add_argument("--wait", type=float, default=0, metavar="SECONDS",
                        help="with --run: wait this long for the runs to finish")
    return parser


RUNS_ENV = "RETENTION_PURGE_RUNS"


def _runs(args) -> list[tuple[str, str]] | None:
    """The runs named on the command line or in RETENTION_PURGE_RUNS; None: no selection (all finished runs)."""
    if not args.runs and not args.runs_from_env:
        return None
    runs = []
    for item in args.runs:
        dag_id, sep, run_id = item.partition("/")
        if not sep or not dag_id or not run_id:
            raise ValueError(f"--run must be DAG_ID/RUN_ID, not {item[:80]!r}")
        runs.append((dag_id, run_id))
    if args.runs_from_env:
        try:
            listed = json.loads(settings().purge_runs or "[]")
            if not isinstance(listed, list) or not all(
                    isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) and x for x in p) for p in listed):
                raise ValueError
        except ValueError:
            raise ValueError(f"{RUNS_ENV} must be a JSON list of [dag_id, run_id] pairs") from None
        runs.extend((d, r) for d, r in listed)
    return list(dict.fromkeys(runs))


def main(argv: list[str] | None = None) -> int:
    from include.retention.airflow.purge import ERASURE_DAG_IDS, purge_after_days

    try:
        default_days = purge_after_days()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args = _parser(default_days).parse_args(argv)
    if args.days < 0:
        print("error: --days must not be negative", file=sys.stderr)
        return 2
    try:
        runs = _runs(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    problem = _point_at_metadata_db()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2

    from include.retention.airflow.purge import purge_erasure_runs, wait_finished

    if runs is None:
        counts = purge_erasure_runs(args.days, dag_ids=tuple(args.dag_ids or ERASURE_DAG_IDS), dry_run=args.dry_run)
        print(json.dumps({"dry_run": args.dry_run, "older_than_days": args.days, "rows": counts}, sort_keys=True))
        return 0
    allowed = set(args.dag_ids or ERASURE_DAG_IDS)
    refused = [f"{d}/{r}" for d, r in runs if d not in allowed]
    if refused:
        print(f"error: not an erasure DAG's run: {', '.join(refused)[:200]}", file=sys.stderr)
        return 2
    finished = wait_finished(runs, args.wait) if runs else []
    counts = purge_erasure_runs(0, dry_run=args.dry_run, runs=finished) if finished else {}
    print(json.dumps({"dry_run": args.dry_run, "runs": [f"{d}/{r}" for d, r in finished],
                      "not_finished": [f"{d}/{r}" for d, r in runs if (d, r) not in finished], "rows": counts},
                     sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
