//! Human output: aligned tables, relative times, durations; and the
//! duration syntax of the command line (`30s`, `10m`, `1h30m`, `7d`, `2 hours`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

/// A plain text table: a header row and aligned columns, two spaces apart.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    right: Vec<bool>,
}

impl Table {
    /// A table with these column titles; columns whose title starts with `>`
    /// are right-aligned (the `>` is not printed).
    pub fn new(header: &[&str]) -> Table {
        Table {
            right: header.iter().map(|h| h.starts_with('>')).collect(),
            header: header.iter().map(|h| h.trim_start_matches('>').to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells are blank).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Whether no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, one line per row, ending in a newline.
    pub fn render(&self) -> String {
        let n = self.header.len();
        let mut width: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        let mut line = |cells: &[String]| {
            let mut s = String::new();
            for (i, w) in width.iter().enumerate() {
                let c = cells.get(i).map(String::as_str).unwrap_or("");
                let pad = w - c.chars().count();
                if i > 0 {
                    s.push_str("  ");
                }
                if self.right[i] {
                    s.push_str(&" ".repeat(pad));
                    s.push_str(c);
                } else {
                    s.push_str(c);
                    if i + 1 < n {
                        s.push_str(&" ".repeat(pad));
                    }
                }
            }
            out.push_str(s.trim_end());
            out.push('\n');
        };
        line(&self.header);
        for r in &self.rows {
            line(r);
        }
        out
    }
}

/// Text as the terminal may show it: control characters (ESC, BEL, the C1
/// range, ...) written as `\u{1b}` escapes, so that an error text, worker
/// name or progress message set by a worker cannot retitle the terminal,
/// write its clipboard or hide lines of the output.
pub fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars().map(|c| if c.is_control() { c.escape_unicode().to_string() } else { c.to_string() }).collect()
}

/// A JSON value as a table cell: strings bare (control characters escaped,
/// see [`printable`]), null as `-`, numbers as they are.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => printable(s),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        other => other.to_string(),
    }
}

/// A field of an object as a cell.
pub fn field(v: &Value, key: &str) -> String {
    cell(v.get(key).unwrap_or(&Value::Null))
}

/// A field as an integer (0 when missing).
pub fn int(v: &Value, key: &str) -> i64 {
    v.get(key).and_then(Value::as_i64).unwrap_or(0)
}

