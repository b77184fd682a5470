//! The WebSocket side of remote command streams (RFC 6455, server half, binary messages
//! only), with Kubernetes' channel subprotocols. Written here rather than taken from a
//! crate: the server half of the framing is a page, and we need none of a general
//! library's client, TLS or extension machinery.

use base64::Engine;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{Input, Output, QUEUE, Session, Streams, parse_resize};

pub const V5: &str = "v5.channel.k8s.io";
pub const V4: &str = "v4.channel.k8s.io";
/// The largest message a client may send (stdin chunks are far smaller).
const MAX_MESSAGE: u64 = 16 << 20;
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, format!("{key}{GUID}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// The subprotocol we speak among those offered (comma-separated header values): v5,
/// else v4.
pub fn choose_protocol<'a>(offered: impl Iterator<Item = &'a str>) -> Option<&'static str> {
    let offered: Vec<String> = offered.flat_map(|v| v.split(',')).map(|p| p.trim().to_string()).collect();
    [V5, V4].into_iter().find(|p| offered.iter().any(|o| o == p))
}

pub(super) enum Frame {
    Message(Vec<u8>),
    Ping(Vec<u8>),
    Close,
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<(bool, u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    r.read_exact(&mut head).await?;
    let (fin, opcode, masked) = (head[0] & 0x80 != 0, head[0] & 0x0f, head[1] & 0x80 != 0);
    let len = match head[1] & 0x7f {
        126 => u64::from(r.read_u16().await?),
        127 => r.read_u64().await?,
        n => u64::from(n),
    };
    if len > MAX_MESSAGE {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "websocket frame too large"));
    }
    let mut mask = [0u8; 4];
    if masked {
        r.read_exact(&mut mask).await?;
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Ok((fin, opcode, payload))
}

/// The next whole message or control frame (fragments joined).
pub(super) async fn read_message<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Frame> {
    let mut message: Vec<u8> = Vec::new();
    loop {
        let (fin, opcode, payload) = read_frame(r).await?;
        match opcode {
            0x8 => return Ok(Frame::Close),
            0x9 => return Ok(Frame::Ping(payload)),
            0xA => continue,
            0x0..=0x2 => {
                message.extend_from_slice(&payload);
                if message.len() as u64 > MAX_MESSAGE {
                    return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "websocket message too large"));
                }
                if fin {
                    return Ok(Frame::Message(message));
                }
            }
            _ => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "unknown websocket opcode")),
        }
    }
}

pub(super) fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

pub(super) fn channel_frame(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(data.len() + 1);
    payload.push(channel);
    payload.extend_from_slice(data);
    frame(0x2, &payload)
}

/// Runs the protocol over an upgraded connection and returns the command's side.
pub fn start<IO>(io: IO, protocol: &'static str, streams: Streams) -> Session
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (in_tx, in_rx) = mpsc::channel(QUEUE);
    let (out_tx, mut out_rx) = mpsc::channel::<Output>(QUEUE);
    let (pong_tx, mut pong_rx) = mpsc::channel::<Vec<u8>>(4);
    let v5 = protocol == V5;
    tokio::spawn(async move {
        let mut stdin_open = streams.stdin;
        loop {
            let input = match read_message(&mut rd).await {
                Ok(Frame::Message(m)) => match m.split_first() {
                    Some((&STDIN, data)) if stdin_open => Input::Stdin(Bytes::copy_from_slice(data)),
                    Some((&RESIZE, data)) => match parse_resize(data) {
                        Some(r) => r,
                        None => continue,
                    },
                    Some((&CLOSE, [STDIN])) if v5 && stdin_open => {
                        stdin_open = false;
                        Input::StdinEnd
                    }
                    _ => continue,
                },
                Ok(Frame::Ping(p)) => {
                    let _ = pong_tx.send(p).await;
                    continue;
                }
                Ok(Frame::Close) | Err(_) => break,
            };
            if in_tx.send(input).await.is_err() {
                return;
            }
        }
        // The client went away: its stdin ends; the command's output has nowhere to go.
        if stdin_open {
            let _ = in_tx.send(Input::StdinEnd).await;
        }
    });
    tokio::spawn(async move {
        loop {
            let bytes = tokio::select! {
                out = out_rx.recv() => match out {
                    Some(Output::Stdout(b)) => channel_frame(STDOUT, &b),
                    Some(Output::Stderr(b)) => channel_frame(STDERR, &b),
                    Some(Output::Done(status)) => {
                        let mut last = channel_frame(ERROR, &serde_json::to_vec(&status).unwrap_or_default());
                        last.extend_from_slice(&frame(0x8, &1000u16.to_be_bytes()));
                        let _ = wr.write_all(&last).await;
                        let _ = wr.shutdown().await;
                        return;
                    }
                    None => {
                        let _ = wr.shutdown().await;
                        return;
                    }
                },
                Some(p) = pong_rx.recv() => frame(0xA, &p),
            };
            if wr.write_all(&bytes).await.is_err() || wr.flush().await.is_err() {
                return;
            }
        }
    });
    Session { streams, input: in_rx, output: out_tx }
}

