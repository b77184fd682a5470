//! Nodes and pods as the scheduler sees them: read once from their JSON into plain structs,
//! so a decision compares integers and short strings, never JSON.

use std::collections::BTreeMap;
use std::sync::Arc;

use api::json::At;
use serde_json::Value;

use crate::quantity;

/// The scheduler name pods get when they name none.
pub const DEFAULT_SCHEDULER: &str = "default-scheduler";
/// Infrastructure pods of this tenant may share a node with any tenant.
pub const SYSTEM_TENANT: &str = "system";
/// The taint-like keys Kubernetes uses for unschedulable and not-ready nodes; a pod that
/// tolerates them may still land there (as DaemonSet pods do).
pub const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";
pub const NOT_READY_TAINT: &str = "node.kubernetes.io/not-ready";
/// The node lifecycle controller's taint for a node whose agent stopped reporting.
pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";

/// Scoring counts a pod that requests nothing as this much (Kubernetes' non-zero
/// defaults), so best-effort pods still spread.
pub const DEFAULT_CPU_MILLI: i64 = 100;
pub const DEFAULT_MEMORY: i64 = 200 << 20;

/// Amounts of resources: CPU in millicores, the rest in whole units.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu: i64,
    pub memory: i64,
    pub ephemeral: i64,
    /// Extended resources (`example.com/gpu`, `hugepages-2Mi`), sorted by name.
    pub extended: Vec<(Arc<str>, i64)>,
}

impl Resources {
    /// Reads a `{name: quantity}` map; unreadable quantities count as zero (the API server
    /// validates them).
    pub fn from_map(map: Option<&Value>) -> Resources {
        let mut r = Resources::default();
        for (name, q) in map.and_then(Value::as_object).into_iter().flatten() {
            let q = q.as_str().map(str::to_string).unwrap_or_else(|| q.to_string());
            match name.as_str() {
                "cpu" => r.cpu = quantity::cpu_milli(&q).unwrap_or(0),
                "memory" => r.memory = quantity::units(&q).unwrap_or(0),
                "ephemeral-storage" => r.ephemeral = quantity::units(&q).unwrap_or(0),
                "pods" => {}
                other if is_extended(other) => {
                    r.set_extended(other, quantity::units(&q).unwrap_or(0));
                }
                _ => {}
            }
        }
        r
    }

    pub fn extended(&self, name: &str) -> i64 {
        self.extended.binary_search_by(|(n, _)| (**n).cmp(name)).map(|i| self.extended[i].1).unwrap_or(0)
    }

    fn set_extended(&mut self, name: &str, value: i64) {
        match self.extended.binary_search_by(|(n, _)| (**n).cmp(name)) {
            Ok(i) => self.extended[i].1 = value,
            Err(i) => self.extended.insert(i, (name.into(), value)),
        }
    }

    /// `self += sign * other`.
    pub fn add(&mut self, other: &Resources, sign: i64) {
        self.cpu += sign * other.cpu;
        self.memory += sign * other.memory;
        self.ephemeral += sign * other.ephemeral;
        for (name, v) in &other.extended {
            let now = self.extended(name);
            self.set_extended(name, now + sign * v);
        }
    }

