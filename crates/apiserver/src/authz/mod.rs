//! Authorization: tenancy-aware RBAC.
//!
//! Every tenant has its own Roles, ClusterRoles, RoleBindings and ClusterRoleBindings
//! (`rbac.authorization.k8s.io/v1`); a tenant's "cluster" roles and bindings reach only that
//! tenant's namespaces and cluster-scoped objects, because a request is only ever judged by
//! the policy of the tenant it resolved to. The system tenant's `system:masters` bypass RBAC,
//! as in Kubernetes.
//!
//! [`Authz`] keeps an in-memory [`rules::Policy`] per tenant, fed by watches of the four
//! kinds (like the CRD catalog), so a decision costs no store round trip. It also:
//! - refuses privilege escalation (a role granting what the writer does not hold, a binding
//!   to a role whose rights the writer does not hold) unless the writer has `escalate` /
//!   `bind`, through a registry [`Admission`] check;
//! - keeps aggregated ClusterRoles (`aggregationRule`) up to date, within their tenant;
//! - creates every tenant's default roles and bindings ([`bootstrap`]);
//! - answers the access reviews ([`reviews`]).
//!
//! Atoll's own components are system-tenant identities that act in every tenant without
//! being administrators. Node agents are judged by [`node`] restriction. The controllers
//! and the scheduler (the [`COMPONENT_GROUPS`]) are judged in another tenant by the system
//! tenant's ClusterRoleBindings that name one of their component groups, and by nothing
//! else: no RoleBinding (a namespace of the system tenant is not one of another tenant's),
//! no binding naming their user or any other group (so `system:authenticated`'s defaults,
//! say, never reach across tenants).

// Errors here are `Status` values on their way to the client, as in `http.rs`.
#![allow(clippy::result_large_err)]

pub mod bootstrap;
pub mod kinds;
pub mod node;
pub mod reviews;
pub mod rules;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use api::json::At;
use api::meta::Status;
use api::request::{RequestInfo, TenantScope, Verb};
use serde_json::{Value, json};

use self::kinds::{RBAC_GROUP, RbacKind};
use self::rules::{Attributes, Binding, ClusterRole, Decision, Policy, ResourceAttributes, Rule, UserRef};
use crate::http::User;
use crate::registry::{Admission, ListOptions, Registry, RegistryError, Scope};

/// The label Kubernetes puts on its default RBAC objects; Atoll's default objects carry it
/// too, so a tenant holding only them counts as empty.
pub const BOOTSTRAP_LABEL: &str = "kubernetes.io/bootstrapping";
pub const BOOTSTRAP_VALUE: &str = "rbac-defaults";

