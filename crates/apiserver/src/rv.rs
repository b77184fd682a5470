//! Resource versions as clients see them: the store's revision, encrypted per tenant.
//!
//! The store numbers every write of every tenant with one counter. Shown raw, the difference
//! between two of a tenant's own resource versions would count the writes of every other
//! tenant in between. Kubernetes makes resource versions opaque (clients may compare them
//! only for equality), so the server shows each caller's tenant the revision through a keyed
//! permutation of 64-bit numbers: distinct revisions stay distinct and every value decodes
//! back exactly, but without the key the values are unrelated to each other and to any
//! other tenant's.
//!
//! The key of a tenant is HMAC-SHA256(cluster secret, tenant); the secret is 32 random
//! bytes in `<data-dir>/pki/resource-versions.key` (mode 0600, made at first start), so
//! every API server of a cluster that shares the data directory's `pki/` agrees. The
//! permutation is an 8-round Feistel network over two 32-bit halves whose round function is
//! SipHash-2-4 under the tenant's key. `0` (and the empty string) keep their meaning and are
//! never produced for a real revision.
//!
//! The key belongs to the caller's tenant, not to the URL's: the system tenant's components
//! list across tenants (`/tenants/all`) and write through a tenant's path with the versions
//! they listed, so one caller must see one encoding everywhere.

use std::path::Path;

use api::meta::Status;
use ring::rand::SecureRandom;
use serde_json::Value;

/// What decoding a value that was never issued yields: a revision beyond any the store
/// will reach, so reads treat it as too large and preconditions as a conflict.
pub const UNKNOWN: i64 = i64::MAX;

const ROUNDS: u8 = 8;
const KEY_FILE: &str = "resource-versions.key";

#[derive(Debug, thiserror::Error)]
pub enum RvError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not a 64-digit hex secret")]
    Malformed { path: String },
    #[error("no randomness for the resource version secret")]
    Random,
    /// A client sent something that is no resource version at all.
    #[error("invalid resource version {0:?}")]
    Invalid(String),
    #[error("invalid continue token")]
    InvalidContinue,
}

impl RvError {
    /// What a request carrying it is answered.
    pub fn to_status(&self) -> Status {
        match self {
            RvError::Invalid(_) | RvError::InvalidContinue => Status::bad_request(self.to_string()),
            other => Status::internal(other.to_string()),
        }
    }
}

impl From<RvError> for Status {
    fn from(e: RvError) -> Status {
        e.to_status()
    }
}

/// The cluster's secret, from which every tenant's key is derived.
#[derive(Clone)]
pub struct RvSecret(ring::hmac::Key);

impl std::fmt::Debug for RvSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RvSecret")
    }
}

impl RvSecret {
    pub fn from_bytes(secret: &[u8]) -> RvSecret {
        RvSecret(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret))
    }

    /// Loads `<data-dir>/pki/resource-versions.key`, creating it (mode 0600) at first start.
    pub fn load_or_create(data_dir: &Path) -> Result<RvSecret, RvError> {
        let path = data_dir.join("pki").join(KEY_FILE);
        let io = |source| RvError::Io { path: path.display().to_string(), source };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let hex = text.trim();
                let bytes = (0..hex.len())
                    .step_by(2)
                    .map(|i| hex.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
                    .collect::<Option<Vec<u8>>>()
                    .filter(|b| b.len() == 32)
                    .ok_or_else(|| RvError::Malformed { path: path.display().to_string() })?;
                Ok(RvSecret::from_bytes(&bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 32];
                ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| RvError::Random)?;
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                std::fs::create_dir_all(data_dir.join("pki")).map_err(io)?;
                crate::pki::write_file(&path, &format!("{hex}\n"), true).map_err(io)?;
                Ok(RvSecret::from_bytes(&bytes))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The encoding `tenant`'s callers see.
    pub fn codec(&self, tenant: &str) -> Codec {
        let tag = ring::hmac::sign(&self.0, format!("atoll resourceVersion\0{tenant}").as_bytes());
        let t = tag.as_ref();
        let word = |i: usize| u64::from_le_bytes(t[i..i + 8].try_into().unwrap_or_default());
        Codec { k0: word(0), k1: word(8) }
    }
}

/// One tenant's encoding of revisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Codec {
    k0: u64,
    k1: u64,
}

