//! The node lifecycle controller: a node whose agent stops renewing its Lease
//! (`kube-node-lease/<node>`) for longer than the grace period is marked as Kubernetes marks
//! it: every condition `Unknown` (reason `NodeStatusUnknown`), the taint
//! `node.kubernetes.io/unreachable:NoSchedule` at once and `...:NoExecute` when its zone's
//! eviction rate allows ([`zones`]: one node per 10 s by default, slower or not at all when
//! much of the zone or the whole cluster is down, as in Kubernetes); a node whose agent
//! reports `Ready=False` gets the `node.kubernetes.io/not-ready` pair instead. The pods on
//! an unhealthy node get `Ready=False`, and after the NoExecute taint has stood for a pod's
//! `tolerationSeconds` (at once without a matching toleration, never with one that has no
//! limit) the pod gets the condition `DisruptionTarget` (reason `DeletionByTaintManager`) and
//! is deleted. When the agent reports again (the agent rewrites Ready), the taints go.
//!
//! Keyed by node name. Watches Nodes and Leases of the system tenant, and every tenant's pods
//! into a cache indexed by `spec.nodeName`: a node's pods are read from that index, never
//! listed from the API, because nodes flap under load and a list per unhealthy node made
//! the API server decode every pod of the cluster each time (BENCHMARKS.md "Scale"). A pod
//! change requeues its node only while the node carries one of our taints, so pods bound to
//! an unhealthy node are seen at once and a healthy cluster's pod churn costs a map lookup.
//! [`judge`] is the whole decision, pure and table-tested; the reconciler only writes what it
//! says (status patches and evictions go to the API) and asks to look again when the lease
//! would expire, and every 10 s while the node is unhealthy. The caches only say where to
//! look: a write, and any node carrying our taints, is decided on the node (and before an
//! `Unknown`, the lease) as the API has it now, since on a loaded machine the watches trail
//! the API by minutes (at 5,000 nodes, recovered nodes kept their taints while the cache
//! still showed them `Unknown`, and a trailing lease cache made live nodes `Unknown`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use api::json::At;
use async_trait::async_trait;
use client::{Client, DeleteParams, Patch, Resource, Scope, Tenant};
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::cache::{Cache, ObjectKey};
use crate::controller::{Action, Controller, Reconciler};
use crate::informer::Informer;
use crate::watcher::{ApiSource, Watcher};

pub mod zones;
use zones::{Grant, Zones};

pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// Kubernetes' `--node-monitor-grace-period` default.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(40);
const SYSTEM: &str = "system";
/// Looked at this long after the lease would expire, so a renewal racing the deadline wins.
const SLACK: Duration = Duration::from_millis(500);
/// How often a node carrying our taints is looked at again (from the API) while unhealthy.
pub const UNHEALTHY_RECHECK: Duration = Duration::from_secs(10);
/// Conflicting writes retried at once from a fresh read before the controller's back-off.
const WRITE_ATTEMPTS: u32 = 3;

#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// How long a node may go without renewing its Lease before it is Unknown.
    pub grace: Duration,
    /// How fast unhealthy nodes get their NoExecute taint, by zone state.
    pub rates: zones::Rates,
}

impl Default for Config {
    fn default() -> Self {
        Config { grace: DEFAULT_GRACE, rates: zones::Rates::default() }
    }
}

/// Whether [`judge`] may put a NoExecute taint on an unhealthy node (the zones decide).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tainting {
    /// Add it if missing.
    Allowed,
    /// Keep one already there (swapping unreachable and not-ready at once, as Kubernetes
    /// does), add none: the node waits for its turn.
    Held,
    /// Every zone is down: take ours off, add none.
    Stopped,
}

/// What the node's Ready condition says after the decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Ready,
    /// The agent reports `Ready=False`.
    NotReady,
    /// `Ready` is `Unknown` (or missing past the grace period): nobody has heard from the agent.
    Unreachable,
    /// A new node whose agent has not posted a status yet, within its first grace period.
    Unreported,
}

