//! The `atoll.io/v1` Action kind end to end, with the real kubectl.
//!
//! - `actions_are_admitted_authorized_and_node_restricted` (API server only): validation
//!   (422 naming fields), the server-set `spec.nodeName`, an immutable spec, the table
//!   columns, `get` on the pod required at admission (the same 403 whether the pod exists
//!   or not), another tenant's pod never found (404), and node restriction (a node sees and
//!   updates the status of its own Actions only).
//! - `actions_reboot_snapshot_restore_vms_and_restart_containers` (`atoll up` with real qemu
//!   under TCG): a VM pod's guest runs a user-data script that counts its boots on its disk,
//!   writes a marker file on that disk only from its second boot on, and every second prints
//!   a heartbeat with the boot number and the disk's listing (read past the page cache). So:
//!   Snapshot in boot 1 → Reboot (the guest boots again in the same qemu: boot 2 writes the
//!   marker) → Restore → the console shows boot 1's heartbeat and a disk without the marker
//!   (memory and disk are back). Then failures (a name taken twice, an unknown snapshot, a
//!   Snapshot of a container pod), a Restart of a busybox pod (restart count up), and
//!   deletion leaving no qemu, overlay or snapshot. Snapshot and Restore times are printed
//!   (BENCHMARKS.md "VM actions").

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::json;

use crate::rbac::user_kubectl;
use crate::server::{Kubectl, Server, kubectl_binary, namespace_json, stop_with_network, tenant_admins_json};
use crate::vm::{build_image, build_vm_image, console, qemu_processes, require_tools, vm_cluster};

fn action(name: &str, pod: &str, operation: &str, snapshot: Option<&str>) -> String {
    let mut a = json!({"apiVersion": "atoll.io/v1", "kind": "Action", "metadata": {"name": name},
                       "spec": {"podName": pod, "operation": operation}});
    if let Some(s) = snapshot {
        a["spec"]["snapshotName"] = json!(s);
    }
    a.to_string()
}

fn bound_pod(name: &str, node: &str) -> String {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}})
    .to_string()
}

