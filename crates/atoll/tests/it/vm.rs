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

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use crate::server::{Kubectl, Proc, kubectl_binary, own_network, start_up, stop_with_network};

/// Fails loudly unless every program in `tools` is on the PATH (scripts/lib.sh installs them).
pub(crate) fn require_tools(tools: &[&str]) -> Result<()> {
    for tool in tools {
        let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output()?;
        ensure!(found.status.success(), "{tool} is missing (scripts/lib.sh installs it)");
    }
    Ok(())
}

/// Runs `atoll image <args> --data-dir <dir>` (an image builder) and fails with its stderr.
pub(crate) fn build_image(dir: &Path, args: &[&std::ffi::OsStr]) -> Result<()> {
    let built =
        Command::new(env!("CARGO_BIN_EXE_atoll")).arg("image").args(args).arg("--data-dir").arg(dir).output()?;
    ensure!(built.status.success(), "atoll image {args:?}: {}", String::from_utf8_lossy(&built.stderr));
    Ok(())
}

/// The guest image `busybox-vm` (our initramfs and guest agent on the guest kernel) in
/// `dir`'s image store.
pub(crate) fn build_vm_image(dir: &Path) -> Result<()> {
    build_vm_image_with(dir, &[])
}

/// `build_vm_image` with more arguments (`--name`, `--no-guest-agent`).
pub(crate) fn build_vm_image_with(dir: &Path, more: &[&str]) -> Result<()> {
    let (kernel, modules) = guest_kernel()?;
    let guest = Path::new(env!("CARGO_BIN_EXE_atoll-guest"));
    let mut args = vec![
        "build-busybox-vm".as_ref(),
        "--kernel".as_ref(),
        kernel.as_os_str(),
        "--modules".as_ref(),
        modules.as_os_str(),
    ];
    if !more.contains(&"--no-guest-agent") {
        args.extend(["--guest".as_ref(), guest.as_os_str()]);
    }
    args.extend(more.iter().map(std::ffi::OsStr::new));
    build_image(dir, &args)
}

/// A boot sector that writes the ready marker to the first serial port and halts: the
/// smallest bootable disk there is (`cld; xor ax,ax; mov ds,ax; mov si,msg; mov dx,0x3f8;
/// lodsb/out until NUL; hlt`).
fn marker_disk() -> Vec<u8> {
    let mut s = vec![0u8; 512];
    let code = [
        0xfc, 0x31, 0xc0, 0x8e, 0xd8, 0xbe, 0x16, 0x7c, 0xba, 0xf8, 0x03, 0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb,
        0xf8, 0xf4, 0xeb, 0xfd,
    ];
    s[..code.len()].copy_from_slice(&code);
    let msg = b"disk-only guest\r\natoll-guest: ready\r\n\0";
    s[code.len()..code.len() + msg.len()].copy_from_slice(msg);
    s[510] = 0x55;
    s[511] = 0xaa;
    s.resize(1 << 20, 0);
    s
}

