#!/usr/bin/env bash
# PgBouncer in transaction mode in front of a local test cluster, for the
# tests and benchmarks that prove pooler-safe waiting.
#
#   scripts/pgbouncer.sh start DIR PORT BACKEND_PORT [USER...]
#   scripts/pgbouncer.sh stop DIR
#
# Listens on 127.0.0.1:PORT, pools database postgres of the cluster on
# 127.0.0.1:BACKEND_PORT, trusts the users named (default: postgres), and
# runs as the postgres user (pgbouncer refuses root). `start` wipes DIR.
set -euo pipefail

cmd=${1:?usage: pgbouncer.sh start DIR PORT BACKEND_PORT [USER...] | stop DIR}
dir=${2:?directory}
bin=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)

as_pg() {
  if [ "$(id -un)" = postgres ]; then "$@"; else runuser -u postgres -- "$@"; fi
}

case "$cmd" in
start)
  port=${3:?port}
  backend=${4:?backend port}
  shift 4
  users=("$@")
  [ ${#users[@]} -gt 0 ] || users=(postgres)
  [ -x "$bin" ] || { echo "pgbouncer is not installed (scripts/ensure-deps.sh installs it)" >&2; exit 2; }
  if [ -f "$dir/pgbouncer.pid" ]; then kill "$(cat "$dir/pgbouncer.pid")" 2>/dev/null || true; fi
  rm -rf "$dir"
  mkdir -p "$dir"
  for u in "${users[@]}"; do echo "\"$u\" \"\""; done >"$dir/users.txt"
  cat >"$dir/pgbouncer.ini" <<INI
[databases]
postgres = host=127.0.0.1 port=$backend dbname=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/users.txt
pool_mode = transaction
max_client_conn = 300
default_pool_size = 100
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
ignore_startup_parameters = extra_float_digits
INI
  chown -R postgres:postgres "$dir"
  as_pg "$bin" -d "$dir/pgbouncer.ini"
  for _ in $(seq 100); do
    if psql -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -c 'SELECT 1' >/dev/null 2>&1; then exit 0; fi
    sleep 0.1
  done
  echo "pgbouncer did not start (see $dir/pgbouncer.log)" >&2
  exit 1
  ;;
stop)
  if [ -f "$dir/pgbouncer.pid" ]; then kill "$(cat "$dir/pgbouncer.pid")" 2>/dev/null || true; fi
  ;;
*)
  echo "usage: pgbouncer.sh start DIR PORT BACKEND_PORT [USER...] | stop DIR" >&2
  exit 2
  ;;
esac
