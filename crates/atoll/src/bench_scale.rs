//! `atoll bench scale`: Kubernetes' largest supported cluster (5,000 nodes, 150,000 pods)
//! against this machine's control plane. Three processes, so each one's memory and CPU can be
//! read from `/proc`: `atoll up --no-agent` (API server, controllers, scheduler; embedded store
//! or an etcd this bench starts on loopback), `atoll agent --simulated N` (the hollow nodes)
//! and this one (the load: clients creating Deployments and bare pods, and one watch that
//! times every pod). Reported: pods bound per second (overall and between 10% and 90% bound),
//! the bench's mutating calls' latency p50/p99 (per call, as the Kubernetes API call SLI; no
//! watches or lists), pod startup latency create → Running p50/p99 (as the pod startup SLI:
//! from creation to the watch showing every container running; nothing is pulled), and each
//! process's peak and final resident memory and CPU time.
//!
//! And an account of every pod: how many distinct pods the watch saw against how many were
//! asked for, by owner (bare, each ReplicaSet against its replicas, Deployments with more than
//! one ReplicaSet), the pods deleted during the run and why (evicted by a NoExecute taint,
//! which the node lifecycle controller marks with the condition `DisruptionTarget` /
//! `DeletionByTaintManager`; owned by a ReplicaSet otherwise: its scale-down or the garbage
//! collector; bare), and what a second watch saw of the simulated nodes (Ready → not Ready
//! transitions, NoExecute taints added, most nodes not Ready at once).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use client::{Client, ListParams, Resource, Scope, WatchEvent, WatchParams};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::bench::{ms, percentile};

#[derive(clap::Args)]
pub struct ScaleBenchArgs {
    /// Simulated nodes.
    #[arg(long, default_value_t = 5000)]
    nodes: usize,
    /// Pods in all: `deployments × replicas` through Deployments, the rest created directly.
    #[arg(long, default_value_t = 150_000)]
    pods: usize,
    /// Deployments (0: every pod is created directly).
    #[arg(long, default_value_t = 100)]
    deployments: usize,
    /// Replicas per Deployment (default: two thirds of the pods spread over the Deployments).
    #[arg(long)]
    replicas: Option<usize>,
    /// Store of the control plane: embedded, or an etcd this bench starts on loopback.
    #[arg(long, value_enum, default_value_t = crate::StoreKind::Embedded)]
    store: crate::StoreKind,
    /// API clients (each its own connection) creating the bare pods.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Create calls in flight per client.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds to wait for every pod to run.
    #[arg(long, default_value_t = 1800)]
    timeout: u64,
    /// After every pod runs, create this many more bare pods at a fixed rate (as ClusterLoader2's
    /// load tests create pods at a set QPS) and report their startup latency apart: the pod
    /// startup SLI on a cluster holding all the others, without the saturation phase's queue.
    #[arg(long, default_value_t = 0)]
    latency_pods: usize,
    /// Pods per second of the paced phase.
    #[arg(long, default_value_t = 10.0)]
    latency_rate: f64,
    /// Keep the data folder (and the processes' logs) instead of removing it.
    #[arg(long)]
    keep: bool,
    /// An extra argument for the control plane's `atoll up` (repeatable), e.g.
    /// `--up-arg=--compaction-interval=30s` to make watches and lists expire sooner.
    #[arg(long = "up-arg", allow_hyphen_values = true)]
    up_args: Vec<String>,
}

/// A child process stopped with SIGINT (then SIGKILL after a while) when dropped.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline && !matches!(self.child.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(100));
        }
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            eprintln!("{} did not stop within 60 s of SIGINT; killed", self.name);
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Memory and CPU of one process from `/proc/<pid>/status` and `/proc/<pid>/stat`.
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    hwm_kib: u64,
    rss_kib: u64,
    cpu: Duration,
}

fn usage(pid: u32) -> Option<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start at the state, field 3; utime and
    // stime are fields 14 and 15, in clock ticks.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let hz = clock_ticks_per_second();
    Some(Usage { hwm_kib: kib("VmHWM:"), rss_kib: kib("VmRSS:"), cpu: Duration::from_millis(ticks * 1000 / hz) })
}

