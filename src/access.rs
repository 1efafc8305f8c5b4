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

/// SQL: the session's own role, where it confines the caller too: when
/// `role` is the caller (the role in effect, [`caller`]) and the session
/// logged in as another role that is not a superuser. NULL otherwise.
///
/// A login confined by a rule on its team's role may `SET ROLE` to any role
/// it is a member of, the extension's `queue_worker`, `queue_producer` and
/// `queue_admin` included, and no rule binds those: judged by the role in
/// effect alone, one `SET ROLE` would lift every confinement. The session's
/// role stays what it logged in as, so its rules hold whatever role it
/// takes. A superuser's session is bound by no rule of its own: one that
/// takes a confined role (a test, a pooler that logs in as a superuser) is
/// confined as that role.
#[pg_extern(stable, parallel_safe, schema = "queue")]
fn session_role_for(role: pg_sys::Oid) -> Option<pg_sys::Oid> {
    unsafe {
        let session = pg_sys::GetSessionUserId();
        (role == pg_sys::GetOuterUserId() && session != role && !pg_sys::superuser_arg(session)).then_some(session)
    }
}

/// The names both patterns match, as one pattern; None when no name matches
/// both. Two prefixes meet in the longer one, a name meets a prefix it
/// starts with.
fn pattern_meet<'a>(p: &'a str, q: &'a str) -> Option<&'a str> {
    match (p.strip_suffix('*'), q.strip_suffix('*')) {
        (Some(a), Some(b)) if a.starts_with(b) => Some(p),
        (Some(a), Some(b)) if b.starts_with(a) => Some(q),
        (Some(_), Some(_)) => None,
        (Some(a), None) => q.starts_with(a).then_some(q),
        (None, Some(b)) => p.starts_with(b).then_some(p),
        (None, None) => (p == q).then_some(p),
    }
}

/// SQL: the queues two sets of patterns both allow, as patterns. NULL is
/// "not confined" (everything), so it gives the other set back.
#[pg_extern(immutable, parallel_safe, schema = "queue")]
fn intersect_patterns(a: Option<Vec<Option<String>>>, b: Option<Vec<Option<String>>>) -> Option<Vec<String>> {
    let (a, b) = match (a, b) {
        (None, None) => return None,
        (Some(x), None) | (None, Some(x)) => return Some(x.into_iter().flatten().collect()),
        (Some(a), Some(b)) => (a, b),
    };
    let mut out: Vec<String> = Vec::new();
    for p in a.iter().flatten() {
        for q in b.iter().flatten() {
            if let Some(m) = pattern_meet(p, q) {
                if !out.iter().any(|o| o == m) {
                    out.push(m.to_owned());
                }
            }
        }
    }
    Some(out)
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
    fn pattern_sets_intersect_to_what_both_allow() {
        let set = |v: &[&str]| Some(v.iter().map(|p| Some(p.to_string())).collect::<Vec<_>>());
        let meet = |a, b| {
            intersect_patterns(a, b).map(|mut v| {
                v.sort();
                v
            })
        };
        assert_eq!(meet(None, None), None);
        assert_eq!(meet(set(&["a.*"]), None), Some(vec!["a.*".to_string()]));
        assert_eq!(meet(set(&["a.*", "b"]), set(&["a.x.*", "b", "c"])), Some(vec!["a.x.*".into(), "b".into()]));
        assert_eq!(meet(set(&["*"]), set(&["billing.*"])), Some(vec!["billing.*".to_string()]));
        assert_eq!(
            meet(set(&["billing.*"]), set(&["billing.invoices", "payroll.x"])),
            Some(vec!["billing.invoices".into()])
        );
        assert_eq!(meet(set(&["billing.*"]), set(&["payroll.*"])), Some(vec![]));
        assert_eq!(meet(set(&[]), set(&["*"])), Some(vec![]));
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
