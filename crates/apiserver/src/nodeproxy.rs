//! Pods' `log`, `exec` and `attach` subresources: the API server has authenticated and
//! authorized the caller and resolved the pod in the caller's tenant; it then hands the
//! request to the node agent of the pod's node, over mutual TLS with its own client
//! certificate (`CN=system:apiserver`, from the cluster CA) and verifying the agent's
//! serving certificate against the same CA.
//!
//! Logs are a plain streamed GET. Exec and attach are upgrades (WebSocket or SPDY/3.1):
//! the agent answers the upgrade, and after both `101`s this server copies bytes both
//! ways without looking at them, as Kubernetes' upgrade-aware proxy does; the stream
//! protocols live in the agent alone.

// As in `http.rs`: errors are `Status` values on their way to the client.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use api::json::At;
use api::meta::Status;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::header::HeaderValue;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::http::Body;
use crate::pki;

/// Headers an upgrade carries to the agent and back.
const UPGRADE_HEADERS: &[&str] = &[
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-accept",
    "x-stream-protocol-version",
];

/// Connects to node agents as the API server.
pub struct NodeDialer {
    tls: tokio_rustls::TlsConnector,
}

impl NodeDialer {
    pub fn new(issued: &pki::Issued) -> Result<NodeDialer, String> {
        use rustls::pki_types::pem::PemObject;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = |pem: &str| {
            rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(&issued.ca_cert)? {
            roots.add(c).map_err(|e| e.to_string())?;
        }
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(issued.key.as_bytes()).map_err(|e| e.to_string())?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs(&issued.cert)?, key)
            .map_err(|e| e.to_string())?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(NodeDialer { tls: tokio_rustls::TlsConnector::from(Arc::new(config)) })
    }

    /// An HTTP/1.1 connection (upgrades allowed) to the agent at `host:port`.
    async fn connect(
        &self,
        host: &str,
        port: u16,
    ) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, Status> {
        let unavailable = |what: String| Status::failure(503, "ServiceUnavailable", what);
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| unavailable(format!("cannot reach the node agent at {host}:{port}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| unavailable(format!("the node's address {host:?}: {e}")))?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| unavailable(format!("TLS with the node agent at {host}:{port}: {e}")))?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| unavailable(format!("HTTP with the node agent: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "node agent connection ended with an error");
            }
        });
        Ok(send)
    }
}

/// Where a Node's agent listens: its first InternalIP and `daemonEndpoints` port.
pub fn agent_endpoint(node: &Value) -> Option<(String, u16)> {
    let port = node.at("/status/daemonEndpoints/kubeletEndpoint/Port").and_then(Value::as_u64)?;
    let addresses = node.at("/status/addresses").and_then(Value::as_array)?;
    let ip = addresses
        .iter()
        .find(|a| a.get("type").and_then(Value::as_str) == Some("InternalIP"))
        .and_then(|a| a.get("address"))
        .and_then(Value::as_str)?;
    (port > 0 && port <= u64::from(u16::MAX)).then(|| (ip.to_string(), port as u16))
}

