//! Argument validation shared by every SQL entry point.
//!
//! Each check raises a Postgres error with a SQLSTATE, a message that names the
//! bad value and a hint, before any row is touched.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// Longest queue name: the NOTIFY channel is `queue_<name>` and channel names
/// are identifiers (at most 63 bytes).
pub const MAX_QUEUE_NAME: usize = 57;

/// Longest key (dedupe key, serial group, worker and schedule name): the
/// `queue.max_key_length` setting. They are index keys; the limit keeps
/// every entry well inside a B-tree page.
pub fn max_key_length() -> usize {
    crate::gucs::MAX_KEY_LENGTH.get().max(1) as usize
}

/// Why a queue name is not acceptable, or `None` when it is.
pub fn queue_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("queue name is empty".into());
    }
    if name.len() > MAX_QUEUE_NAME {
        return Some(format!("queue name \"{name}\" is {} characters long (at most {MAX_QUEUE_NAME})", name.len()));
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))) {
        return Some(format!("queue name \"{name}\" contains the character {bad:?}"));
    }
    None
}

/// Why a serial group name is not acceptable, or `None` when it is.
pub fn group_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("serial group name is empty".into());
    }
    if name.len() > max_key_length() {
        return Some(format!(
            "serial group name is {} bytes long (at most {}, queue.max_key_length)",
            name.len(),
            max_key_length()
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
#[pg_extern(stable, parallel_safe, schema = "queue")]
fn check_group_name(name: Option<&str>) -> Option<&str> {
    if let Some(problem) = name.and_then(group_name_problem) {
        raise_invalid(
            format!("invalid serial group: {problem}"),
            "Pass NULL for no group, or a non-empty name within queue.max_key_length bytes.",
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
        other => {
            raise_invalid(format!("{what} must be between 1 and {max}: {}", text_or_null(&other)), hint, "check_count")
        }
    }
}

/// SQL: the checks of a claim in one call: the worker name (NULL allowed,
/// else within queue.max_key_length) and the batch size (1 to 10,000),
/// which it returns.
#[pg_extern(stable, parallel_safe, schema = "queue")]
fn check_claim(worker: Option<&str>, batch: Option<i32>) -> i32 {
    check_key("worker", worker);
    check_count("batch", batch, 10_000, "batch is the most jobs one call may claim.")
}

/// Postgres' text for an interval array, as `array_out` writes it: elements
/// quoted when they hold blanks or punctuation, NULL bare.
fn array_text(values: &[Option<Interval>]) -> String {
    const SHOWN: usize = 5;
    let items: Vec<String> = values
        .iter()
        .take(SHOWN)
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
    if values.len() > SHOWN {
        return format!("{{{},...}} ({} entries)", items.join(","), values.len());
    }
    format!("{{{}}}", items.join(","))
}

fn text_or_null<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "NULL".into())
}

/// The microseconds of one interval component, counted as Postgres
/// compares intervals (a month is 30 days).
fn component_micros(i: &Interval) -> [i128; 3] {
    [i.months() as i128 * 30 * 86_400_000_000, i.days() as i128 * 86_400_000_000, i.micros() as i128]
}

/// Which limit an interval argument is held to.
#[derive(Clone, Copy, PartialEq)]
pub enum Span {
    /// A delay: zero up to `queue.max_delay`.
    Delay,
    /// A lease: more than zero up to `queue.max_lease`.
    Lease,
    /// A look-back window (metrics, clean-up, stale workers): zero up to a
    /// hundred years.
    Window,
}

impl Span {
    fn max_micros(self) -> i128 {
        match self {
            Span::Delay => crate::gucs::MAX_DELAY_S.get() as i128 * 1_000_000,
            Span::Lease => crate::gucs::MAX_LEASE_S.get() as i128 * 1_000_000,
            Span::Window => 100 * 365 * 86_400_000_000,
        }
    }

    fn hint(self) -> &'static str {
        match self {
            Span::Delay => "Delays, backoff and retry delays run from zero to queue.max_delay (default 10 years); only superusers may raise it.",
            Span::Lease => "Leases run from more than zero to queue.max_lease (default 1 day); a longer job extends its lease with queue_touch.",
            Span::Window => "Pass an interval from zero to 100 years.",
        }
    }
}

/// A limit in seconds as a person reads it: whole days as days.
pub fn seconds_text(seconds: i128) -> String {
    match (seconds % 86_400, seconds / 86_400) {
        (0, 1) => "1 day".to_string(),
        (0, days) => format!("{days} days"),
        _ => format!("{seconds} seconds"),
    }
}

/// Why an interval is outside its range, or `None`. Every component is
/// bounded on its own, not only the sum: '100000 years -36500000 days' sums
/// to little, but adding it to a timestamp overflows on the way.
pub fn span_problem(what: &str, value: &Interval, span: Span) -> Option<String> {
    let max = span.max_micros();
    let parts = component_micros(value);
    let total = value.as_micros();
    let too_small = if span == Span::Lease { total <= 0 } else { total < 0 };
    if too_small || parts.iter().any(|p| *p < 0) {
        let at_least = if span == Span::Lease { "positive" } else { "zero or more" };
        return Some(format!("{what} must be {at_least}: {value}"));
    }
    if total > max || parts.iter().any(|p| *p > max) {
        return Some(format!("{what} is longer than allowed ({} at most): {value}", seconds_text(max / 1_000_000)));
    }
    None
}

/// Raise 22023 when `value` is outside its range (see [`Span`]).
fn check_span_of(what: &str, value: &Interval, span: Span, funcname: &'static str) {
    if let Some(problem) = span_problem(what, value, span) {
        raise_invalid(problem, span.hint(), funcname);
    }
}

/// SQL: return `value` unchanged (NULL stays NULL: the caller's default
/// applies), or raise 22023 naming `what` when it is outside its range:
/// `span` is 'delay', 'lease' or 'window' (see [`Span`]).
#[pg_extern(stable, parallel_safe, schema = "queue")]
fn check_span(what: &str, value: Option<Interval>, span: &str) -> Option<Interval> {
    let span = match span {
        "delay" => Span::Delay,
        "lease" => Span::Lease,
        _ => Span::Window,
    };
    if let Some(v) = value.as_ref() {
        check_span_of(what, v, span, "check_span");
    }
    value
}

/// Which size limit a value is held to.
fn size_limit_kb(kind: &str) -> (i32, &'static str) {
    use crate::gucs::*;
    match kind {
        "payload" => (MAX_PAYLOAD_KB.get(), "queue.max_payload_size"),
        "result" => (MAX_RESULT_KB.get(), "queue.max_result_size"),
        "error" => (MAX_ERROR_KB.get(), "queue.max_error_size"),
        _ => (MAX_INFO_KB.get(), "queue.max_info_size"),
    }
}

/// Why a value of `bytes` bytes is too large for `kind` ('payload', 'result',
/// 'error', 'info'), or `None`.
pub fn size_problem(what: &str, bytes: i64, kind: &str) -> Option<(String, String)> {
    let (kb, guc) = size_limit_kb(kind);
    (bytes > kb as i64 * 1024).then(|| {
        (
            format!("{what} is {bytes} bytes, more than {guc} ({kb} kB)"),
            format!(
                "Keep large data elsewhere and pass a reference (JSON counts as the larger of its stored and its printed size); a superuser can raise {guc}."
            ),
        )
    })
}

/// The most characters `numeric_out` prints for a numeric, read from its
/// header (the on-disk format of numeric.c, unchanged since PostgreSQL 9.1)
/// without printing it: sign, (weight + 1) groups of four digits before
/// the point, and dscale digits after it. `1e131071` is stored in a few
/// bytes and prints as 131,072 digits.
unsafe fn numeric_printed_len(n: pg_sys::Numeric) -> i64 {
    unsafe {
        let p = n as *const u8;
        // A 1-byte varlena header has its low bit set (little-endian) or its
        // high bit (big-endian); numeric data follows the header.
        let one_byte = if cfg!(target_endian = "little") { *p & 0x01 == 0x01 } else { *p & 0x80 == 0x80 };
        let data = p.add(if one_byte { 1 } else { 4 });
        let header = std::ptr::read_unaligned(data.cast::<u16>());
        let (weight, dscale) = match header & 0xC000 {
            0xC000 => return 9, // NaN, Infinity, -Infinity
            0x8000 => {
                let mut w = (header & 0x003F) as i32;
                if header & 0x0040 != 0 {
                    w |= !0x3F;
                }
                (w, ((header & 0x1F80) >> 7) as i64)
            }
            _ => (std::ptr::read_unaligned(data.add(2).cast::<i16>()) as i32, (header & 0x3FFF) as i64),
        };
        1 + (weight.max(-1) as i64 + 1).max(1) * 4 + if dscale > 0 { dscale + 1 } else { 0 }
    }
}

/// How many bytes a JSON string prints as: its quotes, and each byte that
/// needs an escape as its escape (`\"`, `\\`, `\n` and the like, `\u0001`
/// for the other control characters: six bytes for one).
unsafe fn string_printed_len(s: &pg_sys::JsonbValue__bindgen_ty_1__bindgen_ty_1) -> i64 {
    let len = s.len.max(0) as usize;
    let bytes = if len == 0 || s.val.is_null() {
        &[][..]
    } else {
        unsafe { std::slice::from_raw_parts(s.val.cast::<u8>(), len) }
    };
    let extra: i64 = bytes
        .iter()
        .map(|&b| match b {
            b'"' | b'\\' | b'\n' | b'\t' | b'\r' | 0x08 | 0x0c => 1,
            0..=0x1f => 5,
            _ => 0,
        })
        .sum();
    len as i64 + 2 + extra
}

/// About how many bytes a jsonb value prints as (its text form, as every
/// client receives it), without printing it: keys and strings with their
/// quotes, escapes and separators, numbers by [`numeric_printed_len`].
unsafe fn jsonb_printed_size(jb: *mut pg_sys::Jsonb) -> i64 {
    use pg_sys::JsonbIteratorToken::*;
    unsafe {
        let mut it = pg_sys::JsonbIteratorInit(&raw mut (*jb).root);
        let mut v: pg_sys::JsonbValue = std::mem::zeroed();
        let mut total: i64 = 0;
        loop {
            match pg_sys::JsonbIteratorNext(&mut it, &mut v, false) {
                WJB_DONE => break,
                WJB_KEY => total += string_printed_len(&v.val.string) + 2,
                WJB_VALUE | WJB_ELEM => {
                    total += 2 + match v.type_ {
                        pg_sys::jbvType::jbvString => string_printed_len(&v.val.string),
                        pg_sys::jbvType::jbvNumeric => numeric_printed_len(v.val.numeric),
                        pg_sys::jbvType::jbvBool => 5,
                        _ => 4,
                    }
                }
                WJB_BEGIN_ARRAY | WJB_BEGIN_OBJECT => total += 2,
                _ => {}
            }
        }
        total
    }
}

/// The size a jsonb payload, result or info is held to its limit by: its
/// stored size (pg_column_size) or its printed size, whichever is larger. A
/// limit on the stored size alone lets a few kilobytes of numbers like
/// `1e131071` print as gigabytes at every claim: more than a client can
/// hold (node-postgres crashes, psycopg and serde_json refuse), more than a
/// text value may be (1 GB), so that no worker could claim the queue's jobs
/// any more.
pub unsafe fn json_size_of(datum: pg_sys::Datum) -> i32 {
    unsafe {
        let stored = pg_sys::toast_datum_size(datum) as i64;
        let jb = pg_sys::pg_detoast_datum(datum.cast_mut_ptr::<pg_sys::varlena>()).cast::<pg_sys::Jsonb>();
        stored.max(jsonb_printed_size(jb)).min(i32::MAX as i64) as i32
    }
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_queue_json_size() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// SQL `queue.json_size(jsonb) RETURNS int` (STRICT, declared in
/// sql/core.sql): [`json_size_of`], for the size checks of the SQL
/// functions. A C function of its own, as `queue_push` is, so that the
/// value is read where it lies, never converted.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn queue_json_size(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe { pg_sys::Datum::from(json_size_of((*(*fcinfo).args.as_ptr()).value)) }
}

/// SQL: raise 22023 when a value of `bytes` bytes (pg_column_size of it;
/// NULL passes) is larger than the limit of `kind`: 'payload', 'result',
/// 'error' or 'info' (queue.max_payload_size, ...).
#[pg_extern(stable, parallel_safe, schema = "queue")]
fn check_size(what: &str, bytes: Option<i32>, kind: &str) {
    if let Some((message, hint)) = bytes.and_then(|b| size_problem(what, b as i64, kind)) {
        raise_invalid(message, &hint, "check_size");
    }
}

/// SQL: return a key (worker name, schedule name, dedupe key) unchanged, or
/// raise 22023 when it is empty or longer than queue.max_key_length bytes.
/// NULL stays NULL (the caller decides what NULL means).
#[pg_extern(stable, parallel_safe, schema = "queue")]
fn check_key<'a>(what: &str, value: Option<&'a str>) -> Option<&'a str> {
    if let Some(v) = value {
        if v.is_empty() || v.len() > max_key_length() {
            raise_invalid(
                format!("{what} must be 1 to {} bytes long: {} bytes given", max_key_length(), v.len()),
                "queue.max_key_length bounds names and keys; they are index keys.",
                "check_key",
            );
        }
    }
    value
}

