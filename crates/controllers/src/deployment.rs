//! The Deployment controller: one ReplicaSet per pod template (`<deployment>-<hash>`,
//! labelled `pod-template-hash`), rolled from old to new by the strategy (RollingUpdate
//! within maxSurge/maxUnavailable, or Recreate), with revisions, history cleanup, pausing
//! and the status and conditions `kubectl rollout status` reads.
//!
//! Keyed by Deployment; watches Deployments and ReplicaSets in every tenant. Each pass
//! recomputes everything from the caches (level-triggered): claim ReplicaSets, find or
//! create the new one, scale, then write the status.

use std::sync::Arc;
use std::time::Duration;

use api::json::At;
use async_trait::async_trait;
use client::{Client, DeleteParams, ListParams, Patch, Resource, Scope};
use serde_json::{Map, Value, json};

use crate::cache::{Cache, ObjectKey};
use crate::controller::{Action, Controller, Reconciler};
use crate::events::{Event, Recorder};
use crate::replicaset::replicasets;
use crate::watcher::{ApiSource, Watcher};
use crate::workload::{self, i64_at, str_at};

pub const HASH_LABEL: &str = "pod-template-hash";
pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const DESIRED: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";

/// Annotations of a Deployment not copied to its ReplicaSets.
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    DESIRED,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

pub fn deployments() -> Resource {
    Resource::new("apps", "v1", "deployments", true)
}

/// Drops zero values (null, false, 0, "", empty objects and lists), recursively.
///
/// Kubernetes compares templates as typed objects, where an omitted field and its zero
/// value are the same; objects here are JSON as clients sent them, and a client writing
/// protobuf (kubectl 1.33 does) sends every zero value (`stdin: false`, `generation: 0`)
/// that the same client's JSON leaves out (as in the patch of `rollout undo`). Without
/// this, undoing to such a template would make a new ReplicaSet instead of reusing the old.
fn prune_zeros(v: &mut Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !*b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(items) => {
            for item in items.iter_mut() {
                prune_zeros(item);
            }
            items.is_empty()
        }
        Value::Object(map) => {
            map.retain(|_, v| !prune_zeros(v));
            map.is_empty()
        }
    }
}

/// A template as compared: without its `pod-template-hash` label and zero values.
fn without_hash(template: &Value) -> Value {
    let mut t = template.clone();
    prune_zeros(&mut t);
    if let Some(labels) = t.pointer_mut("/metadata/labels").and_then(Value::as_object_mut) {
        labels.remove(HASH_LABEL);
        if labels.is_empty() {
            t["metadata"].as_object_mut().map(|m| m.remove("labels"));
        }
    }
    if t.get("metadata").and_then(Value::as_object).is_some_and(Map::is_empty) {
        t.as_object_mut().map(|m| m.remove("metadata"));
    }
    t
}

fn revision(rs: &Value) -> i64 {
    str_at(rs, "/metadata/annotations/deployment.kubernetes.io~1revision").parse().unwrap_or(0)
}

fn replicas(rs: &Value) -> i64 {
    i64_at(rs, "/spec/replicas")
}

/// How many pods the new ReplicaSet should have now under a rolling update.
pub fn rolling_new_replicas(wanted: i64, max_surge: i64, all_specs: i64, new_spec: i64) -> i64 {
    let max_total = wanted + max_surge;
    if all_specs >= max_total {
        return new_spec;
    }
    new_spec + (max_total - all_specs).min(wanted - new_spec).max(0)
}

/// How far old ReplicaSets may be scaled down now: `(unhealthy first, then healthy)`
/// budget, from the total of specs, the available pods and the limits.
pub fn rolling_scale_down_budget(
    wanted: i64,
    max_unavailable: i64,
    all_specs: i64,
    new_spec: i64,
    new_available: i64,
) -> i64 {
    let min_available = wanted - max_unavailable;
    let new_unavailable = new_spec - new_available;
    (all_specs - min_available - new_unavailable).max(0)
}

/// One active ReplicaSet as proportional scaling sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetSize {
    pub replicas: i64,
    /// Its `max-replicas` annotation: the Deployment's size plus surge when last scaled.
    pub max_replicas: Option<i64>,
    /// For ties: creation time and name (later is newer).
    pub created: (i64, String),
}

