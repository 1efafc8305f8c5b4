#!/usr/bin/env bash
# bench/layers/pause_probe.sh: what queue_pause's check costs every claim.
# Makes queue_pop_np, a copy of the installed queue_pop without the probe of
# queue.queue_settings, then runs pgbench with two scripts drawn at random
# in the same run (pop one job and ack it, in one statement), one client,
# synchronous_commit off so that the commit's flush does not hide CPU;
# prints each script's mean latency. Three runs; drops the copy at the end.
#
#   PGHOST=127.0.0.1 PGPORT=... PGUSER=postgres PGDATABASE=... bench/layers/pause_probe.sh
set -euo pipefail
bindir=$(pg_config --bindir)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; psql -X -q -c "DROP FUNCTION IF EXISTS public.queue_pop_np(text, text, int, interval)" >/dev/null' EXIT
psql -X -q -At -c "SELECT pg_get_functiondef('queue_pop(text, text, int, interval)'::regprocedure)" \
  | python3 -c '
import sys
f = sys.stdin.read()
probe = "IF NOT EXISTS (SELECT FROM queue.queue_settings s WHERE s.queue = v_queue AND s.paused_at IS NOT NULL)\n           AND (v_until IS NULL"
assert probe in f, "the installed queue_pop has no pause probe"
f = f.replace(probe, "IF (v_until IS NULL").replace("public.queue_pop(", "public.queue_pop_np(", 1).replace("queue_pop.", "queue_pop_np.")
print(f + ";")' > "$tmp/np.sql"
psql -X -q -f "$tmp/np.sql"
psql -X -q -c "SELECT count(*) FROM queue_push_batch('ab_pause', array_fill('{}'::jsonb, ARRAY[150000]))" >/dev/null
echo "SELECT queue_ack(id) FROM queue_pop('ab_pause', 'ab', 1);" > "$tmp/with.sql"
echo "SELECT queue_ack(id) FROM queue_pop_np('ab_pause', 'ab', 1);" > "$tmp/without.sql"
for run in 1 2 3; do
  PGOPTIONS='-c synchronous_commit=off' "$bindir/pgbench" -n -M prepared -c 1 -T 15 -r \
    -f "$tmp/with.sql@1" -f "$tmp/without.sql@1" 2>&1 \
    | awk -v run="$run" '/^ +[0-9.]+ +[0-9]+ +SELECT/ { printf "run %s: %s ms  %s\n", run, $1, ($0 ~ /_np/ ? "without the probe" : "with the probe") }'
done
psql -X -q -c "SELECT queue_clear('ab_pause')" >/dev/null
