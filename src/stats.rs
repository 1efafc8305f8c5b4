//! Counters behind `queue_stats`, `queue_list`, `queue_size` and
//! `queue_health`: exact, cheap to read at any depth, and never a hot row.
//!
//! Counting rows cannot answer `queue_stats` in milliseconds with a million
//! waiting jobs and ten million finished ones, and a counter row updated by
//! every push would make all pushes of a queue wait on each other. So every
//! SQL function that moves a job between statuses calls `queue.tally` with
//! the queue, the priority and the two statuses. The tally is kept in this
//! backend until the transaction ends, per subtransaction level, so that a
//! rolled-back savepoint takes its tallies with it:
//!
//! * **Served database** (one whose maintenance service runs, library
//!   preloaded): before commit the transaction pins a slot of the
//!   database's small shared-memory table for each of its keys; after the
//!   commit is visible, the transaction callback adds its tallies there
//!   under one LWLock (a few hundred nanoseconds). A key the full table has
//!   no slot for goes to this backend's rows of `queue.stats` inside the
//!   transaction, as below, so that counts stay exact however many queues
//!   are active; the flush folds those rows into its own now and then, at
//!   most 500 a pass (a backend upserting a row being folded waits for the
//!   fold to commit, so a pass must stay short). The
//!   maintenance worker flushes that table into
//!   `queue.stats` every tick, in a short transaction of its own that also
//!   records the flushed amounts as negative tallies, so that its commit
//!   moves them from shared memory to the table at once.
//! * **Any other database**, or no preloading: just before commit the
//!   tallies are added to this backend's own rows of `queue.stats` (one row
//!   per queue, priority and backend), inside the transaction. No two
//!   backends share a row.
//!
//! A reader sums `queue.stats`, the shared-memory table and its own
//! transaction's tallies: one queue's rows through the primary key, every
//! queue's in one pass grouped by queue or by priority (`queue.stats_sums`).
//! A commit that leaves the table half full wakes the maintenance worker,
//! which then flushes at once instead of at its tick, so that later keys
//! find room. Shared memory does not survive a restart: the
//! gauges (blocked, scheduled, pending, processing, retrying) are recounted from the
//! jobs table once after every server start, while no transaction writes
//! jobs (`LOCK ... IN SHARE MODE`), and the cumulative totals lose at most
//! what committed after the last flush. Readers and the flush serialize on
//! an advisory lock so that a reader never sees an amount twice.

use crate::shared::{self, Db, TxList};
use pgrx::prelude::*;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// The counters of one (queue, priority), in this order everywhere (the
/// `counts` arrays in SQL are 1-based: scheduled is counts[1]).
pub const SCHEDULED: usize = 0;
pub const PENDING: usize = 1;
pub const PROCESSING: usize = 2;
pub const RETRYING: usize = 3;
pub const PUSHED: usize = 4;
pub const POPPED: usize = 5;
pub const COMPLETED: usize = 6;
pub const FAILED: usize = 7;
pub const EXPIRED: usize = 8;
pub const CANCELLED: usize = 9;
/// Failed attempts that will run again (fail with attempts left, lost lease).
pub const RETRIED: usize = 10;
/// Waiting jobs deleted (queue_clear, queue_delete).
pub const DELETED: usize = 11;
/// Jobs waiting for their dependencies (a gauge, last so that the order of
/// the others stays as it was before dependencies existed).
pub const BLOCKED: usize = 12;
pub const COUNTERS: usize = 13;

type Counts = [i64; COUNTERS];

/// Queue names are at most 57 bytes.
const NAME_BYTES: usize = 64;

// The flush and the recount take the counters' lock (src/locks.rs)
// exclusively, readers take it shared (sql/stats.sql): a lock tag no SQL
// function can name, so that no session can hold it and stall them.

/// A job status as the counters see it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Status {
    Blocked,
    Scheduled,
    Pending,
    Processing,
    Retrying,
    Completed,
    Failed,
    Expired,
    Cancelled,
}

impl Status {
    fn parse(name: &str) -> Option<Status> {
        Some(match name {
            "blocked" => Status::Blocked,
            "scheduled" => Status::Scheduled,
            "pending" => Status::Pending,
            "processing" => Status::Processing,
            "retrying" => Status::Retrying,
            "completed" => Status::Completed,
            "failed" => Status::Failed,
            "expired" => Status::Expired,
            "cancelled" => Status::Cancelled,
            _ => return None,
        })
    }

    /// The gauge of a waiting or running status; final statuses have none.
    fn gauge(self) -> Option<usize> {
        match self {
            Status::Blocked => Some(BLOCKED),
            Status::Scheduled => Some(SCHEDULED),
            Status::Pending => Some(PENDING),
            Status::Processing => Some(PROCESSING),
            Status::Retrying => Some(RETRYING),
            _ => None,
        }
    }

