//! Kubernetes' OwnerReferencesPermissionEnforcement admission, its `blockOwnerDeletion`
//! half: an owner reference that blocks its owner's deletion holds the owner up in a
//! foreground delete, which is a finalizer on the owner; so whoever newly sets
//! `blockOwnerDeletion: true` must be allowed to `update` the owner's `finalizers`
//! subresource (by the owner's name, in the dependent's namespace), or the write is 403.
//!
//! Only references that are new, or that did not block before (the same uid), are checked,
//! so an update that leaves a controller's references alone costs nothing and a user may
//! edit an object that someone more privileged made. The check runs on every write of
//! every kind (create, update, every patch, apply) as the registry's last admission step,
//! beside RBAC's escalation check ([`with_owner_check`]).
//!
//! Architecture Invariant: an owner's kind is resolved among the kinds the dependent's
//! tenant sees (built-in kinds and the tenant's own or the system tenant's custom
//! resources); a reference to a kind nobody serves is refused, as Kubernetes refuses one
//! its REST mapper cannot resolve.

use std::collections::HashMap;
use std::sync::Arc;

use api::json::At;
use serde_json::Value;

use crate::authz::Authz;
use crate::authz::rules::{Attributes, ResourceAttributes};
use crate::http::User;
use crate::registry::{Admission, Registry};

/// The owner references of `obj` that block their owner's deletion and did not in `old`
/// (matched by uid).
pub fn newly_blocking<'a>(old: Option<&Value>, obj: &'a Value) -> Vec<&'a Value> {
    let refs = |o: &'a Value| -> Vec<&'a Value> {
        o.at("/metadata/ownerReferences").and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default()
    };
    let blocks = |r: &Value| r.get("blockOwnerDeletion").and_then(Value::as_bool) == Some(true);
    let blocked_before: Vec<&str> = old
        .map(|o| {
            o.at("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|r| blocks(r))
                .filter_map(|r| r.get("uid").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    refs(obj)
        .into_iter()
        .filter(|r| blocks(r) && !blocked_before.contains(&r.get("uid").and_then(Value::as_str).unwrap_or("")))
        .collect()
}

/// Built-in kinds by `(group, version, kind)`, with their resource.
pub struct Kinds {
    builtin: HashMap<(String, String, String), String>,
    crds: Arc<crate::crd::Catalog>,
}

impl Kinds {
    pub fn new<'a>(registries: impl IntoIterator<Item = &'a Arc<Registry>>, crds: Arc<crate::crd::Catalog>) -> Kinds {
        let builtin = registries
            .into_iter()
            .map(|r| {
                let i = r.info();
                ((i.group.clone(), i.version.clone(), i.kind.clone()), i.resource.clone())
            })
            .collect();
        Kinds { builtin, crds }
    }

    /// The `(group, resource)` of `apiVersion` `kind` as `tenant` sees them.
    fn resolve(&self, tenant: &str, api_version: &str, kind: &str) -> Option<(String, String)> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        if let Some(resource) = self.builtin.get(&(group.to_string(), version.to_string(), kind.to_string())) {
            return Some((group.to_string(), resource.clone()));
        }
        self.crds.visible(tenant).iter().find_map(|served| {
            served
                .versions
                .iter()
                .map(|r| r.info())
                .find(|i| i.group == group && i.version == version && i.kind == kind)
                .map(|i| (i.group.clone(), i.resource.clone()))
        })
    }
}

/// Why `user` may not newly block the owners `obj` names, if they may not.
fn check(
    authz: &Authz,
    kinds: &Kinds,
    user: &User,
    tenant: &str,
    old: Option<&Value>,
    obj: &Value,
) -> Result<(), String> {
    let namespace = obj.at("/metadata/namespace").and_then(Value::as_str).filter(|n| !n.is_empty());
    for r in newly_blocking(old, obj) {
        let text = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("");
        let (api_version, kind) = (text("apiVersion"), text("kind"));
        let Some((group, resource)) = kinds.resolve(tenant, api_version, kind) else {
            return Err(format!(
                "cannot set blockOwnerDeletion in this case because cannot find RESTMapping for APIVersion \
                 {api_version} Kind {kind}"
            ));
        };
        let attrs = Attributes::Resource(ResourceAttributes {
            verb: "update".into(),
            group,
            resource,
            subresource: Some("finalizers".into()),
            namespace: namespace.map(str::to_string),
            name: Some(text("name").to_string()),
        });
        if !authz.decide(user, tenant, &attrs).allowed() {
            let refused = crate::authz::forbidden(&user.name, &attrs);
            return Err(format!(
                "cannot set blockOwnerDeletion if an ownerReference refers to a resource you can't set finalizers \
                 on: {}",
                refused.message
            ));
        }
    }
    Ok(())
}

/// `admission` (the caller's other check, if any) followed by the owner-reference check,
/// for a write by `user` in `tenant`. System administrators may do anything, so they skip it.
pub fn with_owner_check(
    admission: Option<Admission>,
    authz: &Arc<Authz>,
    kinds: &Arc<Kinds>,
    user: &User,
    tenant: Option<&str>,
) -> Option<Admission> {
    if user.is_system_admin() {
        return admission;
    }
    let Some(tenant) = tenant.map(str::to_string) else { return admission };
    let (authz, kinds, user) = (authz.clone(), kinds.clone(), user.clone());
    Some(Admission(Arc::new(move |old: Option<&Value>, obj: &Value| {
        if let Some(first) = &admission {
            (first.0)(old, obj)?;
        }
        check(&authz, &kinds, &user, &tenant, old, obj)
    })))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn with_refs(refs: Value) -> Value {
        json!({"metadata": {"name": "d", "ownerReferences": refs}})
    }

    #[test]
    fn only_references_that_newly_block_are_checked() {
        let blocking = |uid: &str| json!({"uid": uid, "kind": "ConfigMap", "name": uid, "blockOwnerDeletion": true});
        let quiet = |uid: &str| json!({"uid": uid, "kind": "ConfigMap", "name": uid});
        let new = with_refs(json!([blocking("a"), blocking("b"), quiet("c")]));
        // A create: every blocking reference.
        let uids =
            |refs: Vec<&Value>| refs.iter().map(|r| r["uid"].as_str().unwrap_or("").to_string()).collect::<Vec<_>>();
        assert_eq!(uids(newly_blocking(None, &new)), ["a", "b"]);
        // An update keeping "a" blocking and turning "b" from false to true: "b" only.
        let old = with_refs(json!([blocking("a"), quiet("b")]));
        assert_eq!(uids(newly_blocking(Some(&old), &new)), ["b"]);
        // Unchanged, or blocking dropped: nothing.
        assert!(newly_blocking(Some(&new), &new).is_empty());
        assert!(newly_blocking(Some(&new), &with_refs(json!([quiet("a")]))).is_empty());
        assert!(newly_blocking(None, &json!({"metadata": {}})).is_empty());
    }
}
