//! `atoll agent`'s sync loop against a real API server in this process (embedded store in
//! a temporary folder, 127.0.0.1:0) and real crun containers from the busybox image.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::daemon::{self, AgentConfig, NetworkConfig};
use agent::pods::RestartBackoff;
use agent::runtime::Runtime;
use anyhow::{Context, Result, bail};
use client::{Client, DeleteParams, ListParams, Resource, Scope};
use serde_json::{Value, json};

use crate::Node;

struct Cluster {
    client: Client,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

async fn cluster() -> Result<Cluster> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn store::Store> = Arc::new(store::embedded::EmbeddedStore::open(&dir.path().join("store"))?);
    let server = apiserver::http::Server::bind(store, dir.path(), "127.0.0.1:0".parse()?).await?;
    let client = Client::from_kubeconfig(&server.kubeconfig)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    Ok(Cluster { client, _stop: stop, _dir: dir })
}

struct Agent {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), daemon::AgentError>>,
}

impl Agent {
    async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        self.task.await?.context("agent failed")
    }
}

fn config(node: &Node, name: &str, stop_pods_on_exit: bool) -> AgentConfig {
    let mut c = AgentConfig::new(name, node.dir.path().to_owned(), vec![env!("CARGO_BIN_EXE_agent-shim").into()]);
    c.runtime = crate::runtime_name().into();
    c.cgroup_parent = node.cgroup_parent.clone();
    c.stop_pods_on_exit = stop_pods_on_exit;
    c.backoff = RestartBackoff { base: Duration::from_millis(300), max: Duration::from_secs(2) };
    let (bridge, cidr) = test_network();
    c.network = NetworkConfig::Bridge { name: bridge, cidr };
    c
}

/// A bridge and pod CIDR of this test process's own (tests run in parallel processes).
fn test_network() -> (String, String) {
    let pid = std::process::id();
    (format!("atb{pid}"), format!("10.{}.{}.0/24", 100 + (pid >> 8) % 100, pid % 256))
}

/// Removes the test's bridge and NAT table even when the test fails.
struct NetGuard;

impl Drop for NetGuard {
    fn drop(&mut self) {
        let _ = remove_test_network();
    }
}

/// Removes what the agent leaves on the host by design (bridge, NAT table).
fn remove_test_network() -> Result<()> {
    let (bridge, _) = test_network();
    let _ = std::process::Command::new("ip").args(["link", "del", "dev", &bridge]).status();
    let _ = std::process::Command::new("nft").args(["delete", "table", "ip", &format!("atoll-{bridge}")]).status();
    Ok(())
}

fn start_agent(client: &Client, config: AgentConfig) -> Agent {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(daemon::run(client.clone(), config, async move {
        let _ = stopped.await;
    }));
    Agent { stop, task }
}

fn pods() -> Resource {
    Resource::new("", "v1", "pods", true)
}

fn default_ns() -> Scope {
    Scope::own().in_namespace("default")
}

fn pod(name: &str, node: &str, policy: &str, script: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"nodeName": node, "restartPolicy": policy, "terminationGracePeriodSeconds": 5,
                    "containers": [{"name": "main", "image": "busybox", "imagePullPolicy": "Never",
                                    "command": ["sh", "-c", script]}]}})
}

/// Polls `f` until it returns `Some` (or fails after `within`).
async fn until<T, F: Future<Output = Result<Option<T>>>>(within: Duration, what: &str, f: impl Fn() -> F) -> Result<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn pod_where(c: &Client, name: &str, what: &str, test: impl Fn(&Value) -> bool) -> Result<Value> {
    let last = std::sync::Mutex::new(Value::Null);
    let found = until(Duration::from_secs(30), what, || async {
        let p = c.get(&pods(), &default_ns(), name).await?;
        let ok = test(&p);
        *last.lock().unwrap() = p.clone();
        Ok(ok.then_some(p))
    })
    .await;
    found.with_context(|| format!("pod {name} last seen as {}", last.lock().unwrap()))
}