/// `getconf CLK_TCK` (100 on every Linux we know; asked rather than assumed).
fn clock_ticks_per_second() -> u64 {
    static HZ: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *HZ.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&hz| hz > 0)
            .unwrap_or(100)
    })
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// Running, and every container says so.
fn running(pod: &Value) -> bool {
    text(pod, "/status/phase") == "Running"
        && pod
            .pointer("/status/containerStatuses")
            .and_then(Value::as_array)
            .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c.pointer("/state/running").is_some()))
}

fn pod_template(app: &str) -> Value {
    json!({
        "metadata": {"labels": {"app": app}},
        "spec": {"terminationGracePeriodSeconds": 0, "containers": [{"name": "c", "image": "busybox",
            "imagePullPolicy": "Never", "command": ["sleep", "3600"],
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]},
    })
}

/// When the watch first saw each pod, bound and running; its controlling owner.
#[derive(Default)]
struct PodTimes {
    seen: Option<Instant>,
    bound: Option<Instant>,
    running: Option<Instant>,
    /// `kind/name` of the controller reference; empty for a bare pod.
    owner: String,
    deleted: bool,
}

fn controller_of(pod: &Value) -> String {
    pod.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .and_then(|refs| refs.iter().find(|r| r.get("controller").and_then(Value::as_bool) == Some(true)))
        .map(|r| format!("{}/{}", text(r, "/kind"), text(r, "/name")))
        .unwrap_or_default()
}

/// Why a pod the watch saw deleted went.
fn deletion_cause(pod: &Value) -> &'static str {
    let evicted = pod.pointer("/status/conditions").and_then(Value::as_array).is_some_and(|cs| {
        cs.iter().any(|c| text(c, "/type") == "DisruptionTarget" && text(c, "/reason") == "DeletionByTaintManager")
    });
    match (evicted, controller_of(pod).is_empty()) {
        (true, _) => "evicted by a NoExecute taint",
        (false, false) => "owned, deleted by its controller or the garbage collector",
        (false, true) => "bare, deleted",
    }
}

/// What the node watch saw: each node's readiness and NoExecute taint, and the transitions.
#[derive(Default)]
struct NodeAccount {
    ready: HashMap<String, bool>,
    no_execute: HashMap<String, bool>,
    went_not_ready: usize,
    came_back: usize,
    tainted_no_execute: usize,
    most_not_ready: usize,
    not_ready: usize,
    nodes_ever_not_ready: std::collections::HashSet<String>,
}

impl NodeAccount {
    fn observe(&mut self, node: &Value) {
        let name = text(node, "/metadata/name").to_string();
        let ready = node
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| cs.iter().any(|c| text(c, "/type") == "Ready" && text(c, "/status") == "True"));
        let no_execute = node.pointer("/spec/taints").and_then(Value::as_array).is_some_and(|ts| {
            ts.iter().any(|t| text(t, "/effect") == "NoExecute" && text(t, "/key").starts_with("node.kubernetes.io/"))
        });
        // A node first seen not Ready counts as a transition only after it was seen Ready.
        let before = self.ready.insert(name.clone(), ready);
        match before {
            Some(true) if !ready => {
                self.went_not_ready += 1;
                self.nodes_ever_not_ready.insert(name.clone());
            }
            Some(false) if ready => self.came_back += 1,
            _ => {}
        }
        match (before, ready) {
            (Some(true) | None, false) => self.not_ready += 1,
            (Some(false), true) => self.not_ready -= 1,
            _ => {}
        }
        if self.no_execute.insert(name, no_execute) != Some(true) && no_execute {
            self.tainted_no_execute += 1;
        }
        self.most_not_ready = self.most_not_ready.max(self.not_ready);
    }
}