/// A WebSocket connection's binary messages as one byte stream, both ways: kubectl 1.31+
/// tunnels port-forward's SPDY this way (no channel byte; message boundaries mean nothing).
pub fn tunnel<IO>(io: IO) -> tokio::io::DuplexStream
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (mut rd, mut wr) = tokio::io::split(io);
    let (mut inner_rd, mut inner_wr) = tokio::io::split(theirs);
    let (pong_tx, mut pong_rx) = mpsc::channel::<Vec<u8>>(4);
    tokio::spawn(async move {
        loop {
            match read_message(&mut rd).await {
                Ok(Frame::Message(m)) => {
                    if inner_wr.write_all(&m).await.is_err() {
                        break;
                    }
                }
                Ok(Frame::Ping(p)) => {
                    let _ = pong_tx.send(p).await;
                }
                Ok(Frame::Close) | Err(_) => break,
            }
        }
        let _ = inner_wr.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let bytes = tokio::select! {
                r = inner_rd.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => frame(0x2, &buf[..n]),
                },
                Some(p) = pong_rx.recv() => frame(0xA, &p),
            };
            if wr.write_all(&bytes).await.is_err() || wr.flush().await.is_err() {
                return;
            }
        }
        let _ = wr.write_all(&frame(0x8, &1000u16.to_be_bytes())).await;
        let _ = wr.shutdown().await;
    });
    ours
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_values() {
        // RFC 6455's own example.
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(choose_protocol(["v4.channel.k8s.io, v5.channel.k8s.io"].into_iter()), Some(V5));
        assert_eq!(choose_protocol(["channel.k8s.io", "v4.channel.k8s.io"].into_iter()), Some(V4));
        assert_eq!(choose_protocol(["base64.channel.k8s.io"].into_iter()), None);
    }

    #[tokio::test]
    async fn masked_client_messages_and_server_frames() {
        let (client, server) = tokio::io::duplex(1024);
        let mut session = start(server, V5, Streams { stdin: true, stdout: true, ..Streams::default() });
        let (mut crd, mut cwr) = tokio::io::split(client);
        let mask = [1u8, 2, 3, 4];
        let masked = |payload: &[u8]| {
            let mut f = vec![0x82, 0x80 | payload.len() as u8];
            f.extend_from_slice(&mask);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
            f
        };
        cwr.write_all(&masked(b"\x00hello")).await.unwrap();
        cwr.write_all(&masked(b"\xff\x00")).await.unwrap();
        assert_eq!(session.input.recv().await, Some(Input::Stdin(Bytes::from_static(b"hello"))));
        assert_eq!(session.input.recv().await, Some(Input::StdinEnd));
        session.output.send(Output::Stdout(Bytes::from_static(b"hi"))).await.unwrap();
        session.output.send(Output::Done(super::super::success())).await.unwrap();
        let mut got = Vec::new();
        crd.read_to_end(&mut got).await.unwrap();
        assert_eq!(&got[..5], b"\x82\x03\x01hi");
        assert_eq!(got[5], 0x82);
        assert!(got.ends_with(&[0x88, 2, 0x03, 0xe8]));
    }
}
