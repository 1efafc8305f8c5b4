#!/usr/bin/env bash
# bench/clients/shared_drain.sh PROCS COMMAND...: PROCS copies of a driver's
# drain-shared COMMAND at once, on one queue that run.sh has filled, then one
# JSON line for all of them (table.py combine): the jobs they finished over
# the time from the earliest start to the latest finish.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
procs=${1:?processes}
shift
out=$(mktemp)
trap 'rm -f "$out"' EXIT
pids=()
for _ in $(seq "$procs"); do
  "$@" >>"$out" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
[ "$status" = 0 ] || { echo "a drain-shared process failed" >&2; exit 1; }
"${PYTHON:-python3}" "$here/table.py" combine <"$out"
