//! The plain push, written against the table and its indexes.
//!
//! Most pushes are plain (due now; no serial group, dedupe key, dependency,
//! tag, batch, access rule or queue default) and a transaction of their own.
//! As an INSERT run by plpgsql, each such push started the executor for the
//! statement, projected the table's 28 columns and compiled the predicate of
//! every partial index again, in every transaction: most of what a push cost
//! beyond the bare INSERT, and none of it changes from one push to the next
//! (bench/README.md, "Where a push goes").
//!
//! `queue_push` keeps, per backend, what does not change: the column
//! defaults as expression states, and each index's IndexInfo with its
//! predicate compiled. Per push it forms the row, hands it to the table's
//! access method and maintains the indexes with the executor's own
//! `ExecInsertIndexTuples` after `ExecConstraints`, so unique indexes, NOT
//! NULL and any CHECK or index an operator adds behave as for an INSERT.
//! What only an INSERT statement does (triggers, rules, row security,
//! generated columns, a partition constraint, domain checks on columns
//! left NULL, the hooks an auditing module puts on the executor's
//! permission check) makes it step aside: on such a table, one whose filled
//! columns are not the ones it knows, or one whose defaults or index
//! expressions use more than plain operators and function calls on columns
//! (see [`cacheable`]), the push takes the general path
//! (`queue.push_general`, plpgsql), whose INSERT honours them.
//!
//! The kept state is dropped whenever the relcache reports a change to the
//! table or one of its indexes (a new or dropped index, a changed default,
//! a trigger, DROP EXTENSION: each invalidates the table's entry), and on
//! any change to pg_proc (a function a default or an index calls may have
//! been replaced or given other settings), and rebuilt by the next push
//! once it holds the table's lock, which is when such a change becomes
//! visible to it, as it does to an INSERT.

use crate::validate::check_push_args;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};
use std::ffi::CStr;
use std::ptr::null_mut;

/// The columns a plain push fills, by name, with the type each must have;
/// `None`: the job status enum. The others take their defaults.
const FILLED: [(&CStr, Option<pg_sys::Oid>); 10] = [
    (c"queue", Some(pg_sys::TEXTOID)),
    (c"status", None),
    (c"priority", Some(pg_sys::INT4OID)),
    (c"run_at", Some(pg_sys::TIMESTAMPTZOID)),
    (c"max_attempts", Some(pg_sys::INT4OID)),
    (c"timeout", Some(pg_sys::INTERVALOID)),
    (c"backoff_base", Some(pg_sys::INTERVALOID)),
    (c"backoff_max", Some(pg_sys::INTERVALOID)),
    (c"retry_delays", Some(pg_sys::INTERVALARRAYOID)),
    (c"payload", Some(pg_sys::JSONBOID)),
];

/// What a push keeps between calls, in a memory context of its own under
/// CacheMemoryContext.
struct Plan {
    context: pg_sys::MemoryContext,
    /// The table it was built for.
    table: pg_sys::Oid,
    /// false: the table needs an INSERT (see the module comment); pushes
    /// take the general path.
    usable: bool,
    /// The attribute index of each of `FILLED`, and of `id`.
    filled: [usize; FILLED.len()],
    id: usize,
    /// The `pending` label of the status enum.
    pending: pg_sys::Datum,
    /// Per attribute, its default's expression state; null for a filled or
    /// dropped column, or one without a default (NULL).
    defaults: Vec<*mut pg_sys::ExprState>,
    /// Each index, with its IndexInfo (predicate and expressions compiled).
    indexes: Vec<(pg_sys::Oid, *mut pg_sys::IndexInfo)>,
}

thread_local! {
    static PLAN: RefCell<Option<Plan>> = const { RefCell::new(None) };
    /// The table of the plan being built or kept, and whether the relcache
    /// has reported a change to it (or to everything) since the build began.
    static WATCHED: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
    static STALE: Cell<bool> = const { Cell::new(true) };
    static LISTENING: Cell<bool> = const { Cell::new(false) };
    static LISTENING_PROCS: Cell<bool> = const { Cell::new(false) };
}

