//! Simulated ("hollow") nodes for scale tests and benchmarks: N Nodes served by one task
//! over two client connections (heartbeats; pods), running nothing.
//!
//! Each node registers a Node labelled `atoll.io/simulated=true` with the role
//! `node-role.kubernetes.io/simulated` (kubectl's ROLES column says `simulated`), a
//! `simulated://` runtime version and addresses from reserved ranges, and renews its Lease
//! like a real agent: the renewals of all nodes are spread over the interval and sent in
//! small batches from one timer, each a merge patch (one request, no read). It carries no
//! taint, so the scheduler treats it like any node (that is what a scale test measures);
//! the label and role are how people and selectors tell it apart.
//!
//! Pods: one watch of every bound pod (all tenants, `spec.nodeName!=`), filtered here by
//! node name, so N nodes cost one watch, not N. A pod bound to one of ours that is not yet
//! reported gets a Running status (podIP from 100.64.0.0/10, every container running and
//! ready, the usual conditions) as a merge patch of `pods/status` (the status alone, as the
//! kubelet sends it); a pod being deleted is deleted at once with grace 0 (there is nothing
//! to stop), as a real agent does after stopping it. Writes carry the watched object's
//! resourceVersion, so a conflict means a newer version is on its way and is simply
//! dropped: the next event is handled the same way (level-triggered).
//!
//! Heartbeats never wait behind anything: each node's lease renewal (and status write) is
//! its own task started by a wall-clock timer, one in flight per node, as each kubelet
//! renews its own lease. Under load a shared pool of calls let pod writes, and then the
//! other nodes' slow renewals, queue ahead of a renewal; leases lapsed past the grace
//! period and nodes went Unknown, and after the NoExecute taint's 300 s their pods were
//! evicted and replaced (BENCHMARKS.md "Scale"). Pod writes have their own workers. Watched
//! pods wait in a queue keyed by pod, each key holding only its latest state, so a burst of
//! events for one pod costs one write and the watch is read as fast as it arrives.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use client::{Client, DeleteParams, Patch, Resource, Scope, Tenant};
use controllers::{ApiSource, Event, Watcher};
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore};

use crate::node::{self, LEASE_DURATION_SECONDS, LEASE_NAMESPACE, leases, micro_time, nodes, seconds_time};

pub const SIMULATED_LABEL: &str = "atoll.io/simulated";
pub const ROLE_LABEL: &str = "node-role.kubernetes.io/simulated";
/// Registrations in flight at once.
const IN_FLIGHT: usize = 64;
/// Pod writes (status reports, deletions) in flight at once: one task each.
const POD_WORKERS: usize = 64;
/// How often the renewal timer wakes; each wake renews the nodes whose slot has come.
const TICK: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("registering simulated node {node}: {source}")]
    Register { node: String, source: client::Error },
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub count: usize,
    /// Nodes are `<prefix>-<i>`.
    pub name_prefix: String,
    /// How often each node renews its Lease.
    pub lease_renew: Duration,
    /// How often each node rewrites its status (fresh heartbeat, Ready=True), like the
    /// kubelet's status report; the Lease is the liveness signal in between.
    pub status_every: Duration,
    pub cpu: String,
    pub memory: String,
    pub max_pods: u32,
}

impl SimConfig {
    pub fn new(count: usize, name_prefix: &str) -> SimConfig {
        SimConfig {
            count,
            name_prefix: name_prefix.into(),
            lease_renew: node::LEASE_RENEW,
            status_every: Duration::from_secs(60),
            cpu: "32".into(),
            memory: "128Gi".into(),
            max_pods: node::MAX_PODS,
        }
    }

    pub fn name(&self, i: usize) -> String {
        format!("{}-{i}", self.name_prefix)
    }
}

/// Node `i`'s InternalIP: 198.18.0.0/15 (benchmarking range), so it is never routable.
fn host_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 1)).wrapping_add(i as u32))
}

