//! The SPDY/3.1 side of remote command streams (the server half, as kubectl's client
//! library uses it). The client opens one SPDY stream per channel, naming it in a
//! `streamtype` header (`error`, `stdin`, `stdout`, `stderr`, `resize`); the server
//! answers each with a SYN_REPLY, and once every expected stream is there the command
//! runs. Output goes as DATA frames on the stdout/stderr streams, the final `Status` on
//! the error stream, then GOAWAY.
//!
//! Header blocks are zlib streams (one per direction, for the whole connection) primed
//! with the SPDY/3 dictionary (`spdy3.dict`, the constant of the SPDY/3 draft, §2.6.10.1).
//! We send no SETTINGS or WINDOW_UPDATE frames: the Go client ignores flow control and
//! logs frames it does not handle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::{Input, Output, QUEUE, Session, Streams, parse_resize};

pub const V4: &str = "v4.channel.k8s.io";
pub(super) const DICTIONARY: &[u8] = include_bytes!("spdy3.dict");
/// How long a client has to open the streams it asked for (the kubelet waits as long).
const STREAMS_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest frame accepted from a client.
pub(super) const MAX_FRAME: usize = 1 << 20;
/// Largest DATA frame we send.
const MAX_DATA: usize = 32 * 1024;

pub(super) const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
pub(super) const RST_STREAM: u16 = 3;
pub(super) const PING: u16 = 6;
pub(super) const GOAWAY: u16 = 7;
pub(super) const FLAG_FIN: u8 = 1;

/// The stream protocol we speak among those offered: v4 only (exit codes on the error
/// stream; every kubectl we support offers it).
pub fn choose_protocol<'a>(offered: impl Iterator<Item = &'a str>) -> Option<&'static str> {
    let mut offered = offered.flat_map(|v| v.split(',')).map(str::trim);
    offered.any(|p| p == V4).then_some(V4)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Error,
    Stdin,
    Stdout,
    Stderr,
    Resize,
}

#[derive(Debug)]
enum Ctrl {
    Reply(u32),
    Pong(Vec<u8>),
}

#[derive(Debug, thiserror::Error)]
pub(super) enum SpdyError {
    #[error("bad header block: {0}")]
    Headers(String),
}

/// Decompresses the client's header blocks (one zlib stream with the SPDY dictionary).
pub(super) struct HeaderReader(pub(super) Decompress);

impl HeaderReader {
    pub(super) fn block(&mut self, mut input: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let mut out = Vec::with_capacity(input.len() * 4 + 64);
        while !input.is_empty() {
            if out.capacity() - out.len() < 256 {
                out.reserve(out.capacity().max(1024));
            }
            let before = self.0.total_in();
            let result = self.0.decompress_vec(input, &mut out, FlushDecompress::Sync);
            let used = (self.0.total_in() - before) as usize;
            input = &input[used..];
            match result {
                Ok(_) => {
                    if used == 0 && out.capacity() > out.len() {
                        break;
                    }
                }
                Err(e) if e.needs_dictionary().is_some() => {
                    self.0.set_dictionary(DICTIONARY).map_err(|e| SpdyError::Headers(e.to_string()))?;
                }
                Err(e) => return Err(SpdyError::Headers(e.to_string())),
            }
        }
        Ok(out)
    }
}

/// Name/value pairs of an uncompressed SPDY/3 header block.
/// Reads the next frame: its 8-byte header and its payload; `None` at the end of the input, on a read error, or
/// for a frame longer than [`MAX_FRAME`] (the session ends either way).
pub(super) async fn read_frame<R: AsyncRead + Unpin>(rd: &mut R) -> Option<([u8; 8], Vec<u8>)> {
    let mut head = [0u8; 8];
    rd.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    if len > MAX_FRAME {
        return None;
    }
    let mut payload = vec![0u8; len];
    rd.read_exact(&mut payload).await.ok()?;
    Some((head, payload))
}

