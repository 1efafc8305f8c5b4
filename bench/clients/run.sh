#!/usr/bin/env bash
# The client libraries' benchmark: wake-up latency and drain throughput of the
# Python (threaded Worker and asyncio AsyncWorker), Node and Rust workers, next to raw SQL on the same
# cluster in the same run.
#
#   bench/clients/run.sh
#
# Environment (defaults in brackets): JOBS [20000] jobs per drain,
# LAT_JOBS [200] lone pushes for the wake-up latency, after WARMUP [20] more
# that are not counted (the first pushes after a worker starts are slower:
# see README.md), INTERVAL_MS [20] between them, CONCURRENCY ["1 10 50"], CLIENTS ["python python-aio node rust"], PROCS [4],
# QUEUE_BENCH [1] (0: skip `queue-bench --only W3,W4 --reps 1`).
#
# Starts a throwaway cluster (scripts/cluster.sh, .run/clients-bench-cluster,
# port 25475, shared_buffers 512MB, fsync and synchronous_commit on, the
# extension preloaded), CREATE EXTENSION queue, then, one at a time:
#   1. the disk's commit flush time (raw/flush_probe.py: 200 one-row commits);
#   2. per client: an idle worker (concurrency 1, LISTEN) and 20 + 200 pushes
#      20 ms apart from a producer connection of the same process; latency =
#      handler start - the push's return, on one monotonic clock, of the
#      last 200;
#   2b. per client and per size w of PICKUP: a worker at concurrency w whose
#      handler takes PICKUP_WORK_MS, the producer pushing PICKUP_RATE jobs/s
#      for PICKUP_SECONDS; pickup = handler start - the push's return, of
#      every job after the first second; then the same with the workers
#      through PgBouncer in pooler mode (server-side waits, no LISTEN; the
#      producer still pushes straight to Postgres);
#   3. per concurrency c: the raw drain (raw/raw_drain.py: BEGIN;
#      queue_ack(previous ids[]); queue_pop(q, w, c); COMMIT per round trip)
#      on one connection, the reference of one worker process (both have at
#      most c jobs in flight), and on PROCS connections, the reference of
#      PROCS worker processes; then each client's worker (python: the threaded
#      Worker, python-aio: the asyncio AsyncWorker) with a no-op
#      handler draining JOBS jobs prefilled by one push_batch, timed from
#      start() to the JOBS-th "finished" event (after the ack), checked
#      against queue_stats; then PROCS worker processes of each client at
#      concurrency c draining JOBS jobs of one queue together, timed from the
#      earliest start() to the latest finish (shared_drain.sh). Each drain also gets commits / job
#      (pg_stat_database), WAL flushes / job (pg_stat_wal) and the driver
#      process's CPU (user + sys) / job;
#   4. queue-bench --only W3,W4 --reps 1 on the same cluster (last: it
#      truncates the job tables).
# Prints the load average before and after and the markdown tables; raw
# results stay in .run/clients-bench-cluster/results.jsonl. The cluster is
# stopped on exit. The drivers use the clients' public API only:
# bench/clients/python/bench.py, bench/clients/node/bench.js,
# clients/rust/examples/bench.rs.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
port=25475
dir="$root/.run/clients-bench-cluster"
DSN="host=127.0.0.1 port=$port user=postgres dbname=postgres"
URL="postgres://postgres@127.0.0.1:$port/postgres"
JOBS=${JOBS:-20000}
LAT_JOBS=${LAT_JOBS:-200}
WARMUP=${WARMUP:-20}
INTERVAL_MS=${INTERVAL_MS:-20}
CONCURRENCY=${CONCURRENCY-"1 10 50"}
CLIENTS=${CLIENTS:-"python python-aio node rust"}
PROCS=${PROCS:-4}
PICKUP=${PICKUP-"32 64"}
PICKUP_RATE=${PICKUP_RATE:-600}
PICKUP_SECONDS=${PICKUP_SECONDS:-10}
PICKUP_WORK_MS=${PICKUP_WORK_MS:-1}
PICKUP_POOLER=${PICKUP_POOLER:-1}
bouncer_port=25476
QUEUE_BENCH=${QUEUE_BENCH:-1}
python=${PYTHON:-python3}
export PYTHONPATH="$root/clients/python/src${PYTHONPATH:+:$PYTHONPATH}"

