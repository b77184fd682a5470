//! `atoll bench scheduler`: the decision core alone over a synthetic cluster (decisions per
//! second as the cluster fills), and optionally the whole loop (watches, assumed pods,
//! bindings over HTTPS) against an API server in this process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use client::{Client, ListParams, Patch, Resource, Scope, WatchEvent, WatchParams};
use scheduler::{Decision, Node, Pod, Snapshot, schedule};
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct SchedulerBenchArgs {
    /// Nodes in the decision-core run.
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    /// Pods placed in the decision-core run.
    #[arg(long, default_value_t = 50_000)]
    pods: usize,
    /// Pods for the whole-loop run against an in-process API server (0 skips it).
    #[arg(long, default_value_t = 0)]
    loop_pods: usize,
    /// Nodes for the whole-loop run.
    #[arg(long, default_value_t = 500)]
    loop_nodes: usize,
}

/// A synthetic node: 32 cores, 128 GiB, 110 pods, in one of three zones; every 20th has a
/// NoSchedule taint and every 10th a PreferNoSchedule one.
fn node(i: usize) -> Value {
    let mut taints = Vec::new();
    if i % 20 == 7 {
        taints.push(json!({"key": "dedicated", "value": "infra", "effect": "NoSchedule"}));
    }
    if i % 10 == 3 {
        taints.push(json!({"key": "spot", "value": "true", "effect": "PreferNoSchedule"}));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": format!("node-{i:05}"), "labels": {"zone": format!("z{}", i % 3)}},
        "spec": {"taints": taints},
        "status": {
            "allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"},
            "capacity": {"cpu": "32", "memory": "128Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    })
}

/// A synthetic pod: one of 1,000 ReplicaSets, a small request, every 10th pinned to a zone.
fn pod(i: usize, namespace: &str) -> Value {
    let cpu = ["100m", "250m", "500m"][i % 3];
    let memory = ["128Mi", "256Mi", "512Mi"][i % 3];
    let mut p = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("pod-{i:06}"),
            "namespace": namespace,
            "tenant": "system",
            "uid": format!("uid-{i}"),
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("rs-{}", i % 1000),
                "uid": format!("rs-{}", i % 1000), "controller": true}],
        },
        "spec": {"containers": [{"name": "c", "image": "busybox",
            "resources": {"requests": {"cpu": cpu, "memory": memory}}}]},
    });
    if i.is_multiple_of(10) {
        p["spec"]["nodeSelector"] = json!({"zone": format!("z{}", i % 3)});
    }
    p
}

pub async fn run(args: SchedulerBenchArgs) -> Result<()> {
    core_bench(args.nodes, args.pods)?;
    if args.loop_pods > 0 {
        loop_bench(args.loop_nodes, args.loop_pods).await?;
    }
    Ok(())
}

fn core_bench(nodes: usize, pods: usize) -> Result<()> {
    println!("decision core: {nodes} nodes, {pods} pods (one thread)");
    let started = Instant::now();
    let mut snap = Snapshot::new();
    for i in 0..nodes {
        snap.upsert_node(Node::from_json(&node(i)).context("a node")?);
    }
    println!("  snapshot of {nodes} nodes built in {:.1} ms", started.elapsed().as_secs_f64() * 1e3);
    let json: Vec<Value> = (0..pods).map(|i| pod(i, "bench")).collect();
    let started = Instant::now();
    let parsed: Vec<Arc<Pod>> = json.iter().filter_map(Pod::from_json).map(Arc::new).collect();
    let parse = started.elapsed();
    println!("  pods read from JSON: {:.0}/s", pods as f64 / parse.as_secs_f64());
    let (mut bound, mut unfit) = (0, 0);
    let fifth = (pods / 5).max(1);
    let cpu_before = thread_cpu();
    let mut lap = Instant::now();
    let started = Instant::now();
    for (i, p) in parsed.iter().enumerate() {
        match schedule(&snap, p) {
            Decision::Bind { node, examined } => {
                snap.advance(examined);
                snap.place(p.clone(), node);
                bound += 1;
            }
            Decision::Unschedulable(_) => unfit += 1,
            Decision::NotOurs(why) => anyhow::bail!("pod {i}: {why}"),
        }
        if (i + 1).is_multiple_of(fifth) {
            println!(
                "  pods {:>7}..{:>7}: {:>9.0} decisions/s",
                i + 1 - fifth,
                i + 1,
                fifth as f64 / lap.elapsed().as_secs_f64()
            );
            lap = Instant::now();
        }
    }
    let total = started.elapsed();
    println!(
        "  {bound} bound, {unfit} unschedulable in {:.2} s: {:.0} decisions/s ({:.1} µs each)",
        total.as_secs_f64(),
        pods as f64 / total.as_secs_f64(),
        total.as_secs_f64() * 1e6 / pods as f64
    );
    // On a shared machine the wall clock includes time other processes had the core.
    if let (Some(before), Some(after)) = (cpu_before, thread_cpu()) {
        let cpu = after.saturating_sub(before);
        println!(
            "  on-CPU time of the deciding thread {:.2} s: {:.0} decisions per CPU-second ({:.1} µs each)",
            cpu.as_secs_f64(),
            pods as f64 / cpu.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / pods as f64
        );
    }
    Ok(())
}

