//! Entry points of released catalogs that this library no longer declares.
//!
//! Between installing a new build (and restarting) and running `ALTER
//! EXTENSION queue UPDATE`, the old catalog calls this library: every C
//! symbol a released install script names must be here, with the arguments
//! that release passes, or its functions stop working for that window
//! (docs/upgrades.md, rule 3). The upgrade test checks every symbol of
//! `sql/releases/` against this library and calls the old catalog's job
//! functions before the update. These carry no SQL (`sql = false`): the
//! current catalog does not have them, and the upgrade drops them.

use pgrx::prelude::*;

/// 0.1.0's `queue.check_push`, which its `queue_push` and
/// `queue_push_batch` call for every push. It took whether the payload was
/// missing where `check_push_args` takes the payload's size: a present
/// payload is passed as size 0 (0.1.0 had no payload size limit), a missing
/// one as NULL (the same 22004 as then). Every other check is today's.
#[pg_extern(stable, parallel_safe, sql = false)]
#[allow(clippy::too_many_arguments)]
fn check_push(
    queue: Option<&str>,
    serial_group: Option<&str>,
    payload_missing: Option<bool>,
    delay: Option<Interval>,
    run_at: Option<TimestampWithTimeZone>,
    max_attempts: Option<i32>,
    timeout: Option<Interval>,
    backoff_base: Option<Interval>,
    backoff_max: Option<Interval>,
    retry_delays: Option<Vec<Option<Interval>>>,
    dedupe_key: Option<&str>,
    priority: Option<i32>,
) -> TimestampWithTimeZone {
    let payload_size = (payload_missing == Some(false)).then_some(0);
    crate::validate::check_push_args(
        queue,
        serial_group,
        payload_size,
        delay,
        run_at,
        max_attempts,
        timeout,
        backoff_base,
        backoff_max,
        retry_delays,
        dedupe_key,
        priority,
    )
}
