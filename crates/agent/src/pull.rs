//! Image pulls (and pushes) over the OCI Distribution API v2.
//!
//! Contract:
//! - HTTPS, verified against the system's CA bundle plus any CA the node is given
//!   (`--registry-ca`); plain HTTP only for registries the node lists as insecure
//!   (`--insecure-registry host:port`). Nothing is insecure by default, loopback included:
//!   an image name is chosen by a tenant, so the node must not quietly speak clear text for it.
//! - Auth: anonymous, then on a `401` the registry's challenge: `Basic` (the credential as
//!   is) or `Bearer` (a token from the challenge's realm, asked for with the credential).
//!   Credentials are never logged and never sent in clear text to a host not listed as
//!   insecure, nor along a redirect to another host.
//! - Manifests: OCI image manifest and index, Docker v2 schema 2 manifest and manifest
//!   list; an index resolves to the host's platform (`linux/amd64` here). Every manifest is
//!   checked against the digest it was asked by (or the registry's `Docker-Content-Digest`).
//! - Blobs stream into [`ImageStore::begin_blob`]; a blob whose size or digest differs
//!   from its descriptor is refused and never stored; blobs already present are skipped.
//! - Concurrent pulls of the same reference with the same credentials share one transfer
//!   ([`Puller::pull`]); pulls with other credentials do not ride on it, so a caller
//!   without the right to an image never gets it through someone else's pull.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::images::{
    Descriptor, Image, ImageError, ImageStore, Index, MEDIA_DOCKER_LIST, MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST, Manifest,
    host_platform,
};
use crate::reference::{DEFAULT_REGISTRY, Digest, Reference, ReferenceError};

pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MEDIA_DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1";
/// Registries answer with the best of these they have.
const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";
/// Manifests and token answers are small; a registry sending more is misbehaving
/// (containerd's limit for manifests).
const MAX_DOCUMENT: usize = 4 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a response's head, and for each piece of a body.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_REDIRECTS: usize = 5;
/// Where Docker Hub's API is; `docker.io` is only its name.
const DOCKER_HUB_API: &str = "registry-1.docker.io";
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("invalid URL {0:?}")]
    Url(String),
    #[error("connecting to {addr}: {detail}")]
    Connect { addr: String, detail: String },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("talking to {addr}: {detail}")]
    Http { addr: String, detail: String },
    #[error("{what}: the registry answered {code}{detail}")]
    Status { what: String, code: u16, detail: String },
    #[error("{0}: not found")]
    NotFound(String),
    #[error("{0}: authorization failed (no credentials, or the registry refused them)")]
    Unauthorized(String),
    #[error("{0} is larger than its descriptor says")]
    TooLarge(String),
    #[error("{what} has digest {actual}, not the {expected} it was asked by")]
    DigestMismatch { what: String, expected: Digest, actual: Digest },
    #[error("malformed {what}: {detail}")]
    Malformed { what: String, detail: String },
    #[error("unsupported manifest type {0:?}")]
    Unsupported(String),
    #[error("no manifest for {os}/{arch} in the image index")]
    NoPlatform { os: &'static str, arch: &'static str },
    #[error("refusing to send credentials for {0} over plain HTTP (the host is not listed as insecure)")]
    CleartextCredentials(String),
    #[error("image store: {0}")]
    Image(#[from] ImageError),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("timed out {0}")]
    Timeout(String),
    /// The outcome of the same pull started by another caller.
    #[error("{0}")]
    Shared(String),
}

fn malformed(what: impl std::fmt::Display, detail: impl std::fmt::Display) -> PullError {
    PullError::Malformed { what: what.to_string(), detail: detail.to_string() }
}

/// A user name and password (or token) for a registry. `Debug` hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential").field("username", &self.username).field("password", &"<redacted>").finish()
    }
}

impl Credential {
    fn basic(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
    }
}

/// Credentials by registry, from Docker config files: `{"auths": {...}}` (a
/// `kubernetes.io/dockerconfigjson` Secret, `~/.docker/config.json`) or the bare map of a
/// `kubernetes.io/dockercfg` Secret. Keys are registries, optionally with a path prefix
/// (`reg.io/team`) and a leading `*.` wildcard label, as the kubelet matches them.
#[derive(Clone, Debug, Default)]
pub struct Keyring {
    /// (host, path prefix, credential), in the order added.
    entries: Vec<(String, String, Credential)>,
}

