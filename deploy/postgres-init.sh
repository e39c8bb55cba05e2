#!/bin/bash
# The ledger and request registry live in their own database, with their own user; its password
# comes from LEDGER_DB_PASSWORD (the postgres service's environment, from .env: `make secrets`).
set -euo pipefail
: "${LEDGER_DB_PASSWORD:?LEDGER_DB_PASSWORD is not set - run make secrets}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -v pw="$LEDGER_DB_PASSWORD" <<'SQL'
CREATE USER ledger WITH PASSWORD :'pw';
CREATE DATABASE ledger OWNER ledger;
SQL
