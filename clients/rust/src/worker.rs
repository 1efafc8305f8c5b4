//! The worker: [`Worker`], its [`WorkerBuilder`], the [`Handler`] trait,
//! [`RunningWorker`] and [`ShutdownHandle`].

mod acker;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::{join_all, BoxFuture};
use futures_util::FutureExt;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::{AbortHandle, JoinHandle};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::types::{FromSql, ToSql, Type};
use tokio_postgres::{Config, NoTls, Row, Socket};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::conn::{connector, random_hex, Backoff, CancelFn, ConnectFn, Db};
use crate::error::is_transient;
use crate::hooks::{Hooks, JobFailed, JobFinished, JobReleased, JobStarted, Listening, ReleaseVia, WorkerError};
use crate::interval::PgInterval;
use crate::job::{JobInner, TOUCH_SQL};
use crate::{Error, Job, JobError, JobStatus, VERSION};

/// A job handler: takes the [`Job`], returns its result (stored by the ack,
/// `queue_ack_batch` or `queue_ack`; `Value::Null` stores none) or a [`JobError`].
///
/// Implemented for every `Fn(Job) -> impl Future<Output = Result<Value, JobError>>`,
/// so an `async fn` is a handler:
///
/// ```
/// use queue_client::{Job, JobError};
/// use serde_json::{json, Value};
///
/// async fn send_email(job: Job) -> Result<Value, JobError> {
///     let to = job.payload()["to"].as_str().ok_or_else(|| JobError::permanent("no recipient"))?;
///     Ok(json!({ "sent_to": to }))
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    /// Runs one attempt of a job.
    fn handle(&self, job: Job) -> BoxFuture<'static, Result<Value, JobError>>;
}

impl<F, Fut> Handler for F
where
    F: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, JobError>> + Send + 'static,
{
    fn handle(&self, job: Job) -> BoxFuture<'static, Result<Value, JobError>> {
        Box::pin(self(job))
    }
}

const CLAIM_SQL: &str =
    "SELECT id, queue, payload, priority, serial_group, attempt, max_attempts, lease_until, created_at, \
     greatest(lease_until - clock_timestamp(), interval '0') AS lease FROM queue_pop($1, $2, $3)";
const CLAIM_WAIT_SQL: &str =
    "SELECT id, queue, payload, priority, serial_group, attempt, max_attempts, lease_until, created_at, \
     greatest(lease_until - clock_timestamp(), interval '0') AS lease FROM queue_pop($1, $2, $3, $4)";
const ACK_SQL: &str = "SELECT queue_ack($1, $2, $3)";
const FAIL_SQL: &str = "SELECT queue_fail($1, $2, $3, $4, $5)";
const RELEASE_SQL: &str = "SELECT queue_release($1, $2)";
const HEARTBEAT_SQL: &str = "SELECT queue_heartbeat($1, $2)::text";
const FEATURES_SQL: &str = "SELECT to_regprocedure('queue_release(bigint,integer)') IS NOT NULL, \
     to_regprocedure('queue_pop(text,text,integer,interval)') IS NOT NULL, \
     to_regprocedure('queue_ack_batch(bigint[],integer[],jsonb[])') IS NOT NULL";
const MAX_ERROR_CHARS: usize = 16_000;

/// Whether a queue name is one the extension accepts: 1–57 characters of `[A-Za-z0-9_.:-]`.
pub fn is_valid_queue_name(name: &str) -> bool {
    (1..=57).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
}

/// Options of one queue's handler, for [`WorkerBuilder::handler_with`]; what
/// they do not set comes from the worker.
#[derive(Debug, Clone, Default)]
pub struct HandlerOpts {
    max_runtime: Option<Duration>,
}

impl HandlerOpts {
    /// No options of its own: the worker's apply.
    pub fn new() -> Self {
        HandlerOpts::default()
    }

    /// The longest this handler may run, from its start (instead of the
    /// worker's [`max_runtime`](WorkerBuilder::max_runtime), which says what
    /// happens then). Must be more than zero.
    pub fn max_runtime(mut self, limit: Duration) -> Self {
        self.max_runtime = Some(limit);
        self
    }
}

/// Builds a [`Worker`]: connection, handlers, concurrency and the rest.
/// Made by [`Worker::builder`].
pub struct WorkerBuilder {
    config: Config,
    connect: ConnectFn,
    cancel: CancelFn,
    handlers: Vec<(String, Arc<dyn Handler>, HandlerOpts)>,
    concurrency: usize,
    max_runtime: Option<Duration>,
    max_batch: Option<usize>,
    name: Option<String>,
    poll_interval: Option<Duration>,
    heartbeat_interval: Duration,
    grace: Duration,
    handle_signals: bool,
    pooler: bool,
    pooler_wait: Duration,
    backoff: Backoff,
    hooks: Vec<Arc<dyn Hooks>>,
}

impl WorkerBuilder {
    /// Serves `queue` with `handler` (one handler per queue; at least one).
    pub fn handler(self, queue: impl Into<String>, handler: impl Handler) -> Self {
        self.handler_with(queue, handler, HandlerOpts::new())
    }

    /// Serves `queue` with `handler` and options of its own, which win over
    /// the worker's (e.g. a [`max_runtime`](HandlerOpts::max_runtime) for
    /// this queue alone).
    ///
    /// ```
    /// # async fn resize(_job: queue_client::Job) -> Result<serde_json::Value, queue_client::JobError> { Ok(serde_json::Value::Null) }
    /// # async fn email(_job: queue_client::Job) -> Result<serde_json::Value, queue_client::JobError> { Ok(serde_json::Value::Null) }
    /// use queue_client::{HandlerOpts, Worker};
    /// use std::time::Duration;
    ///
    /// # fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = Worker::builder("postgres://app@localhost/app".parse()?)
    ///     .max_runtime(Duration::from_secs(30)) // every handler of this worker...
    ///     .handler("emails", email)
    ///     .handler_with("thumbnails", resize, HandlerOpts::new().max_runtime(Duration::from_secs(600))) // ...but this one
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn handler_with(mut self, queue: impl Into<String>, handler: impl Handler, opts: HandlerOpts) -> Self {
        self.handlers.push((queue.into(), Arc::new(handler), opts));
        self
    }