/// What every task shares: the names of our nodes and the pod address counter.
struct Fleet {
    /// Pod writes and the pod watch.
    client: Client,
    /// Registration, leases and node status, on a connection of their own: on a shared one
    /// thousands of renewals waiting for the server's stream limit queued the pod writes
    /// behind them (and the reverse), as separate kubelets' connections never do.
    heartbeat: Client,
    config: SimConfig,
    index: HashMap<String, usize>,
    next_ip: AtomicU32,
    permits: Arc<Semaphore>,
    since: SystemTime,
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// The Node's status: capacity from the config, Ready with a fresh heartbeat.
pub fn node_status(config: &SimConfig, i: usize, now: SystemTime, since: SystemTime) -> Value {
    let resources = json!({"cpu": config.cpu, "memory": config.memory, "pods": config.max_pods.to_string()});
    let condition = |type_: &str, status: &str, reason: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": "simulated node",
               "lastHeartbeatTime": seconds_time(now), "lastTransitionTime": seconds_time(since)})
    };
    json!({
        "capacity": resources,
        "allocatable": resources,
        "addresses": [{"type": "InternalIP", "address": host_ip(i).to_string()},
                      {"type": "Hostname", "address": config.name(i)}],
        "nodeInfo": {"machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "", "osImage": "simulated",
                     "containerRuntimeVersion": "simulated://0", "kubeletVersion": format!("atoll-{}", env!("CARGO_PKG_VERSION")),
                     "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"},
        "conditions": [
            condition("MemoryPressure", "False", "AgentHasSufficientMemory"),
            condition("DiskPressure", "False", "AgentHasNoDiskPressure"),
            condition("PIDPressure", "False", "AgentHasSufficientPID"),
            condition("Ready", "True", "AgentReady"),
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
    })
}

/// The status a simulated node reports for a pod, or `None` when the pod's status already
/// says it runs here ready.
pub fn running_status(pod: &Value, host_ip: &str, pod_ip: impl FnOnce() -> String, now: SystemTime) -> Option<Value> {
    let status = pod.get("status");
    if reported(pod, host_ip) {
        return None;
    }
    let now_s = seconds_time(now);
    let start = Some(text(pod, "/status/startTime")).filter(|s| !s.is_empty()).map_or(now_s.clone(), str::to_string);
    let ip = Some(text(pod, "/status/podIP")).filter(|s| !s.is_empty()).map_or_else(pod_ip, str::to_string);
    let uid = text(pod, "/metadata/uid");
    let containers: Vec<Value> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    let name = text(c, "/name");
                    json!({"name": name, "image": text(c, "/image"), "imageID": "",
                           "containerID": format!("simulated://{uid}-{name}"), "ready": true, "started": true,
                           "restartCount": 0, "state": {"running": {"startedAt": start}}})
                })
                .collect()
        })
        .unwrap_or_default();
    let mut conditions = vec![];
    for type_ in ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady"] {
        conditions.push(json!({"type": type_, "status": "True", "lastProbeTime": null, "lastTransitionTime": now_s}));
    }
    // PodScheduled is the binding's; keep it as written.
    let scheduled = status
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| text(c, "/type") == "PodScheduled").cloned())
        .unwrap_or_else(|| json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": now_s}));
    conditions.push(scheduled);
    Some(json!({
        "phase": "Running",
        "conditions": conditions,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": start,
        "containerStatuses": containers,
        "qosClass": Some(text(pod, "/status/qosClass")).filter(|q| !q.is_empty()).unwrap_or("BestEffort"),
    }))
}

