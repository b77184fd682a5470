//! The per-container supervisor ("shim"), a small process of its own that outlives the
//! agent: it becomes a child subreaper, runs `<runtime> create` (or `run --detach`) with pipes as the
//! container's stdout/stderr, tells the agent the container's pid on its own stdout (one
//! line: `created <pid>` or `error <text>`), then copies the pipes into a Kubernetes CRI
//! log file (`<RFC3339Nano> stdout|stderr F|P <text>`), reaps the container when it exits
//! and writes `exit.json` (atomically) with the exit code and time.
//!
//! Because the container (reparented to the shim on `create`) is the shim's child, the
//! exit code is collected even while the agent is down or restarting; the agent reads it
//! from `exit.json` whenever it looks. Like conmon in CRI-O, but a few hundred lines in
//! our own binary (`atoll shim`) instead of a C dependency with a large command line.
//! The shim is, with [`crate::os::RealOs`], the only code that makes system calls.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::os::write_atomic;
use crate::timefmt::{rfc3339_nano, to_nanos};

/// Longest log line written as one record; longer lines are split into `P` records.
pub const MAX_LOG_LINE: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("usage: shim --runtime PATH --root DIR --id ID --bundle DIR --dir DIR --log FILE ({0})")]
    Usage(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShimArgs {
    pub runtime: PathBuf,
    pub root: PathBuf,
    pub id: String,
    pub bundle: PathBuf,
    /// The container's state folder (pid file, exit file).
    pub dir: PathBuf,
    pub log: PathBuf,
    /// Give the container a stdin pipe, fed by clients of [`ATTACH_SOCKET`] one at a time
    /// (`kubectl attach -i`); `Some(true)`: closed once the first client leaves
    /// (`stdinOnce`).
    pub stdin: Option<bool>,
    /// Start the container at once (`<runtime> run --detach` instead of `create`), for a
    /// caller that would start it right away anyway: one runtime process fewer.
    pub start: bool,
    /// Give the container a terminal (`tty: true`; [`crate::console`]).
    pub tty: bool,
    /// The container's root file system as overlay mount options (`lowerdir=...,upperdir=...,workdir=...`),
    /// mounted on `<bundle>/rootfs` by the shim in a mount namespace of its own that the runtime inherits:
    /// the node's namespace never holds a pod's root file system, so no other container's runtime copies
    /// or lists it (each `crun` read every pod's overlay in `/proc/self/mountinfo`: O(pods) per container),
    /// and the mount ends with the last process that uses it.
    pub rootfs_overlay: Option<String>,
}

/// The socket in the container's state folder that feeds its stdin.
pub const ATTACH_SOCKET: &str = "attach.sock";

impl ShimArgs {
    pub fn to_args(&self) -> Vec<OsString> {
        let mut out = Vec::new();
        for (flag, value) in [
            ("--runtime", self.runtime.as_os_str()),
            ("--root", self.root.as_os_str()),
            ("--id", self.id.as_ref()),
            ("--bundle", self.bundle.as_os_str()),
            ("--dir", self.dir.as_os_str()),
            ("--log", self.log.as_os_str()),
        ] {
            out.push(flag.into());
            out.push(value.to_owned());
        }
        if let Some(options) = &self.rootfs_overlay {
            out.push("--rootfs-overlay".into());
            out.push(options.into());
        }
        if let Some(once) = self.stdin {
            out.push("--stdin".into());
            out.push(if once { "once" } else { "keep" }.into());
        }
        if self.start {
            out.push("--start".into());
            out.push("now".into());
        }
        if self.tty {
            out.push("--tty".into());
            out.push("yes".into());
        }
        out
    }

    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<ShimArgs, ShimError> {
        let mut it = args.into_iter();
        let (mut runtime, mut root, mut id, mut bundle, mut dir, mut log) = (None, None, None, None, None, None);
        let (mut stdin, mut rootfs_overlay) = (None, None);
        let (mut start, mut tty) = (false, false);
        while let Some(flag) = it.next() {
            let value = it.next().ok_or_else(|| ShimError::Usage(format!("{flag:?} needs a value")))?;
            match flag.to_str() {
                Some("--runtime") => runtime = Some(PathBuf::from(value)),
                Some("--root") => root = Some(PathBuf::from(value)),
                Some("--id") => id = Some(value.to_string_lossy().into_owned()),
                Some("--bundle") => bundle = Some(PathBuf::from(value)),
                Some("--dir") => dir = Some(PathBuf::from(value)),
                Some("--log") => log = Some(PathBuf::from(value)),
                Some("--stdin") => {
                    stdin = Some(match value.to_str() {
                        Some("once") => true,
                        Some("keep") => false,
                        _ => return Err(ShimError::Usage(format!("--stdin takes once or keep, not {value:?}"))),
                    })
                }
                Some("--start") if value == "now" => start = true,
                Some("--tty") if value == "yes" => tty = true,
                Some("--rootfs-overlay") => {
                    rootfs_overlay = Some(
                        value
                            .into_string()
                            .map_err(|v| ShimError::Usage(format!("--rootfs-overlay {v:?} is not UTF-8")))?,
                    )
                }
                _ => return Err(ShimError::Usage(format!("unknown flag {flag:?} {value:?}"))),
            }
        }
        let missing = |n: &str| ShimError::Usage(format!("{n} is required"));
        Ok(ShimArgs {
            runtime: runtime.ok_or_else(|| missing("--runtime"))?,
            root: root.ok_or_else(|| missing("--root"))?,
            id: id.ok_or_else(|| missing("--id"))?,
            bundle: bundle.ok_or_else(|| missing("--bundle"))?,
            dir: dir.ok_or_else(|| missing("--dir"))?,
            log: log.ok_or_else(|| missing("--log"))?,
            stdin,
            start,
            tty,
            rootfs_overlay,
        })
    }
}

/// What `exit.json` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The exit status, or 128 + the signal number when a signal ended it (as shells and
    /// Kubernetes report it).
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub finished_at_nanos: u64,
}

