//! Waking idle workers without a NOTIFY in every push.
//!
//! A NOTIFY makes its transaction take a cluster-wide lock that is held
//! across the commit's WAL flush, so every notifying commit waits for the
//! previous one: measured here, single-row pushes fall from 8.6k to 4.6k per
//! second. Yet an idle worker must wake within about a millisecond. So a push
//! only pays for a NOTIFY when some worker may actually be asleep, and even
//! then it does not send it itself:
//!
//! * **Sleepers.** `queue_pop` claims; only when it finds nothing does it
//!   mark its queue's slot in shared memory ("a worker of this queue may go
//!   to sleep") and then claims once more with a fresh snapshot. Busy workers
//!   never touch the mark.
//! * **Producers.** A push (or anything else that makes jobs claimable)
//!   calls `queue.wake`, which only remembers the queue for this
//!   transaction. After the commit has become visible, a transaction callback
//!   looks at the queue's slot. If a sleeper is marked it clears the mark,
//!   puts the queue on a small shared list and sets the notifier's latch.
//! * **The notifier**, a background worker, sends `NOTIFY queue_<name>` for
//!   every listed queue in one short transaction of its own, with
//!   `synchronous_commit = off`, so many wake-ups cost one small commit and
//!   no push waits for it.
//!
//! Why no wake-up is lost: the sleeper sets its mark *before* the snapshot
//! of its second claim, and the producer reads the mark *after* its commit
//! is visible. Either the second claim sees the job, or the producer sees
//! the mark (the classic store-then-load ordering, with SeqCst atomics and
//! the lock-protected snapshot between). If another producer cleared the
//! mark first, that producer's NOTIFY reaches the sleeper, which was already
//! listening, and it claims again.
//!
//! * **Passive listeners.** A session that only LISTENs (psql, a tool, a
//!   worker of another library) never marks a slot, yet it must hear of
//!   every push too. So the producer's callback puts every queue it made
//!   claimable on a second list, and the notifier sends those NOTIFYs as
//!   well, coalesced: at most one round every `PASSIVE_ROUND` (25 ms)
//!   (pgmq's throttled notify-on-insert). A marked sleeper does not wait for
//!   that round; the latch is set at once for it.
//!
//! Each served database has its own sleeper slots, lists and notifier
//! (src/shared.rs, src/launcher.rs). Where this path is not available
//! (library not preloaded, a database not served, its notifier not
//! running) `queue.wake` sends a plain NOTIFY in the caller's transaction:
//! slower, never wrong.
//!
//! Queues are hashed to slots. A slot that two queues share is marked
//! COLLIDED for good and then wakes its queues on every push: more
//! notifications, never fewer.

use crate::launcher::{self, Role};
use crate::shared::{self, Db, TxList};
use pgrx::bgworkers::*;
use pgrx::prelude::*;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Sleeper slots of a database. Queues hash into them; more slots, fewer
/// collisions.
pub const SLEEPER_SLOTS: usize = 4096;
/// Mark of a slot shared by two queues.
const COLLIDED: u64 = u64::MAX;
/// Queues the notifier can be asked to wake in one round.
const LIST_LEN: usize = 256;
/// Queue names are at most 57 bytes.
const NAME_BYTES: usize = 64;

/// Passive wake-ups are sent at most this often (each queue at most once a
/// round), so that a stream of pushes costs the notifier a bounded number of
/// small transactions however fast it comes.
const PASSIVE_ROUND: Duration = Duration::from_millis(25);

/// Name of the notifier in pg_stat_activity.
const NOTIFIER_NAME: &str = "queue notifier";

/// The notifier of a database: its latch, published by the notifier
/// itself (0: none runs), in the database's slot.
#[repr(C)]
pub struct Notifier {
    latch: AtomicUsize,
    /// How many wake-ups the held list holds: read by every commit, so an
    /// atomic rather than a lock.
    held: AtomicUsize,
}

/// Queues to wake, filled by committing producers, emptied by the notifier.
/// All zero: empty.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct WakeList {
    len: usize,
    overflow: bool,
    lens: [u8; LIST_LEN],
    names: [[u8; NAME_BYTES]; LIST_LEN],
}
impl WakeList {
    #[cfg(any(test, feature = "pg_test"))]
    const fn new() -> Self {
        WakeList { len: 0, overflow: false, lens: [0; LIST_LEN], names: [[0; NAME_BYTES]; LIST_LEN] }
    }

