//! Scale mode: how the cost grows as the work grows (`queue-bench --scale`).
//!
//! Each part is a curve: the same step measured at growing sizes, beside the
//! bare reference where one applies, so that a bend shows up as a ratio that
//! moves rather than as a number to be remembered.
//!
//! * `workers`: W3 (claims of one) and W4 (claims of 100) drained by 1 to 64
//!   workers, one statement per commit (a claim, then the ack of what it
//!   claimed), as client libraries send them: jobs/s, claim p50/p99, server
//!   CPU per job; the queue as installed against bare + history, the bare
//!   reference beside.
//! * `queues`: 1 to 10,000 queues active at once, ten priorities each, jobs
//!   spread evenly over every (queue, priority): push and pop cost per job,
//!   the slowest push (a writer stall), wake-up latency of idle listeners
//!   spread over all the queues (and wake-ups lost), the readers' latency,
//!   and whether `queue_list` still matches a count of the tables exactly.
//! * `payload`: W1 and W4 with 100 B, 4 KB, 64 KB and 1 MB payloads of
//!   incompressible text (TOAST), against the bare reference.
//! * `depth`: pop + ack latency with `--waiting` jobs waiting, then with
//!   `--history` finished jobs kept beside them (generated directly, as W7
//!   does), and the readers at that size.
//! * `isolation`: pop + ack latency of a queue of 10 beside a queue of
//!   1,000,000 waiting, idle and then drained by two workers at once.
//! * `soak`: `--soak-minutes` at half of W4's throughput with retention
//!   deleting as fast as jobs finish: per sample, throughput, claim p99, the
//!   tables' sizes, dead tuples and autovacuum runs.
//!
//! Prints a table per curve, writes the points as JSON (`--json`, default
//! `.run/scale.json`) and an SVG plot beside it (`.svg`).

use super::{connect, connect_listening, percentile, Bench, Result, System, QUEUE};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the scale mode was asked to do.
pub struct Opts {
    pub parts: Vec<String>,
    pub waiting: usize,
    pub history: usize,
    pub soak_minutes: f64,
    pub json: String,
}

/// One measured point of a curve.
struct Point {
    /// The panel: what is measured against what.
    panel: String,
    unit: &'static str,
    series: String,
    x: f64,
    value: f64,
}

#[derive(Default)]
struct Curves {
    points: Vec<Point>,
}

