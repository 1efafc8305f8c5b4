//! The launcher: one background worker for the cluster that keeps the
//! services of the extension running in every database that has it.
//!
//! * **Which databases.** Every database that accepts connections and is
//!   not a template, or only those `queue.database` lists. The launcher
//!   connects to no database (it reads the shared catalog `pg_database`
//!   directly, as the autovacuum launcher does), so it never blocks a
//!   `DROP DATABASE`.
//! * **Finding the extension.** A database the launcher has not seen yet
//!   gets a `queue maintenance` worker, which first looks whether the
//!   extension exists there. If not, it exits at once; if so, it takes a
//!   slot of shared memory for its database (src/shared.rs) and goes on
//!   as that database's maintenance service, and the launcher starts the
//!   scheduler and the notifier beside it. `CREATE EXTENSION` tells the
//!   launcher when it commits (`queue.announce_database()`), so a new
//!   installation is served within a second or so; a database created
//!   from a template that has the extension is new to the launcher, and a
//!   database looked at before is looked at again every ten minutes. A
//!   database whose services retired is looked at again as soon as its
//!   slot is free, since `DROP EXTENSION` and `CREATE EXTENSION` may follow
//!   each other before the old services notice.
//! * **Keeping them running.** Each service writes its pid into its
//!   database's slot and clears it on the way out. The launcher restarts a
//!   service whose pid is gone (after a crash, a `pg_terminate_backend`)
//!   within a second. A launcher that restarts finds the running services
//!   in the slots and leaves them be.
//! * **Stopping them.** After `DROP EXTENSION` the maintenance service sees
//!   the extension gone and marks the slot retiring; the launcher stops the
//!   other services and frees the slot. A database dropped, or no longer
//!   listed in `queue.database` (reloaded on SIGHUP), is retired the same
//!   way. `DROP DATABASE`, `ALTER DATABASE ... RENAME` or `SET TABLESPACE`
//!   and `CREATE DATABASE ... TEMPLATE` refuse to run while any other
//!   session is connected to the database, so this library's utility hook
//!   asks the services of that database to leave and not to come back for
//!   a few seconds before the command runs (PostgreSQL 18 does the same for
//!   workers that declare themselves interruptible).
//! * **Bounded.** At most `queue.max_databases` databases are served: a
//!   further one is refused with a line in the log, and `queue_health()` in
//!   that database says why. Each served database takes three background
//!   workers; `max_worker_processes` must leave room for them (README).

use crate::gucs;
use crate::shared::{self, Db, TxList};
use pgrx::bgworkers::*;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::{PgLogLevel, PgSqlErrorCode};
use std::collections::HashMap;
use std::ffi::CStr;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The services of one database.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    Maintenance = 0,
    Scheduler = 1,
    Notifier = 2,
}

pub const ROLES: [Role; 3] = [Role::Maintenance, Role::Scheduler, Role::Notifier];

impl Role {
    /// Its name in pg_stat_activity (backend_type and application_name).
    pub fn name(self) -> &'static str {
        match self {
            Role::Maintenance => "queue maintenance",
            Role::Scheduler => "queue scheduler",
            Role::Notifier => "queue notifier",
        }
    }

    fn function(self) -> &'static str {
        match self {
            Role::Maintenance => "queue_maintenance_main",
            Role::Scheduler => "queue_scheduler_main",
            Role::Notifier => "queue_notifier_main",
        }
    }
}

/// The services of one database, in its slot: who runs, and whether they
/// are to stop for good.
#[repr(C)]
pub struct Services {
    pids: [AtomicI32; 3],
    retiring: AtomicU32,
}

impl Services {
    pub fn pid(&self, role: Role) -> i32 {
        self.pids[role as usize].load(Ordering::SeqCst)
    }

    fn retire(&self) {
        self.retiring.store(1, Ordering::SeqCst);
    }

    fn retiring(&self) -> bool {
        self.retiring.load(Ordering::SeqCst) != 0
    }
}

const BOARD_LEN: usize = 16;
/// A pause asked for by a utility command lasts this long.
const PAUSE: Duration = Duration::from_secs(10);
/// The launcher looks again at a database without the extension this often.
const PROBE_AGAIN: Duration = Duration::from_secs(600);
/// At most this many databases are looked at, at once.
const MAX_PROBES: usize = 2;

