//! `queue`: Postgres itself as the job queue.
//!
//! This file holds only module lines and the entry points. The hot path
//! (push, claim, ack, fail) is readable SQL in `sql/`; Rust earns its place in
//! validation and limits, access patterns, hashing, backoff arithmetic, cron parsing, the shared-memory
//! wake-up path, job counters and lease book, and the background workers.

use pgrx::prelude::*;

mod access;
mod backoff;
mod compat;
mod cron;
mod gucs;
mod launcher;
mod leases;
mod locks;
mod push;
mod scheduler;
mod serial_group;
mod services;
mod settings;
mod shared;
mod stats;
mod validate;
mod wakeup;

::pgrx::pg_module_magic!(name, version);

/// Schema `queue` holds the internal tables and helpers; the public
/// `queue_*` functions live in the extension's own schema.
#[pg_schema]
mod queue {}

// Order matters: the schema first, then the tables, then the SQL functions that
// use both the tables and the Rust helpers, then grants and comments.
extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!("../sql/jobs.sql", name = "jobs", requires = ["schema"]);
extension_sql_file!(
    "../sql/access.sql",
    name = "access",
    requires = [
        "jobs",
        access::caller,
        access::rule_binds,
        access::session_role_for,
        access::intersect_patterns,
        access::access_allows,
        access::access_allows_group,
        access::check_access_pattern,
        access::rules_exist
    ]
);
extension_sql_file!(
    "../sql/core.sql",
    name = "core",
    requires = [
        "access",
        validate::check_queue_name,
        validate::check_group_name,
        serial_group::group_lock_key,
        locks::group_lock,
        locks::group_try_lock,
        locks::counters_lock,
        locks::counters_try_lock,
        backoff::retry_delay,
        validate::check_push_args,
        validate::check_span,
        validate::check_size,
        validate::check_key,
        gucs::keep_completed,
        validate::check_count,
        validate::check_queue_filter,
        settings::push_defaults_absent,
        settings::push_mode,
        settings::push_defaults_none_found,
        settings::push_defaults_may_exist,
        wakeup::wake,
        wakeup::note_sleeper,
        wakeup::wait_register,
        wakeup::wait_sleep,
        wakeup::wait_done,
        stats::tally,
        stats::pushed,
        leases::leases_ready,
        leases::leases_due,
        leases::leased_ids,
        leases::lease_settle
    ]
);
extension_sql_file!(
    "../sql/maintenance.sql",
    name = "maintenance",
    requires = [
        "core",
        leases::leases_rebuild_due,
        leases::leases_begin_rebuild,
        leases::lease_load,
        leases::leases_end_rebuild,
        leases::leases_reset
    ]
);
extension_sql_file!("../sql/operations.sql", name = "operations", requires = ["maintenance"]);
extension_sql_file!("../sql/dependencies.sql", name = "dependencies", requires = ["operations"]);
extension_sql_file!("../sql/batches.sql", name = "batches", requires = ["dependencies"]);
extension_sql_file!(
    "../sql/scheduler.sql",
    name = "scheduler",
    requires = [
        "core",
        scheduler::schedule_kind,
        scheduler::schedule_next,
        scheduler::schedule_after_run,
        scheduler::schedule_upcoming
    ]
);
extension_sql_file!(
    "../sql/stats.sql",
    name = "stats",
    requires = [
        "maintenance",
        "operations",
        "dependencies",
        "batches",
        stats::stats_unflushed,
        stats::stats_take,
        stats::stats_recount_needed,
        stats::stats_forget_gauges,
        stats::stats_health,
        stats::stats_forget_database,
        leases::leases_health,
        launcher::announce_database,
        launcher::service_problem,
        settings::push_defaults_forget
    ]
);
extension_sql_file!("../sql/security.sql", name = "security", finalize);

/// Called once per process that loads the library. When loaded through
/// `shared_preload_libraries` it also reserves the shared memory (wake-up
/// path, counters, lease book: src/shared.rs), installs the utility hook
/// that makes way for DROP DATABASE, and registers the launcher, which
/// starts the services of every database that has the extension.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::register();
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        shared::init_shared_memory();
        launcher::install_utility_hook();
        launcher::register_worker();
    }
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries='queue'"]
    }
}
