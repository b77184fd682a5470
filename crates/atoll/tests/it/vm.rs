//! VM pods end to end: `atoll up` with real qemu (TCG) on this machine, driven by the real
//! kubectl. A pod with `spec.virtualMachine` boots the local `busybox-vm` image, becomes
//! Running when the guest prints its ready marker, its console (with the user data's
//! output) is the pod's CRI log, a guest that powers itself off ends the pod Succeeded, a
//! pod with both containers and a VM is refused with 422, and deleting pods leaves no qemu
//! process, disk overlay or cgroup behind.
//!
//! Needs qemu-system-x86_64, qemu-img, mke2fs and a guest kernel with its modules:
//! `scripts/lib.sh` (`setup_vm`) installs them and extracts Debian's cloud kernel to
//! `/var/cache/atoll/kernel` (override with `ATOLL_VM_KERNEL` and `ATOLL_VM_MODULES`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use crate::server::{Kubectl, Proc, kubectl_binary};

pub(crate) fn guest_kernel() -> Result<(PathBuf, PathBuf)> {
    let kernel = std::env::var_os("ATOLL_VM_KERNEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/cache/atoll/kernel/vmlinuz".into());
    let modules = std::env::var_os("ATOLL_VM_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/cache/atoll/kernel/modules".into());
    ensure!(
        kernel.is_file() && modules.is_dir(),
        "no guest kernel at {} with modules at {} (run scripts/test.sh, whose setup extracts one)",
        kernel.display(),
        modules.display()
    );
    Ok((kernel, modules))
}

/// qemu processes whose command line names `needle` (with their cgroups).
pub(crate) fn qemu_processes(needle: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let path = entry?.path();
        let Ok(cmdline) = std::fs::read(path.join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.starts_with(env!("CARGO_BIN_EXE_atoll")) {
            continue;
        }
        if cmdline.contains("qemu-system") && cmdline.contains(needle) {
            let cgroup = std::fs::read_to_string(path.join("cgroup")).unwrap_or_default();
            out.push(format!("{cmdline}\ncgroup: {cgroup}"));
        }
    }
    Ok(out)
}

fn vm_pod(name: &str, user_data: &str) -> String {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 10,
                 "virtualMachine": {"name": "vm", "image": "busybox-vm", "imagePullPolicy": "Never",
                                    "userData": user_data,
                                    "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}}}}
    })
    .to_string()
}

