//! Quartz cron expressions (the `scheduling.<type>.interval` of a connector), evaluated in UTC.
//!
//! Parsing and evaluation are done by [`croner`] in its Quartz mode (seconds required, optional
//! year, day-of-week numbered `1 = SUN … 7 = SAT`). A small normaliser in front of it accepts the
//! Quartz spellings croner does not:
//!
//! * `N/step` (start at `N`, every `step`) is rewritten `N-max/step`;
//! * month names `JAN…DEC` and weekday names `SUN…SAT` (any case) are accepted only in their own
//!   field and turned into numbers here (so a weekday name in the day-of-month field is an error,
//!   not a silent number);
//! * a wrapping range without step (`FRI-MON`, `22-2`) is split into two ranges, as Quartz does;
//! * `L` alone in the day-of-week field means Saturday (`7`), as in Quartz.
//!
//! Rejected with a clear message: `L-n` (offset from the last day of the month), day-of-week `0`
//! (Quartz numbering starts at 1), `@daily`-style nicknames and croner's `+` modifier (not Quartz),
//! a wrong number of fields.
//!
//! Differences from Elastic's Python service (W6), all deliberate: the seconds field is honoured
//! (Python ignored it); numeric day-of-week lists and ranges use Quartz numbering (Python only
//! converted a single number); `L`, `W`, `LW`, `#` work. As in Python, day-of-month and
//! day-of-week are combined with AND when both are given (Quartz itself refuses that; classic
//! cron ORs them): an expression keeps the meaning it had under Elastic's service.

use chrono::{DateTime, SubsecRound, Utc};
use croner::parser::{CronParser, Seconds, Year};

use crate::error::{Classify, ErrorKind};

/// A cron expression that cannot be used, with the expression and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cron expression {expression:?}: {reason}")]
pub struct CronError {
    /// The expression as given.
    pub expression: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Classify for CronError {
    /// A bad schedule is the user's configuration to fix.
    fn kind(&self) -> ErrorKind {
        ErrorKind::Configuration
    }
}

/// A parsed Quartz cron expression, evaluated in UTC.
#[derive(Debug, Clone)]
pub struct QuartzCron {
    expression: String,
    cron: croner::Cron,
}

impl PartialEq for QuartzCron {
    fn eq(&self, other: &Self) -> bool {
        self.cron == other.cron
    }
}

impl std::fmt::Display for QuartzCron {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.expression)
    }
}

impl std::str::FromStr for QuartzCron {
    type Err = CronError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        QuartzCron::parse(s)
    }
}

/// Field positions and bounds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Second,
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
    Year,
}

impl Field {
    const ALL: [Field; 7] = [
        Field::Second,
        Field::Minute,
        Field::Hour,
        Field::DayOfMonth,
        Field::Month,
        Field::DayOfWeek,
        Field::Year,
    ];

    fn name(self) -> &'static str {
        match self {
            Field::Second => "seconds",
            Field::Minute => "minutes",
            Field::Hour => "hours",
            Field::DayOfMonth => "day-of-month",
            Field::Month => "month",
            Field::DayOfWeek => "day-of-week",
            Field::Year => "year",
        }
    }

    fn bounds(self) -> (u32, u32) {
        match self {
            Field::Second | Field::Minute => (0, 59),
            Field::Hour => (0, 23),
            Field::DayOfMonth => (1, 31),
            Field::Month => (1, 12),
            Field::DayOfWeek => (1, 7),
            // Quartz's year range.
            Field::Year => (1970, 2099),
        }
    }
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
/// Quartz numbering: SUN = 1 … SAT = 7.
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

impl QuartzCron {
    /// Parses a Quartz expression: `seconds minutes hours day-of-month month day-of-week [year]`.
    pub fn parse(expression: &str) -> Result<QuartzCron, CronError> {
        let fail = |reason: String| CronError {
            expression: expression.to_owned(),
            reason,
        };
        let normalised = normalise(expression).map_err(fail)?;
        let cron = CronParser::builder()
            .seconds(Seconds::Required)
            .year(Year::Optional)
            .alternative_weekdays(true)
            .dom_and_dow(true)
            .build()
            .parse(&normalised)
            .map_err(|e| fail(e.to_string()))?;
        Ok(QuartzCron {
            expression: expression.to_owned(),
            cron,
        })
    }

