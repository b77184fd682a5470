//! The narrow door through which the agent touches the operating system.
//!
//! Everything that changes machine state the kernel owns (mounts, processes, signals,
//! cgroup folders, overlay whiteout nodes) and the runtime's state files go through [`Os`],
//! so the runtime's logic can be tested against [`FakeOs`], which records every call and
//! keeps files in memory. [`RealOs`] is the one implementation that makes system calls.
//!
//! Exception, on purpose: the image store writes its own content-addressed blobs and
//! unpacks layer tarballs with `std::fs`/`tar` under its own root; those are plain data
//! files in a folder the store owns, not OS state. The whiteouts inside layers (device
//! nodes, xattrs) still come through here.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use rustix::thread::UnshareFlags;

pub use crate::netlink::PodLink;

/// How long a detached child may take to print its first line.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum OsError {
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what} {path}: {source}")]
    Sys { what: &'static str, path: PathBuf, source: rustix::io::Errno },
    #[error("running {program}: {source}")]
    Spawn { program: PathBuf, source: std::io::Error },
    #[error("{program} said nothing before exiting or in time (see {log})")]
    NoHandshake { program: PathBuf, log: PathBuf },
    #[error("{what} failed: {detail}")]
    Command { what: &'static str, detail: String },
    #[error("signal {signal:?} to process {pid}: {source}")]
    Signal { pid: u32, signal: Signal, source: rustix::io::Errno },
}

impl OsError {
    /// True when the error means "no such file or folder" (callers treat removal of
    /// something absent as done).
    pub fn is_not_found(&self) -> bool {
        match self {
            OsError::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            OsError::Sys { source, .. } => *source == rustix::io::Errno::NOENT,
            _ => false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Term,
    Kill,
}

impl Signal {
    /// The name OCI runtimes accept on their `kill` command line.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Term => "TERM",
            Signal::Kill => "KILL",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandOutput {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// A process started to outlive its caller, and the first line it printed (its handshake).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detached {
    pub pid: u32,
    pub first_line: String,
}

/// What the agent may ask of the OS. Paths are absolute; methods are blocking.
pub trait Os: Send + Sync + fmt::Debug {
    /// Mount an overlay at `target`; `lower` is listed topmost first.
    fn mount_overlay(&self, lower: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<(), OsError>;
    fn unmount(&self, target: &Path) -> Result<(), OsError>;
    /// Mount a tmpfs (owner-only, no set-uid or devices) at `target`.
    fn mount_tmpfs(&self, target: &Path) -> Result<(), OsError>;
    /// Whether `path` lies on a tmpfs (or any other memory file system the kernel calls so).
    fn is_tmpfs(&self, path: &Path) -> Result<bool, OsError>;
    /// A sealed in-memory copy of the program (a memfd with every write sealed off), kept
    /// open for as long as this object lives; the path that runs it
    /// (`/proc/<our pid>/fd/<fd>`, usable by our children too).
    fn sealed_copy(&self, program: &Path) -> Result<PathBuf, OsError>;
    /// Mount points at or below `prefix`, deepest first (the order to unmount them in).
    fn mounts_under(&self, prefix: &Path) -> Result<Vec<PathBuf>, OsError>;

    /// Make a new IPC namespace (and, with `uts`, a UTS namespace whose hostname is set)
    /// that outlive any process, bind-mounted on the given (new) files, so a pod's
    /// containers can join them.
    fn create_namespaces(&self, ipc: &Path, uts: Option<(&Path, &str)>) -> Result<(), OsError>;

    /// An overlayfs whiteout (character device 0:0) hiding a lower layer's `path`.
    fn make_whiteout(&self, path: &Path) -> Result<(), OsError>;
    /// Mark `dir` opaque for overlayfs (lower layers' content under it is hidden).
    fn set_opaque(&self, dir: &Path) -> Result<(), OsError>;

    /// Give a pod its named network namespace and a veth pair on the node bridge
    /// (addressed, up, default route); see [`crate::netlink::attach`].
    fn attach_pod_link(&self, link: &PodLink) -> Result<(), OsError>;
    /// Remove what [`Os::attach_pod_link`] made; absent parts are not an error.
    fn detach_pod_link(&self, netns: &Path, host_veth: &str) -> Result<(), OsError>;
    /// Give a link made ahead (host end down) the names `netns` and `host_veth` and bring
    /// its host end up; see [`crate::netlink::adopt`].
    fn adopt_pod_link(&self, pooled: &PodLink, netns: &Path, host_veth: &str) -> Result<(), OsError>;

    /// Run a program to completion, capturing its output.
    fn run(&self, program: &Path, args: &[OsString]) -> Result<CommandOutput, OsError>;
    /// Start a program in its own process group (so a Ctrl-C at the agent's terminal does
    /// not reach it), stdin from /dev/null, stderr appended to `stderr_log`; wait for the
    /// first line on its stdout and return it. The child keeps running after that.
    fn spawn_detached(&self, program: &Path, args: &[OsString], stderr_log: &Path) -> Result<Detached, OsError>;
    fn signal(&self, pid: u32, signal: Signal) -> Result<(), OsError>;
    fn process_alive(&self, pid: u32) -> bool;

    /// The cgroup hierarchies' mount points: the v2 root alone on a unified machine, else
    /// every v1 controller folder plus the v2 `unified` one when present.
    fn cgroup_hierarchies(&self, cgroup_root: &Path) -> Result<Vec<PathBuf>, OsError>;

    fn create_dir_all(&self, path: &Path) -> Result<(), OsError>;
    /// `rmdir`: cgroup folders can only be removed this way, and only when empty.
    fn remove_dir(&self, path: &Path) -> Result<(), OsError>;
    fn remove_dir_all(&self, path: &Path) -> Result<(), OsError>;
    /// Remove one file; a file already gone is not an error.
    fn remove_file(&self, path: &Path) -> Result<(), OsError>;
    /// Write through a temporary file and a rename, so readers see all or nothing.
    fn write_file_atomic(&self, path: &Path, contents: &[u8]) -> Result<(), OsError>;
    /// As [`Os::write_file_atomic`] but not synced to disk: every process sees all or
    /// nothing at once (the page cache is the machine's), but a machine crash may lose the
    /// file or leave it empty. For records of things a reboot ends anyway (see
    /// `runtime::write_volatile_record`).
    fn write_file_unsynced(&self, path: &Path, contents: &[u8]) -> Result<(), OsError> {
        self.write_file_atomic(path, contents)
    }
    /// As [`Os::write_file_atomic`], readable by the owner only (0600): a secret's derivative.
    fn write_private_file(&self, path: &Path, contents: &[u8]) -> Result<(), OsError> {
        self.write_file_atomic(path, contents)
    }
    /// Write a kernel control file in place (`cgroup.procs`, `memory.max`): such files
    /// cannot be replaced by a rename.
    fn write_control_file(&self, path: &Path, contents: &[u8]) -> Result<(), OsError>;
    fn read_file(&self, path: &Path) -> Result<Option<Vec<u8>>, OsError>;
    /// Read `rel` inside a container's root filesystem, resolving every symlink as if
    /// `root` were `/` (an image's `/etc/passwd -> /etc/shadow` must not reach the host's).
    fn read_file_in_root(&self, root: &Path, rel: &Path) -> Result<Option<Vec<u8>>, OsError>;
    fn exists(&self, path: &Path) -> bool;
    fn list_dir(&self, path: &Path) -> Result<Vec<String>, OsError>;
}

/// Run `f` on a thread of its own that first leaves the agent's namespaces named by
/// `flags` for new ones; the thread ends with `f`, so no other agent code runs in them.
/// Whatever `f` bind-mounts from `/proc/thread-self/ns/` keeps a namespace alive.
pub(crate) fn on_unshared_thread<T: Send>(
    flags: UnshareFlags,
    f: impl FnOnce() -> Result<T, OsError> + Send,
) -> Result<T, OsError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // The crate's only unsafe call. SAFETY: unshare is unsafe because unsharing the
            // file table (CLONE_FILES) would let this thread see descriptors others cannot;
            // only namespaces are unshared here, for this short-lived thread alone.
            #[allow(unsafe_code)]
            let unshared = unsafe { rustix::thread::unshare_unsafe(flags - UnshareFlags::FILES) };
            unshared.map_err(|source| OsError::Sys { what: "unsharing namespaces", path: "/".into(), source })?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(OsError::Command { what: "making namespaces", detail: "a thread panicked".into() }))
    })
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> OsError + 'a {
    move |source| OsError::Io { what, path: path.to_owned(), source }
}

fn sys<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(rustix::io::Errno) -> OsError + 'a {
    move |source| OsError::Sys { what, path: path.to_owned(), source }
}

