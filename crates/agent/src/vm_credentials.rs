//! A VM pod's root credentials (`spec.virtualMachine.sshAuthorizedKeys` and
//! `passwordSecretRef`, see `api::vm`), as the guest gets them: one fw_cfg entry
//! ([`FW_CFG_NAME`]) whose lines the guest init turns into `/root/.ssh/authorized_keys` and
//! root's `/etc/shadow` entry.
//!
//! The password never leaves the agent's memory in plain text: it is hashed here with a
//! salted SHA-512 crypt (`$6$`, glibc's scheme, which busybox and every Linux `login`
//! read), and only the hash is written, to a 0600 file in the VM attempt's folder that qemu
//! reads at start-up and the VM shim deletes once the guest is up.

use std::io::Read as _;

use base64::Engine as _;
use client::{Client, Resource, Scope, Tenant};
use serde_json::Value;
use sha2::{Digest as _, Sha512};

/// The fw_cfg name (the guest reads `/sys/firmware/qemu_fw_cfg/by_name/<name>/raw`).
pub const FW_CFG_NAME: &str = "opt/atoll/credentials";
/// The file in a VM attempt's folder qemu reads the entry from.
pub const FILE: &str = "credentials";

const ROUNDS: usize = 5000;
const ALPHABET: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("reading random bytes for a salt: {0}")]
    Random(std::io::Error),
}

/// What the guest gets: public keys, and the password's hash.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    pub authorized_keys: Vec<String>,
    pub password_hash: Option<String>,
}

impl Credentials {
    pub fn is_empty(&self) -> bool {
        self.authorized_keys.is_empty() && self.password_hash.is_none()
    }

    /// The fw_cfg payload: `key <public key>` and `password <hash>` lines. Keys were
    /// validated as one line each by the API; anything with a line break is dropped
    /// rather than let it add lines of its own.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for k in self.authorized_keys.iter().filter(|k| !k.contains(['\n', '\r'])) {
            out.push_str("key ");
            out.push_str(k.trim());
            out.push('\n');
        }
        if let Some(h) = &self.password_hash {
            out.push_str("password ");
            out.push_str(h);
            out.push('\n');
        }
        out
    }
}

/// The credentials `vm` (a pod's `spec.virtualMachine`) asks for: its keys, and the hash
/// of the password in the Secret it names, read with the node's identity (the node
/// authorizer lets a node read the Secrets of its own pods only). The error is the
/// container's waiting message, as Kubernetes words a missing Secret.
pub async fn resolve(client: &Client, pod: &Value, vm: &Value) -> Result<Credentials, String> {
    let text = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or("").to_string();
    let authorized_keys = vm
        .get("sshAuthorizedKeys")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default();
    let mut out = Credentials { authorized_keys, password_hash: None };
    let Some(r) = vm.get("passwordSecretRef").filter(|r| r.is_object()) else { return Ok(out) };
    let (name, key) = (text(r, "/name"), text(r, "/key"));
    let scope = Scope {
        tenant: Tenant::Named(text(pod, "/metadata/tenant")),
        namespace: Some(text(pod, "/metadata/namespace")),
    };
    let secrets = Resource::new("", "v1", "secrets", true);
    let secret = client.get(&secrets, &scope, &name).await.map_err(|e| {
        if e.is_not_found() { format!("secret {name:?} not found") } else { format!("reading secret {name:?}: {e}") }
    })?;
    let encoded = secret
        .pointer("/data")
        .and_then(|d| d.get(&key))
        .and_then(Value::as_str)
        .ok_or_else(|| format!("couldn't find key {key} in Secret {}/{name}", text(pod, "/metadata/namespace")))?;
    let mut password = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| format!("key {key} of Secret {name:?} is not base64"))?;
    // A trailing newline (`echo pw | kubectl create secret ...`) is not part of a password.
    while password.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        password.pop();
    }
    let hashed = hash_password(&password).map_err(|e| e.to_string());
    password.iter_mut().for_each(|b| *b = 0);
    out.password_hash = Some(hashed?);
    Ok(out)
}

/// `$6$<salt>$<hash>` of `password` with a fresh 16-character salt from the kernel's RNG.
pub fn hash_password(password: &[u8]) -> Result<String, CredentialsError> {
    let mut random = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .map_err(CredentialsError::Random)?;
    let salt: String = random.iter().map(|b| ALPHABET[(b & 63) as usize] as char).collect();
    Ok(sha512_crypt(password, &salt))
}

