#!/usr/bin/env bash
# make demo: a throwaway cluster with the extension preloaded, jobs pushed
# from psql, a Python worker that LISTENs, claims, acks and fails one job
# into a retry, and what happened, read back from the queue.
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=$PWD/.run/demo-cluster
PORT=${DEMO_PORT:-25440}
DSN="host=127.0.0.1 port=$PORT user=postgres dbname=postgres"
psql_demo() { psql -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres "$@"; }

echo "==> starting a throwaway PostgreSQL 15 on port $PORT (data in $DIR)"
scripts/cluster.sh start "$DIR" "$PORT" "queue.tick = 200ms"
psql_demo -c "CREATE EXTENSION queue"
psql_demo -At -c "SELECT '    background worker: ' || backend_type || ' (pid ' || pid || ')' FROM pg_stat_activity WHERE backend_type = 'queue maintenance'"

echo "==> starting a Python worker (LISTEN + queue_pop + queue_ack)"
python3 scripts/demo_worker.py "$DSN" emails 5 &
WORKER=$!
sleep 1

echo "==> pushing five jobs from psql in one transaction (the worker sees them together)"
psql_demo -x <<'SQL'
BEGIN;
SELECT queue_push('emails', '{"to": "bulk@example.com"}', 'low')                      AS low_job,
       queue_push('emails', '{"to": "ceo@example.com"}', 'critical')                  AS critical_job,
       queue_push('emails', '{"to": "flaky@example.com", "fail_first_try": true}',
                  backoff_base => '1 second')                                          AS flaky_job_normal,
       queue_push('emails', '{"to": "later@example.com"}', delay => '2 seconds')      AS delayed_job,
       queue_push('emails', '{"to": "user@example.com"}', 'high')                     AS high_job;
COMMIT;
SQL

wait "$WORKER"

echo "==> what happened (SELECT ... FROM queue.all_jobs)"
psql_demo -c "SELECT id, status, priority, attempts, payload->>'to' AS recipient, last_error,
                     round(extract(epoch FROM finished_at - created_at)::numeric, 2) AS seconds_to_finish
                FROM queue.all_jobs ORDER BY id"
echo "==> the operator's view (queue_stats, queue_metrics, queue_health: counters, no row counting)"
sleep 0.5
psql_demo -x -c "SELECT s->'total_pushed' AS pushed, s->'total_popped' AS popped, s->'completed' AS completed,
                        s->'retried' AS retried, s->'total_size' AS waiting,
                        m->'executions' AS executions, m->'p95_run_ms' AS p95_run_ms, m->'p95_wait_ms' AS p95_wait_ms,
                        h->'healthy' AS healthy, h->'workers_running' AS workers
                   FROM queue_stats('emails') s, queue_metrics('emails') m, queue_health() h"
echo "==> the cluster is still running: psql -h 127.0.0.1 -p $PORT -U postgres   (stop it: make demo-stop)"
