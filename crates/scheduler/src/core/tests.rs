//! Decision tables: each case is a cluster, a pod and what the scheduler decides, in one
//! snapshot per table (`UPDATE_EXPECT=1 cargo test -p scheduler` rewrites them).

use std::sync::Arc;

use expect_test::{Expect, expect};
use serde_json::{Value, json};

use super::*;
use crate::model::{Node, Pod};

fn node(name: &str, cpu: &str, memory: &str, pods: u32) -> Value {
    json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {},
        "status": {
            "allocatable": {"cpu": cpu, "memory": memory, "pods": pods.to_string(), "ephemeral-storage": "10Gi"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    })
}

fn pod(name: &str, cpu: &str, memory: &str) -> Value {
    pod_in("acme", name, cpu, memory)
}

fn pod_in(tenant: &str, name: &str, cpu: &str, memory: &str) -> Value {
    let mut requests = serde_json::Map::new();
    if !cpu.is_empty() {
        requests.insert("cpu".into(), json!(cpu));
    }
    if !memory.is_empty() {
        requests.insert("memory".into(), json!(memory));
    }
    json!({
        "metadata": {"tenant": tenant, "namespace": "default", "name": name, "uid": format!("uid-{name}")},
        "spec": {"containers": [{"name": "c", "image": "busybox", "resources": {"requests": requests}}]},
    })
}

/// `v` with `patch` merged in (objects merge, everything else replaces).
fn with(mut v: Value, patch: Value) -> Value {
    fn merge(a: &mut Value, b: Value) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }
    merge(&mut v, patch);
    v
}

/// One node selector term of one expression.
fn term(key: &str, op: &str, values: &[&str]) -> Value {
    let expression = json!({"key": key, "operator": op, "values": values});
    json!([{"matchExpressions": [expression]}])
}

struct Cluster {
    snap: Snapshot,
}

impl Cluster {
    fn new(nodes: &[Value]) -> Cluster {
        let mut snap = Snapshot::new();
        for n in nodes {
            snap.upsert_node(Node::from_json(n).expect("a node"));
        }
        Cluster { snap }
    }
    fn placed(mut self, on: &str, pods: &[Value]) -> Cluster {
        for p in pods {
            self.snap.place(Arc::new(Pod::from_json(p).expect("a pod")), on.into());
        }
        self
    }
    fn exclusive(mut self, tenants: &[&str]) -> Cluster {
        self.snap.set_exclusive(tenants.iter().map(|t| Arc::from(*t)).collect());
        self
    }
    fn decide(&self, pod: &Value) -> String {
        match schedule(&self.snap, &Pod::from_json(pod).expect("a pod")) {
            Decision::Bind { node, .. } => format!("bind {node}"),
            Decision::Unschedulable(u) => u.to_string(),
            Decision::NotOurs(why) => format!("not ours: {why}"),
        }
    }
}

fn check(cases: &[(&str, &Cluster, Value)], expect: Expect) {
    let out: String = cases.iter().map(|(name, c, p)| format!("{name}: {}\n", c.decide(p))).collect();
    expect.assert_eq(&out);
}

