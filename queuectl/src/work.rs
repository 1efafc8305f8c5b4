//! `queuectl work QUEUE -- COMMAND ARGS...`: a worker in any language.
//!
//! Built on `queue-client`'s [`Worker`] (claims, leases kept alive, attempt-checked
//! ack / fail, LISTEN wake-ups, reconnects, graceful stop). For each job it runs
//! COMMAND once, in a process group of its own, with the payload as JSON on
//! stdin and `QUEUE_JOB_ID`, `QUEUE_JOB_ATTEMPT`, `QUEUE_JOB_MAX_ATTEMPTS`,
//! `QUEUE_NAME`, `QUEUE_WORKER` in its environment:
//!
//! * exit 0: the job is acked with its stdout as the result (as JSON when it
//!   parses, else as a JSON string without the trailing newline; empty: no result);
//! * any other exit: the attempt fails with its stderr (retried with the job's
//!   backoff while attempts are left);
//! * still running at the job's timeout (its lease): the whole process group is
//!   killed and the attempt fails with "timed out";
//! * SIGTERM / Ctrl-C: nothing more is claimed, running commands get `--grace`
//!   to finish, then they are killed and their jobs given back (`queue_release`,
//!   no attempt used).

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use clap::Args;
use queue_client::{Job, JobError, Worker};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_postgres::Config;

use crate::error::{CliError, Exit, Result};
use crate::output::human_span;

/// Largest stdout kept as a result (the extension's default `queue.max_result_size`).
const MAX_STDOUT: usize = 10 * 1024 * 1024;
/// How much of stderr is kept (its end) as the error.
const MAX_STDERR: usize = 16_000;

