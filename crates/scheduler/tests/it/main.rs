//! The scheduler against a real API server started in this process on 127.0.0.1:0 over the
//! embedded store in a temporary directory, through the client and the admin kubeconfig the
//! server writes: placements, FailedScheduling events and conditions, retries when a node
//! appears, tenant-exclusive nodes, and many pods bound at once without overcommitting.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use client::{Client, ListParams, Patch, Resource, Scope};
use serde_json::{Value, json};

struct TestServer {
    client: Client,
    _stop: tokio::sync::oneshot::Sender<()>,
    _scheduler: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

/// An API server and a scheduler with short back-offs.
async fn start() -> Result<TestServer> {
    let dir = tempfile::tempdir()?;
    let store: std::sync::Arc<dyn store::Store> =
        std::sync::Arc::new(store::embedded::EmbeddedStore::open(&dir.path().join("store"))?);
    let server = apiserver::http::Server::bind(store, dir.path(), "127.0.0.1:0".parse()?).await?;
    let client = Client::from_kubeconfig(&server.kubeconfig)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let cfg = scheduler::Config {
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(400),
        ..scheduler::Config::default()
    };
    let (sched_stop, sched_stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(scheduler::run(client.clone(), cfg, async move {
        let _ = sched_stopped.await;
    }));
    Ok(TestServer { client, _stop: stop, _scheduler: sched_stop, _dir: dir })
}

/// Creates a Ready node offering `cpu`, 16Gi of memory and `pods` pods, with `extra`
/// merged into it (labels, taints).
async fn add_node(c: &Client, name: &str, cpu: &str, pods: u32, spec: Value, labels: Value) -> Result<()> {
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}, "spec": spec});
    c.create(&Resource::nodes(), &Scope::own(), &node).await?;
    // The status is the node agent's to write, through the status subresource.
    let status = json!({"status": {
        "capacity": {"cpu": cpu, "memory": "16Gi", "pods": pods.to_string()},
        "allocatable": {"cpu": cpu, "memory": "16Gi", "pods": pods.to_string()},
        "conditions": [{"type": "Ready", "status": "True"}],
    }});
    c.patch_subresource(&Resource::nodes(), &Scope::own(), name, "status", &Patch::Merge(status)).await?;
    Ok(())
}

fn pod(name: &str, cpu: &str, spec: Value) -> Value {
    let mut p = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": cpu}}}]},
    });
    for (k, v) in spec.as_object().into_iter().flatten() {
        p["spec"][k] = v.clone();
    }
    p
}