/// The real OS. Keeps the handles of detached children so they are reaped (no zombies)
/// while this process lives; after a restart they are someone else's to reap.
#[derive(Debug, Default)]
pub struct RealOs {
    children: Mutex<Vec<Child>>,
    /// Sealed copies of programs ([`Os::sealed_copy`]), open while we live.
    sealed: Mutex<Vec<std::fs::File>>,
}

impl RealOs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Collect the exit status of detached children that have finished.
    pub fn reap(&self) {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        children.retain_mut(|c| matches!(c.try_wait(), Ok(None)));
    }
}

/// The mount options of an overlay: `lower` topmost first, as overlayfs lists them.
pub fn overlay_options(lower: &[PathBuf], upper: &Path, work: &Path) -> String {
    let lower: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
    format!("lowerdir={},upperdir={},workdir={}", lower.join(":"), upper.display(), work.display())
}

/// Undo the octal escapes of /proc/self/mountinfo (`\040` for a space, ...).
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            out.push((bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points listed in a mountinfo text that are `prefix` or below it, deepest first.
pub fn parse_mounts_under(mountinfo: &str, prefix: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .filter(|m| m.starts_with(prefix))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

impl Os for RealOs {
    fn mount_overlay(&self, lower: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<(), OsError> {
        let data = overlay_options(lower, upper, work);
        let data = std::ffi::CString::new(data).map_err(|_| OsError::Sys {
            what: "mounting overlay (NUL in a path) on",
            path: target.to_owned(),
            source: rustix::io::Errno::INVAL,
        })?;
        rustix::mount::mount("overlay", target, "overlay", rustix::mount::MountFlags::empty(), Some(data.as_c_str()))
            .map_err(sys("mounting overlay on", target))
    }

    fn unmount(&self, target: &Path) -> Result<(), OsError> {
        rustix::mount::unmount(target, rustix::mount::UnmountFlags::empty()).map_err(sys("unmounting", target))
    }

    fn mount_tmpfs(&self, target: &Path) -> Result<(), OsError> {
        use rustix::mount::MountFlags;
        rustix::mount::mount("tmpfs", target, "tmpfs", MountFlags::NOSUID | MountFlags::NODEV, Some(c"mode=0700"))
            .map_err(sys("mounting a tmpfs on", target))
    }

    fn is_tmpfs(&self, path: &Path) -> Result<bool, OsError> {
        const TMPFS_MAGIC: u64 = 0x0102_1994;
        let fs = rustix::fs::statfs(path).map_err(sys("statfs of", path))?;
        Ok(fs.f_type as u64 == TMPFS_MAGIC)
    }

    fn sealed_copy(&self, program: &Path) -> Result<PathBuf, OsError> {
        use rustix::fs::{MemfdFlags, SealFlags};
        use std::os::fd::AsRawFd as _;
        let mut source = std::fs::File::open(program).map_err(io("opening", program))?;
        let fd = rustix::fs::memfd_create("atoll-runtime", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(sys("making a memory file for", program))?;
        let mut copy = std::fs::File::from(fd);
        std::io::copy(&mut source, &mut copy).map_err(io("copying", program))?;
        // Exactly these four: what crun and runc take for their own sealed copy.
        let seals = SealFlags::SEAL | SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE;
        rustix::fs::fcntl_add_seals(&copy, seals).map_err(sys("sealing the copy of", program))?;
        let path = PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), copy.as_raw_fd()));
        self.sealed.lock().unwrap_or_else(|e| e.into_inner()).push(copy);
        Ok(path)
    }

    fn mounts_under(&self, prefix: &Path) -> Result<Vec<PathBuf>, OsError> {
        let info = Path::new("/proc/self/mountinfo");
        let text = std::fs::read_to_string(info).map_err(io("reading", info))?;
        Ok(parse_mounts_under(&text, prefix))
    }

    fn create_namespaces(&self, ipc: &Path, uts: Option<(&Path, &str)>) -> Result<(), OsError> {
        // In-process rather than through util-linux's unshare + hostname: two fewer
        // processes on every pod's start-up path.
        let mut flags = UnshareFlags::NEWIPC;
        if uts.is_some() {
            flags |= UnshareFlags::NEWUTS;
        }
        on_unshared_thread(flags, || {
            if let Some((_, hostname)) = uts {
                rustix::system::sethostname(hostname.as_bytes()).map_err(sys("setting the hostname for", ipc))?;
            }
            let mut files = vec![(ipc, "/proc/thread-self/ns/ipc")];
            files.extend(uts.map(|(file, _)| (file, "/proc/thread-self/ns/uts")));
            for (file, ns) in files {
                std::fs::File::create(file).map_err(io("creating", file))?;
                rustix::mount::mount_bind(ns, file).map_err(sys("bind-mounting a namespace on", file))?;
            }
            Ok(())
        })
    }

    fn make_whiteout(&self, path: &Path) -> Result<(), OsError> {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).map_err(io("removing", path))?,
            Ok(_) => std::fs::remove_file(path).map_err(io("removing", path))?,
            Err(_) => {}
        }
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            rustix::fs::makedev(0, 0),
        )
        .map_err(sys("making a whiteout at", path))
    }

    fn set_opaque(&self, dir: &Path) -> Result<(), OsError> {
        rustix::fs::setxattr(dir, "trusted.overlay.opaque", b"y", rustix::fs::XattrFlags::empty())
            .map_err(sys("marking opaque", dir))
    }

    fn attach_pod_link(&self, link: &PodLink) -> Result<(), OsError> {
        crate::netlink::attach(link)
    }

    fn detach_pod_link(&self, netns: &Path, host_veth: &str) -> Result<(), OsError> {
        crate::netlink::detach(netns, host_veth)
    }

    fn adopt_pod_link(&self, pooled: &PodLink, netns: &Path, host_veth: &str) -> Result<(), OsError> {
        crate::netlink::adopt(pooled, netns, host_veth)
    }

    fn run(&self, program: &Path, args: &[OsString]) -> Result<CommandOutput, OsError> {
        let out = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| OsError::Spawn { program: program.to_owned(), source })?;
        Ok(CommandOutput {
            success: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    fn spawn_detached(&self, program: &Path, args: &[OsString], stderr_log: &Path) -> Result<Detached, OsError> {
        self.reap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(stderr_log)
            .map_err(io("opening", stderr_log))?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|source| OsError::Spawn { program: program.to_owned(), source })?;
        let pid = child.id();
        // Reading one line is the handshake; the pipe is closed afterwards, which the child
        // must tolerate (it never writes to stdout again). A child that never answers (a
        // hung runtime) is killed with its whole process group after the deadline.
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                let mut line = String::new();
                let _ = BufReader::new(stdout).read_line(&mut line);
                let _ = tx.send(line);
            });
        }
        let line = rx.recv_timeout(HANDSHAKE_TIMEOUT);
        if line.is_err()
            && let Some(group) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        self.children.lock().unwrap_or_else(|e| e.into_inner()).push(child);
        let line = line.unwrap_or_default();
        if line.is_empty() {
            return Err(OsError::NoHandshake { program: program.to_owned(), log: stderr_log.to_owned() });
        }
        Ok(Detached { pid, first_line: line.trim_end().to_owned() })
    }

    fn signal(&self, pid: u32, signal: Signal) -> Result<(), OsError> {
        let target = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw);
        let Some(target) = target else {
            return Err(OsError::Signal { pid, signal, source: rustix::io::Errno::INVAL });
        };
        let sig = match signal {
            Signal::Term => rustix::process::Signal::TERM,
            Signal::Kill => rustix::process::Signal::KILL,
        };
        rustix::process::kill_process(target, sig).map_err(|source| OsError::Signal { pid, signal, source })
    }

    fn process_alive(&self, pid: u32) -> bool {
        self.reap();
        i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
    }

    fn cgroup_hierarchies(&self, cgroup_root: &Path) -> Result<Vec<PathBuf>, OsError> {
        if cgroup_root.join("cgroup.controllers").exists() {
            return Ok(vec![cgroup_root.to_owned()]);
        }
        let mut out = Vec::new();
        for entry in std::fs::read_dir(cgroup_root).map_err(io("listing", cgroup_root))? {
            let entry = entry.map_err(io("listing", cgroup_root))?;
            let path = entry.path();
            // Skip the symlinks (cpu,cpuacct -> cpu) so each hierarchy appears once.
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if is_dir && path.join("cgroup.procs").exists() {
                out.push(path);
            }
        }
        out.sort();
        Ok(out)
    }

    fn create_dir_all(&self, path: &Path) -> Result<(), OsError> {
        std::fs::create_dir_all(path).map_err(io("creating", path))
    }

    fn remove_dir(&self, path: &Path) -> Result<(), OsError> {
        std::fs::remove_dir(path).map_err(io("removing", path))
    }

    fn remove_dir_all(&self, path: &Path) -> Result<(), OsError> {
        std::fs::remove_dir_all(path).map_err(io("removing", path))
    }

    fn remove_file(&self, path: &Path) -> Result<(), OsError> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("removing", path)(e)),
            _ => Ok(()),
        }
    }

    fn write_file_atomic(&self, path: &Path, contents: &[u8]) -> Result<(), OsError> {
        write_atomic(path, contents).map_err(io("writing", path))
    }

    fn write_file_unsynced(&self, path: &Path, contents: &[u8]) -> Result<(), OsError> {
        write_renamed(path, contents, false).map_err(io("writing", path))
    }

    fn write_private_file(&self, path: &Path, contents: &[u8]) -> Result<(), OsError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        // Made 0600 from the start, never wider for a moment.
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            f.write_all(contents)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(io("writing", path))
    }

    fn write_control_file(&self, path: &Path, contents: &[u8]) -> Result<(), OsError> {
        let mut f = std::fs::OpenOptions::new().write(true).open(path).map_err(io("opening", path))?;
        f.write_all(contents).map_err(io("writing", path))
    }

    fn read_file(&self, path: &Path) -> Result<Option<Vec<u8>>, OsError> {
        match std::fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("reading", path)(e)),
        }
    }

    fn read_file_in_root(&self, root: &Path, rel: &Path) -> Result<Option<Vec<u8>>, OsError> {
        use rustix::fs::{Mode, OFlags, ResolveFlags};
        let dir = rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(sys("opening", root))?;
        let fd = match rustix::fs::openat2(
            &dir,
            rel,
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(sys("opening", &root.join(rel))(e)),
        };
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::fs::File::from(fd), &mut bytes).map_err(io("reading", &root.join(rel)))?;
        Ok(Some(bytes))
    }

    fn exists(&self, path: &Path) -> bool {
        std::fs::symlink_metadata(path).is_ok()
    }

    fn list_dir(&self, path: &Path) -> Result<Vec<String>, OsError> {
        let mut names = Vec::new();
        let entries = match std::fs::read_dir(path) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
            Err(e) => return Err(io("listing", path)(e)),
        };
        for e in entries {
            let e = e.map_err(io("listing", path))?;
            names.push(e.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }
}

