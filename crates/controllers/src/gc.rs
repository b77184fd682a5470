//! The garbage collector: objects whose owners are gone follow them, in every tenant and
//! for every kind (custom resources included), as Kubernetes' collector does.
//!
//! - An in-memory graph, fed by one watch per kind: each object's node keeps only its
//!   identity, its owner references and its deletion state; an index maps each owner to
//!   its dependents. Nothing is ever listed again after a watch's first list.
//! - Node ids are `(tenant, uid)`: an owner reference is resolved only in its dependent's
//!   own tenant (and, for a namespaced owner, namespace), so a reference naming another
//!   tenant's object is dangling and can never reach that object or its dependents.
//! - Before a dependent is deleted because an owner is missing from the graph, the owner
//!   is looked up through the API (in the dependent's tenant and namespace, uid-checked):
//!   a lagging watch never deletes anything. An owner kind the API does not serve is
//!   left alone rather than guessed at.
//! - Propagation: background (the owner is gone; dependents with no other owner go),
//!   foreground (the owner, held by `foregroundDeletion`, waits until the dependents that
//!   block it are gone; dependents are deleted in the foreground in turn) and orphan (the
//!   owner, held by `orphan`, goes once no dependent names it any more).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use api::json::At;
use client::{Client, DeleteParams, Patch, Resource, Scope, Tenant};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::queue::{Backoff, WorkQueue};
use crate::watcher::{ApiSource, Event, Watcher};
use crate::workload::str_at;

pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";

/// A node: `(tenant, uid)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeId {
    pub tenant: String,
    pub uid: String,
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.uid)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct OwnerRef {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
    pub block: bool,
}

impl OwnerRef {
    fn group(&self) -> &str {
        self.api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("")
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub resource: Arc<Resource>,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub owners: Vec<OwnerRef>,
    pub deleting: bool,
    pub foreground: bool,
    pub orphan: bool,
    /// The watch it came from, to drop what a re-list no longer holds.
    watch: usize,
}

/// The graph: nodes and, per owner id (present or not), the ids of its dependents.
#[derive(Default)]
pub struct Graph {
    nodes: HashMap<NodeId, Node>,
    dependents: HashMap<NodeId, HashSet<NodeId>>,
}

/// What a change to the graph asks the workers to look at.
type Wake = Vec<NodeId>;

impl Graph {
    fn node_of(obj: &Value, resource: &Arc<Resource>, kind: &str, watch: usize) -> Option<(NodeId, Node)> {
        let meta = obj.get("metadata")?;
        let text = |k: &str| meta.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
        let id = NodeId { tenant: text("tenant").unwrap_or("").into(), uid: text("uid")?.into() };
        let owners = meta
            .get("ownerReferences")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|r| {
                Some(OwnerRef {
                    api_version: r.get("apiVersion")?.as_str()?.into(),
                    kind: r.get("kind")?.as_str()?.into(),
                    name: r.get("name")?.as_str()?.into(),
                    uid: r.get("uid")?.as_str()?.into(),
                    block: r.get("blockOwnerDeletion").and_then(Value::as_bool) == Some(true),
                })
            })
            .collect();
        let finalizers: Vec<&str> =
            meta.get("finalizers").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
        let node = Node {
            resource: resource.clone(),
            kind: obj.get("kind").and_then(Value::as_str).unwrap_or(kind).into(),
            namespace: text("namespace").map(str::to_string),
            name: text("name")?.into(),
            owners,
            deleting: meta.get("deletionTimestamp").is_some_and(|t| !t.is_null()),
            foreground: finalizers.contains(&FOREGROUND),
            orphan: finalizers.contains(&ORPHAN),
            watch,
        };
        Some((id, node))
    }

    fn owner_ids(id: &NodeId, node: &Node) -> impl Iterator<Item = NodeId> {
        let tenant = id.tenant.clone();
        node.owners.iter().map(move |o| NodeId { tenant: tenant.clone(), uid: o.uid.clone() })
    }

