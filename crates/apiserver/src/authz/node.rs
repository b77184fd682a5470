//! Node restriction: what a node agent may do, as Kubernetes' Node authorizer and
//! NodeRestriction admission decide it.
//!
//! A node agent is the system tenant's user `system:node:<node>` in the group
//! `system:nodes` (its client certificate says so). Across every tenant it may:
//! - get, create, update and patch its own Node (and the Node's `status`), and its own Lease
//!   (`kube-node-lease/<node>`), both in the system tenant;
//! - list and watch pods only with a field selector `spec.nodeName=<node>`;
//! - get and delete a pod, and update or patch its `status`, only if the pod is bound to
//!   it (the pipeline reads the pod before acting: [`Decision::IfPodOnNode`]);
//! - get a secret that a pod bound to it uses (volumes, env, envFrom, image pull
//!   secrets), in that pod's tenant and namespace ([`Decision::IfSecretOfPodOnNode`]);
//! - create events;
//! - list and watch Actions only with a field selector `spec.nodeName=<node>` (the server
//!   sets an Action's `spec.nodeName` from its pod at creation), and get an Action and
//!   update or patch its `status` only if it is bound to the node
//!   ([`Decision::IfActionOnNode`]).
//!
//! What it writes is checked as NodeRestriction admission checks it ([`admit`]): a node may
//! not set or change labels under `node-restriction.kubernetes.io/` (they are for
//! administrators to place workloads by, which a node must not be able to claim), nor
//! labels of the `kubernetes.io` and `k8s.io` domains beyond the ones a kubelet sets
//! itself (hostname, os, arch, instance type, topology, and the `kubelet.kubernetes.io/` and
//! `node.kubernetes.io/` prefixes; so no `node-role.kubernetes.io/` roles); and it may not
//! change its Node's taints after creating it.
//!
//! Nothing else, in any tenant: the system tenant's RBAC may grant a node more (discovery,
//! the self reviews), but only in the system tenant. A refusal is the same 403 whether the
//! object exists or not, so a node learns nothing of pods that are not its own.

use api::json::At;
use api::request::SYSTEM_TENANT;
use serde_json::Value;

use api::selector::FieldSelector;

use super::Grant;
use super::rules::{Attributes, ResourceAttributes};
use crate::http::User;
use crate::registry::{ListOptions, Registry, Scope};

/// The group every node agent's identity carries.
pub const NODES_GROUP: &str = "system:nodes";
/// A node agent's user name is this prefix and the node's name.
pub const NODE_USER_PREFIX: &str = "system:node:";
/// The namespace (system tenant) of the node heartbeat Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// The node `user` is the agent of, if it is one.
pub fn node_of(user: &User) -> Option<&str> {
    if user.tenant != SYSTEM_TENANT || !user.groups.iter().any(|g| g == NODES_GROUP) {
        return None;
    }
    user.name.strip_prefix(NODE_USER_PREFIX).filter(|n| !n.is_empty())
}

/// What node restriction says about one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
    /// Allowed if the named pod exists and `spec.nodeName` is this node.
    IfPodOnNode(String),
    /// Allowed if a pod bound to this node in the request's namespace uses the named secret.
    IfSecretOfPodOnNode(String),
    /// Allowed if the named Action exists and its `spec.nodeName` is this node.
    IfActionOnNode(String),
}

/// Whether a field selector holds the requirement `spec.nodeName=<node>` (a conjunction
/// with it selects only this node's pods, whatever else it says).
fn selects_node(field_selector: Option<&str>, node: &str) -> bool {
    field_selector.unwrap_or("").split(',').any(|term| {
        let term = term.trim();
        let value = term.strip_prefix("spec.nodeName==").or_else(|| term.strip_prefix("spec.nodeName="));
        value == Some(node)
    })
}

