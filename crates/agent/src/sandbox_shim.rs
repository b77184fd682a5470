//! The host end of a VM sandbox: `atoll shim sandbox --dir DIR -- QEMU ARGS...`, one per
//! sandboxed pod, started (detached, like the container shim) by
//! [`crate::runtime::vm::sandbox::SandboxRuntime`]. It runs qemu as its child and is the
//! one client of the guest agent's virtio-serial port (`DIR/guest.sock`), so it must
//! outlive agent restarts as the VM does. It:
//!
//! - writes qemu's console (serial on stdout) to `DIR/console.log`;
//! - drops `DIR/ready` when the guest agent says it is up;
//! - writes each container's output to its CRI log, and `started.json`, `exit.json`
//!   (the container shim's [`ExitRecord`]) or `error` into the container's folder, so the
//!   runtime reads a container's state from disk as for OCI containers;
//! - serves requests on `DIR/ctl.sock`: one control frame per connection ([`crate::runtime::vm::sandbox`]
//!   sends `run` and `signal`; `atoll shim sandbox-exec` sends `exec` and then stdin frames,
//!   and gets the session's output and exit frames back);
//! - when qemu ends, records exit 137 for containers that were still running and qemu's
//!   own end in `DIR/exit.json`.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use guest::proto::{CONTROL, Frame, STDERR, STDIN, STDIN_CLOSED, STDOUT, read_frame, write_frame};
use serde_json::{Value, json};

use crate::os::write_atomic;
use crate::shim::{EXIT_FILE, ExitRecord, MAX_LOG_LINE, READY_FILE};
use crate::timefmt::{rfc3339_nano, to_nanos};

pub const GUEST_SOCKET: &str = "guest.sock";
pub const CONTROL_SOCKET: &str = "ctl.sock";
pub const CONSOLE_LOG: &str = "console.log";
pub const STARTED_FILE: &str = "started.json";
pub const ERROR_FILE: &str = "error";
/// The exit code recorded for a container whose start failed (Kubernetes' `StartError`).
pub const START_ERROR_CODE: i32 = 128;
/// How long a request waits for the guest to come up.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// Exec sessions' streams are numbered from here; containers' below.
const FIRST_SESSION: u32 = 1 << 31;

/// CRI log records from output that arrives in arbitrary chunks.
struct CriLog {
    file: Option<File>,
    partial: [Vec<u8>; 2],
}

impl CriLog {
    fn emit(&mut self, stream: usize, tag: &str, bytes: &[u8]) {
        let name = if stream == 0 { "stdout" } else { "stderr" };
        let mut record = format!("{} {name} {tag} ", rfc3339_nano(SystemTime::now())).into_bytes();
        record.extend_from_slice(bytes);
        record.push(b'\n');
        if let Some(f) = &mut self.file {
            // A full disk loses log lines, never the container.
            let _ = f.write_all(&record);
        }
    }

    fn push(&mut self, stream: usize, mut data: &[u8]) {
        while !data.is_empty() {
            let room = MAX_LOG_LINE - self.partial[stream].len();
            let window = &data[..data.len().min(room)];
            match window.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let mut line = std::mem::take(&mut self.partial[stream]);
                    line.extend_from_slice(&window[..i]);
                    self.emit(stream, "F", &line);
                    data = &data[i + 1..];
                }
                None => {
                    self.partial[stream].extend_from_slice(window);
                    data = &data[window.len()..];
                    if self.partial[stream].len() >= MAX_LOG_LINE {
                        let line = std::mem::take(&mut self.partial[stream]);
                        self.emit(stream, "P", &line);
                    }
                }
            }
        }
    }

    fn finish(&mut self) {
        for s in 0..2 {
            if !self.partial[s].is_empty() {
                let line = std::mem::take(&mut self.partial[s]);
                self.emit(s, "F", &line);
            }
        }
    }
}

struct Container {
    dir: PathBuf,
    log: CriLog,
    started: bool,
    done: bool,
}

