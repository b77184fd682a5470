//! OpenStack Keystone (identity API v3) as an identity provider.
//!
//! Two credentials are accepted when the server runs with `--keystone-url`:
//!
//! - `Authorization: Bearer <Keystone token>`: validated with `GET /v3/auth/tokens`
//!   (`X-Subject-Token`), authenticated as the service identity of
//!   `--keystone-service-credentials` (without one, the token validates itself, which
//!   Keystone's policy allows to any token's owner).
//! - `Authorization: Basic <project>/<user>:<password>`: a project-scoped password
//!   authentication (`POST /v3/auth/tokens`). A user name without `/` is not Keystone's
//!   and is left to Atoll's own authenticators.
//!
//! The mapping (decided here, documented in ARCHITECTURE.md):
//!
//! - The token must be scoped to a project of the configured domain (`--keystone-domain`,
//!   by default `Default`); the project's **name is the tenant's name**. Project names are
//!   unique only within a domain, hence one domain. `system` and `all` are never reachable
//!   through Keystone: Keystone's administrators do not administer the cluster.
//! - The user is `keystone:<name>` (or `keystone:<domain>:<name>` for a user of another
//!   domain), so a Keystone user can never be mistaken for a certificate or `User`-kind
//!   identity of the same name.
//! - Each role on the project becomes the group `keystone:<role>`, plus
//!   `system:authenticated`. No role grants anything by itself, `admin` included: a tenant
//!   administrator decides with RBAC what `keystone:admin` (or `keystone:member`) may do.
//!
//! Outcomes are cached by a keyed hash (HMAC-SHA256 with a per-process key) of the
//! credential, never the credential itself: successes for the cache TTL (and never past
//! the token's expiry), refusals for at most [`FAILURE_TTL`]; Keystone being unreachable is
//! not cached at all. Secrets are never logged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use api::json::At;
use api::meta::Status;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value, json};

/// Longest a refusal is remembered: long enough to absorb a client's burst of retries,
/// short enough that a fixed password or a new role assignment works almost at once.
pub const FAILURE_TTL: Duration = Duration::from_secs(2);
/// Default bound on cached outcomes.
pub const CACHE_ENTRIES: usize = 4096;
/// Keystone must answer within this, or the request fails with 503.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest Keystone response read (a token without its catalog is a few KiB).
const MAX_RESPONSE: usize = 1 << 20;

#[derive(Debug, Clone, thiserror::Error)]
pub enum KeystoneError {
    /// Keystone refused the credential (wrong password, unknown, expired or revoked token).
    #[error("{0}")]
    Refused(String),
    /// Keystone accepted it, but it does not name an Atoll tenant.
    #[error("{0}")]
    NotMapped(String),
    #[error("Keystone is unavailable: {0}")]
    Unavailable(String),
    #[error("unexpected answer from Keystone: {0}")]
    BadResponse(String),
    #[error("Keystone configuration: {0}")]
    Config(String),
}

impl KeystoneError {
    /// The answer to the client: refusals are 401 (what kubectl shows as "must be logged
    /// in"), Keystone trouble is 503 so that it is not mistaken for a wrong password.
    pub fn to_status(&self) -> Status {
        match self {
            KeystoneError::Refused(m) | KeystoneError::NotMapped(m) => Status::failure(401, "Unauthorized", m.clone()),
            KeystoneError::Unavailable(_) | KeystoneError::BadResponse(_) | KeystoneError::Config(_) => {
                Status::service_unavailable(self.to_string())
            }
        }
    }

    /// Only Keystone's own verdicts are worth remembering; an outage is not.
    fn cacheable(&self) -> bool {
        matches!(self, KeystoneError::Refused(_) | KeystoneError::NotMapped(_))
    }
}

/// The server's Keystone settings (`atoll server --keystone-*`).
#[derive(Clone, Debug)]
pub struct KeystoneConfig {
    /// Keystone's public endpoint, e.g. `http://127.0.0.1:5000` (with or without `/v3`).
    pub url: String,
    /// The domain of the projects that are tenants, and of users named without a domain.
    pub domain: String,
    /// A file with the identity used to validate tokens (see [`ServiceCredentials`]).
    pub service_credentials: Option<PathBuf>,
    /// PEM roots for an `https` Keystone; by default the system's.
    pub ca_file: Option<PathBuf>,
    pub cache_ttl: Duration,
    pub cache_entries: usize,
    /// Create the Tenant of an authenticated project that has none (otherwise refused).
    pub auto_tenants: bool,
}

