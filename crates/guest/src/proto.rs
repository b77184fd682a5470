//! The framed protocol between the host and the guest agent, over one virtio-serial port
//! (qemu `virtserialport` named [`PORT_NAME`], a unix socket on the host side). The same
//! frames also carry `kubectl exec` streams between `atoll shim sandbox-exec` and the
//! sandbox's shim.
//!
//! A frame is a 9-byte header, then the payload:
//!
//! ```text
//! u32 big-endian  payload length (at most MAX_PAYLOAD)
//! u8              kind: 1 control, 2 stdout, 3 stderr, 4 stdin, 5 stdin closed
//! u32 big-endian  stream: a process (a container or an exec), chosen by the host; 0 = the guest
//! ```
//!
//! Control payloads are one JSON object with an `op`:
//!
//! - host → guest: `run` (`args`, `env` as `K=V` strings, `cwd`, `uid`, `gid`, `disk`: the
//!   guest block device holding the container's root file system), `exec` (`container`: the
//!   stream of a running container, or 0 for the guest's own root in a VM pod; `args`, `env`), `signal` (`signal`: a number).
//! - guest → host: `ready` (stream 0, once), `started` (`pid`), `exit` (`code`: the exit
//!   status, or 128 + signal), `error` (`message`: the process could not be started; no
//!   `exit` follows).
//!
//! Output frames of a stream always precede its `exit`.

use std::io::{self, Read, Write};

use serde_json::Value;

/// The virtio-serial port's name (`/sys/class/virtio-ports/*/name` in the guest).
pub const PORT_NAME: &str = "atoll.0";
/// Longest payload; longer output is sent as several frames.
pub const MAX_PAYLOAD: usize = 1 << 20;

pub const CONTROL: u8 = 1;
pub const STDOUT: u8 = 2;
pub const STDERR: u8 = 3;
pub const STDIN: u8 = 4;
pub const STDIN_CLOSED: u8 = 5;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn control(stream: u32, msg: &Value) -> Frame {
        Frame { kind: CONTROL, stream, payload: msg.to_string().into_bytes() }
    }

    /// The control message, if this is a control frame holding a JSON object.
    pub fn message(&self) -> Option<Value> {
        if self.kind != CONTROL {
            return None;
        }
        serde_json::from_slice(&self.payload).ok().filter(Value::is_object)
    }
}

/// Writes one frame with a single `write_all` (so frames from several threads sharing a
/// locked writer never interleave) and flushes.
pub fn write_frame(w: &mut impl Write, frame: &Frame) -> io::Result<()> {
    if frame.payload.len() > MAX_PAYLOAD {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "frame payload too long"));
    }
    let mut buf = Vec::with_capacity(9 + frame.payload.len());
    buf.extend_from_slice(&(frame.payload.len() as u32).to_be_bytes());
    buf.push(frame.kind);
    buf.extend_from_slice(&frame.stream.to_be_bytes());
    buf.extend_from_slice(&frame.payload);
    w.write_all(&buf)?;
    w.flush()
}

/// Reads one frame; `None` at a clean end of stream (between frames).
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<Frame>> {
    let mut header = [0u8; 9];
    let mut got = 0;
    while got < header.len() {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes")));
    }
    let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some(Frame { kind: header[4], stream, payload }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_truncation_is_an_error() {
        let mut buf = Vec::new();
        let hello = Frame::control(7, &serde_json::json!({"op": "started", "pid": 12}));
        write_frame(&mut buf, &hello).unwrap();
        write_frame(&mut buf, &Frame { kind: STDOUT, stream: 7, payload: b"hi\n".to_vec() }).unwrap();
        let mut r = &buf[..];
        let first = read_frame(&mut r).unwrap().unwrap();
        assert_eq!(first.message().unwrap()["pid"], 12);
        assert_eq!(read_frame(&mut r).unwrap().unwrap().payload, b"hi\n");
        assert_eq!(read_frame(&mut r).unwrap(), None);
        let mut cut = &buf[..buf.len() - 1];
        read_frame(&mut cut).unwrap();
        assert!(read_frame(&mut cut).is_err());
        let mut huge = &[0xffu8, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0][..];
        assert!(read_frame(&mut huge).is_err());
    }
}
