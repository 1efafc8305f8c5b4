//! Configuration: every `queue.*` setting, registered once per process.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

/// The database the background worker serves (`queue.database`).
pub static DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));

/// Milliseconds between two maintenance passes (`queue.tick`).
pub static TICK_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);

/// How long final jobs are kept before the maintenance pass deletes them
/// (`queue.retention`, an interval such as '7 days').
pub static RETENTION: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"7 days"));

/// How long the run and wait times of deleted final jobs are kept
/// (`queue.metrics_retention`).
pub static METRICS_RETENTION: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"7 days"));

/// Whether an acked job is kept in `queue.finished_jobs` like every other
/// final job (`queue.keep_completed`, on), or deleted at once (off). SQL reads
/// it with `current_setting`; it is registered here so that a bad value is
/// refused when it is set.
pub static KEEP_COMPLETED: GucSetting<bool> = GucSetting::<bool>::new(true);

/// Most leases the lease book holds (`queue.max_leases`); beyond, leases
/// are found by scanning the jobs table until the book fits again.
pub static MAX_LEASES: GucSetting<i32> = GucSetting::<i32>::new(20_000);

/// Databases served at once (`queue.max_databases`).
pub static MAX_DATABASES: GucSetting<i32> = GucSetting::<i32>::new(8);

/// Counter keys per database in shared memory (`queue.max_counter_keys`).
pub static MAX_COUNTER_KEYS: GucSetting<i32> = GucSetting::<i32>::new(1536);

/// Limits on what one call may store (kilobytes), so that no single job or
/// worker can bloat the tables or make a reader fail. Superuser-only: a
/// limit that any role could raise would limit nothing.
pub static MAX_PAYLOAD_KB: GucSetting<i32> = GucSetting::<i32>::new(10 * 1024);
pub static MAX_RESULT_KB: GucSetting<i32> = GucSetting::<i32>::new(10 * 1024);
pub static MAX_ERROR_KB: GucSetting<i32> = GucSetting::<i32>::new(64);
pub static MAX_INFO_KB: GucSetting<i32> = GucSetting::<i32>::new(64);

/// Longest dedupe key, serial group, worker name and schedule name (bytes).
/// They are index keys: a B-tree entry must stay well under a page.
pub static MAX_KEY_LENGTH: GucSetting<i32> = GucSetting::<i32>::new(200);

/// Longest delay anything may ask for (seconds): a push's delay or run_at
/// distance, backoff, retry delays, retry_in, schedule intervals. Keeps every
/// timestamp the queue computes far inside Postgres' range.
pub static MAX_DELAY_S: GucSetting<i32> = GucSetting::<i32>::new(3650 * 86_400);

/// Longest lease (seconds): a job's timeout and a touch's extend.
pub static MAX_LEASE_S: GucSetting<i32> = GucSetting::<i32>::new(86_400);

