//! `kubectl port-forward`'s protocol, the server half (`portforward.k8s.io` over SPDY/3.1,
//! as the kubelet speaks it). For each connection to a forwarded local port the client
//! opens two SPDY streams that carry the same `port` and `requestID` headers: `error`
//! (the server's complaint, if any, then FIN) and `data` (the connection's bytes both
//! ways). Once a pair is complete the server connects to the port inside the pod and
//! copies; a FIN from the client half-closes the pod-side socket, the pod side's end
//! FINs both streams, a RST_STREAM drops the connection.
//!
//! kubectl 1.31+ first tries the same SPDY bytes tunnelled in WebSocket binary messages
//! (subprotocol [`TUNNELED`]); [`super::ws::tunnel`] unwraps them and this module serves
//! what comes out.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::spdy::{
    DICTIONARY, FLAG_FIN, GOAWAY, HeaderReader, PING, RST_STREAM, SYN_STREAM, control, data, data_frames,
    parse_headers, read_frame, reply,
};

/// The SPDY subprotocol (`X-Stream-Protocol-Version`).
pub const PROTOCOL: &str = "portforward.k8s.io";
/// The WebSocket subprotocol of SPDY tunnelled in WebSocket messages.
pub const TUNNELED: &str = "SPDY/3.1+portforward.k8s.io";

/// Connects to a port inside the pod (loopback of its network namespace).
pub type Dialer =
    Arc<dyn Fn(u16) -> Pin<Box<dyn Future<Output = Result<TcpStream, String>> + Send>> + Send + Sync + 'static>;

/// What the writer task sends, in order (header compression is one stream per connection).
enum Out {
    Reply(u32),
    Data(u32, Bytes),
    Fin(u32),
    Pong(Vec<u8>),
}

#[derive(Default)]
struct Pair {
    port: Option<u16>,
    error: Option<u32>,
    data: Option<u32>,
    started: bool,
}

/// Where a data stream's incoming bytes go, and the task copying the pod's side back.
struct Route {
    to_pod: Option<mpsc::Sender<Bytes>>,
    from_pod: tokio::task::JoinHandle<()>,
}

/// Serves port-forward streams on an upgraded connection until the client goes away.
pub async fn serve<IO>(io: IO, dial: Dialer)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(64);
    let writer = tokio::spawn(async move {
        let mut compressor = Compress::new(Compression::default(), true);
        if compressor.set_dictionary(DICTIONARY).is_err() {
            return;
        }
        while let Some(o) = out_rx.recv().await {
            let bytes = match o {
                Out::Reply(id) => reply(&mut compressor, id),
                Out::Data(id, b) => data_frames(id, &b),
                Out::Fin(id) => data(id, FLAG_FIN, &[]),
                Out::Pong(p) => control(PING, 0, &p),
            };
            if wr.write_all(&bytes).await.is_err() || wr.flush().await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    });

    let mut headers = HeaderReader(Decompress::new(true));
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut routes: HashMap<u32, Route> = HashMap::new();
    loop {
        let Some((head, payload)) = read_frame(&mut rd).await else { break };
        let flags = head[4];
        if head[0] & 0x80 == 0 {
            let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff;
            if let Some(route) = routes.get_mut(&id) {
                if !payload.is_empty()
                    && let Some(tx) = &route.to_pod
                    && tx.send(Bytes::from(payload)).await.is_err()
                {
                    route.to_pod = None;
                }
                if flags & FLAG_FIN != 0 {
                    // The client's side is done sending: the pod's socket gets end-of-file.
                    route.to_pod = None;
                }
            }
            continue;
        }
        match u16::from_be_bytes([head[2], head[3]]) {
            SYN_STREAM if payload.len() >= 10 => {
                let id = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff;
                let Ok(h) = headers.block(&payload[10..]).and_then(|b| parse_headers(&b)) else { break };
                if out_tx.send(Out::Reply(id)).await.is_err() {
                    break;
                }
                let request = h.get("requestid").cloned().unwrap_or_else(|| id.to_string());
                let pair = pairs.entry(request.clone()).or_default();
                match h.get("streamtype").map(String::as_str) {
                    Some("error") => pair.error = Some(id),
                    Some("data") => pair.data = Some(id),
                    _ => continue,
                }
                pair.port = h.get("port").and_then(|p| p.parse::<u16>().ok()).filter(|p| *p > 0).or(pair.port);
                let (Some(error), Some(data_id), false) = (pair.error, pair.data, pair.started) else { continue };
                pair.started = true;
                let port = pair.port;
                pairs.remove(&request);
                let (to_pod, from_client) = mpsc::channel::<Bytes>(super::QUEUE);
                let from_pod = tokio::spawn(forward(port, dial.clone(), error, data_id, from_client, out_tx.clone()));
                routes.insert(data_id, Route { to_pod: Some(to_pod), from_pod });
            }
            PING => {
                let _ = out_tx.send(Out::Pong(payload)).await;
            }
            RST_STREAM if payload.len() >= 4 => {
                let id = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff;
                if let Some(route) = routes.remove(&id) {
                    route.from_pod.abort();
                }
            }
            GOAWAY => break,
            // SETTINGS, WINDOW_UPDATE, HEADERS: nothing for us to do.
            _ => {}
        }
    }
    for (_, route) in routes {
        route.from_pod.abort();
    }
    drop(out_tx);
    let _ = writer.await;
}

