//! Per-queue access: who the caller is, and whether a queue (or a serial
//! group) falls inside the patterns an access rule grants.
//!
//! The rules themselves live in `queue.access_rules` (sql/access.sql); these
//! are the small pure parts the SQL asks for on every confined call.

use pgrx::prelude::*;

/// SQL: the role a call is made by, for access rules and schedule owners.
///
/// The public functions are SECURITY DEFINER, so `current_user` inside them
/// is the extension's owner. The caller is the role in effect outside any
/// function: the session user, or the role it took with SET ROLE (what
/// `GetOuterUserId` keeps). A role that calls through a SECURITY DEFINER
/// function of its own is still itself here.
#[pg_extern(stable, parallel_safe, schema = "queue")]
fn caller() -> pg_sys::Oid {
    unsafe { pg_sys::GetOuterUserId() }
}

/// SQL: whether the rules given to `rule_role` bind `role`: `role` is that
/// role or a member of it, directly or not, whatever INHERIT says (a rule
/// confines; it must not be escaped by NOINHERIT). Superusers are bound by
/// no rule. A rule of a role that no longer exists binds nobody.
#[pg_extern(stable, parallel_safe, schema = "queue")]
fn rule_binds(role: pg_sys::Oid, rule_role: pg_sys::Oid) -> bool {
    unsafe { !pg_sys::superuser_arg(role) && pg_sys::is_member_of_role_nosuper(role, rule_role) }
}

/// Whether one pattern matches a name: the exact name, or, ending in `*`,
/// every name that starts with what comes before it.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// SQL: whether a queue is inside the patterns (NULL patterns: the caller
/// is not confined, everything is; a NULL queue is inside nothing then).
#[pg_extern(immutable, parallel_safe, schema = "queue")]
fn access_allows(patterns: Option<Vec<Option<String>>>, queue: Option<&str>) -> bool {
    let Some(patterns) = patterns else { return true };
    queue.is_some_and(|q| patterns.iter().flatten().any(|p| pattern_matches(p, q)))
}

/// Whether a serial group is in a confined producer's namespace: its name
/// matches one of the patterns, or its part before some ':' does (`billing`
/// may use the groups `billing` and `billing:customer-42`). Serial groups
/// span queues, so without this a confined producer could join another
/// team's group and demote or block its jobs.
pub fn group_allowed(patterns: &[String], group: &str) -> bool {
    let mut heads = group.match_indices(':').map(|(i, _)| &group[..i]).chain(std::iter::once(group));
    heads.any(|head| patterns.iter().any(|p| pattern_matches(p, head)))
}

/// SQL: [`group_allowed`], with NULL patterns (not confined) and a NULL
/// group (no group) always allowed.
#[pg_extern(immutable, parallel_safe, schema = "queue")]
fn access_allows_group(patterns: Option<Vec<Option<String>>>, serial_group: Option<&str>) -> bool {
    match (patterns, serial_group) {
        (Some(patterns), Some(group)) => {
            let patterns: Vec<String> = patterns.into_iter().flatten().collect();
            group_allowed(&patterns, group)
        }
        _ => true,
    }
}

/// SQL `queue.rules_exist()`: whether `queue.access_rules` holds a rule that
/// the current snapshot sees, the question every public function asks before
/// anything else (no rule at all: nobody is confined).
///
/// It is `EXISTS (SELECT FROM queue.access_rules)` without the executor. In
/// plpgsql a subquery starts a whole plan each time (a Result node, a SubPlan,
/// a scan), where a function call is a simple expression; and one push, claim
/// or ack is often a transaction of its own, so that start-up is paid per job.
/// The scan is the one EXISTS runs: the same snapshot, the same lock, and a
/// table without rules (most databases) is known empty from its size, with no
/// page read.
#[pg_extern(stable, schema = "queue")]
pub(crate) fn rules_exist() -> bool {
    unsafe {
        let schema = pg_sys::get_namespace_oid(c"queue".as_ptr(), false);
        let table = pg_sys::get_relname_relid(c"access_rules".as_ptr(), schema);
        if table == pg_sys::InvalidOid {
            // Not reachable while the extension exists. Say "confined": the
            // access check that follows reads the table and fails loudly.
            return true;
        }
        let rel = pg_sys::table_open(table, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let snapshot =
            if pg_sys::ActiveSnapshotSet() { pg_sys::GetActiveSnapshot() } else { pg_sys::GetTransactionSnapshot() };
        let scan = pg_sys::systable_beginscan(rel, pg_sys::InvalidOid, false, snapshot, 0, std::ptr::null_mut());
        let found = !pg_sys::systable_getnext(scan).is_null();
        pg_sys::systable_endscan(scan);
        // Like a query, keep the lock to the end of the transaction.
        pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        found
    }
}

/// SQL: return an access pattern unchanged, or raise 22023: a queue name,
/// or the start of one followed by `*` (a lone `*` is every queue).
#[pg_extern(immutable, parallel_safe, schema = "queue")]
fn check_access_pattern(pattern: Option<&str>) -> &str {
    let pattern = pattern.unwrap_or("");
    let name = pattern.strip_suffix('*').unwrap_or(pattern);
    let problem = if pattern.is_empty() {
        Some("the pattern is empty".to_string())
    } else if name.is_empty() {
        None
    } else {
        crate::validate::queue_name_problem(name)
    };
    if let Some(problem) = problem {
        crate::validate::raise_invalid(
            format!("invalid queue pattern \"{pattern}\": {problem}"),
            "A pattern is a queue name ('emails') or the start of names followed by * ('billing.*').",
            "check_access_pattern",
        );
    }
    pattern
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    #[pg_test]
    fn patterns_match_exact_names_and_prefixes() {
        assert!(pattern_matches("emails", "emails"));
        assert!(!pattern_matches("emails", "emails2"));
        assert!(pattern_matches("billing.*", "billing.invoices"));
        assert!(!pattern_matches("billing.*", "billing"));
        assert!(pattern_matches("*", "anything"));
    }

    #[pg_test]
    fn groups_live_in_their_producers_namespace() {
        let p = vec!["billing".to_string(), "team-a.*".to_string()];
        assert!(group_allowed(&p, "billing"));
        assert!(group_allowed(&p, "billing:customer-42"));
        assert!(group_allowed(&p, "team-a.x:y:z"));
        assert!(!group_allowed(&p, "customer-42"));
        assert!(!group_allowed(&p, "billingx:1"));
        assert!(!group_allowed(&p, "other:billing"));
        assert!(!group_allowed(&[], "billing"));
    }

    #[pg_test(error = "invalid queue pattern \"bad name*\": queue name \"bad name\" contains the character ' '")]
    fn bad_patterns_are_refused() {
        Spi::run("SELECT queue.check_access_pattern('bad name*')").unwrap();
    }
}
