#!/usr/bin/env bash
# The upgrade path a real user takes, from every earlier release to this build.
#
#   scripts/upgrade-test.sh old     build and install the oldest release from
#                                   its own commit, start a cluster, install it
#                                   there and fill it with work in every state
#   scripts/upgrade-test.sh new     (after this build is installed) restart the
#                                   cluster, call the old functions before the
#                                   update, ALTER EXTENSION queue UPDATE, check
#                                   that every job, schedule and counter is
#                                   intact and the queue works, and that the
#                                   upgraded schema equals a fresh install;
#                                   then the update of a second database
#                                   while a worker and a producer use it
#
# run-tests.sh runs `old` before it installs this build and `new` after. The
# releases and the commits that built them are listed in sql/releases/README.md;
# their install scripts are kept in sql/releases/ for reference.
set -euo pipefail
cd "$(dirname "$0")/.."

export RUN_DIR=${RUN_DIR:-$PWD/.run}
PORT=${UPGRADE_PORT:-25434}
CLUSTER="$RUN_DIR/upgrade-cluster"
# The oldest release whose catalog this build must upgrade, and its commit.
OLD_VERSION=0.1.0
OLD_COMMIT=32a1b219f79ec3410e7fec15a8ae49d579c17034
OLD_TREE="$RUN_DIR/release-$OLD_VERSION"
export PATH="$HOME/.cargo/bin:$PATH"

psql_db() {
  local db=$1
  shift
  psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres -d "$db" "$@"
}

export QUEUE_UPGRADE_DSN="host=127.0.0.1 port=$PORT user=postgres dbname=upgraded"

case "${1:-}" in
old)
  # The old release's own build: its .so, control file and install script.
  # A build of its own commit, in a target directory of its own so that it
  # never mixes with this tree's build; optimised lightly, since only its
  # behaviour matters here.
  if ! git cat-file -e "$OLD_COMMIT^{commit}" 2>/dev/null; then
    echo "upgrade test: commit $OLD_COMMIT of release $OLD_VERSION is not in this clone" >&2
    echo "(a shallow clone? fetch the full history)" >&2
    exit 1
  fi
  if [ ! -d "$OLD_TREE" ]; then
    git worktree prune
    git worktree add --detach "$OLD_TREE" "$OLD_COMMIT" >/dev/null
  fi
  rm -f "$(pg_config --pkglibdir)/queue.so"   # unlink, never overwrite a mapped library
  (
    cd "$OLD_TREE"
    CARGO_TARGET_DIR="$RUN_DIR/target-release-$OLD_VERSION" \
    CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    CARGO_PROFILE_RELEASE_OPT_LEVEL=1 \
      cargo pgrx install --release --pg-config "$(command -v pg_config)" >"$RUN_DIR/install-$OLD_VERSION.log" 2>&1
  ) || { tail -40 "$RUN_DIR/install-$OLD_VERSION.log"; exit 1; }
  # The install script it wrote must be the one kept for that release (pgrx
  # writes the same objects in an order that may differ from build to build).
  python3 - "$(pg_config --sharedir)/extension/queue--$OLD_VERSION.sql" "sql/releases/queue--$OLD_VERSION.sql" <<'PY'
import sys
blocks = [sorted(open(p).read().split("/* <begin connected objects> */")) for p in sys.argv[1:]]
if blocks[0] != blocks[1]:
    sys.exit(f"{sys.argv[1]} is not the install script kept in {sys.argv[2]}")
PY

  # Left running for `new` when this succeeds; stopped when it fails, so that
  # a failed run holds no port for the next one.
  trap 'status=$?; [ "$status" -eq 0 ] || scripts/cluster.sh stop "$CLUSTER" || true; exit "$status"' EXIT
  scripts/cluster.sh start "$CLUSTER" "$PORT" "queue.tick = 100ms" "queue.database = 'upgraded'"
  psql_db postgres -c "CREATE DATABASE upgraded"
  # A second database, updated while a worker and a producer use it. 0.1.0
  # serves one database; this build serves both (set in `new`).
  psql_db postgres -c "CREATE DATABASE upgraded_busy"
  # The workers serve the databases from their start: restart them there.
  scripts/cluster.sh restart "$CLUSTER"
  psql_db upgraded -c "CREATE EXTENSION queue VERSION '$OLD_VERSION'"
  psql_db upgraded_busy -c "CREATE EXTENSION queue VERSION '$OLD_VERSION'"
  python3 -m pytest -q -p no:cacheprovider pg_test/upgrade/test_upgrade.py -k before_upgrade
  ;;
new)
  # The new .so is installed; a restart loads it (the old catalog stays), and
  # its services serve both databases. The cluster stops however this ends.
  trap 'scripts/cluster.sh stop "$CLUSTER" || true' EXIT
  psql_db postgres -c "ALTER SYSTEM SET queue.database = 'upgraded, upgraded_busy'"
  scripts/cluster.sh restart "$CLUSTER"
  python3 -m pytest -q -p no:cacheprovider pg_test/upgrade/test_upgrade.py -k after_upgrade
  python3 -m pytest -q -p no:cacheprovider pg_test/upgrade/test_upgrade_under_load.py
  ;;
*)
  echo "usage: upgrade-test.sh old|new" >&2
  exit 2
  ;;
esac
