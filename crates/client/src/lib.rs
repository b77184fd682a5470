//! An async client of the Atoll (Kubernetes) API over HTTPS.
//!
//! Contract:
//! - Objects are untyped JSON (`serde_json::Value`), addressed by a [`Resource`] and a
//!   [`Scope`] (own tenant, a named tenant, or every tenant for lists and watches).
//! - The server is verified against the kubeconfig's CA; the caller is identified by its
//!   client certificate (or a bearer token). A server URL with a path prefix
//!   (`https://host:port/tenants/acme`) keeps that prefix on every request.
//! - Requests share one HTTP/2 connection (multiplexed, TCP_NODELAY, keep-alive pings);
//!   a broken connection is replaced on the next request.
//! - Every failure is an [`Error`]; an answer of the API that is not a success is
//!   [`Error::Api`] carrying the server's `Status`, so callers match on its reason.
//! - Watches are a [`WatchStream`] of typed events read from the line-delimited JSON body.
//! - A component running in the API server's own process may be given the server's request
//!   handler instead ([`Client::in_process`]): the same requests and answers, handed over in
//!   memory (no TLS, no HTTP/2 framing, no socket), authenticated from the same client
//!   certificate.

mod kubeconfig;
mod list;
mod resource;
mod shape;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::Value;

pub use kubeconfig::{Config, KubeconfigError, ServerUrl, default_user_agent};
pub use resource::{DeleteParams, ListParams, Patch, Resource, Scope, Tenant, WatchParams};
pub use shape::{Keep, Shape};

/// The part of a Kubernetes `Status` callers act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub code: u16,
    /// `NotFound`, `AlreadyExists`, `Conflict`, `Expired`, `Gone`, `Forbidden`, …
    pub reason: String,
    pub message: String,
}

impl Status {
    fn from_value(v: &Value, code: u16) -> Status {
        let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let code = v.get("code").and_then(Value::as_u64).and_then(|c| u16::try_from(c).ok()).unwrap_or(code);
        Status { code, reason: text("reason"), message: text("message") }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kubeconfig(#[from] KubeconfigError),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("connecting to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("{0:?} cannot be used as a name in a path")]
    InvalidName(String),
    /// The API answered with a failure `Status`.
    #[error("{} ({} {})", .0.message, .0.code, .0.reason)]
    Api(Status),
    #[error("the server's answer is not what was expected: {0}")]
    Decode(String),
}

impl Error {
    /// The API's status code, for errors that are API answers.
    pub fn code(&self) -> Option<u16> {
        match self {
            Error::Api(s) => Some(s.code),
            _ => None,
        }
    }
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(404)
    }
    pub fn is_already_exists(&self) -> bool {
        matches!(self, Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists")
    }
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Api(s) if s.code == 409 && s.reason != "AlreadyExists")
    }
    /// 410: the resource version asked for is older than the server keeps (re-list).
    pub fn is_gone(&self) -> bool {
        self.code() == Some(410)
    }
}

/// One event of a watch.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchEvent {
    Added(Value),
    Modified(Value),
    Deleted(Value),
    /// Progress: everything up to this revision has been sent.
    Bookmark {
        resource_version: String,
    },
    /// The watch failed (e.g. 410 Gone); the stream ends after it.
    Error(Status),
}

/// The events of one watch, in order; `Ok(None)` when the server ends the watch.
pub struct WatchStream {
    body: AnswerBody,
    buf: BytesMut,
    /// How much of `buf` is known to hold no newline (a long line arrives over many frames).
    scanned: usize,
    done: bool,
}

impl WatchStream {
    pub async fn next(&mut self) -> Result<Option<WatchEvent>, Error> {
        self.next_keeping(None).await
    }

