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

/// A queue argument that filters: NULL means every queue, anything else
/// must be a valid queue name (22023 otherwise).
#[pg_extern(immutable, parallel_safe, schema = "queue")]
fn check_queue_filter(name: Option<&str>) -> Option<&str> {
    name.map(|n| check_queue_name(Some(n)))
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

/// Return `value` when it is between 1 and `max`, or raise 22023 naming
/// the argument: the one check for batch sizes and row counts.
#[pg_extern(immutable, parallel_safe, schema = "queue")]
fn check_count(what: &str, value: Option<i32>, max: i32, hint: &str) -> i32 {
    match value {
        Some(v) if (1..=max).contains(&v) => v,
        other => raise_invalid(
            format!("{what} must be between 1 and {max}: {}", text_or_null(&other)),
            hint,
            "check_count",
        ),
    }
}

/// Postgres' text for an interval array, as `array_out` writes it: elements
/// quoted when they hold blanks or punctuation, NULL bare.
fn array_text(values: &[Option<Interval>]) -> String {
    let items: Vec<String> = values
        .iter()
        .map(|v| match v {
            None => "NULL".to_string(),
            Some(i) => {
                let t = i.to_string();
                if t.is_empty() || t.eq_ignore_ascii_case("null") || t.chars().any(|c| " ,{}\"\\".contains(c)) {
                    format!("\"{}\"", t.replace('\\', "\\\\").replace('"', "\\\""))
                } else {
                    t
                }
            }
        })
        .collect();
    format!("{{{}}}", items.join(","))
}

fn text_or_null<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "NULL".into())
}

/// Everything a push is checked for, in one call, before anything is
/// written: the queue name, the serial group, that a payload was given (the
/// caller says whether it is missing), and every option. Returns when the job
/// is due: `run_at`, or now() + `delay`, or now(). Each problem raises 22023
/// (22004 for a NULL where a value is needed) with the value named and a hint.
///
/// One call rather than one per argument: a single push is often a
/// transaction of its own, and plpgsql prepares each expression of a
/// function again in every transaction (four checks cost ~4 us a push).
#[pg_extern(stable, parallel_safe, schema = "queue")]
#[allow(clippy::too_many_arguments)]
fn check_push(
    queue: Option<&str>,
    serial_group: Option<&str>,
    payload_missing: Option<bool>,
    delay: Option<Interval>,
    run_at: Option<TimestampWithTimeZone>,
    max_attempts: Option<i32>,
    timeout: Option<Interval>,
    backoff_base: Option<Interval>,
    backoff_max: Option<Interval>,
    retry_delays: Option<Vec<Option<Interval>>>,
    dedupe_key: Option<&str>,
    priority: Option<i32>,
) -> TimestampWithTimeZone {
    const F: &str = "check_push";
    check_queue_name(queue);
    check_group_name(serial_group);
    if payload_missing != Some(false) {
        ErrorReport::new(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "payload must not be NULL", F)
            .set_hint("Pass a JSON value; '{}' for an empty payload.")
            .report(PgLogLevel::ERROR);
        unreachable!("an ERROR report does not return")
    }
    let negative = |i: &Interval| i.as_micros() < 0;
    if delay.is_some() && run_at.is_some() {
        raise_invalid(
            "delay and run_at cannot both be given".into(),
            "Pass either delay => interval '5 minutes' or run_at => a timestamptz.",
            F,
        );
    }
    if let Some(d) = delay.as_ref().filter(|d| negative(d)) {
        raise_invalid(format!("delay must not be negative: {d}"), "Pass a delay of zero or more, or NULL to run now.", F);
    }
    if priority.is_none() {
        raise_invalid(
            "priority must not be NULL".into(),
            "Pass an integer (lower runs first) or one of critical, high, normal, low.",
            F,
        );
    }
    if max_attempts.is_none_or(|m| m < 1) {
        raise_invalid(
            format!("max_attempts must be at least 1: {}", text_or_null(&max_attempts)),
            "max_attempts counts the first try: 1 means no retry.",
            F,
        );
    }
    if timeout.as_ref().is_none_or(|t| t.as_micros() <= 0) {
        raise_invalid(
            format!("timeout must be positive: {}", text_or_null(&timeout)),
            "The timeout is the lease a worker gets on a claimed job, e.g. interval '5 minutes'.",
            F,
        );
    }
    let base = match backoff_base {
        Some(b) if !negative(&b) => b,
        other => raise_invalid(
            format!("backoff_base must not be negative: {}", text_or_null(&other)),
            "The first retry waits backoff_base, each later one twice as long.",
            F,
        ),
    };
    if backoff_max.as_ref().is_none_or(|m| m.as_micros() < base.as_micros()) {
        raise_invalid(
            format!("backoff_max ({}) must be at least backoff_base ({base})", text_or_null(&backoff_max)),
            "backoff_max caps the exponential backoff.",
            F,
        );
    }
    if let Some(list) = retry_delays.as_ref() {
        if list.is_empty() || list.iter().any(|d| d.as_ref().is_none_or(negative)) {
            raise_invalid(
                format!("invalid retry_delays: {}", array_text(list)),
                "Pass a non-empty list of non-negative intervals such as '{1 minute, 5 minutes, 30 minutes}'; the last entry repeats.",
                F,
            );
        }
    }
    if dedupe_key == Some("") {
        raise_invalid("dedupe_key must not be empty".into(), "Pass NULL for no deduplication.", F);
    }
    let now = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
    let now = unsafe { TimestampWithTimeZone::from_datum(pg_sys::Datum::from(now), false) }
        .unwrap_or_else(|| raise_invalid("no transaction timestamp".into(), "", F));
    match (run_at, delay) {
        (Some(at), _) => at,
        (None, Some(d)) => now + d,
        (None, None) => now,
    }
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
    fn push_options_resolve_run_at() {
        let due_now = Spi::get_one::<bool>(
            "SELECT queue.check_push('q', NULL, false, NULL, NULL, 3, '5 min', '10 s', '1 h', NULL, NULL, 0) = now()",
        )
        .unwrap();
        assert_eq!(due_now, Some(true));
        let delayed = Spi::get_one::<bool>(
            "SELECT queue.check_push('q', NULL, false, '1 day', NULL, 3, '5 min', '10 s', '1 h', NULL, NULL, 0) = now() + interval '1 day'",
        )
        .unwrap();
        assert_eq!(delayed, Some(true));
    }

    #[pg_test(error = "invalid retry_delays: {00:01:00,NULL}")]
    fn push_options_name_the_bad_schedule() {
        Spi::run("SELECT queue.check_push('q', NULL, false, NULL, NULL, 3, '5 min', '10 s', '1 h', '{1 minute, NULL}', NULL, 0)")
            .unwrap();
    }

    #[pg_test]
    fn sql_check_passes_good_names() {
        let got = Spi::get_one::<String>("SELECT queue.check_queue_name('emails')").unwrap();
        assert_eq!(got.as_deref(), Some("emails"));
    }
}
