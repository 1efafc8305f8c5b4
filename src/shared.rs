//! Shared memory and transaction-scoped changes: the one mechanism behind
//! the wake-up path (wakeup.rs), the job counters (stats.rs), the lease book
//! (leases.rs) and the launcher's registry of served databases
//! (launcher.rs).
//!
//! **One region.** At server start the library reserves one named region,
//! laid out from the settings that size it (`queue.max_databases`,
//! `queue.max_counter_keys`, `queue.max_leases`):
//!
//! ```text
//! header | waiters | database 0 | database 1 | ... | database max_databases-1
//! ```
//!
//! The header stamps the layout (a magic number, [`LAYOUT_VERSION`] and the
//! sizes) and holds the launcher's board; one waiter entry per backend
//! follows it (queue_pop's wait, wakeup.rs). Each database part holds the
//! state of one served database: its [`DbSlot`] (registry entry and the
//! atomics of each consumer), the sleeper marks, the wake-up lists, the
//! counters table and the lease book. One busy database can fill only its
//! own tables: it never evicts another's counters or leases.
//!
//! Every part is valid when all zero: a free slot is zero, and releasing a
//! slot zeroes its part, so there is no per-type initialisation to keep in
//! step with the layout.
//!
//! **Locks.** One named LWLock tranche: lock 0 guards the registry
//! (assigning and releasing slots), then [`PARTS_LOCKED`] locks per
//! database, one per table ([`Part`]). [`Locked`] runs a closure on a table
//! under its lock and releases the lock on every way out.
//!
//! **Finding this database's part.** A backend caches the index of its
//! database's slot together with the registry's generation, which every
//! assignment and release bumps: the fast path is one atomic load. A slot
//! can be released while a backend still holds its index (DROP EXTENSION,
//! a database no longer listed in `queue.database`), so whatever must not
//! act on another database checks [`Db::is_mine`] under the table's lock.
//!
//! **Transaction-scoped changes.** What a transaction does to shared state
//! takes effect when it commits: [`TxList`] keeps a backend's pending
//! changes tagged with the subtransaction that made them (a rolled back
//! savepoint takes them along, a released one hands them to its parent),
//! and one pair of transaction callbacks, registered once per process,
//! calls each consumer's end-of-transaction function in a fixed order.

use pgrx::prelude::*;
use std::cell::{Cell, RefCell};
use std::ffi::CStr;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::{gucs, launcher, leases, stats, wakeup};

/// Bumped whenever the layout of the region changes.
pub const LAYOUT_VERSION: u32 = 6;
const MAGIC: u64 = u64::from_le_bytes(*b"queueshm");
const REGION_NAME: &CStr = c"queue";
const TRANCHE_NAME: &CStr = c"queue";
/// Parts start on cache lines, so that two databases never share one.
const ALIGN: usize = 64;

/// The tables of one database that have a lock of their own.
#[derive(Clone, Copy)]
pub enum Part {
    WakeList = 0,
    PassiveList = 1,
    HeldWakeups = 2,
    Counters = 3,
    Leases = 4,
}
pub const PARTS_LOCKED: usize = 5;

/// What sizes the region: fixed at server start.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(C)]
pub struct Sizes {
    /// Backends that may wait inside queue_pop: MaxBackends.
    pub backends: u32,
    pub databases: u32,
    pub counter_slots: u32,
    pub lease_slots: u32,
}

impl Sizes {
    fn from_settings() -> Sizes {
        Sizes {
            backends: unsafe { pg_sys::MaxBackends }.max(1) as u32,
            databases: gucs::MAX_DATABASES.get().max(1) as u32,
            counter_slots: slots_for(gucs::MAX_COUNTER_KEYS.get()),
            lease_slots: slots_for(gucs::MAX_LEASES.get()),
        }
    }
}

/// The smallest power of two that holds `n` keys while at most 3/4 full
/// (open addressing with linear probing keeps its probes short that way).
pub fn slots_for(n: i32) -> u32 {
    ((n.max(1) as u64 * 4).div_ceil(3)).next_power_of_two() as u32
}