#[test]
fn resources_fit() {
    let two = Cluster::new(&[node("small", "1", "1Gi", 110), node("big", "4", "8Gi", 110)]);
    let used = Cluster::new(&[node("small", "1", "1Gi", 110), node("big", "4", "8Gi", 110)])
        .placed("big", &[pod("a", "3500m", "1Gi")]);
    let one_pod = Cluster::new(&[node("tiny", "4", "8Gi", 1)]).placed("tiny", &[pod("a", "", "")]);
    let gpu = Cluster::new(&[
        node("plain", "4", "8Gi", 110),
        with(node("gpu", "4", "8Gi", 110), json!({"status": {"allocatable": {"example.com/gpu": "2"}}})),
    ]);
    let gpu_pod = |n: &str| {
        with(
            pod(n, "", ""),
            json!({"spec": {"containers": [{"name": "c", "image": "x",
                "resources": {"limits": {"example.com/gpu": n.len().to_string()}}}]}}),
        )
    };
    let init = with(
        pod("init", "100m", ""),
        json!({"spec": {"initContainers": [{"name": "i", "image": "x", "resources": {"requests": {"cpu": "3"}}}]}}),
    );
    let overhead = with(pod("overhead", "3900m", ""), json!({"spec": {"overhead": {"cpu": "200m"}}}));
    let disk = with(
        pod("disk", "", ""),
        json!({"spec": {"containers": [{"name": "c", "image": "x",
            "resources": {"requests": {"ephemeral-storage": "20Gi"}}}]}}),
    );
    check(
        &[
            ("fits the big node only", &two, pod("p", "2", "")),
            ("fits nowhere (cpu)", &two, pod("p", "8", "")),
            ("fits nowhere (cpu and memory)", &two, pod("p", "8", "16Gi")),
            ("bound pods use the big node", &used, pod("p", "1", "")),
            ("nothing left anywhere", &used, pod("p", "1500m", "")),
            ("pod count", &one_pod, pod("p", "", "")),
            ("extended resource", &gpu, gpu_pod("g")),
            ("too many gpus", &gpu, gpu_pod("ggg")),
            ("init container peak counts", &two, init),
            ("overhead counts", &two, overhead),
            ("ephemeral storage", &two, disk),
        ],
        expect![[r#"
            fits the big node only: bind big
            fits nowhere (cpu): 0/2 nodes are available: 2 Insufficient cpu.
            fits nowhere (cpu and memory): 0/2 nodes are available: 2 Insufficient cpu, 2 Insufficient memory.
            bound pods use the big node: bind small
            nothing left anywhere: 0/2 nodes are available: 2 Insufficient cpu.
            pod count: 0/1 nodes are available: 1 Too many pods.
            extended resource: bind gpu
            too many gpus: 0/2 nodes are available: 2 Insufficient example.com/gpu.
            init container peak counts: bind big
            overhead counts: 0/2 nodes are available: 2 Insufficient cpu.
            ephemeral storage: 0/2 nodes are available: 2 Insufficient ephemeral-storage.
        "#]],
    );
}

#[test]
fn selectors_and_affinity() {
    let labelled =
        |name: &str, labels: Value| with(node(name, "4", "8Gi", 110), json!({"metadata": {"labels": labels}}));
    let c = Cluster::new(&[
        labelled("ssd-1", json!({"disk": "ssd", "gen": "3"})),
        labelled("hdd-1", json!({"disk": "hdd", "gen": "5"})),
        labelled("bare", json!({})),
    ]);
    let selector = |sel: Value| with(pod("p", "", ""), json!({"spec": {"nodeSelector": sel}}));
    let affinity = |terms: Value| {
        with(
            pod("p", "", ""),
            json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": terms}}}}}),
        )
    };
    let expr = |key: &str, op: &str, values: &[&str]| term(key, op, values);
    check(
        &[
            ("nodeSelector", &c, selector(json!({"disk": "hdd"}))),
            ("nodeSelector nothing", &c, selector(json!({"disk": "nvme"}))),
            ("In", &c, affinity(expr("disk", "In", &["ssd", "nvme"]))),
            ("NotIn", &c, affinity(expr("disk", "NotIn", &["ssd", "hdd"]))),
            ("Exists", &c, affinity(expr("gen", "Exists", &[]))),
            ("DoesNotExist", &c, affinity(expr("disk", "DoesNotExist", &[]))),
            ("Gt", &c, affinity(expr("gen", "Gt", &["4"]))),
            ("Lt", &c, affinity(expr("gen", "Lt", &["4"]))),
            ("Gt nothing", &c, affinity(expr("gen", "Gt", &["9"]))),
            (
                "matchFields metadata.name",
                &c,
                affinity(json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["bare"]}]}])),
            ),
            (
                "terms are ORed",
                &c,
                affinity(json!([
                    {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["nvme"]}]},
                    {"matchExpressions": [{"key": "gen", "operator": "In", "values": ["5"]}]},
                ])),
            ),
            (
                "expressions are ANDed",
                &c,
                affinity(json!([{"matchExpressions": [
                    {"key": "disk", "operator": "In", "values": ["ssd"]},
                    {"key": "gen", "operator": "In", "values": ["5"]},
                ]}])),
            ),
            ("no terms match nothing", &c, affinity(json!([]))),
        ],
        expect![[r#"
            nodeSelector: bind hdd-1
            nodeSelector nothing: 0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector.
            In: bind ssd-1
            NotIn: bind bare
            Exists: bind ssd-1
            DoesNotExist: bind bare
            Gt: bind hdd-1
            Lt: bind ssd-1
            Gt nothing: 0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector.
            matchFields metadata.name: bind bare
            terms are ORed: bind hdd-1
            expressions are ANDed: 0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector.
            no terms match nothing: 0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector.
        "#]],
    );
}

