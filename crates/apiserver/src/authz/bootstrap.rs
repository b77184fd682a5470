//! Every tenant's default RBAC objects, as Kubernetes bootstraps them for a cluster:
//! `cluster-admin`, `admin`, `edit`, `view` (the last three aggregated from the
//! `system:aggregate-to-*` roles), `system:discovery` and `system:basic-user` bound to
//! `system:authenticated`, and a binding of `cluster-admin` to the tenant's administrators
//! (`Tenant.spec.admins`; in the system tenant, the `system:masters` group). The system
//! tenant also holds the roles of Atoll's controllers and scheduler ([`component_roles`]).
//!
//! The server creates them for the system tenant at start and for a tenant when its
//! Tenant is written; this module is the one place that knows them, so that the tenant
//! controller can take the job over by calling [`ensure_tenant`].

use serde_json::{Value, json};

use super::kinds::{RBAC_GROUP, RbacKind};
use super::{Authz, BOOTSTRAP_LABEL, BOOTSTRAP_VALUE};
use crate::registry::{RegistryError, Scope};

/// The ClusterRoleBinding of `cluster-admin` to a tenant's `spec.admins`.
pub const TENANT_ADMINS_BINDING: &str = "atoll:tenant-admins";

const AGGREGATE_TO: &str = "rbac.authorization.k8s.io/aggregate-to-";

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": groups, "resources": resources})
}

/// A rule of the RBAC group limited to the named objects.
fn named(verbs: &[&str], resources: &[&str], names: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": [RBAC_GROUP], "resources": resources, "resourceNames": names})
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];