/// Where each part of a database lies, as offsets from the part's start.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(C)]
pub struct Layout {
    sizes: Sizes,
    waiters: usize,
    first_db: usize,
    db_stride: usize,
    slot: usize,
    sleepers: usize,
    wake_list: usize,
    passive_list: usize,
    held: usize,
    counters_header: usize,
    counters: usize,
    leases_header: usize,
    leases: usize,
    total: usize,
}

/// Reserve `n` values of `T` at `cursor`, aligned: their offset.
fn place<T>(cursor: &mut usize, n: usize) -> usize {
    let align = std::mem::align_of::<T>().max(ALIGN);
    let at = cursor.div_ceil(align) * align;
    *cursor = at + std::mem::size_of::<T>() * n;
    at
}

impl Layout {
    pub fn new(sizes: Sizes) -> Layout {
        let mut c = 0;
        let slot = place::<DbSlot>(&mut c, 1);
        let sleepers = place::<AtomicU64>(&mut c, wakeup::SLEEPER_SLOTS);
        let wake_list = place::<wakeup::WakeList>(&mut c, 1);
        let passive_list = place::<wakeup::WakeList>(&mut c, 1);
        let held = place::<wakeup::Held>(&mut c, 1);
        let counters_header = place::<stats::TableHeader>(&mut c, 1);
        let counters = place::<stats::Slot>(&mut c, sizes.counter_slots as usize);
        let leases_header = place::<leases::BookHeader>(&mut c, 1);
        let leases = place::<leases::Entry>(&mut c, sizes.lease_slots as usize);
        let db_stride = c.div_ceil(ALIGN) * ALIGN;
        let mut h = 0;
        place::<Header>(&mut h, 1);
        let waiters = place::<wakeup::Waiter>(&mut h, sizes.backends as usize);
        let first_db = h.div_ceil(ALIGN) * ALIGN;
        Layout {
            sizes,
            waiters,
            first_db,
            db_stride,
            slot,
            sleepers,
            wake_list,
            passive_list,
            held,
            counters_header,
            counters,
            leases_header,
            leases,
            total: first_db + db_stride * sizes.databases as usize,
        }
    }
}

/// The start of the region: who laid it out, and the launcher's board.
#[repr(C)]
pub struct Header {
    magic: u64,
    version: u32,
    layout: Layout,
    /// Bumped by every assignment and release of a database slot.
    generation: AtomicU64,
    /// Backends waiting inside queue_pop, in the waiter entries that follow
    /// the header (one per backend, by pgprocno).
    waiting: AtomicU32,
    pub board: launcher::Board,
    /// The secret key of the serial groups' lock keys (src/serial_group.rs),
    /// drawn at server start. Written once, in the postmaster, before any
    /// backend exists; read only after.
    group_key: [u64; 2],
}

/// The registry entry of one database, and the atomics of its consumers.
/// Zero: a free slot.
#[repr(C)]
pub struct DbSlot {
    /// The database served with this slot; 0 when free.
    database: AtomicU32,
    /// When the slot was given to its database (TimestampTz), stored before
    /// `database`: state a consumer learns from a reading transaction is
    /// only trusted from transactions that began after it (src/settings.rs).
    pub assigned_at: std::sync::atomic::AtomicI64,
    pub services: launcher::Services,
    pub notifier: wakeup::Notifier,
    pub counters: stats::Control,
    pub push_defaults: crate::settings::PushDefaults,
}

/// Whether a region found in shared memory was laid out by a build that
/// agrees with this one. Under EXEC_BACKEND every backend attaches anew,
/// and a library replaced on disk without a restart would otherwise read
/// the old layout with the new code.
pub fn check_header(magic: u64, version: u32, layout: &Layout, expected: &Layout) -> Result<(), String> {
    if magic != MAGIC || version != LAYOUT_VERSION {
        return Err(format!(
            "the shared memory of the queue extension was laid out by another build (layout {version}, this build {LAYOUT_VERSION})"
        ));
    }
    if layout != expected {
        return Err(format!(
            "the shared memory of the queue extension was sized for {:?}, this build expects {:?}",
            layout.sizes, expected.sizes
        ));
    }
    Ok(())
}

