"""erasure_metadata_purge: daily, remove data subjects' identities from Airflow's metadata DB.

Finished runs of `erasure_request` and `erasure_intake` older than `days` (default
`RETENTION_PURGE_AFTER_DAYS`, 7) lose their conf (replaced by `{"purged": true}`), XComs,
rendered template fields, notes and audit-log rows, without an archive table
(docs/adr/0003-identities-in-airflow-metadata.md). Run ids, states and dates stay.

The task runs `python -m include.retention.airflow.purge_cli`, a command that opens the metadata
DB itself, as `airflow db clean` does; task code cannot. The worker therefore needs the metadata
DB's URL in `RETENTION_METADATA_DB_CONN` (Airflow replaces `AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`
with `airflow-db-not-allowed:///` in task processes, and child processes inherit that) and the
project on its `PYTHONPATH`. In the compose stack `PYTHONPATH` is set and
`RETENTION_METADATA_DB_CONN` goes into `x-airflow-common`'s environment (the same URL as
`AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`); without it the task fails with exit code 2 and says so.
Elsewhere, set it on the workers or run the same command from cron instead.
`days` is an integer Param, so a manual trigger's conf cannot inject shell text.
Parsing this file opens no database.

erasure_run_purge: the same, right after each run. A successful `finalize` of `erasure_request` or
`erasure_intake` emits the asset `retention_erasure_run_done`; this DAG is scheduled on it and
purges exactly the runs that emitted the events (passed as JSON in `RETENTION_PURGE_RUNS`, never
as shell text), after waiting for them to finish. A failed run keeps its conf until the daily purge.
"""

from __future__ import annotations

import shlex
import sys

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Param

from include.retention.airflow.defaults import dag_args
from include.retention.airflow.erasure_group import ERASURE_RUN_DONE
from include.retention.airflow.purge import purge_after_days
from include.retention.settings import settings

PYTHON = shlex.quote(sys.executable)  # the interpreter that runs Airflow, not whatever `python` is first on PATH

with DAG(
    **dag_args("erasure_metadata_purge", "maintenance"),
    schedule=settings().purge_schedule,
    max_active_runs=1,
    doc_md=__doc__,
    params={
        "days": Param(purge_after_days(), type="integer", minimum=0, title="Keep days",
                      description="Purge erasure runs that finished more than this many days ago (0: all finished)."),
    },
):
    BashOperator(
        task_id="purge_erasure_runs",
        bash_command=f"{PYTHON} -m include.retention.airflow.purge_cli" " --days {{ params.days }}",
        doc_md="Prints the rows changed per table; that JSON line becomes the task's XCom.",
    )

with DAG(
    **dag_args("erasure_run_purge", "maintenance"),
    schedule=[ERASURE_RUN_DONE],
    doc_md=__doc__,
):
    BashOperator(
        task_id="purge_finished_run",
        bash_command=f"{PYTHON} -m include.retention.airflow.purge_cli --runs-from-env --wait 300",
        # the runs whose finalize emitted the events; JSON in the environment, not in the command line
        env={"RETENTION_PURGE_RUNS": (
            "{%- set ns = namespace(runs=[]) -%}{%- for events in triggering_asset_events.values() -%}"
            "{%- for e in events -%}{%- set ns.runs = ns.runs + [[e.source_dag_id, e.source_run_id]] -%}"
            "{%- endfor -%}{%- endfor -%}{{ ns.runs | tojson }}")},
        append_env=True,
        doc_md="Prints the purged runs and the rows changed per table; that JSON line becomes the task's XCom.",
    )
