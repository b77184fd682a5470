//! The VM runtime: a pod's sandbox is a machine folder (its disk overlay lives there), and
//! its one "container" is a qemu process (`qemu-system-x86_64`) run by our supervisor
//! (`atoll shim vm`, [`crate::shim::supervise_vm`]) in its own process group, so the VM
//! survives agent restarts and its end is recorded on disk like a container's.
//!
//! - Boot: kernel + initrd (and optionally a disk) from a VM image in the node's image store
//!   (the files at [`KERNEL`], [`INITRD`], [`DISK`] in the image's layer); the disk is a
//!   per-pod qcow2 copy-on-write overlay (`qemu-img create -b base -F fmt`), kept across
//!   restarts of the VM, removed with the sandbox.
//! - Console: the serial port on qemu's stdout, written by the supervisor as the pod's CRI
//!   log; the guest is *ready* once a console line carries [`READY_MARKER`].
//! - User data: handed to the guest through fw_cfg ([`USER_DATA_FW_CFG`]).
//! - Exec: the guest's virtio-serial port named [`guest::proto::PORT_NAME`] (`guest.sock`)
//!   is the guest agent's, as in sandboxes; the shim relays `kubectl exec` sessions from
//!   `ctl.sock` to it (the channel code is [`crate::sandbox_shim`]'s, shared).
//! - Control: QMP on a unix socket in the VM's folder ([`qmp`]): stop is
//!   `system_powerdown`, the grace period, then `quit`, then SIGKILL.
//! - Accelerator: TCG unless KVM is configured, or `auto` finds by booting a one-sector
//!   probe guest under KVM that KVM really runs guests (on some hosts `/dev/kvm` exists but
//!   guests hang).
//!
//! State on disk (nothing in memory; a new `VmRuntime` over the same folder sees it all):
//! `<data>/<sandbox>/sandbox.json`, `<data>/<sandbox>/disk.qcow2`, and per VM attempt
//! `<data>/<sandbox>/<n>/` (`vm.json`, `shim.json`, `started.json`, `exit.json`, `ready`,
//! `qmp`, `user-data`); the attempt's ID is `<sandbox>.<n>`.
//!
//! Later work fits here: a VM-sandboxed container pod is a sandbox of this runtime whose
//! containers carry no [`VmSpec`] (the guest agent runs them); Actions (reboot, snapshot,
//! restore) are QMP commands on the same socket.

pub mod actions;
pub mod qmp;
pub mod sandbox;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::{
    ContainerSpec, ContainerState, ContainerStatus, Runtime, RuntimeError, SandboxSpec, SandboxStatus, valid_id,
};
use crate::os::{Os, Signal};
use crate::sandbox_shim::{CONTROL_SOCKET, GUEST_SOCKET};
use crate::shim::{EXIT_FILE, ExitRecord, READY_FILE, VmShimArgs};
use crate::timefmt::{from_nanos, to_nanos};

/// Where a VM image keeps its files (inside its one layer).
pub const KERNEL: &str = "vm/kernel";
pub const INITRD: &str = "vm/initrd.img";
pub const DISK: &str = "vm/disk.img";
/// A qcow2 disk (`atoll image import --vm-disk` of a qcow2 file).
pub const DISK_QCOW2: &str = "vm/disk.qcow2";
/// The console line our guest init prints when the guest is up.
pub const READY_MARKER: &str = "atoll-guest: ready";
/// The fw_cfg name of the user data (the guest reads `/sys/firmware/qemu_fw_cfg/by_name/...`).
pub const USER_DATA_FW_CFG: &str = "opt/atoll/user-data";
/// `SandboxSpec::runtime_handler` of VM pods.
pub const HANDLER: &str = "vm";

/// How long a QMP exchange may take before qemu is considered wedged.
const QMP_TIMEOUT: Duration = Duration::from_secs(5);
/// After `quit` (or SIGKILL), how long to wait for the supervisor's exit record.
const EXIT_WAIT: Duration = Duration::from_secs(10);