#[test]
fn taints_readiness_and_ownership() {
    let tainted = |name: &str, key: &str, effect: &str| {
        with(node(name, "4", "8Gi", 110), json!({"spec": {"taints": [{"key": key, "value": "x", "effect": effect}]}}))
    };
    let taints = Cluster::new(&[tainted("gpu", "gpu", "NoSchedule"), tainted("drain", "drain", "NoExecute")]);
    let tolerate = |tols: Value| with(pod("p", "", ""), json!({"spec": {"tolerations": tols}}));
    let prefer = Cluster::new(&[tainted("a-soft", "soft", "PreferNoSchedule"), node("b-plain", "4", "8Gi", 110)]);
    let cordoned = Cluster::new(&[
        with(node("cordoned", "4", "8Gi", 110), json!({"spec": {"unschedulable": true}})),
        with(node("down", "4", "8Gi", 110), json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})),
        with(node("unknown", "4", "8Gi", 110), json!({"status": {"conditions": []}})),
    ]);
    // As the node lifecycle controller leaves a node whose agent went silent.
    let unreachable = Cluster::new(&[with(
        node("lost", "4", "8Gi", 110),
        json!({"spec": {"taints": [{"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"},
                                   {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]},
               "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}),
    )]);
    check(
        &[
            ("untolerated", &taints, pod("p", "", "")),
            ("tolerated by key and value", &taints, tolerate(json!([{"key": "gpu", "value": "x"}]))),
            (
                "tolerated by Exists",
                &taints,
                tolerate(json!([{"key": "drain", "operator": "Exists", "effect": "NoExecute"}])),
            ),
            ("wrong effect", &taints, tolerate(json!([{"key": "gpu", "operator": "Exists", "effect": "NoExecute"}]))),
            ("PreferNoSchedule only scores", &prefer, pod("p", "", "")),
            ("PreferNoSchedule tolerated", &prefer, tolerate(json!([{"key": "soft", "operator": "Exists"}]))),
            ("unschedulable and not ready", &cordoned, pod("p", "", "")),
            (
                "tolerating unschedulable",
                &cordoned,
                tolerate(json!([{"key": "node.kubernetes.io/unschedulable", "operator": "Exists"}])),
            ),
            ("unreachable", &unreachable, pod("p", "", "")),
            (
                "tolerating unreachable",
                &unreachable,
                tolerate(json!([{"key": "node.kubernetes.io/unreachable", "operator": "Exists"}])),
            ),
            ("already on a node", &taints, with(pod("p", "", ""), json!({"spec": {"nodeName": "gpu"}}))),
            ("another scheduler", &taints, with(pod("p", "", ""), json!({"spec": {"schedulerName": "other"}}))),
            (
                "being deleted",
                &taints,
                with(pod("p", "", ""), json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}})),
            ),
            ("no nodes", &Cluster::new(&[]), pod("p", "", "")),
        ],
        expect![[r#"
            untolerated: 0/2 nodes are available: 1 node(s) had untolerated taint {drain: x}, 1 node(s) had untolerated taint {gpu: x}.
            tolerated by key and value: bind gpu
            tolerated by Exists: bind drain
            wrong effect: 0/2 nodes are available: 1 node(s) had untolerated taint {drain: x}, 1 node(s) had untolerated taint {gpu: x}.
            PreferNoSchedule only scores: bind b-plain
            PreferNoSchedule tolerated: bind a-soft
            unschedulable and not ready: 0/3 nodes are available: 1 node(s) were unschedulable, 2 node(s) were not ready.
            tolerating unschedulable: bind cordoned
            unreachable: 0/1 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/unreachable: }.
            tolerating unreachable: bind lost
            already on a node: not ours: the pod is already on a node
            another scheduler: not ours: the pod names another scheduler
            being deleted: not ours: the pod is being deleted or has finished
            no nodes: 0/0 nodes are available.
        "#]],
    );
}