    /// The next event, its object decoded in `keep`'s shape (see [`Keep`]).
    pub async fn next_keeping(&mut self, keep: Option<&Keep>) -> Result<Option<WatchEvent>, Error> {
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf[self.scanned..]).map(|i| i + self.scanned) {
                self.scanned = 0;
                let line = self.buf.split_to(i + 1);
                let line = &line[..i];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return parse_event(line, keep).map(Some);
            }
            self.scanned = self.buf.len();
            if self.done {
                if self.buf.iter().all(u8::is_ascii_whitespace) {
                    return Ok(None);
                }
                // A last event without its newline.
                let rest = self.buf.split();
                self.scanned = 0;
                return parse_event(&rest, keep).map(Some);
            }
            match self.body.frame().await {
                None => self.done = true,
                Some(frame) => {
                    if let Ok(mut data) = frame?.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            self.buf.extend_from_slice(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                    }
                }
            }
        }
    }
}

/// A watch event as it comes over the wire; decoded straight into its two fields, so the
/// object is neither wrapped in an outer map nor copied out of one.
#[derive(serde::Deserialize)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    object: Value,
}

fn parse_event(line: &[u8], keep: Option<&Keep>) -> Result<WatchEvent, Error> {
    let decoded = match keep {
        None => serde_json::from_slice(line),
        Some(keep) => {
            let mut d = serde_json::Deserializer::from_slice(line);
            serde::de::DeserializeSeed::deserialize(EventSeed(keep), &mut d).and_then(|e| d.end().map(|()| e))
        }
    };
    let RawEvent { kind, object } = decoded.map_err(|e| Error::Decode(format!("a watch event: {e}")))?;
    Ok(match kind.as_deref() {
        Some("ADDED") => WatchEvent::Added(object),
        Some("MODIFIED") => WatchEvent::Modified(object),
        Some("DELETED") => WatchEvent::Deleted(object),
        Some("BOOKMARK") => WatchEvent::Bookmark {
            resource_version: object
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        },
        Some("ERROR") => WatchEvent::Error(Status::from_value(&object, 500)),
        other => return Err(Error::Decode(format!("unknown watch event type {other:?}"))),
    })
}

/// A watch event whose object is decoded in a [`Keep`]'s shape. Errors and bookmarks are
/// decoded whole, whatever the shape says.
struct EventSeed<'a>(&'a Keep);

impl<'de> serde::de::DeserializeSeed<'de> for EventSeed<'_> {
    type Value = RawEvent;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<RawEvent, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for EventSeed<'_> {
    type Value = RawEvent;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a watch event")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RawEvent, A::Error> {
        let shaped = |kind: &Option<String>| matches!(kind.as_deref(), Some("ADDED" | "MODIFIED" | "DELETED"));
        // `early`: an object that came before the type, decoded whole until the type is known.
        let (mut kind, mut object, mut early) = (None::<String>, None, None);
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "type" => kind = Some(map.next_value()?),
                // Servers send the type first; an object before it is shaped afterwards.
                "object" if kind.is_none() => early = Some(map.next_value::<Value>()?),
                "object" if shaped(&kind) => object = Some(map.next_value_seed(self.0)?),
                "object" => object = Some(map.next_value::<Value>()?),
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        let object = match (object, early) {
            (Some(o), _) => o,
            (None, Some(o)) if shaped(&kind) => self.0.apply(o),
            (None, Some(o)) => o,
            (None, None) => Value::Null,
        };
        Ok(RawEvent { kind, object })
    }
}

/// A resource as discovery describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiResource {
    pub resource: Resource,
    pub kind: String,
    pub verbs: Vec<String>,
}

/// One page of a list.
#[derive(Clone, Debug)]
pub struct ObjectList {
    pub items: Vec<Value>,
    /// The revision the list was read at; watch from it.
    pub resource_version: String,
    /// Set when more pages follow.
    pub continue_token: Option<String>,
}

type SendRequest = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

/// An answer's body, from the connection or from a server in this process.
type AnswerBody = BoxBody<Bytes, hyper::Error>;

/// What an API server in this process answers a request with (see [`Client::in_process`]).
pub type InProcessAnswer = Pin<Box<dyn Future<Output = Response<BoxBody<Bytes, Infallible>>> + Send>>;

