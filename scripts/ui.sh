#!/usr/bin/env bash
# `make ui`: the Airflow UI (airflow standalone: api-server, scheduler, dag-processor, triggerer) on the
# demo of `make demo`, with moto's S3 server beside it. moto keeps objects in memory only, so the demo's
# objects are put again for the CRM rows that are still there.
#
# Works from a shell that never activated the virtualenv (its bin goes first on PATH: standalone starts
# its components as `airflow ...` found on PATH). Says in one line why when a part cannot start, instead
# of waiting. Moto and airflow standalone each run in a process group of their own; Ctrl-C or SIGTERM
# stops both groups (SIGTERM, then SIGKILL after RETENTION_UI_STOP_GRACE seconds): nothing is left running.
#
# Environment: RETENTION_UI_PORT (8080), RETENTION_UI_START_TIMEOUT (240 s), RETENTION_UI_STOP_GRACE (20 s),
# AIRFLOW__API__HOST (127.0.0.1), AIRFLOW__CORE__PARALLELISM (4).
# The S3 port is the one `make demo` wrote into .demo/env.sh (RETENTION_DEMO_S3_PORT, 5055).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
VENV=${VENV:-.venv}
[ -x "$VENV/bin/airflow" ] || { echo "ui: no Airflow in $VENV: run 'make demo' first" >&2; exit 1; }
VENV_BIN=$(cd "$VENV/bin" && pwd)
export PATH="$VENV_BIN:$PATH"
[ -f .demo/env.sh ] || { echo "ui: no demo in .demo/: run 'make demo' first" >&2; exit 1; }
source .demo/env.sh

