//! The lease book: which jobs are processing, and until when, kept in
//! shared memory instead of an index.
//!
//! The maintenance pass must find the processing jobs whose lease ran out,
//! and `queue_workers`, `queue_reap_workers` and `queue_health` must find
//! the processing jobs of a worker, without reading the whole jobs table.
//! A partial index on `lease_until` answered both, but every claim then
//! wrote one more index entry than a claim needs: 7% of the throughput of
//! a batch drain, measured with the index dropped (bench/layers/ab.sh). So
//! in the database the background workers serve, the leases live here:
//!
//! * Every SQL function that moves a job into or out of `processing`, or
//!   moves its lease, passes the job's id, attempt and lease to
//!   `queue.tally` (src/stats.rs), which hands them to [`record`]. They are
//!   kept in this backend, per subtransaction, and written into the book by
//!   the commit callback, after the commit is visible. A rolled back claim
//!   or ack leaves the book as it was.
//! * The book maps a job id to (attempt, lease end). Attempts order the
//!   writes of one job: a note of an older claim arriving late never hides
//!   a newer claim, and the end of an older claim never removes a newer
//!   one. For one attempt the book keeps the earliest lease it was told,
//!   so an entry is never later than the job's lease: an extended lease is
//!   only looked at early and settled to the row's value (`settle`).
//! * The book may hold entries of jobs that are no longer processing (their
//!   end was not seen, e.g. a prepared transaction). Those are harmless:
//!   the expiry pass reads the row of every due entry before it acts, and
//!   drops the entry when the row says so. What must never happen is a
//!   processing job without an entry. Hence the book is only used when it
//!   is complete:
//!     - after every server start (shared memory is empty) and every CREATE
//!       EXTENSION, the maintenance pass rebuilds it: clear, then one scan
//!       of the processing jobs with a snapshot taken after the clear (a
//!       claim that commits later writes its own entry); then it is ready;
//!     - when a note finds no room (more than `queue.max_leases` jobs
//!       processing) the book is overflowed until a rebuild fits;
//!     - a PREPARE TRANSACTION that moved leases marks it for a rebuild;
//!     - and, as a safety net, it is rebuilt every ten minutes.
//!
//!   Whenever it is not ready, the callers scan the jobs table for
//!   processing jobs instead: slower at depth, never wrong.
//! * Only the served database (`queue.database`, library preloaded) has a
//!   book. Elsewhere `record` does nothing and the callers always scan.

use pgrx::prelude::*;
use std::cell::{Cell, RefCell};
use crate::stats::database;
use std::ffi::CStr;

/// Slots of the book: a power of two (the hash is the top bits).
const SLOT_BITS: u32 = 18;
const SLOTS: usize = 1 << SLOT_BITS;
/// At most this many entries, so that linear probes stay short.
pub const MAX_ENTRIES: usize = SLOTS / 4 * 3;
/// The safety-net rebuild, in microseconds (ten minutes).
const REBUILD_EVERY_US: i64 = 600 * 1_000_000;
/// An overflowed book is rebuilt at most this often (ten seconds): each
/// try scans the jobs table.
const RETRY_OVERFLOWED_US: i64 = 10 * 1_000_000;
const SHMEM_NAME: &CStr = c"queue_leases";

/// The book in shared memory. All zeroes is an empty, unusable book.
#[repr(C)]
pub struct Book {
    /// The database whose leases this holds; 0 before the first rebuild.
    database: u32,
    /// Complete since the last rebuild (see the module comment).
    ready: bool,
    /// A note found no room since the last rebuild.
    overflowed: bool,
    /// Entries in use.
    used: usize,
    /// When the last rebuild started (TimestampTz), 0 if never.
    built_at: i64,
    /// Job ids; 0 marks a free slot (job ids start at 1).
    ids: [i64; SLOTS],
    attempts: [i32; SLOTS],
    /// Lease ends (TimestampTz).
    leases: [i64; SLOTS],
}