/// The pod's console log (attempt 0), from the agent's log folder.
pub(crate) fn console(dir: &Path, k: &Kubectl, pod: &str) -> Result<String> {
    let uid = k.ok(&["get", "pod", pod, "-o", "jsonpath={.metadata.uid}"])?;
    let path = dir.join(format!("agent/logs/system/default_{pod}_{}/vm/0.log", uid.trim()));
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

#[test]
fn vm_pods_boot_report_and_leave_nothing_behind() -> Result<()> {
    let (kernel, modules) = guest_kernel()?;
    for tool in ["qemu-system-x86_64", "qemu-img", "mke2fs"] {
        let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output()?;
        ensure!(found.status.success(), "{tool} is missing (scripts/lib.sh installs it)");
    }
    let dir = tempfile::tempdir()?;
    let built = Command::new(env!("CARGO_BIN_EXE_atoll"))
        .args(["image", "build-busybox-vm", "--kernel"])
        .arg(&kernel)
        .arg("--modules")
        .arg(&modules)
        .arg("--data-dir")
        .arg(dir.path())
        .output()?;
    ensure!(built.status.success(), "atoll image build-busybox-vm: {}", String::from_utf8_lossy(&built.stderr));

    let node = "vm-e2e-node";
    // A bridge and CIDR of their own: other tests' agents may share the machine.
    let pid = std::process::id();
    let (bridge, cidr) = (format!("atv{pid}"), format!("10.{}.{}.0/24", 150 + (pid >> 8) % 50, pid % 256));
    let mut child = Command::new(env!("CARGO_BIN_EXE_atoll"))
        .args(["up", "--listen", "127.0.0.1:0", "--node-name", node, "--bridge", &bridge, "--pod-cidr", &cidr])
        .args(["--vm-accel", "tcg", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut reader = BufReader::new(child.stdout.take().context("stdout")?);
    let cluster = Proc(child);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    ensure!(line.starts_with("listening on https://"), "{line}");
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    let k = Kubectl {
        bin: kubectl_binary(33)?,
        kubeconfig: dir.path().join("admin.kubeconfig"),
        cache: tempfile::tempdir()?,
    };
    let result = (|| -> Result<()> {
        k.eventually(&["get", "node", node])?;
        k.ok(&["wait", &format!("node/{node}"), "--for=condition=Ready", "--timeout=30s"])?;

        // Containers and a VM in one pod: refused, naming the field.
        let both = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "both"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}],
                     "virtualMachine": {"name": "vm", "image": "busybox-vm"}}
        })
        .to_string();
        let out = k.run(&["create", "-f", "-", "-v=6"], Some(&both))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "a pod with containers and a VM was accepted");
        ensure!(
            stderr.contains("422") && stderr.contains("spec.containers: Forbidden"),
            "expected a 422 naming spec.containers: {stderr}"
        );
        // Strict field validation knows the VM's fields.
        let typo = vm_pod("typo", "true").replace("\"userData\"", "\"userDataa\"");
        let err = k.run(&["create", "-f", "-", "--validate=strict"], Some(&typo))?;
        ensure!(
            !err.status.success() && String::from_utf8_lossy(&err.stderr).contains("userDataa"),
            "strict validation let spec.virtualMachine.userDataa through: {}",
            String::from_utf8_lossy(&err.stderr)
        );

        // One VM that stays up, one whose user data powers it off. The scheduler places both.
        let start = Instant::now();
        k.ok_with(&["create", "-f", "-"], Some(&vm_pod("vm1", "#!/bin/sh\necho hello from user data\n")))?;
        k.ok_with(&["create", "-f", "-"], Some(&vm_pod("vm2", "echo bye from vm2; poweroff -f")))?;
        k.ok(&["wait", "pod/vm1", "--for=jsonpath={.status.phase}=Running", "--timeout=120s"])?;
        let boot = start.elapsed();
        eprintln!("VM pod create -> Running: {boot:?}");
        let row = k.ok(&["get", "pod", "vm1", "--no-headers"])?;
        ensure!(row.contains("1/1") && row.contains("Running"), "kubectl get pod vm1: {row}");
        let id = k.ok(&["get", "pod", "vm1", "-o", "jsonpath={.status.containerStatuses[0].containerID}"])?;
        ensure!(id.starts_with("qemu://"), "the VM's containerID: {id:?}");
        let placed = k.ok(&["get", "pod", "vm1", "-o", "jsonpath={.spec.nodeName}"])?;
        ensure!(placed == node, "placed on {placed:?}");
        let overhead = k.ok(&["get", "pod", "vm1", "-o", "jsonpath={.spec.overhead.memory}"])?;
        ensure!(!overhead.is_empty(), "no qemu overhead on the VM pod");

        // The console is the pod's CRI log: the marker, then the user data's output.
        let deadline = Instant::now() + Duration::from_secs(60);
        let log = loop {
            let log = console(dir.path(), &k, "vm1")?;
            if log.contains("hello from user data") {
                break log;
            }
            ensure!(Instant::now() < deadline, "no user data output on the console:\n{log}");
            std::thread::sleep(Duration::from_millis(200));
        };
        let marker = log.lines().find(|l| l.contains("atoll-guest: ready")).context("no ready marker")?;
        let fields: Vec<&str> = marker.splitn(4, ' ').collect();
        ensure!(fields.len() == 4 && fields[1] == "stdout" && fields[2] == "F", "not a CRI record: {marker}");

        let uid1 = k.ok(&["get", "pod", "vm1", "-o", "jsonpath={.metadata.uid}"])?;
        let overlay = dir.path().join(format!("agent/vm/{uid1}/disk.qcow2"));
        ensure!(overlay.is_file(), "no disk overlay at {}", overlay.display());
        let qemu = qemu_processes(&uid1)?;
        ensure!(qemu.len() == 1, "one qemu for vm1: {qemu:?}");
        // qemu lives in the VM's own cgroup, not the agent's.
        ensure!(qemu[0].contains(&format!("/atoll/pod-{uid1}/vm-0")), "qemu's cgroup: {}", qemu[0]);

        // A guest that powers off ends its pod (restartPolicy Never): Succeeded.
        k.ok(&["wait", "pod/vm2", "--for=jsonpath={.status.phase}=Succeeded", "--timeout=120s"])?;
        ensure!(console(dir.path(), &k, "vm2")?.contains("bye from vm2"), "vm2's user data did not run");
        let uid2 = k.ok(&["get", "pod", "vm2", "-o", "jsonpath={.metadata.uid}"])?;
        ensure!(qemu_processes(&uid2)?.is_empty(), "vm2's qemu outlived its guest");

        // Deletion: the guest is asked to power off, then nothing of either VM is left.
        k.ok(&["delete", "pod", "vm1", "vm2", "--timeout=60s"])?;
        for uid in [&uid1, &uid2] {
            ensure!(qemu_processes(uid)?.is_empty(), "a qemu of pod {uid} is left: {:?}", qemu_processes(uid)?);
            let folder = dir.path().join(format!("agent/vm/{uid}"));
            ensure!(!folder.exists(), "{} (and its overlay) is left", folder.display());
            for hierarchy in std::fs::read_dir("/sys/fs/cgroup")? {
                let cgroup = hierarchy?.path().join(format!("atoll/pod-{uid}"));
                ensure!(!cgroup.exists(), "{} is left", cgroup.display());
            }
        }
        k.fails(&["get", "pod", "vm1"])?;
        Ok(())
    })();
    // Ctrl-C: `atoll up` stops its pods (VMs included) on the way out.
    let mut cluster = cluster;
    let stopped = cluster.interrupt(Duration::from_secs(30));
    let _ = Command::new("ip").args(["link", "del", "dev", &bridge]).status();
    let _ = Command::new("nft").args(["delete", "table", "ip", &format!("atoll-{bridge}")]).status();
    result.and(stopped)
}
