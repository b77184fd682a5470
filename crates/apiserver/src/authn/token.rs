//! Signed bearer tokens: JWTs (RFC 7519) signed with ES256 (ECDSA P-256, SHA-256), one key
//! per cluster in `<data-dir>/pki/tokens.key` (PKCS#8, mode 0600, made at first start like
//! the CA).
//!
//! Two kinds share the format: service-account tokens (`kubernetes.io` claims as Kubernetes
//! writes them, so clients that peek inside are happy) and user tokens. Both carry the
//! tenant in `atoll.io.tenant`; the signature covers it, so a token cannot be moved to
//! another tenant.

use std::path::Path;

use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair};
use serde::{Deserialize, Serialize};

/// The `iss` of every token this cluster signs.
pub const ISSUER: &str = "https://atoll.local";
/// The audience the API server accepts; Kubernetes' default, so tools that set it work.
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";
/// Token lifetimes a TokenRequest may ask for (Kubernetes: at least 10 minutes).
pub const MIN_TTL_SECONDS: i64 = 600;
pub const MAX_TTL_SECONDS: i64 = 48 * 3600;
pub const DEFAULT_TTL_SECONDS: i64 = 3600;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token signing key in {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("the token signing key is unusable: {0}")]
    Key(String),
    #[error("not a token this server signed")]
    Malformed,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is not meant for this server")]
    WrongAudience,
}

/// What a token is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Subject {
    ServiceAccount,
    User,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedUid {
    pub name: String,
    pub uid: String,
}

/// Kubernetes' own claims of a service-account token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesClaims {
    pub namespace: String,
    pub serviceaccount: NamedUid,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AtollClaims {
    pub tenant: String,
    pub subject: Subject,
    /// A user token's groups (for tokens minted by the operator, which name no User
    /// object); a User object's tokens take the groups from the object when used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// The User object a user token was issued for: the token dies with the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_uid: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    #[serde(rename = "kubernetes.io", default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesClaims>,
    #[serde(rename = "atoll.io")]
    pub atoll: AtollClaims,
}

impl Claims {
    /// Claims for the service account `namespace/name` (uid `uid`) of `tenant`.
    pub fn service_account(
        tenant: &str,
        namespace: &str,
        name: &str,
        uid: &str,
        audiences: Vec<String>,
        now: i64,
        ttl: i64,
    ) -> Claims {
        Claims {
            iss: ISSUER.into(),
            sub: format!("system:serviceaccount:{namespace}:{name}"),
            aud: audiences,
            exp: now + ttl,
            iat: now,
            nbf: now,
            jti: random_id(),
            kubernetes: Some(KubernetesClaims {
                namespace: namespace.into(),
                serviceaccount: NamedUid { name: name.into(), uid: uid.into() },
            }),
            atoll: AtollClaims {
                tenant: tenant.into(),
                subject: Subject::ServiceAccount,
                groups: Vec::new(),
                user_uid: None,
            },
        }
    }

    /// Claims for user `name` of `tenant`; `user_uid` ties it to a User object.
    pub fn user(tenant: &str, name: &str, groups: Vec<String>, user_uid: Option<String>, now: i64, ttl: i64) -> Claims {
        Claims {
            iss: ISSUER.into(),
            sub: name.into(),
            aud: vec![API_AUDIENCE.into()],
            exp: now + ttl,
            iat: now,
            nbf: now,
            jti: random_id(),
            kubernetes: None,
            atoll: AtollClaims { tenant: tenant.into(), subject: Subject::User, groups, user_uid },
        }
    }
}

fn random_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(text: &str) -> Result<Vec<u8>, TokenError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).map_err(|_| TokenError::Malformed)
}

/// The cluster's token key: signs and verifies.
pub struct TokenKey {
    pair: EcdsaKeyPair,
    /// Names the key in the JWT header, so a rotated key is told apart from a forgery.
    kid: String,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey").field("kid", &self.kid).finish()
    }
}