    /// The expression as given.
    pub fn as_str(&self) -> &str {
        &self.expression
    }

    /// The first occurrence strictly after `t`; `None` when there is none (a year field in the
    /// past, an impossible date such as `30 2`). Searches are bounded: an expression that can
    /// never fire costs about a quarter of a second in a debug build before giving up, an
    /// ordinary one microseconds.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Occurrences are whole seconds: strictly after t = strictly after t's second.
        self.cron
            .find_next_occurrence(&t.trunc_subsecs(0), false)
            .ok()
    }

    /// The first occurrence at or after `t` (Elastic's `next_run` semantics).
    pub fn next_at_or_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let whole = t.trunc_subsecs(0);
        if whole == t {
            self.cron.find_next_occurrence(&t, true).ok()
        } else {
            self.cron.find_next_occurrence(&whole, false).ok()
        }
    }

    /// The last occurrence at or before `t`; `None` when there is none.
    pub fn last_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&t.trunc_subsecs(0), true)
            .ok()
    }
}

/// The occurrence the scheduler should run now, if any: the **latest** occurrence of `cron` in
/// `(since, now]`.
///
/// `since` is the occurrence that was last scheduled for this job type (the connector's
/// `last_<type>_scheduled_at`), or, for a job type never scheduled, the instant the scheduler
/// started watching it. The caller stores the returned occurrence as the new
/// `last_<type>_scheduled_at` (with optimistic concurrency, so two instances cannot both
/// schedule it) and creates one job.
///
/// Missed-run policy: occurrences missed while the service was down (or while a pass was late)
/// are **not** replayed one by one. However many occurrences fall in `(since, now]`, one job is
/// created, at the next pass, and the latest of them is recorded, so the following pass does not
/// see the others as due. (Elastic's service never fires a run missed during downtime, because it
/// only looks after its own start; here the missed run fires once.)
///
/// The interval is open at `since` (an occurrence already scheduled is not scheduled again) and
/// closed at `now` (an occurrence exactly at `now` is due).
pub fn due_since(
    cron: &QuartzCron,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    if now <= since {
        return None;
    }
    // Cheap first check: nothing due if the first occurrence after `since` lies in the future.
    let first = cron.next_after(since)?;
    if first > now {
        return None;
    }
    match cron.last_at_or_before(now) {
        Some(last) if last > since => Some(last),
        // The backward search gave up (very sparse expression): the first occurrence is due.
        _ => Some(first),
    }
}

/// Rewrites a Quartz expression into the form croner's Quartz mode accepts, or says what is wrong.
fn normalise(expression: &str) -> Result<String, String> {
    let upper = expression.trim().to_ascii_uppercase();
    if upper.is_empty() {
        return Err("the expression is empty".to_owned());
    }
    if upper.contains('@') {
        return Err("nicknames such as @daily are not Quartz syntax; \
                    write the six fields (e.g. \"0 0 0 * * ?\")"
            .to_owned());
    }
    let parts: Vec<&str> = upper.split_whitespace().collect();
    if !(6..=7).contains(&parts.len()) {
        return Err(format!(
            "expected 6 or 7 fields (seconds minutes hours day-of-month month day-of-week [year]), \
             found {}",
            parts.len()
        ));
    }
    let mut out = Vec::with_capacity(parts.len());
    for (field, part) in Field::ALL.into_iter().zip(parts) {
        out.push(
            normalise_field(field, part)
                .map_err(|e| format!("{} field {part:?}: {e}", field.name()))?,
        );
    }
    Ok(out.join(" "))
}