/// The launcher's board in the region's header: its latch, the databases
/// that announced a new installation, those refused for lack of a slot, and
/// those whose services must stay away for a moment.
#[repr(C)]
pub struct Board {
    latch: AtomicUsize,
    pid: AtomicI32,
    announced: [AtomicU32; BOARD_LEN],
    announced_overflow: AtomicU32,
    refused: [AtomicU32; BOARD_LEN],
    refused_overflow: AtomicU32,
    paused: [AtomicU32; BOARD_LEN],
    paused_until: [AtomicI64; BOARD_LEN],
}

fn board() -> Option<&'static Board> {
    shared::header().map(|h| &h.board)
}

fn now() -> i64 {
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// Wake the launcher, if it runs.
pub fn wake_launcher() {
    if let Some(b) = board() {
        let latch = b.latch.load(Ordering::SeqCst);
        if latch != 0 {
            unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
        }
    }
}

/// Put `oid` into the first free entry of `list`; false when full.
fn board_add(list: &[AtomicU32], oid: u32) -> bool {
    if list.iter().any(|e| e.load(Ordering::SeqCst) == oid) {
        return true;
    }
    list.iter().any(|e| e.compare_exchange(0, oid, Ordering::SeqCst, Ordering::SeqCst).is_ok())
}

/// Whether the services of `oid` must stay away for now.
pub fn paused(oid: u32) -> bool {
    let Some(b) = board() else { return false };
    let t = now();
    (0..BOARD_LEN).any(|i| b.paused[i].load(Ordering::SeqCst) == oid && b.paused_until[i].load(Ordering::SeqCst) > t)
}

/// Ask the services of `oid` to leave, and keep them away for `PAUSE`.
fn pause(oid: u32) {
    let Some(b) = board() else { return };
    let (t, until) = (now(), now() + PAUSE.as_micros() as i64);
    let entry = (0..BOARD_LEN)
        .find(|&i| b.paused[i].load(Ordering::SeqCst) == oid)
        .or_else(|| (0..BOARD_LEN).find(|&i| b.paused_until[i].load(Ordering::SeqCst) <= t));
    if let Some(i) = entry {
        b.paused_until[i].store(until, Ordering::SeqCst);
        b.paused[i].store(oid, Ordering::SeqCst);
    }
    if let Some(db) = shared::find(oid) {
        for role in ROLES {
            signal(db.slot().services.pid(role));
        }
    }
}

/// The statement that asked for a pause is over: let the services back.
fn unpause(oid: u32) {
    let Some(b) = board() else { return };
    for i in 0..BOARD_LEN {
        if b.paused[i].load(Ordering::SeqCst) == oid {
            b.paused_until[i].store(0, Ordering::SeqCst);
        }
    }
    wake_launcher();
}

/// SIGTERM to a service (0: none).
fn signal(pid: i32) {
    if pid > 0 {
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}

// ---------------------------------------------------------------------------
// The services' side
// ---------------------------------------------------------------------------

/// Connect a service to the database the launcher gave it (its argument),
/// with a search_path that holds only the catalog. The workers run as the
/// bootstrap superuser, and the database's own settings (`ALTER DATABASE
/// ... SET search_path`, which its owner may change) would otherwise decide
/// how every name in their SQL resolves. Every function of the extension
/// pins its search_path as well; this covers the statements the workers
/// send themselves.
pub fn connect(arg: pg_sys::Datum) {
    let oid = pg_sys::Oid::from(arg.value() as u32);
    unsafe { pg_sys::BackgroundWorkerInitializeConnectionByOid(oid, pg_sys::Oid::INVALID, 0) };
    BackgroundWorker::transaction(|| {
        if let Err(e) = Spi::run("SET search_path = pg_catalog, pg_temp") {
            warning!("queue: could not pin the search_path of a background worker: {e}");
        }
    });
}

/// The name of this backend's database. Inside a transaction (it reads
/// the catalog).
pub fn database_name() -> String {
    unsafe {
        let name = pg_sys::get_database_name(pg_sys::MyDatabaseId);
        if name.is_null() {
            String::from("?")
        } else {
            CStr::from_ptr(name).to_string_lossy().into_owned()
        }
    }
}

/// Take up `role` for this backend's database. The maintenance service
/// looks for the extension first and takes the database's slot; the other
/// services join a slot that exists. None: this worker has nothing to do
/// here (no extension, no slot, the role is taken, or a pause).
pub fn enter(role: Role) -> Option<Db> {
    let oid = shared::my_database();
    if paused(oid) {
        return None;
    }
    let db = if role == Role::Maintenance {
        let installed = BackgroundWorker::transaction(crate::services::extension_installed);
        if !installed {
            // A slot that still serves this database belongs to an
            // installation dropped while no maintenance service ran to see
            // it go (all three had left: terminated, or asked to leave by a
            // DROP DATABASE that then failed). Retire it, as that service
            // would have, or the other two services would go on serving
            // nothing and this role would be started again every second.
            if let Some(db) = shared::find(oid) {
                retire(db);
            }
            return None;
        }
        // Refused for lack of a slot: noted on the board, so that the
        // launcher hands the next free slot to this database. The launcher
        // empties the list right after it frees a slot, so a slot freed
        // between the first try and the note would go to nobody: try again
        // once the note is in. More refused databases than the list holds
        // make the launcher look at every database when a slot frees.
        let refused = || {
            if let Some(b) = board() {
                if !board_add(&b.refused, oid) {
                    b.refused_overflow.store(1, Ordering::SeqCst);
                }
            }
        };
        match shared::assign(oid).or_else(|()| {
            refused();
            shared::assign(oid)
        }) {
            Ok(db) => db,
            Err(()) => {
                let name = BackgroundWorker::transaction(database_name);
                log!(
                    "queue launcher: database \"{name}\" has the extension, but queue.max_databases ({}) databases are served already; it is not served",
                    shared::capacity()
                );
                return None;
            }
        }
    } else {
        shared::find(oid)?
    };
    let services = &db.slot().services;
    let me = unsafe { pg_sys::MyProcPid };
    if services.pids[role as usize].compare_exchange(0, me, Ordering::SeqCst, Ordering::SeqCst).is_err() {
        return None;
    }
    if role == Role::Maintenance {
        FLUSHES_SLOT.store(true, Ordering::SeqCst);
    }
    let token = ((db.index() as u64) << 8) | role as u64;
    unsafe { pg_sys::before_shmem_exit(Some(leave), pg_sys::Datum::from(token as usize)) };
    if role == Role::Maintenance {
        // The other two can start now.
        wake_launcher();
    }
    Some(db)
}

/// Exit callback of a service: clear its pid (if still its own) and let
/// the launcher know.
#[pg_guard]
unsafe extern "C-unwind" fn leave(_code: i32, token: pg_sys::Datum) {
    let token = token.value() as u64;
    let (index, role) = ((token >> 8) as usize, (token & 0xff) as usize);
    if let Some(db) = shared::slots().nth(index) {
        let me = unsafe { pg_sys::MyProcPid };
        let _ = db.slot().services.pids[role].compare_exchange(me, 0, Ordering::SeqCst, Ordering::SeqCst);
    }
    wake_launcher();
}

/// This process is a database's maintenance service, which flushes its
/// slot (process-local).
static FLUSHES_SLOT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether a backend may hand new work to `db` (tallies to flush, wake-ups
/// for its notifier): not once the slot is retiring, since nothing flushes
/// or delivers what reaches a retiring slot after the maintenance service's
/// last flush, and its release zeroes it. Backends (the scheduler's fires
/// included) then take the paths of an unserved database (the tallies into
/// queue.stats, a plain NOTIFY), exact and only slower. The maintenance
/// service itself goes on using it: its last flush takes what its own last
/// passes left there.
pub fn accepts_work(db: Db) -> bool {
    FLUSHES_SLOT.load(Ordering::Relaxed) || !retiring(db)
}

/// Whether `db`'s services are on their way out: its notifier delivers
/// nothing more, so wake-ups go out as plain NOTIFYs.
pub fn retiring(db: Db) -> bool {
    db.slot().services.retiring()
}

/// Whether a service must stop: its slot is retiring or serves another
/// database now, or a utility command wants the database to itself.
pub fn should_stop(db: Db) -> bool {
    !db.is_mine() || db.slot().services.retiring() || paused(shared::my_database())
}

/// The maintenance service found the extension gone: stop every service
/// of this database for good.
pub fn retire(db: Db) {
    if db.is_mine() {
        db.slot().services.retire();
        wake_launcher();
    }
}

// ---------------------------------------------------------------------------
// CREATE EXTENSION tells the launcher
// ---------------------------------------------------------------------------

thread_local! {
    /// This transaction installed the extension in this database.
    static ANNOUNCE: TxList<u32> = const { TxList::new() };
}

/// SQL `queue.announce_database()`: called by the install and upgrade
/// scripts. When the transaction commits, the launcher starts this
/// database's services.
#[pg_extern(volatile, parallel_unsafe, schema = "queue")]
fn announce_database() {
    ANNOUNCE.with(|a| a.push(shared::my_database()));
}

pub(crate) fn at_transaction_end(event: pg_sys::XactEvent::Type) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_COMMIT => {
            let oids = ANNOUNCE.with(|a| a.take());
            if let (Some(b), false) = (board(), oids.is_empty()) {
                for oid in oids {
                    if !board_add(&b.announced, oid) {
                        b.announced_overflow.store(1, Ordering::SeqCst);
                    }
                }
                wake_launcher();
            }
        }
        // A prepared CREATE EXTENSION commits later, perhaps in another
        // session, where no announcement follows it; the launcher would find
        // the installation only at its ten-minute look (and a look at PREPARE
        // would find nothing yet). Refused, as PostgreSQL refuses to prepare
        // a transaction that executed LISTEN.
        XACT_EVENT_PRE_PREPARE => {
            if board().is_some() && ANNOUNCE.with(|a| !a.is_empty()) {
                ErrorReport::new(
                    PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                    "cannot PREPARE a transaction that installed or updated the queue extension",
                    "queue.announce_database",
                )
                .set_hint("Run CREATE EXTENSION queue and ALTER EXTENSION queue UPDATE outside two-phase commit.")
                .report(PgLogLevel::ERROR);
            }
        }
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT | XACT_EVENT_PREPARE => ANNOUNCE.with(|a| a.clear()),
        _ => {}
    }
}

pub(crate) fn at_subtransaction_end(
    event: pg_sys::SubXactEvent::Type,
    subxact: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
) {
    ANNOUNCE.with(|a| a.subtransaction_end(event, subxact, parent));
}

/// SQL `queue.service_problem()`: why the services do not serve this
/// database, or NULL when they do.
#[pg_extern(volatile, parallel_unsafe, schema = "queue")]
fn service_problem() -> Option<String> {
    let Some(b) = board() else {
        return Some("the background workers are not running: add queue to shared_preload_libraries".into());
    };
    if unsafe { pg_sys::RecoveryInProgress() } {
        // Services start when recovery ends (BgWorkerStart_RecoveryFinished).
        return Some(
            "this server is a standby (in recovery): the primary serves the queue; this server answers reads as of its replay, and serves the queue once promoted"
                .into(),
        );
    }
    let oid = shared::my_database();
    if let Some(db) = shared::this_db() {
        if db.slot().services.pid(Role::Maintenance) != 0 {
            return None;
        }
    }
    let name = database_name();
    let filter = gucs::database_filter();
    if !filter.allows(&name) {
        return Some(format!("queue.database ({}) does not list this database", filter.describe()));
    }
    if b.refused.iter().any(|e| e.load(Ordering::SeqCst) == oid) {
        return Some(format!(
            "queue.max_databases ({}) databases are served already: raise it (and max_worker_processes) and restart the server",
            shared::capacity()
        ));
    }
    if b.pid.load(Ordering::SeqCst) == 0 {
        return Some("the queue launcher is not running".into());
    }
    Some("the services of this database are starting (the launcher starts them within seconds of CREATE EXTENSION; see the server log if this lasts)".into())
}

// ---------------------------------------------------------------------------
// DROP DATABASE and friends need the database to themselves
// ---------------------------------------------------------------------------

static PREV_UTILITY: OnceLock<pg_sys::ProcessUtility_hook_type> = OnceLock::new();

/// Install the utility hook. From `_PG_init` while preloading.
pub fn install_utility_hook() {
    unsafe {
        let _ = PREV_UTILITY.set(pg_sys::ProcessUtility_hook);
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

/// The database a utility statement needs without other sessions, if any:
/// DROP DATABASE, ALTER DATABASE RENAME / SET TABLESPACE, CREATE DATABASE
/// ... TEMPLATE.
unsafe fn database_needed_alone(node: *mut pg_sys::Node) -> Option<String> {
    unsafe {
        if node.is_null() {
            return None;
        }
        let text =
            |p: *const std::ffi::c_char| (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned());
        let option = |options: *mut pg_sys::List, wanted: &str| -> Option<*mut pg_sys::DefElem> {
            pgrx::PgList::<pg_sys::DefElem>::from_pg(options)
                .iter_ptr()
                .find(|d| !(**d).defname.is_null() && CStr::from_ptr((**d).defname).to_bytes() == wanted.as_bytes())
        };
        match (*node).type_ {
            pg_sys::NodeTag::T_DropdbStmt => text((*node.cast::<pg_sys::DropdbStmt>()).dbname),
            pg_sys::NodeTag::T_RenameStmt => {
                let s = node.cast::<pg_sys::RenameStmt>();
                ((*s).renameType == pg_sys::ObjectType::OBJECT_DATABASE).then(|| text((*s).subname)).flatten()
            }
            pg_sys::NodeTag::T_AlterDatabaseStmt => {
                let s = node.cast::<pg_sys::AlterDatabaseStmt>();
                option((*s).options, "tablespace").and_then(|_| text((*s).dbname))
            }
            pg_sys::NodeTag::T_CreatedbStmt => {
                let s = node.cast::<pg_sys::CreatedbStmt>();
                option((*s).options, "template").and_then(|d| {
                    let arg = (*d).arg;
                    if arg.is_null() {
                        None
                    } else {
                        text(pg_sys::defGetString(d))
                    }
                })
            }
            _ => None,
        }
    }
}

/// Before such a statement, for a database the user owns: its services
/// leave and stay away, so that the statement finds no other session.
/// Returns the database paused. When the statement is over the services
/// may come back at once; if it fails with an error, after `PAUSE`.
unsafe fn make_way(node: *mut pg_sys::Node) -> Option<u32> {
    unsafe {
        let name = database_needed_alone(node)?;
        let cname = std::ffi::CString::new(name).ok()?;
        let oid = pg_sys::get_database_oid(cname.as_ptr(), true);
        if oid == pg_sys::Oid::INVALID || !pg_sys::pg_database_ownercheck(oid, pg_sys::GetUserId()) {
            return None;
        }
        pause(oid.to_u32());
        Some(oid.to_u32())
    }
}

/// The hook itself. Not `#[pg_guard]`: an ERROR raised by the statement
/// (or a later hook) must reach Postgres as it was raised, not caught and
/// re-raised by pgrx on the way (which rewrites its DETAIL). So the Rust
/// work runs in guarded helpers, the next hook is called through its raw
/// pointer, and this frame holds nothing that needs dropping when an ERROR
/// passes through it.
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    unsafe {
        let paused = make_way_for(pstmt);
        let next = PREV_UTILITY.get().copied().flatten().unwrap_or(raw_standard_process_utility);
        next(pstmt, query_string, read_only_tree, context, params, query_env, dest, qc);
        if paused != 0 {
            unpause_after(paused);
        }
    }
}

unsafe extern "C-unwind" {
    /// `standard_ProcessUtility`, called directly (see [`process_utility`]).
    #[link_name = "standard_ProcessUtility"]
    fn raw_standard_process_utility(
        pstmt: *mut pg_sys::PlannedStmt,
        query_string: *const std::ffi::c_char,
        read_only_tree: bool,
        context: pg_sys::ProcessUtilityContext::Type,
        params: pg_sys::ParamListInfo,
        query_env: *mut pg_sys::QueryEnvironment,
        dest: *mut pg_sys::DestReceiver,
        qc: *mut pg_sys::QueryCompletion,
    );
}

/// [`make_way`] under pgrx's guard: the database paused, 0 for none.
#[pg_guard]
unsafe extern "C-unwind" fn make_way_for(pstmt: *mut pg_sys::PlannedStmt) -> u32 {
    unsafe {
        if pstmt.is_null() {
            0
        } else {
            make_way((*pstmt).utilityStmt).unwrap_or(0)
        }
    }
}

/// [`unpause`] under pgrx's guard.
#[pg_guard]
unsafe extern "C-unwind" fn unpause_after(oid: u32) {
    unpause(oid);
}

// ---------------------------------------------------------------------------
// The launcher itself
// ---------------------------------------------------------------------------

/// Register the launcher with the postmaster (from `_PG_init`).
pub fn register_worker() {
    BackgroundWorkerBuilder::new("queue launcher")
        .set_type("queue launcher")
        .set_function("queue_launcher_main")
        .set_library("queue")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(1)))
        .load();
}

