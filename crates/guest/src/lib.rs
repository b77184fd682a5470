//! `atoll-guest`: the agent inside a VM sandbox. A tiny busybox init (see
//! `agent::sandbox_image`) mounts the pseudo file systems, loads the virtio modules and
//! `exec`s it as PID 1. It then serves the host over the virtio-serial port named
//! [`proto::PORT_NAME`]: it runs a pod's containers, each from a root file system that is
//! an overlay (tmpfs upper) over the image's read-only ext4 disk, streams their output,
//! reports their exits, signals them and runs `exec` sessions in them ([`proto`] documents
//! the frames). In a VM pod's guest (the `busybox-vm` image) it runs beside the image's own
//! init instead, and serves only `exec` sessions in the guest's own root (container 0).
//!
//! std and serde_json only (no async runtime, no libc crate): mounts and signals go
//! through the initramfs' static busybox, and entering a container's root is a re-exec of
//! this binary (`atoll-guest exec-in ROOT CWD UID GID -- ARGS`) that calls std's `chroot`
//! before `exec`, so no `unsafe` `pre_exec` hook is needed.
//!
//! If the agent fails, PID 1 exits, the kernel panics (`panic=-1`) and qemu (run with
//! `-no-reboot`) exits: the host sees the sandbox end rather than a silent guest.

pub mod proto;

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use serde_json::{Value, json};

use proto::{CONTROL, Frame, STDERR, STDIN, STDIN_CLOSED, STDOUT, read_frame, write_frame};

const BUSYBOX: &str = "/bin/busybox";
/// Where image disks are mounted (read-only) and containers' roots are made.
const IMAGES: &str = "/images";
const CONTAINERS: &str = "/run/c";
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug)]
pub enum GuestError {
    Io { what: String, source: std::io::Error },
    Command { what: String, detail: String },
    NoPort,
}

impl std::fmt::Display for GuestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GuestError::Io { what, source } => write!(f, "{what}: {source}"),
            GuestError::Command { what, detail } => write!(f, "{what}: {detail}"),
            GuestError::NoPort => write!(f, "no virtio-serial port named {}", proto::PORT_NAME),
        }
    }
}

impl std::error::Error for GuestError {}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> GuestError {
    let what = what.into();
    move |source| GuestError::Io { what, source }
}

/// The program's main: `exec-in ...` enters a container, anything else serves the host.
pub fn main(args: Vec<OsString>) -> i32 {
    if args.get(1).is_some_and(|a| a == "exec-in") {
        return exec_in(&args[2..]);
    }
    match serve() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("atoll-guest: {e}");
            1
        }
    }
}

/// `exec-in ROOT CWD UID GID -- ARGS...`: chroot, change directory, drop to the user and
/// become the command (its environment is ours, set by the parent).
fn exec_in(args: &[OsString]) -> i32 {
    use std::os::unix::process::CommandExt as _;
    let [root, cwd, uid, gid, sep, command @ ..] = args else {
        eprintln!("usage: atoll-guest exec-in ROOT CWD UID GID -- ARGS...");
        return 2;
    };
    let (Some(uid), Some(gid)) = (uid.to_str().and_then(|u| u.parse().ok()), gid.to_str().and_then(|g| g.parse().ok()))
    else {
        eprintln!("atoll-guest exec-in: bad uid or gid");
        return 2;
    };
    if sep != "--" || command.is_empty() {
        eprintln!("atoll-guest exec-in: no command");
        return 2;
    }
    if let Err(e) = std::os::unix::fs::chroot(root) {
        eprintln!("atoll-guest: chroot {}: {e}", root.to_string_lossy());
        return 126;
    }
    if std::env::set_current_dir(cwd).is_err() {
        let _ = std::env::set_current_dir("/");
    }
    let err = Command::new(&command[0]).args(&command[1..]).uid(uid).gid(gid).exec();
    eprintln!("atoll-guest: exec {}: {err}", command[0].to_string_lossy());
    if err.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 }
}