    /// The cumulative counter a job reaching this final status adds to.
    fn total(self) -> Option<usize> {
        match self {
            Status::Completed => Some(COMPLETED),
            Status::Failed => Some(FAILED),
            Status::Expired => Some(EXPIRED),
            Status::Cancelled => Some(CANCELLED),
            _ => None,
        }
    }
}

/// What `n` jobs moving from `from` to `to` do to the counters. `None` as
/// `from` is a push, `None` as `to` a deletion.
fn transition(from: Option<Status>, to: Option<Status>, n: i64) -> Counts {
    let mut c = [0; COUNTERS];
    if let Some(g) = from.and_then(Status::gauge) {
        c[g] -= n;
    }
    if let Some(g) = to.and_then(Status::gauge) {
        c[g] += n;
    }
    match (from, to) {
        (None, _) => c[PUSHED] += n,
        (Some(Status::Processing), Some(Status::Pending | Status::Retrying)) => c[RETRIED] += n,
        (Some(f), None) if f.gauge().is_some() => c[DELETED] += n,
        _ => {}
    }
    if to == Some(Status::Processing) {
        c[POPPED] += n;
    }
    if let Some(t) = to.and_then(Status::total) {
        c[t] += n;
    }
    c
}

// ---------------------------------------------------------------------------
// Shared memory
// ---------------------------------------------------------------------------

/// One (queue, priority) of a database's table. All zero: free.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Slot {
    priority: i32,
    /// 0: the slot is free.
    name_len: u8,
    name: [u8; NAME_BYTES],
    counts: Counts,
    /// Last commit that moved a job of this key (TimestampTz), 0 if none.
    last: i64,
    /// Committing transactions that hold this slot for their tallies
    /// (between PRE_COMMIT and COMMIT or ABORT): the slot is not compacted
    /// away meanwhile, so that what they add at commit has a place.
    pins: u32,
}

const FREE: Slot = Slot { priority: 0, name_len: 0, name: [0; NAME_BYTES], counts: [0; COUNTERS], last: 0, pins: 0 };

impl Slot {
    fn name(&self) -> &[u8] {
        &self.name[..self.name_len as usize]
    }
}

/// The header of a database's table of unflushed counters by (queue,
/// priority): open addressing with linear probing over the entries that
/// follow it (src/shared.rs), rebuilt without its zero entries after every
/// flush. All zero: empty.
#[repr(C)]
pub struct TableHeader {
    used: usize,
}

/// The table, under its lock.
struct Table<'a> {
    header: &'a mut TableHeader,
    slots: &'a mut [Slot],
}

impl Table<'_> {
    fn home(&self, name: &[u8], priority: i32) -> usize {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.iter().chain(&priority.to_le_bytes()) {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        (h % self.slots.len() as u64) as usize
    }

    /// Keys the table takes at most: 3/4 of its slots, so that probes stay
    /// short.
    fn limit(&self) -> usize {
        self.slots.len() / 4 * 3
    }

    /// Where a key is (Ok) or would go (Err); None for a key the table
    /// cannot hold at all.
    fn probe(&self, name: &[u8], priority: i32) -> Option<Result<usize, usize>> {
        if name.is_empty() || name.len() > NAME_BYTES || self.slots.is_empty() {
            return None;
        }
        let mut i = self.home(name, priority);
        loop {
            let s = &self.slots[i];
            if s.name_len == 0 {
                return Some(Err(i));
            }
            if s.priority == priority && s.name() == name {
                return Some(Ok(i));
            }
            i = (i + 1) % self.slots.len();
        }
    }

    /// The slot of a known key.
    fn find(&mut self, name: &[u8], priority: i32) -> Option<&mut Slot> {
        match self.probe(name, priority)? {
            Ok(i) => Some(&mut self.slots[i]),
            Err(_) => None,
        }
    }

    /// The slot of a key, claimed if new; None when the table is too full.
    fn slot(&mut self, name: &[u8], priority: i32) -> Option<&mut Slot> {
        let i = match self.probe(name, priority)? {
            Ok(i) => return Some(&mut self.slots[i]),
            Err(i) => i,
        };
        if self.header.used >= self.limit() {
            return None;
        }
        self.header.used += 1;
        let s = &mut self.slots[i];
        *s = Slot { priority, name_len: name.len() as u8, ..FREE };
        s.name[..name.len()].copy_from_slice(name);
        Some(s)
    }

    /// Hold the slot of a key (claimed if new) for a committing
    /// transaction; false when the table has no room for it.
    fn pin(&mut self, name: &[u8], priority: i32) -> bool {
        self.slot(name, priority).map(|s| s.pins += 1).is_some()
    }

    /// Let go of a slot `pin` held.
    fn unpin(&mut self, name: &[u8], priority: i32) {
        if let Some(s) = self.find(name, priority) {
            s.pins = s.pins.saturating_sub(1);
        }
    }

    /// Drop the entries that hold nothing any more (their last activity is
    /// in `queue.stats` by then) and no committing transaction holds, and
    /// re-insert the rest.
    fn compact(&mut self) {
        let keep: Vec<Slot> = self
            .slots
            .iter()
            .filter(|s| s.name_len > 0 && (s.pins > 0 || s.counts.iter().any(|&c| c != 0)))
            .copied()
            .collect();
        self.slots.fill(FREE);
        self.header.used = 0;
        for k in keep {
            if let Some(s) = self.slot(&k.name[..k.name_len as usize], k.priority) {
                *s = k;
            }
        }
    }
}