/// Register the settings. `queue.database` can only change at server start
/// (the worker connects once); the others are re-read on SIGHUP.
pub fn register() {
    GucRegistry::define_string_guc(
        c"queue.database",
        c"Databases the background workers serve: empty or '*' for every database that has the extension.",
        c"A comma-separated list of database names restricts the service to those. Reloads on SIGHUP.",
        &DATABASE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"queue.max_databases",
        c"Most databases the background workers serve at once.",
        c"Each takes three background workers (max_worker_processes) and its own shared memory.",
        &MAX_DATABASES,
        1,
        1024,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"queue.max_counter_keys",
        c"Most (queue, priority) pairs of one database whose counters shared memory holds between two flushes.",
        c"Beyond that a commit's counts are dropped and the gauges recounted.",
        &MAX_COUNTER_KEYS,
        16,
        1_000_000,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"queue.tick",
        c"Time between two maintenance passes.",
        c"Each pass promotes due jobs, expires leases and deletes old final jobs.",
        &TICK_MS,
        10,
        60_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_string_guc(
        c"queue.retention",
        c"How long completed, failed, expired and cancelled jobs are kept.",
        c"An interval such as '7 days'. The maintenance pass deletes final jobs older than this.",
        &RETENTION,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"queue.metrics_retention",
        c"How long the run and wait times of deleted final jobs are kept for queue_metrics.",
        c"An interval such as '7 days'. Times of jobs finished longer ago are dropped by the maintenance pass.",
        &METRICS_RETENTION,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"queue.keep_completed",
        c"Whether completed jobs are kept as history until queue.retention.",
        c"Off: an acked job is deleted in its ack; only its run and wait times stay, for queue_metrics. \
          Failed, expired and cancelled jobs are always kept. Any session, role or database may set it.",
        &KEEP_COMPLETED,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"queue.max_leases",
        c"Most processing jobs of one database the lease book in shared memory holds.",
        c"With more jobs processing at once, the maintenance pass finds lapsed leases by scanning the jobs table. \
          The book is sized at server start; lowering the value on reload takes effect, raising it beyond the start value needs a restart.",
        &MAX_LEASES,
        1,
        10_000_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    register_scheduler();
    register_limits();
}

/// Register the limits (called from [`register`]).
fn register_limits() {
    let sizes: [(&std::ffi::CStr, &std::ffi::CStr, &'static GucSetting<i32>); 4] = [
        (c"queue.max_payload_size", c"Largest job payload a push or schedule may store.", &MAX_PAYLOAD_KB),
        (c"queue.max_result_size", c"Largest result an ack may store.", &MAX_RESULT_KB),
        (c"queue.max_error_size", c"Largest error text a fail may store.", &MAX_ERROR_KB),
        (c"queue.max_info_size", c"Largest worker info or progress message a worker may store.", &MAX_INFO_KB),
    ];
    for (name, short, setting) in sizes {
        GucRegistry::define_int_guc(
            name,
            short,
            c"A larger value is refused with SQLSTATE 22023 and changes nothing. Only superusers may change it.",
            setting,
            1,
            1024 * 1024,
            GucContext::Suset,
            GucFlags::UNIT_KB,
        );
    }
    GucRegistry::define_int_guc(
        c"queue.max_key_length",
        c"Longest dedupe key, serial group, worker name or schedule name, in bytes.",
        c"Longer ones are refused with SQLSTATE 22023. Only superusers may change it.",
        &MAX_KEY_LENGTH,
        1,
        1000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"queue.max_delay",
        c"Longest delay, backoff, retry delay or schedule interval a call may ask for.",
        c"Bounds run_at too (at most this far from now). Only superusers may change it.",
        &MAX_DELAY_S,
        1,
        20 * 365 * 86_400,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"queue.max_lease",
        c"Longest lease: a job's timeout, and how far a touch may extend it.",
        c"Workers of longer jobs extend their lease with queue_touch. Only superusers may change it.",
        &MAX_LEASE_S,
        1,
        20 * 365 * 86_400,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
}

/// SQL: whether completed jobs are kept as history (`queue.keep_completed`).
/// Read from the registered setting: a C call costs less than a SQL function
/// with a pinned search_path on every ack.
#[pgrx::pg_extern(stable, parallel_safe, schema = "queue")]
fn keep_completed() -> bool {
    KEEP_COMPLETED.get()
}

/// Which databases the background workers serve (`queue.database`).
pub struct DatabaseFilter {
    /// None: every database.
    names: Option<Vec<String>>,
}

impl DatabaseFilter {
    /// Parse the setting: empty or `*` for every database, otherwise
    /// comma-separated names, each optionally in double quotes.
    pub fn parse(setting: &str) -> DatabaseFilter {
        let names: Vec<String> = setting
            .split(',')
            .map(|n| n.trim())
            .map(|n| n.strip_prefix('"').and_then(|n| n.strip_suffix('"')).unwrap_or(n).to_string())
            .filter(|n| !n.is_empty())
            .collect();
        if names.is_empty() || names.iter().any(|n| n == "*") {
            DatabaseFilter { names: None }
        } else {
            DatabaseFilter { names: Some(names) }
        }
    }

    pub fn allows(&self, database: &str) -> bool {
        self.names.as_ref().is_none_or(|names| names.iter().any(|n| n == database))
    }

    /// For the log and for queue_health.
    pub fn describe(&self) -> String {
        match &self.names {
            None => "every database with the extension".to_string(),
            Some(names) => names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", "),
        }
    }
}

/// The databases the background workers serve.
pub fn database_filter() -> DatabaseFilter {
    DatabaseFilter::parse(&DATABASE.get().and_then(|c| c.into_string().ok()).unwrap_or_default())
}

/// Time zone in which cron schedules are evaluated (`queue.timezone`).
pub static TIMEZONE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"UTC"));

/// Register the scheduler's settings (called from [`register`]).
fn register_scheduler() {
    GucRegistry::define_string_guc(
        c"queue.timezone",
        c"Time zone in which cron schedules are evaluated.",
        c"An IANA name such as 'UTC' or 'Europe/Prague'.",
        &TIMEZONE,
        GucContext::Sighup,
        GucFlags::default(),
    );
}

/// The scheduler's time zone name.
pub fn timezone_name() -> String {
    TIMEZONE.get().and_then(|c| c.into_string().ok()).unwrap_or_else(|| "UTC".to_string())
}