pub const EXIT_FILE: &str = "exit.json";
pub const PID_FILE: &str = "container.pid";

/// Turn one stream into CRI log records. Lines longer than [`MAX_LOG_LINE`] become `P`
/// (partial) records followed by a final `F`; text after the last newline is flushed as
/// `F` at end of stream.
pub fn copy_as_cri_log(stream: &str, input: impl Read, out: &Mutex<Box<dyn Write + Send>>) {
    let mut reader = BufReader::with_capacity(64 * 1024, input);
    let mut line: Vec<u8> = Vec::new();
    let emit = |tag: &str, bytes: &[u8]| {
        let mut record = format!("{} {stream} {tag} ", rfc3339_nano(SystemTime::now())).into_bytes();
        record.extend_from_slice(bytes);
        record.push(b'\n');
        let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
        // A full disk loses log lines, never the container: keep draining the pipe.
        let _ = out.write_all(&record).and_then(|()| out.flush());
    };
    loop {
        let buf = match reader.fill_buf() {
            Ok([]) => break,
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let room = MAX_LOG_LINE - line.len();
        let window = &buf[..buf.len().min(room)];
        match window.iter().position(|&b| b == b'\n') {
            Some(i) => {
                line.extend_from_slice(&window[..i]);
                reader.consume(i + 1);
                emit("F", &line);
                line.clear();
            }
            None => {
                let n = window.len();
                line.extend_from_slice(window);
                reader.consume(n);
                if line.len() >= MAX_LOG_LINE {
                    emit("P", &line);
                    line.clear();
                }
            }
        }
    }
    if !line.is_empty() {
        emit("F", &line);
    }
}

/// The shim's main: returns the process exit code. Never panics on bad input. `shim vm
/// ...` supervises a qemu process instead of a container ([`supervise_vm`]).
pub fn main(args: impl IntoIterator<Item = OsString>) -> i32 {
    let mut args = args.into_iter().peekable();
    // VM sandboxes' host end and their exec client (crate::sandbox_shim).
    if args.peek().is_some_and(|a| a == "sandbox") {
        args.next();
        return match crate::sandbox_shim::parse(args) {
            Ok((dir, command)) => match crate::sandbox_shim::supervise(&dir, &command) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("atoll shim sandbox: {e}");
                    1
                }
            },
            Err(e) => {
                eprintln!("atoll shim sandbox: {e}");
                println!("error {e}");
                2
            }
        };
    }
    if args.peek().is_some_and(|a| a == "sandbox-exec") {
        args.next();
        return crate::sandbox_shim::exec_main(args);
    }
    if args.peek().is_some_and(|a| a == "vm") {
        args.next();
        return match VmShimArgs::parse(args) {
            Ok(a) => match supervise_vm(&a) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("atoll shim vm: {e}");
                    1
                }
            },
            Err(e) => {
                eprintln!("atoll shim vm: {e}");
                println!("error {e}");
                2
            }
        };
    }
    let args = match ShimArgs::parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("atoll shim: {e}");
            println!("error {e}");
            return 2;
        }
    };
    match supervise(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("atoll shim {}: {e}", args.id);
            1
        }
    }
}