/// Run `f` on this database's table, exclusively, if the database is
/// served. `f` must not raise an error (it runs in commit callbacks).
fn with_table<R>(db: Db, f: impl FnOnce(&mut Table) -> R) -> Option<R> {
    db.counters().exclusive(|header, slots| db.is_mine().then(|| f(&mut Table { header, slots })))
}

/// The counters' state of a database besides its table, in its slot. All
/// zero is a fresh slot: not yet served, and a recount due.
#[repr(C)]
pub struct Control {
    /// The maintenance service runs and flushes this database's counters.
    served: AtomicU32,
    /// Recounts asked for beyond the one every fresh slot needs, and the
    /// requests answered: a recount is due while `recount_done` is not
    /// above `recount_asked`.
    recount_asked: AtomicU64,
    recount_done: AtomicU64,
    /// Commits whose tallies did not fit into shared memory and are lost
    /// (only a flush's own, which should always fit).
    lost_tallies: AtomicU64,
    /// Commits that wrote tallies into queue.stats because the table had no
    /// room for their keys, and their number at the last fold of those
    /// rows into the flushed ones (`queue.stats_fold_due`).
    spills: AtomicU64,
    folded_spills: AtomicU64,
    /// When the last fold ran (TimestampTz).
    folded_at: AtomicI64,
    /// End of the last maintenance pass (TimestampTz), 0 before the first.
    last_tick: AtomicI64,
    /// The maintenance service's latch (0: none runs). A commit that finds
    /// the table half full sets it, so that the flush makes room before the
    /// tick instead of later keys spilling into queue.stats (an upsert per
    /// key and commit, which costs more than the push itself).
    flusher_latch: AtomicUsize,
    /// An early flush was asked for since the last flush.
    flush_asked: AtomicU32,
}

/// This database's slot, if its tallies go through shared memory: the
/// library is preloaded and the maintenance service serves (flushes) it.
fn served_db() -> Option<Db> {
    shared::this_db().filter(|db| db.slot().counters.served.load(Ordering::SeqCst) != 0)
}

/// Whether this backend's tallies go through shared memory.
pub(crate) fn served() -> bool {
    served_db().is_some()
}

/// Called by the maintenance service once it holds its slot: it flushes
/// this database's counters from now on, and its latch is where commits ask
/// for an early flush. However the process ends, the latch is withdrawn
/// before its PGPROC can be handed to another backend.
pub fn publish_served_database(db: Db) {
    let latch = unsafe { &raw mut (*pg_sys::MyProc).procLatch } as usize;
    unsafe { pg_sys::before_shmem_exit(Some(withdraw_flusher), pg_sys::Datum::from(db.index())) };
    db.slot().counters.flusher_latch.store(latch, Ordering::SeqCst);
    db.slot().counters.served.store(1, Ordering::SeqCst);
}

