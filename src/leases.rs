//! The lease book: which jobs are processing, and until when, kept in
//! shared memory instead of an index.
//!
//! The maintenance pass must find the processing jobs whose lease ran out,
//! and `queue_workers`, `queue_reap_workers` and `queue_health` must find
//! the processing jobs of a worker, without reading the whole jobs table.
//! A partial index on `lease_until` answered both, but every claim then
//! wrote one more index entry than a claim needs, a cost a batch drain
//! shows when the index is dropped (bench/layers/ab.sh, bench/README.md). So
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
//! * Each served database has a book of its own in its slot of shared
//!   memory (src/shared.rs), sized by `queue.max_leases` at server start.
//!   Elsewhere the callers always scan, and the changes a backend kept are
//!   dropped at its commit.

use crate::shared::{self, Db, TxList};
use pgrx::prelude::*;

/// The safety-net rebuild, in microseconds (ten minutes).
const REBUILD_EVERY_US: i64 = 600 * 1_000_000;
/// An overflowed book is rebuilt at most this often (ten seconds): each
/// try scans the jobs table.
const RETRY_OVERFLOWED_US: i64 = 10 * 1_000_000;

/// The header of a database's book in shared memory; its entries follow
/// it, a power of two of them. All zeroes is an empty, unusable book.
#[repr(C)]
pub struct BookHeader {
    /// Complete since the last rebuild (see the module comment).
    ready: bool,
    /// A note found no room since the last rebuild.
    overflowed: bool,
    /// Entries in use.
    used: usize,
    /// When the last rebuild started (TimestampTz), 0 if never.
    built_at: i64,
}

/// One processing job. An id of 0 marks a free entry (job ids start at 1).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct Entry {
    id: i64,
    attempt: i32,
    /// The lease end (TimestampTz).
    lease: i64,
}

const FREE: Entry = Entry { id: 0, attempt: 0, lease: 0 };

/// The book, under its lock.
pub struct Book<'a> {
    header: &'a mut BookHeader,
    entries: &'a mut [Entry],
}

/// One change of the book: notes and ends are applied at commit in the
/// order recorded, settles at once (see `lease_settle`).
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

impl Book<'_> {
    /// Entries the book takes at most: 3/4 of its slots, so that linear
    /// probes stay short.
    fn capacity(&self) -> usize {
        self.entries.len() / 4 * 3
    }

    fn home(&self, id: i64) -> usize {
        home(self.entries.len(), id)
    }

    fn next(&self, i: usize) -> usize {
        (i + 1) % self.entries.len()
    }

    fn find(&self, id: i64) -> Option<usize> {
        find(self.entries, id)
    }

    /// Free slot `i` and move later entries of its probe run back, so that
    /// every entry stays reachable from its home slot (deletion without
    /// tombstones for linear probing).
    fn remove_at(&mut self, mut i: usize) {
        self.entries[i] = FREE;
        self.header.used -= 1;
        let mut j = i;
        loop {
            j = self.next(j);
            if self.entries[j].id == 0 {
                return;
            }
            let home = self.home(self.entries[j].id);
            // Entry j may move to i unless its home lies cyclically in (i, j].
            let stays = if i <= j { i < home && home <= j } else { i < home || home <= j };
            if !stays {
                self.entries[i] = self.entries[j];
                self.entries[j] = FREE;
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
                    let e = &mut self.entries[i];
                    if e.attempt < attempt {
                        e.attempt = attempt;
                        e.lease = lease;
                    } else if e.attempt == attempt {
                        e.lease = e.lease.min(lease);
                    }
                    return true;
                }
                if self.header.used >= limit.min(self.capacity()) {
                    return false;
                }
                let mut i = self.home(id);
                while self.entries[i].id != 0 {
                    i = self.next(i);
                }
                self.entries[i] = Entry { id, attempt, lease };
                self.header.used += 1;
                true
            }
            Change::Forget { id, attempt } => {
                if let Some(i) = self.find(id) {
                    if self.entries[i].attempt <= attempt {
                        self.remove_at(i);
                    }
                }
                true
            }
            Change::Settle { id, attempt, lease, now } => {
                if let Some(i) = self.find(id) {
                    if self.entries[i].attempt == attempt && self.entries[i].lease == lease {
                        match now {
                            None => self.remove_at(i),
                            Some((a, l)) => {
                                self.entries[i].attempt = a;
                                self.entries[i].lease = l;
                            }
                        }
                    }
                }
                true
            }
        }
    }

    fn clear(&mut self) {
        self.entries.fill(FREE);
        self.header.used = 0;
    }
}