/// `https://index.docker.io/v1/` → (`docker.io`, ``); `reg.io:5000/team/` → (`reg.io:5000`, `team`).
fn normalise_key(key: &str) -> (String, String) {
    let key = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    let key = key.trim_end_matches('/');
    let (host, path) = key.split_once('/').unwrap_or((key, ""));
    let host = host.to_ascii_lowercase();
    let docker_hub = matches!(host.as_str(), "index.docker.io" | "registry-1.docker.io" | "docker.io");
    if docker_hub {
        // Docker's own key for Hub is `https://index.docker.io/v1/`: `v1` is no path prefix.
        let path = if path == "v1" { "" } else { path };
        return (DEFAULT_REGISTRY.into(), path.to_string());
    }
    (host, path.to_string())
}

fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        // One label, as a glob over dot-separated parts.
        Some(suffix) => host.split_once('.').is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
        None => pattern == host,
    }
}

impl Keyring {
    /// Adds the entries of one Docker config document.
    pub fn add_docker_config(&mut self, json: &[u8]) -> Result<(), PullError> {
        let doc: Value = serde_json::from_slice(json).map_err(|e| malformed("docker config", e))?;
        let auths = match doc.get("auths") {
            Some(a) => a,
            None => &doc,
        };
        let Some(auths) = auths.as_object() else { return Err(malformed("docker config", "no auths object")) };
        for (key, entry) in auths {
            let text = |k: &str| entry.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            let (mut username, mut password) = (text("username"), text("password"));
            if username.is_empty() && password.is_empty() {
                let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(text("auth")) else { continue };
                let raw = String::from_utf8_lossy(&raw).into_owned();
                let Some((u, p)) = raw.split_once(':') else { continue };
                (username, password) = (u.to_string(), p.to_string());
            }
            if username.is_empty() && password.is_empty() {
                continue;
            }
            let (host, path) = normalise_key(key);
            self.entries.push((host, path, Credential { username, password }));
        }
        Ok(())
    }

    /// The credentials that apply to `reference`, the most specific key first.
    pub fn lookup(&self, reference: &Reference) -> Vec<Credential> {
        let host = reference.registry.to_ascii_lowercase();
        let mut found: Vec<(usize, &Credential)> = self
            .entries
            .iter()
            .filter(|(h, p, _)| {
                host_matches(h, &host)
                    && (p.is_empty()
                        || reference.repository == *p
                        || reference.repository.starts_with(&format!("{p}/")))
            })
            .map(|(h, p, c)| (h.len() + p.len(), c))
            .collect();
        // Stable: equally specific keys keep the order they were added in.
        found.sort_by_key(|(len, _)| std::cmp::Reverse(*len));
        let mut out: Vec<Credential> = Vec::new();
        for (_, c) in found {
            if !out.contains(c) {
                out.push(c.clone());
            }
        }
        out
    }
}

/// One authentication challenge of a `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// Lowercase: `basic`, `bearer`.
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

/// Parses a `WWW-Authenticate` value (RFC 7235): one or more challenges, each a scheme and
/// `key=value` parameters, values bare or quoted (with `\` escapes; commas inside quotes).
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    let s = header.as_bytes();
    let mut i = 0;
    let skip = |i: &mut usize, set: &[u8]| {
        while *i < s.len() && set.contains(&s[*i]) {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let start = *i;
        while *i < s.len() && !b" \t,=\"".contains(&s[*i]) {
            *i += 1;
        }
        header[start..*i].to_string()
    };
    loop {
        skip(&mut i, b" \t,");
        if i >= s.len() {
            return out;
        }
        let word = token(&mut i);
        if word.is_empty() {
            // A stray character: give up on the rest rather than guess.
            return out;
        }
        let mut j = i;
        skip(&mut j, b" \t");
        if j < s.len() && s[j] == b'=' && !out.is_empty() {
            // A parameter of the current challenge.
            i = j + 1;
            skip(&mut i, b" \t");
            let value = if i < s.len() && s[i] == b'"' {
                i += 1;
                let mut v = Vec::new();
                while i < s.len() && s[i] != b'"' {
                    if s[i] == b'\\' && i + 1 < s.len() {
                        i += 1;
                    }
                    v.push(s[i]);
                    i += 1;
                }
                i += 1;
                String::from_utf8_lossy(&v).into_owned()
            } else {
                token(&mut i)
            };
            if let Some(last) = out.last_mut() {
                last.params.insert(word.to_ascii_lowercase(), value);
            }
        } else {
            out.push(Challenge { scheme: word.to_ascii_lowercase(), params: BTreeMap::new() });
        }
    }
}