const PEM_LABEL: &str = "PRIVATE KEY";

impl TokenKey {
    fn from_pkcs8(der: &[u8]) -> Result<TokenKey, TokenError> {
        let pair = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &SystemRandom::new())
            .map_err(|e| TokenError::Key(e.to_string()))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, pair.public_key().as_ref());
        let kid = b64(&digest.as_ref()[..12]);
        Ok(TokenKey { pair, kid })
    }

    /// A fresh key (tests; `load_or_create` for the cluster's).
    pub fn generate() -> Result<TokenKey, TokenError> {
        let der = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|e| TokenError::Key(e.to_string()))?;
        TokenKey::from_pkcs8(der.as_ref())
    }

    /// Loads `<data-dir>/pki/tokens.key`, creating it (mode 0600) at first start.
    pub fn load_or_create(data_dir: &Path) -> Result<TokenKey, TokenError> {
        let path = data_dir.join("pki").join("tokens.key");
        let io = |source| TokenError::Io { path: path.display().to_string(), source };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
                let der = base64::engine::general_purpose::STANDARD
                    .decode(body.trim())
                    .map_err(|e| TokenError::Key(e.to_string()))?;
                TokenKey::from_pkcs8(&der)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let der =
                    EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                        .map_err(|e| TokenError::Key(e.to_string()))?;
                let body = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
                let mut pem = format!("-----BEGIN {PEM_LABEL}-----\n");
                for chunk in body.as_bytes().chunks(64) {
                    pem.push_str(&String::from_utf8_lossy(chunk));
                    pem.push('\n');
                }
                pem.push_str(&format!("-----END {PEM_LABEL}-----\n"));
                std::fs::create_dir_all(data_dir.join("pki")).map_err(io)?;
                crate::pki::write_file(&path, &pem, true).map_err(io)?;
                TokenKey::from_pkcs8(der.as_ref())
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The signed, compact JWT for `claims`.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let payload = serde_json::to_vec(claims).map_err(|e| TokenError::Key(e.to_string()))?;
        let signing_input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(&payload));
        let sig = self
            .pair
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map_err(|e| TokenError::Key(e.to_string()))?;
        Ok(format!("{signing_input}.{}", b64(sig.as_ref())))
    }

    /// Checks `token`'s signature, times and audience at `now`; returns its claims. Whether
    /// its subject still exists is the caller's question.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Malformed);
        };
        let header: serde_json::Value = serde_json::from_slice(&unb64(h)?).map_err(|_| TokenError::Malformed)?;
        // Only our algorithm and key: never `none`, never a key the token names itself.
        if header.get("alg").and_then(|a| a.as_str()) != Some("ES256")
            || header.get("kid").and_then(|k| k.as_str()) != Some(self.kid.as_str())
        {
            return Err(TokenError::BadSignature);
        }
        let sig = unb64(s)?;
        let public = signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, self.pair.public_key());
        let signed = &token.as_bytes()[..h.len() + 1 + p.len()];
        public.verify(signed, &sig).map_err(|_| TokenError::BadSignature)?;
        let claims: Claims = serde_json::from_slice(&unb64(p)?).map_err(|_| TokenError::Malformed)?;
        if claims.iss != ISSUER {
            return Err(TokenError::Malformed);
        }
        // A minute of clock skew between the machines that sign and check.
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        if claims.nbf > now + 60 {
            return Err(TokenError::NotYetValid);
        }
        if !claims.aud.iter().any(|a| a == API_AUDIENCE) {
            return Err(TokenError::WrongAudience);
        }
        Ok(claims)
    }

    /// Whether `token` looks like a JWT at all (three dot-separated parts): other bearer
    /// tokens belong to other authenticators (Keystone).
    pub fn looks_like_jwt(token: &str) -> bool {
        token.split('.').count() == 3 && token.starts_with("eyJ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(tenant: &str, now: i64, ttl: i64) -> Claims {
        Claims::service_account(tenant, "ns", "robot", "uid-1", vec![API_AUDIENCE.into()], now, ttl)
    }

    #[test]
    fn a_signed_token_verifies_and_round_trips() {
        let key = TokenKey::generate().unwrap();
        let claims = sa("acme", 1000, 600);
        let token = key.sign(&claims).unwrap();
        assert!(TokenKey::looks_like_jwt(&token));
        assert_eq!(key.verify(&token, 1001).unwrap(), claims);
        // Kubernetes' claims are where clients look for them.
        let payload: serde_json::Value =
            serde_json::from_slice(&unb64(token.split('.').nth(1).unwrap()).unwrap()).unwrap();
        assert_eq!(payload["kubernetes.io"]["serviceaccount"]["name"], "robot");
        assert_eq!(payload["atoll.io"]["tenant"], "acme");
        assert_eq!(payload["sub"], "system:serviceaccount:ns:robot");
    }

    #[test]
    fn expired_tokens_are_refused() {
        let key = TokenKey::generate().unwrap();
        let token = key.sign(&sa("acme", 1000, 600)).unwrap();
        assert!(matches!(key.verify(&token, 1600), Err(TokenError::Expired)));
        assert!(matches!(key.verify(&token, 900), Err(TokenError::NotYetValid)));
    }

    #[test]
    fn another_key_is_refused() {
        let (key, other) = (TokenKey::generate().unwrap(), TokenKey::generate().unwrap());
        let token = other.sign(&sa("acme", 1000, 600)).unwrap();
        assert!(matches!(key.verify(&token, 1001), Err(TokenError::BadSignature)));
        // Even when the forger copies our key id into its header.
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        parts[0] = b64(serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": key.kid}).to_string().as_bytes());
        assert!(matches!(key.verify(&parts.join("."), 1001), Err(TokenError::BadSignature)));
        // And `alg: none` is no way around the signature.
        parts[0] = b64(br#"{"alg":"none"}"#);
        assert!(key.verify(&format!("{}.{}.", parts[0], parts[1]), 1001).is_err());
    }

    #[test]
    fn tampered_tokens_are_refused() {
        let key = TokenKey::generate().unwrap();
        let token = key.sign(&sa("acme", 1000, 600)).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        // Moving the token to another tenant (or extending it) breaks the signature.
        let mut claims = sa("acme", 1000, 600);
        claims.atoll.tenant = "globex".into();
        let forged = format!("{}.{}.{}", parts[0], b64(&serde_json::to_vec(&claims).unwrap()), parts[2]);
        assert!(matches!(key.verify(&forged, 1001), Err(TokenError::BadSignature)));
        let mut sig = unb64(parts[2]).unwrap();
        sig[5] ^= 1;
        let flipped = format!("{}.{}.{}", parts[0], parts[1], b64(&sig));
        assert!(matches!(key.verify(&flipped, 1001), Err(TokenError::BadSignature)));
        assert!(matches!(key.verify("a.b", 1001), Err(TokenError::Malformed)));
    }

    #[test]
    fn other_audiences_are_refused() {
        let key = TokenKey::generate().unwrap();
        let claims = Claims::service_account("acme", "ns", "robot", "u", vec!["vault".into()], 1000, 600);
        let token = key.sign(&claims).unwrap();
        assert!(matches!(key.verify(&token, 1001), Err(TokenError::WrongAudience)));
    }

    #[test]
    fn the_key_is_made_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let a = TokenKey::load_or_create(dir.path()).unwrap();
        let b = TokenKey::load_or_create(dir.path()).unwrap();
        assert_eq!(a.kid, b.kid);
        let token = a.sign(&Claims::user("acme", "ann", vec![], None, 1000, 600)).unwrap();
        assert_eq!(b.verify(&token, 1001).unwrap().sub, "ann");
        let mode = std::fs::metadata(dir.path().join("pki/tokens.key")).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
    }
}