/// VM images come from a registry as container images do: `busybox-vm` pushed to a real
/// `docker-registry` (TLS, basic auth) is pulled by the node with the pod's
/// `imagePullSecrets` and `imagePullPolicy: Always`, boots, and answers exec. A plain disk
/// file imported with `atoll image import --vm-disk` is a VM image too, booted by the firmware.
#[test]
fn vm_images_come_from_a_registry_or_a_disk_file() -> Result<()> {
    use crate::registry::{PASSWORD, USER, atoll, docker_config, run, start_registry};
    require_tools(&["qemu-system-x86_64", "qemu-img", "mke2fs"])?;
    let reg = tempfile::tempdir()?;
    let (registry, addr) = start_registry(reg.path())?;
    let _registry = registry;
    let ca = reg.path().join("ca.pem");
    let ca = ca.to_str().context("path")?;
    let creds = docker_config(reg.path(), &addr)?;
    let seed = tempfile::tempdir()?;
    build_vm_image(seed.path())?;
    let image = format!("{addr}/vms/busybox-vm:v1");
    let seed_arg = seed.path().to_str().context("path")?;
    let creds_arg = creds.to_str().context("path")?;
    let pushed = run(atoll(&["image", "push", "busybox-vm", &image, "--data-dir", seed_arg]).args([
        "--registry-ca",
        ca,
        "--registry-config",
        creds_arg,
    ]))?;
    ensure!(pushed.starts_with("pushed "), "{pushed}");

    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("marker.raw");
    std::fs::write(&disk, marker_disk())?;
    build_image(
        dir.path(),
        &["import".as_ref(), disk.as_os_str(), "--vm-disk".as_ref(), "--name".as_ref(), "diskonly:v1".as_ref()],
    )?;
    let (cluster, k, bridge) = vm_cluster_with(dir.path(), "vm-pull-node", "atp", 60, &["--registry-ca", ca])?;
    let result = (|| -> Result<()> {
        k.ok(&[
            "create",
            "secret",
            "docker-registry",
            "regcred",
            &format!("--docker-server={addr}"),
            &format!("--docker-username={USER}"),
            &format!("--docker-password={PASSWORD}"),
        ])?;
        let mut pulled: serde_json::Value = serde_json::from_str(&vm_pod_of("pulled", &image, "echo up"))?;
        pulled["spec"]["virtualMachine"]["imagePullPolicy"] = serde_json::json!("Always");
        pulled["spec"]["imagePullSecrets"] = serde_json::json!([{"name": "regcred"}]);
        k.ok_with(&["create", "-f", "-"], Some(&pulled.to_string()))?;
        k.ok_with(&["create", "-f", "-"], Some(&vm_pod_of("disk", "diskonly:v1", "")))?;
        k.ok(&["wait", "pod/pulled", "pod/disk", "--for=jsonpath={.status.phase}=Running", "--timeout=180s"])?;
        let events = k.ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=pulled",
            "-o",
            "jsonpath={.items[*].reason}",
        ])?;
        ensure!(events.contains("Pulling") && events.contains("Pulled"), "no pull events for the VM image: {events}");
        let echoed = k.ok(&["exec", "pulled", "-c", "vm", "--", "echo", "pulled and running"])?;
        ensure!(echoed == "pulled and running\n", "exec into the pulled VM: {echoed:?}");
        k.ok(&["wait", "pod/disk", "--for=condition=Ready", "--timeout=60s"])?;
        let log = console(dir.path(), &k, "disk")?;
        ensure!(log.contains("disk-only guest"), "the disk's boot sector did not run: {log}");
        let uids: Vec<String> = ["pulled", "disk"]
            .iter()
            .map(|p| k.ok(&["get", "pod", p, "-o", "jsonpath={.metadata.uid}"]))
            .collect::<Result<_>>()?;
        k.ok(&["delete", "pod", "pulled", "disk", "--timeout=60s"])?;
        for uid in &uids {
            ensure!(qemu_processes(uid)?.is_empty(), "a qemu of pod {uid} is left");
            ensure!(!dir.path().join(format!("agent/vm/{uid}")).exists(), "pod {uid}'s VM folder is left");
        }
        Ok(())
    })();
    let mut cluster = cluster;
    result.and(stop_with_network(&mut cluster, &bridge, Duration::from_secs(30)))
}

