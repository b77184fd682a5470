//! What the agent's port runs for a client: a container's log (read, or followed as it
//! grows), an exec session (the runtime's `exec` with pipes, or a pseudo-terminal for
//! `tty`), and attach (the container's output as it is written).
//!
//! Like the shim, this module starts processes and opens terminals itself (an exec must be
//! streamed while it runs, which `Os::run` cannot do); it is the third exception to "only
//! `os.rs` makes system calls", and it only ever runs the runtime's own `exec`.

use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::runtime::logs::{self, LogOptions};
use crate::runtime::{ContainerState, ContainerStatus, NetworkMode, Runtime, RuntimeError};
use crate::stream::{self, Input, Output, Session};

/// How often a followed log is looked at for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("container {container:?} is not valid for this pod")]
    NoContainer { container: String },
    #[error("previous terminated container {container:?} not found")]
    NoPrevious { container: String },
    #[error("container {container:?} is not running")]
    NotRunning { container: String },
    #[error("runtime: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("starting the command: {0}")]
    Spawn(std::io::Error),
    #[error("a terminal for the command: {0}")]
    Pty(String),
}

/// A container attempt's number, from its log file's name (`3.log`).
fn attempt(c: &ContainerStatus) -> u32 {
    c.log_path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// The current attempt of `name` in sandbox `uid`, or the one before it (`--previous`).
pub fn find_container(
    runtime: &dyn Runtime,
    uid: &str,
    name: &str,
    previous: bool,
) -> Result<ContainerStatus, SessionError> {
    let mut attempts: Vec<ContainerStatus> =
        runtime.list_containers(Some(uid))?.into_iter().filter(|c| c.name == name).collect();
    attempts.sort_by_key(|c| (attempt(c), c.created_at));
    let wanted = if previous { attempts.len().checked_sub(2) } else { attempts.len().checked_sub(1) };
    match wanted {
        Some(i) => Ok(attempts.swap_remove(i)),
        None if previous => Err(SessionError::NoPrevious { container: name.into() }),
        None => Err(SessionError::NoContainer { container: name.into() }),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

fn running(runtime: &Arc<dyn Runtime>, id: &str) -> impl Future<Output = bool> + use<> {
    let (runtime, id) = (runtime.clone(), id.to_string());
    async move {
        blocking(move || runtime.container_status(&id).map(|s| s.state == ContainerState::Running))
            .await
            .and_then(Result::ok)
            .unwrap_or(false)
    }
}

/// Bytes of `path` from `offset` up to the last whole record; the new offset.
async fn read_from(path: &PathBuf, offset: u64) -> (Vec<u8>, u64) {
    let Ok(mut f) = tokio::fs::File::open(path).await else { return (Vec::new(), offset) };
    if tokio::io::AsyncSeekExt::seek(&mut f, std::io::SeekFrom::Start(offset)).await.is_err() {
        return (Vec::new(), offset);
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).await.is_err() {
        return (Vec::new(), offset);
    }
    let whole = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    buf.truncate(whole);
    (buf, offset + whole as u64)
}

/// Sends a container's log to `out` as `opts` asks; with `follow`, keeps sending new lines
/// until the container stops running or the reader goes away.
pub async fn logs(
    runtime: Arc<dyn Runtime>,
    container: ContainerStatus,
    mut opts: LogOptions,
    follow: bool,
    out: mpsc::Sender<Bytes>,
) {
    let mut offset = 0;
    let mut sent = 0usize;
    loop {
        // Whether it still runs is asked *before* reading, so nothing written before it
        // stopped is missed.
        let alive = follow && running(&runtime, &container.id).await;
        let (chunk, next) = read_from(&container.log_path, offset).await;
        offset = next;
        if !chunk.is_empty() {
            let text = logs::render(&logs::parse(&chunk), &opts);
            // `--tail` counts from the end of what was there when reading began.
            opts.tail = None;
            sent += text.len();
            if !text.is_empty() && out.send(Bytes::from(text)).await.is_err() {
                return;
            }
            if let Some(limit) = opts.limit_bytes {
                if sent >= limit {
                    return;
                }
                opts.limit_bytes = Some(limit - sent);
                sent = 0;
            }
        }
        if !alive {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
            _ = out.closed() => return,
        }
    }
}

async fn pump(mut from: impl AsyncRead + Unpin, to: mpsc::Sender<Output>, wrap: fn(Bytes) -> Output) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.send(wrap(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A pseudo-terminal: the controller side (ours) and the terminal side (the command's).
fn open_pty() -> Result<(OwnedFd, std::fs::File), SessionError> {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let err = |e: rustix::io::Errno| SessionError::Pty(e.to_string());
    let controller = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).map_err(err)?;
    grantpt(&controller).map_err(err)?;
    unlockpt(&controller).map_err(err)?;
    let name = ptsname(&controller, Vec::new()).map_err(err)?;
    let path = PathBuf::from(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name.as_bytes()));
    let terminal = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
        .open(&path)
        .map_err(|e| SessionError::Pty(format!("{}: {e}", path.display())))?;
    Ok((controller, terminal))
}

/// Runs `program args` (the runtime's exec) for `session` and reports its exit on the
/// error channel.
pub async fn exec(program: PathBuf, args: Vec<std::ffi::OsString>, command: Vec<String>, session: Session) {
    let Session { streams, mut input, output } = session;
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&args).kill_on_drop(true);
    let mut pty_controller = None;
    if streams.tty {
        let (controller, terminal) = match open_pty() {
            Ok(p) => p,
            Err(e) => {
                let _ = output.send(Output::Done(stream::failure(&e.to_string()))).await;
                return;
            }
        };
        let clone = |f: &std::fs::File| f.try_clone().map(Stdio::from);
        match (clone(&terminal), clone(&terminal)) {
            (Ok(a), Ok(b)) => {
                cmd.stdin(a).stdout(b).stderr(Stdio::from(terminal));
            }
            (Err(e), _) | (_, Err(e)) => {
                let _ = output.send(Output::Done(stream::failure(&e.to_string()))).await;
                return;
            }
        }
        pty_controller = Some(controller);
    } else {
        let pipe = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
        cmd.stdin(pipe(streams.stdin)).stdout(pipe(streams.stdout)).stderr(pipe(streams.stderr));
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = output.send(Output::Done(stream::failure(&SessionError::Spawn(e).to_string()))).await;
            return;
        }
    };
    // Our copies of the terminal side went with `cmd`: once the command and its children
    // exit, reads of the controller side end.
    drop(cmd);

    let mut pumps = Vec::new();
    let mut stdin_writer: Option<Box<dyn tokio::io::AsyncWrite + Send + Unpin>> = None;
    let mut resize_fd: Option<OwnedFd> = None;
    if let Some(controller) = pty_controller {
        let reader = std::fs::File::from(controller);
        match (reader.try_clone(), reader.try_clone()) {
            (Ok(writer), Ok(sizer)) => {
                if streams.stdin {
                    stdin_writer = Some(Box::new(tokio::fs::File::from_std(writer)));
                }
                resize_fd = Some(OwnedFd::from(sizer));
            }
            _ => {
                let _ = child.kill().await;
                let _ = output.send(Output::Done(stream::failure("duplicating the terminal"))).await;
                return;
            }
        }
        pumps.push(tokio::spawn(pump(tokio::fs::File::from_std(reader), output.clone(), Output::Stdout)));
    } else {
        if let Some(w) = child.stdin.take() {
            stdin_writer = Some(Box::new(w));
        }
        if let Some(r) = child.stdout.take() {
            pumps.push(tokio::spawn(pump(r, output.clone(), Output::Stdout)));
        }
        if let Some(r) = child.stderr.take() {
            pumps.push(tokio::spawn(pump(r, output.clone(), Output::Stderr)));
        }
    }
    let feeder = tokio::spawn(async move {
        while let Some(i) = input.recv().await {
            match i {
                Input::Stdin(b) => {
                    if let Some(w) = stdin_writer.as_mut()
                        && (w.write_all(&b).await.is_err() || w.flush().await.is_err())
                    {
                        stdin_writer = None;
                    }
                }
                // Closing our end gives the command end-of-file (with a terminal, the
                // command sees EOF when the user types it, as on a real terminal).
                Input::StdinEnd => {
                    if resize_fd.is_none() {
                        stdin_writer = None;
                    }
                }
                Input::Resize { width, height } => {
                    if let Some(fd) = &resize_fd {
                        let size =
                            rustix::termios::Winsize { ws_row: height, ws_col: width, ws_xpixel: 0, ws_ypixel: 0 };
                        let _ = rustix::termios::tcsetwinsize(fd, size);
                    }
                }
            }
        }
    });
    let status = tokio::select! {
        s = child.wait() => s,
        // The client went away: the command has nobody to talk to.
        _ = output.closed() => {
            let _ = child.kill().await;
            child.wait().await
        }
    };
    for p in pumps {
        let _ = p.await;
    }
    feeder.abort();
    let done = match status {
        Ok(s) => match s.code() {
            Some(0) => stream::success(),
            Some(code) => stream::exit_status(&command, code),
            None => stream::exit_status(&command, 128 + std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(0)),
        },
        Err(e) => stream::failure(&format!("waiting for the command: {e}")),
    };
    let _ = output.send(Output::Done(done)).await;
}

/// Attach: the container's output as it is written from now on, until it stops or the
/// client leaves; with `stdin`, the client's input goes to the container's stdin through
/// its supervisor's socket (containers without `stdin: true` have none: input is dropped).
pub async fn attach(runtime: Arc<dyn Runtime>, container: ContainerStatus, session: Session) {
    let Session { streams, mut input, output } = session;
    // Start at the log's current end: attach shows what comes, not what was.
    let mut offset = tokio::fs::metadata(&container.log_path).await.map(|m| m.len()).unwrap_or(0);
    let socket = {
        let (rt, id) = (runtime.clone(), container.id.clone());
        blocking(move || rt.attach_socket(&id)).await.flatten()
    };
    // A container with a terminal is attached to live through its shim: an interactive
    // shell's prompt and echo have no newline, which the log would hold back.
    if let Some(path) = &socket
        && path.with_file_name(crate::console::RESIZE_SOCKET).exists()
    {
        return attach_terminal(path, streams, input, output).await;
    }
    let socket = socket.filter(|_| streams.stdin);
    let mut stdin = match socket {
        Some(path) => tokio::net::UnixStream::connect(&path).await.ok(),
        None => None,
    };
    let feeder = tokio::spawn(async move {
        while let Some(i) = input.recv().await {
            match i {
                Input::Stdin(b) => {
                    if let Some(s) = stdin.as_mut()
                        && s.write_all(&b).await.is_err()
                    {
                        stdin = None;
                    }
                }
                Input::StdinEnd => {
                    if let Some(mut s) = stdin.take() {
                        let _ = s.shutdown().await;
                    }
                }
                // The container has no terminal of ours to resize.
                Input::Resize { .. } => {}
            }
        }
    });
    loop {
        let alive = running(&runtime, &container.id).await;
        let (chunk, next) = read_from(&container.log_path, offset).await;
        offset = next;
        for line in logs::parse(&chunk) {
            let mut text = line.text;
            text.push(b'\n');
            let event = match line.stream {
                logs::Stream::Stdout if streams.stdout => Output::Stdout(Bytes::from(text)),
                logs::Stream::Stderr if streams.stderr => Output::Stderr(Bytes::from(text)),
                // A terminal session has one stream.
                logs::Stream::Stderr if streams.tty => Output::Stdout(Bytes::from(text)),
                _ => continue,
            };
            if output.send(event).await.is_err() {
                feeder.abort();
                return;
            }
        }
        if !alive {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
            _ = output.closed() => {
                feeder.abort();
                return;
            }
        }
    }
    feeder.abort();
    let _ = output.send(Output::Done(stream::success())).await;
}

/// Attach to a container's terminal ([`crate::console`]): its output as it comes, the
/// client's keys (with `stdin`) and window sizes to it, until the container lets go of it
/// or the client leaves.
async fn attach_terminal(
    socket: &std::path::Path,
    streams: stream::Streams,
    mut input: mpsc::Receiver<Input>,
    output: mpsc::Sender<Output>,
) {
    let conn = match tokio::net::UnixStream::connect(socket).await {
        Ok(c) => c,
        Err(e) => {
            let _ = output.send(Output::Done(stream::failure(&format!("attaching to the terminal: {e}")))).await;
            return;
        }
    };
    let mut sizer = tokio::net::UnixStream::connect(socket.with_file_name(crate::console::RESIZE_SOCKET)).await.ok();
    let (mut reader, mut writer) = conn.into_split();
    let feeder = tokio::spawn(async move {
        while let Some(i) = input.recv().await {
            match i {
                Input::Stdin(b) if streams.stdin => {
                    if writer.write_all(&b).await.is_err() {
                        return;
                    }
                }
                Input::Resize { width, height } => {
                    if let Some(s) = sizer.as_mut()
                        && s.write_all(format!("{width} {height}\n").as_bytes()).await.is_err()
                    {
                        sizer = None;
                    }
                }
                // A terminal has no end of input but the one the user types (Ctrl-D).
                Input::Stdin(_) | Input::StdinEnd => {}
            }
        }
    });
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        tokio::select! {
            r = reader.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if (streams.stdout || streams.tty)
                        && output.send(Output::Stdout(Bytes::copy_from_slice(&buf[..n]))).await.is_err()
                    {
                        feeder.abort();
                        return;
                    }
                }
            },
            _ = output.closed() => {
                feeder.abort();
                return;
            }
        }
    }
    feeder.abort();
    let _ = output.send(Output::Done(stream::success())).await;
}

