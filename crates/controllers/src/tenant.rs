//! The Tenant controller, create side: a Tenant that exists (and is not being deleted)
//! has its `default` namespace. (Cascading deletion comes with server support.)
//!
//! Keyed by tenant name. Reads the Tenants (kept in the system tenant) and the `default`
//! namespaces of all tenants.

use async_trait::async_trait;
use client::{Client, Resource, Scope};
use serde_json::json;

use crate::cache::{Cache, ObjectKey};
use crate::controller::{Action, Controller, Reconciler};
use crate::serviceaccount::terminating;
use crate::watcher::{ApiSource, Watcher};

/// Tenants are objects of this tenant (the server keeps them there whatever the URL says).
pub const SYSTEM_TENANT: &str = "system";
pub const DEFAULT_NAMESPACE: &str = "default";

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
            return Ok(Action::Done);
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
