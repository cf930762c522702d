//! Input domains, checked at the edge.
//!
//! Every value that reaches PostgreSQL from a request body, a query string, a token claim or the command
//! line passes one of these checks first, so that a value that passes is never refused by the database
//! (a refusal there would surface as a 500 or a failed command with a database message). The checks say
//! what the column accepts:
//!
//! - text: no NUL character (PostgreSQL's `text` cannot store U+0000), at most so many characters
//!   (`length()` in PostgreSQL counts characters, as `chars()` does here);
//! - timestamps: between 0001-01-01 and 9999-12-31 (inside PostgreSQL's and chrono's ranges, and
//!   representable in RFC 3339, which has four-digit years), at PostgreSQL's microsecond precision;
//! - numbers: finite and inside the column's CHECK range;
//! - identifiers: the pattern of the column's CHECK constraint.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, SubsecRound, Utc};
use std::ops::RangeInclusive;

/// A value outside its domain. `field` is the name the caller used (a JSON field such as `title`, a
/// query parameter, or a command-line flag such as `--name`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {message}")]
pub struct InvalidInput {
    /// The name the caller used for the value.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl InvalidInput {
    /// `field`'s value is refused because of `message`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// A check's result: the checked value, or why it is refused.
pub type Result<T, E = InvalidInput> = std::result::Result<T, E>;

/// Longest part of a refused value quoted back in an error message, in characters.
pub const ECHO_CHARS: usize = 64;

/// How a refused value is quoted in an error message: Debug-quoted (so control characters show), cut
/// after [`ECHO_CHARS`] characters with the number left out, so a 60,000-character id is not sent back
/// whole (nor written whole into a log line).
pub fn echo(raw: &str) -> String {
    let total = raw.chars().count();
    if total <= ECHO_CHARS {
        return format!("{raw:?}");
    }
    let head: String = raw.chars().take(ECHO_CHARS).collect();
    format!("{head:?}… ({} more characters)", total - ECHO_CHARS)
}

/// Text for a `text` column: no NUL, at most `max_chars` characters. Returns it unchanged.
pub fn text<'a>(field: &str, value: &'a str, max_chars: usize) -> Result<&'a str> {
    if value.contains('\0') {
        return Err(InvalidInput::new(field, "must not contain the NUL character (U+0000)"));
    }
    let chars = value.chars().count();
    if chars > max_chars {
        return Err(InvalidInput::new(field, format!("is {chars} characters long; the limit is {max_chars}")));
    }
    Ok(value)
}

/// Like [`text`], for a column that must not be empty: the value is trimmed first and returned trimmed
/// (that is what is stored).
pub fn required_text<'a>(field: &str, value: &'a str, max_chars: usize) -> Result<&'a str> {
    let trimmed = text(field, value.trim(), max_chars)?;
    if trimmed.is_empty() {
        return Err(InvalidInput::new(field, "must not be empty"));
    }
    Ok(trimmed)
}

/// Earliest timestamp accepted: 0001-01-01T00:00:00Z.
pub fn earliest_timestamp() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(1, 1, 1).unwrap_or(NaiveDate::MIN).and_time(NaiveTime::MIN).and_utc()
}

/// Latest timestamp accepted: 9999-12-31T23:59:59.999999Z.
pub fn latest_timestamp() -> DateTime<Utc> {
    let last_day = NaiveDate::from_ymd_opt(9999, 12, 31).unwrap_or(NaiveDate::MAX);
    last_day.and_hms_micro_opt(23, 59, 59, 999_999).unwrap_or(NaiveDateTime::MAX).and_utc()
}

/// A timestamp for a `timestamptz` column: inside [`earliest_timestamp`]..=[`latest_timestamp`], and
/// returned truncated to microseconds, which is what PostgreSQL stores. Compare the returned values, not
/// the originals: two instants a few nanoseconds apart are one instant in the database.
pub fn timestamp(field: &str, value: DateTime<Utc>) -> Result<DateTime<Utc>> {
    if value < earliest_timestamp() || value > latest_timestamp() {
        return Err(InvalidInput::new(
            field,
            format!("{} is outside the supported range 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z", value),
        ));
    }
    Ok(value.trunc_subsecs(6))
}

