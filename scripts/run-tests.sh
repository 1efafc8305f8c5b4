#!/usr/bin/env bash
# Every test, the way CI runs it (`make test` calls this after building).
#
#   1. #[pg_test] unit tests of the Rust internals (cargo pgrx test)
#   2. pg_regress golden tests of the whole SQL surface    (pg_test/sql, expected)
#   3. pg_isolation_regress concurrency specs              (pg_test/specs)
#   4. real-client tests: Python workers, LISTEN/NOTIFY, the background
#      worker, serial-group hammer                          (pg_test/client)
#   5. the upgrade from the oldest release, built from its own commit
#                                       (scripts/upgrade-test.sh, pg_test/upgrade)
#   6. the client libraries, each against a cluster of its own
#                                       (clients/*/run-tests.sh)
#   7. queuectl: its commands and its dashboard in headless Chromium
#                                       (queuectl/run-tests.sh)
#
# Steps 2-4 run against a throwaway cluster with the extension preloaded;
# step 5 has a cluster of its own, filled before this build is installed.
# The last line is "tests: N passed, M failed", summed over what each runner
# reported (scripts/count_tests.py).
set -uo pipefail
# Servers must not inherit RUST_BACKTRACE (see scripts/cluster.sh).
unset RUST_BACKTRACE RUST_LIB_BACKTRACE
cd "$(dirname "$0")/.."

RUN_DIR=${RUN_DIR:-$PWD/.run}
PORT=${TEST_PORT:-25433}
PKGLIB=$(pg_config --pkglibdir)
CLUSTER="$RUN_DIR/test-cluster"
mkdir -p "$RUN_DIR"
export PATH="$HOME/.cargo/bin:$PATH"

steps_failed=()
tests_passed=0
tests_failed=0

# Run one step, show its output, and add the tests it reports (cargo test,
# pg_regress, pg_isolation_regress and pytest each print their own counts).
step() {
  local name=$1 log status
  shift
  log=$(mktemp)
  echo "=== $name"
  "$@" 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
  if [ "$status" -eq 0 ]; then
    echo "--- $name: ok"
  else
    steps_failed+=("$name")
    echo "--- $name: FAILED"
  fi
  local p f
  read -r p f < <(python3 scripts/count_tests.py "$log")
  tests_passed=$((tests_passed + p))
  tests_failed=$((tests_failed + f))
  rm -f "$log"
  return "$status"
}

unit_tests() {
  local pgdata="$RUN_DIR/pgrx-test-data"
  mkdir -p "$pgdata"
  chown postgres:postgres "$pgdata"
  cargo pgrx test pg15 --runas postgres --pgdata "$pgdata"
}

install_release() {
  # Built first, then renamed over the installed one (scripts/install.sh).
  scripts/install.sh >"$RUN_DIR/install.log" 2>&1 || { tail -40 "$RUN_DIR/install.log"; return 1; }
}

# pg_regress --use-existing does not create its database.
fresh_db() {
  psql -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres \
    -c "DROP DATABASE IF EXISTS \"$1\"" -c "CREATE DATABASE \"$1\""
}

regress_tests() {
  local tests
  fresh_db queue_regress || return 1
  tests=$(cd pg_test/sql && ls *.sql | sed 's/\.sql$//' | sort)
  rm -rf "$RUN_DIR/regress"
  mkdir -p "$RUN_DIR/regress"
  "$PKGLIB/pgxs/src/test/regress/pg_regress" --use-existing --host=127.0.0.1 --port="$PORT" \
    --user=postgres --inputdir=pg_test --outputdir="$RUN_DIR/regress" \
    --dbname=queue_regress $tests \
    || { cat "$RUN_DIR/regress/regression.diffs" 2>/dev/null | head -200; return 1; }
}

isolation_tests() {
  local specs
  fresh_db queue_isolation || return 1
  specs=$(cd pg_test/specs && ls *.spec | sed 's/\.spec$//' | sort)
  rm -rf "$RUN_DIR/isolation"
  mkdir -p "$RUN_DIR/isolation"
  "$PKGLIB/pgxs/src/test/isolation/pg_isolation_regress" --use-existing --host=127.0.0.1 \
    --port="$PORT" --user=postgres --inputdir=pg_test --outputdir="$RUN_DIR/isolation" \
    --dbname=queue_isolation $specs \
    || { cat "$RUN_DIR/isolation/regression.diffs" 2>/dev/null | head -200; return 1; }
}

client_tests() {
  QUEUE_TEST_DSN="host=127.0.0.1 port=$PORT user=postgres dbname=postgres" \
  QUEUE_TEST_CLUSTER="$CLUSTER" \
    python3 -m pytest -q -p no:cacheprovider pg_test/client
}

start_cluster() {
  # A short tick keeps the worker tests quick; the default is 1 s.
  scripts/cluster.sh start "$CLUSTER" "$PORT" "queue.tick = 100ms" "max_prepared_transactions = 10" \
    && psql -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -c 'CREATE EXTENSION queue'
}

step "unit tests (cargo pgrx test)" unit_tests
upgrade_ready=false
if step "upgrade: the oldest release, its own build, filled with work" scripts/upgrade-test.sh old; then
  upgrade_ready=true
fi
step "install release build" install_release
if $upgrade_ready; then
  step "upgrade: this build over the old catalog, then ALTER EXTENSION UPDATE" scripts/upgrade-test.sh new
fi
if step "start test cluster" start_cluster; then
  step "pg_regress golden tests" regress_tests
  step "pg_isolation_regress specs" isolation_tests
  step "client tests (python, real connections)" client_tests
  scripts/cluster.sh stop "$CLUSTER" || true
fi
for client in python node rust; do
  if [ -x "clients/$client/run-tests.sh" ]; then
    step "client library: $client (clients/$client)" "clients/$client/run-tests.sh"
  fi
done
step "queuectl: the command line and the dashboard (a real browser)" queuectl/run-tests.sh

if [ ${#steps_failed[@]} -gt 0 ]; then
  printf 'failed step: %s\n' "${steps_failed[@]}"
  # A step that failed before reporting its tests still counts as a failure.
  [ "$tests_failed" -gt 0 ] || tests_failed=${#steps_failed[@]}
fi
echo "tests: $tests_passed passed, $tests_failed failed"
[ ${#steps_failed[@]} -eq 0 ]