/// Kubernetes' proportional scaling of a Deployment resized during a rollout: every active
/// set grows or shrinks in the proportion of its share of the Deployment's previous size
/// (`max-replicas`; `fallback` when a set lacks it) to the new one (`want + max_surge`),
/// rounded to nearest, never past what is left to add or take; what rounding leaves over
/// goes to the first set in order (largest, then the newest when adding, the oldest when
/// removing). Returns the new sizes, in the order of `sets`.
pub fn proportional_sizes(sets: &[SetSize], want: i64, max_surge: i64, fallback: i64) -> Vec<i64> {
    let allowed = if want > 0 { want + max_surge } else { 0 };
    let to_add = allowed - sets.iter().map(|s| s.replicas).sum::<i64>();
    let mut order: Vec<usize> = (0..sets.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&sets[a], &sets[b]);
        let by_age = if to_add > 0 { b.created.cmp(&a.created) } else { a.created.cmp(&b.created) };
        b.replicas.cmp(&a.replicas).then(by_age)
    });
    let mut sizes: Vec<i64> = sets.iter().map(|s| s.replicas).collect();
    if to_add == 0 {
        return sizes;
    }
    let mut added = 0;
    for &i in &order {
        let set = &sets[i];
        if set.replicas == 0 || added == to_add {
            continue;
        }
        let fraction = if want == 0 {
            -set.replicas
        } else {
            let annotated = set.max_replicas.unwrap_or(fallback);
            let scaled = if annotated > 0 {
                (set.replicas * (want + max_surge)) as f64 / annotated as f64
            } else {
                set.replicas as f64
            };
            scaled.round() as i64 - set.replicas
        };
        let left = to_add - added;
        let share = if to_add > 0 { fraction.min(left) } else { fraction.max(left) };
        sizes[i] += share;
        added += share;
    }
    if let Some(&first) = order.first() {
        sizes[first] = (sizes[first] + to_add - added).max(0);
    }
    sizes
}

/// A resize of the Deployment not yet spread over its sets: an active set records another
/// desired size than the Deployment's.
fn is_scaling_event(active: &[&Arc<Value>], want: i64) -> bool {
    active.iter().any(|rs| {
        rs.at("/metadata/annotations")
            .and_then(|a| a.get(DESIRED))
            .and_then(Value::as_str)
            .and_then(|v| v.parse::<i64>().ok())
            .is_some_and(|desired| desired != want)
    })
}

pub struct Deployments {
    client: Client,
    events: Recorder,
    deployments: Cache,
    sets: Cache,
}

struct Ctx {
    scope: Scope,
    key: ObjectKey,
}

impl Deployments {
    async fn patch_rs(&self, ctx: &Ctx, rs: &Value, patch: Value) -> Result<Value, client::Error> {
        self.client.patch(&replicasets(), &ctx.scope, str_at(rs, "/metadata/name"), &Patch::Merge(patch)).await
    }

    async fn scale_rs(&self, ctx: &Ctx, d: &Value, rs: &Value, to: i64, max_surge: i64) -> Result<(), client::Error> {
        let want = i64_at(d, "/spec/replicas");
        let annotations = rs.at("/metadata/annotations");
        let same = replicas(rs) == to
            && annotations.and_then(|a| a.get(DESIRED)).and_then(Value::as_str) == Some(&want.to_string())
            && annotations.and_then(|a| a.get(MAX_REPLICAS)).and_then(Value::as_str)
                == Some(&(want + max_surge).to_string());
        if same {
            return Ok(());
        }
        tracing::debug!(deployment = %ctx.key, replicaset = str_at(rs, "/metadata/name"), to, "scaling");
        let from = replicas(rs);
        self.patch_rs(
            ctx,
            rs,
            json!({
                "metadata": {"annotations": {DESIRED: want.to_string(), MAX_REPLICAS: (want + max_surge).to_string()}},
                "spec": {"replicas": to},
            }),
        )
        .await?;
        if from != to {
            self.scaled_event(d, str_at(rs, "/metadata/name"), from < to, to);
        }
        Ok(())
    }

    /// `ScalingReplicaSet` on the Deployment, worded as Kubernetes words it.
    fn scaled_event(&self, d: &Value, rs_name: &str, up: bool, to: i64) {
        let message = format!("Scaled {} replica set {rs_name} to {to}", if up { "up" } else { "down" });
        self.events.record(Event::about(d, "apps/v1", "Deployment", false, "ScalingReplicaSet", message));
    }

    /// The ReplicaSets this Deployment controls, adopting orphans its selector matches and
    /// releasing those it no longer matches.
    async fn claim(&self, ctx: &Ctx, d: &Value) -> Result<Vec<Arc<Value>>, client::Error> {
        let uid = workload::uid(d);
        let mut owned = Vec::new();
        let ns = ctx.key.namespace.as_deref().unwrap_or("");
        for rs in self.sets.list_namespace(&ctx.key.tenant, ns) {
            let matches = workload::selects(d, &rs);
            match workload::controller_ref(&rs) {
                Some(r) if str_at(r, "/uid") == uid => {
                    if matches {
                        owned.push(rs);
                    } else {
                        let refs: Vec<Value> = rs
                            .at("/metadata/ownerReferences")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                            .filter(|r| str_at(r, "/uid") != uid)
                            .cloned()
                            .collect();
                        let refs = if refs.is_empty() { Value::Null } else { Value::Array(refs) };
                        let rv = str_at(&rs, "/metadata/resourceVersion");
                        ignore_gone(
                            self.patch_rs(
                                ctx,
                                &rs,
                                json!({"metadata": {"ownerReferences": refs, "resourceVersion": rv}}),
                            )
                            .await,
                        )?;
                    }
                }
                Some(_) => {}
                None if matches && !workload::deleting(&rs) => {
                    let mut refs: Vec<Value> =
                        rs.at("/metadata/ownerReferences").and_then(Value::as_array).cloned().unwrap_or_default();
                    refs.push(workload::owner_ref(d, "apps/v1", "Deployment"));
                    let rv = str_at(&rs, "/metadata/resourceVersion");
                    if ignore_gone(
                        self.patch_rs(ctx, &rs, json!({"metadata": {"ownerReferences": refs, "resourceVersion": rv}}))
                            .await,
                    )?
                    .is_some()
                    {
                        owned.push(rs);
                    }
                }
                None => {}
            }
        }
        Ok(owned)
    }