/// Exit callback of the maintenance service: withdraw its latch if it is
/// still the one published.
#[pg_guard]
unsafe extern "C-unwind" fn withdraw_flusher(_code: i32, index: pg_sys::Datum) {
    if let Some(db) = shared::slots().nth(index.value()) {
        let latch = unsafe { &raw mut (*pg_sys::MyProc).procLatch } as usize;
        let _ = db.slot().counters.flusher_latch.compare_exchange(latch, 0, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// Ask the maintenance service to flush before its tick (once until the
/// flush runs: one SetLatch, however many commits find the table full).
/// Called from the commit callbacks: SetLatch raises no error.
fn ask_early_flush(db: Db) {
    let c = &db.slot().counters;
    if c.flush_asked.swap(1, Ordering::SeqCst) == 0 {
        let latch = c.flusher_latch.load(Ordering::SeqCst);
        if latch != 0 {
            unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
        }
    }
}

/// For the maintenance service, woken before its tick: whether a commit
/// asked for an early flush. Taking the request clears it; `again` puts it
/// back (the service flushed a moment ago and will come back to it).
pub fn early_flush_asked(db: Db) -> bool {
    db.slot().counters.flush_asked.swap(0, Ordering::SeqCst) != 0
}

pub fn ask_early_flush_again(db: Db) {
    db.slot().counters.flush_asked.store(1, Ordering::SeqCst);
}

/// Called by the maintenance service after each pass.
pub fn note_tick(db: Db) {
    db.slot().counters.last_tick.store(unsafe { pg_sys::GetCurrentTimestamp() }, Ordering::SeqCst);
}

// ---------------------------------------------------------------------------
// This backend's tallies
// ---------------------------------------------------------------------------

struct Tally {
    queue: String,
    priority: i32,
    counts: Counts,
    /// False for the flush's own negative tallies: moving counts from
    /// shared memory to the table is not activity.
    activity: bool,
}

thread_local! {
    static TALLIES: TxList<Tally> = const { TxList::new() };
    /// The committing transaction's tallies bound for shared memory, each
    /// with whether it holds a pin on its key's slot: set at PRE_COMMIT,
    /// added (and unpinned) at COMMIT, unpinned at ABORT.
    static PINNED: std::cell::RefCell<Vec<(Tally, bool)>> = const { std::cell::RefCell::new(Vec::new()) };
    /// This transaction recounted the gauges: the recount request it
    /// answers, marked done at commit.
    static RECOUNTED: TxList<u64> = const { TxList::new() };
}

fn record(queue: &str, priority: i32, counts: Counts, activity: bool) {
    TALLIES.with(|t| {
        t.fold(
            shared::key_hash(&(queue, priority, activity)),
            Tally { queue: queue.to_owned(), priority, counts, activity },
            |e| e.priority == priority && e.activity == activity && e.queue == queue,
            |e, new| {
                for (a, b) in e.counts.iter_mut().zip(new.counts) {
                    *a += b;
                }
            },
        )
    });
}

/// SQL `queue.tally(queue, priority, from, to, n, job, attempt,
/// lease_until)`: `n` jobs of this queue and priority moved from status
/// `from` (NULL: pushed) to `to` (NULL: deleted). Returns `n`, so that it
/// can sit in a RETURNING list. A single job entering or leaving
/// `processing` also names itself (`job`, `attempt` and, entering, its
/// `lease_until`) for the lease book (src/leases.rs): one call per row does
/// both, because this call sits in the claim and the ack of every job. A
/// lease moved without a status change is `processing` to `processing`
/// with `n` 0.
#[pg_extern(volatile, parallel_unsafe, schema = "queue")]
#[allow(clippy::too_many_arguments)]
fn tally(
    queue: Option<&str>,
    priority: Option<i32>,
    from: Option<&str>,
    to: Option<&str>,
    n: default!(i64, 1),
    job: default!(Option<i64>, "NULL"),
    attempt: default!(Option<i32>, "NULL"),
    lease_until: default!(Option<TimestampWithTimeZone>, "NULL"),
) -> i64 {
    let (Some(queue), Some(priority)) = (queue, priority) else {
        return 0;
    };
    let from = from.and_then(Status::parse);
    let to = to.and_then(Status::parse);
    if n != 0 {
        record(queue, priority, transition(from, to, n), true);
    }
    if let (Some(job), Some(attempt)) = (job, attempt) {
        let entering = to == Some(Status::Processing);
        if entering || from == Some(Status::Processing) {
            crate::leases::record(job, attempt, lease_until, entering);
        }
    }
    n
}

/// SQL `queue.pushed(queue, priority)`: one due job entered `pending` by a
/// plain push (no group, no delay, no dependency). Counts it as
/// `tally(queue, priority, NULL, 'pending')` does and wakes the queue as
/// `queue.wake(queue)` does, in one call that sits in the INSERT's
/// RETURNING: the plain push is most pushes and often a transaction of its
/// own, and a second statement for the wake-up costs it more than the call.
/// Returns 1, the number of jobs counted.
#[pg_extern(volatile, strict, parallel_unsafe, schema = "queue")]
pub(crate) fn pushed(queue: &str, priority: i32) -> i64 {
    record(queue, priority, transition(None, Some(Status::Pending), 1), true);
    crate::wakeup::wake(queue);
    1
}

/// Sum of the tallies by (queue, priority), in first-seen order. Hashed:
/// a reader sums the whole shared table (up to `queue.max_counter_keys`
/// keys) and a commit may carry thousands of keys.
fn summed<'a>(rows: impl Iterator<Item = (&'a str, i32, Counts, i64)>) -> Vec<(String, i32, Counts, i64)> {
    let mut out: Vec<(String, i32, Counts, i64)> = Vec::new();
    let mut index: std::collections::HashMap<(&'a str, i32), usize> = std::collections::HashMap::new();
    for (queue, priority, counts, last) in rows {
        match index.get(&(queue, priority)) {
            Some(&i) => {
                let (_, _, c, l) = &mut out[i];
                for (a, b) in c.iter_mut().zip(counts) {
                    *a += b;
                }
                *l = (*l).max(last);
            }
            None => {
                index.insert((queue, priority), out.len());
                out.push((queue.to_owned(), priority, counts, last));
            }
        }
    }
    out
}

/// One row of `stats_unflushed` / `stats_take` (pgrx wants the column
/// names spelled out in each signature).
type CountRow = (String, i32, Vec<i64>, Option<TimestampWithTimeZone>);

fn as_row((queue, priority, counts, last): (String, i32, Counts, i64)) -> CountRow {
    let last = if last == 0 { None } else { TimestampWithTimeZone::try_from(last).ok() };
    (queue, priority, counts.to_vec(), last)
}

/// This database's entries of the shared table: (queue, priority, counts,
/// last activity).
fn shared_rows() -> Vec<(String, i32, Counts, i64)> {
    let Some(db) = shared::this_db() else {
        return Vec::new();
    };
    db.counters().share(|_, slots| {
        if !db.is_mine() {
            return Vec::new();
        }
        slots
            .iter()
            .filter(|s| s.name_len > 0)
            .map(|s| (String::from_utf8_lossy(s.name()).into_owned(), s.priority, s.counts, s.last))
            .collect()
    })
}

/// SQL `queue.stats_unflushed()`: what `queue.stats` does not hold yet,
/// i.e. this database's shared-memory counters plus this transaction's own
/// tallies. Callers hold the stats advisory lock in share mode.
#[pg_extern(volatile, parallel_unsafe, schema = "queue")]
fn stats_unflushed() -> TableIterator<
    'static,
    (
        name!(queue, String),
        name!(priority, i32),
        name!(counts, Vec<i64>),
        name!(last_activity, Option<TimestampWithTimeZone>),
    ),
> {
    let mut rows = shared_rows();
    let local = TALLIES
        .with(|t| t.with(|tallies| tallies.map(|e| (e.queue.clone(), e.priority, e.counts, 0)).collect::<Vec<_>>()));
    rows.extend(local);
    let rows = summed(rows.iter().map(|(q, p, c, l)| (q.as_str(), *p, *c, *l)));
    TableIterator::new(rows.into_iter().map(as_row))
}

/// SQL `queue.stats_take()`: the flush. Returns this database's shared
/// counters and records them as negative tallies, so that the commit of the
/// flushing transaction (which adds the returned rows to `queue.stats`)
/// removes them from shared memory. The caller holds the stats advisory
/// lock exclusively: no other flush or recount runs at the same time.
#[pg_extern(volatile, parallel_unsafe, schema = "queue")]
fn stats_take() -> TableIterator<
    'static,
    (
        name!(queue, String),
        name!(priority, i32),
        name!(counts, Vec<i64>),
        name!(last_activity, Option<TimestampWithTimeZone>),
    ),
> {
    let Some(db) = served_db() else {
        return TableIterator::new(Vec::new().into_iter());
    };
    // This flush answers every early one asked for so far.
    db.slot().counters.flush_asked.store(0, Ordering::SeqCst);
    let rows: Vec<_> = shared_rows().into_iter().filter(|(_, _, c, _)| c.iter().any(|&c| c != 0)).collect();
    for (queue, priority, counts, _) in &rows {
        record(queue, *priority, counts.map(|c| -c), false);
    }
    TableIterator::new(rows.into_iter().map(as_row))
}

/// SQL `queue.stats_recount_needed()`: the gauges in shared memory may be
/// wrong (first pass after a server start, or tallies were lost).
#[pg_extern(volatile, parallel_unsafe, schema = "queue")]
fn stats_recount_needed() -> bool {
    let Some(db) = served_db() else { return false };
    let c = &db.slot().counters;
    c.recount_done.load(Ordering::SeqCst) <= c.recount_asked.load(Ordering::SeqCst)
}

/// SQL `queue.stats_forget_gauges()`: part of the recount, which holds a
/// SHARE lock on queue.jobs (no job moves) and the stats advisory lock.
/// Cancels the gauges shared memory holds for this database (the recount
/// writes the true values into `queue.stats`), effective at commit.
#[pg_extern(volatile, parallel_unsafe, schema = "queue")]
fn stats_forget_gauges() {
    let Some(db) = served_db() else { return };
    for (queue, priority, counts, _) in shared_rows() {
        let mut cancel = [0; COUNTERS];
        for g in [SCHEDULED, PENDING, PROCESSING, RETRYING, BLOCKED] {
            cancel[g] = -counts[g];
        }
        record(&queue, priority, cancel, false);
    }
    let asked = db.slot().counters.recount_asked.load(Ordering::SeqCst);
    RECOUNTED.with(|r| {
        r.clear();
        r.push(asked);
    });
}

/// SQL `queue.stats_forget_database()`: called by CREATE EXTENSION. Shared
/// memory may still hold counters of an earlier installation in this
/// database (DROP EXTENSION does not reach it); they belong to jobs that no
/// longer exist.
#[pg_extern(volatile, parallel_unsafe, schema = "queue")]
fn stats_forget_database() {
    let Some(db) = shared::this_db() else { return };
    with_table(db, |table| {
        for s in table.slots.iter_mut() {
            s.counts = [0; COUNTERS];
        }
        table.compact();
    });
}

/// SQL `queue.stats_health()`: the shared-memory side of queue_health.
#[pg_extern(volatile, parallel_unsafe, schema = "queue")]
fn stats_health() -> TableIterator<
    'static,
    (
        name!(preloaded, bool),
        name!(served, bool),
        name!(last_tick, Option<TimestampWithTimeZone>),
        name!(lost_tallies, i64),
        name!(recount_pending, bool),
    ),
> {
    let preloaded = shared::preloaded();
    let (last_tick, lost) = match shared::this_db() {
        Some(db) => {
            let c = &db.slot().counters;
            (c.last_tick.load(Ordering::SeqCst), c.lost_tallies.load(Ordering::SeqCst) as i64)
        }
        None => (0, 0),
    };
    let last_tick = if last_tick == 0 { None } else { TimestampWithTimeZone::try_from(last_tick).ok() };
    TableIterator::once((preloaded, served(), last_tick, lost, stats_recount_needed()))
}

// ---------------------------------------------------------------------------
// Transaction ends
// ---------------------------------------------------------------------------

/// Before commit (or PREPARE), outside the served database or for keys the
/// shared table has no room for: add the tallies to the rows of `slot` in
/// queue.stats and in queue.stats_minutes (this minute's throughput),
/// inside the transaction. The statement is
/// fixed; it runs as the bootstrap superuser because the committing user
/// may hold no privilege on the internal table.
fn write_tallies_to_table(tallies: Vec<Tally>, slot: i32) {
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let rows =
        summed(tallies.iter().map(|t| (t.queue.as_str(), t.priority, t.counts, if t.activity { now } else { 0 })));
    let (mut user, mut context) = (pg_sys::Oid::INVALID, 0);
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(
            pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID),
            context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        );
    }
    // The statements of the transaction are over: give SPI a snapshot.
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
    for (queue, priority, counts, last) in rows {
        let last = if last == 0 { None } else { TimestampWithTimeZone::try_from(last).ok() };
        // An error here aborts the commit, which then restores the user.
        let _ = Spi::run_with_args(
            "SELECT queue.stats_apply($1, $2, $3, $4, $5, true)",
            &[slot.into(), queue.into(), priority.into(), counts.to_vec().into(), last.into()],
        )
        .map_err(|e| error!("queue: could not record job counters: {e}"));
    }
    unsafe {
        pg_sys::PopActiveSnapshot();
        pg_sys::SetUserIdAndSecContext(user, context);
    }
}

