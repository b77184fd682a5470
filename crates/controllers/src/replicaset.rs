//! The ReplicaSet controller: `spec.replicas` pods from the template, in every tenant.
//!
//! Keyed by ReplicaSet. A reconcile claims the pods of the set's namespace (adopts orphans
//! its selector matches, releases owned pods it no longer matches), creates or deletes
//! pods to reach `spec.replicas`, and writes the status.
//!
//! Expectations ([`crate::expectations`]): the pods a reconcile created or deleted are
//! remembered by name until the pod cache shows them (created) or shows them gone or
//! terminating (deleted); meanwhile the set is not resized again, so a cache that lags its
//! own writes never makes it create or delete twice. Creations go in slow-start batches
//! (1, 2, 4, ...) and stop at the first failure, so a quota or an invalid template costs
//! one request, not `replicas`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use api::json::At;
use async_trait::async_trait;
use client::{Client, DeleteParams, Patch, Resource, Scope};
use serde_json::{Value, json};

use crate::cache::{Cache, ObjectKey};
use crate::controller::{Action, Controller, Reconciler};
use crate::expectations::Expectations;
use crate::informer::Informer;
use crate::watcher::{ApiSource, Watcher};
use crate::workload::{self, i64_at, str_at};

/// The most pods one reconcile creates or deletes (Kubernetes' burst).
const BURST: usize = 500;

pub fn replicasets() -> Resource {
    Resource::new("apps", "v1", "replicasets", true)
}

pub struct ReplicaSets {
    client: Client,
    events: crate::events::Recorder,
    sets: Cache,
    pods: Cache,
    expectations: Expectations,
}

impl ReplicaSets {
    fn event(&self, rs: &Value, warning: bool, reason: &'static str, message: String) {
        self.events.record(crate::events::Event::about(rs, "apps/v1", "ReplicaSet", warning, reason, message));
    }

    /// Adopts or releases `pod` for `rs` with an optimistic (resource-versioned) patch.
    async fn set_owner(&self, scope: &Scope, rs: &Value, pod: &Value, adopt: bool) -> Result<(), client::Error> {
        let mut refs: Vec<Value> =
            pod.at("/metadata/ownerReferences").and_then(Value::as_array).cloned().unwrap_or_default();
        if adopt {
            refs.push(workload::owner_ref(rs, "apps/v1", "ReplicaSet"));
        } else {
            refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(workload::uid(rs)));
        }
        let patch = json!({"metadata": {
            "ownerReferences": if refs.is_empty() { Value::Null } else { Value::Array(refs) },
            "resourceVersion": str_at(pod, "/metadata/resourceVersion"),
        }});
        let name = str_at(pod, "/metadata/name");
        match self.client.patch(&Resource::pods(), scope, name, &Patch::Merge(patch)).await {
            Ok(_) => Ok(()),
            // Changed or gone meanwhile: the watch brings the new state and another pass.
            Err(e) if e.is_not_found() || e.is_conflict() => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn new_pod(rs: &Value) -> Value {
        let template = rs.at("/spec/template").cloned().unwrap_or(json!({}));
        let mut meta = template.get("metadata").cloned().unwrap_or(json!({}));
        if let Some(m) = meta.as_object_mut() {
            m.remove("name");
            m.remove("namespace");
            m.insert("generateName".into(), json!(format!("{}-", str_at(rs, "/metadata/name"))));
            m.insert("ownerReferences".into(), json!([workload::owner_ref(rs, "apps/v1", "ReplicaSet")]));
        }
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template.get("spec").cloned().unwrap_or(json!({}))})
    }

    /// Creates `count` pods in slow-start batches (each batch's creates at once, as
    /// requests on the shared connection); returns the names made and the first error.
    async fn create_pods(&self, scope: &Scope, rs: &Value, count: usize) -> (Vec<String>, Option<client::Error>) {
        let pod = Arc::new(Self::new_pod(rs));
        // Only the name is read back from each answer.
        let keep =
            Arc::new(client::Keep::shape(client::Shape::only(&[]).with("metadata", client::Shape::only(&["name"]))));
        let mut made = Vec::new();
        let mut batch = 1;
        while made.len() < count {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..batch.min(count - made.len()) {
                let (client, scope, pod, keep) = (self.client.clone(), scope.clone(), pod.clone(), keep.clone());
                tasks.spawn(async move { client.create_keeping(&Resource::pods(), &scope, &pod, &keep).await });
            }
            let mut error = None;
            while let Some(r) = tasks.join_next().await {
                match r {
                    Ok(Ok(p)) => made.push(str_at(&p, "/metadata/name").to_string()),
                    Ok(Err(e)) => error = Some(e),
                    Err(_) => {}
                }
            }
            if error.is_some() {
                return (made, error);
            }
            batch *= 2;
        }
        (made, None)
    }
}