    /// The larger of each amount.
    fn max(&mut self, other: &Resources) {
        self.cpu = self.cpu.max(other.cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral = self.ephemeral.max(other.ephemeral);
        for (name, v) in &other.extended {
            let now = self.extended(name);
            self.set_extended(name, now.max(*v));
        }
    }
}

/// Extended resources are the ones in a domain (`vendor.com/thing`), plus huge pages.
fn is_extended(name: &str) -> bool {
    (name.contains('/') && !name.starts_with("kubernetes.io/")) || name.starts_with("hugepages-")
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect()
}

fn text(v: &Value, pointer: &str) -> String {
    v.at(pointer).and_then(Value::as_str).unwrap_or("").to_string()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Taint {
    pub key: String,
    pub value: String,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    pub effect: String,
}

/// A Node, as far as placement is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: Arc<str>,
    pub labels: BTreeMap<String, String>,
    pub allocatable: Resources,
    /// How many pods the node takes (`allocatable.pods`; none stated means none).
    pub max_pods: i64,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    /// The `Ready` condition is `True`.
    pub ready: bool,
}

impl Node {
    pub fn from_json(v: &Value) -> Option<Node> {
        let name = v.at("/metadata/name").and_then(Value::as_str).filter(|n| !n.is_empty())?;
        let status = v.get("status").unwrap_or(&Value::Null);
        // Allocatable is what the node offers pods; a node that reports only capacity
        // offers all of it.
        let alloc = status.get("allocatable").filter(|a| a.as_object().is_some_and(|m| !m.is_empty()));
        let alloc = alloc.or_else(|| status.get("capacity"));
        let max_pods =
            alloc.and_then(|a| a.get("pods")).map(|q| q.as_str().map(str::to_string).unwrap_or(q.to_string()));
        let taints = v
            .at("/spec/taints")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|t| Taint { key: text(t, "/key"), value: text(t, "/value"), effect: text(t, "/effect") })
            .collect();
        let ready = status
            .get("conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|c| c.get("type") == Some(&Value::from("Ready")) && c.get("status") == Some(&Value::from("True")));
        Some(Node {
            name: name.into(),
            labels: string_map(v.at("/metadata/labels")),
            allocatable: Resources::from_map(alloc),
            max_pods: max_pods.and_then(|q| quantity::units(&q)).unwrap_or(0),
            taints,
            unschedulable: v.at("/spec/unschedulable").and_then(Value::as_bool).unwrap_or(false),
            ready,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Toleration {
    /// Empty with `Exists`: every key.
    pub key: String,
    /// `Exists`, or `Equal` (the default).
    pub exists: bool,
    pub value: String,
    /// Empty: every effect.
    pub effect: String,
}

impl Toleration {
    pub fn tolerates(&self, t: &Taint) -> bool {
        (self.effect.is_empty() || self.effect == t.effect)
            && (self.key.is_empty() && self.exists || self.key == t.key)
            && (self.exists || self.value == t.value)
    }
}

/// One `matchExpressions` (labels) or `matchFields` (`metadata.name`) requirement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// True for `matchFields`: the key is a node field, not a label.
    pub field: bool,
    pub key: String,
    pub op: Op,
    pub values: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    In,
    NotIn,
    Exists,
    DoesNotExist,
    Gt,
    Lt,
    /// An operator we do not know: matches nothing, as in Kubernetes.
    Unknown,
}

impl Requirement {
    pub fn matches(&self, node: &Node) -> bool {
        let value = if self.field {
            (self.key == "metadata.name").then_some(&*node.name)
        } else {
            node.labels.get(&self.key).map(String::as_str)
        };
        let int = |s: &str| s.parse::<i64>().ok();
        match self.op {
            Op::In => value.is_some_and(|v| self.values.iter().any(|x| x == v)),
            Op::NotIn => value.is_none_or(|v| !self.values.iter().any(|x| x == v)),
            Op::Exists => value.is_some(),
            Op::DoesNotExist => value.is_none(),
            Op::Gt | Op::Lt => {
                let (Some(have), Some(want)) = (value.and_then(int), self.values.first().and_then(|w| int(w))) else {
                    return false;
                };
                if self.op == Op::Gt { have > want } else { have < want }
            }
            Op::Unknown => false,
        }
    }
}

/// A pod's key: tenant, namespace, name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodKey {
    pub tenant: Arc<str>,
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl std::fmt::Display for PodKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.tenant, self.namespace, self.name)
    }
}

/// A Pod, as far as placement is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub key: PodKey,
    pub uid: String,
    /// What the pod needs on a node: containers, init containers and overhead combined as
    /// Kubernetes counts them.
    pub requests: Resources,
    pub node_selector: BTreeMap<String, String>,
    /// Required node affinity: any term matches when all its requirements do. `None`: no
    /// affinity (every node matches); `Some(vec![])`: no term (no node matches).
    pub affinity: Option<Vec<Vec<Requirement>>>,
    pub tolerations: Vec<Toleration>,
    /// The uid of the controller (e.g. ReplicaSet) that owns the pod, for spreading.
    pub owner: Option<Arc<str>>,
    pub scheduler_name: String,
    pub node_name: Option<Arc<str>>,
    /// Succeeded or Failed: the pod no longer uses its node.
    pub terminal: bool,
    pub deleting: bool,
    /// Held by scheduling gates (`spec.schedulingGates`): not to be scheduled while any is left.
    pub gated: bool,
}