#[derive(Default)]
struct State {
    ready: bool,
    vm_exited: bool,
    containers: HashMap<u32, Container>,
    sessions: HashMap<u32, UnixStream>,
    next_session: u32,
}

/// The host end of one guest's channel: shared by the sandbox shim and the VM shim
/// ([`crate::shim::supervise_vm`], whose guests run the agent beside their own init).
pub(crate) struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    guest: Mutex<Option<UnixStream>>,
    /// How long a request waits for the agent's `ready`: a sandbox's guest always has the
    /// agent; a VM image may not, and exec must then fail rather than hang.
    boot_timeout: Duration,
    /// Dropped when the agent is up (the sandbox's readiness); a VM's readiness is its
    /// console marker instead.
    ready_file: Option<PathBuf>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn to_guest(&self, frame: &Frame) -> Result<(), String> {
        let mut g = self.guest.lock().unwrap_or_else(|e| e.into_inner());
        let stream = g.as_mut().ok_or("the guest is not connected")?;
        write_frame(stream, frame).map_err(|e| format!("writing to the guest: {e}"))
    }

    /// Waits until `done` holds of the state, or `within` passes (`false`).
    fn wait(&self, within: Duration, done: impl Fn(&State) -> bool) -> bool {
        let deadline = Instant::now() + within;
        let mut st = self.lock();
        loop {
            if done(&st) {
                return true;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { return false };
            st = self.changed.wait_timeout(st, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

fn exit_record(code: i32) -> Vec<u8> {
    let rec = ExitRecord { exit_code: code, signal: None, finished_at_nanos: to_nanos(SystemTime::now()) };
    serde_json::to_vec(&rec).unwrap_or_default()
}

/// `shim sandbox --dir DIR -- COMMAND...`: parsed by hand like the other shims.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<(PathBuf, Vec<OsString>), String> {
    let mut it = args.into_iter();
    let mut dir = None;
    while let Some(flag) = it.next() {
        if flag == "--" {
            let command: Vec<OsString> = it.collect();
            if command.is_empty() {
                return Err("no command after --".into());
            }
            return Ok((dir.ok_or("--dir is required")?, command));
        }
        match flag.to_str() {
            Some("--dir") => dir = Some(PathBuf::from(it.next().ok_or("--dir needs a value")?)),
            _ => return Err(format!("unknown flag {flag:?}")),
        }
    }
    Err("missing -- and the command".into())
}

fn handshake(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// Runs the sandbox until qemu exits.
pub fn supervise(dir: &Path, command: &[OsString]) -> Result<(), String> {
    let fail = |msg: String| {
        handshake(&format!("error {msg}"));
        msg
    };
    let console = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(CONSOLE_LOG))
        .map_err(|e| fail(format!("opening the console log: {e}")))?;
    let ctl_path = dir.join(CONTROL_SOCKET);
    let _ = std::fs::remove_file(&ctl_path);
    // Bound before the handshake: the runtime's first request follows right after it.
    let listener = UnixListener::bind(&ctl_path).map_err(|e| fail(format!("binding {}: {e}", ctl_path.display())))?;
    let (program, rest) = command.split_first().ok_or_else(|| fail("no command".into()))?;
    let err = console.try_clone().map_err(|e| fail(e.to_string()))?;
    let mut child = Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .stdout(console)
        .stderr(err)
        .spawn()
        .map_err(|e| fail(format!("running {}: {e}", program.to_string_lossy())))?;
    handshake(&format!("created {}", child.id()));
    let mut alive = || child.try_wait().ok().flatten().is_none();
    let shared = serve_guest(dir, listener, &mut alive, BOOT_TIMEOUT, Some(dir.join(READY_FILE)));
    if shared.guest.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
        let _ = child.kill();
    }
    let status = child.wait().map_err(|e| format!("waiting for qemu: {e}"))?;
    guest_gone(&shared);
    let _ = std::fs::remove_file(&ctl_path);
    use std::os::unix::process::ExitStatusExt as _;
    let code = status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(255);
    write_atomic(&dir.join(EXIT_FILE), &exit_record(code)).map_err(|e| format!("writing the exit file: {e}"))
}

/// Connects to the guest's port (`dir/guest.sock`, made by qemu a moment after it starts;
/// `alive` says whether qemu still runs) and serves requests on `listener`, each on its own
/// thread. Without a connection the channel answers every request with an error.
pub(crate) fn serve_guest(
    dir: &Path,
    listener: UnixListener,
    alive: &mut dyn FnMut() -> bool,
    boot_timeout: Duration,
    ready_file: Option<PathBuf>,
) -> Arc<Shared> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State { next_session: FIRST_SESSION, ..State::default() }),
        changed: Condvar::new(),
        guest: Mutex::new(None),
        boot_timeout,
        ready_file,
    });
    let guest_path = dir.join(GUEST_SOCKET);
    let deadline = Instant::now() + Duration::from_secs(10);
    let guest = loop {
        match UnixStream::connect(&guest_path) {
            Ok(s) => break Some(s),
            Err(_) if Instant::now() < deadline && alive() => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                eprintln!("atoll shim: connecting to {}: {e}", guest_path.display());
                break None;
            }
        }
    };
    if let Some(guest) = guest {
        if let Ok(w) = guest.try_clone() {
            *shared.guest.lock().unwrap_or_else(|e| e.into_inner()) = Some(w);
        }
        let shared = shared.clone();
        std::thread::spawn(move || from_guest(guest, &shared));
    } else {
        shared.lock().vm_exited = true;
    }
    {
        let shared = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let shared = shared.clone();
                std::thread::spawn(move || serve(conn, &shared));
            }
        });
    }
    shared
}

