//! The interface between the agent and its runtimes, shaped like the CRI: a pod is a
//! *sandbox* (its cgroup, its network namespace, for a VM the machine itself) holding
//! *containers* with their own lifecycle. A container runtime ([`oci::OciRuntime`], over
//! crun or runc) and a VM runtime ([`vm::VmRuntime`], over qemu) both implement
//! [`Runtime`]; [`Runtimes`] puts them behind one [`Runtime`], choosing by the sandbox's
//! `runtime_handler` (as the CRI's RuntimeClass handler does).
//!
//! Calls are blocking (they run OCI runtime binaries, wait for grace periods); the async
//! sync loop calls them from blocking threads. Every call is idempotent where the CRI's
//! is (stopping a stopped container, removing a removed one), so a restarted agent can
//! converge by repeating itself.

pub mod logs;
pub mod oci;
pub mod vm;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::images::ContainerConfig;
use crate::os::OsError;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{kind} {id:?} already exists")]
    AlreadyExists { kind: &'static str, id: String },
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    #[error("container {id:?} is {state:?}, cannot {op}")]
    WrongState { id: String, state: ContainerState, op: &'static str },
    #[error(transparent)]
    Os(#[from] OsError),
    #[error("{op} of {id:?} failed: {detail}")]
    Runtime { op: &'static str, id: String, detail: String },
    #[error("corrupt state file {path}: {detail}")]
    CorruptState { path: PathBuf, detail: String },
    #[error("container {id:?} did not exit {after:?} after SIGKILL")]
    Unkillable { id: String, after: Duration },
}

/// Where a sandbox's containers find their network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkMode {
    /// The node's own network (`hostNetwork: true`).
    Host,
    /// A fresh, empty network namespace (loopback only).
    Isolated,
    /// A network namespace the network plugin made (`/run/netns/...`).
    Namespace(PathBuf),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// Unique on the node (the pod's UID); letters, digits, `-`, `_`, `.`.
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub tenant: String,
    pub hostname: String,
    pub network: NetworkMode,
    /// Which runtime runs the sandbox: `""` the default (containers), [`vm::HANDLER`] a VM.
    #[serde(default)]
    pub runtime_handler: String,
}

/// Resource settings in Kubernetes' units, converted by the runtime.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_request_millis: Option<u64>,
    pub cpu_limit_millis: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
}

/// The image a container runs, already resolved by the image store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRootfs {
    /// What the user asked for, for status reports.
    pub reference: String,
    /// Unpacked layer folders, bottom layer first.
    pub layers: Vec<PathBuf>,
    pub config: ContainerConfig,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// The container's name within its pod.
    pub name: String,
    pub image: ImageRootfs,
    /// Replaces the image's entrypoint (and drops its cmd), as Kubernetes' `command`.
    pub command: Option<Vec<String>>,
    /// Replaces the image's cmd, as Kubernetes' `args`.
    pub args: Option<Vec<String>>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    /// Numeric uid and gid; `None` takes the image's `User` (default root).
    pub user: Option<(u32, u32)>,
    pub resources: Resources,
    /// Where the CRI-format log goes; `None` puts it in the container's state folder.
    pub log_path: Option<PathBuf>,
    /// Keep a stdin open for `attach` (`stdin: true`), closed after the first attach
    /// (`stdinOnce`).
    #[serde(default)]
    pub stdin: bool,
    #[serde(default)]
    pub stdin_once: bool,
    /// A terminal for the process (`tty: true`).
    #[serde(default)]
    pub tty: bool,
    /// Set for a VM pod's machine (the VM runtime's one "container"); container runtimes
    /// refuse it.
    #[serde(default)]
    pub vm: Option<vm::VmSpec>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    /// The supervisor vanished without recording an exit (killed, machine crash).
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerStatus {
    pub id: String,
    pub sandbox_id: String,
    pub name: String,
    pub image: String,
    pub state: ContainerState,
    pub pid: Option<u32>,
    pub exit_code: Option<i32>,
    /// Why it ended: `Completed`, `Error`, `OOMKilled`-style reasons (Kubernetes' words).
    pub reason: Option<String>,
    pub created_at: SystemTime,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    pub log_path: PathBuf,
    /// Whether it is ready, for runtimes that know better than "running" (a VM is ready
    /// once its guest said so); `None`: ready while running.
    pub ready: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxStatus {
    pub spec: SandboxSpec,
    pub ready: bool,
    pub created_at: SystemTime,
}

pub trait Runtime: Send + Sync {
    /// Create and start a sandbox; repeating it for an existing sandbox is an error.
    fn run_sandbox(&self, spec: &SandboxSpec) -> Result<SandboxStatus, RuntimeError>;
    /// Stop every container in the sandbox, each with `grace` before SIGKILL.
    fn stop_sandbox(&self, id: &str, grace: Duration) -> Result<(), RuntimeError>;
    /// Remove the sandbox and its containers; absent is not an error.
    fn remove_sandbox(&self, id: &str) -> Result<(), RuntimeError>;
    fn sandbox_status(&self, id: &str) -> Result<SandboxStatus, RuntimeError>;
    fn list_sandboxes(&self) -> Result<Vec<SandboxStatus>, RuntimeError>;

    /// Create a container (not yet running) and return its ID.
    fn create_container(&self, sandbox_id: &str, spec: &ContainerSpec) -> Result<String, RuntimeError>;
    fn start_container(&self, id: &str) -> Result<(), RuntimeError>;
    /// Create and start a container in one go (what a pod's sync does); a runtime that can
    /// save a step doing both at once overrides it.
    fn run_container(&self, sandbox_id: &str, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let id = self.create_container(sandbox_id, spec)?;
        self.start_container(&id)?;
        Ok(id)
    }
    /// SIGTERM, then SIGKILL once `grace` has passed; returns when it has exited.
    fn stop_container(&self, id: &str, grace: Duration) -> Result<(), RuntimeError>;
    /// Remove a container (killing it if it still runs); absent is not an error.
    fn remove_container(&self, id: &str) -> Result<(), RuntimeError>;
    fn container_status(&self, id: &str) -> Result<ContainerStatus, RuntimeError>;
    fn list_containers(&self, sandbox_id: Option<&str>) -> Result<Vec<ContainerStatus>, RuntimeError>;

    /// The program and arguments that run `command` inside running container `id`, with
    /// the caller's stdio passed through (`kubectl exec`); the caller spawns it, so that
    /// it can stream its stdio (and give it a terminal).
    fn exec_command(&self, id: &str, command: &[String]) -> Result<(PathBuf, Vec<std::ffi::OsString>), RuntimeError>;

    /// The Unix socket feeding container `id`'s stdin (`attach -i`), if it has one.
    fn attach_socket(&self, id: &str) -> Option<PathBuf>;
}

/// Names that become file names and OCI container IDs.
pub(crate) fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.as_bytes()[0].is_ascii_alphanumeric()
}

/// The node's runtimes behind one [`Runtime`]: a sandbox goes to the runtime of its
/// `runtime_handler`; calls naming an existing sandbox or container go to the runtime that
/// has it (each keeps its own state, so this holds nothing).
pub struct Runtimes {
    default: Arc<dyn Runtime>,
    handlers: Vec<(String, Arc<dyn Runtime>)>,
}

impl Runtimes {
    pub fn new(default: Arc<dyn Runtime>) -> Runtimes {
        Runtimes { default, handlers: Vec::new() }
    }

    pub fn with(mut self, handler: &str, runtime: Arc<dyn Runtime>) -> Runtimes {
        self.handlers.push((handler.into(), runtime));
        self
    }

    fn all(&self) -> impl Iterator<Item = &Arc<dyn Runtime>> {
        std::iter::once(&self.default).chain(self.handlers.iter().map(|(_, r)| r))
    }

    fn for_handler(&self, handler: &str) -> Result<&Arc<dyn Runtime>, RuntimeError> {
        if handler.is_empty() {
            return Ok(&self.default);
        }
        self.handlers
            .iter()
            .find(|(h, _)| h == handler)
            .map(|(_, r)| r)
            .ok_or_else(|| RuntimeError::InvalidSpec(format!("no runtime handler {handler:?} on this node")))
    }

    fn with_sandbox(&self, id: &str) -> Result<&Arc<dyn Runtime>, RuntimeError> {
        for r in self.all() {
            match r.sandbox_status(id) {
                Ok(_) => return Ok(r),
                Err(RuntimeError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Err(RuntimeError::NotFound { kind: "sandbox", id: id.into() })
    }

    fn with_container(&self, id: &str) -> Result<&Arc<dyn Runtime>, RuntimeError> {
        for r in self.all() {
            match r.container_status(id) {
                Ok(_) => return Ok(r),
                Err(RuntimeError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Err(RuntimeError::NotFound { kind: "container", id: id.into() })
    }
}

impl Runtime for Runtimes {
    fn exec_command(&self, id: &str, command: &[String]) -> Result<(PathBuf, Vec<std::ffi::OsString>), RuntimeError> {
        self.with_container(id)?.exec_command(id, command)
    }
    fn attach_socket(&self, id: &str) -> Option<PathBuf> {
        self.with_container(id).ok()?.attach_socket(id)
    }
    fn run_sandbox(&self, spec: &SandboxSpec) -> Result<SandboxStatus, RuntimeError> {
        self.for_handler(&spec.runtime_handler)?.run_sandbox(spec)
    }
    fn stop_sandbox(&self, id: &str, grace: std::time::Duration) -> Result<(), RuntimeError> {
        self.with_sandbox(id)?.stop_sandbox(id, grace)
    }
    fn remove_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        match self.with_sandbox(id) {
            Ok(r) => r.remove_sandbox(id),
            Err(RuntimeError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
    fn sandbox_status(&self, id: &str) -> Result<SandboxStatus, RuntimeError> {
        self.with_sandbox(id)?.sandbox_status(id)
    }
    fn list_sandboxes(&self) -> Result<Vec<SandboxStatus>, RuntimeError> {
        let mut out = Vec::new();
        for r in self.all() {
            out.extend(r.list_sandboxes()?);
        }
        Ok(out)
    }
    fn create_container(&self, sandbox_id: &str, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        self.with_sandbox(sandbox_id)?.create_container(sandbox_id, spec)
    }
    fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.with_container(id)?.start_container(id)
    }
    fn run_container(&self, sandbox_id: &str, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        self.with_sandbox(sandbox_id)?.run_container(sandbox_id, spec)
    }
    fn stop_container(&self, id: &str, grace: std::time::Duration) -> Result<(), RuntimeError> {
        self.with_container(id)?.stop_container(id, grace)
    }
    fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        match self.with_container(id) {
            Ok(r) => r.remove_container(id),
            Err(RuntimeError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
    fn container_status(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
        self.with_container(id)?.container_status(id)
    }
    fn list_containers(&self, sandbox_id: Option<&str>) -> Result<Vec<ContainerStatus>, RuntimeError> {
        match sandbox_id {
            Some(id) => match self.with_sandbox(id) {
                Ok(r) => r.list_containers(Some(id)),
                Err(RuntimeError::NotFound { .. }) => Ok(Vec::new()),
                Err(e) => Err(e),
            },
            None => {
                let mut out = Vec::new();
                for r in self.all() {
                    out.extend(r.list_containers(None)?);
                }
                Ok(out)
            }
        }
    }
}

/// A runtime's on-disk record at `path` (JSON), `None` if absent; an unreadable one is
/// [`RuntimeError::CorruptState`]. Shared by the runtimes' state folders.
pub(crate) fn read_record<T: serde::de::DeserializeOwned>(
    os: &dyn crate::os::Os,
    path: &std::path::Path,
) -> Result<Option<T>, RuntimeError> {
    match os.read_file(path)? {
        // Empty: an unsynced record a machine crash cut short (`write_volatile_record`),
        // which is as if it had never been written.
        None => Ok(None),
        Some(bytes) if bytes.is_empty() => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| RuntimeError::CorruptState { path: path.to_owned(), detail: e.to_string() }),
    }
}

/// Writes a runtime's record at `path` atomically (JSON).
pub(crate) fn write_record(
    os: &dyn crate::os::Os,
    path: &std::path::Path,
    value: &impl Serialize,
) -> Result<(), RuntimeError> {
    Ok(os.write_file_atomic(path, &serde_json::to_vec_pretty(value).unwrap_or_default())?)
}

/// Writes a record of something a reboot ends anyway (a sandbox's namespaces, a running
/// container and its supervisor) atomically but without syncing it to disk: each sync is
/// ~20 ms on a busy disk, and a pod's start wrote five. Why that keeps the agent's
/// invariant (a restart neither loses nor duplicates containers):
/// - an agent restart (the process, not the machine) sees the file: written and renamed
///   data is in the page cache, which every process shares; the rename makes it all or
///   nothing, as with a synced write;
/// - a machine crash may lose the latest records or leave them empty, but it also ends
///   every container, mount and namespace they describe; an empty record reads as absent
///   ([`read_record`]), and an absent one is what a crash in the middle of a create
///   already leaves (a sandbox or container folder without its record), which the sync
///   loop and the sweep clean up and make anew.
pub(crate) fn write_volatile_record(
    os: &dyn crate::os::Os,
    path: &std::path::Path,
    value: &impl Serialize,
) -> Result<(), RuntimeError> {
    Ok(os.write_file_unsynced(path, &serde_json::to_vec(value).unwrap_or_default())?)
}

/// The attempt numbers (numbered sub-folders) in a sandbox's folder, in order.
pub(crate) fn attempt_numbers(os: &dyn crate::os::Os, dir: &std::path::Path) -> Result<Vec<u32>, RuntimeError> {
    if !os.exists(dir) {
        return Ok(Vec::new());
    }
    let mut out: Vec<u32> = os.list_dir(dir)?.iter().filter_map(|n| n.parse().ok()).collect();
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::{FakeOs, Os};

    fn sandbox(id: &str, handler: &str) -> SandboxSpec {
        SandboxSpec {
            id: id.into(),
            name: id.into(),
            namespace: "default".into(),
            tenant: "acme".into(),
            hostname: id.into(),
            network: NetworkMode::Isolated,
            runtime_handler: handler.into(),
        }
    }

    #[test]
    fn sandboxes_go_to_their_handlers_runtime_and_calls_follow_the_id() {
        let os = Arc::new(FakeOs::new("created 7", vec![]));
        let oci =
            oci::OciRuntime::new(oci::OciConfig::new("/usr/bin/crun", vec!["/bin/atoll".into()], "/oci"), os.clone())
                .unwrap();
        let vm = vm::VmRuntime::new(vm::VmConfig::new("/vm".into(), vec!["/bin/atoll".into()]), os.clone()).unwrap();
        let rt = Runtimes::new(Arc::new(oci)).with(vm::HANDLER, Arc::new(vm));
        rt.run_sandbox(&sandbox("c1", "")).unwrap();
        rt.run_sandbox(&sandbox("v1", vm::HANDLER)).unwrap();
        assert!(os.exists(std::path::Path::new("/vm/v1/sandbox.json")));
        assert!(!os.exists(std::path::Path::new("/vm/c1/sandbox.json")));
        assert!(matches!(rt.run_sandbox(&sandbox("x", "gvisor")), Err(RuntimeError::InvalidSpec(_))));
        // (The container runtime's own listing is its tests' business: it needs real namespaces.)
        let ids: Vec<String> = rt.list_sandboxes().unwrap().into_iter().map(|s| s.spec.id).collect();
        assert!(ids.contains(&"v1".to_string()), "{ids:?}");
        assert_eq!(rt.sandbox_status("v1").unwrap().spec.runtime_handler, vm::HANDLER);
        assert!(matches!(rt.sandbox_status("nope"), Err(RuntimeError::NotFound { .. })));
        // Removing what is not there is done, whichever runtime would have had it.
        rt.remove_sandbox("nope").unwrap();
        rt.remove_sandbox("v1").unwrap();
        assert!(rt.list_containers(Some("v1")).unwrap().is_empty());
    }
}
