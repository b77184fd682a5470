//! The reflector cache: the objects a watcher has seen, by key, for reconcilers to read
//! without asking the API.
//!
//! A re-list replaces the whole map under one write lock, so a reader sees the old state
//! or the new one, never a mix; readers get `Arc`s and never hold the lock.
//!
//! A cache may carry secondary indexes (e.g. pods by `spec.nodeName`), kept under the same
//! lock as the objects so a lookup by index never names an object the map no longer holds.
//! An index may put one object under several values (e.g. a pod under each of its labels).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use client::{Keep, Shape};
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
/// own typed copy. Nothing is ever written from such a copy. Prunes in place: nothing is copied.
pub fn pod_essentials(mut pod: Value) -> Value {
    let Some(top) = pod.as_object_mut() else { return pod };
    let only = |v: &mut Value, keys: &[&str]| {
        if let Some(m) = v.as_object_mut() {
            m.retain(|k, _| keys.contains(&k.as_str()));
        }
    };
    if let Some(meta) = top.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    if let Some(spec) = top.get_mut("spec") {
        only(spec, &["nodeName", "tolerations"]);
    }
    if let Some(status) = top.get_mut("status").and_then(Value::as_object_mut) {
        status.retain(|k, _| matches!(k.as_str(), "phase" | "conditions" | "containerStatuses"));
        // Every JSON object costs a B-tree node (~630 bytes) however few its fields: only the
        // condition that is read stays.
        if let Some(conditions) = status.get_mut("conditions").and_then(Value::as_array_mut) {
            conditions.retain(|c| c.get("type").and_then(Value::as_str) == Some("Ready"));
            conditions.iter_mut().for_each(|c| only(c, &["type", "status", "lastTransitionTime"]));
        }
        if let Some(containers) = status.get_mut("containerStatuses").and_then(Value::as_array_mut) {
            containers.iter_mut().for_each(|c| only(c, &["name", "restartCount"]));
        }
    }
    pod
}

/// [`pod_essentials`] as a source keeps it: the decoder builds only these fields (the
/// containers, volumes, managed fields and status details of a pod are skipped, never built),
/// then `pod_essentials` drops the conditions but `Ready`.
pub fn keep_pod_essentials() -> Keep {
    let status = Shape::only(&["phase"])
        .with("conditions", Shape::only(&["type", "status", "lastTransitionTime"]))
        .with("containerStatuses", Shape::only(&["name", "restartCount"]));
    Keep::shape(
        Shape::all()
            .with("metadata", Shape::without(&["managedFields"]))
            .with("spec", Shape::only(&["nodeName", "tolerations"]))
            .with("status", status),
    )
    .then(pod_essentials)
}

/// [`metadata_only`] as a source keeps it (decoding nothing else).
pub fn keep_metadata_only() -> Keep {
    Keep::shape(
        Shape::only(&["apiVersion", "kind"]).with("metadata", Shape::without(&["managedFields", "annotations"])),
    )
}

/// [`without_managed_fields`] as a source keeps it (never decoding them).
pub fn keep_without_managed_fields() -> Keep {
    Keep::shape(Shape::all().with("metadata", Shape::without(&["managedFields"])))
}

/// An object without `metadata.managedFields` (about 40% of a pod's JSON and more of its
/// decoded tree): for readers that never write back what they read (the scheduler).
pub fn without_managed_fields(mut obj: Value) -> Value {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    obj
}

/// What the garbage collector reads of any object: its kind and metadata, without the two
/// parts that can be large and that it never reads (`managedFields`, `annotations`). Nothing is
/// written from such a copy (owners are read afresh before any delete).
pub fn metadata_only(mut obj: Value) -> Value {
    let Some(top) = obj.as_object_mut() else { return obj };
    top.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata"));
    if let Some(meta) = top.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
        meta.remove("annotations");
    }
    obj
}

/// The values an object is indexed under (none: not in the index; several: found under each).
type IndexFn = Arc<dyn Fn(&Value) -> Vec<String> + Send + Sync>;

#[derive(Default)]
struct State {
    // Ordered so one namespace's objects are one range (`list_namespace`).
    objects: BTreeMap<ObjectKey, Arc<Value>>,
    /// Per index (in the order of `Cache::indexes`): value -> the objects under it, by key
    /// (held here too, so a lookup by index reads no other map).
    index: Vec<HashMap<String, BTreeMap<ObjectKey, Arc<Value>>>>,
}

/// What one event did to a cache: the objects it stored or removed (to enqueue their keys),
/// and, on a re-list, those that vanished while nobody watched.
pub struct Applied {
    pub changed: Vec<Arc<Value>>,
    pub gone: Vec<Arc<Value>>,
}

