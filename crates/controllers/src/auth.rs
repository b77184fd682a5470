//! The auth-controller, with the seeds' duties:
//! - a User gets a ClusterRoleBinding (`atoll:user:NAME`) to its tenant's ClusterRole
//!   `atoll:tenant-user`, which lets it get, create and delete namespaces and read the
//!   tenant's networks (`networks.atoll.io`, whether or not that kind is served yet: the rule
//!   follows networks as they come and go);
//! - a Namespace gets a Role `atoll:namespace-owner` (every verb on every resource in it) and
//!   a RoleBinding of it to the user who created it (the server records the creator in the
//!   `atoll.io/creator` annotation, and the User's uid in `atoll.io/creator-uid` when the
//!   creator was a User object: a later User of the same name is not bound);
//! - a deleted Namespace takes them along (they live in it: the namespace controller deletes
//!   them with everything else, and nothing is made in a terminating namespace);
//! - a deleted User (held by the `atoll.io/auth` finalizer) loses every binding subject that
//!   names it (a binding left without subjects is deleted) and its own binding; then the
//!   finalizer goes. Its tokens stop working as soon as it is terminating.
//!
//! Level-triggered, keyed by tenant: each pass compares the tenant's Users and Namespaces
//! with the objects this controller made (labelled `atoll.io/managed-by=auth-controller`) and
//! repairs the difference, so a restart or a missed event heals itself.

use api::json::At;
use async_trait::async_trait;
use client::{Client, DeleteParams, ListParams, Resource, Scope};
use serde_json::{Value, json};

use crate::cache::{Cache, ObjectKey};
use crate::controller::{Action, Controller, Reconciler};
use crate::serviceaccount::terminating;
use crate::watcher::{ApiSource, Watcher};

pub const MANAGED_BY: &str = "atoll.io/managed-by";
pub const MANAGER: &str = "auth-controller";
pub const FINALIZER: &str = "atoll.io/auth";
pub const TENANT_USER_ROLE: &str = api::rbac::TENANT_USER_ROLE;
pub const USER_BINDING_PREFIX: &str = "atoll:user:";
pub const NAMESPACE_OWNER: &str = api::rbac::NAMESPACE_OWNER;
pub const CREATOR: &str = "atoll.io/creator";
pub const CREATOR_UID: &str = "atoll.io/creator-uid";
const RBAC: &str = "rbac.authorization.k8s.io";

fn users() -> Resource {
    Resource::new("atoll.io", "v1", "users", false)
}
fn roles() -> Resource {
    Resource::new(RBAC, "v1", "roles", true)
}
fn role_bindings() -> Resource {
    Resource::new(RBAC, "v1", "rolebindings", true)
}
fn cluster_roles() -> Resource {
    Resource::new(RBAC, "v1", "clusterroles", false)
}
fn cluster_role_bindings() -> Resource {
    Resource::new(RBAC, "v1", "clusterrolebindings", false)
}

fn labels() -> Value {
    json!({ MANAGED_BY: MANAGER })
}

fn user_subject(name: &str) -> Value {
    json!({"kind": "User", "apiGroup": RBAC, "name": name})
}

fn text<'a>(obj: &'a Value, pointer: &str) -> Option<&'a str> {
    obj.at(pointer).and_then(Value::as_str)
}

fn annotation<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.at("/metadata/annotations").and_then(|a| a.get(key)).and_then(Value::as_str).filter(|s| !s.is_empty())
}

pub struct Auth {
    client: Client,
    users: Cache,
    namespaces: Cache,
    /// What this controller made (by label), of each RBAC kind.
    roles: Cache,
    role_bindings: Cache,
    cluster_roles: Cache,
    cluster_role_bindings: Cache,
}

/// The tenant's ClusterRole for its Users.
fn tenant_user_role() -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
    "metadata": {"name": TENANT_USER_ROLE, "labels": labels()},
    "rules": [
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "create", "delete"]},
        {"apiGroups": ["atoll.io"], "resources": ["networks"], "verbs": ["get", "list", "watch"]},
    ]})
}

fn user_binding(user: &str) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
           "metadata": {"name": format!("{USER_BINDING_PREFIX}{user}"), "labels": labels()},
           "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": TENANT_USER_ROLE},
           "subjects": [user_subject(user)]})
}

fn owner_role(ns: &str) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
           "metadata": {"name": NAMESPACE_OWNER, "namespace": ns, "labels": labels()},
           "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]})
}

fn owner_binding(ns: &str, user: &str) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
           "metadata": {"name": NAMESPACE_OWNER, "namespace": ns, "labels": labels()},
           "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": NAMESPACE_OWNER},
           "subjects": [user_subject(user)]})
}

