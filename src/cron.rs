//! Schedules: parsing and next-run computation for the scheduler.
//!
//! Accepted forms (case-insensitive):
//!
//! * 5-field cron `minute hour day-of-month month day-of-week` with `*`,
//!   lists `a,b`, ranges `a-b`, steps `*/n` and `a-b/n`, month names
//!   `jan`..`dec` and weekday names `sun`..`sat` (0 and 7 are Sunday). As in
//!   Vixie cron, when both day fields are restricted a day matches if either
//!   does; when either starts with `*` (`*`, `*/2`) both must match.
//! * `@hourly`, `@daily` (`@midnight`), `@weekly`, `@monthly`, `@yearly`
//!   (`@annually`).
//! * `every N second(s)|minute(s)|hour(s)|day(s)`.
//! * `at <timestamptz>`: once.
//! * `manual`: only `queue_trigger()` runs it.
//!
//! Cron is evaluated in local time of `queue.timezone`. Daylight saving is
//! handled deterministically: a local time that does not exist (the clock
//! jumps forward over it) runs at the first instant after the jump; a local
//! time that happens twice (the clock goes back) runs once, at the earliest
//! instant after the previous run.

use chrono::{
    DateTime, Datelike, Duration as ChronoDuration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    Cron(Cron),
    Every { seconds: i64 },
    Once { at: String },
    Manual,
}

impl Schedule {
    pub fn kind(&self) -> &'static str {
        match self {
            Schedule::Cron(_) => "cron",
            Schedule::Every { .. } => "interval",
            Schedule::Once { .. } => "once",
            Schedule::Manual => "manual",
        }
    }
}

/// The five cron fields as bit sets.
#[derive(Debug, Clone, PartialEq)]
pub struct Cron {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_star: bool,
    weekdays_star: bool,
}

const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// The valid forms, for error hints.
pub const FORMS_HINT: &str = "Valid schedules: 5-field cron such as '*/5 * * * *' or '0 9 * * mon-fri', \
@hourly, @daily, @weekly, @monthly, @yearly, 'every 30 seconds' (seconds, minutes, hours, days), \
'at 2026-12-01 02:00+00', or 'manual'.";

fn value_of(token: &str, names: Option<&[&str]>, offset: u32) -> Result<u32, String> {
    if let Ok(v) = token.parse::<u32>() {
        return Ok(v);
    }
    if let Some(names) = names {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(token)) {
            return Ok(i as u32 + offset);
        }
    }
    Err(format!("\"{token}\" is not a number{}", if names.is_some() { " or a name" } else { "" }))
}

