//! Timestamp parsing: every time in the event model is `i64` microseconds since
//! 1970-01-01T00:00:00Z ([`TimestampUs`]).
//!
//! - Strings: RFC 3339 / ISO 8601 date-times `YYYY-MM-DDTHH:MM[:SS[.fff…]][Z|±HH:MM|±HHMM|±HH]`;
//!   the separator may also be `t` or a space, and a time without offset is taken as UTC
//!   (so `YYYY-MM-DD HH:MM:SS[.f]` is UTC). Fractions are truncated to microseconds (any
//!   number of digits is accepted, nanoseconds and beyond are dropped). A leap second
//!   (`…:60`, allowed by RFC 3339) is read as the first instant of the next minute, as
//!   PostgreSQL does.
//! - Numbers with a [`TimeUnit`]: integers in any unit (nanoseconds are floored to
//!   microseconds); floats for seconds and milliseconds (rounded to the nearest microsecond).
//!
//! Times must lie within the years 0001..=9999 ([`MIN_TIME_US`]..=[`MAX_TIME_US`]): numbers
//! and strings outside are errors ([`from_number`], [`from_json`]; [`parse_timestamp`] only
//! checks the syntax, see [`in_range`]).

use amx_dataflows::event::TimestampUs;
use chrono::{NaiveDate, NaiveTime};
use serde_json::{Number, Value};

/// The earliest time accepted: 0001-01-01T00:00:00Z (719162 days before the epoch).
pub const MIN_TIME_US: TimestampUs = -62_135_596_800_000_000;

/// The latest time accepted: 9999-12-31T23:59:59.999999Z (10000-01-01 is 2932897 days after
/// the epoch).
pub const MAX_TIME_US: TimestampUs = 253_402_300_799_999_999;

/// The accepted range of times, as error messages name it.
pub const RANGE: &str = "years 0001..=9999";

/// Whether `t` lies within the years 0001..=9999 ([`MIN_TIME_US`]..=[`MAX_TIME_US`]).
pub fn in_range(t: TimestampUs) -> bool {
    (MIN_TIME_US..=MAX_TIME_US).contains(&t)
}

/// The unit of a numeric time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimeUnit {
    /// Seconds (`s`).
    Seconds,
    /// Milliseconds (`ms`).
    Millis,
    /// Microseconds (`us`).
    Micros,
    /// Nanoseconds (`ns`).
    Nanos,
}

impl TimeUnit {
    /// Parses `s`, `ms`, `us` (or `µs`) and `ns`.
    pub fn parse(s: &str) -> Option<TimeUnit> {
        match s {
            "s" => Some(TimeUnit::Seconds),
            "ms" => Some(TimeUnit::Millis),
            "us" | "µs" => Some(TimeUnit::Micros),
            "ns" => Some(TimeUnit::Nanos),
            _ => None,
        }
    }

    /// The unit's short name: `s`, `ms`, `us` or `ns`.
    pub fn as_str(self) -> &'static str {
        match self {
            TimeUnit::Seconds => "s",
            TimeUnit::Millis => "ms",
            TimeUnit::Micros => "us",
            TimeUnit::Nanos => "ns",
        }
    }

    /// Guesses the unit of an epoch time from its magnitude: below 10^11 seconds (until the
    /// year 5138), below 10^14 milliseconds, below 10^17 microseconds, else nanoseconds.
    /// Meant for formats that do not say (e.g. a chat message's `timestamp`).
    pub fn guess(n: f64) -> TimeUnit {
        let a = n.abs();
        if a < 1e11 {
            TimeUnit::Seconds
        } else if a < 1e14 {
            TimeUnit::Millis
        } else if a < 1e17 {
            TimeUnit::Micros
        } else {
            TimeUnit::Nanos
        }
    }
}

/// `YYYY-MM-DD` → a date (digits only; invalid dates such as 2023-02-30 are None).
fn parse_date(s: &str) -> Option<NaiveDate> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |acc, &c| c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0')))
    };
    NaiveDate::from_ymd_opt(num(0..4)? as i32, num(5..7)?, num(8..10)?)
}