/// How the node reaches registries.
#[derive(Clone, Debug, Default)]
pub struct RegistryConfig {
    /// `host[:port]`s spoken to over plain HTTP.
    pub insecure: Vec<String>,
    /// Extra CA certificates (PEM files) trusted besides the system's.
    pub ca_files: Vec<PathBuf>,
    /// The node's own credentials: a Docker config file, read at each pull.
    pub credentials_file: Option<PathBuf>,
}

impl RegistryConfig {
    /// The node's credentials that apply to `reference`; a missing or unreadable file is
    /// no credentials (logged, without its content).
    pub fn node_credentials(&self, reference: &Reference) -> Vec<Credential> {
        let Some(path) = &self.credentials_file else { return Vec::new() };
        let mut keyring = Keyring::default();
        match std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|b| keyring.add_docker_config(&b).map_err(|e| e.to_string()))
        {
            Ok(()) => keyring.lookup(reference),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "reading the node's registry credentials");
                Vec::new()
            }
        }
    }
}

/// An absolute URL, as far as the Distribution API needs one.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Url {
    https: bool,
    /// `host[:port]`
    authority: String,
    /// Path and query, starting with `/`.
    path: String,
}

impl Url {
    fn parse(s: &str) -> Result<Url, PullError> {
        let (https, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(PullError::Url(s.to_string()));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(PullError::Url(s.to_string()));
        }
        let path = if path.starts_with('?') { format!("/{path}") } else { path.to_string() };
        Ok(Url { https, authority: authority.to_string(), path })
    }

    /// A `Location` relative to this URL (absolute, or an absolute path).
    fn join(&self, location: &str) -> Result<Url, PullError> {
        if location.starts_with("https://") || location.starts_with("http://") {
            Url::parse(location)
        } else if location.starts_with('/') {
            Ok(Url { path: location.to_string(), ..self.clone() })
        } else {
            Err(PullError::Url(location.to_string()))
        }
    }

    fn host(&self) -> &str {
        let a = self.authority.as_str();
        if let Some(rest) = a.strip_prefix('[') {
            return rest.split_once(']').map_or(rest, |(h, _)| h);
        }
        a.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(a, |(h, _)| h)
    }