/// A shared, cheaply cloned view of one watch's objects.
#[derive(Clone)]
pub struct Cache {
    state: Arc<RwLock<State>>,
    /// Named secondary indexes (e.g. pods by `spec.nodeName`), kept under the same lock.
    indexes: Arc<Vec<(&'static str, IndexFn)>>,
    ready: Arc<watch::Sender<bool>>,
    /// The watch feeding the cache was lost and a re-list is under way: the cache may lack
    /// any change since, for however long the re-list takes.
    stale: Arc<AtomicBool>,
}

impl Default for Cache {
    fn default() -> Cache {
        Cache {
            state: Arc::default(),
            indexes: Arc::default(),
            ready: Arc::new(watch::channel(false).0),
            stale: Arc::default(),
        }
    }
}

impl State {
    fn fresh(indexes: usize) -> State {
        State { objects: BTreeMap::new(), index: vec![HashMap::new(); indexes] }
    }

    fn insert(&mut self, indexes: &[(&'static str, IndexFn)], key: ObjectKey, obj: Arc<Value>) {
        let old = self.objects.insert(key.clone(), obj.clone());
        for (slot, (_, index_of)) in indexes.iter().enumerate() {
            let new_values = index_of(&obj);
            // The object may have moved (e.g. a pod bound to a node after it was first seen).
            if let Some(old) = &old {
                for v in index_of(old) {
                    if !new_values.contains(&v) {
                        self.unindex(slot, v, &key);
                    }
                }
            }
            for v in new_values {
                self.index[slot].entry(v).or_default().insert(key.clone(), obj.clone());
            }
        }
    }

    fn remove(&mut self, indexes: &[(&'static str, IndexFn)], key: &ObjectKey) -> Option<Arc<Value>> {
        let old = self.objects.remove(key)?;
        for (slot, (_, index_of)) in indexes.iter().enumerate() {
            for v in index_of(&old) {
                self.unindex(slot, v, key);
            }
        }
        Some(old)
    }

    fn unindex(&mut self, slot: usize, value: String, key: &ObjectKey) {
        if let Some(keys) = self.index[slot].get_mut(&value) {
            keys.remove(key);
            if keys.is_empty() {
                self.index[slot].remove(&value);
            }
        }
    }
}

impl Cache {
    /// The same cache with one more secondary index, `name`, of the values `index_of` gives
    /// (none, one or several per object; see [`Cache::by_index`]). Indexes are declared
    /// before the cache is filled.
    pub fn with_index<I: IntoIterator<Item = String>>(
        mut self,
        name: &'static str,
        index_of: impl Fn(&Value) -> I + Send + Sync + 'static,
    ) -> Cache {
        let index_of = move |obj: &Value| index_of(obj).into_iter().collect();
        Arc::make_mut(&mut self.indexes).push((name, Arc::new(index_of)));
        *self.state.write() = State::fresh(self.indexes.len());
        self
    }

    pub fn get(&self, key: &ObjectKey) -> Option<Arc<Value>> {
        self.state.read().objects.get(key).cloned()
    }

    pub fn list(&self) -> Vec<Arc<Value>> {
        self.state.read().objects.values().cloned().collect()
    }

    /// The objects index `name` puts under `value`, in key order, in O(those objects): empty
    /// when the cache has no such index.
    pub fn by_index(&self, name: &str, value: &str) -> Vec<Arc<Value>> {
        let Some(slot) = self.indexes.iter().position(|(n, _)| *n == name) else { return Vec::new() };
        let state = self.state.read();
        let Some(objects) = state.index.get(slot).and_then(|i| i.get(value)) else { return Vec::new() };
        objects.values().cloned().collect()
    }

    /// How many objects index `name` puts under `value` (0 when the cache has no such index).
    pub fn count_by_index(&self, name: &str, value: &str) -> usize {
        let Some(slot) = self.indexes.iter().position(|(n, _)| *n == name) else { return 0 };
        self.state.read().index.get(slot).and_then(|i| i.get(value)).map_or(0, BTreeMap::len)
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

    /// Marks the cache stale until the next [`Event::Restarted`] (its watch was lost).
    pub fn mark_stale(&self) {
        self.stale.store(true, Ordering::Release);
    }

    /// Whether the cache follows a live watch (false from a lost watch until the re-list
    /// replaces it).
    pub fn is_current(&self) -> bool {
        !self.stale.load(Ordering::Acquire)
    }

    /// Applies a watcher's event. Returns the objects that left the cache on a re-list
    /// (deleted while nobody watched), so their owners can be told too.
    pub fn apply(&self, event: &Event) -> Vec<Arc<Value>> {
        self.apply_owned(event.clone()).gone
    }

    /// Applies a watcher's event, storing its objects without copying them.
    pub fn apply_owned(&self, event: Event) -> Applied {
        match event {
            Event::Applied(obj) => {
                let obj = Arc::new(obj);
                if let Some(key) = ObjectKey::of(&obj) {
                    self.state.write().insert(&self.indexes, key, obj.clone());
                }
                Applied { changed: vec![obj], gone: Vec::new() }
            }
            Event::Deleted(obj) => {
                if let Some(key) = ObjectKey::of(&obj) {
                    self.state.write().remove(&self.indexes, &key);
                }
                Applied { changed: vec![Arc::new(obj)], gone: Vec::new() }
            }
            Event::Restarted(objs) => {
                // Built aside, then swapped in under one write lock.
                let mut fresh = State::fresh(self.indexes.len());
                let mut changed = Vec::with_capacity(objs.len());
                for o in objs {
                    let o = Arc::new(o);
                    if let Some(key) = ObjectKey::of(&o) {
                        fresh.insert(&self.indexes, key, o.clone());
                    }
                    changed.push(o);
                }
                let mut state = self.state.write();
                let old = std::mem::replace(&mut *state, fresh);
                let gone =
                    old.objects.into_iter().filter(|(k, _)| !state.objects.contains_key(k)).map(|(_, v)| v).collect();
                self.stale.store(false, Ordering::Release);
                drop(state);
                self.ready.send_replace(true);
                Applied { changed, gone }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use api::json::At;
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

    fn node_of(o: &Value) -> Option<String> {
        o.at("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()).map(str::to_string)
    }

    #[test]
    fn the_index_follows_binds_moves_deletes_and_relists() {
        let cache = Cache::default().with_index("node", node_of);
        cache.apply(&Event::Restarted(vec![pod("a", "p1", "n1"), pod("b", "p2", "n1"), pod("a", "p3", "")]));
        assert_eq!(names(&cache.by_index("node", "n1")), ["a/ns/p1", "b/ns/p2"]);
        // Bound later: it joins its node's entry.
        cache.apply(&Event::Applied(pod("a", "p3", "n2")));
        assert_eq!(names(&cache.by_index("node", "n2")), ["a/ns/p3"]);
        // An update that moves an object leaves no trace under its old value.
        cache.apply(&Event::Applied(pod("b", "p2", "n2")));
        assert_eq!(names(&cache.by_index("node", "n1")), ["a/ns/p1"]);
        assert_eq!(names(&cache.by_index("node", "n2")), ["a/ns/p3", "b/ns/p2"]);
        cache.apply(&Event::Deleted(pod("a", "p1", "n1")));
        assert!(cache.by_index("node", "n1").is_empty());
        assert!(!cache.state.read().index[0].contains_key("n1"), "empty entries are dropped");
        // A re-list rebuilds the index with the objects.
        let gone = cache.apply(&Event::Restarted(vec![pod("c", "p4", "n2")]));
        assert_eq!(names(&gone), ["a/ns/p3", "b/ns/p2"]);
        assert_eq!(names(&cache.by_index("node", "n2")), ["c/ns/p4"]);
        // The same answers as a scan of everything, the way the API's field selector filters.
        let scan: Vec<Arc<Value>> = cache.list().into_iter().filter(|o| o["spec"]["nodeName"] == "n2").collect();
        assert_eq!(names(&scan), names(&cache.by_index("node", "n2")));
        assert!(Cache::default().by_index("node", "n2").is_empty());
        assert!(cache.by_index("tenant", "c").is_empty(), "no such index");
    }

    fn labels_of(o: &Value) -> Vec<String> {
        o["metadata"]["labels"].as_object().into_iter().flatten().map(|(k, v)| format!("{k}={v}")).collect()
    }

    #[test]
    fn an_object_is_found_under_each_of_its_values_and_only_those() {
        let cache = Cache::default().with_index("label", labels_of);
        let labelled = |name: &str, labels: Value| json!({"metadata": {"tenant": "t", "name": name, "labels": labels}});
        cache.apply(&Event::Restarted(vec![
            labelled("a", json!({"app": "x", "tier": "web"})),
            labelled("b", json!({"app": "x"})),
        ]));
        assert_eq!(names(&cache.by_index("label", r#"app="x""#)), ["t/a", "t/b"]);
        assert_eq!(names(&cache.by_index("label", r#"tier="web""#)), ["t/a"]);
        assert_eq!(cache.count_by_index("label", r#"app="x""#), 2);
        // A change that drops one value keeps the others.
        cache.apply(&Event::Applied(labelled("a", json!({"app": "x", "tier": "db"}))));
        assert_eq!(cache.count_by_index("label", r#"tier="web""#), 0);
        assert_eq!(names(&cache.by_index("label", r#"tier="db""#)), ["t/a"]);
        assert_eq!(cache.count_by_index("label", r#"app="x""#), 2);
        cache.apply(&Event::Deleted(labelled("a", json!({"app": "x", "tier": "db"}))));
        assert_eq!(names(&cache.by_index("label", r#"app="x""#)), ["t/b"]);
        assert_eq!(cache.state.read().index[0].len(), 1, "empty entries are dropped");
        assert_eq!(cache.count_by_index("nope", r#"app="x""#), 0);
    }

    /// One cache serves several readers (the shared pod informer): each index keeps its own
    /// values, and a value of one is not found through another.
    #[test]
    fn several_indexes_are_kept_apart_and_follow_every_change() {
        let cache = Cache::default()
            .with_index("node", node_of)
            .with_index("tenant", |o| o.at("/metadata/tenant").and_then(Value::as_str).map(str::to_string));
        cache.apply(&Event::Restarted(vec![pod("a", "p1", "n1"), pod("b", "p2", "a")]));
        assert_eq!(names(&cache.by_index("node", "a")), ["b/ns/p2"]);
        assert_eq!(names(&cache.by_index("tenant", "a")), ["a/ns/p1"]);
        cache.apply(&Event::Applied(pod("a", "p2", "n1")));
        assert_eq!(names(&cache.by_index("node", "n1")), ["a/ns/p1", "a/ns/p2"]);
        assert_eq!(names(&cache.by_index("tenant", "a")), ["a/ns/p1", "a/ns/p2"]);
        cache.apply(&Event::Deleted(pod("a", "p1", "n1")));
        assert_eq!(names(&cache.by_index("node", "n1")), ["a/ns/p2"]);
        assert_eq!(names(&cache.by_index("tenant", "a")), ["a/ns/p2"]);
        assert_eq!(names(&cache.by_index("tenant", "b")), ["b/ns/p2"]);
    }

    #[test]
    fn pod_essentials_keeps_what_the_controllers_read() {
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
        let mut expected = full.clone();
        expected["metadata"].as_object_mut().unwrap().remove("managedFields");
        expected["spec"] = json!({"nodeName": "n1", "tolerations": [{"key": "k", "operator": "Exists"}]});
        expected["status"] = json!({"phase": "Running",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "t"}],
            "containerStatuses": [{"name": "c", "restartCount": 2}]});
        assert_eq!(pod_essentials(full.clone()), expected);
        // Decoded in the shape, the same.
        let keep = keep_pod_essentials();
        assert_eq!(keep.decode_slice(&serde_json::to_vec(&full).unwrap()).unwrap(), expected);
        assert_eq!(keep.apply(full), expected);
        // Not an object, or an object without the parts: kept as it is.
        assert_eq!(pod_essentials(json!("x")), json!("x"));
        assert_eq!(pod_essentials(json!({"metadata": {"name": "p"}})), json!({"metadata": {"name": "p"}}));
    }

    #[test]
    fn metadata_only_keeps_kind_and_metadata_but_managed_fields_and_annotations() {
        let full = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "uid": "u", "ownerReferences": [{"uid": "o"}], "finalizers": ["f"],
                         "labels": {"a": "b"}, "annotations": {"big": "x"}, "managedFields": [{}]},
            "spec": {"containers": []}, "status": {"phase": "Running"}});
        assert_eq!(keep_metadata_only().apply(full.clone()), metadata_only(full.clone()));
        assert_eq!(keep_without_managed_fields().apply(full.clone()), without_managed_fields(full.clone()));
        assert_eq!(
            metadata_only(full),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "uid": "u",
                "ownerReferences": [{"uid": "o"}], "finalizers": ["f"], "labels": {"a": "b"}}})
        );
    }

    #[test]
    fn keys_from_metadata() {
        let sa = json!({"metadata": {"tenant": "t", "namespace": "n", "name": "default"}});
        assert_eq!(ObjectKey::of(&sa), Some(ObjectKey::new("t", Some("n"), "default")));
        assert_eq!(ObjectKey::of(&json!({"metadata": {}})), None);
        assert_eq!(ObjectKey::new("t", Some("n"), "d").to_string(), "t/n/d");
    }
}
