#!/usr/bin/env bash
# `make services` / `make services-stop`: one PostgreSQL (Debian's packages) and one MLflow
# tracking server on this machine, loopback only, for several tailbench workers to share.
#   tracking/services.sh start|stop|status
# Closed to the machine's other users: PostgreSQL asks every client for a password
# (scram-sha-256) on its socket and on loopback, its socket folder is mode 700 (set on every
# start, whatever it was), and the MLflow server runs MLflow's basic-auth app (no login, no
# access). The passwords are generated once into .services/ (mode 600, git-ignored) and reach
# clients through the environment (PGPASSFILE, MLFLOW_TRACKING_USERNAME/PASSWORD): never on a
# command line, never committed. `source .services/env` sets them and the two URIs.
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

secret() { [ -f "$1" ] || (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$1"); cat "$1"; }

HBA_MARK="# tailbench services.sh: passwords everywhere"
hba() {
  printf '%s\n' "$HBA_MARK" \
    "local all all scram-sha-256" \
    "host all all 127.0.0.1/32 scram-sha-256" \
    "host all all ::1/128 scram-sha-256"
}

init_pg() {
  local bin=$1
  mkdir -p "$dir"
  chmod 711 "$dir"
  local pw super; pw=$(secret "$dir/tailbench.password"); super=$(secret "$dir/postgres.password")
  (umask 077; echo "127.0.0.1:$pg_port:*:tailbench:$pw" > "$dir/pgpass")
  mkdir -p "$dir/sock"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir/sock"
  chmod 700 "$dir/sock"  # whatever it was: only the server's user reaches its socket
  [ -f "$dir/pg/PG_VERSION" ] && return 0
  mkdir -p "$dir/pg"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir/pg"
  local pwfile="$dir/.initdb-password"  # read by initdb (as the server's user), then gone
  (umask 077; echo "$super" > "$pwfile")
  [ "$(id -u)" = 0 ] && chown postgres: "$pwfile"
  as_pg "$bin/initdb" -D "$dir/pg" -U postgres --auth=scram-sha-256 --pwfile="$pwfile" >"$dir/initdb.log"
  rm -f "$pwfile"
}

# psql as the superuser over the socket, the password from the environment (not the command line)
admin_sql() { ( export PGPASSWORD; PGPASSWORD=$(cat "$dir/postgres.password")
  as_pg "$(pg_bin)/psql" -h "$dir/sock" -p "$pg_port" -U postgres -qAt -v ON_ERROR_STOP=1 ); }

start_pg() {
  local bin=$1
  if ! as_pg "$bin/pg_ctl" -D "$dir/pg" status >/dev/null 2>&1; then
    as_pg "$bin/pg_ctl" -D "$dir/pg" -l "$dir/sock/postgres.log" -w start \
      -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $dir/sock" >/dev/null
  fi
  local pw; pw=$(cat "$dir/tailbench.password")
  # a cluster an older services.sh made may still trust its socket: the passwords are set
  # first, then the password-only rules below replace its pg_hba.conf and the server reloads
  admin_sql <<SQL >/dev/null
ALTER ROLE postgres PASSWORD '$(cat "$dir/postgres.password")';
SELECT 'CREATE ROLE tailbench LOGIN' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tailbench')\gexec
ALTER ROLE tailbench PASSWORD '$pw';
SELECT 'CREATE DATABASE optuna OWNER tailbench' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'optuna')\gexec
SELECT 'CREATE DATABASE mlflow OWNER tailbench' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'mlflow')\gexec
SQL
  if ! cmp -s <(hba) "$dir/pg/pg_hba.conf"; then
    hba | as_pg tee "$dir/pg/pg_hba.conf" >/dev/null
    as_pg "$bin/pg_ctl" -D "$dir/pg" reload >/dev/null
  fi
}

write_env() {
  (umask 077; cat > "$dir/env" <<ENV
export PGPASSFILE=$dir/pgpass
export TAILBENCH_STORAGE=postgresql://tailbench@127.0.0.1:$pg_port/optuna
export MLFLOW_TRACKING_URI=http://127.0.0.1:$mlflow_port
export MLFLOW_TRACKING_USERNAME=admin
export MLFLOW_TRACKING_PASSWORD=$(cat "$dir/mlflow.password")
ENV
  )
}

# MLflow's basic-auth app: every request needs a login; `admin` is created at the first start
# with the generated password, and users that are not admins start with no permission at all
auth_config() {
  (umask 077; cat > "$dir/basic_auth.ini" <<INI
[mlflow]
default_permission = NO_PERMISSIONS
database_uri = sqlite:///$dir/mlflow-auth.db
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
# a login's PBKDF2 check once a minute per worker, not on every one of a run's many requests
auth_cache_ttl_seconds = 60
INI
  )
}

start_mlflow() {
  if [ -f "$dir/mlflow.pid" ] && kill -0 "$(cat "$dir/mlflow.pid")" 2>/dev/null; then return 0; fi
  secret "$dir/mlflow.password" >/dev/null
  auth_config
  ( umask 077
    export MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY
    export MLFLOW_AUTH_CONFIG_PATH=$dir/basic_auth.ini
    MLFLOW_AUTH_ADMIN_PASSWORD=$(cat "$dir/mlflow.password")
    MLFLOW_FLASK_SERVER_SECRET_KEY=$(secret "$dir/mlflow-flask.secret")  # its CSRF tokens
    PGPASSFILE=$dir/pgpass MLFLOW_DISABLE_TELEMETRY=true nohup "$venv/bin/mlflow" server \
      --app-name basic-auth \
      --backend-store-uri "postgresql://tailbench@127.0.0.1:$pg_port/mlflow" \
      --artifacts-destination "$dir/artifacts" --host 127.0.0.1 --port "$mlflow_port" \
      --workers 2 >"$dir/mlflow.log" 2>&1 &
    echo $! > "$dir/mlflow.pid" )
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
    init_pg "$bin"; start_pg "$bin"; start_mlflow; write_env
    echo "PostgreSQL on 127.0.0.1:$pg_port (databases optuna, mlflow), MLflow server on http://127.0.0.1:$mlflow_port"
    echo "both ask for passwords (in $dir, mode 600); now: source $dir/env && .venv/bin/tailbench run --workers 3";;
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
