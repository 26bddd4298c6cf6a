#!/usr/bin/env bash
# One entry point for every Airflow component of a pg_backup deployment. docker-compose.yaml runs
# `airflow.sh <component>` in each container; `make airflow` (and the end-to-end tests) run
# `airflow.sh all`, which starts the same components as children in one process group.
#
#   airflow.sh init           migrate the metadata DB, make sure the UI login exists
#   airflow.sh scheduler | dag-processor | triggerer | api-server | celery-worker
#   airflow.sh all            init, then every component; Ctrl-C / TERM stops all of them
#
# Connections come from AIRFLOW_CONN_* variables (or a secrets backend), never from arguments.
set -euo pipefail

AIRFLOW_BIN=${AIRFLOW_BIN:-airflow}
API_HOST=${PG_BACKUP_API_HOST:-0.0.0.0}
API_PORT=${PG_BACKUP_API_PORT:-8080}
: "${AIRFLOW_HOME:?set AIRFLOW_HOME}"

login_file() {
  echo "${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated}"
}

init() {
  mkdir -p "$AIRFLOW_HOME/logs"
  "$AIRFLOW_BIN" db migrate >"$AIRFLOW_HOME/logs/init.log" 2>&1 || {
    tail -n 40 "$AIRFLOW_HOME/logs/init.log" >&2; exit 1; }
  # The pools per source and scratch server the config names: dumps and restores wait in them.
  if [ -s "${PG_BACKUP_CONFIG:-}" ] && command -v pg-backup >/dev/null; then
    pg-backup pools >>"$AIRFLOW_HOME/logs/init.log" 2>&1 || {
      tail -n 20 "$AIRFLOW_HOME/logs/init.log" >&2; exit 1; }
  fi
  # The simple auth manager's login: a random password, made once, kept in a 0600 file.
  local file user
  file=$(login_file)
  user=${PG_BACKUP_UI_USER:-admin}
  if [ ! -s "$file" ]; then
    umask 077
    python3 - "$file" "$user" <<'PY'
import json, secrets, sys
path, user = sys.argv[1], sys.argv[2]
with open(path, "w") as out:
    json.dump({user: secrets.token_urlsafe(12)}, out)
PY
  fi
}

component() {
  case "$1" in
    scheduler) exec "$AIRFLOW_BIN" scheduler ;;
    dag-processor) exec "$AIRFLOW_BIN" dag-processor ;;
    triggerer) exec "$AIRFLOW_BIN" triggerer ;;
    api-server) exec "$AIRFLOW_BIN" api-server --host "$API_HOST" --port "$API_PORT" ;;
    # Only with CeleryExecutor: one per worker host, sharing the staging volume.
    # PG_BACKUP_CELERY_HOSTNAME names the worker (two workers on one host need two names).
    celery-worker) exec "$AIRFLOW_BIN" celery worker \
      ${PG_BACKUP_CELERY_HOSTNAME:+--celery-hostname "$PG_BACKUP_CELERY_HOSTNAME"} \
      ${PG_BACKUP_CELERY_CONCURRENCY:+--concurrency "$PG_BACKUP_CELERY_CONCURRENCY"} ;;
    *) echo "unknown component: $1 (scheduler, dag-processor, triggerer, api-server, celery-worker)" >&2; exit 2 ;;
  esac
}

all() {
  # Every component must sign and accept the same tokens; one secret for this run if unset.
  if [ -z "${AIRFLOW__API_AUTH__JWT_SECRET:-}" ]; then
    AIRFLOW__API_AUTH__JWT_SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
    export AIRFLOW__API_AUTH__JWT_SECRET
  fi
  export AIRFLOW__CORE__EXECUTION_API_SERVER_URL=${AIRFLOW__CORE__EXECUTION_API_SERVER_URL:-http://127.0.0.1:$API_PORT/execution/}
  export AIRFLOW__CORE__PARALLELISM=${AIRFLOW__CORE__PARALLELISM:-4}
  init
  local pids=() name
  stop() {
    trap - INT TERM EXIT
    echo "stopping Airflow components" >&2
    kill -TERM "${pids[@]}" 2>/dev/null || true
    sleep 3
    # LocalExecutor workers ignore TERM: end the whole process group.
    kill -KILL 0 2>/dev/null || true
  }
  trap stop INT TERM EXIT
  for name in scheduler dag-processor triggerer api-server; do
    "$0" "$name" >"$AIRFLOW_HOME/logs/$name.log" 2>&1 &
    pids+=("$!")
  done
  echo "Airflow UI: http://localhost:$API_PORT  user: ${PG_BACKUP_UI_USER:-admin}  password: in $(login_file)" >&2
  echo "component logs: $AIRFLOW_HOME/logs/{scheduler,dag-processor,triggerer,api-server}.log" >&2
  # Any component that exits takes the others down with it: half an Airflow is worse than none.
  wait -n "${pids[@]}" || true
  echo "a component exited; see its log under $AIRFLOW_HOME/logs" >&2
  exit 1
}

case "${1:-}" in
  init) init ;;
  all) all ;;
  scheduler|dag-processor|triggerer|api-server|celery-worker) component "$1" ;;
  *) echo "usage: $0 init|all|scheduler|dag-processor|triggerer|api-server|celery-worker" >&2; exit 2 ;;
esac