/*
 * The relcache's callback: called for every relation whose entry is
 * invalidated, and with InvalidOid when all are. It only marks the plan
 * stale (it may run in the middle of a push, even of the plan's build); the
 * next push rebuilds it.
 */
#[pg_guard]
unsafe extern "C-unwind" fn forget(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    // One of the kept plan's indexes counts too: a change to it alone (its
    // pg_index row updated in place, as CREATE INDEX CONCURRENTLY does)
    // reaches only its own entry. The plan is only ever borrowed shared
    // while a callback can run; a borrow that fails counts as a change.
    let kept_index = || {
        PLAN.with(|plan| {
            plan.try_borrow()
                .map(|plan| plan.as_ref().is_some_and(|p| p.indexes.iter().any(|(oid, _)| *oid == relid)))
                .unwrap_or(true)
        })
    };
    if relid == pg_sys::InvalidOid || relid == WATCHED.get() || kept_index() {
        STALE.set(true);
    }
}

/// Whether an expression state compiled from `expr` may be kept and
/// evaluated push after push, each time in the push's own executor state.
/// Most steps keep nothing between evaluations, but some set themselves up
/// on their first one in the per-query memory of the evaluating context
/// (a whole-row Var copies its tuple descriptor there, a row-type
/// conversion its map, a hashed IN list its table), which is freed with
/// the push that ran it first: the next push would read freed memory. So
/// only nodes known to keep nothing there are accepted, which covers every
/// default and index of the extension's own table (constants, columns,
/// operators, function calls such as nextval() and now(), IN lists, NULL and
/// boolean tests, casts, CASE, COALESCE); anything else makes the push take
/// the general path, whose INSERT compiles its expressions per statement.
unsafe fn cacheable(expr: *mut pg_sys::Node) -> bool {
    #[pg_guard]
    unsafe extern "C-unwind" fn refuse(node: *mut pg_sys::Node, context: *mut std::ffi::c_void) -> bool {
        unsafe {
            if node.is_null() {
                return false;
            }
            use pg_sys::NodeTag::*;
            let ok = match (*node).type_ {
                T_Var => (*node.cast::<pg_sys::Var>()).varattno > 0,
                T_ScalarArrayOpExpr => (*node.cast::<pg_sys::ScalarArrayOpExpr>()).hashfuncid == pg_sys::InvalidOid,
                T_List | T_Const | T_FuncExpr | T_OpExpr | T_DistinctExpr | T_NullIfExpr | T_BoolExpr
                | T_RelabelType | T_CoerceViaIO | T_CaseExpr | T_CaseWhen | T_CaseTestExpr | T_CoalesceExpr
                | T_MinMaxExpr | T_NullTest | T_BooleanTest | T_SQLValueFunction | T_ArrayExpr => true,
                _ => false,
            };
            !ok || pg_sys::expression_tree_walker(node, Some(refuse), context)
        }
    }
    unsafe { !refuse(expr, null_mut()) }
}

/// The OID of `queue.jobs`, looked up by name (the extension is not
/// relocatable).
unsafe fn jobs_table() -> pg_sys::Oid {
    unsafe {
        let schema = pg_sys::get_namespace_oid(c"queue".as_ptr(), false);
        pg_sys::get_relname_relid(c"jobs".as_ptr(), schema)
    }
}

/// The attribute of `rel` at index `i`.
unsafe fn attribute(rel: pg_sys::Relation, i: usize) -> &'static pg_sys::FormData_pg_attribute {
    unsafe { &*(*(*rel).rd_att).attrs.as_ptr().add(i) }
}

/*
 * Build the plan for the locked table `rel`, in the current memory context,
 * which must outlive it. An index is opened (and locked, as an INSERT would)
 * only to read its definition.
 */