/// What [`judge`] decided for one node.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub health: Health,
    /// The node's new `status.conditions`, when they change.
    pub conditions: Option<Value>,
    /// The node's new `spec.taints`, when they change.
    pub taints: Option<Value>,
    /// When to look again although nothing changed (the lease's expiry).
    pub recheck: Option<Duration>,
    /// Unhealthy, without the NoExecute taint it would get if its zone allowed.
    pub awaiting_no_execute: bool,
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.at(pointer).and_then(Value::as_str).unwrap_or("")
}

fn time_at(v: &Value, pointer: &str) -> Option<SystemTime> {
    api::time::parse_rfc3339_instant(text(v, pointer))
}

fn seconds(t: SystemTime) -> String {
    api::time::rfc3339(t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0))
}

/// The last sign of life: the lease's renewal, the Ready condition's heartbeat, or the
/// node's creation (a node gets one grace period to report at all).
fn last_heard(node: &Value, lease_renewed: Option<SystemTime>) -> Option<SystemTime> {
    let heartbeat = node
        .at("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| text(c, "/type") == "Ready"))
        .and_then(|c| time_at(c, "/lastHeartbeatTime"));
    [lease_renewed, heartbeat, time_at(node, "/metadata/creationTimestamp")].into_iter().flatten().max()
}

/// Whether the node carries one of the taints this controller puts on.
fn carries_ours(node: &Value) -> bool {
    node.at("/spec/taints").and_then(Value::as_array).is_some_and(|ts| ts.iter().any(is_ours))
}

fn is_ours(taint: &Value) -> bool {
    matches!(text(taint, "/key"), UNREACHABLE_TAINT | NOT_READY_TAINT)
        && matches!(text(taint, "/effect"), "NoSchedule" | "NoExecute")
}

/// The decision for one node at `now`: pure, so the table in the tests is the spec.
pub fn judge(
    node: &Value,
    lease_renewed: Option<SystemTime>,
    now: SystemTime,
    grace: Duration,
    tainting: Tainting,
) -> Verdict {
    let old_conditions = node.at("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
    let heard = last_heard(node, lease_renewed);
    let stale_for = heard.map(|h| now.duration_since(h).unwrap_or(Duration::ZERO));
    let stale = stale_for.is_none_or(|age| age > grace);
    // A fresh node is looked at again when its last sign of life would expire.
    let recheck =
        |heard: Option<SystemTime>| heard.map(|h| (h + grace).duration_since(now).unwrap_or(Duration::ZERO) + SLACK);
    let mut conditions = old_conditions.clone();
    if stale {
        let has_ready = conditions.iter().any(|c| text(c, "/type") == "Ready");
        for c in conditions.iter_mut().filter(|c| text(c, "/status") != "Unknown") {
            c["status"] = json!("Unknown");
            c["reason"] = json!("NodeStatusUnknown");
            c["message"] = json!("Node agent stopped posting node status.");
            c["lastTransitionTime"] = json!(seconds(now));
        }
        if !has_ready {
            conditions.push(json!({"type": "Ready", "status": "Unknown", "reason": "NodeStatusNeverUpdated",
                                   "message": "Node agent never posted node status.",
                                   "lastHeartbeatTime": seconds(now), "lastTransitionTime": seconds(now)}));
        }
    }
    let ready = conditions.iter().find(|c| text(c, "/type") == "Ready").map(|c| text(c, "/status"));
    let health = match ready {
        Some("True") => Health::Ready,
        Some("False") => Health::NotReady,
        Some(_) => Health::Unreachable,
        // Registered, no status yet, still within its first grace period: nothing to judge.
        None => {
            return Verdict {
                health: Health::Unreported,
                conditions: None,
                taints: None,
                recheck: recheck(heard),
                awaiting_no_execute: false,
            };
        }
    };

    let old_taints = node.at("/spec/taints").and_then(Value::as_array).cloned().unwrap_or_default();
    let wanted_key = match health {
        Health::Ready | Health::Unreported => None,
        Health::NotReady => Some(NOT_READY_TAINT),
        Health::Unreachable => Some(UNREACHABLE_TAINT),
    };
    let had_no_execute = old_taints.iter().any(|t| is_ours(t) && text(t, "/effect") == "NoExecute");
    let keep = |t: &Value| {
        !is_ours(t)
            || (Some(text(t, "/key")) == wanted_key
                && (text(t, "/effect") == "NoSchedule" || tainting != Tainting::Stopped))
    };
    let mut taints: Vec<Value> = old_taints.iter().filter(|t| keep(t)).cloned().collect();
    let mut awaiting_no_execute = false;
    if let Some(key) = wanted_key {
        let has = |taints: &[Value], effect: &str| {
            taints.iter().any(|t| text(t, "/key") == key && text(t, "/effect") == effect)
        };
        if !has(&taints, "NoSchedule") {
            taints.push(json!({"key": key, "effect": "NoSchedule"}));
        }
        // A node tainted for the other reason swaps at once; a fresh one waits its turn.
        let add = match tainting {
            Tainting::Allowed => true,
            Tainting::Held => had_no_execute,
            Tainting::Stopped => false,
        };
        if !has(&taints, "NoExecute") {
            if add {
                // NoExecute taints carry when they were added: evictions count from there.
                taints.push(json!({"key": key, "effect": "NoExecute", "timeAdded": seconds(now)}));
            } else {
                awaiting_no_execute = tainting == Tainting::Held;
            }
        }
    }

    Verdict {
        health,
        conditions: (conditions != old_conditions).then_some(Value::Array(conditions)),
        taints: (taints != old_taints).then_some(Value::Array(taints)),
        recheck: if stale { None } else { recheck(heard) },
        awaiting_no_execute,
    }
}

/// Whether `toleration` tolerates `taint` (Kubernetes' rules: an empty key with `Exists`
/// matches every key, an empty effect every effect).
pub fn tolerates(toleration: &Value, taint: &Value) -> bool {
    let effect = text(toleration, "/effect");
    if !effect.is_empty() && effect != text(taint, "/effect") {
        return false;
    }
    let key = text(toleration, "/key");
    if !key.is_empty() && key != text(taint, "/key") {
        return false;
    }
    match text(toleration, "/operator") {
        "Exists" => true,
        "" | "Equal" => !key.is_empty() && text(toleration, "/value") == text(taint, "/value"),
        _ => false,
    }
}

/// When a pod on a node with these taints must go: `Some(ZERO)` now, `Some(d)` in `d`,
/// `None` never (it tolerates every NoExecute taint without a limit).
pub fn eviction_after(pod: &Value, taints: &[Value], now: SystemTime) -> Option<Duration> {
    let tolerations = pod.at("/spec/tolerations").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut due: Option<Duration> = None;
    for taint in taints.iter().filter(|t| text(t, "/effect") == "NoExecute") {
        let matching: Vec<&Value> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if matching.is_empty() {
            return Some(Duration::ZERO);
        }
        // The shortest limit among the matching tolerations wins, as in Kubernetes.
        let Some(limit) = matching.iter().filter_map(|t| t.get("tolerationSeconds").and_then(Value::as_i64)).min()
        else {
            continue;
        };
        let added = time_at(taint, "/timeAdded").unwrap_or(now);
        let at = added + Duration::from_secs(limit.max(0) as u64);
        let left = at.duration_since(now).unwrap_or(Duration::ZERO);
        due = Some(due.map_or(left, |d| d.min(left)));
    }
    due
}

/// The pod's status with `Ready=False`, or `None` when it already says so.
pub fn pod_not_ready(pod: &Value, now: SystemTime) -> Option<Value> {
    let mut status = pod.get("status").cloned().unwrap_or_else(|| json!({}));
    let conditions = status.as_object_mut()?.entry("conditions").or_insert_with(|| json!([]));
    let list = conditions.as_array_mut()?;
    match list.iter_mut().find(|c| text(c, "/type") == "Ready") {
        Some(c) if text(c, "/status") == "False" => return None,
        Some(c) => {
            c["status"] = json!("False");
            c["reason"] = json!("NodeNotReady");
            c["message"] = json!("The pod's node is not ready.");
            c["lastTransitionTime"] = json!(seconds(now));
        }
        None => list.push(json!({"type": "Ready", "status": "False", "reason": "NodeNotReady",
                                 "message": "The pod's node is not ready.", "lastTransitionTime": seconds(now)})),
    }
    Some(status)
}

fn leases() -> Resource {
    Resource::new("coordination.k8s.io", "v1", "leases", true)
}

pub struct NodeLifecycle {
    client: Client,
    config: Config,
    nodes: Cache,
    leases: Cache,
    /// Every tenant's pods, indexed by `spec.nodeName`.
    pods: Cache,
    /// Each node's zone and readiness, and each zone's queue for the NoExecute taint.
    zones: Arc<Mutex<Zones>>,
    /// Per unhealthy node, the uids of the pods already marked not ready in this episode.
    /// A pod is marked once (when its node turns unhealthy or when it is bound to one), as
    /// Kubernetes does: re-marking on every pod change made a live agent, which reports its
    /// pods ready again, and this controller write the same pods back and forth.
    marked: Mutex<HashMap<String, HashSet<String>>>,
    /// Per node, the newest lease renewal read from the API (when the lease cache trailed):
    /// counted with the cache's, so a trailing lease cache costs one read per renewal seen,
    /// not one per lease event until the cache catches up.
    renewals: Mutex<HashMap<String, SystemTime>>,
}

/// A node's zone, as Kubernetes keys it: region and zone from the topology labels.
fn zone_of(node: &Value) -> String {
    let label = |k: &str, old: &str| {
        let labels = node.at("/metadata/labels");
        let v = labels.and_then(|l| l.get(k)).or_else(|| labels.and_then(|l| l.get(old)));
        v.and_then(Value::as_str).unwrap_or("").to_string()
    };
    let region = label("topology.kubernetes.io/region", "failure-domain.beta.kubernetes.io/region");
    let zone = label("topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone");
    format!("{region}:{zone}")
}

fn pod_scope(pod: &Value) -> Scope {
    Scope {
        tenant: Tenant::Named(text(pod, "/metadata/tenant").to_string()),
        namespace: Some(text(pod, "/metadata/namespace").to_string()),
    }
}

#[async_trait]
impl Reconciler for NodeLifecycle {
    type Key = ObjectKey;
    type Error = client::Error;

    fn name(&self) -> &'static str {
        "nodelifecycle"
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, client::Error> {
        let Some(cached) = self.nodes.get(key) else {
            self.zones.lock().remove(&key.name);
            self.marked.lock().remove(&key.name);
            self.renewals.lock().remove(&key.name);
            return Ok(Action::Done);
        };
        let lease = self.leases.get(&ObjectKey::new(SYSTEM, Some(LEASE_NAMESPACE), &key.name));
        let cached_renewal = lease.as_deref().and_then(|l| time_at(l, "/spec/renewTime"));
        let mut renewed = cached_renewal.max(self.renewals.lock().get(&key.name).copied());
        let now = SystemTime::now();
        // Shared with the cache until the API's own copy is needed (a clone of every Node per
        // lease renewal was ~2% of the control plane at 5,000 nodes).
        let mut node = cached;
        let first = judge(&node, renewed, now, self.config.grace, Tainting::Held);
        // The caches may trail the API by minutes when the process is loaded (seen at 5,000
        // nodes: nodes reporting Ready=True kept our taints because the node's Ready event had
        // not arrived, and a trailing lease cache made live nodes Unknown). So any change, and
        // any node carrying our taints, is decided on the node as the API has it now, and an
        // Unknown on the lease as the API has it: a healthy node still costs no request.
        if first.conditions.is_some() || first.taints.is_some() || carries_ours(&node) {
            node = match self.client.get(&Resource::nodes(), &Scope::tenant(SYSTEM), &key.name).await {
                Ok(n) => Arc::new(n),
                Err(e) if e.is_not_found() => return Ok(Action::Done),
                Err(e) => return Err(e),
            };
            if judge(&node, renewed, now, self.config.grace, Tainting::Held).conditions.is_some() {
                let leases_scope = Scope::tenant(SYSTEM).in_namespace(LEASE_NAMESPACE);
                match self.client.get(&leases(), &leases_scope, &key.name).await {
                    Ok(l) => {
                        renewed = renewed.max(time_at(&l, "/spec/renewTime"));
                        if renewed > cached_renewal
                            && let Some(at) = renewed
                        {
                            self.renewals.lock().insert(key.name.clone(), at);
                        }
                    }
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let (tainting, wait_turn) = self.tainting(key, &node, renewed, now);
        let mut verdict = judge(&node, renewed, now, self.config.grace, tainting);
        // Written from the node as read above: a conflict means someone (the agent) wrote
        // since, so the node is read again and judged again at once rather than after a
        // back-off from a cache that may still trail.
        let mut attempts = 0;
        loop {
            match self.write(&key.name, &node, &verdict).await {
                Ok(()) => break,
                Err(e) if e.is_conflict() && attempts < WRITE_ATTEMPTS => {
                    attempts += 1;
                    node = match self.client.get(&Resource::nodes(), &Scope::tenant(SYSTEM), &key.name).await {
                        Ok(n) => Arc::new(n),
                        Err(e) if e.is_not_found() => return Ok(Action::Done),
                        Err(e) => return Err(e),
                    };
                    verdict = judge(&node, renewed, now, self.config.grace, tainting);
                }
                Err(e) => return Err(e),
            }
        }
        let mut next = match (verdict.recheck, wait_turn) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if verdict.health == Health::Ready {
            self.marked.lock().remove(&key.name);
        }
        if matches!(verdict.health, Health::NotReady | Health::Unreachable) {
            // Looked at again from the API while unhealthy, so recovery never waits for a
            // watch event (Kubernetes' node monitor looks at every node every 5 s).
            next = Some(next.map_or(UNHEALTHY_RECHECK, |n| n.min(UNHEALTHY_RECHECK)));
            let taints = verdict.taints.clone().or_else(|| node.at("/spec/taints").cloned());
            let taints = taints.and_then(|t| t.as_array().cloned()).unwrap_or_default();
            if let Some(due) = self.pods_on_unhealthy(&key.name, &taints, now).await? {
                next = Some(next.map_or(due, |n| n.min(due)));
            }
        }
        Ok(next.map_or(Action::Done, Action::RequeueAfter))
    }
}

impl NodeLifecycle {
    /// The zones' say on `node`'s NoExecute taint, and when to ask them again.
    fn tainting(
        &self,
        key: &ObjectKey,
        node: &Value,
        renewed: Option<SystemTime>,
        now: SystemTime,
    ) -> (Tainting, Option<Duration>) {
        let verdict = judge(node, renewed, now, self.config.grace, Tainting::Held);
        let mut zones = self.zones.lock();
        let instant = Instant::now();
        zones.observe(&key.name, &zone_of(node), verdict.health == Health::Ready, instant);
        let unhealthy = matches!(verdict.health, Health::NotReady | Health::Unreachable);
        let grant = if verdict.awaiting_no_execute {
            Some(zones.grant(&key.name, instant))
        } else {
            (unhealthy && zones.stopped()).then_some(Grant::Stopped)
        };
        match grant {
            Some(Grant::Now) => (Tainting::Allowed, None),
            Some(Grant::Stopped) => (Tainting::Stopped, Some(zones::IDLE_RECHECK)),
            Some(Grant::Wait(d)) => (Tainting::Held, Some(d)),
            None => (Tainting::Held, None),
        }
    }

    /// Writes what `verdict` changes on `node`, each part a merge patch pinned to the
    /// version of `node` (the status, then the taints on the version the first wrote).
    async fn write(&self, name: &str, node: &Value, verdict: &Verdict) -> Result<(), client::Error> {
        let scope = Scope::tenant(SYSTEM);
        let mut version = text(node, "/metadata/resourceVersion").to_string();
        if let Some(conditions) = &verdict.conditions {
            let patch = json!({"metadata": {"resourceVersion": version}, "status": {"conditions": conditions}});
            let written =
                self.client.patch_subresource(&Resource::nodes(), &scope, name, "status", &Patch::Merge(patch)).await?;
            version = text(&written, "/metadata/resourceVersion").to_string();
            tracing::info!(node = %name, health = ?verdict.health, "node conditions changed");
        }
        if let Some(taints) = &verdict.taints {
            // No taints left: the field goes, as Kubernetes leaves it.
            let taints = if taints.as_array().is_some_and(Vec::is_empty) { Value::Null } else { taints.clone() };
            let patch = json!({"metadata": {"resourceVersion": version}, "spec": {"taints": taints}});
            self.client.patch(&Resource::nodes(), &scope, name, &Patch::Merge(patch)).await?;
            tracing::info!(node = %name, health = ?verdict.health, "node taints changed");
        }
        Ok(())
    }

    /// Adds the condition `DisruptionTarget=True` (reason `DeletionByTaintManager`) to a pod
    /// about to be evicted, pinned to the version the cache holds.
    async fn mark_disruption_target(&self, pod: &Value, now: SystemTime) -> Result<(), client::Error> {
        let mut conditions: Vec<Value> =
            pod.at("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
        if conditions.iter().any(|c| text(c, "/type") == "DisruptionTarget" && text(c, "/status") == "True") {
            return Ok(());
        }
        conditions.retain(|c| text(c, "/type") != "DisruptionTarget");
        conditions.push(json!({"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager",
                               "message": "Taint manager: deleting due to NoExecute taint",
                               "lastTransitionTime": seconds(now)}));
        let patch = json!({"metadata": {"resourceVersion": text(pod, "/metadata/resourceVersion")},
                           "status": {"conditions": conditions}});
        let name = text(pod, "/metadata/name");
        self.client.patch_subresource(&Resource::pods(), &pod_scope(pod), name, "status", &Patch::Merge(patch)).await?;
        Ok(())
    }

    /// Marks the node's pods not ready and evicts those whose time is up; returns when the
    /// next eviction is due.
    async fn pods_on_unhealthy(
        &self,
        node: &str,
        taints: &[Value],
        now: SystemTime,
    ) -> Result<Option<Duration>, client::Error> {
        // The cache may trail the API by a moment: a stale pod's status write conflicts and
        // is looked at again below; a stale eviction carries the uid as its precondition.
        let pods = self.pods.by_index(NODE_INDEX, node);
        let mut next: Option<Duration> = None;
        for pod in pods.iter().map(|p| &**p) {
            let name = text(pod, "/metadata/name");
            if pod.at("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null())
                || matches!(text(pod, "/status/phase"), "Succeeded" | "Failed")
            {
                continue;
            }
            match eviction_after(pod, taints, now) {
                Some(d) if d.is_zero() => {
                    // Why it goes, on the pod itself (Kubernetes' taint eviction does the same).
                    match self.mark_disruption_target(pod, now).await {
                        Ok(()) => {}
                        Err(e) if e.is_not_found() => continue,
                        Err(e) if e.is_conflict() => {
                            next = Some(Duration::from_secs(1));
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                    let params = DeleteParams {
                        precondition_uid: Some(text(pod, "/metadata/uid").to_string()),
                        ..DeleteParams::default()
                    };
                    match self.client.delete(&Resource::pods(), &pod_scope(pod), name, &params).await {
                        Ok(_) => tracing::info!(node, pod = name, "evicted from an unhealthy node"),
                        Err(e) if e.is_not_found() || e.is_conflict() => {}
                        Err(e) => return Err(e),
                    }
                    continue;
                }
                Some(d) => next = Some(next.map_or(d, |n| n.min(d))),
                None => {}
            }
            let uid = text(pod, "/metadata/uid");
            if self.marked.lock().get(node).is_some_and(|m| m.contains(uid)) {
                continue;
            }
            let mark = || {
                self.marked.lock().entry(node.to_string()).or_default().insert(uid.to_string());
            };
            if pod_not_ready(pod, now).is_some() {
                // The cache keeps only part of a pod's status (`pod_essentials`): the write
                // starts from the pod as it is now, still pinned to the version read.
                let fresh = match self.client.get(&Resource::pods(), &pod_scope(pod), name).await {
                    Ok(p) if text(&p, "/metadata/uid") == uid => p,
                    Ok(_) => continue,
                    Err(e) if e.is_not_found() => continue,
                    Err(e) => return Err(e),
                };
                let Some(status) = pod_not_ready(&fresh, now) else {
                    mark();
                    continue;
                };
                let mut updated = fresh;
                updated["status"] = status;
                match self
                    .client
                    .replace_subresource(&Resource::pods(), &pod_scope(pod), name, "status", &updated)
                    .await
                {
                    Ok(_) => mark(),
                    // Changed or gone meanwhile: the next look (below) sees the new pod.
                    Err(e) if e.is_conflict() => next = Some(Duration::from_secs(1)),
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            } else {
                mark();
            }
        }
        Ok(next)
    }
}

/// The shared pod cache's index of pods by `spec.nodeName`.
pub const NODE_INDEX: &str = "node";

pub fn node_name(pod: &Value) -> Option<String> {
    Some(text(pod, "/spec/nodeName")).filter(|n| !n.is_empty()).map(str::to_string)
}

/// The node to look at again when one of its pods changes: only one we have tainted.
fn tainted_node_of(nodes: &Cache, pod: &Value) -> Option<ObjectKey> {
    let key = ObjectKey::new(SYSTEM, None, &node_name(pod)?);
    carries_ours(&*nodes.get(&key)?).then_some(key)
}

/// The controller, watching the system tenant's Nodes and node Leases, and every tenant's pods
/// through the process's shared pod informer (see [`crate::pod_informer`]; indexed by
/// [`NODE_INDEX`]).
pub fn controller(client: Client, config: Config, pod_informer: &Arc<Informer>) -> Controller<NodeLifecycle> {
    let pods = pod_informer.cache().clone();
    let (nodes, lease_cache) = (Cache::default(), Cache::default());
    let reconciler = NodeLifecycle {
        client: client.clone(),
        config,
        nodes: nodes.clone(),
        leases: lease_cache.clone(),
        pods: pods.clone(),
        zones: Arc::new(Mutex::new(Zones::new(config.rates))),
        marked: Mutex::default(),
        renewals: Mutex::default(),
    };
    let node_source = ApiSource::new(client.clone(), Resource::nodes(), Scope::tenant(SYSTEM));
    let lease_source = ApiSource::new(client.clone(), leases(), Scope::tenant(SYSTEM).in_namespace(LEASE_NAMESPACE));
    let node_index = nodes.clone();
    Controller::new(reconciler)
        .workers(4)
        .watches(Watcher::new(node_source, "nodes"), nodes, |n| ObjectKey::of(n).into_iter().collect())
        .watches(Watcher::new(lease_source, "node leases"), lease_cache, |l| {
            ObjectKey::of(l).map(|k| ObjectKey::new(&k.tenant, None, &k.name)).into_iter().collect()
        })
        .watches_shared(pod_informer, move |pod| tainted_node_of(&node_index, pod).into_iter().collect())
}

#[cfg(test)]
mod tests;