    fn socket_addr(&self) -> String {
        let a = &self.authority;
        let has_port = if a.starts_with('[') { a.contains("]:") } else { a.contains(':') };
        if has_port { a.clone() } else { format!("{a}:{}", if self.https { 443 } else { 80 }) }
    }
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Connections to registries: HTTP/1.1, one connection per request (a pull makes a
/// handful of requests, most of the time goes to the bodies).
pub struct Transport {
    tls: tokio_rustls::TlsConnector,
    insecure: Vec<String>,
}

impl Transport {
    pub fn new(config: &RegistryConfig) -> Result<Transport, PullError> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let tls = |e: &dyn std::fmt::Display| PullError::Tls(e.to_string());
        let mut roots = rustls::RootCertStore::empty();
        let mut pems: Vec<(PathBuf, Vec<u8>)> = Vec::new();
        // The system bundle is optional (a node may trust only its own CA); given CAs are not.
        if let Ok(b) = std::fs::read(SYSTEM_CA_BUNDLE) {
            pems.push((SYSTEM_CA_BUNDLE.into(), b));
        }
        for f in &config.ca_files {
            let b = std::fs::read(f).map_err(|e| PullError::Tls(format!("reading {}: {e}", f.display())))?;
            pems.push((f.clone(), b));
        }
        for (file, pem) in pems {
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| PullError::Tls(format!("{}: {e}", file.display())))?;
                // One odd certificate in the system bundle must not take the others down.
                if let Err(e) = roots.add(cert) {
                    tracing::debug!(file = %file.display(), error = %e, "skipping a CA certificate");
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls(&e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let insecure = config.insecure.iter().map(|h| h.to_ascii_lowercase()).collect();
        Ok(Transport { tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)), insecure })
    }

    fn is_insecure(&self, authority: &str) -> bool {
        self.insecure.iter().any(|h| h == &authority.to_ascii_lowercase())
    }

    /// The API's base for a registry name: HTTPS unless listed insecure.
    fn base(&self, registry: &str) -> Url {
        let authority = if registry == DEFAULT_REGISTRY { DOCKER_HUB_API } else { registry };
        Url { https: !self.is_insecure(authority), authority: authority.to_string(), path: "/".into() }
    }

    async fn send(
        &self,
        method: Method,
        url: &Url,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<Response<Incoming>, PullError> {
        let addr = url.socket_addr();
        let connect_err = |detail: String| PullError::Connect { addr: addr.clone(), detail };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&addr))
            .await
            .map_err(|_| connect_err("timed out".into()))?
            .map_err(|e| connect_err(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = if url.https {
            let name = rustls::pki_types::ServerName::try_from(url.host().to_string())
                .map_err(|_| PullError::Url(url.authority.clone()))?;
            let tls = tokio::time::timeout(CONNECT_TIMEOUT, self.tls.connect(name, tcp))
                .await
                .map_err(|_| connect_err("TLS handshake timed out".into()))?
                .map_err(|e| connect_err(e.to_string()))?;
            Box::new(tls)
        } else {
            if !self.is_insecure(&url.authority) {
                return Err(connect_err("plain HTTP is only for registries listed as insecure".into()));
            }
            Box::new(tcp)
        };
        let http_err = |e: hyper::Error| PullError::Http { addr: url.authority.clone(), detail: e.to_string() };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(http_err)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "registry connection ended");
            }
        });
        let mut req = Request::builder()
            .method(method)
            .uri(&url.path)
            .header(hyper::header::HOST, &url.authority)
            .header(hyper::header::USER_AGENT, concat!("atoll-agent/", env!("CARGO_PKG_VERSION")));
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req.body(Full::new(body)).map_err(|e| PullError::Url(e.to_string()))?;
        tokio::time::timeout(READ_TIMEOUT, sender.send_request(req))
            .await
            .map_err(|_| PullError::Timeout(format!("waiting for {}", url.authority)))?
            .map_err(http_err)
    }
}

/// Reads a whole (small) body, refusing more than `limit` bytes.
async fn read_limited(resp: Response<Incoming>, limit: usize, what: &str) -> Result<Bytes, PullError> {
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(frame) = next_frame(&mut body, what).await? {
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(PullError::TooLarge(what.to_string()));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.into())
}

async fn next_frame(body: &mut Incoming, what: &str) -> Result<Option<hyper::body::Frame<Bytes>>, PullError> {
    match tokio::time::timeout(READ_TIMEOUT, body.frame()).await {
        Err(_) => Err(PullError::Timeout(format!("reading {what}"))),
        Ok(None) => Ok(None),
        Ok(Some(Err(e))) => Err(PullError::Http { addr: what.to_string(), detail: e.to_string() }),
        Ok(Some(Ok(f))) => Ok(Some(f)),
    }
}

/// A short, printable excerpt of an error body (registries explain in JSON).
async fn error_detail(resp: Response<Incoming>) -> String {
    match read_limited(resp, 64 << 10, "an error").await {
        Ok(b) if !b.is_empty() => {
            let text: String = String::from_utf8_lossy(&b).chars().take(300).collect();
            format!(": {}", text.trim())
        }
        _ => String::new(),
    }
}

fn header(resp: &Response<Incoming>, name: &str) -> Option<String> {
    resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// Requests to one repository of one registry, authenticated as the registry asks.
struct Session<'a> {
    transport: &'a Transport,
    base: Url,
    repository: String,
    credential: Option<&'a Credential>,
    /// `pull` or `pull,push`: the scope a bearer token is asked for.
    actions: &'static str,
    authorization: Option<String>,
}

