//! Remote command streams as kubectl speaks them (exec, attach): the session a command
//! sees ([`Session`]: input events in, output events out), and the two wire protocols that
//! carry it over an upgraded HTTP/1.1 connection:
//!
//! - [`ws`]: WebSocket with the `v5.channel.k8s.io` / `v4.channel.k8s.io` subprotocols
//!   (kubectl 1.30+): one binary message per chunk, its first byte the channel (0 stdin,
//!   1 stdout, 2 stderr, 3 error, 4 resize; v5 adds 255 = "close this channel").
//! - [`spdy`]: SPDY/3.1 (kubectl 1.27–1.29, and the fallback of later ones): one SPDY
//!   stream per channel, named by its `streamType` header.
//!
//! Both end the same way: a `Status` on the error channel (success, or failure with the
//! exit code as a cause, which kubectl turns into `command terminated with exit code N`),
//! then the connection closes.

pub mod portforward;
pub mod spdy;
pub mod ws;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Which streams the client asked for (`stdin=1&stdout=1&stderr=1&tty=1`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Streams {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// What the client sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    Stdin(Bytes),
    /// The client closed its stdin.
    StdinEnd,
    /// The terminal's new size (columns, rows).
    Resize {
        width: u16,
        height: u16,
    },
}

/// What the command sends back; `Done` is the last event and ends the session.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    Stdout(Bytes),
    Stderr(Bytes),
    /// The final `Status` for the error channel.
    Done(Value),
}

/// The command's side of a session; the protocol task holds the other ends.
pub struct Session {
    pub streams: Streams,
    pub input: mpsc::Receiver<Input>,
    pub output: mpsc::Sender<Output>,
}

/// How deep the queues between a protocol and its command are: enough to keep a copy
/// busy, small enough that a stalled client stops the command's output (back-pressure).
pub const QUEUE: usize = 16;

/// The error channel's success.
pub fn success() -> Value {
    json!({"metadata": {}, "status": "Success"})
}

/// The error channel's report of a non-zero exit, as the kubelet words it.
pub fn exit_status(command: &[String], code: i32) -> Value {
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: error executing command {command:?}, \
                            exit code {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

/// The error channel's report of a failure before or outside the command.
pub fn failure(message: &str) -> Value {
    json!({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError", "code": 500})
}

/// A resize message's body: `{"Width":80,"Height":24}`.
pub fn parse_resize(data: &[u8]) -> Option<Input> {
    let v: Value = serde_json::from_slice(data).ok()?;
    let dim = |k: &str| v.get(k).and_then(Value::as_u64).map(|n| n.min(u64::from(u16::MAX)) as u16);
    Some(Input::Resize { width: dim("Width")?, height: dim("Height")? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_and_statuses() {
        assert_eq!(parse_resize(br#"{"Width":80,"Height":24}"#), Some(Input::Resize { width: 80, height: 24 }));
        assert_eq!(parse_resize(b"nonsense"), None);
        let s = exit_status(&["sh".into()], 3);
        assert_eq!(s["details"]["causes"][0]["message"], "3");
        assert_eq!(s["reason"], "NonZeroExitCode");
    }
}