#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    #[error("the {0} kind is not registered")]
    Unregistered(&'static str),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// The system tenant's groups whose ClusterRoleBindings apply in every tenant (the
/// controllers' and the scheduler's identities, `pki::Component`).
pub const COMPONENT_GROUPS: [&str; 2] = [crate::pki::CONTROLLERS_USER, crate::pki::SCHEDULER_USER];

/// The component groups `user` is in, if it is a system-tenant identity.
fn component_groups(user: &User) -> Vec<String> {
    if user.tenant != api::request::SYSTEM_TENANT {
        return Vec::new();
    }
    user.groups.iter().filter(|g| COMPONENT_GROUPS.contains(&g.as_str())).cloned().collect()
}

/// Whether `user` may address tenants other than its own at all (its requests there are
/// then judged by [`Authz::authorize`]): system administrators, node agents and the
/// component identities.
pub fn reaches_other_tenants(user: &User) -> bool {
    user.is_system_admin() || node::node_of(user).is_some() || !component_groups(user).is_empty()
}

/// What the authorization stage grants a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grant {
    Allowed,
    /// Allowed if the named pod is bound to this node (node restriction): the pipeline
    /// reads it before acting, and refuses as it refuses any other request otherwise.
    IfPodOnNode(String),
    /// Allowed if a pod bound to this node in the namespace uses the named secret.
    IfSecretOfPodOnNode(String),
    /// Allowed if the named Action's pod is bound to this node (its `spec.nodeName`).
    IfActionOnNode(String),
}

/// The RBAC index of every tenant, and the registries it follows.
pub struct Authz {
    registries: [Arc<Registry>; 4],
    policies: RwLock<HashMap<String, Policy>>,
    /// Per kind: the store revision the index reflects.
    applied: [tokio::sync::watch::Sender<i64>; 4],
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata").and_then(|m| m.get(field)).and_then(Value::as_str)
}

fn revision_of(obj: &Value) -> Option<i64> {
    meta_str(obj, "resourceVersion").and_then(|r| r.parse().ok())
}

impl Authz {
    /// Loads every tenant's RBAC objects and follows them from then on.
    pub async fn start(registries: &BTreeMap<(String, String), Arc<Registry>>) -> Result<Arc<Authz>, AuthzError> {
        let get = |k: RbacKind| {
            registries
                .get(&(RBAC_GROUP.to_string(), k.resource().to_string()))
                .cloned()
                .ok_or(AuthzError::Unregistered(k.resource()))
        };
        let authz = Arc::new(Authz {
            registries: [
                get(RbacKind::Role)?,
                get(RbacKind::ClusterRole)?,
                get(RbacKind::RoleBinding)?,
                get(RbacKind::ClusterRoleBinding)?,
            ],
            policies: RwLock::default(),
            applied: std::array::from_fn(|_| tokio::sync::watch::channel(0).0),
        });
        for kind in RbacKind::ALL {
            let revision = authz.reload(kind).await?;
            let weak = Arc::downgrade(&authz);
            tokio::spawn(async move { Authz::follow(weak, kind, revision).await });
        }
        Ok(authz)
    }

    pub fn registry(&self, kind: RbacKind) -> &Arc<Registry> {
        &self.registries[kind.index()]
    }

    /// Replaces `kind`'s part of every tenant's policy with the stored state.
    async fn reload(self: &Arc<Self>, kind: RbacKind) -> Result<i64, RegistryError> {
        let all = Scope { tenant: None, namespace: None };
        let list = self.registry(kind).list(&all, &ListOptions::default()).await?;
        let revision = list.at("/metadata/resourceVersion").and_then(Value::as_str).and_then(|r| r.parse().ok());
        let revision = revision.unwrap_or(0);
        let mut touched = Vec::new();
        {
            let mut policies = self.policies.write().unwrap_or_else(|e| e.into_inner());
            for p in policies.values_mut() {
                match kind {
                    RbacKind::Role => p.roles.clear(),
                    RbacKind::ClusterRole => p.cluster_roles.clear(),
                    RbacKind::RoleBinding => p.role_bindings.clear(),
                    RbacKind::ClusterRoleBinding => p.cluster_role_bindings.clear(),
                }
            }
            for obj in list["items"].as_array().into_iter().flatten() {
                if let Some(t) = Self::apply(&mut policies, kind, obj, false) {
                    touched.push(t);
                }
            }
        }
        self.applied[kind.index()].send_replace(revision);
        if kind == RbacKind::ClusterRole {
            touched.dedup();
            for t in touched {
                self.aggregate_later(t);
            }
        }
        Ok(revision)
    }

    /// Applies one stored change to the index; returns the tenant it touched.
    fn apply(policies: &mut HashMap<String, Policy>, kind: RbacKind, obj: &Value, deleted: bool) -> Option<String> {
        let tenant = meta_str(obj, "tenant")?.to_string();
        let name = meta_str(obj, "name")?.to_string();
        let namespace = meta_str(obj, "namespace").unwrap_or("").to_string();
        let p = policies.entry(tenant.clone()).or_default();
        match (kind, deleted) {
            (RbacKind::Role, false) => {
                p.roles.entry(namespace).or_default().insert(name, Arc::new(Rule::list_from(obj)));
            }
            (RbacKind::Role, true) => {
                if let Some(m) = p.roles.get_mut(&namespace) {
                    m.remove(&name);
                    if m.is_empty() {
                        p.roles.remove(&namespace);
                    }
                }
            }
            (RbacKind::ClusterRole, false) => {
                let labels = obj
                    .at("/metadata/labels")
                    .and_then(Value::as_object)
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string())).collect())
                    .unwrap_or_default();
                let aggregation = obj.at("/aggregationRule/clusterRoleSelectors").and_then(Value::as_array).cloned();
                p.cluster_roles
                    .insert(name, ClusterRole { rules: Arc::new(Rule::list_from(obj)), labels, aggregation });
            }
            (RbacKind::ClusterRole, true) => {
                p.cluster_roles.remove(&name);
            }
            (RbacKind::RoleBinding, false) => {
                if let Some(b) = Binding::from_json(obj) {
                    p.role_bindings.entry(namespace).or_default().insert(name, b);
                }
            }
            (RbacKind::RoleBinding, true) => {
                if let Some(m) = p.role_bindings.get_mut(&namespace) {
                    m.remove(&name);
                    if m.is_empty() {
                        p.role_bindings.remove(&namespace);
                    }
                }
            }
            (RbacKind::ClusterRoleBinding, false) => {
                if let Some(b) = Binding::from_json(obj) {
                    p.cluster_role_bindings.insert(name, b);
                }
            }
            (RbacKind::ClusterRoleBinding, true) => {
                p.cluster_role_bindings.remove(&name);
            }
        }
        Some(tenant)
    }

    /// Follows `kind`'s changes, re-listing when the watch ends.
    async fn follow(authz: std::sync::Weak<Authz>, kind: RbacKind, mut revision: i64) {
        let mut delay = Duration::from_millis(100);
        loop {
            let Some(this) = authz.upgrade() else { return };
            let all = Scope { tenant: None, namespace: None };
            let opts = ListOptions { resource_version: Some(revision.to_string()), ..ListOptions::default() };
            let mut events = match this.registry(kind).watch(&all, &opts, true).await {
                Ok(rx) => rx,
                Err(e) => {
                    tracing::warn!(kind = kind.resource(), "watching RBAC objects: {e}");
                    drop(this);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    if let Some(this) = authz.upgrade() {
                        revision = this.reload(kind).await.unwrap_or(revision);
                    }
                    continue;
                }
            };
            drop(this);
            delay = Duration::from_millis(100);
            while let Some(event) = events.recv().await {
                let Some(this) = authz.upgrade() else { return };
                let object = event.object();
                let touched = match event.kind {
                    "ADDED" | "MODIFIED" | "DELETED" => {
                        let mut policies = this.policies.write().unwrap_or_else(|e| e.into_inner());
                        Self::apply(&mut policies, kind, &object, event.kind == "DELETED")
                    }
                    "ERROR" => break,
                    _ => None,
                };
                if let Some(rv) = revision_of(&object) {
                    revision = revision.max(rv);
                    this.applied[kind.index()].send_replace(revision);
                }
                if let (RbacKind::ClusterRole, Some(tenant)) = (kind, touched) {
                    this.aggregate_later(tenant);
                }
            }
            let Some(this) = authz.upgrade() else { return };
            match this.reload(kind).await {
                Ok(r) => revision = r,
                Err(e) => tracing::warn!(kind = kind.resource(), "reloading RBAC objects: {e}"),
            }
        }
    }

    /// Waits (briefly) until the index reflects `kind` at `revision`, so that a client who
    /// just wrote a role or binding is judged by it at once.
    pub async fn wait_for(&self, kind: RbacKind, revision: i64) {
        let mut rx = self.applied[kind.index()].subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|r| *r >= revision)).await;
    }

    /// Recomputes the aggregated ClusterRoles of `tenant` and writes those that changed.
    /// Only the tenant's own ClusterRoles are ever aggregated into its roles.
    fn aggregate_later(self: &Arc<Self>, tenant: String) {
        let wanted: Vec<(String, Vec<Rule>)> = {
            let policies = self.policies.read().unwrap_or_else(|e| e.into_inner());
            let Some(p) = policies.get(&tenant) else { return };
            aggregated_rules(p)
        };
        if wanted.is_empty() {
            return;
        }
        let registry = self.registry(RbacKind::ClusterRole).clone();
        tokio::spawn(async move {
            let scope = Scope { tenant: Some(tenant.clone()), namespace: None };
            for (name, rules) in wanted {
                let json_rules: Vec<Value> = rules.iter().map(Rule::to_json).collect();
                let result = registry
                    .mutate(&scope, &name, |obj| {
                        obj["rules"] = json!(json_rules);
                        Ok(())
                    })
                    .await;
                match result {
                    Ok(_) | Err(RegistryError::NotFound { .. }) => {}
                    Err(e) => tracing::warn!(tenant, name, "aggregating a ClusterRole: {e}"),
                }
            }
        });
    }

    /// Whether the index holds `tenant`'s ClusterRole or ClusterRoleBinding `name` (with
    /// exactly `subjects`, when given).
    fn holds(&self, tenant: &str, kind: RbacKind, name: &str, subjects: Option<&Value>) -> bool {
        let policies = self.policies.read().unwrap_or_else(|e| e.into_inner());
        let Some(p) = policies.get(tenant) else { return false };
        match kind {
            RbacKind::ClusterRole => p.cluster_roles.contains_key(name),
            RbacKind::ClusterRoleBinding => p.cluster_role_bindings.get(name).is_some_and(|b| {
                let want: Vec<rules::Subject> = subjects
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|s| rules::Subject::from_json(s, None))
                    .collect();
                subjects.is_none() || b.subjects == want
            }),
            _ => false,
        }
    }

    fn policy_decision(&self, tenant: &str, user: &UserRef, attrs: &Attributes) -> Decision {
        let policies = self.policies.read().unwrap_or_else(|e| e.into_inner());
        match policies.get(tenant) {
            Some(p) => p.authorize(user, attrs),
            None => Decision::Deny(String::new()),
        }
    }

    /// Decides `attrs` for `user` (who may be a subject under review) in `tenant`.
    pub fn decide(&self, user: &User, tenant: &str, attrs: &Attributes) -> Decision {
        if user.is_system_admin() {
            return Decision::Allow("system:masters of the system tenant".into());
        }
        // Another tenant's policy never applies (the tenant was resolved from the caller's
        // identity, and only system administrators and components reach beyond it).
        if tenant == user.tenant {
            let own = self.policy_decision(tenant, &UserRef { name: &user.name, groups: &user.groups }, attrs);
            if own.allowed() {
                return own;
            }
        }
        // As the pipeline decides (`authorize`): node restriction for node agents (a review
        // cannot name a field selector or read a pod, so it answers only what needs neither).
        if let Some(node) = node::node_of(user) {
            return match node::decide(node, Some(tenant), attrs, None) {
                node::Decision::Allow => Decision::Allow(format!("node restriction: node {node:?}")),
                _ => Decision::Deny(String::new()),
            };
        }
        if tenant != user.tenant && self.component_allows(user, attrs) {
            return Decision::Allow("a system tenant ClusterRoleBinding of a component group".into());
        }
        Decision::Deny(String::new())
    }

    /// The cross-tenant rule for the controllers and the scheduler: the system tenant's
    /// ClusterRoleBindings naming one of their component groups (see the module docs).
    fn component_allows(&self, user: &User, attrs: &Attributes) -> bool {
        let mut allowed = false;
        self.visit_component_rules(user, |rules| {
            allowed = rules.iter().any(|r| r.allows(attrs));
            allowed
        });
        allowed
    }

    fn visit_component_rules(&self, user: &User, mut f: impl FnMut(&[Rule]) -> bool) {
        let groups = component_groups(user);
        if groups.is_empty() {
            return;
        }
        let policies = self.policies.read().unwrap_or_else(|e| e.into_inner());
        let Some(system) = policies.get(api::request::SYSTEM_TENANT) else { return };
        // No user name (no User subject can match it) and no namespace (ClusterRoleBindings
        // only).
        let who = UserRef { name: "", groups: &groups };
        system.visit(&who, None, |_, _, rules| f(rules));
    }

    /// The pipeline's authorization stage: whether `user` may make the request `info` in
    /// `tenant` (`None`: every tenant, which only system administrators and components
    /// reach) with the request's `fieldSelector`, else a 403 worded as Kubernetes words
    /// it, naming nothing but the request itself.
    pub fn authorize(
        &self,
        user: &User,
        tenant: Option<&str>,
        info: &RequestInfo,
        field_selector: Option<&str>,
    ) -> Result<Grant, Status> {
        if user.is_system_admin() {
            return Ok(Grant::Allowed);
        }
        let attrs = attributes(info);
        // The caller's own tenant: its whole policy. Another tenant's policy never applies
        // (see `decide`).
        let own = tenant.is_some_and(|t| {
            t == user.tenant && {
                let policies = self.policies.read().unwrap_or_else(|e| e.into_inner());
                let who = UserRef { name: &user.name, groups: &user.groups };
                policies.get(t).is_some_and(|p| p.allows(&who, &attrs))
            }
        });
        if own {
            return Ok(Grant::Allowed);
        }
        if let Some(node) = node::node_of(user) {
            return match node::decide(node, tenant, &attrs, field_selector) {
                node::Decision::Allow => Ok(Grant::Allowed),
                node::Decision::IfPodOnNode(n) => Ok(Grant::IfPodOnNode(n)),
                node::Decision::IfSecretOfPodOnNode(n) => Ok(Grant::IfSecretOfPodOnNode(n)),
                node::Decision::IfActionOnNode(n) => Ok(Grant::IfActionOnNode(n)),
                node::Decision::Deny => Err(forbidden(&user.name, &attrs)),
            };
        }
        if tenant != Some(user.tenant.as_str()) && self.component_allows(user, &attrs) {
            return Ok(Grant::Allowed);
        }
        Err(forbidden(&user.name, &attrs))
    }

    /// Every rule that applies to `user` in `tenant` and `namespace`.
    pub fn rules_for(&self, user: &User, tenant: &str, namespace: Option<&str>) -> Vec<Rule> {
        if user.is_system_admin() {
            let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
            return vec![
                Rule { verbs: s(&["*"]), api_groups: s(&["*"]), resources: s(&["*"]), ..Rule::default() },
                Rule { verbs: s(&["*"]), non_resource_urls: s(&["*"]), ..Rule::default() },
            ];
        }
        if tenant != user.tenant {
            let mut out = Vec::new();
            self.visit_component_rules(user, |rules| {
                out.extend(rules.iter().cloned());
                false
            });
            return out;
        }
        let policies = self.policies.read().unwrap_or_else(|e| e.into_inner());
        let user = UserRef { name: &user.name, groups: &user.groups };
        policies.get(tenant).map(|p| p.rules_for(&user, namespace)).unwrap_or_default()
    }

    /// The check of the object a write leaves: for a node agent, node restriction's (its
    /// own Node, Lease and pods only); for a write of an RBAC object, the escalation check;
    /// `None` for other kinds and for system administrators.
    pub fn admission(
        self: &Arc<Self>,
        user: &User,
        tenant: Option<&str>,
        group: &str,
        resource: &str,
    ) -> Option<Admission> {
        if let Some(node) = node::node_of(user)
            && matches!(
                (group, resource),
                ("", "nodes" | "pods") | ("coordination.k8s.io", "leases") | ("atoll.io", "actions")
            )
        {
            let (node, resource) = (node.to_string(), resource.to_string());
            return Some(Admission(Arc::new(move |old: Option<&Value>, obj: &Value| {
                node::admit(&node, &resource, old, obj)
            })));
        }
        if group != RBAC_GROUP || user.is_system_admin() {
            return None;
        }
        let kind = RbacKind::of_resource(resource)?;
        let (authz, user, tenant) = (self.clone(), user.clone(), tenant.unwrap_or_default().to_string());
        Some(Admission(Arc::new(move |_: Option<&Value>, obj: &Value| {
            authz.check_escalation(&user, &tenant, kind, obj)
        })))
    }

    /// Kubernetes' escalation prevention: a role may grant only what its writer holds (in
    /// the role's namespace, or cluster-wide for a ClusterRole) unless the writer may
    /// `escalate` it; a binding may point only at a role whose every rule the writer holds
    /// (where the binding applies) unless the writer may `bind` it.
    fn check_escalation(&self, user: &User, tenant: &str, kind: RbacKind, obj: &Value) -> Result<(), String> {
        let name = meta_str(obj, "name").unwrap_or("");
        let namespace = meta_str(obj, "namespace").filter(|_| kind.namespaced());
        let may = |verb: &str, resource: &str, target: &str| {
            let attrs = Attributes::resource(verb, RBAC_GROUP, resource, None, namespace, Some(target));
            self.decide(user, tenant, &attrs).allowed()
        };
        let groups = format!("{:?}", user.groups);
        let wanted = if kind.is_binding() {
            let role_kind = obj.at("/roleRef/kind").and_then(Value::as_str).unwrap_or("");
            let role_name = obj.at("/roleRef/name").and_then(Value::as_str).unwrap_or("");
            let cluster = role_kind == "ClusterRole";
            if may("bind", if cluster { "clusterroles" } else { "roles" }, role_name) {
                return Ok(());
            }
            let policies = self.policies.read().unwrap_or_else(|e| e.into_inner());
            let rules = policies.get(tenant).and_then(|p| {
                if cluster {
                    p.cluster_roles.get(role_name).map(|r| r.rules.clone())
                } else {
                    p.roles.get(namespace.unwrap_or("")).and_then(|m| m.get(role_name)).cloned()
                }
            });
            match rules {
                Some(r) => r,
                None => {
                    return Err(format!(
                        "user {:?} (groups={groups}) is attempting to grant RBAC permissions not currently held: \
                         {role_kind} {role_name:?} not found",
                        user.name
                    ));
                }
            }
        } else {
            if may("escalate", kind.resource(), name) {
                return Ok(());
            }
            let mut rules = Rule::list_from(obj);
            // An aggregated ClusterRole grants what it selects, whatever it lists now.
            if kind == RbacKind::ClusterRole
                && let Some(selectors) = obj.at("/aggregationRule/clusterRoleSelectors").and_then(Value::as_array)
            {
                let policies = self.policies.read().unwrap_or_else(|e| e.into_inner());
                if let Some(p) = policies.get(tenant) {
                    rules.extend(selected_rules(p, name, selectors));
                }
            }
            Arc::new(rules)
        };
        let held = self.rules_for(user, tenant, namespace);
        let missing = rules::uncovered(&held, &wanted);
        if missing.is_empty() {
            return Ok(());
        }
        let listed: Vec<String> = missing.iter().map(Rule::describe).collect();
        Err(format!(
            "user {:?} (groups={groups}) is attempting to grant RBAC permissions not currently held:\n{}",
            user.name,
            listed.join("\n")
        ))
    }

    /// Deletes the default RBAC objects of a tenant that is going away.
    pub async fn forget_tenant(&self, tenant: &str) -> Result<(), RegistryError> {
        let scope = Scope { tenant: Some(tenant.to_string()), namespace: None };
        let selector = api::selector::LabelSelector::parse(&format!("{BOOTSTRAP_LABEL}={BOOTSTRAP_VALUE}"))
            .map_err(|e| RegistryError::Internal(e.to_string()))?;
        for kind in RbacKind::ALL {
            let registry = self.registry(kind);
            let opts = ListOptions { label_selector: selector.clone(), ..ListOptions::default() };
            let list = registry.list(&scope, &opts).await?;
            for item in list["items"].as_array().into_iter().flatten() {
                let item_scope = Scope {
                    tenant: Some(tenant.to_string()),
                    namespace: meta_str(item, "namespace").map(str::to_string),
                };
                match registry.delete(&item_scope, meta_str(item, "name").unwrap_or(""), &Default::default()).await {
                    Ok(_) | Err(RegistryError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

/// The rules of every ClusterRole of `p` (but `name`) that `selectors` select.
fn selected_rules(p: &Policy, name: &str, selectors: &[Value]) -> Vec<Rule> {
    let mut names: Vec<&String> = p
        .cluster_roles
        .iter()
        .filter(|(n, r)| *n != name && selectors.iter().any(|s| rules::selects(s, &r.labels)))
        .map(|(n, _)| n)
        .collect();
    // Sorted, so that every API server computes the same list.
    names.sort();
    let mut out: Vec<Rule> = Vec::new();
    for n in names {
        for r in p.cluster_roles[n].rules.iter() {
            if !out.contains(r) {
                out.push(r.clone());
            }
        }
    }
    out
}

/// Every aggregated ClusterRole of `p` whose stored rules differ from what it selects.
pub fn aggregated_rules(p: &Policy) -> Vec<(String, Vec<Rule>)> {
    let mut out = Vec::new();
    for (name, role) in &p.cluster_roles {
        let Some(selectors) = &role.aggregation else { continue };
        let rules = selected_rules(p, name, selectors);
        if *role.rules != rules {
            out.push((name.clone(), rules));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// A request's attributes as RBAC sees them.
pub fn attributes(info: &RequestInfo) -> Attributes {
    match info {
        RequestInfo::Resource(r) => Attributes::Resource(ResourceAttributes {
            verb: r.verb.as_str().to_string(),
            group: r.group.clone(),
            resource: r.resource.clone(),
            subresource: r.subresource.clone(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
        }),
        RequestInfo::NonResource { verb, path, .. } => {
            // Kubernetes authorizes HEAD as get.
            let verb = if verb == "head" { "get".to_string() } else { verb.clone() };
            Attributes::NonResource { verb, path: path.clone() }
        }
    }
}

/// Kubernetes' wording of a refusal.
pub fn forbidden(user: &str, attrs: &Attributes) -> Status {
    match attrs {
        Attributes::Resource(r) => {
            let resource = match &r.subresource {
                Some(sub) => format!("{}/{sub}", r.resource),
                None => r.resource.clone(),
            };
            Status::forbidden(
                user,
                &r.verb,
                &r.group,
                &resource,
                r.name.as_deref().unwrap_or(""),
                r.namespace.as_deref(),
            )
        }
        Attributes::NonResource { verb, path } => {
            Status::failure(403, "Forbidden", format!("forbidden: User {user:?} cannot {verb} path {path:?}"))
        }
    }
}

/// The tenant a request is judged in, for the authorization stage: as resolved by the
/// pipeline, `None` for every tenant.
pub fn request_tenant(scope: &TenantScope, user: &User) -> Option<String> {
    match scope {
        TenantScope::Caller => Some(user.tenant.clone()),
        TenantScope::Named(t) => Some(t.clone()),
        TenantScope::All => None,
    }
}

/// Whether `verb` writes (for the pipeline's read-your-writes wait on the index).
pub fn writes(verb: Verb) -> bool {
    !matches!(verb, Verb::Get | Verb::List | Verb::Watch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(labels: &[(&str, &str)], rules: Vec<Rule>, selects: Option<Value>) -> ClusterRole {
        ClusterRole {
            rules: Arc::new(rules),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            aggregation: selects.map(|s| vec![s]),
        }
    }

    fn get(resource: &str) -> Rule {
        Rule {
            verbs: vec!["get".into()],
            api_groups: vec!["".into()],
            resources: vec![resource.into()],
            ..Rule::default()
        }
    }

    #[test]
    fn aggregation_unions_the_selected_roles_of_one_policy() {
        let label = "rbac.authorization.k8s.io/aggregate-to-view";
        let mut p = Policy::default();
        p.cluster_roles
            .insert("view".into(), role(&[], vec![get("stale")], Some(json!({"matchLabels": {label: "true"}}))));
        p.cluster_roles.insert("b".into(), role(&[(label, "true")], vec![get("pods"), get("configmaps")], None));
        p.cluster_roles.insert("a".into(), role(&[(label, "true")], vec![get("configmaps")], None));
        p.cluster_roles.insert("other".into(), role(&[(label, "false")], vec![get("secrets")], None));
        // Selected roles by name, rules without duplicates; unselected ones and the
        // role's own old rules are left out.
        assert_eq!(aggregated_rules(&p), vec![("view".to_string(), vec![get("configmaps"), get("pods")])]);
        p.cluster_roles.get_mut("view").unwrap().rules = Arc::new(vec![get("configmaps"), get("pods")]);
        assert!(aggregated_rules(&p).is_empty(), "an up-to-date role is not rewritten");
        // A policy holds one tenant: another tenant's labelled roles are simply not in it.
        let empty = Policy::default();
        assert!(aggregated_rules(&empty).is_empty());
    }
}
