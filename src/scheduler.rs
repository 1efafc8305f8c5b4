//! SQL face of the schedule parser (`cron.rs`): validation, next run, and
//! upcoming runs for the timeline. The scheduler itself is SQL
//! (`sql/scheduler.sql`) run by a background service (`services.rs`).

use crate::cron::{self, Schedule, FORMS_HINT};
use crate::gucs;
use crate::validate::raise_invalid;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use pgrx::prelude::*;

/// Microseconds between the Unix epoch and the Postgres epoch (2000-01-01).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

fn to_chrono(t: TimestampWithTimeZone) -> DateTime<Utc> {
    let micros: pg_sys::TimestampTz = t.into();
    DateTime::from_timestamp_micros(micros + PG_EPOCH_OFFSET_MICROS).unwrap_or_default()
}

fn to_pg(t: DateTime<Utc>) -> Option<TimestampWithTimeZone> {
    TimestampWithTimeZone::try_from(t.timestamp_micros() - PG_EPOCH_OFFSET_MICROS).ok()
}

/// Parse or raise 22023 with the valid forms as hint.
fn parse_or_raise(text: &str) -> Schedule {
    cron::parse(text).unwrap_or_else(|problem| {
        raise_invalid(format!("invalid schedule \"{text}\": {problem}"), FORMS_HINT, "parse_schedule")
    })
}

fn timezone() -> Tz {
    let name = gucs::timezone_name();
    name.parse().unwrap_or_else(|_| {
        raise_invalid(
            format!("invalid queue.timezone \"{name}\""),
            "Set queue.timezone to an IANA time zone name such as 'UTC' or 'Europe/Prague'.",
            "timezone",
        )
    })
}

/// The instant of an `at` schedule, read by Postgres' own timestamptz parser.
fn once_at(text: &str, at: &str) -> TimestampWithTimeZone {
    let Ok(cstr) = std::ffi::CString::new(at) else {
        raise_invalid(format!("invalid schedule \"{text}\": bad timestamp"), FORMS_HINT, "once_at");
    };
    PgTryBuilder::new(|| unsafe {
        pgrx::direct_function_call::<TimestampWithTimeZone>(
            pg_sys::timestamptz_in,
            &[cstr.as_c_str().into_datum(), pg_sys::InvalidOid.into_datum(), (-1i32).into_datum()],
        )
    })
    .catch_others(|_| None)
    .execute()
    .unwrap_or_else(|| {
        raise_invalid(format!("invalid schedule \"{text}\": \"{at}\" is not a timestamp"), FORMS_HINT, "once_at")
    })
}

/// SQL `queue.schedule_kind(schedule)`: cron, interval, once or manual;
/// raises 22023 with the valid forms for anything else, and for a cron
/// expression that never fires (such as February 31).
#[pg_extern(stable, strict, parallel_safe, schema = "queue")]
fn schedule_kind(schedule: &str) -> &'static str {
    let parsed = parse_or_raise(schedule);
    match &parsed {
        Schedule::Cron(c) => {
            if c.next_after(Utc::now(), timezone()).is_none() {
                raise_invalid(format!("invalid schedule \"{schedule}\": it never fires"), FORMS_HINT, "schedule_kind");
            }
        }
        Schedule::Once { at } => {
            // Finite and within queue.max_delay of now, like a push's run_at:
            // an infinite time would break every reader of next_run_at.
            crate::validate::check_time("the time of an at schedule", Some(once_at(schedule, at)));
        }
        Schedule::Every { seconds } => {
            let max = gucs::MAX_DELAY_S.get() as i64;
            if *seconds > max {
                raise_invalid(
                    format!(
                        "invalid schedule \"{schedule}\": the interval is longer than queue.max_delay ({})",
                        crate::validate::seconds_text(max as i128)
                    ),
                    "An interval schedule repeats at most every queue.max_delay; use a cron expression for rarer runs.",
                    "schedule_kind",
                );
            }
        }
        Schedule::Manual => {}
    }
    parsed.kind()
}

/// SQL `queue.schedule_next(schedule, after)`: the first run strictly after
/// `after` (for `at`, its instant whatever `after` is; NULL for manual).
#[pg_extern(stable, strict, parallel_safe, schema = "queue")]
fn schedule_next(schedule: &str, after: TimestampWithTimeZone) -> Option<TimestampWithTimeZone> {
    match parse_or_raise(schedule) {
        Schedule::Cron(c) => c.next_after(to_chrono(after), timezone()).and_then(to_pg),
        Schedule::Every { seconds } => to_pg(to_chrono(after) + chrono::Duration::seconds(seconds)),
        Schedule::Once { at } => Some(once_at(schedule, &at)),
        Schedule::Manual => None,
    }
}