impl Fleet {
    fn pod_ip(&self) -> String {
        let n = self.next_ip.fetch_add(1, Ordering::Relaxed);
        // 100.64.0.0/10 (shared address space): 4 M addresses before wrapping.
        Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 1)).wrapping_add(n % (1 << 22))).to_string()
    }

    async fn register(&self, i: usize) -> Result<(), client::Error> {
        let name = self.config.name(i);
        let scope = Scope::tenant("system");
        let obj = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
            SIMULATED_LABEL: "true", ROLE_LABEL: "",
        }}});
        match self.heartbeat.create(&nodes(), &scope, &obj).await {
            Ok(_) => {}
            // Registered by an earlier run: its status and lease are rewritten below.
            Err(e) if e.is_already_exists() => {}
            Err(e) => return Err(e),
        }
        self.write_status(i).await?;
        self.renew(i).await
    }

    /// Rewrites node `i`'s status with a merge patch of `nodes/status` (one request, no read;
    /// the status is wholly ours, and the server re-applies the patch if the node changed).
    async fn write_status(&self, i: usize) -> Result<(), client::Error> {
        let name = self.config.name(i);
        let patch = json!({"status": node_status(&self.config, i, SystemTime::now(), self.since)});
        self.heartbeat
            .patch_subresource(&nodes(), &Scope::tenant("system"), &name, "status", &Patch::Merge(patch))
            .await?;
        Ok(())
    }

    async fn renew(&self, i: usize) -> Result<(), client::Error> {
        let name = self.config.name(i);
        let scope = Scope::tenant("system").in_namespace(LEASE_NAMESPACE);
        let now = micro_time(SystemTime::now());
        let patch = json!({"spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                                    "renewTime": now}});
        match self.heartbeat.patch(&leases(), &scope, &name, &Patch::Merge(patch)).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => {
                let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                   "metadata": {"name": name, "namespace": LEASE_NAMESPACE},
                                   "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                                            "acquireTime": now, "renewTime": now}});
                match self.heartbeat.create(&leases(), &scope, &lease).await {
                    Ok(_) => Ok(()),
                    Err(e) if e.is_already_exists() => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Renews node `i`'s Lease, retrying a failure after 0.2, 0.4, ... 3.2 s (the kubelet's
    /// lease controller retries too, rather than waiting a whole interval).
    async fn renew_with_retries(&self, i: usize) {
        let mut wait = Duration::from_millis(200);
        for attempt in 0..5 {
            match self.renew(i).await {
                Ok(()) => return,
                Err(e) if attempt == 4 => {
                    tracing::warn!(node = %self.config.name(i), error = %e, "renewing a simulated node's lease");
                }
                Err(_) => {
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
        }
    }

    /// Brings one watched pod to what a node would report; `None` when it is not ours.
    async fn sync_pod(&self, pod: &Value) {
        let Some(&i) = self.index.get(text(pod, "/spec/nodeName")) else { return };
        let (name, ns, tenant) =
            (text(pod, "/metadata/name"), text(pod, "/metadata/namespace"), text(pod, "/metadata/tenant"));
        let scope = Scope { tenant: Tenant::Named(tenant.to_string()), namespace: Some(ns.to_string()) };
        if pod.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null()) {
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                precondition_uid: Some(text(pod, "/metadata/uid").to_string()),
                ..DeleteParams::default()
            };
            match self.client.delete(&Resource::pods(), &scope, name, &params).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() || e.is_conflict() => {}
                Err(e) => tracing::warn!(pod = name, namespace = ns, error = %e, "deleting a simulated pod"),
            }
            return;
        }
        if matches!(text(pod, "/status/phase"), "Succeeded" | "Failed") {
            return;
        }
        let Some(status) = running_status(pod, &host_ip(i).to_string(), || self.pod_ip(), SystemTime::now()) else {
            return;
        };
        // The status alone, pinned to the version watched: a conflict means a newer one is
        // on its way. A merge patch replaces the lists it names (conditions, containers) whole.
        let patch = json!({"metadata": {"resourceVersion": text(pod, "/metadata/resourceVersion")}, "status": status});
        // Nothing of the answer is read: it is skipped, not built.
        let nothing = client::Keep::shape(client::Shape::only(&[]));
        let at = (&Resource::pods(), &scope, name, "status");
        match self.client.patch_subresource_keeping(at, &Patch::Merge(patch), &nothing).await {
            Ok(_) => {}
            // A newer version is on its way through the watch, or the pod went.
            Err(e) if e.is_conflict() || e.is_not_found() => {}
            Err(e) => tracing::warn!(pod = name, namespace = ns, error = %e, "reporting a simulated pod"),
        }
    }
}

/// Runs `config.count` simulated nodes until `shutdown` resolves.
pub async fn run(client: Client, config: SimConfig, shutdown: impl Future<Output = ()>) -> Result<(), SimError> {
    let index = (0..config.count).map(|i| (config.name(i), i)).collect();
    let fleet = Arc::new(Fleet {
        heartbeat: Client::new(client.config().clone()).unwrap_or_else(|_| client.clone()),
        client: client.clone(),
        config,
        index,
        next_ip: AtomicU32::new(0),
        permits: Arc::new(Semaphore::new(IN_FLIGHT)),
        since: SystemTime::now(),
    });
    tokio::pin!(shutdown);

    // Registration, IN_FLIGHT at a time; the first failure stops it (the API is unusable).
    let started = std::time::Instant::now();
    let mut pending = tokio::task::JoinSet::new();
    for i in 0..fleet.config.count {
        let f = fleet.clone();
        let permit = tokio::select! {
            p = f.permits.clone().acquire_owned() => p,
            _ = &mut shutdown => return Ok(()),
        };
        pending.spawn(async move {
            let result = f.register(i).await;
            drop(permit);
            result.map_err(|source| SimError::Register { node: f.config.name(i), source })
        });
        while let Some(done) = pending.try_join_next() {
            done.unwrap_or(Ok(()))?;
        }
    }
    while let Some(done) = pending.join_next().await {
        done.unwrap_or(Ok(()))?;
    }
    tracing::info!(nodes = fleet.config.count, elapsed = ?started.elapsed(), "simulated nodes registered");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let heartbeats = tokio::spawn(heartbeats(fleet.clone(), stop_rx.clone()));
    let pods = tokio::spawn(pod_loop(fleet.clone(), stop_rx));
    shutdown.await;
    let _ = stop_tx.send(true);
    let _ = heartbeats.await;
    let _ = pods.await;
    Ok(())
}

/// Which nodes are due at timer step `k`: node `i` renews its Lease at steps `i mod lease_slots`
/// of each round and writes its status at steps `i mod status_slots`.
fn due_at(k: u64, count: usize, lease_slots: usize, status_slots: usize) -> impl Iterator<Item = (usize, bool, bool)> {
    let (lease_slot, status_slot) = ((k % lease_slots as u64) as usize, (k % status_slots as u64) as usize);
    (0..count).filter_map(move |i| {
        let (lease, status) = (i % lease_slots == lease_slot, i % status_slots == status_slot);
        (lease || status).then_some((i, lease, status))
    })
}

/// Renews every node's Lease once per `lease_renew` and rewrites its status once per
/// `status_every`, each node at its own slot of the interval so the load is even.
///
/// Each node's heartbeat is its own task, as each kubelet's lease renewal is its own loop:
/// the timer never waits for an answer, so a slow API server delays a renewal by its own
/// latency, not by the queue of every other node's (with a shared pool of 64 calls in
/// flight, a renewal latency over ~0.5 s stretched the 10 s round for 5,000 nodes past the
/// 40 s grace period and nodes went Unknown in a loaded scale run: BENCHMARKS.md "Scale").
/// Steps are counted from the wall clock, so a timer that was late makes up the steps it
/// missed. A node whose previous heartbeat is still in flight skips its turn (one call per
/// node at a time, like a kubelet).
async fn heartbeats(fleet: Arc<Fleet>, stop: tokio::sync::watch::Receiver<bool>) {
    let slots = |every: Duration| (every.as_millis() / TICK.as_millis()).max(1) as usize;
    let (lease_slots, status_slots) = (slots(fleet.config.lease_renew), slots(fleet.config.status_every));
    let count = fleet.config.count;
    heartbeat_loop(count, lease_slots, status_slots, stop, move |i, lease, status| {
        let f = fleet.clone();
        async move {
            if lease {
                f.renew_with_retries(i).await;
            }
            if status && let Err(e) = f.write_status(i).await {
                tracing::warn!(node = %f.config.name(i), error = %e, "writing a simulated node's status");
            }
        }
    })
    .await
}

/// The timer of [`heartbeats`], with the calls (`beat(node, lease, status)`) given, so its
/// timing can be tested on a paused clock.
async fn heartbeat_loop<F, Fut>(
    count: usize,
    lease_slots: usize,
    status_slots: usize,
    mut stop: tokio::sync::watch::Receiver<bool>,
    beat: F,
) where
    F: Fn(usize, bool, bool) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let busy: Arc<Vec<AtomicBool>> = Arc::new((0..count).map(|_| AtomicBool::new(false)).collect());
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut done: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = (started.elapsed().as_millis() / TICK.as_millis()) as u64;
        while done < now {
            done += 1;
            for (i, lease, status) in due_at(done, count, lease_slots, status_slots) {
                if busy[i].swap(true, Ordering::AcqRel) {
                    continue;
                }
                let (call, busy) = (beat(i, lease, status), busy.clone());
                tokio::spawn(async move {
                    call.await;
                    busy[i].store(false, Ordering::Release);
                });
            }
        }
    }
}

/// Pods waiting for a write, by (tenant, namespace, name), each with its latest watched state.
#[derive(Default)]
struct PodQueue {
    latest: HashMap<(String, String, String), Value>,
    order: VecDeque<(String, String, String)>,
}

impl PodQueue {
    /// Queues `pod`, or replaces the state of its queued key (one write covers both events).
    fn push(&mut self, pod: Value) {
        let key = (
            text(&pod, "/metadata/tenant").to_string(),
            text(&pod, "/metadata/namespace").to_string(),
            text(&pod, "/metadata/name").to_string(),
        );
        if self.latest.insert(key.clone(), pod).is_none() {
            self.order.push_back(key);
        }
    }

    fn pop(&mut self) -> Option<Value> {
        let key = self.order.pop_front()?;
        self.latest.remove(&key)
    }
}

/// Whether a watched pod of ours needs a write: being deleted, or not yet reported running
/// ready here (cheap: no status is built for the pods that are, such as our own writes' echoes).
fn needs_write(pod: &Value, host_ip: &str) -> bool {
    if pod.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null()) {
        return true;
    }
    !matches!(text(pod, "/status/phase"), "Succeeded" | "Failed") && !reported(pod, host_ip)
}

