//! Timestamps as Kubernetes writes them (RFC 3339 in UTC), in one place for every crate;
//! written here rather than pulling in a calendar crate for a few functions.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Days since 1970-01-01 to a (year, month, day) in the proleptic Gregorian calendar
/// (counted in 400-year eras from 0000-03-01, so leap days fall at the end of a year).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Seconds since the epoch as `2006-01-02T15:04:05Z`.
pub fn rfc3339(unix: i64) -> String {
    let (y, mo, d) = civil_from_days(unix.div_euclid(86_400));
    let s = unix.rem_euclid(86_400);
    format!("{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z", s / 3600, s % 3600 / 60, s % 60)
}

/// `2026-11-24T00:00:54.123456789Z`: always nine fractional digits, which every RFC 3339
/// parser (Go's included) accepts and which sorts as text.
pub fn rfc3339_nano(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs() as i64;
    let (y, mo, day) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!("{y:04}-{mo:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z", s / 3600, s / 60 % 60, s % 60, d.subsec_nanos())
}

/// A (year, month, day) to days since 1970-01-01; the inverse of [`civil_from_days`].
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from(if month > 2 { month - 3 } else { month + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2006-01-02T15:04:05[.fraction](Z|±hh:mm)` to an instant; `None` for anything else.
/// Kubernetes writes the `Z` forms (with any number of fractional digits); other services'
/// timestamps (Keystone's token expiry) may carry an offset.
pub fn parse_rfc3339_instant(s: &str) -> Option<SystemTime> {
    let (secs, nanos) = parse_parts(s)?;
    Some(UNIX_EPOCH + Duration::new(u64::try_from(secs).ok()?, nanos))
}

/// [`parse_rfc3339_instant`] in whole seconds since the epoch (the fraction dropped; before
/// the epoch is negative).
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    parse_parts(s).map(|(secs, _)| secs)
}

/// Seconds since the epoch and the nanoseconds of the fraction.
fn parse_parts(s: &str) -> Option<(i64, u32)> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { num_of(s.get(r)?) };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if b[16] != b':' || !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        nanos = format!("{:0<9}", &frac[..digits.min(9)]).parse().ok()?;
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.as_bytes()[3] != b':' {
                return None;
            }
            sign * (num_of(&rest[1..3])? * 3600 + num_of(&rest[4..6])? * 60)
        }
    };
    let days = days_from_civil(year, month as u32, day as u32);
    Some((days * 86_400 + hour * 3600 + minute * 60 + second.min(60) - offset, nanos))
}

fn num_of(t: &str) -> Option<i64> {
    if t.bytes().all(|c| c.is_ascii_digit()) { t.parse().ok() } else { None }
}

/// A duration as operators write them: a number and a unit, `s`, `m`, `h` or `d` (`90s`,
/// `30m`, `12h`, `7d`), or several in a row (`1h30m`). Zero is refused: a credential or
/// cache that lives for no time is a mistake, not a setting.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let mut total: u64 = 0;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err("an empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let Some(unit) = rest[digits..].chars().next() else {
            return Err(format!("{s:?}: a number needs a unit (s, m, h or d)"));
        };
        let n: u64 = rest[..digits].parse().map_err(|_| format!("{s:?}: expected a number before {unit:?}"))?;
        let scale = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(format!("{s:?}: unknown unit {unit:?} (use s, m, h or d)")),
        };
        total = n.checked_mul(scale).and_then(|v| total.checked_add(v)).ok_or_else(|| format!("{s:?} is too long"))?;
        rest = &rest[digits + unit.len_utf8()..];
    }
    if total == 0 {
        return Err(format!("{s:?} is no time at all"));
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_348_164), "2026-11-22T11:49:24Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
        assert_eq!(rfc3339_nano(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::new(951_827_696, 7);
        assert_eq!(rfc3339_nano(t), "2000-02-29T12:34:56.000000007Z");
    }

    #[test]
    fn parses_what_it_writes_and_keystones_form() {
        for t in [0, 951_782_400, 1_795_348_164, 4_102_444_799, -86_400] {
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t), "{t}");
            let (y, m, d) = civil_from_days(t.div_euclid(86_400));
            assert_eq!(days_from_civil(y, m, d), t.div_euclid(86_400));
        }
        assert_eq!(parse_rfc3339("2026-11-22T11:49:24.000000Z"), Some(1_795_348_164));
        assert_eq!(parse_rfc3339("2026-11-22T12:49:24+01:00"), Some(1_795_348_164));
        for bad in [
            "",
            "2026-11-22",
            "2026-13-22T11:49:24Z",
            "2026-11-22T11:49:24",
            "2026-11-22T11:49:24.Z",
            "x026-11-22T11:49:24Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn parses_instants_to_the_nanosecond() {
        for unix in [0, 951_782_400, 1_795_348_164, 4_102_444_799] {
            assert_eq!(parse_rfc3339_instant(&rfc3339(unix)), Some(UNIX_EPOCH + Duration::from_secs(unix as u64)));
        }
        let t = UNIX_EPOCH + Duration::new(951_827_696, 7);
        assert_eq!(parse_rfc3339_instant(&rfc3339_nano(t)), Some(t));
        assert_eq!(
            parse_rfc3339_instant("2026-11-24T00:00:54.123456Z"),
            Some(UNIX_EPOCH + Duration::new(1_795_478_454, 123_456_000))
        );
        for bad in ["", "2026-11-24", "2026-13-01T00:00:00Z", "2026-11-24T00:00:54.Z"] {
            assert_eq!(parse_rfc3339_instant(bad), None, "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        for bad in ["", "0s", "30", "m", "3w", "-1h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