/// PRE_COMMIT in the served database: hold a slot of the shared table for
/// the key of every tally, so that the commit, which must not fail, has a
/// place for them. The tallies of keys the table has no room for (more
/// queues and priorities active since the last flush than
/// `queue.max_counter_keys`) are written into this backend's rows of
/// `queue.stats` inside the transaction instead, as outside a served
/// database: exact, only slower, until a flush makes room again.
fn pin_tallies(db: Db, tallies: Vec<Tally>) {
    let mut pinned = Vec::with_capacity(tallies.len());
    let held = with_table(db, |table| {
        for t in &tallies {
            pinned.push(table.pin(t.queue.as_bytes(), t.priority));
        }
    });
    if held.is_none() {
        pinned = vec![false; tallies.len()];
    }
    let (mut keep, mut spill) = (Vec::new(), Vec::new());
    for (t, pin) in tallies.into_iter().zip(pinned) {
        // A flush's own tallies move amounts out of slots that exist: they
        // never go to the table, where they would count twice.
        if pin || !t.activity {
            keep.push((t, pin));
        } else {
            spill.push(t);
        }
    }
    // Set before anything can fail, so that an abort lets go of the pins.
    PINNED.with(|p| *p.borrow_mut() = keep);
    if !spill.is_empty() {
        // The table is full of counts that landed already: a flush now
        // makes room for the next commits.
        ask_early_flush(db);
        db.slot().counters.spills.fetch_add(1, Ordering::SeqCst);
        write_tallies_to_table(spill, unsafe { pg_sys::MyBackendId });
    }
}

