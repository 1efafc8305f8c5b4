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
//! Where this path is not available (library not preloaded, a push in a
//! database other than `queue.database`, notifier not running) `queue.wake`
//! sends a plain NOTIFY in the caller's transaction: slower, never wrong.
//!
//! Queues are hashed to slots. A slot that two queues share is marked
//! COLLIDED for good and then wakes its queues on every push: more
//! notifications, never fewer.

use crate::gucs;
use pgrx::bgworkers::*;
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgAtomic, PgLwLock};
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Sleeper slots. Queues hash into them; more slots, fewer collisions.
const SLOTS: usize = 4096;
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

/// The notifier's latch and database, published by the notifier itself.
#[derive(Default)]
pub struct Notifier {
    latch: AtomicUsize,
    database: AtomicU32,
    /// How many wake-ups `HELD` holds: read by every commit, so an atomic
    /// rather than a lock.
    held: AtomicUsize,
}
unsafe impl PGRXSharedMemory for Notifier {}

/// Queues to wake, filled by committing producers, emptied by the notifier.
#[derive(Clone, Copy)]
pub struct WakeList {
    len: usize,
    overflow: bool,
    lens: [u8; LIST_LEN],
    names: [[u8; NAME_BYTES]; LIST_LEN],
}
unsafe impl PGRXSharedMemory for WakeList {}