/// What one VM runs, resolved by the agent from the pod and the image store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    /// None: the disk boots through the firmware (a disk-only image).
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    /// The base disk image (raw, or qcow2 when its name ends so); the VM gets an overlay.
    pub disk: Option<PathBuf>,
    /// Appended to our kernel command line.
    pub cmdline: String,
    pub user_data: Option<String>,
    /// Root's authorized keys and password hash for the guest; only in memory and in the
    /// attempt's 0600 credentials file, never in `vm.json`.
    #[serde(skip)]
    pub credentials: crate::vm_credentials::Credentials,
    pub vcpus: u32,
    pub memory_mib: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Tcg,
    Kvm,
    /// KVM if a probe guest boots under it, else TCG.
    Auto,
}

impl std::str::FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcg" => Ok(Accel::Tcg),
            "kvm" => Ok(Accel::Kvm),
            "auto" => Ok(Accel::Auto),
            _ => Err(format!("unknown accelerator {s:?} (kvm, tcg or auto)")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct VmConfig {
    pub data_dir: PathBuf,
    pub qemu: PathBuf,
    pub qemu_img: PathBuf,
    /// The supervisor command (`<atoll> shim`); `vm ...` is appended.
    pub shim: Vec<OsString>,
    pub accel: Accel,
    /// Where the cgroup hierarchies are mounted, and our top folder in each (shared with
    /// the container runtime: a VM's qemu goes to `/<parent>/pod-<sandbox>/vm-<n>`).
    pub cgroup_root: PathBuf,
    pub cgroup_parent: String,
}

impl VmConfig {
    pub fn new(data_dir: PathBuf, shim: Vec<OsString>) -> VmConfig {
        VmConfig {
            data_dir,
            qemu: "qemu-system-x86_64".into(),
            qemu_img: "qemu-img".into(),
            shim,
            accel: Accel::Tcg,
            cgroup_root: "/sys/fs/cgroup".into(),
            cgroup_parent: "atoll".into(),
        }
    }
}

pub struct VmRuntime {
    config: VmConfig,
    os: Arc<dyn Os>,
    /// `tcg` or `kvm`, decided once.
    accel: &'static str,
    /// The host's TSC rate for the guest's command line (its own calibration can hang
    /// under TCG).
    tsc_khz: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SandboxRecord {
    spec: SandboxSpec,
    created_at_nanos: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct VmRecord {
    id: String,
    sandbox_id: String,
    name: String,
    image: String,
    log_path: PathBuf,
    vm: VmSpec,
    /// Whether the attempt has a credentials file for qemu's fw_cfg.
    #[serde(default)]
    credentials: bool,
    created_at_nanos: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ShimRecord {
    pid: u32,
    qemu_pid: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct StartRecord {
    started_at_nanos: u64,
}

fn spec_error(msg: impl Into<String>) -> RuntimeError {
    RuntimeError::InvalidSpec(msg.into())
}

/// A 512-byte boot sector that writes 0x2a to the `isa-debug-exit` port: qemu then exits
/// with status (0x2a << 1) | 1 = 85, which proves the accelerator ran guest code.
fn probe_sector() -> Vec<u8> {
    let mut s = vec![0u8; 512];
    // mov al, 0x2a; out 0xf4, al; hlt; jmp back to hlt
    s[..7].copy_from_slice(&[0xb0, 0x2a, 0xe6, 0xf4, 0xf4, 0xeb, 0xfd]);
    s[510] = 0x55;
    s[511] = 0xaa;
    s
}

/// Parses `cpu MHz : 1996.246` from /proc/cpuinfo into kHz.
pub fn tsc_khz(cpuinfo: &str) -> Option<u64> {
    let line = cpuinfo.lines().find(|l| l.starts_with("cpu MHz"))?;
    let mhz: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    Some((mhz * 1000.0).round() as u64)
}

impl VmRuntime {
    pub fn new(config: VmConfig, os: Arc<dyn Os>) -> Result<VmRuntime, RuntimeError> {
        os.create_dir_all(&config.data_dir)?;
        let tsc_khz = os.read_file(Path::new("/proc/cpuinfo"))?.and_then(|b| tsc_khz(&String::from_utf8_lossy(&b)));
        let mut rt = VmRuntime { config, os, accel: "tcg", tsc_khz };
        rt.accel = match rt.config.accel {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
            Accel::Auto => {
                if rt.kvm_boots() {
                    "kvm"
                } else {
                    "tcg"
                }
            }
        };
        tracing::info!(accel = rt.accel, "VM runtime ready");
        Ok(rt)
    }

    /// The accelerator VMs run with (`tcg` or `kvm`).
    pub fn accel(&self) -> &'static str {
        self.accel
    }

    /// Boots the probe sector under KVM with a deadline.
    fn kvm_boots(&self) -> bool {
        if !self.os.exists(Path::new("/dev/kvm")) {
            return false;
        }
        let image = self.config.data_dir.join("kvm-probe.img");
        if self.os.write_file_atomic(&image, &probe_sector()).is_err() {
            return false;
        }
        let mut drive = OsString::from("format=raw,if=ide,file=");
        drive.push(&image);
        let args: Vec<OsString> = vec![
            "5".into(),
            self.config.qemu.clone().into(),
            "-accel".into(),
            "kvm".into(),
            "-M".into(),
            "pc".into(),
            "-nodefaults".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-device".into(),
            "isa-debug-exit,iobase=0xf4,iosize=0x04".into(),
            "-drive".into(),
            drive,
        ];
        let ok = self.os.run(Path::new("timeout"), &args).is_ok_and(|o| o.code == Some(85));
        tracing::info!(kvm = ok, "KVM boot probe");
        ok
    }

    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.config.data_dir.join(id)
    }

    /// `<sandbox>.<n>` → the attempt's folder.
    fn vm_dir(&self, id: &str) -> Option<PathBuf> {
        let (sandbox, n) = id.rsplit_once('.')?;
        (valid_id(sandbox) && n.parse::<u32>().is_ok()).then(|| self.sandbox_dir(sandbox).join(n))
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

    fn vm_record(&self, id: &str) -> Result<(PathBuf, VmRecord), RuntimeError> {
        let not_found = || RuntimeError::NotFound { kind: "container", id: id.into() };
        let dir = self.vm_dir(id).ok_or_else(not_found)?;
        let rec = self.read_json(&dir.join("vm.json"))?.ok_or_else(not_found)?;
        Ok((dir, rec))
    }

    /// Attempt numbers present in a sandbox.
    fn attempts(&self, sandbox: &str) -> Result<Vec<u32>, RuntimeError> {
        crate::runtime::attempt_numbers(&*self.os, &self.sandbox_dir(sandbox))
    }

    fn qemu_args(&self, dir: &Path, sandbox: &Path, rec: &VmRecord) -> Vec<OsString> {
        let vm = &rec.vm;
        let mut cmdline = String::from("console=ttyS0 panic=-1 quiet");
        if let Some(khz) = self.tsc_khz {
            cmdline.push_str(&format!(" tsc_early_khz={khz}"));
        }
        if !vm.cmdline.is_empty() {
            cmdline.push(' ');
            cmdline.push_str(&vm.cmdline);
        }
        let mut qmp = OsString::from("unix:");
        qmp.push(dir.join("qmp"));
        qmp.push(",server=on,wait=off");
        let mut args: Vec<OsString> = vec![
            "-name".into(),
            format!("atoll-{}", rec.id).into(),
            "-machine".into(),
            "pc".into(),
            "-accel".into(),
            // TCG's translation cache is capped: it is most of qemu's own memory.
            if self.accel == "tcg" { format!("tcg,tb-size={}", api::vm::TCG_CACHE_MIB) } else { "kvm".into() }.into(),
            "-smp".into(),
            vm.vcpus.max(1).to_string().into(),
            "-m".into(),
            format!("{}M", vm.memory_mib.max(16)).into(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-no-reboot".into(),
            "-display".into(),
            "none".into(),
            "-serial".into(),
            "stdio".into(),
            "-monitor".into(),
            "none".into(),
            "-nic".into(),
            "none".into(),
            "-qmp".into(),
            qmp,
        ];
        // Without a kernel the firmware boots the disk (a disk-only VM image).
        if let Some(kernel) = &vm.kernel {
            args.extend(["-kernel".into(), kernel.clone().into(), "-append".into(), cmdline.into()]);
            if let Some(initrd) = &vm.initrd {
                args.extend(["-initrd".into(), initrd.clone().into()]);
            }
        }
        // The guest agent's port, as in sandboxes: `kubectl exec` goes through it to
        // `atoll-guest` when the image runs it (the busybox-vm image does).
        let mut guest = OsString::from("socket,id=guest,server=on,wait=off,path=");
        guest.push(dir.join(GUEST_SOCKET));
        args.extend([
            "-chardev".into(),
            guest,
            "-device".into(),
            "virtio-serial-pci".into(),
            "-device".into(),
            format!("virtserialport,chardev=guest,name={}", guest::proto::PORT_NAME).into(),
        ]);
        if vm.disk.is_some() {
            let mut drive = OsString::from("if=virtio,format=qcow2,file=");
            drive.push(sandbox.join("disk.qcow2"));
            args.extend(["-drive".into(), drive]);
        }
        if vm.user_data.is_some() {
            let mut fw = OsString::from(format!("name={USER_DATA_FW_CFG},file="));
            fw.push(dir.join("user-data"));
            args.extend(["-fw_cfg".into(), fw]);
        }
        // qemu reads the file at start-up; the shim deletes it once the guest is up.
        if rec.credentials {
            let mut fw = OsString::from(format!("name={},file=", crate::vm_credentials::FW_CFG_NAME));
            fw.push(dir.join(crate::vm_credentials::FILE));
            args.extend(["-fw_cfg".into(), fw]);
        }
        args
    }

    /// A VM attempt's cgroup folder (relative to each hierarchy), or its pod's.
    fn cgroup_path(&self, sandbox: &str, n: Option<&str>) -> PathBuf {
        let pod = PathBuf::from(&self.config.cgroup_parent).join(format!("pod-{sandbox}"));
        match n {
            Some(n) => pod.join(format!("vm-{n}")),
            None => pod,
        }
    }

    /// Moves qemu out of the agent's cgroup into the VM's own, in every hierarchy.
    fn place_in_cgroup(&self, sandbox: &str, n: &str, pid: u32) -> Result<(), RuntimeError> {
        for h in self.os.cgroup_hierarchies(&self.config.cgroup_root)? {
            let dir = h.join(self.cgroup_path(sandbox, Some(n)));
            self.os.create_dir_all(&dir)?;
            self.os.write_control_file(&dir.join("cgroup.procs"), pid.to_string().as_bytes())?;
        }
        Ok(())
    }

    /// Removes a VM's (or, with `n` = `None`, its pod's) cgroup folders; they are empty
    /// once qemu has exited.
    fn remove_cgroup(&self, sandbox: &str, n: Option<&str>) -> Result<(), RuntimeError> {
        for h in self.os.cgroup_hierarchies(&self.config.cgroup_root)? {
            match self.os.remove_dir(&h.join(self.cgroup_path(sandbox, n))) {
                Err(e) if !e.is_not_found() => return Err(e.into()),
                _ => {}
            }
        }
        Ok(())
    }

    fn shim_record(&self, dir: &Path) -> Result<Option<ShimRecord>, RuntimeError> {
        self.read_json(&dir.join("shim.json"))
    }

    fn exited(&self, dir: &Path) -> bool {
        self.os.exists(&dir.join(EXIT_FILE))
    }

    /// Waits up to `within` for the supervisor to record qemu's exit (or vanish).
    fn wait_exit(&self, dir: &Path, shim_pid: u32, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.exited(dir) || !self.os.process_alive(shim_pid) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Runtime for VmRuntime {
    /// `kubectl exec` runs `atoll shim sandbox-exec`, relayed by the VM's shim to the guest
    /// agent, which runs the command in the guest's own root (container 0). A guest whose
    /// image runs no agent answers with an error once the shim gives up waiting for it.
    fn exec_command(&self, id: &str, command: &[String]) -> Result<(PathBuf, Vec<std::ffi::OsString>), RuntimeError> {
        let (dir, _) = self.vm_record(id)?;
        let status = self.container_status(id)?;
        if status.state != ContainerState::Running {
            return Err(RuntimeError::WrongState { id: id.into(), state: status.state, op: "exec" });
        }
        let ctl = dir.join(CONTROL_SOCKET);
        if !self.os.exists(&ctl) {
            // A VM started before its shim served exec.
            return Err(RuntimeError::Runtime {
                op: "exec",
                id: id.into(),
                detail: "this virtual machine was started without a guest agent channel".into(),
            });
        }
        let (program, lead) = self.config.shim.split_first().ok_or_else(|| spec_error("no shim command configured"))?;
        let mut args: Vec<OsString> = lead.to_vec();
        args.extend(["sandbox-exec".into(), "--ctl".into(), ctl.into(), "--container".into(), "0".into()]);
        args.push("--".into());
        args.extend(command.iter().map(OsString::from));
        Ok((PathBuf::from(program), args))
    }
    /// A guest's console is its log; it takes no stdin.
    fn attach_socket(&self, _id: &str) -> Option<PathBuf> {
        None
    }
    fn run_sandbox(&self, spec: &SandboxSpec) -> Result<SandboxStatus, RuntimeError> {
        if !valid_id(&spec.id) {
            return Err(spec_error(format!("invalid sandbox id {:?}", spec.id)));
        }
        let dir = self.sandbox_dir(&spec.id);
        if self.os.exists(&dir.join("sandbox.json")) {
            return Err(RuntimeError::AlreadyExists { kind: "sandbox", id: spec.id.clone() });
        }
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
        Ok(())
    }

    fn remove_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        if !valid_id(id) || !self.os.exists(&self.sandbox_dir(id)) {
            return Ok(());
        }
        for n in self.attempts(id)? {
            self.remove_container(&format!("{id}.{n}"))?;
        }
        self.remove_cgroup(id, None)?;
        // The overlay disk goes with the sandbox folder.
        match self.os.remove_dir_all(&self.sandbox_dir(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
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
        self.sandbox_record(sandbox_id)?;
        let vm = spec.vm.clone().ok_or_else(|| {
            spec_error("the VM runtime runs VMs only; containers in VM sandboxes are not implemented yet")
        })?;
        let n = self.attempts(sandbox_id)?.last().map_or(0, |n| n + 1);
        let id = format!("{sandbox_id}.{n}");
        let sandbox = self.sandbox_dir(sandbox_id);
        let dir = sandbox.join(n.to_string());
        self.os.create_dir_all(&dir)?;
        let log_path = spec.log_path.clone().unwrap_or_else(|| dir.join("console.log"));
        if let Some(parent) = log_path.parent() {
            self.os.create_dir_all(parent)?;
        }
        // The disk outlives VM restarts: made once per sandbox.
        if let Some(base) = &vm.disk {
            let overlay = sandbox.join("disk.qcow2");
            if !self.os.exists(&overlay) {
                let format = if base.extension().is_some_and(|e| e == "qcow2") { "qcow2" } else { "raw" };
                let out = self.os.run(
                    &self.config.qemu_img,
                    &[
                        "create".into(),
                        "-q".into(),
                        "-f".into(),
                        "qcow2".into(),
                        "-F".into(),
                        format.into(),
                        "-b".into(),
                        base.clone().into(),
                        overlay.into(),
                    ],
                )?;
                if !out.success {
                    return Err(RuntimeError::Runtime { op: "create disk", id, detail: out.stderr.trim().into() });
                }
            }
        }
        if let Some(data) = &vm.user_data {
            self.os.write_file_atomic(&dir.join("user-data"), data.as_bytes())?;
        }
        let credentials = !vm.credentials.is_empty();
        if credentials {
            let file = dir.join(crate::vm_credentials::FILE);
            self.os.write_private_file(&file, vm.credentials.render().as_bytes())?;
        }
        let rec = VmRecord {
            id: id.clone(),
            sandbox_id: sandbox_id.into(),
            name: spec.name.clone(),
            image: spec.image.reference.clone(),
            log_path,
            vm,
            credentials,
            created_at_nanos: to_nanos(SystemTime::now()),
        };
        self.write_json(&dir.join("vm.json"), &rec)?;
        Ok(id)
    }

    fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        let (dir, rec) = self.vm_record(id)?;
        if self.shim_record(&dir)?.is_some() {
            let state = self.container_status(id)?.state;
            return Err(RuntimeError::WrongState { id: id.into(), state, op: "start" });
        }
        let sandbox = self.sandbox_dir(&rec.sandbox_id);
        let mut command: Vec<OsString> = vec![self.config.qemu.clone().into()];
        command.extend(self.qemu_args(&dir, &sandbox, &rec));
        let shim = VmShimArgs {
            dir: dir.clone(),
            log: rec.log_path.clone(),
            ready_marker: Some(READY_MARKER.into()),
            ctl: Some(dir.join(CONTROL_SOCKET)),
            command,
        };
        let (program, lead) = self.config.shim.split_first().ok_or_else(|| spec_error("no shim command configured"))?;
        let mut args: Vec<OsString> = lead.to_vec();
        args.extend(shim.to_args());
        let started_at = SystemTime::now();
        let child = self.os.spawn_detached(Path::new(program), &args, &dir.join("shim.log"))?;
        let qemu_pid = match child.first_line.strip_prefix("created ").map(str::parse::<u32>) {
            Some(Ok(pid)) => pid,
            _ => {
                return Err(RuntimeError::Runtime {
                    op: "start",
                    id: id.into(),
                    detail: child.first_line.trim_start_matches("error ").to_owned(),
                });
            }
        };
        self.write_json(&dir.join("shim.json"), &ShimRecord { pid: child.pid, qemu_pid })?;
        let n = id.rsplit_once('.').map_or("0", |(_, n)| n);
        if let Err(e) = self.place_in_cgroup(&rec.sandbox_id, n, qemu_pid) {
            // The VM runs, only without its own cgroup: say so rather than kill it.
            tracing::warn!(vm = id, error = %e, "placing qemu in its cgroup");
        }
        self.write_json(&dir.join("started.json"), &StartRecord { started_at_nanos: to_nanos(started_at) })
    }

    fn stop_container(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let (dir, _) = self.vm_record(id)?;
        let Some(shim) = self.shim_record(&dir)? else { return Ok(()) };
        if self.exited(&dir) || !self.os.process_alive(shim.pid) {
            return Ok(());
        }
        // Ask the guest first (the ACPI power button), then qemu, then the kernel.
        if !grace.is_zero() {
            match qmp::Qmp::connect(&dir.join("qmp"), QMP_TIMEOUT).and_then(|mut q| q.system_powerdown()) {
                Ok(()) => {
                    if self.wait_exit(&dir, shim.pid, grace) {
                        return Ok(());
                    }
                }
                Err(e) => tracing::warn!(vm = id, error = %e, "system_powerdown"),
            }
        }
        match qmp::Qmp::connect(&dir.join("qmp"), QMP_TIMEOUT).and_then(|mut q| q.quit()) {
            Ok(()) => {
                if self.wait_exit(&dir, shim.pid, EXIT_WAIT) {
                    return Ok(());
                }
            }
            Err(e) => tracing::warn!(vm = id, error = %e, "quit"),
        }
        if let Err(e) = self.os.signal(shim.qemu_pid, Signal::Kill)
            && self.os.process_alive(shim.qemu_pid)
        {
            return Err(e.into());
        }
        if self.wait_exit(&dir, shim.pid, EXIT_WAIT) {
            Ok(())
        } else {
            Err(RuntimeError::Unkillable { id: id.into(), after: EXIT_WAIT })
        }
    }

    fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        let dir = match self.vm_record(id) {
            Ok((dir, _)) => dir,
            Err(RuntimeError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.stop_container(id, Duration::ZERO)?;
        if let Some((sandbox, n)) = id.rsplit_once('.') {
            self.remove_cgroup(sandbox, Some(n))?;
        }
        match self.os.remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn container_status(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
        let (dir, rec) = self.vm_record(id)?;
        let shim = self.shim_record(&dir)?;
        let exit: Option<ExitRecord> = self.read_json(&dir.join(EXIT_FILE))?;
        let started: Option<StartRecord> = self.read_json(&dir.join("started.json"))?;
        let state = match (&exit, &shim) {
            (Some(_), _) => ContainerState::Exited,
            (None, None) => ContainerState::Created,
            (None, Some(s)) if self.os.process_alive(s.pid) => ContainerState::Running,
            (None, Some(_)) => ContainerState::Unknown,
        };
        let ready = state == ContainerState::Running && self.os.exists(&dir.join(READY_FILE));
        Ok(ContainerStatus {
            id: id.into(),
            sandbox_id: rec.sandbox_id,
            name: rec.name,
            image: rec.image,
            state,
            pid: shim.map(|s| s.qemu_pid),
            exit_code: exit.as_ref().map(|e| e.exit_code),
            // A guest that powered itself off ends qemu with status 0.
            reason: exit.as_ref().map(|e| if e.exit_code == 0 { "Completed".into() } else { "Error".into() }),
            created_at: from_nanos(rec.created_at_nanos),
            started_at: started.map(|s| from_nanos(s.started_at_nanos)),
            finished_at: exit.map(|e| from_nanos(e.finished_at_nanos)),
            log_path: rec.log_path,
            ready: Some(ready),
        })
    }

    fn list_containers(&self, sandbox_id: Option<&str>) -> Result<Vec<ContainerStatus>, RuntimeError> {
        let sandboxes = match sandbox_id {
            Some(s) => vec![s.to_string()],
            None => self.list_sandboxes()?.into_iter().map(|s| s.spec.id).collect(),
        };
        let mut out = Vec::new();
        for s in sandboxes {
            if !valid_id(&s) {
                continue;
            }
            for n in self.attempts(&s)? {
                match self.container_status(&format!("{s}.{n}")) {
                    Ok(c) => out.push(c),
                    Err(RuntimeError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_sector_is_bootable() {
        let s = probe_sector();
        assert_eq!(s.len(), 512);
        assert_eq!(&s[510..], &[0x55, 0xaa]);
    }

    #[test]
    fn tsc_rate_from_cpuinfo() {
        assert_eq!(tsc_khz("processor\t: 0\ncpu MHz\t\t: 1996.246\n"), Some(1_996_246));
        assert_eq!(tsc_khz("nothing"), None);
    }

    fn spec(disk: bool) -> ContainerSpec {
        ContainerSpec {
            name: "vm".into(),
            image: super::super::ImageRootfs {
                reference: "busybox-vm".into(),
                layers: vec![],
                config: Default::default(),
            },
            command: None,
            args: None,
            env: vec![],
            working_dir: None,
            user: None,
            resources: Default::default(),
            log_path: Some("/logs/vm/0.log".into()),
            stdin: false,
            stdin_once: false,
            tty: false,
            vm: Some(VmSpec {
                kernel: Some("/img/vm/kernel".into()),
                initrd: Some("/img/vm/initrd.img".into()),
                disk: disk.then(|| "/img/vm/disk.img".into()),
                cmdline: "extra=1".into(),
                user_data: Some("echo hi".into()),
                credentials: crate::vm_credentials::Credentials {
                    authorized_keys: vec!["ssh-ed25519 AAAA me".into()],
                    password_hash: Some("$6$salt$hash".into()),
                },
                vcpus: 2,
                memory_mib: 256,
            }),
        }
    }

    fn sandbox(id: &str) -> SandboxSpec {
        SandboxSpec {
            id: id.into(),
            name: "vm".into(),
            namespace: "default".into(),
            tenant: "acme".into(),
            hostname: "vm".into(),
            network: super::super::NetworkMode::Isolated,
            runtime_handler: HANDLER.into(),
        }
    }

    #[test]
    fn a_vm_gets_an_overlay_its_user_data_and_a_supervised_qemu() {
        let os = Arc::new(crate::os::FakeOs::new("created 4242", vec![]));
        let rt = VmRuntime::new(VmConfig::new("/data".into(), vec!["/bin/atoll".into(), "shim".into()]), os.clone())
            .unwrap();
        rt.run_sandbox(&sandbox("pod1")).unwrap();
        let id = rt.create_container("pod1", &spec(true)).unwrap();
        assert_eq!(id, "pod1.0");
        assert_eq!(rt.container_status(&id).unwrap().state, ContainerState::Created);
        rt.start_container(&id).unwrap();
        let calls = os.calls();
        let runs: Vec<&Vec<String>> = calls
            .iter()
            .filter_map(|c| match c {
                crate::os::Call::Run(a) | crate::os::Call::SpawnDetached(a) => Some(a),
                _ => None,
            })
            .collect();
        assert_eq!(
            runs[0].join(" "),
            "qemu-img create -q -f qcow2 -F raw -b /img/vm/disk.img /data/pod1/disk.qcow2",
            "the disk is a copy-on-write overlay of the image's"
        );
        let shim = runs[1].join(" ");
        assert!(shim.starts_with("/bin/atoll shim vm --dir /data/pod1/0 --log /logs/vm/0.log"), "{shim}");
        for part in [
            "--ready-marker atoll-guest: ready -- qemu-system-x86_64",
            "-accel tcg,tb-size=64 -smp 2 -m 256M",
            "-no-reboot",
            "-qmp unix:/data/pod1/0/qmp,server=on,wait=off",
            "-kernel /img/vm/kernel",
            "-initrd /img/vm/initrd.img",
            "-drive if=virtio,format=qcow2,file=/data/pod1/disk.qcow2",
            "-fw_cfg name=opt/atoll/user-data,file=/data/pod1/0/user-data",
            "-chardev socket,id=guest,server=on,wait=off,path=/data/pod1/0/guest.sock",
            "virtserialport,chardev=guest,name=atoll.0",
            "--ctl /data/pod1/0/ctl.sock --ready-marker",
            "-fw_cfg name=opt/atoll/credentials,file=/data/pod1/0/credentials",
        ] {
            assert!(shim.contains(part), "{part:?} missing from {shim}");
        }
        assert!(shim.contains("extra=1"));
        assert_eq!(os.file(Path::new("/data/pod1/0/user-data")).as_deref(), Some(&b"echo hi"[..]));
        let credentials = os.file(Path::new("/data/pod1/0/credentials")).unwrap();
        assert_eq!(credentials, b"key ssh-ed25519 AAAA me\npassword $6$salt$hash\n");
        // The hash is in the credentials file only, not in the attempt's record.
        let record = os.file(Path::new("/data/pod1/0/vm.json")).unwrap();
        assert!(!String::from_utf8_lossy(&record).contains("$6$"), "the hash is in vm.json");
        let status = rt.container_status(&id).unwrap();
        assert_eq!((status.state, status.ready, status.pid), (ContainerState::Running, Some(false), Some(4242)));
        os.put_file(&Path::new("/data/pod1/0").join(READY_FILE), b"");
        assert_eq!(rt.container_status(&id).unwrap().ready, Some(true));
        // A second attempt shares the overlay (made once) and gets its own folder.
        os.put_file(Path::new("/data/pod1/disk.qcow2"), b"qcow2 (made by qemu-img)");
        let again = rt.create_container("pod1", &spec(true)).unwrap();
        assert_eq!(again, "pod1.1");
        assert_eq!(os.calls().iter().filter(|c| matches!(c, crate::os::Call::Run(a) if a[0] == "qemu-img")).count(), 1);
        assert_eq!(rt.list_containers(Some("pod1")).unwrap().len(), 2);
    }

    #[test]
    fn containers_without_a_machine_are_refused() {
        let os = Arc::new(crate::os::FakeOs::new("created 1", vec![]));
        let rt = VmRuntime::new(VmConfig::new("/data".into(), vec!["/bin/atoll".into()]), os).unwrap();
        rt.run_sandbox(&sandbox("pod1")).unwrap();
        let mut plain = spec(false);
        plain.vm = None;
        assert!(matches!(rt.create_container("pod1", &plain), Err(RuntimeError::InvalidSpec(_))));
        assert!(matches!(rt.container_status("nope"), Err(RuntimeError::NotFound { .. })));
    }

    #[test]
    fn accel_parses() {
        assert_eq!("auto".parse::<Accel>(), Ok(Accel::Auto));
        assert!("xen".parse::<Accel>().is_err());
    }
}
