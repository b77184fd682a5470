//! The scheduling loop: watches in, bindings and reports out.
//!
//! One task owns the [`Snapshot`] and the queues, so nothing is locked: the watchers (nodes
//! in the system tenant, pods of every tenant, tenants) and the binding tasks send it
//! [`Input`]s over one channel. It decides for pending pods in batches between inputs;
//! every HTTP call (binding, event, status) runs in a task of its own, bounded by a
//! semaphore, so decisions never wait on a round trip.
//!
//! A pod being bound counts as placed on its node ("assumed") from the decision on, so the
//! next decisions see its requests; the pod's watch event with `spec.nodeName` replaces the
//! assumption, and a failed binding undoes it.
//!
//! A pod that fits nowhere waits in the unschedulable set until the cluster changes in a
//! way that may let it fit (a node added or changed, a placed pod gone, a tenant's
//! exclusivity changed), or at the latest `Config::resync`; it is then retried after its
//! back-off (1 s doubling to 10 s per failed attempt, as kube-scheduler).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use api::json::At;
use client::{Client, Patch, Resource, Scope};
use controllers::watcher::{ApiSource, Event, Watcher};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use crate::core::{Decision, schedule};
use crate::model::{Node, Pod, PodKey, SYSTEM_TENANT};
use crate::snapshot::Snapshot;

/// How the loop runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Pods whose `spec.schedulerName` is this (or empty, for `default-scheduler`).
    pub name: String,
    /// Binding requests in flight at once.
    pub bind_concurrency: usize,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Unschedulable pods are retried at least this often, changes or not.
    pub resync: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            name: crate::model::DEFAULT_SCHEDULER.into(),
            bind_concurrency: 256,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            resync: Duration::from_secs(60),
        }
    }
}

/// Pods decided per turn before the loop looks at its inputs again.
const BATCH: usize = 512;
/// Events and status updates in flight at once.
const REPORT_CONCURRENCY: usize = 32;