/// The status a set's pods give it (conditions are added by the caller).
pub fn compute_status(rs: &Value, pods: &[Arc<Value>], now: i64) -> Value {
    let min_ready = i64_at(rs, "/spec/minReadySeconds");
    let template_labels = rs.at("/spec/template/metadata/labels").and_then(Value::as_object);
    // One pass, one look at each pod's labels and Ready condition: this runs over every pod
    // of the set on every sync.
    let (mut fully, mut ready, mut available) = (0, 0, 0);
    for p in pods {
        let labels = p.get("metadata").and_then(|m| m.get("labels"));
        if template_labels.is_none_or(|want| want.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))) {
            fully += 1;
        }
        let (is_ready, is_available) = workload::pod_readiness(p, min_ready, now);
        ready += usize::from(is_ready);
        available += usize::from(is_available);
    }
    json!({
        "replicas": pods.len(),
        "fullyLabeledReplicas": fully,
        "readyReplicas": ready,
        "availableReplicas": available,
        "observedGeneration": i64_at(rs, "/metadata/generation"),
    })
}

#[async_trait]
impl Reconciler for ReplicaSets {
    type Key = ObjectKey;
    type Error = client::Error;

    fn name(&self) -> &'static str {
        "replicaset"
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, client::Error> {
        let Some(rs) = self.sets.get(key) else {
            self.expectations.forget(key);
            return Ok(Action::Done);
        };
        let Some(ns) = key.namespace.as_deref() else { return Ok(Action::Done) };
        // A pod cache whose watch was lost lacks every change since, for as long as the
        // re-list takes (minutes, for 150,000 pods under load): counting from it would
        // let expectations lapse and create a set's pods again (the full-size scale run
        // made 22,743 pods too many that way). Wait for the re-list, which reconciles
        // every set again.
        if !self.pods.is_current() {
            return Ok(Action::RequeueAfter(Duration::from_secs(1)));
        }
        // Expectations first, the pods after (Kubernetes' order): a pod this set made that
        // reaches the cache between the two reads then only raises the count. The other way
        // round, a burst of the set's own pods arriving just after the count but before the
        // check satisfied the expectations with the count still short, and the set made them
        // again (the quiet full-size run: one set 1,360 pods for 1,000).
        let pod = |name: &str| self.pods.get(&ObjectKey::new(&key.tenant, Some(ns), name));
        let satisfied = self.expectations.satisfied(key, Instant::now(), pod);
        let scope = Scope::tenant(&key.tenant).in_namespace(ns);
        let rs_uid = workload::uid(&rs).to_string();
        let rs_deleting = workload::deleting(&rs);
        // Claim: owned pods that still match, plus orphans that match (adopted).
        let mut owned: Vec<Arc<Value>> = Vec::new();
        let selector = workload::Selector::of(&rs);
        let mut candidates = self.pods.by_index(OWNER_INDEX, &owned_index(&key.tenant, ns, &rs_uid));
        // Orphans: only those with the selector's rarest required label, when it has one.
        let orphans = selector
            .required_labels()
            .map(|(k, v)| orphan_label_index(&key.tenant, ns, k, v))
            .min_by_key(|i| self.pods.count_by_index(OWNER_INDEX, i))
            .unwrap_or_else(|| orphan_index(&key.tenant, ns));
        candidates.extend(self.pods.by_index(OWNER_INDEX, &orphans));
        for pod in candidates {
            let matches = selector.selects(&pod);
            match workload::controller_ref(&pod) {
                Some(r) if r.get("uid").and_then(Value::as_str) == Some(rs_uid.as_str()) => {
                    if matches || rs_deleting {
                        owned.push(pod);
                    } else {
                        self.set_owner(&scope, &rs, &pod, false).await?;
                    }
                }
                Some(_) => {}
                None if matches && !rs_deleting && !workload::deleting(&pod) && workload::pod_active(&pod) => {
                    self.set_owner(&scope, &rs, &pod, true).await?;
                    owned.push(pod);
                }
                None => {}
            }
        }
        let mut active: Vec<Arc<Value>> = owned.into_iter().filter(|p| workload::pod_active(p)).collect();
        let want = i64_at(&rs, "/spec/replicas").max(0) as usize;
        let mut failure: Option<(&str, String)> = None;
        if !rs_deleting && satisfied.is_ok() {
            if active.len() < want {
                let (made, error) = self.create_pods(&scope, &rs, (want - active.len()).min(BURST)).await;
                tracing::debug!(replicaset = %key, created = made.len(), "created pods");
                for pod in &made {
                    self.event(&rs, false, "SuccessfulCreate", format!("Created pod: {pod}"));
                }
                self.expectations.expect(key, made, Vec::new(), Instant::now());
                if let Some(e) = error {
                    if crate::expectations::ambiguous(&e) {
                        self.expectations.uncertain(key, Instant::now());
                    }
                    let message = format!("Error creating: {}", crate::events::api_message(&e));
                    self.event(&rs, true, "FailedCreate", message);
                    failure = Some(("FailedCreate", e.to_string()));
                }
            } else if active.len() > want {
                active.sort_by(|a, b| workload::deletion_order(a, b));
                let doomed: Vec<String> = active
                    .iter()
                    .take((active.len() - want).min(BURST))
                    .map(|p| str_at(p, "/metadata/name").to_string())
                    .collect();
                self.expectations.expect(key, Vec::new(), doomed.clone(), Instant::now());
                // All at once, as requests on the shared connection.
                let mut tasks = tokio::task::JoinSet::new();
                for name in doomed {
                    let (client, scope) = (self.client.clone(), scope.clone());
                    tasks.spawn(async move {
                        let params = DeleteParams::default();
                        match client.delete(&Resource::pods(), &scope, &name, &params).await {
                            Err(e) if !e.is_not_found() => Err((name, e)),
                            _ => Ok(name),
                        }
                    });
                }
                while let Some(r) = tasks.join_next().await {
                    if let Ok(Ok(name)) = &r {
                        self.event(&rs, false, "SuccessfulDelete", format!("Deleted pod: {name}"));
                    }
                    if let Ok(Err((name, e))) = r {
                        let message = format!("Error deleting: {}", crate::events::api_message(&e));
                        self.event(&rs, true, "FailedDelete", message);
                        // Not deleted: nothing to wait for.
                        self.expectations.not_deleted(key, &name);
                        failure = Some(("FailedDelete", e.to_string()));
                    }
                }
            }
        }
        // Status, from the pods as the cache has them (the next event updates it again).
        let now = workload::now_secs();
        let mut status = compute_status(&rs, &active, now);
        let mut conditions: Vec<Value> =
            rs.at("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
        match &failure {
            Some((reason, message)) => workload::set_condition(
                &mut conditions,
                "ReplicaFailure",
                "True",
                reason,
                message,
                &workload::now_rfc3339(),
            ),
            None => conditions.retain(|c| c.get("type").and_then(Value::as_str) != Some("ReplicaFailure")),
        }
        if !conditions.is_empty() {
            status["conditions"] = Value::Array(conditions);
        }
        let current = rs.get("status").cloned().unwrap_or(json!({}));
        if current != status {
            let name = &key.name;
            let mut body = (*rs).clone();
            body["status"] = status.clone();
            match self.client.replace_subresource(&replicasets(), &scope, name, "status", &body).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() || e.is_conflict() => {
                    return Ok(Action::RequeueAfter(Duration::from_millis(50)));
                }
                Err(e) => return Err(e),
            }
        }
        // Pods ready but not yet available: look again when they become so.
        let min_ready = i64_at(&rs, "/spec/minReadySeconds");
        if min_ready > 0 && status["readyReplicas"] != status["availableReplicas"] {
            return Ok(Action::RequeueAfter(Duration::from_secs(1)));
        }
        if let Some((_, message)) = failure {
            tracing::warn!(replicaset = %key, %message, "could not reach the desired replicas");
            return Ok(Action::RequeueAfter(Duration::from_secs(5)));
        }
        // Waiting for the cache: look again when the wait runs out, should no pod event come.
        if let Err(wait) = satisfied {
            return Ok(Action::RequeueAfter(wait));
        }
        Ok(Action::Done)
    }
}