    fn add(&mut self, name: &[u8]) {
        let n = name.len().min(NAME_BYTES);
        let name = &name[..n];
        if (0..self.len).any(|i| &self.names[i][..self.lens[i] as usize] == name) {
            return;
        }
        if self.len == LIST_LEN {
            self.overflow = true;
            return;
        }
        self.names[self.len][..n].copy_from_slice(name);
        self.lens[self.len] = n as u8;
        self.len += 1;
    }

    fn take(&mut self) -> (Vec<String>, bool) {
        let names = (0..self.len)
            .map(|i| String::from_utf8_lossy(&self.names[i][..self.lens[i] as usize]).into_owned())
            .collect();
        let overflow = self.overflow;
        self.len = 0;
        self.overflow = false;
        (names, overflow)
    }
}

/// Wake-ups held for prepared transactions: (transaction id, queue) pairs.
/// PREPARE TRANSACTION hands them over; the notifier sends those whose
/// transaction committed (COMMIT PREPARED, from any session) and drops
/// those that rolled back. When full, the overflow flag makes the next
/// commit of a held transaction wake every queue with pending jobs.
/// All zero: empty.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Held {
    len: usize,
    overflow: bool,
    xids: [u32; LIST_LEN],
    names: WakeList,
}

impl Held {
    #[cfg(any(test, feature = "pg_test"))]
    const fn new() -> Self {
        Held { len: 0, overflow: false, xids: [0; LIST_LEN], names: WakeList::new() }
    }

    /// Hold the wake-up of `name` for transaction `xid` (duplicates kept:
    /// two prepared transactions may wake one queue).
    fn hold(&mut self, xid: u32, name: &[u8]) {
        if self.len == LIST_LEN {
            self.overflow = true;
            return;
        }
        let n = name.len().min(NAME_BYTES);
        self.names.names[self.len][..n].copy_from_slice(&name[..n]);
        self.names.lens[self.len] = n as u8;
        self.xids[self.len] = xid;
        self.len += 1;
    }

    /// Take the wake-ups whose transaction `ended` says is over: the names
    /// of the committed ones (and whether the overflow must be woken), the
    /// rest stay held.
    fn release(&mut self, ended: impl Fn(u32) -> Option<bool>) -> (Vec<String>, bool) {
        let (mut kept, mut woken, mut any_commit) = (0, Vec::new(), false);
        for i in 0..self.len {
            let name = &self.names.names[i][..self.names.lens[i] as usize];
            match ended(self.xids[i]) {
                Some(true) => {
                    any_commit = true;
                    woken.push(String::from_utf8_lossy(name).into_owned());
                }
                Some(false) => {}
                None => {
                    let (xid, len, copy) = (self.xids[i], self.names.lens[i], self.names.names[i]);
                    self.xids[kept] = xid;
                    self.names.lens[kept] = len;
                    self.names.names[kept] = copy;
                    kept += 1;
                }
            }
        }
        self.len = kept;
        let overflow = self.overflow && any_commit;
        if overflow {
            self.overflow = false;
        }
        (woken, overflow)
    }
}

