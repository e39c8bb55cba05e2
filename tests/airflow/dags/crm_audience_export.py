"""A deployment's own DAG for the lineage test: copies the CRM's e-mail addresses into a table the data map does
not declare, with the common SQL provider's operator (OpenLineage reads its SQL for column lineage)."""

from __future__ import annotations

import datetime as dt

from airflow.providers.common.sql.operators.sql import SQLExecuteQueryOperator
from airflow.sdk import dag


@dag(dag_id="crm_audience_export", schedule=None, start_date=dt.datetime(2026, 1, 1), catchup=False)
def crm_audience_export():
    SQLExecuteQueryOperator(
        task_id="copy_audience",
        conn_id="crm_db",
        # aliased as the target's columns: OpenLineage's SQL parser names an INSERT's SELECT columns
        sql="INSERT INTO audience (contact_id, addr) SELECT id AS contact_id, email AS addr FROM contacts "
            "WHERE email IS NOT NULL",
    )


crm_audience_export()
