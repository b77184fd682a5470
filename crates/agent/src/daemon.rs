//! The node agent as one async task: register the Node, keep its Lease and status fresh,
//! run the pod sync loop, sweep orphaned sandboxes, and on shutdown either leave the
//! containers running (a plain agent restart must not disturb them) or stop them all
//! (`atoll up`: the cluster goes away with the process, and its next start makes them again).
//!
//! Folders under the agent's data folder: `images/` (the image store), `runtime/` (the OCI
//! runtime's state), `vm/` (the VM runtime's machines and disk overlays), `logs/`
//! (containers' and VMs' CRI logs), `network/` (the bridge network's IPAM).

use std::ffi::OsString;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use client::Client;
use controllers::Cache;

use crate::images::ImageStore;
use crate::net::{Bridge, Cidr, LoopbackOnly, PodNetwork};
use crate::node;
use crate::os::{Os, RealOs};
use crate::pods::{self, Node, RestartBackoff};
use crate::runtime::Runtimes;
use crate::runtime::oci::{OciConfig, OciRuntime, find_program};
use crate::runtime::vm::sandbox::{SandboxConfig, SandboxRuntime};
use crate::runtime::vm::{self, Accel, VmConfig, VmRuntime};

/// How often sandboxes without a pod are looked for.
const SWEEP: Duration = Duration::from_secs(30);
/// The grace the agent's own shutdown gives containers (`stop_pods_on_exit`).
const EXIT_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("OCI runtime {0:?} not found on PATH")]
    NoRuntime(PathBuf),
    #[error("image store: {0}")]
    Images(#[from] crate::images::ImageError),
    #[error("runtime: {0}")]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error("registering the node: {0}")]
    Register(#[from] node::NodeError),
    #[error("pods: {0}")]
    Pods(#[from] pods::PodError),
    #[error("registry client: {0}")]
    Pull(#[from] crate::pull::PullError),
    #[error("image pull records: {0}")]
    PullRecords(#[from] crate::pod_images::PullRecordError),
    #[error("pod network: {0}")]
    Net(#[from] crate::net::NetError),
    #[error("the agent's port: {0}")]
    Serve(#[from] crate::server::ServeError),
    #[error("the runtime's state folder: {0}")]
    State(#[from] crate::os::OsError),
}

/// How pods reach the network.
#[derive(Clone, Debug)]
pub enum NetworkConfig {
    /// A namespace of their own with loopback only (no pod IP).
    LoopbackOnly,
    /// The node bridge (`atoll0`) and its pod CIDR.
    Bridge { name: String, cidr: String },
}

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node_name: String,
    pub data_dir: PathBuf,
    /// `crun`, `runc` or a path.
    pub runtime: PathBuf,
    /// The supervisor command (`<atoll> shim`).
    pub shim: Vec<OsString>,
    /// Our cgroup folder under each hierarchy.
    pub cgroup_parent: String,
    /// Stop every container when the agent stops (`atoll up`).
    pub stop_pods_on_exit: bool,
    pub backoff: RestartBackoff,
    pub network: NetworkConfig,
    /// The HTTPS port for logs, exec and attach (none: the node serves no streams).
    pub serving: Option<crate::server::ServingConfig>,
    /// How images are pulled from registries.
    pub registry: crate::pull::RegistryConfig,
    /// The VM runtime's accelerator; VM pods run only where `qemu-system-x86_64` is found.
    pub vm_accel: Accel,
    /// What VM-sandboxed container pods boot; they run only where all of it is found.
    pub sandbox: SandboxAssets,
    /// Pod networks the bridge keeps made ahead (`Bridge::start_pool`).
    pub network_pool: usize,
}

/// Pod networks kept ready by default: a burst of this many pods sets up none itself.
pub const DEFAULT_NETWORK_POOL: usize = 32;

/// The guest of VM-sandboxed pods: a kernel (with its modules, if it needs any), a static
/// busybox and our guest agent, made into an initramfs when the agent starts.
#[derive(Clone, Debug)]
pub struct SandboxAssets {
    pub kernel: crate::sandbox_image::GuestKernel,
    pub busybox: PathBuf,
    /// `atoll-guest`; by default beside our own binary.
    pub guest: Option<PathBuf>,
}

impl Default for SandboxAssets {
    fn default() -> Self {
        SandboxAssets {
            kernel: crate::sandbox_image::GuestKernel::find(
                |name| std::env::var_os(name),
                std::path::Path::new(crate::sandbox_image::MINIMAL_KERNEL),
            ),
            busybox: "/bin/busybox".into(),
            guest: std::env::current_exe().ok().and_then(|e| Some(e.parent()?.join("atoll-guest"))),
        }
    }
}

/// The sandbox runtime, if this node has what it needs (its absence is logged, not fatal).
fn sandbox_runtime(
    config: &AgentConfig,
    qemu: &std::path::Path,
    accel: &'static str,
    os: Arc<dyn Os>,
) -> Option<SandboxRuntime> {
    let assets = &config.sandbox;
    let guest = assets.guest.as_ref().filter(|g| g.is_file());
    let (Some(guest), true) = (guest, assets.kernel.present()) else {
        tracing::warn!(?assets, "no guest kernel, modules or atoll-guest: this node runs no VM-sandboxed pods");
        return None;
    };
    if assets.kernel.modules.is_some() {
        let hint = "scripts/lib.sh setup_guest_kernel builds the minimal kernel";
        tracing::warn!(kernel = ?assets.kernel.kernel, hint, "VM sandboxes boot Debian's kernel: slow under TCG");
    }
    let dir = config.data_dir.join("sandbox");
    let initrd = dir.join("guest.cpio");
    let began = std::time::Instant::now();
    let modules = assets.kernel.modules.as_deref();
    let made = crate::sandbox_image::guest_initramfs(&*os, guest, &assets.busybox, modules, &dir.join("work"))
        .and_then(|bytes| {
            crate::os::write_atomic(&initrd, &bytes).map_err(|source| crate::sandbox_image::SandboxImageError::Io {
                what: "writing",
                path: initrd.clone(),
                source,
            })
        });
    if let Err(e) = made {
        tracing::warn!(error = %e, "building the sandbox guest: this node runs no VM-sandboxed pods");
        return None;
    }
    tracing::info!(ms = began.elapsed().as_millis() as u64, "sandbox guest initramfs built");
    let tsc_khz = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| vm::tsc_khz(&c));
    let cfg = SandboxConfig {
        data_dir: dir,
        qemu: qemu.to_owned(),
        shim: config.shim.clone(),
        kernel: assets.kernel.kernel.clone(),
        acpi: assets.kernel.modules.is_some(),
        initrd,
        accel,
        tsc_khz,
        cgroup_root: "/sys/fs/cgroup".into(),
        cgroup_parent: config.cgroup_parent.clone(),
    };
    match SandboxRuntime::new(cfg, os) {
        Ok(rt) => Some(rt),
        Err(e) => {
            tracing::warn!(error = %e, "the sandbox runtime");
            None
        }
    }
}

impl AgentConfig {
    pub fn new(node_name: &str, data_dir: PathBuf, shim: Vec<OsString>) -> AgentConfig {
        AgentConfig {
            node_name: node_name.into(),
            data_dir,
            runtime: "crun".into(),
            shim,
            cgroup_parent: "atoll".into(),
            stop_pods_on_exit: false,
            backoff: RestartBackoff::default(),
            network: NetworkConfig::Bridge { name: "atoll0".into(), cidr: "10.88.0.0/16".into() },
            serving: None,
            registry: crate::pull::RegistryConfig::default(),
            vm_accel: Accel::Tcg,
            sandbox: SandboxAssets::default(),
            network_pool: DEFAULT_NETWORK_POOL,
        }
    }
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(client: Client, config: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    let os: Arc<dyn Os> = Arc::new(RealOs::new());
    let runtime_path = find_program(&config.runtime).ok_or_else(|| AgentError::NoRuntime(config.runtime.clone()))?;
    // Run from the sealed copy; named (node info, container IDs) after the file.
    let runtime_exec = sealed_runtime(&*os, &runtime_path).unwrap_or_else(|| runtime_path.clone());
    let images = Arc::new(ImageStore::open(&config.data_dir.join("images"), os.clone())?);
    let state_dir = config.data_dir.join("runtime");
    volatile_state(&*os, &state_dir)?;
    let mut oci = OciConfig::new(&runtime_exec, config.shim.clone(), &state_dir);
    oci.layers_dir = config.data_dir.join("layers");
    oci.cgroup_parent = config.cgroup_parent.clone();
    let oci = Arc::new(OciRuntime::new(oci, os.clone())?);
    let mut runtimes = Runtimes::new(oci);
    let mut machines = None;
    if let Some(qemu) = find_program(std::path::Path::new("qemu-system-x86_64")) {
        let mut cfg = VmConfig::new(config.data_dir.join("vm"), config.shim.clone());
        cfg.qemu = qemu.clone();
        let cfg_qemu = qemu;
        cfg.qemu_img = find_program(std::path::Path::new("qemu-img")).unwrap_or_else(|| "qemu-img".into());
        cfg.accel = config.vm_accel;
        cfg.cgroup_parent = config.cgroup_parent.clone();
        let vm_os = os.clone();
        // `auto` boots a probe guest: not on the async threads.
        let vm = tokio::task::spawn_blocking(move || VmRuntime::new(cfg, vm_os))
            .await
            .map_err(|e| pods::PodError::Join(e.to_string()))??;
        let accel = vm.accel();
        let vm = Arc::new(vm);
        machines = Some(vm.clone());
        runtimes = runtimes.with(vm::HANDLER, vm);
        let (config, os, qemu) = (config.clone(), os.clone(), cfg_qemu);
        let sandboxes = tokio::task::spawn_blocking(move || sandbox_runtime(&config, &qemu, accel, os))
            .await
            .map_err(|e| pods::PodError::Join(e.to_string()))?;
        if let Some(sandboxes) = sandboxes {
            runtimes = runtimes.with(vm::sandbox::HANDLER, Arc::new(sandboxes));
        }
    } else {
        tracing::warn!("qemu-system-x86_64 not found: this node runs no VM pods");
    }
    let runtime = Arc::new(runtimes);
    let network: Arc<dyn PodNetwork> = match &config.network {
        NetworkConfig::LoopbackOnly => Arc::new(LoopbackOnly),
        NetworkConfig::Bridge { name, cidr } => {
            let (os, name, cidr) = (os.clone(), name.clone(), Cidr::parse(cidr)?);
            let (old, dir) = (config.data_dir.join("network"), state_dir.join("network"));
            let bridge = tokio::task::spawn_blocking(move || {
                move_address_book(&*os, &old, &dir)?;
                Bridge::new(os, &name, cidr, &dir)
            })
            .await
            .map_err(|e| pods::PodError::Join(e.to_string()))??;
            let bridge = Arc::new(bridge);
            bridge.start_pool(config.network_pool);
            bridge
        }
    };

    let mut facts = {
        let os = os.clone();
        let path = runtime_path.clone();
        tokio::task::spawn_blocking(move || node::machine_facts(&*os, &path))
            .await
            .map_err(|e| pods::PodError::Join(e.to_string()))?
    };
    // The port is bound before the Node is written, so the Node names where it listens.
    let port = match &config.serving {
        Some(s) => {
            let server = crate::server::AgentServer::bind(s).await?;
            let addr =
                server.local_addr().map_err(|source| crate::server::ServeError::Listen { addr: s.listen, source })?;
            facts.agent_port = addr.port();
            // Bound to one address: that is where the API server must reach the node.
            if !addr.ip().is_unspecified() {
                facts.internal_ip = addr.ip().to_string();
            }
            Some(server)
        }
        None => None,
    };
    let since = SystemTime::now();
    node::register(&client, &config.node_name, &facts, since).await?;
    node::renew_lease(&client, &config.node_name).await?;
    tracing::info!(node = %config.node_name, cpus = facts.cpus, ip = %facts.internal_ip, "node registered");

    let puller = Arc::new(crate::pull::Puller::new(images.clone(), &config.registry)?);
    let pulls = crate::pod_images::PodImages::new(puller, client.clone(), &config.node_name, config.registry.clone())?;
    let node = Arc::new(Node {
        name: config.node_name.clone(),
        host_ip: facts.internal_ip.clone(),
        runtime,
        runtime_name: runtime_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        images,
        network,
        logs_dir: config.data_dir.join("logs"),
        backoff: config.backoff,
        pulls: Some(Arc::new(pulls)),
        machines,
        acting: Default::default(),
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let heartbeat =
        tokio::spawn(node::heartbeat(client.clone(), config.node_name.clone(), facts, since, stopped(stop_rx.clone())));
    let cache = Cache::default();
    let port_task = port.map(|server| {
        let ctx = Arc::new(crate::server::AgentContext { runtime: node.runtime.clone(), pods: cache.clone() });
        tokio::spawn(server.run(ctx, stopped(stop_rx.clone())))
    });
    let actions = tokio::spawn(
        crate::actions::controller(client.clone(), node.clone(), cache.clone()).run(stopped(stop_rx.clone())),
    );
    let sync = tokio::spawn(pods::controller(client, node.clone(), cache.clone()).run(stopped(stop_rx.clone())));
    let sweeper = tokio::spawn(sweep_loop(node.clone(), cache, stopped(stop_rx)));

    shutdown.await;
    let _ = stop_tx.send(true);
    let _ = sync.await;
    let _ = actions.await;
    let _ = sweeper.await;
    let _ = heartbeat.await;
    if let Some(t) = port_task {
        let _ = t.await;
    }
    if config.stop_pods_on_exit {
        let n = node.clone();
        tokio::task::spawn_blocking(move || n.stop_all(EXIT_GRACE))
            .await
            .map_err(|e| pods::PodError::Join(e.to_string()))??;
        tracing::info!("stopped every pod's containers");
    }
    let network = node.network.clone();
    tokio::task::spawn_blocking(move || network.shutdown()).await.map_err(|e| pods::PodError::Join(e.to_string()))?;
    release_volatile_state(&*os, &state_dir);
    Ok(())
}

/// The OCI runtime's records, bundles and `--root` on a tmpfs of their own: they describe
/// processes, which a reboot ends, so a disk's allocation and journal work per file (a
/// dozen files per container start) buys nothing. The mount outlives the agent (a
/// restarted agent finds its containers in it) but not the machine. Folders that already
/// hold records on disk (an older agent's) are left where they are, not hidden under a
/// mount.
fn volatile_state(os: &dyn Os, dir: &std::path::Path) -> Result<(), AgentError> {
    os.create_dir_all(dir)?;
    if os.is_tmpfs(dir)? {
        return Ok(());
    }
    if holds_state(os, dir) {
        tracing::warn!(dir = %dir.display(), "the runtime's records stay on disk: they hold containers already");
        return Ok(());
    }
    os.mount_tmpfs(dir)?;
    Ok(())
}

/// The pod network's address book moves from the data folder (where agents before it
/// moved kept it) to the runtime's tmpfs, once: it names network namespaces, which live in
/// `/run/netns` and end with a reboot just as containers do; on a disk its rewrite per pod
/// change allocated and freed an inode each time (a file system without a journal scans
/// past recently freed inodes on every allocation, so each run of pods made the next
/// slower).
fn move_address_book(os: &dyn Os, old: &std::path::Path, new: &std::path::Path) -> Result<(), crate::net::NetError> {
    let (from, to) = (old.join("ipam.json"), new.join("ipam.json"));
    let Some(book) = os.read_file(&from)? else { return Ok(()) };
    let empty = book.is_empty()
        || serde_json::from_slice::<std::collections::BTreeMap<String, String>>(&book).is_ok_and(|m| m.is_empty());
    if !empty && !os.exists(&to) {
        os.create_dir_all(new)?;
        os.write_file_unsynced(&to, &book)?;
        tracing::info!(from = %from.display(), to = %to.display(), "moved the pod network's address book");
    }
    os.remove_file(&from)?;
    os.remove_file(&old.join("nat.nft"))?;
    let _ = os.remove_dir(old);
    Ok(())
}

/// Whether the runtime folder has anything but its empty top folders.
fn holds_state(os: &dyn Os, dir: &std::path::Path) -> bool {
    const TOP: [&str; 4] = ["sandboxes", "containers", "runtime", "network"];
    match os.list_dir(dir) {
        Ok(names) => names
            .iter()
            .any(|n| !TOP.contains(&n.as_str()) || !os.list_dir(&dir.join(n)).map(|v| v.is_empty()).unwrap_or(false)),
        Err(_) => true,
    }
}

/// Unmount the runtime's tmpfs when the agent leaves nothing in it (every pod gone), so a
/// node taken down leaves no mount behind; with containers still running it stays for the
/// next agent to find them.
fn release_volatile_state(os: &dyn Os, dir: &std::path::Path) {
    let ours = matches!(os.is_tmpfs(dir), Ok(true)) && os.mounts_under(dir).is_ok_and(|m| m == [dir.to_path_buf()]);
    if !ours || holds_state(os, dir) {
        return;
    }
    if let Err(e) = os.unmount(dir) {
        tracing::warn!(error = %e, dir = %dir.display(), "unmounting the runtime's tmpfs");
    }
}

/// A sealed in-memory copy of the OCI runtime binary to run instead of the file, or `None`
/// (run the file) if that fails. crun and runc guard against a container overwriting their
/// binary (CVE-2019-5736) by re-executing themselves from a sealed copy on every
/// invocation (a bind mount, a remount and an unmount in the caller's mount namespace, a
/// second exec and dynamic link: more than half of a `crun list`'s CPU); they skip that
/// when they already run from one, which is what this is, made once for the agent's life.
fn sealed_runtime(os: &dyn Os, program: &std::path::Path) -> Option<PathBuf> {
    let copy = os.sealed_copy(program).and_then(|path| {
        // A machine may forbid running memory files (`vm.memfd_noexec`): try once.
        let out = os.run(&path, &["--version".into()])?;
        match out.success {
            true => Ok(path),
            false => Err(crate::os::OsError::Command { what: "running the sealed copy", detail: out.stderr }),
        }
    });
    match copy {
        Ok(path) => Some(path),
        Err(e) => {
            tracing::warn!(error = %e, program = %program.display(), "running the OCI runtime from its file");
            None
        }
    }
}

/// Once the pod cache is filled, and every [`SWEEP`] after, removes sandboxes no pod claims.
async fn sweep_loop(node: Arc<Node>, cache: Cache, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    tokio::select! {
        _ = cache.wait_ready() => {}
        _ = &mut stop => return,
    }
    loop {
        let live = pods::live_uids(&cache);
        let n = node.clone();
        match tokio::task::spawn_blocking(move || n.sweep(&live, Duration::from_secs(2))).await {
            Ok(Ok(0)) => {}
            Ok(Ok(removed)) => tracing::info!(removed, "removed sandboxes without a pod"),
            Ok(Err(e)) => tracing::warn!(error = %e, "sweeping sandboxes"),
            Err(e) => tracing::warn!(error = %e, "sweeping sandboxes"),
        }
        tokio::select! {
            _ = tokio::time::sleep(SWEEP) => {}
            _ = &mut stop => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::os::{Call, FakeOs};

    #[test]
    fn the_runtime_runs_from_a_sealed_copy_once_it_is_seen_to_run() {
        let os = FakeOs::new("created 1", Vec::new());
        let path = sealed_runtime(&os, Path::new("/usr/bin/crun"));
        assert_eq!(path.as_deref(), Some(Path::new("/proc/1/fd/3")));
        let calls = os.calls();
        assert_eq!(calls[0], Call::SealedCopy("/usr/bin/crun".into()));
        assert!(matches!(&calls[1], Call::Run(a) if a[..2] == ["/proc/1/fd/3", "--version"]), "{calls:?}");
        assert!(os.mounts().is_empty());
    }

    #[test]
    fn the_runtime_state_gets_a_tmpfs_that_outlives_the_agent_only_while_it_holds_containers() {
        let os = FakeOs::new("created 1", Vec::new());
        let dir = Path::new("/data/runtime");
        volatile_state(&os, dir).unwrap();
        assert_eq!(os.mounts(), [dir.to_path_buf()]);
        // A restarted agent finds it mounted and keeps it.
        volatile_state(&os, dir).unwrap();
        assert_eq!(os.calls().iter().filter(|c| matches!(c, Call::MountTmpfs(_))).count(), 1);
        // (The fake makes no parent folders.)
        for d in ["containers", "containers/c1"] {
            os.create_dir_all(&dir.join(d)).unwrap();
        }
        release_volatile_state(&os, dir);
        assert_eq!(os.mounts(), [dir.to_path_buf()], "a running container's records stay");
        os.remove_dir_all(&dir.join("containers/c1")).unwrap();
        os.create_dir_all(&dir.join("containers")).unwrap();
        release_volatile_state(&os, dir);
        assert!(os.mounts().is_empty());
    }

    #[test]
    fn the_address_book_moves_to_the_tmpfs_once_and_keeps_it_mounted_while_it_names_anything() {
        let os = FakeOs::new("created 1", Vec::new());
        let (data, dir) = (Path::new("/data/network"), Path::new("/data/runtime"));
        let book = br#"{"pod-a": "10.88.0.2"}"#;
        os.put_file(&data.join("ipam.json"), book);
        os.put_file(&data.join("nat.nft"), b"table ip t");
        volatile_state(&os, dir).unwrap();
        move_address_book(&os, data, &dir.join("network")).unwrap();
        assert_eq!(os.file(&dir.join("network/ipam.json")).as_deref(), Some(&book[..]));
        assert_eq!(os.file(&data.join("ipam.json")), None);
        assert_eq!(os.file(&data.join("nat.nft")), None);
        // Once moved, a second start finds nothing to move and leaves the book as it is.
        move_address_book(&os, data, &dir.join("network")).unwrap();
        assert_eq!(os.file(&dir.join("network/ipam.json")).as_deref(), Some(&book[..]));
        release_volatile_state(&os, dir);
        assert_eq!(os.mounts(), [dir.to_path_buf()], "a book naming a pod's network keeps the tmpfs");
        os.remove_file(&dir.join("network/ipam.json")).unwrap();
        release_volatile_state(&os, dir);
        assert!(os.mounts().is_empty());
        // An empty book on disk is removed, not moved.
        os.put_file(&data.join("ipam.json"), b"{}");
        move_address_book(&os, data, &dir.join("network")).unwrap();
        assert_eq!(os.file(&dir.join("network/ipam.json")), None);
        assert_eq!(os.file(&data.join("ipam.json")), None);
    }

    #[test]
    fn records_already_on_disk_are_not_hidden_under_a_tmpfs() {
        let os = FakeOs::new("created 1", Vec::new());
        let dir = Path::new("/data/runtime");
        for d in ["sandboxes", "sandboxes/pod1"] {
            os.create_dir_all(&dir.join(d)).unwrap();
        }
        volatile_state(&os, dir).unwrap();
        assert!(os.mounts().is_empty());
        release_volatile_state(&os, dir);
        assert!(!os.calls().iter().any(|c| matches!(c, Call::Unmount(_))));
    }
}
