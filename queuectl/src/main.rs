//! `queuectl`: the command line and live dashboard of the `queue` PostgreSQL
//! extension. It talks to Postgres only through the extension's SQL functions
//! (`queue_stats`, `queue_dead`, `queue_retry`, ...), so it works with any role
//! the extension's grants allow, and never depends on the table layout.
//!
//! Exit codes: 0 ok, 1 error, 2 usage or refused, 3 not found (see [`error::Exit`]).
#![warn(missing_docs)]

mod api;
mod cmd;
mod config;
mod error;
mod output;
mod serve;
mod work;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::error::{CliError, Exit};

/// Command line of `queuectl`.
#[derive(Parser, Debug)]
#[command(
    name = "queuectl",
    version,
    about = "Operate the queue extension: status, jobs, dead letters, schedules, workers, a live dashboard",
    long_about = "Operate the queue extension: status, jobs, dead letters, schedules, workers, a live dashboard.\n\n\
Connection: --database-url, else DATABASE_URL, else the libpq variables PGHOST, PGPORT, PGUSER, \
PGDATABASE, PGPASSWORD or the password file (PGPASSFILE, ~/.pgpass), as psql reads them. \
Never put a password on the command line: use PGPASSWORD or ~/.pgpass.\n\n\
Exit codes: 0 ok, 1 error, 2 usage error or refused, 3 not found.",
    after_help = "Examples:\n  queuectl status\n  queuectl push emails '{\"to\": \"a@example.com\"}' --priority high\n  \
queuectl failed emails\n  queuectl retry --all emails\n  queuectl pause emails\n  queuectl work emails -- ./send-email.sh\n  \
queuectl serve --listen 127.0.0.1:8080"
)]
pub struct Cli {
    /// Connection string: postgres://user@host:port/db or "host=... dbname=..." (a password here is visible in ps: prefer PGPASSWORD or ~/.pgpass)
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true, value_name = "URL")]
    database_url: Option<String>,

    /// Print JSON instead of tables (every read command; write commands print their outcome)
    #[arg(long, global = true)]
    json: bool,

    /// No progress bars
    #[arg(short, long, global = true)]
    quiet: bool,

    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Depth by status and priority, throughput, success rate, p95 run time, oldest waiting job, workers, health
    Status {
        /// One queue (default: every queue)
        queue: Option<String>,
        /// Window of the metrics
        #[arg(long, default_value = "1h", value_parser = duration)]
        since: Duration,
    },
    /// Every queue with its counts
    List,
    /// One queue in detail: counts, metrics, next jobs, recent dead letters, schedules, workers
    Describe {
        /// The queue
        queue: String,
    },
    /// Jobs of a queue in one status (pending: next in claim order; any other status, or dead: newest first)
    Jobs {
        /// The queue
        queue: String,
        /// pending, scheduled, processing, retrying, blocked (waiting for dependencies), completed, failed, expired, cancelled, or dead (failed + expired)
        #[arg(long, short, default_value = "pending")]
        status: String,
        /// How many at most
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: i32,
    },
    /// Everything about one job: payload, result, error, progress, timings, dependencies
    Job {
        /// The job id
        id: i64,
    },
    /// Push a job; prints its id
    #[command(
        after_help = "Examples:\n  queuectl push emails '{\"to\": \"a@example.com\"}' --priority high --delay 10m\n  \
queuectl push reports '{\"merge\": true}' --depends-on 41,42   # waits for 41 and 42\n  \
queuectl push cleanup '{}' --depends-on 41 --depends-on 42 --run-anyway"
    )]
    Push(PushArgs),
    /// Dead letters (failed and expired jobs), newest first
    Failed {
        /// One queue (default: every queue)
        queue: Option<String>,
        /// How many at most
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: i32,
    },
    /// Put a dead job back to pending (attempts reset), or every dead job of a queue with --all
    Retry {
        /// The job id
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<i64>,
        /// Every dead job of this queue
        #[arg(long, value_name = "QUEUE")]
        all: Option<String>,
    },
    /// Delete one job that is not processing
    Delete {
        /// The job id
        id: i64,
    },
    /// Cancel a job that is still waiting (scheduled, pending, retrying, blocked); the jobs that depend on it are cancelled too
    Cancel {
        /// The job id
        id: i64,
    },
    /// Delete dead letters, of one queue or all, optionally only older ones
    PurgeDead {
        /// One queue (default: every queue)
        queue: Option<String>,
        /// Only those that finished longer ago than this (e.g. 7d)
        #[arg(long, value_parser = duration)]
        older_than: Option<Duration>,
    },
    /// Delete the waiting jobs of a queue (pending, scheduled, retrying, blocked); needs --force
    Clear {
        /// The queue
        queue: String,
        /// Really delete them
        #[arg(long)]
        force: bool,
    },
    /// Pause a queue: it hands out no jobs until `queuectl resume` (pushes are still accepted, running jobs finish)
    #[command(
        long_about = "Pause a queue (queue_pause): workers claim none of its jobs until `queuectl resume`. \
Pushes are still accepted and jobs already running finish as usual. A queue can be paused before it has jobs. \
Pausing a paused queue changes nothing and says so (exit 0). Needs queue_admin.",
        after_help = "Examples:\n  queuectl pause emails\n  queuectl pause emails --json"
    )]
    Pause {
        /// The queue
        queue: String,
    },
    /// Resume a paused queue: its jobs are handed out again and its workers woken
    #[command(
        long_about = "Resume a paused queue (queue_resume): its jobs are handed out again and its waiting workers \
are woken, as a push would. Resuming a queue that is not paused changes nothing and says so (exit 0). Needs queue_admin.",
        after_help = "Examples:\n  queuectl resume emails"
    )]
    Resume {
        /// The queue
        queue: String,
    },
    /// Delete final jobs (completed, failed, expired, cancelled) that finished longer ago than --older-than
    Cleanup {
        /// e.g. 7d, 12h
        #[arg(long, value_parser = duration)]
        older_than: Duration,
    },
    /// Every schedule with its next run
    Schedules,
    /// Create or replace a schedule (cron, @daily, "every 10 minutes", "at 2026-12-01 02:00+00", manual)
    Schedule(ScheduleArgs),
    /// Delete a schedule
    Unschedule {
        /// The schedule's name
        name: String,
    },
    /// Run a schedule now: pushes its job, prints the job id
    Trigger {
        /// The schedule's name
        name: String,
    },
    /// Upcoming schedule runs, soonest first
    Timeline {
        /// How far ahead
        #[arg(long, default_value = "1d", value_parser = duration)]
        horizon: Duration,
        /// How many runs at most
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: i32,
    },
    /// Workers that sent a heartbeat: healthy or stale, running jobs, host
    Workers,
    /// Whether the queue is served (exit 1 when not healthy)
    Health,
    /// Run COMMAND once per job of QUEUE: payload on stdin, result from stdout
    Work(work::WorkArgs),
    /// The live dashboard (one page and a JSON API under /api)
    Serve {
        /// Address to listen on
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Refuse every POST (no retry, delete, run-now, pause, resume)
        #[arg(long)]
        read_only: bool,
    },
}

