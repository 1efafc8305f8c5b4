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
    about = "Operate the queue extension: status, jobs, dead letters, batches, queue settings, schedules, workers, a live dashboard",
    long_about = "Operate the queue extension: status, jobs, dead letters, batches, queue settings, schedules, workers, a live dashboard.\n\n\
Connection: --database-url, else DATABASE_URL, else the libpq variables PGHOST, PGPORT, PGUSER, \
PGDATABASE, PGPASSWORD or the password file (PGPASSFILE, ~/.pgpass), as psql reads them. \
Never put a password on the command line: use PGPASSWORD or ~/.pgpass.\n\n\
Exit codes: 0 ok, 1 error, 2 usage error or refused, 3 not found.",
    after_help = "Examples:\n  queuectl status\n  queuectl push emails '{\"to\": \"a@example.com\"}' --priority high\n  \
queuectl failed emails\n  queuectl retry --all emails\n  queuectl pause emails\n  queuectl configure emails --max-attempts 5\n  \
queuectl batch open --on-complete '{\"queue\": \"reports\"}'\n  queuectl batch list --state open\n  queuectl work emails -- ./send-email.sh\n  \
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
    #[command(
        after_help = "Examples:\n  queuectl jobs emails\n  queuectl jobs emails --status failed --tag customer:42\n  \
queuectl jobs reports --status completed --tag nightly --json"
    )]
    Jobs {
        /// The queue
        queue: String,
        /// pending, scheduled, processing, retrying, blocked (waiting for dependencies), completed, failed, expired, cancelled, or dead (failed + expired)
        #[arg(long, short, default_value = "pending")]
        status: String,
        /// How many at most
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: i32,
        /// Only the jobs with this tag (queue_jobs / queue_dead tag); pending ones are then listed newest first, not in claim order
        #[arg(long, value_name = "TAG", value_parser = filter_tag)]
        tag: Option<String>,
    },
    /// Everything about one job: payload, result, error, progress, timings, tags, batch, dependencies
    Job {
        /// The job id
        id: i64,
    },
    /// Push a job; prints its id
    #[command(
        after_help = "Examples:\n  queuectl push emails '{\"to\": \"a@example.com\"}' --priority high --delay 10m\n  \
queuectl push reports '{\"merge\": true}' --depends-on 41,42   # waits for 41 and 42\n  \
queuectl push cleanup '{}' --depends-on 41 --depends-on 42 --run-anyway\n  \
queuectl push render '{\"page\": 1}' --tag customer:42 --tag pdf --batch 7"
    )]
    Push(PushArgs),
    /// Dead letters (failed and expired jobs), newest first
    #[command(
        visible_alias = "dead",
        after_help = "Examples:\n  queuectl failed emails\n  queuectl dead --tag customer:42"
    )]
    Failed {
        /// One queue (default: every queue)
        queue: Option<String>,
        /// How many at most
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: i32,
        /// Only the dead jobs with this tag (queue_dead tag)
        #[arg(long, value_name = "TAG", value_parser = filter_tag)]
        tag: Option<String>,
    },
    /// Put a dead job back to pending (attempts reset), or every dead job of a queue with --all
    #[command(after_help = "Examples:\n  queuectl retry 42\n  queuectl retry --all emails\n  \
queuectl retry --all emails --tag customer:42   # only that tag's dead jobs")]
    Retry {
        /// The job id
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<i64>,
        /// Every dead job of this queue
        #[arg(long, value_name = "QUEUE")]
        all: Option<String>,
        /// With --all: only the dead jobs with this tag
        #[arg(long, value_name = "TAG", requires = "all", value_parser = filter_tag)]
        tag: Option<String>,
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
    /// Delete dead letters, of one queue or all, optionally only older ones or only one tag's
    PurgeDead {
        /// One queue (default: every queue)
        queue: Option<String>,
        /// Only those that finished longer ago than this (e.g. 7d)
        #[arg(long, value_parser = duration)]
        older_than: Option<Duration>,
        /// Only the dead jobs with this tag (queue_purge_dead tag)
        #[arg(long, value_name = "TAG", value_parser = filter_tag)]
        tag: Option<String>,
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
    /// Set a queue's defaults for what a push does not say (priority, attempts, timeout, backoff, retention)
    #[command(
        long_about = "Set a queue's defaults for what a push does not say (queue_configure): a push into the queue \
that leaves out --priority, --max-attempts, --timeout, --backoff-base or --backoff-max gets the queue's value, else the \
global default (normal, 3, 5m, 10s, 1h). What a push says always wins; jobs already pushed keep theirs. An option given \
replaces the queue's value, one left out keeps it, --reset clears every value not given. --retention (how long the \
queue's finished jobs are kept) needs an extension whose queue_configure has it. Prints the queue's settings. \
Needs queue_admin.",
        after_help = "Examples:\n  queuectl configure reports --priority low --max-attempts 10 --timeout 30m\n  \
queuectl configure reports --backoff-base 5s --backoff-max 10m\n  queuectl configure reports --reset              # back to the global defaults\n  \
queuectl configure reports --reset --timeout 1m  # only the timeout stays set"
    )]
    Configure(ConfigureArgs),
    /// Every queue that has settings: paused (since when, by whom) and the defaults of `configure`
    #[command(after_help = "Examples:\n  queuectl settings\n  queuectl settings --json")]
    Settings,
    /// Counts by status, of one queue or all; with --tag, of the jobs with that tag
    #[command(
        long_about = "Counts by status (queue_stats). Without --tag: the queue's counters (live jobs by status, \
and the completed / failed / expired / cancelled totals since the start). With --tag: the jobs with that tag by \
status, live and the history still kept, counted from the jobs (queue_stats(queue, tag)).",
        after_help = "Examples:\n  queuectl stats emails\n  queuectl stats --tag customer:42\n  queuectl stats emails --tag customer:42 --json"
    )]
    Stats {
        /// One queue (default: every queue)
        queue: Option<String>,
        /// Only the jobs with this tag
        #[arg(long, value_name = "TAG", value_parser = filter_tag)]
        tag: Option<String>,
    },
    /// Batches: open one, push jobs into it (push --batch), close it, list them; its callbacks are pushed once all are final
    #[command(subcommand)]
    Batch(BatchCommand),
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
    /// A label to find the job by (jobs/failed/retry --all/purge-dead/stats --tag); repeat for several (at most 20, 1-64 bytes each)
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Add the job to this open batch (queuectl batch open)
    #[arg(long, value_name = "ID")]
    pub batch: Option<i64>,
}

