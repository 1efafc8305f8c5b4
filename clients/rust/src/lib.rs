//! Rust client of the `queue` PostgreSQL extension: Postgres is the job queue.
//!
//! Push jobs on your own connection, inside your own transaction, with
//! [`push`] / [`push_batch`] and typed [`PushOpts`]; run a [`Worker`] where you
//! only write the handler: an async fn taking a [`Job`] and returning
//! `Result<serde_json::Value, JobError>`. Workflows (jobs that wait for
//! other jobs, batches with callbacks) are push options and the helpers of
//! [`workflow`].
//!
//! ```no_run
//! use queue_client::{push, Job, JobError, PushOpts, Priority, Worker};
//! use serde_json::{json, Value};
//! use std::time::Duration;
//!
//! async fn send_email(job: Job) -> Result<Value, JobError> {
//!     let to = job.payload()["to"].as_str().ok_or_else(|| JobError::permanent("no recipient"))?;
//!     // ... send it; `?` on any error fails the attempt (retried with backoff) ...
//!     Ok(json!({ "sent_to": to }))
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let url = "postgres://app@localhost/app";
//!     let (mut client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
//!     tokio::spawn(conn);
//!
//!     let tx = client.transaction().await?;
//!     push(&tx, "emails", &json!({"to": "a@example.com"}),
//!          &PushOpts::new().priority(Priority::High).delay(Duration::from_secs(10))).await?;
//!     tx.commit().await?; // the job exists only now
//!
//!     Worker::builder(url.parse()?)
//!         .handler("emails", send_email)
//!         .concurrency(8)
//!         .handle_signals(true) // SIGTERM / Ctrl-C: finish or give back, then return
//!         .build()?
//!         .run()
//!         .await?;
//!     Ok(())
//! }
//! ```
//!
//! Everything the worker does is in `tracing` spans and events (target
//! `queue_client`); [`hooks::Hooks`] gets the same events as values.
#![warn(missing_docs)]

mod conn;
mod error;
pub mod hooks;
mod interval;
mod job;
mod push;
mod worker;
pub mod workflow;

pub use error::{Error, JobError};
pub use hooks::Hooks;
pub use interval::PgInterval;
pub use job::{Job, JobStatus};
pub use push::{push, push_batch, Priority, PushOpts, RunAt};
pub use worker::{is_valid_queue_name, Handler, HandlerOpts, RunningWorker, ShutdownHandle, Worker, WorkerBuilder};
pub use workflow::{
    batch_cancel, batch_close, batch_open, batch_status, dependencies, BatchOpts, BatchState, BatchStatus, Callback,
    Dependency,
};

/// This crate's version (sent in `queue_heartbeat`'s info).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