/// Parses an RFC 3339 / ISO 8601 date-time string (see the module docs) to microseconds since
/// the epoch, UTC. `None` when `s` is not such a string. The result is not range-checked (an
/// offset can move `0001-01-01T00:00:00+01:00` into year 0): callers check [`in_range`].
pub fn parse_timestamp(s: &str) -> Option<TimestampUs> {
    let s = s.trim();
    let date = parse_date(s.get(..10)?)?;
    let rest = s.get(10..)?;
    let rest = rest.strip_prefix(['T', 't', ' '])?;
    let mut p = Cursor { s: rest.as_bytes(), i: 0 };
    let hour = p.digits2()?;
    p.expect(b':')?;
    let minute = p.digits2()?;
    let mut second = 0;
    let mut micros = 0u32;
    if p.peek() == Some(b':') {
        p.i += 1;
        second = p.digits2()?;
        if matches!(p.peek(), Some(b'.' | b',')) {
            p.i += 1;
            let start = p.i;
            while p.peek().is_some_and(|b| b.is_ascii_digit()) {
                p.i += 1;
            }
            let digits = &p.s[start..p.i];
            if digits.is_empty() {
                return None;
            }
            for k in 0..6 {
                micros = micros * 10 + digits.get(k).map_or(0, |d| u32::from(d - b'0'));
            }
        }
    }
    let offset_secs: i64 = match p.peek() {
        None => 0,
        Some(b'Z' | b'z') => {
            p.i += 1;
            0
        }
        Some(sign @ (b'+' | b'-')) => {
            p.i += 1;
            let h = p.digits2()?;
            let m = match p.peek() {
                Some(b':') => {
                    p.i += 1;
                    p.digits2()?
                }
                Some(_) => p.digits2()?,
                None => 0,
            };
            if h > 23 || m > 59 {
                return None;
            }
            let secs = i64::from(h) * 3600 + i64::from(m) * 60;
            if sign == b'-' { -secs } else { secs }
        }
        Some(_) => return None,
    };
    if p.i != p.s.len() {
        return None;
    }
    // A leap second (`23:59:60`, which RFC 3339 allows) is the first instant of the next
    // minute, as PostgreSQL reads it: microsecond timestamps have no room for a 61st second.
    let leap = second == 60;
    let time = NaiveTime::from_hms_micro_opt(hour, minute, if leap { 59 } else { second }, micros)?;
    let local = date.and_time(time).and_utc().timestamp_micros() + if leap { 1_000_000 } else { 0 };
    local.checked_sub(offset_secs.checked_mul(1_000_000)?)
}

/// A tiny byte cursor for [`parse_timestamp`].
struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn expect(&mut self, b: u8) -> Option<()> {
        (self.peek() == Some(b)).then(|| self.i += 1)
    }
    fn digits2(&mut self) -> Option<u32> {
        let a = self.s.get(self.i).filter(|b| b.is_ascii_digit())?;
        let b = self.s.get(self.i + 1).filter(|b| b.is_ascii_digit())?;
        self.i += 2;
        Some(u32::from(a - b'0') * 10 + u32::from(b - b'0'))
    }
}

/// An integer epoch time in `unit` as microseconds; `None` on overflow.
pub fn from_int(n: i64, unit: TimeUnit) -> Option<TimestampUs> {
    match unit {
        TimeUnit::Seconds => n.checked_mul(1_000_000),
        TimeUnit::Millis => n.checked_mul(1_000),
        TimeUnit::Micros => Some(n),
        TimeUnit::Nanos => Some(n.div_euclid(1_000)),
    }
}

/// A JSON number holding an epoch time in `unit`, as microseconds.
///
/// # Errors
/// A reason when the number is out of range (outside the years 0001..=9999, see [`in_range`]),
/// or a float in `us`/`ns` (only seconds and milliseconds may have fractions).
pub fn from_number(n: &Number, unit: TimeUnit) -> Result<TimestampUs, String> {
    let out_of_range = || format!("time {n} {} is out of range ({RANGE})", unit.as_str());
    if let Some(i) = n.as_i64() {
        return from_int(i, unit).filter(|&t| in_range(t)).ok_or_else(out_of_range);
    }
    if n.is_u64() {
        return Err(out_of_range());
    }
    let f = n.as_f64().ok_or_else(out_of_range)?;
    let factor = match unit {
        TimeUnit::Seconds => 1e6,
        TimeUnit::Millis => 1e3,
        TimeUnit::Micros | TimeUnit::Nanos => {
            return Err(format!("time {n} {}: expected an integer", unit.as_str()));
        }
    };
    let us = (f * factor).round();
    // `i64::MAX as f64` is 2^63, which does not fit: require strictly less.
    if us.is_finite() && us >= i64::MIN as f64 && us < i64::MAX as f64 && in_range(us as i64) {
        // In range: the cast is exact for integral floats of this size.
        Ok(us as i64)
    } else {
        Err(out_of_range())
    }
}

