#!/usr/bin/env bash
# bench/ab-builds.sh OLD.so NEW.so: two builds of the extension, weighed in
# alternating rounds on this machine, so that a change of the whole product
# (SQL and library together) can be held to "no workload slower by more than
# 3%" without trusting whole runs minutes apart.
#
# Each build gets a cluster of its own, created once with that build's
# library installed (its catalog is that build's). A round of a build copies
# its library into $libdir, starts its cluster (only one runs at a time),
# fills it afresh and runs one workload with pgbench:
#
#   W1  single pushes, one per transaction          (4 clients, prepared)
#   W1D the same, each delayed by an hour: the general path of queue_push
#   W3  pop one job, then ack it: two commits a job (4 clients, prepared)
#   W4  claim 100 and ack those ids, one transaction (4 clients)
#
# and prints the rate and the machine's busy CPU per round; the last lines
# give, per workload, the median of NEW/OLD rates (below 1: NEW is slower)
# and of NEW/OLD CPU per job (above 1: NEW costs more).
#
#   OLD_VERSION (the old build's extension version, default 0.1.0),
#   ROUNDS (6), JOBS (40000), WORKLOADS ("W1 W3 W4"), PORT (25460),
#   OLD_SQL, NEW_SQL (a build's own install script, queue--VERSION.sql from
#   its `cargo pgrx package` stage: needed when the two builds' SQL differs
#   under one version, as within a release in progress; its cluster's
#   catalog is then created from it)
#
# The library installed before the run is put back at the end.
set -euo pipefail
# Servers must not inherit RUST_BACKTRACE (see scripts/cluster.sh).
unset RUST_BACKTRACE RUST_LIB_BACKTRACE
old_so=$(realpath "${1:?old queue.so}"); new_so=$(realpath "${2:?new queue.so}")
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
rounds=${ROUNDS:-6}; jobs=${JOBS:-40000}; clients=4
workloads=${WORKLOADS:-W1 W3 W4}
port=${PORT:-25460}
old_version=${OLD_VERSION:-0.1.0}
libdir=$(pg_config --pkglibdir)
extdir="$(pg_config --sharedir)/extension"
pgbench=$(pg_config --bindir)/pgbench
run_dir="$root/.run/ab-builds"
mkdir -p "$run_dir"
cp "$libdir/queue.so" "$run_dir/installed.so"
# install(1) unlinks the old file first: a server that mapped it keeps it.
trap 'install -m 755 "$run_dir/installed.so" "$libdir/queue.so"' EXIT

sql() { psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres "$@" >/dev/null; }
busy_ms() {
  awk -v hz="$(getconf CLK_TCK)" '/^cpu / { printf "%d", ($2 + $3 + $4 + $7 + $8) * 1000 / hz }' /proc/stat
}

cat >"$run_dir/W1.sql" <<'EOF'
SELECT queue_push('bench', '{"n": 1, "s": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}');
EOF
cat >"$run_dir/W1D.sql" <<'EOF'
SELECT queue_push('bench', '{"n": 1, "s": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}', delay => '1 hour');
EOF
cat >"$run_dir/W3.sql" <<'EOF'
SELECT id, attempt FROM queue_pop('bench', 'w', 1) \gset
SELECT queue_ack(:id, NULL, :attempt);
EOF
cat >"$run_dir/W4.sql" <<'EOF'
BEGIN;
SELECT quote_literal(array_agg(id)::text) AS ids FROM queue_pop('bench', 'w', 100) \gset
SELECT queue_ack(:ids::bigint[]);
COMMIT;
EOF

