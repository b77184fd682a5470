//! ServiceAccount admission of pods, as Kubernetes does it, on an API server alone (no
//! controllers): the server makes a namespace's `default` account with the namespace, a
//! pod's account defaults to it, and a pod naming an account that does not exist is
//! refused, whichever way it is created.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};

use crate::server::{Kubectl, Server};

fn pod(name: &str, account: Option<&str>) -> String {
    let mut spec = serde_json::json!({"containers": [{"name": "c", "image": "busybox"}]});
    if let Some(a) = account {
        spec["serviceAccountName"] = a.into();
    }
    serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}).to_string()
}

fn refusal(name: &str, account: &str) -> String {
    format!(
        "pods \"{name}\" is forbidden: error looking up service account team/{account}: serviceaccount \"{account}\" \
         not found"
    )
}

#[test]
fn pods_need_their_service_account() -> Result<()> {
    let server = Server::start()?;
    let k = Kubectl::new(33, &server)?;
    // A pod right after its namespace: `default` is there already, and is the pod's account.
    k.ok(&["create", "namespace", "team"])?;
    k.ok(&["run", "first", "-n", "team", "--image=busybox", "--restart=Never"])?;
    let accounts = k.ok(&[
        "get",
        "pod",
        "first",
        "-n",
        "team",
        "-o",
        "jsonpath={.spec.serviceAccountName}/{.spec.serviceAccount}",
    ])?;
    ensure!(accounts == "default/default", "{accounts:?}");
    // The system tenant's own namespaces have theirs too.
    k.ok(&["get", "serviceaccount", "default", "-n", "default"])?;
    k.ok(&["get", "serviceaccount", "default", "-n", "kube-system"])?;

    // An account that does not exist: refused (403) on every way a pod is created.
    for minor in [27, 30, 33] {
        let k = Kubectl::new(minor, &server)?;
        let name = format!("ghostly-{minor}");
        let err = k.run(&["create", "-n", "team", "-f", "-"], Some(&pod(&name, Some("ghost"))))?;
        let stderr = String::from_utf8_lossy(&err.stderr);
        ensure!(!err.status.success() && stderr.contains(&refusal(&name, "ghost")), "1.{minor} create: {stderr}");
        ensure!(stderr.contains("Forbidden") || stderr.contains("forbidden"), "1.{minor}: {stderr}");
        let err = k.run(&["apply", "--server-side", "-n", "team", "-f", "-"], Some(&pod(&name, Some("ghost"))))?;
        let stderr = String::from_utf8_lossy(&err.stderr);
        ensure!(!err.status.success() && stderr.contains(&refusal(&name, "ghost")), "1.{minor} apply: {stderr}");
        let err = k.run(&["apply", "-n", "team", "-f", "-"], Some(&pod(&name, Some("ghost"))))?;
        let stderr = String::from_utf8_lossy(&err.stderr);
        ensure!(!err.status.success() && stderr.contains(&refusal(&name, "ghost")), "1.{minor} csa: {stderr}");
        let overrides = r#"{"spec":{"serviceAccountName":"ghost"}}"#;
        let stderr = k.fails(&["run", &name, "-n", "team", "--image=busybox", &format!("--overrides={overrides}")])?;
        ensure!(stderr.contains(&refusal(&name, "ghost")), "1.{minor} run: {stderr}");
    }
    // The raw answer is Kubernetes' Status.
    let raw =
        k.run(&["create", "--raw", "/api/v1/namespaces/team/pods", "-f", "-"], Some(&pod("raw", Some("ghost"))))?;
    let text = String::from_utf8_lossy(&raw.stderr);
    ensure!(text.contains("Forbidden") && text.contains(&refusal("raw", "ghost")), "raw: {text}");
    // Once the account exists, the same pod is admitted.
    k.ok(&["create", "serviceaccount", "ghost", "-n", "team"])?;
    k.ok_with(&["create", "-n", "team", "-f", "-"], Some(&pod("ghostly", Some("ghost"))))?;
    k.ok_with(&["apply", "--server-side", "-n", "team", "-f", "-"], Some(&pod("applied", Some("ghost"))))?;

    // Without `default` (deleted; no controller here to make it again) a pod waits a few
    // seconds for it, as for a namespace whose account is on its way, then is refused.
    k.ok(&["delete", "serviceaccount", "default", "-n", "team"])?;
    let started = Instant::now();
    let stderr = k.fails(&["run", "late", "-n", "team", "--image=busybox", "--restart=Never"])?;
    ensure!(stderr.contains(&refusal("late", "default")), "{stderr}");
    ensure!(started.elapsed() >= Duration::from_secs(4), "refused after {:?} without waiting", started.elapsed());
    // It is admitted when the account appears meanwhile.
    let mut waiting = k.command(&["run", "late", "-n", "team", "--image=busybox", "--restart=Never"]);
    let maker = std::thread::spawn(move || waiting.output());
    std::thread::sleep(Duration::from_secs(1));
    k.ok(&["create", "serviceaccount", "default", "-n", "team"])?;
    let late = maker.join().map_err(|_| anyhow::anyhow!("thread"))??;
    ensure!(late.status.success(), "late pod: {}", String::from_utf8_lossy(&late.stderr));
    Ok(())
}