impl Codec {
    fn round(&self, i: u8, half: u32) -> u32 {
        let mut msg = [0u8; 5];
        msg[0] = i;
        msg[1..].copy_from_slice(&half.to_le_bytes());
        siphash24(self.k0, self.k1, &msg) as u32
    }

    fn permute(&self, x: u64) -> u64 {
        let (mut l, mut r) = ((x >> 32) as u32, x as u32);
        for i in 0..ROUNDS {
            (l, r) = (r, l ^ self.round(i, r));
        }
        (u64::from(l) << 32) | u64::from(r)
    }

    fn unpermute(&self, y: u64) -> u64 {
        let (mut l, mut r) = ((y >> 32) as u32, y as u32);
        for i in (0..ROUNDS).rev() {
            (l, r) = (r ^ self.round(i, l), l);
        }
        (u64::from(l) << 32) | u64::from(r)
    }

    /// The value clients see for `revision` (`0` stays `0`).
    pub fn encode(&self, revision: i64) -> String {
        if revision <= 0 {
            return "0".into();
        }
        // Cycle-walk past 0, which is not a value: a permutation of the non-zero numbers.
        let mut y = self.permute(revision as u64);
        while y == 0 {
            y = self.permute(y);
        }
        y.to_string()
    }

    /// The revision behind a value a client sent: `Err` for what is no resource version at
    /// all (not a decimal number). A number this encoding never issued decodes to a
    /// revision far beyond the store's (odds of landing below 2^40 are 2^-24 a guess), or to
    /// [`UNKNOWN`] when past `i64`.
    pub fn decode(&self, value: &str) -> Result<i64, RvError> {
        let y = value
            .parse::<u64>()
            .ok()
            .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| RvError::Invalid(value.to_string()))?;
        if y == 0 {
            return Ok(0);
        }
        let mut x = self.unpermute(y);
        while x == 0 {
            x = self.unpermute(x);
        }
        Ok(i64::try_from(x).unwrap_or(UNKNOWN))
    }

    /// A string the registry understands in place of the client's (empty stays empty).
    pub fn decode_str(&self, value: &str) -> Result<String, RvError> {
        if value.is_empty() {
            return Ok(String::new());
        }
        self.decode(value).map(|r| r.to_string())
    }

    fn encode_str(&self, raw: &str) -> Option<String> {
        raw.parse::<i64>().ok().map(|r| self.encode(r))
    }

    /// A continue token as the client sees it: the registry's `REVISION-KEY` with the
    /// revision encoded.
    pub fn encode_continue(&self, token: &str) -> String {
        match token.split_once('-').and_then(|(rev, rest)| Some((self.encode_str(rev)?, rest))) {
            Some((rev, rest)) => format!("{rev}-{rest}"),
            None => token.to_string(),
        }
    }

    pub fn decode_continue(&self, token: &str) -> Result<String, RvError> {
        let (rev, rest) = token.split_once('-').ok_or(RvError::InvalidContinue)?;
        let rev = self.decode(rev).map_err(|_| RvError::InvalidContinue)?;
        Ok(format!("{rev}-{rest}"))
    }

    /// Encodes every resource version of a response in place: the object's (or list's)
    /// own, a list's continue token, and those of a list's items and a table's rows.
    pub fn outgoing(&self, body: &mut Value) {
        self.encode_meta(body.get_mut("metadata"));
        for key in ["items", "rows"] {
            if let Some(items) = body.get_mut(key).and_then(Value::as_array_mut) {
                for item in items {
                    let item = if key == "rows" { item.get_mut("object") } else { Some(item) };
                    if let Some(item) = item {
                        self.encode_meta(item.get_mut("metadata"));
                    }
                }
            }
        }
    }

    fn encode_meta(&self, meta: Option<&mut Value>) {
        let Some(meta) = meta.and_then(Value::as_object_mut) else { return };
        if let Some(Value::String(rv)) = meta.get_mut("resourceVersion")
            && let Some(encoded) = self.encode_str(rv)
        {
            *rv = encoded;
        }
        if let Some(Value::String(token)) = meta.get_mut("continue") {
            *token = self.encode_continue(token);
        }
    }

    /// Decodes the resource versions a request body carries as preconditions: an object's
    /// `metadata.resourceVersion` (update, merge and strategic patches, apply),
    /// `preconditions.resourceVersion` (DeleteOptions), and the values of JSON patch
    /// operations on `/metadata/resourceVersion`.
    pub fn incoming(&self, body: &mut Value) -> Result<(), RvError> {
        let decode_at = |v: Option<&mut Value>| -> Result<(), RvError> {
            if let Some(Value::String(rv)) = v {
                *rv = self.decode_str(rv)?;
            }
            Ok(())
        };
        match body {
            Value::Array(ops) => {
                for op in ops {
                    if op.get("path").and_then(Value::as_str) == Some("/metadata/resourceVersion") {
                        decode_at(op.get_mut("value"))?;
                    }
                }
            }
            Value::Object(_) => {
                decode_at(body.pointer_mut("/metadata/resourceVersion"))?;
                decode_at(body.pointer_mut("/preconditions/resourceVersion"))?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// SipHash-2-4 (Aumasson and Bernstein) of `msg` under the key (`k0`, `k1`).
fn siphash24(k0: u64, k1: u64, msg: &[u8]) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    fn sip_round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }
    let compress = |m: u64, v: &mut [u64; 4]| {
        v[3] ^= m;
        sip_round(v);
        sip_round(v);
        v[0] ^= m;
    };
    let mut chunks = msg.chunks_exact(8);
    for chunk in &mut chunks {
        compress(u64::from_le_bytes(chunk.try_into().unwrap_or_default()), &mut v);
    }
    let mut last = [0u8; 8];
    let tail = chunks.remainder();
    last[..tail.len()].copy_from_slice(tail);
    last[7] = msg.len() as u8;
    compress(u64::from_le_bytes(last), &mut v);
    v[2] ^= 0xff;
    for _ in 0..4 {
        sip_round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> RvSecret {
        RvSecret::from_bytes(b"a cluster secret of thirty-two b")
    }

    #[test]
    fn siphash_matches_the_reference_vectors() {
        // The SipHash paper's key 00..0f, messages 00..(n-1).
        let (k0, k1) = (0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908);
        let msg: Vec<u8> = (0..15).collect();
        assert_eq!(siphash24(k0, k1, &[]), 0x726f_db47_dd0e_0e31);
        assert_eq!(siphash24(k0, k1, &msg), 0xa129_ca61_49be_45e5);
        assert_eq!(siphash24(k0, k1, &msg[..8]), 0x93f5_f579_9a93_2462);
    }

    #[test]
    fn round_trips() {
        let c = secret().codec("acme");
        for rev in (1..2000).chain([i64::MAX - 1, 1 << 40, 123_456_789]) {
            let enc = c.encode(rev);
            assert_ne!(enc, "0");
            assert_eq!(c.decode(&enc).unwrap(), rev, "{rev} -> {enc}");
        }
        assert_eq!(c.encode(0), "0");
        assert_eq!(c.decode("0").unwrap(), 0);
        assert_eq!(c.decode_str("").unwrap(), "");
    }

    #[test]
    fn tenants_see_unrelated_values() {
        let s = secret();
        let (a, b) = (s.codec("acme"), s.codec("bravo"));
        assert_ne!(a, b);
        let mut close = 0;
        for rev in 1..1000 {
            let (x, y) = (a.encode(rev).parse::<u64>().unwrap(), b.encode(rev).parse::<u64>().unwrap());
            assert_ne!(x, y);
            // Another tenant's value decodes to nothing this tenant was issued: a revision far
            // beyond any the store reaches, which reads refuse as too large and preconditions
            // as a conflict.
            assert!(a.decode(&b.encode(rev)).unwrap() > 1 << 40);
            // Successive revisions are not successive (or even nearby) values.
            let next = a.encode(rev + 1).parse::<u64>().unwrap();
            if next.abs_diff(x) < 1 << 40 {
                close += 1;
            }
        }
        assert!(close < 3, "{close} successive revisions encode to nearby values");
        // Another secret, other values.
        assert_ne!(RvSecret::from_bytes(b"another").codec("acme").encode(5), a.encode(5));
    }

    #[test]
    fn rejects_what_is_no_version_and_flags_what_was_never_issued() {
        let c = secret().codec("acme");
        for bad in ["abc", "-5", "+5", "1.5", " 7", "18446744073709551616"] {
            let e = c.decode(bad).unwrap_err().to_status();
            assert_eq!((e.code, e.reason.as_str()), (400, "BadRequest"), "{bad}");
        }
        // A value never issued (a guess, a raw store revision) decodes far beyond any store
        // revision, or past i64 (UNKNOWN): never to a revision that exists.
        let guesses = (1..2000u64).chain((1..200u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        let mut unknown = 0;
        for g in guesses {
            let rev = c.decode(&g.to_string()).unwrap();
            assert!(rev > 1 << 40, "{g} decodes to {rev}");
            unknown += usize::from(rev == UNKNOWN);
        }
        assert!(unknown > 500, "{unknown}");
    }

    #[test]
    fn rewrites_responses_and_requests() {
        let c = secret().codec("acme");
        let mut list = serde_json::json!({
            "metadata": {"resourceVersion": "42", "continue": "42-2f72"},
            "items": [{"metadata": {"resourceVersion": "7"}}, {"metadata": {}}],
        });
        c.outgoing(&mut list);
        assert_eq!(list["metadata"]["resourceVersion"], c.encode(42));
        assert_eq!(list["metadata"]["continue"], format!("{}-2f72", c.encode(42)));
        assert_eq!(list["items"][0]["metadata"]["resourceVersion"], c.encode(7));
        assert_eq!(c.decode_continue(list["metadata"]["continue"].as_str().unwrap()).unwrap(), "42-2f72");
        let mut table = serde_json::json!({"metadata": {"resourceVersion": "9"},
            "rows": [{"object": {"metadata": {"resourceVersion": "8"}}}]});
        c.outgoing(&mut table);
        assert_eq!(table["rows"][0]["object"]["metadata"]["resourceVersion"], c.encode(8));

        let mut update = serde_json::json!({"metadata": {"resourceVersion": c.encode(7)}});
        c.incoming(&mut update).unwrap();
        assert_eq!(update["metadata"]["resourceVersion"], "7");
        let mut delete = serde_json::json!({"preconditions": {"resourceVersion": c.encode(3)}});
        c.incoming(&mut delete).unwrap();
        assert_eq!(delete["preconditions"]["resourceVersion"], "3");
        let mut ops = serde_json::json!([{"op": "test", "path": "/metadata/resourceVersion", "value": c.encode(5)}]);
        c.incoming(&mut ops).unwrap();
        assert_eq!(ops[0]["value"], "5");
        let mut bad = serde_json::json!({"metadata": {"resourceVersion": "x"}});
        assert_eq!(c.incoming(&mut bad).unwrap_err().to_status().code, 400);
    }

    #[test]
    fn the_secret_is_made_once_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = RvSecret::load_or_create(dir.path()).unwrap().codec("acme").encode(11);
        let mode = std::fs::metadata(dir.path().join("pki").join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(RvSecret::load_or_create(dir.path()).unwrap().codec("acme").encode(11), first);
    }
}
