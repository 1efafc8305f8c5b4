#!/usr/bin/env bash
# Throwaway PostgreSQL 15 clusters for the demo, the tests and the benchmark.
#
#   scripts/cluster.sh start DIR PORT [extra postgresql.conf lines...]
#   scripts/cluster.sh restart DIR   (e.g. to load a newly installed build)
#   scripts/cluster.sh stop  DIR
#
# The cluster runs as the `postgres` user (Postgres refuses root), listens on
# 127.0.0.1:PORT and a socket in DIR, and preloads the extension so that its
# background worker runs. `start` wipes DIR first: every run starts clean.
set -euo pipefail

cmd=${1:?usage: cluster.sh start|stop DIR [PORT]}
dir=${2:?data directory}
bindir=$(pg_config --bindir)

as_pg() {
  if [ "$(id -un)" = postgres ]; then "$@"; else runuser -u postgres -- "$@"; fi
}

# A server started with RUST_BACKTRACE set (this machine sets it for every
# shell) makes pgrx capture and symbolize a Rust backtrace for every ERROR that
# passes through the extension: about 100 ms each (a cancelled waiting
# queue_pop took 120 ms instead of 2). Production servers do not have it.
unset RUST_BACKTRACE RUST_LIB_BACKTRACE

case "$cmd" in
start)
  port=${3:?port}
  shift 3
  if [ -f "$dir/data/postmaster.pid" ]; then
    as_pg "$bindir/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
  mkdir -p "$dir"
  chown postgres:postgres "$dir"
  as_pg "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log"
  {
    echo "port = $port"
    echo "listen_addresses = '127.0.0.1'"
    echo "unix_socket_directories = '$dir'"
    echo "shared_preload_libraries = 'queue'"
    echo "queue.database = 'postgres'"
    echo "max_connections = 100"
    echo "logging_collector = off"
    for line in "$@"; do echo "$line"; done
  } >>"$dir/data/postgresql.conf"
  # The project's ports (25xxx) lie below Linux's ephemeral range
  # (32768-60999): a client socket of an earlier step cannot hold one, as it
  # did when they were 55xxx. A start that failed on a port in use is still
  # tried again, for a server of an earlier step that is still shutting
  # down. Any other failure shows the server's own words, because CI keeps
  # no .run directory to read afterwards.
  for try in 1 2 3 4 5; do
    if as_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null; then
      exit 0
    fi
    if [ "$try" -lt 5 ] && grep -q "Address already in use" "$dir/server.log" 2>/dev/null; then
      echo "cluster.sh: port $port is in use; trying again in 2 s" >&2
      sleep 2
      continue
    fi
    break
  done
  echo "cluster.sh: the server in $dir did not start; the end of its log:" >&2
  tail -25 "$dir/server.log" >&2 2>/dev/null || true
  if grep -q "Address already in use" "$dir/server.log" 2>/dev/null && command -v ss >/dev/null; then
    echo "cluster.sh: what holds port $port (local port range: $(cat /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null)):" >&2
    ss -tanp "( sport = :$port )" >&2 2>/dev/null || true
  fi
  exit 1
  ;;
restart)
  as_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -m fast -w -t 60 restart >/dev/null
  ;;
stop)
  if [ -f "$dir/data/postmaster.pid" ]; then
    as_pg "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
  fi
  ;;
*)
  echo "usage: cluster.sh start DIR PORT | restart DIR | stop DIR" >&2
  exit 2
  ;;
esac