/// One change of the book, applied at commit in the order recorded.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Change {
    /// The job is processing in `attempt` with a lease until `lease`.
    Note { id: i64, attempt: i32, lease: i64 },
    /// The job's `attempt` is over (it left processing).
    Forget { id: i64, attempt: i32 },
    /// The expiry pass read the row of an entry that was due as
    /// (`attempt`, `lease`): it is processing as `now`, or not at all.
    Settle { id: i64, attempt: i32, lease: i64, now: Option<(i32, i64)> },
}

impl Book {
    fn home(id: i64) -> usize {
        ((id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SLOT_BITS)) as usize
    }

    fn find(&self, id: i64) -> Option<usize> {
        let mut i = Self::home(id);
        loop {
            match self.ids[i] {
                0 => return None,
                x if x == id => return Some(i),
                _ => i = (i + 1) % SLOTS,
            }
        }
    }

    /// Free slot `i` and move later entries of its probe run back, so that
    /// every entry stays reachable from its home slot (deletion without
    /// tombstones for linear probing).
    fn remove_at(&mut self, mut i: usize) {
        self.ids[i] = 0;
        self.used -= 1;
        let mut j = i;
        loop {
            j = (j + 1) % SLOTS;
            if self.ids[j] == 0 {
                return;
            }
            let home = Self::home(self.ids[j]);
            // Entry j may move to i unless its home lies cyclically in (i, j].
            let stays = if i <= j { i < home && home <= j } else { i < home || home <= j };
            if !stays {
                self.ids[i] = self.ids[j];
                self.attempts[i] = self.attempts[j];
                self.leases[i] = self.leases[j];
                self.ids[j] = 0;
                i = j;
            }
        }
    }

    /// Apply one change. False when a note found no room (`limit` entries).
    fn apply(&mut self, change: Change, limit: usize) -> bool {
        match change {
            Change::Note { id, attempt, lease } => {
                if id <= 0 {
                    return true;
                }
                if let Some(i) = self.find(id) {
                    if self.attempts[i] < attempt {
                        self.attempts[i] = attempt;
                        self.leases[i] = lease;
                    } else if self.attempts[i] == attempt {
                        self.leases[i] = self.leases[i].min(lease);
                    }
                    return true;
                }
                if self.used >= limit.min(MAX_ENTRIES) {
                    return false;
                }
                let mut i = Self::home(id);
                while self.ids[i] != 0 {
                    i = (i + 1) % SLOTS;
                }
                self.ids[i] = id;
                self.attempts[i] = attempt;
                self.leases[i] = lease;
                self.used += 1;
                true
            }
            Change::Forget { id, attempt } => {
                if let Some(i) = self.find(id) {
                    if self.attempts[i] <= attempt {
                        self.remove_at(i);
                    }
                }
                true
            }
            Change::Settle { id, attempt, lease, now } => {
                if let Some(i) = self.find(id) {
                    if self.attempts[i] == attempt && self.leases[i] == lease {
                        match now {
                            None => self.remove_at(i),
                            Some((a, l)) => {
                                self.attempts[i] = a;
                                self.leases[i] = l;
                            }
                        }
                    }
                }
                true
            }
        }
    }

    fn clear(&mut self) {
        self.ids.fill(0);
        self.used = 0;
    }

    /// Entries whose lease ends before `before`, earliest first, at most `max`.
    fn due(&self, before: i64, max: usize) -> Vec<(i64, i32, i64)> {
        let mut due: Vec<(i64, i32, i64)> = (0..SLOTS)
            .filter(|&i| self.ids[i] != 0 && self.leases[i] < before)
            .map(|i| (self.ids[i], self.attempts[i], self.leases[i]))
            .collect();
        due.sort_unstable_by_key(|&(id, _, lease)| (lease, id));
        due.truncate(max);
        due
    }

    fn ids(&self) -> Vec<i64> {
        self.ids.iter().copied().filter(|&id| id != 0).collect()
    }
}

// ---------------------------------------------------------------------------
// Shared memory: the book and its LWLock, set up by hooks of our own rather
// than pgrx's PgLwLock, whose initial value is built on the stack (the book
// is 5 MB).
// ---------------------------------------------------------------------------