/// What the launcher knows of one database.
#[derive(Default)]
struct Known {
    /// When a maintenance worker last looked at it.
    probed: Option<Instant>,
    /// Workers this launcher started, by role.
    workers: [Option<DynamicBackgroundWorker>; 3],
    started: [Option<Instant>; 3],
    /// A failed start was logged (once until one succeeds).
    warned: bool,
}

impl Known {
    /// Whether a worker this launcher started for `role` may still run.
    fn running(&mut self, role: Role) -> bool {
        let w = &mut self.workers[role as usize];
        let alive = match w {
            Some(w) => {
                !matches!(w.pid(), Err(BackgroundWorkerStatus::Stopped) | Err(BackgroundWorkerStatus::PostmasterDied))
            }
            None => false,
        };
        if !alive {
            *w = None;
        }
        alive
    }
}

/// Start the worker of `role` for database `oid`. Starts of one role are
/// at least a second apart, so a service that cannot stay up costs one
/// fork a second, not a loop. False when it could not start now.
fn start(known: &mut Known, role: Role, oid: u32, name: &str) -> bool {
    if known.running(role) || known.started[role as usize].is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
        return false;
    }
    known.started[role as usize] = Some(Instant::now());
    let worker = BackgroundWorkerBuilder::new(&format!("{} for database {oid}", role.name()))
        .set_type(role.name())
        .set_function(role.function())
        .set_library("queue")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        .set_argument(Some(pg_sys::Datum::from(oid as usize)))
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .load_dynamic();
    match worker {
        Ok(w) => {
            known.workers[role as usize] = Some(w);
            known.warned = false;
            true
        }
        Err(_) => {
            if !known.warned {
                warning!(
                    "queue launcher: could not start {} for database \"{name}\": no background worker slot is free (max_worker_processes = {}); it tries again every second",
                    role.name(),
                    unsafe { pg_sys::max_worker_processes }
                );
                known.warned = true;
            }
            false
        }
    }
}