/// The home slot of an id in a book of `len` (a power of two) entries: the
/// top bits of a multiplicative hash.
fn home(len: usize, id: i64) -> usize {
    let bits = len.trailing_zeros();
    if bits == 0 {
        return 0;
    }
    ((id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)) as usize
}

/// The entry of a job, if the book has one.
fn find(entries: &[Entry], id: i64) -> Option<usize> {
    if entries.is_empty() {
        return None;
    }
    let mut i = home(entries.len(), id);
    loop {
        match entries[i].id {
            0 => return None,
            x if x == id => return Some(i),
            _ => i = (i + 1) % entries.len(),
        }
    }
}

/// Entries whose lease ends before `before`, earliest first, at most `max`.
fn due(entries: &[Entry], before: i64, max: usize) -> Vec<(i64, i32, i64)> {
    let mut due: Vec<(i64, i32, i64)> =
        entries.iter().filter(|e| e.id != 0 && e.lease < before).map(|e| (e.id, e.attempt, e.lease)).collect();
    due.sort_unstable_by_key(|&(id, _, lease)| (lease, id));
    due.truncate(max);
    due
}

fn ids(entries: &[Entry]) -> Vec<i64> {
    entries.iter().map(|e| e.id).filter(|&id| id != 0).collect()
}

/// Run `f` on this database's book under its lock (exclusive or shared).
/// None when the database has no slot (not served, or the library was not
/// preloaded). `f` must not raise an error: it runs in commit callbacks too.
fn with_book<R>(f: impl FnOnce(&mut Book) -> R) -> Option<R> {
    let db: Db = shared::this_db()?;
    db.leases().exclusive(|header, entries| db.is_mine().then(|| f(&mut Book { header, entries })))
}

/// Read this database's book under its lock in share mode.
fn read_book<R>(f: impl FnOnce(&BookHeader, &[Entry]) -> R) -> Option<R> {
    let db: Db = shared::this_db()?;
    db.leases().share(|header, entries| db.is_mine().then(|| f(header, entries)))
}

fn now() -> i64 {
    unsafe { pg_sys::GetCurrentTimestamp() }
}

fn limit() -> usize {
    crate::gucs::MAX_LEASES.get().max(1) as usize
}

/// The most entries this server's books hold (sized at server start).
fn max_entries() -> usize {
    shared::this_db().map(|db| db.leases().share(|_, e| e.len() / 4 * 3)).unwrap_or(0)
}

// ---------------------------------------------------------------------------
// This backend's changes, applied at commit
// ---------------------------------------------------------------------------

thread_local! {
    static CHANGES: TxList<Change> = const { TxList::new() };
}

/// Keep a change for the commit. Whenever the library is preloaded, not
/// only while the database is served: a claim that began before its
/// database was served (after a server start, a refusal for lack of a slot,
/// a `queue.database` that did not list it) and commits after the rebuild's
/// scan, which could not see it, must still write its entry. The commit
/// applies it if a book is there, and drops it otherwise.
fn push(change: Change) {
    if shared::preloaded() {
        CHANGES.with(|c| c.push(change));
    }
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
fn apply_changes(changes: Vec<Change>) {
    let limit = limit();
    with_book(|book| {
        for change in changes {
            if !book.apply(change, limit) {
                book.header.overflowed = true;
            }
        }
    });
}

pub(crate) fn at_transaction_end(event: pg_sys::XactEvent::Type) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_COMMIT => {
            let changes = CHANGES.with(|c| c.take());
            if !changes.is_empty() {
                apply_changes(changes);
            }
        }
        XACT_EVENT_PREPARE => {
            // The changes would take effect at COMMIT PREPARED, in some
            // other backend: the book cannot follow, so rebuild it.
            let had = !CHANGES.with(|c| c.take()).is_empty();
            if had {
                with_book(|book| book.header.ready = false);
            }
        }
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => CHANGES.with(|c| c.clear()),
        _ => {}
    }
}