/// A JSON value holding a time: an RFC 3339 string, a number in `unit`, or a string holding a
/// number in `unit` (as proto-JSON writes 64-bit integers). `Ok(None)` for null.
///
/// # Errors
/// A reason naming the value when it is none of these, or when the time is outside the years
/// 0001..=9999.
pub fn from_json(v: &Value, unit: TimeUnit) -> Result<Option<TimestampUs>, String> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => from_number(n, unit).map(Some),
        Value::String(s) => {
            if let Some(t) = parse_timestamp(s) {
                return checked_string(t, v).map(Some);
            }
            match serde_json::from_str::<Number>(s.trim()) {
                Ok(n) => from_number(&n, unit).map(Some),
                Err(_) => Err(format!("cannot parse time {}", crate::short(v))),
            }
        }
        other => Err(format!("expected a time, found {}", crate::short(other))),
    }
}

/// A time parsed from the string `v`, checked to be [`in_range`].
///
/// # Errors
/// `time "…" is out of range (years 0001..=9999)`.
pub fn checked_string(t: TimestampUs, v: &Value) -> Result<TimestampUs, String> {
    if in_range(t) { Ok(t) } else { Err(format!("time {} is out of range ({RANGE})", crate::short(v))) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // 2023-07-29T07:51:39Z = 1690617099 s (19567 days * 86400 + 7*3600 + 51*60 + 39:
    // 19567*86400 = 1690588800; + 25200 + 3060 + 39 = 1690617099).
    const T: i64 = 1_690_617_099_000_000;

    #[test]
    fn rfc3339_forms() {
        assert_eq!(parse_timestamp("2023-07-29T07:51:39Z"), Some(T));
        assert_eq!(parse_timestamp("2023-07-29t07:51:39z"), Some(T));
        assert_eq!(parse_timestamp("2023-07-29T07:51:39.5Z"), Some(T + 500_000));
        // Nanoseconds are truncated to microseconds.
        assert_eq!(parse_timestamp("2023-07-29T07:51:39.123456789Z"), Some(T + 123_456));
        assert_eq!(parse_timestamp("2023-07-29T07:51:39.1234567891234Z"), Some(T + 123_456));
        // Offsets: 09:51:39+02:00 is 07:51:39Z.
        assert_eq!(parse_timestamp("2023-07-29T09:51:39+02:00"), Some(T));
        assert_eq!(parse_timestamp("2023-07-29T09:51:39+0200"), Some(T));
        assert_eq!(parse_timestamp("2023-07-29T09:51:39+02"), Some(T));
        assert_eq!(parse_timestamp("2023-07-29T02:21:39-05:30"), Some(T));
        // Without offset: UTC, with 'T' or a space.
        assert_eq!(parse_timestamp("2023-07-29 07:51:39"), Some(T));
        assert_eq!(parse_timestamp("2023-07-29 07:51:39.000250"), Some(T + 250));
        assert_eq!(parse_timestamp("2023-07-29T07:51:39"), Some(T));
        assert_eq!(parse_timestamp("2023-07-29T07:51"), Some(T - 39_000_000));
        // Before the epoch: 1969-12-31T23:59:59.5Z is -0.5 s.
        assert_eq!(parse_timestamp("1969-12-31T23:59:59.5Z"), Some(-500_000));
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(0));
        // The leap second 2016-12-31T23:59:60Z is 2017-01-01T00:00:00Z: 17167 days after the
        // epoch (47 years, 12 of them leap years: 47*365+12 = 17167), 17167*86400 = 1483228800 s.
        assert_eq!(parse_timestamp("2016-12-31T23:59:60Z"), Some(1_483_228_800_000_000));
        assert_eq!(parse_timestamp("2016-12-31T23:59:60.25Z"), Some(1_483_228_800_250_000));
        // With an offset: 2017-01-01T00:59:60+01:00 is the same instant.
        assert_eq!(parse_timestamp("2017-01-01T00:59:60+01:00"), Some(1_483_228_800_000_000));
    }

    #[test]
    fn bad_strings() {
        for s in [
            "",
            "2023-07-29",
            "2023-07-29T",
            "2023-13-01T00:00:00Z",
            "2023-07-29T25:00:00Z",
            "2023-07-29T07:51:39.Z",
            "2023-07-29T07:51:39Zjunk",
            "2023-07-29T07:51:39+2",
            "yesterday",
            "1690617099",
            "2023-07-29X07:51:39Z",
            "é023-07-29T07:51:39Z",
        ] {
            assert_eq!(parse_timestamp(s), None, "{s}");
        }
    }

    #[test]
    fn numbers_with_units() {
        let n = |v: serde_json::Value| match v {
            serde_json::Value::Number(n) => n,
            _ => Number::from(0),
        };
        assert_eq!(from_number(&n(json!(1690617099)), TimeUnit::Seconds), Ok(T));
        assert_eq!(from_number(&n(json!(1690617099123_i64)), TimeUnit::Millis), Ok(T + 123_000));
        assert_eq!(from_number(&n(json!(1690617099000001_i64)), TimeUnit::Micros), Ok(T + 1));
        assert_eq!(from_number(&n(json!(1690617099000001999_i64)), TimeUnit::Nanos), Ok(T + 1));
        // -1 ns floors to -1 µs.
        assert_eq!(from_number(&n(json!(-1)), TimeUnit::Nanos), Ok(-1));
        assert_eq!(from_number(&n(json!(1.5)), TimeUnit::Seconds), Ok(1_500_000));
        assert_eq!(from_number(&n(json!(2.25)), TimeUnit::Millis), Ok(2_250));
        assert!(from_number(&n(json!(1.5)), TimeUnit::Micros).is_err());
        assert!(from_number(&n(json!(1e300)), TimeUnit::Seconds).is_err());
        assert!(from_number(&n(json!(i64::MAX)), TimeUnit::Seconds).is_err());
        assert!(from_number(&n(json!(u64::MAX)), TimeUnit::Micros).is_err());
    }

    #[test]
    fn json_values() {
        assert_eq!(from_json(&json!(null), TimeUnit::Seconds), Ok(None));
        assert_eq!(from_json(&json!("2023-07-29T07:51:39Z"), TimeUnit::Seconds), Ok(Some(T)));
        assert_eq!(from_json(&json!("1690617099"), TimeUnit::Seconds), Ok(Some(T)));
        assert_eq!(from_json(&json!(1690617099), TimeUnit::Seconds), Ok(Some(T)));
        assert_eq!(from_json(&json!("soon"), TimeUnit::Seconds), Err("cannot parse time \"soon\"".to_owned()));
        assert_eq!(from_json(&json!(true), TimeUnit::Seconds), Err("expected a time, found true".to_owned()));
    }

    #[test]
    fn year_range() {
        let n = |v: serde_json::Value| match v {
            serde_json::Value::Number(n) => n,
            _ => Number::from(0),
        };
        // 0001-01-01T00:00:00Z: 719162 days before 1970 (1969 years, 477 of them leap years).
        assert_eq!(parse_timestamp("0001-01-01T00:00:00Z"), Some(MIN_TIME_US));
        // 10000-01-01: 2932897 days after 1970 (8030 years, 1947 leap years); minus 1 µs.
        assert_eq!(parse_timestamp("9999-12-31T23:59:59.999999Z"), Some(MAX_TIME_US));
        assert!(in_range(MIN_TIME_US) && in_range(MAX_TIME_US));
        assert!(!in_range(MIN_TIME_US - 1) && !in_range(MAX_TIME_US + 1));
        assert_eq!(from_number(&n(json!(-62_135_596_800_i64)), TimeUnit::Seconds), Ok(MIN_TIME_US));
        assert_eq!(
            from_number(&n(json!(-62_135_596_801_i64)), TimeUnit::Seconds),
            Err("time -62135596801 s is out of range (years 0001..=9999)".to_owned())
        );
        assert_eq!(
            from_number(&n(json!(253_402_300_800_i64)), TimeUnit::Seconds),
            Err("time 253402300800 s is out of range (years 0001..=9999)".to_owned())
        );
        assert_eq!(from_number(&n(json!(253_402_300_799_999_999_i64)), TimeUnit::Micros), Ok(MAX_TIME_US));
        assert!(from_number(&n(json!(253_402_300_800.0)), TimeUnit::Seconds).is_err());
        assert_eq!(
            from_json(&json!("9999-12-31T23:59:59.999999-00:01"), TimeUnit::Seconds),
            Err("time \"9999-12-31T23:59:59.999999-00:01\" is out of range (years 0001..=9999)".to_owned())
        );
    }

    #[test]
    fn units() {
        for u in [TimeUnit::Seconds, TimeUnit::Millis, TimeUnit::Micros, TimeUnit::Nanos] {
            assert_eq!(TimeUnit::parse(u.as_str()), Some(u));
        }
        assert_eq!(TimeUnit::parse("min"), None);
        assert_eq!(TimeUnit::guess(1_690_617_099.0), TimeUnit::Seconds);
        assert_eq!(TimeUnit::guess(1_690_617_099_000.0), TimeUnit::Millis);
        assert_eq!(TimeUnit::guess(1_690_617_099_000_000.0), TimeUnit::Micros);
        assert_eq!(TimeUnit::guess(1.690_617_099e18), TimeUnit::Nanos);
    }
}