/// The start of the current transaction, as now() returns it.
fn transaction_start() -> TimestampWithTimeZone {
    let now = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
    unsafe { TimestampWithTimeZone::from_datum(pg_sys::Datum::from(now), false) }
        .unwrap_or_else(|| raise_invalid("no transaction timestamp".into(), "", "check_push_args"))
}

/// Everything a push is checked for, in one call, before anything is
/// written: the queue name, the serial group, the payload's size (NULL: no
/// payload given), and every option, each within its documented range.
/// Returns when the job is due: `run_at`, or now() + `delay`, or now().
/// Each problem raises 22023 (22004 for a NULL where a value is needed) with
/// the value named and a hint.
///
/// One call rather than one per argument: a single push is often a
/// transaction of its own, and plpgsql prepares each expression of a
/// function again in every transaction, so each separate check costs a push.
#[pg_extern(stable, parallel_safe, schema = "queue")]
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_push_args(
    queue: Option<&str>,
    serial_group: Option<&str>,
    payload_size: Option<i32>,
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
    const F: &str = "check_push_args";
    check_queue_name(queue);
    check_group_name(serial_group);
    let Some(size) = payload_size else {
        ErrorReport::new(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "payload must not be NULL", F)
            .set_hint("Pass a JSON value; '{}' for an empty payload.")
            .report(PgLogLevel::ERROR);
        unreachable!("an ERROR report does not return")
    };
    if let Some((message, hint)) = size_problem("payload", size as i64, "payload") {
        raise_invalid(message, &hint, F);
    }
    if delay.is_some() && run_at.is_some() {
        raise_invalid(
            "delay and run_at cannot both be given".into(),
            "Pass either delay => interval '5 minutes' or run_at => a timestamptz.",
            F,
        );
    }
    if let Some(d) = delay.as_ref() {
        check_span_of("delay", d, Span::Delay, F);
    }
    if priority.is_none() {
        raise_invalid(
            "priority must not be NULL".into(),
            "Pass an integer (lower runs first) or one of critical, high, normal, low.",
            F,
        );
    }
    if max_attempts.is_none_or(|m| !(1..=MAX_ATTEMPTS).contains(&m)) {
        raise_invalid(
            format!("max_attempts must be between 1 and {MAX_ATTEMPTS}: {}", text_or_null(&max_attempts)),
            "max_attempts counts the first try: 1 means no retry.",
            F,
        );
    }
    match timeout.as_ref() {
        Some(t) => check_span_of("timeout", t, Span::Lease, F),
        None => raise_invalid(
            "timeout must not be NULL".into(),
            "The timeout is the lease a worker gets on a claimed job, e.g. interval '5 minutes'.",
            F,
        ),
    }
    let base = match backoff_base {
        Some(b) => {
            check_span_of("backoff_base", &b, Span::Delay, F);
            b
        }
        None => raise_invalid(
            "backoff_base must not be NULL".into(),
            "The first retry waits backoff_base, each later one twice as long.",
            F,
        ),
    };
    match backoff_max.as_ref() {
        Some(m) if m.as_micros() >= base.as_micros() => check_span_of("backoff_max", m, Span::Delay, F),
        other => raise_invalid(
            format!("backoff_max ({}) must be at least backoff_base ({base})", text_or_null(&other.copied())),
            "backoff_max caps the exponential backoff.",
            F,
        ),
    }
    if let Some(list) = retry_delays.as_ref() {
        if list.is_empty() || list.len() > MAX_RETRY_DELAYS || list.iter().any(|d| d.is_none()) {
            raise_invalid(
                format!("invalid retry_delays: {}", array_text(list)),
                "Pass a list of 1 to 100 intervals such as '{1 minute, 5 minutes, 30 minutes}'; the last entry repeats.",
                F,
            );
        }
        for d in list.iter().flatten() {
            check_span_of("a retry_delays entry", d, Span::Delay, F);
        }
    }
    if let Some(key) = dedupe_key {
        if key.is_empty() {
            raise_invalid("dedupe_key must not be empty".into(), "Pass NULL for no deduplication.", F);
        }
        check_key("dedupe_key", Some(key));
    }
    let now = transaction_start();
    match (run_at, delay) {
        (Some(at), _) => {
            check_run_at("run_at", at, now, F);
            at
        }
        (None, Some(d)) => now + d,
        (None, None) => now,
    }
}