/// The slot tag of a queue in this database: FNV-1a over the database oid
/// and the name, never 0 (empty slot) nor COLLIDED.
fn tag_of(database: u32, queue: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in database.to_le_bytes().iter().chain(queue.as_bytes()) {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    match h {
        0 => 1,
        COLLIDED => COLLIDED - 1,
        h => h,
    }
}

fn slot_of(tag: u64) -> usize {
    (tag % SLEEPER_SLOTS as u64) as usize
}

/// Mark a tag in its slot; a slot already holding another tag becomes
/// COLLIDED. Writes only when something changes, so idle polling does not
/// bounce the cache line.
fn mark(slots: &[AtomicU64], tag: u64) {
    let slot = &slots[slot_of(tag)];
    loop {
        let current = slot.load(Ordering::SeqCst);
        if current == tag || current == COLLIDED {
            return;
        }
        let next = if current == 0 { tag } else { COLLIDED };
        if slot.compare_exchange(current, next, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            return;
        }
    }
}

/// Whether a committed producer of `tag` must wake its queue; clears an
/// exact mark so that the next producers stay quiet until a worker sleeps
/// again.
fn take_mark(slots: &[AtomicU64], tag: u64) -> bool {
    let slot = &slots[slot_of(tag)];
    match slot.load(Ordering::SeqCst) {
        COLLIDED => true,
        current if current == tag => {
            // Losing this race means another producer cleared it and wakes
            // the queue, or it became COLLIDED: wake in that case too.
            slot.compare_exchange(tag, 0, Ordering::SeqCst, Ordering::SeqCst).is_ok()
                || slot.load(Ordering::SeqCst) == COLLIDED
        }
        _ => false,
    }
}

/// This database's slot, when its notifier can take this backend's
/// wake-ups.
fn notifier_of_this_database() -> Option<Db> {
    shared::this_db().filter(|&db| db.slot().notifier.latch.load(Ordering::SeqCst) != 0 && !launcher::retiring(db))
}

/// SQL `queue.note_sleeper(queue)`: called by queue_pop when a claim came
/// back empty, before it claims once more.
#[pg_extern(volatile, strict, parallel_unsafe, schema = "queue")]
fn note_sleeper(queue: &str) {
    if let Some(db) = shared::this_db() {
        mark(db.sleepers(), tag_of(shared::my_database(), queue));
    }
}

thread_local! {
    /// Queues this transaction made claimable: (tag, name).
    static PENDING: TxList<(u64, String, u32)> = const { TxList::new() };
    /// Queues to NOTIFY just before this transaction commits (no notifier).
    static NOTIFY_AT_COMMIT: TxList<String> = const { TxList::new() };
    /// Queues this transaction made claimable, for backends waiting in
    /// queue_pop: (tag, how many times).
    static FOR_WAITERS: TxList<(u64, u32)> = const { TxList::new() };
    /// This backend is registered as a waiter.
    static REGISTERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// SQL `queue.wake(queue)`: jobs of the queue became claimable. Hands the
/// wake-up to the notifier after commit when it serves this database, and
/// otherwise sends `NOTIFY queue_<name>` from this transaction, just before
/// it commits: not at once, because a transaction that has notified cannot
/// PREPARE. A prepared transaction of such a database wakes nobody (its
/// workers' polling finds the jobs). Postgres folds identical notifications
/// of one transaction into one.
#[pg_extern(volatile, strict, parallel_unsafe, schema = "queue")]
pub(crate) fn wake(queue: &str) {
    if shared::preloaded() {
        let tag = tag_of(shared::my_database(), queue);
        FOR_WAITERS.with(|w| w.fold(shared::key_hash(&tag), (tag, 1), |(t, _)| *t == tag, |e, _| e.1 += 1));
    }
    if !defer_wake(queue) {
        NOTIFY_AT_COMMIT.with(|n| n.fold(shared::key_hash(&queue), queue.to_owned(), |q| q == queue, |_, _| {}));
    }
}

/// Send the NOTIFYs this transaction asked for where no notifier serves.
fn notify_now(queues: Vec<String>) {
    for queue in queues {
        let channel = format!("queue_{queue}");
        unsafe {
            pgrx::direct_function_call_as_datum(pg_sys::pg_notify, &[channel.as_str().into_datum(), "".into_datum()]);
        }
    }
}

/// Remember to wake the queue's sleepers after commit. False when the
/// notifier cannot do it.
fn defer_wake(queue: &str) -> bool {
    if notifier_of_this_database().is_none() {
        return false;
    }
    let tag = tag_of(shared::my_database(), queue);
    PENDING
        .with(|p| p.fold(shared::key_hash(&tag), (tag, queue.to_owned(), 1), |(t, _, _)| *t == tag, |e, _| e.2 += 1));
    true
}

/// After commit: hand the queues with a marked sleeper to the notifier at
/// once, and every other queue to its next passive round. After abort:
/// forget them. Must not raise an error (it runs after the commit record):
/// atomics, two LWLocks, at most one SetLatch. The latch is set for a
/// sleeper, or when this commit starts a passive round (the list was empty);
/// later commits of the same round only join the list.
pub(crate) fn at_transaction_end(event: pg_sys::XactEvent::Type) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_COMMIT => {
            // Still inside the transaction: its NOTIFYs go out with its commit.
            notify_now(NOTIFY_AT_COMMIT.with(|n| n.take()));
            return;
        }
        XACT_EVENT_PRE_PREPARE | XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => {
            NOTIFY_AT_COMMIT.with(|n| n.clear());
        }
        _ => {}
    }
    let commit = event == XACT_EVENT_COMMIT;
    let prepare = event == XACT_EVENT_PREPARE;
    if !commit && !prepare && event != XACT_EVENT_ABORT && event != XACT_EVENT_PARALLEL_ABORT {
        return;
    }
    let pending = PENDING.with(|p| p.take());
    let for_waiters = FOR_WAITERS.with(|w| w.take());
    if REGISTERED.get() {
        stop_waiting();
    }
    if commit {
        for (tag, n) in for_waiters {
            wake_waiters(tag, n);
        }
    }
    let Some(db) = shared::this_db() else { return };
    let notifier = &db.slot().notifier;
    if prepare && !pending.is_empty() {
        // Claimable only once COMMIT PREPARED runs, perhaps in another
        // session: the notifier holds these until the transaction ends.
        let xid = unsafe { pg_sys::GetTopTransactionIdIfAny() }.into_inner();
        db.held_wakeups().exclusive(|held, _| {
            for (_, name, _) in &pending {
                held.hold(xid, name.as_bytes());
            }
            notifier.held.store(held.len, Ordering::SeqCst);
        });
        return;
    }
    if commit && notifier.held.load(Ordering::SeqCst) > 0 {
        // Perhaps a COMMIT PREPARED: let the notifier look at once.
        set_notifier_latch(db);
    }
    if !commit || pending.is_empty() {
        return;
    }
    type Pending = (u64, String, u32);
    let (to_wake, passive): (Vec<&Pending>, Vec<&Pending>) =
        pending.iter().partition(|(tag, _, _)| take_mark(db.sleepers(), *tag));
    let mut set_latch = false;
    if !to_wake.is_empty() {
        db.wake_list().exclusive(|list, _| {
            for (_, name, _) in to_wake {
                list.add(name.as_bytes());
            }
        });
        set_latch = true;
    }
    if !passive.is_empty() {
        db.passive_list().exclusive(|list, _| {
            set_latch |= list.len == 0 && !list.overflow;
            for (_, name, _) in passive {
                list.add(name.as_bytes());
            }
        });
    }
    if set_latch {
        set_notifier_latch(db);
    }
}

