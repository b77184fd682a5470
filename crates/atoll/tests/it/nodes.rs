//! Simulated nodes and the node lifecycle controller, as separate processes beside `atoll
//! server` (`atoll agent --simulated`, `atoll controllers`, `atoll scheduler`), observed with
//! kubectl 1.33: the nodes show with their label and role, pods are scheduled onto them and
//! reported Running, a deleted pod goes; killing the simulated agent makes its nodes
//! `Unknown` with the unreachable taints (their pods not ready, and one whose toleration runs
//! out evicted) within the grace period, and restarting it brings them back. A fourth node,
//! cordoned, in another zone, stays up throughout: as in Kubernetes, a control plane that
//! hears from no node at all taints none NoExecute (it is more likely cut off itself), so
//! evictions need some zone alive.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};

use crate::server::{Kubectl, Proc, Server};

/// The grace period the controllers get here (40 s by default).
const GRACE_SECONDS: u64 = 4;

fn start(server: &Server, args: &[&str], log: &str) -> Result<Proc> {
    let log = std::fs::File::create(server.dir.path().join(log))?;
    let child = Command::new(env!("CARGO_BIN_EXE_atoll"))
        .args(args)
        .arg("--kubeconfig")
        .arg(server.kubeconfig())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    Ok(Proc(child))
}

fn simulated_agent(server: &Server) -> Result<Proc> {
    simulated(server, "3", "sim")
}

fn simulated(server: &Server, count: &str, prefix: &str) -> Result<Proc> {
    // Leases renewed every second, well inside the test's grace period.
    start(
        server,
        &["agent", "--simulated", count, "--name-prefix", prefix, "--sim-lease-renew-seconds", "1"],
        &format!("{prefix}.log"),
    )
}

