#!/usr/bin/env bash
# `make ui`: the Airflow UI (airflow standalone: api-server, scheduler, dag-processor, triggerer) on the
# demo of `make demo`, with moto's S3 server beside it. moto keeps objects in memory only, so the demo's
# objects are put again for the CRM rows that are still there.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .demo/env.sh ] || { echo "run 'make demo' first" >&2; exit 1; }
source .demo/env.sh
.venv/bin/python - <<'PY' &
import datetime as dt, json, logging, os, time
from moto.server import ThreadedMotoServer
from include.retention.demo.s3_seed import seed_demo_objects
from include.retention.runtime import parse_conn, sqlalchemy_url
from include.retention.stores.sql import make_engine
logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(os.environ.get("RETENTION_DEMO_S3_PORT", "5055")))
server.start()
crm = make_engine(sqlalchemy_url(parse_conn(os.environ["AIRFLOW_CONN_CRM_DB"])))
seed_demo_objects(parse_conn(os.environ["AIRFLOW_CONN_OBJECTS_S3"]), crm, dt.datetime.now(dt.timezone.utc))
print("ui: S3 (moto) up with the demo objects", flush=True)
while True:
    time.sleep(3600)
PY
MOTO=$!
trap 'kill $MOTO 2>/dev/null' EXIT
echo "Airflow UI: http://localhost:8080  (login printed below by airflow standalone)"
.venv/bin/airflow standalone
