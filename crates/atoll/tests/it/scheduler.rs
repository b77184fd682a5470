//! `atoll scheduler` as its own process beside `atoll server`, observed with kubectl 1.33:
//! nodes made with `kubectl create -f`, pods made with `kubectl run` get `.spec.nodeName`;
//! a pod that fits nowhere shows `FailedScheduling` in `kubectl describe pod` and is placed
//! once a node that fits appears.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};

use crate::server::{Kubectl, Server};

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn node_manifest(name: &str, taint: bool) -> String {
    let taints = if taint { "  taints:\n  - key: dedicated\n    value: infra\n    effect: NoSchedule\n" } else { "" };
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    kubernetes.io/hostname: {name}\n\
         spec:\n{taints}"
    )
}

/// Creates a node with `kubectl create -f`, then reports its status as a node agent would
/// (the status subresource): `cpu` cores, Ready.
fn add_node(k: &Kubectl, name: &str, cpu: &str, taint: bool) -> Result<()> {
    k.ok_with(&["create", "-f", "-"], Some(&node_manifest(name, taint)))?;
    let resources = serde_json::json!({"cpu": cpu, "memory": "8Gi", "pods": "110"});
    let status = serde_json::json!({"status": {
        "capacity": resources,
        "allocatable": resources,
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
    }})
    .to_string();
    k.ok(&["patch", "node", name, "--subresource=status", "--type=merge", "-p", &status])?;
    Ok(())
}

/// Runs `args` until its output satisfies `done` (20 s at most); returns that output.
fn eventually(k: &Kubectl, args: &[&str], done: impl Fn(&str) -> bool) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = k.run(args, None)?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && done(&text) {
            return Ok(text);
        }
        if Instant::now() > deadline {
            bail!("kubectl {args:?} never got there; last output:\n{text}{}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_scheduler_binds_pods_and_explains_when_nothing_fits() -> Result<()> {
    let server = Server::start()?;
    let k = Kubectl::new(33, &server)?;
    let log = std::fs::File::create(server.dir.path().join("scheduler.log"))?;
    let _scheduler = Proc(
        Command::new(env!("CARGO_BIN_EXE_atoll"))
            .args(["scheduler", "--kubeconfig"])
            .arg(server.component_kubeconfig("scheduler")?)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?,
    );
    add_node(&k, "worker-1", "2", false)?;
    add_node(&k, "infra-1", "8", true)?;
    ensure!(k.ok(&["get", "nodes", "-o", "name"])?.lines().count() == 2);

    // A pod behind scheduling gates waits, and says why.
    let gated = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: gated\nspec:\n  schedulingGates:\n  \
                 - name: example.com/quota\n  - name: example.com/review\n  containers:\n  - name: c\n    image: busybox\n";
    k.ok_with(&["create", "-f", "-"], Some(gated))?;
    k.ok(&["run", "web", "--image=busybox", "--", "sleep", "3600"])?;
    let node = eventually(&k, &["get", "pod", "web", "-o", "jsonpath={.spec.nodeName}"], |n| !n.is_empty())?;
    ensure!(node == "worker-1", "the untainted node: {node}");
    let scheduled =
        k.ok(&["get", "pod", "web", "-o", r#"jsonpath={.status.conditions[?(@.type=="PodScheduled")].status}"#])?;
    ensure!(scheduled == "True", "{scheduled}");
    // The scheduler has placed a pod made after the gated one: the gated one is still waiting.
    ensure!(k.ok(&["get", "pod", "gated", "-o", "jsonpath={.spec.nodeName}"])?.is_empty(), "a gated pod was bound");
    let listed = k.ok(&["get", "pod", "gated", "--no-headers"])?;
    ensure!(listed.contains("SchedulingGated"), "kubectl get pod gated: {listed}");
    // Gates are only taken away, never added.
    let add = r#"[{"op":"add","path":"/spec/schedulingGates/-","value":{"name":"example.com/late"}}]"#;
    let err = k.fails(&["patch", "pod", "gated", "--type=json", "-p", add])?;
    ensure!(err.contains("only deletion is allowed, but found new scheduling gate 'example.com/late'"), "{err}");
    k.ok(&["patch", "pod", "gated", "--type=json", "-p", r#"[{"op":"remove","path":"/spec/schedulingGates/0"}]"#])?;
    std::thread::sleep(Duration::from_millis(500));
    ensure!(k.ok(&["get", "pod", "gated", "-o", "jsonpath={.spec.nodeName}"])?.is_empty(), "one gate is left");
    k.ok(&["patch", "pod", "gated", "--type=json", "-p", r#"[{"op":"remove","path":"/spec/schedulingGates"}]"#])?;
    let node = eventually(&k, &["get", "pod", "gated", "-o", "jsonpath={.spec.nodeName}"], |n| !n.is_empty())?;
    ensure!(node == "worker-1", "the pod whose gates are gone: {node}");

    let overrides = serde_json::json!({"spec": {"containers": [{"name": "huge", "image": "busybox",
        "args": ["sleep", "3600"], "resources": {"requests": {"cpu": "64"}}}]}})
    .to_string();
    k.ok(&["run", "huge", "--image=busybox", "--overrides", &overrides])?;
    let want = "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {dedicated: infra}.";
    let described = eventually(&k, &["describe", "pod", "huge"], |d| d.contains("FailedScheduling"))?;
    ensure!(described.contains(want), "kubectl describe pod huge:\n{described}");
    ensure!(described.contains("Warning"), "{described}");
    let reason =
        k.ok(&["get", "pod", "huge", "-o", r#"jsonpath={.status.conditions[?(@.type=="PodScheduled")].reason}"#])?;
    ensure!(reason == "Unschedulable", "{reason}");
    ensure!(k.ok(&["get", "pod", "huge", "-o", "jsonpath={.spec.nodeName}"])?.is_empty());

    // A node big enough appears: the pod is retried and placed there.
    add_node(&k, "big-1", "96", false)?;
    let node = eventually(&k, &["get", "pod", "huge", "-o", "jsonpath={.spec.nodeName}"], |n| !n.is_empty())?;
    ensure!(node == "big-1", "{node}");
    Ok(())
}