/// One forwarded connection: dial the pod's port, then copy both ways.
async fn forward(
    port: Option<u16>,
    dial: Dialer,
    error: u32,
    data_id: u32,
    mut from_client: mpsc::Receiver<Bytes>,
    out: mpsc::Sender<Out>,
) {
    let finish = |message: Option<String>| {
        let out = out.clone();
        async move {
            if let Some(m) = message {
                let _ = out.send(Out::Data(error, Bytes::from(m))).await;
            }
            let _ = out.send(Out::Fin(error)).await;
            let _ = out.send(Out::Fin(data_id)).await;
        }
    };
    let Some(port) = port else {
        return finish(Some("a port-forward stream needs a valid port header".into())).await;
    };
    let conn = match dial(port).await {
        Ok(c) => c,
        Err(e) => return finish(Some(format!("error forwarding port {port} to pod: {e}"))).await,
    };
    let _ = conn.set_nodelay(true);
    let (mut pod_rd, mut pod_wr) = conn.into_split();
    let to_pod = tokio::spawn(async move {
        while let Some(b) = from_client.recv().await {
            if pod_wr.write_all(&b).await.is_err() {
                return;
            }
        }
        let _ = pod_wr.shutdown().await;
    });
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match pod_rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out.send(Out::Data(data_id, Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                    to_pod.abort();
                    return;
                }
            }
        }
    }
    to_pod.abort();
    finish(None).await;
}

/// The WebSocket subprotocol of Kubernetes' own WebSocket port-forward (the Python client's).
pub const WEBSOCKET: &str = "v4.channel.k8s.io";