static REGION: AtomicPtr<Header> = AtomicPtr::new(std::ptr::null_mut());
static LOCKS: AtomicPtr<pg_sys::LWLockPadded> = AtomicPtr::new(std::ptr::null_mut());
static PREV_SHMEM_REQUEST: OnceLock<pg_sys::shmem_request_hook_type> = OnceLock::new();
static PREV_SHMEM_STARTUP: OnceLock<pg_sys::shmem_startup_hook_type> = OnceLock::new();
/// The sizes asked for at server start. After a crash the postmaster lays
/// the region out again, in the space reserved then, whatever a reload has
/// changed since.
static REQUESTED: OnceLock<Sizes> = OnceLock::new();

fn requested_sizes() -> Sizes {
    *REQUESTED.get_or_init(Sizes::from_settings)
}

/// Reserve the region and its locks. Only from `_PG_init` while preloading.
pub fn init_shared_memory() {
    unsafe {
        let _ = PREV_SHMEM_REQUEST.set(pg_sys::shmem_request_hook);
        pg_sys::shmem_request_hook = Some(shmem_request);
        let _ = PREV_SHMEM_STARTUP.set(pg_sys::shmem_startup_hook);
        pg_sys::shmem_startup_hook = Some(shmem_startup);
    }
}

fn lock_count(sizes: Sizes) -> usize {
    1 + PARTS_LOCKED * sizes.databases as usize
}

#[pg_guard]
unsafe extern "C-unwind" fn shmem_request() {
    unsafe {
        if let Some(previous) = PREV_SHMEM_REQUEST.get().copied().flatten() {
            previous();
        }
        let sizes = requested_sizes();
        pg_sys::RequestAddinShmemSpace(Layout::new(sizes).total);
        pg_sys::RequestNamedLWLockTranche(TRANCHE_NAME.as_ptr(), lock_count(sizes) as i32);
    }
}

/// Create the region (in the postmaster, before any backend exists: Unix
/// builds fork their backends, so no other process can race this), or
/// attach to it and check its stamp.
#[pg_guard]
unsafe extern "C-unwind" fn shmem_startup() {
    unsafe {
        if let Some(previous) = PREV_SHMEM_STARTUP.get().copied().flatten() {
            previous();
        }
        let layout = Layout::new(requested_sizes());
        let mut found = false;
        let header = pg_sys::ShmemInitStruct(REGION_NAME.as_ptr(), layout.total, &mut found).cast::<Header>();
        if found {
            if let Err(message) = check_header((*header).magic, (*header).version, &(*header).layout, &layout) {
                ereport!(
                    PgLogLevel::FATAL,
                    PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                    message,
                    "Restart the server, so that one build of the library lays out its shared memory."
                );
            }
        } else {
            std::ptr::write_bytes(header.cast::<u8>(), 0, layout.total);
            (*header).magic = MAGIC;
            (*header).version = LAYOUT_VERSION;
            (*header).layout = layout;
            (*header).group_key = random_key();
        }
        LOCKS.store(pg_sys::GetNamedLWLockTranche(TRANCHE_NAME.as_ptr()), Ordering::SeqCst);
        REGION.store(header, Ordering::SeqCst);
    }
}

/// A fresh secret key for the group lock keys. pg_strong_random fails only
/// without a usable entropy source; the time and pid then still make the
/// key unknown in advance, if guessable.
fn random_key() -> [u64; 2] {
    let mut bytes = [0u8; 16];
    if unsafe { pg_sys::pg_strong_random(bytes.as_mut_ptr().cast(), bytes.len()) } {
        let (a, b) = bytes.split_at(8);
        return [
            u64::from_le_bytes(a.try_into().unwrap_or_default()),
            u64::from_le_bytes(b.try_into().unwrap_or_default()),
        ];
    }
    log!("queue: no strong random source; the serial groups' lock keys use a weaker key");
    unsafe { [pg_sys::GetCurrentTimestamp() as u64, pg_sys::MyProcPid as u64] }
}