    /// Finds the ReplicaSet of the current template, bringing its revision and annotations
    /// up to date, or creates it (`create`). `Ok(None)` with `create`: a hash collision
    /// was recorded in the status; the next pass retries with another name.
    async fn new_replicaset(
        &self,
        ctx: &Ctx,
        d: &Value,
        sets: &[Arc<Value>],
        create: bool,
        initial: i64,
        max_surge: i64,
    ) -> Result<Option<Value>, client::Error> {
        let template = d.at("/spec/template").cloned().unwrap_or(json!({}));
        let wanted_template = without_hash(&template);
        let existing = sets
            .iter()
            .filter(|rs| without_hash(rs.at("/spec/template").unwrap_or(&Value::Null)) == wanted_template)
            .min_by_key(|rs| parse_created(rs));
        let max_old = sets
            .iter()
            .filter(|rs| existing.is_none_or(|e| workload::uid(e) != workload::uid(rs)))
            .map(|rs| revision(rs))
            .max()
            .unwrap_or(0);
        let new_revision = max_old + 1;
        let mut annotations = copied_annotations(d);
        let want = i64_at(d, "/spec/replicas");
        if let Some(rs) = existing {
            let current = revision(rs);
            let rev = if current < new_revision { new_revision } else { current };
            annotations.insert(REVISION.into(), json!(rev.to_string()));
            let stale =
                annotations.iter().any(|(k, v)| rs.at("/metadata/annotations").and_then(|a| a.get(k)) != Some(v))
                    || i64_at(rs, "/spec/minReadySeconds") != i64_at(d, "/spec/minReadySeconds");
            let rs = if stale {
                self.patch_rs(ctx, rs, json!({"metadata": {"annotations": annotations}, "spec": {"minReadySeconds": i64_at(d, "/spec/minReadySeconds")}})).await?
            } else {
                (**rs).clone()
            };
            self.set_deployment_revision(ctx, d, revision(&rs)).await?;
            return Ok(Some(rs));
        }
        if !create {
            return Ok(None);
        }
        let collisions = i64_at(d, "/status/collisionCount");
        let hash = workload::template_hash(&wanted_template, collisions);
        let mut rs_template = template.clone();
        rs_template["metadata"]["labels"][HASH_LABEL] = json!(hash);
        let mut selector = d.at("/spec/selector").cloned().unwrap_or(json!({}));
        selector["matchLabels"][HASH_LABEL] = json!(hash);
        annotations.insert(REVISION.into(), json!(new_revision.to_string()));
        annotations.insert(DESIRED.into(), json!(want.to_string()));
        annotations.insert(MAX_REPLICAS.into(), json!((want + max_surge).to_string()));
        let mut labels = template.at("/metadata/labels").cloned().unwrap_or(json!({}));
        labels[HASH_LABEL] = json!(hash);
        let name = format!("{}-{}", ctx.key.name, hash);
        let rs = json!({
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": name,
                "labels": labels,
                "annotations": annotations,
                "ownerReferences": [workload::owner_ref(d, "apps/v1", "Deployment")],
            },
            "spec": {
                "replicas": initial,
                "minReadySeconds": i64_at(d, "/spec/minReadySeconds"),
                "selector": selector,
                "template": rs_template,
            },
        });
        match self.client.create(&replicasets(), &ctx.scope, &rs).await {
            Ok(created) => {
                tracing::info!(deployment = %ctx.key, replicaset = %name, "created new ReplicaSet");
                if initial > 0 {
                    self.scaled_event(d, &name, true, initial);
                }
                self.set_deployment_revision(ctx, d, new_revision).await?;
                Ok(Some(created))
            }
            Err(e) if e.is_already_exists() => {
                // Ours with the same template (our cache lags): use it. Otherwise a
                // collision: count it so the next hash differs.
                let other = self.client.get(&replicasets(), &ctx.scope, &name).await?;
                if workload::controlled_by(&other, workload::uid(d))
                    && without_hash(other.at("/spec/template").unwrap_or(&Value::Null)) == wanted_template
                {
                    return Ok(Some(other));
                }
                let mut body = d.clone();
                body["status"]["collisionCount"] = json!(collisions + 1);
                ignore_gone(
                    self.client.replace_subresource(&deployments(), &ctx.scope, &ctx.key.name, "status", &body).await,
                )?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether a pod of an old ReplicaSet still exists in a phase other than Succeeded or
    /// Failed, terminating ones included: Recreate promises that no new pod starts beside
    /// an old one. The sets' status counts terminating pods out, so this asks the API (one
    /// list by the Deployment's selector, made only once the old sets are scaled to none).
    async fn old_pods_remain(&self, ctx: &Ctx, d: &Value, old: &[Arc<Value>]) -> Result<bool, client::Error> {
        if old.is_empty() {
            return Ok(false);
        }
        let Some(selector) = d.at("/spec/selector").and_then(workload::selector_string) else {
            return Ok(false);
        };
        let params = ListParams { label_selector: Some(selector), ..ListParams::default() };
        let pods = self.client.list(&Resource::pods(), &ctx.scope, &params).await?;
        Ok(old_pods_running(old, &pods.items))
    }

    async fn set_deployment_revision(&self, ctx: &Ctx, d: &Value, rev: i64) -> Result<(), client::Error> {
        let have = str_at(d, "/metadata/annotations/deployment.kubernetes.io~1revision");
        if have == rev.to_string() {
            return Ok(());
        }
        let patch = json!({"metadata": {"annotations": {REVISION: rev.to_string()}}});
        ignore_gone(self.client.patch(&deployments(), &ctx.scope, &ctx.key.name, &Patch::Merge(patch)).await)?;
        Ok(())
    }

    /// Deletes old, empty ReplicaSets beyond `revisionHistoryLimit`, oldest revision first.
    async fn clean_up(&self, ctx: &Ctx, d: &Value, old: &[Arc<Value>]) -> Result<(), client::Error> {
        let Some(limit) = d.at("/spec/revisionHistoryLimit").and_then(Value::as_i64) else { return Ok(()) };
        let mut empty: Vec<&Arc<Value>> = old
            .iter()
            .filter(|rs| replicas(rs) == 0 && i64_at(rs, "/status/replicas") == 0 && !workload::deleting(rs))
            .collect();
        let excess = empty.len() as i64 - limit;
        if excess <= 0 {
            return Ok(());
        }
        empty.sort_by_key(|rs| revision(rs));
        for rs in empty.into_iter().take(excess as usize) {
            let params = DeleteParams { precondition_uid: Some(workload::uid(rs).into()), ..DeleteParams::default() };
            ignore_gone(self.client.delete(&replicasets(), &ctx.scope, str_at(rs, "/metadata/name"), &params).await)?;
        }
        Ok(())
    }
}

fn parse_created(rs: &Value) -> (i64, String) {
    (workload::parse_time(str_at(rs, "/metadata/creationTimestamp")), str_at(rs, "/metadata/name").to_string())
}

fn copied_annotations(d: &Value) -> Map<String, Value> {
    d.at("/metadata/annotations")
        .and_then(Value::as_object)
        .map(|a| {
            a.iter().filter(|(k, _)| !NOT_COPIED.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect()
        })
        .unwrap_or_default()
}

/// Whether any of `pods` belongs to one of the `old` sets and may still run (not
/// Succeeded or Failed; a terminating pod runs until it is gone).
fn old_pods_running(old: &[Arc<Value>], pods: &[Value]) -> bool {
    pods.iter().any(|p| {
        workload::controller_ref(p).is_some_and(|r| old.iter().any(|rs| workload::uid(rs) == str_at(r, "/uid")))
            && !matches!(str_at(p, "/status/phase"), "Succeeded" | "Failed")
    })
}

/// Not found or conflicting: the caches bring the new state and another pass.
fn ignore_gone<T>(r: Result<T, client::Error>) -> Result<Option<T>, client::Error> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() || e.is_conflict() => Ok(None),
        Err(e) => Err(e),
    }
}

/// The status of a Deployment from its ReplicaSets, with conditions as Kubernetes
/// words them. Returns the status and, while progressing, when to check the deadline.
pub fn compute_status(
    d: &Value,
    new_rs: Option<&Value>,
    all: &[Value],
    max_unavailable: i64,
    now: i64,
) -> (Value, Option<Duration>) {
    let want = i64_at(d, "/spec/replicas");
    let sum = |p: &str| all.iter().map(|rs| i64_at(rs, p)).sum::<i64>();
    let total = sum("/status/replicas");
    let available = sum("/status/availableReplicas");
    let updated = new_rs.map(|rs| i64_at(rs, "/status/replicas")).unwrap_or(0);
    let mut status = json!({
        "observedGeneration": i64_at(d, "/metadata/generation"),
        "replicas": total,
        "updatedReplicas": updated,
        "readyReplicas": sum("/status/readyReplicas"),
        "availableReplicas": available,
        "unavailableReplicas": (total - available).max(0),
    });
    if let Some(c) = d.at("/status/collisionCount") {
        status["collisionCount"] = c.clone();
    }
    let old_status = d.get("status").cloned().unwrap_or(json!({}));
    let mut conditions: Vec<Value> =
        old_status.get("conditions").and_then(Value::as_array).cloned().unwrap_or_default();
    let stamp = api::time::rfc3339(now);
    if available >= want - max_unavailable {
        workload::set_condition(
            &mut conditions,
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
            &stamp,
        );
    } else {
        workload::set_condition(
            &mut conditions,
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
            &stamp,
        );
    }
    let mut recheck = None;
    let paused = d.at("/spec/paused").and_then(Value::as_bool) == Some(true);
    let rs_name = new_rs.map(|rs| str_at(rs, "/metadata/name")).unwrap_or("");
    if let Some(deadline) = d.at("/spec/progressDeadlineSeconds").and_then(Value::as_i64) {
        let progressing = workload::condition(&old_status, "Progressing");
        let reason = progressing.map(|c| str_at(c, "/reason")).unwrap_or("");
        let complete = updated == want && total == want && available == want;
        if paused {
            if reason != "DeploymentPaused" {
                workload::set_condition(
                    &mut conditions,
                    "Progressing",
                    "Unknown",
                    "DeploymentPaused",
                    "Deployment is paused",
                    &stamp,
                );
            }
        } else if complete && new_rs.is_some() {
            let msg = format!("ReplicaSet \"{rs_name}\" has successfully progressed.");
            workload::set_condition(&mut conditions, "Progressing", "True", "NewReplicaSetAvailable", &msg, &stamp);
        } else if new_rs.is_some() {
            // Progress: any count moved since the last status, or a new template.
            let moved = ["replicas", "updatedReplicas", "readyReplicas", "availableReplicas"]
                .iter()
                .any(|k| old_status.get(*k).and_then(Value::as_i64).unwrap_or(0) != status[*k].as_i64().unwrap_or(0))
                || !progressing.is_some_and(|c| str_at(c, "/message").contains(&format!("\"{rs_name}\"")))
                || reason == "DeploymentPaused"
                || reason == "DeploymentResumed";
            if moved {
                let msg = format!("ReplicaSet \"{rs_name}\" is progressing.");
                workload::set_condition(&mut conditions, "Progressing", "True", "ReplicaSetUpdated", &msg, &stamp);
                recheck = Some(Duration::from_secs(deadline.max(0) as u64 + 1));
            } else if reason != "ProgressDeadlineExceeded" {
                let since = progressing.map(|c| workload::parse_time(str_at(c, "/lastUpdateTime"))).unwrap_or(now);
                if since + deadline < now {
                    let msg = format!("ReplicaSet \"{rs_name}\" has timed out progressing.");
                    workload::set_condition(
                        &mut conditions,
                        "Progressing",
                        "False",
                        "ProgressDeadlineExceeded",
                        &msg,
                        &stamp,
                    );
                } else {
                    recheck = Some(Duration::from_secs((since + deadline - now).max(0) as u64 + 1));
                }
            }
        }
    } else {
        conditions.retain(|c| str_at(c, "/type") != "Progressing");
    }
    if !conditions.is_empty() {
        status["conditions"] = Value::Array(conditions);
    }
    (status, recheck)
}

#[async_trait]
impl Reconciler for Deployments {
    type Key = ObjectKey;
    type Error = client::Error;