/// Kubernetes' WebSocket port-forward: the ports are in the query (`?ports=8080,9090`), one
/// connection each, dialled at once; port `i`'s bytes travel on channel `2i` (the first byte
/// of each binary message) and its errors on `2i+1`, and the server's first message on each
/// channel is the port, two bytes little-endian. The session ends when every port's pod side
/// has closed, or the client goes.
pub async fn serve_websocket<IO>(io: IO, ports: Vec<u16>, dial: Dialer)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    use super::ws::{Frame, channel_frame, frame, read_message};
    let (mut rd, mut wr) = tokio::io::split(io);
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(64);
    let writer = tokio::spawn(async move {
        while let Some(bytes) = out_rx.recv().await {
            if wr.write_all(&bytes).await.is_err() || wr.flush().await.is_err() {
                return;
            }
        }
        let _ = wr.write_all(&frame(0x8, &1000u16.to_be_bytes())).await;
        let _ = wr.shutdown().await;
    });
    let mut to_pods: Vec<Option<mpsc::Sender<Bytes>>> = Vec::new();
    let mut copiers = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let (data, error) = ((2 * i) as u8, (2 * i + 1) as u8);
        for channel in [data, error] {
            let _ = out_tx.send(channel_frame(channel, &port.to_le_bytes())).await;
        }
        let conn = match dial(*port).await {
            Ok(c) => c,
            Err(e) => {
                let message = format!("error forwarding port {port} to pod: {e}");
                let _ = out_tx.send(channel_frame(error, message.as_bytes())).await;
                to_pods.push(None);
                continue;
            }
        };
        let _ = conn.set_nodelay(true);
        let (mut pod_rd, mut pod_wr) = conn.into_split();
        let (tx, mut rx) = mpsc::channel::<Bytes>(super::QUEUE);
        to_pods.push(Some(tx));
        tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                if pod_wr.write_all(&b).await.is_err() {
                    return;
                }
            }
            let _ = pod_wr.shutdown().await;
        });
        let out = out_tx.clone();
        copiers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            while let Ok(n) = pod_rd.read(&mut buf).await {
                if n == 0 || out.send(channel_frame(data, &buf[..n])).await.is_err() {
                    return;
                }
            }
        }));
    }
    let copying = async {
        for c in &mut copiers {
            let _ = c.await;
        }
    };
    let reading = async {
        loop {
            match read_message(&mut rd).await {
                Ok(Frame::Message(m)) => {
                    let Some((&channel, payload)) = m.split_first() else { continue };
                    let index = usize::from(channel / 2);
                    if channel % 2 == 0
                        && !payload.is_empty()
                        && let Some(Some(tx)) = to_pods.get(index)
                        && tx.send(Bytes::copy_from_slice(payload)).await.is_err()
                    {
                        to_pods[index] = None;
                    }
                }
                Ok(Frame::Ping(p)) => {
                    let _ = out_tx.send(frame(0xA, &p)).await;
                }
                Ok(Frame::Close) | Err(_) => return,
            }
        }
    };
    tokio::select! {
        () = copying => {}
        () = reading => {}
    }
    for c in copiers {
        c.abort();
    }
    drop(out_tx);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::FlushCompress;

    /// A SYN_STREAM as client-go sends it: its header block compressed with the dictionary.
    fn syn(c: &mut Compress, id: u32, pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut raw = (pairs.len() as u32).to_be_bytes().to_vec();
        for (k, v) in pairs {
            for s in [k, v] {
                raw.extend_from_slice(&(s.len() as u32).to_be_bytes());
                raw.extend_from_slice(s.as_bytes());
            }
        }
        let mut block = Vec::with_capacity(raw.len() + 128);
        c.compress_vec(&raw, &mut block, FlushCompress::Sync).unwrap();
        let mut payload = id.to_be_bytes().to_vec();
        payload.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        payload.extend(block);
        control(SYN_STREAM, 0, &payload)
    }

    /// Reads frames until DATA frames on `stream` end with FIN; their bytes.
    async fn data_of(rd: &mut (impl AsyncRead + Unpin), stream: u32) -> Vec<u8> {
        let mut got = Vec::new();
        loop {
            let mut head = [0u8; 8];
            rd.read_exact(&mut head).await.unwrap();
            let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
            let mut payload = vec![0u8; len];
            rd.read_exact(&mut payload).await.unwrap();
            let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            if head[0] & 0x80 == 0 && id == stream {
                got.extend_from_slice(&payload);
                if head[4] & FLAG_FIN != 0 {
                    return got;
                }
            }
        }
    }

    #[tokio::test]
    async fn a_pair_of_streams_is_one_connection_and_a_refused_port_is_reported() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 5];
            conn.read_exact(&mut buf).await.unwrap();
            conn.write_all(&[b"got ", &buf[..]].concat()).await.unwrap();
        });
        let dial: Dialer = Arc::new(|port| {
            Box::pin(async move { TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string()) })
        });
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(serve(server, dial));
        let (mut rd, mut wr) = tokio::io::split(client);
        let mut c = Compress::new(Compression::default(), true);
        c.set_dictionary(DICTIONARY).unwrap();
        let port = open.to_string();
        for (id, kind) in [(1, "error"), (3, "data")] {
            let frame = syn(&mut c, id, &[("streamtype", kind), ("port", &port), ("requestid", "0")]);
            wr.write_all(&frame).await.unwrap();
        }
        wr.write_all(&data(3, 0, b"hello")).await.unwrap();
        assert_eq!(data_of(&mut rd, 3).await, b"got hello");
        // A second pair to a port nobody listens on: the error stream says so.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
        let closed = closed.to_string();
        for (id, kind) in [(5, "error"), (7, "data")] {
            let frame = syn(&mut c, id, &[("streamtype", kind), ("port", &closed), ("requestid", "1")]);
            wr.write_all(&frame).await.unwrap();
        }
        let complaint = String::from_utf8(data_of(&mut rd, 5).await).unwrap();
        assert!(complaint.starts_with(&format!("error forwarding port {closed} to pod: ")), "{complaint}");
    }
}
