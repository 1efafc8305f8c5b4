//! The background services: small workers with one duty each.
//!
//! * `queue maintenance` runs `queue.maintenance_pass()` every `queue.tick`:
//!   promote due jobs, expire leases, delete old final jobs; then, in a short
//!   transaction of its own, `queue.stats_pass()` moves the job counters from
//!   shared memory into `queue.stats` (src/stats.rs), once more at shutdown.
//! * `queue scheduler` runs `queue.scheduler_pass()`: push the jobs of due
//!   schedules. It sleeps until the next schedule is due, at most a second.
//!
//! The launcher (src/launcher.rs) starts both for every database that has
//! the extension, and restarts them after a crash or `pg_terminate_backend`.
//! They show themselves in pg_stat_activity, re-read the configuration on
//! SIGHUP, and on SIGTERM (or when the launcher retires their database)
//! finish their batch and exit. A pass runs in its own transaction under an error boundary ([`guarded`]):
//! an ERROR (a bad `queue.timezone`, `statement_timeout`, `lock_timeout`,
//! anything a duty raises) rolls that transaction back and is logged once
//! with its SQLSTATE, the pass runs again next tick, and the worker never
//! restarts because of it. A pass first takes a share lock on the extension,
//! so that it and a DROP EXTENSION take turns instead of deadlocking
//! ([`hold_extension`]). Inside a pass each duty is its own
//! subtransaction, so one bad row never stops the others. Between passes a
//! worker shows `state = 'idle'` in pg_stat_activity, so monitoring does not
//! count it as busy and scripts that end long-active sessions leave it be.
//!
//! (The notifier in `wakeup.rs` is a third worker, driven by its latch.)

use crate::gucs;
use crate::launcher::{self, Role};
use crate::shared::Db;
use pgrx::bgworkers::*;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;
use std::time::{Duration, Instant};

/// One service: its name, and the SQL of one pass, which takes the batch
/// size and returns jsonb with "more" (run again at once) and optionally
/// "next_in_ms" (sleep at most that long).
struct Service {
    role: Role,
    name: &'static str,
    app_name: &'static CStr,
    pass_sql: &'static str,
    batch: i32,
    /// The longest sleep between passes, if shorter than `queue.tick`.
    max_sleep: Option<Duration>,
    /// This service keeps the job counters of its database: it publishes the
    /// database, reports its ticks, and after the passes of a tick (and once
    /// more before exiting) runs STATS_PASS_SQL in a transaction of its own.
    keeps_counters: bool,
}

/// The longest a pass waits for a lock, unless `lock_timeout` is set.
const SERVICE_LOCK_TIMEOUT_SQL: &str = "SELECT pg_catalog.set_config('lock_timeout', '2s', true) \
     WHERE pg_catalog.current_setting('lock_timeout') = '0'";

/// The counters' duty (sql/stats.sql): recount after a start, then flush.
const STATS_PASS_SQL: &str = "SELECT queue.stats_pass()";

const MAINTENANCE: Service = Service {
    role: Role::Maintenance,
    name: "queue maintenance",
    app_name: c"queue maintenance",
    pass_sql: "SELECT queue.maintenance_pass($1)",
    batch: 1000,
    max_sleep: None,
    keeps_counters: true,
};

