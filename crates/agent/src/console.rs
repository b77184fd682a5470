//! The terminal of a `tty: true` container, the shim's side.
//!
//! The runtime makes the pseudo-terminal: the shim passes `--console-socket` and config.json
//! says `"terminal": true`, so crun opens the pty *inside* the container (its own devpts),
//! makes it the container process's controlling terminal (Ctrl-C, job control and
//! `SIGWINCH` behave as on a real terminal) and sends us the controller side over that
//! socket. Making the pty in the shim and handing the terminal side as plain stdio would
//! have been shorter, but the process would have no controlling terminal.
//!
//! The shim then owns the controller side for the container's life:
//! - everything the container writes goes to the CRI log (as `stdout`: a terminal has one
//!   stream) and, live, to every client of [`crate::shim::ATTACH_SOCKET`];
//! - what those clients write goes to the terminal (with `stdinOnce`, only the first
//!   client that types anything; later ones only watch);
//! - each line `COLUMNS ROWS` sent to [`RESIZE_SOCKET`] resizes it (`TIOCSWINSZ`; the
//!   kernel signals the foreground process group).
//!
//! Like [`crate::shim`], this module makes system calls itself (it runs inside the shim).

use std::io::{BufRead, BufReader, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The socket in the container's state folder that resizes its terminal; its presence
/// also tells the agent the container has one.
pub const RESIZE_SOCKET: &str = "resize.sock";
/// Where crun sends the terminal's controller side (removed once received).
pub const CONSOLE_SOCKET: &str = "console.sock";

/// How long a watching client may stall the terminal's output before it is dropped: a
/// stuck client must not stop the container (its output would block on a full pty).
const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long after the runtime's create the terminal may take to arrive on the socket.
const CONSOLE_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("{what} {path}: {source}")]
    Socket { what: &'static str, path: String, source: std::io::Error },
    #[error("the runtime sent no terminal within {0:?}")]
    NoTerminal(Duration),
    #[error("receiving the terminal: {0}")]
    Receive(std::io::Error),
}

/// Binds the socket crun will send the terminal to (before the runtime runs).
pub fn listen(dir: &Path) -> Result<UnixListener, ConsoleError> {
    bind(&dir.join(CONSOLE_SOCKET), "binding")
}

fn bind(path: &Path, what: &'static str) -> Result<UnixListener, ConsoleError> {
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path).map_err(|source| ConsoleError::Socket { what, path: path.display().to_string(), source })
}

/// The terminal's controller side, as crun sent it (after its create returned: the
/// connection waits in the listener's backlog).
pub fn receive(listener: UnixListener, dir: &Path) -> Result<std::fs::File, ConsoleError> {
    listener.set_nonblocking(true).map_err(ConsoleError::Receive)?;
    let deadline = Instant::now() + CONSOLE_WAIT;
    let conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Err(ConsoleError::NoTerminal(CONSOLE_WAIT)),
            Err(e) => return Err(ConsoleError::Receive(e)),
        }
    };
    let _ = std::fs::remove_file(dir.join(CONSOLE_SOCKET));
    conn.set_nonblocking(false).map_err(ConsoleError::Receive)?;
    conn.set_read_timeout(Some(CONSOLE_WAIT)).map_err(ConsoleError::Receive)?;
    let fd = receive_fd(&conn)?;
    Ok(std::fs::File::from(fd))
}

fn receive_fd(conn: &UnixStream) -> Result<OwnedFd, ConsoleError> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    // crun sends the terminal's name as the message body; we only want the descriptor.
    let mut name = [0u8; 256];
    let mut iov = [std::io::IoSliceMut::new(&mut name)];
    recvmsg(conn, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC).map_err(|e| ConsoleError::Receive(e.into()))?;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = message
            && let Some(fd) = fds.next()
        {
            return Ok(fd);
        }
    }
    Err(ConsoleError::NoTerminal(Duration::ZERO))
}