impl Pod {
    pub fn from_json(v: &Value) -> Option<Pod> {
        let meta = v.get("metadata")?;
        let s = |k: &str| meta.get(k).and_then(Value::as_str).filter(|x| !x.is_empty());
        let key = PodKey { tenant: s("tenant")?.into(), namespace: s("namespace")?.into(), name: s("name")?.into() };
        let spec = v.get("spec").unwrap_or(&Value::Null);
        let affinity = spec.at("/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution").map(|r| {
            r.get("nodeSelectorTerms").and_then(Value::as_array).into_iter().flatten().map(selector_term).collect()
        });
        let tolerations = spec
            .get("tolerations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|t| Toleration {
                key: text(t, "/key"),
                exists: t.get("operator").and_then(Value::as_str) == Some("Exists"),
                value: text(t, "/value"),
                effect: text(t, "/effect"),
            })
            .collect();
        let owner = meta
            .get("ownerReferences")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|o| o.get("controller").and_then(Value::as_bool) == Some(true))
            .and_then(|o| o.get("uid").and_then(Value::as_str))
            .map(Arc::from);
        let phase = v.at("/status/phase").and_then(Value::as_str).unwrap_or("");
        Some(Pod {
            key,
            uid: s("uid").unwrap_or("").to_string(),
            requests: pod_requests(spec),
            node_selector: string_map(spec.get("nodeSelector")),
            affinity,
            tolerations,
            owner,
            scheduler_name: spec
                .get("schedulerName")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .unwrap_or(DEFAULT_SCHEDULER)
                .to_string(),
            node_name: spec.get("nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()).map(Arc::from),
            terminal: matches!(phase, "Succeeded" | "Failed"),
            deleting: meta.get("deletionTimestamp").is_some_and(|t| !t.is_null()),
            gated: spec.get("schedulingGates").and_then(Value::as_array).is_some_and(|g| !g.is_empty()),
        })
    }

    pub fn tolerates(&self, taint: &Taint) -> bool {
        self.tolerations.iter().any(|t| t.tolerates(taint))
    }

    /// Whether the pod tolerates a condition Kubernetes expresses as a NoSchedule taint.
    pub fn tolerates_key(&self, key: &str) -> bool {
        self.tolerates(&Taint { key: key.into(), value: String::new(), effect: "NoSchedule".into() })
    }

    /// The requests scoring uses: zero CPU or memory counts as Kubernetes' defaults.
    pub fn scoring_requests(&self) -> (i64, i64) {
        let or = |v: i64, d: i64| if v == 0 { d } else { v };
        (or(self.requests.cpu, DEFAULT_CPU_MILLI), or(self.requests.memory, DEFAULT_MEMORY))
    }
}

fn selector_term(term: &Value) -> Vec<Requirement> {
    let mut out = Vec::new();
    for (list, field) in [("matchExpressions", false), ("matchFields", true)] {
        for e in term.get(list).and_then(Value::as_array).into_iter().flatten() {
            let op = match e.get("operator").and_then(Value::as_str).unwrap_or("") {
                "In" => Op::In,
                "NotIn" => Op::NotIn,
                "Exists" => Op::Exists,
                "DoesNotExist" => Op::DoesNotExist,
                "Gt" => Op::Gt,
                "Lt" => Op::Lt,
                _ => Op::Unknown,
            };
            let values = e
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            out.push(Requirement { field, key: text(e, "/key"), op, values });
        }
    }
    out
}

