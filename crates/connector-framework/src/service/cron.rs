//! Quartz cron evaluation in UTC.
//!
//! replaced by crate::cron when merged: a minimal private stand-in on croner (Quartz mode:
//! seconds field required, optional year, 1 = Sunday, `N/step` accepted).

use chrono::{DateTime, Utc};
use croner::{
    Cron,
    parser::{CronParser, Seconds, Year},
};

/// A parsed Quartz expression.
#[derive(Debug, Clone)]
pub(crate) struct Schedule(Cron);

impl Schedule {
    pub(crate) fn parse(expr: &str) -> Result<Self, String> {
        let parser = CronParser::builder()
            .seconds(Seconds::Required)
            .year(Year::Optional)
            .alternative_weekdays(true)
            .sloppy_ranges(true)
            .build();
        parser
            .parse(expr.trim())
            .map(Schedule)
            .map_err(|e| format!("invalid cron expression {expr:?}: {e}"))
    }

    /// The first occurrence strictly after `t`.
    pub(crate) fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.0.find_next_occurrence(&t, false).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn quartz_expressions() {
        let s = Schedule::parse("0 */5 * * * ?").unwrap();
        assert_eq!(
            s.next_after(at("2024-01-01T17:18:56.000814Z")).unwrap(),
            at("2024-01-01T17:20:00Z")
        );
        // Quartz 4 = Wednesday; 2024-01-03 is a Wednesday.
        let s = Schedule::parse("0 3 5 ? * 4").unwrap();
        assert_eq!(
            s.next_after(at("2024-01-03T01:18:00Z")).unwrap(),
            at("2024-01-03T05:03:00Z")
        );
        let s = Schedule::parse("0 0/15 * * * ?").unwrap();
        assert_eq!(
            s.next_after(at("2024-01-01T00:01:00Z")).unwrap(),
            at("2024-01-01T00:15:00Z")
        );
        assert!(Schedule::parse("every day").is_err());
        assert!(Schedule::parse("0 0 25 * * ?").is_err());
    }
}