pub(crate) fn at_subtransaction_end(
    event: pg_sys::SubXactEvent::Type,
    subxact: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
) {
    PENDING.with(|p| p.subtransaction_end(event, subxact, parent));
    FOR_WAITERS.with(|w| w.subtransaction_end(event, subxact, parent));
    NOTIFY_AT_COMMIT.with(|n| n.subtransaction_end(event, subxact, parent));
}

/// Wake the notifier of the database, if one runs.
fn set_notifier_latch(db: Db) {
    let latch = db.slot().notifier.latch.load(Ordering::SeqCst);
    if latch != 0 {
        unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
    }
}

// ---------------------------------------------------------------------------
// Waiting inside queue_pop (pooler-safe: no LISTEN, no session state)
// ---------------------------------------------------------------------------
//
// `queue_pop(..., wait => '5 seconds')` claims; when it finds nothing it
// registers this backend as a waiter for the queue's tag (in the region's
// header, one entry per backend: src/shared.rs), claims once more with a
// fresh snapshot, and sleeps on its own latch until the deadline. The
// commit of a transaction that made jobs of the queue claimable sets the
// latches of as many waiters of that tag as it called `queue.wake` (one per
// push), and clears their entries. The same store-then-load argument as for
// sleepers (module comment) means no wake-up is lost between the waiter's
// second claim and its sleep: the waiter registers before that claim's
// snapshot, the producer looks after its commit is visible, and the latch is
// reset before registering, so a wake-up that comes early is still seen.
// A waiter that claims a full batch wakes the next waiter itself (there may
// be more jobs than one batch): batches of pushes wake as many waiters as
// they need, one after another, and never a herd.

/// One backend's wait. Tag 0: not waiting.
#[repr(C)]
pub struct Waiter {
    tag: AtomicU64,
}

/// Set the latches of up to `n` backends waiting for `tag`, clearing their
/// entries. Must not raise an error (it runs after commit).
fn wake_waiters(tag: u64, n: u32) {
    let Some((waiting, waiters)) = shared::waiters() else { return };
    if waiting.load(Ordering::SeqCst) == 0 {
        return;
    }
    let mut left = n;
    for (procno, w) in waiters.iter().enumerate() {
        if left == 0 {
            break;
        }
        if w.tag.load(Ordering::SeqCst) == tag
            && w.tag.compare_exchange(tag, 0, Ordering::SeqCst, Ordering::SeqCst).is_ok()
        {
            waiting.fetch_sub(1, Ordering::SeqCst);
            unsafe { pg_sys::SetLatch(&raw mut (*(*pg_sys::ProcGlobal).allProcs.add(procno)).procLatch) };
            left -= 1;
        }
    }
}