/// The serial groups' lock key secret; None where the library was not
/// preloaded.
pub fn group_key() -> Option<[u64; 2]> {
    header().map(|h| h.group_key)
}

/// The region's header; None where the library was not preloaded.
pub fn header() -> Option<&'static Header> {
    let h = REGION.load(Ordering::Relaxed);
    if h.is_null() {
        None
    } else {
        Some(unsafe { &*h })
    }
}

/// The count of waiting backends and the waiter entries (wakeup.rs).
pub fn waiters() -> Option<(&'static AtomicU32, &'static [wakeup::Waiter])> {
    let h = header()?;
    let entries = unsafe {
        std::slice::from_raw_parts(
            (h as *const Header).cast::<u8>().add(h.layout.waiters).cast::<wakeup::Waiter>(),
            h.layout.sizes.backends as usize,
        )
    };
    Some((&h.waiting, entries))
}

/// Whether the region exists in this process.
pub fn preloaded() -> bool {
    header().is_some()
}

fn lock(index: usize) -> *mut pg_sys::LWLock {
    unsafe { &raw mut (*LOCKS.load(Ordering::Relaxed).add(index)).lock }
}

/// Releases an LWLock however the closure holding it ends (a panic
/// included), unless an ERROR's abort already released every lock.
struct LockGuard(*mut pg_sys::LWLock);

impl LockGuard {
    fn acquire(lock: *mut pg_sys::LWLock, exclusive: bool) -> LockGuard {
        let mode = if exclusive { pg_sys::LWLockMode::LW_EXCLUSIVE } else { pg_sys::LWLockMode::LW_SHARED };
        unsafe { pg_sys::LWLockAcquire(lock, mode) };
        LockGuard(lock)
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        unsafe {
            if pg_sys::LWLockHeldByMe(self.0) {
                pg_sys::LWLockRelease(self.0);
            }
        }
    }
}

/// A table in shared memory: a header and `len` entries under one LWLock.
/// The closures given to it run with the lock held: they must be short and
/// must not raise an error (they run in commit callbacks too).
pub struct Locked<H, E> {
    lock: *mut pg_sys::LWLock,
    header: *mut H,
    entries: *mut E,
    len: usize,
    _types: PhantomData<(H, E)>,
}

impl<H, E> Locked<H, E> {
    pub fn exclusive<R>(&self, f: impl FnOnce(&mut H, &mut [E]) -> R) -> R {
        let _guard = LockGuard::acquire(self.lock, true);
        unsafe { f(&mut *self.header, std::slice::from_raw_parts_mut(self.entries, self.len)) }
    }

    pub fn share<R>(&self, f: impl FnOnce(&H, &[E]) -> R) -> R {
        let _guard = LockGuard::acquire(self.lock, false);
        unsafe { f(&*self.header, std::slice::from_raw_parts(self.entries, self.len)) }
    }
}

/// The part of one database slot (see the module comment).
#[derive(Clone, Copy)]
pub struct Db {
    index: usize,
}

impl Db {
    fn base(self) -> *mut u8 {
        let header = REGION.load(Ordering::Relaxed);
        let layout = unsafe { &(*header).layout };
        unsafe { header.cast::<u8>().add(layout.first_db + layout.db_stride * self.index) }
    }