/// An API server's request handler in this process, for [`Client::in_process`]: the
/// request as it would have come over the connection, its answer as it would have gone.
pub type InProcessHandler = Arc<dyn Fn(Request<Full<Bytes>>) -> InProcessAnswer + Send + Sync>;

/// Longest wait for a TCP connection, and again for its TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

struct Inner {
    config: Config,
    tls: tokio_rustls::TlsConnector,
    server_name: rustls::pki_types::ServerName<'static>,
    /// The shared HTTP/2 connection, replaced when it closes.
    conn: tokio::sync::Mutex<Option<SendRequest>>,
    connects: std::sync::atomic::AtomicU64,
    /// The server's handler, when it runs in this process: requests never reach `conn`.
    in_process: Option<InProcessHandler>,
}

/// A client of one API server; cheap to clone (clones share the connection).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("server", &self.inner.config.server).finish()
    }
}

fn tls_config(config: &Config) -> Result<rustls::ClientConfig, Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let tls = |e: &dyn std::fmt::Display| Error::Tls(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&config.ca_pem) {
        roots.add(cert.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
    }
    if roots.is_empty() {
        return Err(Error::Tls("the certificate authority holds no certificate".into()));
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_root_certificates(roots);
    let mut cfg = match &config.identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert).collect::<Result<Vec<_>, _>>().map_err(|e| tls(&e))?;
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| tls(&e))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| tls(&e))?
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

impl Client {
    pub fn new(config: Config) -> Result<Client, Error> {
        let tls = tokio_rustls::TlsConnector::from(Arc::new(tls_config(&config)?));
        let name = config.tls_server_name.clone().unwrap_or_else(|| config.server.host.clone());
        let server_name = rustls::pki_types::ServerName::try_from(name.clone())
            .map_err(|_| Error::Tls(format!("{name:?} is not a valid server name")))?;
        Ok(Client {
            inner: Arc::new(Inner {
                config,
                tls,
                server_name,
                conn: tokio::sync::Mutex::new(None),
                connects: std::sync::atomic::AtomicU64::new(0),
                in_process: None,
            }),
        })
    }

    /// A client of the API server running in this process: each request goes to `handler`
    /// in memory instead of over a connection. `config` is the component's own (its
    /// certificate is the identity the handler authenticates; its server URL's prefix is
    /// kept on every path as over the network).
    pub fn in_process(config: Config, handler: InProcessHandler) -> Result<Client, Error> {
        let mut client = Client::new(config)?;
        if let Some(inner) = Arc::get_mut(&mut client.inner) {
            inner.in_process = Some(handler);
        }
        Ok(client)
    }