fn phase(p: &Value) -> &str {
    p.pointer("/status/phase").and_then(Value::as_str).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_the_node_and_a_failing_pod_ends_failed_with_its_exit_code() -> Result<()> {
    let _net = NetGuard;
    let node = Node::setup();
    node.busybox();
    let cl = cluster().await?;
    let c = &cl.client;
    let agent = start_agent(c, config(&node, "n1", false));

    let system = Scope::tenant("system");
    let n = until(Duration::from_secs(10), "the Node", || async {
        match c.get(&Resource::new("", "v1", "nodes", false), &system, "n1").await {
            Ok(n) if n.pointer("/status/conditions").is_some() => Ok(Some(n)),
            Ok(_) => Ok(None),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    })
    .await?;
    let ready = n["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").cloned();
    assert_eq!(ready.as_ref().map(|r| r["status"].clone()), Some(json!("True")), "{n}");
    assert_eq!(n["status"]["allocatable"]["pods"], "110");
    assert!(n["status"]["capacity"]["cpu"].as_str().unwrap().parse::<u32>().unwrap() >= 1, "{n}");
    assert!(n["status"]["capacity"]["memory"].as_str().unwrap().ends_with("Ki"), "{n}");
    assert!(n["status"]["nodeInfo"]["kubeletVersion"].as_str().unwrap().starts_with("atoll-"), "{n}");
    assert!(n["status"]["nodeInfo"]["containerRuntimeVersion"].as_str().unwrap().contains("://"), "{n}");
    let leases = Resource::new("coordination.k8s.io", "v1", "leases", true);
    let lease_scope = system.clone().in_namespace("kube-node-lease");
    let lease = until(Duration::from_secs(10), "the node Lease", || async {
        match c.get(&leases, &lease_scope, "n1").await {
            Ok(l) => Ok(Some(l)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    })
    .await?;
    assert_eq!(lease["spec"]["holderIdentity"], "n1");

    c.create(&pods(), &default_ns(), &pod("echo", "n1", "Never", "echo hi; exit 3")).await?;
    let p = pod_where(c, "echo", "phase Failed", |p| phase(p) == "Failed").await?;
    // A finished pod's address goes back to the pool (its containers stay for their logs).
    let uid = p["metadata"]["uid"].as_str().unwrap().to_string();
    until(Duration::from_secs(10), "the finished pod's network to go", || async {
        Ok((!std::path::Path::new(&format!("/run/netns/atoll-{uid}")).exists()).then_some(()))
    })
    .await?;
    let cs = &p["status"]["containerStatuses"][0];
    assert_eq!(cs["state"]["terminated"]["exitCode"], 3, "{p}");
    assert_eq!(cs["state"]["terminated"]["reason"], "Error", "{p}");
    assert_eq!(cs["restartCount"], 0);
    assert_eq!(cs["ready"], false);
    assert!(cs["containerID"].as_str().unwrap().contains("://"), "{p}");
    assert!(p["status"]["startTime"].is_string() && p["status"]["hostIP"].is_string(), "{p}");
    let conds: Vec<(String, String)> = p["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["type"].as_str().unwrap().to_string(), c["status"].as_str().unwrap().to_string()))
        .collect();
    for want in [("PodScheduled", "True"), ("Initialized", "True"), ("ContainersReady", "False"), ("Ready", "False")] {
        assert!(conds.contains(&(want.0.into(), want.1.into())), "{conds:?}");
    }

    // A missing image with pull policy Never waits with ErrImageNeverPull and an Event.
    let mut missing = pod("missing", "n1", "Never", "true");
    missing["spec"]["containers"][0]["image"] = json!("nosuch:1.0");
    c.create(&pods(), &default_ns(), &missing).await?;
    let p = pod_where(c, "missing", "ErrImageNeverPull", |p| {
        p.pointer("/status/containerStatuses/0/state/waiting/reason") == Some(&json!("ErrImageNeverPull"))
    })
    .await?;
    assert_eq!(phase(&p), "Pending");
    let events = c.list(&Resource::new("", "v1", "events", true), &default_ns(), &ListParams::default()).await?;
    assert!(
        events.items.iter().any(|e| e["reason"] == "ErrImageNeverPull" && e["involvedObject"]["name"] == "missing"),
        "{:?}",
        events.items
    );
    agent.stop().await?;
    cleanup(&node)
}

/// Removes what the agent left (it leaves containers running when told to).
fn cleanup(node: &Node) -> Result<()> {
    let rt = node.runtime();
    for s in rt.list_sandboxes()? {
        rt.remove_sandbox(&s.spec.id)?;
        let _ = std::process::Command::new("ip").args(["netns", "del", &format!("atoll-{}", s.spec.id)]).status();
    }
    // The agent kept its tmpfs for the containers it left running; they are gone now.
    let runtime = node.dir.path().join("runtime");
    if agent::os::Os::mounts_under(&*node.os, &runtime)? == [runtime.clone()] {
        agent::os::Os::unmount(&*node.os, &runtime)?;
    }
    assert_eq!(node.leftovers(), Vec::<std::path::PathBuf>::new());
    remove_test_network()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_pod_is_stopped_within_its_grace_period_and_deleted() -> Result<()> {
    let _net = NetGuard;
    let node = Node::setup();
    node.busybox();
    let cl = cluster().await?;
    let c = &cl.client;
    let agent = start_agent(c, config(&node, "n1", false));
    c.create(&pods(), &default_ns(), &pod("sleeper", "n1", "Always", "trap 'exit 0' TERM; sleep 1000 & wait")).await?;
    let p = pod_where(c, "sleeper", "Running and ready", |p| {
        phase(p) == "Running" && p.pointer("/status/containerStatuses/0/ready") == Some(&json!(true))
    })
    .await?;
    assert!(p.pointer("/status/containerStatuses/0/state/running/startedAt").is_some(), "{p}");
    let ready =
        p["status"]["conditions"].as_array().unwrap().iter().any(|c| c["type"] == "Ready" && c["status"] == "True");
    assert!(ready, "{p}");

    // Pod networking: an address from the node's CIDR, reachable from the host and from
    // another pod through the bridge; loopback up inside.
    let (_, cidr) = test_network();
    let mut web = pod(
        "web",
        "n1",
        "Always",
        "mkdir -p /www; echo hi-from-web > /www/index.html; exec busybox httpd -f -p 8080 -h /www",
    );
    web["spec"]["terminationGracePeriodSeconds"] = json!(1);
    web["spec"]["containers"][0]["resources"] = json!({"limits": {"memory": "64Mi", "cpu": "500m"}});
    c.create(&pods(), &default_ns(), &web).await?;
    let w = pod_where(c, "web", "web Running", |p| phase(p) == "Running").await?;
    let ip = w["status"]["podIP"].as_str().context("no podIP")?.to_string();
    let prefix = cidr.rsplit_once('.').unwrap().0;
    assert!(ip.starts_with(&format!("{prefix}.")), "{ip} not in {cidr}");
    assert_ne!(Some(ip.as_str()), p["status"]["podIP"].as_str(), "two pods, one address");
    let body = until(Duration::from_secs(10), "the web pod to answer", || async {
        let out = tokio::process::Command::new("curl")
            .args(["-s", "-m", "2", &format!("http://{ip}:8080/")])
            .output()
            .await?;
        Ok(out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
    })
    .await?;
    assert_eq!(body.trim(), "hi-from-web");
    // Its limits are its cgroup's (v1 memory hierarchy on these machines, else cgroup2).
    let cid = w["status"]["containerStatuses"][0]["containerID"].as_str().unwrap().split("://").nth(1).unwrap();
    let group = format!("{}/pod-{}/{cid}", node.cgroup_parent, w["metadata"]["uid"].as_str().unwrap());
    let v1 = std::fs::read_to_string(format!("/sys/fs/cgroup/memory/{group}/memory.limit_in_bytes"));
    let limit = match v1 {
        Ok(v) => v,
        Err(_) => std::fs::read_to_string(format!("/sys/fs/cgroup/{group}/memory.max"))?,
    };
    assert_eq!(limit.trim(), (64u64 << 20).to_string());
    // Outbound traffic leaving the pod CIDR is masqueraded by our nftables table.
    let (bridge, _) = test_network();
    let table = std::process::Command::new("nft").args(["list", "table", "ip", &format!("atoll-{bridge}")]).output()?;
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("masquerade") && table.contains(&cidr), "{table}");
    assert_eq!(std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")?.trim(), "1");
    let probe = format!(
        "busybox ip -o link show lo | grep -q UP && busybox ip -o -4 addr show eth0 | grep -q inet && \
         wget -q -O- http://{ip}:8080/ | grep -q hi-from-web"
    );
    // command + args, env and workingDir reach the process too.
    let probe = format!("[ \"$GREETING\" = hello ] && [ \"$(pwd)\" = /etc ] && {probe}");
    let mut probe_pod = pod("probe", "n1", "Never", "unused");
    probe_pod["spec"]["containers"][0]["command"] = json!(["sh", "-c"]);
    probe_pod["spec"]["containers"][0]["args"] = json!([probe]);
    probe_pod["spec"]["containers"][0]["env"] = json!([{"name": "GREETING", "value": "hello"}]);
    probe_pod["spec"]["containers"][0]["workingDir"] = json!("/etc");
    c.create(&pods(), &default_ns(), &probe_pod).await?;
    let pr = pod_where(c, "probe", "probe finished", |p| matches!(phase(p), "Succeeded" | "Failed")).await?;
    assert_eq!(phase(&pr), "Succeeded", "{pr}");
    for name in ["web", "probe"] {
        c.delete(&pods(), &default_ns(), name, &DeleteParams::default()).await?;
    }

    let t = Instant::now();
    c.delete(&pods(), &default_ns(), "sleeper", &DeleteParams::default()).await?;
    until(Duration::from_secs(10), "the pod object to go", || async {
        match c.get(&pods(), &default_ns(), "sleeper").await {
            Err(e) if e.is_not_found() => Ok(Some(())),
            Ok(_) => Ok(None),
            Err(e) => Err(e.into()),
        }
    })
    .await?;
    // It exits on SIGTERM, so well within its 5 s grace period.
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
    until(Duration::from_secs(10), "web and probe to go", || async {
        Ok(node.runtime().list_sandboxes()?.is_empty().then_some(()))
    })
    .await?;
    assert_eq!(node.leftovers_beside_the_agent(), Vec::<std::path::PathBuf>::new());
    for gone in [&w, &pr] {
        let uid = gone["metadata"]["uid"].as_str().unwrap();
        assert!(!std::path::Path::new(&format!("/run/netns/atoll-{uid}")).exists(), "netns of {uid} left");
    }
    // Every pod's address is released; what is left is the pool's, made ahead for pods to come.
    // (The book lives on the runtime's tmpfs; an empty one is no file.)
    let book = node.dir.path().join("runtime/network/ipam.json");
    let ipam: std::collections::BTreeMap<String, String> = match std::fs::read(&book) {
        Ok(bytes) => serde_json::from_slice(&bytes)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
        Err(e) => return Err(e.into()),
    };
    assert!(ipam.keys().all(|k| k.starts_with("pool-")), "addresses are released: {ipam:?}");

    // One that ignores SIGTERM is killed once the grace period (2 s) ends.
    let mut stubborn = pod("stubborn", "n1", "Always", "exec sleep 1000");
    stubborn["spec"]["terminationGracePeriodSeconds"] = json!(2);
    c.create(&pods(), &default_ns(), &stubborn).await?;
    pod_where(c, "stubborn", "Running", |p| phase(p) == "Running").await?;
    let t = Instant::now();
    c.delete(&pods(), &default_ns(), "stubborn", &DeleteParams::default()).await?;
    until(Duration::from_secs(15), "the stubborn pod to go", || async {
        Ok(c.get(&pods(), &default_ns(), "stubborn").await.err().filter(|e| e.is_not_found()).map(|_| ()))
    })
    .await?;
    assert!(t.elapsed() >= Duration::from_secs(2) && t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    agent.stop().await?;
    cleanup(&node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_policy_always_restarts_with_a_growing_count() -> Result<()> {
    let _net = NetGuard;
    let node = Node::setup();
    node.busybox();
    let cl = cluster().await?;
    let c = &cl.client;
    let agent = start_agent(c, config(&node, "n1", false));
    c.create(&pods(), &default_ns(), &pod("crash", "n1", "Always", "echo crashing; exit 1")).await?;
    let p = pod_where(c, "crash", "restartCount 3", |p| {
        p.pointer("/status/containerStatuses/0/restartCount").and_then(Value::as_u64).unwrap_or(0) >= 3
    })
    .await?;
    assert_eq!(phase(&p), "Running", "{p}");
    assert_eq!(p["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"], 1, "{p}");
    // Between attempts it waits in CrashLoopBackOff.
    pod_where(c, "crash", "CrashLoopBackOff", |p| {
        p.pointer("/status/containerStatuses/0/state/waiting/reason") == Some(&json!("CrashLoopBackOff"))
    })
    .await?;
    // Only the current and the previous attempt are kept.
    assert!(node.runtime().list_containers(None)?.len() <= 2);

    // OnFailure: a success ends it.
    c.create(&pods(), &default_ns(), &pod("once", "n1", "OnFailure", "exit 0")).await?;
    let p = pod_where(c, "once", "Succeeded", |p| phase(p) == "Succeeded").await?;
    assert_eq!(p["status"]["containerStatuses"][0]["restartCount"], 0);
    agent.stop().await?;
    cleanup(&node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_keeps_containers_and_a_stopping_agent_stops_them() -> Result<()> {
    let _net = NetGuard;
    let node = Node::setup();
    node.busybox();
    let cl = cluster().await?;
    let c = &cl.client;
    let agent = start_agent(c, config(&node, "n1", false));
    c.create(&pods(), &default_ns(), &pod("keep", "n1", "Always", "sleep 1000")).await?;
    let p = pod_where(c, "keep", "Running", |p| phase(p) == "Running").await?;
    let id = p["status"]["containerStatuses"][0]["containerID"].clone();
    agent.stop().await?;

    // A new agent over the same folder adopts the running container.
    let agent = start_agent(c, config(&node, "n1", true));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let containers = node.runtime().list_containers(None)?;
    assert_eq!(containers.len(), 1, "{containers:?}");
    let p = c.get(&pods(), &default_ns(), "keep").await?;
    assert_eq!(p["status"]["containerStatuses"][0]["containerID"], id, "{p}");
    assert_eq!(p["status"]["containerStatuses"][0]["restartCount"], 0, "{p}");

    // A pod deleted while no agent runs is swept when one starts.
    // (Here: stop_pods_on_exit stops everything, then a restarted agent makes it again.)
    agent.stop().await?;
    assert!(node.runtime().list_sandboxes()?.is_empty());
    assert_eq!(node.leftovers(), Vec::<std::path::PathBuf>::new());
    let agent = start_agent(c, config(&node, "n1", false));
    pod_where(c, "keep", "running again", |p| {
        phase(p) == "Running" && p["status"]["containerStatuses"][0]["containerID"] != id
    })
    .await?;
    agent.stop().await?;
    c.delete(&pods(), &default_ns(), "keep", &DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
        .await?;
    let agent = start_agent(c, config(&node, "n1", false));
    until(Duration::from_secs(10), "the orphan sandbox to be swept", || async {
        Ok(node.runtime().list_sandboxes()?.is_empty().then_some(()))
    })
    .await?;
    agent.stop().await?;
    cleanup(&node)
}
