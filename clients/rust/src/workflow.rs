//! Workflows: reading a job's dependencies ([`dependencies`], [`Dependency`])
//! and batches with callbacks ([`batch_open`], [`batch_close`],
//! [`batch_cancel`], [`batch_status`]).
//!
//! Dependencies themselves are push options
//! ([`PushOpts::depends_on`](crate::PushOpts::depends_on),
//! [`run_anyway`](crate::PushOpts::run_anyway)), and so is joining a batch
//! ([`PushOpts::batch`](crate::PushOpts::batch)). Like [`push`](crate::push),
//! every function here takes any `GenericClient` (a `Client` or a
//! `Transaction`), sends bound parameters only, and runs as one `query_typed`
//! round trip (so it works through PgBouncer in transaction mode too).

use std::fmt;
use std::time::SystemTime;

use serde_json::{Map, Value};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{GenericClient, Row};

use crate::{Error, JobStatus, Priority};

/// One job another job depends on, as `queue_dependencies(id)` reports it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Dependency {
    /// The dependency's job id.
    pub id: i64,
    /// Its queue; `None` when its history is gone (retention, or
    /// `queue.keep_completed = off`).
    pub queue: Option<String>,
    /// Its status; `None` when its history is gone (it had completed).
    pub status: Option<JobStatus>,
    /// The result its handler returned, once completed; `None` before, or
    /// when there was none.
    pub result: Option<Value>,
    /// When it became final, if it has.
    pub finished_at: Option<SystemTime>,
    /// True once this dependency no longer blocks the job (it completed, or
    /// it ended otherwise and the job was pushed with `run_anyway`).
    pub resolved: bool,
    /// Whether the job was pushed with `run_anyway`.
    pub run_anyway: bool,
}

pub(crate) const DEPENDENCIES_SQL: &str =
    "SELECT dependency, queue, status, result, finished_at, resolved, run_anyway FROM queue_dependencies($1)";

pub(crate) fn dependencies_from_rows(rows: &[Row]) -> Result<Vec<Dependency>, Error> {
    rows.iter()
        .map(|r| {
            Ok(Dependency {
                id: r.try_get(0)?,
                queue: r.try_get(1)?,
                status: r.try_get::<_, Option<String>>(2)?.map(|s| JobStatus::parse(&s)),
                result: r.try_get(3)?,
                finished_at: r.try_get(4)?,
                resolved: r.try_get(5)?,
                run_anyway: r.try_get(6)?,
            })
        })
        .collect()
}

/// The jobs `job_id` depends on (`queue_dependencies`), in id order, with
/// their status and result: how a handler combines its inputs. Empty for a
/// job without dependencies, an unknown id, or a job of a queue the caller
/// may not read. Inside a handler, [`Job::dependencies`](crate::Job::dependencies)
/// does the same on the worker's connection.
///
/// ```no_run
/// # async fn f(client: &tokio_postgres::Client) -> Result<(), queue_client::Error> {
/// use queue_client::dependencies;
/// for dep in dependencies(client, 42).await? {
///     println!("{} is {:?}: {:?}", dep.id, dep.status, dep.result);
/// }
/// # Ok(()) }
/// ```
pub async fn dependencies<C>(client: &C, job_id: i64) -> Result<Vec<Dependency>, Error>
where
    C: GenericClient + Sync,
{
    let rows = client.query_typed(DEPENDENCIES_SQL, &[(&job_id, Type::INT8)]).await?;
    dependencies_from_rows(&rows)
}

/// A job a batch pushes when it ends (`on_complete` / `on_failure` of
/// `queue_batch_open`): its queue, payload and priority; the queue's other
/// defaults apply. The server adds the batch's summary to the payload as
/// `"batch"`: `{"id", "total", "completed", "failed", "cancelled"}`.
///
/// ```
/// use queue_client::{Callback, Priority};
/// use serde_json::json;
/// let cb = Callback::new("reports").payload(json!({"report": 7})).priority(Priority::High);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Callback {
    queue: String,
    payload: Option<Value>,
    priority: Option<Priority>,
}

impl Callback {
    /// A callback pushed to `queue`, with payload `{}` (plus `"batch"`).
    pub fn new(queue: impl Into<String>) -> Self {
        Callback { queue: queue.into(), payload: None, priority: None }
    }

    /// The callback job's payload: a JSON object (the server refuses
    /// anything else with SQLSTATE `22023` when the batch is opened). For a
    /// typed value, `serde_json::to_value(&v)?`.
    pub fn payload(mut self, payload: Value) -> Self {
        self.payload = Some(payload);
        self
    }

    /// The callback job's priority; default the queue's (else 0).
    pub fn priority(mut self, priority: impl Into<Priority>) -> Self {
        self.priority = Some(priority.into());
        self
    }