    fn layout(self) -> &'static Layout {
        unsafe { &(*REGION.load(Ordering::Relaxed)).layout }
    }

    fn at<T>(self, offset: usize) -> *mut T {
        unsafe { self.base().add(offset).cast::<T>() }
    }

    fn table<H, E>(self, part: Part, header: usize, entries: usize, len: usize) -> Locked<H, E> {
        Locked {
            lock: lock(1 + self.index * PARTS_LOCKED + part as usize),
            header: self.at(header),
            entries: self.at(entries),
            len,
            _types: PhantomData,
        }
    }

    pub fn index(self) -> usize {
        self.index
    }

    pub fn slot(self) -> &'static DbSlot {
        unsafe { &*self.at::<DbSlot>(self.layout().slot) }
    }

    /// The database this slot serves now (0: free).
    pub fn database(self) -> u32 {
        self.slot().database.load(Ordering::SeqCst)
    }

    /// Whether this slot still serves the database of this backend.
    pub fn is_mine(self) -> bool {
        self.database() == my_database()
    }

    pub fn sleepers(self) -> &'static [AtomicU64] {
        unsafe { std::slice::from_raw_parts(self.at::<AtomicU64>(self.layout().sleepers), wakeup::SLEEPER_SLOTS) }
    }

    pub fn wake_list(self) -> Locked<wakeup::WakeList, ()> {
        let l = self.layout();
        self.table(Part::WakeList, l.wake_list, l.wake_list, 0)
    }

    pub fn passive_list(self) -> Locked<wakeup::WakeList, ()> {
        let l = self.layout();
        self.table(Part::PassiveList, l.passive_list, l.passive_list, 0)
    }

    pub fn held_wakeups(self) -> Locked<wakeup::Held, ()> {
        let l = self.layout();
        self.table(Part::HeldWakeups, l.held, l.held, 0)
    }

    pub fn counters(self) -> Locked<stats::TableHeader, stats::Slot> {
        let l = self.layout();
        self.table(Part::Counters, l.counters_header, l.counters, l.sizes.counter_slots as usize)
    }

    pub fn leases(self) -> Locked<leases::BookHeader, leases::Entry> {
        let l = self.layout();
        self.table(Part::Leases, l.leases_header, l.leases, l.sizes.lease_slots as usize)
    }
}

pub fn my_database() -> u32 {
    unsafe { pg_sys::MyDatabaseId }.to_u32()
}

/// How many database slots the region has.
pub fn capacity() -> usize {
    header().map(|h| h.layout.sizes.databases as usize).unwrap_or(0)
}

/// Every slot, free or not.
pub fn slots() -> impl Iterator<Item = Db> {
    (0..capacity()).map(|index| Db { index })
}

/// The slot serving database `oid`, if any.
pub fn find(oid: u32) -> Option<Db> {
    if oid == 0 {
        return None;
    }
    slots().find(|db| db.database() == oid)
}

thread_local! {
    /// This backend's slot, with the generation it was found in.
    static MINE: Cell<(u64, Option<usize>)> = const { Cell::new((u64::MAX, None)) };
}

/// The slot serving this backend's database, if the launcher serves it.
pub fn this_db() -> Option<Db> {
    let header = header()?;
    let generation = header.generation.load(Ordering::SeqCst);
    let (seen, index) = MINE.get();
    if seen == generation {
        return index.map(|index| Db { index });
    }
    let found = find(my_database());
    MINE.set((generation, found.map(Db::index)));
    found
}

/// Take the slot of `oid`, or a free one. Err when every slot serves
/// another database.
pub fn assign(oid: u32) -> Result<Db, ()> {
    let header = header().ok_or(())?;
    let _registry = LockGuard::acquire(lock(0), true);
    if let Some(db) = find(oid) {
        return Ok(db);
    }
    let db = slots().find(|db| db.database() == 0).ok_or(())?;
    db.slot().assigned_at.store(unsafe { pg_sys::GetCurrentTimestamp() }, Ordering::SeqCst);
    db.slot().database.store(oid, Ordering::SeqCst);
    header.generation.fetch_add(1, Ordering::SeqCst);
    Ok(db)
}