/// This backend's waiter entry.
fn my_waiter() -> Option<(&'static std::sync::atomic::AtomicU32, &'static Waiter)> {
    let (waiting, waiters) = shared::waiters()?;
    let procno = unsafe { (*pg_sys::MyProc).pgprocno } as usize;
    waiters.get(procno).map(|w| (waiting, w))
}

/// Withdraw this backend's wait, if any.
fn stop_waiting() {
    REGISTERED.set(false);
    if let Some((waiting, w)) = my_waiter() {
        if w.tag.swap(0, Ordering::SeqCst) != 0 {
            waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// A waiting `queue_pop` claims only once something is claimable, so in a
/// read-only transaction it would not fail: it would wait out every call and
/// return nothing. On a standby nothing ever becomes claimable, and a worker
/// pointed at one (a pooler, or a host name left on a server that became a
/// standby after a failover) would idle silently while jobs pile up on the
/// primary. Refuse as the claim itself would.
fn refuse_read_only_wait() {
    if !unsafe { pg_sys::XactReadOnly } {
        return;
    }
    if unsafe { pg_sys::RecoveryInProgress() } {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            "queue_pop cannot claim jobs on a standby",
            "This server is in recovery: point workers at the primary."
        );
    }
    ereport!(
        ERROR,
        PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
        "queue_pop cannot claim jobs in a read-only transaction",
        "Claim in a read-write transaction (default_transaction_read_only is on, or the transaction was started READ ONLY)."
    );
}

/// SQL `queue.wait_register(queue)`: from now on, a commit that makes jobs
/// of the queue claimable sets this backend's latch. False where waiting is
/// not possible (library not preloaded): the caller naps instead.
#[pg_extern(volatile, strict, parallel_unsafe, schema = "queue")]
fn wait_register(queue: &str) -> bool {
    refuse_read_only_wait();
    let Some((waiting, w)) = my_waiter() else { return false };
    unsafe { pg_sys::ResetLatch(pg_sys::MyLatch) };
    let tag = tag_of(shared::my_database(), queue);
    if w.tag.swap(tag, Ordering::SeqCst) == 0 {
        waiting.fetch_add(1, Ordering::SeqCst);
    }
    REGISTERED.set(true);
    // The end of this transaction withdraws the wait, however it ends.
    shared::register_callbacks();
    true
}

/// SQL `queue.wait_sleep(until)`: sleep until a producer wakes this
/// backend, `until`, or an interrupt (a cancel, statement_timeout: raised
/// here). Without a registration (or shared memory) it naps 50 ms at most.
/// False once `until` has passed.
#[pg_extern(volatile, strict, parallel_unsafe, schema = "queue")]
fn wait_sleep(until: TimestampWithTimeZone) -> bool {
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let until = until.into_inner();
    if now >= until {
        return false;
    }
    let mut ms = ((until - now) / 1000).clamp(1, i32::MAX as i64);
    if !REGISTERED.get() {
        ms = ms.min(50);
    }
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            ms,
            pg_sys::PG_WAIT_EXTENSION,
        );
    }
    pg_sys::check_for_interrupts!();
    true
}

/// SQL `queue.wait_done(queue, claimed_full_batch)`: the wait is over. A
/// waiter that claimed a full batch passes the wake-up on to one more
/// waiter of the queue.
#[pg_extern(volatile, strict, parallel_unsafe, schema = "queue")]
fn wait_done(queue: &str, pass_on: bool) {
    stop_waiting();
    if pass_on {
        wake_waiters(tag_of(shared::my_database(), queue), 1);
    }
}