/// Time this thread has spent on a CPU (Linux's `/proc/thread-self/schedstat`).
fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok().map(Duration::from_nanos)
}

/// Creates `n` items with `concurrency` tasks calling `f(i)`.
pub(crate) async fn in_parallel<F, Fut>(n: usize, concurrency: usize, f: F) -> Result<()>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let f = Arc::new(f);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (f, next) = (f.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<(), anyhow::Error>(());
                }
                f(i).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn loop_bench(nodes: usize, pods: usize) -> Result<()> {
    println!("whole loop: {nodes} nodes, {pods} pods, API server and scheduler in this process");
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn store::Store> = Arc::new(store::embedded::EmbeddedStore::open(&dir.path().join("store"))?);
    let server = apiserver::http::Server::bind(store, dir.path(), "127.0.0.1:0".parse()?).await?;
    let client = Client::from_kubeconfig(&server.kubeconfig)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));

    let started = Instant::now();
    let c = client.clone();
    in_parallel(nodes, 64, move |i| {
        let c = c.clone();
        async move {
            let n = node(i);
            let name = n["metadata"]["name"].as_str().unwrap_or("").to_string();
            c.create(&Resource::nodes(), &Scope::own(), &n).await?;
            let status = Patch::Merge(json!({"status": n["status"]}));
            c.patch_subresource(&Resource::nodes(), &Scope::own(), &name, "status", &status).await?;
            Ok(())
        }
    })
    .await?;
    println!("  {nodes} nodes created in {:.1} s", started.elapsed().as_secs_f64());
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}});
    client.create(&Resource::namespaces(), &Scope::own(), &ns).await?;

    // Every pod exists before the scheduler starts, so what is timed is scheduling alone:
    // its initial list, decisions, and bindings confirmed by the watch.
    let started = Instant::now();
    let c = client.clone();
    in_parallel(pods, 128, move |i| {
        let c = c.clone();
        async move {
            let mut p = pod(i, "bench");
            p["metadata"].as_object_mut().map(|m| (m.remove("uid"), m.remove("tenant")));
            c.create(&Resource::pods(), &Scope::own().in_namespace("bench"), &p).await?;
            Ok(())
        }
    })
    .await?;
    let created = started.elapsed();
    println!("  {pods} pods created in {:.1} s ({:.0}/s)", created.as_secs_f64(), pods as f64 / created.as_secs_f64());

    let scope = Scope::own().in_namespace("bench");
    let rv = client.list(&Resource::pods(), &scope, &ListParams { limit: Some(1), ..Default::default() }).await?;
    let params = WatchParams { resource_version: Some(rv.resource_version), ..Default::default() };
    let mut watch = client.watch(&Resource::pods(), &scope, &params).await?;
    let (sched_stop, sched_stopped) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let task = tokio::spawn(scheduler::run(client.clone(), scheduler::Config::default(), async move {
        let _ = sched_stopped.await;
    }));
    let mut bound = std::collections::HashSet::new();
    let mut first = None;
    let deadline = started + Duration::from_secs(600);
    while bound.len() < pods {
        let event = tokio::time::timeout_at(deadline.into(), watch.next()).await.context("timed out")??;
        match event {
            Some(WatchEvent::Modified(p)) if p.pointer("/spec/nodeName").is_some() => {
                first.get_or_insert_with(|| started.elapsed());
                bound.insert(p["metadata"]["name"].as_str().unwrap_or("").to_string());
            }
            Some(WatchEvent::Error(s)) => anyhow::bail!("watch failed: {}", s.message),
            None => anyhow::bail!("the watch ended"),
            _ => {}
        }
    }
    let total = started.elapsed();
    let first = first.unwrap_or_default();
    println!(
        "  {pods} pods bound {:.2} s after the scheduler started: {:.0} pods/s overall; first binding after {:.2} s, \
         {:.0} pods/s from then on",
        total.as_secs_f64(),
        pods as f64 / total.as_secs_f64(),
        first.as_secs_f64(),
        pods as f64 / (total - first).as_secs_f64().max(1e-9),
    );
    ensure!(bound.len() == pods);
    let _ = sched_stop.send(());
    let _ = task.await;
    let _ = stop.send(());
    Ok(())
}