/// The container a request means: the one named, else the pod's default (annotation),
/// else its only container.
pub fn pick_container(pod: &Value, asked: Option<&str>) -> Result<String, Status> {
    let pod_name = pod.at("/metadata/name").and_then(Value::as_str).unwrap_or("");
    let mut names: Vec<&str> = ["/spec/containers", "/spec/initContainers"]
        .iter()
        .filter_map(|p| pod.at(p).and_then(Value::as_array))
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .collect();
    let mut regular: Vec<&str> = pod
        .at("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .collect();
    // A VM pod's one "container" is its machine (logs are its console, exec its guest agent).
    if let Some(vm) = pod.at("/spec/virtualMachine/name").and_then(Value::as_str) {
        names.push(vm);
        regular.push(vm);
    }
    let default = pod
        .at("/metadata/annotations/kubectl.kubernetes.io~1default-container")
        .and_then(Value::as_str)
        .filter(|d| names.contains(d));
    match asked.filter(|a| !a.is_empty()) {
        Some(c) if names.contains(&c) => Ok(c.to_string()),
        Some(c) => Err(Status::bad_request(format!("container {c} is not valid for pod {pod_name}"))),
        None => match (default, regular.as_slice()) {
            (Some(d), _) => Ok(d.to_string()),
            (None, [only]) => Ok(only.to_string()),
            _ => Err(Status::bad_request(format!(
                "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                regular.join(" ")
            ))),
        },
    }
}

/// Kubernetes' refusal for a container that has not run yet (nothing to show or enter);
/// one waiting to restart has run (its last attempt's log is there).
pub fn check_started(pod: &Value, container: &str) -> Result<(), Status> {
    let pod_name = pod.at("/metadata/name").and_then(Value::as_str).unwrap_or("");
    let statuses = ["/status/containerStatuses", "/status/initContainerStatuses"]
        .iter()
        .filter_map(|p| pod.at(p).and_then(Value::as_array))
        .flatten();
    let Some(s) = statuses.into_iter().find(|s| s.get("name").and_then(Value::as_str) == Some(container)) else {
        return Err(Status::bad_request(format!(
            "container {container:?} in pod {pod_name:?} is waiting to start: ContainerCreating"
        )));
    };
    // A container ID means an attempt exists (a crash-looping one between runs too).
    let ran_before = s.at("/lastState/terminated").is_some()
        || s.get("containerID").and_then(Value::as_str).is_some_and(|id| !id.is_empty())
        || s.get("restartCount").and_then(Value::as_u64).is_some_and(|n| n > 0);
    match s.at("/state/waiting/reason").and_then(Value::as_str) {
        Some(reason) if !ran_before => Err(Status::bad_request(format!(
            "container {container:?} in pod {pod_name:?} is waiting to start: {reason}"
        ))),
        _ => Ok(()),
    }
}

/// A response body fed from a channel.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

/// Sends `req` (its method, the agent `path`, its upgrade headers) to the agent and
/// relays the answer: a streamed body, or an upgrade spliced to the client's.
pub async fn forward(
    dialer: &NodeDialer,
    host: &str,
    port: u16,
    path: String,
    mut req: Request<crate::http::ReqBody>,
) -> Result<Response<Body>, Status> {
    let mut send = dialer.connect(host, port).await?;
    let mut out = Request::builder().method(req.method().clone()).uri(path);
    out = out.header(hyper::header::HOST, format!("{host}:{port}"));
    for name in UPGRADE_HEADERS {
        for v in req.headers().get_all(*name) {
            out = out.header(*name, v.clone());
        }
    }
    let out = out.body(Empty::new()).map_err(|e| Status::internal(format!("building the agent request: {e}")))?;
    let client_upgrade = hyper::upgrade::on(&mut req);
    let mut resp = send
        .send_request(out)
        .await
        .map_err(|e| Status::failure(503, "ServiceUnavailable", format!("the node agent did not answer: {e}")))?;
    let code = resp.status();
    if code == StatusCode::SWITCHING_PROTOCOLS {
        let mut answer = Response::new(Full::new(Bytes::new()).boxed());
        *answer.status_mut() = code;
        for name in UPGRADE_HEADERS {
            for v in resp.headers().get_all(*name) {
                answer.headers_mut().append(*name, v.clone());
            }
        }
        let agent_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let (client, agent) = match tokio::join!(client_upgrade, agent_upgrade) {
                (Ok(c), Ok(a)) => (c, a),
                _ => return,
            };
            let (mut client, mut agent) = (TokioIo::new(client), TokioIo::new(agent));
            let _ = tokio::io::copy_bidirectional(&mut client, &mut agent).await;
        });
        return Ok(answer);
    }
    let content_type = resp.headers().get(hyper::header::CONTENT_TYPE).cloned();
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let mut body = resp.into_body();
    tokio::spawn(async move {
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return };
            if let Ok(data) = frame.into_data()
                && tx.send(data).await.is_err()
            {
                // The client went away: dropping the body ends the agent's stream.
                return;
            }
        }
    });
    let mut answer = Response::new(BodyExt::boxed(ChannelBody(rx)));
    *answer.status_mut() = code;
    answer
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, content_type.unwrap_or(HeaderValue::from_static("text/plain")));
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_and_endpoints() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        assert_eq!(pick_container(&pod, Some("b")).unwrap(), "b");
        assert_eq!(pick_container(&pod, Some("x")).unwrap_err().message, "container x is not valid for pod p");
        assert!(pick_container(&pod, None).unwrap_err().message.contains("choose one of: [a b]"));
        let vm = json!({"metadata": {"name": "v"}, "spec": {"virtualMachine": {"name": "vm", "image": "i"}}});
        assert_eq!(pick_container(&vm, Some("vm")).unwrap(), "vm");
        assert_eq!(pick_container(&vm, None).unwrap(), "vm");
        let waiting = json!({"metadata": {"name": "p"}, "status": {"containerStatuses": [
            {"name": "a", "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}});
        assert!(check_started(&waiting, "a").unwrap_err().message.ends_with("is waiting to start: ImagePullBackOff"));
        assert!(check_started(&pod, "a").unwrap_err().message.ends_with("ContainerCreating"));
        let restarting = json!({"metadata": {"name": "p"}, "status": {"containerStatuses": [
            {"name": "a", "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        assert!(check_started(&restarting, "a").is_ok());
        let first_backoff = json!({"metadata": {"name": "p"}, "status": {"containerStatuses": [
            {"name": "a", "containerID": "crun://x", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        assert!(check_started(&first_backoff, "a").is_ok());
        let one = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}});
        assert_eq!(pick_container(&one, None).unwrap(), "a");
        let node = json!({"status": {"addresses": [{"type": "Hostname", "address": "h"},
            {"type": "InternalIP", "address": "127.0.0.1"}], "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}}});
        assert_eq!(agent_endpoint(&node), Some(("127.0.0.1".into(), 10250)));
        assert_eq!(agent_endpoint(&json!({"status": {}})), None);
    }
}