# Build what is missing first (nothing of the tree is changed).
if [ ! -f "$root/clients/node/dist/index.js" ]; then
  echo "clients/node/dist is missing: build it first (cd clients/node && npm ci && npm run build)" >&2
  exit 2
fi
if [ -n "$(find "$root/clients/node/src" -newer "$root/clients/node/dist/index.js" -name '*.ts' | head -1)" ]; then
  echo "note: clients/node/src has files newer than dist/; the Node figures are of the built dist/" >&2
fi
(cd "$root" && cargo build --release --quiet -p queue-client --example bench)
[ "$QUEUE_BENCH" = 1 ] && (cd "$root" && cargo build --release --quiet -p queue-bench)
rust_bench="$root/target/release/examples/bench"

# Others may be reinstalling the extension (an install unlinks queue.so
# first): wait for it, and check below that 0.2.0 or later was loaded.
libdir=$(pg_config --pkglibdir)
for _ in $(seq 60); do [ -f "$libdir/queue.so" ] && break; sleep 5; done
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$root" rev-parse --short HEAD)"
echo "extension: $libdir/queue.so $(stat -c '%s bytes, %y' "$libdir/queue.so" | cut -d. -f1)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
trap '"$root/scripts/pgbouncer.sh" stop "$dir/pgbouncer" 2>/dev/null || true; "$root/scripts/cluster.sh" stop "$dir" || true' EXIT
"$root/scripts/cluster.sh" start "$dir" "$port" "shared_buffers = 512MB" "fsync = on" "synchronous_commit = on"
psql "$DSN" -qAtc "CREATE EXTENSION queue"
version=$(psql "$DSN" -qAtc "SELECT extversion FROM pg_extension WHERE extname = 'queue'")
echo "extension version: $version"
case "$version" in 0.0.* | 0.1.*) echo "queue $version is too old (queue_release and queue_pop(..., wait) are 0.2.0)" >&2; exit 2 ;; esac
results="$dir/results.jsonl"
echo "{\"kind\": \"meta\", \"warmup\": $WARMUP, \"jobs\": $JOBS, \"lat_jobs\": $LAT_JOBS, \"pickup_warmup\": $PICKUP_RATE}" >"$results"

snap() {
  psql "$DSN" -qAtc "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = 'postgres')
                            || '|' || wal_sync || '|' || wal_write FROM pg_stat_wal"
}

driver() { # client mode queue jobs n [more...]: the driver's command in CMD
  local client=$1 mode=$2
  shift 2
  case "$client" in
    python) CMD=("$python" "$here/python/bench.py" "$mode" "$DSN" "$@") ;;
    python-aio) CMD=("$python" "$here/python/bench.py" "aio-$mode" "$DSN" "$@") ;;
    node) CMD=(node "$here/node/bench.js" "$mode" "$URL" "$@") ;;
    rust) CMD=("$rust_bench" "$mode" "$DSN" "$@") ;;
  esac
}

# One measured command, annotated with the cluster's commits and WAL flushes
# and the command's CPU over its jobs.
measured() {
  local before after out cpu
  cpu=$(mktemp)
  sleep 1
  before=$(snap)
  out=$(/usr/bin/time -f '%U %S' -o "$cpu" "$@")
  sleep 1.5 # the backends of the driver have exited and flushed their stats
  after=$(snap)
  echo "$out" | "$python" "$here/table.py" annotate "$before" "$after" "$cpu" | tee -a "$results"
  rm -f "$cpu"
}

echo "== commit flush time"
"$python" "$here/raw/flush_probe.py" "$DSN" 200 | tee -a "$results" | cut -c1-120

