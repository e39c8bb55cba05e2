"""The only part of the package that imports Airflow: task bodies the DAG files call."""