const SCHEDULER: Service = Service {
    role: Role::Scheduler,
    name: "queue scheduler",
    app_name: c"queue scheduler",
    pass_sql: "SELECT queue.scheduler_pass($1)",
    batch: 100,
    max_sleep: Some(Duration::from_secs(1)),
    keeps_counters: false,
};

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn queue_maintenance_main(arg: pg_sys::Datum) {
    run(&MAINTENANCE, arg);
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn queue_scheduler_main(arg: pg_sys::Datum) {
    run(&SCHEDULER, arg);
}

/// The loop every service shares. `arg` is the database the launcher
/// started it for.
fn run(service: &Service, arg: pg_sys::Datum) -> ! {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    launcher::connect(arg);
    unsafe {
        pg_sys::pgstat_report_appname(service.app_name.as_ptr());
    }
    let Some(db) = launcher::enter(service.role) else {
        // No extension here, no slot, or the role is taken: nothing to do.
        unsafe { pg_sys::proc_exit(0) };
    };
    if service.keeps_counters {
        crate::stats::publish_served_database(db);
    }
    let database = BackgroundWorker::transaction(launcher::database_name);
    log!("{}: started for database \"{database}\"", service.name);

    let mut sleep = tick(service, None);
    // The first wake runs a pass, whatever woke it.
    let mut due = Instant::now();
    let mut early_after = Instant::now();
    set_idle();
    while BackgroundWorker::wait_latch(Some(sleep)) && !launcher::should_stop(db) {
        if BackgroundWorker::sighup_received() {
            unsafe {
                pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
            }
            // A new queue.tick (or anything else) applies from a pass now.
            due = Instant::now();
        }
        // Woken before the tick: a commit found the counters' table half
        // full (src/stats.rs), so flush now rather than let keys spill, at
        // most every EARLY_FLUSH_GAP; the other duties keep their tick.
        // (WaitLatch counts whole milliseconds: a wake less than one before
        // the tick is the tick.)
        let now = Instant::now();
        if service.keeps_counters && due.saturating_duration_since(now) >= Duration::from_millis(1) {
            if crate::stats::early_flush_asked(db) {
                if now >= early_after {
                    run_after(service);
                    early_after = Instant::now() + EARLY_FLUSH_GAP;
                } else {
                    crate::stats::ask_early_flush_again(db);
                    sleep = (early_after - now).min(due - now).max(Duration::from_millis(1));
                    continue;
                }
            }
            sleep = due.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            continue;
        }
        match run_passes(service, db) {
            Some(next) => sleep = next,
            None => {
                // The extension is gone from this database.
                launcher::retire(db);
                break;
            }
        }
        due = Instant::now() + sleep;
    }

    run_after(service);
    log!("{}: shutting down for database \"{database}\"", service.name);
    unsafe {
        pg_sys::proc_exit(0);
    }
}

/// The shortest time between two early flushes of the counters: a table
/// kept full by many queues then costs the maintenance worker a flush every
/// 50 ms at most, where the spills it saves cost every commit an upsert.
const EARLY_FLUSH_GAP: Duration = Duration::from_millis(50);

/// The sleep before the next pass: `queue.tick`, shortened by the service's
/// own limit and by what the last pass asked for.
fn tick(service: &Service, asked_ms: Option<u64>) -> Duration {
    let mut d = Duration::from_millis(gucs::TICK_MS.get().max(10) as u64);
    if let Some(max) = service.max_sleep {
        d = d.min(max);
    }
    if let Some(ms) = asked_ms {
        d = d.min(Duration::from_millis(ms.max(1)));
    }
    d
}

/// Passes, one transaction each, until the service has no more to do or a
/// shutdown is asked for. Returns how long to sleep; None when the
/// maintenance service finds the extension gone.
fn run_passes(service: &Service, db: Db) -> Option<Duration> {
    loop {
        set_activity(c"running a pass");
        let mut gone = false;
        let result = guarded(service.name, "a pass", || {
            if !hold_extension() {
                gone = true;
                return Ok(None);
            }
            // A pass serves every queue of the database, so it must not wait
            // without end for a lock one session holds (an open transaction
            // whose rows or batch a duty's cascade must update): past the
            // limit the pass fails, is logged, and runs again next tick. The
            // duties skip what they know may be held (serial groups' locks,
            // locked rows) without waiting; this bounds the rest. A
            // lock_timeout the administrator set is kept.
            Spi::run(SERVICE_LOCK_TIMEOUT_SQL)?;
            Spi::get_one_with_args::<pgrx::JsonB>(service.pass_sql, &[service.batch.into()]).map(|j| j.map(|j| j.0))
        })
        .flatten();
        if gone && service.role == Role::Maintenance {
            set_idle();
            return None;
        }
        if service.keeps_counters && result.is_some() {
            crate::stats::note_tick(db);
        }
        set_idle();
        let more = result.as_ref().and_then(|r| r.get("more")).and_then(|m| m.as_bool()).unwrap_or(false);
        if !more || BackgroundWorker::sigterm_received() {
            let asked = result.as_ref().and_then(|r| r.get("next_in_ms")).and_then(|m| m.as_u64());
            run_after(service);
            return Some(tick(service, asked));
        }
        pg_sys::check_for_interrupts!();
    }
}

/// The counters' pass, in a transaction of its own, for the service that
/// keeps them.
fn run_after(service: &Service) {
    if !service.keeps_counters {
        return;
    }
    guarded(service.name, "the counters' flush", || {
        if hold_extension() {
            Spi::run(STATS_PASS_SQL)?;
        }
        Ok(())
    });
}

/// How a duty failed lately: its last message, when it was last logged, and
/// how often it failed since.
struct Failing {
    message: String,
    logged: Instant,
    since_logged: u32,
    total: u64,
}

thread_local! {
    /// Failing duties of this worker process, by duty.
    static FAILING: RefCell<HashMap<&'static str, Failing>> = RefCell::new(HashMap::new());
}

/// Run `duty` in a transaction of its own under an error boundary, the way
/// PostgresMain handles an ERROR: the transaction is rolled back and the
/// worker goes on. Returns None when it failed (an SPI error or any ERROR).
/// A failure is logged once with its SQLSTATE; the same failure again is
/// logged at most once a minute, with how often it happened, and the first
/// success after failures says so.
pub fn guarded<T>(
    worker: &'static str,
    duty: &'static str,
    f: impl FnOnce() -> Result<T, pgrx::spi::Error>,
) -> Option<T> {
    let caught = std::panic::AssertUnwindSafe(f);
    let outcome = PgTryBuilder::new(move || {
        BackgroundWorker::transaction(move || {
            // The whole wrapper moves in (not only its field), so the closure stays UnwindSafe.
            let duty = caught;
            match (duty.0)() {
                Ok(v) => Ok(v),
                // An SPI error that did not raise: roll back like an ERROR.
                Err(e) => Err((String::from("XX000"), e.to_string())),
            }
        })
        .map_err(|e| {
            unsafe { pg_sys::AbortCurrentTransaction() };
            e
        })
    })
    .catch_others(|e| {
        unsafe { pg_sys::AbortCurrentTransaction() };
        let report = match &e {
            CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r,
            CaughtError::RustPanic { ereport, .. } => ereport,
        };
        Err((sqlstate(report.sql_error_code()), report.message().to_string()))
    })
    .execute();
    note_outcome(worker, duty, outcome.as_ref().err());
    outcome.ok()
}

/// Log a duty's failure or recovery (see [`guarded`]).
fn note_outcome(worker: &str, duty: &'static str, error: Option<&(String, String)>) {
    FAILING.with(|failing| {
        let mut failing = failing.borrow_mut();
        match error {
            None => {
                if let Some(f) = failing.remove(duty) {
                    log!("{worker}: {duty} succeeds again after {} failures", f.total);
                }
            }
            Some((state, message)) => {
                let text = format!("{message} (SQLSTATE {state})");
                match failing.get_mut(duty) {
                    Some(f) if f.message == text && f.logged.elapsed() < Duration::from_secs(60) => {
                        f.since_logged += 1;
                        f.total += 1;
                    }
                    Some(f) if f.message == text => {
                        warning!(
                            "{worker}: {duty} still fails ({} times in the last minute): {text}",
                            f.since_logged + 1
                        );
                        f.logged = Instant::now();
                        f.since_logged = 0;
                        f.total += 1;
                    }
                    previous => {
                        let total = previous.map(|f| f.total).unwrap_or(0) + 1;
                        warning!("{worker}: {duty} failed: {text}; it runs again at the next tick");
                        failing.insert(duty, Failing { message: text, logged: Instant::now(), since_logged: 0, total });
                    }
                }
            }
        }
    });
}

/// The five-character SQLSTATE of an error code.
fn sqlstate(code: pgrx::PgSqlErrorCode) -> String {
    let mut packed = code as i32;
    (0..5)
        .map(|_| {
            let c = ((packed & 0x3F) as u8 + b'0') as char;
            packed >>= 6;
            c
        })
        .collect()
}

/// Whether the extension is installed, holding a share lock on it until the
/// transaction ends: what a pass does first. DROP EXTENSION locks the
/// extension itself (exclusively) before any of its tables, so a pass that
/// holds this lock cannot deadlock with it: the DROP waits for the pass's
/// transaction, or the pass waits for the DROP holding nothing of the
/// extension's and then finds it gone. Without it, a pass holding one of the
/// tables and asking for another met a DROP that held the second and asked
/// for the first: "deadlock detected", and the DROP failed (seen in CI).
///
/// A DROP and a CREATE EXTENSION committed together (or one right after the
/// other) leave a new installation behind the lock the pass waited on: the
/// pass then holds the new one instead, and the services go on serving it,
/// as they do when no pass was waiting at that moment. Retiring them would
/// only restart them, and the new installation's first tallies and
/// wake-ups would go into a slot about to be freed. False only when no
/// installation is there (or it kept changing under three tries).
fn hold_extension() -> bool {
    for _ in 0..3 {
        let Some(oid) = extension_oid() else {
            return false;
        };
        unsafe {
            pg_sys::LockDatabaseObject(pg_sys::ExtensionRelationId, oid, 0, pg_sys::AccessShareLock as pg_sys::LOCKMODE)
        };
        // The lock also took in what committed while it waited (the catalog
        // caches are current again): a DROP that ran meanwhile shows here.
        if extension_oid() == Some(oid) {
            return true;
        }
    }
    false
}

/// The extension's OID in this database, if it is installed.
fn extension_oid() -> Option<pg_sys::Oid> {
    let oid = unsafe { pg_sys::get_extension_oid(c"queue".as_ptr(), true) };
    (oid != pg_sys::InvalidOid).then_some(oid)
}

/// Whether `CREATE EXTENSION queue` has run in this database.
pub fn extension_installed() -> bool {
    extension_oid().is_some()
}

/// Show what the service is doing in pg_stat_activity.query.
pub fn set_activity(what: &'static CStr) {
    unsafe {
        pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, what.as_ptr());
    }
}

/// Show the worker as idle between passes (state 'idle', not 'active').
pub fn set_idle() {
    unsafe {
        pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_IDLE, c"waiting for the next tick".as_ptr());
    }
}