/// Options of `configure`.
#[derive(Args, Debug)]
pub struct ConfigureArgs {
    /// The queue
    pub queue: String,
    /// Default priority: critical, high, normal, low or a number (lower runs first)
    #[arg(long, short)]
    pub priority: Option<String>,
    /// Default attempts in total, the first included
    #[arg(long)]
    pub max_attempts: Option<i32>,
    /// Default lease per attempt (e.g. 5m)
    #[arg(long, value_parser = duration)]
    pub timeout: Option<Duration>,
    /// Default first retry delay, doubling (e.g. 10s)
    #[arg(long, value_parser = duration)]
    pub backoff_base: Option<Duration>,
    /// Default longest retry delay (e.g. 1h)
    #[arg(long, value_parser = duration)]
    pub backoff_max: Option<Duration>,
    /// How long the queue's finished jobs are kept (e.g. 7d); only where the extension's queue_configure has retention
    #[arg(long, value_parser = duration)]
    pub retention: Option<Duration>,
    /// Clear every value not given, back to the global default
    #[arg(long)]
    pub reset: bool,
}

/// The subcommands of `batch`.
#[derive(Subcommand, Debug)]
pub enum BatchCommand {
    /// Open a batch; prints its id (push jobs into it with `queuectl push --batch ID`, then close it)
    #[command(
        long_about = "Open a batch (queue_batch_open) and print its id. Push jobs into it with `queuectl push QUEUE \
--batch ID` (from any number of processes), then `queuectl batch close ID`. Once every job of the closed batch is \
final, the --on-complete job is pushed, and the --on-failure job too when any of them failed or expired, exactly once, \
with the batch's summary added to its payload as \"batch\". A callback is {\"queue\": text, \"payload\": object, \
\"priority\": int or name}; `@FILE` reads it from a file.",
        after_help = "Examples:\n  b=$(queuectl batch open --on-complete '{\"queue\": \"reports\", \"payload\": {\"report\": 7}}' \\\n        \
--on-failure '{\"queue\": \"alerts\", \"priority\": \"high\"}')\n  queuectl push render '{\"page\": 1}' --batch \"$b\"\n  \
queuectl batch close \"$b\"\n  queuectl batch show \"$b\""
    )]
    Open {
        /// The job pushed once every job of the batch is final: {"queue": ..., "payload": {...}, "priority": ...}
        #[arg(long, value_name = "JSON")]
        on_complete: Option<String>,
        /// The job pushed as well when any job of the batch failed or expired
        #[arg(long, value_name = "JSON")]
        on_failure: Option<String>,
    },
    /// Close a batch: no more jobs join it; its callbacks are pushed once all its jobs are final (at once if they are)
    Close {
        /// The batch id
        id: i64,
    },
    /// Cancel a batch: its waiting jobs are cancelled (running ones finish) and no callback is pushed
    Cancel {
        /// The batch id
        id: i64,
    },
    /// A batch's state (open, closed, done, cancelled), progress, counts, callbacks and the ids of the callback jobs
    #[command(
        long_about = "A batch by id (queue_batch): state (open, closed, done, cancelled), progress (the share of its jobs \
that are final), total / pending / running / completed / failed (or expired) / cancelled, its callbacks and the ids \
of the callback jobs once pushed, and its times. `batch list` finds the ids; an open batch is counted here from its jobs."
    )]
    Show {
        /// The batch id
        id: i64,
    },
    /// The batches you may see, newest first: state, progress, counts, times, callback jobs
    #[command(
        long_about = "The batches the connecting role may see (queue_batches; a confined role: the ones it opened), \
newest first, of one state with --state. PROGRESS is final/total jobs and the counts are those kept since the close: \
an open batch has none yet (`-`; `queuectl batch show ID` counts it from its jobs). COMPLETE JOB / FAILURE JOB are \
the callback jobs once pushed. An unknown state exits 2.",
        after_help = "Examples:\n  queuectl batch list\n  queuectl batch list --state open\n  \
queuectl batch list --state done --limit 5 --json"
    )]
    List {
        /// Only batches in this state: open, closed, done or cancelled (default: every state)
        #[arg(long, short, value_name = "STATE")]
        state: Option<String>,
        /// How many at most (the newest)
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: i32,
    },
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

/// clap value parser for a tag to filter by: a tag is 1 to 64 bytes (as
/// `queue_push` checks), and an empty one would silently match nothing.
fn filter_tag(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 64 {
        Err(format!("{s:?} is not a tag: a tag is 1 to 64 bytes"))
    } else {
        Ok(s.to_owned())
    }
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
