//! The namespace controller: a deleted namespace (Terminating, held by the `kubernetes`
//! entry of `spec.finalizers`) is emptied of every kind served in its tenant, its custom
//! resources included, and then released through its `finalize` subresource.
//!
//! Keyed by namespace. Level-triggered: each pass deletes what is left and looks again
//! until nothing is, so objects held by their own finalizers or grace periods are waited
//! for, and a restart resumes where it stopped.

use std::time::Duration;

use api::json::At;
use async_trait::async_trait;
use client::{Client, DeleteParams, ListParams, Resource, Scope, Tenant};
use serde_json::Value;

use crate::cache::{Cache, ObjectKey};
use crate::controller::{Action, Controller, Reconciler};
use crate::watcher::{ApiSource, Watcher};

/// The finalizer this controller owns in `spec.finalizers`.
pub const FINALIZER: &str = "kubernetes";

/// How soon to look again while objects are still going.
const RECHECK: Duration = Duration::from_millis(250);

pub struct Namespaces {
    client: Client,
    namespaces: Cache,
}

fn deleting(ns: &Value) -> bool {
    ns.at("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null())
}

fn holds_our_finalizer(ns: &Value) -> bool {
    ns.at("/spec/finalizers").and_then(Value::as_array).is_some_and(|f| f.iter().any(|f| f == FINALIZER))
}

/// Deletes every object of the kinds served in `tenant` that `wanted` picks, in
/// `namespace` (namespaced kinds) or in the tenant (cluster-scoped kinds); returns how many
/// were still there, those already terminating included. Shared by the namespace and
/// tenant controllers.
pub(crate) async fn delete_every(
    client: &Client,
    tenant: &str,
    namespace: Option<&str>,
    wanted: impl Fn(&client::ApiResource) -> bool,
) -> Result<usize, client::Error> {
    let tenant_ref = Tenant::Named(tenant.to_string());
    let mut remaining = 0;
    for r in client.api_resources_in(&tenant_ref).await? {
        if r.resource.namespaced != namespace.is_some() || !r.verbs.iter().any(|v| v == "list") || !wanted(&r) {
            continue;
        }
        let scope = Scope { tenant: tenant_ref.clone(), namespace: namespace.map(str::to_string) };
        let list = match client.list(&r.resource, &scope, &ListParams::default()).await {
            Ok(l) => l,
            // A kind that went away meanwhile (a deleted custom resource) holds nothing.
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e),
        };
        for obj in &list.items {
            remaining += 1;
            if deleting(obj) {
                continue;
            }
            let name = obj.at("/metadata/name").and_then(Value::as_str).unwrap_or("");
            match client.delete(&r.resource, &scope, name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(remaining)
}

#[async_trait]
impl Reconciler for Namespaces {
    type Key = ObjectKey;
    type Error = client::Error;

    fn name(&self) -> &'static str {
        "namespace"
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, client::Error> {
        let Some(ns) = self.namespaces.get(key) else { return Ok(Action::Done) };
        if !deleting(&ns) || !holds_our_finalizer(&ns) {
            return Ok(Action::Done);
        }
        if delete_every(&self.client, &key.tenant, Some(&key.name), |_| true).await? > 0 {
            return Ok(Action::RequeueAfter(RECHECK));
        }
        // Empty: release our finalizer (the server deletes the namespace once none is left).
        let scope = Scope::tenant(&key.tenant);
        let mut current = match self.client.get(&Resource::namespaces(), &scope, &key.name).await {
            Ok(ns) => ns,
            Err(e) if e.is_not_found() => return Ok(Action::Done),
            Err(e) => return Err(e),
        };
        if let Some(list) = current.pointer_mut("/spec/finalizers").and_then(Value::as_array_mut) {
            list.retain(|f| f != FINALIZER);
        }
        match self.client.replace_subresource(&Resource::namespaces(), &scope, &key.name, "finalize", &current).await {
            Ok(_) => {
                tracing::info!(namespace = %key, "namespace emptied and finalized");
                Ok(Action::Done)
            }
            Err(e) if e.is_not_found() => Ok(Action::Done),
            Err(e) if e.is_conflict() => Ok(Action::RequeueAfter(RECHECK)),
            Err(e) => Err(e),
        }
    }
}

/// The controller, watching every tenant's namespaces.
pub fn controller(client: Client) -> Controller<Namespaces> {
    let namespaces = Cache::default();
    let reconciler = Namespaces { client: client.clone(), namespaces: namespaces.clone() };
    let source = ApiSource::new(client, Resource::namespaces(), Scope::all_tenants());
    Controller::new(reconciler)
        .watches(Watcher::new(source, "namespaces"), namespaces, |ns| ObjectKey::of(ns).into_iter().collect())
}