fn normalise_field(field: Field, part: &str) -> Result<String, String> {
    let allowed_extra: &[char] = match field {
        Field::DayOfMonth => &['L', 'W', '?'],
        Field::DayOfWeek => &['L', '#', '?'],
        _ => &[],
    };
    let named = matches!(field, Field::Month | Field::DayOfWeek);
    for c in part.chars() {
        let ok = c.is_ascii_digit()
            || matches!(c, '*' | ',' | '-' | '/')
            || allowed_extra.contains(&c)
            || (named && c.is_ascii_alphabetic());
        if !ok {
            return Err(format!("character {c:?} is not allowed here"));
        }
    }
    if field == Field::DayOfMonth && part.contains("L-") {
        return Err("offsets from the last day of the month (L-n) are not supported".to_owned());
    }
    let part = match field {
        Field::Month => replace_names(part, &MONTHS, "month", &[])?,
        Field::DayOfWeek if part == "L" => "7".to_owned(),
        Field::DayOfWeek => replace_names(part, &WEEKDAYS, "weekday", &["L"])?,
        _ => part.to_owned(),
    };
    let (min, max) = field.bounds();
    let mut elements = Vec::new();
    for element in part.split(',') {
        if element.is_empty() {
            return Err("empty list element".to_owned());
        }
        if field == Field::DayOfWeek {
            check_weekday_numbers(element)?;
        }
        check_bounds(element, min, max)?;
        elements.push(rewrite_element(element, min, max)?);
    }
    Ok(elements.join(","))
}

/// Replaces alphabetic runs that are names by their number (1-based); the `keep` letters stay.
fn replace_names(part: &str, names: &[&str], what: &str, keep: &[&str]) -> Result<String, String> {
    let mut out = String::with_capacity(part.len());
    let mut chars = part.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        if !c.is_ascii_alphabetic() {
            out.push(c);
            continue;
        }
        let mut end = start + c.len_utf8();
        while let Some(&(i, c)) = chars.peek() {
            if !c.is_ascii_alphabetic() {
                break;
            }
            end = i + c.len_utf8();
            chars.next();
        }
        let run = &part[start..end];
        if let Some(i) = names.iter().position(|n| *n == run) {
            out.push_str(&(i + 1).to_string());
        } else if keep.contains(&run) {
            out.push_str(run);
        } else {
            return Err(format!("unknown {what} name {run:?}"));
        }
    }
    Ok(out)
}

/// Day-of-week numbers are 1 (SUN) … 7 (SAT); the number after `#` is the occurrence.
fn check_weekday_numbers(element: &str) -> Result<(), String> {
    if let Some((_, nth)) = element.split_once('#')
        && !matches!(nth.parse::<u32>(), Ok(1..=5))
    {
        return Err(format!(
            "the occurrence after '#' must be 1 to 5, found {nth:?}"
        ));
    }
    let days = element.split('#').next().unwrap_or(element);
    let days = days.split('/').next().unwrap_or(days);
    for number in days
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
    {
        match number.parse::<u32>() {
            Ok(0) => {
                return Err("day-of-week 0 does not exist in Quartz numbering \
                            (1 = SUN … 7 = SAT)"
                    .to_owned());
            }
            Ok(1..=7) => {}
            _ => {
                return Err(format!(
                    "day-of-week {number} is out of range (1 = SUN … 7 = SAT)"
                ));
            }
        }
    }
    Ok(())
}

/// Every number of the element lies in `min..=max` (the `#n` occurrence excepted); a step is at
/// least 1.
fn check_bounds(element: &str, min: u32, max: u32) -> Result<(), String> {
    let element = element.split('#').next().unwrap_or(element);
    let (values, step) = match element.split_once('/') {
        Some((values, step)) => (values, Some(step)),
        None => (element, None),
    };
    for number in values
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
    {
        match number.parse::<u32>() {
            Ok(n) if (min..=max).contains(&n) => {}
            _ => return Err(format!("{number} is out of range {min}-{max}")),
        }
    }
    if let Some(step) = step {
        match step.parse::<u32>() {
            Ok(s) if s >= 1 => {}
            _ => {
                return Err(format!(
                    "step {step:?} must be a whole number of at least 1"
                ));
            }
        }
    }
    Ok(())
}

