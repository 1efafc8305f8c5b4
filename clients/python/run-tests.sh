#!/usr/bin/env bash
# Tests of the Python client against a real, throwaway cluster.
#
#   clients/python/run-tests.sh [pytest args...]
#
# Starts PostgreSQL 15 with the extension preloaded (scripts/cluster.sh) on
# port 25471 with queue.tick = 100ms and track_functions = 'all', creates the extension in database
# postgres, runs pytest with the DSN in PGQUEUE_TEST_DSN, stops the cluster,
# and exits with pytest's status. The pooler tests start their own pgbouncer
# (port 25481; installed here with apt-get if missing), the cross-language test
# a Node worker (the Node client is built here if clients/node/dist is missing). Waits (up to 25 minutes) for the extension
# to be installed if the first build is still running.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
port=${PGQUEUE_TEST_PORT:-25471}
dir="$root/.run/python-client-cluster"
libdir=$(pg_config --pkglibdir)
python=${PYTHON:-python3}

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

if ! "$python" -c 'import psycopg, pytest' >/dev/null 2>&1; then
  echo "run-tests: installing $here/requirements-test.txt"
  "$python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements-test.txt" 2>&1 \
    | grep -v 'Running pip as the' || true
fi

# The pooler tests run a real PgBouncer (Debian's, as the postgres user).
if [ ! -x /usr/sbin/pgbouncer ] && ! command -v pgbouncer >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "run-tests: installing pgbouncer (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null \
      || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null; } \
      || echo "run-tests: could not install pgbouncer; the pooler tests will fail" >&2
  else
    echo "run-tests: pgbouncer is not installed (apt-get install pgbouncer); the pooler tests will fail" >&2
  fi
fi

# The cross-language test runs a Node worker on the built Node client (it skips without node).
node_dir="$root/clients/node"
if command -v npm >/dev/null 2>&1 && [ ! -f "$node_dir/dist/index.js" ]; then
  echo "run-tests: building the Node client for the cross-language test"
  ( cd "$node_dir" && { [ -d node_modules ] || npm ci --no-audit --no-fund --silent; } && npm run --silent build ) \
    || echo "run-tests: the Node client did not build; the cross-language test will be skipped" >&2
fi

mkdir -p "$root/.run"
stop_cluster() { "$root/scripts/cluster.sh" stop "$dir" >/dev/null 2>&1 || true; }
trap stop_cluster EXIT

# track_functions = 'all': tests/test_ack_batch.py counts the queue_ack_batch
# calls in pg_stat_user_functions (harmless for the other tests).
if ! "$root/scripts/cluster.sh" start "$dir" "$port" "queue.tick = 100ms" "track_functions = 'all'"; then
  echo "run-tests: the cluster did not start; see $dir/server.log" >&2
  exit 2
fi
bindir=$(pg_config --bindir)
if ! "$bindir/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
     -c 'CREATE EXTENSION queue'; then
  echo "run-tests: CREATE EXTENSION queue failed" >&2
  exit 2
fi

export PGQUEUE_TEST_DSN="host=127.0.0.1 port=$port user=postgres dbname=postgres"
export PGQUEUE_TEST_CLUSTER="$dir"
export PGQUEUE_CLUSTER_SCRIPT="$root/scripts/cluster.sh"
cd "$here"
"$python" -m pytest -p no:cacheprovider -q -rs tests "$@"
status=$?
exit $status
