//! The maintenance background worker.
//!
//! One process per cluster, connected to the database named by
//! `queue.database`. Every `queue.tick` it runs `queue.maintenance_pass()`
//! (promote due jobs, expire leases, delete old final jobs), the very code
//! `queue_tick()` runs by hand, committing after each bounded batch so no pass
//! holds many row locks for long. It waits quietly while the extension is not
//! installed, re-reads the configuration on SIGHUP, and on SIGTERM finishes
//! its batch and exits; the postmaster starts it again after a crash or a
//! `pg_terminate_backend`.

use crate::gucs;
use pgrx::bgworkers::*;
use pgrx::prelude::*;
use std::time::Duration;

/// Name shown as `backend_type` and `application_name` in pg_stat_activity.
const WORKER_NAME: &str = "queue maintenance";

/// Rows each duty handles per transaction.
const BATCH_ROWS: i32 = 1000;

/// Register the worker with the postmaster. Only possible while
/// `shared_preload_libraries` is being processed.
pub fn register_worker() {
    BackgroundWorkerBuilder::new(WORKER_NAME)
        .set_type(WORKER_NAME)
        .set_function("queue_maintenance_main")
        .set_library("queue")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(1)))
        .load();
}

/// The worker's entry point, called by the postmaster in a new process.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn queue_maintenance_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);

    let database = gucs::database_name();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    unsafe {
        pg_sys::pgstat_report_appname(c"queue maintenance".as_ptr());
    }
    log!("{WORKER_NAME}: started for database \"{database}\"");

    while BackgroundWorker::wait_latch(Some(tick_interval())) {
        if BackgroundWorker::sighup_received() {
            unsafe {
                pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
            }
        }
        run_one_tick();
    }

    log!("{WORKER_NAME}: shutting down");
    // Exit code 1 asks the postmaster for a restart, which it honours unless
    // the server itself is shutting down: a terminated worker comes back.
    unsafe {
        pg_sys::proc_exit(1);
    }
}

/// The configured tick, read fresh each loop so SIGHUP changes apply.
fn tick_interval() -> Duration {
    Duration::from_millis(gucs::TICK_MS.get().max(10) as u64)
}

/// One tick: maintenance passes, one transaction each, until no duty has
/// more to do or a shutdown is requested.
fn run_one_tick() {
    loop {
        set_activity(c"maintenance pass");
        let more = BackgroundWorker::transaction(|| {
            if !extension_installed() {
                return false;
            }
            Spi::get_one_with_args::<bool>(
                "SELECT (queue.maintenance_pass($1) ->> 'more')::boolean",
                &[BATCH_ROWS.into()],
            )
            .ok()
            .flatten()
            .unwrap_or(false)
        });
        set_activity(c"idle");
        if !more || BackgroundWorker::sigterm_received() {
            break;
        }
        pg_sys::check_for_interrupts!();
    }
}

/// Whether `CREATE EXTENSION queue` has run in this database. Until it has,
/// the worker idles.
fn extension_installed() -> bool {
    Spi::get_one::<bool>("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'queue')")
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Show what the worker is doing in pg_stat_activity.query.
fn set_activity(what: &'static std::ffi::CStr) {
    unsafe {
        pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, what.as_ptr());
    }
}
