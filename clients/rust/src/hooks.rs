//! Hooks into a worker's job lifecycle ([`Hooks`]) and what they are told.
//!
//! Every hook also has a `tracing` counterpart: each job runs in a
//! `queue.process` span (fields `queue`, `job.id`, `attempt`, `worker`), and
//! starts, outcomes, give-backs, reconnects and errors are `tracing` events
//! (target `queue_client`). Hooks are for metrics and alerts that want the
//! values themselves.

use std::time::Duration;

use serde_json::Value;

use crate::{Error, Job, JobError, JobStatus};

/// A handler is about to run.
#[derive(Debug)]
#[non_exhaustive]
pub struct JobStarted<'a> {
    /// The job.
    pub job: &'a Job,
}

/// A handler returned `Ok` and the worker acked (or tried to ack) the job.
/// Told after the ack committed: acks are batched (`queue_ack_batch`), so this
/// comes once the call carrying this job's ack returned.
#[derive(Debug)]
#[non_exhaustive]
pub struct JobFinished<'a> {
    /// The job.
    pub job: &'a Job,
    /// What the handler returned (stored as the job's result).
    pub result: &'a Value,
    /// How long the handler ran.
    pub duration: Duration,
    /// True when the ack (`queue_ack_batch`, or `queue_ack` on an extension
    /// without it) completed the job; false when the claim was
    /// stale (its lease had run out and the job was claimed again) or the ack
    /// could not be delivered before a hard stop (the lease brings the job back).
    pub acked: bool,
}

/// A handler returned `Err` (or panicked, or ran past its
/// [`max_runtime`](crate::WorkerBuilder::max_runtime)), or a claimed job could
/// not be run at all (its payload cannot be decoded: failed for good, with no
/// [`JobStarted`] before), and the worker recorded the failure.
#[derive(Debug)]
#[non_exhaustive]
pub struct JobFailed<'a> {
    /// The job.
    pub job: &'a Job,
    /// The failure (a panic is a `JobError` with the panic's message; a
    /// handler stopped at its max_runtime, one whose message is
    /// `max_runtime exceeded: the handler ran longer than <limit>`).
    pub error: &'a JobError,
    /// How long the handler ran (next to nothing when none ran).
    pub duration: Duration,
    /// The job's new status from `queue_fail` (`Retrying`, `Pending` or
    /// `Failed`), or `None` when the claim was stale or the call could not be made.
    pub status: Option<JobStatus>,
}

/// How a job was given back at the end of a grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReleaseVia {
    /// `queue_release(id, attempt)`: pending again at once, no attempt used.
    QueueRelease,
    /// An extension without `queue_release`: `queue_fail(..., retry_in => 0)`,
    /// which costs an attempt.
    QueueFail,
    /// Nothing could be done (its last attempt on an old extension, or the
    /// database was unreachable): the job comes back when its lease runs out.
    Lease,
}

/// A running job was given back because the worker stopped before it finished.
#[derive(Debug)]
#[non_exhaustive]
pub struct JobReleased<'a> {
    /// The job.
    pub job: &'a Job,
    /// How.
    pub via: ReleaseVia,
    /// Whether the job went back to the queue now.
    pub released: bool,
}

/// The LISTEN connection is in place.
#[derive(Debug)]
#[non_exhaustive]
pub struct Listening {
    /// False the first time, true after a reconnect.
    pub reconnect: bool,
}

/// Something failed inside the worker and is being retried (a lost
/// connection, a refused call). The worker never stops for these.
#[derive(Debug)]
#[non_exhaustive]
pub struct WorkerError<'a> {
    /// What the worker was doing.
    pub context: &'a str,
    /// The error.
    pub error: &'a Error,
}

/// Callbacks on a worker's events; implement the ones you need (all default
/// to doing nothing). They run on the worker's tasks: keep them quick. A
/// panicking hook is logged and otherwise ignored.
///
/// ```
/// use queue_client::hooks::{Hooks, JobFinished, JobFailed};
///
/// struct Metrics;
/// impl Hooks for Metrics {
///     fn job_finished(&self, e: &JobFinished<'_>) {
///         println!("job {} took {:?}", e.job.id(), e.duration);
///     }
///     fn job_failed(&self, e: &JobFailed<'_>) {
///         eprintln!("job {} failed: {} -> {:?}", e.job.id(), e.error, e.status);
///     }
/// }
/// ```
pub trait Hooks: Send + Sync + 'static {
    /// A handler is about to run.
    fn job_started(&self, _event: &JobStarted<'_>) {}
    /// A handler returned `Ok`; the job was acked (see `acked`).
    fn job_finished(&self, _event: &JobFinished<'_>) {}
    /// A handler failed; the failure was recorded.
    fn job_failed(&self, _event: &JobFailed<'_>) {}
    /// A job was given back at the end of the grace period.
    fn job_released(&self, _event: &JobReleased<'_>) {}
    /// The LISTEN connection is in place (again).
    fn listening(&self, _event: &Listening) {}
    /// Something failed and is being retried.
    fn error(&self, _event: &WorkerError<'_>) {}
}