/// Runs `args` until its output satisfies `done` (`limit` at most); returns that output.
fn until(k: &Kubectl, args: &[&str], limit: Duration, done: impl Fn(&str) -> bool) -> Result<String> {
    let deadline = Instant::now() + limit;
    loop {
        let out = k.run(args, None)?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && done(&text) {
            return Ok(text);
        }
        if Instant::now() > deadline {
            bail!("kubectl {args:?} never got there; last output:\n{text}{}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

const READY: &str = r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#;

#[test]
fn simulated_nodes_run_pods_and_go_unknown_when_their_agent_dies() -> Result<()> {
    let server = Server::start()?;
    let k = Kubectl::new(33, &server)?;
    let grace = format!("{GRACE_SECONDS}s");
    // Three nodes going down at once are tainted within the test's patience (one per 10 s by default).
    let _controllers = start(
        &server,
        &["controllers", "--node-monitor-grace-period", &grace, "--node-eviction-rate", "10"],
        "controllers.log",
    )?;
    let _scheduler = start(&server, &["scheduler"], "scheduler.log")?;
    let agent = simulated_agent(&server)?;

    let nodes = until(&k, &["get", "nodes", "-l", "atoll.io/simulated=true"], Duration::from_secs(20), |o| {
        o.lines().filter(|l| l.contains(" Ready ")).count() == 3
    })?;
    for name in ["sim-0", "sim-1", "sim-2"] {
        ensure!(nodes.contains(name), "{nodes}");
    }
    ensure!(nodes.contains("simulated"), "the role shows in ROLES: {nodes}");
    // The node that stays up, in a zone of its own, taking no pods.
    let _keep = simulated(&server, "1", "keep")?;
    until(&k, &["get", "node", "keep-0", "-o", READY], Duration::from_secs(20), |s| s == "True")?;
    k.ok(&["label", "node", "keep-0", "topology.kubernetes.io/zone=elsewhere"])?;
    k.ok(&["cordon", "keep-0"])?;

    for i in 0..4 {
        k.ok(&["run", &format!("p{i}"), "--image=busybox", "--", "sleep", "3600"])?;
    }
    let running = until(
        &k,
        &[
            "get",
            "pods",
            "-o",
            "jsonpath={range .items[*]}{.spec.nodeName} {.status.phase} {.status.podIP}{\"\\n\"}{end}",
        ],
        Duration::from_secs(20),
        |o| o.lines().filter(|l| l.contains(" Running 100.64.")).count() == 4,
    )?;
    ensure!(running.lines().all(|l| l.starts_with("sim-")), "{running}");
    let ready = k.ok(&["get", "pod", "p0", "-o", READY])?;
    ensure!(ready == "True", "{ready}");
    // Deleting a pod finishes it (kubectl waits until it is gone).
    k.ok(&["delete", "pod", "p3", "--timeout=20s"])?;
    ensure!(k.fails(&["get", "pod", "p3"])?.contains("not found"));
    let node_of_p0 = k.ok(&["get", "pod", "p0", "-o", "jsonpath={.spec.nodeName}"])?;
    // The server gave the pod Kubernetes' default tolerations, so it outlives a short outage.
    let tolerations =
        k.ok(&["get", "pod", "p0", "-o", "jsonpath={range .spec.tolerations[*]}{.key}={.tolerationSeconds} {end}"])?;
    ensure!(tolerations == "node.kubernetes.io/not-ready=300 node.kubernetes.io/unreachable=300 ", "{tolerations}");

    // A pod that tolerates an unreachable node for one second only: evicted soon after the taint.
    let brief = r#"{"spec":{"tolerations":[{"key":"node.kubernetes.io/unreachable","operator":"Exists",
                   "effect":"NoExecute","tolerationSeconds":1}]}}"#;
    k.ok(&["run", "brief", "--image=busybox", &format!("--overrides={brief}"), "--", "sleep", "3600"])?;
    until(&k, &["get", "pod", "brief", "-o", "jsonpath={.status.phase}"], Duration::from_secs(20), |p| p == "Running")?;

    // The agent dies: no more lease renewals.
    let killed = Instant::now();
    drop(agent);
    let limit = Duration::from_secs(GRACE_SECONDS + 10);
    until(&k, &["get", "node", "sim-1", "-o", READY], limit, |s| s == "Unknown")?;
    let taken = killed.elapsed();
    ensure!(taken >= Duration::from_secs(GRACE_SECONDS - 1), "marked after {taken:?}, before the grace period");
    let reason =
        k.ok(&["get", "node", "sim-1", "-o", r#"jsonpath={.status.conditions[?(@.type=="Ready")].reason}"#])?;
    ensure!(reason == "NodeStatusUnknown", "{reason}");
    let taints = until(
        &k,
        &["get", "node", "sim-1", "-o", "jsonpath={range .spec.taints[*]}{.key}:{.effect} {end}"],
        limit,
        |t| t.contains("node.kubernetes.io/unreachable:NoExecute"),
    )?;
    ensure!(taints.contains("node.kubernetes.io/unreachable:NoSchedule"), "{taints}");
    // All three nodes of the dead agent, each once its own lease runs out: their last
    // renewals were spread over the renewal interval, so sim-1 may go first.
    until(&k, &["get", "nodes"], limit, |nodes| nodes.lines().filter(|l| l.contains("NotReady")).count() == 3)?;
    // Its pods are reported not ready.
    until(&k, &["get", "pod", "p0", "-o", READY], limit, |s| s == "False")?;
    // The brief pod's toleration ran out: deleted (gracefully, so it waits for its agent).
    until(&k, &["get", "pod", "brief", "-o", "jsonpath={.metadata.deletionTimestamp}"], limit, |t| !t.is_empty())?;
    ensure!(k.ok(&["get", "pod", "p0", "-o", "jsonpath={.metadata.deletionTimestamp}"])?.is_empty());
    // A new pod has nowhere to go now.
    k.ok(&["run", "late", "--image=busybox", "--", "sleep", "3600"])?;
    let described = until(&k, &["describe", "pod", "late"], limit, |d| d.contains("FailedScheduling"))?;
    ensure!(described.contains("node.kubernetes.io/unreachable"), "{described}");

    // The agent is back: Ready again, taints gone, pods ready, the waiting pod placed.
    let _agent = simulated_agent(&server)?;
    until(&k, &["get", "node", "sim-1", "-o", READY], Duration::from_secs(20), |s| s == "True")?;
    until(&k, &["get", "node", "sim-1", "-o", "jsonpath={.spec.taints}"], Duration::from_secs(20), |t| {
        !t.contains("unreachable")
    })?;
    until(&k, &["get", "pod", "p0", "-o", READY], Duration::from_secs(20), |s| s == "True")?;
    let again = k.ok(&["get", "pod", "p0", "-o", "jsonpath={.spec.nodeName}"])?;
    ensure!(again == node_of_p0, "the pod stayed where it was: {again} vs {node_of_p0}");
    until(&k, &["get", "pod", "late", "-o", "jsonpath={.status.phase}"], Duration::from_secs(30), |p| p == "Running")?;
    Ok(())
}

/// Kubernetes' largest cluster holds 5,000 nodes, and kubectl lists them 500 at a time with
/// continue tokens. Every node must come back exactly once, also while the nodes are being
/// written (as leases and statuses are all the time): the pages read one snapshot. (An
/// earlier session saw `kubectl get nodes` print 2,501 lines of 5,000 nodes once.)
#[test]
fn kubectl_pages_through_5000_nodes_while_they_change() -> Result<()> {
    use client::{Client, Patch, Resource, Scope};
    use serde_json::json;
    const NODES: usize = 5000;
    let server = Server::start()?;
    let k = Kubectl::new(33, &server)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let client = Client::from_kubeconfig(&server.kubeconfig())?;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..64 {
            let (client, next) = (client.clone(), next.clone());
            tasks.spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= NODES {
                        return anyhow::Ok(());
                    }
                    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("n-{i:04}")}});
                    client.create(&Resource::nodes(), &Scope::own(), &node).await?;
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        anyhow::Ok(())
    })?;

    // A writer keeps changing nodes across the whole key range while kubectl pages.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (client, stop) = (client.clone(), stop.clone());
        rt.spawn(async move {
            let mut writes = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let name = format!("n-{:04}", (writes * 37) % NODES);
                let patch = Patch::Merge(json!({"metadata": {"labels": {"touched": writes.to_string()}}}));
                client.patch(&Resource::nodes(), &Scope::own(), &name, &patch).await?;
                writes += 1;
            }
            anyhow::Ok(writes)
        })
    };
    let check = |args: &[&str]| -> Result<()> {
        let started = Instant::now();
        let out = k.ok(args)?;
        let names: Vec<&str> = out.lines().map(|l| l.split_whitespace().next().unwrap_or("")).collect();
        let unique: std::collections::BTreeSet<&str> = names.iter().copied().collect();
        ensure!(
            names.len() == NODES && unique.len() == NODES,
            "kubectl {args:?} printed {} lines, {} distinct nodes, in {:?}",
            names.len(),
            unique.len(),
            started.elapsed()
        );
        Ok(())
    };
    // kubectl's default chunk size is 500; the table form and names only, and smaller pages.
    check(&["get", "nodes", "--no-headers", "--request-timeout=60s"])?;
    check(&["get", "nodes", "-o", "name", "--chunk-size=500"])?;
    check(&["get", "nodes", "-o", "name", "--chunk-size=137"])?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = rt.block_on(writer)??;
    ensure!(writes > 0, "the writer wrote nothing while kubectl listed");
    Ok(())
}