static mut BOOK: *mut Book = std::ptr::null_mut();
static mut LOCK: *mut pg_sys::LWLock = std::ptr::null_mut();
static mut PREV_SHMEM_REQUEST: pg_sys::shmem_request_hook_type = None;
static mut PREV_SHMEM_STARTUP: pg_sys::shmem_startup_hook_type = None;

/// Reserve the book. Only from `_PG_init` while preloading.
pub fn init_shared_memory() {
    unsafe {
        PREV_SHMEM_REQUEST = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(shmem_request);
        PREV_SHMEM_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(shmem_startup);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn shmem_request() {
    unsafe {
        if let Some(previous) = PREV_SHMEM_REQUEST {
            previous();
        }
        pg_sys::RequestAddinShmemSpace(std::mem::size_of::<Book>());
        pg_sys::RequestNamedLWLockTranche(SHMEM_NAME.as_ptr(), 1);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn shmem_startup() {
    unsafe {
        if let Some(previous) = PREV_SHMEM_STARTUP {
            previous();
        }
        // AddinShmemInitLock: the 22nd of the main LWLocks (lwlocknames.h).
        let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock;
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let book = pg_sys::ShmemInitStruct(SHMEM_NAME.as_ptr(), std::mem::size_of::<Book>(), &mut found).cast::<Book>();
        if !found {
            std::ptr::write_bytes(book, 0, 1);
        }
        BOOK = book;
        LOCK = &raw mut (*pg_sys::GetNamedLWLockTranche(SHMEM_NAME.as_ptr())).lock;
        pg_sys::LWLockRelease(init_lock);
    }
}

/// Run `f` on the book under its lock (exclusive or shared). None when the
/// library was not preloaded (the startup hook never set the book up). `f`
/// must not raise an error: it runs in commit callbacks too.
fn with_book<R>(exclusive: bool, f: impl FnOnce(&mut Book) -> R) -> Option<R> {
    unsafe {
        let (book, lock) = (BOOK, LOCK);
        if book.is_null() || lock.is_null() {
            return None;
        }
        let mode = if exclusive { pg_sys::LWLockMode::LW_EXCLUSIVE } else { pg_sys::LWLockMode::LW_SHARED };
        pg_sys::LWLockAcquire(lock, mode);
        let result = f(&mut *book);
        pg_sys::LWLockRelease(lock);
        Some(result)
    }
}

fn now() -> i64 {
    unsafe { pg_sys::GetCurrentTimestamp() }
}

fn limit() -> usize {
    crate::gucs::MAX_LEASES.get().max(1) as usize
}

// ---------------------------------------------------------------------------
// This backend's changes, applied at commit
// ---------------------------------------------------------------------------

thread_local! {
    static CHANGES: RefCell<Vec<(pg_sys::SubTransactionId, Change)>> = const { RefCell::new(Vec::new()) };
    static CALLBACKS_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

fn push(change: Change) {
    if !crate::stats::served() {
        return;
    }
    if !CALLBACKS_REGISTERED.get() {
        unsafe {
            pg_sys::RegisterXactCallback(Some(at_transaction_end), std::ptr::null_mut());
            pg_sys::RegisterSubXactCallback(Some(at_subtransaction_end), std::ptr::null_mut());
        }
        CALLBACKS_REGISTERED.set(true);
    }
    let subxact = unsafe { pg_sys::GetCurrentSubTransactionId() };
    CHANGES.with(|c| c.borrow_mut().push((subxact, change)));
}

/// Called by `queue.tally` for a job that enters processing or moves its
/// lease (`lease` given, `to_processing`), or leaves processing.
pub fn record(id: i64, attempt: i32, lease: Option<TimestampWithTimeZone>, to_processing: bool) {
    if to_processing {
        if let Some(lease) = lease {
            push(Change::Note { id, attempt, lease: lease.into_inner() });
        }
    } else {
        push(Change::Forget { id, attempt });
    }
}

/// After commit: write this transaction's changes into the book, if it
/// holds this database. Must not raise an error (the commit is done).
fn apply_changes(changes: Vec<(pg_sys::SubTransactionId, Change)>) {
    let db = database();
    let limit = limit();
    with_book(true, |book| {
        if book.database != db {
            return;
        }
        for (_, change) in changes {
            if !book.apply(change, limit) {
                book.overflowed = true;
            }
        }
    });
}

#[pg_guard]
unsafe extern "C-unwind" fn at_transaction_end(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_COMMIT => {
            let changes = CHANGES.with(|c| std::mem::take(&mut *c.borrow_mut()));
            if !changes.is_empty() {
                apply_changes(changes);
            }
        }
        XACT_EVENT_PREPARE => {
            // The changes would take effect at COMMIT PREPARED, in some
            // other backend: the book cannot follow, so rebuild it.
            let had = CHANGES.with(|c| !std::mem::take(&mut *c.borrow_mut()).is_empty());
            if had {
                let db = database();
                with_book(true, |book| {
                    if book.database == db {
                        book.ready = false;
                    }
                });
            }
        }
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => CHANGES.with(|c| c.borrow_mut().clear()),
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn at_subtransaction_end(
    event: pg_sys::SubXactEvent::Type,
    subxact: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::SubXactEvent::*;
    match event {
        SUBXACT_EVENT_COMMIT_SUB => CHANGES.with(|c| {
            for (s, _) in c.borrow_mut().iter_mut().filter(|(s, _)| *s >= subxact) {
                *s = parent;
            }
        }),
        SUBXACT_EVENT_ABORT_SUB => CHANGES.with(|c| c.borrow_mut().retain(|(s, _)| *s < subxact)),
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// SQL
// ---------------------------------------------------------------------------

/// SQL `queue.leases_ready()`: whether the book holds every processing job
/// of this database, so that callers may read it instead of the table.
#[pg_extern(volatile, parallel_unsafe, schema = "queue")]
fn leases_ready() -> bool {
    let db = database();
    crate::stats::served() && with_book(false, |b| b.database == db && b.ready && !b.overflowed).unwrap_or(false)
}

/// SQL `queue.leases_due(before, max)`: the entries whose lease ends before
/// `before`, earliest first: candidates, each to be checked against its row.
#[pg_extern(volatile, strict, parallel_unsafe, schema = "queue")]
fn leases_due(
    before: TimestampWithTimeZone,
    max: i32,
) -> TableIterator<'static, (name!(id, i64), name!(attempt, i32), name!(lease_until, TimestampWithTimeZone))> {
    let db = database();
    let due = with_book(false, |b| if b.database == db { b.due(before.into_inner(), max.max(0) as usize) } else { Vec::new() })
        .unwrap_or_default();
    TableIterator::new(
        due.into_iter()
            .filter_map(|(id, attempt, lease)| TimestampWithTimeZone::try_from(lease).ok().map(|l| (id, attempt, l))),
    )
}

/// SQL `queue.leased_ids()`: every job id the book holds.
#[pg_extern(volatile, parallel_unsafe, schema = "queue")]
fn leased_ids() -> Vec<i64> {
    let db = database();
    with_book(false, |b| if b.database == db { b.ids() } else { Vec::new() }).unwrap_or_default()
}

/// SQL `queue.lease_settle(id, attempt, lease_until, row_attempt,
/// row_lease_until)`: the expiry pass read the row of a due entry. At
/// commit the entry, if unchanged since, takes the row's attempt and lease,
/// or goes when the row is not processing (row values NULL).
#[pg_extern(volatile, parallel_unsafe, schema = "queue")]
fn lease_settle(
    id: i64,
    attempt: i32,
    lease_until: TimestampWithTimeZone,
    row_attempt: Option<i32>,
    row_lease_until: Option<TimestampWithTimeZone>,
) {
    let now = row_attempt.zip(row_lease_until).map(|(a, l)| (a, l.into_inner()));
    push(Change::Settle { id, attempt, lease: lease_until.into_inner(), now });
}

/// SQL `queue.leases_rebuild_due()`: whether this pass should rebuild the
/// book: it serves this database and the book is not ready, overflowed for
/// a while, or due for its safety-net rebuild.
#[pg_extern(volatile, parallel_unsafe, schema = "queue")]
fn leases_rebuild_due() -> bool {
    if !crate::stats::served() {
        return false;
    }
    let (db, now) = (database(), now());
    with_book(false, |b| {
        b.database != db
            || !b.ready
            || (b.overflowed && now - b.built_at >= RETRY_OVERFLOWED_US)
            || now - b.built_at >= REBUILD_EVERY_US
    })
    .unwrap_or(false)
}

/// SQL `queue.leases_begin_rebuild()`: empty the book and make it this
/// database's, not ready. The caller then loads every processing job with
/// `queue.lease_load` in a later statement, whose snapshot is taken after
/// this: a claim that commits in between writes its own entry. Only in READ
/// COMMITTED (a transaction snapshot could predate the clear); returns
/// whether it began.
#[pg_extern(volatile, parallel_unsafe, schema = "queue")]
fn leases_begin_rebuild() -> bool {
    if !crate::stats::served() || unsafe { pg_sys::XactIsoLevel } != pg_sys::XACT_READ_COMMITTED as i32 {
        return false;
    }
    let (db, now) = (database(), now());
    with_book(true, |b| {
        b.clear();
        b.database = db;
        b.ready = false;
        b.overflowed = false;
        b.built_at = now;
    })
    .is_some()
}

/// SQL `queue.lease_load(id, attempt, lease_until)`: one processing job
/// found by the rebuild's scan, written at once.
#[pg_extern(volatile, strict, parallel_unsafe, schema = "queue")]
fn lease_load(id: i64, attempt: i32, lease_until: TimestampWithTimeZone) {
    let (db, limit) = (database(), limit());
    with_book(true, |b| {
        if b.database == db && !b.apply(Change::Note { id, attempt, lease: lease_until.into_inner() }, limit) {
            b.overflowed = true;
        }
    });
}

/// SQL `queue.leases_end_rebuild()`: the scan is over; the book is ready
/// unless it overflowed. Returns whether it is ready.
#[pg_extern(volatile, parallel_unsafe, schema = "queue")]
fn leases_end_rebuild() -> bool {
    let db = database();
    with_book(true, |b| {
        if b.database == db {
            b.ready = !b.overflowed;
        }
        b.database == db && b.ready
    })
    .unwrap_or(false)
}

/// SQL `queue.leases_reset()`: forget this database's book (CREATE
/// EXTENSION: job ids start again); the next pass rebuilds it.
#[pg_extern(volatile, parallel_unsafe, schema = "queue")]
fn leases_reset() {
    let db = database();
    with_book(true, |b| {
        if b.database == db {
            b.clear();
            b.database = 0;
            b.ready = false;
        }
    });
}

/// SQL `queue.leases_health()`: the book as queue_health shows it.
#[pg_extern(volatile, parallel_unsafe, schema = "queue")]
fn leases_health() -> TableIterator<
    'static,
    (
        name!(ready, bool),
        name!(overflowed, bool),
        name!(entries, i64),
        name!(max_entries, i64),
        name!(built_at, Option<TimestampWithTimeZone>),
    ),
> {
    let db = database();
    let (ready, overflowed, entries, built_at) = with_book(false, |b| {
        if b.database == db {
            (b.ready && !b.overflowed, b.overflowed, b.used as i64, b.built_at)
        } else {
            (false, false, 0, 0)
        }
    })
    .unwrap_or((false, false, 0, 0));
    let built_at = if built_at == 0 { None } else { TimestampWithTimeZone::try_from(built_at).ok() };
    TableIterator::once((ready && crate::stats::served(), overflowed, entries, limit().min(MAX_ENTRIES) as i64, built_at))
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    fn book() -> Box<Book> {
        // Zeroed on the heap: the book is too big for the stack.
        unsafe { Box::<Book>::new_zeroed().assume_init() }
    }

    fn entry(b: &Book, id: i64) -> Option<(i32, i64)> {
        b.find(id).map(|i| (b.attempts[i], b.leases[i]))
    }

    #[pg_test]
    fn attempts_order_the_changes_of_one_job() {
        let mut b = book();
        assert!(b.apply(Change::Note { id: 7, attempt: 1, lease: 100 }, MAX_ENTRIES));
        // A longer lease of the same attempt keeps the earlier end.
        b.apply(Change::Note { id: 7, attempt: 1, lease: 500 }, MAX_ENTRIES);
        assert_eq!(entry(&b, 7), Some((1, 100)));
        b.apply(Change::Note { id: 7, attempt: 1, lease: 50 }, MAX_ENTRIES);
        assert_eq!(entry(&b, 7), Some((1, 50)));
        // The next claim replaces it; a late note of the old one does not.
        b.apply(Change::Note { id: 7, attempt: 2, lease: 900 }, MAX_ENTRIES);
        b.apply(Change::Note { id: 7, attempt: 1, lease: 10 }, MAX_ENTRIES);
        assert_eq!(entry(&b, 7), Some((2, 900)));
        // The late end of the old claim does not remove the new one.
        b.apply(Change::Forget { id: 7, attempt: 1 }, MAX_ENTRIES);
        assert_eq!(entry(&b, 7), Some((2, 900)));
        b.apply(Change::Forget { id: 7, attempt: 2 }, MAX_ENTRIES);
        assert_eq!(entry(&b, 7), None);
        assert_eq!(b.used, 0);
    }

    #[pg_test]
    fn settling_applies_only_to_the_entry_that_was_read() {
        let mut b = book();
        b.apply(Change::Note { id: 3, attempt: 1, lease: 100 }, MAX_ENTRIES);
        // The row shows an extended lease: the entry takes it.
        b.apply(Change::Settle { id: 3, attempt: 1, lease: 100, now: Some((1, 400)) }, MAX_ENTRIES);
        assert_eq!(entry(&b, 3), Some((1, 400)));
        // Settling what was read before a newer claim changes nothing.
        b.apply(Change::Note { id: 3, attempt: 2, lease: 700 }, MAX_ENTRIES);
        b.apply(Change::Settle { id: 3, attempt: 1, lease: 400, now: None }, MAX_ENTRIES);
        assert_eq!(entry(&b, 3), Some((2, 700)));
        b.apply(Change::Settle { id: 3, attempt: 2, lease: 700, now: None }, MAX_ENTRIES);
        assert_eq!(entry(&b, 3), None);
    }

    #[pg_test]
    fn removal_keeps_every_colliding_entry_reachable() {
        let mut b = book();
        // Ids with the same home slot, and neighbours, in one probe run.
        let home = Book::home(1);
        let mut same: Vec<i64> = (2..2_000_000).filter(|&id| Book::home(id) == home).take(5).collect();
        same.insert(0, 1);
        let next: Vec<i64> = (2..2_000_000).filter(|&id| Book::home(id) == (home + 1) % SLOTS).take(3).collect();
        for (k, &id) in same.iter().chain(&next).enumerate() {
            assert!(b.apply(Change::Note { id, attempt: 1, lease: k as i64 }, MAX_ENTRIES));
        }
        for &gone in &[same[0], same[3], next[0]] {
            b.apply(Change::Forget { id: gone, attempt: 1 }, MAX_ENTRIES);
            assert_eq!(b.find(gone), None);
        }
        for &id in same.iter().chain(&next).filter(|id| ![same[0], same[3], next[0]].contains(id)) {
            assert!(b.find(id).is_some(), "{id} is still found");
        }
        assert_eq!(b.used, same.len() + next.len() - 3);
    }

    #[pg_test]
    fn a_full_book_refuses_new_jobs_and_due_lists_the_earliest() {
        let mut b = book();
        for id in 1..=4 {
            assert!(b.apply(Change::Note { id, attempt: 1, lease: 100 - id }, 4));
        }
        assert!(!b.apply(Change::Note { id: 5, attempt: 1, lease: 1 }, 4), "no room for a fifth");
        assert!(b.apply(Change::Note { id: 4, attempt: 2, lease: 1 }, 4), "a known job still moves");
        assert_eq!(b.due(97, 10), vec![(4, 2, 1)]);
        assert_eq!(b.due(99, 2), vec![(4, 2, 1), (3, 1, 97)]);
        let mut ids = b.ids();
        ids.sort();
        assert_eq!(ids, vec![1, 2, 3, 4]);
    }
}