    /// Adds or replaces a node; returns the ids to look at. A change that leaves the node as
    /// it was (most: a pod's binding and status) concerns nobody: it was looked at when it
    /// came to be as it is.
    pub fn upsert(&mut self, id: NodeId, node: Node) -> Wake {
        if self.nodes.get(&id) == Some(&node) {
            return Vec::new();
        }
        let mut wake = Vec::new();
        if let Some(old) = self.nodes.get(&id) {
            for o in Self::owner_ids(&id, old) {
                if let Some(d) = self.dependents.get_mut(&o) {
                    d.remove(&id);
                    if d.is_empty() {
                        self.dependents.remove(&o);
                    }
                }
                wake.push(o);
            }
        }
        for o in Self::owner_ids(&id, &node) {
            self.dependents.entry(o.clone()).or_default().insert(id.clone());
            wake.push(o);
        }
        // Only owners being deleted care about a dependent's change.
        wake.retain(|o| self.nodes.get(o).is_some_and(|n| n.deleting && (n.foreground || n.orphan)));
        if !node.owners.is_empty() || (node.deleting && (node.foreground || node.orphan)) {
            wake.push(id.clone());
        }
        self.nodes.insert(id, node);
        wake
    }

    /// Removes a node; its dependents (maybe dangling now) and deleting owners are woken.
    pub fn remove(&mut self, id: &NodeId) -> Wake {
        let Some(old) = self.nodes.remove(id) else { return Vec::new() };
        let mut wake: Wake = self.dependents.get(id).into_iter().flatten().cloned().collect();
        for o in Self::owner_ids(id, &old) {
            if let Some(d) = self.dependents.get_mut(&o) {
                d.remove(id);
                if d.is_empty() {
                    self.dependents.remove(&o);
                }
            }
            if self.nodes.get(&o).is_some_and(|n| n.deleting) {
                wake.push(o);
            }
        }
        wake
    }

    pub fn get(&self, id: &NodeId) -> Option<&Node> {
        self.nodes.get(id)
    }

    /// The dependents of `id` that really name it: same tenant (by construction) and, for
    /// a namespaced owner, the same namespace.
    pub fn dependents_of(&self, id: &NodeId) -> Vec<(NodeId, Node)> {
        let owner_ns = self.nodes.get(id).and_then(|n| n.namespace.clone());
        self.dependents
            .get(id)
            .into_iter()
            .flatten()
            .filter_map(|d| Some((d.clone(), self.nodes.get(d)?.clone())))
            .filter(|(_, n)| owner_ns.is_none() || n.namespace == owner_ns)
            .collect()
    }

