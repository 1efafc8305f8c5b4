#!/usr/bin/env bash
# The Node.js client's tests against a real, throwaway PostgreSQL 15 cluster
# with the queue extension preloaded (port 55472, data in .run/node-client-cluster).
#
#   clients/node/run-tests.sh            # install, build, start the cluster, test, stop
#
# Exits non-zero when anything fails. Needs node >= 18, npm, and the extension
# installed system-wide (make install); waits up to 30 minutes for a first
# build still in progress to install queue.so.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cluster="$repo/.run/node-client-cluster"
port=55472
cd "$here"

if [ ! -d node_modules ]; then
  npm ci --no-audit --no-fund
fi
npm run --silent build
npm run --silent build:test

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
"$repo/scripts/cluster.sh" start "$cluster" "$port" "queue.tick = 100ms"
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