/// The network namespace a pod's ports are in (`None`: the node's own, `hostNetwork`).
pub fn pod_netns(runtime: &dyn Runtime, uid: &str) -> Result<Option<PathBuf>, SessionError> {
    match runtime.sandbox_status(uid)?.spec.network {
        NetworkMode::Host => Ok(None),
        NetworkMode::Namespace(path) => Ok(Some(path)),
        // Each container has a namespace of its own: the first running one's.
        NetworkMode::Isolated => runtime
            .list_containers(Some(uid))?
            .into_iter()
            .filter(|c| c.state == ContainerState::Running)
            .find_map(|c| c.pid)
            .map(|pid| Some(PathBuf::from(format!("/proc/{pid}/ns/net"))))
            .ok_or_else(|| SessionError::NotRunning { container: String::new() }),
    }
}

/// A TCP connection to `127.0.0.1:port` inside `netns` (port-forward): the socket is made on
/// a thread of its own that enters the namespace (a namespace is a thread's, and tokio's
/// threads must never change theirs); once made, it stays in that namespace wherever it
/// is used.
pub async fn dial_in_pod(netns: Option<PathBuf>, port: u16) -> Result<tokio::net::TcpStream, String> {
    let made = blocking(move || {
        std::thread::spawn(move || connect_in(netns.as_deref(), port))
            .join()
            .unwrap_or_else(|_| Err("the dialling thread failed".into()))
    })
    .await
    .unwrap_or_else(|| Err("the dialling thread failed".into()))?;
    tokio::net::TcpStream::from_std(made).map_err(|e| e.to_string())
}

fn connect_in(netns: Option<&std::path::Path>, port: u16) -> Result<std::net::TcpStream, String> {
    if let Some(ns) = netns {
        let f = std::fs::File::open(ns).map_err(|e| format!("{}: {e}", ns.display()))?;
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&f),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(|e| format!("entering {}: {e}", ns.display()))?;
    }
    let to = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let conn =
        std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5)).map_err(|e| format!("dial {to}: {e}"))?;
    conn.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(conn)
}