/// The service identity's file (YAML or JSON), kept out of the command line so the
/// password is not in `ps` output:
///
/// ```yaml
/// username: atoll
/// password: secret
/// userDomain: Default     # default: the server's --keystone-domain
/// project: service        # omit for a system-scoped token
/// projectDomain: Default  # default: userDomain
/// ```
#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceCredentials {
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub user_domain: Option<String>,
    #[serde(default)]
    pub project: Option<String>,
    #[serde(default)]
    pub project_domain: Option<String>,
}

impl std::fmt::Debug for ServiceCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceCredentials").field("username", &self.username).finish_non_exhaustive()
    }
}

impl ServiceCredentials {
    pub fn load(path: &Path) -> Result<ServiceCredentials, KeystoneError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| KeystoneError::Config(format!("reading {}: {e}", path.display())))?;
        // Never echo the file's content in the error: it holds a password.
        serde_yaml_ng::from_str(&text).map_err(|e| {
            KeystoneError::Config(format!(
                "{}: {}",
                path.display(),
                e.location().map_or_else(
                    || "not a credentials document".to_string(),
                    |l| format!("invalid credentials document at line {}", l.line()),
                )
            ))
        })
    }
}

/// What a token says, as far as Atoll cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    pub user: String,
    pub user_domain: String,
    /// `(project name, its domain's name)`; `None` for an unscoped or system-scoped token.
    pub project: Option<(String, String)>,
    pub roles: Vec<String>,
    /// Seconds since the epoch.
    pub expires_at: Option<i64>,
}

impl TokenInfo {
    /// Reads the body of `POST`/`GET /v3/auth/tokens`.
    pub fn from_body(body: &Value) -> Result<TokenInfo, KeystoneError> {
        let token = body.get("token").ok_or_else(|| KeystoneError::BadResponse("no token in the body".into()))?;
        let text = |p: &str| token.at(p).and_then(Value::as_str).map(str::to_string);
        let user = text("/user/name").ok_or_else(|| KeystoneError::BadResponse("the token names no user".into()))?;
        let user_domain = text("/user/domain/name").unwrap_or_default();
        let project = match (text("/project/name"), text("/project/domain/name")) {
            (Some(p), Some(d)) => Some((p, d)),
            _ => None,
        };
        let mut roles: Vec<String> = token
            .get("roles")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|r| r.get("name").and_then(Value::as_str).map(str::to_string))
            .collect();
        roles.sort();
        roles.dedup();
        let expires_at = text("/expires_at").and_then(|t| api::time::parse_rfc3339(&t));
        Ok(TokenInfo { user, user_domain, project, roles, expires_at })
    }
}

/// An Atoll identity from Keystone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
    pub tenant: String,
    /// Seconds since the epoch.
    pub expires_at: Option<i64>,
}

/// The mapping of a token to an Atoll identity (see the module docs).
pub fn map_identity(info: &TokenInfo, domain: &str) -> Result<Identity, KeystoneError> {
    let Some((project, project_domain)) = &info.project else {
        return Err(KeystoneError::NotMapped(
            "the Keystone token is not scoped to a project; scope it to the project named like your tenant".into(),
        ));
    };
    if project_domain != domain {
        return Err(KeystoneError::NotMapped(format!(
            "Keystone project {project:?} is in domain {project_domain:?}; only projects of domain {domain:?} are \
             Atoll tenants"
        )));
    }
    if !api::request::is_dns_label(project)
        || project == api::request::SYSTEM_TENANT
        || project == api::request::ALL_TENANTS
    {
        return Err(KeystoneError::NotMapped(format!("Keystone project {project:?} cannot be an Atoll tenant")));
    }
    let user = if info.user_domain == domain {
        format!("keystone:{}", info.user)
    } else {
        format!("keystone:{}:{}", info.user_domain, info.user)
    };
    let mut groups: Vec<String> = info.roles.iter().map(|r| format!("keystone:{r}")).collect();
    groups.push("system:authenticated".into());
    Ok(Identity { user, groups, tenant: project.clone(), expires_at: info.expires_at })
}

