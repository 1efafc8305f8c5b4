#!/usr/bin/env python3
"""Helpers of bench/clients/run.sh.

    table.py annotate BEFORE AFTER CPU_FILE < one JSON line   -> the line with per-job counts added
    table.py table RESULTS.jsonl [QUEUE_BENCH.json]          -> the markdown tables
    table.py combine < drain_part lines                      -> one drain line for them all

BEFORE / AFTER are "xact_commit|wal_sync|wal_write" snapshots of the cluster
(pg_stat_database for database postgres, pg_stat_wal); CPU_FILE is what
/usr/bin/time -f '%U %S' wrote for the driver process.
"""
import json
import sys

CLIENTS = ("python", "python-aio", "node", "rust")


def pct(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, int(len(v) * q))]


def annotate(before, after, cpu_file):
    line = json.loads(sys.stdin.read().strip().splitlines()[-1])
    b = [int(x) for x in before.split("|")]
    a = [int(x) for x in after.split("|")]
    with open(cpu_file) as f:
        user, system = (float(x) for x in f.read().split()[-2:])
    jobs = line["jobs"]
    line["commits_per_job"] = (a[0] - b[0]) / jobs
    line["wal_syncs_per_job"] = (a[1] - b[1]) / jobs
    line["client_cpu_us_per_job"] = (user + system) * 1e6 / jobs
    print(json.dumps(line))


def combine():
    parts = [json.loads(l) for l in sys.stdin if l.strip()]
    jobs = sum(p["jobs"] for p in parts)
    seconds = (max(p["end_ms"] for p in parts) - min(p["start_ms"] for p in parts)) / 1000
    print(json.dumps({"client": parts[0]["client"], "kind": "drain_procs", "procs": len(parts),
                      "concurrency": parts[0]["concurrency"], "jobs": jobs, "seconds": seconds,
                      "rate": jobs / seconds, "per_process": [p["jobs"] for p in parts]}))


def fmt_rate(r):
    return f"{r:,.0f}"