/// After commit in the served database: add the tallies to shared memory
/// and let go of their pins. Must not raise an error (the commit record is
/// written): one LWLock, no allocation that can fail in Postgres terms.
fn add_tallies_to_shared_memory(db: Db, tallies: Vec<(Tally, bool)>) {
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let lost = with_table(db, |table| {
        let mut lost = false;
        let mut flushed = false;
        for (t, pinned) in &tallies {
            flushed |= !t.activity;
            match table.slot(t.queue.as_bytes(), t.priority) {
                Some(s) => {
                    for (a, b) in s.counts.iter_mut().zip(t.counts) {
                        *a += b;
                    }
                    if t.activity {
                        s.last = s.last.max(now);
                    }
                    if *pinned {
                        s.pins = s.pins.saturating_sub(1);
                    }
                }
                None => lost = true,
            }
        }
        if flushed {
            table.compact();
        }
        (lost, !flushed && table.header.used * 2 >= table.limit())
    });
    // Half full after this commit's counts landed (not before: a flush
    // woken at PRE_COMMIT would find the slots still empty).
    if let Some((_, true)) = lost {
        ask_early_flush(db);
    }
    let lost = lost.map(|(lost, _)| lost);
    if lost == Some(true) {
        let c = &db.slot().counters;
        c.lost_tallies.fetch_add(1, Ordering::SeqCst);
        c.recount_asked.fetch_add(1, Ordering::SeqCst);
    }
}

