//! Containers through an OCI runtime binary (crun by default, runc selectable).
//!
//! State on disk, under the runtime's data folder, is the only truth (nothing is kept in
//! memory), so a new `OciRuntime` over the same folder, after an agent restart, sees every
//! container as it is:
//!
//! ```text
//! sandboxes/<id>/sandbox.json         the SandboxSpec and creation time
//! containers/<id>/container.json      the ContainerSpec, sandbox, creation time
//! containers/<id>/bundle/config.json  the OCI runtime spec
//! containers/<id>/bundle/rootfs       overlay mount: image layers + the layer folder's upper/ + work/
//! containers/<id>/container.pid       written by the runtime on create
//! containers/<id>/shim.json           the supervisor's pid
//! containers/<id>/started.json        start time (after `<runtime> start` succeeded)
//! containers/<id>/exit.json           exit code and time, written by the supervisor
//! containers/<id>/container.log       CRI-format log (unless the spec names another file)
//! runtime/                            the OCI runtime's own state (`--root`)
//! <layers_dir>/<id>/upper, work        the container's writable layer (by default `layers/` in the folder)
//! ```
//!
//! Everything but the writable layers is meaningless once the machine reboots, so the agent
//! keeps the folder on a tmpfs (`daemon`): file creation there costs a fraction of a disk
//! file system's (inode and block allocation, journal), and a container start makes a dozen
//! files. The writable layers stay on disk, where a container's writes do not use the
//! node's memory; a layer folder whose container record is gone (a reboot emptied the
//! tmpfs) is removed when the runtime is opened.
//!
//! Cgroups: every container gets `/<cgroup_parent>/pod-<sandbox>/<container>` (relative
//! to each hierarchy); the runtime creates and deletes the container's folder, this code
//! deletes what is left, and the pod's folder with the sandbox.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::{
    ContainerSpec, ContainerState, ContainerStatus, NetworkMode, Resources, Runtime, RuntimeError, SandboxSpec,
    SandboxStatus, valid_id,
};
use crate::os::{Os, OsError, Signal};
use crate::shim::{EXIT_FILE, ExitRecord, PID_FILE, ShimArgs};
use crate::timefmt::{from_nanos, to_nanos};

/// How long to wait for a container to vanish after SIGKILL before calling it stuck.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How often a stopping container's exit file is looked at: first [`POLL`], doubling up to
/// [`POLL_MAX`] (a fixed 5 ms made 200 reads a second per container for a whole grace
/// period: ~23,000 for 100 pods deleted at once with a 1 s grace).
const POLL: Duration = Duration::from_millis(5);
const POLL_MAX: Duration = Duration::from_millis(50);
const CPU_PERIOD: u64 = 100_000;

#[derive(Clone, Debug)]
pub struct OciConfig {
    /// The OCI runtime binary (`crun`, `runc`, or a path).
    pub runtime: PathBuf,
    /// The supervisor command: program and leading arguments (`atoll shim`).
    pub shim: Vec<OsString>,
    pub data_dir: PathBuf,
    /// The containers' writable layers (upper and work folders of their overlays); on a
    /// disk file system even when `data_dir` is a tmpfs.
    pub layers_dir: PathBuf,
    /// Where the cgroup hierarchies are mounted (`/sys/fs/cgroup`).
    pub cgroup_root: PathBuf,
    /// Our top cgroup folder's name; all pods live below it.
    pub cgroup_parent: String,
}