unsafe fn build(rel: pg_sys::Relation) -> Plan {
    unsafe {
        let natts = (*(*rel).rd_att).natts as usize;
        let find = |name: &CStr| {
            (0..natts).find(|&i| {
                let a = attribute(rel, i);
                !a.attisdropped && CStr::from_ptr(a.attname.data.as_ptr()) == name
            })
        };
        // An INSERT would also fire rules, check a partition constraint, and
        // check the domain of a column it leaves NULL (one without a
        // default): none of which the plain push does.
        let mut usable = (*rel).trigdesc.is_null()
            && (*rel).rd_rules.is_null()
            && !(*(*rel).rd_rel).relrowsecurity
            && !(*(*rel).rd_rel).relispartition
            && (*(*rel).rd_rel).relkind as u8 == pg_sys::RELKIND_RELATION
            && ((*(*rel).rd_att).constr.is_null() || !(*(*(*rel).rd_att).constr).has_generated_stored)
            && (0..natts).all(|i| {
                let a = attribute(rel, i);
                a.attisdropped || pg_sys::get_typtype(a.atttypid) as u8 != pg_sys::TYPTYPE_DOMAIN
            });
        let mut filled = [0usize; FILLED.len()];
        let mut pending = pg_sys::Datum::from(0);
        for (k, (name, typ)) in FILLED.iter().enumerate() {
            let Some(i) = find(name) else {
                usable = false;
                continue;
            };
            filled[k] = i;
            let actual = attribute(rel, i).atttypid;
            match typ {
                Some(t) => usable &= actual == *t,
                None if pg_sys::get_typtype(actual) as u8 == pg_sys::TYPTYPE_ENUM => {
                    let label = pgrx::fcinfo::direct_function_call::<pg_sys::Oid>(
                        pg_sys::enum_in,
                        &[Some(pg_sys::Datum::from(c"pending".as_ptr())), Some(pg_sys::Datum::from(actual))],
                    );
                    pending = pg_sys::Datum::from(label.unwrap_or(pg_sys::InvalidOid));
                    usable &= label.is_some();
                }
                None => usable = false,
            }
        }
        let id = find(c"id");
        usable &= id.is_some_and(|i| attribute(rel, i).atttypid == pg_sys::INT8OID);
        let defaults = (0..natts)
            .map(|i| {
                let a = attribute(rel, i);
                if a.attisdropped || filled.contains(&i) {
                    return null_mut();
                }
                let expr = pg_sys::build_column_default(rel, (i + 1) as i32);
                if expr.is_null() {
                    null_mut()
                } else {
                    let expr = pg_sys::expression_planner(expr.cast());
                    usable &= cacheable(expr.cast());
                    pg_sys::ExecInitExpr(expr, null_mut())
                }
            })
            .collect::<Vec<_>>();
        // The id is the default's (the sequence): without one, no plan.
        usable &= id.is_some_and(|i| !defaults[i].is_null());
        let list = pg_sys::RelationGetIndexList(rel);
        let count = if list.is_null() { 0 } else { (*list).length as usize };
        let mut indexes = Vec::with_capacity(count);
        for k in 0..count {
            let oid = (*(*list).elements.add(k)).oid_value;
            let index = pg_sys::index_open(oid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
            let info = pg_sys::BuildIndexInfo(index);
            if !(*info).ii_Predicate.is_null() {
                let predicate = pg_sys::expression_planner((*info).ii_Predicate.cast());
                usable &= cacheable(predicate.cast());
                (*info).ii_PredicateState = pg_sys::ExecInitQual(predicate.cast(), null_mut());
            }
            let exprs = (*info).ii_Expressions;
            if !exprs.is_null() {
                let mut states: *mut pg_sys::List = null_mut();
                for e in 0..(*exprs).length as usize {
                    let expr = pg_sys::expression_planner((*(*exprs).elements.add(e)).ptr_value.cast());
                    usable &= cacheable(expr.cast());
                    states = pg_sys::lappend(states, pg_sys::ExecInitExpr(expr, null_mut()).cast());
                }
                (*info).ii_ExpressionsState = states;
            }
            pg_sys::index_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);
            indexes.push((oid, info));
        }
        Plan {
            context: pg_sys::CurrentMemoryContext,
            table: (*rel).rd_id,
            usable,
            filled,
            id: id.unwrap_or(0),
            pending,
            defaults,
            indexes,
        }
    }
}

