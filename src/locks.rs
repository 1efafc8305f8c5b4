//! The extension's own transaction locks: a serial group's (src/serial_group.rs
//! gives its key) and the counters' (src/stats.rs), taken under lock tags that
//! no SQL function can name.
//!
//! They are advisory locks of the user lock method, as `pg_advisory_xact_lock`
//! takes, so the deadlock detector, `pg_locks` and the release at the end of
//! the transaction treat them alike. But `locktag_field4`, which SQL's
//! advisory functions set to 1 (one bigint) or 2 (two ints), is 3 or 4 here.
//! A held key shows in `pg_locks` to anyone, and any role may call
//! `pg_advisory_lock`: under the SQL tags, a role that read a group's key
//! there could take it first and hold that group (its pushes, acks and
//! elections wait), or hold the counters' lock and stall every `queue_stats`
//! and the flush. Under these tags only this library takes them.

use pgrx::prelude::*;

/// `locktag_field4` of a serial group's lock.
const GROUP_SPACE: u16 = 3;
/// `locktag_field4` of the counters' lock.
const COUNTERS_SPACE: u16 = 4;
/// The counters' single key (ASCII "queu", then 1).
const COUNTERS_KEY: i64 = (0x7175_6575 << 32) | 1;

/// Take the lock `key` of `space` for this transaction, waiting unless
/// `wait` is false; whether it is held.
fn acquire(space: u16, key: i64, shared: bool, wait: bool) -> bool {
    let tag = pg_sys::LOCKTAG {
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: (key >> 32) as u32,
        locktag_field3: key as u32,
        locktag_field4: space,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    };
    let mode = if shared { pg_sys::ShareLock } else { pg_sys::ExclusiveLock } as pg_sys::LOCKMODE;
    let result = unsafe { pg_sys::LockAcquire(&tag, mode, false, !wait) };
    result != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL
}

/// SQL: take serial group lock `key` (queue.group_lock_key) for this
/// transaction, waiting for it.
#[pg_extern(volatile, strict, parallel_unsafe, schema = "queue")]
fn group_lock(key: i64) {
    acquire(GROUP_SPACE, key, false, true);
}

/// SQL: take serial group lock `key` if it is free; whether it is held.
#[pg_extern(volatile, strict, parallel_unsafe, schema = "queue")]
fn group_try_lock(key: i64) -> bool {
    acquire(GROUP_SPACE, key, false, false)
}

/// SQL: take the counters' lock for this transaction: shared by readers,
/// exclusive for the flush and the recount (src/stats.rs).
#[pg_extern(volatile, strict, parallel_unsafe, schema = "queue")]
fn counters_lock(shared: bool) {
    acquire(COUNTERS_SPACE, COUNTERS_KEY, shared, true);
}

/// SQL: take the counters' lock exclusively if it is free; whether it is held.
#[pg_extern(volatile, parallel_unsafe, schema = "queue")]
fn counters_try_lock() -> bool {
    acquire(COUNTERS_SPACE, COUNTERS_KEY, false, false)
}