/// Decides a request of `node`'s agent in `tenant` (`None`: every tenant).
pub fn decide(node: &str, tenant: Option<&str>, attrs: &Attributes, field_selector: Option<&str>) -> Decision {
    let Attributes::Resource(r) = attrs else { return Decision::Deny };
    let ResourceAttributes { verb, group, resource, subresource, namespace, name } = r;
    let verb = verb.as_str();
    let sub = subresource.as_deref();
    let system = tenant == Some(SYSTEM_TENANT);
    let own = name.as_deref() == Some(node);
    let allowed = match (group.as_str(), resource.as_str()) {
        // Its own Node. A create names the object in its body, which admission checks.
        ("", "nodes") if system => match (verb, sub) {
            ("create", None) => name.is_none(),
            ("get" | "update" | "patch", None | Some("status")) => own,
            _ => false,
        },
        ("coordination.k8s.io", "leases") if system && namespace.as_deref() == Some(LEASE_NAMESPACE) => {
            match (verb, sub) {
                ("create", None) => name.is_none(),
                ("get" | "update" | "patch", None) => own,
                _ => false,
            }
        }
        ("", "pods") => match (verb, sub) {
            ("list" | "watch", None) => selects_node(field_selector, node),
            ("get" | "delete", None) | ("update" | "patch", Some("status")) if name.is_some() => {
                return Decision::IfPodOnNode(node.to_string());
            }
            _ => false,
        },
        ("", "secrets") if verb == "get" && sub.is_none() && name.is_some() && namespace.is_some() => {
            return Decision::IfSecretOfPodOnNode(node.to_string());
        }
        ("", "events") | ("events.k8s.io", "events") => verb == "create" && tenant.is_some(),
        ("atoll.io", "actions") => match (verb, sub) {
            ("list" | "watch", None) => selects_node(field_selector, node),
            ("get", None | Some("status")) | ("update" | "patch", Some("status")) if name.is_some() => {
                return Decision::IfActionOnNode(node.to_string());
            }
            _ => false,
        },
        _ => false,
    };
    if allowed { Decision::Allow } else { Decision::Deny }
}

/// NodeRestriction's check of the object a node writes (`old`: what it replaces, `None` on
/// create): a Node or Lease it creates or updates must be its own, a pod it updates must
/// stay bound to it, and its Node's protected labels and taints are not its to change.
pub fn admit(node: &str, resource: &str, old: Option<&Value>, obj: &Value) -> Result<(), String> {
    let name = obj.at("/metadata/name").and_then(Value::as_str).unwrap_or("");
    match resource {
        "nodes" | "leases" if name != node => Err(format!("node {node:?} may only write its own {resource}")),
        "pods" | "actions" if obj.at("/spec/nodeName").and_then(Value::as_str) != Some(node) => {
            Err(format!("node {node:?} may only write {resource} bound to it"))
        }
        "nodes" => admit_own_node(node, old, obj),
        _ => Ok(()),
    }
}

/// Labels a kubelet sets on its own Node, in the domains otherwise closed to nodes.
const KUBELET_LABELS: &[&str] = &[
    "kubernetes.io/hostname",
    "kubernetes.io/arch",
    "kubernetes.io/os",
    "beta.kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "failure-domain.beta.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
];

/// Whether a node may set (or change, or remove) the label `key` on its own Node.
fn node_may_label(key: &str) -> bool {
    let Some((prefix, _)) = key.split_once('/') else { return true };
    if prefix == "node-restriction.kubernetes.io" || prefix.ends_with(".node-restriction.kubernetes.io") {
        return false;
    }
    let kubernetes_domain =
        ["kubernetes.io", "k8s.io"].iter().any(|d| prefix == *d || prefix.ends_with(&format!(".{d}")));
    !kubernetes_domain
        || KUBELET_LABELS.contains(&key)
        || matches!(prefix, "kubelet.kubernetes.io" | "node.kubernetes.io")
        || prefix.ends_with(".kubelet.kubernetes.io")
        || prefix.ends_with(".node.kubernetes.io")
}

fn admit_own_node(node: &str, old: Option<&Value>, obj: &Value) -> Result<(), String> {
    let labels = |v: Option<&Value>| {
        v.and_then(|v| v.at("/metadata/labels")).and_then(Value::as_object).cloned().unwrap_or_default()
    };
    let (before, after) = (labels(old), labels(Some(obj)));
    let mut changed: Vec<&String> = after.keys().filter(|k| before.get(*k) != after.get(*k)).collect();
    changed.extend(before.keys().filter(|k| !after.contains_key(*k)));
    let mut forbidden: Vec<&str> = changed.into_iter().map(String::as_str).filter(|k| !node_may_label(k)).collect();
    if !forbidden.is_empty() {
        forbidden.sort_unstable();
        return Err(format!("node {node:?} is not allowed to modify labels: {}", forbidden.join(", ")));
    }
    if let Some(old) = old {
        let taints = |v: &Value| v.at("/spec/taints").filter(|t| !t.is_null()).cloned().unwrap_or(Value::Array(vec![]));
        if taints(old) != taints(obj) {
            return Err(format!("node {node:?} is not allowed to modify taints"));
        }
    }
    Ok(())
}