/*
 * Make the plan current for the locked table `rel`. The old plan goes first,
 * so that an error halfway leaves none, and the next push builds again. The
 * new one is marked fresh before its build, so that a change reported while
 * it runs (its index locks accept invalidations) leaves it stale for the next
 * push. Built in a context under the call's, moved under CacheMemoryContext
 * once complete: an error halfway leaves nothing behind.
 */
unsafe fn rebuild(rel: pg_sys::Relation) {
    unsafe {
        if !LISTENING.get() {
            pg_sys::CacheRegisterRelcacheCallback(Some(forget), pg_sys::Datum::from(0));
            LISTENING.set(true);
        }
        listen_to_procs();
        if let Some(previous) = PLAN.with_borrow_mut(Option::take) {
            pg_sys::MemoryContextDelete(previous.context);
        }
        WATCHED.set((*rel).rd_id);
        STALE.set(false);
        let context = pg_sys::AllocSetContextCreateInternal(
            pg_sys::CurrentMemoryContext,
            c"queue push plan".as_ptr(),
            pg_sys::ALLOCSET_SMALL_MINSIZE as usize,
            pg_sys::ALLOCSET_SMALL_INITSIZE as usize,
            pg_sys::ALLOCSET_SMALL_MAXSIZE as usize,
        );
        let old = pg_sys::MemoryContextSwitchTo(context);
        let plan = build(rel);
        pg_sys::MemoryContextSwitchTo(old);
        pg_sys::MemoryContextSetParent(context, pg_sys::CacheMemoryContext);
        PLAN.set(Some(plan));
    }
}

/// A plain push's row, as datums (the intervals and run_at already
/// defaulted and checked).
struct Row {
    queue: pg_sys::Datum,
    priority: i32,
    run_at: pg_sys::Datum,
    max_attempts: i32,
    timeout: pg_sys::Datum,
    backoff_base: pg_sys::Datum,
    backoff_max: pg_sys::Datum,
    retry_delays: Option<pg_sys::Datum>,
    payload: pg_sys::Datum,
}

/*
 * Insert `row` into queue.jobs: the table locked as an INSERT locks it, the
 * row formed from the kept defaults, checked, stored by the table's access
 * method, then entered into every index by the executor's routine. Returns
 * the new job's id, or None when the plan says an INSERT must do it.
 */