/// Parse one cron field into a bit set over [min, max].
fn parse_field(
    field: &str,
    what: &str,
    min: u32,
    max: u32,
    names: Option<&[&str]>,
    name_offset: u32,
) -> Result<u64, String> {
    let mut bits = 0u64;
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step = s.parse::<u32>().map_err(|_| format!("{what}: step \"{s}\" is not a number"))?;
                if step == 0 {
                    return Err(format!("{what}: step must be at least 1"));
                }
                (r, step)
            }
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (
                value_of(a, names, name_offset).map_err(|e| format!("{what}: {e}"))?,
                value_of(b, names, name_offset).map_err(|e| format!("{what}: {e}"))?,
            )
        } else {
            let v = value_of(range, names, name_offset).map_err(|e| format!("{what}: {e}"))?;
            // "5/15" means 5, 20, 35, 50 as in Vixie cron.
            (v, if part.contains('/') { max } else { v })
        };
        if lo < min || hi > max || lo > hi {
            return Err(format!("{what}: \"{range}\" is outside {min}-{max}"));
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

fn parse_cron(fields: &[&str]) -> Result<Cron, String> {
    let [minute, hour, day, month, weekday] = fields else {
        return Err(format!("cron needs 5 fields, got {}", fields.len()));
    };
    let mut weekdays = parse_field(weekday, "day of week", 0, 7, Some(&WEEKDAYS), 0)?;
    if weekdays & (1 << 7) != 0 {
        weekdays = (weekdays | 1) & !(1 << 7);
    }
    Ok(Cron {
        minutes: parse_field(minute, "minute", 0, 59, None, 0)?,
        hours: parse_field(hour, "hour", 0, 23, None, 0)?,
        days: parse_field(day, "day of month", 1, 31, None, 0)?,
        months: parse_field(month, "month", 1, 12, Some(&MONTHS), 1)?,
        weekdays,
        days_star: day.starts_with('*'),
        weekdays_star: weekday.starts_with('*'),
    })
}

/// Parse any schedule text. The error says what is wrong; callers add
/// [`FORMS_HINT`].
pub fn parse(text: &str) -> Result<Schedule, String> {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    let macro_fields = match lower.as_str() {
        "@hourly" => Some("0 * * * *"),
        "@daily" | "@midnight" => Some("0 0 * * *"),
        "@weekly" => Some("0 0 * * 0"),
        "@monthly" => Some("0 0 1 * *"),
        "@yearly" | "@annually" => Some("0 0 1 1 *"),
        _ => None,
    };
    if let Some(f) = macro_fields {
        return parse_cron(&f.split_whitespace().collect::<Vec<_>>()).map(Schedule::Cron);
    }
    if lower == "manual" {
        return Ok(Schedule::Manual);
    }
    if let Some(rest) = lower.strip_prefix("every ") {
        let words: Vec<&str> = rest.split_whitespace().collect();
        let (n, unit) = match words.as_slice() {
            [n, unit] => (n.parse::<i64>().map_err(|_| format!("\"{n}\" is not a whole number"))?, *unit),
            [unit] => (1, *unit),
            _ => return Err("write 'every N unit', e.g. 'every 30 seconds'".into()),
        };
        let per = match unit.trim_end_matches('s') {
            "second" | "sec" => 1,
            "minute" | "min" => 60,
            "hour" => 3600,
            "day" => 86_400,
            other => return Err(format!("unknown unit \"{other}\"")),
        };
        if n < 1 || n > 10_000_000 {
            return Err(format!("the interval must be between 1 and 10000000 {unit}"));
        }
        return Ok(Schedule::Every { seconds: n * per });
    }
    if lower.starts_with("at ") {
        return Ok(Schedule::Once { at: t[3..].trim().to_string() });
    }
    if lower.starts_with('@') {
        return Err(format!("unknown macro \"{t}\""));
    }
    let fields: Vec<&str> = t.split_whitespace().collect();
    parse_cron(&fields).map(Schedule::Cron)
}

impl Cron {
    fn day_matches(&self, d: NaiveDate) -> bool {
        let dom = self.days & (1 << d.day()) != 0;
        let dow = self.weekdays & (1 << d.weekday().num_days_from_sunday()) != 0;
        // Vixie cron: when either field starts with '*' both must match (a
        // plain '*' matches every day, so the other field decides); when both
        // are restricted, either may match.
        if self.days_star || self.weekdays_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first local minute strictly after `after` that matches, searching
    /// at most ~8 years ahead (Feb 29 on a given weekday can take that long).
    fn next_local(&self, after: NaiveDateTime) -> Option<NaiveDateTime> {
        let mut t = after.with_second(0)?.with_nanosecond(0)? + ChronoDuration::minutes(1);
        let limit = after + ChronoDuration::days(366 * 8 + 2);
        while t <= limit {
            if self.months & (1 << t.month()) == 0 {
                let (y, m) = if t.month() == 12 { (t.year() + 1, 1) } else { (t.year(), t.month() + 1) };
                t = NaiveDate::from_ymd_opt(y, m, 1)?.and_hms_opt(0, 0, 0)?;
                continue;
            }
            if !self.day_matches(t.date()) {
                t = (t.date() + ChronoDuration::days(1)).and_hms_opt(0, 0, 0)?;
                continue;
            }
            if self.hours & (1 << t.hour()) == 0 {
                t = t.with_minute(0)? + ChronoDuration::hours(1);
                continue;
            }
            if self.minutes & (1 << t.minute()) == 0 {
                t += ChronoDuration::minutes(1);
                continue;
            }
            return Some(t);
        }
        None
    }

    /// The first instant strictly after `after` whose local time in `tz`
    /// matches, with the daylight-saving rules of the module comment.
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let mut local = after.with_timezone(&tz).naive_local();
        for _ in 0..64 {
            let candidate = self.next_local(local)?;
            match tz.from_local_datetime(&candidate) {
                LocalResult::Single(t) if t.with_timezone(&Utc) > after => return Some(t.with_timezone(&Utc)),
                LocalResult::Ambiguous(a, b) => {
                    let (a, b) = (a.with_timezone(&Utc), b.with_timezone(&Utc));
                    let (early, late) = if a <= b { (a, b) } else { (b, a) };
                    if early > after {
                        return Some(early);
                    }
                    if late > after {
                        return Some(late);
                    }
                }
                LocalResult::None => {
                    // In a gap: the first existing minute after it.
                    let mut m = candidate;
                    for _ in 0..(24 * 60) {
                        m += ChronoDuration::minutes(1);
                        if let Some(t) = tz.from_local_datetime(&m).earliest() {
                            let t = t.with_timezone(&Utc);
                            if t > after {
                                return Some(t);
                            }
                            break;
                        }
                    }
                }
                _ => {}
            }
            local = candidate;
        }
        None
    }
}

/// For the next-run tables in `scheduler.rs`' tests: the next run after an
/// RFC 3339 instant, as RFC 3339 in UTC.
#[cfg(any(test, feature = "pg_test"))]
pub fn next_utc(expr: &str, after: &str, tz: &str) -> Option<String> {
    let tz: Tz = tz.parse().ok()?;
    let after = DateTime::parse_from_rfc3339(after).ok()?.with_timezone(&Utc);
    match parse(expr).ok()? {
        Schedule::Cron(c) => c.next_after(after, tz).map(|t| t.to_rfc3339()),
        _ => None,
    }
}