    /// A client for the kubeconfig at `path` (its current context).
    pub fn from_kubeconfig(path: &std::path::Path) -> Result<Client, Error> {
        Client::new(Config::from_kubeconfig(path, None)?)
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    async fn connect(&self) -> Result<SendRequest, Error> {
        let server = &self.inner.config.server;
        let addr = server.authority();
        let connect_err = |source| Error::Connect { addr: addr.clone(), source };
        let timed_out = |what: &str| connect_err(std::io::Error::new(std::io::ErrorKind::TimedOut, what.to_string()));
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&addr))
            .await
            .map_err(|_| timed_out("connect timed out"))?
            .map_err(connect_err)?;
        // Small requests and watch events must not wait for Nagle's algorithm.
        tcp.set_nodelay(true).map_err(connect_err)?;
        // Bounded, since every request waits for the connection being made.
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, self.inner.tls.connect(self.inner.server_name.clone(), tcp))
            .await
            .map_err(|_| timed_out("TLS handshake timed out"))?
            .map_err(connect_err)?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(Error::Tls("the server did not agree to HTTP/2".into()));
        }
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // Pings find a dead peer even when only a quiet watch is open.
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(tls))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "API connection ended");
            }
        });
        Ok(sender)
    }

    async fn sender(&self) -> Result<SendRequest, Error> {
        let mut conn = self.inner.conn.lock().await;
        if let Some(s) = conn.as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        let s = self.connect().await?;
        self.inner.connects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *conn = Some(s.clone());
        Ok(s)
    }

    /// Drops the shared connection if it has closed, so the next request makes a new one.
    async fn forget_closed(&self) {
        let mut conn = self.inner.conn.lock().await;
        if conn.as_ref().is_some_and(|s| s.is_closed()) {
            *conn = None;
        }
    }

    /// How many connections this client (and its clones) has opened.
    pub fn connections_opened(&self) -> u64 {
        self.inner.connects.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Response<AnswerBody>, Error> {
        self.send_accepting(method, path, "application/json", body, None).await
    }

    /// One request exactly as given (`path` after the server's prefix, with its query),
    /// answered with the status code and the whole body whatever they are: for tests and
    /// tools that look at the API's raw answers.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        accept: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<(u16, Bytes), Error> {
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|_| Error::Decode(format!("{method:?} is not an HTTP method")))?;
        let resp = self.send_accepting(method, path, accept, body, None).await?;
        let code = resp.status().as_u16();
        Ok((code, resp.into_body().collect().await?.to_bytes()))
    }

    /// Every request goes out here. `authorization`: the header to send instead of the
    /// configuration's bearer token (a login's Basic credentials).
    async fn send_accepting(
        &self,
        method: Method,
        path: &str,
        accept: &str,
        body: Option<(&str, Vec<u8>)>,
        authorization: Option<&str>,
    ) -> Result<Response<AnswerBody>, Error> {
        let uri = format!("{}{}", self.inner.config.server.prefix, path);
        let authority = self.inner.config.server.authority();
        // A request the server never saw (the connection had closed) is tried once more on a
        // fresh connection.
        for attempt in 0..2 {
            let mut builder = Request::builder()
                .method(method.clone())
                .uri(format!("https://{authority}{uri}"))
                .header(hyper::header::ACCEPT, accept)
                .header(hyper::header::USER_AGENT, &self.inner.config.user_agent);
            match (authorization, &self.inner.config.token) {
                (Some(given), _) => builder = builder.header(hyper::header::AUTHORIZATION, given),
                (None, Some(token)) => {
                    builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
                }
                (None, None) => {}
            }
            let payload = match &body {
                Some((content_type, bytes)) => {
                    builder = builder.header(hyper::header::CONTENT_TYPE, *content_type);
                    Bytes::from(bytes.clone())
                }
                None => Bytes::new(),
            };
            let req =
                builder.body(Full::new(payload)).map_err(|e| Error::Decode(format!("building a request: {e}")))?;
            if let Some(handler) = &self.inner.in_process {
                let answer = handler(req).await;
                return Ok(answer.map(|b| b.map_err(|never| match never {}).boxed()));
            }
            let mut sender = self.sender().await?;
            // Not ready: the request was never sent, so trying it on a new connection is safe.
            if let Err(e) = sender.ready().await {
                self.forget_closed().await;
                if attempt == 0 {
                    tracing::debug!(error = %e, "API connection lost; reconnecting");
                    continue;
                }
                return Err(e.into());
            }
            match sender.send_request(req).await {
                Ok(resp) => return Ok(resp.map(BodyExt::boxed)),
                // Cancelled: never sent. A read may be repeated whatever happened; a write
                // that may have reached the server is left to the caller.
                Err(e) if attempt == 0 && (e.is_canceled() || (method == Method::GET && sender.is_closed())) => {
                    tracing::debug!(error = %e, "API connection lost; reconnecting");
                    self.forget_closed().await;
                }
                Err(e) => {
                    self.forget_closed().await;
                    return Err(e.into());
                }
            }
        }
        Err(Error::Decode("unreachable: the retry loop ended".into()))
    }

    /// Trades a User's name (`TENANT/NAME`) and password for a short-lived token at the
    /// server's login endpoint; returns the `ExecCredential` it answers (for `atoll login`,
    /// a kubectl credential plugin). The password is sent once, over the verified TLS
    /// connection, and kept nowhere.
    pub async fn login(&self, user: &str, password: &str) -> Result<Value, Error> {
        use base64::Engine;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let basic = format!("Basic {basic}");
        let resp = self.send_accepting(Method::POST, "/atoll/login", "application/json", None, Some(&basic)).await?;
        let retry_after =
            resp.headers().get(hyper::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_string);
        Self::json_answer(resp).await.map_err(|e| match (e, retry_after) {
            (Error::Api(mut status), Some(wait)) => {
                status.message = format!("{} (retry after {wait} s)", status.message);
                Error::Api(status)
            }
            (e, _) => e,
        })
    }

    /// Sends a request and decodes a JSON answer; a failure status becomes `Error::Api`.
    async fn call(&self, method: Method, path: &str, body: Option<(&str, Vec<u8>)>) -> Result<Value, Error> {
        Self::json_answer(self.send(method, path, body).await?).await
    }

    /// A request on one object (or, without a name, on the collection) or its subresource.
    async fn call_on(
        &self,
        method: Method,
        at: (&Resource, &Scope, Option<&str>, Option<&str>),
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Value, Error> {
        let (resource, scope, name, subresource) = at;
        self.call(method, &Self::object_path(resource, scope, name, subresource)?, body).await
    }

    /// A JSON answer, or the `Status` of a failure (its body's, else its first bytes).
    async fn json_answer(resp: Response<AnswerBody>) -> Result<Value, Error> {
        Self::answer_keeping(resp, None).await
    }

    /// The same, the answer decoded in `keep`'s shape (`None`: whole).
    async fn answer_keeping(resp: Response<AnswerBody>, keep: Option<&Keep>) -> Result<Value, Error> {
        let code = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        if !(200..300).contains(&code) {
            return Err(Error::Api(Self::failure(code, &bytes)));
        }
        match keep {
            None => serde_json::from_slice::<Value>(&bytes),
            Some(keep) => keep.decode_slice(&bytes),
        }
        .map_err(|e| Error::Decode(format!("the answer is not JSON: {e}")))
    }

    /// A write whose answer (the object as written) is decoded only in `keep`'s shape: a
    /// writer that needs little of it (a name, nothing) skips building the rest.
    async fn write_keeping(
        &self,
        method: Method,
        at: (&Resource, &Scope, Option<&str>, Option<&str>),
        body: Option<(&str, Vec<u8>)>,
        keep: &Keep,
    ) -> Result<Value, Error> {
        let (resource, scope, name, subresource) = at;
        let path = Self::object_path(resource, scope, name, subresource)?;
        Self::answer_keeping(self.send(method, &path, body).await?, Some(keep)).await
    }

    fn failure(code: u16, bytes: &[u8]) -> Status {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(v) => Status::from_value(&v, code),
            Err(_) => Status {
                code,
                reason: String::new(),
                message: String::from_utf8_lossy(bytes).chars().take(200).collect(),
            },
        }
    }

    fn object_path(
        resource: &Resource,
        scope: &Scope,
        name: Option<&str>,
        subresource: Option<&str>,
    ) -> Result<String, Error> {
        let segments =
            [name, subresource, scope.namespace.as_deref()].into_iter().flatten().chain(match &scope.tenant {
                Tenant::Named(t) => Some(t.as_str()),
                _ => None,
            });
        for s in segments {
            if !resource::valid_segment(s) {
                return Err(Error::InvalidName(s.to_string()));
            }
        }
        Ok(resource::path(resource, scope, name, subresource))
    }

    fn json_body(obj: &Value) -> Option<(&'static str, Vec<u8>)> {
        Some(("application/json", serde_json::to_vec(obj).unwrap_or_default()))
    }

    fn patch_body(patch: &Patch) -> Option<(&'static str, Vec<u8>)> {
        Some((patch.content_type(), serde_json::to_vec(patch.body()).unwrap_or_default()))
    }

    pub async fn get(&self, resource: &Resource, scope: &Scope, name: &str) -> Result<Value, Error> {
        self.call_on(Method::GET, (resource, scope, Some(name), None), None).await
    }

    pub async fn list(&self, resource: &Resource, scope: &Scope, params: &ListParams) -> Result<ObjectList, Error> {
        self.list_keeping(resource, scope, params, &Keep::shape(Shape::all())).await
    }

    /// A list whose items are each decoded in `keep`'s shape (the rest skipped, never built)
    /// and finished by it before the next: a caller that keeps a few fields of each of
    /// 100,000 objects never holds the whole decoded answer (client-go's informer transforms
    /// apply only after it).
    pub async fn list_keeping(
        &self,
        resource: &Resource,
        scope: &Scope,
        params: &ListParams,
        keep: &Keep,
    ) -> Result<ObjectList, Error> {
        let path = format!("{}{}", Self::object_path(resource, scope, None, None)?, params.query());
        let resp = self.send(Method::GET, &path, None).await?;
        let code = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        if !(200..300).contains(&code) {
            return Err(Error::Api(Self::failure(code, &bytes)));
        }
        let mut decoder = serde_json::Deserializer::from_slice(&bytes);
        let (meta, items) = serde::de::DeserializeSeed::deserialize(list::ListSeed { keep }, &mut decoder)
            .and_then(|list| decoder.end().map(|()| list))
            .map_err(|e| Error::Decode(format!("the answer is not a list: {e}")))?;
        Ok(ObjectList {
            items,
            resource_version: meta.get("resourceVersion").and_then(Value::as_str).unwrap_or("").to_string(),
            continue_token: meta.get("continue").and_then(Value::as_str).filter(|c| !c.is_empty()).map(str::to_string),
        })
    }

    pub async fn create(&self, resource: &Resource, scope: &Scope, obj: &Value) -> Result<Value, Error> {
        self.call_on(Method::POST, (resource, scope, None, None), Self::json_body(obj)).await
    }

    /// [`Client::create`], the created object decoded only in `keep`'s shape.
    pub async fn create_keeping(
        &self,
        resource: &Resource,
        scope: &Scope,
        obj: &Value,
        keep: &Keep,
    ) -> Result<Value, Error> {
        self.write_keeping(Method::POST, (resource, scope, None, None), Self::json_body(obj), keep).await
    }

    /// Replaces an object (optimistic concurrency on its `metadata.resourceVersion`).
    pub async fn replace(&self, resource: &Resource, scope: &Scope, name: &str, obj: &Value) -> Result<Value, Error> {
        self.call_on(Method::PUT, (resource, scope, Some(name), None), Self::json_body(obj)).await
    }

    /// Replaces a subresource, e.g. `status`.
    pub async fn replace_subresource(
        &self,
        resource: &Resource,
        scope: &Scope,
        name: &str,
        subresource: &str,
        obj: &Value,
    ) -> Result<Value, Error> {
        self.call_on(Method::PUT, (resource, scope, Some(name), Some(subresource)), Self::json_body(obj)).await
    }

    /// Creates (POSTs) to a subresource, e.g. a pod's `binding`.
    pub async fn create_subresource(
        &self,
        resource: &Resource,
        scope: &Scope,
        name: &str,
        subresource: &str,
        obj: &Value,
    ) -> Result<Value, Error> {
        self.call_on(Method::POST, (resource, scope, Some(name), Some(subresource)), Self::json_body(obj)).await
    }

    /// Patches a subresource, e.g. `status`.
    pub async fn patch_subresource(
        &self,
        resource: &Resource,
        scope: &Scope,
        name: &str,
        subresource: &str,
        patch: &Patch,
    ) -> Result<Value, Error> {
        self.call_on(Method::PATCH, (resource, scope, Some(name), Some(subresource)), Self::patch_body(patch)).await
    }

    /// [`Client::patch_subresource`], the answer decoded only in `keep`'s shape.
    pub async fn patch_subresource_keeping(
        &self,
        at: (&Resource, &Scope, &str, &str),
        patch: &Patch,
        keep: &Keep,
    ) -> Result<Value, Error> {
        let (resource, scope, name, subresource) = at;
        self.write_keeping(
            Method::PATCH,
            (resource, scope, Some(name), Some(subresource)),
            Self::patch_body(patch),
            keep,
        )
        .await
    }

    pub async fn patch(&self, resource: &Resource, scope: &Scope, name: &str, patch: &Patch) -> Result<Value, Error> {
        self.call_on(Method::PATCH, (resource, scope, Some(name), None), Self::patch_body(patch)).await
    }

    /// Deletes an object; returns the object as deleted, or as marked for deletion while
    /// finalizers or a grace period hold it.
    pub async fn delete(
        &self,
        resource: &Resource,
        scope: &Scope,
        name: &str,
        params: &DeleteParams,
    ) -> Result<Value, Error> {
        let mut path = Self::object_path(resource, scope, Some(name), None)?;
        path.push_str(&resource::query(&[
            ("gracePeriodSeconds", params.grace_period_seconds.map(|g| g.to_string())),
            ("dryRun", params.dry_run.then(|| "All".into())),
        ]));
        let mut options = serde_json::json!({"kind": "DeleteOptions", "apiVersion": "v1"});
        if let Some(uid) = &params.precondition_uid {
            options["preconditions"]["uid"] = Value::from(uid.as_str());
        }
        if let Some(policy) = &params.propagation_policy {
            options["propagationPolicy"] = Value::from(policy.as_str());
        }
        if let Some(rv) = &params.precondition_resource_version {
            options["preconditions"]["resourceVersion"] = Value::from(rv.as_str());
        }
        self.call(Method::DELETE, &path, Self::json_body(&options)).await
    }

    /// Deletes every object of `resource` in `scope` that the selectors match; returns the
    /// server's list of what it deleted (or marked for deletion).
    pub async fn delete_collection(
        &self,
        resource: &Resource,
        scope: &Scope,
        params: &ListParams,
    ) -> Result<Value, Error> {
        let path = format!("{}{}", Self::object_path(resource, scope, None, None)?, params.query());
        self.call(Method::DELETE, &path, None).await
    }

    /// Every resource the server serves (discovery), without subresources: what a
    /// controller that must reach "every kind" (namespace or tenant deletion) iterates.
    pub async fn api_resources(&self) -> Result<Vec<ApiResource>, Error> {
        self.api_resources_in(&Tenant::Own).await
    }

    /// Every resource served in `tenant` (its custom resources differ from another's),
    /// through the tenant prefix for a named tenant.
    pub async fn api_resources_in(&self, tenant: &Tenant) -> Result<Vec<ApiResource>, Error> {
        let prefix = match tenant {
            Tenant::Named(t) if resource::valid_segment(t) => format!("/tenants/{t}"),
            Tenant::Named(t) => return Err(Error::InvalidName(t.clone())),
            _ => String::new(),
        };
        let mut group_versions = vec![(String::new(), "v1".to_string())];
        let groups = self.call(Method::GET, &format!("{prefix}/apis"), None).await?;
        for g in groups["groups"].as_array().into_iter().flatten() {
            let name = g["name"].as_str().unwrap_or("");
            let version = g.pointer("/preferredVersion/version").and_then(Value::as_str).unwrap_or("");
            if !name.is_empty() && !version.is_empty() {
                group_versions.push((name.to_string(), version.to_string()));
            }
        }
        let mut out = Vec::new();
        for (group, version) in group_versions {
            let path = if group.is_empty() {
                format!("{prefix}/api/{version}")
            } else {
                format!("{prefix}/apis/{group}/{version}")
            };
            let list = self.call(Method::GET, &path, None).await?;
            for r in list["resources"].as_array().into_iter().flatten() {
                let plural = r["name"].as_str().unwrap_or("");
                if plural.is_empty() || plural.contains('/') {
                    continue;
                }
                out.push(ApiResource {
                    resource: Resource::new(&group, &version, plural, r["namespaced"] == Value::Bool(true)),
                    kind: r["kind"].as_str().unwrap_or("").to_string(),
                    verbs: r["verbs"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect(),
                });
            }
        }
        Ok(out)
    }

    /// Starts a watch. A failure before the first event (e.g. 410 for a revision the
    /// server no longer keeps) is an `Err`; one after it arrives as `WatchEvent::Error`.
    pub async fn watch(&self, resource: &Resource, scope: &Scope, params: &WatchParams) -> Result<WatchStream, Error> {
        let path = format!("{}{}", Self::object_path(resource, scope, None, None)?, params.query());
        let resp = self.send(Method::GET, &path, None).await?;
        let code = resp.status().as_u16();
        if !(200..300).contains(&code) {
            let bytes = resp.into_body().collect().await?.to_bytes();
            return Err(Error::Api(Self::failure(code, &bytes)));
        }
        Ok(WatchStream { body: resp.into_body(), buf: BytesMut::new(), scanned: 0, done: false })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_lines_become_typed_events() {
        let added = parse_event(br#"{"type":"ADDED","object":{"metadata":{"name":"a"}}}"#, None).unwrap();
        assert_eq!(added, WatchEvent::Added(serde_json::json!({"metadata": {"name": "a"}})));
        let bookmark =
            parse_event(br#"{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"12"}}}"#, None).unwrap();
        assert_eq!(bookmark, WatchEvent::Bookmark { resource_version: "12".into() });
        let gone = parse_event(
            br#"{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired","message":"too old"}}"#,
            None,
        )
        .unwrap();
        assert_eq!(gone, WatchEvent::Error(Status { code: 410, reason: "Expired".into(), message: "too old".into() }));
        assert!(matches!(parse_event(b"{\"type\":\"NOPE\"}", None), Err(Error::Decode(_))));
        assert!(matches!(parse_event(b"not json", None), Err(Error::Decode(_))));
    }

    /// A body that hands out the given frames, one per poll.
    struct Frames(std::collections::VecDeque<&'static [u8]>);

    impl hyper::body::Body for Frames {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
            std::task::Poll::Ready(self.0.pop_front().map(|f| Ok(hyper::body::Frame::data(Bytes::from_static(f)))))
        }
    }

    #[tokio::test]
    async fn watch_events_are_cut_at_newlines_whatever_the_frames() {
        let frames = [
            &br#"{"type":"ADDED","object":{"n":1}}"#[..],
            b"\n{\"type\":\"MODIFIED\",\"obj",
            b"ect\":{\"n\"",
            b":2}}\n\n{\"type\":\"ADDED\",\"object\":{\"n\":3}}\n{\"type\":\"DELETED\",\"object\":{\"n\":4}}\n",
            b"{\"type\":\"ADDED\",\"object\":{\"n\":5}}",
        ];
        let body = Frames(frames.into_iter().collect()).map_err(|never| match never {}).boxed();
        let mut stream = WatchStream { body, buf: BytesMut::new(), scanned: 0, done: false };
        let mut seen = Vec::new();
        while let Some(event) = stream.next().await.unwrap() {
            seen.push(event);
        }
        let n = |i: i64| serde_json::json!({"n": i});
        assert_eq!(
            seen,
            [
                WatchEvent::Added(n(1)),
                WatchEvent::Modified(n(2)),
                WatchEvent::Added(n(3)),
                WatchEvent::Deleted(n(4)),
                WatchEvent::Added(n(5))
            ]
        );
    }

    #[test]
    fn errors_classify_by_status() {
        let api = |code, reason: &str| Error::Api(Status { code, reason: reason.into(), message: String::new() });
        assert!(api(404, "NotFound").is_not_found());
        assert!(api(409, "AlreadyExists").is_already_exists() && !api(409, "AlreadyExists").is_conflict());
        assert!(api(409, "Conflict").is_conflict());
        assert!(api(410, "Expired").is_gone());
        assert!(!Error::Decode(String::new()).is_gone());
    }
}