/// Options of `work`.
#[derive(Args, Debug)]
pub struct WorkArgs {
    /// The queue to serve
    pub queue: String,
    /// How many commands run at once
    #[arg(long, short = 'c', default_value_t = 1)]
    pub concurrency: usize,
    /// After SIGTERM, how long running commands may take before they are killed and their jobs given back
    #[arg(long, default_value = "10s", value_parser = crate::duration)]
    pub grace: Duration,
    /// Worker name in queue_workers() (default host:pid:random)
    #[arg(long)]
    pub name: Option<String>,
    /// Behind PgBouncer in transaction mode: no LISTEN, claims wait in the server
    #[arg(long)]
    pub pooler: bool,
    /// How often to claim anyway in case a wake-up was missed
    #[arg(long, value_parser = crate::duration)]
    pub poll_interval: Option<Duration>,
    /// No line per job on stderr
    #[arg(long)]
    pub silent: bool,
    /// The command and its arguments (after --)
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Whether `program` can be run: a path to a file, or a name found on PATH.
fn resolvable(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// Runs the worker until SIGTERM / SIGINT.
pub async fn run(config: Config, args: WorkArgs) -> Result<Exit> {
    if !queue_client::is_valid_queue_name(&args.queue) {
        return Err(CliError::usage(format!("bad queue name {:?}: 1-57 characters of [A-Za-z0-9_.:-]", args.queue)));
    }
    let program = &args.command[0];
    if !resolvable(program) {
        return Err(CliError::usage(format!("command not found: {program}")));
    }
    let command = Arc::new(args.command.clone());
    let verbose = !args.silent;
    let mut builder = Worker::builder(config)
        .handler(args.queue.clone(), move |job: Job| {
            let command = command.clone();
            async move { run_job(&command, job, verbose).await }
        })
        .concurrency(args.concurrency)
        .grace(args.grace)
        .pooler(args.pooler)
        .handle_signals(true);
    if let Some(n) = &args.name {
        builder = builder.name(n.clone());
    }
    if let Some(p) = args.poll_interval {
        builder = builder.poll_interval(p);
    }
    let worker = builder.build()?;
    let name = worker.name().to_owned();
    let running = worker.start().await.map_err(|e| CliError::error(format!("cannot start the worker: {e}")))?;
    eprintln!(
        "queuectl: worker {name} serving {} with `{}` (concurrency {}); SIGTERM or Ctrl-C stops it gracefully",
        args.queue,
        args.command.join(" "),
        args.concurrency
    );
    running.wait().await;
    eprintln!("queuectl: worker {name} stopped");
    Ok(Exit::Ok)
}

/// Kills a process group when dropped (a handler dropped at the end of the
/// grace, or a command that left children behind).
struct GroupGuard(i32);

impl GroupGuard {
    fn kill(&self) {
        if self.0 > 0 {
            // SAFETY: kill(2) with a negative pid signals the process group; no memory is touched.
            unsafe {
                libc::kill(-self.0, libc::SIGKILL);
            }
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads a stream to its end, keeping at most `max` bytes (the first ones, or
/// the last ones with `keep_tail`); whether it was longer.
async fn read_capped<R: AsyncRead + Unpin>(mut r: R, max: usize, keep_tail: bool) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let mut over = false;
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() > max {
                    over = true;
                    if keep_tail {
                        let cut = out.len() - max;
                        out.drain(..cut);
                    } else {
                        out.truncate(max);
                    }
                }
            }
        }
    }
    (out, over)
}

/// What the command's stdout becomes: JSON when it parses, else a JSON string
/// (without the trailing newline); nothing for an empty stdout.
pub fn result_of(stdout: &[u8]) -> Value {
    let text = String::from_utf8_lossy(stdout);
    let trimmed = text.trim_end_matches(['\n', '\r']);
    if trimmed.trim().is_empty() {
        return Value::Null;
    }
    match serde_json::from_str::<Value>(trimmed) {
        Ok(v) => v,
        Err(_) => Value::String(trimmed.to_owned()),
    }
}

async fn run_job(command: &[String], job: Job, verbose: bool) -> std::result::Result<Value, JobError> {
    let started = Instant::now();
    // The job's timeout is its lease at the claim: kill the command when it ends.
    let timeout = job.lease_until().duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
    let label = format!("job {} ({}, attempt {}/{})", job.id(), job.queue(), job.attempt(), job.max_attempts());
    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..])
        .env("QUEUE_JOB_ID", job.id().to_string())
        .env("QUEUE_JOB_ATTEMPT", job.attempt().to_string())
        .env("QUEUE_JOB_MAX_ATTEMPTS", job.max_attempts().to_string())
        .env("QUEUE_NAME", job.queue())
        .env("QUEUE_WORKER", job.worker())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| JobError::new(format!("cannot start {}: {e}", command[0])))?;
    let guard = GroupGuard(child.id().map(|p| p as i32).unwrap_or(0));

    let payload = serde_json::to_vec(job.payload()).unwrap_or_default();
    let mut stdin = child.stdin.take();
    let writer = tokio::spawn(async move {
        if let Some(s) = stdin.as_mut() {
            let _ = s.write_all(&payload).await;
            let _ = s.shutdown().await;
        }
        drop(stdin);
    });
    let stdout = tokio::spawn(read_capped(child.stdout.take().expect("piped stdout"), MAX_STDOUT, false));
    let stderr = tokio::spawn(read_capped(child.stderr.take().expect("piped stderr"), MAX_STDERR, true));

    enum End {
        Exited(std::process::ExitStatus),
        TimedOut,
        LeaseLost,
    }
    let end = tokio::select! {
        status = child.wait() => match status {
            Ok(s) => End::Exited(s),
            Err(e) => return Err(JobError::new(format!("waiting for {}: {e}", command[0]))),
        },
        _ = tokio::time::sleep(timeout) => End::TimedOut,
        _ = job.cancelled() => End::LeaseLost,
    };
    // Whatever it left running in its group goes too (and closes the pipes).
    guard.kill();
    if !matches!(end, End::Exited(_)) {
        let _ = child.wait().await;
    }
    writer.abort();
    let (out, out_over) = stdout.await.unwrap_or_default();
    let (err, _) = stderr.await.unwrap_or_default();
    let err_text = String::from_utf8_lossy(&err).trim().to_owned();
    let took = human_span(started.elapsed());

    let outcome = match end {
        End::Exited(status) if status.success() => {
            if out_over {
                Err(JobError::new(format!("stdout is larger than {} MB: not stored as the result", MAX_STDOUT >> 20)))
            } else {
                Ok(result_of(&out))
            }
        }
        End::Exited(status) => {
            use std::os::unix::process::ExitStatusExt;
            let how = match (status.code(), status.signal()) {
                (Some(c), _) => format!("exit status {c}"),
                (None, Some(s)) => format!("killed by signal {s}"),
                _ => "failed".to_owned(),
            };
            Err(JobError::new(if err_text.is_empty() {
                format!("{} ended with {how}", command[0])
            } else {
                format!("{err_text}\n({how})")
            }))
        }
        End::TimedOut => {
            let shown = Duration::from_secs_f64(timeout.as_secs_f64().round());
            let mut m = format!("timed out after {}: killed (the job's timeout)", human_span(shown));
            if !err_text.is_empty() {
                m.push_str(&format!("\n{err_text}"));
            }
            Err(JobError::new(m))
        }
        End::LeaseLost => Err(JobError::new("the lease was lost: killed")),
    };
    if verbose {
        match &outcome {
            Ok(_) => eprintln!("queuectl: {label}: done in {took}"),
            Err(e) => eprintln!("queuectl: {label}: failed after {took}: {}", e.message().lines().next().unwrap_or("")),
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stdout_becomes_a_result() {
        assert_eq!(result_of(b"{\"ok\": true}\n"), json!({"ok": true}));
        assert_eq!(result_of(b"42"), json!(42));
        assert_eq!(result_of(b"hello world\n"), json!("hello world"));
        assert_eq!(result_of(b"\n"), Value::Null);
        assert_eq!(result_of(b"line 1\nline 2\n"), json!("line 1\nline 2"));
    }

    #[test]
    fn commands_are_found_on_path() {
        assert!(resolvable("sh"));
        assert!(resolvable("/bin/sh"));
        assert!(!resolvable("no-such-command-queuectl"));
    }
}