    /// How many handlers run at once, at most (1–10000). Default 10.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// The longest a handler may run, from its start, for every queue whose
    /// [`HandlerOpts`] do not set their own. Default: no limit (the lease is
    /// extended for as long as the handler runs).
    ///
    /// Once a handler has run this long, the worker stops extending its
    /// job's lease, fires the job's cancellation ([`Job::cancelled`]), drops
    /// the handler's future (which frees its concurrency slot), and fails the
    /// attempt with `queue_fail(id, 'max_runtime exceeded: the handler ran
    /// longer than <limit>', attempt)`: an ordinary failure, retried with the
    /// job's backoff while attempts are left, then a dead letter. The hooks
    /// are told it as a failure. A hung handler (an await that never ends, a
    /// call without a timeout) so costs one attempt, not the job or the slot
    /// for ever.
    ///
    /// A handler that blocks its thread (a loop that never awaits,
    /// `std::thread::sleep`, a blocking call outside `spawn_blocking`) cannot
    /// be stopped: its lease is no longer extended, so the job comes back
    /// when the lease runs out, its slot stays taken until it returns, and
    /// what it then returns is discarded.
    ///
    /// Must be more than zero ([`build`](Self::build) says so otherwise).
    pub fn max_runtime(mut self, limit: Duration) -> Self {
        self.max_runtime = Some(limit);
        self
    }

    /// The most jobs one `queue_pop` claims. Default: the free capacity.
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = Some(n);
        self
    }

    /// The worker's name in `queue_pop`, `queue_heartbeat` and
    /// `application_name`. Default `<host>:<pid>:<random>`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// How often every queue is claimed from anyway, in case a wake-up was
    /// missed. Default 5 s with LISTEN, 1 s in pooler mode without the
    /// server-side wait.
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = Some(every);
        self
    }

    /// How often the worker calls `queue_heartbeat`. Default 30 s (a worker is
    /// stale after 2 minutes).
    pub fn heartbeat_interval(mut self, every: Duration) -> Self {
        self.heartbeat_interval = every;
        self
    }

    /// How long running handlers may take to finish after a stop request
    /// before their jobs are given back. Default 10 s.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Stop gracefully on SIGTERM or SIGINT (Ctrl-C); a second signal ends
    /// the grace at once. Default false.
    pub fn handle_signals(mut self, on: bool) -> Self {
        self.handle_signals = on;
        self
    }

    /// Behind PgBouncer in transaction mode: no LISTEN connection, no prepared
    /// statements, and claims wait in the server
    /// (`queue_pop(..., wait => 5 seconds)`) where the extension has that
    /// parameter, else poll every `poll_interval`. Default false.
    pub fn pooler(mut self, on: bool) -> Self {
        self.pooler = on;
        self
    }

    /// How long one waiting claim waits in the server in pooler mode. Default 5 s.
    pub fn pooler_wait(mut self, wait: Duration) -> Self {
        self.pooler_wait = wait;
        self
    }

    /// Reconnect and retry backoff: `initial` doubling up to `max`, with
    /// jitter. Default 100 ms to 30 s.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff = Backoff { initial, max };
        self
    }

    /// Adds hooks (several may be added; each is told every event).
    pub fn hooks(mut self, hooks: impl Hooks) -> Self {
        self.hooks.push(Arc::new(hooks));
        self
    }

    /// Connects with TLS (e.g. `postgres_native_tls::MakeTlsConnector` or
    /// `tokio_postgres_rustls::MakeRustlsConnect`). Default `NoTls`.
    pub fn tls<T>(mut self, tls: T) -> Self
    where
        T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
        T::Stream: Send + 'static,
        T::TlsConnect: Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        let (connect, cancel) = connector(tls);
        self.connect = connect;
        self.cancel = cancel;
        self
    }

    /// Checks the settings and makes the worker; nothing connects yet.
    ///
    /// Fails with [`Error::InvalidArgument`] for no handler, a bad or repeated
    /// queue name, a concurrency or batch out of range, a bad name, a zero
    /// `max_runtime`.
    pub fn build(self) -> Result<Worker, Error> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if self.handlers.is_empty() {
            return bad("a worker needs at least one handler: .handler(\"queue\", handler)".into());
        }
        if self.max_runtime.is_some_and(|d| d.is_zero()) {
            return bad("max_runtime must be more than zero".into());
        }
        let mut handlers = HashMap::new();
        let mut queues = Vec::new();
        for (q, handler, opts) in self.handlers {
            if !is_valid_queue_name(&q) {
                return bad(format!("bad queue name {q:?}: 1-57 characters of [A-Za-z0-9_.:-]"));
            }
            if opts.max_runtime.is_some_and(|d| d.is_zero()) {
                return bad(format!("the max_runtime of queue {q:?} must be more than zero"));
            }
            let route = Route { handler, max_runtime: opts.max_runtime.or(self.max_runtime) };
            if handlers.insert(q.clone(), route).is_some() {
                return bad(format!("two handlers for queue {q:?}"));
            }
            queues.push(q);
        }
        if !(1..=10_000).contains(&self.concurrency) {
            return bad(format!("concurrency must be from 1 to 10000, got {}", self.concurrency));
        }
        let max_batch = self.max_batch.unwrap_or(self.concurrency);
        if max_batch == 0 {
            return bad("max_batch must be at least 1".into());
        }
        let name = self.name.unwrap_or_else(|| format!("{}:{}:{}", hostname(), std::process::id(), random_hex(6)));
        if name.is_empty() || name.len() > 200 {
            return bad("the worker name must be 1 to 200 bytes".into());
        }
        if self.backoff.initial.is_zero() || self.backoff.max < self.backoff.initial {
            return bad("backoff: initial must be > 0 and max >= initial".into());
        }
        let poll_interval =
            self.poll_interval.unwrap_or(if self.pooler { Duration::from_secs(1) } else { Duration::from_secs(5) });
        if poll_interval.is_zero() || self.heartbeat_interval.is_zero() {
            return bad("poll_interval and heartbeat_interval must be > 0".into());
        }

        let mut config = self.config;
        let app = config.get_application_name().map(str::to_owned).unwrap_or_else(|| name.clone());
        config.application_name(truncate(&app, 63));
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        let mut listen_config = config.clone();
        listen_config.application_name(truncate(&format!("{app} listen"), 63));

        let (deadline, _) = watch::channel(None);
        let (stopped, _) = watch::channel(false);
        let (acks, ack_queue) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            name: Arc::from(name.as_str()),
            queues,
            handlers,
            concurrency: self.concurrency,
            max_batch: max_batch.min(self.concurrency),
            poll_interval,
            heartbeat_interval: self.heartbeat_interval,
            grace: self.grace,
            handle_signals: self.handle_signals,
            pooler: self.pooler,
            pooler_wait: self.pooler_wait,
            backoff: self.backoff,
            hooks: self.hooks,
            listen_config,
            connect: self.connect.clone(),
            cancel: self.cancel,
            ops: Arc::new(Db::new(config.clone(), self.connect.clone(), self.pooler)),
            claimer: Db::new(config, self.connect, self.pooler),
            permits: Arc::new(Semaphore::new(self.concurrency)),
            running: Mutex::new(HashMap::new()),
            next_key: AtomicU64::new(1),
            dirty: Mutex::new(Dirty { set: HashSet::new(), rotation: 0 }),
            wake: Notify::new(),
            backoff_cut: Notify::new(),
            stop: CancellationToken::new(),
            deadline,
            stopped,
            hard: AtomicBool::new(false),
            has_release: AtomicBool::new(true),
            has_wait: AtomicBool::new(false),
            has_ack_batch: AtomicBool::new(true),
            acks: Mutex::new(Some(acks)),
            ack_queue: Mutex::new(Some(ack_queue)),
            listen_connects: AtomicUsize::new(0),
            started_at: SystemTime::now(),
        });
        Ok(Worker { shared })
    }
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