/// Free the slot if it still serves `oid`: every part is zeroed under its
/// lock, so no backend that still holds the index sees half of it.
pub fn release(db: Db, oid: u32) {
    let Some(header) = header() else { return };
    let _registry = LockGuard::acquire(lock(0), true);
    if db.database() != oid {
        return;
    }
    let _parts: Vec<LockGuard> =
        (0..PARTS_LOCKED).map(|p| LockGuard::acquire(lock(1 + db.index * PARTS_LOCKED + p), true)).collect();
    unsafe { std::ptr::write_bytes(db.base(), 0, db.layout().db_stride) };
    header.generation.fetch_add(1, Ordering::SeqCst);
}

// ---------------------------------------------------------------------------
// Transaction-scoped changes
// ---------------------------------------------------------------------------

/// A backend's pending changes of one kind, each tagged with the
/// subtransaction that made it. Lives in a `thread_local!`; the consumer's
/// end-of-transaction function takes or clears it.
///
/// `fold` finds the change to fold into through a hash index of (subtransaction,
/// key hash), so a statement that touches thousands of queues in one
/// transaction (a batch push over many queues) costs O(1) per row, not a
/// search of every key seen so far.
pub struct TxList<T> {
    /// (subtransaction, key hash, change); pushed changes have hash 0.
    items: RefCell<Vec<(pg_sys::SubTransactionId, u64, T)>>,
    /// First position of each (subtransaction, key hash) among `items`;
    /// None when it must be rebuilt (items moved between subtransactions or
    /// were dropped).
    index: RefCell<Option<std::collections::HashMap<(pg_sys::SubTransactionId, u64), usize>>>,
}

/// Changes a `TxList` searches one by one before `fold` builds its index.
const LINEAR_FOLD: usize = 8;

/// The hash `TxList::fold` indexes a change by.
pub fn key_hash(key: &impl std::hash::Hash) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish() | 1
}

impl<T> TxList<T> {
    pub const fn new() -> Self {
        TxList { items: RefCell::new(Vec::new()), index: RefCell::new(None) }
    }

    /// Add a change made by the current subtransaction.
    pub fn push(&self, item: T) {
        register_callbacks();
        let subxact = unsafe { pg_sys::GetCurrentSubTransactionId() };
        self.items.borrow_mut().push((subxact, 0, item));
    }

    /// Fold `item`, whose key hashes to `key` (`key_hash`), into a change of
    /// the current subtransaction for which `same` holds, with `fold`; add it
    /// when there is none.
    pub fn fold(&self, key: u64, item: T, same: impl Fn(&T) -> bool, fold: impl FnOnce(&mut T, T)) {
        register_callbacks();
        let subxact = unsafe { pg_sys::GetCurrentSubTransactionId() };
        let mut items = self.items.borrow_mut();
        let mut index = self.index.borrow_mut();
        // A transaction of one job has a change or two: a search, no map to
        // allocate on every claim and ack.
        if index.is_none() && items.len() < LINEAR_FOLD {
            match items.iter_mut().find(|(s, k, e)| *s == subxact && *k == key && same(e)) {
                Some((_, _, e)) => fold(e, item),
                None => items.push((subxact, key, item)),
            }
            return;
        }
        let index = index.get_or_insert_with(|| {
            let mut map = std::collections::HashMap::new();
            for (i, (s, k, _)) in items.iter().enumerate() {
                map.entry((*s, *k)).or_insert(i);
            }
            map
        });
        let found = match index.get(&(subxact, key)) {
            Some(&i) if same(&items[i].2) => Some(i),
            // Two keys of one hash: look at every change of that hash.
            Some(_) => items.iter().position(|(s, k, e)| *s == subxact && *k == key && same(e)),
            None => None,
        };
        match found {
            Some(i) => fold(&mut items[i].2, item),
            None => {
                index.entry((subxact, key)).or_insert(items.len());
                items.push((subxact, key, item));
            }
        }
    }

    /// Every pending change, in the order made; the list is empty after.
    pub fn take(&self) -> Vec<T> {
        *self.index.borrow_mut() = None;
        std::mem::take(&mut *self.items.borrow_mut()).into_iter().map(|(_, _, e)| e).collect()
    }