echo "== wake-up latency: concurrency 1, LISTEN, $WARMUP + $LAT_JOBS pushes ${INTERVAL_MS} ms apart"
for client in $CLIENTS; do
  driver "$client" latency "lat_$client" "$((WARMUP + LAT_JOBS))" "$INTERVAL_MS"
  "${CMD[@]}" | tee -a "$results" | cut -c1-120
done

if [ -n "$PICKUP" ]; then
  interval_us=$((1000000 / PICKUP_RATE))
  echo "== pickup at load: $PICKUP_RATE jobs/s for $PICKUP_SECONDS s, handlers of $PICKUP_WORK_MS ms, workers: $PICKUP"
  for w in $PICKUP; do
    for client in $CLIENTS; do
      driver "$client" pickup "pick_${client}_$w" "$((PICKUP_RATE * PICKUP_SECONDS))" "$interval_us" "$w" "$PICKUP_WORK_MS"
      "${CMD[@]}" | tee -a "$results" | cut -c1-120
    done
  done
  if [ "$PICKUP_POOLER" = 1 ]; then
    echo "== the same through PgBouncer (transaction mode, port $bouncer_port), workers in pooler mode"
    "$root/scripts/pgbouncer.sh" start "$dir/pgbouncer" "$bouncer_port" "$port"
    direct_dsn=$DSN direct_url=$URL
    DSN="host=127.0.0.1 port=$bouncer_port user=postgres dbname=postgres"
    URL="postgres://postgres@127.0.0.1:$bouncer_port/postgres"
    for w in $PICKUP; do
      for client in $CLIENTS; do
        driver "$client" pickup "pickpool_${client}_$w" "$((PICKUP_RATE * PICKUP_SECONDS))" "$interval_us" "$w" "$PICKUP_WORK_MS"
        BENCH_POOLER=1 BENCH_PRODUCER_DSN=$direct_dsn BENCH_PRODUCER_URL=$direct_url "${CMD[@]}" \
          | tee -a "$results" | cut -c1-120
      done
    done
    DSN=$direct_dsn URL=$direct_url
    "$root/scripts/pgbouncer.sh" stop "$dir/pgbouncer"
  fi
fi

for c in $CONCURRENCY; do
  echo "== drain $JOBS jobs, concurrency / batch $c"
  for n in 1 $([ "$PROCS" -gt 1 ] && echo "$PROCS"); do
    measured "$python" "$here/raw/raw_drain.py" "$DSN" "raw_b${c}_n$n" "$JOBS" "$c" "$n"
  done
  # The raw loop that also receives each job (payload, attempt) and acks
  # with the attempts: the least a worker running handlers must do.
  measured "$python" "$here/raw/raw_drain.py" "$DSN" "rawjob_b${c}_n1" "$JOBS" "$c" 1 job
  for client in $CLIENTS; do
    driver "$client" drain "drain_${client}_c$c" "$JOBS" "$c"
    measured "${CMD[@]}"
  done
  if [ "$PROCS" -gt 0 ]; then
    for client in $CLIENTS; do
      q="procs_${client}_c$c"
      psql "$DSN" -qAtc "SELECT count(*) FROM queue_push_batch('$q',
        ARRAY(SELECT jsonb_build_object('n', i, 's', repeat('x', 64)) FROM generate_series(1, $JOBS) i))" >/dev/null
      driver "$client" drain-shared "$q" "$JOBS" "$c"
      measured "$here/shared_drain.sh" "$PROCS" "${CMD[@]}"
    done
  fi
done

qb=""
if [ "$QUEUE_BENCH" = 1 ]; then
  echo "== queue-bench --only W3,W4 --reps 1"
  qb="$dir/queue-bench.json"
  "$root/target/release/queue-bench" --url "$DSN" --only W3,W4 --reps 1 --json "$qb"
fi

echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
"$python" "$here/table.py" table "$results" $qb