struct Dirty {
    set: HashSet<usize>,
    rotation: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The handler runs.
    Running,
    /// The handler is done; its ack or fail is being written.
    Settling,
    /// Given back at the end of the grace: its outcome no longer counts.
    Released,
    /// Stopped at its max_runtime; its failure is being written. Unlike
    /// `Settling`, the lease is no longer extended.
    Overdue,
}

/// A queue's handler and the options it runs with.
struct Route {
    handler: Arc<dyn Handler>,
    max_runtime: Option<Duration>,
}

struct Entry {
    job: Job,
    phase: Arc<Mutex<Phase>>,
    abort: AbortHandle,
}

struct Shared {
    name: Arc<str>,
    queues: Vec<String>,
    handlers: HashMap<String, Route>,
    concurrency: usize,
    max_batch: usize,
    poll_interval: Duration,
    heartbeat_interval: Duration,
    grace: Duration,
    handle_signals: bool,
    pooler: bool,
    pooler_wait: Duration,
    backoff: Backoff,
    hooks: Vec<Arc<dyn Hooks>>,
    listen_config: Config,
    connect: ConnectFn,
    cancel: CancelFn,
    /// Acks, fails, touches, progress, heartbeats (pipelined on one connection).
    ops: Arc<Db>,
    /// Claims (a waiting claim must not hold up the acks).
    claimer: Db,
    permits: Arc<Semaphore>,
    running: Mutex<HashMap<u64, Entry>>,
    next_key: AtomicU64,
    dirty: Mutex<Dirty>,
    wake: Notify,
    backoff_cut: Notify,
    stop: CancellationToken,
    /// None while running; the end of the grace once a stop was asked for.
    deadline: watch::Sender<Option<Instant>>,
    stopped: watch::Sender<bool>,
    /// The grace is over: retried calls give up.
    hard: AtomicBool,
    has_release: AtomicBool,
    has_wait: AtomicBool,
    /// The extension has `queue_ack_batch` (else every ack is its own `queue_ack`).
    has_ack_batch: AtomicBool,
    /// Where finished jobs queue their acks for the acker; `None` once the
    /// worker has drained (a late ack then goes on its own).
    acks: Mutex<Option<mpsc::UnboundedSender<acker::AckRequest>>>,
    /// The acker's end of the channel, until `run` starts the acker.
    ack_queue: Mutex<Option<mpsc::UnboundedReceiver<acker::AckRequest>>>,
    listen_connects: AtomicUsize,
    started_at: SystemTime,
}

/// Runs handlers for jobs of one or more queues.
///
/// * Claims with `queue_pop(queue, name, n)`, n up to the free capacity, and
///   never runs more than `concurrency` handlers at once (a job counts until
///   its ack is written).
/// * Acks in batches: finished jobs queue their acks to one acker task, which
///   sends everything queued as one `queue_ack_batch(ids, attempts, results)`
///   (one commit for many jobs) with at most one such call in flight; each
///   job's finished event comes after its ack committed. While a queue may
///   have more work, the same statement also claims as many of its jobs as
///   it acks (`queue_ack_batch`, then `queue_pop`, one commit): in steady
///   state a job costs one commit, its ack riding with the next claim. On an extension
///   without `queue_ack_batch`, one `queue_ack(id, result, attempt)` per job.
///   A failure becomes `queue_fail(id, error, attempt, retry_in, permanent)`.
///   A stale claim changes nothing and is logged, not raised.
/// * Extends each running job's lease with `queue_touch` at half the lease;
///   registers and heartbeats with `queue_heartbeat`.
/// * Wakes on `LISTEN "queue_<name>"` (one connection), polls as a fallback,
///   reconnects with exponential backoff; in pooler mode waits in the server.
/// * On shutdown claims nothing more, lets handlers finish within the grace,
///   then gives their jobs back with `queue_release` (no attempt used).
///
/// ```no_run
/// use queue_client::{Worker, Job, JobError};
/// use serde_json::{json, Value};
///
/// async fn send_email(job: Job) -> Result<Value, JobError> {
///     Ok(json!({ "sent": job.payload()["to"] }))
/// }
///
/// # async fn f() -> Result<(), queue_client::Error> {
/// let config = "postgres://app@localhost/app".parse().expect("a connection string");
/// Worker::builder(config)
///     .handler("emails", send_email)
///     .concurrency(8)
///     .handle_signals(true)
///     .build()?
///     .run()
///     .await
/// # }
/// ```
pub struct Worker {
    shared: Arc<Shared>,
}

impl Worker {
    /// A builder for a worker connecting with `config` (parse one from a
    /// connection string: `"postgres://user@host/db".parse()?`), without TLS
    /// unless [`WorkerBuilder::tls`] says otherwise.
    pub fn builder(config: Config) -> WorkerBuilder {
        let (connect, cancel) = connector(NoTls);
        WorkerBuilder {
            config,
            connect,
            cancel,
            handlers: Vec::new(),
            concurrency: 10,
            max_runtime: None,
            max_batch: None,
            name: None,
            poll_interval: None,
            heartbeat_interval: Duration::from_secs(30),
            grace: Duration::from_secs(10),
            handle_signals: false,
            pooler: false,
            pooler_wait: Duration::from_secs(5),
            backoff: Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(30) },
            hooks: Vec::new(),
        }
    }

    /// The worker's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// A handle that stops the worker from anywhere.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle { shared: self.shared.clone() }
    }

    /// Connects, registers the worker (`queue_heartbeat`) and starts claiming
    /// in background tasks (call it inside a tokio runtime).
    ///
    /// Fails when the first heartbeat fails: wrong connection settings, no
    /// `queue` extension, no `queue_worker` role. After that every failure is
    /// retried (and told to [`Hooks::error`]), never returned.
    pub async fn start(self) -> Result<RunningWorker, Error> {
        let shared = self.shared;
        shared.heartbeat().await?;
        shared.detect_features().await;
        tracing::info!(worker = %shared.name, queues = ?shared.queues, concurrency = shared.concurrency,
            pooler = shared.pooler, "worker started");
        let join = tokio::spawn(shared.clone().run());
        Ok(RunningWorker { shared, join })
    }

    /// [`start`](Self::start)s and runs until stopped (a [`ShutdownHandle`],
    /// or a signal with [`WorkerBuilder::handle_signals`]); returns once every
    /// running job is finished or given back.
    pub async fn run(self) -> Result<(), Error> {
        self.start().await?.wait().await;
        Ok(())
    }
}