    /// The spec `queue_batch_open` takes.
    fn to_json(&self) -> Value {
        let mut spec = Map::new();
        spec.insert("queue".into(), Value::String(self.queue.clone()));
        if let Some(p) = &self.payload {
            spec.insert("payload".into(), p.clone());
        }
        if let Some(p) = self.priority {
            spec.insert("priority".into(), Value::from(p.value()));
        }
        Value::Object(spec)
    }
}

/// Options of [`batch_open`]: the callbacks. Without any, the batch only
/// tracks its jobs ([`batch_status`]).
///
/// ```
/// use queue_client::{BatchOpts, Callback};
/// let opts = BatchOpts::new()
///     .on_complete(Callback::new("reports"))
///     .on_failure(Callback::new("alerts"));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchOpts {
    on_complete: Option<Callback>,
    on_failure: Option<Callback>,
}

impl BatchOpts {
    /// No callbacks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Pushed once, when every job of the closed batch is final (whatever
    /// their statuses).
    pub fn on_complete(mut self, callback: Callback) -> Self {
        self.on_complete = Some(callback);
        self
    }

    /// Pushed once too, at the same moment, when any job of the batch failed
    /// or expired.
    pub fn on_failure(mut self, callback: Callback) -> Self {
        self.on_failure = Some(callback);
        self
    }
}

/// The state of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BatchState {
    /// Jobs may still join it ([`PushOpts::batch`](crate::PushOpts::batch)).
    Open,
    /// Closed; waiting for its jobs to be final.
    Closed,
    /// Every job was final and the callbacks were pushed (final).
    Done,
    /// Cancelled with [`batch_cancel`]: no callback is pushed (final).
    Cancelled,
    /// A state this version of the library does not know.
    Other(String),
}

impl BatchState {
    /// From the extension's text.
    pub fn parse(s: &str) -> BatchState {
        match s {
            "open" => BatchState::Open,
            "closed" => BatchState::Closed,
            "done" => BatchState::Done,
            "cancelled" => BatchState::Cancelled,
            other => BatchState::Other(other.to_owned()),
        }
    }

    /// The extension's text.
    pub fn as_str(&self) -> &str {
        match self {
            BatchState::Open => "open",
            BatchState::Closed => "closed",
            BatchState::Done => "done",
            BatchState::Cancelled => "cancelled",
            BatchState::Other(s) => s,
        }
    }
}

impl fmt::Display for BatchState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A batch as `queue_batch(id)` reports it. While it is open the counts are
/// those of its jobs so far; from the close on, those kept since the close.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BatchStatus {
    /// The batch's id.
    pub id: i64,
    /// Open, closed, done or cancelled.
    pub state: BatchState,
    /// Its jobs.
    pub total: i64,
    /// Those not final yet.
    pub pending: i64,
    /// Those of `pending` being processed now.
    pub running: i64,
    /// Those completed.
    pub completed: i64,
    /// Those failed or expired.
    pub failed: i64,
    /// Those cancelled (or deleted while waiting).
    pub cancelled: i64,
    /// The share of its jobs that are final, 0 to 1; `None` with no jobs.
    pub progress: Option<f64>,
    /// The `on_complete` callback spec, as the server normalized it.
    pub on_complete: Option<Value>,
    /// The `on_failure` callback spec, as the server normalized it.
    pub on_failure: Option<Value>,
    /// The id of the `on_complete` job, once pushed.
    pub complete_job: Option<i64>,
    /// The id of the `on_failure` job, once pushed.
    pub failure_job: Option<i64>,
    /// When it was opened.
    pub created_at: SystemTime,
    /// When it was closed.
    pub closed_at: Option<SystemTime>,
    /// When it became done or was cancelled.
    pub finished_at: Option<SystemTime>,
}

/// The fields of a `queue_batch` jsonb (`b`), typed by the server.
macro_rules! batch_select {
    ($from:literal) => {
        concat!(
            "SELECT (b->>'id')::bigint, b->>'state', (b->>'total')::bigint, (b->>'pending')::bigint, ",
            "(b->>'running')::bigint, (b->>'completed')::bigint, (b->>'failed')::bigint, ",
            "(b->>'cancelled')::bigint, (b->>'progress')::float8, ",
            "nullif(b->'on_complete', 'null'), nullif(b->'on_failure', 'null'), ",
            "(b->>'complete_job')::bigint, (b->>'failure_job')::bigint, (b->>'created_at')::timestamptz, ",
            "(b->>'closed_at')::timestamptz, (b->>'finished_at')::timestamptz FROM ",
            $from,
            " AS r(b)"
        )
    };
}

const BATCH_STATUS_SQL: &str = batch_select!("queue_batch($1)");
const BATCH_CLOSE_SQL: &str = batch_select!("queue_batch_close($1)");