/// Whether a binding's subjects are exactly one User `name`.
fn binds_only(binding: &Value, name: &str) -> bool {
    binding
        .get("subjects")
        .and_then(Value::as_array)
        .is_some_and(|s| s.len() == 1 && text(&s[0], "/kind") == Some("User") && text(&s[0], "/name") == Some(name))
}

/// Already there, or gone meanwhile (a namespace being deleted): nothing to do.
fn settled(e: &client::Error) -> bool {
    e.is_already_exists() || e.is_not_found() || e.code() == Some(409) || e.code() == Some(403)
}

impl Auth {
    fn in_tenant(cache: &Cache, tenant: &str) -> Vec<std::sync::Arc<Value>> {
        cache.list().into_iter().filter(|o| text(o, "/metadata/tenant") == Some(tenant)).collect()
    }

    async fn create(&self, resource: &Resource, scope: &Scope, obj: &Value) -> Result<(), client::Error> {
        match self.client.create(resource, scope, obj).await {
            Ok(_) => Ok(()),
            Err(e) if settled(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn delete(&self, resource: &Resource, scope: &Scope, name: &str) -> Result<(), client::Error> {
        match self.client.delete(resource, scope, name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Puts the finalizer on a live User, so its deletion waits for the clean-up.
    async fn hold(&self, tenant: &str, user: &Value) -> Result<(), client::Error> {
        let has =
            user.at("/metadata/finalizers").and_then(Value::as_array).is_some_and(|f| f.iter().any(|f| f == FINALIZER));
        if has {
            return Ok(());
        }
        let name = text(user, "/metadata/name").unwrap_or("");
        let mut current = match self.client.get(&users(), &Scope::tenant(tenant), name).await {
            Ok(u) => u,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        let finalizers = current["metadata"]
            .as_object_mut()
            .map(|m| m.entry("finalizers").or_insert_with(|| json!([])))
            .and_then(Value::as_array_mut);
        if let Some(list) = finalizers {
            list.push(json!(FINALIZER));
        }
        match self.client.replace(&users(), &Scope::tenant(tenant), name, &current).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() || e.is_conflict() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A deleted User: every subject naming it goes from the tenant's bindings, then the
    /// finalizer.
    async fn release(&self, tenant: &str, user: &Value) -> Result<(), client::Error> {
        let name = text(user, "/metadata/name").unwrap_or("").to_string();
        let scope = Scope::tenant(tenant);
        for resource in [role_bindings(), cluster_role_bindings()] {
            let list = self.client.list(&resource, &scope, &ListParams::default()).await?;
            for binding in &list.items {
                let Some(subjects) = binding.get("subjects").and_then(Value::as_array) else { continue };
                let kept: Vec<Value> = subjects
                    .iter()
                    .filter(|s| !(text(s, "/kind") == Some("User") && text(s, "/name") == Some(name.as_str())))
                    .cloned()
                    .collect();
                if kept.len() == subjects.len() {
                    continue;
                }
                let bname = text(binding, "/metadata/name").unwrap_or("").to_string();
                let bscope = match text(binding, "/metadata/namespace") {
                    Some(ns) => scope.clone().in_namespace(ns),
                    None => scope.clone(),
                };
                if kept.is_empty() {
                    self.delete(&resource, &bscope, &bname).await?;
                } else {
                    let mut changed = binding.clone();
                    changed["subjects"] = Value::Array(kept);
                    match self.client.replace(&resource, &bscope, &bname, &changed).await {
                        Ok(_) => {}
                        Err(e) if e.is_not_found() => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        let mut current = match self.client.get(&users(), &scope, &name).await {
            Ok(u) => u,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        if let Some(list) = current.pointer_mut("/metadata/finalizers").and_then(Value::as_array_mut) {
            list.retain(|f| f != FINALIZER);
        }
        match self.client.replace(&users(), &scope, &name, &current).await {
            Ok(_) => {
                tracing::info!(tenant, user = name, "removed a deleted user's bindings");
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl Reconciler for Auth {
    type Key = String;
    type Error = client::Error;

    fn name(&self) -> &'static str {
        "auth"
    }

    async fn reconcile(&self, tenant: &String) -> Result<Action, client::Error> {
        let scope = Scope::tenant(tenant);
        let users = Self::in_tenant(&self.users, tenant);
        // name → uid of the live Users.
        let mut live = std::collections::HashMap::new();
        for user in &users {
            let name = text(user, "/metadata/name").unwrap_or("").to_string();
            if terminating(user) {
                let ours = user
                    .at("/metadata/finalizers")
                    .and_then(Value::as_array)
                    .is_some_and(|f| f.iter().any(|f| f == FINALIZER));
                if ours {
                    self.release(tenant, user).await?;
                }
                continue;
            }
            self.hold(tenant, user).await?;
            live.insert(name, text(user, "/metadata/uid").unwrap_or("").to_string());
        }

        // Users: the tenant's ClusterRole, and one binding each; none for users gone.
        if !live.is_empty() && self.cluster_roles.get(&ObjectKey::new(tenant, None, TENANT_USER_ROLE)).is_none() {
            self.create(&cluster_roles(), &scope, &tenant_user_role()).await?;
        }
        for name in live.keys() {
            let key = ObjectKey::new(tenant, None, &format!("{USER_BINDING_PREFIX}{name}"));
            match self.cluster_role_bindings.get(&key) {
                Some(b) if binds_only(&b, name) => {}
                Some(_) => {
                    self.delete(&cluster_role_bindings(), &scope, &key.name).await?;
                    self.create(&cluster_role_bindings(), &scope, &user_binding(name)).await?;
                }
                None => self.create(&cluster_role_bindings(), &scope, &user_binding(name)).await?,
            }
        }
        for binding in Self::in_tenant(&self.cluster_role_bindings, tenant) {
            let name = text(&binding, "/metadata/name").unwrap_or("");
            if let Some(user) = name.strip_prefix(USER_BINDING_PREFIX)
                && !live.contains_key(user)
            {
                self.delete(&cluster_role_bindings(), &scope, name).await?;
            }
        }

        // Namespaces: the owner Role, bound to the creator while the creator is who it was.
        // A namespace nobody of the tenant created (the server's, the tenant controller's)
        // gets neither.
        for ns in Self::in_tenant(&self.namespaces, tenant) {
            if terminating(&ns) {
                continue;
            }
            let ns_name = text(&ns, "/metadata/name").unwrap_or("").to_string();
            let ns_scope = scope.clone().in_namespace(&ns_name);
            let key = ObjectKey::new(tenant, Some(&ns_name), NAMESPACE_OWNER);
            let owner = annotation(&ns, CREATOR).filter(|creator| match annotation(&ns, CREATOR_UID) {
                Some(uid) => live.get(*creator).is_some_and(|u| u == uid),
                None => true,
            });
            let Some(owner) = owner else {
                if self.role_bindings.get(&key).is_some() {
                    self.delete(&role_bindings(), &ns_scope, NAMESPACE_OWNER).await?;
                }
                continue;
            };
            if self.roles.get(&key).is_none() {
                self.create(&roles(), &ns_scope, &owner_role(&ns_name)).await?;
            }
            match self.role_bindings.get(&key) {
                Some(b) if binds_only(&b, owner) => {}
                existing => {
                    if existing.is_some() {
                        self.delete(&role_bindings(), &ns_scope, NAMESPACE_OWNER).await?;
                    }
                    self.create(&role_bindings(), &ns_scope, &owner_binding(&ns_name, owner)).await?;
                }
            }
        }
        Ok(Action::Done)
    }
}

/// The controller, watching every tenant's Users and Namespaces and the RBAC objects it made.
pub fn controller(client: Client) -> Controller<Auth> {
    let reconciler = Auth {
        client: client.clone(),
        users: Cache::default(),
        namespaces: Cache::default(),
        roles: Cache::default(),
        role_bindings: Cache::default(),
        cluster_roles: Cache::default(),
        cluster_role_bindings: Cache::default(),
    };
    let tenant_of = |o: &Value| ObjectKey::of(o).map(|k| k.tenant).into_iter().collect::<Vec<_>>();
    let source = |resource: Resource| ApiSource::new(client.clone(), resource, Scope::all_tenants());
    let managed = |resource: Resource| {
        let mut s = source(resource);
        s.label_selector = Some(format!("{MANAGED_BY}={MANAGER}"));
        s
    };
    let caches = [
        reconciler.users.clone(),
        reconciler.namespaces.clone(),
        reconciler.roles.clone(),
        reconciler.role_bindings.clone(),
        reconciler.cluster_roles.clone(),
        reconciler.cluster_role_bindings.clone(),
    ];
    let [users_c, ns_c, roles_c, rb_c, cr_c, crb_c] = caches;
    Controller::new(reconciler)
        .watches(Watcher::new(source(users()), "users"), users_c, tenant_of)
        .watches(Watcher::new(source(Resource::namespaces()), "namespaces"), ns_c, tenant_of)
        .watches(Watcher::new(managed(roles()), "auth roles"), roles_c, tenant_of)
        .watches(Watcher::new(managed(role_bindings()), "auth rolebindings"), rb_c, tenant_of)
        .watches(Watcher::new(managed(cluster_roles()), "auth clusterroles"), cr_c, tenant_of)
        .watches(Watcher::new(managed(cluster_role_bindings()), "auth clusterrolebindings"), crb_c, tenant_of)
}