/// A started worker. Dropping it does not stop the worker; use
/// [`shutdown`](Self::shutdown) or a [`ShutdownHandle`].
pub struct RunningWorker {
    shared: Arc<Shared>,
    join: JoinHandle<()>,
}

impl RunningWorker {
    /// The worker's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// How many jobs are running now (including those being acked).
    pub fn running_jobs(&self) -> usize {
        self.shared.concurrency - self.shared.permits.available_permits().min(self.shared.concurrency)
    }

    /// How many times the LISTEN connection has been set up (0 in pooler mode).
    pub fn listen_connects(&self) -> usize {
        self.shared.listen_connects.load(Ordering::SeqCst)
    }

    /// Whether claims wait in the server (pooler mode on an extension whose
    /// `queue_pop` has the `wait` parameter).
    pub fn uses_server_wait(&self) -> bool {
        self.shared.pooler && self.shared.has_wait.load(Ordering::SeqCst)
    }

    /// A handle that stops the worker from anywhere.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle { shared: self.shared.clone() }
    }

    /// Stops with the worker's grace period and waits until it has stopped.
    pub async fn shutdown(self) {
        self.shared.request_stop(self.shared.grace);
        self.wait().await;
    }

    /// Stops with this grace period and waits until it has stopped.
    pub async fn shutdown_with_grace(self, grace: Duration) {
        self.shared.request_stop(grace);
        self.wait().await;
    }

    /// Waits until the worker has stopped (by a handle or a signal).
    pub async fn wait(self) {
        if let Err(e) = self.join.await {
            tracing::error!(error = %e, "the worker's task ended abnormally");
        }
    }
}

/// Stops a worker: claims nothing more, lets running handlers finish within
/// the grace period, then gives their jobs back at once (`queue_release`,
/// no attempt used). Clone it freely.
#[derive(Clone)]
pub struct ShutdownHandle {
    shared: Arc<Shared>,
}

impl ShutdownHandle {
    /// Asks for a graceful stop with the worker's grace period; returns at once.
    pub fn shutdown(&self) {
        self.shared.request_stop(self.shared.grace);
    }

    /// Asks for a stop with this grace period (a shorter one than already
    /// asked for takes effect; `Duration::ZERO` gives back at once).
    pub fn shutdown_with_grace(&self, grace: Duration) {
        self.shared.request_stop(grace);
    }

    /// Whether a stop was asked for.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.stop.is_cancelled()
    }

    /// Resolves when the worker has stopped.
    pub async fn stopped(&self) {
        let mut rx = self.shared.stopped.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }
}

type CallResult = Result<Vec<Row>, CallFailure>;

enum CallFailure {
    /// The server refused the call (a non-transient error).
    Rejected(Error),
    /// Connection trouble until the grace ended.
    GaveUp(Error),
}

impl Shared {
    fn request_stop(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        self.deadline.send_modify(|d| {
            *d = Some(match *d {
                Some(old) if old <= deadline => old,
                _ => deadline,
            })
        });
        if !self.stop.is_cancelled() {
            tracing::info!(worker = %self.name, grace = ?grace, "worker stopping");
        }
        self.stop.cancel();
        self.wake.notify_one();
    }

    fn emit(&self, f: impl Fn(&dyn Hooks)) {
        for h in &self.hooks {
            if std::panic::catch_unwind(AssertUnwindSafe(|| f(h.as_ref()))).is_err() {
                tracing::error!("a hook panicked (ignored)");
            }
        }
    }

    fn report(&self, context: &str, error: &Error) {
        tracing::warn!(worker = %self.name, error = %error, "{context}");
        self.emit(|h| h.error(&WorkerError { context, error }));
    }

    /// How many jobs hold a concurrency permit (running, or being acked).
    pub(super) fn in_use(&self) -> usize {
        self.concurrency - self.permits.available_permits().min(self.concurrency)
    }

    async fn heartbeat(&self) -> Result<(), Error> {
        let running = self.in_use();
        let info = json!({
            "host": hostname(),
            "pid": std::process::id(),
            "library": "queue-client (rust)",
            "version": VERSION,
            "runtime": "rust tokio",
            "queues": self.queues,
            "concurrency": self.concurrency,
            "pooler": self.pooler,
            "running": running,
            "started_at": humantime(self.started_at),
        });
        self.ops.query(HEARTBEAT_SQL, &[Type::TEXT, Type::JSONB], &[&&*self.name, &info]).await?;
        Ok(())
    }

    /// Which optional functions the installed extension has.
    async fn detect_features(&self) {
        match self.ops.query(FEATURES_SQL, &[], &[]).await {
            Ok(rows) => {
                if let Some(r) = rows.first() {
                    self.has_release.store(r.get::<_, bool>(0), Ordering::SeqCst);
                    let wait = r.get::<_, bool>(1);
                    if wait != self.has_wait.swap(wait, Ordering::SeqCst) && self.pooler {
                        tracing::info!(worker = %self.name, server_wait = wait, "claims wait in the server: {wait}");
                    }
                    // Checked again at every heartbeat: an ALTER EXTENSION UPDATE turns batching on.
                    if let Ok(batch) = r.try_get::<_, bool>(2) {
                        if batch != self.has_ack_batch.swap(batch, Ordering::SeqCst) {
                            if batch {
                                tracing::info!(worker = %self.name, "queue_ack_batch is installed: acks are batched");
                            } else {
                                tracing::info!(worker = %self.name,
                                    "queue_ack_batch is not installed (an older extension): acking one job per call");
                            }
                        }
                    }
                }
            }
            Err(e) => self.report("feature detection failed", &e.into()),
        }
    }

