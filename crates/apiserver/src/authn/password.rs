//! Passwords: argon2id hashes in PHC string form, and the throttle on failed attempts.
//!
//! Parameters: argon2id, 19 MiB of memory, 2 passes, 1 lane, 16-byte random salt, 32-byte
//! output: OWASP's recommended minimum for argon2id, and the `argon2` crate's defaults.
//! One verification cost 78 ms (p50) on the shared 2-core development machine
//! (`atoll bench password`, BENCHMARKS.md), some 300 times a token check: cheap for one
//! login an hour, ruinous for guessing. It runs on the blocking pool, never on the async
//! threads.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

/// Passwords longer than this are refused (hashing cost grows with length).
pub const MAX_PASSWORD_BYTES: usize = 1024;

fn hasher() -> argon2::Argon2<'static> {
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, argon2::Params::DEFAULT)
}

/// The PHC string (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`) of `password`.
pub fn hash(password: &str) -> Result<String, String> {
    let salt: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    hasher().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
}

/// Whether `password` matches the PHC string `phc`.
pub fn verify(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => hasher().verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// A hash of nothing anyone knows: checked when the user does not exist, so a failure
/// takes as long either way and the timing does not tell whether a user exists.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        let random: [u8; 32] = rand::random();
        hash(&random.iter().map(|b| format!("{b:02x}")).collect::<String>()).unwrap_or_default()
    })
}

/// Failed password attempts per (tenant/user, source address). A few failures are free;
/// after that each failure doubles the time before the next attempt is even checked (1 s,
/// 2 s, 4 s, ... up to 5 minutes). The key does not depend on whether the user exists, so
/// the answers do not tell either.
#[derive(Default)]
pub struct Throttle {
    entries: Mutex<HashMap<(String, IpAddr), Entry>>,
}

#[derive(Clone, Copy)]
struct Entry {
    failures: u32,
    blocked_until: Option<Instant>,
    last: Instant,
}

/// Failures allowed before the back-off starts.
pub(crate) const FREE_FAILURES: u32 = 3;
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Entries idle this long are forgotten (bounds the map under a spray of names).
const FORGET_AFTER: Duration = Duration::from_secs(900);
const MAX_ENTRIES: usize = 100_000;

impl Throttle {
    /// `Err(wait)` while `(who, from)` must wait before trying again.
    pub fn check(&self, who: &str, from: IpAddr, now: Instant) -> Result<(), Duration> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(&(who.to_string(), from)).and_then(|e| e.blocked_until) {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    pub fn failed(&self, who: &str, from: IpAddr, now: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, e| now.duration_since(e.last) < FORGET_AFTER);
        }
        let e = entries.entry((who.to_string(), from)).or_insert(Entry { failures: 0, blocked_until: None, last: now });
        if now.duration_since(e.last) >= FORGET_AFTER {
            e.failures = 0;
        }
        e.failures += 1;
        e.last = now;
        if e.failures > FREE_FAILURES {
            let exp = (e.failures - FREE_FAILURES - 1).min(16);
            e.blocked_until = Some(now + Duration::from_secs(1u64 << exp).min(MAX_BACKOFF));
        }
    }

    pub fn succeeded(&self, who: &str, from: IpAddr) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).remove(&(who.to_string(), from));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_are_salted() {
        let a = hash("correct horse").unwrap();
        let b = hash("correct horse").unwrap();
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
        assert_ne!(a, b, "each hash has its own salt");
        assert!(verify("correct horse", &a));
        assert!(!verify("correct horse!", &a));
        assert!(!verify("correct horse", "not a hash"));
        assert!(!verify("", decoy_hash()));
    }

    #[test]
    fn failures_back_off_exponentially_per_user_and_source() {
        let t = Throttle::default();
        let (ip, other) = ("127.0.0.1".parse().unwrap(), "10.0.0.1".parse().unwrap());
        let now = Instant::now();
        for _ in 0..FREE_FAILURES {
            assert!(t.check("acme/ann", ip, now).is_ok());
            t.failed("acme/ann", ip, now);
        }
        assert!(t.check("acme/ann", ip, now).is_ok(), "a few failures are free");
        t.failed("acme/ann", ip, now);
        assert_eq!(t.check("acme/ann", ip, now), Err(Duration::from_secs(1)));
        t.failed("acme/ann", ip, now);
        assert_eq!(t.check("acme/ann", ip, now), Err(Duration::from_secs(2)));
        assert!(t.check("acme/ann", other, now).is_ok(), "another source is not blocked");
        assert!(t.check("acme/bob", ip, now).is_ok(), "another user is not blocked");
        assert!(t.check("acme/ann", ip, now + Duration::from_secs(3)).is_ok(), "the wait ends");
        t.succeeded("acme/ann", ip);
        assert!(t.check("acme/ann", ip, now).is_ok());
    }
}