/// `kubectl exec` into a VM pod goes through the guest agent: the command runs in the
/// guest (as root, in its own root file system), with stdin, stdout, stderr and its exit
/// code; a VM whose image has no agent answers with a clear error, not a hang.
/// Credentials: the VM's authorized key and root's password hash (from a Secret, hashed on
/// the node) are in the guest; the password's plain text is in no process's command line
/// and no file under the agent's data folder; bad credentials fields are a 422.
#[test]
fn vm_exec_goes_through_the_guest_agent() -> Result<()> {
    require_tools(&["qemu-system-x86_64", "qemu-img", "mke2fs"])?;
    let dir = tempfile::tempdir()?;
    build_vm_image(dir.path())?;
    build_vm_image_with(dir.path(), &["--name", "bare-vm:latest", "--no-guest-agent"])?;
    let (cluster, k, bridge) = vm_cluster(dir.path(), "vm-exec-node", "ate", 100)?;
    let result = (|| -> Result<()> {
        // Credentials that are not keys or references: 422, naming each field.
        let mut bad: serde_json::Value = serde_json::from_str(&vm_pod("bad", "true"))?;
        bad["spec"]["virtualMachine"]["sshAuthorizedKeys"] = serde_json::json!(["not a key"]);
        bad["spec"]["virtualMachine"]["passwordSecretRef"] = serde_json::json!({"name": "vm-root"});
        let out = k.run(&["create", "-f", "-", "-v=6"], Some(&bad.to_string()))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success()
                && stderr.contains("422")
                && stderr.contains("spec.virtualMachine.sshAuthorizedKeys[0]: Invalid value")
                && stderr.contains("spec.virtualMachine.passwordSecretRef.key: Required value"),
            "bad credentials: {stderr}"
        );
        let password = "Plain-Text-Pa55word-e2e";
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHNvbWUta2V5LWZvci10aGUtZTJl e2e@atoll";
        k.ok(&["create", "secret", "generic", "vm-root", &format!("--from-literal=password={password}")])?;
        let mut vm1: serde_json::Value = serde_json::from_str(&vm_pod("vm1", "echo up"))?;
        vm1["spec"]["virtualMachine"]["sshAuthorizedKeys"] = serde_json::json!([key]);
        vm1["spec"]["virtualMachine"]["passwordSecretRef"] = serde_json::json!({"name": "vm-root", "key": "password"});
        k.ok_with(&["create", "-f", "-"], Some(&vm1.to_string()))?;
        // A Secret that does not exist: the VM waits, as a container with a missing Secret does.
        let mut lost: serde_json::Value = serde_json::from_str(&vm_pod("lost", "true"))?;
        lost["spec"]["virtualMachine"]["passwordSecretRef"] = serde_json::json!({"name": "nope", "key": "password"});
        k.ok_with(&["create", "-f", "-"], Some(&lost.to_string()))?;
        k.ok_with(&["create", "-f", "-"], Some(&vm_pod_of("bare", "bare-vm", "echo up")))?;
        k.ok(&["wait", "pod/vm1", "pod/bare", "--for=jsonpath={.status.phase}=Running", "--timeout=180s"])?;
        let script = "echo out; echo err >&2; id -u; [ -x /etc/poweroff ] && echo guest-root; exit 7";
        let start = Instant::now();
        let out = k.run(&["exec", "vm1", "-c", "vm", "--", "sh", "-c", script], None)?;
        eprintln!("first exec into a VM: {:?}", start.elapsed());
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        ensure!(out.status.code() == Some(7), "kubectl passes the guest's exit code on: {:?} ({stderr})", out.status);
        ensure!(stderr.contains("command terminated with exit code 7"), "the guest's exit code: {stderr}");
        ensure!(stdout == "out\n0\nguest-root\n", "the command did not run in the guest as root: {stdout:?}");
        ensure!(stderr.contains("err"), "the guest's stderr: {stderr:?}");
        let start = Instant::now();
        let echoed =
            k.ok_with(&["exec", "-i", "vm1", "-c", "vm", "--", "sh", "-c", "cat; hostname"], Some("piped in\n"))?;
        eprintln!("second exec into a VM: {:?}", start.elapsed());
        ensure!(echoed.starts_with("piped in\n"), "stdin did not reach the guest: {echoed:?}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let waiting = k.ok(&[
                "get",
                "pod",
                "lost",
                "-o",
                "jsonpath={.status.containerStatuses[0].state.waiting.reason} {.status.containerStatuses[0].state.waiting.message}",
            ])?;
            if waiting.starts_with("CreateContainerConfigError") {
                ensure!(waiting.contains("secret \"nope\" not found"), "{waiting}");
                break;
            }
            ensure!(Instant::now() < deadline, "the VM with a missing Secret: {waiting:?}");
            std::thread::sleep(Duration::from_millis(500));
        }
        // The credentials, as the guest init installed them.
        let shown = k.ok(&[
            "exec",
            "vm1",
            "-c",
            "vm",
            "--",
            "sh",
            "-c",
            "cat /root/.ssh/authorized_keys; stat -c %a /root/.ssh/authorized_keys /etc/shadow; grep ^root: /etc/shadow",
        ])?;
        let lines: Vec<&str> = shown.lines().collect();
        ensure!(lines.len() == 4 && lines[0] == key && lines[1] == "600" && lines[2] == "600", "{shown}");
        let hash = lines[3].split(':').nth(1).context("no hash for root")?;
        ensure!(hash.starts_with("$6$"), "root's password is not a SHA-512 crypt hash: {}", lines[3]);
        let salt = hash.split('$').nth(2).context("no salt")?;
        ensure!(
            agent::vm_credentials::sha512_crypt(password.as_bytes(), salt) == hash,
            "root's hash is not of the Secret's password"
        );
        let uid1 = k.ok(&["get", "pod", "vm1", "-o", "jsonpath={.metadata.uid}"])?;
        ensure!(
            !dir.path().join(format!("agent/vm/{uid1}/0/credentials")).exists(),
            "the credentials file outlived the boot"
        );
        for entry in std::fs::read_dir("/proc")? {
            let Ok(cmdline) = std::fs::read(entry?.path().join("cmdline")) else { continue };
            ensure!(!String::from_utf8_lossy(&cmdline).contains(password), "the password is on a command line");
        }
        let mut files = vec![dir.path().join("agent")];
        let mut scanned = 0;
        while let Some(path) = files.pop() {
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            if meta.is_dir() {
                files.extend(std::fs::read_dir(&path)?.flatten().map(|e| e.path()));
            } else if meta.is_file() {
                let bytes = std::fs::read(&path).unwrap_or_default();
                ensure!(
                    !bytes.windows(password.len()).any(|w| w == password.as_bytes()),
                    "the password's plain text is in {}",
                    path.display()
                );
                scanned += 1;
            }
        }
        ensure!(scanned > 10, "only {scanned} files under the agent's folder");
        // An image without the agent: an error naming it, well before any kubectl timeout.
        let start = Instant::now();
        let out = k.run(&["exec", "bare", "-c", "vm", "--", "true"], None)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success() && stderr.contains("atoll-guest"), "exec into a VM without the agent: {stderr}");
        ensure!(start.elapsed() < Duration::from_secs(60), "exec without an agent took {:?}", start.elapsed());
        let uids: Vec<String> = ["vm1", "bare"]
            .iter()
            .map(|p| k.ok(&["get", "pod", p, "-o", "jsonpath={.metadata.uid}"]))
            .collect::<Result<_>>()?;
        k.ok(&["delete", "pod", "vm1", "bare", "lost", "--timeout=60s"])?;
        for uid in &uids {
            ensure!(qemu_processes(uid)?.is_empty(), "a qemu of pod {uid} is left");
            ensure!(!dir.path().join(format!("agent/vm/{uid}")).exists(), "pod {uid}'s VM folder is left");
        }
        Ok(())
    })();
    let mut cluster = cluster;
    result.and(stop_with_network(&mut cluster, &bridge, Duration::from_secs(30)))
}

