//! Image references as users write them (`busybox`, `busybox:1.36`,
//! `registry.local:5000/team/app@sha256:...`), normalised the way Docker and Kubernetes do:
//! no registry means `docker.io`, a one-part Docker Hub name lives under `library/`, and no
//! tag or digest means `:latest`.

use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("invalid image reference {0:?}: {1}")]
    Invalid(String, &'static str),
}

pub const DEFAULT_REGISTRY: &str = "docker.io";

/// A `sha256:<64 hex>` content digest.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(String);

impl Digest {
    pub fn parse(s: &str) -> Option<Digest> {
        let hex = s.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
            .then(|| Digest(s.to_owned()))
    }

    pub fn from_sha256(bytes: &[u8]) -> Digest {
        let mut s = String::with_capacity(71);
        s.push_str("sha256:");
        for b in bytes {
            s.push_str(&format!("{b:02x}"));
        }
        Digest(s)
    }

    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A named reference: registry, repository, and a tag or a digest (or both).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

fn valid_component(c: &str) -> bool {
    !c.is_empty()
        && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
        && c.as_bytes()[0].is_ascii_alphanumeric()
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && (t.as_bytes()[0].is_ascii_alphanumeric() || t.as_bytes()[0] == b'_')
}

impl Reference {
    pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
        let bad = |why| ReferenceError::Invalid(input.to_owned(), why);
        let (name, digest) = match input.split_once('@') {
            Some((n, d)) => (n, Some(Digest::parse(d).ok_or_else(|| bad("the digest is not sha256:<64 hex>"))?)),
            None => (input, None),
        };
        // A tag is after the last ':' only if no '/' follows it (else it was a port).
        let (name, tag) = match name.rfind(':') {
            Some(i) if !name[i..].contains('/') => (&name[..i], Some(&name[i + 1..])),
            _ => (name, None),
        };
        if let Some(t) = tag
            && !valid_tag(t)
        {
            return Err(bad("invalid tag"));
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                (first.to_owned(), rest.to_owned())
            }
            _ => (DEFAULT_REGISTRY.to_owned(), name.to_owned()),
        };
        if registry.is_empty() || path.is_empty() {
            return Err(bad("empty name"));
        }
        if !path.split('/').all(valid_component) {
            return Err(bad("repository names are lowercase letters, digits and . _ - separated by /"));
        }
        let repository =
            if registry == DEFAULT_REGISTRY && !path.contains('/') { format!("library/{path}") } else { path };
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, None) => Some("latest".to_owned()),
            (None, Some(_)) => None,
        };
        Ok(Reference { registry, repository, tag, digest })
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let cases: Vec<(String, Result<String, ()>)> = vec![
            ("busybox".into(), Ok("docker.io/library/busybox:latest".into())),
            ("busybox:1.36".into(), Ok("docker.io/library/busybox:1.36".into())),
            ("docker.io/library/busybox:1.36".into(), Ok("docker.io/library/busybox:1.36".into())),
            ("team/app".into(), Ok("docker.io/team/app:latest".into())),
            ("localhost/app".into(), Ok("localhost/app:latest".into())),
            ("127.0.0.1:5000/a/b:v1".into(), Ok("127.0.0.1:5000/a/b:v1".into())),
            ("reg.io:5000/app".into(), Ok("reg.io:5000/app:latest".into())),
            (format!("busybox@{d}"), Ok(format!("docker.io/library/busybox@{d}"))),
            (format!("busybox:1@{d}"), Ok(format!("docker.io/library/busybox:1@{d}"))),
            ("BusyBox".into(), Err(())),
            ("busybox:".into(), Err(())),
            ("busybox@sha256:12".into(), Err(())),
            ("".into(), Err(())),
            ("a//b".into(), Err(())),
            ("busybox:-x".into(), Err(())),
        ];
        for (input, want) in cases {
            let got = Reference::parse(&input).map(|r| r.to_string()).map_err(|_| ());
            assert_eq!(got, want, "{input}");
        }
    }

    #[test]
    fn digests() {
        assert!(Digest::parse(&format!("sha256:{}", "0".repeat(64))).is_some());
        assert!(Digest::parse(&format!("sha256:{}", "A".repeat(64))).is_none());
        assert!(Digest::parse("sha512:00").is_none());
        assert_eq!(Digest::from_sha256(&[0xab; 32]).hex(), "ab".repeat(32));
    }
}