    async fn run(self: Arc<Self>) {
        let mut tasks = Vec::new();
        let ack_queue = self.ack_queue.lock().unwrap().take();
        let acker = match ack_queue {
            Some(rx) => Some(tokio::spawn(acker::run(self.clone(), rx))),
            None => {
                // Not reachable (run is called once): without an acker, acks must not be queued.
                self.acks.lock().unwrap().take();
                None
            }
        };
        {
            let s = self.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(s.heartbeat_interval);
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = s.stop.cancelled() => return,
                    }
                    if let Err(e) = s.heartbeat().await {
                        s.report("queue_heartbeat failed", &e);
                    }
                    s.detect_features().await;
                }
            }));
        }
        {
            let s = self.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(s.poll_interval);
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = tick.tick() => s.mark_all_dirty(),
                        _ = s.stop.cancelled() => return,
                    }
                }
            }));
        }
        if !self.pooler {
            tasks.push(tokio::spawn(self.clone().listen()));
        }
        if self.handle_signals {
            tasks.push(tokio::spawn(self.clone().signals()));
        }
        self.mark_all_dirty();
        self.claim_loop().await;
        self.drain().await;
        for t in &tasks {
            t.abort();
        }
        // Acks still queued or in flight go out before the connections close:
        // closing the channel lets the acker deliver what is queued, then end.
        // After a clean drain it is idle already (every job's permit came back
        // after its ack's outcome); after the grace, its calls give up at once.
        self.acks.lock().unwrap().take();
        if let Some(mut acker) = acker {
            if tokio::time::timeout(Duration::from_secs(1), &mut acker).await.is_err() {
                acker.abort();
            }
        }
        self.ops.close().await;
        self.claimer.close().await;
        tracing::info!(worker = %self.name, "worker stopped");
        self.stopped.send_replace(true);
    }

    // ------------------------------------------------------------ wake-ups

    fn mark_dirty(&self, idx: usize) {
        self.dirty.lock().unwrap().set.insert(idx);
        self.wake.notify_one();
    }

    fn mark_all_dirty(&self) {
        {
            let mut d = self.dirty.lock().unwrap();
            for i in 0..self.queues.len() {
                d.set.insert(i);
            }
        }
        self.wake.notify_one();
    }

    /// The next queue that may have work, round robin.
    fn next_dirty(&self) -> Option<usize> {
        let mut d = self.dirty.lock().unwrap();
        let n = self.queues.len();
        for k in 0..n {
            let i = (d.rotation + k) % n;
            if d.set.remove(&i) {
                d.rotation = (i + 1) % n;
                return Some(i);
            }
        }
        None
    }

    fn next_in_rotation(&self) -> usize {
        let mut d = self.dirty.lock().unwrap();
        let i = d.rotation % self.queues.len();
        d.rotation = (i + 1) % self.queues.len();
        i
    }

    /// One LISTEN connection on `queue_<name>` for every queue; reconnects
    /// with backoff after any drop, and pings now and then to notice a silent one.
    async fn listen(self: Arc<Self>) {
        let channels: HashMap<String, usize> =
            self.queues.iter().enumerate().map(|(i, q)| (format!("queue_{q}"), i)).collect();
        let mut failures = 0u32;
        let mut ever = false;
        let ping_every = self.poll_interval.max(Duration::from_secs(10));
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            let attempt = async {
                let c = (self.connect)(self.listen_config.clone()).await?;
                // LISTEN takes no parameters: the channel is a quoted identifier
                // made of a validated queue name ([A-Za-z0-9_.:-]).
                let sql: String =
                    channels.keys().map(|ch| format!("LISTEN \"{}\";", ch.replace('"', "\"\""))).collect();
                c.client.batch_execute(&sql).await?;
                Ok::<_, tokio_postgres::Error>(c)
            };
            let connected = tokio::select! {
                r = attempt => r,
                _ = self.stop.cancelled() => return,
            };
            match connected {
                Ok(mut c) => {
                    failures = 0;
                    self.listen_connects.fetch_add(1, Ordering::SeqCst);
                    tracing::info!(worker = %self.name, reconnect = ever, "listening");
                    let reconnect = ever;
                    ever = true;
                    // Wake-ups may have been missed while not listening: look at every queue now,
                    // and cut a claim backoff short (the server is back).
                    self.mark_all_dirty();
                    self.backoff_cut.notify_waiters();
                    self.emit(|h| h.listening(&Listening { reconnect }));
                    let mut ping = tokio::time::interval(ping_every);
                    ping.tick().await;
                    let lost: Error = loop {
                        tokio::select! {
                            n = c.notifications.recv() => match n {
                                Some(n) => {
                                    if let Some(&i) = channels.get(n.channel()) {
                                        tracing::trace!(channel = n.channel(), "notified");
                                        self.mark_dirty(i);
                                    }
                                }
                                None => break Error::InvalidArgument("the LISTEN connection ended".into()),
                            },
                            _ = ping.tick() => {
                                match tokio::time::timeout(Duration::from_secs(5), c.client.simple_query("SELECT 1")).await {
                                    Ok(Ok(_)) => {}
                                    Ok(Err(e)) => break e.into(),
                                    Err(_) => break Error::InvalidArgument("the LISTEN connection did not answer a ping".into()),
                                }
                            }
                            _ = self.stop.cancelled() => return,
                        }
                    };
                    self.report("the LISTEN connection was lost; reconnecting", &lost);
                }
                Err(e) => self.report("the LISTEN connection failed; reconnecting", &e.into()),
            }
            failures += 1;
            tokio::select! {
                _ = tokio::time::sleep(self.backoff.delay(failures)) => {}
                _ = self.stop.cancelled() => return,
            }
        }
    }

    #[cfg(unix)]
    async fn signals(self: Arc<Self>) {
        use tokio::signal::unix::{signal, SignalKind};
        let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(t), Ok(i)) => (t, i),
            _ => {
                tracing::error!("could not install the SIGTERM / SIGINT handlers");
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping gracefully"),
            _ = int.recv() => tracing::info!("SIGINT: stopping gracefully"),
            _ = self.stop.cancelled() => {}
        }
        self.request_stop(self.grace);
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("second signal: giving back the running jobs now");
        self.request_stop(Duration::ZERO);
    }

    #[cfg(not(unix))]
    async fn signals(self: Arc<Self>) {
        if tokio::signal::ctrl_c().await.is_ok() {
            self.request_stop(self.grace);
        }
        if tokio::signal::ctrl_c().await.is_ok() {
            self.request_stop(Duration::ZERO);
        }
    }

    // ------------------------------------------------------------ claiming

    async fn claim_loop(self: &Arc<Self>) {
        let mut failures = 0u32;
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            let free = self.permits.available_permits();
            let mut wait = None;
            let idx = match if free > 0 { self.next_dirty() } else { None } {
                Some(i) => i,
                None if free > 0 && self.pooler && self.has_wait.load(Ordering::SeqCst) => {
                    // Nothing known to be due: wait in the server on the next queue.
                    // With several queues, wait no longer than the poll interval on each.
                    let w = if self.queues.len() == 1 {
                        self.pooler_wait
                    } else {
                        self.pooler_wait.min(self.poll_interval)
                    };
                    wait = Some(w);
                    self.next_in_rotation()
                }
                None => {
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = self.stop.cancelled() => return,
                    }
                    continue;
                }
            };
            let want = free.min(self.max_batch);
            match self.claim(idx, want, wait).await {
                Err(e) => {
                    self.mark_dirty(idx);
                    if self.stop.is_cancelled() {
                        return; // a waiting claim cancelled by the stop: nothing was claimed
                    }
                    if e.code().map(|c| c.code()) == Some("42883") && wait.is_some() {
                        self.has_wait.store(false, Ordering::SeqCst);
                        continue;
                    }
                    failures += 1;
                    self.report(&format!("queue_pop('{}') failed; retrying", self.queues[idx]), &e.into());
                    tokio::select! {
                        _ = tokio::time::sleep(self.backoff.delay(failures)) => {}
                        _ = self.backoff_cut.notified() => {}
                        _ = self.stop.cancelled() => return,
                    }
                }
                Ok(rows) => {
                    failures = 0;
                    // After a non-empty claim there may be more; idle only after an empty
                    // claim (it marks the queue's sleeper slot, so the next push wakes us).
                    if !rows.is_empty() {
                        self.mark_dirty(idx);
                    }
                    let jobs: Vec<Job> = rows.iter().filter_map(|r| self.job_of(r)).collect();
                    if self.stop.is_cancelled() {
                        // Claimed while the stop began: give them back untouched.
                        join_all(jobs.iter().map(|j| self.give_back(j))).await;
                        return;
                    }
                    for job in jobs {
                        self.start_job(job);
                    }
                }
            }
        }
    }

    /// One claim; a waiting one is cancelled in the server when a stop is asked for.
    async fn claim(&self, idx: usize, n: usize, wait: Option<Duration>) -> Result<Vec<Row>, tokio_postgres::Error> {
        let queue = self.queues[idx].as_str();
        let n = n as i32;
        match wait {
            None => {
                self.claimer.query(CLAIM_SQL, &[Type::TEXT, Type::TEXT, Type::INT4], &[&queue, &&*self.name, &n]).await
            }
            Some(w) => {
                let w = PgInterval(w);
                let name: &str = &self.name;
                let types = [Type::TEXT, Type::TEXT, Type::INT4, Type::INTERVAL];
                let params: [&(dyn ToSql + Sync); 4] = [&queue, &name, &n, &w];
                let fut = self.claimer.query(CLAIM_WAIT_SQL, &types, &params);
                tokio::pin!(fut);
                tokio::select! {
                    r = &mut fut => return r,
                    _ = self.stop.cancelled() => {}
                }
                // Never drop a claim in flight (it may claim in the server): cancel the
                // statement and take whatever it returns.
                if let Some(token) = self.claimer.cancel_token().await {
                    if let Err(e) = (self.cancel)(token).await {
                        tracing::debug!(error = %e, "cancelling the waiting claim failed");
                    }
                }
                fut.await
            }
        }
    }

    /// The job of a claimed row. A row whose id and attempt can be read is
    /// always a job: one whose payload (or another column) cannot be decoded
    /// (a payload nested deeper than serde_json's recursion limit, a number
    /// beyond an `f64`, both of which jsonb stores) is one to fail for good at
    /// once. Dropped, it would keep its claim until the lease ran out, come
    /// back and be dropped again, each time taking a slot of the capacity.
    fn job_of(&self, r: &Row) -> Option<Job> {
        let (id, attempt) = match (r.try_get::<_, i64>("id"), r.try_get::<_, i32>("attempt")) {
            (Ok(id), Ok(attempt)) => (id, attempt),
            (Err(e), _) | (_, Err(e)) => {
                // Cannot happen with a matching extension; the lease brings the job back.
                self.report("a claimed row could not be read (no id or attempt)", &e.into());
                return None;
            }
        };
        let mut undecodable = Vec::new();
        let payload = column::<Option<Value>>(r, "payload", &mut undecodable).flatten().unwrap_or(Value::Null);
        let lease = column::<PgInterval>(r, "lease", &mut undecodable).map_or(Duration::ZERO, |l| l.0);
        let lease = if lease.is_zero() { Duration::from_secs(60) } else { lease };
        let now = SystemTime::now();
        Some(Job {
            inner: Arc::new(JobInner {
                id,
                queue: column(r, "queue", &mut undecodable).unwrap_or_default(),
                payload,
                priority: column(r, "priority", &mut undecodable).unwrap_or(0),
                serial_group: column(r, "serial_group", &mut undecodable).flatten(),
                attempt,
                max_attempts: column(r, "max_attempts", &mut undecodable).unwrap_or(attempt),
                created_at: column(r, "created_at", &mut undecodable).unwrap_or(now),
                lease_until: Mutex::new(column(r, "lease_until", &mut undecodable).unwrap_or(now + lease)),
                lease,
                worker: self.name.clone(),
                ops: self.ops.clone(),
                cancel: CancellationToken::new(),
                undecodable: (!undecodable.is_empty()).then(|| undecodable.join("; ")),
            }),
        })
    }

    // ------------------------------------------------------------ running

    fn start_job(self: &Arc<Self>, job: Job) {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Not reachable: the claim loop claims no more than the free
                // permits, and the acker's claims run under the permits of the
                // jobs they acked.
                tracing::error!(job.id = job.id(), "no capacity for a claimed job; giving it back");
                let s = self.clone();
                tokio::spawn(async move { s.give_back(&job).await });
                return;
            }
        };
        self.start_job_with(job, permit);
    }

    /// Runs a claimed job under a permit already held.
    fn start_job_with(self: &Arc<Self>, job: Job, permit: OwnedSemaphorePermit) {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let phase = Arc::new(Mutex::new(Phase::Running));
        let mut running = self.running.lock().unwrap();
        let task = tokio::spawn(self.clone().execute(job.clone(), phase.clone(), key, permit));
        running.insert(key, Entry { job, phase, abort: task.abort_handle() });
    }

    async fn execute(self: Arc<Self>, job: Job, phase: Arc<Mutex<Phase>>, key: u64, permit: OwnedSemaphorePermit) {
        // Held to the end, except while the acker holds it for the ack (a job
        // it claims along with the ack may keep it).
        let mut permit = Some(permit);
        let route = self.handlers.get(job.queue());
        let limit = route.and_then(|r| r.max_runtime);
        let span = tracing::info_span!("queue.process", queue = %job.queue(), job.id = job.id(),
            attempt = job.attempt(), worker = %self.name);
        async {
            let undecodable = job.inner.undecodable.clone();
            if undecodable.is_none() {
                tracing::debug!("job started");
                self.emit(|h| h.job_started(&JobStarted { job: &job }));
            }
            let t0 = Instant::now();
            // A limit too far off for an Instant is no limit.
            let deadline = limit.and_then(|l| t0.checked_add(l));
            let _touch = TouchGuard(tokio::spawn(self.clone().keep_lease(job.clone(), phase.clone(), deadline)));
            let mut overdue = false;
            let outcome = match (undecodable, route) {
                // Not run: no handler could read it, and a retry would read the same.
                (Some(why), _) => Err(JobError::permanent(why)),
                (None, None) => Err(JobError::new(format!("no handler for queue {}", job.queue()))),
                // A handler may panic before its future exists (a closure that
                // reads the payload before `async move`) as well as inside it:
                // both fail the attempt, and the worker goes on.
                (None, Some(r)) => match std::panic::catch_unwind(AssertUnwindSafe(|| r.handler.handle(job.clone()))) {
                    Ok(fut) => {
                        let fut = AssertUnwindSafe(fut).catch_unwind().map(|r| match r {
                            Ok(r) => r,
                            Err(panic) => Err(JobError::new(format!("the handler panicked: {}", panic_text(&*panic)))),
                        });
                        match until_deadline(&job, fut, deadline).await {
                            Some(r) => r,
                            None => {
                                overdue = true;
                                let limit = limit.unwrap_or_default();
                                Err(JobError::new(format!(
                                    "max_runtime exceeded: the handler ran longer than {limit:?}"
                                )))
                            }
                        }
                    }
                    Err(panic) => Err(JobError::new(format!("the handler panicked: {}", panic_text(&*panic)))),
                },
            };
            let duration = t0.elapsed();
            {
                let mut p = phase.lock().unwrap();
                if *p == Phase::Released {
                    return; // given back at a hard stop: the outcome no longer counts
                }
                *p = if overdue { Phase::Overdue } else { Phase::Settling };
            }
            match outcome {
                Ok(result) => self.ack(&job, result, duration, &mut permit).await,
                Err(error) => self.fail(&job, error, duration).await,
            }
        }
        .instrument(span)
        .await;
        self.running.lock().unwrap().remove(&key);
        drop(permit);
        self.wake.notify_one();
    }

    /// Acks a job whose handler succeeded, through the acker (batched), and
    /// reports the outcome once the ack committed. The job's permit goes
    /// with the ack and comes back with its outcome, unless a job claimed in
    /// the ack's statement took it over.
    async fn ack(&self, job: &Job, result: Value, duration: Duration, permit: &mut Option<OwnedSemaphorePermit>) {
        // Serialised here, per job: a result that cannot be must not spoil a batch.
        let stored = if result.is_null() {
            None
        } else {
            match acker::JsonbText::of(&result) {
                Ok(j) => Some(j),
                Err(e) => {
                    let err = JobError::new(format!("the result could not be serialised to JSON: {e}"));
                    self.fail(job, err, duration).await;
                    return;
                }
            }
        };
        let reply = self.submit_ack(job.id(), job.attempt(), stored, permit.take()).await;
        *permit = reply.permit;
        match reply.outcome {
            acker::AckOutcome::Done(acked) => {
                if acked {
                    tracing::debug!(duration = ?duration, "job completed");
                } else {
                    tracing::warn!(duration = ?duration,
                        "the ack changed nothing: this claim is stale (its lease ran out and the job was claimed again)");
                }
                self.emit(|h| h.job_finished(&JobFinished { job, result: &result, duration, acked }));
            }
            acker::AckOutcome::GaveUp(e) => {
                tracing::warn!(error = %e, "the ack could not be delivered before the stop; the lease brings the job back");
                self.emit(|h| h.job_finished(&JobFinished { job, result: &result, duration, acked: false }));
            }
            acker::AckOutcome::Rejected(e) => {
                // e.g. a result larger than queue.max_result_size: fail the job instead of losing it.
                let err = JobError::new(format!("queue_ack refused the result: {e}"));
                self.fail(job, err, duration).await;
            }
        }
    }

    async fn fail(&self, job: &Job, error: JobError, duration: Duration) {
        // PostgreSQL text cannot hold a NUL: written `\0`, or both calls
        // below would be refused and the job left to its lease.
        let mut text = truncate_chars(&error.to_error_text(), MAX_ERROR_CHARS).replace('\0', "\\0");
        let permanent = error.is_permanent();
        let mut retry_in = error.retry_delay().map(PgInterval);
        if let Some(Err(e)) = retry_in.map(|r| r.micros()) {
            text.push_str(&format!("\n(retry delay ignored: {e})"));
            retry_in = None;
        }
        let what = format!("queue_fail({})", job.id());
        let types = [Type::INT8, Type::TEXT, Type::INT4, Type::INTERVAL, Type::BOOL];
        let (id, attempt) = (job.id(), job.attempt());
        let mut r = self.call(&what, FAIL_SQL, &types, &[&id, &text, &attempt, &retry_in, &permanent]).await;
        if let Err(CallFailure::Rejected(e)) = &r {
            // A retry delay the server refuses, an error text too long: record the failure anyway.
            text = format!("{}\n(not recorded as given: {e})", truncate_chars(&text, 1000));
            let none: Option<PgInterval> = None;
            r = self.call(&what, FAIL_SQL, &types, &[&id, &text, &attempt, &none, &permanent]).await;
        }
        let status = match r {
            Ok(rows) => rows.first().and_then(|r| r.get::<_, Option<String>>(0)).map(|s| JobStatus::parse(&s)),
            Err(CallFailure::Rejected(e)) | Err(CallFailure::GaveUp(e)) => {
                self.report(&format!("{what} could not be recorded; the lease brings the job back"), &e);
                None
            }
        };
        match &status {
            Some(s) => tracing::info!(error = %error, status = %s, permanent, duration = ?duration, "job failed"),
            None => tracing::warn!(error = %error, "the failure changed nothing: this claim is stale"),
        }
        self.emit(|h| h.job_failed(&JobFailed { job, error: &error, duration, status: status.clone() }));
    }

    /// A call that must get through: retried with backoff on connection
    /// trouble until the grace of a stop has ended.
    async fn call(&self, what: &str, sql: &'static str, types: &[Type], params: &[&(dyn ToSql + Sync)]) -> CallResult {
        let backoff = Backoff { initial: self.backoff.initial, max: self.backoff.max.min(Duration::from_secs(5)) };
        let mut failures = 0u32;
        loop {
            match self.ops.query(sql, types, params).await {
                Ok(rows) => return Ok(rows),
                Err(e) if !is_transient(&e) => return Err(CallFailure::Rejected(e.into())),
                Err(e) => {
                    let e: Error = e.into();
                    self.report(&format!("{what} failed; retrying"), &e);
                    if self.hard.load(Ordering::SeqCst) {
                        return Err(CallFailure::GaveUp(e));
                    }
                    failures += 1;
                    tokio::time::sleep(backoff.delay(failures)).await;
                    if self.hard.load(Ordering::SeqCst) {
                        return Err(CallFailure::GaveUp(e));
                    }
                }
            }
        }
    }

    /// Extends the lease at half of it while the job runs or is being acked;
    /// past the handler's `deadline` (its max_runtime), only while its ack or
    /// fail is being written after it returned in time.
    async fn keep_lease(self: Arc<Self>, job: Job, phase: Arc<Mutex<Phase>>, deadline: Option<Instant>) {
        let lease = job.inner.lease;
        let mut delay = (lease / 2).max(Duration::from_millis(50));
        loop {
            tokio::time::sleep(delay).await;
            // Checked here, not only where the handler runs: a handler that
            // blocks its thread keeps `execute` from seeing its deadline, and
            // must lose its job to the lease rather than hold it for ever.
            if deadline.is_some_and(|d| Instant::now() >= d) && *phase.lock().unwrap() != Phase::Settling {
                tracing::debug!(
                    job.id = job.id(),
                    attempt = job.attempt(),
                    "max_runtime passed: the lease is no longer extended"
                );
                return;
            }
            let started = SystemTime::now();
            let none: Option<PgInterval> = None;
            match self
                .ops
                .query(TOUCH_SQL, &[Type::INT8, Type::INTERVAL, Type::INT4], &[&job.id(), &none, &job.attempt()])
                .await
            {
                Ok(rows) => {
                    if rows.first().and_then(|r| r.get::<_, Option<bool>>(0)) == Some(true) {
                        *job.inner.lease_until.lock().unwrap() = started + lease;
                        delay = (lease / 2).max(Duration::from_millis(50));
                    } else {
                        tracing::warn!(
                            job.id = job.id(),
                            attempt = job.attempt(),
                            "the lease was lost (the job was claimed again); its outcome will change nothing"
                        );
                        job.inner.cancel.cancel();
                        return;
                    }
                }
                Err(e) => {
                    self.report(&format!("queue_touch({}) failed; retrying", job.id()), &e.into());
                    delay = (lease / 8).clamp(Duration::from_millis(50), Duration::from_secs(1));
                }
            }
        }
    }

    // ------------------------------------------------------------ stopping

    async fn drain(&self) {
        let mut deadline_rx = self.deadline.subscribe();
        let n = self.concurrency as u32;
        let all_done = loop {
            let deadline = deadline_rx.borrow_and_update().unwrap_or_else(Instant::now);
            tokio::select! {
                p = self.permits.acquire_many(n) => { drop(p); break true; }
                _ = tokio::time::sleep_until(deadline.into()) => break false,
                _ = deadline_rx.changed() => continue,
            }
        };
        self.hard.store(true, Ordering::SeqCst);
        if all_done {
            return;
        }
        // The grace is over: give back what still runs.
        let unfinished: Vec<Job> = {
            let mut running = self.running.lock().unwrap();
            let mut out = Vec::new();
            running.retain(|_, e| {
                let mut p = e.phase.lock().unwrap();
                if *p == Phase::Running {
                    *p = Phase::Released;
                    e.job.inner.cancel.cancel();
                    e.abort.abort();
                    out.push(e.job.clone());
                    false
                } else {
                    true
                }
            });
            out
        };
        join_all(unfinished.iter().map(|j| self.give_back(j))).await;
        // Acks already on their way get a moment to land.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.permits.acquire_many(n)).await;
    }

    /// Hands a job back without using an attempt (`queue_release`); never acks or fails it afterwards.
    async fn give_back(&self, job: &Job) {
        let mut outcome = (ReleaseVia::Lease, false);
        for tries in 1..=3u32 {
            let r: Result<(ReleaseVia, bool), tokio_postgres::Error> = async {
                if self.has_release.load(Ordering::SeqCst) {
                    match self.ops.query(RELEASE_SQL, &[Type::INT8, Type::INT4], &[&job.id(), &job.attempt()]).await {
                        Ok(rows) => {
                            let ok = rows.first().and_then(|r| r.get::<_, Option<bool>>(0)).unwrap_or(false);
                            return Ok((ReleaseVia::QueueRelease, ok));
                        }
                        Err(e) if e.code().map(|c| c.code()) == Some("42883") => {
                            self.has_release.store(false, Ordering::SeqCst);
                        }
                        Err(e) => return Err(e),
                    }
                }
                if job.attempt() < job.max_attempts() {
                    // Back in line at once; this costs the attempt.
                    let text = "the worker stopped before the job finished (queue_release is not installed)";
                    let zero = PgInterval(Duration::ZERO);
                    let rows = self
                        .ops
                        .query(
                            FAIL_SQL,
                            &[Type::INT8, Type::TEXT, Type::INT4, Type::INTERVAL, Type::BOOL],
                            &[&job.id(), &text, &job.attempt(), &zero, &false],
                        )
                        .await?;
                    let status = rows.first().and_then(|r| r.get::<_, Option<String>>(0));
                    Ok((ReleaseVia::QueueFail, status.is_some()))
                } else {
                    // Its last attempt: leave it to its lease rather than fail it for good.
                    Ok((ReleaseVia::Lease, false))
                }
            }
            .await;
            match r {
                Ok(o) => {
                    outcome = o;
                    break;
                }
                Err(e) => {
                    let retry = is_transient(&e) && tries < 3;
                    self.report(&format!("giving back job {} failed", job.id()), &e.into());
                    if !retry {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200 * tries as u64)).await;
                }
            }
        }
        tracing::info!(job.id = job.id(), attempt = job.attempt(), via = ?outcome.0, released = outcome.1,
            "job given back");
        self.emit(|h| h.job_released(&JobReleased { job, via: outcome.0, released: outcome.1 }));
    }
}