/// The next run of a schedule that just ran its slot `slot` at `now`:
/// strictly after `now`, so that runs missed during downtime collapse into
/// the one that just happened. Intervals keep their phase (slot + k * N).
/// NULL for `at` (it ran) and `manual`.
#[pg_extern(stable, strict, parallel_safe, schema = "queue")]
fn schedule_after_run(
    schedule: &str,
    slot: TimestampWithTimeZone,
    now: TimestampWithTimeZone,
) -> Option<TimestampWithTimeZone> {
    following(&parse_or_raise(schedule), to_chrono(slot), to_chrono(now), timezone()).and_then(to_pg)
}

fn following(parsed: &Schedule, slot: DateTime<Utc>, now: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
    match parsed {
        Schedule::Cron(c) => c.next_after(now.max(slot), tz),
        Schedule::Every { seconds } => {
            let step = seconds * 1_000_000;
            let behind = (now - slot).num_microseconds().unwrap_or(i64::MAX).max(0);
            let k = behind / step + 1;
            Some(slot + chrono::Duration::microseconds(k.saturating_mul(step)))
        }
        Schedule::Once { .. } | Schedule::Manual => None,
    }
}

/// SQL `queue.schedule_upcoming(schedule, first, now, until, max_rows)`:
/// the stored next run `first`, then the runs after it (or after `now`, if
/// `first` is overdue) up to `until`, at most `max_rows`.
#[pg_extern(stable, strict, parallel_safe, schema = "queue")]
fn schedule_upcoming(
    schedule: &str,
    first: TimestampWithTimeZone,
    now: TimestampWithTimeZone,
    until: TimestampWithTimeZone,
    max_rows: i32,
) -> SetOfIterator<'static, TimestampWithTimeZone> {
    let parsed = parse_or_raise(schedule);
    let tz = timezone();
    let (now, until) = (to_chrono(now), to_chrono(until));
    let mut runs = Vec::new();
    let mut next = Some(to_chrono(first));
    while let Some(t) = next {
        if t > until || runs.len() >= max_rows.max(0) as usize {
            break;
        }
        runs.push(t);
        next = following(&parsed, t, now.max(t), tz);
    }
    SetOfIterator::new(runs.into_iter().filter_map(to_pg))
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::cron::{next_utc, parse, Schedule};
    use pgrx::prelude::*;

    fn next(expr: &str, after: &str) -> String {
        next_utc(expr, after, "UTC").unwrap()
    }

    #[pg_test]
    fn cron_steps_lists_ranges_and_names() {
        assert_eq!(next("*/5 * * * *", "2026-01-01T10:02:00Z"), "2026-01-01T10:05:00+00:00");
        assert_eq!(next("*/5 * * * *", "2026-01-01T10:05:00Z"), "2026-01-01T10:10:00+00:00");
        assert_eq!(next("0 9 * * mon-fri", "2026-11-20T09:00:00Z"), "2026-11-23T09:00:00+00:00"); // Fri -> Mon
        assert_eq!(next("15,45 8-10/2 * * *", "2026-01-01T08:50:00Z"), "2026-01-01T10:15:00+00:00");
        assert_eq!(next("0 0 1 jan,jul *", "2026-02-01T00:00:00Z"), "2026-07-01T00:00:00+00:00");
        assert_eq!(next("0 12 * * 7", "2026-11-23T00:00:00Z"), "2026-11-29T12:00:00+00:00");
        // 7 = Sunday
    }

    #[pg_test]
    fn month_ends_and_leap_years() {
        assert_eq!(next("0 0 31 * *", "2026-04-01T00:00:00Z"), "2026-05-31T00:00:00+00:00"); // April has 30
        assert_eq!(next("0 0 29 2 *", "2026-03-01T00:00:00Z"), "2028-02-29T00:00:00+00:00");
        assert_eq!(next("@yearly", "2026-06-01T00:00:00Z"), "2027-01-01T00:00:00+00:00");
        assert_eq!(next("@monthly", "2026-12-15T00:00:00Z"), "2027-01-01T00:00:00+00:00");
        assert!(next_utc("0 0 31 2 *", "2026-01-01T00:00:00Z", "UTC").is_none(), "Feb 31 never fires");
    }

    #[pg_test]
    fn day_of_month_or_day_of_week() {
        // Both restricted: either matches (the 13th, or any Friday).
        assert_eq!(next("0 0 13 * fri", "2026-11-01T00:00:00Z"), "2026-11-06T00:00:00+00:00");
        assert_eq!(next("0 0 13 * fri", "2026-11-07T00:00:00Z"), "2026-11-13T00:00:00+00:00");
        // A starred field does not widen: */2 days AND Mondays.
        assert_eq!(next("0 0 */2 * mon", "2026-11-01T00:00:00Z"), "2026-11-09T00:00:00+00:00");
    }

    #[pg_test]
    fn daylight_saving_is_deterministic() {
        let tz = "America/New_York";
        // 2026-03-08: 02:00 -> 03:00. 02:30 does not exist: runs at 03:00 EDT (07:00 UTC).
        assert_eq!(next_utc("30 2 * * *", "2026-03-08T05:00:00Z", tz).unwrap(), "2026-03-08T07:00:00+00:00");
        // 2026-11-01: 02:00 -> 01:00. 01:30 happens twice: runs once, at 01:30 EDT (05:30 UTC)...
        assert_eq!(next_utc("30 1 * * *", "2026-11-01T04:00:00Z", tz).unwrap(), "2026-11-01T05:30:00+00:00");
        // ...and not again at 01:30 EST: the next run is the next day.
        assert_eq!(next_utc("30 1 * * *", "2026-11-01T05:30:00Z", tz).unwrap(), "2026-11-02T06:30:00+00:00");
        // Europe/Prague: 09:00 local is 08:00 UTC in winter, 07:00 in summer.
        assert_eq!(
            next_utc("0 9 * * *", "2026-01-10T00:00:00Z", "Europe/Prague").unwrap(),
            "2026-01-10T08:00:00+00:00"
        );
        assert_eq!(
            next_utc("0 9 * * *", "2026-07-10T00:00:00Z", "Europe/Prague").unwrap(),
            "2026-07-10T07:00:00+00:00"
        );
    }

    #[pg_test]
    fn other_kinds_parse() {
        assert_eq!(parse("every 30 seconds"), Ok(Schedule::Every { seconds: 30 }));
        assert_eq!(parse("Every 10 Minutes"), Ok(Schedule::Every { seconds: 600 }));
        assert_eq!(parse("every hour"), Ok(Schedule::Every { seconds: 3600 }));
        assert_eq!(parse("every 2 days"), Ok(Schedule::Every { seconds: 172_800 }));
        assert_eq!(parse("manual"), Ok(Schedule::Manual));
        assert_eq!(parse("at 2026-12-01 02:00+00"), Ok(Schedule::Once { at: "2026-12-01 02:00+00".into() }));
        for bad in [
            "",
            "* * * *",
            "61 * * * *",
            "* * * * 8",
            "*/0 * * * *",
            "@often",
            "every 0 seconds",
            "every 5 weeks",
            "5-1 * * * *",
            "x * * * *",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[pg_test]
    fn sql_functions() {
        let kind = Spi::get_one::<String>("SELECT queue.schedule_kind('*/5 * * * *')").unwrap();
        assert_eq!(kind.as_deref(), Some("cron"));
        let ok = Spi::get_one::<bool>(
            "SELECT queue.schedule_next('every 10 seconds', '2026-01-01 00:00:00+00') = '2026-01-01 00:00:10+00'",
        )
        .unwrap();
        assert_eq!(ok, Some(true));
        let n = Spi::get_one::<i64>(
            "SELECT count(*) FROM queue.schedule_upcoming('@hourly', '2026-01-01 00:00+00', '2026-01-01 00:00+00',
                                                          '2026-01-01 10:00+00', 100)",
        )
        .unwrap();
        assert_eq!(n, Some(11));
        // After downtime an interval keeps its phase and runs once.
        let ok = Spi::get_one::<bool>(
            "SELECT queue.schedule_after_run('every 10 seconds', '2026-01-01 00:00:00+00', '2026-01-01 00:05:03+00')
                    = '2026-01-01 00:05:10+00'",
        )
        .unwrap();
        assert_eq!(ok, Some(true));
    }

    #[pg_test(error = "invalid schedule \"0 0 31 2 *\": it never fires")]
    fn never_firing_cron_is_refused() {
        Spi::run("SELECT queue.schedule_kind('0 0 31 2 *')").unwrap();
    }
}