pub(crate) fn at_subtransaction_end(
    event: pg_sys::SubXactEvent::Type,
    subxact: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
) {
    CHANGES.with(|c| c.subtransaction_end(event, subxact, parent));
}

// ---------------------------------------------------------------------------
// SQL
// ---------------------------------------------------------------------------

/// SQL `queue.leases_ready()`: whether the book holds every processing job
/// of this database, so that callers may read it instead of the table.
#[pg_extern(volatile, parallel_unsafe, schema = "queue")]
fn leases_ready() -> bool {
    crate::stats::served() && read_book(|h, _| h.ready && !h.overflowed).unwrap_or(false)
}

/// SQL `queue.leases_due(before, max)`: the entries whose lease ends before
/// `before`, earliest first: candidates, each to be checked against its row.
#[pg_extern(volatile, strict, parallel_unsafe, schema = "queue")]
fn leases_due(
    before: TimestampWithTimeZone,
    max: i32,
) -> TableIterator<'static, (name!(id, i64), name!(attempt, i32), name!(lease_until, TimestampWithTimeZone))> {
    let due = read_book(|_, e| due(e, before.into_inner(), max.max(0) as usize)).unwrap_or_default();
    TableIterator::new(
        due.into_iter()
            .filter_map(|(id, attempt, lease)| TimestampWithTimeZone::try_from(lease).ok().map(|l| (id, attempt, l))),
    )
}

/// SQL `queue.leased_ids()`: every job id the book holds.
#[pg_extern(volatile, parallel_unsafe, schema = "queue")]
fn leased_ids() -> Vec<i64> {
    read_book(|_, e| ids(e)).unwrap_or_default()
}

/// SQL `queue.lease_settle(id, attempt, lease_until, row_attempt,
/// row_lease_until)`: the expiry pass read the row of a due entry. The
/// entry, if unchanged since it was listed, takes the row's attempt and
/// lease, or goes when the row is not processing (row values NULL).
///
/// Applied at once, not at commit, because only then is it true: the
/// caller read a processing row under a share lock it still holds, so no
/// other transaction can move that lease before this returns, and a row
/// that is not processing was ended by a committed transaction (the caller
/// never settles rows it changed itself). At commit the lock would already
/// be gone: a touch that shortened the lease could commit and note it in
/// between, and the settle would then write back the later lease.
#[pg_extern(volatile, parallel_unsafe, schema = "queue")]
fn lease_settle(
    id: i64,
    attempt: i32,
    lease_until: TimestampWithTimeZone,
    row_attempt: Option<i32>,
    row_lease_until: Option<TimestampWithTimeZone>,
) {
    let now = row_attempt.zip(row_lease_until).map(|(a, l)| (a, l.into_inner()));
    if crate::stats::served() {
        with_book(|b| b.apply(Change::Settle { id, attempt, lease: lease_until.into_inner(), now }, usize::MAX));
    }
}