/// Polls `f` until it returns `Some` (15 s at most).
async fn until<T, F, Fut>(what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn node_of(c: &Client, scope: &Scope, name: &str) -> Result<String> {
    until(&format!("{name} to be bound"), || async {
        let p = c.get(&Resource::pods(), scope, name).await?;
        Ok(p.pointer("/spec/nodeName").and_then(Value::as_str).map(str::to_string))
    })
    .await
}

async fn failed_scheduling(c: &Client, scope: &Scope, name: &str, contains: &str) -> Result<Value> {
    until(&format!("a FailedScheduling event for {name} saying {contains:?}"), || async {
        let params =
            ListParams { field_selector: Some(format!("involvedObject.name={name}")), ..ListParams::default() };
        let events = c.list(&Resource::events(), scope, &params).await?;
        Ok(events.items.into_iter().find(|e| {
            e["reason"] == "FailedScheduling"
                && e["type"] == "Warning"
                && e["message"].as_str().is_some_and(|m| m.contains(contains))
        }))
    })
    .await
}

fn condition(p: &Value) -> Option<(String, String, String)> {
    let c = p.pointer("/status/conditions")?.as_array()?.iter().find(|c| c["type"] == "PodScheduled")?;
    let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
    Some((s("status"), s("reason"), s("message")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_placed_by_resources_selectors_and_taints_and_retried_when_a_node_appears() -> Result<()> {
    let s = start().await?;
    let c = &s.client;
    add_node(c, "small", "1", 110, json!({}), json!({})).await?;
    add_node(c, "big", "4", 110, json!({}), json!({})).await?;
    let taint = json!({"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]});
    add_node(c, "gpu", "8", 110, taint, json!({"accel": "gpu"})).await?;
    let ns = Scope::own().in_namespace("default");
    let pods = Resource::pods();

    c.create(&pods, &ns, &pod("two-cpus", "2", json!({}))).await?;
    let gpu_spec = json!({
        "nodeSelector": {"accel": "gpu"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}],
    });
    c.create(&pods, &ns, &pod("wants-gpu", "100m", gpu_spec)).await?;
    c.create(&pods, &ns, &pod("huge", "16", json!({}))).await?;
    c.create(&pods, &ns, &pod("other-scheduler", "100m", json!({"schedulerName": "someone-else"}))).await?;

    ensure!(node_of(c, &ns, "two-cpus").await? == "big");
    ensure!(node_of(c, &ns, "wants-gpu").await? == "gpu");
    let bound = c.get(&pods, &ns, "two-cpus").await?;
    ensure!(condition(&bound).is_some_and(|(s, _, _)| s == "True"), "bound means scheduled: {bound}");

    // Nothing fits: an event with every reason, and the condition.
    let want = "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 2 Insufficient cpu.";
    let event = failed_scheduling(c, &ns, "huge", want).await?;
    ensure!(event["involvedObject"]["kind"] == "Pod" && event["involvedObject"]["uid"].as_str().is_some());
    let (status, reason, message) =
        until("huge's PodScheduled condition", || async { Ok(condition(&c.get(&pods, &ns, "huge").await?)) }).await?;
    ensure!(status == "False" && reason == "Unschedulable" && message == want, "{status} {reason} {message}");

    // A change that does not help (a new label): retried, and the same reason counts up on
    // the same event instead of adding one per attempt.
    let label = Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}}));
    c.patch(&Resource::nodes(), &Scope::own(), "small", &label).await?;
    let events = until("the event to count a second attempt", || async {
        let params = ListParams { field_selector: Some("involvedObject.name=huge".into()), ..ListParams::default() };
        let events = c.list(&Resource::events(), &ns, &params).await?.items;
        Ok(events.iter().any(|e| e["count"].as_u64() >= Some(2)).then_some(events))
    })
    .await?;
    ensure!(events.len() == 1, "one event for one reason: {events:?}");

    // A node that fits arrives: the pod is retried and bound there, and marked scheduled.
    add_node(c, "huge-node", "32", 110, json!({}), json!({})).await?;
    ensure!(node_of(c, &ns, "huge").await? == "huge-node");
    let huge = c.get(&pods, &ns, "huge").await?;
    ensure!(condition(&huge).is_some_and(|(s, _, _)| s == "True"), "{huge}");

    // Another scheduler's pod is left alone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let other = c.get(&pods, &ns, "other-scheduler").await?;
    ensure!(other.pointer("/spec/nodeName").is_none(), "{other}");

    // Deleting a pod frees its room: a pod waiting for it is placed.
    c.create(&pods, &ns, &pod("waits-for-room", "30", json!({}))).await?;
    failed_scheduling(c, &ns, "waits-for-room", "3 Insufficient cpu").await?;
    let zero = client::DeleteParams { grace_period_seconds: Some(0), ..client::DeleteParams::default() };
    c.delete(&pods, &ns, "huge", &zero).await?;
    ensure!(node_of(c, &ns, "waits-for-room").await? == "huge-node");
    Ok(())
}

async fn tenant_with_namespace(c: &Client, name: &str, exclusive: bool) -> Result<Scope> {
    let tenant = json!({"apiVersion": "atoll.io/v1", "kind": "Tenant", "metadata": {"name": name},
        "spec": {"exclusiveNodes": exclusive}});
    c.create(&Resource::tenants(), &Scope::own(), &tenant).await?;
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}});
    match c.create(&Resource::namespaces(), &Scope::tenant(name), &ns).await {
        Ok(_) => {}
        Err(e) if e.is_already_exists() => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Scope::tenant(name).in_namespace("default"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exclusive_tenant_never_shares_a_node() -> Result<()> {
    let s = start().await?;
    let c = &s.client;
    let bad = json!({"apiVersion": "atoll.io/v1", "kind": "Tenant", "metadata": {"name": "bad"},
        "spec": {"exclusiveNodes": "yes"}});
    let err = c.create(&Resource::tenants(), &Scope::own(), &bad).await.err().context("a non-boolean is refused")?;
    ensure!(err.code() == Some(422), "{err}");

    add_node(c, "n1", "4", 110, json!({}), json!({})).await?;
    add_node(c, "n2", "4", 110, json!({}), json!({})).await?;
    let acme = tenant_with_namespace(c, "acme", true).await?;
    let beta = tenant_with_namespace(c, "beta", false).await?;
    let gamma = tenant_with_namespace(c, "gamma", false).await?;
    let pods = Resource::pods();

    c.create(&pods, &beta, &pod("b1", "100m", json!({}))).await?;
    let shared = node_of(c, &beta, "b1").await?;
    let other = if shared == "n1" { "n2" } else { "n1" };
    // The exclusive tenant takes the node nobody else uses.
    c.create(&pods, &acme, &pod("a1", "100m", json!({}))).await?;
    ensure!(node_of(c, &acme, "a1").await? == other);
    // Others keep off it, even when it is the emptier node.
    c.create(&pods, &beta, &pod("b2", "1", json!({}))).await?;
    c.create(&pods, &gamma, &pod("g1", "1", json!({}))).await?;
    ensure!(node_of(c, &beta, "b2").await? == shared);
    ensure!(node_of(c, &gamma, "g1").await? == shared);
    c.create(&pods, &acme, &pod("a2", "100m", json!({}))).await?;
    ensure!(node_of(c, &acme, "a2").await? == other);
    // Full on its own node, the exclusive tenant's pod waits rather than share.
    c.create(&pods, &acme, &pod("a3", "3900m", json!({}))).await?;
    failed_scheduling(c, &acme, "a3", "1 Insufficient cpu, 1 node(s) didn't satisfy tenant isolation").await?;
    // A non-exclusive tenant's pod that fits only on the exclusive node waits too.
    c.create(&pods, &gamma, &pod("g2", "3", json!({}))).await?;
    failed_scheduling(c, &gamma, "g2", "1 Insufficient cpu, 1 node(s) didn't satisfy tenant isolation").await?;
    // The events are each in their own tenant.
    let params = ListParams { field_selector: Some("involvedObject.name=a3".into()), ..ListParams::default() };
    ensure!(c.list(&Resource::events(), &gamma, &params).await?.items.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_pods_are_bound_at_once_without_overcommitting() -> Result<()> {
    let s = start().await?;
    let c = &s.client;
    for i in 0..4 {
        add_node(c, &format!("n{i}"), "64", 50, json!({}), json!({})).await?;
    }
    let ns = Scope::own().in_namespace("default");
    let pods = Resource::pods();
    let owner =
        json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "rs-uid", "controller": true}]);
    for i in 0..210 {
        let mut p = pod(&format!("p{i}"), "100m", json!({}));
        p["metadata"]["ownerReferences"] = owner.clone();
        c.create(&pods, &ns, &p).await?;
    }
    // 200 fit (50 per node); the last ten wait.
    let per_node = until("200 pods bound", || async {
        let list = c.list(&pods, &ns, &ListParams::default()).await?;
        let mut per_node: HashMap<String, usize> = HashMap::new();
        for p in &list.items {
            if let Some(n) = p.pointer("/spec/nodeName").and_then(Value::as_str) {
                *per_node.entry(n.to_string()).or_default() += 1;
            }
        }
        Ok((per_node.values().sum::<usize>() >= 200).then_some(per_node))
    })
    .await?;
    ensure!(per_node.len() == 4 && per_node.values().all(|n| *n == 50), "{per_node:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let list = c.list(&pods, &ns, &ListParams::default()).await?;
    let bound = list.items.iter().filter(|p| p.pointer("/spec/nodeName").is_some()).count();
    ensure!(bound == 200, "{bound} bound");
    let unbound = list.items.iter().find(|p| p.pointer("/spec/nodeName").is_none()).context("an unbound pod")?;
    let name = unbound["metadata"]["name"].as_str().unwrap_or("");
    failed_scheduling(c, &ns, name, "0/4 nodes are available: 4 Too many pods.").await?;
    Ok(())
}