/// A container's requests; a resource with a limit but no request requests its limit
/// (what the API server's defaulting does in Kubernetes).
fn container_requests(c: &Value) -> Resources {
    let mut r = Resources::from_map(c.at("/resources/limits"));
    let requests = Resources::from_map(c.at("/resources/requests"));
    let stated = c.at("/resources/requests").and_then(Value::as_object);
    let has = |k: &str| stated.is_some_and(|m| m.contains_key(k));
    if has("cpu") {
        r.cpu = requests.cpu;
    }
    if has("memory") {
        r.memory = requests.memory;
    }
    if has("ephemeral-storage") {
        r.ephemeral = requests.ephemeral;
    }
    for (name, v) in &requests.extended {
        r.set_extended(name, *v);
    }
    r
}

/// What a pod needs, as Kubernetes counts it: the sum of its containers, or the peak of
/// its init phase if larger (each init container runs alone beside the restartable
/// "sidecar" init containers started before it; sidecars also run beside the
/// containers), plus the pod's overhead; a VM pod's machine counts as a container.
pub fn pod_requests(spec: &Value) -> Resources {
    let mut total = Resources::default();
    for c in spec.get("containers").and_then(Value::as_array).into_iter().flatten() {
        total.add(&container_requests(c), 1);
    }
    // A VM pod's machine counts like a container (its resources are the guest's); qemu's
    // own share is in `overhead`, which the API server sets (`api::vm`).
    if let Some(vm) = spec.get("virtualMachine").filter(|v| v.is_object()) {
        total.add(&container_requests(vm), 1);
    }
    let mut sidecars = Resources::default();
    let mut init_peak = Resources::default();
    for c in spec.get("initContainers").and_then(Value::as_array).into_iter().flatten() {
        let r = container_requests(c);
        if c.get("restartPolicy").and_then(Value::as_str) == Some("Always") {
            sidecars.add(&r, 1);
            init_peak.max(&sidecars);
        } else {
            let mut during = sidecars.clone();
            during.add(&r, 1);
            init_peak.max(&during);
        }
    }
    total.add(&sidecars, 1);
    total.max(&init_peak);
    total.add(&Resources::from_map(spec.get("overhead")), 1);
    total
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn requests_count_init_containers_sidecars_limits_and_overhead() {
        let spec = json!({
            "initContainers": [
                {"name": "big-init", "resources": {"requests": {"cpu": "2", "memory": "100Mi"}}},
                {"name": "sidecar", "restartPolicy": "Always", "resources": {"requests": {"cpu": "100m"}}},
                {"name": "late-init", "resources": {"requests": {"memory": "1Gi"}}},
            ],
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "200Mi"}}},
                // A limit without a request requests the limit.
                {"name": "b", "resources": {"limits": {"cpu": "250m", "example.com/gpu": "1"}}},
            ],
            "overhead": {"cpu": "10m"},
        });
        let r = pod_requests(&spec);
        // cpu: max(2000 during big-init, 750 containers + 100 sidecar) + 10 overhead.
        // memory: max(1Gi during late-init, 200Mi containers) = 1Gi.
        assert_eq!(r.cpu, 2010);
        assert_eq!(r.memory, 1 << 30);
        assert_eq!(r.extended("example.com/gpu"), 1);
    }

    #[test]
    fn tolerations_match_taints_as_kubernetes_does() {
        let taint = Taint { key: "k".into(), value: "v".into(), effect: "NoSchedule".into() };
        let tol = |key: &str, exists: bool, value: &str, effect: &str| Toleration {
            key: key.into(),
            exists,
            value: value.into(),
            effect: effect.into(),
        };
        assert!(tol("k", false, "v", "NoSchedule").tolerates(&taint));
        assert!(tol("k", false, "v", "").tolerates(&taint));
        assert!(tol("k", true, "", "").tolerates(&taint));
        assert!(tol("", true, "", "").tolerates(&taint));
        assert!(!tol("", false, "", "").tolerates(&taint));
        assert!(!tol("k", false, "w", "").tolerates(&taint));
        assert!(!tol("k", true, "", "NoExecute").tolerates(&taint));
    }
}
