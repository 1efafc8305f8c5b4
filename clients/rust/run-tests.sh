#!/usr/bin/env bash
# Tests of the Rust client (crate queue-client) against a real, throwaway cluster.
#
#   clients/rust/run-tests.sh [test-binary args, e.g. a test name filter]
#
# Starts PostgreSQL 15 with the extension preloaded (scripts/cluster.sh) on
# port 25473 with queue.tick = 100ms and track_functions = 'all' (data in
# .run/rust-client-cluster),
# creates the extension in database postgres, runs
# `cargo test -p queue-client -- --test-threads=1 --nocapture` (so the measured
# latencies are printed) with the DSN in
# QUEUE_TEST_DATABASE_URL, stops the cluster, and exits with cargo's status.
# Waits (up to 25 minutes) for the extension to be installed if a first build
# is still running.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
port=${QUEUE_TEST_PORT:-25473}
dir="$root/.run/rust-client-cluster"
libdir=$(pg_config --pkglibdir)
bindir=$(pg_config --bindir)

waited=0
until [ -f "$libdir/queue.so" ]; do
  if [ "$waited" -ge 1500 ]; then
    echo "run-tests: $libdir/queue.so is not installed (waited ${waited}s)" >&2
    exit 2
  fi
  [ "$waited" -eq 0 ] && echo "run-tests: waiting for $libdir/queue.so (the extension build)..."
  sleep 10
  waited=$((waited + 10))
done

# Build first, so that compile time does not count against the cluster's tests.
cd "$root"
if ! cargo test -p queue-client --no-run; then
  echo "run-tests: the crate or its tests do not compile" >&2
  exit 2
fi

mkdir -p "$root/.run"
stop_cluster() { "$root/scripts/cluster.sh" stop "$dir" >/dev/null 2>&1 || true; }
trap stop_cluster EXIT

# track_functions = 'all': the ack-batching tests count queue_ack_batch calls
# in pg_stat_user_functions (harmless for the other tests).
if ! "$root/scripts/cluster.sh" start "$dir" "$port" "queue.tick = 100ms" "track_functions = 'all'"; then
  echo "run-tests: the cluster did not start; see $dir/server.log" >&2
  exit 2
fi
if ! "$bindir/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
     -c 'CREATE EXTENSION queue'; then
  echo "run-tests: CREATE EXTENSION queue failed" >&2
  exit 2
fi

export QUEUE_TEST_DATABASE_URL="host=127.0.0.1 port=$port user=postgres dbname=postgres"
export QUEUE_TEST_CLUSTER_DIR="$dir"
export QUEUE_CLUSTER_SCRIPT="$root/scripts/cluster.sh"
cargo test -p queue-client -- --test-threads=1 --nocapture "$@"
status=$?
if [ "$status" -ne 0 ]; then
  echo "run-tests: tests failed (exit $status); server log: $dir/server.log" >&2
fi
exit $status
