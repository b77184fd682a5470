//! The agent's HTTPS port (the kubelet's port, 10250 by default): container logs, exec and
//! attach, for the API server alone. The API server has already decided whether its caller
//! may do this; the agent only makes sure the caller *is* the API server: mutual TLS with a
//! client certificate from the cluster CA (none: the handshake fails) whose `CN` is
//! `system:apiserver` (another: 403), and the pod must be one bound to this node.
//!
//! Routes (`uid` is the pod's UID, the sandbox's ID; the API server resolved it):
//! - `GET /containerLogs/{uid}/{container}?follow&previous&tailLines&sinceSeconds&sinceTime&timestamps&limitBytes`
//! - `GET|POST /exec/{uid}/{container}?command=..&stdin&stdout&stderr&tty` (upgrade)
//! - `GET|POST /attach/{uid}/{container}?stdin&stdout&stderr&tty` (upgrade)
//! - `GET|POST /portForward/{uid}` (upgrade: SPDY/3.1 `portforward.k8s.io`, or it tunnelled in WebSocket)

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use controllers::Cache;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::runtime::Runtime;
use crate::runtime::logs::{LogOptions, Stream};
use crate::sessions::{self, SessionError};
use crate::stream::{self, Streams};

/// The only client identity the port serves.
pub const APISERVER_CN: &str = "system:apiserver";
const APISERVER_TENANT: &str = "system";

type Body = BoxBody<Bytes, Infallible>;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("listening on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
}

/// Where and with which certificates the port is served.
#[derive(Clone, Debug)]
pub struct ServingConfig {
    pub listen: SocketAddr,
    pub cert_pem: String,
    pub key_pem: String,
    /// The CA client certificates must chain to (the cluster CA).
    pub client_ca_pem: String,
}

/// What a request needs from the agent.
pub struct AgentContext {
    pub runtime: Arc<dyn Runtime>,
    /// The pods bound to this node.
    pub pods: Cache,
}

fn tls_config(c: &ServingConfig) -> Result<rustls::ServerConfig, ServeError> {
    use rustls::pki_types::pem::PemObject;
    let tls = |e: &dyn std::fmt::Display| ServeError::Tls(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs =
        |pem: &str| rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>();
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(&c.client_ca_pem).map_err(|e| tls(&e))? {
        roots.add(cert).map_err(|e| tls(&e))?;
    }
    // No `allow_unauthenticated`: a client without a CA-signed certificate fails the handshake.
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| tls(&e))?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).map_err(|e| tls(&e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&c.cert_pem).map_err(|e| tls(&e))?, key)
        .map_err(|e| tls(&e))?;
    // Upgrades (exec, attach) need HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A bound port, ready to serve.
