//! The authenticators' view of ServiceAccounts and Users in every tenant, and of the
//! Tenants themselves (a Keystone project must have one): loaded by one
//! read of each kind's key prefix, then followed through a store watch (re-read when the
//! watch ends), so checking a token or a password costs no store round trip.
//!
//! It reads the store directly, not through the registry, because it needs what the
//! registry never hands out: a User's password hash.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use api::json::At;
use bytes::Bytes;
use serde_json::Value;
use store::{EventKind, RangeRequest, Store, WatchMessage, WatchOptions};

/// What the authenticators know of one User.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    pub uid: String,
    pub groups: Vec<String>,
    /// The argon2id PHC string; `None`: the user has no password.
    pub password_hash: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watched {
    ServiceAccounts,
    Users,
    Tenants,
}

impl Watched {
    const ALL: [Watched; 3] = [Watched::ServiceAccounts, Watched::Users, Watched::Tenants];

    fn prefix(self) -> &'static str {
        match self {
            Watched::ServiceAccounts => "/registry/serviceaccounts/",
            Watched::Users => "/registry/users.atoll.io/",
            // Tenants belong to the system tenant: `/registry/tenants.atoll.io/system/{name}`.
            Watched::Tenants => "/registry/tenants.atoll.io/",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Default)]
struct Maps {
    /// (tenant, namespace, name) → uid.
    accounts: HashMap<(String, String, String), String>,
    /// (tenant, name) → the user.
    users: HashMap<(String, String), UserRecord>,
    /// Tenant name → whether it is terminating.
    tenants: HashMap<String, bool>,
}

pub struct Directory {
    store: Arc<dyn Store>,
    maps: RwLock<Maps>,
    /// Per kind: the store revision the view reflects.
    applied: [tokio::sync::watch::Sender<i64>; 3],
}

fn meta<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata").and_then(|m| m.get(field)).and_then(Value::as_str).unwrap_or("")
}

impl Directory {
    pub async fn start(store: Arc<dyn Store>) -> Result<Arc<Directory>, store::StoreError> {
        let dir = Arc::new(Directory {
            store,
            maps: RwLock::default(),
            applied: std::array::from_fn(|_| tokio::sync::watch::channel(0).0),
        });
        for kind in Watched::ALL {
            let revision = dir.reload(kind).await?;
            let weak = Arc::downgrade(&dir);
            tokio::spawn(async move { Directory::follow(weak, kind, revision).await });
        }
        Ok(dir)
    }

    /// The uid of the ServiceAccount `namespace/name` of `tenant`, if it exists.
    pub fn account_uid(&self, tenant: &str, namespace: &str, name: &str) -> Option<String> {
        let maps = self.maps.read().unwrap_or_else(|e| e.into_inner());
        maps.accounts.get(&(tenant.to_string(), namespace.to_string(), name.to_string())).cloned()
    }

    pub fn user(&self, tenant: &str, name: &str) -> Option<UserRecord> {
        let maps = self.maps.read().unwrap_or_else(|e| e.into_inner());
        maps.users.get(&(tenant.to_string(), name.to_string())).cloned()
    }

    /// Whether the Tenant `name` exists: `Some(terminating)`.
    pub fn tenant(&self, name: &str) -> Option<bool> {
        let maps = self.maps.read().unwrap_or_else(|e| e.into_inner());
        maps.tenants.get(name).copied()
    }