/// Runs kubectl expecting failure; returns stderr (with `-v=6`'s status codes).
fn refused(k: &Kubectl, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let out = k.run(args, stdin)?;
    ensure!(!out.status.success(), "{args:?} succeeded: {}", String::from_utf8_lossy(&out.stdout));
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn actions_are_admitted_authorized_and_node_restricted() -> Result<()> {
    let server = Server::start()?;
    let admin = Kubectl::new(33, &server)?;
    for (name, node) in [("p1", "n1"), ("p2", "n2")] {
        admin.ok_with(&["create", "-f", "-"], Some(&bound_pod(name, node)))?;
    }
    admin.ok(&["run", "p0", "--image=busybox", "--restart=Never"])?;

    // Shape: every wrong field at once, with 422.
    let bad = json!({"apiVersion": "atoll.io/v1", "kind": "Action", "metadata": {"name": "bad"},
                     "spec": {"podName": "p1", "operation": "Explode"}})
    .to_string();
    let err = refused(&admin, &["create", "-f", "-", "-v=6"], Some(&bad))?;
    ensure!(err.contains("422") && err.contains("spec.operation: Unsupported value: \"Explode\""), "{err}");
    let err = refused(&admin, &["create", "-f", "-"], Some(&action("nosnap", "p1", "Snapshot", None)))?;
    ensure!(err.contains("spec.snapshotName: Required value"), "{err}");
    let err = refused(&admin, &["create", "-f", "-"], Some(&action("badsnap", "p1", "Restore", Some("Not_A_Label"))))?;
    ensure!(err.contains("spec.snapshotName: Invalid value"), "{err}");
    let typo = action("typo", "p1", "Reboot", None).replace("podName", "podNmae");
    let err = refused(&admin, &["create", "-f", "-", "--validate=strict"], Some(&typo))?;
    ensure!(err.contains("podNmae"), "strict validation let spec.podNmae through: {err}");
    // A pod no node runs yet: nobody would ever act.
    let err = refused(&admin, &["create", "-f", "-"], Some(&action("early", "p0", "Restart", None)))?;
    ensure!(err.contains("not bound to a node yet"), "{err}");

    // The node comes from the pod, whatever the client says.
    let forged = action("a1", "p1", "Reboot", None).replace("\"operation\"", "\"nodeName\":\"n2\",\"operation\"");
    admin.ok_with(&["create", "-f", "-"], Some(&forged))?;
    admin.ok_with(&["create", "-f", "-"], Some(&action("a2", "p2", "Restart", None)))?;
    ensure!(admin.ok(&["get", "action", "a1", "-o", "jsonpath={.spec.nodeName}"])? == "n1");
    ensure!(admin.ok(&["get", "action", "a1", "-o", "jsonpath={.status.phase}"])? == "Pending");
    // A server-side apply that creates one is admitted the same way.
    let applied = action("ssa", "p2", "Reboot", None).replace("\"operation\"", "\"nodeName\":\"n1\",\"operation\"");
    admin.ok_with(&["apply", "--server-side", "-f", "-"], Some(&applied))?;
    ensure!(admin.ok(&["get", "action", "ssa", "-o", "jsonpath={.spec.nodeName}"])? == "n2");
    admin.ok(&["delete", "action", "ssa"])?;
    let table = admin.ok(&["get", "actions"])?;
    let header: Vec<&str> = table.lines().next().unwrap_or("").split_whitespace().collect();
    ensure!(header == ["NAME", "POD", "OPERATION", "PHASE", "AGE"], "kubectl get actions:\n{table}");
    ensure!(table.lines().any(|l| l.split_whitespace().take(4).eq(["a1", "p1", "Reboot", "Pending"])), "{table}");
    // Immutable once made.
    let err =
        refused(&admin, &["patch", "action", "a1", "--type=merge", "-p", r#"{"spec":{"operation":"Restart"}}"#], None)?;
    ensure!(err.contains("spec: Forbidden") && err.contains("immutable"), "{err}");

    // Node restriction: n1 sees and reports on a1 only.
    let node = |n: &str| -> Result<Kubectl> {
        Ok(Kubectl {
            bin: kubectl_binary(33)?,
            kubeconfig: server.component_kubeconfig(&format!("node:{n}"))?,
            cache: tempfile::tempdir()?,
        })
    };
    let n1 = node("n1")?;
    ensure!(
        n1.ok(&["get", "actions", "--field-selector", "spec.nodeName=n1", "-o", "name"])?.trim()
            == "action.atoll.io/a1"
    );
    for args in [
        vec!["get", "actions"],
        vec!["get", "actions", "--field-selector", "spec.nodeName=n2"],
        vec!["get", "action", "a2"],
        vec!["get", "action", "nothing-here"],
        vec!["delete", "action", "a1"],
        vec!["patch", "action", "a1", "--type=merge", "-p", r#"{"metadata":{"labels":{"x":"y"}}}"#],
        vec!["patch", "action", "a2", "--subresource=status", "--type=merge", "-p", r#"{"status":{"phase":"Failed"}}"#],
    ] {
        let err = n1.fails(&args)?;
        ensure!(err.contains("Forbidden") || err.contains("forbidden"), "n1 {args:?}: {err}");
    }
    n1.ok(&["get", "action", "a1"])?;
    let done = r#"{"status":{"phase":"Succeeded","message":"done by n1"}}"#;
    n1.ok(&["patch", "action", "a1", "--subresource=status", "--type=merge", "-p", done])?;
    ensure!(admin.ok(&["get", "action", "a1", "-o", "jsonpath={.status.message}"])? == "done by n1");
    let err = refused(&n1, &["create", "-f", "-"], Some(&action("a3", "p1", "Reboot", None)))?;
    ensure!(err.contains("Forbidden") || err.contains("forbidden"), "{err}");

    // Acting on a pod takes `get` on it, besides `create` on actions.
    admin.ok_with(&["create", "-f", "-"], Some(&tenant_admins_json("acme", &["ann"])))?;
    admin.ok_with(&["create", "-f", "-"], Some(&tenant_admins_json("globex", &["gus"])))?;
    let ann = user_kubectl(&server, "acme", "ann", 33)?;
    let carol = user_kubectl(&server, "acme", "carol", 33)?;
    let gus = user_kubectl(&server, "globex", "gus", 33)?;
    ann.ok_with(&["create", "-f", "-"], Some(&namespace_json("team")))?;
    gus.ok_with(&["create", "-f", "-"], Some(&namespace_json("team")))?;
    ann.ok_with(&["create", "-n", "team", "-f", "-"], Some(&bound_pod("vm1", "n1")))?;
    ann.ok(&["create", "role", "actor", "-n", "team", "--verb=create,get,list", "--resource=actions.atoll.io"])?;
    ann.ok(&["create", "rolebinding", "actor", "-n", "team", "--role=actor", "--user=carol"])?;
    // The same 403 for a pod that exists and one that does not: nothing is learned.
    for pod in ["vm1", "ghost"] {
        let err =
            refused(&carol, &["create", "-n", "team", "-f", "-", "-v=6"], Some(&action("c1", pod, "Reboot", None)))?;
        ensure!(
            err.contains("403") && err.contains("cannot get resource \"pods\""),
            "carol, without get on pods, acting on {pod}: {err}"
        );
    }
    ann.ok(&["create", "role", "pod-reader", "-n", "team", "--verb=get", "--resource=pods"])?;
    ann.ok(&["create", "rolebinding", "pod-reader", "-n", "team", "--role=pod-reader", "--user=carol"])?;
    let allowed = || -> Result<bool> {
        let out = carol.run(&["create", "-n", "team", "-f", "-"], Some(&action("c1", "vm1", "Reboot", None)))?;
        Ok(out.status.success())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !allowed()? {
        ensure!(Instant::now() < deadline, "carol still refused with get on pods");
        std::thread::sleep(Duration::from_millis(200));
    }
    let err =
        refused(&carol, &["create", "-n", "team", "-f", "-", "-v=6"], Some(&action("c2", "ghost", "Reboot", None)))?;
    ensure!(err.contains("404") && err.contains("pods \"ghost\" not found"), "{err}");
    // Another tenant: its own namespace `team` has no vm1, so there is none to act on.
    let err = refused(&gus, &["create", "-n", "team", "-f", "-", "-v=6"], Some(&action("g1", "vm1", "Reboot", None)))?;
    ensure!(err.contains("404") && err.contains("pods \"vm1\" not found") && !err.contains("acme"), "{err}");
    ensure!(ann.ok(&["get", "actions", "-n", "team", "-o", "name"])?.trim() == "action.atoll.io/c1");

    // Namespace deletion finds the kind through discovery like any other. (The namespace
    // itself stays Terminating: its pod is bound to n1, which runs no agent here to finish
    // the pod's graceful deletion.)
    let _controllers = server.start_controllers()?;
    ann.ok(&["delete", "namespace", "team", "--wait=false"])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = ann.run(&["get", "action", "c1", "-n", "team"], None)?;
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && err.contains("not found") {
            break;
        }
        ensure!(Instant::now() < deadline, "action c1 outlived its namespace's deletion: {err}");
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// The guest's script: count boots on the disk, write the marker from boot 2 on, and print
/// a heartbeat with the disk's listing every second.
const GUEST: &str = r#"#!/bin/sh
d=/mnt/disk
n=$(cat $d/boots 2>/dev/null || echo 0)
n=$((n+1))
echo $n > $d/boots
sync
echo "guest boot $n"
if [ "$n" -ge 2 ]; then echo "written after the snapshot" > $d/marker; sync; fi
i=0
while :; do
  i=$((i+1))
  sync; echo 3 > /proc/sys/vm/drop_caches
  echo "hb $i boot=$n disk-boots=$(cat $d/boots) files: $(ls $d | tr '\n' ' ')"
  sleep 1
done
"#;

/// Waits for an Action to end; returns (phase, message).
fn finished(k: &Kubectl, name: &str) -> Result<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let phase = k.ok(&["get", "action", name, "-o", "jsonpath={.status.phase}"])?;
        if phase == "Succeeded" || phase == "Failed" {
            let message = k.ok(&["get", "action", name, "-o", "jsonpath={.status.message}"])?;
            return Ok((phase, message));
        }
        ensure!(Instant::now() < deadline, "action {name} still {phase:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn succeeded(k: &Kubectl, name: &str) -> Result<String> {
    let (phase, message) = finished(k, name)?;
    ensure!(phase == "Succeeded", "action {name}: {phase}: {message}");
    Ok(message)
}

/// The seconds an action's message says it took (`... in 0.123s`).
fn took(message: &str) -> Option<f64> {
    message.rsplit_once(" in ")?.1.strip_suffix('s')?.parse().ok()
}

/// Waits until the console (from byte `from` on) has a line for which `want` holds.
fn console_line(
    dir: &std::path::Path,
    k: &Kubectl,
    pod: &str,
    from: usize,
    what: &str,
    want: impl Fn(&str) -> bool,
) -> Result<String> {
    // A guest boot under TCG on a busy machine can take minutes (the kernel's decompressor
    // alone took 25 s in a measured reboot).
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let log = console(dir, k, pod)?;
        if let Some(line) = log.get(from..).unwrap_or("").lines().find(|l| want(l)) {
            return Ok(line.to_string());
        }
        ensure!(Instant::now() < deadline, "no console line with {what}:\n{}", log.get(from..).unwrap_or(""));
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn actions_reboot_snapshot_restore_vms_and_restart_containers() -> Result<()> {
    require_tools(&["qemu-system-x86_64", "qemu-img", "mke2fs"])?;
    let dir = tempfile::tempdir()?;
    build_vm_image(dir.path())?;
    build_image(dir.path(), &["build-busybox".as_ref()])?;
    let node = "actions-e2e-node";
    let (cluster, k, bridge) = vm_cluster(dir.path(), node, "ata", 200)?;
    let result = (|| -> Result<()> {
        let vm = json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "vm1"},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 10,
                     "virtualMachine": {"name": "vm", "image": "busybox-vm", "imagePullPolicy": "Never",
                                        "userData": GUEST,
                                        "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}}}}
        });
        let web = json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
            "spec": {"terminationGracePeriodSeconds": 5,
                     "containers": [{"name": "c", "image": "busybox", "imagePullPolicy": "Never",
                                     "command": ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]}]}
        });
        k.ok_with(&["create", "-f", "-"], Some(&vm.to_string()))?;
        k.ok_with(&["create", "-f", "-"], Some(&web.to_string()))?;
        let start = Instant::now();
        k.ok(&["wait", "pod/vm1", "--for=jsonpath={.status.phase}=Running", "--timeout=150s"])?;
        eprintln!("vm1 Running after {:?}", start.elapsed());
        console_line(dir.path(), &k, "vm1", 0, "boot 1's second heartbeat", |l| l.contains("hb 2 boot=1 "))?;

        // Snapshot in boot 1: the disk has no marker.
        k.ok_with(&["create", "-f", "-"], Some(&action("snap", "vm1", "Snapshot", Some("before"))))?;
        let snap_msg = succeeded(&k, "snap")?;
        // The pod's status lists it from the sync loop's next pass (once a second).
        let listed = "--for=jsonpath={.status.virtualMachine.snapshots[0].name}=before";
        k.run(&["wait", "pod/vm1", listed, "--timeout=10s"], None)?;
        let snapshots = k.ok(&["get", "pod", "vm1", "-o", "jsonpath={.status.virtualMachine.snapshots[*].name}"])?;
        ensure!(snapshots == "before", "the pod's snapshots: {snapshots:?}");
        let created =
            k.ok(&["get", "pod", "vm1", "-o", "jsonpath={.status.virtualMachine.snapshots[0].creationTime}"])?;
        ensure!(created.ends_with('Z'), "the snapshot's creation time: {created:?}");

        // Reboot: the guest boots again in the same qemu; boot 2 writes the marker.
        let uid = k.ok(&["get", "pod", "vm1", "-o", "jsonpath={.metadata.uid}"])?;
        let qemu_before = qemu_processes(&uid)?;
        let mark = console(dir.path(), &k, "vm1")?.len();
        k.ok_with(&["create", "-f", "-"], Some(&action("reboot", "vm1", "Reboot", None)))?;
        succeeded(&k, "reboot")?;
        let start = Instant::now();
        console_line(dir.path(), &k, "vm1", mark, "the ready marker again", |l| l.contains("atoll-guest: ready"))?;
        eprintln!("vm1 up again {:?} after the reboot", start.elapsed());
        let hb = console_line(dir.path(), &k, "vm1", mark, "a heartbeat of boot 2", |l| l.contains(" boot=2 "))?;
        ensure!(hb.contains("marker"), "boot 2 did not write its marker: {hb}");
        ensure!(qemu_processes(&uid)? == qemu_before, "a reboot keeps the same qemu");
        let phase = k.ok(&["get", "pod", "vm1", "-o", "jsonpath={.status.phase}"])?;
        ensure!(phase == "Running", "after the reboot the pod is {phase}");
        k.eventually(&["get", "events", "--field-selector", "involvedObject.name=vm1,reason=Rebooted", "-o", "name"])
            .and_then(|e| if e.trim().is_empty() { anyhow::bail!("no Rebooted event") } else { Ok(e) })?;

        // Restore: memory and disk are boot 1's again, without the marker.
        // (The console from the restore's end on: boot 2 printed until then.)
        k.ok_with(&["create", "-f", "-"], Some(&action("restore", "vm1", "Restore", Some("before"))))?;
        let restore_msg = succeeded(&k, "restore")?;
        let mark = console(dir.path(), &k, "vm1")?.len();
        let hb = console_line(dir.path(), &k, "vm1", mark, "a heartbeat after the restore", is_heartbeat)?;
        ensure!(
            hb.contains(" boot=1 disk-boots=1 ") && !hb.contains("marker"),
            "after the restore the guest should be back in boot 1 with no marker on its disk: {hb}"
        );
        let snap_s = took(&snap_msg).context("no time in the snapshot's message")?;
        let restore_s = took(&restore_msg).context("no time in the restore's message")?;
        eprintln!("VM actions (TCG, 128 MiB guest): snapshot {snap_s:.3} s, restore {restore_s:.3} s");

        // Failures are the Action's, with a reason.
        k.ok_with(&["create", "-f", "-"], Some(&action("again", "vm1", "Snapshot", Some("before"))))?;
        let (phase, message) = finished(&k, "again")?;
        ensure!(phase == "Failed" && message.contains("exists already"), "{phase}: {message}");
        k.ok_with(&["create", "-f", "-"], Some(&action("nosuch", "vm1", "Restore", Some("never-taken"))))?;
        let (phase, message) = finished(&k, "nosuch")?;
        ensure!(phase == "Failed" && message.contains("no snapshot named"), "{phase}: {message}");
        k.ok(&["wait", "pod/web", "--for=condition=Ready", "--timeout=60s"])?;
        k.ok_with(&["create", "-f", "-"], Some(&action("websnap", "web", "Snapshot", Some("x"))))?;
        let (phase, message) = finished(&k, "websnap")?;
        ensure!(phase == "Failed" && message.contains("VM pods only"), "{phase}: {message}");
        let table = k.ok(&["get", "actions"])?;
        ensure!(
            table.lines().any(|l| l.split_whitespace().take(4).eq(["websnap", "web", "Snapshot", "Failed"])),
            "{table}"
        );

        // Restart of a container pod: its restart count goes up, now.
        k.ok_with(&["create", "-f", "-"], Some(&action("restart", "web", "Restart", None)))?;
        let started = Instant::now();
        let restart_msg = succeeded(&k, "restart")?;
        // The pod's status follows at the sync loop's next pass (the back-off would hold a
        // restart by the loop itself for 10 s).
        let out = k.run(
            &["wait", "pod/web", "--for=jsonpath={.status.containerStatuses[0].restartCount}=1", "--timeout=8s"],
            None,
        )?;
        ensure!(
            out.status.success(),
            "web's restart count after Restart ({restart_msg}): {:?} after {:?}",
            k.ok(&["get", "pod", "web", "-o", "jsonpath={.status.containerStatuses[0].restartCount}"])?,
            started.elapsed()
        );
        k.ok(&["wait", "pod/web", "--for=condition=Ready", "--timeout=30s"])?;

        // Deleting the pod deletes its snapshots with its overlay; no qemu is left.
        let folder = dir.path().join(format!("agent/vm/{uid}"));
        ensure!(folder.join("disk.qcow2").is_file(), "no overlay at {}", folder.display());
        k.ok(&["delete", "pod", "vm1", "web", "--timeout=60s"])?;
        ensure!(qemu_processes(&uid)?.is_empty(), "vm1's qemu is left: {:?}", qemu_processes(&uid)?);
        ensure!(!folder.exists(), "{} (overlay and snapshots) is left", folder.display());
        Ok(())
    })();
    let mut cluster = cluster;
    result.and(stop_with_network(&mut cluster, &bridge, Duration::from_secs(30)))
}

/// Whether a console record (`<time> stdout F <line>`) is a heartbeat.
fn is_heartbeat(record: &str) -> bool {
    record.splitn(4, ' ').nth(3).is_some_and(|l| l.starts_with("hb "))
}