/// Write `contents` to `path` via a sibling temporary file, synced, then renamed.
pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write_renamed(path, contents, true)
}

fn write_renamed(path: &Path, contents: &[u8], sync: bool) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(contents)?;
    if sync {
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// One call made to a [`FakeOs`], in a form tests can compare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    MountOverlay { lower: Vec<PathBuf>, upper: PathBuf, work: PathBuf, target: PathBuf },
    CreateNamespaces { ipc: PathBuf, uts: Option<(PathBuf, String)> },
    Unmount(PathBuf),
    MountTmpfs(PathBuf),
    SealedCopy(PathBuf),
    Whiteout(PathBuf),
    Opaque(PathBuf),
    Run(Vec<String>),
    AttachPodLink(PodLink),
    DetachPodLink { netns: PathBuf, host_veth: String },
    AdoptPodLink { pooled: PathBuf, netns: PathBuf, host_veth: String },
    SpawnDetached(Vec<String>),
    Signal(u32, Signal),
    CreateDir(PathBuf),
    RemoveDir(PathBuf),
    RemoveDirAll(PathBuf),
    RemoveFile(PathBuf),
    Write(PathBuf),
}

/// A recording OS for unit tests: files live in memory, mounts in a list, and every
/// state-changing call is recorded. Processes are pretend: `spawn_detached` answers with
/// `handshake` and a made-up pid that stays "alive" until signalled with KILL or TERM.
#[derive(Debug)]
pub struct FakeOs {
    state: Mutex<FakeState>,
    pub handshake: String,
    pub cgroup_dirs: Vec<PathBuf>,
}