    pub fn clear(&self) {
        *self.index.borrow_mut() = None;
        self.items.borrow_mut().clear();
    }

    pub fn is_empty(&self) -> bool {
        self.items.borrow().is_empty()
    }

    /// Read the pending changes without taking them.
    pub fn with<R>(&self, f: impl FnOnce(&mut dyn Iterator<Item = &T>) -> R) -> R {
        let items = self.items.borrow();
        f(&mut items.iter().map(|(_, _, e)| e))
    }

    /// A subtransaction ended: its changes pass to the parent when it
    /// committed, and go when it aborted.
    pub fn subtransaction_end(
        &self,
        event: pg_sys::SubXactEvent::Type,
        subxact: pg_sys::SubTransactionId,
        parent: pg_sys::SubTransactionId,
    ) {
        use pg_sys::SubXactEvent::*;
        let mut items = self.items.borrow_mut();
        match event {
            SUBXACT_EVENT_COMMIT_SUB => {
                for (s, _, _) in items.iter_mut().filter(|(s, _, _)| *s >= subxact) {
                    *s = parent;
                }
            }
            SUBXACT_EVENT_ABORT_SUB => items.retain(|(s, _, _)| *s < subxact),
            _ => return,
        }
        *self.index.borrow_mut() = None;
    }
}

impl<T> Default for TxList<T> {
    fn default() -> Self {
        Self::new()
    }
}

