//! Reading rule values (always strings) as numbers, booleans and dates.

use std::cmp::Ordering;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde_json::Number;

/// A number read from a rule value or a document: exact integers stay exact.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Num {
    Int(i128),
    Float(f64),
}

impl Num {
    /// A finite number written as text (`42`, `-3.5`, `1e3`); `None` otherwise (also for `NaN`
    /// and infinities, which Rust's float parser would accept).
    pub(crate) fn parse(s: &str) -> Option<Num> {
        let s = s.trim();
        if s.is_empty() {
            return None;
        }
        if let Ok(i) = s.parse::<i128>() {
            return Some(Num::Int(i));
        }
        // Only plain decimal notation: no "inf", "NaN", hex, …
        if !s
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E'))
        {
            return None;
        }
        s.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Num::Float)
    }

    pub(crate) fn from_json(n: &Number) -> Option<Num> {
        if let Some(i) = n.as_i64() {
            Some(Num::Int(i128::from(i)))
        } else if let Some(u) = n.as_u64() {
            Some(Num::Int(i128::from(u)))
        } else {
            n.as_f64().filter(|f| f.is_finite()).map(Num::Float)
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            // Precision loss only beyond 2^53, where the other side is a float anyway.
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }

    /// Numeric comparison (exact for two integers).
    pub(crate) fn compare(self, other: Num) -> Option<Ordering> {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => Some(a.cmp(&b)),
            (a, b) => a.as_f64().partial_cmp(&b.as_f64()),
        }
    }
}

/// A boolean written as text: `true|t|yes|y|on|1` and `false|f|no|n|off|0`, case-insensitive.
pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "t" | "yes" | "y" | "on" | "1" => Some(true),
        "false" | "f" | "no" | "n" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// An instant written as text: RFC 3339 (`2024-05-01T10:00:00Z`, any offset, `T` or a space),
/// a date-time without offset (read as UTC), or a date alone (midnight UTC).
pub(crate) fn parse_date(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    // Cheap filter: every accepted form starts with `YYYY-MM-DD`.
    let b = s.as_bytes();
    if b.len() < 10 || !b[..4].iter().all(u8::is_ascii_digit) || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%dT%H:%M:%S%.f%z",
        "%Y-%m-%d %H:%M:%S%.f%z",
    ] {
        if let Ok(t) = DateTime::parse_from_str(s, fmt) {
            return Some(t.with_timezone(&Utc));
        }
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(Num::parse("42"), Some(Num::Int(42)));
        assert_eq!(Num::parse(" -7 "), Some(Num::Int(-7)));
        assert_eq!(Num::parse("2.5"), Some(Num::Float(2.5)));
        assert_eq!(Num::parse("1e3"), Some(Num::Float(1000.0)));
        for bad in [
            "",
            "abc",
            "inf",
            "NaN",
            "infinity",
            "0x10",
            "1,5",
            "2024-01-01",
        ] {
            assert_eq!(Num::parse(bad), None, "{bad}");
        }
        assert_eq!(
            Num::Int(9_007_199_254_740_993).compare(Num::Int(9_007_199_254_740_992)),
            Some(Ordering::Greater)
        );
        assert_eq!(Num::Int(2).compare(Num::Float(2.0)), Some(Ordering::Equal));
    }

    #[test]
    fn booleans() {
        for t in ["true", "TRUE", "t", "yes", "Y", "on", "1"] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["false", "F", "no", "n", "OFF", "0"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        assert_eq!(parse_bool("maybe"), None);
        assert_eq!(parse_bool(""), None);
    }

    #[test]
    fn dates() {
        let utc = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let table = [
            ("2024-05-01T10:00:00Z", Some("2024-05-01T10:00:00Z")),
            ("2024-05-01T12:00:00+02:00", Some("2024-05-01T10:00:00Z")),
            ("2024-05-01 12:00:00+02:00", Some("2024-05-01T10:00:00Z")),
            (
                "2024-05-01T10:00:00.123456+00:00",
                Some("2024-05-01T10:00:00.123456Z"),
            ),
            ("2024-05-01T10:00:00+0000", Some("2024-05-01T10:00:00Z")),
            ("2024-05-01T10:00:00", Some("2024-05-01T10:00:00Z")),
            ("2024-05-01 10:00", Some("2024-05-01T10:00:00Z")),
            ("2024-05-01", Some("2024-05-01T00:00:00Z")),
            ("2024-13-01", None),
            ("2024", None),
            ("yesterday", None),
            ("", None),
        ];
        for (text, expected) in table {
            assert_eq!(parse_date(text), expected.map(utc), "{text}");
        }
    }
}