    /// Waits (briefly) until the view reflects `kind` at `revision`: a deleted account's
    /// tokens are refused as soon as its deletion is answered.
    pub async fn wait_for(&self, kind: Watched, revision: i64) {
        let mut rx = self.applied[kind.index()].subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|r| *r >= revision)).await;
    }

    /// Waits (briefly) until the view no longer holds the ServiceAccount, User or Tenant
    /// named.
    pub async fn wait_gone(&self, kind: Watched, tenant: &str, namespace: &str, name: &str) {
        let present = || match kind {
            Watched::ServiceAccounts => self.account_uid(tenant, namespace, name).is_some(),
            Watched::Users => self.user(tenant, name).is_some(),
            Watched::Tenants => self.tenant(name).is_some(),
        };
        let mut rx = self.applied[kind.index()].subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|_| !present())).await;
    }

    fn apply(maps: &mut Maps, kind: Watched, value: &[u8], deleted: bool) {
        let Ok(obj) = serde_json::from_slice::<Value>(value) else { return };
        let terminating = obj.at("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null());
        // A terminating account or user (finalizers pending) authenticates no more.
        let deleted = deleted || (terminating && kind != Watched::Tenants);
        let (tenant, name) = (meta(&obj, "tenant").to_string(), meta(&obj, "name").to_string());
        match kind {
            Watched::Tenants => {
                if deleted {
                    maps.tenants.remove(&name);
                } else {
                    maps.tenants.insert(name, terminating);
                }
            }
            Watched::ServiceAccounts => {
                let key = (tenant, meta(&obj, "namespace").to_string(), name);
                if deleted {
                    maps.accounts.remove(&key);
                } else {
                    maps.accounts.insert(key, meta(&obj, "uid").to_string());
                }
            }
            Watched::Users => {
                if deleted {
                    maps.users.remove(&(tenant, name));
                    return;
                }
                let groups = obj
                    .at("/spec/groups")
                    .and_then(Value::as_array)
                    .map(|g| g.iter().filter_map(Value::as_str).map(str::to_string).collect())
                    .unwrap_or_default();
                let password_hash =
                    obj.get(crate::kinds::PASSWORD_HASH_FIELD).and_then(Value::as_str).map(str::to_string);
                let record = UserRecord { uid: meta(&obj, "uid").to_string(), groups, password_hash };
                maps.users.insert((tenant, name), record);
            }
        }
    }

    /// Drops what a deleted key held; the key names it (`{prefix}{tenant}/[{ns}/]{name}`),
    /// so no previous value is needed.
    fn forget(maps: &mut Maps, kind: Watched, key: &[u8]) {
        let Some(rest) = std::str::from_utf8(key).ok().and_then(|k| k.strip_prefix(kind.prefix())) else { return };
        let parts: Vec<String> = rest.split('/').map(str::to_string).collect();
        match (kind, parts.as_slice()) {
            (Watched::ServiceAccounts, [t, ns, n]) => {
                maps.accounts.remove(&(t.clone(), ns.clone(), n.clone()));
            }
            (Watched::Users, [t, n]) => {
                maps.users.remove(&(t.clone(), n.clone()));
            }
            (Watched::Tenants, [_, n]) => {
                maps.tenants.remove(n);
            }
            _ => {}
        }
    }

    async fn reload(&self, kind: Watched) -> Result<i64, store::StoreError> {
        let prefix = Bytes::from(kind.prefix());
        let resp = self
            .store
            .range(RangeRequest { end: store::prefix_end(&prefix), start: prefix, ..RangeRequest::default() })
            .await?;
        {
            let mut maps = self.maps.write().unwrap_or_else(|e| e.into_inner());
            match kind {
                Watched::ServiceAccounts => maps.accounts.clear(),
                Watched::Users => maps.users.clear(),
                Watched::Tenants => maps.tenants.clear(),
            }
            for kv in &resp.kvs {
                Self::apply(&mut maps, kind, &kv.value, false);
            }
        }
        self.applied[kind.index()].send_replace(resp.revision);
        Ok(resp.revision)
    }

    async fn follow(dir: Weak<Directory>, kind: Watched, mut revision: i64) {
        let mut delay = Duration::from_millis(100);
        loop {
            let Some(this) = dir.upgrade() else { return };
            let watch = this.store.watch(Bytes::from(kind.prefix()), Some(revision), WatchOptions::default()).await;
            let mut stream = match watch {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(prefix = kind.prefix(), "watching for authentication: {e}");
                    drop(this);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    if let Some(this) = dir.upgrade() {
                        revision = this.reload(kind).await.unwrap_or(revision);
                    }
                    continue;
                }
            };
            drop(this);
            delay = Duration::from_millis(100);
            while let Some(Ok(message)) = stream.next().await {
                let Some(this) = dir.upgrade() else { return };
                match message {
                    WatchMessage::Events(events) => {
                        let mut maps = this.maps.write().unwrap_or_else(|e| e.into_inner());
                        for event in &events {
                            if event.kind == EventKind::Delete {
                                Self::forget(&mut maps, kind, &event.kv.key);
                            } else {
                                Self::apply(&mut maps, kind, &event.kv.value, false);
                            }
                            revision = revision.max(event.kv.mod_revision);
                        }
                    }
                    WatchMessage::Progress(r) => revision = revision.max(r),
                }
                this.applied[kind.index()].send_replace(revision);
            }
            // The watch ended (compaction, store restart): read everything again.
            let Some(this) = dir.upgrade() else { return };
            match this.reload(kind).await {
                Ok(r) => revision = r,
                Err(e) => {
                    tracing::warn!(prefix = kind.prefix(), "reloading for authentication: {e}");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}
