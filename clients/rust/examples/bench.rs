//! The Rust client's driver of `bench/clients/run.sh` (public API only).
//!
//! ```sh
//! cargo build --release -p queue-client --example bench
//! target/release/examples/bench latency DSN QUEUE JOBS INTERVAL_MS
//! target/release/examples/bench pickup  DSN QUEUE JOBS INTERVAL_US CONCURRENCY WORK_MS
//! target/release/examples/bench drain   DSN QUEUE JOBS CONCURRENCY
//! target/release/examples/bench drain-shared DSN QUEUE JOBS CONCURRENCY
//! ```
//!
//! `latency`: an idle `Worker` (concurrency 1, LISTEN mode); a producer
//! connection of this process pushes JOBS jobs one at a time, INTERVAL_MS
//! apart, with `push`. Latency = the handler's start minus the push's return,
//! both `Instant`s of this process. Prints one JSON line with every sample (ms),
//! in push order.
//!
//! `pickup`: the same at load: a `Worker` at CONCURRENCY whose handler takes
//! WORK_MS, pushes INTERVAL_US apart (600 jobs/s is 1667). The JSON line also
//! carries the rate the producer reached. With `BENCH_POOLER=1` the worker
//! runs in pooler mode (server-side waits, no LISTEN), for a DSN that points
//! at PgBouncer in transaction mode; `BENCH_PRODUCER_DSN`, if set, is where
//! the producer pushes (straight to Postgres: tokio-postgres prepares its
//! statements, which a transaction pooler does not keep).
//!
//! `drain`: JOBS jobs prefilled with one `push_batch`, then a `Worker` with a
//! no-op handler at CONCURRENCY; the time from `start()` until the
//! `job_finished` hook (after the ack) has fired JOBS times, checked against
//! `queue_stats(queue)`. Prints one JSON line with jobs/s.
//!
//! `drain-shared`: one of several processes draining the same queue, which
//! `bench/clients/run.sh` filled with JOBS jobs: a `Worker` at CONCURRENCY
//! runs until `queue_stats(queue)` counts JOBS completed. Prints the wall
//! clock (ms since the epoch, comparable between processes) at `start()` and
//! at its last finished job, and how many it finished; run.sh takes the rate
//! from the earliest start to the latest finish.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use queue_client::hooks::{Hooks, JobFinished, Listening};
use queue_client::{push, push_batch, Job, JobError, PushOpts, Worker};
use serde_json::{json, Value};
use tokio::sync::Notify;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Counts acked jobs; wakes the driver at the target and at LISTEN.
struct Count {
    done: AtomicUsize,
    target: usize,
    all: Notify,
    listening: Notify,
}

/// The hook side of a shared [`Count`].
struct CountHook(Arc<Count>);

impl Hooks for CountHook {
    fn job_finished(&self, e: &JobFinished<'_>) {
        if e.acked && self.0.done.fetch_add(1, Ordering::SeqCst) + 1 == self.0.target {
            self.0.all.notify_one();
        }
    }
    fn listening(&self, _e: &Listening) {
        self.0.listening.notify_one();
    }
}

fn payload(n: usize) -> Value {
    json!({ "n": n, "s": "x".repeat(64) })
}

async fn producer(dsn: &str) -> Res<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The shape of a `latency` or `pickup` run.
struct Pickup {
    jobs: usize,
    interval: Duration,
    concurrency: usize,
    work: Duration,
}