/// Whether `pod` is bound to `node`.
pub fn pod_on_node(pod: &Value, node: &str) -> bool {
    pod.at("/spec/nodeName").and_then(Value::as_str) == Some(node)
}

/// Whether `pod` uses the secret `name`: a volume, an env or envFrom reference of any
/// container (init and ephemeral ones too), or an image pull secret.
pub fn pod_uses_secret(pod: &Value, name: &str) -> bool {
    let is = |v: Option<&Value>| v.and_then(Value::as_str) == Some(name);
    let list = |v: &Value, field: &str| v.get(field).and_then(Value::as_array).cloned().unwrap_or_default();
    let spec = &pod["spec"];
    if list(spec, "imagePullSecrets").iter().any(|s| is(s.get("name"))) {
        return true;
    }
    // A VM pod's root password (`api::vm`), which its node hashes for the guest.
    if is(spec.at("/virtualMachine/passwordSecretRef/name")) {
        return true;
    }
    for volume in list(spec, "volumes") {
        if is(volume.at("/secret/secretName")) {
            return true;
        }
        let projected = list(&volume["projected"], "sources");
        if projected.iter().any(|s| is(s.at("/secret/name"))) {
            return true;
        }
    }
    ["containers", "initContainers", "ephemeralContainers"].iter().flat_map(|f| list(spec, f)).any(|c| {
        list(&c, "env").iter().any(|e| is(e.at("/valueFrom/secretKeyRef/name")))
            || list(&c, "envFrom").iter().any(|e| is(e.at("/secretRef/name")))
    })
}