impl<'a> Session<'a> {
    fn new(
        transport: &'a Transport,
        reference: &Reference,
        credential: Option<&'a Credential>,
        actions: &'static str,
    ) -> Session<'a> {
        Session {
            transport,
            base: transport.base(&reference.registry),
            repository: reference.repository.clone(),
            credential,
            actions,
            authorization: None,
        }
    }

    fn url(&self, path: &str) -> Url {
        Url { path: format!("/v2/{}/{path}", self.repository), ..self.base.clone() }
    }

    /// One request; on a `401`, answers the challenge once and sends it again.
    async fn request(
        &mut self,
        method: Method,
        url: &Url,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<Response<Incoming>, PullError> {
        for attempt in 0..2 {
            let mut h = headers.to_vec();
            // Credentials go only to the registry itself (a redirect elsewhere goes without).
            if url.authority == self.base.authority
                && let Some(a) = &self.authorization
            {
                h.push(("authorization", a.clone()));
            }
            let resp = self.transport.send(method.clone(), url, &h, body.clone()).await?;
            if resp.status() != hyper::StatusCode::UNAUTHORIZED || url.authority != self.base.authority {
                return Ok(resp);
            }
            if attempt == 1 {
                break;
            }
            let challenges: Vec<Challenge> = resp
                .headers()
                .get_all(hyper::header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(parse_challenges)
                .collect();
            self.authenticate(&challenges).await?;
        }
        Err(PullError::Unauthorized(format!("{}/{}", self.base.authority, self.repository)))
    }

    async fn authenticate(&mut self, challenges: &[Challenge]) -> Result<(), PullError> {
        let denied = || PullError::Unauthorized(format!("{}/{}", self.base.authority, self.repository));
        if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            let realm = bearer.params.get("realm").ok_or_else(|| malformed("bearer challenge", "no realm"))?;
            let mut realm = Url::parse(realm)?;
            let mut query = Vec::new();
            if let Some(service) = bearer.params.get("service") {
                query.push(format!("service={}", encode_query(service)));
            }
            let scope = match bearer.params.get("scope") {
                Some(s) if self.actions == "pull" => s.clone(),
                _ => format!("repository:{}:{}", self.repository, self.actions),
            };
            query.push(format!("scope={}", encode_query(&scope)));
            realm.path =
                format!("{}{}{}", realm.path, if realm.path.contains('?') { "&" } else { "?" }, query.join("&"));
            let mut headers = Vec::new();
            if let Some(c) = self.credential {
                if !realm.https && !self.transport.is_insecure(&realm.authority) {
                    return Err(PullError::CleartextCredentials(realm.authority.clone()));
                }
                headers.push(("authorization", c.basic()));
            }
            let resp = self.transport.send(Method::GET, &realm, &headers, Bytes::new()).await?;
            match resp.status().as_u16() {
                200 => {}
                401 | 403 => return Err(denied()),
                code => {
                    let detail = error_detail(resp).await;
                    return Err(PullError::Status { what: "the token service".into(), code, detail });
                }
            }
            let body = read_limited(resp, MAX_DOCUMENT, "a token answer").await?;
            let v: Value = serde_json::from_slice(&body).map_err(|e| malformed("token answer", e))?;
            let token = v
                .get("token")
                .or_else(|| v.get("access_token"))
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| malformed("token answer", "no token"))?;
            self.authorization = Some(format!("Bearer {token}"));
            return Ok(());
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            let c = self.credential.ok_or_else(denied)?;
            if !self.base.https {
                // Listed as insecure: the operator chose clear text for this registry.
                tracing::debug!(registry = %self.base.authority, "basic auth over plain HTTP");
            }
            self.authorization = Some(c.basic());
            return Ok(());
        }
        Err(denied())
    }

    /// A GET that follows redirects (blob stores often send clients elsewhere), never
    /// from HTTPS down to HTTP.
    async fn get(&mut self, url: Url, headers: &[(&str, String)]) -> Result<Response<Incoming>, PullError> {
        let mut url = url;
        for _ in 0..=MAX_REDIRECTS {
            let resp = self.request(Method::GET, &url, headers, Bytes::new()).await?;
            if !resp.status().is_redirection() {
                return Ok(resp);
            }
            let location = header(&resp, "location").ok_or_else(|| malformed("redirect", "no Location"))?;
            let next = url.join(&location)?;
            if url.https && !next.https {
                return Err(malformed("redirect", "from HTTPS to plain HTTP"));
            }
            url = next;
        }
        Err(malformed("redirects", "too many"))
    }
}

