//! The agent against the real machine: root, a real OCI runtime (crun unless
//! `ATOLL_TEST_OCI_RUNTIME` names another), overlayfs, cgroups, and an image built from
//! Debian's busybox-static. A missing piece fails the test with what to install.

mod images;
mod netlink;
mod runtime;
mod sync;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use agent::images::{Image, ImageStore};
use agent::os::{Os, RealOs};
use agent::runtime::oci::{OciConfig, OciRuntime, find_program};
use agent::runtime::{
    ContainerSpec, ContainerState, ContainerStatus, ImageRootfs, NetworkMode, Resources, Runtime, SandboxSpec,
};

pub const BUSYBOX: &str = "/bin/busybox";

/// Fail loudly unless the machine can run containers.
pub fn require_machine() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap().split_whitespace().nth(1).unwrap().to_owned();
    assert_eq!(uid, "0", "these tests mount filesystems and run containers: run them as root");
    assert!(Path::new(BUSYBOX).is_file(), "{BUSYBOX} is missing: apt-get install busybox-static (scripts/lib.sh does)");
    let rt = runtime_name();
    assert!(
        find_program(Path::new(&rt)).is_some_and(|p| p.is_file()),
        "OCI runtime {rt} is missing: apt-get install {rt}"
    );
    if rt == "crun" {
        // crun 1.8 refuses hybrid cgroups while cgroup2 lists a controller (PLATFORM.md).
        let unified = std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers").unwrap_or_default();
        assert!(
            unified.trim().is_empty(),
            "cgroup2 lists controllers ({unified:?}); crun needs the hugetlb fix: run scripts/lib.sh's setup"
        );
    }
}

pub fn runtime_name() -> String {
    std::env::var("ATOLL_TEST_OCI_RUNTIME").unwrap_or_else(|_| "crun".into())
}

pub struct Node {
    pub dir: tempfile::TempDir,
    pub os: Arc<RealOs>,
    pub images: ImageStore,
    pub cgroup_parent: String,
}

impl Node {
    pub fn setup() -> Node {
        require_machine();
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = tempfile::tempdir().unwrap();
        let os = Arc::new(RealOs::new());
        let images = ImageStore::open(&dir.path().join("images"), os.clone()).unwrap();
        let cgroup_parent = format!("atoll-test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        Node { dir, os, images, cgroup_parent }
    }

    pub fn busybox(&self) -> Image {
        let layout = self.dir.path().join("busybox-layout");
        if !layout.exists() {
            agent::busybox::build_layout(Path::new(BUSYBOX), &layout, "busybox").unwrap();
        }
        self.images.import(&layout, None).unwrap().remove(0)
    }

    pub fn runtime(&self) -> OciRuntime {
        self.runtime_named(&runtime_name())
    }

    pub fn runtime_named(&self, name: &str) -> OciRuntime {
        let mut cfg =
            OciConfig::new(name, vec![env!("CARGO_BIN_EXE_agent-shim").into()], self.dir.path().join("runtime"));
        cfg.cgroup_parent = self.cgroup_parent.clone();
        // Where the agent keeps them (`daemon`): beside the runtime's folder, which the agent
        // makes a tmpfs.
        cfg.layers_dir = self.dir.path().join("layers");
        OciRuntime::new(cfg, self.os.clone()).unwrap()
    }

    pub fn rootfs(&self, image: &Image) -> ImageRootfs {
        ImageRootfs {
            reference: image.names[0].clone(),
            layers: self.images.layer_dirs(image).unwrap(),
            config: image.config.config.clone().unwrap_or_default(),
        }
    }

    /// Everything this node may have left on the machine: mounts under its folder and
    /// cgroup folders under its parent.
    pub fn leftovers(&self) -> Vec<PathBuf> {
        let mut out = self.os.mounts_under(self.dir.path()).unwrap();
        for h in self.os.cgroup_hierarchies(Path::new("/sys/fs/cgroup")).unwrap() {
            let top = h.join(&self.cgroup_parent);
            if let Ok(entries) = std::fs::read_dir(&top) {
                out.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
            }
        }
        out
    }

    /// [`Node::leftovers`] while an agent runs on this node's folder: its runtime folder is
    /// then its tmpfs, which is no pod's.
    pub fn leftovers_beside_the_agent(&self) -> Vec<PathBuf> {
        let agent_tmpfs = self.dir.path().join("runtime");
        self.leftovers().into_iter().filter(|m| *m != agent_tmpfs).collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Unmount before the temporary folder goes, and drop our top cgroup folders.
        for m in self.os.mounts_under(self.dir.path()).unwrap_or_default() {
            let _ = self.os.unmount(&m);
        }
        // A failed test may leave pod and container folders: remove the tree, deepest first.
        fn rmdir_tree(dir: &Path) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    rmdir_tree(&e.path());
                }
            }
            let _ = std::fs::remove_dir(dir);
        }
        for h in self.os.cgroup_hierarchies(Path::new("/sys/fs/cgroup")).unwrap_or_default() {
            rmdir_tree(&h.join(&self.cgroup_parent));
        }
    }
}

pub fn sandbox(id: &str) -> SandboxSpec {
    SandboxSpec {
        id: id.into(),
        name: id.into(),
        namespace: "default".into(),
        tenant: "acme".into(),
        hostname: id.into(),
        network: NetworkMode::Isolated,
        runtime_handler: String::new(),
    }
}

pub fn container(node: &Node, image: &Image, name: &str, script: &str) -> ContainerSpec {
    ContainerSpec {
        name: name.into(),
        image: node.rootfs(image),
        command: Some(vec!["sh".into(), "-c".into(), script.into()]),
        args: None,
        env: vec![],
        working_dir: None,
        user: None,
        resources: Resources::default(),
        log_path: None,
        stdin: false,
        stdin_once: false,
        tty: false,
        vm: None,
    }
}

pub fn wait_state(rt: &dyn Runtime, id: &str, want: ContainerState, within: Duration) -> ContainerStatus {
    let deadline = Instant::now() + within;
    loop {
        let s = rt.container_status(id).unwrap();
        if s.state == want {
            return s;
        }
        assert!(Instant::now() < deadline, "container {id} still {:?} after {within:?}, wanted {want:?}", s.state);
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn pid_alive(pid: u32) -> bool {
    // A zombie is dead for our purposes.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().and_then(|r| r.split_whitespace().next()) != Some("Z"))
        .unwrap_or(false)
}
