//! The Rust client's driver of `bench/clients/run.sh` (public API only).
//!
//! ```sh
//! cargo build --release -p queue-client --example bench
//! target/release/examples/bench latency DSN QUEUE JOBS INTERVAL_MS
//! target/release/examples/bench drain   DSN QUEUE JOBS CONCURRENCY
//! ```
//!
//! `latency`: an idle `Worker` (concurrency 1, LISTEN mode); a producer
//! connection of this process pushes JOBS jobs one at a time, INTERVAL_MS
//! apart, with `push`. Latency = the handler's start minus the push's return,
//! both `Instant`s of this process. Prints one JSON line with every sample (ms),
//! in push order.
//!
//! `drain`: JOBS jobs prefilled with one `push_batch`, then a `Worker` with a
//! no-op handler at CONCURRENCY; the time from `start()` until the
//! `job_finished` hook (after the ack) has fired JOBS times, checked against
//! `queue_stats(queue)`. Prints one JSON line with jobs/s.

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

async fn latency(dsn: &str, queue: &str, jobs: usize, interval_ms: u64) -> Res<()> {
    let started: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let count =
        Arc::new(Count { done: AtomicUsize::new(0), target: jobs, all: Notify::new(), listening: Notify::new() });
    let seen = started.clone();
    let worker = Worker::builder(dsn.parse()?)
        .handler(queue, move |job: Job| {
            let now = Instant::now();
            seen.lock().unwrap().insert(job.id(), now);
            async { Ok::<Value, JobError>(Value::Null) }
        })
        .concurrency(1)
        .hooks(CountHook(count.clone()))
        .build()?;
    let listening = count.listening.notified();
    let running = worker.start().await?;
    tokio::time::timeout(Duration::from_secs(10), listening).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let client = producer(dsn).await?;
    let opts = PushOpts::new();
    let mut pushed = Vec::with_capacity(jobs);
    let mut tick = tokio::time::interval(Duration::from_millis(interval_ms));
    for n in 0..jobs {
        tick.tick().await;
        let id = push(&client, queue, &payload(n), &opts).await?;
        pushed.push((id, Instant::now()));
    }
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
    println!("{}", json!({ "client": "rust", "kind": "latency", "jobs": jobs, "ms": lat }));
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

#[tokio::main]
async fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: bench latency DSN QUEUE JOBS INTERVAL_MS | bench drain DSN QUEUE JOBS CONCURRENCY";
    if args.len() != 6 {
        return Err(usage.into());
    }
    let (dsn, queue, jobs, n) = (&args[2], &args[3], args[4].parse()?, args[5].parse()?);
    match args[1].as_str() {
        "latency" => latency(dsn, queue, jobs, n as u64).await,
        "drain" => drain(dsn, queue, jobs, n).await,
        _ => Err(usage.into()),
    }
}
