//! VM-sandboxed container pods (runtimeClassName `vm` on an ordinary container pod): one
//! microVM per pod (`qemu -M microvm`, booted from our kernel + the guest initramfs of
//! [`crate::sandbox_image`]) whose guest agent (`atoll-guest`) runs the pod's containers.
//! The host end is the sandbox shim ([`crate::sandbox_shim`], `atoll shim sandbox`), which
//! owns qemu and the guest's virtio-serial port and outlives agent restarts.
//!
//! - The VM boots with the pod's first container (the image's disk must be known at boot:
//!   `-M microvm` has no hot-plug). Its root file system disk (ext4 of the merged layers,
//!   cached per layer chain) is attached read-only; the guest gives each container attempt
//!   an overlay with a tmpfs upper. Later containers of the pod must use the same image.
//! - Sizing: vCPUs and memory from the first container's limits (default 1 vCPU, 128 MiB),
//!   plus [`api::vm::SANDBOX_GUEST_HEADROOM_MIB`] for the guest kernel and agent.
//! - State on disk only: `<data>/<sandbox>/sandbox.json`; `<data>/<sandbox>/vm/` (the
//!   shim's folder: `vm.json`, `shim.json`, `ctl.sock`, `guest.sock`, `qmp`, `ready`,
//!   `console.log`, `exit.json`); `<data>/<sandbox>/<n>/` per container attempt
//!   (`container.json`, and from the shim `started.json`, `exit.json`, `error`). A
//!   container's ID is `<sandbox>.<n>`, its guest stream `n + 1`.
//! - Containers get no network (as VM pods: a tap on the pod network is later work).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::super::{
    ContainerSpec, ContainerState, ContainerStatus, Runtime, RuntimeError, SandboxSpec, SandboxStatus, valid_id,
};
use crate::os::{Os, Signal};
use crate::sandbox_shim::{CONTROL_SOCKET, ERROR_FILE, GUEST_SOCKET, START_ERROR_CODE, STARTED_FILE};
use crate::shim::{EXIT_FILE, ExitRecord};
use crate::timefmt::{from_nanos, to_nanos};

/// `SandboxSpec::runtime_handler` of VM-sandboxed container pods (the agent maps
/// runtimeClassName `vm` on a container pod to it).
pub const HANDLER: &str = "vm-sandbox";
const EXIT_WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct SandboxConfig {
    pub data_dir: PathBuf,
    pub qemu: PathBuf,
    /// The supervisor command (`<atoll> shim`); `sandbox ...` is appended.
    pub shim: Vec<OsString>,
    pub kernel: PathBuf,
    /// Give the guest ACPI tables. Debian's kernel finds its virtio-mmio devices there (its
    /// modules cannot take them from the command line); our minimal kernel boots faster
    /// without them: with `acpi=off` qemu names the devices on the kernel command line.
    pub acpi: bool,
    /// The guest initramfs ([`crate::sandbox_image::guest_initramfs`]).
    pub initrd: PathBuf,
    /// `tcg` or `kvm`.
    pub accel: &'static str,
    pub tsc_khz: Option<u64>,
    pub cgroup_root: PathBuf,
    pub cgroup_parent: String,
}