/// Which sets to look at when a pod changes: its controller if that is a ReplicaSet, else
/// (an orphan) every set of its namespace whose selector matches it, found through the
/// sets' [`SELECTOR_INDEX`] (a set can only match a pod carrying its indexed label).
fn sets_for_pod(sets: &Cache, pod: &Value) -> Vec<ObjectKey> {
    let Some(key) = ObjectKey::of(pod) else { return Vec::new() };
    let ns = key.namespace.as_deref().unwrap_or("");
    match workload::controller_ref(pod) {
        Some(r) if str_at(r, "/kind") == "ReplicaSet" && str_at(r, "/apiVersion").starts_with("apps/") => {
            vec![ObjectKey::new(&key.tenant, Some(ns), str_at(r, "/name"))]
        }
        Some(_) => Vec::new(),
        None => {
            let mut found = sets.by_index(SELECTOR_INDEX, &set_label_index(&key.tenant, ns, None));
            for (k, v) in workload::labels(pod) {
                found.extend(sets.by_index(SELECTOR_INDEX, &set_label_index(&key.tenant, ns, Some((k, v)))));
            }
            found.into_iter().filter(|rs| workload::selects(rs, pod)).filter_map(|rs| ObjectKey::of(&rs)).collect()
        }
    }
}

/// The sets' index of their selectors: a set is under its first required label (its
/// namespace's entry without a label when its selector requires none).
const SELECTOR_INDEX: &str = "selector";

