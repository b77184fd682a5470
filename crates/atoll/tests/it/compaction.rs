//! Periodic store compaction (`--compaction-interval`) as clients see it.

use std::io::BufRead;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use crate::server::{Kubectl, Server};

#[test]
fn compaction_expires_old_versions_and_live_watches_carry_on() -> Result<()> {
    let server = Server::start_with(&["--compaction-interval".into(), "1s".into()])?;
    let k = Kubectl::new(33, &server)?;
    k.ok(&["create", "namespace", "c"])?;
    for name in ["a", "b"] {
        k.ok(&["create", "configmap", name, "-n", "c", "--from-literal=k=1"])?;
    }
    let page: Value = serde_json::from_str(&k.ok(&["get", "--raw", "/api/v1/namespaces/c/configmaps?limit=1"])?)?;
    let old = page["metadata"]["resourceVersion"].as_str().context("list resourceVersion")?.to_string();
    let token = page["metadata"]["continue"].as_str().context("continue token")?.to_string();
    // A write before the live watch starts, so that its watch cache begins after `old`.
    k.ok(&["label", "configmap", "a", "-n", "c", "round=1"])?;

    let mut watch = k
        .command(&["get", "configmaps", "-n", "c", "-w", "-o", "name", "--request-timeout=30s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = watch.stdout.take().context("watch stdout")?;
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let seen = |want: &str| -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(line) if line == want => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
        false
    };
    ensure!(seen("configmap/b"), "the watch listed the configmaps");

    // More writes, then long enough for two compactions (each to the revision seen one
    // interval earlier), which leaves everything up to these writes compacted.
    for round in 2..5 {
        k.ok(&["label", "--overwrite", "configmap", "b", "-n", "c", &format!("round={round}")])?;
    }
    // Polled, not slept: a loaded machine may run the compactor's ticks late.
    // Waits on the watch, the last to expire (it needs the events after `old`, not `old` itself).
    let cont = format!("/api/v1/namespaces/c/configmaps?limit=1&continue={token}");
    let watch_old = format!("/api/v1/namespaces/c/configmaps?watch=1&resourceVersion={old}&timeoutSeconds=1");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while k.run(&["get", "--raw", &watch_old], None)?.status.success() {
        ensure!(std::time::Instant::now() < deadline, "nothing was compacted within 20 s at a 1 s interval");
        std::thread::sleep(Duration::from_millis(250));
    }

    for minor in [27, 30, 33] {
        let k = Kubectl::new(minor, &server)?;
        let expired = k.fails(&["get", "--raw", &cont])?;
        ensure!(expired.contains("Expired") || expired.contains("410"), "kubectl 1.{minor}, old token: {expired}");
        let exact = k.fails(&[
            "get",
            "--raw",
            &format!("/api/v1/namespaces/c/configmaps?resourceVersion={old}&resourceVersionMatch=Exact"),
        ])?;
        ensure!(exact.contains("Expired") || exact.contains("410"), "kubectl 1.{minor}, exact old version: {exact}");
        let watched = k.fails(&["get", "--raw", &watch_old])?;
        ensure!(watched.contains("too old resource version"), "kubectl 1.{minor}, watch from {old}: {watched}");
    }
    // Reads of the present still work, and a list then a watch from its version resumes.
    let now: Value = serde_json::from_str(&k.ok(&["get", "--raw", "/api/v1/namespaces/c/configmaps"])?)?;
    ensure!(now["items"].as_array().map(Vec::len) == Some(2), "{now}");

    // The watch that was open across the compactions still sees new changes.
    k.ok(&["create", "configmap", "after", "-n", "c", "--from-literal=k=1"])?;
    let carried_on = seen("configmap/after");
    let _ = watch.kill();
    let _ = watch.wait();
    ensure!(carried_on, "the live watch saw a change made after the compactions");
    Ok(())
}

#[test]
fn the_python_client_relists_after_410_and_sees_later_changes() -> Result<()> {
    let server = Server::start_with(&["--compaction-interval".into(), "1s".into()])?;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/python/compaction_relist.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(server.kubeconfig())
        .output()
        .context("python3 is needed for this test")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && stdout.trim() == "ok",
        "the Python client failed (pip install kubernetes):\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