/// SQL `queue.leases_rebuild_due()`: whether this pass should rebuild the
/// book: it serves this database and the book is not ready, overflowed for
/// a while, or due for its safety-net rebuild.
#[pg_extern(volatile, parallel_unsafe, schema = "queue")]
fn leases_rebuild_due() -> bool {
    if !crate::stats::served() {
        return false;
    }
    let now = now();
    read_book(|h, _| {
        !h.ready || (h.overflowed && now - h.built_at >= RETRY_OVERFLOWED_US) || now - h.built_at >= REBUILD_EVERY_US
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
    let now = now();
    with_book(|b| {
        b.clear();
        b.header.ready = false;
        b.header.overflowed = false;
        b.header.built_at = now;
    })
    .is_some()
}

/// SQL `queue.lease_load(id, attempt, lease_until)`: one processing job
/// found by the rebuild's scan, written at once.
#[pg_extern(volatile, strict, parallel_unsafe, schema = "queue")]
fn lease_load(id: i64, attempt: i32, lease_until: TimestampWithTimeZone) {
    let limit = limit();
    with_book(|b| {
        if !b.apply(Change::Note { id, attempt, lease: lease_until.into_inner() }, limit) {
            b.header.overflowed = true;
        }
    });
}

/// SQL `queue.leases_end_rebuild()`: the scan is over; the book is ready
/// unless it overflowed. Returns whether it is ready.
#[pg_extern(volatile, parallel_unsafe, schema = "queue")]
fn leases_end_rebuild() -> bool {
    with_book(|b| {
        b.header.ready = !b.header.overflowed;
        b.header.ready
    })
    .unwrap_or(false)
}

/// SQL `queue.leases_reset()`: forget this database's book (CREATE
/// EXTENSION: job ids start again); the next pass rebuilds it.
#[pg_extern(volatile, parallel_unsafe, schema = "queue")]
fn leases_reset() {
    with_book(|b| {
        b.clear();
        b.header.ready = false;
        b.header.built_at = 0;
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
    let (ready, overflowed, entries, built_at) =
        read_book(|h, _| (h.ready && !h.overflowed, h.overflowed, h.used as i64, h.built_at))
            .unwrap_or((false, false, 0, 0));
    let built_at = if built_at == 0 { None } else { TimestampWithTimeZone::try_from(built_at).ok() };
    TableIterator::once((
        ready && crate::stats::served(),
        overflowed,
        entries,
        limit().min(max_entries()) as i64,
        built_at,
    ))
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    const SLOTS: usize = 1 << 14;
    const MAX_ENTRIES: usize = SLOTS / 4 * 3;

    /// Run `f` on an empty book of SLOTS entries on the heap.
    fn with_new_book(f: impl FnOnce(&mut Book)) {
        let mut header = BookHeader { ready: false, overflowed: false, used: 0, built_at: 0 };
        let mut entries = vec![FREE; SLOTS];
        f(&mut Book { header: &mut header, entries: &mut entries })
    }

    fn entry(b: &Book, id: i64) -> Option<(i32, i64)> {
        b.find(id).map(|i| (b.entries[i].attempt, b.entries[i].lease))
    }

    #[pg_test]
    fn attempts_order_the_changes_of_one_job() {
        with_new_book(|b| {
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
            assert_eq!(b.header.used, 0);
        });
    }

    #[pg_test]
    fn settling_applies_only_to_the_entry_that_was_read() {
        with_new_book(|b| {
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
        });
    }

    #[pg_test]
    fn removal_keeps_every_colliding_entry_reachable() {
        with_new_book(|b| {
            // Ids with the same home slot, and neighbours, in one probe run.
            let home = b.home(1);
            let mut same: Vec<i64> = (2..2_000_000).filter(|&id| b.home(id) == home).take(5).collect();
            same.insert(0, 1);
            let next: Vec<i64> = (2..2_000_000).filter(|&id| b.home(id) == (home + 1) % SLOTS).take(3).collect();
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
            assert_eq!(b.header.used, same.len() + next.len() - 3);
        });
    }

    #[pg_test]
    fn a_full_book_refuses_new_jobs_and_due_lists_the_earliest() {
        with_new_book(|b| {
            for id in 1..=4 {
                assert!(b.apply(Change::Note { id, attempt: 1, lease: 100 - id }, 4));
            }
            assert!(!b.apply(Change::Note { id: 5, attempt: 1, lease: 1 }, 4), "no room for a fifth");
            assert!(b.apply(Change::Note { id: 4, attempt: 2, lease: 1 }, 4), "a known job still moves");
            assert_eq!(due(b.entries, 97, 10), vec![(4, 2, 1)]);
            assert_eq!(due(b.entries, 99, 2), vec![(4, 2, 1), (3, 1, 97)]);
            let mut ids = ids(b.entries);
            ids.sort();
            assert_eq!(ids, vec![1, 2, 3, 4]);
        });
    }
}