/// Whether a conditional grant of node restriction holds for the object `name` in `scope`:
/// reads the pod, or this node's pods in the namespace, or the Action. `pods` is the pods'
/// registry, `target` the registry of the request's own kind.
pub async fn condition_holds(grant: &Grant, pods: &Registry, target: &Registry, scope: &Scope, name: &str) -> bool {
    match grant {
        Grant::Allowed => true,
        Grant::IfActionOnNode(node) => {
            let is_actions = target.info().group == "atoll.io" && target.info().resource == "actions";
            is_actions && target.get(scope, name).await.is_ok_and(|a| pod_on_node(&a, node))
        }
        Grant::IfPodOnNode(node) => pods.get(scope, name).await.is_ok_and(|pod| pod_on_node(&pod, node)),
        Grant::IfSecretOfPodOnNode(node) => {
            let Ok(field_selector) = FieldSelector::parse(&format!("spec.nodeName={node}")) else { return false };
            let opts = ListOptions { field_selector, ..ListOptions::default() };
            let Ok(list) = pods.list(scope, &opts).await else { return false };
            list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|pod| pod_on_node(pod, node) && pod_uses_secret(pod, name))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use Attributes as A;

    #[test]
    fn a_node_reaches_only_its_own_objects() {
        use Decision::*;
        let sys = Some("system");
        let a = Some("acme");
        let on = |d| d == IfPodOnNode("n1".into());
        let cases: Vec<(Attributes, Option<&str>, Option<&str>, Decision)> = vec![
            (A::resource("get", "", "nodes", None, None, Some("n1")), sys, None, Allow),
            (A::resource("patch", "", "nodes", Some("status"), None, Some("n1")), sys, None, Allow),
            (A::resource("update", "", "nodes", Some("status"), None, Some("n2")), sys, None, Deny),
            (A::resource("get", "", "nodes", None, None, Some("n1")), a, None, Deny),
            (A::resource("list", "", "nodes", None, None, None), sys, None, Deny),
            (A::resource("delete", "", "nodes", None, None, Some("n1")), sys, None, Deny),
            (A::resource("create", "", "nodes", None, None, None), sys, None, Allow),
            (
                A::resource("update", "coordination.k8s.io", "leases", None, Some(LEASE_NAMESPACE), Some("n1")),
                sys,
                None,
                Allow,
            ),
            (
                A::resource("get", "coordination.k8s.io", "leases", None, Some(LEASE_NAMESPACE), Some("n2")),
                sys,
                None,
                Deny,
            ),
            (A::resource("get", "coordination.k8s.io", "leases", None, Some("default"), Some("n1")), sys, None, Deny),
            (A::resource("list", "", "pods", None, None, None), None, Some("spec.nodeName=n1"), Allow),
            (
                A::resource("watch", "", "pods", None, Some("x"), None),
                a,
                Some("status.phase=Running,spec.nodeName==n1"),
                Allow,
            ),
            (A::resource("list", "", "pods", None, None, None), None, Some("spec.nodeName=n2"), Deny),
            (A::resource("list", "", "pods", None, None, None), None, Some("spec.nodeName!=n1"), Deny),
            (A::resource("list", "", "pods", None, None, None), None, None, Deny),
            (A::resource("create", "", "pods", None, Some("x"), None), a, None, Deny),
            (A::resource("update", "", "pods", None, Some("x"), Some("p")), a, None, Deny),
            (A::resource("deletecollection", "", "pods", None, Some("x"), None), a, None, Deny),
            (A::resource("create", "", "pods", Some("binding"), Some("x"), Some("p")), a, None, Deny),
            (A::resource("list", "", "secrets", None, Some("x"), None), a, None, Deny),
            (A::resource("get", "", "secrets", None, Some("x"), Some("s")), a, None, IfSecretOfPodOnNode("n1".into())),
            (A::resource("update", "", "secrets", None, Some("x"), Some("s")), a, None, Deny),
            (A::resource("list", "", "configmaps", None, None, None), sys, Some("spec.nodeName=n1"), Deny),
            (A::resource("create", "", "events", None, Some("x"), None), a, None, Allow),
            (A::resource("delete", "", "events", None, Some("x"), Some("e")), a, None, Deny),
            (A::resource("watch", "atoll.io", "actions", None, None, None), None, Some("spec.nodeName=n1"), Allow),
            (A::resource("list", "atoll.io", "actions", None, None, None), None, Some("spec.nodeName=n2"), Deny),
            (A::resource("list", "atoll.io", "actions", None, None, None), None, None, Deny),
            (
                A::resource("get", "atoll.io", "actions", None, Some("x"), Some("a")),
                a,
                None,
                IfActionOnNode("n1".into()),
            ),
            (
                A::resource("patch", "atoll.io", "actions", Some("status"), Some("x"), Some("a")),
                a,
                None,
                IfActionOnNode("n1".into()),
            ),
            (A::resource("update", "atoll.io", "actions", None, Some("x"), Some("a")), a, None, Deny),
            (A::resource("create", "atoll.io", "actions", None, Some("x"), None), a, None, Deny),
            (A::resource("delete", "atoll.io", "actions", None, Some("x"), Some("a")), a, None, Deny),
            (Attributes::NonResource { verb: "get".into(), path: "/api".into() }, sys, None, Deny),
        ];
        for (attrs, tenant, fields, want) in cases {
            assert_eq!(decide("n1", tenant, &attrs, fields), want, "{attrs:?} in {tenant:?} with {fields:?}");
        }
        for attrs in [
            A::resource("get", "", "pods", None, Some("x"), Some("p")),
            A::resource("delete", "", "pods", None, Some("x"), Some("p")),
            A::resource("update", "", "pods", Some("status"), Some("x"), Some("p")),
            A::resource("patch", "", "pods", Some("status"), Some("x"), Some("p")),
        ] {
            assert!(on(decide("n1", a, &attrs, None)), "{attrs:?}");
        }
    }

    #[test]
    fn secrets_a_pod_uses() {
        let pod = serde_json::json!({"spec": {
            "imagePullSecrets": [{"name": "pull"}],
            "virtualMachine": {"passwordSecretRef": {"name": "vmpw", "key": "k"}},
            "volumes": [{"name": "v", "secret": {"secretName": "vol"}},
                        {"name": "p", "projected": {"sources": [{"secret": {"name": "proj"}}]}}],
            "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "from"}}]}],
            "containers": [{"name": "c", "env": [{"name": "E", "valueFrom": {"secretKeyRef": {"name": "key", "key": "k"}}},
                                                {"name": "F", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}}]}],
        }});
        for used in ["pull", "vol", "proj", "from", "key", "vmpw"] {
            assert!(pod_uses_secret(&pod, used), "{used}");
        }
        for unused in ["cm", "v", "c", ""] {
            assert!(!pod_uses_secret(&pod, unused), "{unused}");
        }
    }

    #[test]
    fn admission_keeps_a_node_to_its_own_objects() {
        let named = |n: &str| serde_json::json!({"metadata": {"name": n}, "spec": {"nodeName": n}});
        assert!(admit("n1", "nodes", None, &named("n1")).is_ok());
        assert!(admit("n1", "nodes", None, &named("n2")).is_err());
        assert!(admit("n1", "leases", None, &named("n2")).is_err());
        assert!(admit("n1", "pods", Some(&named("n1")), &named("n1")).is_ok());
        assert!(admit("n1", "pods", Some(&named("n1")), &named("n2")).is_err());
        assert!(admit("n1", "events", None, &named("anything")).is_ok());
        assert!(admit("n1", "actions", None, &named("n1")).is_ok());
        assert!(admit("n1", "actions", None, &named("n2")).is_err());
    }

    #[test]
    fn a_node_keeps_off_protected_labels_and_its_taints() {
        let node = |labels: serde_json::Value, taints: serde_json::Value| serde_json::json!({"metadata": {"name": "n1", "labels": labels}, "spec": {"taints": taints}});
        let none = serde_json::json!([]);
        let own = serde_json::json!({"kubernetes.io/hostname": "n1", "kubernetes.io/os": "linux",
            "topology.kubernetes.io/zone": "z", "node.kubernetes.io/exclude-from-external-load-balancers": "",
            "kubelet.kubernetes.io/x": "1", "example.com/rack": "r1", "plain": "yes"});
        let base = node(own.clone(), none.clone());
        // What a kubelet sets itself, at registration and later.
        assert!(admit("n1", "nodes", None, &base).is_ok());
        // Taints at registration are the node's to choose.
        let tainted = node(own.clone(), serde_json::json!([{"key": "k", "effect": "NoSchedule"}]));
        assert!(admit("n1", "nodes", None, &tainted).is_ok());
        let mut relabelled = own.clone();
        relabelled["example.com/rack"] = "r2".into();
        relabelled["new"] = "label".into();
        assert!(admit("n1", "nodes", Some(&base), &node(relabelled, none.clone())).is_ok());
        for key in [
            "node-restriction.kubernetes.io/trusted",
            "a.node-restriction.kubernetes.io/x",
            "node-role.kubernetes.io/control-plane",
            "kubernetes.io/role",
            "k8s.io/anything",
            "example.k8s.io/x",
        ] {
            let mut labels = own.clone();
            labels[key] = "x".into();
            let e = admit("n1", "nodes", None, &node(labels.clone(), none.clone())).unwrap_err();
            assert!(e.contains(key), "{key}: {e}");
            // Set by an administrator: the node may neither change nor remove it.
            let held = node(labels.clone(), none.clone());
            labels[key] = "y".into();
            assert!(admit("n1", "nodes", Some(&held), &node(labels.clone(), none.clone())).is_err(), "{key}");
            labels.as_object_mut().unwrap().remove(key);
            assert!(admit("n1", "nodes", Some(&held), &node(labels, none.clone())).is_err(), "{key}");
            // Untouched, it does not stand in the way of other changes.
            let mut other = held.clone();
            other["metadata"]["labels"]["plain"] = "changed".into();
            assert!(admit("n1", "nodes", Some(&held), &other).is_ok(), "{key}");
        }
        // Taints, once the Node exists, are not the node's to change (nor to drop).
        assert!(admit("n1", "nodes", Some(&base), &tainted).unwrap_err().contains("taints"));
        assert!(admit("n1", "nodes", Some(&tainted), &base).unwrap_err().contains("taints"));
        let mut no_field = base.clone();
        no_field["spec"].as_object_mut().unwrap().remove("taints");
        assert!(admit("n1", "nodes", Some(&base), &no_field).is_ok(), "no taints either way");
    }

    #[test]
    fn only_system_tenant_node_identities_are_nodes() {
        let user = |name: &str, group: &str, tenant: &str| User {
            name: name.into(),
            groups: vec![group.into()],
            tenant: tenant.into(),
        };
        assert_eq!(node_of(&user("system:node:n1", NODES_GROUP, "system")), Some("n1"));
        assert_eq!(node_of(&user("system:node:n1", NODES_GROUP, "acme")), None);
        assert_eq!(node_of(&user("system:node:n1", "system:authenticated", "system")), None);
        assert_eq!(node_of(&user("system:node:", NODES_GROUP, "system")), None);
        assert_eq!(node_of(&user("alice", NODES_GROUP, "system")), None);
    }
}