/// A Keystone credential found in a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Credential {
    Token(String),
    Password { project: String, user: String, password: String },
}

impl Credential {
    /// The request's Keystone credential, if it carries one Keystone may judge.
    pub fn from_headers(headers: &HeaderMap) -> Option<Credential> {
        let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
        let (scheme, rest) = value.split_once(' ')?;
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            return (!rest.is_empty()).then(|| Credential::Token(rest.to_string()));
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD.decode(rest).ok()?;
            let decoded = String::from_utf8(decoded).ok()?;
            let (name, password) = decoded.split_once(':')?;
            let (project, user) = name.split_once('/')?;
            if project.is_empty() || user.is_empty() {
                return None;
            }
            return Some(Credential::Password {
                project: project.to_string(),
                user: user.to_string(),
                password: password.to_string(),
            });
        }
        None
    }
}

/// A Keystone v3 endpoint, spoken to over HTTP/1.1 (one connection per call: calls are
/// rare thanks to the cache).
pub struct KeystoneClient {
    https: bool,
    host: String,
    port: u16,
    /// The path up to and including `/v3`.
    base: String,
    tls: Option<tokio_rustls::TlsConnector>,
}

/// A token issued by Keystone.
pub struct IssuedToken {
    pub token: String,
    pub info: TokenInfo,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken").field("info", &self.info).finish_non_exhaustive()
    }
}

/// What a password authentication is scoped to.
pub enum TokenScope<'a> {
    Project { name: &'a str, domain: &'a str },
    System,
}

impl KeystoneClient {
    pub fn new(url: &str, ca_file: Option<&Path>) -> Result<KeystoneClient, KeystoneError> {
        let bad = |why: &str| KeystoneError::Config(format!("Keystone URL {url:?}: {why}"));
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad("must start with http:// or https://"));
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                (h, p.parse::<u16>().map_err(|_| bad("invalid port"))?)
            }
            _ => (authority, if https { 443 } else { 80 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let path = path.trim_end_matches('/');
        let base = if path.ends_with("/v3") { path.to_string() } else { format!("{path}/v3") };
        let tls = if https { Some(tls_connector(ca_file)?) } else { None };
        Ok(KeystoneClient { https, host, port, base, tls })
    }

    /// `POST /v3/auth/tokens` with a password.
    pub async fn password_token(
        &self,
        user: &str,
        user_domain: &str,
        password: &str,
        scope: TokenScope<'_>,
    ) -> Result<IssuedToken, KeystoneError> {
        let scope = match scope {
            TokenScope::Project { name, domain } => json!({"project": {"name": name, "domain": {"name": domain}}}),
            TokenScope::System => json!({"system": {"all": true}}),
        };
        let body = json!({"auth": {
            "identity": {"methods": ["password"],
                         "password": {"user": {"name": user, "domain": {"name": user_domain}, "password": password}}},
            "scope": scope,
        }});
        let (code, headers, body) =
            self.call(Method::POST, "/auth/tokens?nocatalog", &[], Some(body.to_string())).await?;
        match code {
            StatusCode::CREATED | StatusCode::OK => {
                let token = headers
                    .get("x-subject-token")
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| KeystoneError::BadResponse("no X-Subject-Token in the answer".into()))?
                    .to_string();
                Ok(IssuedToken { token, info: TokenInfo::from_body(&body)? })
            }
            // Keystone answers 401 for a wrong password or user and for a project the user has
            // no role on; the client learns only that the credentials were refused.
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST => {
                Err(KeystoneError::Refused("Keystone refused the user name, password or project".into()))
            }
            other => Err(unexpected(other, &body)),
        }
    }

    /// `GET /v3/auth/tokens`: `Ok(Some)` for a valid token, `Ok(None)` when Keystone says
    /// the subject token is invalid; `Err(Refused)` when the *authenticating* token was.
    pub async fn validate(&self, auth_token: &str, subject: &str) -> Result<Option<TokenInfo>, KeystoneError> {
        let (auth, subject) = match (header_value(auth_token), header_value(subject)) {
            (Some(a), Some(s)) => (a, s),
            // A token that cannot be a header value cannot be valid either.
            _ => return Ok(None),
        };
        let (code, _, body) = self
            .call(Method::GET, "/auth/tokens?nocatalog", &[("x-auth-token", auth), ("x-subject-token", subject)], None)
            .await?;
        match code {
            StatusCode::OK => Ok(Some(TokenInfo::from_body(&body)?)),
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Err(KeystoneError::Refused("Keystone refused to validate the token".into()))
            }
            other => Err(unexpected(other, &body)),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, HeaderValue)],
        body: Option<String>,
    ) -> Result<(StatusCode, HeaderMap, Value), KeystoneError> {
        tokio::time::timeout(TIMEOUT, self.call_once(method, path, headers, body))
            .await
            .map_err(|_| KeystoneError::Unavailable(format!("no answer within {TIMEOUT:?}")))?
    }

    async fn call_once(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, HeaderValue)],
        body: Option<String>,
    ) -> Result<(StatusCode, HeaderMap, Value), KeystoneError> {
        let unavailable = |e: &dyn std::fmt::Display| KeystoneError::Unavailable(e.to_string());
        let host_header = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(hyper::header::HOST, format!("{host_header}:{}", self.port))
            .header(hyper::header::ACCEPT, "application/json")
            .header(hyper::header::USER_AGENT, "atoll-apiserver");
        for (name, value) in headers {
            req = req.header(*name, value.clone());
        }
        if body.is_some() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| KeystoneError::Config(e.to_string()))?;
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await.map_err(|e| unavailable(&e))?;
        let _ = tcp.set_nodelay(true);
        let resp = match (&self.tls, self.https) {
            (Some(tls), true) => {
                let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|e| KeystoneError::Config(format!("Keystone host name: {e}")))?;
                let stream = tls.connect(name, tcp).await.map_err(|e| unavailable(&e))?;
                exchange(stream, req).await?
            }
            _ => exchange(tcp, req).await?,
        };
        let (parts, body) = resp.into_parts();
        let bytes = Limited::new(body, MAX_RESPONSE).collect().await.map_err(|e| unavailable(&*e))?.to_bytes();
        let value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        Ok((parts.status, parts.headers, value))
    }
}