thread_local! {
    static CALLBACKS_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Register the transaction callbacks in this process, once.
pub(crate) fn register_callbacks() {
    if !CALLBACKS_REGISTERED.get() {
        unsafe {
            pg_sys::RegisterXactCallback(Some(at_transaction_end), std::ptr::null_mut());
            pg_sys::RegisterSubXactCallback(Some(at_subtransaction_end), std::ptr::null_mut());
        }
        CALLBACKS_REGISTERED.set(true);
    }
}

/// The end of a transaction, for every consumer, in this order: counters
/// and leases first (their commit-time changes are bookkeeping), then the
/// wake-ups (workers woken may claim at once), then the launcher's news.
#[pg_guard]
unsafe extern "C-unwind" fn at_transaction_end(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    stats::at_transaction_end(event);
    leases::at_transaction_end(event);
    wakeup::at_transaction_end(event);
    launcher::at_transaction_end(event);
    crate::settings::at_transaction_end(event);
}

#[pg_guard]
unsafe extern "C-unwind" fn at_subtransaction_end(
    event: pg_sys::SubXactEvent::Type,
    subxact: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    stats::at_subtransaction_end(event, subxact, parent);
    leases::at_subtransaction_end(event, subxact, parent);
    wakeup::at_subtransaction_end(event, subxact, parent);
    launcher::at_subtransaction_end(event, subxact, parent);
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    thread_local! {
        static LIST: TxList<i32> = const { TxList::new() };
    }

    /// Runs `f` in an internal subtransaction, committed or rolled back.
    fn in_subtransaction(commit: bool, f: impl FnOnce()) {
        unsafe {
            let context = pg_sys::CurrentMemoryContext;
            let owner = pg_sys::CurrentResourceOwner;
            pg_sys::BeginInternalSubTransaction(std::ptr::null());
            f();
            if commit {
                pg_sys::ReleaseCurrentSubTransaction();
            } else {
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
            }
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::CurrentResourceOwner = owner;
        }
    }

    /// The subtransaction callback as Postgres calls it, for LIST.
    fn forward(event: pg_sys::SubXactEvent::Type, sub: pg_sys::SubTransactionId, parent: pg_sys::SubTransactionId) {
        LIST.with(|l| l.subtransaction_end(event, sub, parent));
    }

    /// Add a change to LIST as the consumers do: folded by its key.
    fn add(v: i32) {
        LIST.with(|l| l.fold(key_hash(&v), v, |e| *e == v, |e, n| *e += n));
    }

    #[pg_test]
    fn changes_follow_their_subtransactions() {
        LIST.with(|l| l.clear());
        add(1);
        let top = unsafe { pg_sys::GetCurrentSubTransactionId() };
        in_subtransaction(false, || {
            add(2);
            let sub = unsafe { pg_sys::GetCurrentSubTransactionId() };
            forward(pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB, sub, top);
        });
        in_subtransaction(true, || {
            add(3);
            let sub = unsafe { pg_sys::GetCurrentSubTransactionId() };
            forward(pg_sys::SubXactEvent::SUBXACT_EVENT_COMMIT_SUB, sub, top);
        });
        // Folding within the top level reaches the change handed up by 3.
        LIST.with(|l| l.fold(key_hash(&3), 10, |e| *e == 3, |e, n| *e += n));
        assert_eq!(LIST.with(|l| l.take()), vec![1, 13]);
        assert!(LIST.with(|l| l.take()).is_empty());
    }

    #[pg_test]
    fn folds_find_their_change_among_many_keys() {
        LIST.with(|l| l.clear());
        for round in 0..3 {
            for v in 0..5_000 {
                LIST.with(|l| l.fold(key_hash(&v), round, |_| true, |e, n| *e += n));
            }
        }
        // Two keys of one hash are kept apart.
        LIST.with(|l| l.fold(7, 100, |e| *e == 100, |e, n| *e += n));
        LIST.with(|l| l.fold(7, 200, |e| *e == 200, |e, n| *e += n));
        LIST.with(|l| l.fold(7, 200, |e| *e == 200, |e, n| *e += n));
        let items = LIST.with(|l| l.take());
        assert_eq!(items.len(), 5_002);
        assert!(items[..5_000].iter().all(|&e| e == 3), "one change per key, folded three times");
        assert_eq!(&items[5_000..], &[100, 400]);
    }

    #[pg_test]
    fn layouts_are_aligned_and_disjoint() {
        let small = Layout::new(Sizes { backends: 4, databases: 2, counter_slots: 8, lease_slots: 16 });
        let big = Layout::new(Sizes { backends: 100, databases: 2, counter_slots: 2048, lease_slots: 32768 });
        for l in [small, big] {
            let offsets = [
                l.slot,
                l.sleepers,
                l.wake_list,
                l.passive_list,
                l.held,
                l.counters_header,
                l.counters,
                l.leases_header,
                l.leases,
            ];
            assert!(offsets.iter().all(|o| o % ALIGN == 0));
            assert!(offsets.windows(2).all(|w| w[0] < w[1]), "parts in order, none empty");
            assert!(l.leases + 24 * l.sizes.lease_slots as usize <= l.db_stride);
            assert_eq!(l.total, l.first_db + 2 * l.db_stride);
            assert!(l.waiters + 8 * l.sizes.backends as usize <= l.first_db, "waiters before the first database");
        }
        assert!(big.db_stride > small.db_stride);
        assert_eq!(slots_for(1536), 2048);
        assert_eq!(slots_for(20_000), 32768);
        assert_eq!(slots_for(1), 2);
    }

    #[pg_test]
    fn a_region_of_another_build_is_refused() {
        let l = Layout::new(Sizes { backends: 100, databases: 4, counter_slots: 2048, lease_slots: 32768 });
        assert!(check_header(MAGIC, LAYOUT_VERSION, &l, &l).is_ok());
        let e = check_header(MAGIC, LAYOUT_VERSION + 1, &l, &l).unwrap_err();
        assert!(e.contains("another build"), "{e}");
        let other = Layout::new(Sizes { databases: 8, ..l.sizes });
        assert!(check_header(MAGIC, LAYOUT_VERSION, &other, &l).unwrap_err().contains("sized for"));
        assert!(check_header(0, LAYOUT_VERSION, &l, &l).is_err());
    }

    #[pg_test]
    fn this_server_has_one_region_with_a_slot_per_database() {
        // The test server preloads the library.
        assert!(preloaded());
        assert_eq!(capacity(), crate::gucs::MAX_DATABASES.get() as usize);
    }
}
