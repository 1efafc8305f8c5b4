//! A claimed job as a handler sees it ([`Job`]), and job statuses ([`JobStatus`]).

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_postgres::types::Type;
use tokio_util::sync::CancellationToken;

use crate::conn::Db;
use crate::interval::PgInterval;
use crate::workflow::{dependencies_from_rows, Dependency, DEPENDENCIES_SQL};
use crate::{Error, JobError};

/// The status of a job (see the extension's README for the lifecycle).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JobStatus {
    /// Waiting for the jobs it depends on (`depends_on`) to complete.
    Blocked,
    /// Waiting for its `run_at`.
    Scheduled,
    /// Ready to be claimed.
    Pending,
    /// Claimed by a worker.
    Processing,
    /// An attempt failed; waits for its backoff.
    Retrying,
    /// Acked (final).
    Completed,
    /// Failed with no attempts left, or permanently (final; dead letter).
    Failed,
    /// Its last attempt ran past its lease (final; dead letter).
    Expired,
    /// Cancelled (final).
    Cancelled,
    /// A status this version of the library does not know.
    Other(String),
}

impl JobStatus {
    /// From the extension's text.
    pub fn parse(s: &str) -> JobStatus {
        match s {
            "blocked" => JobStatus::Blocked,
            "scheduled" => JobStatus::Scheduled,
            "pending" => JobStatus::Pending,
            "processing" => JobStatus::Processing,
            "retrying" => JobStatus::Retrying,
            "completed" => JobStatus::Completed,
            "failed" => JobStatus::Failed,
            "expired" => JobStatus::Expired,
            "cancelled" => JobStatus::Cancelled,
            other => JobStatus::Other(other.to_owned()),
        }
    }