async fn latency(dsn: &str, queue: &str, run: Pickup) -> Res<()> {
    let Pickup { jobs, interval, concurrency, work } = run;
    let pooler = std::env::var("BENCH_POOLER").is_ok_and(|v| v == "1");
    let started: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let count =
        Arc::new(Count { done: AtomicUsize::new(0), target: jobs, all: Notify::new(), listening: Notify::new() });
    let seen = started.clone();
    let worker = Worker::builder(dsn.parse()?)
        .handler(queue, move |job: Job| {
            let now = Instant::now();
            seen.lock().unwrap().insert(job.id(), now);
            async move {
                if !work.is_zero() {
                    tokio::time::sleep(work).await;
                }
                Ok::<Value, JobError>(Value::Null)
            }
        })
        .concurrency(concurrency)
        .pooler(pooler)
        .hooks(CountHook(count.clone()))
        .build()?;
    let listening = count.listening.notified();
    let running = worker.start().await?;
    if pooler {
        // No LISTEN to wait for: let the first claim reach its wait.
        tokio::time::sleep(Duration::from_millis(1000)).await;
    } else {
        tokio::time::timeout(Duration::from_secs(10), listening).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let client = producer(&std::env::var("BENCH_PRODUCER_DSN").unwrap_or_else(|_| dsn.to_string())).await?;
    let opts = PushOpts::new();
    let mut pushed = Vec::with_capacity(jobs);
    let mut tick = tokio::time::interval(interval);
    let t0 = Instant::now();
    for n in 0..jobs {
        tick.tick().await;
        let id = push(&client, queue, &payload(n), &opts).await?;
        pushed.push((id, Instant::now()));
    }
    let push_rate = jobs as f64 / t0.elapsed().as_secs_f64();
    let all = count.all.notified();
    if count.done.load(Ordering::SeqCst) < jobs {
        tokio::time::timeout(Duration::from_secs(30), all).await?;
    }
    running.shutdown().await;
    let started = started.lock().unwrap();
    let lat: Vec<f64> = pushed
        .into_iter()
        .map(|(id, p)| {
            let s = started[&id];
            if s >= p {
                s.duration_since(p).as_secs_f64() * 1e3
            } else {
                -(p.duration_since(s).as_secs_f64() * 1e3)
            }
        })
        .collect();
    if concurrency == 1 && work.is_zero() {
        println!("{}", json!({ "client": "rust", "kind": "latency", "jobs": jobs, "ms": lat }));
    } else {
        println!(
            "{}",
            json!({ "client": "rust", "kind": "pickup", "jobs": jobs, "concurrency": concurrency,
                    "work_ms": work.as_secs_f64() * 1e3, "push_rate": push_rate, "pooler": pooler, "ms": lat })
        );
    }
    Ok(())
}

async fn drain(dsn: &str, queue: &str, jobs: usize, concurrency: usize) -> Res<()> {
    let client = producer(dsn).await?;
    let payloads: Vec<Value> = (0..jobs).map(payload).collect();
    let ids = push_batch(&client, queue, &payloads, &PushOpts::new()).await?;
    assert_eq!(ids.len(), jobs);
    drop(payloads);

    let count =
        Arc::new(Count { done: AtomicUsize::new(0), target: jobs, all: Notify::new(), listening: Notify::new() });
    let worker = Worker::builder(dsn.parse()?)
        .handler(queue, |_job: Job| async { Ok::<Value, JobError>(Value::Null) })
        .concurrency(concurrency)
        .hooks(CountHook(count.clone()))
        .build()?;
    let all = count.all.notified();
    let t0 = Instant::now();
    let running = worker.start().await?;
    tokio::time::timeout(Duration::from_secs(600), all).await?;
    let secs = t0.elapsed().as_secs_f64();
    running.shutdown().await;
    let stats: Value = client.query_one("SELECT queue_stats($1)", &[&queue]).await?.get(0);
    let completed = stats["completed"].as_u64().unwrap_or(0) as usize;
    if completed != jobs {
        return Err(format!("queue_stats says {completed} completed, expected {jobs}").into());
    }
    println!(
        "{}",
        json!({ "client": "rust", "kind": "drain", "concurrency": concurrency, "jobs": jobs,
                "seconds": secs, "rate": jobs as f64 / secs })
    );
    Ok(())
}

fn epoch_ms() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

async fn drain_shared(dsn: &str, queue: &str, jobs: usize, concurrency: usize) -> Res<()> {
    let client = producer(dsn).await?;
    let last = Arc::new(Mutex::new(0.0f64));
    let count =
        Arc::new(Count { done: AtomicUsize::new(0), target: usize::MAX, all: Notify::new(), listening: Notify::new() });
    /// Counts like [`CountHook`] and keeps the time of the latest finish.
    struct Last(Arc<Count>, Arc<Mutex<f64>>);
    impl Hooks for Last {
        fn job_finished(&self, e: &JobFinished<'_>) {
            if e.acked {
                self.0.done.fetch_add(1, Ordering::SeqCst);
                *self.1.lock().unwrap() = epoch_ms();
            }
        }
    }
    let worker = Worker::builder(dsn.parse()?)
        .handler(queue, |_job: Job| async { Ok::<Value, JobError>(Value::Null) })
        .concurrency(concurrency)
        .hooks(Last(count.clone(), last.clone()))
        .build()?;
    let start = epoch_ms();
    let running = worker.start().await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let stats: Value = client.query_one("SELECT queue_stats($1)", &[&queue]).await?.get(0);
        if stats["completed"].as_u64().unwrap_or(0) as usize >= jobs {
            break;
        }
        if Instant::now() > deadline {
            return Err("drain-shared: not drained within 600 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    running.shutdown().await;
    let end = *last.lock().unwrap();
    let mine = count.done.load(Ordering::SeqCst);
    println!(
        "{}",
        json!({ "client": "rust", "kind": "drain_part", "concurrency": concurrency, "jobs": mine,
                "start_ms": start, "end_ms": end })
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: bench latency DSN QUEUE JOBS INTERVAL_MS | bench drain DSN QUEUE JOBS CONCURRENCY \
                 | bench pickup DSN QUEUE JOBS INTERVAL_US CONCURRENCY WORK_MS \
                 | bench drain-shared DSN QUEUE JOBS CONCURRENCY";
    if args.len() < 6 {
        return Err(usage.into());
    }
    let (dsn, queue, jobs, n) = (&args[2], &args[3], args[4].parse()?, args[5].parse()?);
    match (args[1].as_str(), args.len()) {
        ("latency", 6) => {
            let run = Pickup { jobs, interval: Duration::from_millis(n), concurrency: 1, work: Duration::ZERO };
            latency(dsn, queue, run).await
        }
        ("pickup", 8) => {
            let run = Pickup {
                jobs,
                interval: Duration::from_micros(n),
                concurrency: args[6].parse()?,
                work: Duration::from_millis(args[7].parse()?),
            };
            latency(dsn, queue, run).await
        }
        ("drain", 6) => drain(dsn, queue, jobs, n as usize).await,
        ("drain-shared", 6) => drain_shared(dsn, queue, jobs, n as usize).await,
        _ => Err(usage.into()),
    }
}
