//! Times as the agent keeps and writes them: RFC 3339 with nanoseconds (Go's
//! `time.RFC3339Nano` shape, UTC, from `api::time`), as the CRI log format and status
//! times use them, and nanoseconds since the epoch in its state files.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use api::time::rfc3339_nano;

/// Nanoseconds since the epoch, the form state files keep times in.
pub fn to_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

pub fn from_nanos(n: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_nano(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        // 2000-02-29T12:34:56.000000007Z: a leap day in a century leap year.
        let t = UNIX_EPOCH + Duration::new(951_827_696, 7);
        assert_eq!(rfc3339_nano(t), "2000-02-29T12:34:56.000000007Z");
        let t = UNIX_EPOCH + Duration::new(1_795_478_454, 123_000_000);
        assert_eq!(rfc3339_nano(t), "2026-11-24T00:00:54.123000000Z");
        assert_eq!(from_nanos(to_nanos(t)), t);
    }
}