/// Most attempts a job may have.
pub const MAX_ATTEMPTS: i32 = 10_000;

/// Most entries of a retry_delays schedule.
pub const MAX_RETRY_DELAYS: usize = 100;

/// A run_at must be a finite time no further than queue.max_delay from now,
/// in either direction: an infinite or far-away time would make every later
/// wait-time computation fail.
fn check_run_at(what: &str, at: TimestampWithTimeZone, now: TimestampWithTimeZone, funcname: &'static str) {
    let max = Span::Delay.max_micros();
    let raw_at: i64 = at.into_inner();
    let raw_now: i64 = now.into_inner();
    let finite = raw_at != i64::MIN && raw_at != i64::MAX;
    if !finite || (raw_at as i128 - raw_now as i128).abs() > max {
        raise_invalid(
            format!("{what} must be a finite time within {} of now: {at}", seconds_text(max / 1_000_000)),
            "Pass a time near now, or a delay; queue.max_delay bounds both.",
            funcname,
        );
    }
}

/// Return a timestamp unchanged, or raise 22023 naming `what` when it is
/// infinite or further than queue.max_delay from now (see `check_run_at`).
/// NULL stays NULL.
pub fn check_time(what: &str, value: Option<TimestampWithTimeZone>) -> Option<TimestampWithTimeZone> {
    if let Some(v) = value {
        check_run_at(what, v, transaction_start(), "check_time");
    }
    value
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
            "SELECT queue.check_push_args('q', NULL, 2, NULL, NULL, 3, '5 min', '10 s', '1 h', NULL, NULL, 0) = now()",
        )
        .unwrap();
        assert_eq!(due_now, Some(true));
        let delayed = Spi::get_one::<bool>(
            "SELECT queue.check_push_args('q', NULL, 2, '1 day', NULL, 3, '5 min', '10 s', '1 h', NULL, NULL, 0) = now() + interval '1 day'",
        )
        .unwrap();
        assert_eq!(delayed, Some(true));
    }

    #[pg_test(error = "invalid retry_delays: {00:01:00,NULL}")]
    fn push_options_name_the_bad_schedule() {
        Spi::run("SELECT queue.check_push_args('q', NULL, 2, NULL, NULL, 3, '5 min', '10 s', '1 h', '{1 minute, NULL}', NULL, 0)")
            .unwrap();
    }

    #[pg_test]
    fn sql_check_passes_good_names() {
        let got = Spi::get_one::<String>("SELECT queue.check_queue_name('emails')").unwrap();
        assert_eq!(got.as_deref(), Some("emails"));
    }
}
