//! Time display: RFC 3339 (UTC) and short ages like "5m". Written here rather
//! than pulling in a date crate: only UTC formatting is needed.
use std::time::Duration;

use prost_types::Timestamp;

/// Converts days since 1970-01-01 into a (year, month, day) civil date
/// (proleptic Gregorian; Howard Hinnant's `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Both values are in range by construction.
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

/// RFC 3339 in UTC with the sub-second part trimmed of trailing zeros
/// (omitted when zero), e.g. `2024-05-01T12:30:00.25Z`.
pub fn rfc3339(t: &Timestamp) -> String {
    let base = rfc3339_seconds(t);
    let nanos = t.nanos.clamp(0, 999_999_999);
    if nanos == 0 {
        return base;
    }
    let frac = format!("{nanos:09}");
    let frac = frac.trim_end_matches('0');
    let whole = base.strip_suffix('Z').unwrap_or(&base);
    format!("{whole}.{frac}Z")
}

/// RFC 3339 in UTC at whole seconds, e.g. `2024-05-01T12:30:00Z`.
pub fn rfc3339_seconds(t: &Timestamp) -> String {
    let days = t.seconds.div_euclid(86_400);
    let secs = t.seconds.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Short age of something that happened `elapsed` ago: "42s", "5m", "3h", "2d".
pub fn age(elapsed: Duration) -> String {
    let s = elapsed.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Time between `then` and `now`; zero if `then` is in the future (clock skew).
pub fn elapsed(then: &Timestamp, now: &Timestamp) -> Duration {
    let ms = minkube::convert::millis(now).saturating_sub(minkube::convert::millis(then));
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// Age of an optional timestamp relative to `now`, "-" when absent.
pub fn age_of(t: Option<&Timestamp>, now: &Timestamp) -> String {
    t.map_or_else(|| "-".to_string(), |t| age(elapsed(t, now)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(seconds: i64, nanos: i32) -> Timestamp {
        Timestamp { seconds, nanos }
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(19_783), (2024, 3, 1));
    }

    #[test]
    fn rfc3339_formats() {
        assert_eq!(rfc3339(&ts(0, 0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(&ts(1_700_000_000, 0)), "2023-11-14T22:13:20Z");
        assert_eq!(
            rfc3339(&ts(1_700_000_000, 123_000_000)),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(
            rfc3339(&ts(1_700_000_000, 5)),
            "2023-11-14T22:13:20.000000005Z"
        );
        assert_eq!(
            rfc3339_seconds(&ts(1_700_000_000, 999_000_000)),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(rfc3339(&ts(-1, 0)), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn ages() {
        assert_eq!(age(Duration::from_secs(0)), "0s");
        assert_eq!(age(Duration::from_secs(59)), "59s");
        assert_eq!(age(Duration::from_secs(61)), "1m");
        assert_eq!(age(Duration::from_secs(7200)), "2h");
        assert_eq!(age(Duration::from_secs(3 * 86_400)), "3d");
        let now = ts(1000, 0);
        assert_eq!(age_of(Some(&ts(990, 0)), &now), "10s");
        assert_eq!(age_of(Some(&ts(2000, 0)), &now), "0s");
        assert_eq!(age_of(None, &now), "-");
    }
}