fn encode_query(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What a pull moved.
#[derive(Clone, Debug, Default)]
pub struct PullStats {
    /// Blob bytes downloaded (blobs already present are not counted).
    pub bytes: u64,
    pub blobs_fetched: usize,
    pub blobs_skipped: usize,
}

/// A finished pull.
#[derive(Clone, Debug)]
pub struct Pulled {
    pub image: Image,
    pub stats: PullStats,
    /// Which of the credentials given was accepted (`None`: anonymous).
    pub credential: Option<usize>,
}

type Outcome = Option<Result<(Digest, Option<usize>), String>>;

/// Pulls images into one store; shared by every pod sync of the node.
pub struct Puller {
    store: Arc<ImageStore>,
    transport: Transport,
    inflight: Mutex<HashMap<String, tokio::sync::watch::Receiver<Outcome>>>,
}

/// Removes an in-flight entry however its pull ends (error, panic, cancellation).
struct Inflight<'a> {
    map: &'a Mutex<HashMap<String, tokio::sync::watch::Receiver<Outcome>>>,
    key: String,
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.key);
    }
}

fn is_index(media_type: &str, doc: &Value) -> bool {
    media_type == MEDIA_OCI_INDEX || media_type == MEDIA_DOCKER_LIST || doc.get("manifests").is_some()
}

impl Puller {
    pub fn new(store: Arc<ImageStore>, config: &RegistryConfig) -> Result<Puller, PullError> {
        Ok(Puller { store, transport: Transport::new(config)?, inflight: Mutex::new(HashMap::new()) })
    }

    pub fn store(&self) -> &Arc<ImageStore> {
        &self.store
    }

    /// Pulls `reference`, trying each credential in turn (anonymous when there are none),
    /// and names it in the store. A pull of the same reference with the same credentials
    /// already under way is waited for instead of repeated.
    pub async fn pull(&self, reference: &Reference, credentials: &[Credential]) -> Result<Pulled, PullError> {
        let mut fingerprint = Sha256::new();
        for c in credentials {
            fingerprint.update(c.username.as_bytes());
            fingerprint.update([0]);
            fingerprint.update(c.password.as_bytes());
            fingerprint.update([0]);
        }
        let key = format!("{reference} {}", Digest::from_sha256(&fingerprint.finalize()));
        let waiting = {
            let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            match map.get(&key) {
                Some(rx) => Err(rx.clone()),
                None => {
                    let (tx, rx) = tokio::sync::watch::channel(None);
                    map.insert(key.clone(), rx);
                    Ok(tx)
                }
            }
        };
        let tx = match waiting {
            Ok(tx) => tx,
            Err(mut rx) => {
                let outcome = rx.wait_for(Option::is_some).await.map(|o| o.clone()).ok().flatten();
                return match outcome {
                    Some(Ok((digest, credential))) => Ok(Pulled {
                        image: self.store.resolve(digest.as_str())?,
                        stats: PullStats::default(),
                        credential,
                    }),
                    Some(Err(e)) => Err(PullError::Shared(e)),
                    None => Err(PullError::Shared("the pull this one waited for was abandoned".into())),
                };
            }
        };
        let _guard = Inflight { map: &self.inflight, key };
        let result = self.pull_uncoalesced(reference, credentials).await;
        let outcome = result.as_ref().map(|p| (p.image.manifest_digest.clone(), p.credential));
        let _ = tx.send(Some(outcome.map_err(|e| e.to_string())));
        result
    }

    /// One pull, not shared with other callers; also says what it moved.
    pub async fn pull_uncoalesced(
        &self,
        reference: &Reference,
        credentials: &[Credential],
    ) -> Result<Pulled, PullError> {
        if credentials.is_empty() {
            let (image, stats) = self.pull_as(reference, None).await?;
            return Ok(Pulled { image, stats, credential: None });
        }
        let mut last = None;
        for (i, c) in credentials.iter().enumerate() {
            match self.pull_as(reference, Some(c)).await {
                Err(e @ PullError::Unauthorized(_)) => last = Some(e),
                Err(e) => return Err(e),
                Ok((image, stats)) => return Ok(Pulled { image, stats, credential: Some(i) }),
            }
        }
        Err(last.unwrap_or_else(|| PullError::Unauthorized(reference.name())))
    }

