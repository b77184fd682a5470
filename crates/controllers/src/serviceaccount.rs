//! The ServiceAccount controller: every namespace of every tenant has a `default`
//! ServiceAccount; one deleted is made again.
//!
//! Keyed by namespace. Reads two caches (all namespaces; the `default` ServiceAccounts of
//! all tenants) and creates what is missing, through the tenant path, so it acts in each
//! tenant like any client of that tenant would.

use api::json::At;
use async_trait::async_trait;
use client::{Client, Resource, Scope, Tenant};
use serde_json::{Value, json};

use crate::cache::{Cache, ObjectKey};
use crate::controller::{Action, Controller, Reconciler};
use crate::watcher::{ApiSource, Watcher};

pub const DEFAULT: &str = "default";

pub struct ServiceAccounts {
    client: Client,
    namespaces: Cache,
    accounts: Cache,
}

/// A namespace (or any object) that is being deleted gets nothing new.
pub(crate) fn terminating(obj: &Value) -> bool {
    obj.at("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null())
        || obj.at("/status/phase").and_then(Value::as_str) == Some("Terminating")
}

#[async_trait]
impl Reconciler for ServiceAccounts {
    type Key = ObjectKey;
    type Error = client::Error;

    fn name(&self) -> &'static str {
        "serviceaccount"
    }

    async fn reconcile(&self, ns: &ObjectKey) -> Result<Action, client::Error> {
        let Some(namespace) = self.namespaces.get(ns) else { return Ok(Action::Done) };
        if terminating(&namespace) {
            return Ok(Action::Done);
        }
        if self.accounts.get(&ObjectKey::new(&ns.tenant, Some(&ns.name), DEFAULT)).is_some() {
            return Ok(Action::Done);
        }
        let account = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                             "metadata": {"name": DEFAULT, "namespace": ns.name}});
        let scope = Scope { tenant: Tenant::Named(ns.tenant.clone()), namespace: Some(ns.name.clone()) };
        match self.client.create(&Resource::service_accounts(), &scope, &account).await {
            Ok(_) => {
                tracing::info!(namespace = %ns, "created the default ServiceAccount");
                Ok(Action::Done)
            }
            // Our cache was behind, or the namespace went meanwhile: nothing to do.
            Err(e) if e.is_already_exists() || e.is_not_found() => Ok(Action::Done),
            Err(e) => Err(e),
        }
    }
}

/// The controller, watching every tenant's namespaces and default ServiceAccounts.
pub fn controller(client: Client) -> Controller<ServiceAccounts> {
    let (namespaces, accounts) = (Cache::default(), Cache::default());
    let reconciler =
        ServiceAccounts { client: client.clone(), namespaces: namespaces.clone(), accounts: accounts.clone() };
    let ns_source = ApiSource::new(client.clone(), Resource::namespaces(), Scope::all_tenants());
    let sa_source = ApiSource::new(client, Resource::service_accounts(), Scope::all_tenants())
        .fields(&format!("metadata.name={DEFAULT}"));
    Controller::new(reconciler)
        .watches(Watcher::new(ns_source, "namespaces"), namespaces, |ns| ObjectKey::of(ns).into_iter().collect())
        .watches(Watcher::new(sa_source, "default serviceaccounts"), accounts, |sa| {
            let Some(key) = ObjectKey::of(sa) else { return Vec::new() };
            key.namespace.map(|ns| ObjectKey::new(&key.tenant, None, &ns)).into_iter().collect()
        })
}