pub(super) fn parse_headers(block: &[u8]) -> Result<HashMap<String, String>, SpdyError> {
    let bad = || SpdyError::Headers("truncated".into());
    let mut pos = 0usize;
    let u32_at = |pos: &mut usize| -> Result<usize, SpdyError> {
        let b = block.get(*pos..*pos + 4).ok_or_else(bad)?;
        *pos += 4;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = u32_at(&mut pos)?;
    let mut out = HashMap::new();
    for _ in 0..count.min(1024) {
        let n = u32_at(&mut pos)?;
        let name = block.get(pos..pos + n).ok_or_else(bad)?;
        pos += n;
        let n = u32_at(&mut pos)?;
        let value = block.get(pos..pos + n).ok_or_else(bad)?;
        pos += n;
        out.insert(String::from_utf8_lossy(name).to_lowercase(), String::from_utf8_lossy(value).into_owned());
    }
    Ok(out)
}

pub(super) fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 8);
    f.extend_from_slice(&(0x8003u16).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

pub(super) fn data(stream: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 8);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

pub(super) fn data_frames(stream: u32, payload: &[u8]) -> Vec<u8> {
    payload.chunks(MAX_DATA).flat_map(|c| data(stream, 0, c)).collect()
}

/// A SYN_REPLY with an empty header block, compressed on the connection's stream.
pub(super) fn reply(compressor: &mut Compress, stream: u32) -> Vec<u8> {
    let mut block = Vec::with_capacity(128);
    // Zero headers; the sync flush makes the block decodable on its own.
    let _ = compressor.compress_vec(&[0, 0, 0, 0], &mut block, FlushCompress::Sync);
    let mut payload = stream.to_be_bytes().to_vec();
    payload.extend_from_slice(&block);
    control(SYN_REPLY, 0, &payload)
}

/// Expected streams for what the client asked.
fn expected(s: &Streams) -> Vec<Kind> {
    let mut k = vec![Kind::Error];
    if s.stdin {
        k.push(Kind::Stdin);
    }
    if s.stdout {
        k.push(Kind::Stdout);
    }
    if s.stderr && !s.tty {
        k.push(Kind::Stderr);
    }
    if s.tty {
        k.push(Kind::Resize);
    }
    k
}

/// Runs the protocol over an upgraded connection; the command's side once the client has
/// opened every stream it asked for (`None`: it did not, in time).
pub async fn start<IO>(io: IO, _protocol: &'static str, streams: Streams) -> Option<Session>
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (in_tx, in_rx) = mpsc::channel(QUEUE);
    let (out_tx, mut out_rx) = mpsc::channel::<Output>(QUEUE);
    let (ctrl_tx, mut ctrl_rx) = mpsc::channel::<Ctrl>(QUEUE);
    let (ready_tx, ready_rx) = oneshot::channel::<()>();
    let ids: Arc<Mutex<HashMap<Kind, u32>>> = Arc::default();
    let want = expected(&streams);

    let reader_ids = ids.clone();
    tokio::spawn(async move {
        let mut headers = HeaderReader(Decompress::new(true));
        let mut ready = Some(ready_tx);
        let mut stdin_open = streams.stdin;
        let mut resize_buf: Vec<u8> = Vec::new();
        loop {
            let Some((head, payload)) = read_frame(&mut rd).await else { break };
            let flags = head[4];
            if head[0] & 0x80 != 0 {
                let kind = u16::from_be_bytes([head[2], head[3]]);
                match kind {
                    SYN_STREAM if payload.len() >= 10 => {
                        let id = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff;
                        let Ok(h) = headers.block(&payload[10..]).and_then(|b| parse_headers(&b)) else { break };
                        let kind = match h.get("streamtype").map(String::as_str) {
                            Some("error") => Kind::Error,
                            Some("stdin") => Kind::Stdin,
                            Some("stdout") => Kind::Stdout,
                            Some("stderr") => Kind::Stderr,
                            Some("resize") => Kind::Resize,
                            _ => continue,
                        };
                        let all = {
                            let mut ids = reader_ids.lock().unwrap_or_else(|e| e.into_inner());
                            ids.insert(kind, id);
                            want.iter().all(|k| ids.contains_key(k))
                        };
                        if ctrl_tx.send(Ctrl::Reply(id)).await.is_err() {
                            return;
                        }
                        if all && let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    PING => {
                        let _ = ctrl_tx.send(Ctrl::Pong(payload)).await;
                    }
                    GOAWAY => break,
                    RST_STREAM if payload.len() >= 4 => {
                        let id = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff;
                        let is_stdin =
                            reader_ids.lock().unwrap_or_else(|e| e.into_inner()).get(&Kind::Stdin) == Some(&id);
                        if is_stdin && stdin_open {
                            stdin_open = false;
                            let _ = in_tx.send(Input::StdinEnd).await;
                        }
                    }
                    // SETTINGS, WINDOW_UPDATE, HEADERS: nothing for us to do.
                    _ => {}
                }
                continue;
            }
            let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff;
            let kind =
                reader_ids.lock().unwrap_or_else(|e| e.into_inner()).iter().find(|(_, v)| **v == id).map(|(k, _)| *k);
            match kind {
                Some(Kind::Stdin) if stdin_open => {
                    if !payload.is_empty() && in_tx.send(Input::Stdin(Bytes::from(payload))).await.is_err() {
                        return;
                    }
                    if flags & FLAG_FIN != 0 {
                        stdin_open = false;
                        let _ = in_tx.send(Input::StdinEnd).await;
                    }
                }
                Some(Kind::Resize) => {
                    // One JSON object per line.
                    resize_buf.extend_from_slice(&payload);
                    while let Some(i) = resize_buf.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = resize_buf.drain(..=i).collect();
                        if let Some(r) = parse_resize(&line) {
                            let _ = in_tx.send(r).await;
                        }
                    }
                    if let Some(r) = parse_resize(&resize_buf) {
                        resize_buf.clear();
                        let _ = in_tx.send(r).await;
                    }
                }
                _ => {}
            }
        }
        if stdin_open {
            let _ = in_tx.send(Input::StdinEnd).await;
        }
    });

    let writer_ids = ids.clone();
    tokio::spawn(async move {
        let mut compressor = Compress::new(Compression::default(), true);
        if compressor.set_dictionary(DICTIONARY).is_err() {
            return;
        }
        let id_of = |k: Kind| writer_ids.lock().unwrap_or_else(|e| e.into_inner()).get(&k).copied();
        loop {
            let bytes = tokio::select! {
                c = ctrl_rx.recv() => match c {
                    Some(Ctrl::Reply(id)) => reply(&mut compressor, id),
                    Some(Ctrl::Pong(p)) => control(PING, 0, &p),
                    None => Vec::new(),
                },
                out = out_rx.recv() => match out {
                    Some(Output::Stdout(b)) => id_of(Kind::Stdout).map(|id| data_frames(id, &b)).unwrap_or_default(),
                    Some(Output::Stderr(b)) => id_of(Kind::Stderr).map(|id| data_frames(id, &b)).unwrap_or_default(),
                    Some(Output::Done(status)) => {
                        let mut last = Vec::new();
                        if let Some(id) = id_of(Kind::Error) {
                            last.extend(data_frames(id, &serde_json::to_vec(&status).unwrap_or_default()));
                        }
                        for k in [Kind::Error, Kind::Stdout, Kind::Stderr] {
                            if let Some(id) = id_of(k) {
                                last.extend(data(id, FLAG_FIN, &[]));
                            }
                        }
                        let mut goaway = 0u32.to_be_bytes().to_vec();
                        goaway.extend_from_slice(&0u32.to_be_bytes());
                        last.extend(control(GOAWAY, 0, &goaway));
                        let _ = wr.write_all(&last).await;
                        let _ = wr.flush().await;
                        let _ = wr.shutdown().await;
                        return;
                    }
                    None => {
                        let _ = wr.shutdown().await;
                        return;
                    }
                },
            };
            if !bytes.is_empty() && (wr.write_all(&bytes).await.is_err() || wr.flush().await.is_err()) {
                return;
            }
        }
    });

    match tokio::time::timeout(STREAMS_TIMEOUT, ready_rx).await {
        Ok(Ok(())) => Some(Session { streams, input: in_rx, output: out_tx }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header block as the Go client writes it: count, then length-prefixed pairs,
    /// compressed with the dictionary.
    fn client_block(c: &mut Compress, pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut raw = (pairs.len() as u32).to_be_bytes().to_vec();
        for (k, v) in pairs {
            raw.extend_from_slice(&(k.len() as u32).to_be_bytes());
            raw.extend_from_slice(k.as_bytes());
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 128);
        c.compress_vec(&raw, &mut out, FlushCompress::Sync).unwrap();
        out
    }

    fn syn_stream(c: &mut Compress, id: u32, kind: &str) -> Vec<u8> {
        let mut p = id.to_be_bytes().to_vec();
        p.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        p.extend(client_block(c, &[("streamtype", kind)]));
        control(SYN_STREAM, 0, &p)
    }

    #[tokio::test]
    async fn streams_replies_stdin_and_the_final_status() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (mut crd, mut cwr) = tokio::io::split(client);
        let mut c = Compress::new(Compression::default(), true);
        c.set_dictionary(DICTIONARY).unwrap();
        let mut opening = Vec::new();
        for (id, kind) in [(1, "error"), (3, "stdin"), (5, "stdout"), (7, "stderr")] {
            opening.extend(syn_stream(&mut c, id, kind));
        }
        opening.extend(data(3, FLAG_FIN, b"input"));
        cwr.write_all(&opening).await.unwrap();
        let streams = Streams { stdin: true, stdout: true, stderr: true, tty: false };
        let mut session = start(server, V4, streams).await.expect("all streams arrive");
        assert_eq!(session.input.recv().await, Some(Input::Stdin(Bytes::from_static(b"input"))));
        assert_eq!(session.input.recv().await, Some(Input::StdinEnd));
        session.output.send(Output::Stdout(Bytes::from_static(b"out"))).await.unwrap();
        session.output.send(Output::Done(super::super::success())).await.unwrap();
        let mut got = Vec::new();
        crd.read_to_end(&mut got).await.unwrap();
        // Four SYN_REPLYs (their header blocks decode with the dictionary), the output,
        // the status, FINs and GOAWAY.
        let mut d = HeaderReader(Decompress::new(true));
        let mut pos = 0;
        let mut frames = Vec::new();
        while pos + 8 <= got.len() {
            let len = u32::from_be_bytes([0, got[pos + 5], got[pos + 6], got[pos + 7]]) as usize;
            let (head, body) = (&got[pos..pos + 8], &got[pos + 8..pos + 8 + len]);
            if head[0] & 0x80 != 0 {
                let kind = u16::from_be_bytes([head[2], head[3]]);
                if kind == SYN_REPLY {
                    assert_eq!(parse_headers(&d.block(&body[4..]).unwrap()).unwrap().len(), 0);
                }
                frames.push(format!("c{kind}"));
            } else {
                let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
                frames.push(format!("d{id}:{}:{}", head[4], String::from_utf8_lossy(body)));
            }
            pos += 8 + len;
        }
        assert_eq!(
            frames,
            [
                "c2",
                "c2",
                "c2",
                "c2",
                "d5:0:out",
                r#"d1:0:{"metadata":{},"status":"Success"}"#,
                "d1:1:",
                "d5:1:",
                "d7:1:",
                "c7"
            ]
        );
    }
}
