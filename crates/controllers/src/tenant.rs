//! The Tenant controller: a Tenant that exists (and is not being deleted) has its
//! `default` namespace; a deleted Tenant (held by the `atoll.io/tenant` finalizer) loses
//! every namespace (which the namespace controller empties) and every cluster-scoped object
//! of every kind served in it, and then its finalizer, which releases the name.
//!
//! Keyed by tenant name. Reads the Tenants (kept in the system tenant) and the `default`
//! namespaces of all tenants.

use std::time::Duration;

use api::json::At;
use async_trait::async_trait;
use client::{Client, Resource, Scope};
use serde_json::{Value, json};

use crate::cache::{Cache, ObjectKey};
use crate::controller::{Action, Controller, Reconciler};
use crate::serviceaccount::terminating;
use crate::watcher::{ApiSource, Watcher};

/// Tenants are objects of this tenant (the server keeps them there whatever the URL says).
pub const SYSTEM_TENANT: &str = "system";
pub const DEFAULT_NAMESPACE: &str = "default";
/// The finalizer this controller owns on Tenants.
pub const FINALIZER: &str = "atoll.io/tenant";
/// How soon to look again while a deleted tenant's objects are still going.
const RECHECK: Duration = Duration::from_millis(250);

pub struct Tenants {
    client: Client,
    tenants: Cache,
    namespaces: Cache,
}

#[async_trait]
impl Reconciler for Tenants {
    type Key = String;
    type Error = client::Error;

    fn name(&self) -> &'static str {
        "tenant"
    }

    async fn reconcile(&self, tenant: &String) -> Result<Action, client::Error> {
        let Some(t) = self.tenants.get(&ObjectKey::new(SYSTEM_TENANT, None, tenant)) else { return Ok(Action::Done) };
        if terminating(&t) {
            return self.finalize(tenant, &t).await;
        }
        if self.namespaces.get(&ObjectKey::new(tenant, None, DEFAULT_NAMESPACE)).is_some() {
            return Ok(Action::Done);
        }
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": DEFAULT_NAMESPACE}});
        match self.client.create(&Resource::namespaces(), &Scope::tenant(tenant), &ns).await {
            Ok(_) => {
                tracing::info!(tenant, "created the tenant's default namespace");
                Ok(Action::Done)
            }
            // Behind the cache, or the tenant went meanwhile (its path is then 404).
            Err(e) if e.is_already_exists() || e.is_not_found() => Ok(Action::Done),
            Err(e) => Err(e),
        }
    }
}

impl Tenants {
    /// Empties a deleted tenant, then lets it go.
    async fn finalize(&self, tenant: &str, t: &Value) -> Result<Action, client::Error> {
        let ours =
            t.at("/metadata/finalizers").and_then(Value::as_array).is_some_and(|f| f.iter().any(|f| f == FINALIZER));
        if !ours {
            return Ok(Action::Done);
        }
        // Namespaces are cluster-scoped: deleting them hands their contents to the namespace
        // controller. Tenants themselves live only in the system tenant.
        let not_tenants = |r: &client::ApiResource| !(r.resource.group == "atoll.io" && r.resource.plural == "tenants");
        if crate::namespace::delete_every(&self.client, tenant, None, not_tenants).await? > 0 {
            return Ok(Action::RequeueAfter(RECHECK));
        }
        let mut current = match self.client.get(&Resource::tenants(), &Scope::own(), tenant).await {
            Ok(t) => t,
            Err(e) if e.is_not_found() => return Ok(Action::Done),
            Err(e) => return Err(e),
        };
        if let Some(list) = current.pointer_mut("/metadata/finalizers").and_then(Value::as_array_mut) {
            list.retain(|f| f != FINALIZER);
        }
        match self.client.replace(&Resource::tenants(), &Scope::own(), tenant, &current).await {
            Ok(_) => {
                tracing::info!(tenant, "tenant emptied and released");
                Ok(Action::Done)
            }
            Err(e) if e.is_not_found() => Ok(Action::Done),
            Err(e) if e.is_conflict() => Ok(Action::RequeueAfter(RECHECK)),
            Err(e) => Err(e),
        }
    }
}

pub fn controller(client: Client) -> Controller<Tenants> {
    let (tenants, namespaces) = (Cache::default(), Cache::default());
    let reconciler = Tenants { client: client.clone(), tenants: tenants.clone(), namespaces: namespaces.clone() };
    let tenant_source = ApiSource::new(client.clone(), Resource::tenants(), Scope::own());
    let ns_source = ApiSource::new(client, Resource::namespaces(), Scope::all_tenants())
        .fields(&format!("metadata.name={DEFAULT_NAMESPACE}"));
    Controller::new(reconciler)
        .watches(Watcher::new(tenant_source, "tenants"), tenants, |t| {
            ObjectKey::of(t).map(|k| k.name).into_iter().collect()
        })
        .watches(Watcher::new(ns_source, "default namespaces"), namespaces, |ns| {
            ObjectKey::of(ns).map(|k| k.tenant).filter(|t| t != SYSTEM_TENANT).into_iter().collect()
        })
}