#[derive(Debug, Default)]
struct FakeState {
    calls: Vec<Call>,
    files: BTreeMap<PathBuf, Vec<u8>>,
    dirs: std::collections::BTreeSet<PathBuf>,
    mounts: Vec<PathBuf>,
    /// The subset of `mounts` that are tmpfs mounts.
    tmpfs: Vec<PathBuf>,
    alive: Vec<u32>,
    next_pid: u32,
}

impl FakeOs {
    pub fn new(handshake: &str, cgroup_dirs: Vec<PathBuf>) -> Self {
        FakeOs {
            state: Mutex::new(FakeState { next_pid: 1000, ..FakeState::default() }),
            handshake: handshake.to_owned(),
            cgroup_dirs,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn calls(&self) -> Vec<Call> {
        self.with(|s| s.calls.clone())
    }

    pub fn file(&self, path: &Path) -> Option<Vec<u8>> {
        self.with(|s| s.files.get(path).cloned())
    }

    pub fn put_file(&self, path: &Path, contents: &[u8]) {
        self.with(|s| s.files.insert(path.to_owned(), contents.to_owned()));
    }

    pub fn mounts(&self) -> Vec<PathBuf> {
        self.with(|s| s.mounts.clone())
    }

    pub fn dirs(&self) -> Vec<PathBuf> {
        self.with(|s| s.dirs.iter().cloned().collect())
    }
}

fn strings(program: &Path, args: &[OsString]) -> Vec<String> {
    std::iter::once(program.display().to_string())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect()
}

impl Os for FakeOs {
    fn mount_overlay(&self, lower: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<(), OsError> {
        self.with(|s| {
            s.calls.push(Call::MountOverlay {
                lower: lower.to_vec(),
                upper: upper.to_owned(),
                work: work.to_owned(),
                target: target.to_owned(),
            });
            s.mounts.push(target.to_owned());
        });
        Ok(())
    }

    fn unmount(&self, target: &Path) -> Result<(), OsError> {
        self.with(|s| {
            s.calls.push(Call::Unmount(target.to_owned()));
            s.mounts.retain(|m| m != target);
            s.tmpfs.retain(|m| m != target);
        });
        Ok(())
    }

    fn mount_tmpfs(&self, target: &Path) -> Result<(), OsError> {
        self.with(|s| {
            s.calls.push(Call::MountTmpfs(target.to_owned()));
            s.mounts.push(target.to_owned());
            s.tmpfs.push(target.to_owned());
        });
        Ok(())
    }

    fn is_tmpfs(&self, path: &Path) -> Result<bool, OsError> {
        Ok(self.with(|s| s.tmpfs.iter().any(|m| path.starts_with(m))))
    }

    fn sealed_copy(&self, program: &Path) -> Result<PathBuf, OsError> {
        self.with(|s| s.calls.push(Call::SealedCopy(program.to_owned())));
        Ok(PathBuf::from("/proc/1/fd/3"))
    }

    fn mounts_under(&self, prefix: &Path) -> Result<Vec<PathBuf>, OsError> {
        Ok(self.with(|s| s.mounts.iter().filter(|m| m.starts_with(prefix)).cloned().collect()))
    }

    fn create_namespaces(&self, ipc: &Path, uts: Option<(&Path, &str)>) -> Result<(), OsError> {
        self.with(|s| {
            s.calls.push(Call::CreateNamespaces {
                ipc: ipc.to_owned(),
                uts: uts.map(|(p, h)| (p.to_owned(), h.to_owned())),
            });
            s.mounts.push(ipc.to_owned());
            s.mounts.extend(uts.map(|(p, _)| p.to_owned()));
        });
        Ok(())
    }

    fn make_whiteout(&self, path: &Path) -> Result<(), OsError> {
        self.with(|s| s.calls.push(Call::Whiteout(path.to_owned())));
        Ok(())
    }

    fn set_opaque(&self, dir: &Path) -> Result<(), OsError> {
        self.with(|s| s.calls.push(Call::Opaque(dir.to_owned())));
        Ok(())
    }

    fn attach_pod_link(&self, link: &PodLink) -> Result<(), OsError> {
        self.with(|s| s.calls.push(Call::AttachPodLink(link.clone())));
        Ok(())
    }

    fn detach_pod_link(&self, netns: &Path, host_veth: &str) -> Result<(), OsError> {
        self.with(|s| s.calls.push(Call::DetachPodLink { netns: netns.into(), host_veth: host_veth.into() }));
        Ok(())
    }

    fn adopt_pod_link(&self, pooled: &PodLink, netns: &Path, host_veth: &str) -> Result<(), OsError> {
        let call =
            Call::AdoptPodLink { pooled: pooled.netns.clone(), netns: netns.into(), host_veth: host_veth.into() };
        self.with(|s| s.calls.push(call));
        Ok(())
    }

    fn run(&self, program: &Path, args: &[OsString]) -> Result<CommandOutput, OsError> {
        self.with(|s| s.calls.push(Call::Run(strings(program, args))));
        Ok(CommandOutput { success: true, code: Some(0), ..CommandOutput::default() })
    }

    fn spawn_detached(&self, program: &Path, args: &[OsString], _stderr_log: &Path) -> Result<Detached, OsError> {
        let pid = self.with(|s| {
            s.calls.push(Call::SpawnDetached(strings(program, args)));
            s.next_pid += 1;
            s.alive.push(s.next_pid);
            s.next_pid
        });
        Ok(Detached { pid, first_line: self.handshake.clone() })
    }

    fn signal(&self, pid: u32, signal: Signal) -> Result<(), OsError> {
        self.with(|s| {
            s.calls.push(Call::Signal(pid, signal));
            s.alive.retain(|p| *p != pid);
        });
        Ok(())
    }

    fn process_alive(&self, pid: u32) -> bool {
        self.with(|s| s.alive.contains(&pid))
    }

    fn cgroup_hierarchies(&self, _cgroup_root: &Path) -> Result<Vec<PathBuf>, OsError> {
        Ok(self.cgroup_dirs.clone())
    }

    fn create_dir_all(&self, path: &Path) -> Result<(), OsError> {
        self.with(|s| {
            s.calls.push(Call::CreateDir(path.to_owned()));
            s.dirs.insert(path.to_owned());
        });
        Ok(())
    }

    fn remove_dir(&self, path: &Path) -> Result<(), OsError> {
        self.with(|s| {
            s.calls.push(Call::RemoveDir(path.to_owned()));
            if s.dirs.remove(path) {
                Ok(())
            } else {
                Err(OsError::Io {
                    what: "removing",
                    path: path.to_owned(),
                    source: std::io::ErrorKind::NotFound.into(),
                })
            }
        })
    }

    fn remove_dir_all(&self, path: &Path) -> Result<(), OsError> {
        self.with(|s| {
            s.calls.push(Call::RemoveDirAll(path.to_owned()));
            s.dirs.retain(|d| !d.starts_with(path));
            s.files.retain(|f, _| !f.starts_with(path));
        });
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> Result<(), OsError> {
        self.with(|s| {
            s.calls.push(Call::RemoveFile(path.to_owned()));
            s.files.remove(path);
        });
        Ok(())
    }

    fn write_file_atomic(&self, path: &Path, contents: &[u8]) -> Result<(), OsError> {
        self.with(|s| {
            s.calls.push(Call::Write(path.to_owned()));
            s.files.insert(path.to_owned(), contents.to_owned());
        });
        Ok(())
    }

    fn write_control_file(&self, path: &Path, contents: &[u8]) -> Result<(), OsError> {
        self.write_file_atomic(path, contents)
    }

    fn read_file(&self, path: &Path) -> Result<Option<Vec<u8>>, OsError> {
        Ok(self.file(path))
    }

    fn read_file_in_root(&self, root: &Path, rel: &Path) -> Result<Option<Vec<u8>>, OsError> {
        Ok(self.file(&root.join(rel)))
    }

    fn exists(&self, path: &Path) -> bool {
        self.with(|s| s.files.contains_key(path) || s.dirs.contains(path))
    }

    fn list_dir(&self, path: &Path) -> Result<Vec<String>, OsError> {
        Ok(self.with(|s| {
            let mut names: Vec<String> = s
                .dirs
                .iter()
                .chain(s.files.keys())
                .filter(|p| p.parent() == Some(path))
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect();
            names.sort();
            names.dedup();
            names
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_in_root_resolve_symlinks_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(dir.path().join("secret"), b"host").unwrap();
        std::fs::write(root.join("secret"), b"image").unwrap();
        // Absolute and climbing symlinks both stay inside the root.
        std::os::unix::fs::symlink("/secret", root.join("etc/abs")).unwrap();
        std::os::unix::fs::symlink("../../../../secret", root.join("etc/up")).unwrap();
        let os = RealOs::new();
        for link in ["etc/abs", "etc/up"] {
            assert_eq!(os.read_file_in_root(&root, Path::new(link)).unwrap().unwrap(), b"image", "{link}");
        }
        assert_eq!(os.read_file_in_root(&root, Path::new("etc/none")).unwrap(), None);
    }

    #[test]
    fn mountinfo_lists_deepest_first_and_unescapes() {
        let text = "\
22 1 8:1 / / rw - ext4 /dev/vda rw
90 22 0:50 / /data/c1/rootfs rw - overlay overlay rw
91 90 0:51 / /data/c1/rootfs/proc rw - proc proc rw
92 22 0:52 / /data/with\\040space rw - tmpfs tmpfs rw
93 22 0:53 / /data2 rw - tmpfs tmpfs rw
";
        assert_eq!(
            parse_mounts_under(text, Path::new("/data")),
            vec![
                PathBuf::from("/data/c1/rootfs/proc"),
                PathBuf::from("/data/c1/rootfs"),
                PathBuf::from("/data/with space")
            ]
        );
    }
}