/// The batch of one row of `batch_select!`; `None` when the batch is NULL.
fn batch_from_row(r: &Row) -> Result<Option<BatchStatus>, Error> {
    let Some(id) = r.try_get::<_, Option<i64>>(0)? else {
        return Ok(None);
    };
    Ok(Some(BatchStatus {
        id,
        state: BatchState::parse(r.try_get::<_, &str>(1)?),
        total: r.try_get(2)?,
        pending: r.try_get(3)?,
        running: r.try_get(4)?,
        completed: r.try_get(5)?,
        failed: r.try_get(6)?,
        cancelled: r.try_get(7)?,
        progress: r.try_get(8)?,
        on_complete: r.try_get(9)?,
        on_failure: r.try_get(10)?,
        complete_job: r.try_get(11)?,
        failure_job: r.try_get(12)?,
        created_at: r.try_get(13)?,
        closed_at: r.try_get(14)?,
        finished_at: r.try_get(15)?,
    }))
}

/// Opens a batch (`queue_batch_open`) and returns its id. Push jobs into it
/// with [`PushOpts::batch`](crate::PushOpts::batch), from any number of
/// transactions, then [`batch_close`] it: once every job of the closed batch
/// is final, `on_complete` is pushed (and `on_failure` too, when any failed
/// or expired), exactly once. The callbacks are checked now (SQLSTATE
/// `22023` for a bad queue name or payload; the caller must be allowed to
/// push to their queues), so pushing them at the end cannot fail.
///
/// ```no_run
/// # async fn f(client: &tokio_postgres::Client) -> Result<(), queue_client::Error> {
/// use queue_client::{batch_close, batch_open, push, BatchOpts, Callback, PushOpts};
/// use serde_json::json;
/// let batch = batch_open(client, &BatchOpts::new()
///     .on_complete(Callback::new("reports").payload(json!({"report": 7})))).await?;
/// for page in 1..=3 {
///     push(client, "render", &json!({"page": page}), &PushOpts::new().batch(batch)).await?;
/// }
/// batch_close(client, batch).await?;
/// # Ok(()) }
/// ```
pub async fn batch_open<C>(client: &C, opts: &BatchOpts) -> Result<i64, Error>
where
    C: GenericClient + Sync,
{
    let on_complete = opts.on_complete.as_ref().map(Callback::to_json);
    let on_failure = opts.on_failure.as_ref().map(Callback::to_json);
    let params: [(&(dyn ToSql + Sync), Type); 2] = [(&on_complete, Type::JSONB), (&on_failure, Type::JSONB)];
    let rows = client.query_typed("SELECT queue_batch_open($1, $2)", &params).await?;
    let id: i64 =
        rows.first().ok_or_else(|| Error::InvalidArgument("queue_batch_open returned no row".into()))?.try_get(0)?;
    tracing::debug!(batch = id, "opened a batch");
    Ok(id)
}

/// Closes a batch (`queue_batch_close`): no more jobs join it. Waits for
/// pushes into it still in flight, counts its jobs, and pushes the callbacks
/// at once when they are all final already (or it has none). Returns the
/// batch as [`batch_status`] reports it. A batch that is not open (closed,
/// done, cancelled, unknown) is refused with SQLSTATE `22023`.
pub async fn batch_close<C>(client: &C, batch_id: i64) -> Result<BatchStatus, Error>
where
    C: GenericClient + Sync,
{
    let rows = client.query_typed(BATCH_CLOSE_SQL, &[(&batch_id, Type::INT8)]).await?;
    let status = match rows.first() {
        Some(r) => batch_from_row(r)?,
        None => None,
    };
    status.ok_or_else(|| Error::InvalidArgument(format!("queue_batch_close({batch_id}) returned nothing")))
}

/// Cancels a batch (`queue_batch_cancel`): its waiting jobs are cancelled
/// (and the jobs that depend on them), running ones finish, and no callback
/// is pushed. Returns false when the batch is done or cancelled already, or
/// unknown.
pub async fn batch_cancel<C>(client: &C, batch_id: i64) -> Result<bool, Error>
where
    C: GenericClient + Sync,
{
    let rows = client.query_typed("SELECT queue_batch_cancel($1)", &[(&batch_id, Type::INT8)]).await?;
    Ok(match rows.first() {
        Some(r) => r.try_get::<_, Option<bool>>(0)?.unwrap_or(false),
        None => false,
    })
}

/// A batch's state and counts (`queue_batch`); `None` for an unknown batch
/// (or, for a confined role, one it did not open).
pub async fn batch_status<C>(client: &C, batch_id: i64) -> Result<Option<BatchStatus>, Error>
where
    C: GenericClient + Sync,
{
    let rows = client.query_typed(BATCH_STATUS_SQL, &[(&batch_id, Type::INT8)]).await?;
    match rows.first() {
        Some(r) => batch_from_row(r),
        None => Ok(None),
    }
}