PORT=${RETENTION_UI_PORT:-8080}
START_TIMEOUT=${RETENTION_UI_START_TIMEOUT:-240}
STOP_GRACE=${RETENTION_UI_STOP_GRACE:-20}
LOG=.demo/ui.log
S3_LOG=.demo/ui-s3.log
export AIRFLOW__API__PORT="$PORT"
export AIRFLOW__API__HOST="${AIRFLOW__API__HOST:-127.0.0.1}"  # this machine only (0.0.0.0 to share it)
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$PORT/execution/"
export PYTHONUNBUFFERED=1  # live logs
# A demo on a small machine: 4 LocalExecutor workers instead of 32.
export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-4}"
S3_PORT=$(python -c 'import json, os, urllib.parse
print(urllib.parse.urlsplit(json.loads(os.environ["AIRFLOW_CONN_OBJECTS_S3"])["extra"]["endpoint_url"]).port)')

GROUPS_STARTED=()
stop_all() {
  local pg i
  trap - INT TERM HUP EXIT
  [ ${#GROUPS_STARTED[@]} -eq 0 ] && return 0
  echo "ui: stopping (moto and every Airflow component) ..." >&2
  # SIGTERM to the whole group: every component shuts down by itself (SIGINT may be ignored when
  # `make ui` was started in the background); SIGKILL for what is left after the grace period.
  for pg in "${GROUPS_STARTED[@]}"; do kill -TERM -- "-$pg" 2>/dev/null || true; done
  for ((i = 0; i < STOP_GRACE * 10; i++)); do
    local alive=0
    for pg in "${GROUPS_STARTED[@]}"; do kill -0 -- "-$pg" 2>/dev/null && alive=1; done
    [ "$alive" -eq 0 ] && break
    sleep 0.1
  done
  for pg in "${GROUPS_STARTED[@]}"; do kill -KILL -- "-$pg" 2>/dev/null || true; done
  GROUPS_STARTED=()
  echo "ui: stopped" >&2
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap 'stop_all; exit 129' HUP
trap 'stop_all' EXIT

fail() { echo "ui: $*" >&2; exit 1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
nap() { sleep "$1" & wait $! || true; }  # a sleep that Ctrl-C / SIGTERM interrupt at once
first_error() {  # the first line of a log that says why something failed
  grep -m1 -E 'FileNotFoundError|Address already in use|No such file|ModuleNotFoundError|ImportError|Error:|error:' "$1" \
    2>/dev/null | sed -E 's/^[a-z-]+ +\| //' | cut -c1-200
}

port_open "$PORT" && fail "port $PORT is already in use (another Airflow UI?): stop it or set RETENTION_UI_PORT"
port_open "$S3_PORT" && fail "port $S3_PORT (the demo's S3) is already in use: stop what runs there, or re-run 'make demo' with RETENTION_DEMO_S3_PORT set"

# ---- moto's S3 server, with the demo's objects --------------------------------------------------
: >"$S3_LOG"
setsid python - >>"$S3_LOG" 2>&1 <<'PY' &
import datetime as dt, json, logging, os, time, urllib.parse
from moto.server import ThreadedMotoServer
from include.retention.demo.s3_seed import seed_demo_objects
from include.retention.connections import make_engine, parse_conn, sqlalchemy_url
logging.getLogger("werkzeug").setLevel(logging.ERROR)
conn = parse_conn(os.environ["AIRFLOW_CONN_OBJECTS_S3"])
server = ThreadedMotoServer(ip_address="127.0.0.1", port=urllib.parse.urlsplit(conn.extra["endpoint_url"]).port)
server.start()
crm = make_engine(sqlalchemy_url(parse_conn(os.environ["AIRFLOW_CONN_CRM_DB"])))
n = seed_demo_objects(conn, crm, dt.datetime.now(dt.timezone.utc))
crm.dispose()
print(f"ui: S3 (moto) up with the demo objects: {n}", flush=True)
try:
    while True:
        time.sleep(3600)
finally:
    server.stop()
PY
MOTO=$!
GROUPS_STARTED+=("$MOTO")
for ((i = 0; ; i++)); do
  grep -q "S3 (moto) up" "$S3_LOG" && break
  kill -0 "$MOTO" 2>/dev/null || fail "moto's S3 server did not start: $(first_error "$S3_LOG") (see $S3_LOG)"
  [ "$i" -lt 600 ] || fail "moto's S3 server did not start within 60 s (see $S3_LOG)"
  nap 0.1
done
echo "ui: S3 (moto) up on 127.0.0.1:$S3_PORT with the demo's objects"

# ---- airflow standalone ---------------------------------------------------------------------------
: >"$LOG"
echo "ui: starting airflow standalone (api-server, scheduler, dag-processor, triggerer); log: $LOG"
setsid airflow standalone >>"$LOG" 2>&1 </dev/null &
STANDALONE=$!
GROUPS_STARTED+=("$STANDALONE")
COMPONENTS=(api-server scheduler dag-processor triggerer)

missing_components() {  # components that standalone started and that are no longer running
  local args c out=()
  args=$(ps -o args= --ppid "$STANDALONE" 2>/dev/null || true)
  for c in "${COMPONENTS[@]}"; do
    grep -qE "airflow ${c//-/[-_]}( |$)" <<<"$args" || out+=("$c")  # setproctitle: api_server
  done
  echo "${out[*]}"
}

healthy() {  # the api-server answers and reports every component healthy
  python - "$PORT" <<'PY' 2>/dev/null
import json, sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/api/v2/monitor/health", timeout=3) as r:
    h = json.load(r)
parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
sys.exit(0 if all((h.get(p) or {}).get("status") == "healthy" for p in parts) else 1)
PY
}

started=$SECONDS
db_ready_at=
while :; do
  kill -0 "$STANDALONE" 2>/dev/null || {
    wait "$STANDALONE" && rc=0 || rc=$?
    fail "airflow standalone exited ($rc): $(first_error "$LOG") (see $LOG)"
  }
  if [ -z "$db_ready_at" ] && grep -q "Database ready" "$LOG"; then db_ready_at=$SECONDS; fi
  # Components are started right after "Database ready"; one that is gone 5 s later died.
  if [ -n "$db_ready_at" ] && [ $((SECONDS - db_ready_at)) -ge 5 ]; then
    gone=$(missing_components)
    [ -z "$gone" ] || fail "Airflow component(s) not running: $gone: $(first_error "$LOG") (see $LOG)"
  fi
  if [ -n "$db_ready_at" ] && port_open "$PORT" && healthy; then break; fi
  [ $((SECONDS - started)) -lt "$START_TIMEOUT" ] ||
    fail "Airflow did not become healthy within $START_TIMEOUT s (RETENTION_UI_START_TIMEOUT; see $LOG)"
  nap 1
done

PASSWORDS="$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
LOGIN=$(python -c 'import json, sys; print(", ".join(f"user {u}, password {p}" for u, p in json.load(open(sys.argv[1])).items()))' \
  "$PASSWORDS" 2>/dev/null || echo "see $PASSWORDS")
cat <<EOF
ui: ready in $((SECONDS - started)) s
    Airflow UI:           http://localhost:$PORT/
    Data retention page:  http://localhost:$PORT/retention/   (also under "Data retention" in the UI's menu)
    Login:                $LOGIN
                          (kept in ${PASSWORDS#"$ROOT"/})
    Ctrl-C stops moto and every Airflow component.
EOF

# ---- running: watch the components until Ctrl-C / SIGTERM -------------------------------------------
while :; do
  kill -0 "$STANDALONE" 2>/dev/null || fail "airflow standalone exited: $(first_error "$LOG") (see $LOG)"
  kill -0 "$MOTO" 2>/dev/null || fail "moto's S3 server exited (see $S3_LOG)"
  gone=$(missing_components)
  [ -z "$gone" ] || fail "Airflow component(s) stopped: $gone (see $LOG)"
  nap 2
done