def table(results_file, queue_bench_file=None):
    rows = [json.loads(l) for l in open(results_file) if l.strip()]
    meta = next((r for r in rows if r["kind"] == "meta"), {"warmup": 0})
    lat = {r["client"]: r for r in rows if r["kind"] == "latency"}
    # The clients' drains by (client, concurrency); the raw loop's by (batch,
    # connections): one connection is the reference of one worker process
    # (at most c jobs in flight in both), n connections that of n processes.
    drains = {(r["client"], r["concurrency"]): r for r in rows
              if r["kind"] == "drain" and r["client"] not in ("raw", "raw-job")}
    raws = {(r["batch"], r["connections"]): r for r in rows if r["kind"] == "drain" and r["client"] == "raw"}
    # The raw loop that receives each job's payload and attempt (one connection).
    raw_jobs = {r["batch"]: r for r in rows if r["kind"] == "drain" and r["client"] == "raw-job"}
    flush = next((r for r in rows if r["kind"] == "flush"), None)
    concs = sorted({r["concurrency"] for r in rows if r["kind"] == "drain" and "concurrency" in r})
    head = f"| client | wake-up p50 / p99 / max (ms, {len(next(iter(lat.values()))['ms']) - meta['warmup'] if lat else 0} jobs) | " + " | ".join(
        f"drain c={c}, jobs/s (× raw batch {c}, 1 conn{' / × raw job loop' if raw_jobs else ''})" for c in concs) + " |"
    print(head)
    print("| --- " * (2 + len(concs)) + "|")
    for client in CLIENTS:
        if client not in lat and not any(k[0] == client for k in drains):
            continue
        cells = []
        if client in lat:
            ms = lat[client]["ms"][meta["warmup"]:]  # in push order: the warm-up pushes first
            cells.append(f"{pct(ms, 0.5):.2f} / {pct(ms, 0.99):.2f} / {max(ms):.2f}")
        else:
            cells.append("")
        for c in concs:
            r, raw, raw_job = drains.get((client, c)), raws.get((c, 1)), raw_jobs.get(c)
            if r is None:
                cells.append("")
            else:
                ratios = [f"{r['rate'] / x['rate']:.2f}×" for x in (raw, raw_job) if x is not None]
                cells.append(fmt_rate(r["rate"]) + (f" ({' / '.join(ratios)})" if ratios else ""))
        print(f"| {client} | " + " | ".join(cells) + " |")
    fl = ""
    if flush:
        fl = f"commit flush {pct(flush['ms'], 0.5):.2f} / {pct(flush['ms'], 0.99):.2f} / {max(flush['ms']):.2f}"
    for n in sorted({k[1] for k in raws}):
        raw_cells = [fmt_rate(raws[(c, n)]["rate"]) if (c, n) in raws else "" for c in concs]
        print(f"| raw SQL (Python loop, {n} conn{'s' if n > 1 else ''}, pop batch = c + ack ids[] per transaction) "
              f"| {fl if n == 1 else ''} | " + " | ".join(raw_cells) + " |")
    if raw_jobs:
        print("| raw SQL job loop (1 conn; also fetches payload and attempt, acks with attempts) | | "
              + " | ".join(fmt_rate(raw_jobs[c]["rate"]) if c in raw_jobs else "" for c in concs) + " |")
    if queue_bench_file:
        qb = json.load(open(queue_bench_file))["results"]
        got = {(r["workload"], r["system"]): r for r in qb}
        cells = []
        for w in ("W3 drain 50k, 4 workers, batch 1", "W4 drain 50k, 4 workers, batch 100"):
            q = got.get((w, "queue"))
            if q:
                cells.append(f"{w.split()[0]} {fmt_rate(q['median'] if 'median' in q else q['values'][0])}")
        print("| queue-bench `--only W3,W4 --reps 1` (4 conns; W3 batch 1, W4 batch 100) | | "
              + " | ".join(cells + [""] * (len(concs) - len(cells))) + " |")
    if meta["warmup"] and lat:
        print()
        print(f"Warm-up (the first {meta['warmup']} pushes after the worker started, not counted above), max ms: "
              + ", ".join(f"{c} {max(r['ms'][:meta['warmup']]):.2f}" for c, r in lat.items()) + ".")

    procs = {(r["client"], r["concurrency"]): r for r in rows if r["kind"] == "drain_procs"}
    if procs:
        n = next(iter(procs.values()))["procs"]
        print()
        print(f"| drain with {n} worker processes on one queue | "
              + " | ".join(f"c={c} each, jobs/s (× raw batch {c}, {n} conns)" for c in concs) + " |")
        print("| --- " * (1 + len(concs)) + "|")
        for client in CLIENTS:
            cells = []
            for c in concs:
                r, raw = procs.get((client, c)), raws.get((c, n))
                cells.append("" if r is None else fmt_rate(r["rate"]) if raw is None
                             else f"{fmt_rate(r['rate'])} ({r['rate'] / raw['rate']:.2f}×)")
            if any(cells):
                print(f"| {client} | " + " | ".join(cells) + " |")

    print()
    print("| drain | jobs/s | commits / job | WAL flushes / job | driver CPU µs / job |")
    print("| --- | --- | --- | --- | --- |")
    for c in concs:
        labelled = [(r, f"raw batch {c}, {n} conn{'s' if n > 1 else ''}") for (b, n), r in sorted(raws.items()) if b == c]
        labelled.append((raw_jobs.get(c), f"raw job loop batch {c}, 1 conn"))
        for client in CLIENTS:
            labelled += [(drains.get((client, c)), f"{client} c={c}"),
                         (procs.get((client, c)), f"{client} c={c}, worker processes")]
        for r, label in labelled:
            if r is None or "commits_per_job" not in r:
                continue
            print(f"| {label} | {fmt_rate(r['rate'])} | {r['commits_per_job']:.2f} | "
                  f"{r['wal_syncs_per_job']:.2f} | {r['client_cpu_us_per_job']:.0f} |")

    picks = sorted((r for r in rows if r["kind"] == "pickup"),
                   key=lambda r: (r.get("pooler", False), r["concurrency"], CLIENTS.index(r["client"])))
    if picks:
        skip = meta.get("pickup_warmup", 0)
        print()
        print(f"| pickup at load (push return -> handler start) | wait | workers | jobs/s pushed | handler ms "
              f"| p50 / p99 / max (ms, all but the first {skip}) |")
        print("| --- | --- | --- | --- | --- | --- |")
        for r in picks:
            ms = r["ms"][skip:]
            wait = "server-side, through PgBouncer" if r.get("pooler") else "LISTEN"
            print(f"| {r['client']} | {wait} | {r['concurrency']} | {r['push_rate']:,.0f} | {r['work_ms']:g} "
                  f"| {pct(ms, 0.5):.2f} / {pct(ms, 0.99):.2f} / {max(ms):.2f} |")


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "annotate":
        annotate(*sys.argv[2:])
    elif len(sys.argv) == 2 and sys.argv[1] == "combine":
        combine()
    elif len(sys.argv) in (3, 4) and sys.argv[1] == "table":
        table(*sys.argv[2:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
