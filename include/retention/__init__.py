"""Data retention and erasure: the domain package. Its core imports nothing from Airflow;
``include.retention.airflow`` is the only part that does."""