/// One line of text at most `max` characters long, with `…` when cut.
pub fn preview(s: &str, max: usize) -> String {
    let one: String = printable(&s.split_whitespace().collect::<Vec<_>>().join(" "));
    if one.chars().count() <= max {
        one
    } else {
        let mut t: String = one.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Parses a timestamp as the extension's JSON writes it.
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .or_else(|_| DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%#z"))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// "5 hours, 30 min", "2 days, 3 hours", "45 s": a span for people.
pub fn human_span(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins) = (s / 86_400, (s % 86_400) / 3600, (s % 3600) / 60);
    if days > 0 {
        format!("{days} day{}, {hours} hour{}", plural(days), plural(hours))
    } else if hours > 0 {
        format!("{hours} hour{}, {mins} min", plural(hours))
    } else if mins > 0 {
        format!("{mins} min")
    } else if s > 0 {
        format!("{s} s")
    } else {
        format!("{} ms", d.as_millis())
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// "in 5 hours, 30 min" or "3 min ago", relative to `now`.
pub fn relative(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let d = t.signed_duration_since(now);
    if d.num_milliseconds().abs() < 1000 {
        return "now".into();
    }
    let span = human_span(d.abs().to_std().unwrap_or_default());
    if d.num_milliseconds() > 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// A timestamp field shown as `2026-12-02 02:48:17 (3 min ago)`.
pub fn when(v: &Value, key: &str) -> String {
    match v.get(key).and_then(Value::as_str).and_then(parse_time) {
        Some(t) => format!("{} ({})", t.format("%Y-%m-%d %H:%M:%S"), relative(t, Utc::now())),
        None => "-".into(),
    }
}

/// A timestamp field shown relative to now only (`3 min ago`).
pub fn ago(v: &Value, key: &str) -> String {
    match v.get(key).and_then(Value::as_str).and_then(parse_time) {
        Some(t) => relative(t, Utc::now()),
        None => "-".into(),
    }
}

/// Milliseconds as `850 ms` or `2.4 s`; `-` for null.
pub fn ms(v: &Value) -> String {
    match v.as_f64() {
        None => "-".into(),
        Some(x) if x < 1000.0 => format!("{x:.0} ms"),
        Some(x) if x < 60_000.0 => format!("{:.1} s", x / 1000.0),
        Some(x) => human_span(Duration::from_millis(x as u64)),
    }
}

/// A 0..1 ratio as a percentage; `-` for null.
pub fn percent(v: &Value) -> String {
    match v.as_f64() {
        None => "-".into(),
        Some(x) => format!("{:.1}%", x * 100.0),
    }
}

/// Seconds as a span; `-` for null.
pub fn secs(v: &Value) -> String {
    match v.as_f64() {
        None => "-".into(),
        Some(x) => Duration::try_from_secs_f64(x.max(0.0)).map(human_span).unwrap_or_else(|_| "-".into()),
    }
}

/// Parses a duration: `500ms`, `30s`, `10m`, `1h30m`, `7d`, `2w`, `10 minutes`,
/// `1 hour 30 minutes`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("an empty duration".into());
    }
    let bad = || format!("{text:?} is not a duration (examples: 30s, 10m, 1h30m, 7d, \"2 hours\")");
    // At most a hundred years: more is a mistake, and past u64 seconds the
    // conversion would panic.
    let too_long = || format!("{text:?} is longer than 100 years");
    const MAX: f64 = 100.0 * 365.25 * 86_400.0;
    if let Ok(n) = s.parse::<f64>() {
        if n >= 0.0 && n.is_finite() {
            return if n <= MAX { Ok(Duration::from_secs_f64(n)) } else { Err(too_long()) };
        }
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    let mut any = false;
    while !rest.is_empty() {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ',');
        if rest.is_empty() {
            break;
        }
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return Err(bad());
        }
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = rest[num_len..].trim_start();
        let unit_len = rest.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(rest.len());
        let unit = rest[..unit_len].to_ascii_lowercase();
        rest = &rest[unit_len..];
        let secs = match unit.as_str() {
            "ms" | "msec" | "msecs" | "millisecond" | "milliseconds" => 0.001,
            "" | "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
            "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600.0,
            "d" | "day" | "days" => 86_400.0,
            "w" | "week" | "weeks" => 604_800.0,
            _ => return Err(bad()),
        };
        let part = n * secs;
        if !part.is_finite() || part > MAX || total.as_secs_f64() + part > MAX {
            return Err(too_long());
        }
        total += Duration::from_secs_f64(part);
        any = true;
    }
    if any {
        Ok(total)
    } else {
        Err(bad())
    }
}

/// A duration as the command line writes it back (`1h30m`, `45s`, `250ms`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let mut s = d.as_secs();
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if s >= size {
            out.push_str(&format!("{}{unit}", s / size));
            s %= size;
        }
    }
    if out.is_empty() {
        "0s".into()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert_eq!(parse_duration("2 hours, 5 minutes").unwrap(), Duration::from_secs(7500));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        // Too long for a Duration (or for sense): an error, never a panic.
        for huge in ["1e30", "1e30s", "99999999999999999999w", "200 years", "60y", "36600d", "50w 99999999999w"] {
            assert!(parse_duration(huge).is_err(), "{huge}");
        }
        assert_eq!(parse_duration("36500d").unwrap(), Duration::from_secs(36500 * 86400));
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
    }

    #[test]
    fn spans_read_like_the_dashboard() {
        assert_eq!(human_span(Duration::from_secs(5 * 3600 + 30 * 60)), "5 hours, 30 min");
        assert_eq!(human_span(Duration::from_secs(86400 + 3600)), "1 day, 1 hour");
        let now = Utc::now();
        assert_eq!(relative(now + chrono::Duration::seconds(5 * 3600 + 30 * 60 + 5), now), "in 5 hours, 30 min");
        assert_eq!(relative(now - chrono::Duration::seconds(180), now), "3 min ago");
    }

    #[test]
    fn control_characters_never_reach_the_terminal() {
        let planted = Value::String("boom \u{1b}]52;c;AAAA\u{7} \u{9b}2J done".into());
        let shown = cell(&planted);
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert_eq!(shown, "boom \\u{1b}]52;c;AAAA\\u{7} \\u{9b}2J done");
        assert!(!preview("a\u{1b}[2Kb", 40).chars().any(char::is_control));
        assert_eq!(cell(&Value::String("plain ünïcode".into())), "plain ünïcode");
        assert_eq!(secs(&serde_json::json!(1e300)), "-");
    }

    #[test]
    fn tables_align() {
        let mut t = Table::new(&["queue", ">depth"]);
        t.row(vec!["emails".into(), "5".into()]);
        t.row(vec!["a".into(), "1234".into()]);
        assert_eq!(t.render(), "queue   depth\nemails      5\na        1234\n");
    }
}