/// A seconds-since-the-epoch instant (a token's `exp`) as a timestamp inside the same range.
pub fn unix_seconds(field: &str, seconds: i64) -> Result<DateTime<Utc>> {
    let value = DateTime::from_timestamp(seconds, 0)
        .ok_or_else(|| InvalidInput::new(field, format!("{seconds} is not a representable time")))?;
    timestamp(field, value)
}

/// A `double precision` value under a CHECK (`BETWEEN lo AND hi`): finite and inside `range`.
pub fn number(field: &str, value: f64, range: RangeInclusive<f64>) -> Result<f64> {
    if !value.is_finite() || !range.contains(&value) {
        return Err(InvalidInput::new(
            field,
            format!("{value} is not a number between {} and {}", range.start(), range.end()),
        ));
    }
    Ok(value)
}

/// At most `max` items in a list.
pub fn count(field: &str, len: usize, max: usize) -> Result<()> {
    if len > max {
        return Err(InvalidInput::new(field, format!("has {len} items; at most {max} are allowed")));
    }
    Ok(())
}

/// A dispatcher id: `^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$` (the `dispatchers.id` CHECK).
pub fn dispatcher_id<'a>(field: &str, value: &'a str) -> Result<&'a str> {
    let b = value.as_bytes();
    let ok = b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.len() <= 64
        && b.iter().all(|c| c.is_ascii_alphanumeric() || b"._@-".contains(c));
    if ok {
        Ok(value)
    } else {
        Err(InvalidInput::new(
            field,
            format!("{} is not a dispatcher id (letters, digits, '.', '_', '@', '-'; at most 64)", echo(value)),
        ))
    }
}

/// A region key or skill: `^[a-z0-9][a-z0-9_-]{0,31}$` (the `regions.key` CHECK).
pub fn is_key(value: &str) -> bool {
    let b = value.as_bytes();
    b.first().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && b.len() <= 32
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn text_refuses_nul_and_counts_characters_not_bytes() {
        assert!(text("title", "Fix\0boiler", 200).is_err());
        assert_eq!(text("title", &"é".repeat(200), 200), Ok("é".repeat(200).as_str()));
        assert!(text("title", &"é".repeat(201), 200).is_err());
        assert_eq!(required_text("name", "  Erin  ", 10), Ok("Erin"));
        assert!(required_text("name", " \t ", 10).is_err());
    }

    #[test]
    fn timestamps_stay_inside_rfc_3339_years_and_lose_nanoseconds() {
        assert!(timestamp("t", Utc.with_ymd_and_hms(-5000, 1, 1, 0, 0, 0).unwrap()).is_err());
        assert!(timestamp("t", Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap()).is_err());
        assert!(timestamp("t", earliest_timestamp()).is_ok());
        assert!(timestamp("t", latest_timestamp()).is_ok());
        let a = Utc.timestamp_opt(1_800_000_000, 100).unwrap();
        let b = Utc.timestamp_opt(1_800_000_000, 900).unwrap();
        assert_eq!(timestamp("t", a), timestamp("t", b), "one microsecond in PostgreSQL");
        assert!(unix_seconds("exp", i64::MAX).is_err());
        assert!(unix_seconds("exp", 253_402_300_800).is_err(), "year 10000");
    }

    #[test]
    fn numbers_are_finite_and_in_range() {
        assert!(number("lat", f64::NAN, -90.0..=90.0).is_err());
        assert!(number("lat", f64::INFINITY, -90.0..=90.0).is_err());
        assert!(number("lat", 90.000001, -90.0..=90.0).is_err());
        assert_eq!(number("lat", -90.0, -90.0..=90.0), Ok(-90.0));
    }

    #[test]
    fn dispatcher_ids_follow_the_column_check() {
        for ok in ["alice", "a", "a.b_c@d-e", &"a".repeat(64)] {
            assert!(dispatcher_id("id", ok).is_ok(), "{ok}");
        }
        for bad in ["", ".a", "a b", "a\0", "é", &"a".repeat(65)] {
            assert!(dispatcher_id("id", bad).is_err(), "{bad:?}");
        }
    }
}