/// What the loop hears.
enum Input {
    Nodes(Event),
    Pods(Event),
    Tenants(Event),
    Bound { key: PodKey, result: Result<(), client::Error> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waiting {
    /// In the active queue.
    Active,
    /// Waiting for its back-off to end.
    Backoff,
    /// Fit nowhere; waits for a cluster change.
    Unschedulable,
}

struct Pending {
    pod: Arc<Pod>,
    waiting: Waiting,
    attempts: u32,
    last_attempt: Instant,
    /// The message of the pod's `PodScheduled=False` condition, so an unchanged one is not
    /// written again.
    condition: Option<String>,
    /// The last `FailedScheduling` event recorded for the pod: name, count, message. A
    /// repeat of the same message counts up on it (as Kubernetes' event correlator does)
    /// rather than adding an object per attempt.
    event: Option<(String, u32, String)>,
}

struct Loop {
    cfg: Config,
    client: Client,
    tx: mpsc::Sender<Input>,
    snap: Snapshot,
    pending: HashMap<PodKey, Pending>,
    active: VecDeque<PodKey>,
    backoff: BTreeSet<(Instant, PodKey)>,
    unschedulable: HashSet<PodKey>,
    /// Pods decided and being bound (or bound, until the watch says so): their node, the pod.
    assumed: HashMap<PodKey, (Arc<str>, Arc<Pod>)>,
    tenants: HashMap<String, bool>,
    synced: [bool; 3],
    binds: Arc<Semaphore>,
    reports: Arc<Semaphore>,
    next_resync: Instant,
    stats: Stats,
    started: Instant,
}

#[derive(Default, Debug)]
struct Stats {
    decided: u64,
    bound: u64,
    unschedulable: u64,
    bind_failures: u64,
}

/// Runs the scheduler over `client` until `shutdown` resolves.
pub async fn run(client: Client, cfg: Config, shutdown: impl Future<Output = ()>) {
    let (tx, mut rx) = mpsc::channel(4096);
    let watches = [
        spawn_watch(client.clone(), Resource::nodes(), Scope::tenant(SYSTEM_TENANT), "nodes", tx.clone(), Input::Nodes),
        spawn_watch(client.clone(), Resource::pods(), Scope::all_tenants(), "pods", tx.clone(), Input::Pods),
        spawn_watch(
            client.clone(),
            Resource::tenants(),
            Scope::tenant(SYSTEM_TENANT),
            "tenants",
            tx.clone(),
            Input::Tenants,
        ),
    ];
    let mut state = Loop {
        binds: Arc::new(Semaphore::new(cfg.bind_concurrency.max(1))),
        reports: Arc::new(Semaphore::new(REPORT_CONCURRENCY)),
        snap: Snapshot::named(&cfg.name),
        next_resync: Instant::now() + cfg.resync,
        cfg,
        client,
        tx,
        pending: HashMap::new(),
        active: VecDeque::new(),
        backoff: BTreeSet::new(),
        unschedulable: HashSet::new(),
        assumed: HashMap::new(),
        tenants: HashMap::new(),
        synced: [false; 3],
        stats: Stats::default(),
        started: Instant::now(),
    };
    tokio::pin!(shutdown);
    loop {
        // Take in everything that has arrived before deciding, so decisions see it.
        while let Ok(input) = rx.try_recv() {
            state.handle(input);
        }
        let now = Instant::now();
        state.release_due(now);
        if now >= state.next_resync {
            state.next_resync = now + state.cfg.resync;
            state.cluster_changed();
        }
        if state.synced.iter().all(|s| *s) && !state.active.is_empty() {
            state.decide_some(BATCH);
            tokio::task::yield_now().await;
            continue;
        }
        let wake = state.backoff.first().map(|(t, _)| *t).unwrap_or(state.next_resync).min(state.next_resync);
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            input = rx.recv() => match input {
                Some(input) => state.handle(input),
                None => break,
            },
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
    for w in watches {
        w.abort();
    }
    tracing::info!(stats = ?state.stats, "scheduler stopped");
}

fn spawn_watch(
    client: Client,
    resource: Resource,
    scope: Scope,
    what: &'static str,
    tx: mpsc::Sender<Input>,
    wrap: fn(Event) -> Input,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Nothing here writes back what it read, so the managed fields are dropped as soon as
        // each object is decoded (a re-list of every pod then holds far less at once), and
        // of a pod only what placement reads is built at all.
        let keep = match resource.plural.as_str() {
            "pods" => keep_pods(),
            _ => controllers::cache::keep_without_managed_fields(),
        };
        let source = ApiSource::new(client, resource, scope).keeping(keep);
        let mut watcher = Watcher::new(source, what);
        loop {
            let event = watcher.next().await;
            if tx.send(wrap(event)).await.is_err() {
                return;
            }
        }
    })
}

/// What the scheduler builds of a pod as it decodes it: what [`Pod::from_json`] and
/// [`scheduled_condition`] read (and the metadata the watcher needs). A pod's containers
/// (images, commands, environment, mounts), its other status and its managed fields are
/// most of its JSON and are skipped by the decoder, never built.
pub fn keep_pods() -> client::Keep {
    let containers = client::Shape::only(&["name", "resources", "restartPolicy"]);
    let spec = client::Shape::only(&[
        "nodeName",
        "nodeSelector",
        "schedulerName",
        "tolerations",
        "affinity",
        "overhead",
        "virtualMachine",
        "schedulingGates",
    ])
    .with("containers", containers.clone())
    .with("initContainers", containers);
    client::Keep::shape(
        client::Shape::all()
            .with("metadata", client::Shape::without(&["managedFields", "annotations"]))
            .with("spec", spec)
            .with("status", client::Shape::only(&["phase", "conditions"])),
    )
}

/// The message of a pod's `PodScheduled=False` condition, if it has one.
fn scheduled_condition(v: &Value) -> Option<String> {
    v.at("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("PodScheduled"))
        .filter(|c| c.get("status").and_then(Value::as_str) == Some("False"))
        .map(|c| c.get("message").and_then(Value::as_str).unwrap_or("").to_string())
}

impl Loop {
    fn handle(&mut self, input: Input) {
        match input {
            Input::Nodes(event) => self.on_nodes(event),
            Input::Pods(event) => self.on_pods(event),
            Input::Tenants(event) => self.on_tenants(event),
            Input::Bound { key, result } => self.on_bound(key, result),
        }
    }

    fn on_nodes(&mut self, event: Event) {
        let changed = match event {
            Event::Applied(v) => Node::from_json(&v).is_some_and(|n| self.snap.upsert_node(n)),
            Event::Deleted(v) => {
                if let Some(name) = v.at("/metadata/name").and_then(Value::as_str) {
                    self.snap.remove_node(name);
                }
                false
            }
            Event::Restarted(items) => {
                let fresh: Vec<Node> = items.iter().filter_map(Node::from_json).collect();
                let names: HashSet<&str> = fresh.iter().map(|n| &*n.name).collect();
                let gone: Vec<String> =
                    self.snap.node_names().filter(|n| !names.contains(n)).map(str::to_string).collect();
                for name in gone {
                    self.snap.remove_node(&name);
                }
                for node in fresh {
                    self.snap.upsert_node(node);
                }
                self.mark_synced(0, "nodes");
                true
            }
        };
        if changed {
            self.cluster_changed();
        }
    }

    fn mark_synced(&mut self, i: usize, what: &str) {
        if !self.synced[i] {
            tracing::info!(after = ?self.started.elapsed(), "{what} listed");
        }
        self.synced[i] = true;
    }

    fn on_tenants(&mut self, event: Event) {
        let read = |v: &Value| {
            let name = v.at("/metadata/name").and_then(Value::as_str)?.to_string();
            Some((name, v.at("/spec/exclusiveNodes").and_then(Value::as_bool).unwrap_or(false)))
        };
        match event {
            Event::Applied(v) => {
                if let Some((name, exclusive)) = read(&v) {
                    self.tenants.insert(name, exclusive);
                }
            }
            Event::Deleted(v) => {
                if let Some((name, _)) = read(&v) {
                    self.tenants.remove(&name);
                }
            }
            Event::Restarted(items) => {
                self.tenants = items.iter().filter_map(read).collect();
                self.mark_synced(2, "tenants");
            }
        }
        let exclusive = self.tenants.iter().filter(|(_, e)| **e).map(|(t, _)| Arc::from(t.as_str())).collect();
        if self.snap.set_exclusive(exclusive) {
            self.cluster_changed();
        }
    }

    fn on_pods(&mut self, event: Event) {
        match event {
            Event::Applied(v) => self.on_pod(&v),
            Event::Deleted(v) => {
                if let Some(pod) = Pod::from_json(&v) {
                    self.forget(&pod.key);
                }
            }
            Event::Restarted(items) => {
                let keys: HashSet<PodKey> = items.iter().filter_map(Pod::from_json).map(|p| p.key).collect();
                let gone: Vec<PodKey> = self
                    .snap
                    .placed_pods()
                    .chain(self.pending.keys())
                    .filter(|k| !keys.contains(*k) && !self.assumed.contains_key(*k))
                    .cloned()
                    .collect();
                for key in gone {
                    self.forget(&key);
                }
                for v in &items {
                    self.on_pod(v);
                }
                self.mark_synced(1, "pods");
                self.cluster_changed();
            }
        }
    }

    /// A pod that is gone: its node has room again.
    fn forget(&mut self, key: &PodKey) {
        self.pending.remove(key);
        self.unschedulable.remove(key);
        self.assumed.remove(key);
        if self.snap.unplace(key).is_some() {
            self.cluster_changed();
        }
    }

    fn on_pod(&mut self, v: &Value) {
        let Some(pod) = Pod::from_json(v) else { return };
        let key = pod.key.clone();
        if pod.terminal {
            // Finished pods no longer hold their node's resources.
            self.forget(&key);
            return;
        }
        if let Some(node) = pod.node_name.clone() {
            self.pending.remove(&key);
            self.unschedulable.remove(&key);
            self.assumed.remove(&key);
            self.snap.place(Arc::new(pod), node);
            return;
        }
        if self.assumed.contains_key(&key) {
            // Our binding is under way; this is an older state of the pod.
            return;
        }
        // A gated pod waits outside the queues until its gates are gone (a change of the pod).
        if pod.deleting || pod.gated || pod.scheduler_name != self.snap.scheduler_name() {
            self.pending.remove(&key);
            self.unschedulable.remove(&key);
            return;
        }
        let condition = scheduled_condition(v);
        match self.pending.get_mut(&key) {
            Some(p) => {
                p.condition = condition;
                // Only a change to the pod itself (not our own status writes) retries it.
                if *p.pod != pod {
                    p.pod = Arc::new(pod);
                    if p.waiting == Waiting::Unschedulable {
                        self.unschedulable.remove(&key);
                        self.start_backoff(key);
                    }
                }
            }
            None => {
                let p = Pending {
                    pod: Arc::new(pod),
                    waiting: Waiting::Active,
                    attempts: 0,
                    last_attempt: Instant::now(),
                    condition,
                    event: None,
                };
                self.pending.insert(key.clone(), p);
                self.active.push_back(key);
            }
        }
    }

    fn on_bound(&mut self, key: PodKey, result: Result<(), client::Error>) {
        let Err(e) = result else {
            self.stats.bound += 1;
            return;
        };
        self.stats.bind_failures += 1;
        // Confirmed by the watch in the meantime, or deleted: nothing to undo.
        let Some((_, pod)) = self.assumed.remove(&key) else { return };
        self.snap.unplace(&key);
        self.cluster_changed();
        if e.is_not_found() || e.code() == Some(409) {
            // Gone, being deleted, or bound by someone else: the watch brings the rest.
            tracing::debug!(pod = %key, error = %e, "binding refused");
            return;
        }
        tracing::warn!(pod = %key, error = %e, "binding failed; will retry");
        let p = Pending {
            pod,
            waiting: Waiting::Unschedulable,
            attempts: 1,
            last_attempt: Instant::now(),
            condition: None,
            event: None,
        };
        self.pending.insert(key.clone(), p);
        self.start_backoff(key);
    }

    fn backoff_of(&self, attempts: u32) -> Duration {
        let factor = 1u32 << attempts.saturating_sub(1).min(16);
        self.cfg.initial_backoff.saturating_mul(factor).min(self.cfg.max_backoff)
    }

    fn start_backoff(&mut self, key: PodKey) {
        let Some(p) = self.pending.get(&key) else { return };
        let at = p.last_attempt + self.backoff_of(p.attempts.max(1));
        if let Some(p) = self.pending.get_mut(&key) {
            p.waiting = Waiting::Backoff;
        }
        self.backoff.insert((at, key));
    }

    /// Something changed that may let unschedulable pods fit: retry them after back-off.
    fn cluster_changed(&mut self) {
        for key in std::mem::take(&mut self.unschedulable) {
            self.start_backoff(key);
        }
    }

    fn release_due(&mut self, now: Instant) {
        while let Some((at, _)) = self.backoff.first() {
            if *at > now {
                break;
            }
            let Some((_, key)) = self.backoff.pop_first() else { break };
            if let Some(p) = self.pending.get_mut(&key)
                && p.waiting == Waiting::Backoff
            {
                p.waiting = Waiting::Active;
                self.active.push_back(key);
            }
        }
    }

    fn decide_some(&mut self, budget: usize) {
        for _ in 0..budget {
            let Some(key) = self.active.pop_front() else { return };
            let Some(p) = self.pending.get_mut(&key) else { continue };
            if p.waiting != Waiting::Active {
                continue;
            }
            let pod = p.pod.clone();
            self.stats.decided += 1;
            match schedule(&self.snap, &pod) {
                Decision::Bind { node, examined } => {
                    self.snap.advance(examined);
                    self.pending.remove(&key);
                    self.snap.place(pod.clone(), node.clone());
                    self.assumed.insert(key.clone(), (node.clone(), pod));
                    self.spawn_bind(key, node);
                }
                Decision::Unschedulable(unfit) => {
                    self.stats.unschedulable += 1;
                    let message = unfit.to_string();
                    p.attempts += 1;
                    p.last_attempt = Instant::now();
                    p.waiting = Waiting::Unschedulable;
                    let write_condition = p.condition.as_deref() != Some(message.as_str());
                    p.condition = Some(message.clone());
                    let event = match p.event.take() {
                        Some((name, count, said)) if said == message => (name, count + 1),
                        _ => (event_name(&key.name), 1),
                    };
                    p.event = Some((event.0.clone(), event.1, message.clone()));
                    tracing::debug!(pod = %key, %message, "unschedulable");
                    self.unschedulable.insert(key);
                    self.spawn_report(pod, message, event, write_condition);
                }
                Decision::NotOurs(why) => {
                    tracing::debug!(pod = %key, why, "not scheduling");
                    self.pending.remove(&key);
                }
            }
        }
    }

    fn spawn_bind(&self, key: PodKey, node: Arc<str>) {
        let (client, tx, sem) = (self.client.clone(), self.tx.clone(), self.binds.clone());
        tokio::spawn(async move {
            let Ok(_permit) = sem.acquire_owned().await else { return };
            let binding = json!({
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": &*key.name, "namespace": &*key.namespace},
                "target": {"apiVersion": "v1", "kind": "Node", "name": &*node},
            });
            let scope = Scope::tenant(&key.tenant).in_namespace(&key.namespace);
            let result =
                client.create_subresource(&Resource::pods(), &scope, &key.name, "binding", &binding).await.map(|_| ());
            let _ = tx.send(Input::Bound { key, result }).await;
        });
    }

    /// Records `FailedScheduling` on the pod and sets its `PodScheduled` condition.
    fn spawn_report(&self, pod: Arc<Pod>, message: String, (event_name, count): (String, u32), write_condition: bool) {
        let (client, sem) = (self.client.clone(), self.reports.clone());
        let component = self.snap.scheduler_name().to_string();
        tokio::spawn(async move {
            let Ok(_permit) = sem.acquire_owned().await else { return };
            let key = &pod.key;
            let scope = Scope::tenant(&key.tenant).in_namespace(&key.namespace);
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            let stamp = api::time::rfc3339(now.as_secs() as i64);
            let events = Resource::events();
            // A repeat counts up on the pod's last event; a new message, or a counted event
            // that has gone meanwhile (events expire), makes a new one.
            let counted = count > 1 && {
                let repeat = Patch::Merge(json!({"count": count, "lastTimestamp": stamp}));
                match client.patch(&events, &scope, &event_name, &repeat).await {
                    Ok(_) => true,
                    Err(e) if e.is_not_found() => false,
                    Err(e) => {
                        tracing::warn!(pod = %key, error = %e, "counting FailedScheduling failed");
                        true
                    }
                }
            };
            let event = json!({
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": event_name, "namespace": &*key.namespace},
                "involvedObject": {
                    "apiVersion": "v1", "kind": "Pod", "name": &*key.name, "namespace": &*key.namespace, "uid": pod.uid,
                },
                "reason": "FailedScheduling",
                "message": message,
                "type": "Warning",
                "source": {"component": component},
                "reportingComponent": component,
                "firstTimestamp": stamp,
                "lastTimestamp": stamp,
                "count": count,
            });
            if !counted && let Err(e) = client.create(&events, &scope, &event).await {
                tracing::warn!(pod = %key, error = %e, "recording FailedScheduling failed");
            }
            if write_condition {
                let patch = Patch::Strategic(json!({"status": {"conditions": [{
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": message,
                    "lastProbeTime": null,
                    "lastTransitionTime": stamp,
                }]}}));
                if let Err(e) = client.patch_subresource(&Resource::pods(), &scope, &key.name, "status", &patch).await
                    && !e.is_not_found()
                {
                    tracing::warn!(pod = %key, error = %e, "setting PodScheduled=False failed");
                }
            }
        });
    }
}

/// A new event's name: the pod's and the time in nanoseconds, as Kubernetes' recorder does.
fn event_name(pod: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{pod}.{nanos:x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod with everything placement reads and much it does not (as the API server stores
    /// one): the pod decoded in the scheduler's shape places exactly as the whole pod does.
    #[test]
    fn a_pod_decoded_in_the_schedulers_shape_is_the_same_pod_to_placement() {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "web-1", "namespace": "shop", "tenant": "acme", "uid": "u-1", "resourceVersion": "42",
                "labels": {"app": "web"}, "annotations": {"note": "x"},
                "deletionTimestamp": "2026-11-25T00:00:00Z",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "rs-1",
                                     "controller": true}],
                "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsV1": {"f:spec": {}}}]
            },
            "spec": {
                "nodeName": "n-7", "schedulerName": "other", "nodeSelector": {"disk": "ssd"},
                "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"},
                                {"key": "z", "operator": "Equal", "value": "v", "effect": "NoExecute"}],
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}],
                     "matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["n-1"]}]}]}}},
                "overhead": {"cpu": "250m", "memory": "120Mi"},
                "virtualMachine": {"resources": {"requests": {"cpu": "1", "memory": "512Mi"}}, "image": "vm"},
                "initContainers": [
                    {"name": "init", "image": "busybox", "command": ["true"],
                     "resources": {"requests": {"cpu": "2", "memory": "1Gi"}}},
                    {"name": "side", "image": "busybox", "restartPolicy": "Always",
                     "resources": {"limits": {"cpu": "100m", "memory": "64Mi", "example.com/gpu": "1"}}}],
                "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"],
                                "env": [{"name": "A", "value": "b"}], "volumeMounts": [{"name": "v", "mountPath": "/v"}],
                                "resources": {"requests": {"cpu": "500m", "ephemeral-storage": "1Gi"},
                                              "limits": {"memory": "256Mi"}}}],
                "volumes": [{"name": "v", "emptyDir": {}}]
            },
            "status": {
                "phase": "Pending", "podIP": "10.0.0.1",
                "conditions": [{"type": "PodScheduled", "status": "False", "message": "0/3 nodes are available"}],
                "containerStatuses": [{"name": "c", "image": "busybox", "restartCount": 0, "state": {"waiting": {}}}]
            }
        });
        let bytes = serde_json::to_vec(&pod).unwrap();
        let shaped = keep_pods().decode_slice(&bytes).unwrap();
        assert_eq!(shaped, keep_pods().apply(pod.clone()), "decoding in the shape = shaping the decoded pod");
        let (whole, kept) = (Pod::from_json(&pod).expect("a pod"), Pod::from_json(&shaped).expect("a pod"));
        assert_eq!(kept, whole);
        // The parts placement reads are really there (not two empty pods compared).
        assert!(whole.deleting && whole.node_name.as_deref() == Some("n-7") && whole.tolerations.len() == 2);
        assert!(whole.affinity.is_some() && whole.owner.as_deref() == Some("rs-1") && whole.requests.cpu > 2_000);
        assert_eq!(scheduled_condition(&shaped), scheduled_condition(&pod));
        assert_eq!(scheduled_condition(&pod).as_deref(), Some("0/3 nodes are available"));
        // And what it does not read is gone.
        assert!(shaped.at("/spec/containers/0/image").is_none() && shaped.at("/spec/volumes").is_none());
        assert!(shaped.at("/status/containerStatuses").is_none());
        assert!(shaped.at("/metadata/managedFields").is_none());
        assert_eq!(shaped.at("/metadata/resourceVersion"), Some(&json!("42")), "the watcher's revision stays");
    }
}
