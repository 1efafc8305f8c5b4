#!/usr/bin/env bash
# bench/layers/ab.sh A B: the W4 shape (claim 100, ack those ids, one
# transaction) with pgbench, layer A and layer B alone in turn, each round on
# fresh data; prints both rates per round and the median of A/B.
#
#   layers: ref (the benchmark's reference), queue (the extension as
#   installed; QUEUE_OPTIONS="-c queue.keep_completed=off" for the lean ack),
#   queue_* (the extension's tables with one part of the product's SQL
#   replaced by bare SQL, to weigh that part; see each file; those that skip
#   a counter call leave the counters wrong until the next fill recounts
#   them), b1, b3, nohist, a (bare SQL, see setup.sql)
#
#   PGHOST=... PGPORT=... PGDATABASE=... bench/layers/ab.sh queue ref
#   environment: ROUNDS (8), JOBS (50000), CLIENTS (4); the database must
#   have the extension and setup.sql loaded, and be queue.database so that
#   the counters take their fast path.
#
#   A_SETUP / B_SETUP: SQL run before each round of A / B, to weigh a schema
#   change under the same SQL (A and B may then be the same layer), e.g.
#     A_SETUP='CREATE INDEX IF NOT EXISTS x ON queue.jobs (lease_until)
#              WHERE status = '"'processing'"'' B_SETUP='DROP INDEX IF EXISTS queue.x' \
#     bench/layers/ab.sh queue queue
#
#   Each round also prints the machine's busy CPU time (all processes,
#   /proc/stat, in ms) for A and B; the last line gives the medians of the
#   rate ratio (above 1: A is faster) and of the CPU ratio (below 1: A needs
#   less CPU for the same jobs). On this 2-core VM the drain is CPU-bound.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
a=${1:?layer A}; b=${2:?layer B}
rounds=${ROUNDS:-8}; jobs=${JOBS:-50000}; clients=${CLIENTS:-4}
per_client=$((jobs / clients / 100))
pgbench=$(pg_config --bindir)/pgbench
sql() { psql -X -q -v ON_ERROR_STOP=1 "$@" >/dev/null; }
payload="jsonb_build_object('n', i, 's', repeat('x', 64))"

fill() {
  case $1 in
  ref) sql -c "TRUNCATE bench_ref; INSERT INTO bench_ref (payload) SELECT $payload FROM generate_series(1, $jobs) i" \
           -c "VACUUM ANALYZE bench_ref" ;;
  queue | queue_*) sql -c "TRUNCATE queue.jobs, queue.finished_jobs, queue.job_times" \
             -c "INSERT INTO queue.jobs (queue, status, run_at, max_attempts, timeout, backoff_base, backoff_max, payload)
                 SELECT 'bench', 'pending', now(), 3, '5 minutes', '10 seconds', '1 hour', $payload FROM generate_series(1, $jobs) i" \
             -c "SELECT queue.recount_stats()" -c "VACUUM ANALYZE queue.jobs" ;;
  *) sql -c "TRUNCATE proto.live_$1, proto.done_$1" \
         -c "INSERT INTO proto.live_$1 (queue, status, run_at, max_attempts, timeout, backoff_base, backoff_max, payload)
             SELECT 'bench', 'pending', now(), 3, '5 minutes', '10 seconds', '1 hour', $payload FROM generate_series(1, $jobs) i" \
         -c "VACUUM ANALYZE proto.live_$1" ;;
  esac
  sql -c CHECKPOINT
}

# Busy CPU time of the whole machine so far, in ms (user, nice, system, irq,
# softirq; not idle or iowait).
busy_ms() {
  awk -v hz="$(getconf CLK_TCK)" '/^cpu / { printf "%d", ($2 + $3 + $4 + $7 + $8) * 1000 / hz }' /proc/stat
}

run() {
  local options=""
  case $1 in queue | queue_*) options=${QUEUE_OPTIONS:-} ;; esac
  PGOPTIONS="$options" "$pgbench" -n -c "$clients" -j 2 -t "$per_client" -f "$here/$1.sql" 2>&1 \
    | awk '/^tps/ { printf "%d", $3 * 100 }'
}

# One round of a layer: its setup, fresh data, the run. Prints "rate cpu_ms".
round_of() {
  local layer=$1 setup=$2 before rate
  [ -z "$setup" ] || sql -c "$setup"
  fill "$layer"
  before=$(busy_ms)
  rate=$(run "$layer")
  echo "$rate $(( $(busy_ms) - before ))"
}

ratios=(); cpus=()
for round in $(seq 1 "$rounds"); do
  read -r x xcpu < <(round_of "$a" "${A_SETUP:-}")
  read -r y ycpu < <(round_of "$b" "${B_SETUP:-}")
  r=$(awk -v x="$x" -v y="$y" 'BEGIN { printf "%.3f", x / y }')
  ratios+=("$r")
  cpus+=("$(awk -v x="$xcpu" -v y="$ycpu" 'BEGIN { printf "%.3f", x / y }')")
  echo "round $round: A $a $x jobs/s (cpu $xcpu ms), B $b $y jobs/s (cpu $ycpu ms), A/B $r"
done
median() { sort -n | awk '{ v[NR] = $1 } END { printf "%.3f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo "median A/B ($a/$b): rate $(printf '%s\n' "${ratios[@]}" | median), cpu $(printf '%s\n' "${cpus[@]}" | median)"