fn cluster_role(name: &str, labels: &[(&str, &str)], rules: Vec<Value>, aggregate_from: Option<&str>) -> Value {
    let mut all_labels = serde_json::Map::new();
    all_labels.insert(BOOTSTRAP_LABEL.into(), json!(BOOTSTRAP_VALUE));
    for (k, v) in labels {
        all_labels.insert(k.to_string(), json!(v));
    }
    let mut role = json!({
        "apiVersion": format!("{RBAC_GROUP}/v1"), "kind": "ClusterRole",
        "metadata": {"name": name, "labels": all_labels,
                     "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
        "rules": rules,
    });
    if let Some(target) = aggregate_from {
        role["aggregationRule"] =
            json!({"clusterRoleSelectors": [{"matchLabels": {format!("{AGGREGATE_TO}{target}"): "true"}}]});
    }
    role
}

fn binding(name: &str, role: &str, subjects: Vec<Value>) -> Value {
    json!({
        "apiVersion": format!("{RBAC_GROUP}/v1"), "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": {BOOTSTRAP_LABEL: BOOTSTRAP_VALUE},
                     "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    })
}

fn group(name: &str) -> Value {
    json!({"kind": "Group", "apiGroup": RBAC_GROUP, "name": name})
}

/// The rules of the `system:aggregate-to-{view,edit,admin}` roles, over Atoll's kinds.
fn aggregate_rules(level: &str) -> Vec<Value> {
    match level {
        "view" => vec![
            rule(
                READ,
                &[""],
                &[
                    "configmaps",
                    "events",
                    "namespaces",
                    "namespaces/status",
                    "pods",
                    "pods/log",
                    "pods/status",
                    "serviceaccounts",
                    "services",
                    "services/status",
                ],
            ),
            rule(
                READ,
                &["apps"],
                &[
                    "deployments",
                    "deployments/scale",
                    "deployments/status",
                    "replicasets",
                    "replicasets/scale",
                    "replicasets/status",
                ],
            ),
            rule(READ, &["events.k8s.io"], &["events"]),
            rule(READ, &["atoll.io"], &["actions", "actions/status"]),
        ],
        "edit" => vec![
            rule(
                WRITE,
                &[""],
                &[
                    "configmaps",
                    "events",
                    "pods",
                    "pods/exec",
                    "pods/attach",
                    "pods/portforward",
                    "secrets",
                    "serviceaccounts",
                    "services",
                ],
            ),
            rule(READ, &[""], &["secrets"]),
            rule(WRITE, &["apps"], &["deployments", "deployments/scale", "replicasets", "replicasets/scale"]),
            // Acting on pods (admission also wants `get` on the pod itself).
            rule(WRITE, &["atoll.io"], &["actions"]),
            rule(
                &["get", "list", "watch", "create", "delete", "deletecollection", "patch", "update"],
                &["coordination.k8s.io"],
                &["leases"],
            ),
        ],
        _ => vec![rule(
            &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
            &[RBAC_GROUP],
            &["roles", "rolebindings"],
        )],
    }
}

/// The system tenant's ClusterRoles of the controllers and the scheduler, each bound to
/// the component's group of the same name; through the component rule (`authz` module
/// docs) they apply in every tenant. Exactly what each component's code calls:
/// - controllers: the namespace and tenant controllers find every kind through discovery
///   in each tenant, and list and delete every object of a namespace or tenant being
///   deleted (Kubernetes' namespace controller holds the same `*` read and delete); the
///   tenant controller creates `default` namespaces and drops its finalizer from Tenants;
///   the namespace controller finalizes namespaces; the service-account controller
///   creates `default` ServiceAccounts. Events for what they do.
/// - scheduler: reads nodes, pods and Tenants; binds pods, writes their status
///   (`PodScheduled`) and `FailedScheduling` events.
fn component_roles(discovery_urls: &[&str]) -> Vec<(&'static str, Vec<Value>)> {
    let discovery = json!({"verbs": ["get"], "nonResourceURLs": discovery_urls});
    let events = |verbs: &[&str]| vec![rule(verbs, &[""], &["events"]), rule(verbs, &["events.k8s.io"], &["events"])];
    let mut controllers = vec![
        rule(&["get", "list", "watch", "delete", "deletecollection"], &["*"], &["*"]),
        // The garbage collector edits the ownerReferences and finalizers of any kind; the
        // node lifecycle, workload and auth controllers write what they own.
        rule(&["update", "patch"], &["*"], &["*"]),
        rule(&["create"], &[""], &["namespaces", "serviceaccounts", "pods"]),
        rule(&["create"], &["apps"], &["replicasets"]),
        rule(&["create"], &[RBAC_GROUP], &["roles", "rolebindings", "clusterroles", "clusterrolebindings"]),
        // The auth-controller hands a namespace's creator a Role with every verb there, and
        // users the tenant-user ClusterRole: it may write and bind those two roles, by name,
        // and no other (so it can never bind cluster-admin, say).
        named(&["escalate", "bind"], &["roles"], &[api::rbac::NAMESPACE_OWNER]),
        named(&["escalate", "bind"], &["clusterroles"], &[api::rbac::TENANT_USER_ROLE]),
        rule(&["update"], &[""], &["namespaces/finalize"]),
        rule(&["update", "patch"], &["atoll.io"], &["tenants"]),
        discovery.clone(),
    ];
    controllers.extend(events(&["create", "patch", "update"]));
    let mut scheduler = vec![
        rule(READ, &[""], &["nodes", "pods"]),
        rule(READ, &["atoll.io"], &["tenants"]),
        rule(&["create"], &[""], &["pods/binding"]),
        rule(&["patch", "update"], &[""], &["pods/status"]),
        discovery,
    ];
    scheduler.extend(events(&["create", "patch", "update"]));
    vec![(crate::pki::CONTROLLERS_USER, controllers), (crate::pki::SCHEDULER_USER, scheduler)]
}

/// Appends `extra`'s rules to `rules`, without duplicates.
fn union(mut rules: Vec<Value>, extra: &[Value]) -> Vec<Value> {
    for r in extra {
        if !rules.contains(r) {
            rules.push(r.clone());
        }
    }
    rules
}

/// The default ClusterRoles and ClusterRoleBindings of a tenant whose administrators are
/// `admins` (users); the system tenant's administrators are the `system:masters` group.
pub fn defaults(tenant: &str, admins: &[String]) -> (Vec<Value>, Vec<Value>) {
    let agg = |level: &str| {
        cluster_role(
            &format!("system:aggregate-to-{level}"),
            &[(&format!("{AGGREGATE_TO}{level}"), "true")],
            aggregate_rules(level),
            None,
        )
    };
    // Aggregated roles start with the rules they will aggregate (in the aggregator's
    // order: selected roles by name), so they work at once and are not rewritten.
    let view_rules = aggregate_rules("view");
    let edit_rules = union(aggregate_rules("edit"), &view_rules);
    let admin_rules = union(edit_rules.clone(), &aggregate_rules("admin"));
    let everything = vec![
        json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}),
        json!({"verbs": ["*"], "nonResourceURLs": ["*"]}),
    ];
    let discovery_urls = [
        "/api",
        "/api/*",
        "/apis",
        "/apis/*",
        "/healthz",
        "/livez",
        "/openapi",
        "/openapi/*",
        "/readyz",
        "/version",
        "/version/",
    ];
    let roles = vec![
        cluster_role("cluster-admin", &[], everything, None),
        cluster_role("admin", &[], admin_rules, Some("admin")),
        cluster_role("edit", &[(&format!("{AGGREGATE_TO}admin"), "true")], edit_rules, Some("edit")),
        cluster_role("view", &[(&format!("{AGGREGATE_TO}edit"), "true")], view_rules, Some("view")),
        agg("admin"),
        agg("edit"),
        agg("view"),
        cluster_role("system:discovery", &[], vec![json!({"verbs": ["get"], "nonResourceURLs": discovery_urls})], None),
        cluster_role(
            "system:basic-user",
            &[],
            vec![
                rule(&["create"], &["authorization.k8s.io"], &["selfsubjectaccessreviews", "selfsubjectrulesreviews"]),
                rule(&["create"], &["authentication.k8s.io"], &["selfsubjectreviews"]),
            ],
            None,
        ),
    ];
    let mut roles = roles;
    let mut component_bindings = Vec::new();
    if tenant == api::request::SYSTEM_TENANT {
        for (name, rules) in component_roles(&discovery_urls) {
            roles.push(cluster_role(name, &[], rules, None));
            component_bindings.push(binding(name, name, vec![group(name)]));
        }
    }
    let admins: Vec<Value> = if tenant == api::request::SYSTEM_TENANT {
        vec![group(crate::pki::ADMIN_GROUP)]
    } else {
        admins.iter().map(|u| json!({"kind": "User", "apiGroup": RBAC_GROUP, "name": u})).collect()
    };
    let admin_binding_name =
        if tenant == api::request::SYSTEM_TENANT { "cluster-admin" } else { TENANT_ADMINS_BINDING };
    let bindings = vec![
        binding(admin_binding_name, "cluster-admin", admins),
        binding("system:discovery", "system:discovery", vec![group("system:authenticated")]),
        binding("system:basic-user", "system:basic-user", vec![group("system:authenticated")]),
    ];
    let bindings = bindings.into_iter().chain(component_bindings).collect();
    (roles, bindings)
}

/// The administrators a Tenant object names (`spec.admins`).
pub fn tenant_admins(tenant: &Value) -> Vec<String> {
    crate::registry::object::strings_at(tenant, "/spec/admins")
}

/// Creates whatever of `tenant`'s defaults is missing (a default someone changed is left
/// as it is), keeps the administrators' binding equal to `admins`, and waits until the
/// index reflects it.
pub async fn ensure_tenant(authz: &Authz, tenant: &str, admins: &[String]) -> Result<(), RegistryError> {
    let scope = Scope { tenant: Some(tenant.to_string()), namespace: None };
    let (roles, bindings) = defaults(tenant, admins);
    let mut written = [0i64; 4];
    for (kind, objects) in [(RbacKind::ClusterRole, roles), (RbacKind::ClusterRoleBinding, bindings)] {
        let registry = authz.registry(kind);
        for obj in objects {
            let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
            let is_admins = name == TENANT_ADMINS_BINDING;
            let subjects = obj["subjects"].clone();
            // What the index already holds needs no store round trip (a restart or a Tenant
            // update of a cluster with many tenants costs no failed creates).
            if authz.holds(tenant, kind, &name, is_admins.then_some(&subjects)) {
                continue;
            }
            let result = match registry.create(&scope, obj, false).await {
                Err(RegistryError::AlreadyExists { .. }) if is_admins => {
                    registry
                        .mutate(&scope, &name, |b| {
                            b["subjects"] = subjects.clone();
                            Ok(())
                        })
                        .await
                }
                other => other,
            };
            match result {
                Ok(obj) => {
                    let rv = super::revision_of(&obj).unwrap_or(0);
                    written[kind.index()] = written[kind.index()].max(rv);
                }
                Err(RegistryError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    for kind in RbacKind::ALL {
        if written[kind.index()] > 0 {
            authz.wait_for(kind, written[kind.index()]).await;
        }
    }
    Ok(())
}