fn set_label_index(tenant: &str, namespace: &str, label: Option<(&str, &str)>) -> String {
    match label {
        Some((k, v)) => format!("{tenant}/{namespace}/{k}={v}"),
        None => format!("{tenant}/{namespace}"),
    }
}

fn set_index(rs: &Value) -> Option<String> {
    let (tenant, ns) = (str_at(rs, "/metadata/tenant"), str_at(rs, "/metadata/namespace"));
    Some(set_label_index(tenant, ns, workload::Selector::of(rs).required_labels().next()))
}

/// The pod index key of a controller's pods in one namespace. The tenant and namespace are
/// part of it because an ownerReference is whatever its writer says: a pod of another
/// tenant naming this set's uid must never be found as this set's.
fn owned_index(tenant: &str, namespace: &str, owner_uid: &str) -> String {
    format!("owner/{tenant}/{namespace}/{owner_uid}")
}

/// The pod index key of a namespace's pods without a controller (candidates for adoption).
fn orphan_index(tenant: &str, namespace: &str) -> String {
    format!("orphan/{tenant}/{namespace}")
}

/// The pod index key of a namespace's pods without a controller carrying one label (a
/// label's key holds no `=`, and its value neither `=` nor `/`: keys cannot collide).
fn orphan_label_index(tenant: &str, namespace: &str, key: &str, value: &str) -> String {
    format!("orphan/{tenant}/{namespace}/{key}={value}")
}

/// The shared pod cache's index of pods by their controlling ReplicaSet (or, for pods
/// without a controller, the candidates for adoption: their namespace, and their namespace
/// with each of their labels).
pub const OWNER_INDEX: &str = "owner";

