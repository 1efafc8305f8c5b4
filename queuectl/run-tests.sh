#!/usr/bin/env bash
# Tests of queuectl against a real, throwaway cluster and a real browser.
#
#   queuectl/run-tests.sh [test filter passed to cargo test]
#
# 1. starts PostgreSQL 15 with the extension preloaded (scripts/cluster.sh,
#    data in .run/queuectl-cluster, port 25474, queue.tick = 100ms) and runs
#    CREATE EXTENSION queue in database postgres;
# 2. runs `cargo test -p queuectl -- --test-threads=1`: unit tests, then the
#    integration tests in tests/cli.rs, which run the built binary against the
#    cluster (DSN in QUEUECTL_TEST_DATABASE_URL);
# 3. runs the browser test (tests/browser/dashboard.test.mjs): headless Debian
#    chromium driven by playwright-core against `queuectl serve`, screenshots
#    into .run/queuectl-dashboard.png and .run/queuectl-dashboard-phone.png;
# 4. stops the cluster (and whatever it started) and exits non-zero on any failure.
#
# Needs: chromium (apt-get install -y chromium chromium-driver; installed here
# when missing and running as root), node and npm (npm ci from the lockfile).
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
port=${QUEUECTL_TEST_PORT:-25474}
dir="$root/.run/queuectl-cluster"
bindir=$(pg_config --bindir)
libdir=$(pg_config --pkglibdir)
url="postgres://postgres@127.0.0.1:$port/postgres"
target=${CARGO_TARGET_DIR:-$root/target}

fail() { echo "run-tests: $*" >&2; exit 1; }

[ -f "$libdir/queue.so" ] || fail "the extension is not installed ($libdir/queue.so); make install first"

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "run-tests: installing chromium"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
      || fail "apt-get install chromium chromium-driver failed"
  else
    fail "chromium is missing: apt-get install -y chromium chromium-driver"
  fi
fi

cd "$root"
# Build first, so that compile time does not count against the cluster.
cargo build -p queuectl || fail "queuectl does not build"
cargo test -p queuectl --no-run || fail "the tests do not compile"
(cd "$here/tests/browser" && npm ci --no-audit --no-fund --silent) || fail "npm ci in tests/browser failed"

mkdir -p "$root/.run"
stop_cluster() { "$root/scripts/cluster.sh" stop "$dir" >/dev/null 2>&1 || true; }
trap stop_cluster EXIT
"$root/scripts/cluster.sh" start "$dir" "$port" "queue.tick = 100ms" || fail "the cluster did not start; see $dir/server.log"
"$bindir/psql" -X -q "$url" -v ON_ERROR_STOP=1 -c 'CREATE EXTENSION queue' || fail "CREATE EXTENSION queue failed"

status=0
QUEUECTL_TEST_DATABASE_URL="$url" cargo test -p queuectl -- --test-threads=1 "$@" || status=1

echo "run-tests: browser test (headless chromium)"
QUEUECTL_BIN="$target/debug/queuectl" DATABASE_URL="$url" QUEUECTL_PORT=${QUEUECTL_BROWSER_PORT:-25493} \
  SCREENSHOT_DIR="$root/.run" node "$here/tests/browser/dashboard.test.mjs" || status=1

[ "$status" = 0 ] || echo "run-tests: FAILED; server log: $dir/server.log" >&2
exit $status
