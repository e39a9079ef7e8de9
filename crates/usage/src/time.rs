//! Timestamps: microseconds since the Unix epoch, RFC 3339 rendering, and
//! the ISO 8601 forms the query filters accept. Calendar arithmetic is done
//! here (proleptic Gregorian, UTC) to keep dependencies small.

/// Microseconds per second.
const US_PER_SEC: i64 = 1_000_000;
/// Microseconds per day.
const US_PER_DAY: i64 = 86_400 * US_PER_SEC;

/// Which end of a date-only value a filter means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateBound {
    /// `2026-01-02` means its first microsecond.
    Start,
    /// `2026-01-02` means its last microsecond (inclusive end).
    End,
}

use llm_proxy_core::time::days_from_civil;
pub use llm_proxy_core::time::{format_rfc3339_us as format_rfc3339, system_time_us};

/// UTC hour of day, 0–23.
pub fn hour_of_day(us: i64) -> u8 {
    (us.rem_euclid(US_PER_DAY) / (3600 * US_PER_SEC)) as u8
}

/// UTC weekday, 0 = Monday … 6 = Sunday.
pub fn day_of_week(us: i64) -> u8 {
    // 1970-01-01 was a Thursday (3 when Monday is 0).
    ((us.div_euclid(US_PER_DAY) + 3).rem_euclid(7)) as u8
}

/// Start of the UTC hour containing `us`.
pub fn hour_floor(us: i64) -> i64 {
    us - us.rem_euclid(3600 * US_PER_SEC)
}

/// Parses `YYYY-MM-DD`, or `YYYY-MM-DDTHH:MM[:SS[.fraction]]` with `Z` or a
/// `±HH:MM` offset (a space may replace `T`; no zone means UTC).
pub fn parse_instant(s: &str, bound: DateBound) -> Result<i64, String> {
    let bad = || {
        format!(
            "{s:?} is not an ISO 8601 date or date-time (e.g. 2026-01-31 or 2026-01-31T12:00:00Z)"
        )
    };
    let s = s.trim();
    let b = s.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Result<u32, String> {
        let part = s.get(range).ok_or_else(bad)?;
        if part.is_empty() || !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse::<u32>().map_err(|_| bad())
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad());
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&mo) || d == 0 || d > days_in_month(i64::from(y), mo) {
        return Err(bad());
    }
    let day_us = days_from_civil(i64::from(y), mo, d) * US_PER_DAY;
    if b.len() == 10 {
        return Ok(match bound {
            DateBound::Start => day_us,
            DateBound::End => day_us + US_PER_DAY - 1,
        });
    }
    if !matches!(b[10], b'T' | b't' | b' ') || b.len() < 16 || b[13] != b':' {
        return Err(bad());
    }
    let (h, mi) = (num(11..13)?, num(14..16)?);
    let mut i = 16;
    let mut sec = 0;
    let mut frac_us = 0i64;
    if b.get(i) == Some(&b':') {
        sec = num(i + 1..i + 3)?;
        i += 3;
        if b.get(i) == Some(&b'.') {
            let start = i + 1;
            let mut end = start;
            while end < b.len() && b[end].is_ascii_digit() {
                end += 1;
            }
            if end == start {
                return Err(bad());
            }
            let digits = &s[start..end.min(start + 6)];
            frac_us = i64::from(digits.parse::<u32>().map_err(|_| bad())?)
                * 10i64.pow(6 - digits.len() as u32);
            i = end;
        }
    }
    if h > 23 || mi > 59 || sec > 60 {
        return Err(bad());
    }
    let offset_us = match &s[i..] {
        "" | "Z" | "z" => 0,
        zone => {
            let zb = zone.as_bytes();
            if zone.len() != 6 || !matches!(zb[0], b'+' | b'-') || zb[3] != b':' {
                return Err(bad());
            }
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            let v = (i64::from(oh) * 3600 + i64::from(om) * 60) * US_PER_SEC;
            if zb[0] == b'-' { -v } else { v }
        }
    };
    Ok(
        day_us + (i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(sec)) * US_PER_SEC + frac_us
            - offset_us,
    )
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_round_trip() {
        let us = parse_instant("2026-11-27T23:22:01.123Z", DateBound::Start).unwrap();
        assert_eq!(format_rfc3339(us), "2026-11-27T23:22:01.123Z");
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000Z");
        let with_offset = parse_instant("2026-11-28T01:22:01.123+02:00", DateBound::Start).unwrap();
        assert_eq!(us, with_offset);
    }

    #[test]
    fn date_only_bounds_are_inclusive_days() {
        let start = parse_instant("2026-02-28", DateBound::Start).unwrap();
        let end = parse_instant("2026-02-28", DateBound::End).unwrap();
        assert_eq!(end - start, US_PER_DAY - 1);
        assert!(parse_instant("2026-02-29", DateBound::Start).is_err());
        assert!(parse_instant("2024-02-29", DateBound::Start).is_ok());
        assert!(parse_instant("2026-13-01", DateBound::Start).is_err());
        assert!(parse_instant("yesterday", DateBound::Start).is_err());
        assert!(parse_instant("2026-01-01T25:00Z", DateBound::Start).is_err());
    }

    #[test]
    fn weekday_and_hour() {
        // 2026-11-27 is a Friday.
        let us = parse_instant("2026-11-27T23:30:00Z", DateBound::Start).unwrap();
        assert_eq!(day_of_week(us), 4);
        assert_eq!(hour_of_day(us), 23);
        assert_eq!(format_rfc3339(hour_floor(us)), "2026-11-27T23:00:00.000Z");
    }
}
