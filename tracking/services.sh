#!/usr/bin/env bash
# `make services` / `make services-stop`: one PostgreSQL (Debian's packages) and one MLflow
# tracking server on this machine, loopback only, for several tailbench workers to share.
#   tracking/services.sh start|stop|status
# The password is generated once into .services/pgpass (mode 600, git-ignored) and reaches
# every client through PGPASSFILE in the environment: never on a command line, never committed.
# `source .services/env` sets PGPASSFILE, TAILBENCH_STORAGE and MLFLOW_TRACKING_URI.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${SERVICES_DIR:-$root/.services}
pg_port=${PG_PORT:-54329}
mlflow_port=${MLFLOW_PORT:-5001}
venv=${VENV:-$root/.venv}

pg_bin() {
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$bin" ] || { echo "services: PostgreSQL is not installed; run: apt-get install -y postgresql" >&2; exit 1; }
  echo "$bin"
}

# PostgreSQL refuses to run as root: as root, run its programs as the postgres user.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

init_pg() {
  local bin=$1
  mkdir -p "$dir"
  chmod 711 "$dir"
  if [ ! -f "$dir/pgpass" ]; then
    umask 077
    local pw; pw=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
    echo "127.0.0.1:$pg_port:*:tailbench:$pw" > "$dir/pgpass"
  fi
  [ -f "$dir/pg/PG_VERSION" ] && return 0
  mkdir -p "$dir/pg" "$dir/sock"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir/pg" "$dir/sock"
  as_pg "$bin/initdb" -D "$dir/pg" -U postgres --auth-local=trust --auth-host=scram-sha-256 >"$dir/initdb.log"
}

start_pg() {
  local bin=$1
  if as_pg "$bin/pg_ctl" -D "$dir/pg" status >/dev/null 2>&1; then return 0; fi
  as_pg "$bin/pg_ctl" -D "$dir/pg" -l "$dir/sock/postgres.log" -w start \
    -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $dir/sock" >/dev/null
  local pw; pw=$(cut -d: -f5 "$dir/pgpass")
  as_pg "$bin/psql" -h "$dir/sock" -p "$pg_port" -U postgres -qAt -v ON_ERROR_STOP=1 <<SQL >/dev/null
SELECT 'CREATE ROLE tailbench LOGIN' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tailbench')\gexec
ALTER ROLE tailbench PASSWORD '$pw';
SELECT 'CREATE DATABASE optuna OWNER tailbench' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'optuna')\gexec
SELECT 'CREATE DATABASE mlflow OWNER tailbench' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'mlflow')\gexec
SQL
}

write_env() {
  cat > "$dir/env" <<ENV
export PGPASSFILE=$dir/pgpass
export TAILBENCH_STORAGE=postgresql://tailbench@127.0.0.1:$pg_port/optuna
export MLFLOW_TRACKING_URI=http://127.0.0.1:$mlflow_port
ENV
}

start_mlflow() {
  if [ -f "$dir/mlflow.pid" ] && kill -0 "$(cat "$dir/mlflow.pid")" 2>/dev/null; then return 0; fi
  PGPASSFILE=$dir/pgpass MLFLOW_DISABLE_TELEMETRY=true nohup "$venv/bin/mlflow" server \
    --backend-store-uri "postgresql://tailbench@127.0.0.1:$pg_port/mlflow" \
    --artifacts-destination "$dir/artifacts" --host 127.0.0.1 --port "$mlflow_port" \
    --workers 2 >"$dir/mlflow.log" 2>&1 &
  echo $! > "$dir/mlflow.pid"
  for _ in $(seq 1 120); do
    curl -fs "http://127.0.0.1:$mlflow_port/health" >/dev/null 2>&1 && return 0
    kill -0 "$(cat "$dir/mlflow.pid")" 2>/dev/null || break
    sleep 0.5
  done
  echo "services: the MLflow server did not come up; see $dir/mlflow.log" >&2
  tail -n 20 "$dir/mlflow.log" >&2
  exit 1
}

case ${1:-start} in
  start)
    bin=$(pg_bin)
    init_pg "$bin"; start_pg "$bin"; write_env; start_mlflow
    echo "PostgreSQL on 127.0.0.1:$pg_port (databases optuna, mlflow), MLflow server on http://127.0.0.1:$mlflow_port"
    echo "now: source $dir/env && .venv/bin/tailbench run --workers 3";;
  stop)
    if [ -f "$dir/mlflow.pid" ]; then
      pid=$(cat "$dir/mlflow.pid"); pkill -P "$pid" 2>/dev/null || true; kill "$pid" 2>/dev/null || true
      rm -f "$dir/mlflow.pid"
    fi
    if [ -f "$dir/pg/PG_VERSION" ]; then as_pg "$(pg_bin)/pg_ctl" -D "$dir/pg" -m fast stop >/dev/null 2>&1 || true; fi
    echo "services stopped (data kept in $dir)";;
  status)
    as_pg "$(pg_bin)/pg_ctl" -D "$dir/pg" status || true
    curl -fs "http://127.0.0.1:$mlflow_port/health" && echo " MLflow server up" || echo "MLflow server down";;
  *) echo "usage: $0 start|stop|status" >&2; exit 2;;
esac