impl Curves {
    fn add(&mut self, panel: &str, unit: &'static str, series: &str, x: f64, value: f64) {
        println!("  {panel:<52} {series:<20} x={x:<9} {value:>12.3} {unit}");
        self.points.push(Point { panel: panel.to_string(), unit, series: series.to_string(), x, value });
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A JSON payload of about `bytes` bytes of incompressible text (so that
/// TOAST stores it out of line instead of compressing it away).
fn sized_payload(bytes: usize, seed: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let n = bytes.saturating_sub(10).max(1);
    let mut s = String::with_capacity(bytes);
    s.push_str(r#"{"s": ""#);
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push(ALPHABET[(x % 64) as usize] as char);
    }
    s.push_str("\"}");
    s
}

/// The SQL expression of a server-generated payload of about `bytes`
/// bytes of hex (md5 chains: barely compressible), for row `i`.
fn sized_payload_sql(bytes: usize) -> String {
    let chunks = (bytes / 32).max(1);
    format!("jsonb_build_object('s', (SELECT string_agg(md5(i::text || '-' || k::text), '') FROM generate_series(1, {chunks}) k))")
}

/// What a drain measured.
struct Drained {
    rate: f64,
    claims: Vec<f64>,
    jobs: usize,
}

/// Drain everything waiting with `workers` connections, one statement per
/// commit: a claim of up to `batch` jobs, then the ack of what it claimed.
/// Worker w takes the queues w, w + workers, ... in turn and moves on when
/// a claim comes back empty (nothing is pushed meanwhile, so empty means
/// done or held by another worker). Claim latencies are those of claims
/// that returned jobs; `payload` makes every claim fetch the payloads.
async fn drain(
    url: &str,
    system: System,
    queues: Arc<Vec<String>>,
    workers: usize,
    batch: i32,
    payload: bool,
) -> Result<Drained> {
    let claims = Arc::new(Mutex::new(Vec::new()));
    let jobs = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (url, queues, claims, jobs) = (url.to_string(), queues.clone(), claims.clone(), jobs.clone());
        tasks.push(tokio::spawn(async move {
            let client = connect(&url).await?;
            let columns = if payload { "id, attempt, payload::text" } else { "id, attempt" };
            let (claim, ack) = match system {
                System::Queue => (
                    client.prepare(&format!("SELECT {columns} FROM queue_pop($1::text, $2::text, $3::int)")).await?,
                    client.prepare("SELECT queue_ack_batch($1::bigint[], $2::int[])").await?,
                ),
                System::Reference | System::RefHistory => {
                    let claim = client
                        .prepare(&format!(
                            "UPDATE bench_ref SET claimed = true WHERE id IN (SELECT id FROM bench_ref \
                             WHERE NOT claimed ORDER BY priority, id FOR UPDATE SKIP LOCKED LIMIT $3::int) \
                             RETURNING {}, $1::text, $2::text",
                            columns.replace("attempt", "1::int")
                        ))
                        .await?;
                    let ack = if system == System::Reference {
                        "DELETE FROM bench_ref WHERE id = ANY($1::bigint[]) AND $2::int[] IS NOT NULL"
                    } else {
                        "WITH done AS (DELETE FROM bench_ref WHERE id = ANY($1::bigint[]) AND $2::int[] IS NOT NULL \
                         RETURNING id, priority, payload) INSERT INTO bench_hist SELECT id, priority, payload, now() FROM done"
                    };
                    (claim, client.prepare(ack).await?)
                }
            };
            let me = format!("w{w}");
            let mut own = Vec::new();
            // With at least one queue per worker the queues are shared
            // out; with fewer, every worker drains every queue (one queue
            // and four workers must not leave three idle).
            let mine: Vec<&String> = if queues.len() >= workers {
                queues.iter().skip(w).step_by(workers).collect()
            } else {
                queues.iter().cycle().skip(w % queues.len().max(1)).take(queues.len()).collect()
            };
            for q in mine {
                loop {
                    let t = Instant::now();
                    let rows = client.query(&claim, &[q, &me, &batch]).await?;
                    if rows.is_empty() {
                        break;
                    }
                    own.push(ms(t.elapsed()));
                    let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
                    let attempts: Vec<i32> = rows.iter().map(|r| r.get(1)).collect();
                    client.execute(&ack, &[&ids, &attempts]).await?;
                    jobs.fetch_add(ids.len(), Ordering::SeqCst);
                }
            }
            claims.lock().map_err(|_| "poisoned")?.extend(own);
            Result::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let jobs = jobs.load(Ordering::SeqCst);
    let claims = std::mem::take(&mut *claims.lock().map_err(|_| "poisoned")?);
    Ok(Drained { rate: jobs as f64 / elapsed, claims, jobs })
}

/// Single pushes from `conns` connections, one statement per commit: job j
/// goes to queue `queue_of(j)` with priority `priority_of(j)` and the payload
/// `body(j)`. Returns jobs/s and every push's latency.
async fn push(
    url: &str,
    system: System,
    total: usize,
    conns: usize,
    queue_of: Arc<dyn Fn(usize) -> String + Send + Sync>,
    priority_of: impl Fn(usize) -> i32 + Copy + Send + 'static,
    body: Arc<dyn Fn(usize) -> String + Send + Sync>,
) -> Result<(f64, Vec<f64>)> {
    let lat = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (url, lat, queue_of, body) = (url.to_string(), lat.clone(), queue_of.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let client = connect(&url).await?;
            let sql = match system {
                System::Queue => "SELECT queue_push($1::text, $2::text::jsonb, $3::int)",
                _ => "INSERT INTO bench_ref (priority, payload) SELECT $3::int, $2::text::jsonb WHERE $1::text IS NOT NULL",
            };
            let stmt = client.prepare(sql).await?;
            let mut own = Vec::new();
            for j in (c..total).step_by(conns) {
                let (q, p, b) = (queue_of(j), priority_of(j), body(j));
                let t = Instant::now();
                client.execute(&stmt, &[&q, &b, &p]).await?;
                own.push(ms(t.elapsed()));
            }
            lat.lock().map_err(|_| "poisoned")?.extend(own);
            Result::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    let lat = std::mem::take(&mut *lat.lock().map_err(|_| "poisoned")?);
    Ok((rate, lat))
}

/// Fill `n` waiting jobs of `queue` straight into the table (or the
/// reference), in chunks, with the payload expression `body` of row i.
async fn fill(b: &Bench, system: System, queue: &str, n: usize, body: &str) -> Result<()> {
    let mut done = 0;
    while done < n {
        let m = 100_000.min(n - done);
        let sql = match system {
            System::Queue => format!(
                "INSERT INTO queue.jobs (queue, status, run_at, max_attempts, timeout, backoff_base, backoff_max, payload)
                 SELECT $1::text, 'pending', now(), 3, '5 minutes', '10 seconds', '1 hour', {body}
                   FROM generate_series({}, {}) i",
                done + 1,
                done + m
            ),
            _ => format!(
                "INSERT INTO bench_ref (payload) SELECT {body} FROM generate_series({}, {}) i WHERE $1::text IS NOT NULL",
                done + 1,
                done + m
            ),
        };
        b.admin.execute(&sql, &[&queue]).await?;
        done += m;
    }
    b.admin.batch_execute("VACUUM ANALYZE queue.jobs").await?;
    b.admin.batch_execute("VACUUM ANALYZE bench_ref").await?;
    Ok(())
}

const SMALL_PAYLOAD: &str = "jsonb_build_object('n', i, 's', repeat('x', 64))";

/// Server CPU per job in ms between two readings.
fn cpu_per_job(before: Option<f64>, after: Option<f64>, jobs: usize) -> f64 {
    match (before, after) {
        (Some(b), Some(a)) if jobs > 0 => (a - b) * 1000.0 / jobs as f64,
        _ => f64::NAN,
    }
}

/// Run the drain and read the server's CPU around it.
async fn drain_with_cpu(
    b: &Bench,
    system: System,
    queues: Arc<Vec<String>>,
    workers: usize,
    batch: i32,
    payload: bool,
) -> Result<(Drained, f64)> {
    let before = b.server_cpu().await;
    let d = drain(&b.url, system, queues, workers, batch, payload).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cpu = cpu_per_job(before, b.server_cpu().await, d.jobs);
    Ok((d, cpu))
}

fn series_of(system: System) -> &'static str {
    match system {
        System::Queue => "queue",
        System::Reference => "bare",
        System::RefHistory => "bare + history",
    }
}

/// Workers: W3 and W4 with 1 to 64 workers.
async fn workers(b: &Bench, c: &mut Curves) -> Result<()> {
    let one = Arc::new(vec![QUEUE.to_string()]);
    for (w, batch, total) in [("W3", 1, 20_000usize), ("W4", 100, 50_000)] {
        for n in [1usize, 2, 4, 8, 16, 32, 64] {
            for system in [System::Queue, System::RefHistory, System::Reference] {
                b.reset().await?;
                fill(b, system, QUEUE, total, SMALL_PAYLOAD).await?;
                let (mut d, cpu) = drain_with_cpu(b, system, one.clone(), n, batch, false).await?;
                if d.jobs != total {
                    return Err(format!("{w} with {n} workers: {} of {total} jobs drained", d.jobs).into());
                }
                let s = series_of(system);
                c.add(&format!("{w} jobs/s by workers"), "jobs/s", s, n as f64, d.rate);
                c.add(&format!("{w} claim p99 by workers"), "ms", s, n as f64, percentile(&mut d.claims, 0.99));
                c.add(&format!("{w} claim p50 by workers"), "ms", s, n as f64, percentile(&mut d.claims, 0.50));
                c.add(&format!("{w} server CPU per job by workers"), "ms", s, n as f64, cpu);
            }
        }
    }
    Ok(())
}

/// The (queue, status) pairs where `queue_list` and a count of the tables
/// disagree.
async fn counter_mismatches(b: &Bench, prefix: &str) -> Result<i64> {
    let row = b
        .admin
        .query_one(
            "WITH counted AS (
                 SELECT queue, count(*) FILTER (WHERE status = 'pending') AS pending,
                        count(*) FILTER (WHERE status = 'completed') AS completed
                   FROM queue.all_jobs WHERE starts_with(queue, $1) GROUP BY queue),
                  listed AS (SELECT * FROM queue_list() WHERE starts_with(queue, $1))
             SELECT count(*) FROM listed l FULL JOIN counted c USING (queue)
              WHERE coalesce(l.pending, 0) <> coalesce(c.pending, 0)
                 OR coalesce(l.completed, 0) <> coalesce(c.completed, 0)",
            &[&prefix],
        )
        .await?;
    Ok(row.get(0))
}

/// Median latency of `sql` over `calls` calls.
async fn read_latency(b: &Bench, sql: &str, calls: usize) -> Result<f64> {
    let mut lat = Vec::new();
    for _ in 0..calls {
        let t = Instant::now();
        b.admin.batch_execute(sql).await?;
        lat.push(ms(t.elapsed()));
    }
    Ok(percentile(&mut lat, 0.5))
}

/// Wake-up latency over `n` queues: four idle listeners share the queues
/// (each LISTENs on its quarter, or on every queue when there are fewer than
/// four, and has found each of them empty once, the state of an idle worker), and a producer pushes one job every 5 ms to
/// the queues in turn. Returns the latencies (push commit to the claim that
/// returned the job) and how many jobs no wake-up fetched.
async fn wakeups(b: &Bench, names: &Arc<Vec<String>>, pushes: usize) -> Result<(Vec<f64>, usize)> {
    const LISTENERS: usize = 4;
    let committed: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let popped: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for l in 0..LISTENERS {
        let (url, names, popped, stop, ready) =
            (b.url.clone(), names.clone(), popped.clone(), stop.clone(), ready.clone());
        tasks.push(tokio::spawn(async move {
            let (client, mut channels) = connect_listening(&url).await?;
            // Fewer queues than listeners: every listener LISTENs on every
            // queue, as idle workers of one queue do (the herd).
            let mine: Vec<&String> = if names.len() >= LISTENERS {
                names.iter().skip(l).step_by(LISTENERS).collect()
            } else {
                names.iter().collect()
            };
            for chunk in mine.chunks(500) {
                let sql: String = chunk.iter().map(|q| format!("LISTEN \"queue_{q}\";")).collect();
                client.batch_execute(&sql).await?;
            }
            let pop = client.prepare("SELECT id, attempt FROM queue_pop($1::text, 'listener')").await?;
            let ack = client.prepare("SELECT queue_ack($1::bigint, NULL, $2::int)").await?;
            for q in &mine {
                client.query(&pop, &[q]).await?;
            }
            ready.fetch_add(1, Ordering::SeqCst);
            while !stop.load(Ordering::SeqCst) {
                let Ok(Some(channel)) = tokio::time::timeout(Duration::from_millis(200), channels.recv()).await else {
                    continue;
                };
                let Some(q) = channel.strip_prefix("queue_") else { continue };
                let q = q.to_string();
                // Claim until empty: the empty claim marks the queue again.
                loop {
                    let rows = client.query(&pop, &[&q]).await?;
                    let Some(row) = rows.first() else { break };
                    let (id, attempt): (i64, i32) = (row.get(0), row.get(1));
                    popped.lock().map_err(|_| "poisoned")?.insert(id, Instant::now());
                    client.execute(&ack, &[&id, &attempt]).await?;
                }
            }
            Result::Ok(())
        }));
    }
    while ready.load(Ordering::SeqCst) < LISTENERS {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let producer = connect(&b.url).await?;
    let stmt = producer.prepare("SELECT queue_push($1::text, '{}'::jsonb, $2::int)").await?;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    // A stride prime to every n visits every queue before repeating one.
    let stride = 7919usize;
    for j in 0..pushes {
        tick.tick().await;
        let q = &names[(j * stride) % names.len()];
        let id: i64 = producer.query_one(&stmt, &[q, &((j % 10) as i32)]).await?.get(0);
        committed.lock().map_err(|_| "poisoned")?.insert(id, Instant::now());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await??;
    }
    let committed = committed.lock().map_err(|_| "poisoned")?;
    let popped = popped.lock().map_err(|_| "poisoned")?;
    let mut lat = Vec::new();
    let mut lost = 0;
    for (id, c) in committed.iter() {
        match popped.get(id) {
            Some(p) => lat.push(ms(p.saturating_duration_since(*c))),
            None => lost += 1,
        }
    }
    Ok((lat, lost))
}

/// Queues: 1 to 10,000 queues with ten priorities each.
async fn queues(b: &Bench, c: &mut Curves) -> Result<()> {
    const TOTAL: usize = 100_000;
    for n in [1usize, 100, 1_000, 10_000] {
        b.reset().await?;
        // Names of this run's own: the counters of earlier runs' queues
        // outlive the TRUNCATE of the tables.
        let prefix = format!("s{}n{n}_", std::process::id());
        let names: Arc<Vec<String>> = Arc::new((0..n).map(|i| format!("{prefix}q{i}")).collect());
        let x = n as f64;
        // Job j: queue j % n, priority (j / n) % 10, so that at 10,000
        // queues every one of the 100,000 (queue, priority) keys gets a job.
        let queue_of: Arc<dyn Fn(usize) -> String + Send + Sync> = {
            let names = names.clone();
            Arc::new(move |j| names[j % names.len()].clone())
        };
        let priority_of = move |j: usize| ((j / n) % 10) as i32;
        let body: Arc<dyn Fn(usize) -> String + Send + Sync> = Arc::new(|j| format!(r#"{{"n": {j}}}"#));
        let before = b.server_cpu().await;
        let (rate, mut lat) = push(&b.url, System::Queue, TOTAL, 4, queue_of, priority_of, body).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cpu = cpu_per_job(before, b.server_cpu().await, TOTAL);
        c.add("push jobs/s by queues active", "jobs/s", "queue", x, rate);
        c.add("push server CPU per job by queues active", "ms", "queue", x, cpu);
        c.add("push p99 by queues active", "ms", "queue", x, percentile(&mut lat, 0.99));
        c.add("slowest push by queues active", "ms", "queue", x, percentile(&mut lat, 1.0));
        c.add(
            "counter mismatches by queues active",
            "pairs",
            "after pushes",
            x,
            counter_mismatches(b, &prefix).await? as f64,
        );
        c.add(
            "queue_stats() p50 by queues active",
            "ms",
            "queue",
            x,
            read_latency(b, "SELECT queue_stats()", 20).await?,
        );
        c.add(
            "queue_list() p50 by queues active",
            "ms",
            "queue",
            x,
            read_latency(b, "SELECT count(*) FROM queue_list()", 20).await?,
        );
        let (mut d, cpu) = drain_with_cpu(b, System::Queue, names.clone(), 4, 1, false).await?;
        if d.jobs != TOTAL {
            return Err(format!("queues {n}: {} of {TOTAL} jobs drained", d.jobs).into());
        }
        c.add("pop+ack jobs/s by queues active", "jobs/s", "queue", x, d.rate);
        c.add("pop+ack server CPU per job by queues active", "ms", "queue", x, cpu);
        c.add("claim p99 by queues active", "ms", "queue", x, percentile(&mut d.claims, 0.99));
        c.add(
            "counter mismatches by queues active",
            "pairs",
            "after the drain",
            x,
            counter_mismatches(b, &prefix).await? as f64,
        );
        let (mut lat, lost) = wakeups(b, &names, 2_000).await?;
        c.add("wake-up p50 by queues active", "ms", "queue", x, percentile(&mut lat, 0.5));
        c.add("wake-up p99 by queues active", "ms", "queue", x, percentile(&mut lat, 0.99));
        c.add("wake-ups lost by queues active", "jobs", "queue", x, lost as f64);
        c.add(
            "counter mismatches by queues active",
            "pairs",
            "after the wake-ups",
            x,
            counter_mismatches(b, &prefix).await? as f64,
        );
    }
    Ok(())
}

/// Payload size: W1 and W4 at 100 B to 1 MB.
async fn payloads(b: &Bench, c: &mut Curves) -> Result<()> {
    let one = Arc::new(vec![QUEUE.to_string()]);
    for (bytes, pushes, drained) in
        [(100usize, 20_000usize, 50_000usize), (4_096, 20_000, 20_000), (65_536, 4_000, 5_000), (1 << 20, 400, 500)]
    {
        let x = bytes as f64;
        for system in [System::Queue, System::Reference] {
            b.reset().await?;
            let queue_of: Arc<dyn Fn(usize) -> String + Send + Sync> = Arc::new(|_| QUEUE.to_string());
            let body: Arc<dyn Fn(usize) -> String + Send + Sync> = Arc::new(move |j| sized_payload(bytes, j as u64));
            let before = b.server_cpu().await;
            let (rate, _) = push(&b.url, system, pushes, 4, queue_of, |_| 0, body).await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let cpu = cpu_per_job(before, b.server_cpu().await, pushes);
            c.add("W1 jobs/s by payload bytes", "jobs/s", series_of(system), x, rate);
            c.add("W1 server CPU per job by payload bytes", "ms", series_of(system), x, cpu);
        }
        for system in [System::Queue, System::RefHistory, System::Reference] {
            b.reset().await?;
            fill(b, system, QUEUE, drained, &sized_payload_sql(bytes)).await?;
            let (d, cpu) = drain_with_cpu(b, system, one.clone(), 4, 100, true).await?;
            if d.jobs != drained {
                return Err(format!("payload {bytes}: {} of {drained} jobs drained", d.jobs).into());
            }
            c.add("W4 jobs/s by payload bytes", "jobs/s", series_of(system), x, d.rate);
            c.add("W4 server CPU per job by payload bytes", "ms", series_of(system), x, cpu);
        }
    }
    Ok(())
}

/// pop + ack latencies of `queue` over `ops` rounds, each round pushing one
/// job first (untimed) so that the queue's depth stays as it is.
async fn pop_ack(b: &Bench, queue: &str, ops: usize) -> Result<Vec<f64>> {
    let client = connect(&b.url).await?;
    let pop = client.prepare("SELECT id, attempt FROM queue_pop($1::text, 'lat')").await?;
    let ack = client.prepare("SELECT queue_ack($1::bigint, NULL, $2::int)").await?;
    let push = client.prepare("SELECT queue_push($1::text, '{}'::jsonb)").await?;
    let mut lat = Vec::with_capacity(ops);
    // The first rounds after a checkpoint write full pages: warm up first.
    for k in 0..ops + 100 {
        client.execute(&push, &[&queue]).await?;
        let t = Instant::now();
        let row = client.query_one(&pop, &[&queue]).await?;
        let (id, attempt): (i64, i32) = (row.get(0), row.get(1));
        client.execute(&ack, &[&id, &attempt]).await?;
        if k >= 100 {
            lat.push(ms(t.elapsed()));
        }
    }
    Ok(lat)
}

async fn record_pop_ack(b: &Bench, c: &mut Curves, panel: &str, series: &str, queue: &str, x: f64) -> Result<()> {
    let mut lat = pop_ack(b, queue, 1000).await?;
    c.add(&format!("{panel} pop+ack p50"), "ms", series, x, percentile(&mut lat, 0.5));
    c.add(&format!("{panel} pop+ack p99"), "ms", series, x, percentile(&mut lat, 0.99));
    Ok(())
}

async fn table_mb(b: &Bench, table: &str) -> Result<f64> {
    let bytes: i64 = b.admin.query_one("SELECT pg_total_relation_size($1::text::regclass)", &[&table]).await?.get(0);
    Ok(bytes as f64 / 1_048_576.0)
}

/// Depth and history: pop + ack with many waiting, then with a long history.
async fn depth(b: &Bench, c: &mut Curves, waiting: usize, history: usize) -> Result<()> {
    b.reset().await?;
    record_pop_ack(b, c, "depth", "queue", QUEUE, 0.0).await?;
    let t = Instant::now();
    fill(b, System::Queue, QUEUE, waiting, SMALL_PAYLOAD).await?;
    println!("  ({waiting} waiting jobs filled in {:.0} s)", t.elapsed().as_secs_f64());
    record_pop_ack(b, c, "depth", "queue", QUEUE, waiting as f64).await?;
    let t = Instant::now();
    let mut done = 0;
    while done < history {
        let m = 5_000_000.min(history - done);
        b.admin
            .batch_execute(&format!(
                "INSERT INTO queue.finished_jobs (id, queue, status, run_at, max_attempts, timeout, backoff_base,
                                                  backoff_max, payload, attempts, started_at, finished_at)
                 SELECT nextval('queue.jobs_id_seq'), '{QUEUE}', 'completed', now(), 3, '5 minutes', '10 seconds',
                        '1 hour', jsonb_build_object('n', i, 's', repeat('x', 64)), 1, now(), now()
                   FROM generate_series(1, {m}) i"
            ))
            .await?;
        done += m;
        println!("  ({done} finished jobs of history after {:.0} s)", t.elapsed().as_secs_f64());
    }
    b.admin.batch_execute("ANALYZE queue.finished_jobs").await?;
    let x = (waiting + history) as f64;
    record_pop_ack(b, c, "depth", "queue", QUEUE, x).await?;
    c.add(
        "depth queue_stats('bench') p50",
        "ms",
        "queue",
        x,
        read_latency(b, "SELECT queue_stats('bench')", 20).await?,
    );
    c.add(
        "depth queue_jobs('bench') first page p50",
        "ms",
        "queue",
        x,
        read_latency(b, "SELECT count(*) FROM queue_jobs('bench')", 20).await?,
    );
    c.add("depth tables MB", "MB", "queue.jobs", x, table_mb(b, "queue.jobs").await?);
    c.add("depth tables MB", "MB", "queue.finished_jobs", x, table_mb(b, "queue.finished_jobs").await?);
    // Leave the cluster small again for whatever runs next.
    b.reset().await?;
    Ok(())
}

/// Two workers claiming and acking batches of 10 until told to stop: of
/// `queue` when given, else of the bare reference table.
fn busy(url: &str, queue: Option<&'static str>, stop: &Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<Result<()>>> {
    (0..2)
        .map(|w| {
            let (url, stop) = (url.to_string(), stop.clone());
            tokio::spawn(async move {
                let client = connect(&url).await?;
                let (pop, ack) = match queue {
                    Some(q) => (format!("SELECT id FROM queue_pop('{q}', 'busy{w}', 10)"), "SELECT queue_ack($1::bigint[])"),
                    None => (
                        "UPDATE bench_ref SET claimed = true WHERE id IN (SELECT id FROM bench_ref WHERE NOT claimed \
                         ORDER BY priority, id FOR UPDATE SKIP LOCKED LIMIT 10) RETURNING id"
                            .to_string(),
                        "WITH done AS (DELETE FROM bench_ref WHERE id = ANY($1::bigint[]) RETURNING id, priority, payload) \
                         INSERT INTO bench_hist SELECT id, priority, payload, now() FROM done",
                    ),
                };
                let (pop, ack) = (client.prepare(&pop).await?, client.prepare(ack).await?);
                while !stop.load(Ordering::SeqCst) {
                    let ids: Vec<i64> = client.query(&pop, &[]).await?.iter().map(|r| r.get(0)).collect();
                    client.execute(&ack, &[&ids]).await?;
                }
                Result::Ok(())
            })
        })
        .collect()
}

/// One slow queue beside a small one. The control for the drained case is
/// the same two workers draining the reference table instead: the same
/// load on this machine's two cores and WAL, without a big queue.
async fn isolation(b: &Bench, c: &mut Curves) -> Result<()> {
    const SMALL: &str = "small";
    const BIG: &str = "big";
    const PANEL: &str = "small queue (10 waiting)";
    b.reset().await?;
    b.admin
        .batch_execute(&format!(
            "SELECT count(*) FROM queue_push_batch('{SMALL}', array_fill('{{}}'::jsonb, ARRAY[10]))"
        ))
        .await?;
    record_pop_ack(b, c, PANEL, "alone", SMALL, 10.0).await?;
    fill(b, System::Reference, BIG, 1_000_000, SMALL_PAYLOAD).await?;
    for (series, queue) in
        [("alone, 2 workers draining bare", None), ("beside 1M idle", Some(BIG)), ("beside 1M drained", Some(BIG))]
    {
        if series == "beside 1M idle" {
            fill(b, System::Queue, BIG, 1_000_000, SMALL_PAYLOAD).await?;
            record_pop_ack(b, c, PANEL, series, SMALL, 10.0).await?;
            continue;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = busy(&b.url, queue, &stop);
        tokio::time::sleep(Duration::from_millis(500)).await;
        record_pop_ack(b, c, PANEL, series, SMALL, 10.0).await?;
        stop.store(true, Ordering::SeqCst);
        for t in tasks {
            t.await??;
        }
    }
    b.reset().await?;
    Ok(())
}

/// Soak: half of W4's throughput for `minutes`, retention deleting as fast
/// as jobs finish.
async fn soak(b: &Bench, c: &mut Curves, minutes: f64) -> Result<()> {
    let one = Arc::new(vec![QUEUE.to_string()]);
    b.reset().await?;
    fill(b, System::Queue, QUEUE, 50_000, SMALL_PAYLOAD).await?;
    let w4 = drain(&b.url, System::Queue, one, 4, 100, false).await?.rate;
    let target = w4 / 2.0;
    // Retention short enough that the history reaches its steady size in
    // the first quarter of the run.
    let retention_s = ((minutes * 60.0) / 4.0).clamp(30.0, 300.0) as i64;
    b.reset().await?;
    b.admin.batch_execute(&format!("ALTER SYSTEM SET queue.retention = '{retention_s} seconds'")).await?;
    // The setting the README asks of a queue that runs thousands of jobs a
    // second: with the default minute, dead entries pile up at the head of
    // the claim index between two looks of autovacuum.
    b.admin.batch_execute("ALTER SYSTEM SET autovacuum_naptime = '10s'").await?;
    // Apart: several statements in one query are one transaction, which
    // ALTER SYSTEM refuses.
    b.admin.batch_execute("SELECT pg_reload_conf()").await?;
    println!(
        "  soak: W4 drains {w4:.0} jobs/s here; pushing {target:.0} jobs/s for {minutes} min, retention {retention_s} s, autovacuum_naptime 10 s"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let claims: Arc<Mutex<Vec<f64>>> = Arc::default();
    let mut tasks = Vec::new();
    {
        let (url, stop) = (b.url.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let client = connect(&url).await?;
            let stmt = client
                .prepare(&format!("SELECT count(*) FROM queue_push_batch('{QUEUE}', $1::text[]::jsonb[])"))
                .await?;
            let batch: Vec<String> = (0..100).map(super::payload).collect();
            let mut tick = tokio::time::interval(Duration::from_secs_f64(100.0 / target));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                client.execute(&stmt, &[&batch]).await?;
            }
            Result::Ok(())
        }));
    }
    for w in 0..4 {
        let (url, stop, acked, claims) = (b.url.clone(), stop.clone(), acked.clone(), claims.clone());
        tasks.push(tokio::spawn(async move {
            let client = connect(&url).await?;
            // The claim that is timed never waits; when it finds nothing the
            // worker waits in a second, untimed one, so that idle time at
            // half load is not counted as claim latency.
            let pop = client.prepare(&format!("SELECT id, attempt FROM queue_pop('{QUEUE}', 'soak{w}', 100)")).await?;
            let wait = client
                .prepare(&format!(
                    "SELECT id, attempt FROM queue_pop('{QUEUE}', 'soak{w}', 100, wait => '200 milliseconds')"
                ))
                .await?;
            let ack = client.prepare("SELECT queue_ack_batch($1::bigint[], $2::int[])").await?;
            while !stop.load(Ordering::SeqCst) {
                let t = Instant::now();
                let mut rows = client.query(&pop, &[]).await?;
                if rows.is_empty() {
                    rows = client.query(&wait, &[]).await?;
                    if rows.is_empty() {
                        continue;
                    }
                } else {
                    claims.lock().map_err(|_| "poisoned")?.push(ms(t.elapsed()));
                }
                let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
                let attempts: Vec<i32> = rows.iter().map(|r| r.get(1)).collect();
                client.execute(&ack, &[&ids, &attempts]).await?;
                acked.fetch_add(ids.len(), Ordering::SeqCst);
            }
            Result::Ok(())
        }));
    }
    let samples = 12usize.max((minutes * 2.0) as usize).min(120);
    let period = Duration::from_secs_f64(minutes * 60.0 / samples as f64);
    let started = Instant::now();
    let mut last = 0usize;
    let stats = "SELECT coalesce(sum(n_dead_tup) FILTER (WHERE relname = 'jobs'), 0)::float8,
                        coalesce(sum(n_dead_tup) FILTER (WHERE relname = 'finished_jobs'), 0)::float8,
                        coalesce(sum(autovacuum_count), 0)::float8,
                        (SELECT count(*) FROM queue.jobs)::float8,
                        coalesce(sum(n_live_tup) FILTER (WHERE relname = 'finished_jobs'), 0)::float8
                   FROM pg_stat_user_tables WHERE schemaname = 'queue' AND relname IN ('jobs', 'finished_jobs')";
    for s in 1..=samples {
        tokio::time::sleep_until((started + period * s as u32).into()).await;
        let now = acked.load(Ordering::SeqCst);
        let rate = (now - last) as f64 / period.as_secs_f64();
        last = now;
        let mut period_claims = std::mem::take(&mut *claims.lock().map_err(|_| "poisoned")?);
        let x = (started.elapsed().as_secs_f64() / 60.0 * 10.0).round() / 10.0;
        let row = b.admin.query_one(stats, &[]).await?;
        c.add("soak jobs/s by minute", "jobs/s", "acked", x, rate);
        c.add("soak claim p99 by minute", "ms", "queue", x, percentile(&mut period_claims, 0.99));
        c.add("soak table MB by minute", "MB", "queue.jobs", x, table_mb(b, "queue.jobs").await?);
        c.add("soak table MB by minute", "MB", "queue.finished_jobs", x, table_mb(b, "queue.finished_jobs").await?);
        c.add("soak dead tuples by minute", "rows", "queue.jobs", x, row.get::<_, f64>(0));
        c.add("soak dead tuples by minute", "rows", "queue.finished_jobs", x, row.get::<_, f64>(1));
        c.add("soak autovacuum runs by minute", "runs", "both tables", x, row.get::<_, f64>(2));
        c.add("soak live jobs by minute", "rows", "queue.jobs", x, row.get::<_, f64>(3));
        c.add("soak history rows by minute", "rows", "queue.finished_jobs (est.)", x, row.get::<_, f64>(4));
    }
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await??;
    }
    b.admin.batch_execute("ALTER SYSTEM RESET queue.retention").await?;
    b.admin.batch_execute("ALTER SYSTEM RESET autovacuum_naptime").await?;
    b.admin.batch_execute("SELECT pg_reload_conf()").await?;
    b.reset().await?;
    Ok(())
}

/// Run the parts asked for, then print and write the curves.
pub async fn run(b: &Bench, opts: &Opts) -> Result<()> {
    let want = |p: &str| opts.parts.iter().any(|o| o == "all" || o.eq_ignore_ascii_case(p));
    let mut c = Curves::default();
    if want("workers") {
        workers(b, &mut c).await?;
    }
    if want("queues") {
        queues(b, &mut c).await?;
    }
    if want("payload") {
        payloads(b, &mut c).await?;
    }
    if want("isolation") {
        isolation(b, &mut c).await?;
    }
    if want("depth") {
        depth(b, &mut c, opts.waiting, opts.history).await?;
    }
    if want("soak") {
        soak(b, &mut c, opts.soak_minutes).await?;
    }
    print_tables(&c);
    write_json(&c, &opts.json)?;
    let svg = opts.json.strip_suffix(".json").unwrap_or(&opts.json).to_string() + ".svg";
    std::fs::write(&svg, plot(&c))?;
    println!("JSON: {}\nplot: {svg}", opts.json);
    Ok(())
}

/// Panels in the order they were first measured.
fn panels(c: &Curves) -> Vec<(&str, &'static str)> {
    let mut out: Vec<(&str, &'static str)> = Vec::new();
    for p in &c.points {
        if !out.iter().any(|(name, _)| *name == p.panel) {
            out.push((&p.panel, p.unit));
        }
    }
    out
}

fn series<'a>(c: &'a Curves, panel: &str) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for p in c.points.iter().filter(|p| p.panel == panel) {
        if !out.contains(&p.series.as_str()) {
            out.push(&p.series);
        }
    }
    out
}

fn print_tables(c: &Curves) {
    for (panel, unit) in panels(c) {
        let names = series(c, panel);
        let mut xs: Vec<f64> = c.points.iter().filter(|p| p.panel == panel).map(|p| p.x).collect();
        xs.sort_by(|a, b| a.total_cmp(b));
        xs.dedup();
        println!("\n**{panel}** ({unit})\n");
        let ratio = names.len() >= 2 && names[0] == "queue";
        let mut head = format!("| x | {} |", names.join(" | "));
        if ratio {
            head += &format!(" queue / {} |", names[1]);
        }
        println!("{head}");
        println!("|{}", " --- |".repeat(names.len() + 1 + usize::from(ratio)));
        for x in xs {
            let value =
                |s: &str| c.points.iter().find(|p| p.panel == panel && p.series == s && p.x == x).map(|p| p.value);
            let mut row = format!("| {x} |");
            for s in &names {
                match value(s) {
                    Some(v) => write!(row, " {v:.3} |").unwrap_or(()),
                    None => row += " |",
                }
            }
            if ratio {
                match (value(names[0]), value(names[1])) {
                    (Some(a), Some(r)) => write!(row, " {:.2} |", a / r).unwrap_or(()),
                    _ => row += " |",
                }
            }
            println!("{row}");
        }
    }
}

fn write_json(c: &Curves, path: &str) -> Result<()> {
    let rows: Vec<serde_json::Value> = c
        .points
        .iter()
        .map(|p| serde_json::json!({"panel": p.panel, "unit": p.unit, "series": p.series, "x": p.x, "value": p.value}))
        .collect();
    if let Some(dir) = std::path::Path::new(path).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(&serde_json::json!({ "points": rows }))?)?;
    Ok(())
}

/// An SVG of every panel with more than one x: lines per series, the x
/// axis logarithmic when the xs span more than a factor of 20.
fn plot(c: &Curves) -> String {
    const W: f64 = 360.0;
    const H: f64 = 220.0;
    const COLS: usize = 3;
    const COLORS: [&str; 5] = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e"];
    let shown: Vec<(&str, &str)> = panels(c)
        .into_iter()
        .filter(|(panel, _)| {
            let mut xs: Vec<f64> = c.points.iter().filter(|p| p.panel == *panel).map(|p| p.x).collect();
            xs.dedup();
            xs.len() > 1
        })
        .collect();
    let rows = shown.len().div_ceil(COLS).max(1);
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{}' font-family='sans-serif' font-size='10'>\
         <rect width='100%' height='100%' fill='white'/>",
        W * COLS as f64,
        H * rows as f64
    );
    for (k, (panel, unit)) in shown.iter().enumerate() {
        let (ox, oy) = ((k % COLS) as f64 * W, (k / COLS) as f64 * H);
        let (left, right, top, bottom) = (ox + 50.0, ox + W - 10.0, oy + 30.0, oy + H - 30.0);
        let pts: Vec<&Point> = c.points.iter().filter(|p| p.panel == *panel && p.value.is_finite()).collect();
        let (xmin, xmax) = pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.x), b.max(p.x)));
        let ymax = pts.iter().fold(0.0f64, |a, p| a.max(p.value)) * 1.1;
        let log = xmin > 0.0 && xmax / xmin > 20.0;
        let fx = |x: f64| {
            let (a, b, v) = if log { (xmin.ln(), xmax.ln(), x.ln()) } else { (xmin, xmax, x) };
            if b > a {
                left + (v - a) / (b - a) * (right - left)
            } else {
                left
            }
        };
        let fy = |y: f64| if ymax > 0.0 { bottom - y / ymax * (bottom - top) } else { bottom };
        let _ = write!(
            svg,
            "<text x='{}' y='{}' font-weight='bold'>{}</text>\
             <line x1='{left}' y1='{bottom}' x2='{right}' y2='{bottom}' stroke='black'/>\
             <line x1='{left}' y1='{top}' x2='{left}' y2='{bottom}' stroke='black'/>\
             <text x='{}' y='{}'>{unit}</text><text x='{}' y='{}' text-anchor='end'>{:.4}</text>",
            ox + 10.0,
            oy + 14.0,
            xml(panel),
            ox + 4.0,
            top - 4.0,
            left - 2.0,
            top + 4.0,
            ymax
        );
        let mut xs: Vec<f64> = pts.iter().map(|p| p.x).collect();
        xs.sort_by(|a, b| a.total_cmp(b));
        xs.dedup();
        for x in &xs {
            let _ = write!(svg, "<text x='{}' y='{}' text-anchor='middle'>{x}</text>", fx(*x), bottom + 12.0);
        }
        for (i, s) in series(c, panel).iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let mut line: Vec<(f64, f64)> =
                pts.iter().filter(|p| p.series == *s).map(|p| (fx(p.x), fy(p.value))).collect();
            line.sort_by(|a, b| a.0.total_cmp(&b.0));
            let path: Vec<String> = line.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let _ = write!(
                svg,
                "<polyline fill='none' stroke='{color}' stroke-width='1.5' points='{}'/>\
                 <text x='{}' y='{}' fill='{color}'>{}</text>",
                path.join(" "),
                right - 110.0,
                top + 10.0 + 11.0 * i as f64,
                xml(s)
            );
            for (x, y) in line {
                let _ = write!(svg, "<circle cx='{x:.1}' cy='{y:.1}' r='2' fill='{color}'/>");
            }
        }
    }
    svg + "</svg>\n"
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
