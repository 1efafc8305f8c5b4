//! Retry delays: exponential backoff with jitter, or a custom schedule.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::{PgLogLevel, PgSqlErrorCode};

const USECS_PER_DAY: i128 = 86_400_000_000;

/// The delay before retry number `attempt` (the attempt that just failed,
/// counted from 1).
///
/// * With a custom schedule, entry `attempt - 1`, the last entry repeating.
/// * Otherwise `base * 2^(attempt - 1)`, capped at `max`, then shortened by a
///   random jitter of up to 10% (`jitter` in 0.0..=1.0 picks how much), so the
///   cap is never exceeded and retries of jobs that failed together spread out.
pub fn delay_micros(attempt: i32, base: i128, max: i128, schedule: &[i128], jitter: f64) -> i128 {
    if let Some(last) = schedule.last() {
        let idx = (attempt.max(1) as usize - 1).min(schedule.len() - 1);
        return schedule.get(idx).copied().unwrap_or(*last);
    }
    let exponent = (attempt.max(1) - 1).min(62) as u32;
    let raw = base.saturating_mul(1i128 << exponent);
    let capped = raw.min(max).max(0);
    let shave = (capped as f64 * 0.1 * jitter.clamp(0.0, 1.0)) as i128;
    capped - shave
}

/// Convert microseconds back into an interval, split into days and time so
/// that long delays do not overflow the 64-bit time field.
fn interval_of(micros: i128) -> Interval {
    let days = (micros / USECS_PER_DAY).clamp(0, i32::MAX as i128) as i32;
    let rest = (micros - days as i128 * USECS_PER_DAY) as i64;
    Interval::new(0, days, rest).unwrap_or_else(|_| Interval::from_days(days))
}

/// SQL: the delay before the next try of a job whose attempt `attempt` just
/// failed. Raises 22023 on a schedule with NULL or negative entries.
#[pg_extern(volatile, parallel_safe, schema = "queue")]
fn retry_delay(
    attempt: i32,
    backoff_base: Interval,
    backoff_max: Interval,
    retry_delays: default!(Option<Vec<Option<Interval>>>, "NULL"),
) -> Interval {
    let mut schedule = Vec::new();
    for entry in retry_delays.unwrap_or_default() {
        match entry {
            // as_micros counts a month as 30 days, like Postgres' interval comparison.
            Some(d) if d.as_micros() >= 0 => schedule.push(d.as_micros()),
            _ => {
                ErrorReport::new(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    "retry_delays must not contain NULL or negative intervals",
                    "retry_delay",
                )
                .set_hint("Pass a schedule such as '{1 minute, 5 minutes, 30 minutes}'.")
                .report(PgLogLevel::ERROR);
            }
        }
    }
    let jitter: f64 = unsafe { pg_sys::pg_prng_double(&raw mut pg_sys::pg_global_prng_state) };
    // Never beyond queue.max_delay, whatever a job stored before the limits
    // existed: the delay is added to now() by the caller.
    let max = crate::gucs::MAX_DELAY_S.get() as i128 * 1_000_000;
    interval_of(delay_micros(attempt, backoff_base.as_micros(), backoff_max.as_micros(), &schedule, jitter).min(max))
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    const S: i128 = 1_000_000;

    #[pg_test]
    fn exponential_doubles_then_caps() {
        let base = 10 * S;
        let max = 3600 * S;
        assert_eq!(delay_micros(1, base, max, &[], 0.0), 10 * S);
        assert_eq!(delay_micros(2, base, max, &[], 0.0), 20 * S);
        assert_eq!(delay_micros(3, base, max, &[], 0.0), 40 * S);
        assert_eq!(delay_micros(9, base, max, &[], 0.0), 2560 * S);
        assert_eq!(delay_micros(10, base, max, &[], 0.0), 3600 * S);
        assert_eq!(delay_micros(1_000_000, base, max, &[], 0.0), 3600 * S);
    }

    #[pg_test]
    fn jitter_shortens_by_at_most_ten_percent() {
        let d = delay_micros(1, 10 * S, 3600 * S, &[], 1.0);
        assert_eq!(d, 9 * S);
        let d = delay_micros(20, 10 * S, 3600 * S, &[], 0.5);
        assert_eq!(d, 3420 * S);
    }

    #[pg_test]
    fn custom_schedule_repeats_its_last_entry() {
        let sched = [60 * S, 300 * S, 1800 * S];
        assert_eq!(delay_micros(1, 0, 0, &sched, 1.0), 60 * S);
        assert_eq!(delay_micros(2, 0, 0, &sched, 1.0), 300 * S);
        assert_eq!(delay_micros(3, 0, 0, &sched, 1.0), 1800 * S);
        assert_eq!(delay_micros(7, 0, 0, &sched, 1.0), 1800 * S);
    }

    #[pg_test]
    fn huge_delays_do_not_overflow() {
        let d = interval_of(delay_micros(60, i64::MAX as i128, i128::MAX, &[], 0.0));
        assert!(d.days() > 0);
    }

    #[pg_test]
    fn sql_retry_delay_is_within_jitter() {
        let ok = Spi::get_one::<bool>(
            "SELECT d BETWEEN interval '36 seconds' AND interval '40 seconds'
               FROM (SELECT queue.retry_delay(3, '10 seconds', '1 hour') AS d) s",
        )
        .unwrap();
        assert_eq!(ok, Some(true));
        let fixed = Spi::get_one::<bool>(
            "SELECT queue.retry_delay(5, '1 s', '1 h', '{1 minute, 5 minutes}') = interval '5 minutes'",
        )
        .unwrap();
        assert_eq!(fixed, Some(true));
    }

    #[pg_test(error = "retry_delays must not contain NULL or negative intervals")]
    fn sql_retry_delay_rejects_negative() {
        Spi::run("SELECT queue.retry_delay(1, '1 s', '1 h', '{-1 minute}')").unwrap();
    }
}