/// Options of `push`.
#[derive(Args, Debug)]
pub struct PushArgs {
    /// The queue
    pub queue: String,
    /// JSON payload; `-` reads it from stdin, `@FILE` from a file
    #[arg(default_value = "{}")]
    pub payload: String,
    /// critical, high, normal, low or a number (lower runs first)
    #[arg(long, short)]
    pub priority: Option<String>,
    /// Run after this long (e.g. 10m)
    #[arg(long, value_parser = duration, conflicts_with = "run_at")]
    pub delay: Option<Duration>,
    /// Run at this time (RFC 3339, e.g. 2026-12-01T02:00:00Z)
    #[arg(long)]
    pub run_at: Option<String>,
    /// At most one job of the group runs at a time, in priority order
    #[arg(long)]
    pub serial_group: Option<String>,
    /// Attempts in total, the first included
    #[arg(long)]
    pub max_attempts: Option<i32>,
    /// The lease per attempt (e.g. 5m)
    #[arg(long, value_parser = duration)]
    pub timeout: Option<Duration>,
    /// First retry delay, doubling (e.g. 10s)
    #[arg(long, value_parser = duration)]
    pub backoff_base: Option<Duration>,
    /// Longest retry delay (e.g. 1h)
    #[arg(long, value_parser = duration)]
    pub backoff_max: Option<Duration>,
    /// Retry delays instead of the backoff, comma-separated (e.g. 1m,5m,30m); the last repeats
    #[arg(long, value_delimiter = ',', value_parser = duration)]
    pub retry_delays: Option<Vec<Duration>>,
    /// While a live job with this key exists in the queue, return its id instead of pushing
    #[arg(long)]
    pub dedupe_key: Option<String>,
    /// Run only once this job has completed (blocked until then); repeat or comma-separate for several (e.g. 41,42)
    #[arg(long, value_name = "ID", value_delimiter = ',')]
    pub depends_on: Vec<i64>,
    /// With --depends-on: run once every dependency has ended, even failed, expired or cancelled (else this job is cancelled with it)
    #[arg(long, requires = "depends_on")]
    pub run_anyway: bool,
}