/// The notifier's entry point. It publishes its latch, then sleeps until a
/// producer sets it and sends the NOTIFYs asked for: those of sleepers at
/// once, passive ones in rounds at most every `PASSIVE_ROUND`.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn queue_notifier_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    launcher::connect(arg);
    unsafe {
        pg_sys::pgstat_report_appname(c"queue notifier".as_ptr());
    }
    let Some(db) = launcher::enter(Role::Notifier) else {
        unsafe { pg_sys::proc_exit(0) };
    };
    let database = BackgroundWorker::transaction(launcher::database_name);
    // A NOTIFY transaction gets a transaction id and so a commit record;
    // nothing is lost if that record is not flushed before the listeners
    // hear of it, so do not wait for the flush.
    BackgroundWorker::transaction(|| {
        let _ = Spi::run("SET synchronous_commit = off");
    });
    let latch = unsafe { &raw mut (*pg_sys::MyProc).procLatch } as usize;
    // However this process ends (SIGTERM, FATAL, proc_exit), the latch is
    // withdrawn before its PGPROC can be handed to another backend.
    unsafe { pg_sys::before_shmem_exit(Some(withdraw_latch), pg_sys::Datum::from(db.index())) };
    db.slot().notifier.latch.store(latch, Ordering::SeqCst);
    log!("{NOTIFIER_NAME}: started for database \"{database}\"");

    // Wake-ups asked for while no notifier ran are sent at once.
    let mut last_passive = std::time::Instant::now() - PASSIVE_ROUND;
    let mut sleep = Duration::ZERO;
    crate::services::set_idle();
    while BackgroundWorker::wait_latch(Some(sleep)) && !launcher::should_stop(db) {
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        let passive_due = last_passive.elapsed() >= PASSIVE_ROUND;
        if send_requested_notifications(db, passive_due) {
            last_passive = std::time::Instant::now();
        }
        sleep = if passive_waiting(db) {
            PASSIVE_ROUND.saturating_sub(last_passive.elapsed()).max(Duration::from_millis(1))
        } else {
            Duration::from_secs(1)
        };
    }
    log!("{NOTIFIER_NAME}: shutting down for database \"{database}\"");
    unsafe { pg_sys::proc_exit(0) };
}

/// Exit callback of the notifier: withdraw its latch (if still the one
/// published), so that no producer sets the latch of a PGPROC that is no
/// longer the notifier's.
#[pg_guard]
unsafe extern "C-unwind" fn withdraw_latch(_code: i32, index: pg_sys::Datum) {
    if let Some(db) = shared::slots().nth(index.value()) {
        let latch = unsafe { &raw mut (*pg_sys::MyProc).procLatch } as usize;
        let _ = db.slot().notifier.latch.compare_exchange(latch, 0, Ordering::SeqCst, Ordering::SeqCst);
    }
}

