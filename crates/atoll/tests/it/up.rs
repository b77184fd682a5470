//! `atoll up`: the all-in-one cluster in one process, driven by the real kubectl: the
//! controllers run beside the server, Ctrl-C stops everything cleanly, and a restart on the
//! same data directory resumes the cluster.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use crate::server::{Proc, kubectl_binary};

/// Starts `atoll up` on `listen` with data in `dir`; returns it and its address.
fn up(dir: &Path, listen: &str) -> Result<(Proc, String)> {
    // Its log, kept for the failure message should it not stop.
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("up.log"))?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_atoll"))
        // The node agent has a test of its own below; this one leaves the host's network be.
        .args(["up", "--no-agent", "--listen", listen, "--data-dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()?;
    let mut reader = BufReader::new(child.stdout.take().context("stdout")?);
    let proc = Proc(child);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let addr = line.trim().strip_prefix("listening on https://").context("no listening line")?.to_string();
    let mut rest = String::new();
    for _ in 0..4 {
        reader.read_line(&mut rest)?;
    }
    ensure!(rest.contains("export KUBECONFIG="), "atoll up says what to do next: {rest}");
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    Ok((proc, addr))
}

fn stop(mut proc: Proc, dir: &Path) -> Result<()> {
    let pid = proc.0.id().to_string();
    ensure!(Command::new("kill").args(["-INT", &pid]).status()?.success(), "kill -INT failed");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = proc.0.try_wait()? {
            ensure!(status.success(), "atoll up exited with {status} on Ctrl-C");
            return Ok(());
        }
        if Instant::now() >= deadline {
            let log = std::fs::read_to_string(dir.join("up.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            anyhow::bail!("atoll up did not stop on Ctrl-C; the end of its log:\n{}", tail.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn atoll_up_runs_a_cluster_that_stops_and_resumes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (cluster, addr) = up(dir.path(), "127.0.0.1:0")?;
    let k = crate::server::Kubectl {
        bin: kubectl_binary(33)?,
        kubeconfig: dir.path().join("admin.kubeconfig"),
        cache: tempfile::tempdir()?,
    };
    k.ok(&["create", "namespace", "kept"])?;
    k.ok(&["create", "namespace", "dropped"])?;
    // The controllers are there: a default ServiceAccount appears, and a namespace
    // deletion completes (kubectl waits for it).
    k.eventually(&["get", "serviceaccount", "default", "-n", "kept"])?;
    k.ok(&["delete", "namespace", "dropped", "--timeout=30s"])?;
    stop(cluster, dir.path())?;

    let (cluster, again) = up(dir.path(), &addr)?;
    ensure!(again == addr, "restarted on {again}, not {addr}");
    let namespaces = k.eventually(&["get", "namespaces", "-o", "name"])?;
    ensure!(
        namespaces.contains("namespace/kept") && !namespaces.contains("namespace/dropped"),
        "the cluster resumes from its data: {namespaces}"
    );
    stop(cluster, dir.path())
}

/// `atoll up` runs this machine's node agent: the Node is Ready, and a pod bound to it
/// (created with `spec.nodeName`, as no scheduler runs yet) runs to completion in a real
/// container from the local busybox image.
#[test]
fn atoll_up_registers_its_node_and_runs_a_bound_pod() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let built = Command::new(env!("CARGO_BIN_EXE_atoll"))
        .args(["image", "build-busybox", "--data-dir"])
        .arg(dir.path())
        .output()?;
    ensure!(built.status.success(), "atoll image build-busybox: {}", String::from_utf8_lossy(&built.stderr));
    let node = "up-e2e-node";
    // A bridge and CIDR of its own: other tests' agents may share the machine.
    let pid = std::process::id();
    let (bridge, cidr) = (format!("atu{pid}"), format!("10.{}.{}.0/24", 200 + (pid >> 8) % 50, pid % 256));
    let mut child = Command::new(env!("CARGO_BIN_EXE_atoll"))
        .args(["up", "--listen", "127.0.0.1:0", "--node-name", node, "--bridge", &bridge, "--pod-cidr", &cidr])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("up.log"))?)
        .spawn()?;
    let mut reader = BufReader::new(child.stdout.take().context("stdout")?);
    let cluster = Proc(child);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    ensure!(line.starts_with("listening on https://"), "{line}");
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    let k = crate::server::Kubectl {
        bin: kubectl_binary(33)?,
        kubeconfig: dir.path().join("admin.kubeconfig"),
        cache: tempfile::tempdir()?,
    };
    k.ok(&["wait", &format!("node/{node}"), "--for=condition=Ready", "--timeout=30s"]).or_else(|_| {
        // `kubectl wait` on an object that does not exist yet fails at once: retry.
        k.eventually(&["get", "node", node])?;
        k.ok(&["wait", &format!("node/{node}"), "--for=condition=Ready", "--timeout=30s"])
    })?;
    let pod = format!(
        r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "hello"}},
            "spec": {{"nodeName": "{node}", "restartPolicy": "Never",
                      "containers": [{{"name": "main", "image": "busybox", "imagePullPolicy": "IfNotPresent",
                                      "command": ["sh", "-c", "echo hello from a pod"]}}]}}}}"#
    );
    k.ok_with(&["create", "-f", "-"], Some(&pod))?;
    k.ok(&["wait", "pod/hello", "--for=jsonpath={.status.phase}=Succeeded", "--timeout=60s"])?;
    let exit =
        k.ok(&["get", "pod", "hello", "-o", "jsonpath={.status.containerStatuses[0].state.terminated.exitCode}"])?;
    ensure!(exit.trim() == "0", "exit code {exit}");
    let wide = k.ok(&["get", "pods", "-o", "wide"])?;
    ensure!(wide.contains("Completed") && wide.contains(node), "{wide}");
    let ip = k.ok(&["get", "pod", "hello", "-o", "jsonpath={.status.podIP}"])?;
    ensure!(ip.starts_with(cidr.rsplit_once('.').unwrap().0), "podIP {ip:?} not in {cidr}");
    // Without a node named, the scheduler places the pod: `kubectl run` as a user would.
    k.ok(&[
        "run",
        "scheduled",
        "--image=busybox",
        "--image-pull-policy=IfNotPresent",
        "--restart=Never",
        "--",
        "sh",
        "-c",
        "echo placed by the scheduler",
    ])?;
    k.ok(&["wait", "pod/scheduled", "--for=jsonpath={.status.phase}=Succeeded", "--timeout=60s"])?;
    let placed = k.ok(&["get", "pod", "scheduled", "-o", "jsonpath={.spec.nodeName}"])?;
    ensure!(placed == node, "the scheduler placed the pod on {placed:?}, not {node}");
    let stopped = stop(cluster, dir.path());
    let _ = Command::new("ip").args(["link", "del", "dev", &bridge]).status();
    let _ = Command::new("nft").args(["delete", "table", "ip", &format!("atoll-{bridge}")]).status();
    stopped
}