async fn exchange<S>(io: S, req: Request<Full<Bytes>>) -> Result<hyper::Response<hyper::body::Incoming>, KeystoneError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let unavailable = |e: hyper::Error| KeystoneError::Unavailable(e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(unavailable)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await.map_err(unavailable)
}

fn header_value(token: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(token).ok()?;
    v.set_sensitive(true);
    Some(v)
}

fn unexpected(code: StatusCode, body: &Value) -> KeystoneError {
    // Keystone's error bodies carry a message and never the credential.
    let message = body.at("/error/message").and_then(Value::as_str).unwrap_or("");
    KeystoneError::BadResponse(format!("HTTP {code} {message}"))
}

fn tls_connector(ca_file: Option<&Path>) -> Result<tokio_rustls::TlsConnector, KeystoneError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let path = ca_file.unwrap_or(Path::new("/etc/ssl/certs/ca-certificates.crt"));
    let pem = std::fs::read(path).map_err(|e| {
        KeystoneError::Config(format!(
            "reading the CA file {} for Keystone: {e} (pass --keystone-ca-file)",
            path.display()
        ))
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| KeystoneError::Config(format!("{}: {e}", path.display())))?;
        roots.add(cert).map_err(|e| KeystoneError::Config(format!("{}: {e}", path.display())))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| KeystoneError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

type Outcome = Result<Identity, KeystoneError>;

struct Entry {
    outcome: Outcome,
    until: Instant,
}

/// Remembered outcomes, keyed by an HMAC of the credential so the map holds no secret.
pub struct Cache {
    key: ring::hmac::Key,
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

impl Cache {
    pub fn new(ttl: Duration, capacity: usize) -> Cache {
        let rng = ring::rand::SystemRandom::new();
        let key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
            .unwrap_or_else(|_| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &rand::random::<[u8; 32]>()));
        Cache { key, ttl, capacity: capacity.max(1), entries: Mutex::new(HashMap::new()) }
    }

    pub fn key_of(&self, credential: &Credential) -> [u8; 32] {
        let mut ctx = ring::hmac::Context::with_key(&self.key);
        match credential {
            Credential::Token(t) => {
                ctx.update(b"token\0");
                ctx.update(t.as_bytes());
            }
            Credential::Password { project, user, password } => {
                // Lengths first, so that no two different triples hash the same input.
                for part in [project, user, password] {
                    ctx.update(&(part.len() as u64).to_le_bytes());
                    ctx.update(part.as_bytes());
                }
            }
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    pub fn get(&self, key: &[u8; 32], now: Instant) -> Option<Outcome> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(key).filter(|e| e.until > now).map(|e| e.outcome.clone())
    }

    /// Remembers `outcome` from `now`: a success for the TTL but not past the token's
    /// expiry (`unix_now` is the wall clock in seconds), a refusal for at most
    /// [`FAILURE_TTL`], an outage not at all.
    pub fn put(&self, key: [u8; 32], outcome: &Outcome, now: Instant, unix_now: i64) {
        let life = match outcome {
            Ok(id) => match id.expires_at {
                Some(exp) if exp <= unix_now => return,
                Some(exp) => self.ttl.min(Duration::from_secs((exp - unix_now) as u64)),
                None => self.ttl,
            },
            Err(e) if e.cacheable() => self.ttl.min(FAILURE_TTL),
            Err(_) => return,
        };
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, e| e.until > now);
            // Still full of live entries: drop the one that expires first. O(n) only when
            // the cache is full of live entries, which the bound keeps small.
            if entries.len() >= self.capacity
                && let Some(k) = entries.iter().min_by_key(|(_, e)| e.until).map(|(k, _)| *k)
            {
                entries.remove(&k);
            }
        }
        entries.insert(key, Entry { outcome: outcome.clone(), until: now + life });
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Keystone as the API server uses it: client, service identity, cache.
pub struct Keystone {
    client: KeystoneClient,
    domain: String,
    service: Option<ServiceCredentials>,
    /// The service identity's token and when to renew it.
    service_token: tokio::sync::Mutex<Option<(String, Instant)>>,
    cache: Cache,
    /// Questions to Keystone under way, by cache key: kubectl sends a burst of requests
    /// with one new token, and Keystone should be asked once.
    in_flight: InFlight,
    pub auto_tenants: bool,
}

impl std::fmt::Debug for Keystone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keystone").field("domain", &self.domain).finish_non_exhaustive()
    }
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

type InFlight = Mutex<HashMap<[u8; 32], Arc<tokio::sync::OnceCell<Outcome>>>>;

/// Removes a question from the in-flight map when its last asker is done with it.
struct Retire<'a> {
    map: &'a InFlight,
    key: [u8; 32],
    cell: Arc<tokio::sync::OnceCell<Outcome>>,
}

