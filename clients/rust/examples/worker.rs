//! A runnable worker: pushes a few demo jobs in one transaction, serves them,
//! and stops gracefully on Ctrl-C / SIGTERM.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres PUSH_DEMO_JOBS=3 \
//!     cargo run -p queue-client --example worker
//! ```
//!
//! Environment: `DATABASE_URL` (a libpq connection string or URL), `QUEUE`
//! (default `emails`), `PUSH_DEMO_JOBS` (push this many jobs first; default 0),
//! `GRACE_MS` (grace period of the stop; default 10000), `WORKER_NAME`,
//! `CONCURRENCY` (default 4). A job whose payload has `"ms": n` sleeps n ms.
//! Log lines go to stdout (`RUST_LOG`-style filtering is up to your own
//! `tracing` subscriber; this example prints through hooks).

use std::time::Duration;

use queue_client::hooks::{Hooks, JobFailed, JobFinished, JobReleased, JobStarted, Listening, WorkerError};
use queue_client::{push, Job, JobError, Priority, PushOpts, Worker};
use serde_json::{json, Value};

/// The handler: the only code an application writes.
async fn handle(job: Job) -> Result<Value, JobError> {
    if job.payload()["fail"] == json!(true) && job.attempt() == 1 {
        return Err(JobError::retry_in(Duration::from_millis(200), "failing once on purpose"));
    }
    let ms = job.payload()["ms"].as_u64().unwrap_or(50);
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
        _ = job.cancelled() => return Err(JobError::new("taken away")),
    }
    Ok(json!({ "slept_ms": ms, "attempt": job.attempt() }))
}

/// Prints what happens (a real application would feed metrics here).
struct Print;

impl Hooks for Print {
    fn job_started(&self, e: &JobStarted<'_>) {
        println!("started job {} attempt {}", e.job.id(), e.job.attempt());
    }
    fn job_finished(&self, e: &JobFinished<'_>) {
        println!("completed job {} acked={} in {} ms", e.job.id(), e.acked, e.duration.as_millis());
    }
    fn job_failed(&self, e: &JobFailed<'_>) {
        let status = e.status.as_ref().map(|s| s.to_string()).unwrap_or_else(|| "unchanged".into());
        println!("failed job {} -> {}: {}", e.job.id(), status, e.error);
    }
    fn job_released(&self, e: &JobReleased<'_>) {
        println!("released job {} via={:?} released={}", e.job.id(), e.via, e.released);
    }
    fn listening(&self, e: &Listening) {
        println!("listening reconnect={}", e.reconnect);
    }
    fn error(&self, e: &WorkerError<'_>) {
        eprintln!("worker error (retrying): {}: {}", e.context, e.error);
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "host=127.0.0.1 user=postgres dbname=postgres".into());
    let queue = std::env::var("QUEUE").unwrap_or_else(|_| "emails".into());
    let env_num = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let demo_jobs = env_num("PUSH_DEMO_JOBS", 0);
    let grace = Duration::from_millis(env_num("GRACE_MS", 10_000));

    if demo_jobs > 0 {
        let (mut client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        // In one transaction: the jobs exist only once it commits.
        let tx = client.transaction().await?;
        for n in 0..demo_jobs {
            let priority = if n == 0 { Priority::High } else { Priority::Normal };
            let id = push(&tx, &queue, &json!({ "n": n, "fail": n == 1 }), &PushOpts::new().priority(priority)).await?;
            println!("pushed job {id}");
        }
        tx.commit().await?;
    }

    let mut builder = Worker::builder(url.parse()?)
        .handler(queue.clone(), handle)
        .concurrency(env_num("CONCURRENCY", 4) as usize)
        .grace(grace)
        .handle_signals(true)
        .hooks(Print);
    if let Ok(name) = std::env::var("WORKER_NAME") {
        builder = builder.name(name);
    }
    let worker = builder.build()?.start().await?;
    println!("ready: worker {} serves queue {queue}; Ctrl-C stops it", worker.name());
    worker.wait().await; // until SIGTERM / SIGINT, then finish or give back
    println!("stopped");
    Ok(())
}