/// After an abort that followed PRE_COMMIT: let go of the pins.
fn unpin_tallies() {
    let pinned = PINNED.with(|p| std::mem::take(&mut *p.borrow_mut()));
    if pinned.iter().all(|(_, pin)| !pin) {
        return;
    }
    let Some(db) = shared::this_db() else { return };
    with_table(db, |table| {
        for (t, _) in pinned.iter().filter(|(_, pin)| *pin) {
            table.unpin(t.queue.as_bytes(), t.priority);
        }
    });
}

/// SQL `queue.stats_fold_due()`: whether the flush should fold the rows
/// backends wrote into queue.stats (slot <> 0) into the flushed ones: some
/// commit spilled its tallies there since the last fold, and that was 100
/// maintenance ticks ago (at most a minute): often enough that the rows do
/// not pile up, seldom enough that backends rarely have to insert theirs
/// anew. Answering yes records the fold; one that rolls back is simply made
/// up by the next.
#[pg_extern(volatile, parallel_unsafe, schema = "queue")]
fn stats_fold_due() -> bool {
    let Some(db) = served_db() else { return false };
    let c = &db.slot().counters;
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let spills = c.spills.load(Ordering::SeqCst);
    let every = (crate::gucs::TICK_MS.get() as i64 * 100_000).min(60_000_000);
    if spills == c.folded_spills.load(Ordering::SeqCst) || now - c.folded_at.load(Ordering::SeqCst) < every {
        return false;
    }
    c.folded_spills.store(spills, Ordering::SeqCst);
    c.folded_at.store(now, Ordering::SeqCst);
    true
}

/// SQL `queue.stats_fold_unfinished()`: the fold just run took as many
/// rows as one pass may and more may be left, so the next flush folds
/// again instead of 100 ticks later. The fold goes in small passes because
/// a backend whose row it deletes waits for the flush to commit before it
/// can upsert that row again: a fold of every row at once held pushes back
/// for the whole fold at 10,000 queues (bench/README.md, cost curves).
#[pg_extern(volatile, parallel_unsafe, schema = "queue")]
fn stats_fold_unfinished() {
    let Some(db) = served_db() else { return };
    let c = &db.slot().counters;
    c.folded_spills.fetch_sub(1, Ordering::SeqCst);
    c.folded_at.store(0, Ordering::SeqCst);
}

pub(crate) fn at_transaction_end(event: pg_sys::XactEvent::Type) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_COMMIT => {
            let tallies = TALLIES.with(|t| t.take());
            if tallies.is_empty() {
                return;
            }
            match served_db().filter(|&db| crate::launcher::accepts_work(db)) {
                Some(db) => pin_tallies(db, tallies),
                None => write_tallies_to_table(tallies, unsafe { pg_sys::MyBackendId }),
            }
        }
        // Outside a served database a prepared transaction's tallies go
        // into queue.stats inside it, so that they commit or roll back with
        // it, exactly. In a slot of its own (from its transaction id, below
        // zero): rows of the backend's slot would stay locked by the
        // prepared transaction, and this backend's next commit would wait
        // for them.
        XACT_EVENT_PRE_PREPARE => {
            if !served() {
                let tallies = TALLIES.with(|t| t.take());
                if !tallies.is_empty() {
                    let xid = unsafe { pg_sys::GetTopTransactionIdIfAny() }.into_inner();
                    write_tallies_to_table(tallies, -((xid & 0x3fff_ffff) as i32) - 1);
                }
            }
        }
        XACT_EVENT_COMMIT => {
            let mut tallies = PINNED.with(|p| std::mem::take(&mut *p.borrow_mut()));
            // None are left after PRE_COMMIT; this is for a commit without it.
            tallies.extend(TALLIES.with(|t| t.take()).into_iter().map(|t| (t, false)));
            let recounted = RECOUNTED.with(|r| r.take());
            let Some(db) = shared::this_db() else { return };
            if !tallies.is_empty() {
                add_tallies_to_shared_memory(db, tallies);
            }
            if let Some(asked) = recounted.last() {
                db.slot().counters.recount_done.fetch_max(asked + 1, Ordering::SeqCst);
            }
        }
        XACT_EVENT_PREPARE => {
            // A prepared transaction may still roll back, and its tallies
            // cannot wait for it here: drop them and recount the gauges.
            let had = !TALLIES.with(|t| t.take()).is_empty();
            RECOUNTED.with(|r| r.clear());
            if let (true, Some(db)) = (had, served_db()) {
                db.slot().counters.recount_asked.fetch_add(1, Ordering::SeqCst);
            }
        }
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => {
            TALLIES.with(|t| t.clear());
            RECOUNTED.with(|r| r.clear());
            unpin_tallies();
        }
        _ => {}
    }
}

