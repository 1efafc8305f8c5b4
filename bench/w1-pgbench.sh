#!/usr/bin/env bash
# bench/w1-pgbench.sh: W1 (single pushes, one per transaction, 4 connections)
# sent by a second, independent client: pgbench (libpq, C, prepared
# statements), where `make bench` sends W1 with tokio-postgres. queue_push
# and the bare reference's INSERT alternate, round by round, on one cluster
# with the settings of the benchmark's own (fsync and synchronous_commit on,
# shared_buffers 1GB, port 25450: do not run it beside `make bench`).
#
#   bench/w1-pgbench.sh            ROUNDS (5), PUSHES per round (20000), CLIENTS (4)
#                                  (and a first round of each, not counted)
#
# Prints, per round and system, pushes/s and the server's CPU per push (every
# postgres process's user + system time from /proc, before and after), then the
# medians and the ratios queue / reference.
set -euo pipefail
unset RUST_BACKTRACE RUST_LIB_BACKTRACE
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
rounds=${ROUNDS:-5}; pushes=${PUSHES:-20000}; clients=${CLIENTS:-4}
port=25450
dir="$root/.run/bench-cluster"
pgbench=$(pg_config --bindir)/pgbench

"$root/scripts/cluster.sh" start "$dir" "$port" "shared_buffers = 1GB" "fsync = on" \
  "synchronous_commit = on" "max_wal_size = 8GB" >/dev/null
trap '"$root/scripts/cluster.sh" stop "$dir" >/dev/null 2>&1 || true' EXIT
sql() { psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres "$@"; }
sql -c "CREATE EXTENSION queue" -c "CREATE TABLE bench_ref (id bigserial PRIMARY KEY,
  priority int NOT NULL DEFAULT 0, payload jsonb NOT NULL, claimed boolean NOT NULL DEFAULT false)" \
  -c "CREATE INDEX bench_ref_claim ON bench_ref (priority, id) WHERE NOT claimed"

work=$(mktemp -d)
chmod 755 "$work"
payload='{"n": 1, "s": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}'
echo "SELECT queue_push('bench', '$payload');" >"$work/queue.sql"
echo "INSERT INTO bench_ref (payload) VALUES ('$payload');" >"$work/reference.sql"

# Jiffies of user + system time of the postmaster and every child alive, plus
# what the postmaster's reaped children spent (fields 14-17 of /proc/PID/stat).
server_jiffies() {
  local pm total=0 pid f
  pm=$(head -1 "$dir/data/postmaster.pid")
  for pid in $pm $(pgrep -P "$pm"); do
    f=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
    set -- $f
    if [ "$pid" = "$pm" ]; then total=$((total + ${12} + ${13} + ${14} + ${15})); else total=$((total + ${12} + ${13})); fi
  done
  echo "$total"
}
hz=$(getconf CLK_TCK)

results="$work/results"
# Round 0 warms both up (the extension's workers start, caches fill) and is not counted.
for r in $(seq 0 "$rounds"); do
  for system in queue reference; do
    sql -c "TRUNCATE queue.jobs, queue.finished_jobs, bench_ref" -c "CHECKPOINT"
    before=$(server_jiffies)
    tps=$("$pgbench" -n -h 127.0.0.1 -p "$port" -U postgres -M prepared -c "$clients" -j 2 \
      -t $((pushes / clients)) -f "$work/$system.sql" postgres 2>/dev/null \
      | awk '/^tps = / { print $3 }')
    after=$(server_jiffies)
    cpu=$(awk -v j=$((after - before)) -v hz="$hz" -v n="$pushes" 'BEGIN { printf "%.3f", j * 1000 / hz / n }')
    printf 'round %d %-9s %8.0f pushes/s  server CPU %s ms a push\n' "$r" "$system" "$tps" "$cpu"
    [ "$r" = 0 ] || echo "$system $tps $cpu" >>"$results"
  done
done
python3 - "$results" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = {s: (statistics.median(float(r[1]) for r in rows if r[0] == s),
           statistics.median(float(r[2]) for r in rows if r[0] == s)) for s in ("queue", "reference")}
(q, qc), (b, bc) = med["queue"], med["reference"]
print(f"median: queue {q:,.0f} pushes/s, reference {b:,.0f}: {q / b:.2f}x; "
      f"server CPU a push {qc:.3f} against {bc:.3f} ms: {qc / bc:.2f}x")
EOF
rm -rf "$work"
