//! A Rust worker for clients/python/tests/test_cross_language.py: serves
//! `$QUEUE` on `$DATABASE_URL` next to a Python and a Node worker, speaking
//! the same protocol as clients/node/test/fixtures/cross-language-worker.js.
//!
//! Each handler sleeps `payload.ms` milliseconds and returns
//! `{ lang, pid, start, end }` (CLOCK_MONOTONIC milliseconds, fractional) as the job's
//! result. Prints one JSON line per event on stdout: `ready` (once started and
//! listening), `start` (per job), `error` (a worker error being retried),
//! `stop`; `start-failed` and exit status 2 when it cannot start. SIGTERM
//! stops it gracefully (grace 5 s). Environment: `DATABASE_URL`, `QUEUE`,
//! `CONCURRENCY` (default 4), `POOLER=1` for pooler mode.
//!
//! ```sh
//! cargo build -p queue-client --example cross_language_worker
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres QUEUE=q \
//!     target/debug/examples/cross_language_worker
//! ```

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use queue_client::hooks::{Hooks, JobStarted, Listening, WorkerError};
use queue_client::{Job, JobError, Worker};
use serde_json::{json, Value};
use tokio::sync::oneshot;

/// One JSON line on stdout, whole (lines from concurrent handlers never interleave).
fn out(v: Value) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{v}");
    let _ = stdout.flush();
}

/// Milliseconds of the system's monotonic clock (CLOCK_MONOTONIC), fractional:
/// the clock the Python (`time.monotonic()`) and Node (`process.hrtime`)
/// workers read too. One clock for every process of the machine, where their
/// wall clocks (each process's own reading of the system time, and Node's
/// `performance.timeOrigin`) were seen up to 3 ms apart on a VM, more than
/// the test's handover takes.
fn now_ms() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 * 1000.0 + ts.tv_nsec as f64 / 1e6
}

async fn handle(job: Job) -> Result<Value, JobError> {
    let start = now_ms();
    let ms = job.payload()["ms"].as_f64().unwrap_or(0.0).max(0.0);
    tokio::time::sleep(Duration::from_secs_f64(ms / 1000.0)).await;
    Ok(json!({ "lang": "rust", "pid": std::process::id(), "start": start, "end": now_ms() }))
}

/// Prints `start` per job and `error`s, and tells `main` when LISTEN is in place.
struct Events {
    listening: Mutex<Option<oneshot::Sender<()>>>,
}

impl Hooks for Events {
    fn job_started(&self, e: &JobStarted<'_>) {
        out(json!({ "event": "start", "id": e.job.id(), "attempt": e.job.attempt() }));
    }
    fn listening(&self, _e: &Listening) {
        if let Some(tx) = self.listening.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = tx.send(());
        }
    }
    fn error(&self, e: &WorkerError<'_>) {
        out(json!({ "event": "error", "message": format!("{}: {}", e.context, e.error) }));
    }
}

#[tokio::main]
async fn main() {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "host=127.0.0.1 user=postgres dbname=postgres".into());
    let queue = std::env::var("QUEUE").unwrap_or_else(|_| "cross".into());
    let concurrency = std::env::var("CONCURRENCY").ok().and_then(|v| v.parse().ok()).unwrap_or(4usize);
    let pooler = std::env::var("POOLER").is_ok_and(|v| v == "1");

    let fail = |message: String| -> ! {
        out(json!({ "event": "start-failed", "message": message }));
        std::process::exit(2);
    };
    let config = url.parse().unwrap_or_else(|e| fail(format!("bad DATABASE_URL: {e}")));
    let (listening_tx, listening_rx) = oneshot::channel();
    let worker = Worker::builder(config)
        .handler(queue, handle)
        .concurrency(concurrency)
        .pooler(pooler)
        .grace(Duration::from_secs(5))
        .handle_signals(true)
        .hooks(Events { listening: Mutex::new(Some(listening_tx)) })
        .build()
        .unwrap_or_else(|e| fail(e.to_string()));
    let worker = worker.start().await.unwrap_or_else(|e| fail(e.to_string()));
    // Like the Node worker, ready once the LISTEN connection is up (no LISTEN in pooler mode).
    if !pooler {
        let _ = listening_rx.await;
    }
    out(json!({ "event": "ready", "name": worker.name() }));
    worker.wait().await; // until SIGTERM / SIGINT, then finish or give back
    out(json!({ "event": "stop" }));
}