pub(crate) fn at_subtransaction_end(
    event: pg_sys::SubXactEvent::Type,
    subxact: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
) {
    TALLIES.with(|t| t.subtransaction_end(event, subxact, parent));
    RECOUNTED.with(|r| r.subtransaction_end(event, subxact, parent));
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    #[pg_test]
    fn a_job_life_moves_gauges_and_adds_totals() {
        let s = |n| Status::parse(n);
        let push = transition(None, s("pending"), 2);
        assert_eq!((push[PENDING], push[PUSHED]), (2, 2));
        let pop = transition(s("pending"), s("processing"), 1);
        assert_eq!((pop[PENDING], pop[PROCESSING], pop[POPPED]), (-1, 1, 1));
        let retry = transition(s("processing"), s("retrying"), 1);
        assert_eq!((retry[PROCESSING], retry[RETRYING], retry[RETRIED]), (-1, 1, 1));
        let done = transition(s("processing"), s("completed"), 1);
        assert_eq!((done[PROCESSING], done[COMPLETED]), (-1, 1));
        let gone = transition(s("pending"), None, 3);
        assert_eq!((gone[PENDING], gone[DELETED]), (-3, 3));
        assert_eq!(transition(s("completed"), None, 5), [0; COUNTERS], "pruning history changes no counter");
        assert_eq!(transition(s("failed"), s("pending"), 1)[PENDING], 1, "a retried dead job waits again");
        let blocked = transition(None, s("blocked"), 4);
        assert_eq!((blocked[BLOCKED], blocked[PUSHED]), (4, 4), "a blocked push counts as pushed");
        let released = transition(s("blocked"), s("pending"), 4);
        assert_eq!((released[BLOCKED], released[PENDING], released[PUSHED]), (-4, 4, 0));
        let gone = transition(s("blocked"), s("cancelled"), 1);
        assert_eq!((gone[BLOCKED], gone[CANCELLED]), (-1, 1));
    }

    fn table_of(slots: &mut Vec<Slot>, header: &mut TableHeader, f: impl FnOnce(&mut Table)) {
        f(&mut Table { header, slots: slots.as_mut_slice() })
    }

    #[pg_test]
    fn the_table_finds_keys_again_and_compacts() {
        let (mut slots, mut header) = (vec![FREE; 64], TableHeader { used: 0 });
        table_of(&mut slots, &mut header, |t| {
            t.slot(b"emails", 0).unwrap().counts[PENDING] = 3;
            t.slot(b"emails", 10).unwrap().counts[PENDING] = 1;
            t.slot(b"other", 0).unwrap();
            assert_eq!(t.slot(b"emails", 0).unwrap().counts[PENDING], 3);
            assert_eq!(t.header.used, 3);
            t.compact();
            assert_eq!(t.header.used, 2, "the empty entry is gone");
            assert_eq!(t.slot(b"emails", 10).unwrap().counts[PENDING], 1);
        });
    }

    #[pg_test]
    fn a_pinned_slot_outlives_compaction_until_unpinned() {
        let (mut slots, mut header) = (vec![FREE; 64], TableHeader { used: 0 });
        table_of(&mut slots, &mut header, |t| {
            assert!(t.pin(b"emails", 0));
            t.compact();
            assert!(t.find(b"emails", 0).is_some(), "a committing transaction still holds it");
            t.unpin(b"emails", 0);
            t.compact();
            assert!(t.find(b"emails", 0).is_none(), "empty and free again");
            t.unpin(b"emails", 0);
            assert_eq!(t.header.used, 0, "unpinning an unknown key claims nothing");
        });
    }

    #[pg_test]
    fn a_full_table_refuses_new_keys_but_keeps_old_ones() {
        let (mut slots, mut header) = (vec![FREE; 2048], TableHeader { used: 0 });
        table_of(&mut slots, &mut header, |t| {
            let mut n = 0;
            while t.slot(format!("q{n}").as_bytes(), 0).is_some() {
                n += 1;
            }
            assert_eq!(n, 1536);
            assert!(t.slot(b"q0", 0).is_some(), "known keys still count");
        });
    }
}
