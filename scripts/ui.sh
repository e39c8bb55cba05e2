#!/usr/bin/env bash
# `make ui`: the Airflow UI (api-server, scheduler, dag-processor, triggerer) on the demo of `make demo`,
# with moto's S3 server beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .demo/env.sh ] || { echo "run 'make demo' first" >&2; exit 1; }
source .demo/env.sh
.venv/bin/python -c "from moto.server import ThreadedMotoServer as S; import time; s=S(ip_address='127.0.0.1', port=${RETENTION_DEMO_S3_PORT:-5055}); s.start(); time.sleep(10**9)" &
MOTO=$!
trap 'kill $MOTO 2>/dev/null' EXIT
echo "Airflow UI: http://localhost:8080  (login printed below by airflow standalone)"
.venv/bin/airflow standalone