    /// An owner as the graph knows it, if it is the object the reference means: same
    /// tenant, uid and kind, and for a namespaced owner the dependent's namespace.
    pub fn resolve(&self, tenant: &str, dependent_ns: Option<&str>, o: &OwnerRef) -> Option<&Node> {
        let n = self.nodes.get(&NodeId { tenant: tenant.into(), uid: o.uid.clone() })?;
        (n.kind == o.kind
            && n.resource.group == o.group()
            && (n.namespace.is_none() || n.namespace.as_deref() == dependent_ns))
            .then_some(n)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// How a dependent stands towards its owners.
#[derive(Debug, Default, PartialEq)]
pub struct Verdict {
    /// Owners that exist and are not waiting for their dependents.
    pub solid: usize,
    /// Owner uids that do not exist (in this tenant and namespace).
    pub absent: Vec<String>,
    /// Owner uids being deleted in the foreground, and whether any such reference blocks.
    pub waiting: Vec<String>,
    pub block_waiting: bool,
}

/// Kinds the API serves, to find an owner reference's resource: `(tenant, group, kind)`,
/// the empty tenant for what every tenant sees.
#[derive(Default)]
struct Kinds(HashMap<(String, String, String), Arc<Resource>>);

impl Kinds {
    fn find(&self, tenant: &str, group: &str, kind: &str) -> Option<Arc<Resource>> {
        self.0
            .get(&(tenant.into(), group.into(), kind.into()))
            .or_else(|| self.0.get(&(String::new(), group.into(), kind.into())))
            .cloned()
    }
}

pub struct Collector {
    client: Client,
    graph: Arc<Mutex<Graph>>,
    kinds: Arc<Mutex<Kinds>>,
}

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Api(#[from] client::Error),
    #[error("{0} was modified meanwhile")]
    Conflict(String),
}

impl Collector {
    fn scope(tenant: &str, node_ns: Option<&str>, resource: &Resource) -> Scope {
        let s = Scope::tenant(tenant);
        match node_ns {
            Some(ns) if resource.namespaced => s.in_namespace(ns),
            _ => s,
        }
    }

    /// Classifies a dependent's owners; an owner the graph lacks is looked up through the API.
    async fn verdict(&self, id: &NodeId, node: &Node) -> Result<Verdict, GcError> {
        let mut v = Verdict::default();
        for o in &node.owners {
            let known = {
                let graph = self.graph.lock();
                graph.resolve(&id.tenant, node.namespace.as_deref(), o).map(|n| n.deleting && n.foreground)
            };
            match known {
                Some(true) => {
                    v.waiting.push(o.uid.clone());
                    v.block_waiting |= o.block;
                }
                Some(false) => v.solid += 1,
                None => {
                    let resource = self.kinds.lock().find(&id.tenant, o.group(), &o.kind);
                    // A kind nobody serves: nothing can be said, so nothing is done.
                    let Some(resource) = resource else {
                        v.solid += 1;
                        continue;
                    };
                    // A cluster-scoped dependent cannot have a namespaced owner.
                    if resource.namespaced && node.namespace.is_none() {
                        v.absent.push(o.uid.clone());
                        continue;
                    }
                    let scope = Self::scope(&id.tenant, node.namespace.as_deref(), &resource);
                    match self.client.get(&resource, &scope, &o.name).await {
                        Ok(owner) if str_at(&owner, "/metadata/uid") == o.uid => {
                            let fg = owner
                                .at("/metadata/finalizers")
                                .and_then(Value::as_array)
                                .is_some_and(|f| f.iter().any(|f| f == FOREGROUND));
                            if fg && owner.at("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null()) {
                                v.waiting.push(o.uid.clone());
                                v.block_waiting |= o.block;
                            } else {
                                v.solid += 1;
                            }
                        }
                        Ok(_) => v.absent.push(o.uid.clone()),
                        Err(e) if e.is_not_found() => v.absent.push(o.uid.clone()),
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Ok(v)
    }

    /// Removes the owner references with `uids` from an object (optimistically).
    async fn drop_refs(&self, id: &NodeId, node: &Node, uids: &[String]) -> Result<(), GcError> {
        self.filter_list(id, node, "ownerReferences", |r| {
            !uids.iter().any(|u| r.get("uid").and_then(Value::as_str) == Some(u))
        })
        .await
    }

    /// Removes one of our finalizers from a deleting owner (the server deletes it when none is left).
    async fn drop_finalizer(&self, id: &NodeId, node: &Node, finalizer: &str) -> Result<(), GcError> {
        self.filter_list(id, node, "finalizers", |f| f.as_str() != Some(finalizer)).await
    }

    /// Keeps only the entries of the list `metadata.<field>` that `keep` accepts, by a merge
    /// patch conditional on the object's uid and resourceVersion (an object gone or
    /// replaced is left alone; a conflict is retried by the caller).
    async fn filter_list(
        &self,
        id: &NodeId,
        node: &Node,
        field: &str,
        keep: impl Fn(&Value) -> bool,
    ) -> Result<(), GcError> {
        let scope = Self::scope(&id.tenant, node.namespace.as_deref(), &node.resource);
        let current = match self.client.get(&node.resource, &scope, &node.name).await {
            Ok(o) => o,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if str_at(&current, "/metadata/uid") != id.uid {
            return Ok(());
        }
        let kept: Vec<Value> = current
            .at(&format!("/metadata/{field}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|v| keep(v))
            .cloned()
            .collect();
        let patch = json!({"metadata": {
            field: if kept.is_empty() { Value::Null } else { Value::Array(kept) },
            "resourceVersion": str_at(&current, "/metadata/resourceVersion"),
        }});
        match self.client.patch(&node.resource, &scope, &node.name, &Patch::Merge(patch)).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) if e.is_conflict() => Err(GcError::Conflict(node.name.clone())),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete(&self, id: &NodeId, node: &Node, foreground: bool) -> Result<(), GcError> {
        let scope = Self::scope(&id.tenant, node.namespace.as_deref(), &node.resource);
        let params = DeleteParams {
            precondition_uid: Some(id.uid.clone()),
            propagation_policy: foreground.then(|| "Foreground".to_string()),
            ..DeleteParams::default()
        };
        match self.client.delete(&node.resource, &scope, &node.name, &params).await {
            Ok(_) => {
                tracing::info!(tenant = %id.tenant, kind = %node.kind, name = %node.name, "collected");
                Ok(())
            }
            // Gone, or a different object by now.
            Err(e) if e.is_not_found() || e.is_conflict() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// One look at one node. `Ok(true)`: look again later (dependents still going).
    async fn process(&self, id: &NodeId) -> Result<bool, GcError> {
        let Some(node) = self.graph.lock().get(id).cloned() else { return Ok(false) };
        if node.deleting && node.orphan {
            // Copied out: no lock is held across a request.
            let dependents = self.graph.lock().dependents_of(id);
            for (did, dnode) in dependents {
                self.drop_refs(&did, &dnode, std::slice::from_ref(&id.uid)).await?;
            }
            self.drop_finalizer(id, &node, ORPHAN).await?;
            return Ok(false);
        }
        if node.deleting && node.foreground {
            let dependents = self.graph.lock().dependents_of(id);
            let mut blocking = 0;
            for (did, dnode) in &dependents {
                if dnode.owners.iter().any(|o| o.uid == id.uid && o.block) {
                    blocking += 1;
                }
                if !dnode.deleting {
                    self.judge(did, dnode).await?;
                }
            }
            if blocking == 0 {
                self.drop_finalizer(id, &node, FOREGROUND).await?;
                return Ok(false);
            }
            return Ok(true);
        }
        if !node.owners.is_empty() && !node.deleting {
            self.judge(id, &node).await?;
        }
        Ok(false)
    }

    /// Deletes a dependent whose owners are all gone or going, or drops the references to
    /// the gone ones when another owner remains.
    async fn judge(&self, id: &NodeId, node: &Node) -> Result<(), GcError> {
        let v = self.verdict(id, node).await?;
        if v.absent.is_empty() && v.waiting.is_empty() {
            return Ok(());
        }
        if v.solid == 0 {
            return self.delete(id, node, v.block_waiting).await;
        }
        let gone: Vec<String> = v.absent.into_iter().chain(v.waiting).collect();
        self.drop_refs(id, node, &gone).await
    }
}

/// One watched kind: which resource, in which scope.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct WatchSpec {
    resource: Resource,
    kind: String,
    /// `None`: every tenant.
    tenant: Option<String>,
}

/// Kinds never collected: too many and never owned (events), or never stored.
fn skipped(r: &client::ApiResource) -> bool {
    r.resource.plural == "events" || !r.verbs.iter().any(|v| v == "watch") || !r.verbs.iter().any(|v| v == "delete")
}

/// The kinds a custom resource definition adds, and where.
fn crd_spec(crd: &Value) -> Option<WatchSpec> {
    let tenant = str_at(crd, "/metadata/tenant");
    let versions = crd.at("/spec/versions")?.as_array()?;
    let version = versions
        .iter()
        .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true) && v.get("served") != Some(&json!(false)))
        .or_else(|| versions.iter().find(|v| v.get("served") != Some(&json!(false))))?;
    let resource = Resource::new(
        str_at(crd, "/spec/group"),
        version.get("name")?.as_str()?,
        str_at(crd, "/spec/names/plural"),
        str_at(crd, "/spec/scope") == "Namespaced",
    );
    let system = tenant.is_empty() || tenant == "system";
    Some(WatchSpec {
        resource,
        kind: str_at(crd, "/spec/names/kind").into(),
        tenant: (!system).then(|| tenant.to_string()),
    })
}

enum Input {
    Objects(usize, Event),
    Definitions(Event),
}

/// Runs the collector until `shutdown` resolves.
pub async fn run(client: Client, shutdown: impl std::future::Future<Output = ()>) {
    let collector = Arc::new(Collector { client: client.clone(), graph: Arc::default(), kinds: Arc::default() });
    tokio::pin!(shutdown);
    // The kinds every tenant sees, from discovery (retried until the server answers, or
    // until shutdown).
    let system = Tenant::Named("system".into());
    let base = loop {
        let found = tokio::select! {
            _ = &mut shutdown => return,
            found = client.api_resources_in(&system) => found,
        };
        match found {
            Ok(r) => break r,
            Err(e) => {
                tracing::warn!(error = %e, "garbage collector: discovery failed; retrying");
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let (tx, mut rx) = mpsc::channel::<Input>(1024);
    let mut watches: HashMap<WatchSpec, (usize, tokio::task::JoinHandle<()>)> = HashMap::new();
    let mut next_watch = 0;
    let mut start = |spec: WatchSpec, watches: &mut HashMap<WatchSpec, (usize, tokio::task::JoinHandle<()>)>| {
        if watches.contains_key(&spec) {
            return;
        }
        let (id, tx) = (next_watch, tx.clone());
        next_watch += 1;
        let scope = match &spec.tenant {
            Some(t) => Scope::tenant(t),
            None => Scope::all_tenants(),
        };
        let what = format!("{} (gc)", spec.resource.plural);
        // Only kind and metadata: a re-list of 130,000 pods is then ~2 KB a pod, not ~29 KB.
        let source =
            ApiSource::new(client.clone(), spec.resource.clone(), scope).keeping(crate::cache::keep_metadata_only());
        let mut watcher = Watcher::new(source, what);
        let task = tokio::spawn(async move {
            loop {
                let event = watcher.next().await;
                if tx.send(Input::Objects(id, event)).await.is_err() {
                    return;
                }
            }
        });
        watches.insert(spec, (id, task));
    };
    let mut specs: HashMap<usize, (Arc<Resource>, String)> = HashMap::new();
    for r in base.iter().filter(|r| !skipped(r)) {
        let spec = WatchSpec { resource: r.resource.clone(), kind: r.kind.clone(), tenant: None };
        collector
            .kinds
            .lock()
            .0
            .insert((String::new(), r.resource.group.clone(), r.kind.clone()), Arc::new(r.resource.clone()));
        start(spec, &mut watches);
    }
    for (spec, (id, _)) in &watches {
        specs.insert(*id, (Arc::new(spec.resource.clone()), spec.kind.clone()));
    }
    let mut first_lists: HashSet<usize> = specs.keys().copied().collect();
    // Definitions in every tenant, for tenants' own custom resources.
    {
        let tx = tx.clone();
        let crds = Resource::new("apiextensions.k8s.io", "v1", "customresourcedefinitions", false);
        let mut watcher = Watcher::new(ApiSource::new(client.clone(), crds, Scope::all_tenants()), "crds (gc)");
        tokio::spawn(async move {
            loop {
                let event = watcher.next().await;
                if tx.send(Input::Definitions(event)).await.is_err() {
                    return;
                }
            }
        });
    }
    let queue: Arc<WorkQueue<NodeId>> = WorkQueue::new(Backoff::default());
    let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
    let ready_tx = Arc::new(ready_tx);
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (collector, queue, mut ready) = (collector.clone(), queue.clone(), ready_rx.clone());
        workers.push(tokio::spawn(async move {
            // Only once every kind's first list is in: before, a missing owner means nothing.
            if ready.wait_for(|r| *r).await.is_err() {
                return;
            }
            while let Some(id) = queue.next().await {
                match collector.process(&id).await {
                    Ok(again) => {
                        queue.forget(&id);
                        if again {
                            queue.add_after(id.clone(), Duration::from_secs(1));
                        }
                    }
                    Err(e) => {
                        let (failures, delay) = queue.fail(&id);
                        tracing::debug!(node = %id, error = %e, failures, "garbage collector: retrying");
                        queue.add_after(id.clone(), delay);
                    }
                }
                queue.done(&id);
            }
        }));
    }
    let mut crd_watches: HashMap<String, WatchSpec> = HashMap::new();
    // A kind whose first list never comes (refused, say) must not stop all collection:
    // after a while the workers start anyway (an owner missing from the graph is looked up
    // through the API before anything is deleted, so this is safe, only slower).
    {
        let ready_tx = ready_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            ready_tx.send_replace(true);
        });
    }
    loop {
        let input = tokio::select! {
            _ = &mut shutdown => break,
            input = rx.recv() => match input { Some(i) => i, None => break },
        };
        match input {
            Input::Objects(watch, event) => {
                let Some((resource, kind)) = specs.get(&watch).cloned() else { continue };
                let mut graph = collector.graph.lock();
                let mut wake = Vec::new();
                match event {
                    Event::Applied(obj) => {
                        if let Some((id, node)) = Graph::node_of(&obj, &resource, &kind, watch) {
                            wake = graph.upsert(id, node);
                        }
                    }
                    Event::Deleted(obj) => {
                        if let Some((id, _)) = Graph::node_of(&obj, &resource, &kind, watch) {
                            wake = graph.remove(&id);
                        }
                    }
                    Event::Restarted(objs) => {
                        let fresh: Vec<(NodeId, Node)> =
                            objs.iter().filter_map(|o| Graph::node_of(o, &resource, &kind, watch)).collect();
                        let keep: HashSet<&NodeId> = fresh.iter().map(|(id, _)| id).collect();
                        let gone: Vec<NodeId> = graph
                            .nodes
                            .iter()
                            .filter(|(id, n)| n.watch == watch && !keep.contains(id))
                            .map(|(id, _)| id.clone())
                            .collect();
                        for id in gone {
                            wake.extend(graph.remove(&id));
                        }
                        for (id, node) in fresh {
                            wake.extend(graph.upsert(id, node));
                        }
                        first_lists.remove(&watch);
                        if first_lists.is_empty() {
                            ready_tx.send_replace(true);
                        }
                    }
                }
                drop(graph);
                for id in wake {
                    queue.add(id);
                }
            }
            Input::Definitions(event) => {
                let (present, all) = match &event {
                    Event::Applied(o) => (true, vec![o.clone()]),
                    Event::Deleted(o) => (false, vec![o.clone()]),
                    Event::Restarted(objs) => (true, objs.clone()),
                };
                if let Event::Restarted(_) = event {
                    let names: HashSet<String> = all.iter().map(|o| str_at(o, "/metadata/uid").to_string()).collect();
                    let stale: Vec<String> = crd_watches.keys().filter(|k| !names.contains(*k)).cloned().collect();
                    for uid in stale {
                        stop_crd(&mut crd_watches, &mut watches, &collector, &uid);
                    }
                }
                for crd in all {
                    let uid = str_at(&crd, "/metadata/uid").to_string();
                    let Some(spec) = crd_spec(&crd) else { continue };
                    let established = crd.at("/metadata/deletionTimestamp").is_none_or(Value::is_null);
                    if !present || !established {
                        // A terminating definition's objects go with it (the server deletes them).
                        if !present {
                            stop_crd(&mut crd_watches, &mut watches, &collector, &uid);
                        }
                        continue;
                    }
                    collector.kinds.lock().0.insert(
                        (spec.tenant.clone().unwrap_or_default(), spec.resource.group.clone(), spec.kind.clone()),
                        Arc::new(spec.resource.clone()),
                    );
                    if !watches.contains_key(&spec) {
                        start(spec.clone(), &mut watches);
                        if let Some((id, _)) = watches.get(&spec) {
                            specs.insert(*id, (Arc::new(spec.resource.clone()), spec.kind.clone()));
                        }
                    }
                    crd_watches.insert(uid, spec);
                }
            }
        }
    }
    queue.shutdown();
    // Workers may still wait for every first list (a stop right after the start): let them
    // through to the shut queue, which hands them nothing, instead of waiting out the timer.
    ready_tx.send_replace(true);
    for (_, (_, task)) in watches {
        task.abort();
    }
    for w in workers {
        let _ = w.await;
    }
}

/// Stops watching a removed definition's kind (its objects went with it).
fn stop_crd(
    crd_watches: &mut HashMap<String, WatchSpec>,
    watches: &mut HashMap<WatchSpec, (usize, tokio::task::JoinHandle<()>)>,
    collector: &Collector,
    uid: &str,
) {
    let Some(spec) = crd_watches.remove(uid) else { return };
    if crd_watches.values().any(|s| s == &spec) {
        return;
    }
    collector.kinds.lock().0.remove(&(
        spec.tenant.clone().unwrap_or_default(),
        spec.resource.group.clone(),
        spec.kind.clone(),
    ));
    if let Some((id, task)) = watches.remove(&spec) {
        task.abort();
        let mut graph = collector.graph.lock();
        let gone: Vec<NodeId> = graph.nodes.iter().filter(|(_, n)| n.watch == id).map(|(i, _)| i.clone()).collect();
        for i in gone {
            graph.remove(&i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(tenant: &str, ns: Option<&str>, name: &str, uid: &str, owners: Value) -> Value {
        json!({"kind": "ConfigMap", "metadata": {
            "tenant": tenant, "namespace": ns, "name": name, "uid": uid, "ownerReferences": owners,
        }})
    }

    fn owner(uid: &str, block: bool) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "o", "uid": uid, "blockOwnerDeletion": block})
    }

    fn add(g: &mut Graph, o: &Value) -> Wake {
        let r = Arc::new(Resource::config_maps());
        let (id, node) = Graph::node_of(o, &r, "ConfigMap", 0).expect("node");
        g.upsert(id, node)
    }

    fn id(t: &str, u: &str) -> NodeId {
        NodeId { tenant: t.into(), uid: u.into() }
    }

    #[test]
    fn owners_resolve_only_in_their_dependents_tenant_and_namespace() {
        let mut g = Graph::default();
        add(&mut g, &obj("a", Some("ns"), "o", "u1", json!([])));
        let r = OwnerRef {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "o".into(),
            uid: "u1".into(),
            block: false,
        };
        assert!(g.resolve("a", Some("ns"), &r).is_some());
        assert!(g.resolve("b", Some("ns"), &r).is_none(), "another tenant's uid is no owner");
        assert!(g.resolve("a", Some("other"), &r).is_none(), "a namespaced owner is in its dependent's namespace");
        let wrong_kind = OwnerRef { kind: "Secret".into(), ..r.clone() };
        assert!(g.resolve("a", Some("ns"), &wrong_kind).is_none());
        // A dependent in tenant b naming u1 is b's dependent of a (missing) b/u1, never of a/u1.
        add(&mut g, &obj("b", Some("ns"), "d", "u2", json!([owner("u1", true)])));
        assert!(g.dependents_of(&id("a", "u1")).is_empty());
        assert_eq!(g.dependents_of(&id("b", "u1")).len(), 1);
    }

    #[test]
    fn changes_wake_what_they_concern() {
        let mut g = Graph::default();
        assert!(add(&mut g, &obj("a", Some("ns"), "o", "u1", json!([]))).is_empty());
        assert_eq!(add(&mut g, &obj("a", Some("ns"), "d", "u2", json!([owner("u1", true)]))), [id("a", "u2")]);
        // The owner goes: its dependent is woken (now dangling).
        assert_eq!(g.remove(&id("a", "u1")), [id("a", "u2")]);
        // An owner deleting in the foreground is woken when its dependent goes.
        let mut fg = obj("a", Some("ns"), "o", "u1", json!([]));
        fg["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        fg["metadata"]["finalizers"] = json!([FOREGROUND]);
        assert_eq!(add(&mut g, &fg), [id("a", "u1")]);
        assert_eq!(g.remove(&id("a", "u2")), [id("a", "u1")]);
        assert!(g.dependents_of(&id("a", "u1")).is_empty());
        assert_eq!(g.len(), 1);
    }

    #[test]
    fn a_change_that_leaves_the_node_as_it_was_wakes_nobody() {
        let mut g = Graph::default();
        add(&mut g, &obj("a", Some("ns"), "o", "u1", json!([])));
        let mut d = obj("a", Some("ns"), "d", "u2", json!([owner("u1", true)]));
        assert_eq!(add(&mut g, &d), [id("a", "u2")], "first sight");
        d["metadata"]["labels"] = json!({"any": "thing"});
        d["status"] = json!({"phase": "Running"});
        assert!(add(&mut g, &d).is_empty(), "only what the graph does not hold changed");
        d["metadata"]["ownerReferences"] = json!([owner("u1", false)]);
        assert_eq!(add(&mut g, &d), [id("a", "u2")], "its owner references changed");
        d["metadata"]["finalizers"] = json!([ORPHAN]);
        d["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        assert_eq!(add(&mut g, &d), [id("a", "u2")], "it is being deleted");
        assert_eq!(g.dependents_of(&id("a", "u1")).len(), 1);
    }
}
