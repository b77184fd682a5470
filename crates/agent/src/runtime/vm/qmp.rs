//! A small QMP client (the QEMU Machine Protocol: one JSON object per line over a unix
//! socket). After the greeting, `qmp_capabilities` leaves negotiation mode; then each
//! command gets exactly one `return` or `error`, with asynchronous `event`s possibly in
//! between (skipped here: the supervisor's exit record is what tells the agent the VM
//! ended). Generic over the stream so tests talk to a scripted fake end of a socket pair.
//!
//! Why not the `qapi` crate: we need four commands; its generated types and async stack
//! are far larger than this file.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("connecting to {path}: {source}")]
    Connect { path: String, source: std::io::Error },
    #[error("QMP I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("QMP closed the connection")]
    Closed,
    #[error("QMP sent something that is not JSON: {0:?}")]
    Garbled(String),
    #[error("QMP greeting missing (got {0})")]
    NoGreeting(String),
    #[error("QMP {command} failed: {class}: {desc}")]
    Command { command: String, class: String, desc: String },
}

pub struct Qmp<S: Read + Write> {
    reader: BufReader<S>,
    /// qemu's version from the greeting (`7.2.0`).
    pub version: String,
    /// Events that arrived while waiting for answers, oldest first (for [`Qmp::wait_event`]).
    events: Vec<Value>,
}

impl Qmp<UnixStream> {
    /// Connects to a QMP socket and negotiates capabilities; every read and write gives up
    /// after `timeout` (a wedged qemu must not hang the agent).
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let stream = UnixStream::connect(path)
            .map_err(|source| QmpError::Connect { path: path.display().to_string(), source })?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Qmp::handshake(stream)
    }
}

