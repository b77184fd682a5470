//! The reflector cache: the objects a watcher has seen, by key, for reconcilers to read
//! without asking the API.
//!
//! A re-list replaces the whole map under one write lock, so a reader sees the old state
//! or the new one, never a mix; readers get `Arc`s and never hold the lock.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;
use serde_json::Value;
use tokio::sync::watch;

use crate::watcher::Event;

/// Where an object lives: tenant, namespace (for namespaced kinds), name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub tenant: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectKey {
    pub fn new(tenant: &str, namespace: Option<&str>, name: &str) -> ObjectKey {
        ObjectKey { tenant: tenant.into(), namespace: namespace.map(str::to_string), name: name.into() }
    }

    /// The key of an object from its metadata (`None` without a name).
    pub fn of(obj: &Value) -> Option<ObjectKey> {
        let meta = obj.get("metadata")?;
        let text = |k: &str| meta.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
        Some(ObjectKey {
            tenant: text("tenant").unwrap_or("").to_string(),
            namespace: text("namespace").map(str::to_string),
            name: text("name")?.to_string(),
        })
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}/{}/{}", self.tenant, ns, self.name),
            None => write!(f, "{}/{}", self.tenant, self.name),
        }
    }
}

/// A shared, cheaply cloned view of one watch's objects.
#[derive(Clone)]
pub struct Cache {
    // Ordered so one namespace's objects are one range (`list_namespace`).
    objects: Arc<RwLock<BTreeMap<ObjectKey, Arc<Value>>>>,
    ready: Arc<watch::Sender<bool>>,
}

impl Default for Cache {
    fn default() -> Cache {
        Cache { objects: Arc::default(), ready: Arc::new(watch::channel(false).0) }
    }
}

impl Cache {
    pub fn get(&self, key: &ObjectKey) -> Option<Arc<Value>> {
        self.objects.read().get(key).cloned()
    }

    pub fn list(&self) -> Vec<Arc<Value>> {
        self.objects.read().values().cloned().collect()
    }

    /// The objects of one namespace of one tenant, in O(log n + those objects).
    pub fn list_namespace(&self, tenant: &str, namespace: &str) -> Vec<Arc<Value>> {
        let from = ObjectKey::new(tenant, Some(namespace), "");
        self.objects
            .read()
            .range(from..)
            .take_while(|(k, _)| k.tenant == tenant && k.namespace.as_deref() == Some(namespace))
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.objects.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the first list has arrived.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits for the first list.
    pub async fn wait_ready(&self) {
        let mut rx = self.ready.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = rx.wait_for(|ready| *ready).await;
    }

    /// Applies a watcher's event. Returns the objects that left the cache on a re-list
    /// (deleted while nobody watched), so their owners can be told too.
    pub fn apply(&self, event: &Event) -> Vec<Arc<Value>> {
        match event {
            Event::Applied(obj) => {
                if let Some(key) = ObjectKey::of(obj) {
                    self.objects.write().insert(key, Arc::new(obj.clone()));
                }
                Vec::new()
            }
            Event::Deleted(obj) => {
                if let Some(key) = ObjectKey::of(obj) {
                    self.objects.write().remove(&key);
                }
                Vec::new()
            }
            Event::Restarted(objs) => {
                let fresh: BTreeMap<ObjectKey, Arc<Value>> =
                    objs.iter().filter_map(|o| Some((ObjectKey::of(o)?, Arc::new(o.clone())))).collect();
                let old = std::mem::replace(&mut *self.objects.write(), fresh);
                let current = self.objects.read();
                let gone = old.into_iter().filter(|(k, _)| !current.contains_key(k)).map(|(_, v)| v).collect();
                drop(current);
                self.ready.send_replace(true);
                gone
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ns(tenant: &str, name: &str) -> Value {
        json!({"metadata": {"tenant": tenant, "name": name}})
    }

    #[tokio::test]
    async fn a_relist_replaces_everything_and_reports_what_vanished() {
        let cache = Cache::default();
        assert!(!cache.is_ready());
        assert!(cache.apply(&Event::Restarted(vec![ns("a", "x"), ns("a", "y")])).is_empty());
        cache.wait_ready().await;
        cache.apply(&Event::Applied(ns("b", "x")));
        cache.apply(&Event::Deleted(ns("a", "y")));
        assert!(cache.get(&ObjectKey::new("b", None, "x")).is_some());
        assert!(cache.get(&ObjectKey::new("a", None, "y")).is_none());
        let gone = cache.apply(&Event::Restarted(vec![ns("a", "x"), ns("c", "z")]));
        assert_eq!(gone.len(), 1);
        assert_eq!(ObjectKey::of(&gone[0]), Some(ObjectKey::new("b", None, "x")));
        let mut keys: Vec<String> =
            cache.list().iter().filter_map(|o| ObjectKey::of(o)).map(|k| k.to_string()).collect();
        keys.sort();
        assert_eq!(keys, ["a/x", "c/z"]);
    }

    #[test]
    fn keys_from_metadata() {
        let sa = json!({"metadata": {"tenant": "t", "namespace": "n", "name": "default"}});
        assert_eq!(ObjectKey::of(&sa), Some(ObjectKey::new("t", Some("n"), "default")));
        assert_eq!(ObjectKey::of(&json!({"metadata": {}})), None);
        assert_eq!(ObjectKey::new("t", Some("n"), "d").to_string(), "t/n/d");
    }
}
