//! Calendar arithmetic for timestamps (proleptic Gregorian, UTC) without a
//! calendar dependency: RFC 3339 rendering shared by every crate that writes
//! timestamps.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds per day.
const US_PER_DAY: i64 = 86_400_000_000;

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date (year, month, day) of a day number since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Microseconds since the epoch of a `SystemTime` (0 for times before it).
pub fn system_time_us(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `2026-11-27T23:22:01.123Z` for a microsecond timestamp.
pub fn format_rfc3339_us(us: i64) -> String {
    let (y, m, d) = civil_from_days(us.div_euclid(US_PER_DAY));
    let rem = us.rem_euclid(US_PER_DAY);
    let secs = rem / 1_000_000;
    let millis = (rem % 1_000_000) / 1000;
    if (0..=9999).contains(&y) {
        // Digit by digit into a buffer: `format!` cost ~3.5 k instructions
        // per call, and every usage record formats one.
        let mut out = *b"0000-00-00T00:00:00.000Z";
        put_digits(&mut out[0..4], y);
        put_digits(&mut out[5..7], i64::from(m));
        put_digits(&mut out[8..10], i64::from(d));
        put_digits(&mut out[11..13], secs / 3600);
        put_digits(&mut out[14..16], (secs / 60) % 60);
        put_digits(&mut out[17..19], secs % 60);
        put_digits(&mut out[20..23], millis);
        // ASCII digits and separators: always UTF-8.
        return std::str::from_utf8(&out)
            .map(str::to_owned)
            .unwrap_or_default();
    }
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

/// Writes the lowest decimal digits of `n` (0 ≤ n) into `out`, zero-padded.
fn put_digits(out: &mut [u8], mut n: i64) {
    for slot in out.iter_mut().rev() {
        // `rem_euclid(10)` is 0..=9.
        *slot = b'0' + n.rem_euclid(10) as u8;
        n /= 10;
    }
}

/// `2026-11-27T23:22:01.123Z` for a `SystemTime`.
pub fn rfc3339(t: SystemTime) -> String {
    format_rfc3339_us(system_time_us(t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_utc_with_milliseconds() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_764_285_721_123);
        assert_eq!(rfc3339(t), "2025-11-27T23:22:01.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
        assert_eq!(days_from_civil(2000, 2, 29), 11_016);
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn the_fast_format_matches_the_general_one() {
        let general = |us: i64| {
            let (y, m, d) = civil_from_days(us.div_euclid(US_PER_DAY));
            let rem = us.rem_euclid(US_PER_DAY);
            let secs = rem / 1_000_000;
            format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
                secs / 3600,
                (secs / 60) % 60,
                secs % 60,
                (rem % 1_000_000) / 1000
            )
        };
        let mut us: i64 = 0;
        for _ in 0..10_000 {
            assert_eq!(format_rfc3339_us(us), general(us));
            us = us
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407)
                % 400_000_000_000_000_000;
        }
        // Outside years 0–9999 the general path answers.
        assert_eq!(
            format_rfc3339_us(-62_167_219_200_000_001),
            general(-62_167_219_200_000_001)
        );
        assert_eq!(
            format_rfc3339_us(253_402_300_800_000_000),
            "10000-01-01T00:00:00.000Z"
        );
    }
}