fn handshake(line: &str) {
    let mut out = std::io::stdout().lock();
    // The agent may be gone already; nothing to do about it then.
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// Spawn the runtime in a new mount namespace (private: nothing mounted there reaches the
/// node's) in which the container's root file system is mounted first. The namespace is
/// made on a thread that ends after the spawn; the runtime and the container keep it (or
/// copies of it) alive for as long as they need the mount.
fn spawn_with_private_rootfs(
    command: &mut Command,
    options: &str,
    rootfs: &Path,
) -> Result<std::process::Child, String> {
    use rustix::mount::{MountFlags, MountPropagationFlags};
    let data = std::ffi::CString::new(options).map_err(|_| "NUL in the overlay options".to_string())?;
    let spawned = crate::os::on_unshared_thread(rustix::thread::UnshareFlags::NEWNS, || {
        let sys = |what: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| crate::os::OsError::Sys { what, path, source }
        };
        rustix::mount::mount_change("/", MountPropagationFlags::PRIVATE | MountPropagationFlags::REC)
            .map_err(sys("making mounts private below", Path::new("/")))?;
        rustix::mount::mount("overlay", rootfs, "overlay", MountFlags::empty(), Some(data.as_c_str()))
            .map_err(sys("mounting overlay on", rootfs))?;
        command.spawn().map_err(|source| crate::os::OsError::Spawn { program: command.get_program().into(), source })
    });
    spawned.map_err(|e| e.to_string())
}