    async fn pull_as(
        &self,
        reference: &Reference,
        credential: Option<&Credential>,
    ) -> Result<(Image, PullStats), PullError> {
        let mut s = Session::new(&self.transport, reference, credential, "pull");
        let wanted = match (&reference.digest, &reference.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        };
        let (bytes, media_type, digest) = self.manifest(&mut s, reference, &wanted, reference.digest.as_ref()).await?;
        let doc: Value = serde_json::from_slice(&bytes).map_err(|e| malformed("manifest", e))?;
        // The digest the name resolved to (an index's, for a multi-platform image): the
        // repository digest by which the pulled image is reported (`imageID`).
        let resolved = digest.clone();
        let (bytes, digest) = if is_index(&media_type, &doc) {
            let index: Index = serde_json::from_value(doc).map_err(|e| malformed("image index", e))?;
            let child = pick_platform(&index)?;
            let (b, _, d) = self.manifest(&mut s, reference, child.as_str(), Some(&child)).await?;
            (b, d)
        } else {
            (bytes, digest)
        };
        let manifest = parse_manifest(&bytes)?;
        let mut stats = PullStats::default();
        for desc in std::iter::once(&manifest.config).chain(&manifest.layers) {
            self.fetch_blob(&mut s, desc, &mut stats).await?;
        }
        let (stored, _) = self.store.put_blob(&bytes)?;
        if stored != digest {
            return Err(PullError::DigestMismatch { what: "the manifest".into(), expected: digest, actual: stored });
        }
        self.store.tag(reference, &digest)?;
        // Named by repository digest too, as containerd's CRI names what it pulls.
        let by_digest = Reference { tag: None, digest: Some(resolved), ..reference.clone() };
        if by_digest != *reference {
            self.store.tag(&by_digest, &digest)?;
        }
        Ok((self.store.resolve(digest.as_str())?, stats))
    }

    /// Fetches a manifest (or index) by tag or digest; returns it, its media type and its
    /// digest, checked against `expected` and the registry's `Docker-Content-Digest`.
    async fn manifest(
        &self,
        s: &mut Session<'_>,
        reference: &Reference,
        wanted: &str,
        expected: Option<&Digest>,
    ) -> Result<(Bytes, String, Digest), PullError> {
        let url = s.url(&format!("manifests/{wanted}"));
        let resp = s.get(url, &[("accept", ACCEPT_MANIFESTS.to_string())]).await?;
        match resp.status().as_u16() {
            200 => {}
            404 => return Err(PullError::NotFound(format!("{}@{wanted}", reference.name()))),
            code => {
                let detail = error_detail(resp).await;
                return Err(PullError::Status { what: format!("manifest {wanted}"), code, detail });
            }
        }
        let media_type = header(&resp, "content-type").unwrap_or_default();
        let media_type = media_type.split(';').next().unwrap_or("").trim().to_string();
        let claimed = header(&resp, "docker-content-digest").and_then(|d| Digest::parse(&d));
        let bytes = read_limited(resp, MAX_DOCUMENT, "a manifest").await?;
        let actual = Digest::from_sha256(&Sha256::digest(&bytes));
        for want in [expected, claimed.as_ref()].into_iter().flatten() {
            if *want != actual {
                return Err(PullError::DigestMismatch {
                    what: format!("manifest {wanted}"),
                    expected: want.clone(),
                    actual,
                });
            }
        }
        if media_type.starts_with(MEDIA_DOCKER_SCHEMA1) {
            return Err(PullError::Unsupported(media_type));
        }
        Ok((bytes, media_type, actual))
    }