fn start_up(exe: &Path, dir: &Path, etcd: Option<&str>, extra: &[String]) -> Result<Proc> {
    let mut up = Command::new(exe);
    up.args(["up", "--no-agent", "--listen", "127.0.0.1:0", "--data-dir"]).arg(dir);
    if let Some(endpoint) = etcd {
        up.args(["--store", "etcd", "--etcd-endpoints", endpoint]);
    }
    up.args(extra);
    let log = std::fs::File::create(dir.join("up.log"))?;
    let mut child = up.stdout(Stdio::piped()).stderr(log).spawn().context("starting atoll up")?;
    let mut reader = BufReader::new(child.stdout.take().context("atoll up's stdout")?);
    let proc = Proc { name: "atoll up", child };
    let mut line = String::new();
    reader.read_line(&mut line)?;
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    ensure!(line.starts_with("listening on"), "atoll up did not start; see {}", dir.join("up.log").display());
    Ok(proc)
}

/// Counts the Ready simulated nodes, a page of 500 at a time (as kubectl lists).
async fn ready_nodes(client: &Client) -> Result<usize> {
    let mut params = ListParams {
        label_selector: Some("atoll.io/simulated=true".into()),
        limit: Some(500),
        ..ListParams::default()
    };
    let mut ready = 0;
    loop {
        let page = client.list(&Resource::nodes(), &Scope::tenant("system"), &params).await?;
        ready += page
            .items
            .iter()
            .filter(|n| {
                n.pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .is_some_and(|cs| cs.iter().any(|c| text(c, "/type") == "Ready" && text(c, "/status") == "True"))
            })
            .count();
        match page.continue_token {
            Some(token) => params.continue_token = Some(token),
            None => return Ok(ready),
        }
    }
}