/// Runs a handler's future until `deadline`, if any. Past it, fires the
/// job's cancellation, drops the future (so whatever it would still return
/// cannot ack or fail the job again) and returns `None`. An outcome that
/// comes only after the deadline (a handler that blocked its thread, so the
/// timer could not fire) is discarded in the same way.
async fn until_deadline<T>(
    job: &Job,
    mut fut: impl Future<Output = T> + Unpin,
    deadline: Option<Instant>,
) -> Option<T> {
    let Some(deadline) = deadline else {
        return Some(fut.await);
    };
    let done = tokio::select! {
        r = &mut fut => Some(r),
        _ = tokio::time::sleep_until(deadline.into()) => None,
    };
    if done.is_some() {
        if Instant::now() < deadline {
            return done;
        }
        tracing::warn!("the handler returned after its max_runtime: its outcome is discarded");
    }
    job.inner.cancel.cancel();
    // A drop that panics (a guard of the handler's) fails nothing more than the attempt already failed.
    if std::panic::catch_unwind(AssertUnwindSafe(move || drop(fut))).is_err() {
        tracing::warn!("the handler's future panicked while it was dropped at its max_runtime (ignored)");
    }
    None
}

/// Aborts the lease-keeping task when the job's task ends (or is aborted).
struct TouchGuard(JoinHandle<()>);

impl Drop for TouchGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A column of a claimed row, or `None` with why it cannot be decoded added to `why`.
fn column<'a, T: FromSql<'a>>(r: &'a Row, name: &str, why: &mut Vec<String>) -> Option<T> {
    match r.try_get::<_, T>(name) {
        Ok(v) => Some(v),
        Err(e) => {
            // The cause (serde_json's "recursion limit exceeded at line 1
            // column 129") says more than tokio-postgres's "error
            // deserializing column 2" around it.
            let cause = std::error::Error::source(&e).map_or_else(|| e.to_string(), |c| c.to_string());
            let what = if name == "payload" { "the payload".to_owned() } else { format!("column {name}") };
            why.push(format!("{what} cannot be decoded: {cause}"));
            None
        }
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".into()
    }
}

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Seconds since the epoch as an RFC 3339-ish UTC text, without a date library.
fn humantime(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}