/// Where a pod sits in the pod cache's [`OWNER_INDEX`]: under its controller, or among its
/// namespace's orphans (all of them, and those with each of its labels).
pub fn pod_index(pod: &Value) -> Vec<String> {
    let (tenant, ns) = (str_at(pod, "/metadata/tenant"), str_at(pod, "/metadata/namespace"));
    if let Some(r) = workload::controller_ref(pod) {
        return vec![owned_index(tenant, ns, str_at(r, "/uid"))];
    }
    let by_label = workload::labels(pod).map(|(k, v)| orphan_label_index(tenant, ns, k, v));
    std::iter::once(orphan_index(tenant, ns)).chain(by_label).collect()
}

/// The controller, watching every tenant's ReplicaSets, and every tenant's pods through the
/// process's shared pod informer (see [`crate::pod_informer`]; indexed by [`OWNER_INDEX`]).
pub fn controller(client: Client, pod_informer: &Arc<Informer>) -> Controller<ReplicaSets> {
    let (sets, pods) = (Cache::default().with_index(SELECTOR_INDEX, set_index), pod_informer.cache().clone());
    let events = crate::events::Recorder::new(client.clone(), "replicaset-controller");
    let reconciler = ReplicaSets {
        client: client.clone(),
        events,
        sets: sets.clone(),
        pods: pods.clone(),
        expectations: Expectations::default(),
    };
    let rs_source = ApiSource::new(client.clone(), replicasets(), Scope::all_tenants());
    let index = sets.clone();
    Controller::new(reconciler)
        .workers(4)
        .pace(workload::PACE)
        .watches(Watcher::new(rs_source, "replicasets"), sets, |rs| ObjectKey::of(rs).into_iter().collect())
        .watches_shared(pod_informer, move |pod| sets_for_pod(&index, pod))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_counts_labelled_ready_and_available_pods() {
        let rs = |min_ready: i64| {
            json!({"metadata": {"generation": 3}, "spec": {"minReadySeconds": min_ready,
                   "template": {"metadata": {"labels": {"app": "a", "tier": "t"}}}}})
        };
        let pod = |labels: Value, ready: Option<(&str, &str)>| {
            let conditions = match ready {
                Some((status, since)) => json!([{"type": "PodScheduled", "status": "True"},
                                                 {"type": "Ready", "status": status, "lastTransitionTime": since}]),
                None => json!([]),
            };
            Arc::new(json!({"metadata": {"labels": labels}, "status": {"conditions": conditions}}))
        };
        let full = json!({"app": "a", "tier": "t", "extra": "x"});
        let pods = [
            pod(full.clone(), Some(("True", "2026-01-01T00:00:00Z"))),
            pod(full.clone(), Some(("True", "2026-01-01T00:01:00Z"))),
            pod(json!({"app": "a"}), Some(("True", "2026-01-01T00:00:00Z"))),
            pod(full.clone(), Some(("False", "2026-01-01T00:00:00Z"))),
            pod(full, None),
        ];
        let at = api::time::parse_rfc3339("2026-01-01T00:01:30Z").unwrap();
        let status = |min_ready| compute_status(&rs(min_ready), &pods, at);
        let expect = |available: usize| {
            json!({"replicas": 5, "fullyLabeledReplicas": 4, "readyReplicas": 3,
                   "availableReplicas": available, "observedGeneration": 3})
        };
        assert_eq!(status(0), expect(3), "without minReadySeconds every ready pod is available");
        assert_eq!(status(60), expect(2), "ready for 90 s, 90 s and 30 s at 00:01:30");
        assert_eq!(status(100), expect(0));
    }

    #[test]
    fn pods_are_indexed_under_their_controller_within_their_tenant_and_namespace() {
        let owned = json!({"metadata": {"tenant": "a", "namespace": "n", "name": "p1",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u1",
                                 "controller": true}]}});
        let orphan = json!({"metadata": {"tenant": "a", "namespace": "n", "name": "p2"}});
        // Another tenant's pod naming the same uid is not found under tenant a's set.
        let mut foreign = owned.clone();
        foreign["metadata"]["tenant"] = json!("b");
        let cache = Cache::default().with_index(OWNER_INDEX, pod_index);
        for pod in [&owned, &orphan, &foreign] {
            cache.apply(&crate::watcher::Event::Applied(pod.clone()));
        }
        let names =
            |pods: Vec<Arc<Value>>| pods.iter().map(|p| str_at(p, "/metadata/name").to_string()).collect::<Vec<_>>();
        assert_eq!(names(cache.by_index(OWNER_INDEX, &owned_index("a", "n", "u1"))), ["p1"]);
        assert_eq!(names(cache.by_index(OWNER_INDEX, &orphan_index("a", "n"))), ["p2"]);
        assert_eq!(cache.by_index(OWNER_INDEX, &owned_index("b", "n", "u1")).len(), 1);
        assert!(cache.by_index(OWNER_INDEX, &owned_index("a", "m", "u1")).is_empty());
    }

    fn pod(tenant: &str, ns: &str, name: &str, labels: Value) -> Value {
        json!({"metadata": {"tenant": tenant, "namespace": ns, "name": name, "labels": labels}})
    }

    fn set(tenant: &str, ns: &str, name: &str, selector: Value) -> Value {
        json!({"metadata": {"tenant": tenant, "namespace": ns, "name": name}, "spec": {"selector": selector}})
    }

    #[test]
    fn orphans_are_indexed_under_each_label_until_adopted() {
        let cache = Cache::default().with_index(OWNER_INDEX, pod_index);
        let mut p = pod("a", "n", "p", json!({"app": "x", "tier": "web"}));
        cache.apply(&crate::watcher::Event::Applied(p.clone()));
        for entry in [
            orphan_index("a", "n"),
            orphan_label_index("a", "n", "app", "x"),
            orphan_label_index("a", "n", "tier", "web"),
        ] {
            assert_eq!(cache.count_by_index(OWNER_INDEX, &entry), 1, "{entry}");
        }
        assert_eq!(cache.count_by_index(OWNER_INDEX, &orphan_label_index("b", "n", "app", "x")), 0);
        p["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs",
                                                   "uid": "u1", "controller": true}]);
        cache.apply(&crate::watcher::Event::Applied(p));
        for entry in [orphan_index("a", "n"), orphan_label_index("a", "n", "app", "x")] {
            assert_eq!(cache.count_by_index(OWNER_INDEX, &entry), 0, "{entry} after the adoption");
        }
        assert_eq!(cache.count_by_index(OWNER_INDEX, &owned_index("a", "n", "u1")), 1);
    }

    #[test]
    fn an_orphans_sets_through_the_index_are_those_a_scan_finds() {
        let sets = Cache::default().with_index(SELECTOR_INDEX, set_index);
        let all = [
            set("a", "n", "by-app", json!({"matchLabels": {"app": "x"}})),
            set("a", "n", "by-app-and-tier", json!({"matchLabels": {"tier": "web", "app": "x"}})),
            set("a", "n", "other-app", json!({"matchLabels": {"app": "y"}})),
            set(
                "a",
                "n",
                "by-expression",
                json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["x"]}]}),
            ),
            set("a", "n", "empty", json!({})),
            set("a", "m", "other-namespace", json!({"matchLabels": {"app": "x"}})),
            set("b", "n", "other-tenant", json!({"matchLabels": {"app": "x"}})),
        ];
        sets.apply(&crate::watcher::Event::Restarted(all.to_vec()));
        for labels in
            [json!({"app": "x", "tier": "web"}), json!({"app": "x"}), json!({"app": "y"}), json!({}), json!(null)]
        {
            let orphan = pod("a", "n", "p", labels.clone());
            let mut found: Vec<String> = sets_for_pod(&sets, &orphan).into_iter().map(|k| k.name).collect();
            found.sort();
            let mut scan: Vec<String> = all
                .iter()
                .filter(|rs| ObjectKey::of(rs).is_some_and(|k| k.tenant == "a" && k.namespace.as_deref() == Some("n")))
                .filter(|rs| workload::selects(rs, &orphan))
                .map(|rs| str_at(rs, "/metadata/name").to_string())
                .collect();
            scan.sort();
            assert_eq!(found, scan, "labels {labels}");
        }
        let orphan = pod("a", "n", "p", json!({"app": "x", "tier": "web"}));
        let found: Vec<String> = sets_for_pod(&sets, &orphan).into_iter().map(|k| k.name).collect();
        assert_eq!(found.len(), 3, "{found:?}");
    }
}