# cluster_of SIDE: its data directory, created with its library on first use.
cluster_of() {
  local side=$1 so=$2 dir="$run_dir/$1"
  if [ ! -f "$dir/ready" ]; then
    local version script
    if [ "$side" = old ]; then
      version=$old_version script=${OLD_SQL:-}
    else
      version=$(sed -n "s/^default_version = '\(.*\)'/\1/p" "$extdir/queue.control") script=${NEW_SQL:-}
    fi
    install -m 755 "$so" "$libdir/queue.so"
    if [ -n "$script" ]; then
      cp "$extdir/queue--$version.sql" "$run_dir/installed.sql"
      install -m 644 "$script" "$extdir/queue--$version.sql"
    fi
    "$root/scripts/cluster.sh" start "$dir" "$port" "fsync = on" "synchronous_commit = on"
    sql -c "CREATE EXTENSION queue VERSION '$version'"
    "$root/scripts/cluster.sh" stop "$dir"
    if [ -n "$script" ]; then
      install -m 644 "$run_dir/installed.sql" "$extdir/queue--$version.sql"
    fi
    touch "$dir/ready"
  fi
  echo "$dir"
}

# fill WORKLOAD: fresh jobs for a drain, an empty queue for pushes.
fill() {
  sql -c "TRUNCATE queue.jobs, queue.finished_jobs, queue.job_times"
  if [ "$1" != W1 ] && [ "$1" != W1D ]; then
    sql -c "INSERT INTO queue.jobs (queue, status, run_at, max_attempts, timeout, backoff_base, backoff_max, payload)
            SELECT 'bench', 'pending', now(), 3, '5 minutes', '10 seconds', '1 hour',
                   jsonb_build_object('n', i, 's', repeat('x', 64)) FROM generate_series(1, $jobs) i"
  fi
  sql -c "SELECT queue.recount_stats()" -c "VACUUM ANALYZE queue.jobs" -c CHECKPOINT
}

# round SIDE SO WORKLOAD: prints "rate cpu_ms_per_1000_jobs".
round() {
  local side=$1 so=$2 w=$3 dir per mode before rate
  dir=$(cluster_of "$side" "$so")
  install -m 755 "$so" "$libdir/queue.so"
  "$root/scripts/cluster.sh" restart "$dir" 2>/dev/null || {
    runuser -u postgres -- "$(pg_config --bindir)/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null
  }
  fill "$w"
  # W3 stops short of the last jobs: a pop that finds them all locked by the
  # other clients returns no row, which pgbench counts as a failed script.
  case $w in W4) per=$((jobs / clients / 100)); mode=simple ;; W3) per=$((jobs * 9 / 10 / clients)); mode=prepared ;; *) per=$((jobs / clients)); mode=prepared ;; esac
  before=$(busy_ms)
  rate=$("$pgbench" -n -h 127.0.0.1 -p "$port" -U postgres -c "$clients" -j 2 -t "$per" -M "$mode" \
          -f "$run_dir/$w.sql" postgres 2>&1 | awk '/^tps/ { printf "%d", $3 }')
  [ "$w" = W4 ] && rate=$((rate * 100))
  local cpu=$(( $(busy_ms) - before ))
  runuser -u postgres -- "$(pg_config --bindir)/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
  echo "$rate $(awk -v c="$cpu" -v j="$jobs" 'BEGIN { printf "%.1f", c * 1000 / j }')"
}

median() { sort -n | awk '{ v[NR] = $1 } END { printf "%.3f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
for w in $workloads; do
  rates=(); cpus=()
  for r in $(seq 1 "$rounds"); do
    # alternate which side goes first, so that neither always runs warm
    if [ $((r % 2)) -eq 1 ]; then
      read -r orate ocpu < <(round old "$old_so" "$w"); read -r nrate ncpu < <(round new "$new_so" "$w")
    else
      read -r nrate ncpu < <(round new "$new_so" "$w"); read -r orate ocpu < <(round old "$old_so" "$w")
    fi
    rates+=("$(awk -v n="$nrate" -v o="$orate" 'BEGIN { printf "%.3f", n / o }')")
    cpus+=("$(awk -v n="$ncpu" -v o="$ocpu" 'BEGIN { printf "%.3f", n / o }')")
    echo "$w round $r: old $orate jobs/s (cpu $ocpu ms/1000 jobs), new $nrate jobs/s (cpu $ncpu ms/1000 jobs)"
  done
  echo "$w median new/old: rate $(printf '%s\n' "${rates[@]}" | median), cpu per job $(printf '%s\n' "${cpus[@]}" | median)"
done