    /// Streams one blob into the store unless it is there; refuses content longer or
    /// shorter than the descriptor, or of another digest.
    async fn fetch_blob(&self, s: &mut Session<'_>, desc: &Descriptor, stats: &mut PullStats) -> Result<(), PullError> {
        let digest = Digest::parse(&desc.digest).ok_or_else(|| malformed("descriptor digest", &desc.digest))?;
        if self.store.has_blob(&digest) {
            stats.blobs_skipped += 1;
            return Ok(());
        }
        let what = format!("blob {digest}");
        let resp = s.get(s.url(&format!("blobs/{digest}")), &[]).await?;
        match resp.status().as_u16() {
            200 => {}
            404 => return Err(PullError::NotFound(what)),
            code => {
                let detail = error_detail(resp).await;
                return Err(PullError::Status { what, code, detail });
            }
        }
        let mut body = resp.into_body();
        let mut w = self.store.begin_blob()?;
        let mut n: u64 = 0;
        let result = async {
            while let Some(frame) = next_frame(&mut body, &what).await? {
                let Ok(data) = frame.into_data() else { continue };
                n += data.len() as u64;
                if n > desc.size {
                    return Err(PullError::TooLarge(what.clone()));
                }
                w.write_all(&data).map_err(|e| malformed(&what, format!("writing to the store: {e}")))?;
            }
            if n != desc.size {
                return Err(malformed(&what, format!("{n} bytes, the descriptor says {}", desc.size)));
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            w.abort();
            return Err(e);
        }
        match w.commit(Some(&digest)) {
            Ok(_) => {}
            Err(ImageError::DigestMismatch { expected, actual }) => {
                return Err(PullError::DigestMismatch { what, expected, actual });
            }
            Err(e) => return Err(e.into()),
        }
        stats.bytes += n;
        stats.blobs_fetched += 1;
        Ok(())
    }

    /// Pushes an image of the store to `target` (blobs the registry has are skipped), with
    /// a monolithic upload per blob. Returns the manifest's digest.
    pub async fn push(
        &self,
        image: &Image,
        target: &Reference,
        credential: Option<&Credential>,
    ) -> Result<Digest, PullError> {
        let mut s = Session::new(&self.transport, target, credential, "pull,push");
        for desc in std::iter::once(&image.manifest.config).chain(&image.manifest.layers) {
            let digest = Digest::parse(&desc.digest).ok_or_else(|| malformed("descriptor digest", &desc.digest))?;
            let head = s.request(Method::HEAD, &s.url(&format!("blobs/{digest}")), &[], Bytes::new()).await?;
            if head.status().is_success() {
                continue;
            }
            let start = s.request(Method::POST, &s.url("blobs/uploads/"), &[], Bytes::new()).await?;
            if start.status().as_u16() != 202 {
                let code = start.status().as_u16();
                return Err(PullError::Status {
                    what: "starting an upload".into(),
                    code,
                    detail: error_detail(start).await,
                });
            }
            let location = header(&start, "location").ok_or_else(|| malformed("upload", "no Location"))?;
            let mut url = s.base.join(&location)?;
            url.path = format!("{}{}digest={}", url.path, if url.path.contains('?') { "&" } else { "?" }, digest);
            let bytes = Bytes::from(self.store.read_blob(&digest)?);
            let headers = [("content-type", "application/octet-stream".to_string())];
            let done = s.request(Method::PUT, &url, &headers, bytes).await?;
            if done.status().as_u16() != 201 {
                let code = done.status().as_u16();
                return Err(PullError::Status {
                    what: format!("uploading {digest}"),
                    code,
                    detail: error_detail(done).await,
                });
            }
        }
        let bytes = Bytes::from(self.store.read_blob(&image.manifest_digest)?);
        let media_type = image.manifest.media_type.clone().unwrap_or_else(|| MEDIA_OCI_MANIFEST.into());
        let tag = target.tag.clone().unwrap_or_else(|| image.manifest_digest.to_string());
        let url = s.url(&format!("manifests/{tag}"));
        let resp = s.request(Method::PUT, &url, &[("content-type", media_type)], bytes).await?;
        if resp.status().as_u16() != 201 {
            let code = resp.status().as_u16();
            return Err(PullError::Status {
                what: "putting the manifest".into(),
                code,
                detail: error_detail(resp).await,
            });
        }
        Ok(image.manifest_digest.clone())
    }
}

/// The host platform's manifest of an index (the first match, as Docker picks).
fn pick_platform(index: &Index) -> Result<Digest, PullError> {
    let (os, arch) = host_platform();
    let pick = index
        .manifests
        .iter()
        .find(|m| m.platform.as_ref().is_some_and(|p| p.os == os && p.architecture == arch))
        .ok_or(PullError::NoPlatform { os, arch })?;
    Digest::parse(&pick.digest).ok_or_else(|| malformed("index entry", &pick.digest))
}

fn parse_manifest(bytes: &[u8]) -> Result<Manifest, PullError> {
    let m: Manifest = serde_json::from_slice(bytes).map_err(|e| malformed("image manifest", e))?;
    if m.schema_version != 2 {
        return Err(PullError::Unsupported(format!("schemaVersion {}", m.schema_version)));
    }
    Ok(m)
}

/// How long a pull took and what it moved, for `atoll image pull` and the events.
pub fn throughput(bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-6);
    format!("{:.1} MiB in {:.3}s ({:.1} MiB/s)", bytes as f64 / 1048576.0, secs, bytes as f64 / 1048576.0 / secs)
}

/// The time since `start`, as the kubelet prints it in `Pulled` events (`1.234s`).
pub fn seconds_since(start: Instant) -> String {
    format!("{:.3}s", start.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests;