/// `N/s` → `N-max/s`; a wrapping range `a-b` (a > b, no step) → `a-max,min-b`.
fn rewrite_element(element: &str, min: u32, max: u32) -> Result<String, String> {
    let number = |s: &str| -> Option<u32> {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            s.parse().ok()
        } else {
            None
        }
    };
    if let Some((start, step)) = element.split_once('/') {
        if let Some(n) = number(start) {
            return Ok(format!("{n}-{max}/{step}"));
        }
        if let Some((a, b)) = start.split_once('-')
            && let (Some(a), Some(b)) = (number(a), number(b))
            && a > b
        {
            return Err(format!(
                "a wrapping range with a step ({element}) is not supported"
            ));
        }
        return Ok(element.to_owned());
    }
    if let Some((a, b)) = element.split_once('-')
        && let (Some(a), Some(b)) = (number(a), number(b))
        && a > b
    {
        return Ok(format!("{a}-{max},{min}-{b}"));
    }
    Ok(element.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .with_timezone(&Utc)
    }

    fn next_n(expr: &str, start: &str, n: usize) -> Vec<String> {
        let cron = QuartzCron::parse(expr).unwrap_or_else(|e| panic!("{e}"));
        let mut t = at(start);
        let mut out = Vec::new();
        for _ in 0..n {
            match cron.next_after(t) {
                Some(next) => {
                    out.push(next.format("%Y-%m-%dT%H:%M:%S %a").to_string());
                    t = next;
                }
                None => break,
            }
        }
        out
    }

    const START: &str = "2026-01-01T00:00:30Z"; // a Thursday

    #[test]
    fn next_fire_times() {
        let table: &[(&str, &str, &[&str])] = &[
            (
                "0 0 0 * * ?",
                START,
                &["2026-01-02T00:00:00 Fri", "2026-01-03T00:00:00 Sat"],
            ),
            (
                "0 */15 * * * ?",
                START,
                &["2026-01-01T00:15:00 Thu", "2026-01-01T00:30:00 Thu"],
            ),
            (
                "0 0 12 ? * MON-FRI",
                START,
                &[
                    "2026-01-01T12:00:00 Thu",
                    "2026-01-02T12:00:00 Fri",
                    "2026-01-05T12:00:00 Mon",
                ],
            ),
            (
                "0 0 0 L * ?",
                START,
                &[
                    "2026-01-31T00:00:00 Sat",
                    "2026-02-28T00:00:00 Sat",
                    "2026-03-31T00:00:00 Tue",
                ],
            ),
            (
                // Quartz 6 = Friday: third Friday.
                "0 0 0 ? * 6#3",
                START,
                &[
                    "2026-01-16T00:00:00 Fri",
                    "2026-02-20T00:00:00 Fri",
                    "2026-03-20T00:00:00 Fri",
                ],
            ),
            (
                // Quartz 2 = Monday, 4 = Wednesday.
                "0 30 9 ? * 2,4",
                START,
                &[
                    "2026-01-05T09:30:00 Mon",
                    "2026-01-07T09:30:00 Wed",
                    "2026-01-12T09:30:00 Mon",
                ],
            ),
            (
                "0/5 * * * * ?",
                START,
                &["2026-01-01T00:00:35 Thu", "2026-01-01T00:00:40 Thu"],
            ),
            (
                "0 5/20 * * * ?",
                START,
                &[
                    "2026-01-01T00:05:00 Thu",
                    "2026-01-01T00:25:00 Thu",
                    "2026-01-01T00:45:00 Thu",
                    "2026-01-01T01:05:00 Thu",
                ],
            ),
            (
                // Last weekday of the month: Jan 30 (Fri), Feb 27 (Fri), Mar 31 (Tue).
                "0 0 0 LW * ?",
                START,
                &[
                    "2026-01-30T00:00:00 Fri",
                    "2026-02-27T00:00:00 Fri",
                    "2026-03-31T00:00:00 Tue",
                ],
            ),
            (
                // Weekday nearest the 15th: Jan 15 (Thu), Feb 16 (15 is a Sunday), Aug 14 (15 Sat).
                "0 0 0 15W * ?",
                START,
                &[
                    "2026-01-15T00:00:00 Thu",
                    "2026-02-16T00:00:00 Mon",
                    "2026-03-16T00:00:00 Mon",
                ],
            ),
            (
                // Last Friday of the month.
                "0 0 0 ? * 6L",
                START,
                &[
                    "2026-01-30T00:00:00 Fri",
                    "2026-02-27T00:00:00 Fri",
                    "2026-03-27T00:00:00 Fri",
                ],
            ),
            (
                "0 0 8 1 JAN,jul ?",
                START,
                &["2026-01-01T08:00:00 Thu", "2026-07-01T08:00:00 Wed"],
            ),
            (
                "0 0 8 ? * sat,SUN",
                START,
                &["2026-01-03T08:00:00 Sat", "2026-01-04T08:00:00 Sun"],
            ),
            (
                "0 0 8 ? * SUN#1",
                START,
                &["2026-01-04T08:00:00 Sun", "2026-02-01T08:00:00 Sun"],
            ),
            ("0 0 0 1 1 ? 2028", START, &["2028-01-01T00:00:00 Sat"]),
            (
                "0 0 0 1 1 ? 2027-2029",
                START,
                &[
                    "2027-01-01T00:00:00 Fri",
                    "2028-01-01T00:00:00 Sat",
                    "2029-01-01T00:00:00 Mon",
                ],
            ),
            (
                // Wrapping weekday range: Friday to Monday.
                "0 0 6 ? * FRI-MON",
                START,
                &[
                    "2026-01-02T06:00:00 Fri",
                    "2026-01-03T06:00:00 Sat",
                    "2026-01-04T06:00:00 Sun",
                    "2026-01-05T06:00:00 Mon",
                    "2026-01-09T06:00:00 Fri",
                ],
            ),
            (
                // `L` alone in day-of-week = Saturday.
                "0 0 6 ? * L",
                START,
                &["2026-01-03T06:00:00 Sat", "2026-01-10T06:00:00 Sat"],
            ),
            (
                // Day-of-month and day-of-week together are ANDed (Elastic's behaviour):
                // Friday the 13th.
                "0 0 0 13 * FRI",
                START,
                &["2026-02-13T00:00:00 Fri", "2026-03-13T00:00:00 Fri"],
            ),
        ];
        for (expr, start, expected) in table {
            let got = next_n(expr, start, expected.len());
            assert_eq!(&got, expected, "{expr} from {start}");
        }
    }

    /// The three examples of framework-spec §7.1 (Elastic's own tests), at-or-after semantics.
    #[test]
    fn elastic_examples() {
        let cron = QuartzCron::parse("0 */5 * * * *").unwrap();
        assert_eq!(
            cron.next_at_or_after(at("2023-01-18T17:18:56.000814Z")),
            Some(at("2023-01-18T17:20:00Z"))
        );
        // 2023-01-18 is a Wednesday; Quartz 4 = Wednesday.
        let cron = QuartzCron::parse("0 3 5 ? * 4").unwrap();
        assert_eq!(
            cron.next_at_or_after(at("2023-01-18T01:18:00Z")),
            Some(at("2023-01-18T05:03:00Z"))
        );
        let cron = QuartzCron::parse("0 3 5 5 1 ?").unwrap();
        assert_eq!(
            cron.next_at_or_after(at("2023-01-05T06:18:00Z")),
            Some(at("2024-01-05T05:03:00Z"))
        );
    }

    #[test]
    fn strict_and_inclusive_boundaries() {
        let cron = QuartzCron::parse("0 0 * * * ?").unwrap();
        let noon = at("2026-01-01T12:00:00Z");
        assert_eq!(cron.next_after(noon), Some(at("2026-01-01T13:00:00Z")));
        assert_eq!(cron.next_at_or_after(noon), Some(noon));
        let just_after = at("2026-01-01T12:00:00.5Z");
        assert_eq!(
            cron.next_after(just_after),
            Some(at("2026-01-01T13:00:00Z"))
        );
        assert_eq!(
            cron.next_at_or_after(just_after),
            Some(at("2026-01-01T13:00:00Z"))
        );
        let just_before = at("2026-01-01T11:59:59.9Z");
        assert_eq!(cron.next_after(just_before), Some(noon));
        assert_eq!(cron.last_at_or_before(just_after), Some(noon));
        assert_eq!(cron.last_at_or_before(noon), Some(noon));
    }

    #[test]
    fn no_occurrence_is_none() {
        let past = QuartzCron::parse("0 0 0 1 1 ? 2020").unwrap();
        assert_eq!(past.next_after(at(START)), None);
        let never = QuartzCron::parse("0 0 0 30 2 ?").unwrap();
        let started = std::time::Instant::now();
        assert_eq!(never.next_after(at(START)), None);
        assert_eq!(
            due_since(&never, at(START), at("2027-01-01T00:00:00Z")),
            None
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn bad_expressions() {
        let table: &[(&str, &str)] = &[
            ("", "empty"),
            ("0 0 * * *", "expected 6 or 7 fields"),
            ("0 0 0 * * ? 2026 1", "expected 6 or 7 fields"),
            ("0 0 0 L-3 * ?", "L-n"),
            ("0 0 0 ? * 0", "day-of-week 0"),
            ("0 0 0 ? * 0-5", "day-of-week 0"),
            ("0 0 0 ? * 8", "out of range"),
            ("@daily", "nicknames"),
            ("0 0 0 ? * +MON", "not allowed"),
            ("0 0 0 MON * ?", "not allowed"),
            ("0 0 0 ? * FOO", "unknown weekday name"),
            ("0 0 0 1 FOO ?", "unknown month name"),
            ("0 0 0 1 L ?", "unknown month name \"L\""),
            (
                "0 60 * * * ?",
                "minutes field \"60\": 60 is out of range 0-59",
            ),
            ("0 0 24 * * ?", "hours field"),
            ("0 0 0 32 * ?", "day-of-month field"),
            ("0 0 0 * 13 ?", "month field"),
            ("0 0 0 1 1 ? 1969", "year field"),
            ("0 0 0 ? * 2-1/2", "wrapping range with a step"),
            ("0 0 0 1,,2 * ?", "empty list element"),
            ("x y z a b c", "not allowed"),
            ("0 */0 * * * ?", "step \"0\" must be"),
            (
                "0 0 0 ? * 6#6",
                "day-of-week field \"6#6\": the occurrence after '#' must be 1 to 5",
            ),
        ];
        for (expr, needle) in table {
            let err = QuartzCron::parse(expr).expect_err(expr);
            assert_eq!(err.expression, *expr);
            assert_eq!(err.kind(), ErrorKind::Configuration);
            let text = err.to_string();
            assert!(text.contains(needle), "{expr}: {text}");
            assert!(text.contains(&format!("{expr:?}")), "{text}");
        }
    }

    #[test]
    fn due_since_fires_once_for_missed_runs() {
        let hourly = QuartzCron::parse("0 0 * * * ?").unwrap();
        let since = at("2026-01-01T10:00:00Z");
        // Nothing due yet.
        assert_eq!(due_since(&hourly, since, at("2026-01-01T10:59:59Z")), None);
        // Exactly on the occurrence: due.
        assert_eq!(
            due_since(&hourly, since, at("2026-01-01T11:00:00Z")),
            Some(at("2026-01-01T11:00:00Z"))
        );
        // The service was down for five hours: one run, the latest occurrence.
        let now = at("2026-01-01T15:30:00Z");
        let due = due_since(&hourly, since, now);
        assert_eq!(due, Some(at("2026-01-01T15:00:00Z")));
        // Once recorded, nothing more is due this hour.
        assert_eq!(due_since(&hourly, due.unwrap_or(now), now), None);
        // The occurrence at `since` itself is not due again.
        assert_eq!(due_since(&hourly, since, since), None);
        assert_eq!(due_since(&hourly, now, since), None);
    }

    #[test]
    fn due_since_daily_after_long_downtime() {
        let daily = QuartzCron::parse("0 0 0 * * ?").unwrap();
        let since = Utc
            .with_ymd_and_hms(2025, 3, 1, 0, 0, 0)
            .single()
            .unwrap_or_default();
        assert_eq!(
            due_since(&daily, since, at("2026-01-01T00:00:30Z")),
            Some(at("2026-01-01T00:00:00Z"))
        );
    }

    #[test]
    fn parse_round_trips_text() {
        let cron: QuartzCron = "0 0 0 * * ?".parse().unwrap();
        assert_eq!(cron.as_str(), "0 0 0 * * ?");
        assert_eq!(cron.to_string(), "0 0 0 * * ?");
    }

    fn quartz_expression() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let pick = |v: &[&'static str]| prop::sample::select(v.to_vec());
        let days = prop_oneof![
            (
                pick(&["*", "?", "1", "15", "31", "L", "LW", "15W", "1-10", "25-5"]),
                Just("?")
            ),
            (
                Just("?"),
                pick(&[
                    "MON-FRI", "6#3", "6L", "2,4", "SUN", "FRI-MON", "*", "1#5", "L"
                ])
            ),
            (pick(&["13", "1-7"]), pick(&["FRI", "2"])),
        ];
        (
            pick(&["0", "*/15", "0/20", "5,35"]),
            pick(&["0", "*/5", "10-20", "30", "5/20"]),
            pick(&["*", "0", "12", "9-17", "22-2"]),
            days,
            pick(&["*", "JAN", "1-6", "*/3", "FEB", "DEC"]),
            pick(&["", " *", " 2026-2030", " 2027"]),
        )
            .prop_map(|(s, m, h, (dom, dow), mon, year)| {
                format!("{s} {m} {h} {dom} {mon} {dow}{year}")
            })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

        /// Forward and backward searches agree: the next occurrence after `t` is an occurrence,
        /// nothing lies between `t` and it, and `due_since` returns the latest occurrence in
        /// `(since, now]`.
        #[test]
        fn searches_agree(
            expr in quartz_expression(),
            start in 1_767_225_600i64..1_830_297_600, // 2026-01-01 .. 2028-01-01
            span in 1i64..10_000_000,
        ) {
            let cron = QuartzCron::parse(&expr).map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            let t = DateTime::<Utc>::from_timestamp(start, 0).unwrap_or_default();
            if let Some(next) = cron.next_after(t) {
                proptest::prop_assert!(next > t);
                proptest::prop_assert_eq!(cron.last_at_or_before(next), Some(next));
                proptest::prop_assert_eq!(cron.next_at_or_after(next), Some(next));
                let before = cron.last_at_or_before(next - chrono::Duration::seconds(1));
                proptest::prop_assert!(before.is_none_or(|b| b <= t), "{:?} between {} and {}", before, t, next);
            }
            let now = t + chrono::Duration::seconds(span);
            match due_since(&cron, t, now) {
                Some(due) => {
                    proptest::prop_assert!(due > t && due <= now);
                    proptest::prop_assert_eq!(cron.next_at_or_after(due), Some(due));
                    proptest::prop_assert!(cron.next_after(due).is_none_or(|n| n > now));
                }
                None => {
                    proptest::prop_assert!(cron.next_after(t).is_none_or(|n| n > now));
                }
            }
        }

        #[test]
        fn random_strings_never_panic(s in "\\PC{0,40}") {
            let _ = QuartzCron::parse(&s);
        }

        #[test]
        fn random_cron_like_strings_never_panic(
            fields in proptest::collection::vec("[0-9*?,/#LW-]{1,6}|[A-Z]{3}", 5..8),
            start in 0i64..4_000_000_000,
        ) {
            let expr = fields.join(" ");
            if let Ok(cron) = QuartzCron::parse(&expr) {
                let t = DateTime::<Utc>::from_timestamp(start, 0).unwrap_or_default();
                if let Some(next) = cron.next_after(t) {
                    proptest::prop_assert!(next > t);
                }
            }
        }
    }
}
