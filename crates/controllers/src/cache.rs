//! The reflector cache: the objects a watcher has seen, by key, for reconcilers to read
//! without asking the API.
//!
//! A re-list replaces the whole map under one write lock, so a reader sees the old state
//! or the new one, never a mix; readers get `Arc`s and never hold the lock.
//!
//! A cache may carry one secondary index (e.g. pods by `spec.nodeName`), kept under the same
//! lock as the objects so a lookup by index never names an object the map no longer holds.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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

/// What the controllers read of a pod: its metadata but `managedFields`, of the spec only
/// `nodeName` and `tolerations`, of the status only `phase`, the Ready condition's type, status
/// and transition time, and the containers' names and restart counts. Containers, volumes,
/// managed fields and the status details are most of a decoded pod (a pod of the scale bench:
/// 29 KB of heap whole, 8 KB kept) and no controller here reads them; the scheduler keeps its
/// own typed copy. Nothing is ever written from such a copy.
pub fn pod_essentials(pod: &Value) -> Value {
    let Some(top) = pod.as_object() else { return pod.clone() };
    // `only(v, keys)`: the object `v` with just `keys`.
    let only = |v: &Value, keys: &[&str]| -> Value {
        match v.as_object() {
            Some(m) => Value::Object(
                m.iter().filter(|(k, _)| keys.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect(),
            ),
            None => v.clone(),
        }
    };
    let each = |v: &Value, keys: &[&str]| -> Value {
        match v.as_array() {
            Some(items) => Value::Array(items.iter().map(|i| only(i, keys)).collect()),
            None => v.clone(),
        }
    };
    let mut out = serde_json::Map::new();
    for (k, v) in top {
        let kept = match k.as_str() {
            "metadata" => match v.as_object() {
                Some(meta) => Value::Object(
                    meta.iter().filter(|(k, _)| *k != "managedFields").map(|(k, v)| (k.clone(), v.clone())).collect(),
                ),
                None => v.clone(),
            },
            "spec" => only(v, &["nodeName", "tolerations"]),
            "status" => match v.as_object() {
                Some(status) => Value::Object(
                    status
                        .iter()
                        .filter_map(|(k, v)| {
                            let v = match k.as_str() {
                                "phase" => v.clone(),
                                // Every JSON object costs a B-tree node (~630 bytes) however
                                // few its fields: only the condition that is read stays.
                                "conditions" => match v.as_array() {
                                    Some(cs) => Value::Array(
                                        cs.iter()
                                            .filter(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
                                            .map(|c| only(c, &["type", "status", "lastTransitionTime"]))
                                            .collect(),
                                    ),
                                    None => v.clone(),
                                },
                                "containerStatuses" => each(v, &["name", "restartCount"]),
                                _ => return None,
                            };
                            Some((k.clone(), v))
                        })
                        .collect(),
                ),
                None => v.clone(),
            },
            _ => v.clone(),
        };
        out.insert(k.clone(), kept);
    }
    Value::Object(out)
}

/// The value an object is indexed under (`None`: not in the index).
type IndexFn = Arc<dyn Fn(&Value) -> Option<String> + Send + Sync>;
/// The part of an object the cache keeps (see [`Cache::keeping`]).
type KeepFn = Arc<dyn Fn(&Value) -> Value + Send + Sync>;

#[derive(Default)]
struct State {
    // Ordered so one namespace's objects are one range (`list_namespace`).
    objects: BTreeMap<ObjectKey, Arc<Value>>,
    /// Index value -> the keys of the objects under it; empty without an index function.
    index: HashMap<String, BTreeSet<ObjectKey>>,
}

/// A shared, cheaply cloned view of one watch's objects.
#[derive(Clone)]
pub struct Cache {
    state: Arc<RwLock<State>>,
    index_of: Option<IndexFn>,
    keep: Option<KeepFn>,
    ready: Arc<watch::Sender<bool>>,
    /// The watch feeding the cache was lost and a re-list is under way: the cache may lack
    /// any change since, for however long the re-list takes.
    stale: Arc<AtomicBool>,
}

impl Default for Cache {
    fn default() -> Cache {
        Cache {
            state: Arc::default(),
            index_of: None,
            keep: None,
            ready: Arc::new(watch::channel(false).0),
            stale: Arc::default(),
        }
    }
}

impl State {
    fn insert(&mut self, index_of: Option<&IndexFn>, key: ObjectKey, obj: Arc<Value>) {
        let new_value = index_of.and_then(|f| f(&obj));
        if let Some(old) = self.objects.insert(key.clone(), obj) {
            // The object may have moved (e.g. a pod bound to a node after it was first seen).
            let old_value = index_of.and_then(|f| f(&old));
            if old_value != new_value {
                self.unindex(old_value, &key);
            }
        }
        if let Some(v) = new_value {
            self.index.entry(v).or_default().insert(key);
        }
    }

    fn remove(&mut self, index_of: Option<&IndexFn>, key: &ObjectKey) {
        if let Some(old) = self.objects.remove(key) {
            self.unindex(index_of.and_then(|f| f(&old)), key);
        }
    }

    fn unindex(&mut self, value: Option<String>, key: &ObjectKey) {
        let Some(value) = value else { return };
        if let Some(keys) = self.index.get_mut(&value) {
            keys.remove(key);
            if keys.is_empty() {
                self.index.remove(&value);
            }
        }
    }
}

impl Cache {
    /// A cache that also indexes its objects by `index_of` (see [`Cache::by_index`]).
    pub fn indexed(index_of: impl Fn(&Value) -> Option<String> + Send + Sync + 'static) -> Cache {
        Cache { index_of: Some(Arc::new(index_of)), ..Cache::default() }
    }

    /// The same cache keeping only what `keep` makes of each object (applied before the index
    /// function and before storing), as client-go's informer transforms: a controller that
    /// reads a few fields of 150,000 pods need not hold each pod's whole decoded tree.
    pub fn keeping(mut self, keep: impl Fn(&Value) -> Value + Send + Sync + 'static) -> Cache {
        self.keep = Some(Arc::new(keep));
        self
    }

    fn stored(&self, obj: &Value) -> Arc<Value> {
        Arc::new(match &self.keep {
            Some(keep) => keep(obj),
            None => obj.clone(),
        })
    }

    pub fn get(&self, key: &ObjectKey) -> Option<Arc<Value>> {
        self.state.read().objects.get(key).cloned()
    }

    pub fn list(&self) -> Vec<Arc<Value>> {
        self.state.read().objects.values().cloned().collect()
    }

    /// The objects the index function puts under `value`, in key order, in O(those objects):
    /// empty for a cache built without an index.
    pub fn by_index(&self, value: &str) -> Vec<Arc<Value>> {
        let state = self.state.read();
        let Some(keys) = state.index.get(value) else { return Vec::new() };
        keys.iter().filter_map(|k| state.objects.get(k).cloned()).collect()
    }

    /// The objects of one namespace of one tenant, in O(log n + those objects).
    pub fn list_namespace(&self, tenant: &str, namespace: &str) -> Vec<Arc<Value>> {
        let from = ObjectKey::new(tenant, Some(namespace), "");
        self.state
            .read()
            .objects
            .range(from..)
            .take_while(|(k, _)| k.tenant == tenant && k.namespace.as_deref() == Some(namespace))
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.state.read().objects.len()
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
    /// Marks the cache stale until the next [`Event::Restarted`] (its watch was lost).
    pub fn mark_stale(&self) {
        self.stale.store(true, Ordering::Release);
    }

    /// Whether the cache follows a live watch (false from a lost watch until the re-list
    /// replaces it).
    pub fn is_current(&self) -> bool {
        !self.stale.load(Ordering::Acquire)
    }

    pub fn apply(&self, event: &Event) -> Vec<Arc<Value>> {
        match event {
            Event::Applied(obj) => {
                if let Some(key) = ObjectKey::of(obj) {
                    let obj = self.stored(obj);
                    self.state.write().insert(self.index_of.as_ref(), key, obj);
                }
                Vec::new()
            }
            Event::Deleted(obj) => {
                if let Some(key) = ObjectKey::of(obj) {
                    self.state.write().remove(self.index_of.as_ref(), &key);
                }
                Vec::new()
            }
            Event::Restarted(objs) => {
                // Built aside, then swapped in under one write lock.
                let mut fresh = State::default();
                for o in objs {
                    if let Some(key) = ObjectKey::of(o) {
                        fresh.insert(self.index_of.as_ref(), key, self.stored(o));
                    }
                }
                let mut state = self.state.write();
                let old = std::mem::replace(&mut *state, fresh);
                let gone =
                    old.objects.into_iter().filter(|(k, _)| !state.objects.contains_key(k)).map(|(_, v)| v).collect();
                self.stale.store(false, Ordering::Release);
                drop(state);
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

    fn pod(tenant: &str, name: &str, node: &str) -> Value {
        json!({"metadata": {"tenant": tenant, "namespace": "ns", "name": name}, "spec": {"nodeName": node}})
    }

    fn names(objs: &[Arc<Value>]) -> Vec<String> {
        objs.iter().filter_map(|o| ObjectKey::of(o)).map(|k| k.to_string()).collect()
    }

    #[test]
    fn the_index_follows_binds_moves_deletes_and_relists() {
        let cache = Cache::indexed(|o| o.pointer("/spec/nodeName").and_then(Value::as_str).map(str::to_string));
        cache.apply(&Event::Restarted(vec![pod("a", "p1", "n1"), pod("b", "p2", "n1"), pod("a", "p3", "")]));
        assert_eq!(names(&cache.by_index("n1")), ["a/ns/p1", "b/ns/p2"]);
        // Bound later: it joins its node's entry.
        cache.apply(&Event::Applied(pod("a", "p3", "n2")));
        assert_eq!(names(&cache.by_index("n2")), ["a/ns/p3"]);
        // An update that moves an object leaves no trace under its old value.
        cache.apply(&Event::Applied(pod("b", "p2", "n2")));
        assert_eq!(names(&cache.by_index("n1")), ["a/ns/p1"]);
        assert_eq!(names(&cache.by_index("n2")), ["a/ns/p3", "b/ns/p2"]);
        cache.apply(&Event::Deleted(pod("a", "p1", "n1")));
        assert!(cache.by_index("n1").is_empty());
        assert!(!cache.state.read().index.contains_key("n1"), "empty entries are dropped");
        // A re-list rebuilds the index with the objects.
        let gone = cache.apply(&Event::Restarted(vec![pod("c", "p4", "n2")]));
        assert_eq!(names(&gone), ["a/ns/p3", "b/ns/p2"]);
        assert_eq!(names(&cache.by_index("n2")), ["c/ns/p4"]);
        // The same answers as a scan of everything, the way the API's field selector filters.
        let scan: Vec<Arc<Value>> = cache.list().into_iter().filter(|o| o["spec"]["nodeName"] == "n2").collect();
        assert_eq!(names(&scan), names(&cache.by_index("n2")));
        assert!(Cache::default().by_index("n2").is_empty());
    }

    #[test]
    fn a_cache_keeping_pod_essentials_holds_what_the_controllers_read_and_indexes_it() {
        let full = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"tenant": "a", "namespace": "ns", "name": "p", "uid": "u", "resourceVersion": "7",
                         "labels": {"app": "x"}, "ownerReferences": [{"uid": "rs", "controller": true}],
                         "managedFields": [{"manager": "m", "fieldsV1": {"f:spec": {}}}]},
            "spec": {"nodeName": "n1", "tolerations": [{"key": "k", "operator": "Exists"}],
                     "containers": [{"name": "c", "image": "busybox"}], "volumes": []},
            "status": {"phase": "Running", "podIP": "10.0.0.1",
                       "conditions": [{"type": "Initialized", "status": "True"},
                                      {"type": "Ready", "status": "True", "lastTransitionTime": "t", "reason": "r"}],
                       "containerStatuses": [{"name": "c", "restartCount": 2, "image": "busybox", "state": {}}]},
        });
        let kept = pod_essentials(&full);
        let mut expected = full.clone();
        expected["metadata"].as_object_mut().unwrap().remove("managedFields");
        expected["spec"] = json!({"nodeName": "n1", "tolerations": [{"key": "k", "operator": "Exists"}]});
        expected["status"] = json!({"phase": "Running",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "t"}],
            "containerStatuses": [{"name": "c", "restartCount": 2}]});
        assert_eq!(kept, expected);
        let cache = Cache::indexed(|o| o.pointer("/spec/nodeName").and_then(Value::as_str).map(str::to_string))
            .keeping(pod_essentials);
        cache.apply(&Event::Restarted(vec![full.clone()]));
        assert_eq!(*cache.by_index("n1")[0], expected);
        let mut moved = full;
        moved["spec"]["nodeName"] = json!("n2");
        cache.apply(&Event::Applied(moved));
        assert!(cache.by_index("n1").is_empty());
        assert_eq!(
            cache.get(&ObjectKey::new("a", Some("ns"), "p")).unwrap()["spec"],
            json!({"nodeName": "n2",
            "tolerations": [{"key": "k", "operator": "Exists"}]})
        );
        // Not an object: kept as it is (and without a key, not stored at all).
        assert_eq!(pod_essentials(&json!("x")), json!("x"));
    }

    #[test]
    fn keys_from_metadata() {
        let sa = json!({"metadata": {"tenant": "t", "namespace": "n", "name": "default"}});
        assert_eq!(ObjectKey::of(&sa), Some(ObjectKey::new("t", Some("n"), "default")));
        assert_eq!(ObjectKey::of(&json!({"metadata": {}})), None);
        assert_eq!(ObjectKey::new("t", Some("n"), "d").to_string(), "t/n/d");
    }
}