#[test]
fn tenant_exclusive_nodes() {
    let nodes = [node("n1", "4", "8Gi", 110), node("n2", "4", "8Gi", 110)];
    let shared = Cluster::new(&nodes).placed("n1", &[pod_in("beta", "b", "", "")]).exclusive(&["acme"]);
    let held = Cluster::new(&nodes).placed("n1", &[pod_in("acme", "a", "", "")]).exclusive(&["acme"]);
    let full = Cluster::new(&nodes)
        .placed("n1", &[pod_in("acme", "a", "", "")])
        .placed("n2", &[pod_in("gamma", "g", "", "")])
        .exclusive(&["acme"]);
    let taken = Cluster::new(&nodes)
        .placed("n1", &[pod_in("beta", "b", "", "")])
        .placed("n2", &[pod_in("gamma", "g", "", "")])
        .exclusive(&["acme"]);
    let own = Cluster::new(&nodes[..1]).placed("n1", &[pod_in("acme", "a", "", "")]).exclusive(&["acme"]);
    let system = Cluster::new(&nodes[..1]).placed("n1", &[pod_in("system", "dns", "", "")]).exclusive(&["acme"]);
    check(
        &[
            ("exclusive tenant avoids another tenant's node", &shared, pod_in("acme", "p", "", "")),
            ("others avoid the exclusive tenant's node", &held, pod_in("beta", "p", "", "")),
            ("the exclusive tenant may share with itself", &own, pod_in("acme", "p", "", "")),
            ("both ways at once", &full, pod_in("beta", "p", "", "")),
            ("the exclusive tenant goes to its own node", &full, pod_in("acme", "p", "", "")),
            ("every node has another tenant's pods", &taken, pod_in("acme", "p", "", "")),
            ("system pods share with anyone", &system, pod_in("acme", "p", "", "")),
            (
                "a non-exclusive tenant shares",
                &Cluster::new(&nodes[..1]).placed("n1", &[pod_in("beta", "b", "", "")]),
                pod_in("gamma", "p", "", ""),
            ),
        ],
        expect![[r#"
            exclusive tenant avoids another tenant's node: bind n2
            others avoid the exclusive tenant's node: bind n2
            the exclusive tenant may share with itself: bind n1
            both ways at once: bind n2
            the exclusive tenant goes to its own node: bind n1
            every node has another tenant's pods: 0/2 nodes are available: 2 node(s) didn't satisfy tenant isolation.
            system pods share with anyone: bind n1
            a non-exclusive tenant shares: bind n1
        "#]],
    );
}

#[test]
fn scores_spread_and_balance() {
    // Least allocated: the emptier node wins.
    let busy =
        Cluster::new(&[node("a", "4", "8Gi", 110), node("b", "4", "8Gi", 110)]).placed("a", &[pod("x", "2", "2Gi")]);
    // Balanced: a holds CPU, b memory; a pod heavy on one goes where the other is used.
    let balance = Cluster::new(&[node("a", "4", "4Gi", 110), node("b", "4", "4Gi", 110)])
        .placed("a", &[pod("x", "2", "")])
        .placed("b", &[pod("y", "", "2Gi")]);
    let owned = |name: &str| {
        with(pod(name, "", ""), json!({"metadata": {"ownerReferences": [{"uid": "rs-1", "controller": true}]}}))
    };
    // Spreading: the owner already has two pods on a, none on b; b is otherwise busier.
    let spread = Cluster::new(&[node("a", "4", "8Gi", 110), node("b", "4", "8Gi", 110)])
        .placed("a", &[owned("r1"), owned("r2")])
        .placed("b", &[pod("z", "1", "1Gi")]);
    check(
        &[
            ("least allocated", &busy, pod("p", "1", "1Gi")),
            ("balanced (memory-heavy pod)", &balance, pod("p", "100m", "1Gi")),
            ("balanced (cpu-heavy pod)", &balance, pod("p", "1", "")),
            ("spread a ReplicaSet", &spread, owned("r3")),
            ("no owner: least allocated", &spread, pod("q", "", "")),
        ],
        expect![[r#"
            least allocated: bind b
            balanced (memory-heavy pod): bind a
            balanced (cpu-heavy pod): bind b
            spread a ReplicaSet: bind b
            no owner: least allocated: bind a
        "#]],
    );
}

#[test]
fn equal_nodes_take_turns() {
    let mut c = Cluster::new(&[node("a", "4", "8Gi", 110), node("b", "4", "8Gi", 110), node("c", "4", "8Gi", 110)]);
    let mut chosen = Vec::new();
    for i in 0..6 {
        // Pods are not placed, so every node stays equal; only the rotation moves.
        match schedule(&c.snap, &Pod::from_json(&pod(&format!("p{i}"), "", "")).unwrap()) {
            Decision::Bind { node, examined } => {
                chosen.push(node.to_string());
                c.snap.advance(examined);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(chosen, ["a", "b", "c", "a", "b", "c"]);
}

#[test]
fn large_clusters_score_a_share_of_nodes() {
    assert_eq!(feasible_target(3), 3);
    assert_eq!(feasible_target(99), 99);
    assert_eq!(feasible_target(100), 100);
    assert_eq!(feasible_target(1000), 420);
    assert_eq!(feasible_target(5000), 500);
    assert_eq!(feasible_target(50_000), 2500);
    let nodes: Vec<Value> = (0..1000).map(|i| node(&format!("n{i}"), "4", "8Gi", 110)).collect();
    let c = Cluster::new(&nodes);
    match schedule(&c.snap, &Pod::from_json(&pod("p", "", "")).unwrap()) {
        Decision::Bind { examined, .. } => assert_eq!(examined, 420),
        other => panic!("{other:?}"),
    }
}

#[test]
fn multiplying_by_a_reciprocal_scores_as_integer_division_does() {
    for max in 1..=500u32 {
        let factor = Some(100.0 / f64::from(max));
        for count in 0..=max {
            assert_eq!(reverse_normalized(count, max, factor), i64::from(max - count) * 100 / i64::from(max));
        }
    }
    assert_eq!(reverse_normalized(0, 0, None), 100);
}