/// qemu ended: containers still running end with 137, sessions and waiters are let go.
pub(crate) fn guest_gone(shared: &Shared) {
    {
        let mut st = shared.lock();
        st.vm_exited = true;
        for c in st.containers.values_mut().filter(|c| !c.done) {
            c.log.finish();
            c.done = true;
            let _ = write_atomic(&c.dir.join(EXIT_FILE), &exit_record(137));
        }
        st.sessions.clear();
    }
    shared.changed.notify_all();
}

/// Dispatches the guest's frames to container files and exec sessions.
fn from_guest(mut guest: UnixStream, shared: &Shared) {
    while let Ok(Some(frame)) = read_frame(&mut guest) {
        let s = frame.stream;
        let mut st = shared.lock();
        if let Some(session) = st.sessions.get_mut(&s) {
            let end = frame.message().is_some_and(|m| matches!(m["op"].as_str(), Some("exit" | "error")));
            let _ = write_frame(session, &frame);
            if end {
                st.sessions.remove(&s);
            }
            continue;
        }
        match (frame.kind, frame.message()) {
            (CONTROL, Some(m)) => match (m["op"].as_str().unwrap_or(""), st.containers.get_mut(&s)) {
                ("ready", _) if s == 0 => {
                    st.ready = true;
                    if let Some(file) = &shared.ready_file {
                        let _ = write_atomic(file, b"");
                    }
                }
                ("started", Some(c)) => {
                    c.started = true;
                    let rec = json!({"started_at_nanos": to_nanos(SystemTime::now())});
                    let _ = write_atomic(&c.dir.join(STARTED_FILE), rec.to_string().as_bytes());
                }
                ("exit", Some(c)) => {
                    c.log.finish();
                    c.done = true;
                    let code = m["code"].as_i64().unwrap_or(255) as i32;
                    let _ = write_atomic(&c.dir.join(EXIT_FILE), &exit_record(code));
                }
                ("error", Some(c)) => {
                    c.done = true;
                    let msg = m["message"].as_str().unwrap_or("").to_string();
                    let _ = write_atomic(&c.dir.join(ERROR_FILE), msg.as_bytes());
                    let _ = write_atomic(&c.dir.join(EXIT_FILE), &exit_record(START_ERROR_CODE));
                }
                _ => {}
            },
            (STDOUT | STDERR, _) => {
                if let Some(c) = st.containers.get_mut(&s) {
                    c.log.push(if frame.kind == STDOUT { 0 } else { 1 }, &frame.payload);
                }
            }
            _ => {}
        }
        drop(st);
        shared.changed.notify_all();
    }
}