fn supervise(args: &ShimArgs) -> Result<(), String> {
    let me = rustix::process::getpid();
    rustix::process::set_child_subreaper(Some(me)).map_err(|e| format!("becoming a subreaper: {e}"))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.log)
        .map_err(|e| format!("opening {}: {e}", args.log.display()))?;
    let log: Arc<Mutex<Box<dyn Write + Send>>> = Arc::new(Mutex::new(Box::new(log)));
    let pid_file = args.dir.join(PID_FILE);
    let mut create = Command::new(&args.runtime);
    create.arg("--root").arg(&args.root);
    if args.start {
        create.args(["run", "--detach"]);
    } else {
        create.arg("create");
    }
    let console = if args.tty {
        let listener = crate::console::listen(&args.dir).map_err(|e| {
            handshake(&format!("error {e}"));
            e.to_string()
        })?;
        create.arg("--console-socket").arg(args.dir.join(crate::console::CONSOLE_SOCKET));
        Some(listener)
    } else {
        None
    };
    create
        .arg("--bundle")
        .arg(&args.bundle)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(&args.id)
        .stdin(if args.stdin.is_some() && !args.tty { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let spawned = match &args.rootfs_overlay {
        Some(options) => spawn_with_private_rootfs(&mut create, options, &args.bundle.join("rootfs")),
        None => create.spawn().map_err(|e| format!("running {}: {e}", args.runtime.display())),
    };
    let mut create = spawned.inspect_err(|msg| handshake(&format!("error {msg}")))?;
    let (Some(stdout), Some(mut stderr)) = (create.stdout.take(), create.stderr.take()) else {
        return Err("no pipes".into());
    };
    // Taken before `wait`, which would close it: the container keeps reading this pipe.
    let stdin_pipe = create.stdin.take();
    let status = create.wait().map_err(|e| format!("waiting for create: {e}"))?;
    if !status.success() {
        // The runtime's complaint went to the stderr pipe; nothing else holds its write end.
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        let op = if args.start { "run" } else { "create" };
        let msg = format!("{} {op}: {status}: {}", args.runtime.display(), text.trim());
        handshake(&format!("error {}", msg.replace('\n', " ")));
        return Err(msg);
    }
    let pid: i32 = std::fs::read_to_string(&pid_file).ok().and_then(|s| s.trim().parse().ok()).ok_or_else(|| {
        handshake("error no pid file after create");
        "no pid file".to_string()
    })?;
    if let (Some(once), Some(pipe)) = (args.stdin, stdin_pipe) {
        let socket = args.dir.join(ATTACH_SOCKET);
        let _ = std::fs::remove_file(&socket);
        let listener = std::os::unix::net::UnixListener::bind(&socket).map_err(|e| {
            handshake(&format!("error binding {}: {e}", socket.display()));
            format!("binding {}: {e}", socket.display())
        })?;
        std::thread::spawn(move || feed_stdin(listener, pipe, once));
    }
    // With a terminal the container writes there, not to our pipes (which then carry only
    // the runtime's own words): the terminal's output is logged as stdout.
    let mut terminal_output = None;
    if let Some(listener) = console {
        let started = crate::console::receive(listener, &args.dir).and_then(|terminal| {
            let (reader, writer) = std::io::pipe().map_err(crate::console::ConsoleError::Receive)?;
            crate::console::serve(terminal, &args.dir, args.stdin, writer).map(|copier| (reader, copier))
        });
        match started {
            Ok(t) => terminal_output = Some(t),
            Err(e) => {
                handshake(&format!("error {e}"));
                let _ = rustix::process::kill_process(
                    rustix::process::Pid::from_raw(pid).ok_or("no pid")?,
                    rustix::process::Signal::KILL,
                );
                return Err(e.to_string());
            }
        }
    }
    handshake(&format!("created {pid}"));

    let mut pipes = vec![("stdout", Box::new(stdout) as Box<dyn Read + Send>), ("stderr", Box::new(stderr))];
    let mut threads = Vec::new();
    if let Some((reader, copier)) = terminal_output {
        pipes.push(("stdout", Box::new(reader)));
        threads.push(copier);
    }
    threads.extend(pipes.into_iter().map(|(name, pipe)| {
        let log = log.clone();
        std::thread::spawn(move || copy_as_cri_log(name, pipe, &log))
    }));

    let record = wait_for(pid);
    for t in threads {
        let _ = t.join();
    }
    let bytes = serde_json::to_vec(&record).unwrap_or_default();
    write_atomic(&args.dir.join(EXIT_FILE), &bytes).map_err(|e| format!("writing the exit file: {e}"))
}

/// Copies each attach client's bytes into the container's stdin, one client at a time;
/// with `once`, the first client's leaving closes it (the container reads end-of-file).
fn feed_stdin(listener: std::os::unix::net::UnixListener, mut stdin: std::process::ChildStdin, once: bool) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        if std::io::copy(&mut conn, &mut stdin).is_err() {
            // The container closed its stdin (or exited): nobody reads any more.
            return;
        }
        if once {
            return;
        }
    }
}

/// `shim vm --dir DIR --log FILE [--ready-marker TEXT] -- QEMU ARGS...`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmShimArgs {
    /// The VM's state folder: `exit.json` and `ready` are written there.
    pub dir: PathBuf,
    pub log: PathBuf,
    /// A console line containing this text marks the guest ready (`ready` file).
    pub ready_marker: Option<String>,
    /// Where to serve `kubectl exec` sessions relayed to the guest agent over the guest's
    /// virtio-serial port (`DIR/guest.sock`), as the sandbox shim does.
    pub ctl: Option<PathBuf>,
    pub command: Vec<OsString>,
}

pub const READY_FILE: &str = "ready";
/// How long an exec into a VM waits for its guest agent's `ready`: a guest whose image has
/// no agent gets a clear error after this rather than a hang.
const VM_EXEC_WAIT: Duration = Duration::from_secs(20);