/// Whether the pod's status already says it runs on `host_ip`, ready.
fn reported(pod: &Value, host_ip: &str) -> bool {
    let ready = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| text(c, "/type") == "Ready" && text(c, "/status") == "True"));
    text(pod, "/status/phase") == "Running" && ready && text(pod, "/status/hostIP") == host_ip
}

/// What a simulated node reads of a pod ([`running_status`], [`needs_write`], `sync_pod`):
/// its metadata but the managed fields, its node and containers' names and images, its
/// status. The rest (the containers' commands, environment, volumes) is skipped by the
/// decoder, never built: at 150,000 pods the pods waiting for their report held ~2 GiB whole.
pub fn keep_pods() -> client::Keep {
    let containers = client::Shape::only(&["name", "image"]);
    client::Keep::shape(
        client::Shape::all()
            .with("metadata", client::Shape::without(&["managedFields"]))
            .with("spec", client::Shape::only(&["nodeName"]).with("containers", containers))
            .with("status", client::Shape::all()),
    )
}

/// One watch of every bound pod; ours are reported running or finished when deleted, by
/// `POD_WORKERS` tasks taking pods from a queue the watch fills.
async fn pod_loop(fleet: Arc<Fleet>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let source = ApiSource::new(fleet.client.clone(), Resource::pods(), Scope::all_tenants())
        .fields("spec.nodeName!=")
        .keeping(keep_pods());
    let mut watcher = Watcher::new(source, "simulated nodes' pods");
    let queue = Arc::new((Mutex::new(PodQueue::default()), Notify::new()));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..POD_WORKERS {
        let (fleet, queue, mut stop) = (fleet.clone(), queue.clone(), stop.clone());
        workers.spawn(async move {
            loop {
                let next = queue.0.lock().unwrap_or_else(|e| e.into_inner()).pop();
                match next {
                    Some(pod) => fleet.sync_pod(&pod).await,
                    None => tokio::select! {
                        _ = queue.1.notified() => {}
                        _ = stop.wait_for(|s| *s) => return,
                    },
                }
            }
        });
    }
    loop {
        let event = tokio::select! {
            event = watcher.next() => event,
            _ = stop.wait_for(|s| *s) => break,
        };
        let pods = match event {
            Event::Restarted(all) => all,
            Event::Applied(pod) => vec![pod],
            Event::Deleted(_) => continue,
        };
        let mut queued = 0;
        {
            let mut q = queue.0.lock().unwrap_or_else(|e| e.into_inner());
            for pod in pods {
                let Some(&i) = fleet.index.get(text(&pod, "/spec/nodeName")) else { continue };
                if needs_write(&pod, &host_ip(i).to_string()) {
                    q.push(pod);
                    queued += 1;
                }
            }
        }
        // One wake per queued pod (a stored permit covers a worker between pop and wait).
        for _ in 0..queued.min(POD_WORKERS) {
            queue.1.notify_one();
        }
    }
    while workers.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_pod_is_reported_running_once() {
        let pod = json!({"metadata": {"name": "p", "uid": "u1"},
                         "spec": {"nodeName": "sim-3", "containers": [{"name": "c", "image": "busybox"}]},
                         "status": {"phase": "Pending", "conditions": [
                             {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
        let now = SystemTime::UNIX_EPOCH;
        let status = running_status(&pod, "198.18.0.4", || "100.64.0.9".into(), now).expect("reported");
        assert_eq!(status["phase"], "Running");
        assert_eq!((status["podIP"].as_str(), status["hostIP"].as_str()), (Some("100.64.0.9"), Some("198.18.0.4")));
        assert_eq!(status["containerStatuses"][0]["containerID"], "simulated://u1-c");
        assert!(status["containerStatuses"][0]["state"]["running"].is_object());
        let types: Vec<&str> = status["conditions"].as_array().unwrap().iter().map(|c| text(c, "/type")).collect();
        assert_eq!(types, ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"]);
        assert_eq!(status["conditions"][4]["lastTransitionTime"], "2026-01-01T00:00:00Z");
        // What the watch keeps of a pod is enough for the same report.
        let mut whole = pod.clone();
        whole["spec"]["containers"][0]["command"] = json!(["sleep", "3600"]);
        whole["spec"]["volumes"] = json!([{"name": "v", "emptyDir": {}}]);
        whole["metadata"]["managedFields"] = json!([{"manager": "m", "fieldsV1": {}}]);
        let kept = keep_pods().decode_slice(&serde_json::to_vec(&whole).unwrap()).unwrap();
        assert_eq!(kept["spec"], json!({"nodeName": "sim-3", "containers": [{"name": "c", "image": "busybox"}]}));
        assert!(kept["metadata"].get("managedFields").is_none() && kept["metadata"]["uid"] == "u1");
        assert_eq!(running_status(&kept, "198.18.0.4", || "100.64.0.9".into(), now), Some(status.clone()));
        let mut running = pod.clone();
        running["status"] = status;
        assert_eq!(running_status(&running, "198.18.0.4", || unreachable!(), now), None);
        // Marked not ready by the node lifecycle controller: reported ready again, same address.
        running["status"]["conditions"][2]["status"] = json!("False");
        let again = running_status(&running, "198.18.0.4", || unreachable!(), now).expect("reported again");
        assert_eq!(again["podIP"], "100.64.0.9");
    }

    /// Every node renews once per lease round and writes its status once per status round,
    /// each at its own step: the load is even and nobody is forgotten.
    #[test]
    fn every_node_is_due_once_per_round() {
        let (count, lease_slots, status_slots) = (1000, 100, 600);
        let mut leases = vec![0; count];
        let mut statuses = vec![0; count];
        let mut busiest = 0;
        for k in 1..=600u64 {
            let due: Vec<_> = due_at(k, count, lease_slots, status_slots).collect();
            busiest = busiest.max(due.len());
            for (i, lease, status) in due {
                leases[i] += usize::from(lease);
                statuses[i] += usize::from(status);
            }
        }
        assert!(leases.iter().all(|&n| n == 6), "six lease rounds in 600 steps");
        assert!(statuses.iter().all(|&n| n == 1), "one status round in 600 steps");
        assert!(busiest <= count / lease_slots + 2, "{busiest} at one step");
    }

    /// The scale run's failure: with 5,000 nodes and a slow API server, renewals waited for
    /// each other and a node's lease went unrenewed past the 40 s grace period. Here 5,000
    /// nodes renew every 10 s against an API that takes 3 s per call: every node must still
    /// renew at least every 10 s + 3 s.
    #[tokio::test(start_paused = true)]
    async fn leases_are_renewed_on_time_however_slow_the_api() {
        use std::sync::Mutex as StdMutex;
        let count = 5000;
        let renewed: Arc<StdMutex<Vec<Vec<tokio::time::Instant>>>> = Arc::new(StdMutex::new(vec![Vec::new(); count]));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let log = renewed.clone();
        let timer = tokio::spawn(heartbeat_loop(count, 100, 600, stop_rx, move |i, lease, _status| {
            let log = log.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                if lease {
                    log.lock().unwrap()[i].push(tokio::time::Instant::now());
                }
            }
        }));
        let start = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_secs(120)).await;
        let _ = stop_tx.send(true);
        timer.await.unwrap();
        let renewed = renewed.lock().unwrap();
        let mut worst = Duration::ZERO;
        for times in renewed.iter() {
            let mut last = start;
            for t in times {
                worst = worst.max(t.duration_since(last));
                last = *t;
            }
        }
        assert!(renewed.iter().all(|t| t.len() >= 10), "every node renewed about every 10 s");
        assert!(worst <= Duration::from_secs(13) + TICK, "a lease went {worst:?} without renewal");
    }

    #[test]
    fn addresses_come_from_reserved_ranges() {
        assert_eq!(host_ip(0), Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(host_ip(4999), Ipv4Addr::new(198, 18, 19, 136));
        let status = node_status(&SimConfig::new(1, "sim"), 0, SystemTime::UNIX_EPOCH, SystemTime::UNIX_EPOCH);
        assert_eq!(status["allocatable"]["pods"], "110");
        assert_eq!(status["conditions"][3]["type"], "Ready");
        assert_eq!(status["nodeInfo"]["containerRuntimeVersion"], "simulated://0");
    }

    #[test]
    fn the_pod_queue_keeps_one_latest_state_per_pod_in_arrival_order() {
        let pod = |name: &str, rv: &str| json!({"metadata": {"tenant": "t", "namespace": "n", "name": name, "resourceVersion": rv}});
        let mut q = PodQueue::default();
        q.push(pod("a", "1"));
        q.push(pod("b", "2"));
        q.push(pod("a", "3"));
        assert_eq!(q.pop().map(|p| p["metadata"]["resourceVersion"].clone()), Some(json!("3")));
        assert_eq!(q.pop().map(|p| p["metadata"]["name"].clone()), Some(json!("b")));
        assert!(q.pop().is_none());
    }

    #[test]
    fn only_pods_not_yet_reported_or_being_deleted_need_a_write() {
        let mut pod = json!({"metadata": {"name": "p", "uid": "u"}, "spec": {"nodeName": "sim-0", "containers": []},
                             "status": {"phase": "Pending"}});
        assert!(needs_write(&pod, "198.18.0.1"));
        pod["status"] = running_status(&pod, "198.18.0.1", || "100.64.0.1".into(), SystemTime::UNIX_EPOCH).unwrap();
        assert!(!needs_write(&pod, "198.18.0.1"));
        pod["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        assert!(needs_write(&pod, "198.18.0.1"));
        let done = json!({"metadata": {"name": "p"}, "status": {"phase": "Succeeded"}});
        assert!(!needs_write(&done, "198.18.0.1"));
    }
}