/// Serves the terminal until the container's side closes: returns the thread that copies
/// its output into `log` (a pipe the CRI log copier reads); it ends when the container and
/// everything it started have let go of the terminal. `stdin`: `None` ignores clients'
/// input, `Some(once)` as for the shim's pipe.
pub fn serve(
    terminal: std::fs::File,
    dir: &Path,
    stdin: Option<bool>,
    mut log: impl Write + Send + 'static,
) -> Result<std::thread::JoinHandle<()>, ConsoleError> {
    let attach = bind(&dir.join(crate::shim::ATTACH_SOCKET), "binding")?;
    let resize = bind(&dir.join(RESIZE_SOCKET), "binding")?;
    let clone = |f: &std::fs::File| f.try_clone().map_err(ConsoleError::Receive);
    let watchers: Arc<Mutex<Vec<UnixStream>>> = Arc::default();

    let (input, sizer) = (clone(&terminal)?, clone(&terminal)?);
    let list = watchers.clone();
    std::thread::spawn(move || accept_clients(attach, input, stdin, &list));
    std::thread::spawn(move || {
        for conn in resize.incoming().flatten() {
            let sizer = sizer.try_clone();
            std::thread::spawn(move || {
                if let Ok(sizer) = sizer {
                    resize_from(conn, &sizer);
                }
            });
        }
    });

    Ok(std::thread::spawn(move || {
        let mut terminal = terminal;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match terminal.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // EIO: nobody holds the terminal's side any more.
                Err(_) => break,
            };
            let _ = log.write_all(&buf[..n]);
            let mut list = watchers.lock().unwrap_or_else(|e| e.into_inner());
            list.retain_mut(|w| w.write_all(&buf[..n]).is_ok());
        }
        drop(log);
        // Watchers see the end of the output: the session is over.
        for w in watchers.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = w.shutdown(std::net::Shutdown::Both);
        }
    }))
}

fn accept_clients(
    listener: UnixListener,
    terminal: std::fs::File,
    stdin: Option<bool>,
    watchers: &Mutex<Vec<UnixStream>>,
) {
    let used = Arc::new(AtomicBool::new(false));
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let Ok(watcher) = conn.try_clone() else { continue };
        if watcher.set_write_timeout(Some(CLIENT_WRITE_TIMEOUT)).is_err() {
            continue;
        }
        watchers.lock().unwrap_or_else(|e| e.into_inner()).push(watcher);
        let Some(once) = stdin else { continue };
        if once && used.load(Ordering::SeqCst) {
            continue;
        }
        let (Ok(mut terminal), used) = (terminal.try_clone(), used.clone()) else { continue };
        std::thread::spawn(move || {
            let mut conn = conn;
            let mut buf = [0u8; 4096];
            let mut mine = false;
            loop {
                let n = match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                // stdinOnce counts only a client that typed something: one that just
                // watches must not use up the container's one session.
                if once && !mine {
                    if used.swap(true, Ordering::SeqCst) {
                        break;
                    }
                    mine = true;
                }
                if terminal.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
    }
}

/// Applies each `COLUMNS ROWS` line of `conn` to the terminal.
fn resize_from(conn: UnixStream, terminal: &std::fs::File) {
    for line in BufReader::new(conn).lines() {
        let Ok(line) = line else { return };
        if let Some((width, height)) = parse_size(&line) {
            let size = rustix::termios::Winsize { ws_row: height, ws_col: width, ws_xpixel: 0, ws_ypixel: 0 };
            let _ = rustix::termios::tcsetwinsize(terminal, size);
        }
    }
}

/// `"80 24"` -> (80, 24); anything else is ignored.
pub fn parse_size(line: &str) -> Option<(u16, u16)> {
    let mut parts = line.split_ascii_whitespace();
    let size = (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
    parts.next().is_none().then_some(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_strictly() {
        assert_eq!(parse_size("80 24"), Some((80, 24)));
        assert_eq!(parse_size(" 132   50 "), Some((132, 50)));
        assert_eq!(parse_size("80"), None);
        assert_eq!(parse_size("80 24 1"), None);
        assert_eq!(parse_size("-1 24"), None);
        assert_eq!(parse_size("70000 24"), None);
    }
}
