//! Errors and the exit codes scripts can rely on.

use std::fmt;

/// Exit codes of `queuectl`, the same for every subcommand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Success.
    Ok = 0,
    /// An error: the database refused, the connection failed, the operation did not apply.
    Error = 1,
    /// A usage error or a refusal: bad arguments, bad input the server rejects
    /// (SQLSTATE 22xxx), or a destructive command without `--force`.
    Usage = 2,
    /// What was named does not exist: a job id, a queue, a schedule.
    NotFound = 3,
}

/// An error with the exit code it ends the process with.
#[derive(Debug)]
pub struct CliError {
    /// How the process exits.
    pub exit: Exit,
    /// What is printed after `queuectl: `.
    pub message: String,
    /// The SQLSTATE when the database refused, so that `serve` can answer a
    /// refusal of rights (42501) with 403 instead of a server error.
    pub sqlstate: Option<String>,
}

impl CliError {
    /// Exit 1.
    pub fn error(message: impl Into<String>) -> Self {
        CliError { exit: Exit::Error, message: message.into(), sqlstate: None }
    }
    /// Exit 2.
    pub fn usage(message: impl Into<String>) -> Self {
        CliError { exit: Exit::Usage, message: message.into(), sqlstate: None }
    }
    /// Exit 3.
    pub fn not_found(message: impl Into<String>) -> Self {
        CliError { exit: Exit::NotFound, message: message.into(), sqlstate: None }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

/// The exit code for a SQLSTATE: invalid input is a usage error, an undefined
/// object (an unknown schedule) is "not found", everything else an error.
pub fn exit_for_sqlstate(code: &str) -> Exit {
    match code {
        "42704" => Exit::NotFound,
        c if c.starts_with("22") => Exit::Usage,
        _ => Exit::Error,
    }
}

impl From<tokio_postgres::Error> for CliError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => {
                let mut msg = format!("{} (SQLSTATE {})", db.message(), db.code().code());
                if let Some(d) = db.detail() {
                    msg.push_str(&format!("\n  detail: {d}"));
                }
                if let Some(h) = db.hint() {
                    msg.push_str(&format!("\n  hint: {h}"));
                }
                CliError {
                    exit: exit_for_sqlstate(db.code().code()),
                    message: msg,
                    sqlstate: Some(db.code().code().to_owned()),
                }
            }
            None => CliError::error(format!("database connection error: {e}")),
        }
    }
}

impl From<queue_client::Error> for CliError {
    fn from(e: queue_client::Error) -> Self {
        match e {
            queue_client::Error::Db(db) => db.into(),
            queue_client::Error::InvalidArgument(m) => CliError::usage(m),
            other => CliError::error(other.to_string()),
        }
    }
}

impl From<serde_json::Error> for CliError {
    fn from(e: serde_json::Error) -> Self {
        CliError::error(format!("unexpected JSON: {e}"))
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::error(e.to_string())
    }
}

/// What every command returns.
pub type Result<T, E = CliError> = std::result::Result<T, E>;