pub async fn run(args: ScaleBenchArgs) -> Result<()> {
    let replicas = match args.replicas {
        Some(r) => r,
        None if args.deployments > 0 => args.pods * 2 / 3 / args.deployments,
        None => 0,
    };
    let through_deployments = args.deployments * replicas;
    ensure!(through_deployments <= args.pods, "deployments × replicas is more than --pods");
    let bare = args.pods - through_deployments;
    let dir = tempfile::Builder::new().prefix("atoll-bench-scale-").tempdir()?;
    let exe = std::env::current_exe()?;
    println!(
        "scale: {} simulated nodes, {} pods ({} Deployments × {replicas}, {bare} bare from {} clients × {} in flight), \
         store {:?}; data in {}",
        args.nodes,
        args.pods,
        args.deployments,
        args.clients,
        args.concurrency,
        args.store,
        dir.path().display()
    );
    println!("load average at the start: {}", load_average());

    let etcd = match args.store {
        crate::StoreKind::Etcd => Some(
            store::etcd_process::EtcdProcess::start()
                .context("starting etcd on loopback (apt-get install etcd-server)")?,
        ),
        crate::StoreKind::Embedded => None,
    };
    let up = start_up(&exe, dir.path(), etcd.as_ref().map(|e| e.endpoint()).as_deref(), &args.up_args)?;
    let kubeconfig = dir.path().join("admin.kubeconfig");
    let sim_log = std::fs::File::create(dir.path().join("agent.log"))?;
    let sims = Proc {
        name: "atoll agent --simulated",
        child: Command::new(&exe)
            .args(["agent", "--simulated", &args.nodes.to_string(), "--kubeconfig"])
            .arg(&kubeconfig)
            .stdout(Stdio::null())
            .stderr(sim_log)
            .spawn()
            .context("starting the simulated nodes")?,
    };
    let result = measure(&args, &kubeconfig, replicas, bare, &up, &sims, etcd.as_ref()).await;
    drop(sims);
    drop(up);
    drop(etcd);
    if args.keep {
        let kept = dir.keep();
        println!("kept {}", kept.display());
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    args: &ScaleBenchArgs,
    kubeconfig: &Path,
    replicas: usize,
    bare: usize,
    up: &Proc,
    sims: &Proc,
    etcd: Option<&store::etcd_process::EtcdProcess>,
) -> Result<()> {
    let client = Client::from_kubeconfig(kubeconfig)?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    // On a loaded machine a few nodes' leases lapse for a while and the node lifecycle
    // controller marks them NotReady until their next status report: 99.5% Ready is enough
    // to start (the count is printed; the scheduler skips the others, as it should).
    let ready = loop {
        let ready = ready_nodes(&client).await.unwrap_or(0);
        if ready * 1000 >= args.nodes * 995 {
            break ready;
        }
        ensure!(Instant::now() < deadline, "only {ready} of {} simulated nodes became Ready", args.nodes);
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    println!(
        "{ready} of {} simulated nodes Ready after {:.1} s (load average {})",
        args.nodes,
        started.elapsed().as_secs_f64(),
        load_average()
    );
    let before = [usage(up.pid()), usage(sims.pid()), etcd.and_then(|e| e.pid()).and_then(usage)];
    let calls_before = server_histograms(&client).await?;

    let ns = "scale";
    client
        .create(
            &Resource::namespaces(),
            &Scope::own(),
            &json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns}}),
        )
        .await?;
    let scope = Scope::own().in_namespace(ns);
    let listed = client.list(&Resource::pods(), &scope, &ListParams { limit: Some(1), ..Default::default() }).await?;
    let params = WatchParams { resource_version: Some(listed.resource_version), ..WatchParams::default() };
    let mut watch = client.watch(&Resource::pods(), &scope, &params).await?;
    // The last version the pod watch delivered, to reopen it there: the server drops a
    // watcher that falls too far behind (as Kubernetes' does), and clients carry on from
    // where they were.
    let mut pod_rv = params.resource_version.clone().unwrap_or_default();
    let mut rewatches = 0usize;
    // The simulated nodes, from their current state on (ADDED first), to count transitions.
    let node_params = WatchParams { label_selector: Some("atoll.io/simulated=true".into()), ..WatchParams::default() };
    let system = Scope::tenant("system");
    let mut node_watch = Some(client.watch(&Resource::nodes(), &system, &node_params).await?);
    let mut node_rv = String::new();
    let mut nodes_account = NodeAccount::default();
    let mut deletions: HashMap<&'static str, usize> = HashMap::new();

    // Mutating calls' latencies and the bare pods' send times, from every client.
    let calls: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let begin = Instant::now();

    let mut creators = tokio::task::JoinSet::new();
    {
        let (client, scope, calls) = (client.clone(), scope.clone(), calls.clone());
        let deployments = args.deployments;
        creators.spawn(async move {
            for d in 0..deployments {
                let app = format!("d{d}");
                let obj = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": app},
                    "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": app}},
                             "template": pod_template(&app)}});
                let t0 = Instant::now();
                client.create(&controllers::deployment::deployments(), &scope, &obj).await?;
                calls.lock().await.push(t0.elapsed());
            }
            anyhow::Ok(())
        });
    }
    let next = Arc::new(AtomicUsize::new(0));
    for _ in 0..args.clients.max(1) {
        // Each client its own connection, as separate programs would have.
        let c = Client::from_kubeconfig(kubeconfig)?;
        for _ in 0..args.concurrency.max(1) {
            let (c, scope, calls, sent_at, next) =
                (c.clone(), scope.clone(), calls.clone(), sent_at.clone(), next.clone());
            creators.spawn(async move {
                let mut template = pod_template("bare");
                template["apiVersion"] = json!("v1");
                template["kind"] = json!("Pod");
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= bare {
                        return anyhow::Ok(());
                    }
                    let name = format!("bare-{i:06}");
                    template["metadata"]["name"] = json!(name);
                    let t0 = Instant::now();
                    c.create(&Resource::pods(), &scope, &template).await?;
                    calls.lock().await.push(t0.elapsed());
                    sent_at.lock().await.insert(name, t0);
                }
            });
        }
    }

    let mut pods: HashMap<String, PodTimes> = HashMap::with_capacity(args.pods);
    let (mut bound, mut running_count) = (0usize, 0usize);
    let mut bound_order: Vec<Instant> = Vec::with_capacity(args.pods);
    let mut creators_done = false;
    let deadline = begin + Duration::from_secs(args.timeout);
    let mut report = tokio::time::interval(Duration::from_secs(10));
    report.tick().await;
    let mut loads = Vec::new();
    while running_count < args.pods {
        let event = tokio::select! {
            done = creators.join_next(), if !creators_done => {
                match done {
                    Some(r) => r??,
                    None => {
                        creators_done = true;
                        println!("  {:>6.1} s: every create call answered", begin.elapsed().as_secs_f64());
                    }
                }
                continue;
            }
            _ = report.tick() => {
                let load = load_average();
                println!(
                    "  {:>6.1} s: {} pods seen, {bound} bound, {running_count} running (load average {load})",
                    begin.elapsed().as_secs_f64(),
                    pods.len(),
                );
                loads.push(load);
                continue;
            }
            node_event = async { node_watch.as_mut().expect("guarded").next().await }, if node_watch.is_some() => {
                match node_event {
                    Ok(Some(WatchEvent::Added(n) | WatchEvent::Modified(n))) => {
                        node_rv = text(&n, "/metadata/resourceVersion").to_string();
                        nodes_account.observe(&n);
                    }
                    Ok(Some(WatchEvent::Deleted(_) | WatchEvent::Bookmark { .. })) => {}
                    // Ended or failed: start again from the last version seen.
                    _ => {
                        let params = WatchParams { resource_version: Some(node_rv.clone()), ..node_params.clone() };
                        node_watch = client.watch(&Resource::nodes(), &system, &params).await.ok();
                        if node_watch.is_none() {
                            println!("  the node watch could not be reopened: node figures stop here");
                        }
                    }
                }
                continue;
            }
            event = tokio::time::timeout_at(deadline.into(), watch.next()) => event,
        };
        let Ok(event) = event else {
            // What did finish is still worth reporting (a loaded machine may not finish).
            println!(
                "TIMED OUT: only {running_count} of {} pods ran within {} s ({bound} bound); figures below are for \
                 those",
                args.pods, args.timeout
            );
            break;
        };
        let pod = match event? {
            Some(WatchEvent::Added(pod) | WatchEvent::Modified(pod)) => pod,
            Some(WatchEvent::Deleted(pod)) => {
                pod_rv = text(&pod, "/metadata/resourceVersion").to_string();
                let times = pods.entry(text(&pod, "/metadata/name").to_string()).or_default();
                if !times.deleted {
                    times.deleted = true;
                    *deletions.entry(deletion_cause(&pod)).or_default() += 1;
                }
                continue;
            }
            Some(WatchEvent::Error(s)) => bail!("the watch failed: {}", s.message),
            None => {
                rewatches += 1;
                let params = WatchParams { resource_version: Some(pod_rv.clone()), ..WatchParams::default() };
                watch = client
                    .watch(&Resource::pods(), &scope, &params)
                    .await
                    .context("reopening the pod watch the server ended")?;
                continue;
            }
            Some(_) => continue,
        };
        pod_rv = text(&pod, "/metadata/resourceVersion").to_string();
        let now = Instant::now();
        let times = pods.entry(text(&pod, "/metadata/name").to_string()).or_default();
        if times.seen.is_none() {
            times.owner = controller_of(&pod);
        }
        times.seen.get_or_insert(now);
        if times.bound.is_none() && !text(&pod, "/spec/nodeName").is_empty() {
            times.bound = Some(now);
            bound_order.push(now);
            bound += 1;
        }
        if times.running.is_none() && running(&pod) {
            times.running = Some(now);
            running_count += 1;
        }
    }
    let total = begin.elapsed();
    if creators_done || running_count == args.pods {
        while let Some(done) = creators.join_next().await {
            done??;
        }
    } else {
        creators.abort_all();
    }
    ensure!(bound > 0, "no pod was bound");
    let after = [usage(up.pid()), usage(sims.pid()), etcd.and_then(|e| e.pid()).and_then(usage)];
    let server_calls = server_histograms(&client).await?.since(&calls_before);

    // Scheduling throughput: overall from the first create call to the last binding seen, and
    // at steady state between 10% and 90% of the bindings (ramp-up and tail left out).
    let last_bound = bound_order.last().copied().unwrap_or(begin);
    let overall = bound as f64 / last_bound.duration_since(begin).as_secs_f64().max(1e-9);
    let (p10, p90) = (bound_order[bound / 10], bound_order[(bound * 9 / 10).min(bound - 1)]);
    let steady = (bound * 8 / 10) as f64 / p90.duration_since(p10).as_secs_f64().max(1e-9);
    println!(
        "{running_count} of {} pods running after {:.1} s; scheduling: {bound} bound, {overall:.0} pods bound/s \
         overall, {steady:.0}/s between 10% and 90% bound",
        args.pods,
        total.as_secs_f64()
    );
    let mut calls = std::mem::take(&mut *calls.lock().await);
    calls.sort_unstable();
    println!(
        "mutating API calls by the bench ({} creates): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        calls.len(),
        ms(percentile(&calls, 0.5)),
        ms(percentile(&calls, 0.99)),
        ms(calls.last().copied().unwrap_or_default())
    );
    report_server_calls(&server_calls);
    // Startup: bare pods from their create call; Deployment pods (created by the ReplicaSet
    // controller) from the watch's first sight of them, which is after their creation.
    let sent_at = sent_at.lock().await;
    let (mut bare_lat, mut deployed_lat) = (Vec::new(), Vec::new());
    for (name, t) in &pods {
        let Some(running) = t.running else { continue };
        match sent_at.get(name) {
            Some(sent) => bare_lat.push(running.duration_since(*sent)),
            None => deployed_lat.push(running.duration_since(t.seen.unwrap_or(running))),
        }
    }
    for (what, lat) in [
        ("bare pods, from the create call", &mut bare_lat),
        ("Deployment pods, from first watch sight", &mut deployed_lat),
    ] {
        lat.sort_unstable();
        println!(
            "pod startup ({what}, {}): create -> Running p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            lat.len(),
            ms(percentile(lat, 0.5)),
            ms(percentile(lat, 0.99)),
            ms(lat.last().copied().unwrap_or_default())
        );
    }
    let names = ["control plane (atoll up)", "simulated nodes (atoll agent)", "etcd"];
    for ((name, b), a) in names.iter().zip(before).zip(after) {
        let Some(a) = a else { continue };
        let cpu_run = a.cpu.saturating_sub(b.map(|b| b.cpu).unwrap_or_default());
        println!(
            "{name}: VmHWM {} MiB, VmRSS {} MiB at the end; CPU {:.1} s in all, {:.1} s during the pods' run",
            a.hwm_kib / 1024,
            a.rss_kib / 1024,
            a.cpu.as_secs_f64(),
            cpu_run.as_secs_f64()
        );
    }
    if let Some(me) = usage(std::process::id()) {
        println!("this bench (clients and watch): VmHWM {} MiB, CPU {:.1} s", me.hwm_kib / 1024, me.cpu.as_secs_f64());
    }
    println!("pod watch of this bench: reopened {rewatches} times (the server ends a watch that falls too far behind)");
    println!("load average during the run (every 10 s): {}", loads.join(" | "));
    if args.latency_pods > 0 && running_count == args.pods {
        paced(kubeconfig, &scope, &mut watch, args).await?;
    }
    account(&client, &scope, args, replicas, &pods, &deletions, &nodes_account).await
}

