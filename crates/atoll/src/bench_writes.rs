//! `atoll bench writes`: the control plane's CPU for each of a pod's three writes — the
//! create, the scheduler's binding and the node's status report — through the API server's
//! in-process handler (as `atoll up`'s components reach it), with the embedded store in a
//! temporary directory and, if asked, watchers of the pods beside them. The whole process's
//! CPU time is divided by the writes of each phase: a per-write cost far less noisy than a
//! whole cluster's run, for measuring changes to the write path.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use client::{Client, Keep, Patch, Resource, Scope, Shape, WatchParams};
use serde_json::json;

#[derive(clap::Args)]
pub struct WritesBenchArgs {
    /// Pods to create, bind and report running.
    #[arg(long, default_value_t = 20_000)]
    pods: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Watchers of the pods (without managed fields, each event decoded whole).
    #[arg(long, default_value_t = 0)]
    watchers: usize,
    /// Times to run the three phases (each on new pods).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// CPU time this process has used (user and system), from `/proc/self/stat`.
fn process_cpu() -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let after_name = stat.rfind(')').map(|i| &stat[i + 1..]).context("unreadable /proc/self/stat")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of the line (utime, stime), in clock ticks of 10 ms.
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).context("unreadable /proc/self/stat");
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

pub async fn run(args: WritesBenchArgs) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn store::Store> = Arc::new(store::embedded::EmbeddedStore::open(&dir.path().join("store"))?);
    let server = apiserver::http::Server::bind(store, dir.path(), "127.0.0.1:0".parse()?).await?;
    let config = client::Config::from_kubeconfig(&server.kubeconfig, None)?.named("atoll-bench-writes");
    let cert = config.identity.as_ref().map(|(c, _)| c.clone()).context("the kubeconfig has no certificate")?;
    let client = Client::in_process(config, Arc::new(server.in_process(&cert)?))?;
    let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}});
    client.create(&Resource::namespaces(), &Scope::own(), &namespace).await?;
    let scope = Scope::own().in_namespace("bench");
    for _ in 0..args.watchers {
        let params = WatchParams { omit_managed_fields: true, ..Default::default() };
        let mut watch = client.watch(&Resource::pods(), &scope, &params).await?;
        tokio::spawn(async move { while let Ok(Some(_)) = watch.next().await {} });
    }
    println!(
        "writes: {} pods x 3 writes per round, {} in flight, {} watchers, API server in this process, embedded store",
        args.pods, args.concurrency, args.watchers
    );
    let mut totals = [Duration::ZERO; 3];
    for round in 0..args.rounds {
        let prefix = format!("r{round}");
        let mut line = format!("round {}:", round + 1);
        for (phase, total) in ["create", "binding", "status"].into_iter().zip(totals.iter_mut()) {
            let (started, cpu) = (Instant::now(), process_cpu()?);
            let (c, p) = (client.clone(), prefix.clone());
            crate::bench_sched::in_parallel(args.pods, args.concurrency, move |i| {
                let (c, name) = (c.clone(), format!("{p}-{i}"));
                async move { write(&c, phase, &name, i).await }
            })
            .await?;
            let (wall, used) = (started.elapsed(), process_cpu()? - cpu);
            *total += used;
            line.push_str(&format!(
                "  {phase} {:.0}/s, {:.1} us CPU each;",
                args.pods as f64 / wall.as_secs_f64(),
                used.as_secs_f64() * 1e6 / args.pods as f64
            ));
        }
        println!("{}", line.trim_end_matches(';'));
    }
    let each = |t: Duration| t.as_secs_f64() * 1e6 / (args.pods * args.rounds) as f64;
    println!(
        "CPU per write over all rounds: create {:.1} us, binding {:.1} us, status {:.1} us; a pod's three {:.1} us",
        each(totals[0]),
        each(totals[1]),
        each(totals[2]),
        each(totals[0] + totals[1] + totals[2])
    );
    Ok(())
}

/// One write of `phase` for pod `name`, answered in the shape its component asks for: the
/// ReplicaSet controller reads back a created pod's metadata, a node nothing of its status.
async fn write(client: &Client, phase: &str, name: &str, i: usize) -> Result<()> {
    let scope = Scope::own().in_namespace("bench");
    match phase {
        "create" => {
            let pod = json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "labels": {"app": "bench"}},
                "spec": {"terminationGracePeriodSeconds": 0, "containers": [{"name": "c", "image": "busybox",
                    "imagePullPolicy": "Never", "command": ["sleep", "3600"],
                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]}});
            client.create_keeping(&Resource::pods(), &scope, &pod, &Keep::shape(Shape::only(&["metadata"]))).await?;
        }
        "binding" => {
            let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
                "target": {"apiVersion": "v1", "kind": "Node", "name": format!("node-{}", i % 100)}});
            client.create_subresource(&Resource::pods(), &scope, name, "binding", &binding).await?;
        }
        _ => {
            // What a simulated node reports for a pod it runs.
            let pod = json!({"metadata": {"uid": name}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
            let status = agent::simulated::running_status(&pod, "10.0.0.1", || "10.1.0.1".into(), SystemTime::now())
                .context("no status to report")?;
            let patch = Patch::Merge(json!({"status": status}));
            let at = (&Resource::pods(), &scope, name, "status");
            client.patch_subresource_keeping(at, &patch, &Keep::shape(Shape::only(&[]))).await?;
        }
    }
    Ok(())
}