impl OciConfig {
    pub fn new(runtime: impl Into<PathBuf>, shim: Vec<OsString>, data_dir: impl Into<PathBuf>) -> OciConfig {
        let data_dir: PathBuf = data_dir.into();
        OciConfig {
            runtime: runtime.into(),
            shim,
            layers_dir: data_dir.join("layers"),
            data_dir,
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            cgroup_parent: "atoll".into(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct SandboxRecord {
    spec: SandboxSpec,
    created_at_nanos: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct ContainerRecord {
    id: String,
    sandbox_id: String,
    spec: ContainerSpec,
    created_at_nanos: u64,
    log_path: PathBuf,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ShimRecord {
    pid: u32,
    container_pid: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct StartRecord {
    started_at_nanos: u64,
}

#[derive(Debug)]
pub struct OciRuntime {
    config: OciConfig,
    os: Arc<dyn Os>,
    records: Mutex<Records>,
}

/// Parsed `sandbox.json` and `container.json` by ID. Both are written once, before
/// anything refers to them, and never changed, so a cached one is the file's content for
/// as long as the file exists (checked on every use, or seen by the folder listing that
/// found it: the folders on disk stay the truth). Without it every pod's sync re-read and
/// re-parsed every record on the node to find its own (O(pods) per sync, every second for
/// every pod). `shim.json` and `started.json` are also written once each; once both are
/// there they are kept too, so a running container's status reads only `exit.json`.
#[derive(Debug, Default)]
struct Records {
    sandboxes: HashMap<String, Arc<SandboxRecord>>,
    containers: HashMap<String, Arc<ContainerRecord>>,
    started: HashMap<String, (ShimRecord, StartRecord)>,
}

/// Resolve a runtime name through PATH (a path is taken as it is).
pub fn find_program(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return Some(name.to_owned());
    }
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

fn spec_error(msg: impl Into<String>) -> RuntimeError {
    RuntimeError::InvalidSpec(msg.into())
}

impl OciRuntime {
    pub fn new(config: OciConfig, os: Arc<dyn Os>) -> Result<OciRuntime, RuntimeError> {
        for d in ["sandboxes", "containers", "runtime"] {
            os.create_dir_all(&config.data_dir.join(d))?;
        }
        os.create_dir_all(&config.layers_dir)?;
        let rt = OciRuntime { config, os, records: Mutex::new(Records::default()) };
        rt.remove_orphan_layers()?;
        Ok(rt)
    }

    /// Writable layers whose container folder is gone: the records were on a tmpfs that a
    /// reboot emptied, so nothing else would ever remove them. Runs before any create, so a
    /// layer folder without its container folder cannot be one being made.
    fn remove_orphan_layers(&self) -> Result<(), RuntimeError> {
        for id in self.os.list_dir(&self.config.layers_dir)? {
            if !self.os.exists(&self.container_dir(&id)) {
                tracing::info!(container = %id, "removing a writable layer left without its container");
                self.remove_layer(&id)?;
            }
        }
        Ok(())
    }

    fn layer_dir(&self, id: &str) -> PathBuf {
        self.config.layers_dir.join(id)
    }

    fn remove_layer(&self, id: &str) -> Result<(), RuntimeError> {
        match self.os.remove_dir_all(&self.layer_dir(id)) {
            Err(e) if !e.is_not_found() => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.config.data_dir.join("sandboxes").join(id)
    }

    fn container_dir(&self, id: &str) -> PathBuf {
        self.config.data_dir.join("containers").join(id)
    }

    /// The cgroup path (relative to each hierarchy) of a pod or of one of its containers.
    pub fn cgroup_path(&self, sandbox_id: &str, container_id: Option<&str>) -> String {
        let pod = format!("/{}/pod-{sandbox_id}", self.config.cgroup_parent);
        match container_id {
            Some(c) => format!("{pod}/{c}"),
            None => pod,
        }
    }

    fn read_json<T: for<'de> Deserialize<'de>>(&self, path: &Path) -> Result<Option<T>, RuntimeError> {
        crate::runtime::read_record(&*self.os, path)
    }

    /// Every record of this runtime describes something a reboot ends, so none is synced
    /// to disk (see [`crate::runtime::write_volatile_record`] for why that is safe).
    fn write_json(&self, path: &Path, value: &impl Serialize) -> Result<(), RuntimeError> {
        crate::runtime::write_volatile_record(&*self.os, path, value)
    }

    fn records(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sandbox_record(&self, id: &str) -> Result<Arc<SandboxRecord>, RuntimeError> {
        let not_found = || RuntimeError::NotFound { kind: "sandbox", id: id.into() };
        if !valid_id(id) {
            return Err(not_found());
        }
        let path = self.sandbox_dir(id).join("sandbox.json");
        let cached = self.records().sandboxes.get(id).cloned();
        if let Some(rec) = cached {
            if self.os.exists(&path) {
                return Ok(rec);
            }
            self.records().sandboxes.remove(id);
        }
        let rec: Arc<SandboxRecord> = Arc::new(self.read_json(&path)?.ok_or_else(not_found)?);
        self.records().sandboxes.insert(id.to_owned(), rec.clone());
        Ok(rec)
    }

    fn container_record(&self, id: &str) -> Result<Arc<ContainerRecord>, RuntimeError> {
        let not_found = || RuntimeError::NotFound { kind: "container", id: id.into() };
        if !valid_id(id) {
            return Err(not_found());
        }
        let path = self.container_dir(id).join("container.json");
        let cached = self.records().containers.get(id).cloned();
        if let Some(rec) = cached {
            if self.os.exists(&path) {
                return Ok(rec);
            }
            self.records().containers.remove(id);
        }
        let rec: Arc<ContainerRecord> = Arc::new(self.read_json(&path)?.ok_or_else(not_found)?);
        self.records().containers.insert(id.to_owned(), rec.clone());
        Ok(rec)
    }

    fn runtime_cmd(&self, op: &'static str, id: &str, args: &[&str]) -> Result<crate::os::CommandOutput, RuntimeError> {
        let mut full: Vec<OsString> = vec!["--root".into(), self.config.data_dir.join("runtime").into()];
        full.extend(args.iter().map(OsString::from));
        let out = self.os.run(&self.config.runtime, &full)?;
        if !out.success {
            return Err(RuntimeError::Runtime { op, id: id.into(), detail: out.stderr.trim().to_owned() });
        }
        Ok(out)
    }

    /// Build the OCI runtime spec (config.json) for a container.
    fn oci_spec(
        &self,
        sandbox: &SandboxSpec,
        id: &str,
        spec: &ContainerSpec,
        user: (u32, u32),
    ) -> Result<Value, RuntimeError> {
        let image = &spec.image.config;
        let args: Vec<String> = match (&spec.command, &spec.args) {
            (Some(cmd), args) => cmd.iter().chain(args.iter().flatten()).cloned().collect(),
            (None, Some(args)) => image.entrypoint.iter().flatten().chain(args).cloned().collect(),
            (None, None) => image.entrypoint.iter().flatten().chain(image.cmd.iter().flatten()).cloned().collect(),
        };
        if args.is_empty() {
            return Err(spec_error(format!("container {:?} has no command: the image sets none", spec.name)));
        }
        let mut env: Vec<(String, String)> = Vec::new();
        let mut set = |k: &str, v: &str| match env.iter_mut().find(|(ek, _)| ek == k) {
            Some(e) => e.1 = v.to_owned(),
            None => env.push((k.to_owned(), v.to_owned())),
        };
        set("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        set("HOSTNAME", &sandbox.hostname);
        for kv in image.env.iter().flatten() {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            set(k, v);
        }
        for (k, v) in &spec.env {
            if k.is_empty() || k.contains('=') {
                return Err(spec_error(format!("invalid environment variable name {k:?}")));
            }
            set(k, v);
        }
        let env: Vec<String> = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        let cwd = spec.working_dir.clone().or_else(|| image.working_dir.clone()).filter(|w| !w.is_empty());
        let cwd = cwd.unwrap_or_else(|| "/".into());
        if !cwd.starts_with('/') {
            return Err(spec_error(format!("working directory {cwd:?} is not absolute")));
        }

        // IPC and UTS are the pod's (made by run_sandbox), as in Kubernetes; pid and mount
        // are each container's own.
        let ns = self.sandbox_dir(&sandbox.id).join("ns");
        let mut namespaces =
            vec![json!({"type": "pid"}), json!({"type": "mount"}), json!({"type": "ipc", "path": ns.join("ipc")})];
        if sandbox.network != NetworkMode::Host {
            namespaces.push(json!({"type": "uts", "path": ns.join("uts")}));
        }
        match &sandbox.network {
            NetworkMode::Host => {}
            NetworkMode::Isolated => namespaces.push(json!({"type": "network"})),
            NetworkMode::Namespace(p) => namespaces.push(json!({"type": "network", "path": p})),
        }
        let caps = [
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_FSETID",
            "CAP_FOWNER",
            "CAP_MKNOD",
            "CAP_NET_RAW",
            "CAP_SETGID",
            "CAP_SETUID",
            "CAP_SETFCAP",
            "CAP_SETPCAP",
            "CAP_NET_BIND_SERVICE",
            "CAP_SYS_CHROOT",
            "CAP_KILL",
            "CAP_AUDIT_WRITE",
        ];
        // Root gets the default set (as Docker and CRI-O give); others start with none
        // effective, as the kernel would after a setuid.
        let effective: &[&str] = if user.0 == 0 { &caps } else { &[] };
        Ok(json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": spec.tty,
                "user": {"uid": user.0, "gid": user.1},
                "args": args,
                "env": env,
                "cwd": cwd,
                "capabilities": {
                    "bounding": caps, "permitted": effective, "effective": effective,
                },
                "noNewPrivileges": false,
            },
            "root": {"path": "rootfs", "readonly": false},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                 "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                 "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
                {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                 "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
            ],
            "linux": {
                "cgroupsPath": self.cgroup_path(&sandbox.id, Some(id)),
                "namespaces": namespaces,
                "resources": resources_json(&spec.resources),
                "maskedPaths": [
                    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                    "/sys/firmware", "/sys/devices/virtual/powercap",
                ],
                "readonlyPaths": [
                    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
                ],
            },
        }))
    }

    /// The numeric user to run as: the spec's, else the image's `User` (numbers, or a
    /// name looked up in the image's /etc/passwd), else root.
    fn resolve_user(
        &self,
        spec: &ContainerSpec,
        passwd: impl FnOnce() -> Result<Vec<u8>, OsError>,
    ) -> Result<(u32, u32), RuntimeError> {
        if let Some(u) = spec.user {
            return Ok(u);
        }
        let Some(user) = spec.image.config.user.as_deref().filter(|u| !u.is_empty()) else {
            return Ok((0, 0));
        };
        let (name, group) = match user.split_once(':') {
            Some((n, g)) => (n, Some(g)),
            None => (user, None),
        };
        let passwd = passwd()?;
        let passwd = String::from_utf8_lossy(&passwd);
        let lookup = |n: &str| -> Option<(u32, u32)> {
            passwd.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() >= 4 && f[0] == n).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?))).flatten()
            })
        };
        let (uid, mut gid) = match name.parse::<u32>() {
            Ok(uid) => (uid, lookup_by_uid(&passwd, uid).unwrap_or(uid)),
            Err(_) => {
                lookup(name).ok_or_else(|| spec_error(format!("user {name:?} is not in the image's /etc/passwd")))?
            }
        };
        if let Some(g) = group {
            gid = g.parse().map_err(|_| spec_error(format!("only numeric groups are supported, not {g:?}")))?;
        }
        Ok((uid, gid))
    }

    fn new_container_id(sandbox_id: &str, name: &str) -> String {
        let mut h = Sha256::new();
        h.update(sandbox_id.as_bytes());
        h.update([0]);
        h.update(name.as_bytes());
        h.update(to_nanos(SystemTime::now()).to_le_bytes());
        h.update(std::process::id().to_le_bytes());
        h.finalize()[..12].iter().map(|b| format!("{b:02x}")).collect()
    }

    fn wait_exit(&self, dir: &Path, deadline: Instant) -> Result<Option<ExitRecord>, RuntimeError> {
        let mut pause = POLL;
        loop {
            if let Some(rec) = self.read_json::<ExitRecord>(&dir.join(EXIT_FILE))? {
                return Ok(Some(rec));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            // Never past the deadline, so the last look is at it.
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(POLL_MAX);
        }
    }

    fn status_of(&self, rec: &ContainerRecord) -> Result<ContainerStatus, RuntimeError> {
        let dir = self.container_dir(&rec.id);
        let known = self.records().started.get(&rec.id).cloned();
        let (shim, started) = match known {
            Some((shim, started)) => (Some(shim), Some(started)),
            None => {
                let shim: Option<ShimRecord> = self.read_json(&dir.join("shim.json"))?;
                let started: Option<StartRecord> = self.read_json(&dir.join("started.json"))?;
                if let (Some(s), Some(t)) = (&shim, &started) {
                    let mut records = self.records();
                    // Not for a container being removed (its record left the cache first).
                    if records.containers.contains_key(&rec.id) {
                        records.started.insert(rec.id.clone(), (s.clone(), t.clone()));
                    }
                }
                (shim, started)
            }
        };
        let exit: Option<ExitRecord> = self.read_json(&dir.join(EXIT_FILE))?;
        let (state, exit_code, reason, finished_at) = match (&exit, &shim) {
            (Some(e), _) => {
                let reason = if e.exit_code == 0 { "Completed" } else { "Error" };
                (
                    ContainerState::Exited,
                    Some(e.exit_code),
                    Some(reason.to_owned()),
                    Some(from_nanos(e.finished_at_nanos)),
                )
            }
            // The supervisor is alive: the container is as started (or not).
            (None, Some(s)) if self.os.process_alive(s.pid) => {
                let state = if started.is_some() { ContainerState::Running } else { ContainerState::Created };
                (state, None, None, None)
            }
            // Look again: the supervisor may have written the file as it exited.
            (None, Some(_)) => match self.read_json::<ExitRecord>(&dir.join(EXIT_FILE))? {
                Some(e) => (ContainerState::Exited, Some(e.exit_code), None, Some(from_nanos(e.finished_at_nanos))),
                None => (ContainerState::Unknown, None, Some("SupervisorLost".to_owned()), None),
            },
            (None, None) => (ContainerState::Unknown, None, Some("NoSupervisor".to_owned()), None),
        };
        Ok(ContainerStatus {
            id: rec.id.clone(),
            sandbox_id: rec.sandbox_id.clone(),
            name: rec.spec.name.clone(),
            image: rec.spec.image.reference.clone(),
            state,
            pid: shim.map(|s| s.container_pid).filter(|_| state != ContainerState::Exited),
            exit_code,
            reason,
            created_at: from_nanos(rec.created_at_nanos),
            started_at: started.map(|s| from_nanos(s.started_at_nanos)),
            finished_at,
            log_path: rec.log_path.clone(),
            ready: None,
        })
    }

    /// Undo a half-made container: unmount, drop cgroups and files. Best effort, used on
    /// failed creates and on removal.
    fn cleanup_container(&self, id: &str, sandbox_id: &str) -> Result<(), RuntimeError> {
        let mut records = self.records();
        records.containers.remove(id);
        records.started.remove(id);
        drop(records);
        let dir = self.container_dir(id);
        for m in self.os.mounts_under(&dir)? {
            self.os.unmount(&m)?;
        }
        self.remove_cgroup(&self.cgroup_path(sandbox_id, Some(id)))?;
        // The layer first: a layer without its container folder is an orphan the next start
        // removes, a container folder without its layer would be a broken container.
        self.remove_layer(id)?;
        match self.os.remove_dir_all(&dir) {
            Err(e) if !e.is_not_found() => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Unmount the pod's namespaces and delete its folder.
    fn cleanup_sandbox_dir(&self, id: &str) -> Result<(), RuntimeError> {
        self.records().sandboxes.remove(id);
        let dir = self.sandbox_dir(id);
        for m in self.os.mounts_under(&dir)? {
            self.os.unmount(&m)?;
        }
        match self.os.remove_dir_all(&dir) {
            Err(e) if !e.is_not_found() => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn remove_cgroup(&self, path: &str) -> Result<(), RuntimeError> {
        for h in self.os.cgroup_hierarchies(&self.config.cgroup_root)? {
            let dir = h.join(path.trim_start_matches('/'));
            match self.os.remove_dir(&dir) {
                Err(e) if !e.is_not_found() => return Err(e.into()),
                _ => {}
            }
        }
        Ok(())
    }

    /// Every cgroup folder (one per hierarchy) for a path, for tests and diagnostics.
    /// Create container `spec` in `sandbox_id`; with `start`, the runtime starts it at
    /// once (`run --detach`: one runtime process instead of `create` and then `start`).
    fn make_container(&self, sandbox_id: &str, spec: &ContainerSpec, start: bool) -> Result<String, RuntimeError> {
        let sandbox = self.sandbox_record(sandbox_id)?.spec.clone();
        if !valid_id(&spec.name) {
            return Err(spec_error(format!("container name {:?} must be letters, digits, - _ .", spec.name)));
        }
        if spec.image.layers.is_empty() {
            return Err(spec_error("the image has no layers"));
        }
        if spec.vm.is_some() {
            return Err(spec_error("a VM runs in the VM runtime, not in an OCI container"));
        }
        let id = Self::new_container_id(sandbox_id, &spec.name);
        let dir = self.container_dir(&id);
        let began = Instant::now();
        let mut steps = [0u64; 4];
        let mut lap = |i: usize| steps[i] = began.elapsed().as_micros() as u64;
        let result = (|| {
            let bundle = dir.join("bundle");
            let rootfs = bundle.join("rootfs");
            let layer = self.layer_dir(&id);
            let (upper, work) = (layer.join("upper"), layer.join("work"));
            for d in [&rootfs, &upper, &work] {
                self.os.create_dir_all(d)?;
            }
            let log_path = spec.log_path.clone().unwrap_or_else(|| dir.join("container.log"));
            let record = ContainerRecord {
                id: id.clone(),
                sandbox_id: sandbox_id.to_owned(),
                spec: spec.clone(),
                created_at_nanos: to_nanos(SystemTime::now()),
                log_path: log_path.clone(),
            };
            self.write_json(&dir.join("container.json"), &record)?;
            lap(0);
            // overlayfs lists the topmost lower layer first.
            let lower: Vec<PathBuf> = spec.image.layers.iter().rev().cloned().collect();
            lap(1);
            // The root file system is mounted by the shim, where only this container's runtime
            // sees it (`ShimArgs::rootfs_overlay`); a user name is looked up in a mount of our
            // own that is gone again before the shim mounts its.
            let user = self.resolve_user(spec, || {
                self.os.mount_overlay(&lower, &upper, &work, &rootfs)?;
                let passwd = self.os.read_file_in_root(&rootfs, Path::new("etc/passwd"));
                self.os.unmount(&rootfs)?;
                Ok(passwd?.unwrap_or_default())
            })?;
            let config = self.oci_spec(&sandbox, &id, spec, user)?;
            self.write_json(&bundle.join("config.json"), &config)?;
            if let Some(parent) = log_path.parent() {
                self.os.create_dir_all(parent)?;
            }
            let shim_args = ShimArgs {
                runtime: find_program(&self.config.runtime).unwrap_or_else(|| self.config.runtime.clone()),
                root: self.config.data_dir.join("runtime"),
                id: id.clone(),
                bundle,
                dir: dir.clone(),
                log: log_path,
                stdin: spec.stdin.then_some(spec.stdin_once),
                start,
                tty: spec.tty,
                rootfs_overlay: Some(crate::os::overlay_options(&lower, &upper, &work)),
            };
            if start {
                // Taken before the start, as `start_container` does; the record also tells
                // `status_of` the container is past `Created` once the shim has answered.
                let started_at = to_nanos(SystemTime::now());
                self.write_json(&dir.join("started.json"), &StartRecord { started_at_nanos: started_at })?;
            }
            let (program, lead) =
                self.config.shim.split_first().ok_or_else(|| spec_error("no shim command configured"))?;
            let mut args: Vec<OsString> = lead.to_vec();
            args.extend(shim_args.to_args());
            lap(2);
            let child = self.os.spawn_detached(Path::new(program), &args, &dir.join("shim.log"))?;
            lap(3);
            let container_pid = match child.first_line.strip_prefix("created ").map(str::parse::<u32>) {
                Some(Ok(pid)) => pid,
                _ => {
                    return Err(RuntimeError::Runtime {
                        op: "create",
                        id: id.clone(),
                        detail: child.first_line.trim_start_matches("error ").to_owned(),
                    });
                }
            };
            self.write_json(&dir.join("shim.json"), &ShimRecord { pid: child.pid, container_pid })
        })();
        match result {
            Ok(()) => {
                // Where a container's start goes (microseconds from the start of the create, each
                // step's end): folders and record, layer list (the mount is the shim's now), bundle,
                // shim + runtime.
                let [record_us, mount_us, bundle_us, shim_us] = steps;
                tracing::info!(container = %id, record_us, mount_us, bundle_us, shim_us, "container steps");
                Ok(id)
            }
            Err(e) => {
                let _ = self.runtime_cmd("delete", &id, &["delete", "--force", &id]);
                if let Err(cleanup) = self.cleanup_container(&id, sandbox_id) {
                    tracing::warn!(container = %id, error = %cleanup, "cleaning up after a failed create");
                }
                Err(e)
            }
        }
    }

    pub fn cgroup_dirs(&self, path: &str) -> Result<Vec<PathBuf>, OsError> {
        Ok(self
            .os
            .cgroup_hierarchies(&self.config.cgroup_root)?
            .into_iter()
            .map(|h| h.join(path.trim_start_matches('/')))
            .collect())
    }
}

fn lookup_by_uid(passwd: &str, uid: u32) -> Option<u32> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[2].parse() == Ok(uid)).then(|| f[3].parse().ok()).flatten()
    })
}

/// Kubernetes resources to OCI `linux.resources` (cgroup v1 units; runtimes convert for v2).
fn resources_json(r: &Resources) -> Value {
    let mut out = serde_json::Map::new();
    // Deny every device but the ones a container's /dev gets; runtimes add their defaults
    // after this rule.
    out.insert("devices".into(), json!([{"allow": false, "access": "rwm"}]));
    if let Some(limit) = r.memory_limit_bytes {
        out.insert("memory".into(), json!({"limit": limit}));
    }
    let mut cpu = serde_json::Map::new();
    if let Some(req) = r.cpu_request_millis {
        // Kubernetes' conversion: 1000m = 1024 shares, at least 2.
        cpu.insert("shares".into(), json!((req * 1024 / 1000).max(2)));
    }
    if let Some(lim) = r.cpu_limit_millis {
        cpu.insert("quota".into(), json!((lim * CPU_PERIOD / 1000).max(1000)));
        cpu.insert("period".into(), json!(CPU_PERIOD));
    }
    if !cpu.is_empty() {
        out.insert("cpu".into(), Value::Object(cpu));
    }
    Value::Object(out)
}

impl Runtime for OciRuntime {
    fn run_sandbox(&self, spec: &SandboxSpec) -> Result<SandboxStatus, RuntimeError> {
        if !valid_id(&spec.id) {
            return Err(spec_error(format!("sandbox id {:?} must be letters, digits, - _ .", spec.id)));
        }
        let dir = self.sandbox_dir(&spec.id);
        match self.sandbox_record(&spec.id) {
            Ok(_) => return Err(RuntimeError::AlreadyExists { kind: "sandbox", id: spec.id.clone() }),
            // A folder without a (readable) record: a create cut short by a crash, of the
            // agent or of the machine; what it made (namespace mounts) goes first.
            Err(RuntimeError::NotFound { .. }) if self.os.exists(&dir) => self.cleanup_sandbox_dir(&spec.id)?,
            Err(RuntimeError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        if let NetworkMode::Namespace(p) = &spec.network
            && !self.os.exists(p)
        {
            return Err(spec_error(format!("network namespace {} does not exist", p.display())));
        }
        let valid_hostname = !spec.hostname.is_empty()
            && spec.hostname.len() <= 64
            && spec.hostname.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid_hostname {
            return Err(spec_error(format!("hostname {:?} must be lowercase letters, digits, - and .", spec.hostname)));
        }
        let now = SystemTime::now();
        let result = (|| {
            self.os.create_dir_all(&dir.join("ns"))?;
            let uts = dir.join("ns/uts");
            // A host-network pod keeps the node's hostname, as in Kubernetes.
            let uts = (spec.network != NetworkMode::Host).then_some((uts.as_path(), spec.hostname.as_str()));
            self.os.create_namespaces(&dir.join("ns/ipc"), uts)?;
            self.write_json(
                &dir.join("sandbox.json"),
                &SandboxRecord { spec: spec.clone(), created_at_nanos: to_nanos(now) },
            )
        })();
        if let Err(e) = result {
            let _ = self.cleanup_sandbox_dir(&spec.id);
            return Err(e);
        }
        Ok(SandboxStatus { spec: spec.clone(), ready: true, created_at: now })
    }

    fn stop_sandbox(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.sandbox_record(id)?;
        for c in self.list_containers(Some(id))? {
            self.stop_container(&c.id, grace)?;
        }
        Ok(())
    }

    fn remove_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        if !valid_id(id) {
            return Ok(());
        }
        for c in self.list_containers(Some(id))? {
            self.remove_container(&c.id)?;
        }
        self.remove_cgroup(&self.cgroup_path(id, None))?;
        self.cleanup_sandbox_dir(id)
    }

    fn sandbox_status(&self, id: &str) -> Result<SandboxStatus, RuntimeError> {
        let rec = self.sandbox_record(id)?;
        Ok(SandboxStatus { spec: rec.spec.clone(), ready: true, created_at: from_nanos(rec.created_at_nanos) })
    }

    fn list_sandboxes(&self) -> Result<Vec<SandboxStatus>, RuntimeError> {
        let mut out = Vec::new();
        for id in self.os.list_dir(&self.config.data_dir.join("sandboxes"))? {
            // As in `list_containers`: the listing has seen the folder, and a record leaves the
            // cache before its folder goes. (Each new pod's first pass lists the sandboxes, to
            // remove its other incarnations: with a stat per sandbox, O(pods²) in a burst.)
            let cached = self.records().sandboxes.get(&id).cloned();
            let status = cached.map_or_else(
                || self.sandbox_status(&id),
                |rec| {
                    let created_at = from_nanos(rec.created_at_nanos);
                    Ok(SandboxStatus { spec: rec.spec.clone(), ready: true, created_at })
                },
            );
            match status {
                Ok(s) => out.push(s),
                // A folder without a record: a `run_sandbox` cut short by a crash, whose
                // namespace mounts may be in place. Listed (by ID alone, never ready) so that
                // the sweep removes it once no pod claims it.
                Err(RuntimeError::NotFound { .. }) if valid_id(&id) => out.push(SandboxStatus {
                    spec: SandboxSpec {
                        id,
                        name: String::new(),
                        namespace: String::new(),
                        tenant: String::new(),
                        hostname: String::new(),
                        network: NetworkMode::Isolated,
                        runtime_handler: String::new(),
                    },
                    ready: false,
                    created_at: SystemTime::UNIX_EPOCH,
                }),
                Err(RuntimeError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn create_container(&self, sandbox_id: &str, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        self.make_container(sandbox_id, spec, false)
    }

    fn run_container(&self, sandbox_id: &str, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        self.make_container(sandbox_id, spec, true)
    }

    fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        let rec = self.container_record(id)?;
        let status = self.status_of(&rec)?;
        if status.state != ContainerState::Created {
            return Err(RuntimeError::WrongState { id: id.into(), state: status.state, op: "start" });
        }
        // The time is taken before the start: a quick container may have exited (and its
        // supervisor written the finish time) before the runtime's start command returns.
        let started_at = SystemTime::now();
        self.runtime_cmd("start", id, &["start", id])?;
        let dir = self.container_dir(id);
        self.write_json(&dir.join("started.json"), &StartRecord { started_at_nanos: to_nanos(started_at) })
    }

    fn stop_container(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let rec = self.container_record(id)?;
        let dir = self.container_dir(id);
        let status = self.status_of(&rec)?;
        if matches!(status.state, ContainerState::Exited | ContainerState::Unknown) {
            return Ok(());
        }
        // A container that never started has no program to warn: kill it outright.
        if status.state == ContainerState::Running && !grace.is_zero() {
            let _ = self.runtime_cmd("kill", id, &["kill", id, Signal::Term.name()]);
            if self.wait_exit(&dir, Instant::now() + grace)?.is_some() {
                return Ok(());
            }
        }
        let _ = self.runtime_cmd("kill", id, &["kill", id, Signal::Kill.name()]);
        if self.wait_exit(&dir, Instant::now() + KILL_WAIT)?.is_some() {
            return Ok(());
        }
        // The runtime refused (its state gone?): signal the process ourselves.
        if let Some(pid) = status.pid {
            let _ = self.os.signal(pid, Signal::Kill);
        }
        match self.wait_exit(&dir, Instant::now() + KILL_WAIT)? {
            Some(_) => Ok(()),
            None => Err(RuntimeError::Unkillable { id: id.into(), after: KILL_WAIT * 2 }),
        }
    }

    fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        let rec = match self.container_record(id) {
            Ok(r) => r,
            Err(RuntimeError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.stop_container(id, Duration::ZERO)?;
        if let Err(e) = self.runtime_cmd("delete", id, &["delete", "--force", id])
            && self.os.exists(&self.config.data_dir.join("runtime").join(id))
        {
            return Err(e);
        }
        self.cleanup_container(id, &rec.sandbox_id)
    }

    fn container_status(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
        let rec = self.container_record(id)?;
        self.status_of(&rec)
    }

    fn list_containers(&self, sandbox_id: Option<&str>) -> Result<Vec<ContainerStatus>, RuntimeError> {
        let mut out = Vec::new();
        for id in self.os.list_dir(&self.config.data_dir.join("containers"))? {
            // The listing has just seen the folder, and a record leaves the cache before its
            // folder goes (`cleanup_container`): a cached record needs no look at its file.
            // (Checking it cost a stat per container on the node in every pod's sync pass.)
            let cached = self.records().containers.get(&id).cloned();
            let rec = match cached.map_or_else(|| self.container_record(&id), Ok) {
                Ok(r) => r,
                // A folder without a record is a create that crashed half-way; removal
                // of its sandbox sweeps it (see remove_sandbox's callers).
                Err(RuntimeError::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            if sandbox_id.is_none_or(|s| s == rec.sandbox_id) {
                out.push(self.status_of(&rec)?);
            }
        }
        out.sort_by_key(|c| c.created_at);
        Ok(out)
    }

    fn attach_socket(&self, id: &str) -> Option<PathBuf> {
        let path = self.container_dir(id).join(crate::shim::ATTACH_SOCKET);
        self.os.exists(&path).then_some(path)
    }

    fn exec_command(&self, id: &str, command: &[String]) -> Result<(PathBuf, Vec<OsString>), RuntimeError> {
        let rec = self.container_record(id)?;
        let status = self.status_of(&rec)?;
        if status.state != ContainerState::Running {
            return Err(RuntimeError::WrongState { id: id.into(), state: status.state, op: "exec" });
        }
        if command.is_empty() {
            return Err(spec_error("exec needs a command"));
        }
        // No `--tty`: the runtime would want a console socket; the agent hands the process
        // a terminal of its own as stdio instead. The environment is the container's.
        let mut args: Vec<OsString> = vec!["--root".into(), self.config.data_dir.join("runtime").into(), "exec".into()];
        let config: Option<Value> = self.read_json(&self.container_dir(id).join("bundle/config.json"))?;
        let env = config.as_ref().and_then(|c| c.pointer("/process/env")).and_then(Value::as_array);
        for e in env.into_iter().flatten().filter_map(Value::as_str) {
            args.push("--env".into());
            args.push(e.into());
        }
        args.push(id.into());
        args.extend(command.iter().map(OsString::from));
        Ok((self.config.runtime.clone(), args))
    }
}

/// Read the pid the runtime recorded, for diagnostics.
pub fn container_pid_file(data_dir: &Path, id: &str) -> PathBuf {
    data_dir.join("containers").join(id).join(PID_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::ContainerConfig;
    use crate::os::{Call, FakeOs};
    use crate::runtime::ImageRootfs;

    fn setup(handshake: &str) -> (Arc<FakeOs>, OciRuntime) {
        let os = Arc::new(FakeOs::new(handshake, vec![PathBuf::from("/cg/memory"), PathBuf::from("/cg/cpu")]));
        let mut cfg = OciConfig::new("/usr/bin/crun", vec!["/bin/atoll".into(), "shim".into()], "/data");
        cfg.cgroup_root = "/cg".into();
        // As the agent has them: records on a tmpfs, writable layers on a disk.
        cfg.layers_dir = "/disk/layers".into();
        let rt = OciRuntime::new(cfg, os.clone()).unwrap();
        (os, rt)
    }

    fn sandbox() -> SandboxSpec {
        SandboxSpec {
            id: "pod1".into(),
            name: "web".into(),
            namespace: "default".into(),
            tenant: "acme".into(),
            hostname: "web".into(),
            network: NetworkMode::Isolated,
            runtime_handler: String::new(),
        }
    }

    fn container() -> ContainerSpec {
        ContainerSpec {
            name: "main".into(),
            image: ImageRootfs {
                reference: "busybox".into(),
                layers: vec!["/img/l1".into(), "/img/l2".into()],
                config: ContainerConfig {
                    entrypoint: Some(vec!["/bin/ep".into()]),
                    cmd: Some(vec!["default".into()]),
                    env: Some(vec!["A=image".into(), "B=image".into()]),
                    working_dir: Some("/work".into()),
                    user: Some("65534".into()),
                },
            },
            command: None,
            args: Some(vec!["x".into()]),
            env: vec![("B".into(), "spec".into())],
            stdin: false,
            stdin_once: false,
            tty: false,
            working_dir: None,
            user: None,
            resources: Resources {
                cpu_request_millis: Some(250),
                cpu_limit_millis: Some(500),
                memory_limit_bytes: Some(64 << 20),
            },
            log_path: None,
            vm: None,
        }
    }

    #[test]
    fn create_builds_bundle_mounts_layers_topmost_first_and_starts_the_shim() {
        let (os, rt) = setup("created 4242");
        rt.run_sandbox(&sandbox()).unwrap();
        let id = rt.create_container("pod1", &container()).unwrap();
        let dir = PathBuf::from("/data/containers").join(&id);
        let calls = os.calls();
        // The shim mounts the root file system where only the container's runtime sees it;
        // the node's namespace has none when the shim starts (the image's numeric user was
        // looked up in /etc/passwd for its group, through a mount of its own, gone again).
        let spawned = calls.iter().position(|c| matches!(c, Call::SpawnDetached(_))).unwrap();
        let rootfs = dir.join("bundle/rootfs");
        let mounted = |c: &Call| matches!(c, Call::MountOverlay { target, .. } if *target == rootfs);
        let unmounted = |c: &Call| matches!(c, Call::Unmount(target) if *target == rootfs);
        let before = &calls[..spawned];
        assert_eq!(before.iter().filter(|c| mounted(c)).count(), before.iter().filter(|c| unmounted(c)).count());
        assert!(!os.mounts().contains(&rootfs), "{:?}", os.mounts());
        let shim =
            calls.iter().find_map(|c| if let Call::SpawnDetached(a) = c { Some(a.clone()) } else { None }).unwrap();
        assert_eq!(&shim[..4], &["/bin/atoll", "shim", "--runtime", "/usr/bin/crun"]);
        let overlay = shim.iter().position(|a| a == "--rootfs-overlay").map(|i| shim[i + 1].clone());
        let layer = Path::new("/disk/layers").join(&id);
        let want = format!("lowerdir=/img/l2:/img/l1,upperdir={0}/upper,workdir={0}/work", layer.display());
        assert_eq!(overlay, Some(want));
        assert!(shim.windows(2).any(|w| w[0] == "--bundle" && w[1] == dir.join("bundle").display().to_string()));
        let config: Value = serde_json::from_slice(&os.file(&dir.join("bundle/config.json")).unwrap()).unwrap();
        assert_eq!(config["process"]["args"], json!(["/bin/ep", "x"]));
        assert_eq!(config["process"]["cwd"], "/work");
        assert_eq!(config["process"]["user"], json!({"uid": 65534, "gid": 65534}));
        let env: Vec<String> = serde_json::from_value(config["process"]["env"].clone()).unwrap();
        assert!(env.contains(&"A=image".into()) && env.contains(&"B=spec".into()) && !env.contains(&"B=image".into()));
        assert_eq!(config["linux"]["cgroupsPath"], format!("/atoll/pod-pod1/{id}"));
        assert_eq!(config["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(config["linux"]["resources"]["cpu"], json!({"shares": 256, "quota": 50000, "period": 100000}));
        let namespaces = config["linux"]["namespaces"].as_array().unwrap();
        assert!(namespaces.contains(&json!({"type": "network"})));
        assert!(namespaces.contains(&json!({"type": "ipc", "path": "/data/sandboxes/pod1/ns/ipc"})));
        assert!(namespaces.contains(&json!({"type": "uts", "path": "/data/sandboxes/pod1/ns/uts"})));
        assert!(calls.contains(&Call::CreateNamespaces {
            ipc: "/data/sandboxes/pod1/ns/ipc".into(),
            uts: Some(("/data/sandboxes/pod1/ns/uts".into(), "web".into())),
        }));
        let status = rt.container_status(&id).unwrap();
        assert_eq!((status.state, status.pid), (ContainerState::Created, Some(4242)));
    }

    #[test]
    fn run_starts_through_the_shim_without_a_separate_start() {
        let (os, rt) = setup("created 4242");
        rt.run_sandbox(&sandbox()).unwrap();
        let id = rt.run_container("pod1", &container()).unwrap();
        let calls = os.calls();
        let shim =
            calls.iter().find_map(|c| if let Call::SpawnDetached(a) = c { Some(a.clone()) } else { None }).unwrap();
        assert!(shim.ends_with(&["--start".to_string(), "now".to_string()]), "{shim:?}");
        // No `crun start` process: the shim's `run --detach` started it.
        assert!(!calls.iter().any(|c| matches!(c, Call::Run(a) if a.iter().any(|x| x == "start"))), "{calls:?}");
        let status = rt.container_status(&id).unwrap();
        assert_eq!((status.state, status.pid), (ContainerState::Running, Some(4242)));
        assert!(status.started_at.is_some());
        assert!(matches!(rt.start_container(&id), Err(RuntimeError::WrongState { .. })));
    }

    #[test]
    fn a_failed_create_leaves_nothing_behind() {
        let (os, rt) = setup("error crun: no such file");
        rt.run_sandbox(&sandbox()).unwrap();
        let err = rt.create_container("pod1", &container()).unwrap_err();
        assert!(err.to_string().contains("no such file"), "{err}");
        let err = rt.run_container("pod1", &container()).unwrap_err();
        assert!(err.to_string().contains("no such file"), "{err}");
        assert_eq!(os.mounts().len(), 2, "only the sandbox's namespaces: {:?}", os.mounts());
        for top in [Path::new("/data/containers"), Path::new("/disk/layers")] {
            assert!(os.dirs().iter().all(|d| d == top || !d.starts_with(top)), "{:?}", os.dirs());
        }
        assert!(rt.list_containers(None).unwrap().is_empty());
    }

    #[test]
    fn a_writable_layer_goes_with_its_container_or_when_its_container_is_gone() {
        let (os, rt) = setup("created 7");
        rt.run_sandbox(&sandbox()).unwrap();
        let id = rt.create_container("pod1", &container()).unwrap();
        let layer = Path::new("/disk/layers").join(&id);
        assert!(os.dirs().contains(&layer.join("upper")), "{:?}", os.dirs());
        os.put_file(&rt.container_dir(&id).join(EXIT_FILE), br#"{"exit_code":0,"signal":null,"finished_at_nanos":1}"#);
        rt.remove_container(&id).unwrap();
        assert!(os.dirs().iter().all(|d| !d.starts_with(&layer)), "{:?}", os.dirs());

        // A reboot emptied the records' tmpfs: a layer without its container folder goes
        // when the runtime is opened; one whose folder is there stays.
        let kept = rt.create_container("pod1", &container()).unwrap();
        os.create_dir_all(&rt.container_dir(&kept)).unwrap();
        // (The fake makes no parent folders.)
        for d in ["/disk/layers/orphan", "/disk/layers/orphan/upper"] {
            os.create_dir_all(Path::new(d)).unwrap();
        }
        let mut cfg = rt.config.clone();
        cfg.cgroup_root = "/cg".into();
        let _reopened = OciRuntime::new(cfg, os.clone()).unwrap();
        assert!(os.calls().contains(&Call::RemoveDirAll("/disk/layers/orphan".into())), "{:?}", os.calls());
        let kept_layer = Path::new("/disk/layers").join(&kept);
        assert!(!os.calls().contains(&Call::RemoveDirAll(kept_layer.clone())));
        assert!(os.dirs().contains(&kept_layer.join("upper")));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let (_os, rt) = setup("created 1");
        let mut bad = sandbox();
        bad.id = "../etc".into();
        assert!(matches!(rt.run_sandbox(&bad), Err(RuntimeError::InvalidSpec(_))));
        let mut bad = sandbox();
        bad.hostname = "Bad Host".into();
        assert!(matches!(rt.run_sandbox(&bad), Err(RuntimeError::InvalidSpec(_))));
        rt.run_sandbox(&sandbox()).unwrap();
        assert!(matches!(rt.run_sandbox(&sandbox()), Err(RuntimeError::AlreadyExists { .. })));
        let mut c = container();
        c.image.config = ContainerConfig::default();
        c.args = None;
        assert!(matches!(rt.create_container("pod1", &c), Err(RuntimeError::InvalidSpec(_))));
        assert!(matches!(rt.create_container("nope", &container()), Err(RuntimeError::NotFound { .. })));
        assert!(matches!(rt.container_status("../x"), Err(RuntimeError::NotFound { .. })));
        rt.remove_container("absent").unwrap();
    }

    #[test]
    fn removing_a_sandbox_removes_its_containers_and_pod_cgroups() {
        let (os, rt) = setup("created 7");
        rt.run_sandbox(&sandbox()).unwrap();
        let id = rt.create_container("pod1", &container()).unwrap();
        // Pretend the supervisor recorded an exit so removal need not wait.
        let dir = PathBuf::from("/data/containers").join(&id);
        os.put_file(&dir.join(EXIT_FILE), br#"{"exit_code":0,"signal":null,"finished_at_nanos":1}"#);
        rt.remove_sandbox("pod1").unwrap();
        assert!(os.mounts().is_empty(), "{:?}", os.mounts());
        let calls = os.calls();
        assert!(calls.contains(&Call::Unmount("/data/sandboxes/pod1/ns/ipc".into())));
        assert!(calls.contains(&Call::RemoveDir(PathBuf::from("/cg/memory/atoll/pod-pod1"))));
        assert!(calls.contains(&Call::RemoveDir(PathBuf::from(format!("/cg/cpu/atoll/pod-pod1/{id}")))));
        assert!(rt.list_sandboxes().unwrap().is_empty());
    }

    #[test]
    fn a_sandbox_cut_short_by_a_crash_is_listed_and_removable() {
        let (os, rt) = setup("created 7");
        // The namespaces were mounted, the record never written.
        os.create_dir_all(Path::new("/data/sandboxes/pod2")).unwrap();
        os.put_file(Path::new("/data/sandboxes/pod2/ns/ipc"), b"");
        let listed = rt.list_sandboxes().unwrap();
        assert_eq!(listed.iter().map(|s| (s.spec.id.as_str(), s.ready)).collect::<Vec<_>>(), [("pod2", false)]);
        assert!(matches!(rt.sandbox_status("pod2"), Err(RuntimeError::NotFound { .. })));
        rt.remove_sandbox("pod2").unwrap();
        assert!(os.calls().contains(&Call::RemoveDirAll(PathBuf::from("/data/sandboxes/pod2"))), "{:?}", os.calls());
    }
}