impl VmShimArgs {
    pub fn to_args(&self) -> Vec<OsString> {
        let mut out: Vec<OsString> =
            vec!["vm".into(), "--dir".into(), self.dir.clone().into(), "--log".into(), self.log.clone().into()];
        if let Some(c) = &self.ctl {
            out.extend(["--ctl".into(), c.clone().into()]);
        }
        if let Some(m) = &self.ready_marker {
            out.extend(["--ready-marker".into(), m.into()]);
        }
        out.push("--".into());
        out.extend(self.command.iter().cloned());
        out
    }

    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<VmShimArgs, ShimError> {
        let mut it = args.into_iter();
        let (mut dir, mut log, mut ready_marker, mut ctl) = (None, None, None, None);
        while let Some(flag) = it.next() {
            if flag == "--" {
                let command: Vec<OsString> = it.collect();
                if command.is_empty() {
                    return Err(ShimError::Usage("no command after --".into()));
                }
                let missing = |n: &str| ShimError::Usage(format!("{n} is required"));
                return Ok(VmShimArgs {
                    dir: dir.ok_or_else(|| missing("--dir"))?,
                    log: log.ok_or_else(|| missing("--log"))?,
                    ready_marker,
                    ctl,
                    command,
                });
            }
            let value = it.next().ok_or_else(|| ShimError::Usage(format!("{flag:?} needs a value")))?;
            match flag.to_str() {
                Some("--dir") => dir = Some(PathBuf::from(value)),
                Some("--log") => log = Some(PathBuf::from(value)),
                Some("--ready-marker") => ready_marker = Some(value.to_string_lossy().into_owned()),
                Some("--ctl") => ctl = Some(PathBuf::from(value)),
                _ => return Err(ShimError::Usage(format!("unknown flag {flag:?}"))),
            }
        }
        Err(ShimError::Usage("missing -- and the command".into()))
    }
}

/// A log writer that also drops the `ready` file the first time a record carries the
/// marker (records are written whole, one `write_all` each, so a marker is never split).
struct MarkerWatch {
    inner: std::fs::File,
    marker: Option<String>,
    ready: PathBuf,
}

impl Write for MarkerWatch {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(m) = &self.marker
            && buf.windows(m.len()).any(|w| w == m.as_bytes())
        {
            let _ = write_atomic(&self.ready, b"");
            // qemu read the guest's credentials at start-up and the guest has them now: the
            // password hash's file need not outlive the boot.
            let _ = std::fs::remove_file(self.ready.with_file_name(crate::vm_credentials::FILE));
            self.marker = None;
        }
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Runs a VM's qemu (its serial console on stdout) as our child: console and qemu's own
/// complaints go to the CRI log, the first console line with the ready marker drops
/// `ready`, and qemu's end is recorded in `exit.json`, as for containers.
pub fn supervise_vm(args: &VmShimArgs) -> Result<(), String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.log)
        .map_err(|e| format!("opening {}: {e}", args.log.display()))?;
    let marker = MarkerWatch { inner: log, marker: args.ready_marker.clone(), ready: args.dir.join(READY_FILE) };
    let log: Arc<Mutex<Box<dyn Write + Send>>> = Arc::new(Mutex::new(Box::new(marker)));
    let (program, rest) = args.command.split_first().ok_or("no command")?;
    let listener = match &args.ctl {
        Some(ctl) => {
            let _ = std::fs::remove_file(ctl);
            Some(std::os::unix::net::UnixListener::bind(ctl).map_err(|e| {
                let msg = format!("binding {}: {e}", ctl.display());
                handshake(&format!("error {msg}"));
                msg
            })?)
        }
        None => None,
    };
    let mut child = Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            let msg = format!("running {}: {e}", program.to_string_lossy());
            handshake(&format!("error {msg}"));
            msg
        })?;
    let pid = child.id() as i32;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err("no pipes".into());
    };
    handshake(&format!("created {pid}"));
    let threads: Vec<_> = [("stdout", Box::new(stdout) as Box<dyn Read + Send>), ("stderr", Box::new(stderr))]
        .into_iter()
        .map(|(name, pipe)| {
            let log = log.clone();
            std::thread::spawn(move || copy_as_cri_log(name, pipe, &log))
        })
        .collect();
    // `Child` is dropped unwaited on purpose: `wait_for` reaps it by pid.
    drop(child);
    // The guest channel connects on its own thread: qemu's exit must be reaped meanwhile.
    let channel = listener.map(|listener| {
        let dir = args.dir.clone();
        std::thread::spawn(move || {
            let mut alive = || Path::new(&format!("/proc/{pid}")).exists();
            crate::sandbox_shim::serve_guest(&dir, listener, &mut alive, VM_EXEC_WAIT, None)
        })
    });
    let record = wait_for(pid);
    let _ = std::fs::remove_file(args.dir.join(crate::vm_credentials::FILE));
    if let Some(shared) = channel.and_then(|t| t.join().ok()) {
        crate::sandbox_shim::guest_gone(&shared);
    }
    if let Some(ctl) = &args.ctl {
        let _ = std::fs::remove_file(ctl);
    }
    for t in threads {
        let _ = t.join();
    }
    let bytes = serde_json::to_vec(&record).unwrap_or_default();
    write_atomic(&args.dir.join(EXIT_FILE), &bytes).map_err(|e| format!("writing the exit file: {e}"))
}