/// `atoll up` on `dir` with TCG guests, on a bridge and /24 of its own (`own_network`), and
/// an administrator's kubectl once `node` is Ready. Returns the cluster, kubectl and the bridge.
pub(crate) fn vm_cluster(dir: &Path, node: &str, prefix: &str, base: u32) -> Result<(Proc, Kubectl, String)> {
    vm_cluster_with(dir, node, prefix, base, &[])
}

/// `vm_cluster` with more `atoll up` arguments.
pub(crate) fn vm_cluster_with(
    dir: &Path,
    node: &str,
    prefix: &str,
    base: u32,
    more: &[&str],
) -> Result<(Proc, Kubectl, String)> {
    let (bridge, cidr) = own_network(prefix, base);
    let mut args = vec!["--node-name", node, "--bridge", &bridge, "--pod-cidr", &cidr, "--vm-accel", "tcg"];
    args.extend(more);
    let mut cluster = start_up(dir, &args)?;
    let k = Kubectl { bin: kubectl_binary(33)?, kubeconfig: dir.join("admin.kubeconfig"), cache: tempfile::tempdir()? };
    let ready = k
        .eventually(&["get", "node", node])
        .and_then(|_| k.ok(&["wait", &format!("node/{node}"), "--for=condition=Ready", "--timeout=30s"]));
    if let Err(e) = ready {
        let _ = stop_with_network(&mut cluster, &bridge, Duration::from_secs(30));
        return Err(e);
    }
    Ok((cluster, k, bridge))
}

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
    vm_pod_of(name, "busybox-vm", user_data)
}

fn vm_pod_of(name: &str, image: &str, user_data: &str) -> String {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 10,
                 "virtualMachine": {"name": "vm", "image": image, "imagePullPolicy": "Never",
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
    require_tools(&["qemu-system-x86_64", "qemu-img", "mke2fs"])?;
    let dir = tempfile::tempdir()?;
    build_vm_image(dir.path())?;
    let node = "vm-e2e-node";
    let (cluster, k, bridge) = vm_cluster(dir.path(), node, "atv", 150)?;
    let result = (|| -> Result<()> {
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
    result.and(stop_with_network(&mut cluster, &bridge, Duration::from_secs(30)))
}