/// The API server's request histograms now.
async fn server_histograms(client: &Client) -> Result<crate::api_sli::Histograms> {
    let (code, body) = client.raw("GET", "/metrics", "text/plain", None).await?;
    ensure!(code == 200, "GET /metrics answered {code}: {}", String::from_utf8_lossy(&body));
    crate::api_sli::Histograms::parse(&String::from_utf8_lossy(&body)).map_err(|e| anyhow::anyhow!("/metrics: {e}"))
}

/// Every caller's API calls during the run as the server timed them (the Kubernetes API call
/// latency SLIs: mutating calls and single-object reads p99 ≤ 1 s, lists ≤ 30 s).
fn report_server_calls(calls: &crate::api_sli::Histograms) {
    use crate::api_sli::{MUTATING, quantile};
    println!(
        "API calls by every caller during the run, as the server timed them (p50 / p99 interpolated within its \
         histogram's buckets):"
    );
    let mut worst: Option<(f64, &str)> = None;
    for (call, buckets) in &calls.0 {
        let n = buckets.last().map_or(0, |b| b.1);
        let (Some(p50), Some(p99)) = (quantile(buckets, 0.5), quantile(buckets, 0.99)) else { continue };
        let verb = call.split(' ').next().unwrap_or("");
        if MUTATING.contains(&verb) && worst.is_none_or(|(w, _)| p99 > w) {
            worst = Some((p99, call));
        }
        println!("  {call:<44} {n:>8} calls  p50 {:>8.1} ms  p99 {:>8.1} ms", p50 * 1e3, p99 * 1e3);
    }
    if let Some((p99, call)) = worst {
        println!(
            "mutating API calls (every caller): worst p99 {:.1} ms ({call}); SLO p99 <= 1 s: {}",
            p99 * 1e3,
            if p99 <= 1.0 { "met" } else { "missed" }
        );
    }
}