/// Reap children (the runtime's leftovers and the container) until the container is seen.
fn wait_for(pid: i32) -> ExitRecord {
    loop {
        match rustix::process::wait(rustix::process::WaitOptions::empty()) {
            Ok(Some((p, status))) if p.as_raw_nonzero().get() == pid => {
                let signal = status.terminating_signal();
                let exit_code = match (status.exit_status(), signal) {
                    (Some(code), _) => code,
                    (None, Some(sig)) => 128 + sig,
                    (None, None) => 255,
                };
                return ExitRecord { exit_code, signal, finished_at_nanos: to_nanos(SystemTime::now()) };
            }
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            // No children left: the container was not ours to reap (should not happen
            // with a subreaper); the code is unknown.
            Err(_) => {
                return ExitRecord { exit_code: 255, signal: None, finished_at_nanos: to_nanos(SystemTime::now()) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn cri_records_split_long_lines_and_flush_the_tail() {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let out: Mutex<Box<dyn Write + Send>> = Mutex::new(Box::new(Shared(buf.clone())));
        let mut input = b"hello\n\nworld\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LOG_LINE + 3));
        input.extend(b"\ntail");
        copy_as_cri_log("stderr", &input[..], &out);
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        let records: Vec<(&str, &str, &str)> = text
            .lines()
            .map(|l| {
                let mut p = l.splitn(4, ' ');
                let ts = p.next().unwrap();
                assert!(ts.ends_with('Z') && ts.len() == 30, "{ts}");
                (p.next().unwrap(), p.next().unwrap(), p.next().unwrap_or(""))
            })
            .collect();
        let long = "x".repeat(MAX_LOG_LINE);
        assert_eq!(
            records,
            vec![
                ("stderr", "F", "hello"),
                ("stderr", "F", ""),
                ("stderr", "F", "world"),
                ("stderr", "P", long.as_str()),
                ("stderr", "F", "xxx"),
                ("stderr", "F", "tail"),
            ]
        );
    }

    #[test]
    fn vm_args_round_trip() {
        let a = VmShimArgs {
            dir: "/d".into(),
            log: "/l".into(),
            ready_marker: Some("up".into()),
            ctl: Some("/d/ctl.sock".into()),
            command: vec!["qemu".into(), "-m".into(), "128".into()],
        };
        let mut args = a.to_args();
        assert_eq!(args.remove(0), "vm");
        assert_eq!(VmShimArgs::parse(args).unwrap(), a);
        assert!(VmShimArgs::parse(vec![OsString::from("--dir"), "/d".into(), "--".into()]).is_err());
    }

    #[test]
    fn args_round_trip_and_bad_args_are_usage_errors() {
        let a = ShimArgs {
            stdin: Some(true),
            runtime: "/usr/bin/crun".into(),
            root: "/r".into(),
            id: "c1".into(),
            bundle: "/b".into(),
            dir: "/d".into(),
            log: "/l".into(),
            start: false,
            tty: true,
            rootfs_overlay: None,
        };
        assert_eq!(ShimArgs::parse(a.to_args()).unwrap(), a);
        let started = ShimArgs { start: true, ..a.clone() };
        assert_eq!(ShimArgs::parse(started.to_args()).unwrap(), started);
        let mounted = ShimArgs { rootfs_overlay: Some("lowerdir=/l2:/l1,upperdir=/u,workdir=/w".into()), ..a.clone() };
        assert_eq!(ShimArgs::parse(mounted.to_args()).unwrap(), mounted);
        assert!(ShimArgs::parse(vec![OsString::from("--start"), OsString::from("later")]).is_err());
        assert!(ShimArgs::parse(vec![OsString::from("--id")]).is_err());
        assert!(ShimArgs::parse(vec![OsString::from("--bogus"), OsString::from("x")]).is_err());
    }
}