/// `/dev/vportNpM` of the port named [`proto::PORT_NAME`].
fn find_port() -> Result<PathBuf, GuestError> {
    // Probing may lag the module load (TCG on a busy host is slow): up to 10 s.
    for _ in 0..500 {
        if let Ok(entries) = std::fs::read_dir("/sys/class/virtio-ports") {
            for e in entries.flatten() {
                let name = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
                if name.trim() == proto::PORT_NAME {
                    return Ok(Path::new("/dev").join(e.file_name()));
                }
            }
        }
        // The port appears once virtio_console has probed it.
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(GuestError::NoPort)
}

fn busybox(args: &[&str]) -> Result<(), GuestError> {
    let out =
        Command::new(BUSYBOX).args(args).stdin(Stdio::null()).output().map_err(io(format!("busybox {args:?}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(GuestError::Command {
            what: format!("busybox {}", args.join(" ")),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

type Writer = Arc<Mutex<File>>;

fn send(w: &Writer, frame: &Frame) {
    let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
    // The host reconnects or is gone; either way a lost frame is all we can do.
    let _ = write_frame(&mut *w, frame);
}

/// A running container: what `exec` needs to enter it.
struct Container {
    root: PathBuf,
    env: Vec<String>,
    uid: u32,
    gid: u32,
}

#[derive(Default)]
struct State {
    mounted: HashSet<String>,
    containers: HashMap<u32, Container>,
    pids: HashMap<u32, u32>,
    stdins: HashMap<u32, ChildStdin>,
}

fn serve() -> Result<(), GuestError> {
    let port = find_port()?;
    let mut reader = File::options().read(true).write(true).open(&port).map_err(io(port.display().to_string()))?;
    let writer: Writer = Arc::new(Mutex::new(reader.try_clone().map_err(io("cloning the port"))?));
    let state = Arc::new(Mutex::new(State::default()));
    send(&writer, &Frame::control(0, &json!({"op": "ready"})));
    loop {
        let frame = match read_frame(&mut reader) {
            Ok(Some(f)) => f,
            // No host connected (or it went away): wait for one.
            Ok(None) | Err(_) => {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        handle(&frame, &writer, &state);
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn handle(frame: &Frame, writer: &Writer, state: &Arc<Mutex<State>>) {
    let s = frame.stream;
    match frame.kind {
        CONTROL => {
            let Some(msg) = frame.message() else { return };
            let result = match msg["op"].as_str().unwrap_or("") {
                "run" => run(s, &msg, writer, state),
                "exec" => exec(s, &msg, writer, state),
                "signal" => signal(s, &msg, state),
                op => Err(GuestError::Command { what: format!("op {op:?}"), detail: "unknown".into() }),
            };
            if let Err(e) = result {
                send(writer, &Frame::control(s, &json!({"op": "error", "message": e.to_string()})));
            }
        }
        STDIN => {
            if let Some(stdin) = lock(state).stdins.get_mut(&s) {
                let _ = stdin.write_all(&frame.payload);
            }
        }
        STDIN_CLOSED => {
            lock(state).stdins.remove(&s);
        }
        _ => {}
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect()).unwrap_or_default()
}

/// Mounts a container's root: the image disk read-only (once), an overlay with a tmpfs
/// upper (a fresh root per attempt, as containers get), and /proc, /sys, /dev in it.
fn make_root(s: u32, disk: &str, state: &Mutex<State>) -> Result<PathBuf, GuestError> {
    if disk.is_empty() || !disk.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(GuestError::Command { what: "run".into(), detail: format!("bad disk name {disk:?}") });
    }
    let lower = format!("{IMAGES}/{disk}");
    if !lock(state).mounted.contains(disk) {
        busybox(&["mkdir", "-p", &lower])?;
        busybox(&["mount", "-t", "ext4", "-o", "ro", &format!("/dev/{disk}"), &lower])?;
        lock(state).mounted.insert(disk.to_string());
    }
    let dir = format!("{CONTAINERS}/{s}");
    let (upper, work, root) = (format!("{dir}/upper"), format!("{dir}/work"), format!("{dir}/root"));
    busybox(&["mkdir", "-p", &upper, &work, &root])?;
    let opts = format!("lowerdir={lower},upperdir={upper},workdir={work}");
    busybox(&["mount", "-t", "overlay", "overlay", "-o", &opts, &root])?;
    for (fs, at) in [("proc", "proc"), ("sysfs", "sys")] {
        let target = format!("{root}/{at}");
        busybox(&["mkdir", "-p", &target])?;
        busybox(&["mount", "-t", fs, fs, &target])?;
    }
    let dev = format!("{root}/dev");
    busybox(&["mkdir", "-p", &dev])?;
    busybox(&["mount", "-o", "bind", "/dev", &dev])?;
    Ok(PathBuf::from(root))
}

fn unmake_root(s: u32) {
    let root = format!("{CONTAINERS}/{s}/root");
    for at in ["proc", "sys", "dev", ""] {
        let _ = busybox(&["umount", "-l", &format!("{root}/{at}")]);
    }
    let _ = std::fs::remove_dir_all(format!("{CONTAINERS}/{s}"));
}

fn run(s: u32, msg: &Value, writer: &Writer, state: &Arc<Mutex<State>>) -> Result<(), GuestError> {
    let args = strings(&msg["args"]);
    if args.is_empty() {
        return Err(GuestError::Command { what: "run".into(), detail: "no command".into() });
    }
    let mut env = strings(&msg["env"]);
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(DEFAULT_PATH.into());
    }
    let uid = msg["uid"].as_u64().unwrap_or(0) as u32;
    let gid = msg["gid"].as_u64().unwrap_or(0) as u32;
    let cwd = msg["cwd"].as_str().filter(|c| !c.is_empty()).unwrap_or("/");
    let root = make_root(s, msg["disk"].as_str().unwrap_or("vda"), state)?;
    let child = spawn_in(&root, cwd, uid, gid, &env, &args, false).inspect_err(|_| unmake_root(s))?;
    lock(state).containers.insert(s, Container { root, env, uid, gid });
    supervise(s, child, writer, state, true);
    Ok(())
}

fn exec(s: u32, msg: &Value, writer: &Writer, state: &Arc<Mutex<State>>) -> Result<(), GuestError> {
    let args = strings(&msg["args"]);
    let container = msg["container"]
        .as_u64()
        .ok_or_else(|| GuestError::Command { what: "exec".into(), detail: "no container named".into() })?
        as u32;
    // Container 0 names the guest itself (a VM pod's own root, as root): no container to enter.
    let (root, env, uid, gid) = if container == 0 {
        (PathBuf::from("/"), vec![DEFAULT_PATH.to_string(), "HOME=/root".into()], 0, 0)
    } else {
        let st = lock(state);
        let c = st.containers.get(&container).ok_or_else(|| GuestError::Command {
            what: "exec".into(),
            detail: format!("container {container} is not running"),
        })?;
        (c.root.clone(), c.env.clone(), c.uid, c.gid)
    };
    if args.is_empty() {
        return Err(GuestError::Command { what: "exec".into(), detail: "no command".into() });
    }
    let mut child = spawn_in(&root, "/", uid, gid, &env, &args, true)?;
    if let Some(stdin) = child.stdin.take() {
        lock(state).stdins.insert(s, stdin);
    }
    supervise(s, child, writer, state, false);
    Ok(())
}

fn spawn_in(
    root: &Path,
    cwd: &str,
    uid: u32,
    gid: u32,
    env: &[String],
    args: &[String],
    stdin: bool,
) -> Result<Child, GuestError> {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg("exec-in").arg(root).args([cwd, &uid.to_string(), &gid.to_string(), "--"]).args(args);
    cmd.env_clear();
    for e in env {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.spawn().map_err(io(format!("starting {:?}", args[0])))
}

/// Streams a process's output, then reports its exit (and, for a container, unmounts its
/// root). Output a leftover background process keeps writing after the exit is dropped
/// after a short wait, so an exit is never held up by it.
fn supervise(s: u32, mut child: Child, writer: &Writer, state: &Arc<Mutex<State>>, container: bool) {
    let pid = child.id();
    lock(state).pids.insert(s, pid);
    send(writer, &Frame::control(s, &json!({"op": "started", "pid": pid})));
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let pipes: [(u8, Option<Box<dyn Read + Send>>); 2] = [
        (STDOUT, child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>)),
        (STDERR, child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>)),
    ];
    for (kind, pipe) in pipes {
        let Some(mut pipe) = pipe else { continue };
        let (writer, done) = (writer.clone(), done_tx.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => send(&writer, &Frame { kind, stream: s, payload: buf[..n].to_vec() }),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            drop(done);
        });
    }
    drop(done_tx);
    let (writer, state) = (writer.clone(), state.clone());
    std::thread::spawn(move || {
        let code = match child.wait() {
            Ok(status) => {
                use std::os::unix::process::ExitStatusExt as _;
                status.code().or_else(|| status.signal().map(|sig| 128 + sig)).unwrap_or(255)
            }
            Err(_) => 255,
        };
        // Both pumps end (all senders dropped) once the pipes close.
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match done_rx.recv_timeout(left) {
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Ok(()) => {}
            }
        }
        {
            let mut st = lock(&state);
            st.pids.remove(&s);
            st.stdins.remove(&s);
            if container {
                st.containers.remove(&s);
            }
        }
        if container {
            unmake_root(s);
        }
        send(&writer, &Frame::control(s, &json!({"op": "exit", "code": code})));
    });
}

fn signal(s: u32, msg: &Value, state: &Mutex<State>) -> Result<(), GuestError> {
    let sig = msg["signal"].as_u64().filter(|n| (1..=64).contains(n)).unwrap_or(15);
    let Some(pid) = lock(state).pids.get(&s).copied() else { return Ok(()) };
    busybox(&["kill", &format!("-{sig}"), &pid.to_string()])
}
