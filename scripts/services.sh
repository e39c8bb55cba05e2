#!/usr/bin/env bash
# Make sure the machine's PostgreSQL, MariaDB and Redis are up; start the ones that are down.
# Under CI=true a service that cannot be started is an error.
set -uo pipefail

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {  # name port
  for _ in $(seq 1 60); do up "$2" && return 0; sleep 0.5; done
  echo "services: $1 is not answering on 127.0.0.1:$2" >&2
  return 1
}

start_postgres() {
  command -v pg_ctlcluster >/dev/null || { echo "services: PostgreSQL is not installed" >&2; return 1; }
  local v; v=$(ls /etc/postgresql | head -1)
  pg_ctlcluster --skip-systemctl-redirect "$v" main start
}

start_mariadb() {
  [ -x /usr/sbin/mariadbd ] || { echo "services: MariaDB is not installed" >&2; return 1; }
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
}

start_redis() {
  command -v redis-server >/dev/null || { echo "services: Redis is not installed" >&2; return 1; }
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
}

status=0
for spec in "postgres:5432" "mariadb:3306" "redis:6379"; do
  name=${spec%%:*}; port=${spec##*:}
  if up "$port"; then echo "services: $name up on $port"; continue; fi
  echo "services: starting $name"
  "start_$name" && wait_for "$name" "$port" && echo "services: $name up on $port" || status=1
done
if [ "$status" -ne 0 ] && [ "${CI:-}" = "true" ]; then
  echo "services: a required service is down under CI=true" >&2
  exit 1
fi
exit 0
