#!/usr/bin/env bash
# The Node.js client's tests against a real, throwaway PostgreSQL 15 cluster
# with the queue extension preloaded (port 25472, data in .run/node-client-cluster).
#
#   clients/node/run-tests.sh            # install, build, start the cluster, test, stop
#
# The pooler tests start a pgbouncer of their own (port 25482; installed here
# with apt-get if missing). Exits non-zero when anything fails. Needs node >= 18, npm, and the extension
# installed system-wide (make install); waits up to 30 minutes for a first
# build still in progress to install queue.so.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cluster="$repo/.run/node-client-cluster"
port=25472
cd "$here"

if [ ! -d node_modules ]; then
  npm ci --no-audit --no-fund
fi
npm run --silent build
npm run --silent build:test

# test/pooler.test.ts runs a real PgBouncer (Debian's, as the postgres user, port 25482).
if [ ! -x /usr/sbin/pgbouncer ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "run-tests.sh: installing pgbouncer (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null \
      || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null; } \
      || echo "run-tests.sh: could not install pgbouncer; the pooler tests will fail" >&2
  else
    echo "run-tests.sh: /usr/sbin/pgbouncer is missing (apt-get install pgbouncer); the pooler tests will fail" >&2
  fi
fi

lib="$(pg_config --pkglibdir)/queue.so"
waited=0
until [ -f "$lib" ]; do
  if [ "$waited" -ge 1800 ]; then
    echo "run-tests.sh: $lib is not installed (waited 30 minutes); build and install the extension first" >&2
    exit 1
  fi
  [ "$waited" -eq 0 ] && echo "run-tests.sh: waiting for $lib (a build is installing it)..."
  sleep 10
  waited=$((waited + 10))
done

mkdir -p "$repo/.run"
stop_cluster() { "$repo/scripts/cluster.sh" stop "$cluster" || true; }
trap stop_cluster EXIT
# track_functions: test/acker.test.ts counts the queue_ack_batch calls a drain makes
# (pg_stat_user_functions); harmless for the other tests.
"$repo/scripts/cluster.sh" start "$cluster" "$port" "queue.tick = 100ms" "track_functions = 'all'"
psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres -c 'CREATE EXTENSION queue'

export QUEUE_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
export QUEUE_TEST_CLUSTER_DIR="$cluster"
export QUEUE_CLUSTER_SCRIPT="$repo/scripts/cluster.sh"
status=0
node --test --test-concurrency=1 test-build/*.test.js || status=$?
if [ "$status" -ne 0 ]; then
  echo "run-tests.sh: tests failed (exit $status); server log: $cluster/server.log" >&2
fi
exit "$status"