impl WakeList {
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

static SLEEPERS: PgAtomic<[AtomicU64; SLOTS]> = unsafe { PgAtomic::new(c"queue_sleepers") };
static NOTIFIER: PgAtomic<Notifier> = unsafe { PgAtomic::new(c"queue_notifier") };
static WAKE_LIST: PgLwLock<WakeList> = unsafe { PgLwLock::new(c"queue_wake_list") };
/// Queues with new claimable jobs, for listeners that never popped.
static PASSIVE_LIST: PgLwLock<WakeList> = unsafe { PgLwLock::new(c"queue_passive_list") };
/// Wake-ups of prepared transactions, sent when they commit.
static HELD: PgLwLock<Held> = unsafe { PgLwLock::new(c"queue_held_wakeups") };

/// Wake-ups held for prepared transactions: (transaction id, queue) pairs.
/// PREPARE TRANSACTION hands them over; the notifier sends those whose
/// transaction committed (COMMIT PREPARED, from any session) and drops
/// those that rolled back. When full, the overflow flag makes the next
/// commit of a held transaction wake every queue with pending jobs.
#[derive(Clone, Copy)]
pub struct Held {
    len: usize,
    overflow: bool,
    xids: [u32; LIST_LEN],
    names: WakeList,
}
unsafe impl PGRXSharedMemory for Held {}

impl Held {
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

/// True in processes forked from a postmaster that preloaded the library,
/// i.e. where the shared memory above exists.
static SHMEM_READY: AtomicBool = AtomicBool::new(false);

/// Reserve the shared memory. Only from `_PG_init` while preloading.
pub fn init_shared_memory() {
    pg_shmem_init!(SLEEPERS = [const { AtomicU64::new(0) }; SLOTS]);
    pg_shmem_init!(NOTIFIER = Notifier::default());
    pg_shmem_init!(WAKE_LIST = WakeList::new());
    pg_shmem_init!(PASSIVE_LIST = WakeList::new());
    pg_shmem_init!(HELD = Held::new());
    SHMEM_READY.store(true, Ordering::SeqCst);
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
    (tag % SLOTS as u64) as usize
}

/// Mark a tag in its slot; a slot already holding another tag becomes
/// COLLIDED. Writes only when something changes, so idle polling does not
/// bounce the cache line.
fn mark(slots: &[AtomicU64; SLOTS], tag: u64) {
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
fn take_mark(slots: &[AtomicU64; SLOTS], tag: u64) -> bool {
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

/// Whether this backend can hand its wake-ups to the notifier.
fn notifier_serves_this_database() -> bool {
    if !SHMEM_READY.load(Ordering::SeqCst) {
        return false;
    }
    let n = NOTIFIER.get();
    n.latch.load(Ordering::SeqCst) != 0 && n.database.load(Ordering::SeqCst) == unsafe { pg_sys::MyDatabaseId }.to_u32()
}

/// SQL `queue.note_sleeper(queue)`: called by queue_pop when a claim came
/// back empty, before it claims once more.
#[pg_extern(volatile, strict, parallel_unsafe, schema = "queue")]
fn note_sleeper(queue: &str) {
    if SHMEM_READY.load(Ordering::SeqCst) {
        mark(SLEEPERS.get(), tag_of(unsafe { pg_sys::MyDatabaseId }.to_u32(), queue));
    }
}

thread_local! {
    /// Queues this transaction made claimable: (tag, name).
    static PENDING: RefCell<Vec<(u64, String)>> = const { RefCell::new(Vec::new()) };
    /// Whether the transaction callback is registered in this backend.
    static CALLBACK_REGISTERED: RefCell<bool> = const { RefCell::new(false) };
    /// Queues to NOTIFY just before this transaction commits (no notifier).
    static NOTIFY_AT_COMMIT: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// SQL `queue.wake(queue)`: jobs of the queue became claimable. Hands the
/// wake-up to the notifier after commit when it serves this database, and
/// otherwise sends `NOTIFY queue_<name>` from this transaction, just before
/// it commits: not at once, because a transaction that has notified cannot
/// PREPARE. A prepared transaction of such a database wakes nobody (its
/// workers' polling finds the jobs). Postgres folds identical notifications
/// of one transaction into one.
#[pg_extern(volatile, strict, parallel_unsafe, schema = "queue")]
fn wake(queue: &str) {
    if !defer_wake(queue) {
        register_callback();
        NOTIFY_AT_COMMIT.with(|n| {
            let mut n = n.borrow_mut();
            if !n.iter().any(|q| q == queue) {
                n.push(queue.to_owned());
            }
        });
    }
}

/// Send the NOTIFYs this transaction asked for where no notifier serves.
fn notify_now(queues: Vec<String>) {
    for queue in queues {
        let channel = format!("queue_{queue}");
        unsafe {
            pgrx::direct_function_call_as_datum(
                pg_sys::pg_notify,
                &[channel.as_str().into_datum(), "".into_datum()],
            );
        }
    }
}

/// Register this module's transaction callback in this backend, once.
fn register_callback() {
    CALLBACK_REGISTERED.with(|registered| {
        let mut registered = registered.borrow_mut();
        if !*registered {
            unsafe { pg_sys::RegisterXactCallback(Some(at_transaction_end), std::ptr::null_mut()) };
            *registered = true;
        }
    });
}

/// Remember to wake the queue's sleepers after commit. False when the
/// notifier cannot do it.
fn defer_wake(queue: &str) -> bool {
    if !notifier_serves_this_database() {
        return false;
    }
    register_callback();
    let tag = tag_of(unsafe { pg_sys::MyDatabaseId }.to_u32(), queue);
    PENDING.with(|p| {
        let mut p = p.borrow_mut();
        if !p.iter().any(|(t, _)| *t == tag) {
            p.push((tag, queue.to_owned()));
        }
    });
    true
}

/// After commit: hand the queues with a marked sleeper to the notifier at
/// once, and every other queue to its next passive round. After abort:
/// forget them. Must not raise an error (it runs after the commit record):
/// atomics, two LWLocks, at most one SetLatch. The latch is set for a
/// sleeper, or when this commit starts a passive round (the list was empty);
/// later commits of the same round only join the list.
#[pg_guard]
unsafe extern "C-unwind" fn at_transaction_end(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT => {
            // Still inside the transaction: its NOTIFYs go out with its commit.
            let queues = NOTIFY_AT_COMMIT.with(|n| std::mem::take(&mut *n.borrow_mut()));
            notify_now(queues);
            return;
        }
        pg_sys::XactEvent::XACT_EVENT_PRE_PREPARE | pg_sys::XactEvent::XACT_EVENT_ABORT => {
            NOTIFY_AT_COMMIT.with(|n| n.borrow_mut().clear());
        }
        _ => {}
    }
    let commit = event == pg_sys::XactEvent::XACT_EVENT_COMMIT;
    let prepare = event == pg_sys::XactEvent::XACT_EVENT_PREPARE;
    if !commit && !prepare && event != pg_sys::XactEvent::XACT_EVENT_ABORT {
        return;
    }
    let pending = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
    if prepare && !pending.is_empty() {
        // Claimable only once COMMIT PREPARED runs, perhaps in another
        // session: the notifier holds these until the transaction ends.
        let xid = unsafe { pg_sys::GetTopTransactionIdIfAny() }.into_inner();
        let mut held = HELD.exclusive();
        for (_, name) in &pending {
            held.hold(xid, name.as_bytes());
        }
        NOTIFIER.get().held.store(held.len, Ordering::SeqCst);
        return;
    }
    if commit && NOTIFIER.get().held.load(Ordering::SeqCst) > 0 {
        // Perhaps a COMMIT PREPARED: let the notifier look at once.
        set_notifier_latch();
    }
    if !commit || pending.is_empty() {
        return;
    }
    let slots = SLEEPERS.get();
    let (to_wake, passive): (Vec<&(u64, String)>, Vec<&(u64, String)>) =
        pending.iter().partition(|(tag, _)| take_mark(slots, *tag));
    let mut set_latch = false;
    if !to_wake.is_empty() {
        let mut list = WAKE_LIST.exclusive();
        for (_, name) in to_wake {
            list.add(name.as_bytes());
        }
        set_latch = true;
    }
    if !passive.is_empty() {
        let mut list = PASSIVE_LIST.exclusive();
        set_latch |= list.len == 0 && !list.overflow;
        for (_, name) in passive {
            list.add(name.as_bytes());
        }
    }
    if set_latch {
        set_notifier_latch();
    }
}

/// Wake the notifier, if one runs.
fn set_notifier_latch() {
    let latch = NOTIFIER.get().latch.load(Ordering::SeqCst);
    if latch != 0 {
        unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
    }
}

/// Register the notifier with the postmaster (from `_PG_init`).
pub fn register_worker() {
    crate::services::register_worker(NOTIFIER_NAME, "queue_notifier_main");
}

/// The notifier's entry point. It publishes its latch, then sleeps until a
/// producer sets it and sends the NOTIFYs asked for: those of sleepers at
/// once, passive ones in rounds at most every `PASSIVE_ROUND`.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn queue_notifier_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = gucs::database_name();
    crate::services::connect(&database);
    unsafe {
        pg_sys::pgstat_report_appname(c"queue notifier".as_ptr());
    }
    // A NOTIFY transaction gets a transaction id and so a commit record;
    // nothing is lost if that record is not flushed before the listeners
    // hear of it, so do not wait for the flush.
    BackgroundWorker::transaction(|| {
        let _ = Spi::run("SET synchronous_commit = off");
    });
    let shared = NOTIFIER.get();
    shared.database.store(unsafe { pg_sys::MyDatabaseId }.to_u32(), Ordering::SeqCst);
    let latch = unsafe { &raw mut (*pg_sys::MyProc).procLatch } as usize;
    // However this process ends (SIGTERM, FATAL, proc_exit), the latch is
    // withdrawn before its PGPROC can be handed to another backend.
    unsafe { pg_sys::before_shmem_exit(Some(withdraw_latch), pg_sys::Datum::from(latch)) };
    shared.latch.store(latch, Ordering::SeqCst);
    log!("{NOTIFIER_NAME}: started for database \"{database}\"");

    // Wake-ups asked for while no notifier ran are sent at once.
    let mut last_passive = std::time::Instant::now() - PASSIVE_ROUND;
    let mut sleep = Duration::ZERO;
    crate::services::set_idle();
    while BackgroundWorker::wait_latch(Some(sleep)) {
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        let passive_due = last_passive.elapsed() >= PASSIVE_ROUND;
        if send_requested_notifications(passive_due) {
            last_passive = std::time::Instant::now();
        }
        sleep = if passive_waiting() {
            PASSIVE_ROUND.saturating_sub(last_passive.elapsed()).max(Duration::from_millis(1))
        } else {
            Duration::from_secs(1)
        };
    }
    log!("{NOTIFIER_NAME}: shutting down");
    unsafe { pg_sys::proc_exit(1) };
}

/// Exit callback of the notifier: withdraw its latch (if still the one
/// published), so that no producer sets the latch of a PGPROC that is no
/// longer the notifier's.
#[pg_guard]
unsafe extern "C-unwind" fn withdraw_latch(_code: i32, latch: pg_sys::Datum) {
    let _ = NOTIFIER.get().latch.compare_exchange(latch.value(), 0, Ordering::SeqCst, Ordering::SeqCst);
}

thread_local! {
    /// Whether the notifier has seen the extension installed in its database.
    static EXTENSION_SEEN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether passive wake-ups wait for their round.
fn passive_waiting() -> bool {
    let list = PASSIVE_LIST.share();
    list.len > 0 || list.overflow
}

/// One round: take the lists (the passive one only when its round is due)
/// and NOTIFY each queue on them in one transaction, calling `pg_notify`
/// directly (no SQL to parse). If a list overflowed, every queue with
/// pending jobs is woken. A round that fails puts its queues back on the
/// list for the next one, so an error never drops a wake-up. Returns
/// whether a passive round ran.
fn send_requested_notifications(passive_due: bool) -> bool {
    let (mut names, mut overflow) = WAKE_LIST.exclusive().take();
    if passive_due {
        let (passive, passive_overflow) = PASSIVE_LIST.exclusive().take();
        for name in passive {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        overflow |= passive_overflow;
    }
    // Wake-ups of prepared transactions that have committed since.
    if NOTIFIER.get().held.load(Ordering::SeqCst) > 0 {
        let mut held = HELD.exclusive();
        let (released, held_overflow) = held.release(|xid| {
            let xid = pg_sys::TransactionId::from(xid);
            if unsafe { pg_sys::TransactionIdDidCommit(xid) } {
                Some(true)
            } else if xid.into_inner() < pg_sys::FirstNormalTransactionId.into_inner() || unsafe { pg_sys::TransactionIdDidAbort(xid) } {
                Some(false)
            } else {
                None
            }
        });
        NOTIFIER.get().held.store(held.len, Ordering::SeqCst);
        drop(held);
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
        let mut list = WAKE_LIST.exclusive();
        for name in &names {
            list.add(name.as_bytes());
        }
        list.overflow |= overflow;
    }
    passive_due
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    fn empty_slots() -> Box<[AtomicU64; SLOTS]> {
        Box::new([const { AtomicU64::new(0) }; SLOTS])
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
        let b = (0..1_000_000)
            .map(|i| tag_of(5, &format!("q{i}")))
            .find(|&t| t != a && slot_of(t) == slot_of(a))
            .unwrap();
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
