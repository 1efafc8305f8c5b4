//! Whether any queue of this database has push defaults (`queue_configure`),
//! so that a push can skip reading `queue.queue_settings` when none does.
//!
//! Reading the queue's row on every push was a measurable part of a push
//! (bench/README.md, Workflows), and almost no database sets defaults. The answer lives in the
//! database's shared-memory slot as one of three states:
//!
//! - `UNKNOWN` (0, a fresh or reassigned slot, or after `CREATE EXTENSION`):
//!   pushes read the table, and the
//!   first to find no defaults records `NONE`, by compare-and-swap, so that it
//!   never overwrites `SOME`;
//! - `NONE`: pushes skip the table;
//! - `SOME`: pushes read their queue's row. `queue_configure` stores it before
//!   its change commits, so any push that could see the change reads it, and
//!   again when it commits. It is
//!   never taken back while the slot lives: a database that once had defaults
//!   only pays the read it paid before.
//!
//! A `queue_configure` may run where no slot is yet (the database is not
//! served for a moment: after a start, between two installations), and its
//! stores then reach nothing. Two rules keep a push from recording `NONE`
//! past it: a push records it only from a transaction that began after the
//! slot became `UNKNOWN` (its snapshot then sees every configure that
//! committed before), and a configure that commits while the slot exists
//! stores `SOME` at its commit, over any `NONE` recorded meanwhile by a push
//! whose snapshot was older.
//!
//! A database the launcher does not serve has no slot, and its pushes always
//! read the table.

use crate::shared;
use pgrx::prelude::*;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};

const UNKNOWN: u32 = 0;
const NONE: u32 = 1;
const SOME: u32 = 2;

/// The state, in the database's slot (zero, `UNKNOWN`, when the slot is new).
#[repr(C)]
pub struct PushDefaults {
    state: AtomicU32,
    /// When `CREATE EXTENSION` last made the state `UNKNOWN` (TimestampTz).
    forgotten_at: AtomicI64,
}

thread_local! {
    /// This transaction called `queue_configure`: store `SOME` at commit.
    static CONFIGURED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn state() -> Option<&'static AtomicU32> {
    shared::this_db().map(|db| &db.slot().push_defaults.state)
}

/// SQL `queue.push_defaults_absent()`: true when no queue of this database has
/// push defaults, known without reading a table.
#[pg_extern(stable, parallel_safe, schema = "queue")]
fn push_defaults_absent() -> bool {
    state().is_some_and(|s| s.load(Ordering::SeqCst) == NONE)
}

/// SQL `queue.push_mode()`: what a push must do besides the plain insert, in
/// one call: bit 1 when an access rule exists (`queue.rules_exist()`, the
/// caller may be confined), bit 2 when some queue may have push defaults. 0
/// for almost every push. One call instead of two, and one test of its value
/// on the plain path: `queue_push` is a transaction of its own more often than
/// not, and plpgsql prepares each of its simple expressions again in every
/// transaction.
#[pg_extern(stable, schema = "queue")]
pub(crate) fn push_mode() -> i32 {
    let confined = if crate::access::rules_exist() { 1 } else { 0 };
    let defaults = if push_defaults_absent() { 0 } else { 2 };
    confined | defaults
}

/// SQL `queue.push_defaults_none_found()`: a push read the table and found no
/// defaults; record that, unless a `queue_configure` has said otherwise.
/// Only from a transaction that began after the state became `UNKNOWN`
/// (see the module comment); an older one leaves it to a later push.
#[pg_extern(volatile, parallel_unsafe, schema = "queue")]
fn push_defaults_none_found() {
    let Some(db) = shared::this_db() else { return };
    let slot = db.slot();
    let d = &slot.push_defaults;
    if d.state.load(Ordering::SeqCst) != UNKNOWN {
        return;
    }
    let since = slot.assigned_at.load(Ordering::SeqCst).max(d.forgotten_at.load(Ordering::SeqCst));
    if unsafe { pg_sys::GetCurrentTransactionStartTimestamp() } <= since {
        return;
    }
    let _ = d.state.compare_exchange(UNKNOWN, NONE, Ordering::SeqCst, Ordering::SeqCst);
}

/// SQL `queue.push_defaults_may_exist()`: called by `queue_configure`:
/// pushes read the table from now on.
#[pg_extern(volatile, parallel_unsafe, schema = "queue")]
fn push_defaults_may_exist() {
    if let Some(s) = state() {
        s.store(SOME, Ordering::SeqCst);
    }
    CONFIGURED.set(true);
}

/// SQL `queue.push_defaults_forget()`: called by `CREATE EXTENSION`. The slot
/// may hold the state of an earlier installation in this database (DROP
/// EXTENSION does not reach it), and restored rows may bring defaults: pushes
/// read the table again until one finds none.
#[pg_extern(volatile, parallel_unsafe, schema = "queue")]
fn push_defaults_forget() {
    if let Some(db) = shared::this_db() {
        let d = &db.slot().push_defaults;
        d.forgotten_at.store(unsafe { pg_sys::GetCurrentTimestamp() }, Ordering::SeqCst);
        d.state.store(UNKNOWN, Ordering::SeqCst);
    }
}

/// The end of a transaction: one that called `queue_configure` stores
/// `SOME` once more as it commits (or prepares), into the slot there is
/// now. Atomics only: it runs after the commit record.
pub(crate) fn at_transaction_end(event: pg_sys::XactEvent::Type) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_COMMIT | XACT_EVENT_PREPARE => {
            if CONFIGURED.replace(false) {
                if let Some(s) = state() {
                    s.store(SOME, Ordering::SeqCst);
                }
            }
        }
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => CONFIGURED.set(false),
        _ => {}
    }
}