unsafe fn insert(row: &Row) -> Option<i64> {
    unsafe {
        let kept = PLAN.with_borrow(|plan| plan.as_ref().map(|p| p.table));
        let table = match kept {
            Some(table) if !STALE.get() => table,
            _ => jobs_table(),
        };
        // What the executor checks of an INSERT first: the same 25006 in a
        // read-only transaction (and on a standby).
        pg_sys::PreventCommandIfReadOnly(c"INSERT".as_ptr());
        pg_sys::PreventCommandIfParallelMode(c"INSERT".as_ptr());
        // A module that checks or audits every table access (pgaudit,
        // sepgsql) sees an INSERT through this hook, which only the
        // executor calls: let the general path's INSERT be seen.
        if (&raw const pg_sys::ExecutorCheckPerms_hook).read().is_some() {
            return None;
        }
        // Taking the lock accepts the invalidations sent since: a change
        // committed before it marks the plan stale here.
        let rel = pg_sys::table_open(table, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        if STALE.get() || kept != Some(table) {
            rebuild(rel);
        }
        let natts = (*(*rel).rd_att).natts as usize;
        let id = PLAN.with_borrow(|plan| {
            plan.as_ref().filter(|p| p.usable && p.defaults.len() == natts).map(|plan| store(plan, rel, row))
        });
        pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        id
    }
}

/*
 * The insert proper, with a usable plan for the locked `rel`. The row is
 * formed first, so that an index whose predicate it fails (most of them: a
 * plain push goes into the primary key and jobs_claim only) is neither
 * opened nor locked; the executor opens every index of the table, but an
 * index the statement does not touch needs no lock, as DDL on an index
 * locks the table too. The others are opened and locked before the row is
 * stored, as the executor does, and each IndexInfo is copied so that an
 * access method's per-statement cache (ii_AmCache) lives and dies with this
 * call.
 */
unsafe fn store(plan: &Plan, rel: pg_sys::Relation, row: &Row) -> i64 {
    unsafe {
        let estate = pg_sys::CreateExecutorState();
        let old = pg_sys::MemoryContextSwitchTo((*estate).es_query_cxt);
        let info = pg_sys::palloc0(size_of::<pg_sys::ResultRelInfo>()).cast::<pg_sys::ResultRelInfo>();
        pg_sys::InitResultRelInfo(info, rel, 0, null_mut(), 0);

        let slot = pg_sys::MakeSingleTupleTableSlot((*rel).rd_att, &raw const pg_sys::TTSOpsVirtual);
        let econtext = pg_sys::MakePerTupleExprContext(estate);
        let natts = plan.defaults.len();
        let values = std::slice::from_raw_parts_mut((*slot).tts_values, natts);
        let nulls = std::slice::from_raw_parts_mut((*slot).tts_isnull, natts);
        for (i, state) in plan.defaults.iter().enumerate() {
            nulls[i] = true;
            if !state.is_null() {
                values[i] = pg_sys::ExecEvalExprSwitchContext(*state, econtext, &mut nulls[i]);
            }
        }
        let f = &plan.filled;
        let mut put = |k: usize, value: Option<pg_sys::Datum>| {
            values[f[k]] = value.unwrap_or(pg_sys::Datum::from(0));
            nulls[f[k]] = value.is_none();
        };
        put(0, Some(row.queue));
        put(1, Some(plan.pending));
        put(2, Some(pg_sys::Datum::from(row.priority)));
        put(3, Some(row.run_at));
        put(4, Some(pg_sys::Datum::from(row.max_attempts)));
        put(5, Some(row.timeout));
        put(6, Some(row.backoff_base));
        put(7, Some(row.backoff_max));
        put(8, row.retry_delays);
        put(9, Some(row.payload));
        pg_sys::ExecStoreVirtualTuple(slot);

        (*econtext).ecxt_scantuple = slot;
        let entered = plan
            .indexes
            .iter()
            .filter(|(_, kept)| {
                let predicate = (**kept).ii_PredicateState;
                (**kept).ii_ReadyForInserts && (predicate.is_null() || pg_sys::ExecQual(predicate, econtext))
            })
            .collect::<Vec<_>>();
        let count = entered.len();
        let descs = pg_sys::palloc(count.max(1) * size_of::<pg_sys::Relation>()).cast::<pg_sys::Relation>();
        let infos = pg_sys::palloc(count.max(1) * size_of::<*mut pg_sys::IndexInfo>()).cast::<*mut pg_sys::IndexInfo>();
        for (k, (oid, kept)) in entered.iter().enumerate() {
            *descs.add(k) = pg_sys::index_open(*oid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
            let copy = pg_sys::palloc(size_of::<pg_sys::IndexInfo>()).cast::<pg_sys::IndexInfo>();
            std::ptr::copy_nonoverlapping(*kept, copy, 1);
            (*copy).ii_AmCache = null_mut();
            (*copy).ii_Context = (*estate).es_query_cxt;
            *infos.add(k) = copy;
        }
        (*info).ri_NumIndices = count as i32;
        (*info).ri_IndexRelationDescs = descs;
        (*info).ri_IndexRelationInfo = infos;

        if !(*(*rel).rd_att).constr.is_null() {
            pg_sys::ExecConstraints(info, slot, estate);
        }
        let Some(tuple_insert) = (*(*rel).rd_tableam).tuple_insert else {
            error!("the table access method of queue.jobs cannot insert");
        };
        tuple_insert(rel, slot, pg_sys::GetCurrentCommandId(true), 0, null_mut());
        if count > 0 {
            pg_sys::ExecInsertIndexTuples(info, slot, estate, false, false, null_mut(), null_mut());
        }
        let id = (*(*slot).tts_values.add(plan.id)).value() as i64;

        for k in 0..count {
            pg_sys::index_close(*descs.add(k), pg_sys::NoLock as pg_sys::LOCKMODE);
        }
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::MemoryContextSwitchTo(old);
        pg_sys::FreeExecutorState(estate);
        id
    }
}

/// The signature of the general path, which `queue_push` calls with its own
/// arguments.
const GENERAL: &CStr = c"queue.push_general(text, jsonb, integer, interval, timestamptz, text, integer, interval, interval, interval, interval[], text, bigint[], boolean, text[], bigint)";

thread_local! {
    /// The general path's OID, looked up once per backend; forgotten on
    /// any change to pg_proc (DROP and CREATE EXTENSION make a new one).
    static GENERAL_OID: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
}

/*
 * The syscache's callback for pg_proc: forget the general path's OID.
 */
#[pg_guard]
unsafe extern "C-unwind" fn forget_general(_arg: pg_sys::Datum, _cacheid: i32, _hash: u32) {
    GENERAL_OID.set(pg_sys::InvalidOid);
    // A function the plan's defaults or indexes call may have changed (its
    // body, or whether it runs as its owner or with other settings): the
    // plan has it compiled in, so it is built again.
    STALE.set(true);
}

/// Register [`forget_general`] for pg_proc, once per backend.
unsafe fn listen_to_procs() {
    if !LISTENING_PROCS.get() {
        unsafe {
            pg_sys::CacheRegisterSyscacheCallback(
                pg_sys::SysCacheIdentifier::PROCOID as i32,
                Some(forget_general),
                pg_sys::Datum::from(0),
            )
        };
        LISTENING_PROCS.set(true);
    }
}

/// The OID of `queue.push_general`: parsing its signature costs more than a
/// push, and a prepared statement makes a new call site (a new FmgrInfo,
/// so an empty fn_extra) for every execution.
unsafe fn general_oid() -> pg_sys::Oid {
    unsafe {
        let kept = GENERAL_OID.get();
        if kept != pg_sys::InvalidOid {
            return kept;
        }
        listen_to_procs();
        let oid = pgrx::fcinfo::direct_function_call::<pg_sys::Oid>(
            pg_sys::regprocedurein,
            &[Some(pg_sys::Datum::from(GENERAL.as_ptr()))],
        );
        let Some(oid) = oid else {
            error!("queue.push_general is missing: reinstall the extension");
        };
        GENERAL_OID.set(oid);
        oid
    }
}

/*
 * Run queue.push_general with this call's arguments: the call's FmgrInfo
 * swapped for the general path's for the length of the call, as
 * fmgr_security_definer swaps its own, and put back however the call ends.
 * The general path's FmgrInfo is kept in the call site's fn_extra.
 */
unsafe fn general(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        let flinfo = (*fcinfo).flinfo;
        let mut target = (*flinfo).fn_extra.cast::<pg_sys::FmgrInfo>();
        if target.is_null() {
            let oid = general_oid();
            target = pg_sys::MemoryContextAllocZero((*flinfo).fn_mcxt, size_of::<pg_sys::FmgrInfo>()).cast();
            pg_sys::fmgr_info_cxt(oid, target, (*flinfo).fn_mcxt);
            (*flinfo).fn_extra = target.cast();
        }
        let Some(call) = (*target).fn_addr else {
            error!("queue.push_general has no entry point: reinstall the extension");
        };
        struct Restore(pg_sys::FunctionCallInfo, *mut pg_sys::FmgrInfo);
        impl Drop for Restore {
            fn drop(&mut self) {
                unsafe { (*self.0).flinfo = self.1 };
            }
        }
        let _restore = Restore(fcinfo, flinfo);
        (*fcinfo).flinfo = target;
        pg_sys::ffi::pg_guard_ffi_boundary(|| call(fcinfo))
    }
}

/// The arguments of `queue_push`, by position.
mod arg {
    pub const QUEUE: usize = 0;
    pub const PAYLOAD: usize = 1;
    pub const PRIORITY: usize = 2;
    pub const DELAY: usize = 3;
    pub const RUN_AT: usize = 4;
    pub const SERIAL_GROUP: usize = 5;
    pub const MAX_ATTEMPTS: usize = 6;
    pub const TIMEOUT: usize = 7;
    pub const BACKOFF_BASE: usize = 8;
    pub const BACKOFF_MAX: usize = 9;
    pub const RETRY_DELAYS: usize = 10;
    pub const DEDUPE_KEY: usize = 11;
    pub const DEPENDS_ON: usize = 12;
    pub const TAGS: usize = 14;
    pub const BATCH: usize = 15;
}

/*
 * The plain push: check the arguments as the general path does (the options
 * left NULL take the global defaults: 0, 3, 5 minutes, 10 seconds, 1 hour),
 * store the row, count the job and wake its queue. None, having done
 * nothing, when the table needs an INSERT.
 */
unsafe fn plain(fcinfo: pg_sys::FunctionCallInfo) -> Option<pg_sys::Datum> {
    unsafe {
        let given = |n: usize| {
            let a = &*(*fcinfo).args.as_ptr().add(n);
            (!a.isnull).then_some(a.value)
        };
        let queue: Option<&str> = pgrx::fcinfo::pg_getarg(fcinfo, arg::QUEUE);
        let payload = given(arg::PAYLOAD);
        let priority = pgrx::fcinfo::pg_getarg::<i32>(fcinfo, arg::PRIORITY).unwrap_or(0);
        let max_attempts = pgrx::fcinfo::pg_getarg::<i32>(fcinfo, arg::MAX_ATTEMPTS).unwrap_or(3);
        let interval = |n: usize, default: Interval| pgrx::fcinfo::pg_getarg::<Interval>(fcinfo, n).unwrap_or(default);
        let timeout = interval(arg::TIMEOUT, Interval::from_minutes(5));
        let backoff_base = interval(arg::BACKOFF_BASE, Interval::from_seconds(10.0));
        let backoff_max = interval(arg::BACKOFF_MAX, Interval::from_hours(1));
        let retry_delays = given(arg::RETRY_DELAYS);
        let delays: Option<Vec<Option<Interval>>> =
            if retry_delays.is_some() { pgrx::fcinfo::pg_getarg(fcinfo, arg::RETRY_DELAYS) } else { None };
        let size = payload.map(|p| crate::validate::json_size_of(p));
        let run_at = check_push_args(
            queue,
            None,
            size,
            None,
            None,
            Some(max_attempts),
            Some(timeout),
            Some(backoff_base),
            Some(backoff_max),
            delays,
            None,
            Some(priority),
        );
        // check_push_args has refused a NULL queue or payload.
        let (Some(name), Some(queue), Some(payload)) = (queue, given(arg::QUEUE), payload) else {
            return None;
        };
        let datum = |v: Interval| v.into_datum().unwrap_or(pg_sys::Datum::from(0));
        let row = Row {
            queue,
            priority,
            run_at: run_at.into_datum().unwrap_or(pg_sys::Datum::from(0)),
            max_attempts,
            timeout: datum(timeout),
            backoff_base: datum(backoff_base),
            backoff_max: datum(backoff_max),
            retry_delays,
            payload,
        };
        let id = insert(&row)?;
        crate::stats::pushed(name, priority);
        Some(pg_sys::Datum::from(id))
    }
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_queue_push() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// SQL `queue_push(queue, payload, priority, delay, run_at, serial_group,
/// max_attempts, timeout, backoff_base, backoff_max, retry_delays,
/// dedupe_key, depends_on, run_anyway, tags, batch)`, declared in
/// sql/core.sql: the plain push here, every other push (and a plain one on a
/// table that needs an INSERT) by `queue.push_general`.
///
/// A C-language function that reads its arguments itself: the payload is
/// stored as the datum it came as, never converted, and the general path
/// receives the very arguments it was given.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn queue_push(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        let null = |n: usize| (*(*fcinfo).args.as_ptr().add(n)).isnull;
        let options =
            [arg::DELAY, arg::RUN_AT, arg::SERIAL_GROUP, arg::DEDUPE_KEY, arg::DEPENDS_ON, arg::TAGS, arg::BATCH];
        if options.iter().all(|&n| null(n)) && crate::settings::push_mode() == 0 {
            if let Some(id) = plain(fcinfo) {
                return id;
            }
        }
        general(fcinfo)
    }
}