thread_local! {
    /// Whether the notifier has seen the extension installed in its database.
    static EXTENSION_SEEN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether passive wake-ups wait for their round.
fn passive_waiting(db: Db) -> bool {
    db.passive_list().share(|list, _| list.len > 0 || list.overflow)
}

/// One round: take the lists (the passive one only when its round is due)
/// and NOTIFY each queue on them in one transaction, calling `pg_notify`
/// directly (no SQL to parse). If a list overflowed, every queue with
/// pending jobs is woken. A round that fails puts its queues back on the
/// list for the next one, so an error never drops a wake-up. Returns
/// whether a passive round ran.
fn send_requested_notifications(db: Db, passive_due: bool) -> bool {
    let (mut names, mut overflow) = db.wake_list().exclusive(|list, _| list.take());
    if passive_due {
        let (passive, passive_overflow) = db.passive_list().exclusive(|list, _| list.take());
        for name in passive {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        overflow |= passive_overflow;
    }
    // Wake-ups of prepared transactions that have committed since.
    let notifier = &db.slot().notifier;
    if notifier.held.load(Ordering::SeqCst) > 0 {
        let (released, held_overflow) = db.held_wakeups().exclusive(|held, _| {
            let released = held.release(|xid| {
                let xid = pg_sys::TransactionId::from(xid);
                if unsafe { pg_sys::TransactionIdDidCommit(xid) } {
                    Some(true)
                } else if xid.into_inner() < pg_sys::FirstNormalTransactionId.into_inner()
                    || unsafe { pg_sys::TransactionIdDidAbort(xid) }
                {
                    Some(false)
                } else {
                    None
                }
            });
            notifier.held.store(held.len, Ordering::SeqCst);
            released
        });
        for name in &released {
            wake_waiters(tag_of(shared::my_database(), name), u32::MAX);
        }
        for name in released {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        overflow |= held_overflow;
    }
    if names.is_empty() && !overflow {
        return false;
    }
    let sent = crate::services::guarded(NOTIFIER_NAME, "a round of wake-ups", || {
        // Checked until found, and again after a failed round (the extension
        // may have been dropped): not a query in every round.
        if !EXTENSION_SEEN.get() {
            if !crate::services::extension_installed() {
                return Ok(());
            }
            EXTENSION_SEEN.set(true);
        }
        if overflow {
            Spi::run(
                "SELECT pg_catalog.pg_notify('queue_' OPERATOR(pg_catalog.||) queue, '')
                   FROM (SELECT DISTINCT queue FROM queue.jobs WHERE status = 'pending') q",
            )?;
        }
        for name in &names {
            let channel = format!("queue_{name}");
            unsafe {
                pgrx::direct_function_call_as_datum(
                    pg_sys::pg_notify,
                    &[channel.as_str().into_datum(), "".into_datum()],
                );
            }
        }
        Ok(())
    });
    if sent.is_none() {
        EXTENSION_SEEN.set(false);
        db.wake_list().exclusive(|list, _| {
            for name in &names {
                list.add(name.as_bytes());
            }
            list.overflow |= overflow;
        });
    }
    passive_due
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    fn empty_slots() -> Vec<AtomicU64> {
        (0..SLEEPER_SLOTS).map(|_| AtomicU64::new(0)).collect()
    }

    #[pg_test]
    fn a_producer_wakes_only_a_marked_queue_once() {
        let slots = empty_slots();
        let t = tag_of(5, "emails");
        assert!(!take_mark(&slots, t), "nobody sleeps: no wake-up");
        mark(&slots, t);
        assert!(take_mark(&slots, t), "a sleeper: wake");
        assert!(!take_mark(&slots, t), "the mark is cleared by the first producer");
    }

    #[pg_test]
    fn databases_and_names_make_different_tags() {
        assert_ne!(tag_of(5, "emails"), tag_of(6, "emails"));
        assert_ne!(tag_of(5, "emails"), tag_of(5, "emailz"));
        assert_eq!(tag_of(5, "emails"), tag_of(5, "emails"));
    }

    #[pg_test]
    fn a_shared_slot_wakes_every_queue_in_it_for_good() {
        let slots = empty_slots();
        let a = tag_of(5, "a");
        // Find a different tag that lands in the same slot.
        let b =
            (0..1_000_000).map(|i| tag_of(5, &format!("q{i}"))).find(|&t| t != a && slot_of(t) == slot_of(a)).unwrap();
        mark(&slots, a);
        mark(&slots, b);
        assert!(take_mark(&slots, a));
        assert!(take_mark(&slots, b));
        assert!(take_mark(&slots, a), "collided slots never go quiet");
    }

    #[pg_test]
    fn held_wakeups_go_with_their_transactions_end() {
        let mut held = Box::new(Held::new());
        held.hold(100, b"a");
        held.hold(101, b"b");
        held.hold(102, b"c");
        held.hold(100, b"d");
        // 100 committed, 101 rolled back, 102 still prepared
        let ended = |xid| match xid {
            100 => Some(true),
            101 => Some(false),
            _ => None,
        };
        let (woken, overflow) = held.release(ended);
        assert_eq!(woken, vec!["a".to_string(), "d".to_string()]);
        assert!(!overflow);
        assert_eq!(held.len, 1);
        assert_eq!(held.release(|_| Some(true)), (vec!["c".to_string()], false));
        for i in 0..LIST_LEN + 3 {
            held.hold(i as u32, b"q");
        }
        assert!(held.overflow);
        let (woken, overflow) = held.release(|_| Some(true));
        assert_eq!(woken.len(), LIST_LEN);
        assert!(overflow, "a commit after an overflow wakes every queue");
    }

    #[pg_test]
    fn the_wake_list_deduplicates_and_overflows_safely() {
        let mut list = Box::new(WakeList::new());
        list.add(b"a");
        list.add(b"a");
        list.add(b"b");
        let (names, overflow) = list.take();
        assert_eq!(names, vec!["a".to_string(), "b".to_string()]);
        assert!(!overflow);
        for i in 0..LIST_LEN + 5 {
            list.add(format!("q{i}").as_bytes());
        }
        let (names, overflow) = list.take();
        assert_eq!(names.len(), LIST_LEN);
        assert!(overflow);
        assert_eq!(list.take(), (vec![], false));
    }
}