    fn name(&self) -> &'static str {
        "deployment"
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, client::Error> {
        let Some(d) = self.deployments.get(key) else { return Ok(Action::Done) };
        let Some(ns) = key.namespace.as_deref() else { return Ok(Action::Done) };
        if workload::deleting(&d) {
            return Ok(Action::Done);
        }
        let ctx = Ctx { scope: Scope::tenant(&key.tenant).in_namespace(ns), key: key.clone() };
        let sets = self.claim(&ctx, &d).await?;
        let want = i64_at(&d, "/spec/replicas").max(0);
        let strategy = d.at("/spec/strategy").cloned().unwrap_or(json!({}));
        let recreate = str_at(&strategy, "/type") == "Recreate";
        let (max_surge, max_unavailable) =
            if recreate { (0, want) } else { workload::surge_and_unavailable(&strategy, want) };
        let paused = d.at("/spec/paused").and_then(Value::as_bool) == Some(true);
        let template = without_hash(d.at("/spec/template").unwrap_or(&Value::Null));
        let is_new = |rs: &Value| without_hash(rs.at("/spec/template").unwrap_or(&Value::Null)) == template;
        let old: Vec<Arc<Value>> = sets.iter().filter(|rs| !is_new(rs)).cloned().collect();
        let old_active: Vec<&Arc<Value>> = old.iter().filter(|rs| replicas(rs) > 0).collect();
        let all_specs: i64 = sets.iter().map(|rs| replicas(rs)).sum();

        // A resize during a rollout (or while paused) is first spread over the active sets in
        // proportion, as Kubernetes does; the rollout goes on from there in the next pass.
        let active: Vec<&Arc<Value>> = sets.iter().filter(|rs| replicas(rs) > 0).collect();
        let saturated = sets.iter().any(|rs| {
            is_new(rs) && replicas(rs) == want && i64_at(rs, "/status/availableReplicas") == want && {
                let desired = rs.at("/metadata/annotations").and_then(|a| a.get(DESIRED));
                desired.and_then(Value::as_str) == Some(&want.to_string())
            }
        });
        if !recreate && !saturated && active.len() > 1 && is_scaling_event(&active, want) {
            let sizes: Vec<SetSize> = active
                .iter()
                .map(|rs| SetSize {
                    replicas: replicas(rs),
                    max_replicas: rs
                        .at("/metadata/annotations")
                        .and_then(|a| a.get(MAX_REPLICAS))
                        .and_then(Value::as_str)
                        .and_then(|v| v.parse().ok()),
                    created: parse_created(rs),
                })
                .collect();
            let to = proportional_sizes(&sizes, want, max_surge, i64_at(&d, "/status/replicas"));
            for (rs, to) in active.iter().zip(to) {
                self.scale_rs(&ctx, &d, rs, to, max_surge).await?;
            }
            let new_rs = sets.iter().find(|rs| is_new(rs)).map(|rs| (**rs).clone());
            let recheck = self.write_status(&ctx, &d, new_rs.as_ref(), &sets, max_unavailable).await?;
            return Ok(recheck.map_or(Action::Done, Action::RequeueAfter));
        }

        let new_rs = if paused {
            // Paused: only proportional scaling, no new ReplicaSet.
            self.new_replicaset(&ctx, &d, &sets, false, 0, max_surge).await?
        } else if recreate {
            // Old pods all go before the new ones come.
            for rs in &old_active {
                self.scale_rs(&ctx, &d, rs, 0, max_surge).await?;
            }
            let old_running: i64 = old.iter().map(|rs| i64_at(rs, "/status/replicas")).sum();
            if !old_active.is_empty() || old_running > 0 || self.old_pods_remain(&ctx, &d, &old).await? {
                let existing = self.new_replicaset(&ctx, &d, &sets, false, 0, max_surge).await?;
                self.write_status(&ctx, &d, existing.as_ref(), &sets, max_unavailable).await?;
                return Ok(Action::RequeueAfter(Duration::from_secs(1)));
            }
            let new_rs = self.new_replicaset(&ctx, &d, &sets, true, want, max_surge).await?;
            if let Some(rs) = &new_rs {
                self.scale_rs(&ctx, &d, rs, want, max_surge).await?;
            }
            new_rs
        } else {
            let current_new = sets.iter().find(|rs| is_new(rs)).map(|rs| replicas(rs)).unwrap_or(0);
            let initial = rolling_new_replicas(want, max_surge, all_specs, current_new);
            let new_rs = self.new_replicaset(&ctx, &d, &sets, true, initial, max_surge).await?;
            let Some(rs) = new_rs else { return Ok(Action::RequeueAfter(Duration::from_millis(100))) };
            let all_specs = all_specs - current_new + replicas(&rs);
            // Scale up the new set as far as the surge allows; down at once when it alone
            // has more than wanted (a scale-down).
            let target = if replicas(&rs) > want {
                want
            } else {
                rolling_new_replicas(want, max_surge, all_specs, replicas(&rs))
            };
            self.scale_rs(&ctx, &d, &rs, target, max_surge).await?;
            let all_specs = all_specs - replicas(&rs) + target;
            // Scale down old sets as far as availability allows: unhealthy pods first.
            let mut budget = rolling_scale_down_budget(
                want,
                max_unavailable,
                all_specs,
                target,
                i64_at(&rs, "/status/availableReplicas"),
            );
            let mut olds: Vec<&Arc<Value>> = old_active.clone();
            olds.sort_by_key(|rs| parse_created(rs));
            let mut new_specs: Vec<i64> = olds.iter().map(|rs| replicas(rs)).collect();
            for (i, rs) in olds.iter().enumerate() {
                if budget <= 0 {
                    break;
                }
                let unhealthy = (new_specs[i] - i64_at(rs, "/status/availableReplicas")).max(0);
                let cut = unhealthy.min(budget);
                new_specs[i] -= cut;
                budget -= cut;
            }
            // Then healthy ones, keeping at least wanted - maxUnavailable available.
            let available: i64 = sets.iter().map(|rs| i64_at(rs, "/status/availableReplicas")).sum();
            let mut healthy_budget = (available - (want - max_unavailable)).max(0);
            for spec in new_specs.iter_mut() {
                if healthy_budget <= 0 {
                    break;
                }
                let cut = (*spec).min(healthy_budget);
                *spec -= cut;
                healthy_budget -= cut;
            }
            for (rs, to) in olds.iter().zip(new_specs) {
                self.scale_rs(&ctx, &d, rs, to, max_surge).await?;
            }
            Some(rs)
        };
        if paused && let Some(rs) = &new_rs {
            // A scaling event while paused goes to the current set alone when it is the only one.
            if old_active.is_empty() && replicas(rs) != want {
                self.scale_rs(&ctx, &d, rs, want, max_surge).await?;
            }
        }
        let recheck = self.write_status(&ctx, &d, new_rs.as_ref(), &sets, max_unavailable).await?;
        // History, once the rollout is complete.
        if let Some(rs) = &new_rs
            && i64_at(rs, "/status/availableReplicas") == want
            && replicas(rs) == want
        {
            self.clean_up(&ctx, &d, &old).await?;
        }
        Ok(match recheck {
            Some(after) => Action::RequeueAfter(after),
            None => Action::Done,
        })
    }
}

impl Deployments {
    async fn write_status(
        &self,
        ctx: &Ctx,
        d: &Value,
        new_rs: Option<&Value>,
        sets: &[Arc<Value>],
        max_unavailable: i64,
    ) -> Result<Option<Duration>, client::Error> {
        // The cache's view of the sets, the new one as just written.
        let new_uid = new_rs.map(workload::uid).unwrap_or("");
        let all: Vec<Value> = sets
            .iter()
            .filter(|rs| workload::uid(rs) != new_uid)
            .map(|rs| (**rs).clone())
            .chain(new_rs.cloned())
            .collect();
        let (status, recheck) = compute_status(d, new_rs, &all, max_unavailable, workload::now_secs());
        if d.get("status") != Some(&status) {
            let mut body = d.clone();
            body["status"] = status;
            ignore_gone(
                self.client.replace_subresource(&deployments(), &ctx.scope, &ctx.key.name, "status", &body).await,
            )?;
        }
        Ok(recheck)
    }
}

/// The Deployment that controls a ReplicaSet, or (an orphan) those whose selector matches it.
fn deployments_for_set(deployments: &Cache, rs: &Value) -> Vec<ObjectKey> {
    let Some(key) = ObjectKey::of(rs) else { return Vec::new() };
    let ns = key.namespace.as_deref().unwrap_or("");
    match workload::controller_ref(rs) {
        Some(r) if str_at(r, "/kind") == "Deployment" => {
            vec![ObjectKey::new(&key.tenant, Some(ns), str_at(r, "/name"))]
        }
        Some(_) => Vec::new(),
        None => deployments
            .list_namespace(&key.tenant, ns)
            .into_iter()
            .filter(|d| workload::selects(d, rs))
            .filter_map(|d| ObjectKey::of(&d))
            .collect(),
    }
}

/// The controller, watching every tenant's Deployments and ReplicaSets.
pub fn controller(client: Client) -> Controller<Deployments> {
    let (deploys, sets) = (Cache::default(), Cache::default());
    let reconciler = Deployments {
        client: client.clone(),
        events: Recorder::new(client.clone(), "deployment-controller"),
        deployments: deploys.clone(),
        sets: sets.clone(),
    };
    let d_source = ApiSource::new(client.clone(), deployments(), Scope::all_tenants());
    let rs_source = ApiSource::new(client, replicasets(), Scope::all_tenants());
    let index = deploys.clone();
    Controller::new(reconciler)
        .workers(4)
        .pace(workload::PACE)
        .watches(Watcher::new(d_source, "deployments"), deploys, |d| ObjectKey::of(d).into_iter().collect())
        .watches(Watcher::new(rs_source, "replicasets (deployments)"), sets, move |rs| deployments_for_set(&index, rs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolling_update_steps() {
        // 10 wanted, surge 3: from a full old set, the new one may start with 3.
        assert_eq!(rolling_new_replicas(10, 3, 10, 0), 3);
        // Already at the surge limit: no more.
        assert_eq!(rolling_new_replicas(10, 3, 13, 3), 3);
        // Never past the wanted count.
        assert_eq!(rolling_new_replicas(10, 3, 9, 9), 10);
        // Old may drop by what keeps 8 (10 - 2) available, counting the new set's unavailable pods.
        assert_eq!(rolling_scale_down_budget(10, 2, 13, 3, 0), 2);
        assert_eq!(rolling_scale_down_budget(10, 2, 13, 3, 3), 5);
        assert_eq!(rolling_scale_down_budget(10, 0, 11, 1, 0), 0);
    }

    #[test]
    fn templates_compare_as_typed_objects() {
        let proto = json!({"metadata": {"generation": 0, "labels": {"app": "x"}},
                           "spec": {"containers": [{"name": "c", "stdin": false, "resources": {}}], "hostIPC": false}});
        let json = json!({"metadata": {"creationTimestamp": null, "labels": {"app": "x"}},
                          "spec": {"containers": [{"name": "c", "resources": {}}]}});
        assert_eq!(without_hash(&proto), without_hash(&json));
        let other =
            json!({"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "stdin": true}]}});
        assert_ne!(without_hash(&proto), without_hash(&other));
    }

    fn sized(sets: &[(i64, Option<i64>, i64)]) -> Vec<SetSize> {
        sets.iter()
            .map(|&(replicas, max_replicas, created)| SetSize {
                replicas,
                max_replicas,
                created: (created, String::new()),
            })
            .collect()
    }

    /// Kubernetes' cases (its deployment controller's scale tests and the documentation's
    /// example): `(replicas, max-replicas annotation, creation time)` per set, the new set
    /// being the newest.
    #[test]
    fn resizes_spread_over_the_sets_in_proportion() {
        // The documentation's example: 10 wanted, surge 3, a stuck rollout with 8 old and 5
        // new, scaled to 15: 3 more to the old set, 2 to the new.
        assert_eq!(proportional_sizes(&sized(&[(8, Some(13), 1), (5, Some(13), 2)]), 15, 3, 13), [11, 7]);
        // No surge; 5 -> 10: old 3 -> 6, new 2 -> 4.
        assert_eq!(proportional_sizes(&sized(&[(3, Some(5), 1), (2, Some(5), 2)]), 10, 0, 5), [6, 4]);
        // 5 -> 3: old 3 -> 2, new 2 -> 1.
        assert_eq!(proportional_sizes(&sized(&[(3, Some(5), 1), (2, Some(5), 2)]), 3, 0, 5), [2, 1]);
        // 9 -> 4: new 8 -> 4, old 1 -> 0.
        assert_eq!(proportional_sizes(&sized(&[(1, Some(9), 1), (8, Some(9), 2)]), 4, 0, 9), [0, 4]);
        // 7 -> 10 over three sets: old 3 -> 4, old 2 -> 3, new 2 -> 3.
        assert_eq!(
            proportional_sizes(&sized(&[(3, Some(7), 1), (2, Some(7), 2), (2, Some(7), 3)]), 10, 0, 7),
            [4, 3, 3]
        );
        // 13 -> 8: 8 -> 5, 3 -> 2, new 2 -> 1.
        assert_eq!(
            proportional_sizes(&sized(&[(8, Some(13), 1), (3, Some(13), 2), (2, Some(13), 3)]), 8, 0, 13),
            [5, 2, 1]
        );
        // To zero: every set empties.
        assert_eq!(proportional_sizes(&sized(&[(3, Some(5), 1), (2, Some(5), 2)]), 0, 0, 5), [0, 0]);
        // Rounding leaves one over: it goes to the largest set, the newest among equals
        // when adding, the oldest when removing.
        assert_eq!(
            proportional_sizes(&sized(&[(1, Some(3), 1), (1, Some(3), 2), (1, Some(3), 3)]), 4, 0, 3),
            [1, 1, 2]
        );
        assert_eq!(proportional_sizes(&sized(&[(2, Some(4), 1), (2, Some(4), 2)]), 3, 0, 4), [1, 2]);
        // Without the annotation: the Deployment's status replicas stand in.
        assert_eq!(proportional_sizes(&sized(&[(3, None, 1), (2, None, 2)]), 10, 0, 5), [6, 4]);
    }

    #[test]
    fn scaling_events_are_seen_in_the_desired_annotation() {
        let rs = |desired: &str| Arc::new(json!({"metadata": {"annotations": {DESIRED: desired}}}));
        let (a, b) = (rs("10"), rs("15"));
        assert!(is_scaling_event(&[&a, &b], 15));
        assert!(!is_scaling_event(&[&b], 15));
        assert!(!is_scaling_event(&[&Arc::new(json!({}))], 15));
    }

    #[test]
    fn recreate_waits_for_terminating_old_pods() {
        let old = vec![Arc::new(json!({"metadata": {"uid": "old-rs"}}))];
        let pod = |owner: &str, phase: &str, deleting: bool| {
            let mut p = json!({"metadata": {"ownerReferences": [{"uid": owner, "controller": true}]},
                               "status": {"phase": phase}});
            if deleting {
                p["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
            }
            p
        };
        // Terminating still runs; finished pods and the new set's pods do not count.
        assert!(old_pods_running(&old, &[pod("old-rs", "Running", true)]));
        assert!(old_pods_running(&old, &[pod("old-rs", "Pending", false)]));
        assert!(!old_pods_running(&old, &[pod("old-rs", "Succeeded", false), pod("old-rs", "Failed", true)]));
        assert!(!old_pods_running(&old, &[pod("new-rs", "Running", false)]));
    }

    #[test]
    fn templates_compare_without_the_hash() {
        let a = json!({"metadata": {"labels": {"app": "x", HASH_LABEL: "abc"}}, "spec": {"c": 1}});
        let b = json!({"metadata": {"labels": {"app": "x"}}, "spec": {"c": 1}});
        assert_eq!(without_hash(&a), without_hash(&b));
    }

    #[test]
    fn status_reads_as_rollout_status_expects() {
        let d = json!({
            "metadata": {"name": "d", "generation": 2},
            "spec": {"replicas": 2, "progressDeadlineSeconds": 600},
        });
        let rs = json!({"metadata": {"name": "d-abc"}, "status": {"replicas": 2, "readyReplicas": 2, "availableReplicas": 2}});
        let (s, recheck) = compute_status(&d, Some(&rs), std::slice::from_ref(&rs), 0, 1_000);
        assert_eq!(s["observedGeneration"], 2);
        assert_eq!(s["updatedReplicas"], 2);
        assert_eq!(s["unavailableReplicas"], 0);
        let p = workload::condition(&s, "Progressing").expect("Progressing");
        assert_eq!(p["reason"], "NewReplicaSetAvailable");
        assert_eq!(p["message"], "ReplicaSet \"d-abc\" has successfully progressed.");
        assert_eq!(workload::condition(&s, "Available").expect("Available")["status"], "True");
        assert!(recheck.is_none());
        // Stuck past the deadline: ProgressDeadlineExceeded.
        let old = json!({"metadata": {"name": "d-old"}, "status": {"replicas": 2, "availableReplicas": 2}});
        let stuck = json!({"metadata": {"name": "d-abc"}, "status": {"replicas": 1}});
        let mut d2 = d.clone();
        let (s1, _) = compute_status(&d2, Some(&stuck), &[old.clone(), stuck.clone()], 0, 1_000);
        assert_eq!(workload::condition(&s1, "Progressing").expect("p")["reason"], "ReplicaSetUpdated");
        d2["status"] = s1;
        let (s2, _) = compute_status(&d2, Some(&stuck), &[old, stuck.clone()], 0, 1_000 + 601);
        assert_eq!(workload::condition(&s2, "Progressing").expect("p")["reason"], "ProgressDeadlineExceeded");
    }
}
