//! The decision: which node a pod goes to, or why none fits. Pure: a snapshot and a pod in,
//! a decision out.
//!
//! Like kube-scheduler, a search starts at a rotating offset and stops once it has found
//! enough feasible nodes (all of them below 100 nodes; an adaptive share of a large
//! cluster, at least 100), then scores only those. A pod that fits nowhere is checked
//! against every node, so its message counts every reason.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::model::{NOT_READY_TAINT, Pod, SYSTEM_TENANT, UNREACHABLE_TAINT, UNSCHEDULABLE_TAINT};
use crate::snapshot::{NodeInfo, Snapshot};

/// What to do with a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Bind the pod to `node`. `examined` nodes were looked at.
    Bind { node: Arc<str>, examined: usize },
    /// No node fits.
    Unschedulable(Unfit),
    /// Not this scheduler's pod (already on a node, another scheduler's, being deleted).
    NotOurs(&'static str),
}

/// Why no node fits: how many nodes gave each reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unfit {
    pub nodes: usize,
    pub reasons: BTreeMap<String, usize>,
}

impl fmt::Display for Unfit {
    /// kube-scheduler's wording: `0/3 nodes are available: 1 Insufficient cpu, 2 node(s)
    /// had untolerated taint {k: v}.`, reasons in alphabetical order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0/{} nodes are available", self.nodes)?;
        if self.reasons.is_empty() {
            return write!(f, ".");
        }
        let mut parts: Vec<String> = self.reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
        parts.sort();
        write!(f, ": {}.", parts.join(", "))
    }
}

pub const REASON_UNSCHEDULABLE: &str = "node(s) were unschedulable";
pub const REASON_NOT_READY: &str = "node(s) were not ready";
pub const REASON_AFFINITY: &str = "node(s) didn't match Pod's node affinity/selector";
pub const REASON_TOO_MANY_PODS: &str = "Too many pods";
/// Why tenant exclusivity kept a pod off a node, worded so that it names no tenant and
/// does not say whether another tenant's pods are there: the message goes to the pod's
/// tenant, which must not learn of others.
pub const REASON_TENANT_ISOLATION: &str = "node(s) didn't satisfy tenant isolation";

/// Score weights, as kube-scheduler's defaults weigh the same plugins.
const WEIGHT_LEAST_ALLOCATED: i64 = 1;
const WEIGHT_BALANCED: i64 = 1;
const WEIGHT_SPREAD: i64 = 2;
const WEIGHT_TAINTS: i64 = 3;

/// How many feasible nodes a search looks for before scoring (kube-scheduler's adaptive
/// `percentageOfNodesToScore`: 50% minus 1% per 125 nodes, at least 5%, at least 100).
pub fn feasible_target(nodes: usize) -> usize {
    if nodes < 100 {
        return nodes;
    }
    let percent = (50 - nodes as i64 / 125).max(5) as usize;
    (nodes * percent / 100).max(100)
}

/// Why `node` cannot take `pod`; empty when it can. Reasons are pushed to `out`.
fn filter(node: &NodeInfo, pod: &Pod, snap: &Snapshot, out: &mut Vec<String>) {
    let Some(n) = &node.node else { return };
    if n.unschedulable && !pod.tolerates_key(UNSCHEDULABLE_TAINT) {
        out.push(REASON_UNSCHEDULABLE.into());
        return;
    }
    // Once the node lifecycle controller has tainted a node that is not ready, its taints
    // decide (a pod may tolerate `unreachable`, as in Kubernetes); before that, readiness does.
    let tainted = n.taints.iter().any(|t| t.key == NOT_READY_TAINT || t.key == UNREACHABLE_TAINT);
    if !n.ready && !tainted && !pod.tolerates_key(NOT_READY_TAINT) {
        out.push(REASON_NOT_READY.into());
        return;
    }
    if let Some(t) =
        n.taints.iter().find(|t| matches!(t.effect.as_str(), "NoSchedule" | "NoExecute") && !pod.tolerates(t))
    {
        out.push(format!("node(s) had untolerated taint {{{}: {}}}", t.key, t.value));
        return;
    }
    let selector = pod.node_selector.iter().all(|(k, v)| n.labels.get(k) == Some(v));
    let affinity = pod.affinity.as_ref().is_none_or(|terms| terms.iter().any(|term| term.iter().all(|r| r.matches(n))));
    if !selector || !affinity {
        out.push(REASON_AFFINITY.into());
        return;
    }
    let tenant = &pod.key.tenant;
    // Without exclusive tenants there is nothing to check; skipping also spares reading
    // every node's tenant list (a cache miss per node).
    if !snap.exclusive.is_empty() && &**tenant != SYSTEM_TENANT {
        let others = node.tenants.iter().map(|(t, _)| t).filter(|t| *t != tenant && &***t != SYSTEM_TENANT);
        let mine_exclusive = snap.exclusive.contains(tenant);
        for other in others {
            if mine_exclusive {
                out.push(REASON_TENANT_ISOLATION.into());
                return;
            }
            if snap.exclusive.contains(other) {
                out.push(REASON_TENANT_ISOLATION.into());
                return;
            }
        }
    }
    // Resources: every shortage is a reason, as Kubernetes reports them all.
    if node.pods + 1 > n.max_pods {
        out.push(REASON_TOO_MANY_PODS.into());
    }
    let (want, have, used) = (&pod.requests, &n.allocatable, &node.requested);
    let short = |w: i64, h: i64, u: i64| w > 0 && w > h - u;
    if short(want.cpu, have.cpu, used.cpu) {
        out.push("Insufficient cpu".into());
    }
    if short(want.memory, have.memory, used.memory) {
        out.push("Insufficient memory".into());
    }
    if short(want.ephemeral, have.ephemeral, used.ephemeral) {
        out.push("Insufficient ephemeral-storage".into());
    }
    for (name, w) in &want.extended {
        if short(*w, have.extended(name), used.extended(name)) {
            out.push(format!("Insufficient {name}"));
        }
    }
}

