//! The library's error ([`Error`]) and what a handler returns on failure ([`JobError`]).

use std::fmt;
use std::time::Duration;

use tokio_postgres::error::SqlState;

/// What the library's own calls fail with.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The database refused a call or the connection failed. The server's
    /// checks come back with their SQLSTATE (see [`Error::code`]): `22023` for a
    /// bad queue name, priority or interval, a bad tag, an unknown dependency,
    /// a batch that is not open or a bad callback spec; `22004` for a NULL
    /// where a value is needed.
    Db(tokio_postgres::Error),
    /// A bad argument, caught before any SQL was sent (a zero concurrency, a
    /// bad queue name, a duration that does not fit an interval, ...).
    InvalidArgument(String),
    /// A payload could not be turned into JSON.
    Json(serde_json::Error),
}

impl Error {
    /// The SQLSTATE of a database error, if the server sent one.
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            Error::Db(e) => e.code(),
            _ => None,
        }
    }

    /// Whether retrying could help: a lost connection, a server shutting down
    /// or restarting, a serialization failure or deadlock, a lock or statement
    /// timeout. Anything else is a refusal that a retry would repeat.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Db(e) => is_transient(e),
            _ => false,
        }
    }
}

/// Connection failures and server-side conditions that go away.
pub(crate) fn is_transient(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => true, // I/O, closed connection, timeouts
        Some(code) => {
            let c = code.code();
            c.starts_with("08")
                || c.starts_with("53")
                || c.starts_with("57P")
                || c == "40001"
                || c == "40P01"
                || c == "55P03"
                || c == "57014"
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Db(e) => match e.as_db_error() {
                Some(db) => write!(f, "database error {}: {}", db.code().code(), db.message()),
                None => write!(f, "database connection error: {e}"),
            },
            Error::InvalidArgument(msg) => write!(f, "invalid argument: {msg}"),
            Error::Json(e) => write!(f, "payload is not JSON: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Db(e) => Some(e),
            Error::Json(e) => Some(e),
            Error::InvalidArgument(_) => None,
        }
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        Error::Db(e)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Json(e)
    }
}

/// The failure of one attempt, returned by a handler.
///
/// * [`JobError::new`] (or `?` on any error type): the attempt failed, the job
///   retries with the backoff it was pushed with while it has attempts left.
/// * [`JobError::permanent`]: no retries, the job is a dead letter at once
///   (`queue_dead`).
/// * [`JobError::retry_in`]: retry after exactly this delay (once; later
///   failures use the backoff again).
///
/// The message and the chain of sources become the job's `last_error`.
///
/// `JobError` converts from every `std::error::Error`, so `?` works in a
/// handler. (It does not implement `std::error::Error` itself, for that reason,
/// just as `anyhow::Error` does not.)
///
/// ```
/// use queue_client::JobError;
/// use std::time::Duration;
///
/// let e = JobError::retry_in(Duration::from_secs(30), "SMTP 421: try later");
/// assert_eq!(e.retry_delay(), Some(Duration::from_secs(30)));
/// assert!(!e.is_permanent());
/// assert!(JobError::permanent("no such address").is_permanent());
/// ```
pub struct JobError {
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    permanent: bool,
    retry_in: Option<Duration>,
}

impl JobError {
    /// A failed attempt; retried with the job's backoff while attempts are left.
    pub fn new(message: impl Into<String>) -> Self {
        JobError { message: message.into(), source: None, permanent: false, retry_in: None }
    }

    /// A failure that retrying cannot fix: the job is failed at once, whatever
    /// attempts it has left (`queue_fail(..., permanent => true)`).
    pub fn permanent(message: impl Into<String>) -> Self {
        JobError { permanent: true, ..JobError::new(message) }
    }

    /// A failed attempt to retry after `delay` (`queue_fail(..., retry_in => delay)`);
    /// a zero delay puts the job straight back in line. Only for this failure.
    pub fn retry_in(delay: Duration, message: impl Into<String>) -> Self {
        JobError { retry_in: Some(delay), ..JobError::new(message) }
    }

    /// Wraps an error as a failed attempt (what `?` does).
    pub fn from_error(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        JobError { message: error.to_string(), source: Some(Box::new(error)), permanent: false, retry_in: None }
    }

    /// Marks this failure permanent (no retries).
    pub fn into_permanent(mut self) -> Self {
        self.permanent = true;
        self
    }

    /// Sets the retry delay of this failure.
    pub fn with_retry_in(mut self, delay: Duration) -> Self {
        self.retry_in = Some(delay);
        self
    }

    /// The message (without the sources).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether retries are skipped.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// The retry delay asked for, if any.
    pub fn retry_delay(&self) -> Option<Duration> {
        self.retry_in
    }

    /// The wrapped error, if this was made from one.
    pub fn source(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.source.as_deref()
    }

    /// What is stored as the job's `last_error`: the message, then each
    /// source's, separated by `: ` (a source whose text the message already
    /// contains is skipped).
    pub fn to_error_text(&self) -> String {
        let mut text = self.message.clone();
        let mut next: Option<&(dyn std::error::Error + 'static)> = match &self.source {
            Some(s) => s.source(),
            None => None,
        };
        while let Some(e) = next {
            let part = e.to_string();
            if !text.contains(&part) {
                text.push_str(": ");
                text.push_str(&part);
            }
            next = e.source();
        }
        text
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_error_text())
    }
}

impl fmt::Debug for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobError")
            .field("message", &self.message)
            .field("permanent", &self.permanent)
            .field("retry_in", &self.retry_in)
            .field("source", &self.source)
            .finish()
    }
}

impl<E> From<E> for JobError
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(e: E) -> Self {
        JobError::from_error(e)
    }
}