/// The databases that accept connections and are not templates, read from
/// the shared catalog: (oid, name).
fn list_databases() -> Vec<(u32, String)> {
    BackgroundWorker::transaction(|| unsafe {
        let mut out = Vec::new();
        let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
        loop {
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            // GETSTRUCT: the fixed columns follow the tuple header.
            let data = (*tuple).t_data;
            let form = data.cast::<u8>().add((*data).t_hoff as usize).cast::<pg_sys::FormData_pg_database>();
            // datconnlimit -2 marks a database whose DROP was interrupted.
            if (*form).datallowconn && !(*form).datistemplate && (*form).datconnlimit != -2 {
                let name = CStr::from_ptr((*form).datname.data.as_ptr()).to_string_lossy().into_owned();
                out.push(((*form).oid.to_u32(), name));
            }
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        out
    })
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn queue_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(None, None);
    unsafe { pg_sys::pgstat_report_appname(c"queue launcher".as_ptr()) };
    let Some(b) = board() else {
        log!("queue launcher: no shared memory (the library is not preloaded)");
        unsafe { pg_sys::proc_exit(0) };
    };
    let latch = unsafe { &raw mut (*pg_sys::MyProc).procLatch } as usize;
    unsafe { pg_sys::before_shmem_exit(Some(withdraw_latch), pg_sys::Datum::from(latch)) };
    b.pid.store(unsafe { pg_sys::MyProcPid }, Ordering::SeqCst);
    b.latch.store(latch, Ordering::SeqCst);
    log!("queue launcher: started; serving {}", gucs::database_filter().describe());

    let mut known: HashMap<u32, Known> = HashMap::new();
    let mut sleep = Duration::ZERO;
    while BackgroundWorker::wait_latch(Some(sleep)) {
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        round(b, &mut known);
        crate::services::set_idle();
        sleep = Duration::from_secs(1);
    }
    log!("queue launcher: shutting down");
    unsafe { pg_sys::proc_exit(1) };
}

/// One look at every database: retire what is no longer wanted, restart
/// what stopped, look for the extension where it may be new.
fn round(b: &Board, known: &mut HashMap<u32, Known>) {
    let mut announced: Vec<u32> =
        b.announced.iter().map(|e| e.swap(0, Ordering::SeqCst)).filter(|&oid| oid != 0).collect();
    let mut look_at_all = b.announced_overflow.swap(0, Ordering::SeqCst) != 0;
    let filter = gucs::database_filter();
    let databases: HashMap<u32, String> =
        list_databases().into_iter().filter(|(_, name)| filter.allows(name)).collect();

    for db in shared::slots() {
        let oid = db.database();
        if oid == 0 {
            continue;
        }
        let services = &db.slot().services;
        let k = known.entry(oid).or_default();
        if !databases.contains_key(&oid) || services.retiring() {
            services.retire();
            let mut alive = false;
            for role in ROLES {
                let pid = services.pid(role);
                alive |= pid != 0 || k.running(role);
                signal(pid);
            }
            if !alive {
                shared::release(db, oid);
                k.probed = Some(Instant::now());
                // Look again at once: a CREATE EXTENSION that followed the
                // DROP announced itself while the old services still held
                // the slot, and that announcement found the database served
                // and was spent. Without this look the new installation
                // would wait for PROBE_AGAIN. (A dropped or no longer listed
                // database is not in `databases`, so it is not looked at.)
                announced.push(oid);
                // A slot is free: databases refused for lack of one get it.
                for e in &b.refused {
                    let refused = e.swap(0, Ordering::SeqCst);
                    if refused != 0 {
                        announced.push(refused);
                    }
                }
                look_at_all |= b.refused_overflow.swap(0, Ordering::SeqCst) != 0;
                log!("queue launcher: stopped serving database {oid}");
            }
            continue;
        }
        if paused(oid) {
            continue;
        }
        let name = &databases[&oid];
        for role in ROLES {
            if services.pid(role) == 0 {
                start(k, role, oid, name);
            }
        }
    }

    let mut probes = known
        .iter_mut()
        .filter(|(oid, _)| shared::find(**oid).is_none())
        .map(|(_, k)| k.running(Role::Maintenance))
        .filter(|&running| running)
        .count();
    if look_at_all {
        // More databases than the board holds announced themselves or were
        // refused: every unserved database is due for a look. Forgetting
        // when each was last looked at keeps them due until each had its
        // look, MAX_PROBES at a time, rather than for this one round.
        for &oid in databases.keys() {
            if shared::find(oid).is_none() {
                known.entry(oid).or_default().probed = None;
            }
        }
    }
    for (&oid, name) in &databases {
        if shared::find(oid).is_some() {
            continue;
        }
        if paused(oid) {
            if announced.contains(&oid) {
                board_add(&b.announced, oid);
            }
            continue;
        }
        let k = known.entry(oid).or_default();
        if k.running(Role::Maintenance) {
            // A look that may have begun before the installation committed:
            // keep the announcement for a look after this one.
            if announced.contains(&oid) {
                board_add(&b.announced, oid);
            }
            continue;
        }
        let due = announced.contains(&oid) || k.probed.is_none_or(|t| t.elapsed() >= PROBE_AGAIN);
        if due && probes < MAX_PROBES && start(k, Role::Maintenance, oid, name) {
            k.probed = Some(Instant::now());
            probes += 1;
        } else if due && announced.contains(&oid) {
            // Not now (too soon after the last look, or no worker slot):
            // keep the announcement for the next round.
            board_add(&b.announced, oid);
        }
    }
    known.retain(|oid, k| databases.contains_key(oid) || k.workers.iter().any(Option::is_some));
}

/// Exit callback of the launcher: withdraw its latch and pid.
#[pg_guard]
unsafe extern "C-unwind" fn withdraw_latch(_code: i32, latch: pg_sys::Datum) {
    if let Some(b) = board() {
        let _ = b.latch.compare_exchange(latch.value(), 0, Ordering::SeqCst, Ordering::SeqCst);
        let _ = b.pid.compare_exchange(unsafe { pg_sys::MyProcPid }, 0, Ordering::SeqCst, Ordering::SeqCst);
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    #[pg_test]
    fn board_lists_keep_each_database_once_and_fill_up() {
        let list: Vec<AtomicU32> = (0..4).map(|_| AtomicU32::new(0)).collect();
        assert!(board_add(&list, 7));
        assert!(board_add(&list, 7));
        assert_eq!(list.iter().filter(|e| e.load(Ordering::SeqCst) == 7).count(), 1);
        for oid in 8..11 {
            assert!(board_add(&list, oid));
        }
        assert!(!board_add(&list, 11), "full");
        assert!(board_add(&list, 9), "a listed database is still listed");
    }
}
