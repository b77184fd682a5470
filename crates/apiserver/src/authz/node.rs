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
//! Nothing else, in any tenant: the system tenant's RBAC may grant a node more (discovery,
//! the self reviews), but only in the system tenant. A refusal is the same 403 whether the
//! object exists or not, so a node learns nothing of pods that are not its own.

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

/// NodeRestriction's check of the object a node writes: a Node or Lease it creates or
/// updates must be its own, and a pod it updates must stay bound to it.
pub fn admit(node: &str, resource: &str, obj: &Value) -> Result<(), String> {
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    match resource {
        "nodes" | "leases" if name != node => Err(format!("node {node:?} may only write its own {resource}")),
        "pods" | "actions" if obj.pointer("/spec/nodeName").and_then(Value::as_str) != Some(node) => {
            Err(format!("node {node:?} may only write {resource} bound to it"))
        }
        _ => Ok(()),
    }
}

/// Whether `pod` is bound to `node`.
pub fn pod_on_node(pod: &Value, node: &str) -> bool {
    pod.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)
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
    for volume in list(spec, "volumes") {
        if is(volume.pointer("/secret/secretName")) {
            return true;
        }
        let projected = list(&volume["projected"], "sources");
        if projected.iter().any(|s| is(s.pointer("/secret/name"))) {
            return true;
        }
    }
    ["containers", "initContainers", "ephemeralContainers"].iter().flat_map(|f| list(spec, f)).any(|c| {
        list(&c, "env").iter().any(|e| is(e.pointer("/valueFrom/secretKeyRef/name")))
            || list(&c, "envFrom").iter().any(|e| is(e.pointer("/secretRef/name")))
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

    fn req(
        verb: &str,
        group: &str,
        resource: &str,
        sub: Option<&str>,
        ns: Option<&str>,
        name: Option<&str>,
    ) -> Attributes {
        Attributes::Resource(ResourceAttributes {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: sub.map(str::to_string),
            namespace: ns.map(str::to_string),
            name: name.map(str::to_string),
        })
    }

    #[test]
    fn a_node_reaches_only_its_own_objects() {
        use Decision::*;
        let sys = Some("system");
        let a = Some("acme");
        let on = |d| d == IfPodOnNode("n1".into());
        let cases: Vec<(Attributes, Option<&str>, Option<&str>, Decision)> = vec![
            (req("get", "", "nodes", None, None, Some("n1")), sys, None, Allow),
            (req("patch", "", "nodes", Some("status"), None, Some("n1")), sys, None, Allow),
            (req("update", "", "nodes", Some("status"), None, Some("n2")), sys, None, Deny),
            (req("get", "", "nodes", None, None, Some("n1")), a, None, Deny),
            (req("list", "", "nodes", None, None, None), sys, None, Deny),
            (req("delete", "", "nodes", None, None, Some("n1")), sys, None, Deny),
            (req("create", "", "nodes", None, None, None), sys, None, Allow),
            (req("update", "coordination.k8s.io", "leases", None, Some(LEASE_NAMESPACE), Some("n1")), sys, None, Allow),
            (req("get", "coordination.k8s.io", "leases", None, Some(LEASE_NAMESPACE), Some("n2")), sys, None, Deny),
            (req("get", "coordination.k8s.io", "leases", None, Some("default"), Some("n1")), sys, None, Deny),
            (req("list", "", "pods", None, None, None), None, Some("spec.nodeName=n1"), Allow),
            (req("watch", "", "pods", None, Some("x"), None), a, Some("status.phase=Running,spec.nodeName==n1"), Allow),
            (req("list", "", "pods", None, None, None), None, Some("spec.nodeName=n2"), Deny),
            (req("list", "", "pods", None, None, None), None, Some("spec.nodeName!=n1"), Deny),
            (req("list", "", "pods", None, None, None), None, None, Deny),
            (req("create", "", "pods", None, Some("x"), None), a, None, Deny),
            (req("update", "", "pods", None, Some("x"), Some("p")), a, None, Deny),
            (req("deletecollection", "", "pods", None, Some("x"), None), a, None, Deny),
            (req("create", "", "pods", Some("binding"), Some("x"), Some("p")), a, None, Deny),
            (req("list", "", "secrets", None, Some("x"), None), a, None, Deny),
            (req("get", "", "secrets", None, Some("x"), Some("s")), a, None, IfSecretOfPodOnNode("n1".into())),
            (req("update", "", "secrets", None, Some("x"), Some("s")), a, None, Deny),
            (req("list", "", "configmaps", None, None, None), sys, Some("spec.nodeName=n1"), Deny),
            (req("create", "", "events", None, Some("x"), None), a, None, Allow),
            (req("delete", "", "events", None, Some("x"), Some("e")), a, None, Deny),
            (req("watch", "atoll.io", "actions", None, None, None), None, Some("spec.nodeName=n1"), Allow),
            (req("list", "atoll.io", "actions", None, None, None), None, Some("spec.nodeName=n2"), Deny),
            (req("list", "atoll.io", "actions", None, None, None), None, None, Deny),
            (req("get", "atoll.io", "actions", None, Some("x"), Some("a")), a, None, IfActionOnNode("n1".into())),
            (
                req("patch", "atoll.io", "actions", Some("status"), Some("x"), Some("a")),
                a,
                None,
                IfActionOnNode("n1".into()),
            ),
            (req("update", "atoll.io", "actions", None, Some("x"), Some("a")), a, None, Deny),
            (req("create", "atoll.io", "actions", None, Some("x"), None), a, None, Deny),
            (req("delete", "atoll.io", "actions", None, Some("x"), Some("a")), a, None, Deny),
            (Attributes::NonResource { verb: "get".into(), path: "/api".into() }, sys, None, Deny),
        ];
        for (attrs, tenant, fields, want) in cases {
            assert_eq!(decide("n1", tenant, &attrs, fields), want, "{attrs:?} in {tenant:?} with {fields:?}");
        }
        for attrs in [
            req("get", "", "pods", None, Some("x"), Some("p")),
            req("delete", "", "pods", None, Some("x"), Some("p")),
            req("update", "", "pods", Some("status"), Some("x"), Some("p")),
            req("patch", "", "pods", Some("status"), Some("x"), Some("p")),
        ] {
            assert!(on(decide("n1", a, &attrs, None)), "{attrs:?}");
        }
    }

    #[test]
    fn secrets_a_pod_uses() {
        let pod = serde_json::json!({"spec": {
            "imagePullSecrets": [{"name": "pull"}],
            "volumes": [{"name": "v", "secret": {"secretName": "vol"}},
                        {"name": "p", "projected": {"sources": [{"secret": {"name": "proj"}}]}}],
            "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "from"}}]}],
            "containers": [{"name": "c", "env": [{"name": "E", "valueFrom": {"secretKeyRef": {"name": "key", "key": "k"}}},
                                                {"name": "F", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}}]}],
        }});
        for used in ["pull", "vol", "proj", "from", "key"] {
            assert!(pod_uses_secret(&pod, used), "{used}");
        }
        for unused in ["cm", "v", "c", ""] {
            assert!(!pod_uses_secret(&pod, unused), "{unused}");
        }
    }

    #[test]
    fn admission_keeps_a_node_to_its_own_objects() {
        let named = |n: &str| serde_json::json!({"metadata": {"name": n}, "spec": {"nodeName": n}});
        assert!(admit("n1", "nodes", &named("n1")).is_ok());
        assert!(admit("n1", "nodes", &named("n2")).is_err());
        assert!(admit("n1", "leases", &named("n2")).is_err());
        assert!(admit("n1", "pods", &named("n1")).is_ok());
        assert!(admit("n1", "pods", &named("n2")).is_err());
        assert!(admit("n1", "events", &named("anything")).is_ok());
        assert!(admit("n1", "actions", &named("n1")).is_ok());
        assert!(admit("n1", "actions", &named("n2")).is_err());
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
