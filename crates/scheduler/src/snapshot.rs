//! The cluster as the decision core sees it, kept up to date one change at a time.
//!
//! Every node carries running totals of what its pods request, how many pods it holds per
//! tenant and per owner, so a decision reads a node in O(1) (plus its taints and labels)
//! and a pod placed or removed costs O(1): nothing is ever recomputed from all pods.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::model::{Node, Pod, PodKey, Resources};

/// A node and the pods placed on it. A node that pods name but whose Node object is not
/// (or no longer) known keeps their accounting with `node: None` and takes no new pods.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub name: Arc<str>,
    pub node: Option<Node>,
    pub requested: Resources,
    /// CPU and memory as scoring counts them (non-zero defaults for pods that request
    /// nothing).
    pub scoring: (i64, i64),
    /// `100 / allocatable` for CPU and memory (0 when there is none), so scoring
    /// multiplies instead of dividing: divisions were a measurable share of a decision.
    pub(crate) per_cent: (f64, f64),
    pub pods: i64,
    /// Pods per tenant on this node (few tenants per node, so a short list).
    pub tenants: Vec<(Arc<str>, u32)>,
}

impl NodeInfo {
    fn empty(name: Arc<str>) -> NodeInfo {
        NodeInfo {
            name,
            node: None,
            requested: Resources::default(),
            scoring: (0, 0),
            per_cent: (0.0, 0.0),
            pods: 0,
            tenants: Vec::new(),
        }
    }

    fn account(&mut self, pod: &Pod, sign: i64) {
        self.requested.add(&pod.requests, sign);
        let (cpu, mem) = pod.scoring_requests();
        self.scoring.0 += sign * cpu;
        self.scoring.1 += sign * mem;
        self.pods += sign;
        let tenant = &pod.key.tenant;
        match self.tenants.iter().position(|(t, _)| t == tenant) {
            Some(i) if sign < 0 => {
                self.tenants[i].1 -= 1;
                if self.tenants[i].1 == 0 {
                    self.tenants.swap_remove(i);
                }
            }
            Some(i) => self.tenants[i].1 += 1,
            None if sign > 0 => self.tenants.push((tenant.clone(), 1)),
            None => {}
        }
    }

    fn is_empty(&self) -> bool {
        self.node.is_none() && self.pods == 0
    }
}

/// The scheduler's view of the cluster.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Nodes by slot. A slot keeps its node while the node exists or holds pods, so slot
    /// numbers are stable; freed slots are reused.
    pub(crate) nodes: Vec<NodeInfo>,
    index: HashMap<Arc<str>, usize>,
    free: Vec<usize>,
    /// Pods per controlling owner (uid) per node slot, for spreading. Kept per owner (not
    /// per node) so a decision reads one small map that stays in cache instead of probing
    /// a map in every node it scores.
    pub(crate) owners: HashMap<Arc<str>, HashMap<usize, u32>>,
    /// Nodes with a Node object (the "N" of "0/N nodes are available").
    pub(crate) known_nodes: usize,
    /// Where each placed pod is and what it was counted as.
    placed: HashMap<PodKey, (Arc<str>, Arc<Pod>)>,
    /// Tenants whose pods must not share nodes with other tenants' pods.
    pub(crate) exclusive: HashSet<Arc<str>>,
    /// Where the next decision starts looking, so equal nodes take turns.
    pub(crate) start: usize,
    /// This scheduler's name (empty: `default-scheduler`); pods naming another are not ours.
    name: String,
}

impl Snapshot {
    pub fn new() -> Snapshot {
        Snapshot::default()
    }

    /// A snapshot for the scheduler called `name` (pods' `spec.schedulerName`).
    pub fn named(name: &str) -> Snapshot {
        Snapshot { name: name.to_string(), ..Snapshot::default() }
    }

    pub fn scheduler_name(&self) -> &str {
        if self.name.is_empty() { crate::model::DEFAULT_SCHEDULER } else { &self.name }
    }

    pub fn node_count(&self) -> usize {
        self.known_nodes
    }