/// The paced phase: `--latency-pods` bare pods created at `--latency-rate` per second, each
/// timed from its create call to the watch seeing it Running with every container running
/// (stricter than the SLI's start, the pod's creationTimestamp, which the server sets during
/// that call; nothing is pulled, so no image pull time is to be left out).
async fn paced(kubeconfig: &Path, scope: &Scope, watch: &mut client::WatchStream, args: &ScaleBenchArgs) -> Result<()> {
    ensure!(args.latency_rate > 0.0, "--latency-rate must be positive");
    let n = args.latency_pods;
    println!("paced phase: {n} bare pods at {} pods/s (load average {})", args.latency_rate, load_average());
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let calls: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let c = Client::from_kubeconfig(kubeconfig)?;
    let (pace_scope, pace_sent, pace_calls) = (scope.clone(), sent.clone(), calls.clone());
    let rate = args.latency_rate;
    let mut creator = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        let mut creates = tokio::task::JoinSet::new();
        for i in 0..n {
            tick.tick().await;
            let (c, scope, sent, calls) = (c.clone(), pace_scope.clone(), pace_sent.clone(), pace_calls.clone());
            creates.spawn(async move {
                let mut pod = pod_template("paced");
                pod["apiVersion"] = json!("v1");
                pod["kind"] = json!("Pod");
                let name = format!("paced-{i:06}");
                pod["metadata"]["name"] = json!(name);
                let t0 = Instant::now();
                sent.lock().await.insert(name, t0);
                c.create(&Resource::pods(), &scope, &pod).await?;
                calls.lock().await.push(t0.elapsed());
                anyhow::Ok(())
            });
        }
        while let Some(done) = creates.join_next().await {
            done??;
        }
        anyhow::Ok(())
    });
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(n as f64 / rate) + Duration::from_secs(args.timeout.min(600));
    let mut running_at: HashMap<String, Instant> = HashMap::with_capacity(n);
    let mut created = false;
    while running_at.len() < n {
        let event = tokio::select! {
            done = &mut creator, if !created => {
                done??;
                created = true;
                continue;
            }
            event = tokio::time::timeout_at(deadline.into(), watch.next()) => event,
        };
        let Ok(event) = event else {
            println!("paced phase TIMED OUT: {} of {n} running", running_at.len());
            break;
        };
        let pod = match event? {
            Some(WatchEvent::Added(pod) | WatchEvent::Modified(pod)) => pod,
            Some(WatchEvent::Error(s)) => bail!("the watch failed: {}", s.message),
            None => bail!("the server ended the watch"),
            Some(_) => continue,
        };
        let name = text(&pod, "/metadata/name");
        if name.starts_with("paced-") && !running_at.contains_key(name) && running(&pod) {
            running_at.insert(name.to_string(), Instant::now());
        }
    }
    let sent = sent.lock().await;
    let mut lat: Vec<Duration> =
        running_at.iter().filter_map(|(name, at)| Some(at.duration_since(*sent.get(name)?))).collect();
    lat.sort_unstable();
    let mut calls = std::mem::take(&mut *calls.lock().await);
    calls.sort_unstable();
    println!(
        "paced pod startup ({} pods at {} pods/s over {:.1} s): create -> Running p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} \
         ms, max {:.0} ms; their creates p50 {:.1} ms, p99 {:.1} ms (load average {})",
        lat.len(),
        rate,
        started.elapsed().as_secs_f64(),
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.9)),
        ms(percentile(&lat, 0.99)),
        ms(lat.last().copied().unwrap_or_default()),
        ms(percentile(&calls, 0.5)),
        ms(percentile(&calls, 0.99)),
        load_average()
    );
    Ok(())
}