/// A feasible node's raw score inputs.
struct Candidate<'a> {
    node: &'a NodeInfo,
    base: i64,
    same_owner: u32,
    prefer_no_schedule: u32,
}

fn resource_scores(node: &NodeInfo, pod: &Pod) -> i64 {
    let Some(n) = &node.node else { return 0 };
    let (cpu, mem) = pod.scoring_requests();
    let after = [
        (node.scoring.0 + cpu, n.allocatable.cpu, node.per_cent.0),
        (node.scoring.1 + mem, n.allocatable.memory, node.per_cent.1),
    ];
    // Least allocated: the free share (in per cent) left after placing the pod, averaged.
    // The small epsilon keeps exact shares (e.g. 50%) from rounding down to one less.
    let free = |(u, a, pc): (i64, i64, f64)| if a <= 0 { 0 } else { ((a - u).max(0) as f64 * pc + 1e-9) as i64 };
    let least = (free(after[0]) + free(after[1])) / 2;
    // Balanced: CPU and memory used in equal shares score highest (100 minus the standard
    // deviation of the two fractions, which for two values is half their difference).
    let used = |(u, a, pc): (i64, i64, f64)| if a <= 0 { 1.0 } else { (u as f64 * pc / 100.0).min(1.0) };
    let std = (used(after[0]) - used(after[1])).abs() / 2.0;
    let balanced = ((1.0 - std) * 100.0) as i64;
    least * WEIGHT_LEAST_ALLOCATED + balanced * WEIGHT_BALANCED
}

/// Scores 0..=100 that favour the lowest count, `(max - count) * 100 / max`, with
/// `factor = 100 / max` computed once per decision (`None`: every count is 0, all score 100).
fn reverse_normalized(count: u32, max: u32, factor: Option<f64>) -> i64 {
    match factor {
        None => 100,
        Some(f) => (f64::from(max - count) * f + 1e-9) as i64,
    }
}

/// Where `pod` goes in `snap`.
pub fn schedule(snap: &Snapshot, pod: &Pod) -> Decision {
    if pod.node_name.is_some() {
        return Decision::NotOurs("the pod is already on a node");
    }
    if pod.scheduler_name != snap.scheduler_name() {
        return Decision::NotOurs("the pod names another scheduler");
    }
    if pod.deleting || pod.terminal {
        return Decision::NotOurs("the pod is being deleted or has finished");
    }
    let total = snap.nodes.len();
    let target = feasible_target(snap.known_nodes);
    let mut feasible: Vec<Candidate> = Vec::with_capacity(target.min(1024));
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut why = Vec::new();
    let mut examined = 0;
    let same_owner = pod.owner.as_ref().and_then(|o| snap.owners.get(o));
    for i in 0..total {
        let slot = (snap.start + i) % total;
        let node = &snap.nodes[slot];
        examined += 1;
        let Some(n) = &node.node else { continue };
        why.clear();
        filter(node, pod, snap, &mut why);
        if !why.is_empty() {
            for w in why.drain(..) {
                *reasons.entry(w).or_default() += 1;
            }
            continue;
        }
        feasible.push(Candidate {
            node,
            base: resource_scores(node, pod),
            same_owner: same_owner.and_then(|m| m.get(&slot).copied()).unwrap_or(0),
            prefer_no_schedule: n.taints.iter().filter(|t| t.effect == "PreferNoSchedule" && !pod.tolerates(t)).count()
                as u32,
        });
        if feasible.len() >= target {
            break;
        }
    }
    if feasible.is_empty() {
        return Decision::Unschedulable(Unfit { nodes: snap.known_nodes, reasons });
    }
    let max_owner = feasible.iter().map(|c| c.same_owner).max().unwrap_or(0);
    let max_taints = feasible.iter().map(|c| c.prefer_no_schedule).max().unwrap_or(0);
    let factor = |max: u32| (max > 0).then(|| 100.0 / f64::from(max));
    let (owner_factor, taint_factor) = (factor(max_owner), factor(max_taints));
    // The first of the best in search order: the rotating start makes equals take turns.
    let mut best: Option<(i64, &NodeInfo)> = None;
    for c in &feasible {
        let score = c.base
            + WEIGHT_SPREAD * reverse_normalized(c.same_owner, max_owner, owner_factor)
            + WEIGHT_TAINTS * reverse_normalized(c.prefer_no_schedule, max_taints, taint_factor);
        if best.is_none_or(|(s, _)| score > s) {
            best = Some((score, c.node));
        }
    }
    match best {
        Some((_, node)) => Decision::Bind { node: node.name.clone(), examined },
        None => Decision::Unschedulable(Unfit { nodes: snap.known_nodes, reasons }),
    }
}

#[cfg(test)]
mod tests;