impl<S: Read + Write> Qmp<S> {
    /// Reads the greeting and sends `qmp_capabilities`.
    pub fn handshake(stream: S) -> Result<Self, QmpError> {
        let mut qmp = Qmp { reader: BufReader::new(stream), version: String::new(), events: Vec::new() };
        let greeting = qmp.read_message()?;
        let Some(version) = greeting.pointer("/QMP/version/qemu") else {
            return Err(QmpError::NoGreeting(greeting.to_string()));
        };
        qmp.version = format!(
            "{}.{}.{}",
            version["major"].as_u64().unwrap_or(0),
            version["minor"].as_u64().unwrap_or(0),
            version["micro"].as_u64().unwrap_or(0)
        );
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(QmpError::Closed);
        }
        serde_json::from_str(line.trim_end()).map_err(|_| QmpError::Garbled(line))
    }

    /// Runs one command and returns its `return` value; events that arrive first are
    /// skipped.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let mut request = json!({"execute": command});
        if let Some(a) = arguments {
            request["arguments"] = a;
        }
        let mut bytes = serde_json::to_vec(&request).unwrap_or_default();
        bytes.push(b'\n');
        let stream = self.reader.get_mut();
        stream.write_all(&bytes)?;
        stream.flush()?;
        loop {
            let msg = self.read_message()?;
            if let Some(r) = msg.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = msg.get("error") {
                return Err(QmpError::Command {
                    command: command.into(),
                    class: e["class"].as_str().unwrap_or("").into(),
                    desc: e["desc"].as_str().unwrap_or("").into(),
                });
            }
            // An event ({"event": ...}): not an answer; kept, and keep reading.
            if msg.get("event").is_some() {
                self.events.push(msg);
            }
        }
    }

    /// Waits until an event for which `wanted` holds arrives (or arrived while a command
    /// was answered), for at most `within`; returns it, or `None` when none came.
    pub fn wait_event(
        &mut self,
        within: std::time::Duration,
        wanted: impl Fn(&Value) -> bool,
    ) -> Result<Option<Value>, QmpError> {
        if let Some(i) = self.events.iter().position(&wanted) {
            return Ok(Some(self.events.remove(i)));
        }
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            match self.read_message() {
                Ok(msg) if wanted(&msg) => return Ok(Some(msg)),
                Ok(_) => {}
                // The socket's read timeout: look at the clock again.
                Err(QmpError::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// The run state (`running`, `paused`, `shutdown`, ...).
    pub fn query_status(&mut self) -> Result<String, QmpError> {
        let r = self.execute("query-status", None)?;
        Ok(r["status"].as_str().unwrap_or("").to_string())
    }

    /// Presses the ACPI power button: the guest decides how (and whether) to power off.
    pub fn system_powerdown(&mut self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).map(drop)
    }

    /// Ends qemu at once. qemu may close the socket before or after answering; both
    /// count as done.
    pub fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute("quit", None) {
            Ok(_) | Err(QmpError::Closed) => Ok(()),
            Err(QmpError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}"#;

    /// A fake qemu on the other end of a socket pair: answers each request line with the
    /// next scripted lines and records the requests.
    fn fake(script: Vec<Vec<&'static str>>) -> (UnixStream, std::thread::JoinHandle<Vec<Value>>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let handle = std::thread::spawn(move || {
            let mut w = theirs.try_clone().unwrap();
            let mut r = BufReader::new(theirs);
            writeln!(w, "{GREETING}").unwrap();
            let mut seen = Vec::new();
            for answers in script {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap() == 0 {
                    break;
                }
                seen.push(serde_json::from_str(&line).unwrap());
                for a in answers {
                    writeln!(w, "{a}").unwrap();
                }
            }
            seen
        });
        (ours, handle)
    }

    #[test]
    fn negotiates_then_answers_commands_skipping_events() {
        let (stream, fake) = fake(vec![
            vec![r#"{"return": {}}"#],
            vec![
                r#"{"event": "RESUME", "timestamp": {"seconds": 1, "microseconds": 2}}"#,
                r#"{"return": {"status": "running", "singlestep": false, "running": true}}"#,
            ],
            vec![r#"{"return": {}}"#],
        ]);
        let mut qmp = Qmp::handshake(stream).unwrap();
        assert_eq!(qmp.version, "7.2.0");
        assert_eq!(qmp.query_status().unwrap(), "running");
        qmp.system_powerdown().unwrap();
        drop(qmp);
        let seen = fake.join().unwrap();
        let commands: Vec<&str> = seen.iter().map(|v| v["execute"].as_str().unwrap()).collect();
        assert_eq!(commands, ["qmp_capabilities", "query-status", "system_powerdown"]);
    }

    #[test]
    fn errors_carry_class_and_description() {
        let (stream, _fake) = fake(vec![
            vec![r#"{"return": {}}"#],
            vec![r#"{"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}"#],
        ]);
        let mut qmp = Qmp::handshake(stream).unwrap();
        match qmp.execute("nope", None) {
            Err(QmpError::Command { class, desc, .. }) => {
                assert_eq!(class, "CommandNotFound");
                assert!(desc.contains("nope"));
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn events_are_kept_for_whoever_waits_for_them() {
        let (stream, _fake) = fake(vec![
            vec![r#"{"return": {}}"#],
            vec![
                r#"{"event": "RESET", "data": {"guest": false, "reason": "host-qmp-system-reset"}}"#,
                r#"{"return": {}}"#,
                r#"{"event": "RESET", "data": {"guest": true, "reason": "guest-reset"}}"#,
            ],
        ]);
        let mut qmp = Qmp::handshake(stream).unwrap();
        qmp.execute("system_reset", None).unwrap();
        let guest = |e: &Value| e["event"] == "RESET" && e["data"]["guest"] == true;
        let got = qmp.wait_event(Duration::from_secs(5), guest).unwrap().expect("the guest's reset");
        assert_eq!(got["data"]["reason"], "guest-reset");
        let host = |e: &Value| e["data"]["reason"] == "host-qmp-system-reset";
        assert!(qmp.wait_event(Duration::from_secs(5), host).unwrap().is_some(), "kept while answering");
    }

    #[test]
    fn quit_accepts_a_closed_socket() {
        // qemu may exit before its answer to `quit` is read.
        let (stream, _fake) = fake(vec![vec![r#"{"return": {}}"#], vec![]]);
        let mut qmp = Qmp::handshake(stream).unwrap();
        qmp.quit().unwrap();
    }

    #[test]
    fn garbage_and_missing_greeting_are_errors() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut w = theirs;
        writeln!(w, "not json").unwrap();
        assert!(matches!(Qmp::handshake(ours), Err(QmpError::Garbled(_))));
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut w = theirs;
        writeln!(w, r#"{{"hello": 1}}"#).unwrap();
        assert!(matches!(Qmp::handshake(ours), Err(QmpError::NoGreeting(_))));
    }
}
