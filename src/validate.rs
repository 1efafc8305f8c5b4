//! Argument validation shared by every SQL entry point.
//!
//! Each check raises a Postgres error with a SQLSTATE, a message that names the
//! bad value and a hint, before any row is touched.

use pgrx::prelude::*;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// Longest queue name: the NOTIFY channel is `queue_<name>` and channel names
/// are identifiers (at most 63 bytes).
pub const MAX_QUEUE_NAME: usize = 57;

/// Longest serial group name. Groups are hashed for locking, so the limit is
/// only there to keep index entries small.
pub const MAX_GROUP_NAME: usize = 200;

/// Why a queue name is not acceptable, or `None` when it is.
pub fn queue_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("queue name is empty".into());
    }
    if name.len() > MAX_QUEUE_NAME {
        return Some(format!(
            "queue name \"{name}\" is {} characters long (at most {MAX_QUEUE_NAME})",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
    {
        return Some(format!("queue name \"{name}\" contains the character {bad:?}"));
    }
    None
}

/// Why a serial group name is not acceptable, or `None` when it is.
pub fn group_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("serial group name is empty".into());
    }
    if name.len() > MAX_GROUP_NAME {
        return Some(format!(
            "serial group name is {} characters long (at most {MAX_GROUP_NAME})",
            name.len()
        ));
    }
    None
}

/// Raise `invalid_parameter_value` (22023) with a message and a hint.
pub fn raise_invalid(message: String, hint: &str, funcname: &'static str) -> ! {
    ErrorReport::new(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, message, funcname)
        .set_hint(hint)
        .report(PgLogLevel::ERROR);
    unreachable!("an ERROR report does not return")
}

/// Return the queue name unchanged, or raise 22023 when it is not a valid one.
/// A NULL name is refused too (22004) so that callers never store one.
#[pg_extern(immutable, parallel_safe, schema = "queue")]
fn check_queue_name(name: Option<&str>) -> &str {
    let Some(name) = name else {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "queue name must not be NULL",
            "check_queue_name",
        )
        .set_hint("Pass a queue name such as 'emails'.")
        .report(PgLogLevel::ERROR);
        unreachable!("an ERROR report does not return")
    };
    if let Some(problem) = queue_name_problem(name) {
        raise_invalid(
            format!("invalid queue name: {problem}"),
            "Queue names are 1 to 57 characters of A-Z, a-z, 0-9, '_', '.', ':' and '-'.",
            "check_queue_name",
        );
    }
    name
}

/// Return the serial group unchanged (NULL stays NULL: no group), or raise
/// 22023 when it is empty or too long.
#[pg_extern(immutable, parallel_safe, schema = "queue")]
fn check_group_name(name: Option<&str>) -> Option<&str> {
    if let Some(problem) = name.and_then(group_name_problem) {
        raise_invalid(
            format!("invalid serial group: {problem}"),
            "Pass NULL for no group, or a non-empty name of at most 200 characters.",
            "check_group_name",
        );
    }
    name
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    #[pg_test]
    fn accepts_the_documented_alphabet() {
        assert_eq!(queue_name_problem("emails"), None);
        assert_eq!(queue_name_problem("a.b:c-d_E9"), None);
        assert_eq!(queue_name_problem(&"x".repeat(57)), None);
    }

    #[pg_test]
    fn rejects_bad_queue_names() {
        assert!(queue_name_problem("").is_some());
        assert!(queue_name_problem(&"x".repeat(58)).is_some());
        assert!(queue_name_problem("with space").is_some());
        assert!(queue_name_problem("semi;colon").is_some());
        assert!(queue_name_problem("ünïcode").is_some());
        assert!(queue_name_problem("quote'").is_some());
    }

    #[pg_test]
    fn group_names() {
        assert_eq!(group_name_problem("customer-42"), None);
        assert_eq!(group_name_problem("any text at all, even ; and '"), None);
        assert!(group_name_problem("").is_some());
        assert!(group_name_problem(&"g".repeat(201)).is_some());
    }

    #[pg_test(error = "invalid queue name: queue name \"bad name\" contains the character ' '")]
    fn sql_check_raises() {
        Spi::run("SELECT queue.check_queue_name('bad name')").unwrap();
    }

    #[pg_test]
    fn sql_check_passes_good_names() {
        let got = Spi::get_one::<String>("SELECT queue.check_queue_name('emails')").unwrap();
        assert_eq!(got.as_deref(), Some("emails"));
    }
}
