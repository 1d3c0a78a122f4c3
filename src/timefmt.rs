//! Moments as people read them in logs and reports: `2026-12-07 15:23:59
//! UTC` (proleptic Gregorian calendar, no time zone database needed).

/// A moment as `2026-12-07 18:45:12 UTC` (proleptic Gregorian calendar).
pub fn utc_time(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc_from_unix(secs)
}

/// Unix seconds as `2026-12-07 18:45:12 UTC`.
pub fn utc_from_unix(secs: u64) -> String {
    // Days to a civil date: H. Hinnant's algorithm ("chrono-Compatible
    // Low-Level Date Algorithms"), for days since 1970-01-01.
    let days = (secs / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn unix_seconds_read_as_utc_dates() {
        assert_eq!(super::utc_from_unix(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::utc_from_unix(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(
            super::utc_from_unix(1_796_657_039),
            "2026-12-07 15:23:59 UTC"
        );
        assert_eq!(
            super::utc_from_unix(4_102_444_799),
            "2099-12-31 23:59:59 UTC"
        );
    }
}