pub struct AgentServer {
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl AgentServer {
    pub async fn bind(config: &ServingConfig) -> Result<AgentServer, ServeError> {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(config)?));
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServeError::Listen { addr: config.listen, source })?;
        Ok(AgentServer { listener, acceptor })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop` resolves.
    pub async fn run(self, ctx: Arc<AgentContext>, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            let (tcp, peer) = tokio::select! {
                _ = &mut stop => return,
                accepted = self.listener.accept() => match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "agent port: accept failed");
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, ctx) = (self.acceptor.clone(), ctx.clone());
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::info!(%peer, error = %e, "agent port: TLS handshake refused");
                        return;
                    }
                    Err(_) => return,
                };
                let is_apiserver =
                    tls.get_ref().1.peer_certificates().and_then(|c| c.first()).is_some_and(|der| is_apiserver(der));
                let service = hyper::service::service_fn(move |req| {
                    let ctx = ctx.clone();
                    async move {
                        let resp = if is_apiserver {
                            handle(ctx, req).await
                        } else {
                            status(403, "Forbidden", "only the API server may use the node agent's port")
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .with_upgrades();
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "agent port: connection ended with an error");
                }
            });
        }
    }
}

/// The API server's identity: `CN=system:apiserver` of the system tenant (`OU=system`),
/// exactly one of each, as the cluster's certificates carry identities.
fn is_apiserver(der: &[u8]) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else { return false };
    let subject = cert.subject();
    let cns: Vec<&str> = subject.iter_common_name().filter_map(|a| a.as_str().ok()).collect();
    let ous: Vec<&str> = subject.iter_organizational_unit().filter_map(|a| a.as_str().ok()).collect();
    cns == [APISERVER_CN] && ous == [APISERVER_TENANT]
}

fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": reason, "code": code});
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn session_error(e: &SessionError) -> Response<Body> {
    match e {
        SessionError::NoContainer { .. } | SessionError::NoPrevious { .. } | SessionError::NotRunning { .. } => {
            status(400, "BadRequest", &e.to_string())
        }
        SessionError::Runtime(crate::runtime::RuntimeError::WrongState { state, .. }) => {
            status(400, "BadRequest", &format!("the container is {state:?}, not running"))
        }
        _ => status(500, "InternalError", &e.to_string()),
    }
}

fn query(req: &Request<Incoming>) -> Vec<(String, String)> {
    api::request::query_pairs(req.uri().query().unwrap_or("")).collect()
}

fn flag(q: &[(String, String)], key: &str) -> bool {
    q.iter().any(|(k, v)| k == key && matches!(v.as_str(), "1" | "true" | "True" | ""))
}

fn value<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// `sinceTime` as our log's fixed-width timestamps, so text comparison stays exact.
fn normalize_time(t: &str) -> Option<String> {
    let (secs, rest) = t.split_at_checked(19)?;
    let frac = rest.strip_suffix('Z')?;
    let digits = frac.strip_prefix('.').unwrap_or(frac);
    if !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 9 {
        return None;
    }
    Some(format!("{secs}.{digits:0<9}Z"))
}

fn log_options(q: &[(String, String)]) -> Result<LogOptions, String> {
    let number = |key: &str| -> Result<Option<i64>, String> {
        value(q, key).map(|v| v.parse::<i64>().map_err(|_| format!("{key} must be an integer"))).transpose()
    };
    let mut opts = LogOptions { timestamps: flag(q, "timestamps"), ..LogOptions::default() };
    if let Some(n) = number("tailLines")? {
        opts.tail = Some(n.max(0) as usize);
    }
    if let Some(n) = number("limitBytes")? {
        if n < 1 {
            return Err("limitBytes must be greater than zero".into());
        }
        opts.limit_bytes = Some(n as usize);
    }
    if let Some(n) = number("sinceSeconds")? {
        if n < 1 {
            return Err("sinceSeconds must be greater than zero".into());
        }
        let since = SystemTime::now() - Duration::from_secs(n as u64);
        opts.since = Some(api::time::rfc3339_nano(since));
    }
    if let Some(t) = value(q, "sinceTime") {
        opts.since = Some(normalize_time(t).ok_or_else(|| format!("sinceTime {t:?} is not an RFC 3339 UTC time"))?);
    }
    opts.stream = match value(q, "stream") {
        None | Some("" | "All") => None,
        Some("Stdout") => Some(Stream::Stdout),
        Some("Stderr") => Some(Stream::Stderr),
        Some(s) => return Err(format!("unknown stream {s:?}")),
    };
    Ok(opts)
}

/// A response body fed from a channel.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

fn header_values<'a>(h: &'a HeaderMap, name: &str) -> impl Iterator<Item = &'a str> {
    h.get_all(name).iter().filter_map(|v| v.to_str().ok())
}

enum Protocol {
    WebSocket(&'static str),
    Spdy(&'static str),
}

/// The 101 answer to an upgrade request, and the protocol agreed on.
fn upgrade(req: &Request<Incoming>) -> Result<(Response<Body>, Protocol), Box<Response<Body>>> {
    let h = req.headers();
    let upgrade = h.get(hyper::header::UPGRADE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let mut resp = Response::new(Full::new(Bytes::new()).boxed());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(hyper::header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if upgrade == "websocket" {
        let key = h.get("sec-websocket-key").and_then(|v| v.to_str().ok()).unwrap_or("");
        if key.is_empty() {
            return Err(Box::new(status(400, "BadRequest", "a websocket upgrade needs Sec-WebSocket-Key")));
        }
        let Some(protocol) = stream::ws::choose_protocol(header_values(h, "sec-websocket-protocol")) else {
            return Err(Box::new(status(
                400,
                "BadRequest",
                "no supported websocket subprotocol (v5.channel.k8s.io, v4.channel.k8s.io)",
            )));
        };
        headers.insert(hyper::header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(v) = HeaderValue::from_str(&stream::ws::accept_key(key)) {
            headers.insert("sec-websocket-accept", v);
        }
        headers.insert("sec-websocket-protocol", HeaderValue::from_static(protocol));
        return Ok((resp, Protocol::WebSocket(protocol)));
    }
    if upgrade.starts_with("spdy/3.1") {
        let Some(protocol) = stream::spdy::choose_protocol(header_values(h, "x-stream-protocol-version")) else {
            return Err(Box::new(status(400, "BadRequest", "no supported stream protocol (v4.channel.k8s.io)")));
        };
        headers.insert(hyper::header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        headers.insert("x-stream-protocol-version", HeaderValue::from_static(protocol));
        return Ok((resp, Protocol::Spdy(protocol)));
    }
    Err(Box::new(status(400, "BadRequest", "exec and attach need an upgrade to websocket or SPDY/3.1")))
}

/// Only pods bound to this node: the API server resolved the UID from the pod itself.
fn bound(ctx: &AgentContext, uid: &str) -> bool {
    ctx.pods.list().iter().any(|p| p.pointer("/metadata/uid").and_then(Value::as_str) == Some(uid))
}

/// `GET|POST /portForward/{uid}` (upgrade): `kubectl port-forward`'s streams over SPDY/3.1,
/// or SPDY tunnelled in WebSocket messages; each connection is dialled in the pod's
/// network namespace.
async fn portforward(ctx: Arc<AgentContext>, uid: String, mut req: Request<Incoming>) -> Response<Body> {
    use stream::portforward::{Dialer, PROTOCOL, TUNNELED, WEBSOCKET};
    if !bound(&ctx, &uid) {
        return status(404, "NotFound", "no such pod on this node");
    }
    if !matches!(req.method(), &Method::GET | &Method::POST) {
        return status(405, "MethodNotAllowed", "the node agent does not allow this method here");
    }
    let runtime = ctx.runtime.clone();
    let netns = match tokio::task::spawn_blocking(move || sessions::pod_netns(&*runtime, &uid)).await {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => return session_error(&e),
        Err(_) => return status(500, "InternalError", "looking up the pod's network failed"),
    };
    let h = req.headers();
    let upgrade = h.get(hyper::header::UPGRADE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let offers = |name: &str, want: &str| {
        header_values(h, name).flat_map(|v| v.split(',')).any(|p| p.trim().eq_ignore_ascii_case(want))
    };
    let mut resp = Response::new(Full::new(Bytes::new()).boxed());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(hyper::header::CONNECTION, HeaderValue::from_static("Upgrade"));
    // How the upgraded connection is spoken: SPDY, SPDY in WebSocket, or channels (with
    // the ports from the query).
    enum Wire {
        Spdy,
        Tunneled,
        Channels(Vec<u16>),
    }
    let wire = if upgrade == "websocket" {
        let key = h.get("sec-websocket-key").and_then(|v| v.to_str().ok()).unwrap_or("");
        let (protocol, wire) = if offers("sec-websocket-protocol", TUNNELED) {
            (TUNNELED, Wire::Tunneled)
        } else if offers("sec-websocket-protocol", WEBSOCKET) {
            let asked = query(&req);
            let ports: Result<Vec<u16>, _> = asked
                .iter()
                .filter(|(k, _)| k == "ports")
                .flat_map(|(_, v)| v.split(',').map(|p| p.trim().parse::<u16>()).collect::<Vec<_>>())
                .collect();
            match ports {
                Ok(p) if !p.is_empty() && !p.contains(&0) => (WEBSOCKET, Wire::Channels(p)),
                _ => return status(400, "BadRequest", "port-forward over websocket needs ports=PORT[,PORT...]"),
            }
        } else {
            return status(400, "BadRequest", &format!("port-forward over websocket needs {TUNNELED} or {WEBSOCKET}"));
        };
        if key.is_empty() {
            return status(400, "BadRequest", "a websocket upgrade needs Sec-WebSocket-Key");
        }
        headers.insert(hyper::header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(v) = HeaderValue::from_str(&stream::ws::accept_key(key)) {
            headers.insert("sec-websocket-accept", v);
        }
        headers.insert("sec-websocket-protocol", HeaderValue::from_static(protocol));
        wire
    } else if upgrade.starts_with("spdy/3.1") && offers("x-stream-protocol-version", PROTOCOL) {
        headers.insert(hyper::header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        headers.insert("x-stream-protocol-version", HeaderValue::from_static(PROTOCOL));
        Wire::Spdy
    } else {
        return status(400, "BadRequest", &format!("port-forward needs an upgrade to SPDY/3.1 ({PROTOCOL})"));
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let dial: Dialer = Arc::new(move |port| Box::pin(sessions::dial_in_pod(netns.clone(), port)));
    tokio::spawn(async move {
        let Some(io) = upgraded(on_upgrade).await else { return };
        match wire {
            Wire::Spdy => stream::portforward::serve(io, dial).await,
            Wire::Tunneled => stream::portforward::serve(stream::ws::tunnel(io), dial).await,
            Wire::Channels(ports) => stream::portforward::serve_websocket(io, ports, dial).await,
        }
    });
    resp
}

async fn handle(ctx: Arc<AgentContext>, mut req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if let ["portForward", uid] = parts.as_slice() {
        return portforward(ctx, uid.to_string(), req).await;
    }
    let [what, uid, container] = parts.as_slice() else {
        return status(404, "NotFound", "the node agent serves no such path");
    };
    let (what, uid, container) = (what.to_string(), uid.to_string(), api::request::decode_query_component(container));
    if !bound(&ctx, &uid) {
        return status(404, "NotFound", "no such pod on this node");
    }
    let q = query(&req);
    let runtime = ctx.runtime.clone();
    let previous = flag(&q, "previous");
    let (u, c) = (uid.clone(), container.clone());
    let found = tokio::task::spawn_blocking(move || sessions::find_container(&*runtime, &u, &c, previous)).await;
    let target = match found {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return session_error(&e),
        Err(_) => return status(500, "InternalError", "looking up the container failed"),
    };
    match (what.as_str(), req.method()) {
        ("containerLogs", &Method::GET) => {
            let opts = match log_options(&q) {
                Ok(o) => o,
                Err(m) => return status(400, "BadRequest", &m),
            };
            let (tx, rx) = mpsc::channel(16);
            tokio::spawn(sessions::logs(ctx.runtime.clone(), target, opts, flag(&q, "follow"), tx));
            let mut resp = Response::new(BodyExt::boxed(ChannelBody(rx)));
            resp.headers_mut().insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            resp
        }
        ("exec" | "attach", &Method::GET | &Method::POST) => {
            let streams = Streams {
                stdin: flag(&q, "stdin"),
                stdout: flag(&q, "stdout"),
                stderr: flag(&q, "stderr"),
                tty: flag(&q, "tty"),
            };
            let command: Vec<String> = q.iter().filter(|(k, _)| k == "command").map(|(_, v)| v.clone()).collect();
            let exec = if what == "exec" {
                let runtime = ctx.runtime.clone();
                let (id, cmd) = (target.id.clone(), command.clone());
                match tokio::task::spawn_blocking(move || runtime.exec_command(&id, &cmd)).await {
                    Ok(Ok(e)) => Some(e),
                    Ok(Err(e)) => return session_error(&SessionError::Runtime(e)),
                    Err(_) => return status(500, "InternalError", "preparing the exec failed"),
                }
            } else {
                None
            };
            let (resp, protocol) = match upgrade(&req) {
                Ok(ok) => ok,
                Err(refused) => return *refused,
            };
            let on_upgrade = hyper::upgrade::on(&mut req);
            let runtime = ctx.runtime.clone();
            tokio::spawn(async move {
                let Some(io) = upgraded(on_upgrade).await else { return };
                let session = match protocol {
                    Protocol::WebSocket(p) => stream::ws::start(io, p, streams),
                    Protocol::Spdy(p) => match stream::spdy::start(io, p, streams).await {
                        Some(s) => s,
                        None => return,
                    },
                };
                match exec {
                    Some((program, args)) => sessions::exec(program, args, command, session).await,
                    None => sessions::attach(runtime, target, session).await,
                }
            });
            resp
        }
        _ => status(405, "MethodNotAllowed", "the node agent does not allow this method here"),
    }
}

/// The connection a client upgraded (exec, attach, port-forward), or `None` (logged) when the upgrade failed.
async fn upgraded(on_upgrade: hyper::upgrade::OnUpgrade) -> Option<TokioIo<hyper::upgrade::Upgraded>> {
    match on_upgrade.await {
        Ok(up) => Some(TokioIo::new(up)),
        Err(e) => {
            tracing::debug!(error = %e, "agent port: upgrade failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(pem: &str) -> Vec<u8> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
    }

    #[test]
    fn only_the_apiserver_identity_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let pki = apiserver::pki::bootstrap(dir.path(), &[]).unwrap();
        let apiserver = apiserver::pki::issue_apiserver_client(dir.path()).unwrap();
        assert!(is_apiserver(&der(&apiserver.cert)));
        // The cluster administrator is not the API server.
        assert!(!is_apiserver(&der(&pki.admin_cert)));
        let node = apiserver::pki::issue_node_serving(dir.path(), "n1", &["127.0.0.1".into()]).unwrap();
        assert!(!is_apiserver(&der(&node.cert)));
    }

    #[test]
    fn query_and_time_parsing() {
        assert_eq!(normalize_time("2026-01-01T00:00:00Z").as_deref(), Some("2026-01-01T00:00:00.000000000Z"));
        assert_eq!(normalize_time("2026-01-01T00:00:00.5Z").as_deref(), Some("2026-01-01T00:00:00.500000000Z"));
        assert_eq!(normalize_time("yesterday"), None);
        let q = vec![("tailLines".to_string(), "2".to_string()), ("timestamps".into(), "true".into())];
        let o = log_options(&q).unwrap();
        assert_eq!((o.tail, o.timestamps), (Some(2), true));
        assert!(log_options(&[("limitBytes".into(), "0".into())]).is_err());
    }
}