    /// The extension's text.
    pub fn as_str(&self) -> &str {
        match self {
            JobStatus::Blocked => "blocked",
            JobStatus::Scheduled => "scheduled",
            JobStatus::Pending => "pending",
            JobStatus::Processing => "processing",
            JobStatus::Retrying => "retrying",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Expired => "expired",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Other(s) => s,
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub(crate) struct JobInner {
    pub id: i64,
    pub queue: String,
    pub payload: Value,
    pub priority: i32,
    pub serial_group: Option<String>,
    pub attempt: i32,
    pub max_attempts: i32,
    pub created_at: SystemTime,
    pub lease_until: Mutex<SystemTime>,
    pub lease: Duration,
    pub worker: Arc<str>,
    pub ops: Arc<Db>,
    pub cancel: CancellationToken,
    /// Why a column of the claimed row could not be decoded (the payload,
    /// mostly): the job is failed for good instead of run.
    pub undecodable: Option<String>,
}

/// A claimed job, handed to its handler. Cheap to clone (one `Arc`).
///
/// Every call it makes (`progress`, `touch`) passes this claim's `attempt`,
/// so once the claim is stale (the lease ran out and the job was claimed
/// again) they change nothing and return `false`.
#[derive(Clone)]
pub struct Job {
    pub(crate) inner: Arc<JobInner>,
}

pub(crate) const PROGRESS_SQL: &str = "SELECT queue_progress($1, $2, $3, $4, $5)";
pub(crate) const TOUCH_SQL: &str = "SELECT queue_touch($1, $2, $3)";

impl Job {
    /// The job's id.
    pub fn id(&self) -> i64 {
        self.inner.id
    }

    /// The queue it was claimed from.
    pub fn queue(&self) -> &str {
        &self.inner.queue
    }

    /// Its JSON payload.
    pub fn payload(&self) -> &Value {
        &self.inner.payload
    }

    /// The payload as a typed value. A payload that does not fit `T` is a
    /// permanent failure (retrying would not change it), so
    /// `let p: Email = job.payload_as()?;` dead-letters such a job at once.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, JobError> {
        T::deserialize(&self.inner.payload)
            .map_err(|e| JobError::permanent(format!("the payload does not fit {}: {e}", std::any::type_name::<T>())))
    }

    /// Its priority (lower runs first).
    pub fn priority(&self) -> i32 {
        self.inner.priority
    }

    /// Its serial group, if any.
    pub fn serial_group(&self) -> Option<&str> {
        self.inner.serial_group.as_deref()
    }

    /// This claim's number: 1 on the first try.
    pub fn attempt(&self) -> i32 {
        self.inner.attempt
    }

    /// Attempts allowed in total.
    pub fn max_attempts(&self) -> i32 {
        self.inner.max_attempts
    }

    /// Whether a failure now would be final.
    pub fn is_last_attempt(&self) -> bool {
        self.inner.attempt >= self.inner.max_attempts
    }

    /// When the job was pushed.
    pub fn created_at(&self) -> SystemTime {
        self.inner.created_at
    }

    /// Until when this worker holds the job: the claim's lease, moved on by
    /// each successful touch (the worker touches at half the lease on its own).
    pub fn lease_until(&self) -> SystemTime {
        *self.inner.lease_until.lock().unwrap()
    }

    /// The name of the worker running it.
    pub fn worker(&self) -> &str {
        &self.inner.worker
    }

    /// Whether the job was taken away: the lease was lost (a touch found the
    /// claim stale), the worker's grace period ended, or the handler ran past
    /// its [`max_runtime`](crate::WorkerBuilder::max_runtime). The outcome
    /// will be ignored; stop early.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancel.is_cancelled()
    }

    /// Resolves when [`is_cancelled`](Self::is_cancelled) becomes true; for
    /// `tokio::select!` in long handlers.
    pub async fn cancelled(&self) {
        self.inner.cancel.cancelled().await
    }

    /// Reports progress (`queue_progress` with this attempt), shown by
    /// `queue_job(id) -> 'progress'`. `0 <= current <= total`, `total >= 1`.
    /// Returns false when this claim no longer holds the job.
    pub async fn progress(&self, current: i32, total: i32, message: Option<&str>) -> Result<bool, Error> {
        let rows = self
            .inner
            .ops
            .query(
                PROGRESS_SQL,
                &[Type::INT8, Type::INT4, Type::INT4, Type::TEXT, Type::INT4],
                &[&self.inner.id, &current, &total, &message, &self.inner.attempt],
            )
            .await?;
        Ok(rows.first().and_then(|r| r.get::<_, Option<bool>>(0)).unwrap_or(false))
    }

    /// Extends the lease now (`queue_touch`) to `extend` from now, or by the
    /// job's timeout with `None`. The worker already does this on its own at
    /// half the lease; call it only for a longer extension. Returns false when
    /// this claim no longer holds the job.
    pub async fn touch(&self, extend: Option<Duration>) -> Result<bool, Error> {
        let ext = extend.map(PgInterval);
        if let Some(e) = &ext {
            e.micros()?;
        }
        let started = SystemTime::now();
        let rows = self
            .inner
            .ops
            .query(TOUCH_SQL, &[Type::INT8, Type::INTERVAL, Type::INT4], &[&self.inner.id, &ext, &self.inner.attempt])
            .await?;
        let ok = rows.first().and_then(|r| r.get::<_, Option<bool>>(0)).unwrap_or(false);
        if ok {
            *self.inner.lease_until.lock().unwrap() = started + extend.unwrap_or(self.inner.lease);
        }
        Ok(ok)
    }

    /// The jobs this one depends on (`queue_dependencies`, pushed with
    /// [`PushOpts::depends_on`](crate::PushOpts::depends_on)), in id order,
    /// with their status and result: how a handler reads its inputs. Runs on
    /// the worker's connection (its role needs `queue_worker`, which may call
    /// `queue_dependencies`); the same as [`dependencies`](crate::dependencies)
    /// on a client of your own.
    ///
    /// ```no_run
    /// # use queue_client::{Job, JobError};
    /// # use serde_json::{json, Value};
    /// async fn sum(job: Job) -> Result<Value, JobError> {
    ///     let mut total = 0;
    ///     for dep in job.dependencies().await? {
    ///         total += dep.result.as_ref().and_then(|r| r["n"].as_i64()).unwrap_or(0);
    ///     }
    ///     Ok(json!({ "total": total }))
    /// }
    /// ```
    pub async fn dependencies(&self) -> Result<Vec<Dependency>, Error> {
        let rows = self.inner.ops.query(DEPENDENCIES_SQL, &[Type::INT8], &[&self.inner.id]).await?;
        dependencies_from_rows(&rows)
    }
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.inner.id)
            .field("queue", &self.inner.queue)
            .field("attempt", &self.inner.attempt)
            .field("max_attempts", &self.inner.max_attempts)
            .field("priority", &self.inner.priority)
            .field("serial_group", &self.inner.serial_group)
            .field("payload", &self.inner.payload)
            .finish()
    }
}
