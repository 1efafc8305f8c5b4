//! Helpers shared by the integration tests (run them with clients/rust/run-tests.sh).
#![allow(dead_code)]

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use queue_client::hooks::{Hooks, JobFailed, JobFinished, JobReleased, JobStarted, Listening, ReleaseVia, WorkerError};
use queue_client::{JobStatus, WorkerBuilder};
use serde_json::Value;
use tokio_postgres::{Client, Config, NoTls};

/// The throwaway cluster's connection string (set by run-tests.sh).
pub fn dsn() -> String {
    std::env::var("QUEUE_TEST_DATABASE_URL").expect(
        "QUEUE_TEST_DATABASE_URL is not set: run the tests with clients/rust/run-tests.sh (it starts a cluster)",
    )
}

/// The worker's connection settings for the cluster.
pub fn config() -> Config {
    dsn().parse().expect("a valid QUEUE_TEST_DATABASE_URL")
}

/// A connection of the test itself (superuser).
pub async fn admin() -> Client {
    let mut cfg = config();
    cfg.application_name("rust-client-tests");
    let (client, conn) = cfg.connect(NoTls).await.expect("connect to the test cluster");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A queue name no other test uses.
pub fn unique_queue(prefix: &str) -> String {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() % 1_000_000_000_000;
    format!("{prefix}.{t:x}{}", SEQ.fetch_add(1, Ordering::SeqCst))
}

/// A worker builder for the test cluster with quick reconnects.
pub fn builder() -> WorkerBuilder {
    queue_client::Worker::builder(config()).backoff(Duration::from_millis(50), Duration::from_secs(1))
}

/// Everything about a job (`queue_job`), or None.
pub async fn job_of(client: &Client, id: i64) -> Option<Value> {
    client.query_one("SELECT queue_job($1)", &[&id]).await.expect("queue_job").get(0)
}

/// Polls `f` until it gives Some; panics after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until a job has one of these statuses; returns its `queue_job`.
pub async fn wait_for_status(client: &Client, id: i64, statuses: &[&str], timeout: Duration) -> Value {
    let mut last = Value::Null;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(j) = job_of(client, id).await {
            if statuses.contains(&j["status"].as_str().unwrap_or("")) {
                return j;
            }
            last = j;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for job {id} to become {statuses:?}; it is {last}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the extension already has queue_release(bigint, integer).
pub async fn has_queue_release(client: &Client) -> bool {
    client.query_one("SELECT to_regprocedure('queue_release(bigint,integer)') IS NOT NULL", &[]).await.unwrap().get(0)
}

/// Whether queue_pop has the `wait` parameter.
pub async fn has_server_wait(client: &Client) -> bool {
    client
        .query_one("SELECT to_regprocedure('queue_pop(text,text,integer,interval)') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0)
}

pub const NO_RELEASE: &str =
    "queue_release(bigint, integer) is not installed yet (another change adds it): the give-back assertion is skipped";

/// One recorded hook call.
#[derive(Debug, Clone)]
pub enum Event {
    Started { id: i64, at: Instant, attempt: i32 },
    Finished { id: i64, duration: Duration, acked: bool, result: Value },
    Failed { id: i64, duration: Duration, status: Option<JobStatus>, permanent: bool, message: String },
    Released { id: i64, via: ReleaseVia, released: bool },
    Listening { reconnect: bool },
    Error { context: String },
}

/// Hooks that record everything, for assertions.
#[derive(Clone, Default)]
pub struct Recorder(pub Arc<Mutex<Vec<Event>>>);

impl Recorder {
    pub fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }

    pub fn count(&self, pred: impl Fn(&Event) -> bool) -> usize {
        self.0.lock().unwrap().iter().filter(|e| pred(e)).count()
    }

    pub fn find<T>(&self, f: impl Fn(&Event) -> Option<T>) -> Option<T> {
        self.0.lock().unwrap().iter().find_map(f)
    }

    fn push(&self, e: Event) {
        self.0.lock().unwrap().push(e);
    }
}

impl Hooks for Recorder {
    fn job_started(&self, e: &JobStarted<'_>) {
        self.push(Event::Started { id: e.job.id(), at: Instant::now(), attempt: e.job.attempt() });
    }
    fn job_finished(&self, e: &JobFinished<'_>) {
        self.push(Event::Finished { id: e.job.id(), duration: e.duration, acked: e.acked, result: e.result.clone() });
    }
    fn job_failed(&self, e: &JobFailed<'_>) {
        self.push(Event::Failed {
            id: e.job.id(),
            duration: e.duration,
            status: e.status.clone(),
            permanent: e.error.is_permanent(),
            message: e.error.to_string(),
        });
    }
    fn job_released(&self, e: &JobReleased<'_>) {
        self.push(Event::Released { id: e.job.id(), via: e.via, released: e.released });
    }
    fn listening(&self, e: &Listening) {
        self.push(Event::Listening { reconnect: e.reconnect });
    }
    fn error(&self, e: &WorkerError<'_>) {
        self.push(Event::Error { context: format!("{}: {}", e.context, e.error) });
    }
}

/// Counts the handlers running at once and the most seen together: a test's
/// handler calls [`InFlight::hold`] for the time it works.
#[derive(Default)]
pub struct InFlight {
    now: AtomicUsize,
    most: AtomicUsize,
}

impl InFlight {
    /// Counts this handler in for `work`, then out.
    pub async fn hold(&self, work: Duration) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(work).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
    }

    /// The most handlers that ran at once.
    pub fn most(&self) -> usize {
        self.most.load(Ordering::SeqCst)
    }
}

/// Keep the expected panics of a test (those whose message contains
/// `marker`) out of the test output; any other panic is reported as usual.
pub fn quiet_panics(marker: &'static str) {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.to_string().contains(marker) {
            default_hook(info);
        }
    }));
}