impl Drop for Retire<'_> {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        // Two references: the map's and this asker's. More: someone else still waits on it.
        if map.get(&self.key).is_some_and(|c| Arc::ptr_eq(c, &self.cell)) && Arc::strong_count(&self.cell) <= 2 {
            map.remove(&self.key);
        }
    }
}

impl Keystone {
    pub fn new(config: &KeystoneConfig) -> Result<Keystone, KeystoneError> {
        let client = KeystoneClient::new(&config.url, config.ca_file.as_deref())?;
        let service = config.service_credentials.as_deref().map(ServiceCredentials::load).transpose()?;
        Ok(Keystone {
            client,
            domain: config.domain.clone(),
            service,
            service_token: tokio::sync::Mutex::new(None),
            cache: Cache::new(config.cache_ttl, config.cache_entries),
            in_flight: Mutex::new(HashMap::new()),
            auto_tenants: config.auto_tenants,
        })
    }

    /// `None` when the request carries no credential for Keystone; otherwise its verdict.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Option<Outcome> {
        let credential = Credential::from_headers(headers)?;
        let key = self.cache.key_of(&credential);
        if let Some(outcome) = self.cache.get(&key, Instant::now()) {
            return Some(outcome);
        }
        // Retired however this ends, a client that hangs up included, so that the map
        // cannot grow with abandoned questions.
        let retire = Retire {
            map: &self.in_flight,
            key,
            cell: self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default().clone(),
        };
        let outcome = retire
            .cell
            .get_or_init(|| async {
                let outcome = self.ask(&credential).await;
                match &outcome {
                    Ok(id) => tracing::debug!(user = %id.user, tenant = %id.tenant, "Keystone authenticated"),
                    Err(e) => tracing::info!(error = %e, "Keystone authentication failed"),
                }
                // Cached before the question is retired, so no later request asks again.
                self.cache.put(key, &outcome, Instant::now(), unix_now());
                outcome
            })
            .await
            .clone();
        Some(outcome)
    }

    async fn ask(&self, credential: &Credential) -> Outcome {
        let info = match credential {
            Credential::Password { project, user, password } => {
                let scope = TokenScope::Project { name: project, domain: &self.domain };
                self.client.password_token(user, &self.domain, password, scope).await?.info
            }
            Credential::Token(token) => self.validate(token).await?,
        };
        map_identity(&info, &self.domain)
    }

    async fn validate(&self, token: &str) -> Result<TokenInfo, KeystoneError> {
        let invalid = || KeystoneError::Refused("the Keystone token is invalid, expired or revoked".into());
        if self.service.is_none() {
            // Keystone lets a token validate itself.
            return match self.client.validate(token, token).await {
                Ok(Some(info)) => Ok(info),
                Ok(None) | Err(KeystoneError::Refused(_)) => Err(invalid()),
                Err(e) => Err(e),
            };
        }
        for attempt in 0..2 {
            let auth = self.service_token(attempt > 0).await?;
            match self.client.validate(&auth, token).await {
                Ok(Some(info)) => return Ok(info),
                Ok(None) => return Err(invalid()),
                // Our own token was refused (expired, revoked): renew it once.
                Err(KeystoneError::Refused(_)) if attempt == 0 => continue,
                Err(KeystoneError::Refused(_)) => {
                    return Err(KeystoneError::Config("the service identity may not validate tokens".into()));
                }
                Err(e) => return Err(e),
            }
        }
        Err(invalid())
    }

    async fn service_token(&self, renew: bool) -> Result<String, KeystoneError> {
        let mut held = self.service_token.lock().await;
        if !renew && let Some((token, _)) = held.as_ref().filter(|(_, until)| *until > Instant::now()) {
            return Ok(token.clone());
        }
        let service = self.service.as_ref().ok_or_else(|| KeystoneError::Config("no service identity".into()))?;
        let user_domain = service.user_domain.as_deref().unwrap_or(&self.domain);
        let scope = match &service.project {
            Some(name) => {
                TokenScope::Project { name, domain: service.project_domain.as_deref().unwrap_or(user_domain) }
            }
            None => TokenScope::System,
        };
        let issued =
            self.client.password_token(&service.username, user_domain, &service.password, scope).await.map_err(
                |e| match e {
                    KeystoneError::Refused(_) => {
                        KeystoneError::Config("Keystone refused the service identity's credentials".into())
                    }
                    other => other,
                },
            )?;
        // Renew a minute before Keystone's expiry (tokens live an hour by default).
        let left = issued
            .info
            .expires_at
            .map_or(Duration::from_secs(300), |exp| Duration::from_secs((exp - unix_now() - 60).max(0) as u64));
        *held = Some((issued.token.clone(), Instant::now() + left));
        Ok(issued.token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(project: Option<(&str, &str)>, roles: &[&str]) -> TokenInfo {
        TokenInfo {
            user: "alice".into(),
            user_domain: "Default".into(),
            project: project.map(|(p, d)| (p.into(), d.into())),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            expires_at: Some(2_000_000_000),
        }
    }

    #[test]
    fn projects_are_tenants_and_roles_are_groups() {
        let id = map_identity(&info(Some(("acme", "Default")), &["admin", "member"]), "Default").unwrap();
        assert_eq!(
            id,
            Identity {
                user: "keystone:alice".into(),
                groups: vec!["keystone:admin".into(), "keystone:member".into(), "system:authenticated".into()],
                tenant: "acme".into(),
                expires_at: Some(2_000_000_000),
            }
        );
        // No Keystone role becomes an Atoll administrator.
        assert!(!id.groups.iter().any(|g| g == "system:masters"));
        let mut foreign_user = info(Some(("acme", "Default")), &[]);
        foreign_user.user_domain = "ldap".into();
        assert_eq!(map_identity(&foreign_user, "Default").unwrap().user, "keystone:ldap:alice");
    }

    #[test]
    fn unmappable_tokens_are_refused() {
        for (project, why) in [
            (None, "not scoped to a project"),
            (Some(("acme", "other")), "only projects of domain"),
            (Some(("system", "Default")), "cannot be an Atoll tenant"),
            (Some(("all", "Default")), "cannot be an Atoll tenant"),
            (Some(("Not_A_Label", "Default")), "cannot be an Atoll tenant"),
        ] {
            let err = map_identity(&info(project, &["admin"]), "Default").unwrap_err();
            assert!(matches!(&err, KeystoneError::NotMapped(m) if m.contains(why)), "{project:?}: {err}");
            assert_eq!(err.to_status().code, 401);
        }
    }

    #[test]
    fn token_bodies_are_read() {
        let body = json!({"token": {
            "user": {"name": "bob", "domain": {"id": "default", "name": "Default"}},
            "project": {"name": "acme", "domain": {"id": "default", "name": "Default"}},
            "roles": [{"name": "reader"}, {"name": "member"}, {"name": "reader"}],
            "expires_at": "2033-05-18T03:33:20.000000Z"}});
        let info = TokenInfo::from_body(&body).unwrap();
        assert_eq!(info.user, "bob");
        assert_eq!(info.project, Some(("acme".into(), "Default".into())));
        assert_eq!(info.roles, ["member", "reader"]);
        assert_eq!(info.expires_at, Some(2_000_000_000));
        assert!(TokenInfo::from_body(&json!({})).is_err());
    }

    #[test]
    fn credentials_come_from_the_authorization_header() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            Credential::from_headers(&h)
        };
        assert_eq!(with("Bearer gAAAAAB"), Some(Credential::Token("gAAAAAB".into())));
        let basic = |s: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(s));
        assert_eq!(
            with(&basic("acme/alice:pa:ss")),
            Some(Credential::Password { project: "acme".into(), user: "alice".into(), password: "pa:ss".into() })
        );
        // A name without a project is for Atoll's own users, not Keystone.
        assert_eq!(with(&basic("alice:secret")), None);
        assert_eq!(with(&basic("/alice:secret")), None);
        assert_eq!(with("Bearer "), None);
        assert_eq!(with("Digest x"), None);
        assert_eq!(Credential::from_headers(&HeaderMap::new()), None);
    }

    fn identity(expires_at: Option<i64>) -> Identity {
        Identity { user: "keystone:alice".into(), groups: vec![], tenant: "acme".into(), expires_at }
    }

    #[test]
    fn the_cache_keeps_successes_for_the_ttl_and_failures_briefly() {
        let cache = Cache::new(Duration::from_secs(30), 16);
        let t0 = Instant::now();
        let ok = cache.key_of(&Credential::Token("good".into()));
        let bad = cache.key_of(&Credential::Token("bad".into()));
        let down = cache.key_of(&Credential::Token("down".into()));
        assert_ne!(ok, bad);
        cache.put(ok, &Ok(identity(None)), t0, 1_000);
        cache.put(bad, &Err(KeystoneError::Refused("no".into())), t0, 1_000);
        cache.put(down, &Err(KeystoneError::Unavailable("down".into())), t0, 1_000);
        assert!(cache.get(&ok, t0 + Duration::from_secs(29)).is_some_and(|o| o.is_ok()));
        assert!(cache.get(&ok, t0 + Duration::from_secs(30)).is_none());
        assert!(cache.get(&bad, t0 + Duration::from_secs(1)).is_some_and(|o| o.is_err()));
        assert!(cache.get(&bad, t0 + FAILURE_TTL).is_none());
        assert!(cache.get(&down, t0).is_none(), "an outage is not remembered");
        // Never past the token's own expiry, and an expired token is not kept at all.
        let soon = cache.key_of(&Credential::Token("soon".into()));
        cache.put(soon, &Ok(identity(Some(1_005))), t0, 1_000);
        assert!(cache.get(&soon, t0 + Duration::from_secs(4)).is_some());
        assert!(cache.get(&soon, t0 + Duration::from_secs(5)).is_none());
        let gone = cache.key_of(&Credential::Token("gone".into()));
        cache.put(gone, &Ok(identity(Some(999))), t0, 1_000);
        assert!(cache.get(&gone, t0).is_none());
    }

    #[test]
    fn the_cache_is_bounded_and_keyed_by_the_whole_credential() {
        let cache = Cache::new(Duration::from_secs(30), 3);
        let t0 = Instant::now();
        for i in 0..10u64 {
            let key = cache.key_of(&Credential::Token(format!("t{i}")));
            cache.put(key, &Ok(identity(None)), t0 + Duration::from_millis(i), 0);
            assert!(cache.len() <= 3);
        }
        // The newest stay.
        assert!(cache.get(&cache.key_of(&Credential::Token("t9".into())), t0).is_some());
        let pw = |p: &str, u: &str, s: &str| {
            cache.key_of(&Credential::Password { project: p.into(), user: u.into(), password: s.into() })
        };
        assert_ne!(pw("ab", "c", "x"), pw("a", "bc", "x"));
        assert_ne!(pw("a", "b", "x"), pw("a", "b", "y"));
        assert_eq!(pw("a", "b", "x"), pw("a", "b", "x"));
    }

    #[tokio::test]
    async fn an_unreachable_keystone_is_503_and_leaves_nothing_behind() {
        // A port nothing listens on: the connection is refused at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = KeystoneConfig {
            url: format!("http://127.0.0.1:{port}"),
            domain: "Default".into(),
            service_credentials: None,
            ca_file: None,
            cache_ttl: Duration::from_secs(30),
            cache_entries: 16,
            auto_tenants: false,
        };
        let keystone = Keystone::new(&config).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer gAAAAAsomething"));
        let asks = (0..4).map(|_| keystone.authenticate(&headers));
        for outcome in futures_join(asks).await {
            let err = outcome.unwrap().unwrap_err();
            assert!(matches!(err, KeystoneError::Unavailable(_)), "{err}");
            assert_eq!(err.to_status().code, 503);
        }
        assert!(keystone.cache.is_empty(), "an outage is not cached");
        assert!(keystone.in_flight.lock().unwrap().is_empty(), "every question is retired");
        assert!(keystone.authenticate(&HeaderMap::new()).await.is_none(), "no credential, no verdict");
    }

    /// Runs futures concurrently on the current task (no extra crate for `join_all`).
    async fn futures_join<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
        let mut set = Vec::new();
        for f in futures {
            set.push(Box::pin(f));
        }
        let mut out: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
        std::future::poll_fn(|cx| {
            let mut pending = false;
            for (i, f) in set.iter_mut().enumerate() {
                if out[i].is_none() {
                    match f.as_mut().poll(cx) {
                        std::task::Poll::Ready(v) => out[i] = Some(v),
                        std::task::Poll::Pending => pending = true,
                    }
                }
            }
            if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
        })
        .await;
        out.into_iter().map(|o| o.expect("every future finished")).collect()
    }

    #[test]
    fn urls_and_credentials_files() {
        let c = KeystoneClient::new("http://127.0.0.1:5000", None).unwrap();
        assert_eq!((c.host.as_str(), c.port, c.base.as_str()), ("127.0.0.1", 5000, "/v3"));
        let c = KeystoneClient::new("http://[::1]:5000/identity/v3/", None).unwrap();
        assert_eq!((c.host.as_str(), c.port, c.base.as_str()), ("::1", 5000, "/identity/v3"));
        let c = KeystoneClient::new("http://keystone", None).unwrap();
        assert_eq!(c.port, 80);
        assert!(KeystoneClient::new("ftp://x", None).is_err());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("svc.yaml");
        std::fs::write(&file, "username: atoll\npassword: hunter2\nproject: service\n").unwrap();
        let s = ServiceCredentials::load(&file).unwrap();
        assert_eq!((s.username.as_str(), s.project.as_deref()), ("atoll", Some("service")));
        assert!(!format!("{s:?}").contains("hunter2"));
        std::fs::write(&file, "username: atoll\npasword: hunter2\n").unwrap();
        let err = ServiceCredentials::load(&file).unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