fn reply(conn: &mut UnixStream, msg: Value) {
    let _ = write_frame(conn, &Frame::control(0, &msg));
}

/// One control connection.
fn serve(mut conn: UnixStream, shared: &Shared) {
    let Ok(Some(frame)) = read_frame(&mut conn) else { return };
    let Some(msg) = frame.message() else { return reply(&mut conn, json!({"error": "not a control frame"})) };
    let booted =
        |shared: &Shared| shared.wait(shared.boot_timeout, |st| st.ready || st.vm_exited) && shared.lock().ready;
    match msg["op"].as_str().unwrap_or("") {
        "run" => {
            let stream = msg["stream"].as_u64().unwrap_or(0) as u32;
            let (Some(dir), Some(log)) = (msg["dir"].as_str(), msg["log"].as_str()) else {
                return reply(&mut conn, json!({"error": "run needs dir and log"}));
            };
            if stream == 0 || stream >= FIRST_SESSION {
                return reply(&mut conn, json!({"error": "bad stream"}));
            }
            let file = std::fs::OpenOptions::new().create(true).append(true).open(log).ok();
            let log = CriLog { file, partial: [Vec::new(), Vec::new()] };
            shared.lock().containers.insert(stream, Container { dir: dir.into(), log, started: false, done: false });
            if !booted(shared) {
                return reply(&mut conn, json!({"error": "the guest did not come up"}));
            }
            if let Err(e) = shared.to_guest(&Frame::control(stream, &msg["run"])) {
                return reply(&mut conn, json!({"error": e}));
            }
            let settled = |st: &State| st.vm_exited || st.containers.get(&stream).is_none_or(|c| c.started || c.done);
            if shared.wait(Duration::from_secs(30), settled) {
                reply(&mut conn, json!({"ok": true}));
            } else {
                reply(&mut conn, json!({"error": "the guest did not start the container"}));
            }
        }
        "signal" => {
            let stream = msg["stream"].as_u64().unwrap_or(0) as u32;
            let signal = msg["signal"].as_u64().unwrap_or(15);
            let sent = shared.to_guest(&Frame::control(stream, &json!({"op": "signal", "signal": signal})));
            reply(&mut conn, sent.map_or_else(|e| json!({"error": e}), |()| json!({"ok": true})));
        }
        "exec" => {
            if !booted(shared) {
                let message = "the guest agent did not answer: the guest is not up, or its image does not run \
                               atoll-guest";
                return reply(&mut conn, json!({"op": "error", "message": message}));
            }
            let Ok(writer) = conn.try_clone() else { return };
            let id = {
                let mut st = shared.lock();
                let id = st.next_session;
                st.next_session = st.next_session.wrapping_add(1).max(FIRST_SESSION);
                st.sessions.insert(id, writer);
                id
            };
            let exec = json!({"op": "exec", "container": msg["container"], "args": msg["args"]});
            if let Err(e) = shared.to_guest(&Frame::control(id, &exec)) {
                shared.lock().sessions.remove(&id);
                return reply(&mut conn, json!({"op": "error", "message": e}));
            }
            // The client's stdin, until it closes it or goes away.
            while let Ok(Some(f)) = read_frame(&mut conn) {
                if matches!(f.kind, STDIN | STDIN_CLOSED) {
                    let _ = shared.to_guest(&Frame { kind: f.kind, stream: id, payload: f.payload });
                }
                if f.kind == STDIN_CLOSED {
                    return;
                }
            }
            let _ = shared.to_guest(&Frame { kind: STDIN_CLOSED, stream: id, payload: Vec::new() });
        }
        op => reply(&mut conn, json!({"error": format!("unknown op {op:?}")})),
    }
}