/// Options of `schedule`.
#[derive(Args, Debug)]
pub struct ScheduleArgs {
    /// The schedule's name (replaced if it exists)
    pub name: String,
    /// "*/5 * * * *", @hourly, "every 30 seconds", "at 2026-12-01 02:00+00" or manual
    pub spec: String,
    /// The queue its jobs go to
    pub queue: String,
    /// JSON payload of its jobs
    #[arg(default_value = "{}")]
    pub payload: String,
    /// critical, high, normal, low or a number
    #[arg(long, short, default_value = "normal")]
    pub priority: String,
    /// Serial group of its jobs
    #[arg(long)]
    pub serial_group: Option<String>,
    /// Attempts of its jobs
    #[arg(long, default_value_t = 3)]
    pub max_attempts: i32,
    /// Lease of its jobs
    #[arg(long, default_value = "5m", value_parser = duration)]
    pub timeout: Duration,
    /// Create it disabled
    #[arg(long)]
    pub disabled: bool,
}

/// clap value parser for durations.
fn duration(s: &str) -> Result<Duration, String> {
    output::parse_duration(s)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A listing piped into `head` ends quietly when the pipe closes, as
    // other Unix tools do, instead of panicking in println! (Rust ignores
    // SIGPIPE). Not for `serve` and `work`: they write to sockets and to
    // their commands' pipes, where a closed peer is an error to handle, not
    // a reason to die.
    if !matches!(cli.command, Command::Serve { .. } | Command::Work(_)) {
        // SAFETY: sets the disposition of one signal before any thread
        // starts; SIG_DFL is always a valid handler.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let on_argv = std::env::args_os().any(|a| a.to_string_lossy().starts_with("--database-url"));
    if let (true, Some(u)) = (on_argv, &cli.database_url) {
        if config::url_has_password(u) {
            eprintln!(
                "queuectl: warning: the password in --database-url is visible to every user of this machine (ps); \
                 use PGPASSWORD or ~/.pgpass"
            );
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("queuectl: cannot start: {e}");
            return ExitCode::from(Exit::Error as u8);
        }
    };
    match runtime.block_on(cmd::run(cli)) {
        Ok(Exit::Ok) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            report(&e);
            ExitCode::from(e.exit as u8)
        }
    }
}

fn report(e: &CliError) {
    eprintln!("queuectl: {}", e.message);
}
