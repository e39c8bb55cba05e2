# The Airflow image of the compose stack: Airflow 3.3.2 plus this project's pinned production
# requirements (requirements.txt only: no test tooling; that is requirements-dev.txt).
FROM apache/airflow:3.3.2-python3.11
COPY requirements.txt /requirements.txt
RUN pip install --no-cache-dir -r /requirements.txt
ENV PYTHONPATH=/opt/airflow