/// Every pod accounted for: by owner against what was asked, deletions by cause, and the
/// nodes' transitions.
async fn account(
    client: &Client,
    scope: &Scope,
    args: &ScaleBenchArgs,
    replicas: usize,
    pods: &HashMap<String, PodTimes>,
    deletions: &HashMap<&'static str, usize>,
    nodes: &NodeAccount,
) -> Result<()> {
    let mut per_owner: HashMap<&str, usize> = HashMap::new();
    for t in pods.values() {
        *per_owner.entry(t.owner.as_str()).or_default() += 1;
    }
    let bare = per_owner.get("").copied().unwrap_or(0);
    let sets = client.list(&controllers::replicaset::replicasets(), scope, &ListParams::default()).await?;
    // Deployment name -> its ReplicaSets' names.
    let mut by_deployment: HashMap<String, Vec<String>> = HashMap::new();
    for rs in &sets.items {
        by_deployment.entry(controller_of(rs)).or_default().push(text(rs, "/metadata/name").to_string());
    }
    let made: Vec<usize> = sets
        .items
        .iter()
        .map(|rs| per_owner.get(format!("ReplicaSet/{}", text(rs, "/metadata/name")).as_str()).copied().unwrap_or(0))
        .collect();
    let over: usize = made.iter().map(|m| m.saturating_sub(replicas)).sum();
    let several = by_deployment.iter().filter(|(d, s)| !d.is_empty() && s.len() > 1).count();
    println!(
        "accounting: {} distinct pods seen for {} asked: {bare} bare ({} asked), {} from {} ReplicaSets of {} \
         Deployments ({} asked; {several} Deployments with more than one ReplicaSet)",
        pods.len(),
        args.pods,
        args.pods - args.deployments * replicas,
        made.iter().sum::<usize>(),
        sets.items.len(),
        by_deployment.keys().filter(|d| !d.is_empty()).count(),
        args.deployments * replicas,
    );
    println!(
        "  pods made per ReplicaSet: min {}, max {} (replicas {replicas}); {over} beyond the replicas in all",
        made.iter().min().copied().unwrap_or(0),
        made.iter().max().copied().unwrap_or(0),
    );
    let mut causes: Vec<_> = deletions.iter().collect();
    causes.sort();
    let causes: Vec<String> = causes.iter().map(|(c, n)| format!("{c}: {n}")).collect();
    println!(
        "  pods deleted during the run: {} ({})",
        deletions.values().sum::<usize>(),
        if causes.is_empty() { "none".to_string() } else { causes.join("; ") }
    );
    println!(
        "  simulated nodes: {} Ready -> not Ready transitions on {} nodes, {} back to Ready, {} NoExecute taints \
         added, at most {} not Ready at once ({} not Ready at the end)",
        nodes.went_not_ready,
        nodes.nodes_ever_not_ready.len(),
        nodes.came_back,
        nodes.tainted_no_execute,
        nodes.most_not_ready,
        nodes.not_ready,
    );
    Ok(())
}