/// SHA-512 crypt with the default 5000 rounds (Ulrich Drepper's "Unix crypt using SHA-256
/// and SHA-512" specification); `salt` is cut to its first 16 bytes as the scheme says.
pub fn sha512_crypt(password: &[u8], salt: &str) -> String {
    let salt = &salt.as_bytes()[..salt.len().min(16)];
    let p = password;
    let digest = |parts: &[&[u8]]| -> [u8; 64] {
        let mut h = Sha512::new();
        for part in parts {
            h.update(part);
        }
        h.finalize().into()
    };
    // B: password, salt, password.
    let b = digest(&[p, salt, p]);
    // A: password, salt, then B for each byte of the password, then per bit of its length.
    let mut a = Sha512::new();
    a.update(p);
    a.update(salt);
    let mut left = p.len();
    while left > 64 {
        a.update(b);
        left -= 64;
    }
    a.update(&b[..left]);
    let mut n = p.len();
    while n > 0 {
        if n & 1 == 1 {
            a.update(b);
        } else {
            a.update(p);
        }
        n >>= 1;
    }
    let a: [u8; 64] = a.finalize().into();
    // P and S sequences: digests of the password repeated, and of the salt repeated
    // 16 + A[0] times, stretched to their lengths.
    let stretch = |d: [u8; 64], len: usize| -> Vec<u8> { d.iter().cycle().take(len).copied().collect() };
    let dp = {
        let mut h = Sha512::new();
        for _ in 0..p.len() {
            h.update(p);
        }
        stretch(h.finalize().into(), p.len())
    };
    let ds = {
        let mut h = Sha512::new();
        for _ in 0..16 + a[0] as usize {
            h.update(salt);
        }
        stretch(h.finalize().into(), salt.len())
    };
    let mut c = a;
    for i in 0..ROUNDS {
        let mut h = Sha512::new();
        if i % 2 == 1 {
            h.update(&dp);
        } else {
            h.update(c);
        }
        if i % 3 != 0 {
            h.update(&ds);
        }
        if i % 7 != 0 {
            h.update(&dp);
        }
        if i % 2 == 1 {
            h.update(c);
        } else {
            h.update(&dp);
        }
        c = h.finalize().into();
    }
    // The scheme's own base-64 over a fixed permutation of the digest's bytes.
    let mut out = format!("$6${}$", String::from_utf8_lossy(salt));
    let mut put = |b2: u8, b1: u8, b0: u8, chars: usize| {
        let mut w = (u32::from(b2) << 16) | (u32::from(b1) << 8) | u32::from(b0);
        for _ in 0..chars {
            out.push(ALPHABET[(w & 63) as usize] as char);
            w >>= 6;
        }
    };
    for i in 0..21 {
        let (x, y, z) = (i, i + 21, i + 42);
        // Each triple's bytes rotate through the three positions.
        let (b2, b1, b0) = match i % 3 {
            0 => (c[x], c[y], c[z]),
            1 => (c[y], c[z], c[x]),
            _ => (c[z], c[x], c[y]),
        };
        put(b2, b1, b0, 4);
    }
    put(0, 0, c[63], 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha512_crypt_matches_the_specification_vectors() {
        // From the specification's test vectors (default rounds).
        assert_eq!(
            sha512_crypt(b"Hello world!", "saltstring"),
            "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"
        );
        // Salts longer than 16 characters are cut.
        assert!(sha512_crypt(b"x", "0123456789abcdefXYZ").starts_with("$6$0123456789abcdef$"));
    }

    #[test]
    fn hashes_are_salted_and_the_payload_has_no_plain_text() {
        let (one, two) = (hash_password(b"hunter2").unwrap(), hash_password(b"hunter2").unwrap());
        assert_ne!(one, two, "two hashes of one password share a salt");
        assert!(one.starts_with("$6$") && one.len() == 3 + 16 + 1 + 86, "{one}");
        let c = Credentials { authorized_keys: vec!["ssh-ed25519 AAAA me".into()], password_hash: Some(one.clone()) };
        let text = c.render();
        assert_eq!(text, format!("key ssh-ed25519 AAAA me\npassword {one}\n"));
        assert!(!text.contains("hunter2"));
    }
}