pub struct SandboxRuntime {
    config: SandboxConfig,
    os: Arc<dyn Os>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SandboxRecord {
    spec: SandboxSpec,
    created_at_nanos: u64,
}

/// The machine, written when it is booted.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct MachineRecord {
    /// The root file system disk (`vda`).
    disk: PathBuf,
    vcpus: u32,
    memory_mib: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ShimRecord {
    pid: u32,
    qemu_pid: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ContainerRecord {
    id: String,
    sandbox_id: String,
    name: String,
    image: String,
    log_path: PathBuf,
    stream: u32,
    /// The guest's `run` message.
    run: serde_json::Value,
    created_at_nanos: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct StartRecord {
    started_at_nanos: u64,
}

fn spec_error(msg: impl Into<String>) -> RuntimeError {
    RuntimeError::InvalidSpec(msg.into())
}

/// The command line a container runs, as the OCI runtime builds it (command replaces the
/// entrypoint and drops cmd; args replace cmd).
fn process_args(spec: &ContainerSpec) -> Vec<String> {
    let image = &spec.image.config;
    match (&spec.command, &spec.args) {
        (Some(cmd), args) => cmd.iter().chain(args.iter().flatten()).cloned().collect(),
        (None, Some(args)) => image.entrypoint.iter().flatten().chain(args).cloned().collect(),
        (None, None) => image.entrypoint.iter().flatten().chain(image.cmd.iter().flatten()).cloned().collect(),
    }
}

/// The image's `User` as numbers: numeric, or looked up in the topmost layer's
/// `/etc/passwd` (and `/etc/group`) that has one.
fn image_user(spec: &ContainerSpec) -> Result<(u32, u32), RuntimeError> {
    if let Some(u) = spec.user {
        return Ok(u);
    }
    let Some(user) = spec.image.config.user.as_deref().filter(|u| !u.is_empty()) else { return Ok((0, 0)) };
    let (name, group) = user.split_once(':').map_or((user, None), |(u, g)| (u, Some(g)));
    let lookup = |file: &str, name: &str, field: usize| -> Option<u32> {
        if let Ok(n) = name.parse() {
            return Some(n);
        }
        let text = spec.image.layers.iter().rev().find_map(|l| std::fs::read_to_string(l.join(file)).ok())?;
        text.lines().map(|l| l.split(':').collect::<Vec<_>>()).find(|f| f[0] == name)?.get(field)?.parse().ok()
    };
    let uid = lookup("etc/passwd", name, 2).ok_or_else(|| spec_error(format!("user {name:?} is not in the image")))?;
    let gid = match group {
        Some(g) => lookup("etc/group", g, 2).ok_or_else(|| spec_error(format!("group {g:?} is not in the image")))?,
        None => lookup("etc/passwd", name, 3).unwrap_or(uid),
    };
    Ok((uid, gid))
}

impl SandboxRuntime {
    pub fn new(config: SandboxConfig, os: Arc<dyn Os>) -> Result<SandboxRuntime, RuntimeError> {
        os.create_dir_all(&config.data_dir)?;
        Ok(SandboxRuntime { config, os })
    }

    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.config.data_dir.join(id)
    }

    fn vm_dir(&self, sandbox: &str) -> PathBuf {
        self.sandbox_dir(sandbox).join("vm")
    }

    fn container_dir(&self, id: &str) -> Option<(String, PathBuf)> {
        let (sandbox, n) = id.rsplit_once('.')?;
        (valid_id(sandbox) && n.parse::<u32>().is_ok())
            .then(|| (sandbox.to_string(), self.sandbox_dir(sandbox).join(n)))
    }

    fn read_json<T: for<'de> Deserialize<'de>>(&self, path: &Path) -> Result<Option<T>, RuntimeError> {
        crate::runtime::read_record(&*self.os, path)
    }

    fn write_json(&self, path: &Path, value: &impl Serialize) -> Result<(), RuntimeError> {
        crate::runtime::write_record(&*self.os, path, value)
    }

    fn sandbox_record(&self, id: &str) -> Result<SandboxRecord, RuntimeError> {
        if !valid_id(id) {
            return Err(RuntimeError::NotFound { kind: "sandbox", id: id.into() });
        }
        self.read_json(&self.sandbox_dir(id).join("sandbox.json"))?
            .ok_or_else(|| RuntimeError::NotFound { kind: "sandbox", id: id.into() })
    }

    fn container_record(&self, id: &str) -> Result<(PathBuf, ContainerRecord), RuntimeError> {
        let not_found = || RuntimeError::NotFound { kind: "container", id: id.into() };
        let (_, dir) = self.container_dir(id).ok_or_else(not_found)?;
        let rec = self.read_json(&dir.join("container.json"))?.ok_or_else(not_found)?;
        Ok((dir, rec))
    }

    fn attempts(&self, sandbox: &str) -> Result<Vec<u32>, RuntimeError> {
        crate::runtime::attempt_numbers(&*self.os, &self.sandbox_dir(sandbox))
    }

    /// The shim, if the machine was booted and the shim still runs.
    fn live_shim(&self, sandbox: &str) -> Result<Option<ShimRecord>, RuntimeError> {
        let dir = self.vm_dir(sandbox);
        Ok(self
            .read_json::<ShimRecord>(&dir.join("shim.json"))?
            .filter(|s| !self.os.exists(&dir.join(EXIT_FILE)) && self.os.process_alive(s.pid)))
    }

    fn qemu_args(&self, sandbox: &SandboxSpec, dir: &Path, m: &MachineRecord) -> Vec<OsString> {
        // Boot work a one-tenant guest does not need, measured to cost ~10% of the boot's
        // CPU under TCG (BENCHMARKS.md): page zeroing, KASLR, self-tests, LSMs, PCI probing.
        // The isolation boundary is the VM, not the guest kernel's hardening.
        let mut cmdline = String::from(
            "console=ttyS0 panic=-1 quiet mitigations=off init_on_alloc=0 init_on_free=0 nokaslr no_timer_check \
             cryptomgr.notests random.trust_cpu=on audit=0 pci=off lsm=capability page_alloc.shuffle=0",
        );
        if let Some(khz) = self.config.tsc_khz {
            cmdline.push_str(&format!(" tsc_early_khz={khz}"));
        }
        cmdline.push_str(&format!(" atoll.hostname={}", sandbox.hostname));
        let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let accel = if self.config.accel == "tcg" {
            // TCG's translation cache is most of qemu's own memory: keep it small.
            format!("tcg,tb-size={}", api::vm::SANDBOX_TCG_CACHE_MIB)
        } else {
            "kvm".into()
        };
        let args: Vec<String> = vec![
            "-name".into(),
            format!("atoll-sandbox-{}", sandbox.id),
            "-M".into(),
            if self.config.acpi { "microvm" } else { "microvm,acpi=off" }.into(),
            "-accel".into(),
            accel,
            "-smp".into(),
            m.vcpus.to_string(),
            "-m".into(),
            format!("{}M", m.memory_mib),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-no-reboot".into(),
            "-display".into(),
            "none".into(),
            "-serial".into(),
            "stdio".into(),
            "-monitor".into(),
            "none".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", path("qmp")),
            "-kernel".into(),
            self.config.kernel.to_string_lossy().into_owned(),
            "-initrd".into(),
            self.config.initrd.to_string_lossy().into_owned(),
            "-append".into(),
            cmdline,
            "-chardev".into(),
            format!("socket,id=guest,path={},server=on,wait=off", path(GUEST_SOCKET)),
            "-device".into(),
            "virtio-serial-device".into(),
            "-device".into(),
            format!("virtserialport,chardev=guest,name={}", guest::proto::PORT_NAME),
            "-drive".into(),
            format!("id=root,file={},format=raw,if=none,readonly=on", m.disk.to_string_lossy()),
            "-device".into(),
            "virtio-blk-device,drive=root".into(),
        ];
        args.into_iter().map(OsString::from).collect()
    }

    fn cgroup_path(&self, sandbox: &str, leaf: bool) -> PathBuf {
        let pod = PathBuf::from(&self.config.cgroup_parent).join(format!("pod-{sandbox}"));
        if leaf { pod.join("sandbox") } else { pod }
    }

    /// Boots the machine for `spec`'s image (the pod's first container).
    fn boot(&self, sandbox: &SandboxSpec, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        let dir = self.vm_dir(&sandbox.id);
        self.os.create_dir_all(&dir)?;
        let disk =
            crate::sandbox_image::rootfs_image(&*self.os, &spec.image.layers, &self.config.data_dir.join("rootfs"))
                .map_err(|e| RuntimeError::Runtime {
                    op: "make the root disk",
                    id: sandbox.id.clone(),
                    detail: e.to_string(),
                })?;
        let limits = &spec.resources;
        let memory_mib = limits.memory_limit_bytes.map_or(api::vm::SANDBOX_DEFAULT_MEMORY_MIB, |b| (b >> 20).max(16))
            + api::vm::SANDBOX_GUEST_HEADROOM_MIB;
        let vcpus = limits.cpu_limit_millis.map_or(1, |m| m.div_ceil(1000).max(1)) as u32;
        let machine = MachineRecord { disk, vcpus, memory_mib };
        self.write_json(&dir.join("vm.json"), &machine)?;
        let (program, lead) = self.config.shim.split_first().ok_or_else(|| spec_error("no shim command configured"))?;
        let mut args: Vec<OsString> = lead.to_vec();
        args.extend(["sandbox".into(), "--dir".into(), dir.clone().into(), "--".into()]);
        args.push(self.config.qemu.clone().into());
        args.extend(self.qemu_args(sandbox, &dir, &machine));
        let child = self.os.spawn_detached(Path::new(program), &args, &dir.join("shim.log"))?;
        let qemu_pid = match child.first_line.strip_prefix("created ").map(str::parse::<u32>) {
            Some(Ok(pid)) => pid,
            _ => {
                return Err(RuntimeError::Runtime {
                    op: "boot",
                    id: sandbox.id.clone(),
                    detail: child.first_line.trim_start_matches("error ").to_owned(),
                });
            }
        };
        self.write_json(&dir.join("shim.json"), &ShimRecord { pid: child.pid, qemu_pid })?;
        for h in self.os.cgroup_hierarchies(&self.config.cgroup_root)? {
            let cg = h.join(self.cgroup_path(&sandbox.id, true));
            let placed = self
                .os
                .create_dir_all(&cg)
                .and_then(|()| self.os.write_control_file(&cg.join("cgroup.procs"), qemu_pid.to_string().as_bytes()));
            if let Err(e) = placed {
                tracing::warn!(sandbox = sandbox.id, error = %e, "placing qemu in its cgroup");
            }
        }
        tracing::info!(sandbox = sandbox.id, vcpus, memory_mib, "sandbox VM booting");
        Ok(())
    }

    fn wait_shim_exit(&self, sandbox: &str, shim: &ShimRecord, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let exit = self.vm_dir(sandbox).join(EXIT_FILE);
        loop {
            if self.os.exists(&exit) || !self.os.process_alive(shim.pid) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Ends the machine: QMP `quit`, then SIGKILL to qemu.
    fn halt(&self, sandbox: &str) -> Result<(), RuntimeError> {
        let Some(shim) = self.live_shim(sandbox)? else { return Ok(()) };
        let qmp = self.vm_dir(sandbox).join("qmp");
        if let Err(e) = super::qmp::Qmp::connect(&qmp, Duration::from_secs(2)).and_then(|mut q| q.quit()) {
            tracing::warn!(sandbox, error = %e, "quit");
        }
        if self.wait_shim_exit(sandbox, &shim, Duration::from_secs(3)) {
            return Ok(());
        }
        let _ = self.os.signal(shim.qemu_pid, Signal::Kill);
        if self.wait_shim_exit(sandbox, &shim, EXIT_WAIT) {
            Ok(())
        } else {
            Err(RuntimeError::Unkillable { id: sandbox.into(), after: EXIT_WAIT })
        }
    }

    fn ctl(&self, sandbox: &str, msg: &serde_json::Value, timeout: Duration) -> Result<serde_json::Value, String> {
        crate::sandbox_shim::request(&self.vm_dir(sandbox).join(CONTROL_SOCKET), msg, timeout)
    }

    fn wait_container_exit(&self, dir: &Path, sandbox: &str, within: Duration) -> Result<bool, RuntimeError> {
        let deadline = Instant::now() + within;
        loop {
            if self.os.exists(&dir.join(EXIT_FILE)) || self.live_shim(sandbox)?.is_none() {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Runtime for SandboxRuntime {
    fn run_sandbox(&self, spec: &SandboxSpec) -> Result<SandboxStatus, RuntimeError> {
        if !valid_id(&spec.id) {
            return Err(spec_error(format!("invalid sandbox id {:?}", spec.id)));
        }
        if self.sandbox_record(&spec.id).is_ok() {
            return Err(RuntimeError::AlreadyExists { kind: "sandbox", id: spec.id.clone() });
        }
        let dir = self.sandbox_dir(&spec.id);
        self.os.create_dir_all(&dir)?;
        let now = SystemTime::now();
        self.write_json(
            &dir.join("sandbox.json"),
            &SandboxRecord { spec: spec.clone(), created_at_nanos: to_nanos(now) },
        )?;
        Ok(SandboxStatus { spec: spec.clone(), ready: true, created_at: now })
    }

    fn stop_sandbox(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.sandbox_record(id)?;
        for n in self.attempts(id)? {
            self.stop_container(&format!("{id}.{n}"), grace)?;
        }
        self.halt(id)
    }

    fn remove_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        if !valid_id(id) || !self.os.exists(&self.sandbox_dir(id)) {
            return Ok(());
        }
        self.halt(id)?;
        for h in self.os.cgroup_hierarchies(&self.config.cgroup_root)? {
            for leaf in [true, false] {
                match self.os.remove_dir(&h.join(self.cgroup_path(id, leaf))) {
                    Err(e) if !e.is_not_found() => return Err(e.into()),
                    _ => {}
                }
            }
        }
        match self.os.remove_dir_all(&self.sandbox_dir(id)) {
            Err(e) if !e.is_not_found() => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn sandbox_status(&self, id: &str) -> Result<SandboxStatus, RuntimeError> {
        let rec = self.sandbox_record(id)?;
        Ok(SandboxStatus { spec: rec.spec, ready: true, created_at: from_nanos(rec.created_at_nanos) })
    }

    fn list_sandboxes(&self) -> Result<Vec<SandboxStatus>, RuntimeError> {
        let mut out = Vec::new();
        for id in self.os.list_dir(&self.config.data_dir)? {
            if let Ok(s) = self.sandbox_status(&id) {
                out.push(s);
            }
        }
        Ok(out)
    }

    fn create_container(&self, sandbox_id: &str, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let sandbox = self.sandbox_record(sandbox_id)?.spec;
        if spec.vm.is_some() {
            return Err(spec_error("a VM pod's machine does not run in a VM sandbox"));
        }
        let args = process_args(spec);
        if args.is_empty() {
            return Err(spec_error(format!("container {:?} has no command: the image sets none", spec.name)));
        }
        let mut env = vec![format!("HOSTNAME={}", sandbox.hostname)];
        for kv in spec.image.config.env.iter().flatten() {
            env.push(kv.clone());
        }
        for (k, v) in &spec.env {
            if k.is_empty() || k.contains('=') {
                return Err(spec_error(format!("invalid environment variable name {k:?}")));
            }
            env.push(format!("{k}={v}"));
        }
        let (uid, gid) = image_user(spec)?;
        let machine: Option<MachineRecord> = self.read_json(&self.vm_dir(sandbox_id).join("vm.json"))?;
        match machine {
            None => self.boot(&sandbox, spec)?,
            Some(m) => {
                let key = crate::sandbox_image::chain_key(&spec.image.layers);
                if !m.disk.file_name().is_some_and(|f| f.to_string_lossy().starts_with(&key)) {
                    return Err(spec_error(
                        "the containers of a VM-sandboxed pod must share one image (the microVM has no disk hot-plug)",
                    ));
                }
            }
        }
        let n = self.attempts(sandbox_id)?.last().map_or(0, |n| n + 1);
        let id = format!("{sandbox_id}.{n}");
        let dir = self.sandbox_dir(sandbox_id).join(n.to_string());
        self.os.create_dir_all(&dir)?;
        let log_path = spec.log_path.clone().unwrap_or_else(|| dir.join("container.log"));
        if let Some(parent) = log_path.parent() {
            self.os.create_dir_all(parent)?;
        }
        let cwd = spec.working_dir.clone().or_else(|| spec.image.config.working_dir.clone()).unwrap_or_default();
        let run = json!({"op": "run", "disk": "vda", "args": args, "env": env, "cwd": cwd, "uid": uid, "gid": gid});
        let rec = ContainerRecord {
            id: id.clone(),
            sandbox_id: sandbox_id.into(),
            name: spec.name.clone(),
            image: spec.image.reference.clone(),
            log_path,
            stream: n + 1,
            run,
            created_at_nanos: to_nanos(SystemTime::now()),
        };
        self.write_json(&dir.join("container.json"), &rec)?;
        Ok(id)
    }

    fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        let (dir, rec) = self.container_record(id)?;
        if self.os.exists(&dir.join(STARTED_FILE)) || self.os.exists(&dir.join(EXIT_FILE)) {
            let state = self.container_status(id)?.state;
            return Err(RuntimeError::WrongState { id: id.into(), state, op: "start" });
        }
        let msg = json!({
            "op": "run", "stream": rec.stream, "dir": dir, "log": rec.log_path, "run": rec.run,
        });
        // Waits for the guest to boot (the first container) and to start the process.
        let reply = self.ctl(&rec.sandbox_id, &msg, crate::sandbox_shim::BOOT_TIMEOUT + Duration::from_secs(35));
        match reply {
            Ok(r) if r["ok"] == true => Ok(()),
            Ok(r) => {
                let detail = r["error"].as_str().unwrap_or("no reason").to_string();
                // As a container that could not start: it ended, with StartError's code.
                self.os.write_file_atomic(&dir.join(ERROR_FILE), detail.as_bytes())?;
                let exit = ExitRecord {
                    exit_code: START_ERROR_CODE,
                    signal: None,
                    finished_at_nanos: to_nanos(SystemTime::now()),
                };
                self.write_json(&dir.join(EXIT_FILE), &exit)?;
                Err(RuntimeError::Runtime { op: "start", id: id.into(), detail })
            }
            Err(detail) => Err(RuntimeError::Runtime { op: "start", id: id.into(), detail }),
        }
    }

    fn stop_container(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let (dir, rec) = self.container_record(id)?;
        if self.wait_container_exit(&dir, &rec.sandbox_id, Duration::ZERO)? {
            return Ok(());
        }
        if !self.os.exists(&dir.join(STARTED_FILE)) {
            return Ok(());
        }
        for (signal, within) in [(15, grace), (9, EXIT_WAIT)] {
            if signal == 15 && grace.is_zero() {
                continue;
            }
            let msg = json!({"op": "signal", "stream": rec.stream, "signal": signal});
            if let Err(e) = self.ctl(&rec.sandbox_id, &msg, Duration::from_secs(5)) {
                tracing::warn!(container = id, error = %e, "signalling");
            }
            if self.wait_container_exit(&dir, &rec.sandbox_id, within)? {
                return Ok(());
            }
        }
        // The guest does not answer: end the machine, and the container with it.
        self.halt(&rec.sandbox_id)
    }

    fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        let dir = match self.container_record(id) {
            Ok((dir, _)) => dir,
            Err(RuntimeError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.stop_container(id, Duration::ZERO)?;
        match self.os.remove_dir_all(&dir) {
            Err(e) if !e.is_not_found() => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn container_status(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
        let (dir, rec) = self.container_record(id)?;
        let exit: Option<ExitRecord> = self.read_json(&dir.join(EXIT_FILE))?;
        let started: Option<StartRecord> = self.read_json(&dir.join(STARTED_FILE))?;
        let state = match (&exit, &started) {
            (Some(_), _) => ContainerState::Exited,
            (None, None) => ContainerState::Created,
            (None, Some(_)) if self.live_shim(&rec.sandbox_id)?.is_some() => ContainerState::Running,
            (None, Some(_)) => ContainerState::Unknown,
        };
        let failed_start = self.os.exists(&dir.join(ERROR_FILE));
        Ok(ContainerStatus {
            id: id.into(),
            sandbox_id: rec.sandbox_id,
            name: rec.name,
            image: rec.image,
            state,
            // The process lives in the guest: no host PID is its.
            pid: None,
            exit_code: exit.as_ref().map(|e| e.exit_code),
            reason: exit.as_ref().map(|e| {
                match (failed_start, e.exit_code) {
                    (true, _) => "StartError",
                    (false, 0) => "Completed",
                    _ => "Error",
                }
                .into()
            }),
            created_at: from_nanos(rec.created_at_nanos),
            started_at: started.map(|s| from_nanos(s.started_at_nanos)),
            finished_at: exit.map(|e| from_nanos(e.finished_at_nanos)),
            log_path: rec.log_path,
            ready: None,
        })
    }

    fn list_containers(&self, sandbox_id: Option<&str>) -> Result<Vec<ContainerStatus>, RuntimeError> {
        let sandboxes = match sandbox_id {
            Some(s) => vec![s.to_string()],
            None => self.list_sandboxes()?.into_iter().map(|s| s.spec.id).collect(),
        };
        let mut out = Vec::new();
        for s in sandboxes.iter().filter(|s| valid_id(s)) {
            for n in self.attempts(s)? {
                match self.container_status(&format!("{s}.{n}")) {
                    Ok(c) => out.push(c),
                    Err(RuntimeError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(out)
    }

    /// `kubectl exec` runs `atoll shim sandbox-exec`, which relays its stdio to the guest
    /// agent through the sandbox's shim.
    fn exec_command(&self, id: &str, command: &[String]) -> Result<(PathBuf, Vec<OsString>), RuntimeError> {
        let (_, rec) = self.container_record(id)?;
        let status = self.container_status(id)?;
        if status.state != ContainerState::Running {
            return Err(RuntimeError::WrongState { id: id.into(), state: status.state, op: "exec" });
        }
        let (program, lead) = self.config.shim.split_first().ok_or_else(|| spec_error("no shim command configured"))?;
        let mut args: Vec<OsString> = lead.to_vec();
        args.extend(["sandbox-exec".into(), "--ctl".into()]);
        args.push(self.vm_dir(&rec.sandbox_id).join(CONTROL_SOCKET).into());
        args.extend(["--container".into(), rec.stream.to_string().into(), "--".into()]);
        args.extend(command.iter().map(OsString::from));
        Ok((PathBuf::from(program), args))
    }

    fn attach_socket(&self, _id: &str) -> Option<PathBuf> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::{Call, FakeOs};

    fn config() -> SandboxConfig {
        SandboxConfig {
            data_dir: "/sbx".into(),
            qemu: "qemu-system-x86_64".into(),
            shim: vec!["/bin/atoll".into(), "shim".into()],
            kernel: "/k/vmlinuz".into(),
            acpi: false,
            initrd: "/k/guest.cpio".into(),
            accel: "tcg",
            tsc_khz: Some(2_000_000),
            cgroup_root: "/sys/fs/cgroup".into(),
            cgroup_parent: "atoll".into(),
        }
    }

    #[test]
    fn the_microvm_is_small_and_read_only_on_its_image() {
        let os = Arc::new(FakeOs::new("created 4242", vec![]));
        let rt = SandboxRuntime::new(config(), os.clone()).unwrap();
        let sandbox = SandboxSpec {
            id: "pod1".into(),
            name: "p".into(),
            namespace: "default".into(),
            tenant: "acme".into(),
            hostname: "p".into(),
            network: super::super::super::NetworkMode::Isolated,
            runtime_handler: HANDLER.into(),
        };
        rt.run_sandbox(&sandbox).unwrap();
        let m = MachineRecord { disk: "/sbx/rootfs/abc.ext4".into(), vcpus: 2, memory_mib: 192 };
        let args: Vec<String> =
            rt.qemu_args(&sandbox, Path::new("/sbx/pod1/vm"), &m).iter().map(|a| a.to_string_lossy().into()).collect();
        let line = args.join(" ");
        for part in [
            "-M microvm,acpi=off",
            "-accel tcg,tb-size=",
            "-smp 2 -m 192M",
            "-no-reboot",
            "atoll.hostname=p",
            "tsc_early_khz=2000000",
            "-chardev socket,id=guest,path=/sbx/pod1/vm/guest.sock,server=on,wait=off",
            "virtserialport,chardev=guest,name=atoll.0",
            "id=root,file=/sbx/rootfs/abc.ext4,format=raw,if=none,readonly=on",
        ] {
            assert!(line.contains(part), "{part:?} missing from {line}");
        }
        // Nothing ran yet: the machine boots with the first container.
        assert!(!os.calls().iter().any(|c| matches!(c, Call::SpawnDetached(_))));
        // Debian's kernel finds its devices in the ACPI tables.
        let debian = SandboxRuntime::new(SandboxConfig { acpi: true, ..config() }, os.clone()).unwrap();
        let args = debian.qemu_args(&sandbox, Path::new("/sbx/pod1/vm"), &m);
        assert!(args.windows(2).any(|w| w[0] == "-M" && w[1] == "microvm"), "{args:?}");
        assert!(matches!(rt.container_status("pod1.0"), Err(RuntimeError::NotFound { .. })));
        assert!(matches!(rt.sandbox_status("nope"), Err(RuntimeError::NotFound { .. })));
    }

    #[test]
    fn commands_follow_kubernetes_rules() {
        let mut spec = ContainerSpec {
            name: "c".into(),
            image: super::super::super::ImageRootfs {
                reference: "busybox".into(),
                layers: vec![],
                config: crate::images::ContainerConfig {
                    entrypoint: Some(vec!["/ep".into()]),
                    cmd: Some(vec!["a".into()]),
                    user: Some("1000:1001".into()),
                    ..Default::default()
                },
            },
            command: None,
            args: None,
            env: vec![],
            working_dir: None,
            user: None,
            resources: Default::default(),
            log_path: None,
            stdin: false,
            stdin_once: false,
            tty: false,
            vm: None,
        };
        assert_eq!(process_args(&spec), ["/ep", "a"]);
        spec.args = Some(vec!["b".into()]);
        assert_eq!(process_args(&spec), ["/ep", "b"]);
        spec.command = Some(vec!["sh".into()]);
        assert_eq!(process_args(&spec), ["sh", "b"]);
        assert_eq!(image_user(&spec).unwrap(), (1000, 1001));
        spec.image.config.user = Some("nobody".into());
        assert!(matches!(image_user(&spec), Err(RuntimeError::InvalidSpec(_))));
    }
}