    /// The names of the nodes with a Node object.
    pub fn node_names(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().filter(|n| n.node.is_some()).map(|n| &*n.name)
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|&i| &self.nodes[i])
    }

    fn slot(&mut self, name: &Arc<str>) -> usize {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i] = NodeInfo::empty(name.clone());
                i
            }
            None => {
                self.nodes.push(NodeInfo::empty(name.clone()));
                self.nodes.len() - 1
            }
        };
        self.index.insert(name.clone(), i);
        i
    }

    fn drop_if_empty(&mut self, i: usize) {
        if !self.nodes[i].is_empty() {
            return;
        }
        let name = std::mem::replace(&mut self.nodes[i].name, Arc::from(""));
        self.index.remove(&name);
        self.free.push(i);
    }

    fn count_owner(&mut self, pod: &Pod, slot: usize, sign: i64) {
        let Some(owner) = &pod.owner else { return };
        if sign > 0 {
            *self.owners.entry(owner.clone()).or_default().entry(slot).or_default() += 1;
        } else if let Some(per_node) = self.owners.get_mut(owner) {
            if let Some(n) = per_node.get_mut(&slot) {
                *n -= 1;
                if *n == 0 {
                    per_node.remove(&slot);
                }
            }
            if per_node.is_empty() {
                self.owners.remove(owner);
            }
        }
    }

    /// Adds or replaces a node; returns whether anything placement depends on changed.
    pub fn upsert_node(&mut self, node: Node) -> bool {
        let i = self.slot(&node.name.clone());
        let slot = &mut self.nodes[i].node;
        if slot.as_ref() == Some(&node) {
            return false;
        }
        if slot.is_none() {
            self.known_nodes += 1;
        }
        let per_cent = |a: i64| if a > 0 { 100.0 / a as f64 } else { 0.0 };
        self.nodes[i].per_cent = (per_cent(node.allocatable.cpu), per_cent(node.allocatable.memory));
        self.nodes[i].node = Some(node);
        true
    }

    pub fn remove_node(&mut self, name: &str) {
        if let Some(&i) = self.index.get(name) {
            if self.nodes[i].node.take().is_some() {
                self.known_nodes -= 1;
            }
            self.drop_if_empty(i);
        }
    }

    /// Counts `pod` on `node` (bound, or assumed while its binding is in flight); a pod
    /// placed before is moved.
    pub fn place(&mut self, pod: Arc<Pod>, node: Arc<str>) {
        self.unplace(&pod.key);
        let i = self.slot(&node);
        self.nodes[i].account(&pod, 1);
        self.count_owner(&pod, i, 1);
        self.placed.insert(pod.key.clone(), (node, pod));
    }

    /// Stops counting a pod; returns the node it was on.
    pub fn unplace(&mut self, key: &PodKey) -> Option<Arc<str>> {
        let (node, pod) = self.placed.remove(key)?;
        if let Some(&i) = self.index.get(&node) {
            self.nodes[i].account(&pod, -1);
            self.count_owner(&pod, i, -1);
            self.drop_if_empty(i);
        }
        Some(node)
    }

    pub fn placed_on(&self, key: &PodKey) -> Option<&Arc<str>> {
        self.placed.get(key).map(|(n, _)| n)
    }

    pub fn placed_pods(&self) -> impl Iterator<Item = &PodKey> {
        self.placed.keys()
    }

    /// Sets the exclusive tenants; returns whether the set changed.
    pub fn set_exclusive(&mut self, tenants: HashSet<Arc<str>>) -> bool {
        if tenants == self.exclusive {
            return false;
        }
        self.exclusive = tenants;
        true
    }

    /// Moves the start of the next search past the nodes this one examined (Kubernetes'
    /// rotation), or one node on when it looked at them all.
    pub fn advance(&mut self, examined: usize) {
        let n = self.nodes.len().max(1);
        let step = if examined >= n || examined == 0 { 1 } else { examined };
        self.start = (self.start + step) % n;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(name: &str) -> Node {
        Node::from_json(&json!({"metadata": {"name": name}, "status": {
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "10"},
            "conditions": [{"type": "Ready", "status": "True"}]}}))
        .unwrap()
    }

    fn pod(tenant: &str, name: &str, cpu: &str) -> Arc<Pod> {
        Arc::new(
            Pod::from_json(&json!({
                "metadata": {"tenant": tenant, "namespace": "ns", "name": name,
                    "ownerReferences": [{"uid": "rs", "controller": true}]},
                "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]},
            }))
            .unwrap(),
        )
    }

    /// Node name, requested CPU, pods, tenants, the owner's count there.
    fn state(s: &Snapshot, name: &str) -> Option<(i64, i64, Vec<String>, u32)> {
        let i = *s.index.get(name)?;
        let n = &s.nodes[i];
        let mut tenants: Vec<String> = n.tenants.iter().map(|(t, c)| format!("{t}={c}")).collect();
        tenants.sort();
        let owned = s.owners.get("rs").and_then(|m| m.get(&i)).copied().unwrap_or(0);
        Some((n.requested.cpu, n.pods, tenants, owned))
    }

    #[test]
    fn placing_and_removing_keeps_running_totals() {
        let mut s = Snapshot::new();
        assert!(s.upsert_node(node("a")));
        assert!(!s.upsert_node(node("a")), "an unchanged node is no change");
        s.upsert_node(node("b"));
        s.place(pod("t1", "p1", "1"), "a".into());
        s.place(pod("t2", "p2", "500m"), "a".into());
        assert_eq!(state(&s, "a"), Some((1500, 2, vec!["t1=1".into(), "t2=1".into()], 2)));
        // Placing again moves the pod (an assumed pod confirmed on another node).
        s.place(pod("t1", "p1", "1"), "b".into());
        assert_eq!(state(&s, "a"), Some((500, 1, vec!["t2=1".into()], 1)));
        assert_eq!(state(&s, "b"), Some((1000, 1, vec!["t1=1".into()], 1)));
        // A pod on a node not (yet) known is counted there; the node takes no decisions.
        s.place(pod("t1", "p3", "2"), "ghost".into());
        assert_eq!(s.node_count(), 2);
        assert_eq!(state(&s, "ghost"), Some((2000, 1, vec!["t1=1".into()], 1)));
        // A removed node keeps its pods' accounting until they go, then its slot is reused.
        s.remove_node("a");
        assert_eq!(s.node_count(), 1);
        assert_eq!(state(&s, "a"), Some((500, 1, vec!["t2=1".into()], 1)));
        assert_eq!(s.unplace(&pod("t2", "p2", "").key).as_deref(), Some("a"));
        assert_eq!(state(&s, "a"), None);
        let slots = s.nodes.len();
        s.upsert_node(node("c"));
        assert_eq!(s.nodes.len(), slots, "the freed slot is reused");
        assert_eq!(state(&s, "c"), Some((0, 0, vec![], 0)));
        s.unplace(&pod("t1", "p1", "").key);
        s.unplace(&pod("t1", "p3", "").key);
        assert!(s.owners.is_empty(), "{:?}", s.owners);
        assert_eq!(s.unplace(&pod("t1", "p1", "").key), None);
        let mut names: Vec<&str> = s.node_names().collect();
        names.sort();
        assert_eq!(names, ["b", "c"]);
    }
}