/// One request to a sandbox's shim and its reply (`run`, `signal`).
pub fn request(ctl: &Path, msg: &Value, timeout: Duration) -> Result<Value, String> {
    let mut conn = UnixStream::connect(ctl).map_err(|e| format!("connecting to {}: {e}", ctl.display()))?;
    conn.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    write_frame(&mut conn, &Frame::control(0, msg)).map_err(|e| e.to_string())?;
    match read_frame(&mut conn) {
        Ok(Some(f)) => f.message().ok_or_else(|| "a reply that is not a control frame".into()),
        Ok(None) => Err("the shim closed the connection".into()),
        Err(e) => Err(format!("reading the reply: {e}")),
    }
}

/// `shim sandbox-exec --ctl SOCK --container N -- ARGS...`: a `kubectl exec` session in a
/// sandboxed container, with our stdio as the session's. Returns the command's exit code.
pub fn exec_main(args: impl IntoIterator<Item = OsString>) -> i32 {
    let mut it = args.into_iter();
    let (mut ctl, mut container) = (None, None);
    let mut command = Vec::new();
    while let Some(flag) = it.next() {
        match flag.to_str() {
            Some("--") => {
                command = it.by_ref().map(|a| a.to_string_lossy().into_owned()).collect();
                break;
            }
            Some("--ctl") => ctl = it.next().map(PathBuf::from),
            Some("--container") => container = it.next().and_then(|c| c.to_str().and_then(|c| c.parse::<u32>().ok())),
            _ => {}
        }
    }
    let (Some(ctl), Some(container)) = (ctl, container) else {
        eprintln!("usage: shim sandbox-exec --ctl SOCK --container N -- ARGS...");
        return 2;
    };
    if command.is_empty() {
        eprintln!("atoll: no command to exec");
        return 2;
    }
    let mut conn = match UnixStream::connect(&ctl) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("atoll: the sandbox is not running ({e})");
            return 126;
        }
    };
    let msg = json!({"op": "exec", "container": container, "args": command});
    if write_frame(&mut conn, &Frame::control(0, &msg)).is_err() {
        return 126;
    }
    if let Ok(mut to_shim) = conn.try_clone() {
        std::thread::spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let f = Frame { kind: STDIN, stream: 0, payload: buf[..n].to_vec() };
                        if write_frame(&mut to_shim, &f).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = write_frame(&mut to_shim, &Frame { kind: STDIN_CLOSED, stream: 0, payload: Vec::new() });
        });
    }
    loop {
        match read_frame(&mut conn) {
            Ok(Some(f)) if f.kind == STDOUT => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&f.payload).and_then(|()| out.flush());
            }
            Ok(Some(f)) if f.kind == STDERR => {
                let _ = std::io::stderr().lock().write_all(&f.payload);
            }
            Ok(Some(f)) => match f.message() {
                Some(m) if m["op"] == "exit" => return m["code"].as_i64().unwrap_or(255) as i32,
                Some(m) if m["op"] == "error" => {
                    eprintln!("atoll: exec failed: {}", m["message"].as_str().unwrap_or(""));
                    return 126;
                }
                _ => {}
            },
            Ok(None) | Err(_) => {
                eprintln!("atoll: the sandbox went away during exec");
                return 255;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_output_becomes_whole_cri_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut log = CriLog { file: Some(File::create(&path).unwrap()), partial: [Vec::new(), Vec::new()] };
        log.push(0, b"hel");
        log.push(1, b"oops\n");
        log.push(0, b"lo\nwor");
        log.push(0, b"ld");
        log.finish();
        let text = std::fs::read_to_string(&path).unwrap();
        let records: Vec<String> = text.lines().map(|l| l.split_once(' ').unwrap().1.to_string()).collect();
        assert_eq!(records, ["stderr F oops", "stdout F hello", "stdout F world"]);
    }

    #[test]
    fn args_parse() {
        let (dir, cmd) = parse(["--dir", "/d", "--", "qemu", "-M"].map(OsString::from)).unwrap();
        assert_eq!((dir, cmd.len()), (PathBuf::from("/d"), 2));
        assert!(parse(["--dir", "/d"].map(OsString::from)).is_err());
        assert!(parse(["--bogus", "x", "--", "q"].map(OsString::from)).is_err());
    }
}
