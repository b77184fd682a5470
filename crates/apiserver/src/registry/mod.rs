//! The generic registry: create, get, list, update, delete and watch for any kind, over the
//! store, with Kubernetes' object semantics. Each kind contributes only a small
//! [`Strategy`] (what it is, how to prepare and validate it); everything else is here once.
//!
//! Keys: `/registry/{resource}[.{group}]/{tenant}/{namespace}/{name}` for namespaced kinds
//! and `/registry/{resource}[.{group}]/{tenant}/{name}` for the others, so one tenant's
//! objects of a kind are one key prefix. Objects are stored as JSON without
//! `metadata.resourceVersion`, which is the key's modification revision when read.

mod apply;
pub mod cache;
pub mod object;
mod project;

use std::borrow::Cow;
use std::sync::Arc;

use api::json::At;
use api::meta::{FieldError, ListMeta, ObjectMeta, Status};
use api::request::is_dns_label;
use api::selector::{FieldSelector, LabelSelector};
use bytes::Bytes;
use serde_json::{Value, json};
use store::{RangeRequest, Store, StoreError, WatchMessage, WatchOptions};

use crate::managed::Recorded;

/// What the registry needs to know about a kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceInfo {
    /// API group; empty for the core group.
    pub group: String,
    pub version: String,
    pub kind: String,
    /// Plural, lower case: the URL segment.
    pub resource: String,
    pub namespaced: bool,
    /// Whether the kind has a `status` subresource (then the main resource ignores status
    /// changes and the subresource changes nothing else).
    pub status_subresource: bool,
    /// Whether the kind has a `scale` subresource (`spec.replicas`, `status.replicas`,
    /// `spec.selector`).
    pub scale_subresource: bool,
    /// The storage of another kind this one is a view of (`events` for
    /// `events.k8s.io/v1` Events), with [`Strategy::stored_to_view`] and
    /// [`Strategy::view_to_stored`] converting; `None`: its own storage.
    pub storage: Option<String>,
    /// Discovery's short names (`po` for pods) and categories (`all`).
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// A custom resource, served from a CustomResourceDefinition.
    pub custom: bool,
}

/// Where a kind's `scale` subresource reads and writes: JSON pointers to the desired and
/// current replica counts and, optionally, to a label selector in string form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

impl ResourceInfo {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    fn storage_prefix(&self) -> String {
        if let Some(shared) = &self.storage {
            format!("/registry/{shared}/")
        } else if self.group.is_empty() {
            format!("/registry/{}/", self.resource)
        } else {
            format!("/registry/{}.{}/", self.resource, self.group)
        }
    }
}

/// One kind's rules. Defaults fit a kind with no rules of its own.
pub trait Strategy: Send + Sync + 'static {
    fn info(&self) -> &ResourceInfo;

    /// Called on create after server-owned metadata is set (e.g. default fields, clear
    /// status).
    fn prepare_for_create(&self, _obj: &mut Value) {}

    /// Whether a new object's status is the server's alone (what the client sent is
    /// dropped): then the creator's ownership record leaves it out, as Kubernetes' does.
    fn status_set_on_create(&self) -> bool {
        false
    }

    /// Called on update with the object about to be stored and the stored one, after
    /// server-owned metadata is carried over (e.g. defaults, pruning, server-set status);
    /// `subresource` is the one written, if any.
    fn prepare_for_update(&self, _new: &mut Value, _old: &Value, _subresource: Option<&str>) {}

    /// A subresource of the kind's own besides `status` (e.g. a namespace's `finalize`):
    /// the object an update of it stores, from the stored one and the client's; `None`:
    /// no such subresource.
    fn subresource_update(&self, _subresource: &str, _old: &Value, _new: &Value) -> Option<Value> {
        None
    }

    /// Whether something of the kind's own (besides `metadata.finalizers`) keeps a deleted
    /// object until someone clears it, like a namespace's `spec.finalizers`.
    fn holds_deletion(&self, _obj: &Value) -> bool {
        false
    }

    /// Called when a deletion marks the object as terminating (e.g. a phase).
    fn prepare_for_delete(&self, _obj: &mut Value) {}

    /// Field errors of a new object beyond the metadata checks every kind gets.
    fn validate(&self, _obj: &Value) -> Vec<FieldError> {
        Vec::new()
    }

    /// Field errors of an update beyond those of [`Strategy::validate`].
    fn validate_update(&self, _new: &Value, _old: &Value) -> Vec<FieldError> {
        Vec::new()
    }

    /// Whether names of this namespaced kind may be any path segment (RBAC's
    /// `system:controller:...`) rather than DNS subdomains.
    fn path_segment_names(&self) -> bool {
        false
    }

    /// Whether the kind is only ever created and answered, never stored (access reviews):
    /// discovery lists `create` as its only verb.
    fn create_only(&self) -> bool {
        false
    }

    /// Fields (besides `metadata.name` and `metadata.namespace`) a field selector may use.
    fn selectable_fields(&self) -> &[&str] {
        &[]
    }

    /// Whether a field selector may use `field` (besides name and namespace).
    fn selectable(&self, field: &str) -> bool {
        self.selectable_fields().contains(&field)
    }

    /// Whether `field` holds the same value in the stored bytes as in the view, so a list may
    /// skip a stored object whose bytes cannot contain a `field=value` selector's value without
    /// decoding it ([`may_match_raw`]). Opt-in: a kind that reshapes objects between stored
    /// and viewed form (`stored_to_view`) would skip objects wrongly.
    fn raw_selectable(&self, _field: &str) -> bool {
        false
    }

    /// Whether stored objects are what clients see, unconverted and unredacted
    /// (`stored_to_view`, `view_to_stored` and `redact` do nothing), so a write need not keep
    /// a converted copy of what it read. Opt-in, like [`Strategy::raw_selectable`].
    fn stored_as_viewed(&self) -> bool {
        false
    }

    /// The grace period a deletion of `obj` must wait for (someone else, e.g. a node
    /// agent, finishes it), given the one requested; `None` deletes at once.
    fn grace_period(&self, _obj: &Value, _requested: Option<i64>) -> Option<i64> {
        None
    }

    /// Turns a stored object into this kind's form (for kinds that view another's storage).
    fn stored_to_view(&self, _obj: &mut Value) {}
    /// Removes what is stored but never handed out (a User's password hash, a password in
    /// transit): applied to every object the registry returns, read, listed or watched.
    fn redact(&self, _obj: &mut Value) {}
    /// Copies stored-only fields (those `redact` removes) from the stored object to the
    /// next version written over it, unless the new version sets them itself.
    fn carry_over(&self, _stored: &Value, _new: &mut Value) {}
    /// Records who created the object (a Namespace's `atoll.io/creator`), replacing anything
    /// the client sent there; `None`: the server itself creates it.
    fn record_creator(&self, _obj: &mut Value, _creator: Option<&Creator>) {}

    /// Turns this kind's form into the stored one.
    fn view_to_stored(&self, _obj: &mut Value) {}

    /// The kind's top-level fields besides `apiVersion`, `kind` and `metadata`, for
    /// `fieldValidation`; `None` accepts any.
    fn top_level_fields(&self) -> Option<&[&str]> {
        None
    }

    /// Removes every field of `obj` (outside `metadata`) this kind does not have and names
    /// them, as paths; `None` leaves it to [`Strategy::top_level_fields`].
    fn prune_unknown_fields(&self, _obj: &mut Value) -> Option<Vec<String>> {
        None
    }

    /// Where the `scale` subresource points, when it is not the built-in workloads'
    /// `spec.replicas`, `status.replicas` and `spec.selector`.
    fn scale_paths(&self) -> Option<&ScalePaths> {
        None
    }

    /// Printer columns as a CustomResourceDefinition declares them (`name`, `type`,
    /// `jsonPath`, ...), for kinds without built-in columns.
    fn printer_columns(&self) -> Option<&[Value]> {
        None
    }

    /// The kind's OpenAPI v3 schema, when it has a real one.
    fn openapi_schema(&self) -> Option<&Value> {
        None
    }

    /// How the list at `path` (field names from the root, list positions left out) is
    /// merged and owned by server-side apply. Built-in kinds: the strategic merge keys.
    fn list_type(&self, path: &[&str]) -> crate::managed::ListType {
        crate::managed::builtin_list_type(path)
    }
}

/// Fields of `metadata` a client may send.
const METADATA_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "tenant",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
    "selfLink",
];

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{resource} {name:?} not found")]
    NotFound { resource: String, group: String, name: String },
    #[error("{resource} {name:?} already exists")]
    AlreadyExists { resource: String, group: String, name: String },
    #[error("conflict on {resource} {name:?}: {why}")]
    Conflict { resource: String, group: String, name: String, why: String },
    /// An admission check refused the write (e.g. RBAC privilege escalation).
    #[error("{resource} {name:?} is forbidden: {why}")]
    Forbidden { resource: String, group: String, name: String, why: String },
    #[error("{kind} {name:?} is invalid")]
    Invalid { group: String, kind: String, name: String, errors: Vec<FieldError> },
    #[error("{0}")]
    BadRequest(String),
    /// A resource version or continue token older than the store's compaction point.
    #[error("{0}")]
    Expired(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Keys an unpaged list reads from the store per request.
const STORE_CHUNK: usize = 5_000;

impl RegistryError {
    /// The one conversion into what the API returns.
    pub fn to_status(&self) -> Status {
        match self {
            RegistryError::NotFound { resource, group, name } => Status::not_found(group, resource, name),
            RegistryError::AlreadyExists { resource, group, name } => Status::already_exists(group, resource, name),
            RegistryError::Conflict { resource, group, name, why } => Status::conflict(group, resource, name, why),
            RegistryError::Invalid { group, kind, name, errors } => Status::invalid(group, kind, name, errors),
            RegistryError::Forbidden { resource, group, name, why } => {
                let qualified = if group.is_empty() { resource.clone() } else { format!("{resource}.{group}") };
                Status::failure(403, "Forbidden", format!("{qualified} {name:?} is forbidden: {why}"))
            }
            RegistryError::BadRequest(m) => Status::bad_request(m.clone()),
            RegistryError::Expired(m) => Status::expired(m.clone()),
            RegistryError::Internal(m) => Status::internal(m.clone()),
            RegistryError::Store(StoreError::Compacted { .. }) => {
                Status::expired("The resourceVersion for the provided request is too old.")
            }
            RegistryError::Store(StoreError::ValueTooLarge { .. }) => {
                Status::request_entity_too_large("the object is larger than the store accepts")
            }
            RegistryError::Store(StoreError::FutureRevision { .. }) => {
                // The cause is what client-go recognises (it then lists again without a version);
                // no numbers, which would be raw store revisions.
                let mut status = Status::failure(504, "Timeout", "Too large resource version");
                status.details = Some(api::meta::StatusDetails {
                    causes: vec![api::meta::StatusCause {
                        reason: "ResourceVersionTooLarge".into(),
                        message: "Too large resource version".into(),
                        field: String::new(),
                    }],
                    ..Default::default()
                });
                status
            }
            RegistryError::Store(e) => Status::internal(e.to_string()),
        }
    }
}

type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// Where a request operates: one tenant (or all, for reads) and maybe one namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// `None`: every tenant (list and watch only).
    pub tenant: Option<String>,
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    pub label_selector: LabelSelector,
    pub field_selector: FieldSelector,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    /// `Exact` or `NotOlderThan` (the default).
    pub resource_version_match: Option<String>,
    /// For watches: `Some(true)` starts with the current state and a bookmark marking its
    /// end; `Some(false)` starts with changes only; `None` does what Kubernetes does
    /// without the parameter (initial state only for an empty or "0" resource version).
    pub send_initial_events: Option<bool>,
    /// Objects without `metadata.managedFields` (Atoll's `omitManagedFields=true`): for
    /// readers that never look at them (the scheduler, the controllers, node agents), whose
    /// decoders would otherwise wade through ~40% of a pod's JSON to skip them.
    pub omit_managed_fields: bool,
}

/// How a create or update is made.
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    pub dry_run: bool,
    /// Who writes, for `metadata.managedFields` (the `fieldManager` parameter, or one
    /// derived from the User-Agent); `None`: the server itself, which changes no ownership.
    pub field_manager: Option<String>,
    /// The object already carries the managed fields of a server-side apply.
    pub(crate) applied: bool,
    /// A last check of the object about to be written, on behalf of the caller (RBAC's
    /// escalation prevention); `None` for the server's own writes.
    pub admission: Option<Admission>,
    /// The authenticated user who writes, for kinds that record their creator
    /// ([`Strategy::record_creator`]); `None` for the server's own writes.
    pub creator: Option<Creator>,
}

/// Who creates an object, as far as the object records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Creator {
    pub name: String,
    /// The uid of the User object of that name, when the creator is one: a later User of the
    /// same name is not the creator.
    pub user_uid: Option<String>,
}

/// A check of the final object of a create or update (after defaults and validation),
/// given the object it replaces (`None` on create), refusing it with a reason.
#[derive(Clone)]
pub struct Admission(pub Arc<AdmissionCheck>);

/// The check itself: `Err` carries why the write is refused.
pub type AdmissionCheck = dyn Fn(Option<&Value>, &Value) -> std::result::Result<(), String> + Send + Sync;

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Admission")
    }
}

#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    pub dry_run: bool,
    pub precondition_uid: Option<String>,
    pub precondition_resource_version: Option<String>,
    /// `gracePeriodSeconds`: `None` lets the kind decide.
    pub grace_period_seconds: Option<i64>,
    /// `propagationPolicy` (or the older `orphanDependents`); `None` keeps whatever the
    /// object already asks for (background when nothing).
    pub propagation: Option<Propagation>,
}

/// What happens to an object's dependents (objects whose `ownerReferences` name it) when
/// it is deleted. The garbage collector does the work; the server only records the choice
/// as a finalizer, as Kubernetes does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    /// The owner goes at once; the collector deletes the dependents afterwards.
    Background,
    /// The owner stays (`foregroundDeletion`) until dependents that block it are gone.
    Foreground,
    /// The owner stays (`orphan`) until its dependents no longer name it.
    Orphan,
}

/// The finalizer of a deletion in the foreground.
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
/// The finalizer of a deletion that orphans the dependents.
pub const ORPHAN_FINALIZER: &str = "orphan";

impl Propagation {
    pub fn parse(s: &str) -> Option<Propagation> {
        Some(match s {
            "Background" => Propagation::Background,
            "Foreground" => Propagation::Foreground,
            "Orphan" => Propagation::Orphan,
            _ => return None,
        })
    }

    /// Makes `finalizers` say this policy; whether they changed.
    fn apply(self, finalizers: &mut Vec<String>) -> bool {
        let before = finalizers.clone();
        let keep = match self {
            Propagation::Background => None,
            Propagation::Foreground => Some(FOREGROUND_FINALIZER),
            Propagation::Orphan => Some(ORPHAN_FINALIZER),
        };
        finalizers.retain(|f| (f != FOREGROUND_FINALIZER && f != ORPHAN_FINALIZER) || Some(f.as_str()) == keep);
        if let Some(k) = keep
            && !finalizers.iter().any(|f| f == k)
        {
            finalizers.push(k.to_string());
        }
        *finalizers != before
    }
}

/// One watch event, ready to be written as `{"type": ..., "object": ...}`.
#[derive(Clone)]
pub struct WatchEvent {
    pub kind: &'static str,
    object: Payload,
    /// The object already serialised (but for its resource version), when it came from the
    /// watch cache unchanged.
    pub encoded: Option<cache::Spliced>,
}

#[derive(Clone)]
enum Payload {
    Decoded(Arc<Value>),
    /// A change's new object of a kind stored as viewed, still as stored: most watchers only
    /// send it on (as `encoded`), and decoding it for them was the watch cache's largest cost.
    Stored(Arc<cache::SharedEvent>),
}

impl WatchEvent {
    fn owned(kind: &'static str, object: Value) -> WatchEvent {
        WatchEvent { kind, object: Payload::Decoded(Arc::new(object)), encoded: None }
    }

    /// The object, decoded now if it was not yet (once per change, shared by every watcher).
    pub fn object(&self) -> Arc<Value> {
        match &self.object {
            Payload::Decoded(v) => v.clone(),
            Payload::Stored(e) => e
                .decoded(&|_| {})
                .and_then(|d| d.new.as_ref())
                .map(|(v, _)| v.clone())
                .unwrap_or_else(|| Arc::new(Value::Null)),
        }
    }

    /// The object's resource version, as a store revision.
    pub fn revision(&self) -> Option<i64> {
        match &self.object {
            Payload::Decoded(v) => v.at("/metadata/resourceVersion")?.as_str()?.parse().ok(),
            Payload::Stored(e) => Some(e.event.kv.mod_revision),
        }
    }
}

/// Where a watch's changes come from: the kind's watch cache, or a store watch of its own.
enum Source {
    Cache(tokio::sync::mpsc::Receiver<cache::CacheMessage>),
    Store(store::WatchStream),
}

impl Source {
    async fn next(&mut self) -> Option<Result<cache::CacheMessage, StoreError>> {
        match self {
            Source::Cache(rx) => rx.recv().await.map(Ok),
            Source::Store(stream) => stream.next().await.map(|m| {
                m.map(|m| match m {
                    WatchMessage::Events(events) => {
                        cache::CacheMessage::Events(events.into_iter().map(cache::SharedEvent::new).collect())
                    }
                    WatchMessage::Progress(r) => cache::CacheMessage::Progress(r),
                })
            }),
        }
    }
}

/// Decodes a stored object and sets its resource version.
pub(crate) fn decode_stored(value: &[u8], revision: i64) -> Result<Value> {
    let mut obj: Value = serde_json::from_slice(value)
        .map_err(|e| RegistryError::Internal(format!("stored object is not JSON: {e}")))?;
    set_rv(&mut obj, revision);
    Ok(obj)
}

/// What a stored object's bytes must contain to match the selector's `field=value`
/// requirements on fields the kind stores as viewed (see [`may_match_raw`]): each value as a
/// JSON string. Values a non-string field could render (`true`, numbers) and the empty value
/// (an absent field renders as empty) are left to the full match.
fn raw_needles(strategy: &dyn Strategy, selector: &FieldSelector) -> Vec<Vec<u8>> {
    selector
        .requirements
        .iter()
        .filter(|r| !r.negated && strategy.raw_selectable(&r.field))
        .filter(|r| !r.value.is_empty() && serde_json::from_str::<Value>(&r.value).is_err())
        .filter_map(|r| serde_json::to_vec(&r.value).ok())
        .collect()
}

/// Whether a stored object may match, judged on its bytes: without a backslash every JSON
/// string in them is written as is, so a string field equal to a needle's value shows the
/// needle verbatim; with one (an escape could spell the value differently) it may match.
/// Never `false` for an object the full match accepts; cheap next to decoding the object.
pub(crate) fn may_match_raw(raw: &[u8], needles: &[Vec<u8>]) -> bool {
    needles.is_empty()
        || memchr::memchr(b'\\', raw).is_some()
        || needles.iter().all(|n| memchr::memmem::find(raw, n).is_some())
}

/// An object as an update reads it: its stored bytes and decoded forms.
pub struct Current {
    kv: store::KeyValue,
    stored: Value,
    /// `stored` as the kind's update rules see it (converted, not redacted); `None`: `stored`.
    old: Option<Value>,
    /// As clients see it (redacted); `None`: `old`.
    shown: Option<Value>,
    /// Where `metadata.managedFields` is in the stored bytes, when it was cut out before
    /// decoding (a status write's read; the decoded forms then have none).
    record: Option<cache::scan::Member>,
}

impl Current {
    /// The object as its reader may see it.
    pub fn shown(&self) -> &Value {
        self.shown.as_ref().or(self.old.as_ref()).unwrap_or(&self.stored)
    }
}

/// An object as a write left it, with its stored JSON cut for its version and the revision
/// when the object is exactly that JSON at that revision (a kind stored as viewed, really
/// written): the answer is then those bytes ([`cache::Spliced::of_stored`]) instead of the
/// object serialised again. Without them, `obj` is redacted.
pub struct Written {
    pub obj: Value,
    pub stored: Option<(cache::Spliced, i64)>,
    /// The managed-fields record (JSON) when `obj` was written without it (a status write
    /// that never decoded it; the stored bytes have it): [`Written::into_object`] puts it back.
    record: Option<Vec<u8>>,
}

impl Written {
    fn decoded(obj: Value) -> Written {
        Written { obj, stored: None, record: None }
    }

    /// The object written, whole (with its managed fields).
    pub fn into_object(self) -> Value {
        let mut obj = self.obj;
        if let Some(record) = &self.record {
            put_record(&mut obj, record);
        }
        obj
    }

    /// As the writer may see it: a cut answer is of a kind with nothing to redact; an object
    /// answered by itself is redacted.
    fn redacted(mut self, strategy: &dyn Strategy) -> Written {
        if self.stored.is_none() {
            strategy.redact(&mut self.obj);
        }
        self
    }

    /// `obj` as stored in `bytes` at `revision`, when its kind is stored as viewed and the
    /// bytes can be cut (else the caller redacts and serialises `obj`).
    fn stored(obj: Value, as_viewed: bool, bytes: &[u8], revision: i64) -> Written {
        let stored = if as_viewed { cache::Spliced::of_stored(bytes).map(|s| (s, revision)) } else { None };
        Written { obj, stored, record: None }
    }
}

/// The registry of one kind.
#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn Store>,
    strategy: Arc<dyn Strategy>,
    /// Started on the first watch, replaced if its store watch ends.
    cache: Arc<tokio::sync::Mutex<Option<Arc<cache::WatchCache>>>>,
}

fn parse_rv(rv: &str) -> Result<i64> {
    rv.parse::<i64>()
        .ok()
        .filter(|r| *r >= 0)
        .ok_or_else(|| RegistryError::BadRequest(format!("invalid resource version {rv:?}")))
}

/// A continue token: the revision of the first page and the key to resume from.
fn encode_continue(revision: i64, next_key: &[u8]) -> String {
    let hex: String = next_key.iter().map(|b| format!("{b:02x}")).collect();
    format!("{revision}-{hex}")
}

fn decode_continue(token: &str) -> Result<(i64, Vec<u8>)> {
    let bad = || RegistryError::BadRequest("invalid continue token".into());
    let (rev, hex) = token.split_once('-').ok_or_else(bad)?;
    let rev = rev.parse::<i64>().map_err(|_| bad())?;
    if hex.len() % 2 != 0 {
        return Err(bad());
    }
    let key = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| bad())?;
    Ok((rev, key))
}

impl Registry {
    pub fn new(store: Arc<dyn Store>, strategy: Arc<dyn Strategy>) -> Registry {
        Registry { store, strategy, cache: Arc::default() }
    }

    /// The kind's watch cache, started (or restarted) on demand.
    async fn watch_cache(&self) -> Result<Arc<cache::WatchCache>> {
        let mut slot = self.cache.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_dead()) {
            return Ok(c.clone());
        }
        let c = cache::WatchCache::start(&self.store, Bytes::from(self.info().storage_prefix())).await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Watchers currently served by the watch cache.
    pub async fn cached_watchers(&self) -> usize {
        self.cache.lock().await.as_ref().map_or(0, |c| c.watchers())
    }

    pub fn info(&self) -> &ResourceInfo {
        self.strategy.info()
    }

    pub fn strategy(&self) -> &dyn Strategy {
        &*self.strategy
    }

    /// Removes the fields of `obj` this kind does not have (at the top level, in `metadata`
    /// and, where the kind has a schema, at every depth) and names them, as JSON paths: what
    /// Kubernetes' decoding into its types drops, whatever `fieldValidation` says about it.
    pub fn prune_unknown_fields(&self, obj: &mut Value) -> Vec<String> {
        let deep = self.strategy.prune_unknown_fields(obj);
        let top_level = if deep.is_some() { None } else { self.strategy.top_level_fields() };
        let mut unknown = deep.unwrap_or_default();
        if let (Some(known), Some(map)) = (top_level, obj.as_object_mut()) {
            map.retain(|k, _| {
                let ours = matches!(k.as_str(), "apiVersion" | "kind" | "metadata") || known.contains(&k.as_str());
                if !ours {
                    unknown.push(k.clone());
                }
                ours
            });
        }
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.retain(|k, _| {
                let ours = METADATA_FIELDS.contains(&k.as_str());
                if !ours {
                    unknown.push(format!("metadata.{k}"));
                }
                ours
            });
        }
        unknown
    }

    fn not_found(&self, name: &str) -> RegistryError {
        let info = self.info();
        RegistryError::NotFound { resource: info.resource.clone(), group: info.group.clone(), name: name.into() }
    }

    fn conflict(&self, name: &str, why: &str) -> RegistryError {
        let info = self.info();
        RegistryError::Conflict {
            resource: info.resource.clone(),
            group: info.group.clone(),
            name: name.into(),
            why: why.into(),
        }
    }

    fn invalid(&self, name: &str, errors: Vec<FieldError>) -> RegistryError {
        let info = self.info();
        RegistryError::Invalid { group: info.group.clone(), kind: info.kind.clone(), name: name.into(), errors }
    }

    /// The key prefix of everything `scope` covers.
    fn prefix(&self, scope: &Scope) -> String {
        let mut p = self.info().storage_prefix();
        if let Some(t) = &scope.tenant {
            p.push_str(t);
            p.push('/');
            if self.info().namespaced
                && let Some(ns) = &scope.namespace
            {
                p.push_str(ns);
                p.push('/');
            }
        }
        p
    }

    fn key(&self, scope: &Scope, name: &str) -> Result<Bytes> {
        let tenant = scope
            .tenant
            .as_deref()
            .ok_or_else(|| RegistryError::BadRequest("a single object needs a single tenant".into()))?;
        let mut key = format!("{}{tenant}/", self.info().storage_prefix());
        if self.info().namespaced {
            let ns = scope
                .namespace
                .as_deref()
                .ok_or_else(|| RegistryError::BadRequest("the namespace of the request is missing".into()))?;
            key.push_str(ns);
            key.push('/');
        }
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(RegistryError::BadRequest(format!("invalid name {name:?}")));
        }
        key.push_str(name);
        Ok(Bytes::from(key))
    }

    fn decode(&self, value: &[u8], revision: i64) -> Result<Value> {
        let mut obj = decode_stored(value, revision)?;
        self.strategy.stored_to_view(&mut obj);
        self.strategy.redact(&mut obj);
        Ok(obj)
    }

    fn encode(&self, obj: &Value) -> Result<Bytes> {
        if self.strategy.stored_as_viewed() {
            // Written straight from the object: a copy of it per write only to drop one field
            // was a measurable share of every write.
            return stored_json(obj).map(stored_bytes).map_err(|e| RegistryError::Internal(e.to_string()));
        }
        let mut obj = obj.clone();
        self.strategy.view_to_stored(&mut obj);
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        serde_json::to_vec(&obj).map(stored_bytes).map_err(|e| RegistryError::Internal(e.to_string()))
    }

    /// Checks `kind`/`apiVersion` and fills them in when absent.
    fn check_type(&self, obj: &mut Value) -> Result<()> {
        let info = self.info().clone();
        let map = object::as_object(obj)?;
        for (field, want) in [("kind", info.kind.clone()), ("apiVersion", info.api_version())] {
            match map.get(field) {
                None | Some(Value::Null) => {
                    map.insert(field.into(), Value::String(want));
                }
                Some(Value::String(s)) if *s == want => {}
                Some(other) => {
                    return Err(RegistryError::BadRequest(format!(
                        "{field} {other} does not match the expected {want:?}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Checks every kind shares: name, labels, annotations.
    fn validate_meta(&self, meta: &ObjectMeta) -> Vec<FieldError> {
        let mut errors = Vec::new();
        match &meta.name {
            Some(name)
                if (self.info().namespaced && !self.strategy.path_segment_names())
                    || self.info().resource == "namespaces" =>
            {
                if !is_dns_subdomain(name) {
                    errors.push(FieldError::invalid(
                        "metadata.name",
                        name,
                        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
                    ));
                }
            }
            Some(name) => {
                if name.is_empty() || name.contains('/') || name.contains('%') || name == "." || name == ".." {
                    errors.push(FieldError::invalid("metadata.name", name, "may not contain '/' or '%'"));
                }
            }
            None => errors.push(FieldError::required("metadata.name", "name or generateName is required")),
        }
        if self.info().resource == "namespaces"
            && let Some(name) = &meta.name
            && !is_dns_label(name)
        {
            errors.push(FieldError::invalid("metadata.name", name, "a namespace name must be a DNS-1123 label"));
        }
        for (k, v) in meta.labels.iter().flatten() {
            if !api::selector::is_label_key(k) {
                errors.push(FieldError::invalid("metadata.labels", k, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
            }
            if !api::selector::is_label_value(v) {
                errors.push(FieldError::invalid(format!("metadata.labels[{k}]"), v, "a valid label value must be 63 characters or less and must be empty or begin and end with an alphanumeric character"));
            }
        }
        for k in meta.annotations.iter().flatten().map(|(k, _)| k) {
            if !api::selector::is_label_key(k) {
                errors.push(FieldError::invalid(
                    "metadata.annotations",
                    k,
                    "name part must consist of alphanumeric characters, '-', '_' or '.'",
                ));
            }
        }
        errors
    }

    fn admit(&self, opts: &WriteOptions, name: &str, old: Option<&Value>, obj: &Value) -> Result<()> {
        match &opts.admission {
            Some(check) => (check.0)(old, obj).map_err(|why| RegistryError::Forbidden {
                resource: self.info().resource.clone(),
                group: self.info().group.clone(),
                name: name.to_string(),
                why,
            }),
            None => Ok(()),
        }
    }

    pub async fn create(&self, scope: &Scope, obj: Value, dry_run: bool) -> Result<Value> {
        self.create_with(scope, obj, &WriteOptions { dry_run, ..WriteOptions::default() }).await
    }

    /// The ownership bookkeeping of one write by `manager`.
    fn writer<'a>(
        &'a self,
        manager: &'a str,
        subresource: Option<&'a str>,
        api_version: &'a str,
        now: &'a str,
        list_type: &'a (dyn Fn(&[&str]) -> crate::managed::ListType + Sync),
    ) -> crate::managed::Writer<'a> {
        crate::managed::Writer {
            manager,
            api_version,
            subresource,
            status_subresource: self.info().status_subresource,
            list_type,
            now,
        }
    }

    /// Runs `f` with the ownership bookkeeping of a write by `manager` now.
    fn recording<R>(
        &self,
        manager: &str,
        subresource: Option<&str>,
        f: impl FnOnce(&crate::managed::Writer<'_>) -> R,
    ) -> R {
        let api_version = self.info().api_version();
        let now = object::now_rfc3339();
        let list_type = |p: &[&str]| self.strategy.list_type(p);
        f(&self.writer(manager, subresource, &api_version, &now, &list_type))
    }

    /// Records the write of `new` (over `old`, if any) in its managed fields.
    fn record(&self, old: Option<&Value>, new: &mut Value, subresource: Option<&str>, opts: &WriteOptions) {
        if opts.applied {
            return;
        }
        match &opts.field_manager {
            Some(manager) => self.recording(manager, subresource, |w| w.record_update(old, new)),
            // The server's own writes keep the record as it was.
            None => {
                let kept = old.and_then(|o| o.at("/metadata/managedFields")).cloned();
                if let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) {
                    match kept {
                        Some(v) => meta.insert("managedFields".into(), v),
                        None => meta.remove("managedFields"),
                    };
                }
            }
        }
    }

    /// [`Registry::record`] for a create: for a kind stored as viewed whose client sent no
    /// record, the record is made as JSON, to be written beside the object (never built as a
    /// `Value` only to be serialised); `None`: no record, or it is in `obj`.
    fn record_created(&self, obj: &mut Value, opts: &WriteOptions) -> Result<Option<Vec<u8>>> {
        let manager = match opts.field_manager.as_deref() {
            Some(manager)
                if !opts.applied && self.strategy.stored_as_viewed() && obj.at("/metadata/managedFields").is_none() =>
            {
                manager
            }
            _ => {
                self.record(None, obj, None, opts);
                return Ok(None);
            }
        };
        let nothing = Value::Object(serde_json::Map::new());
        let recorded = self
            .recording(manager, None, |w| w.record_update_raw(&nothing, obj, b"[]"))
            .map_err(RegistryError::Internal)?;
        Ok(match recorded {
            Recorded::Json(json) => Some(json),
            Recorded::Unchanged | Recorded::Gone | Recorded::InObject => None,
        })
    }

    /// [`Registry::record`] for an update read without its record (`record`: its stored
    /// JSON, see [`Registry::current_for_status`]): the record to store beside `new`, if one
    /// is left that is not in `new` itself.
    fn record_raw<'r>(
        &self,
        old: &Value,
        new: &mut Value,
        record: &'r [u8],
        subresource: Option<&str>,
        opts: &WriteOptions,
    ) -> Result<Option<Cow<'r, [u8]>>> {
        // The server's own writes keep the record as it was.
        let Some(manager) = opts.field_manager.as_deref().filter(|_| !opts.applied) else {
            return Ok(Some(Cow::Borrowed(record)));
        };
        let recorded = self
            .recording(manager, subresource, |w| w.record_update_raw(old, new, record))
            .map_err(RegistryError::Internal)?;
        Ok(match recorded {
            Recorded::Unchanged => Some(Cow::Borrowed(record)),
            Recorded::Json(json) => Some(Cow::Owned(json)),
            Recorded::Gone | Recorded::InObject => None,
        })
    }

    pub async fn create_with(&self, scope: &Scope, obj: Value, opts: &WriteOptions) -> Result<Value> {
        self.create_written(scope, obj, opts).await.map(Written::into_object)
    }

    /// [`Registry::create_with`], with the bytes stored when they are the answer.
    pub async fn create_written(&self, scope: &Scope, obj: Value, opts: &WriteOptions) -> Result<Written> {
        Ok(self.create_unredacted(scope, obj, opts).await?.redacted(&*self.strategy))
    }

    async fn create_unredacted(&self, scope: &Scope, mut obj: Value, opts: &WriteOptions) -> Result<Written> {
        let dry_run = opts.dry_run;
        self.check_type(&mut obj)?;
        let mut meta = object::meta(&obj)?;
        let tenant =
            scope.tenant.clone().ok_or_else(|| RegistryError::BadRequest("a create needs one tenant".into()))?;
        if meta.tenant.as_ref().is_some_and(|t| *t != tenant) {
            return Err(RegistryError::BadRequest(
                "metadata.tenant does not match the tenant of the request; it is set by the server".into(),
            ));
        }
        meta.tenant = Some(tenant);
        if self.info().namespaced {
            let ns = scope.namespace.clone().ok_or_else(|| {
                RegistryError::BadRequest("a namespaced object must be created in a namespace".into())
            })?;
            if meta.namespace.as_ref().is_some_and(|n| *n != ns) {
                return Err(RegistryError::BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request".into(),
                ));
            }
            meta.namespace = Some(ns);
        } else {
            meta.namespace = None;
        }
        meta.uid = Some(object::new_uid());
        meta.creation_timestamp = Some(object::now_rfc3339());
        meta.resource_version = None;
        meta.deletion_timestamp = None;
        meta.deletion_grace_period_seconds = None;
        meta.generation = Some(1);
        let generate = meta.name.is_none() && meta.generate_name.is_some();
        if generate {
            meta.name = Some(format!("{}{}", meta.generate_name.clone().unwrap_or_default(), object::name_suffix()));
        }
        object::set_meta(&mut obj, &meta)?;
        self.strategy.prepare_for_create(&mut obj);
        // A status the server set (a new pod's phase and QoS class) is nobody's.
        let server_status = match obj.as_object_mut() {
            Some(map) if self.strategy.status_set_on_create() => map.remove("status"),
            _ => None,
        };
        let record = self.record_created(&mut obj, opts)?;
        if let (Some(status), Some(map)) = (server_status, obj.as_object_mut()) {
            map.insert("status".into(), status);
        }
        // After the ownership record: the creator is the server's to say, nobody's to own.
        self.strategy.record_creator(&mut obj, opts.creator.as_ref());
        let mut errors = self.validate_meta(&meta);
        errors.extend(self.strategy.validate(&obj));
        let name = meta.name.clone().unwrap_or_default();
        if !errors.is_empty() {
            return Err(self.invalid(&name, errors));
        }
        self.admit(opts, &name, None, &obj)?;
        if dry_run {
            if let Some(record) = &record {
                put_record(&mut obj, record);
            }
            return Ok(Written::decoded(obj));
        }
        // A generated name may collide; try a few fresh suffixes before giving up.
        for _ in 0..8 {
            let name = meta.name.clone().unwrap_or_default();
            let key = self.key(scope, &name)?;
            let bytes = match &record {
                Some(record) => stored_json_with(&obj, Some(record))
                    .map(stored_bytes)
                    .map_err(|e| RegistryError::Internal(e.to_string()))?,
                None => self.encode(&obj)?,
            };
            match self.store.create(key, bytes.clone()).await? {
                Ok(revision) => {
                    let mut created = obj;
                    if let Some(m) = created.get_mut("metadata").and_then(Value::as_object_mut) {
                        m.insert("resourceVersion".into(), Value::String(revision.to_string()));
                    }
                    let mut written = Written::stored(created, self.strategy.stored_as_viewed(), &bytes, revision);
                    match record {
                        Some(record) if written.stored.is_none() => put_record(&mut written.obj, &record),
                        record => written.record = record,
                    }
                    return Ok(written);
                }
                Err(_) if generate => {
                    meta.name =
                        Some(format!("{}{}", meta.generate_name.clone().unwrap_or_default(), object::name_suffix()));
                    object::set_meta(&mut obj, &meta)?;
                }
                Err(_) => {
                    let info = self.info();
                    return Err(RegistryError::AlreadyExists {
                        resource: info.resource.clone(),
                        group: info.group.clone(),
                        name,
                    });
                }
            }
        }
        Err(RegistryError::Internal("could not generate a unique name".into()))
    }

    /// The fields at `paths` (field names from the root) of the object `name`, decoded alone:
    /// the rest of its JSON is skipped unbuilt, for a server check that reads one or two
    /// fields (a pod create's namespace and service account). A kind not stored as viewed is
    /// read whole, as [`Registry::get`] reads it.
    pub(crate) async fn get_fields(&self, scope: &Scope, name: &str, paths: &[&[&str]]) -> Result<Value> {
        if !self.strategy.stored_as_viewed() {
            return self.get(scope, name).await;
        }
        let (kv, _) = self.store.get(self.key(scope, name)?, None).await?;
        let kv = kv.ok_or_else(|| self.not_found(name))?;
        let mut keep = project::Paths::default();
        for path in paths {
            keep.insert(path);
        }
        keep.decode(&kv.value).map_err(|e| RegistryError::Internal(format!("stored object is not JSON: {e}")))
    }

    pub async fn get(&self, scope: &Scope, name: &str) -> Result<Value> {
        let (kv, _) = self.store.get(self.key(scope, name)?, None).await?;
        let kv = kv.ok_or_else(|| self.not_found(name))?;
        self.decode(&kv.value, kv.mod_revision)
    }

    fn matches(&self, obj: &Value, opts: &ListOptions) -> Result<bool> {
        if !opts.label_selector.is_empty() {
            let labels = object::meta_light(obj)?.labels.unwrap_or_default();
            if !opts.label_selector.matches(&labels) {
                return Ok(false);
            }
        }
        Ok(opts.field_selector.matches(|f| object::field(obj, f)))
    }

    fn check_fields(&self, selector: &FieldSelector) -> Result<()> {
        for f in selector.fields() {
            let ok = matches!(f, "metadata.name" | "metadata.namespace") || self.strategy.selectable(f);
            if !ok {
                return Err(RegistryError::BadRequest(format!(
                    "field label not supported: {f} (for {})",
                    self.info().resource
                )));
            }
        }
        Ok(())
    }

    /// Lists objects in `scope`, one page at a time when `limit` is set.
    pub async fn list(&self, scope: &Scope, opts: &ListOptions) -> Result<Value> {
        self.check_fields(&opts.field_selector)?;
        let prefix = self.prefix(scope);
        let end = store::prefix_end(prefix.as_bytes());
        let (mut start, mut revision) = match &opts.continue_token {
            Some(token) => {
                let (rev, key) = decode_continue(token)?;
                if !key.starts_with(prefix.as_bytes()) {
                    return Err(RegistryError::BadRequest("the continue token belongs to another list".into()));
                }
                (Bytes::from(key), Some(rev))
            }
            None => (Bytes::from(prefix.clone()), None),
        };
        let mut not_older_than = None;
        if revision.is_none() {
            revision = match (opts.resource_version.as_deref(), opts.resource_version_match.as_deref()) {
                (Some(rv), Some("Exact")) => Some(parse_rv(rv)?),
                (_, Some(m)) if m != "NotOlderThan" && m != "Exact" => {
                    return Err(RegistryError::BadRequest(format!("unsupported resourceVersionMatch {m:?}")));
                }
                (Some(rv), _) => {
                    not_older_than = Some(parse_rv(rv)?);
                    None
                }
                _ => None,
            };
        }
        let limit = opts.limit.filter(|&l| l > 0);
        // A `spec.nodeName=` list (node agents, the node lifecycle controller) would otherwise
        // decode every pod of the cluster to keep a few.
        let needles = raw_needles(&*self.strategy, &opts.field_selector);
        let mut items = Vec::new();
        let mut next = None;
        let mut read_at = revision;
        loop {
            // An unpaged list still reads the store in chunks (all at one revision): a single
            // etcd answer holding a whole large kind would exceed what a gRPC message may carry.
            let page = Some(limit.map_or(STORE_CHUNK, |l| (l - items.len()).max(1) + 1));
            let req = RangeRequest { start: start.clone(), end: end.clone(), revision: read_at, limit: page };
            let resp = match self.store.range(req).await {
                Err(StoreError::Compacted { .. }) if opts.continue_token.is_some() => {
                    return Err(RegistryError::Expired(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.".into(),
                    ));
                }
                other => other?,
            };
            read_at = Some(resp.revision);
            let mut last_key = None;
            for kv in &resp.kvs {
                if let Some(l) = limit
                    && items.len() == l
                {
                    next = Some(kv.key.clone());
                    break;
                }
                if may_match_raw(&kv.value, &needles) {
                    let mut obj = self.decode(&kv.value, kv.mod_revision)?;
                    if opts.omit_managed_fields {
                        without_managed_fields(&mut obj);
                    }
                    if self.matches(&obj, opts)? {
                        items.push(obj);
                    }
                }
                last_key = Some(kv.key.clone());
            }
            if next.is_some() || !resp.more {
                break;
            }
            let Some(last) = last_key else { break };
            let mut after = last.to_vec();
            after.push(0);
            start = Bytes::from(after);
        }
        let revision = read_at.unwrap_or(0);
        if let Some(asked) = not_older_than
            && asked > revision
        {
            return Err(StoreError::FutureRevision { requested: asked, current: revision }.into());
        }
        let info = self.info();
        let meta = ListMeta {
            resource_version: Some(revision.to_string()),
            continue_: next.map(|k| encode_continue(revision, &k)),
            remaining_item_count: None,
        };
        Ok(json!({
            "kind": format!("{}List", info.kind),
            "apiVersion": info.api_version(),
            "metadata": meta,
            "items": items,
        }))
    }

    /// Replaces an object (or, with `subresource = Some("status")`, its status).
    /// A `metadata.resourceVersion` in `obj` is a precondition; without one the update is
    /// unconditional.
    pub async fn update(
        &self,
        scope: &Scope,
        name: &str,
        obj: Value,
        subresource: Option<&str>,
        dry_run: bool,
    ) -> Result<Value> {
        self.update_with(scope, name, obj, subresource, &WriteOptions { dry_run, ..WriteOptions::default() }).await
    }

    /// [`Registry::update`] with the writer named, for `metadata.managedFields`.
    pub async fn update_with(
        &self,
        scope: &Scope,
        name: &str,
        obj: Value,
        subresource: Option<&str>,
        opts: &WriteOptions,
    ) -> Result<Value> {
        self.update_written(scope, name, obj, subresource, opts).await.map(Written::into_object)
    }

    /// [`Registry::update_with`], with the bytes stored when they are the answer.
    pub async fn update_written(
        &self,
        scope: &Scope,
        name: &str,
        obj: Value,
        subresource: Option<&str>,
        opts: &WriteOptions,
    ) -> Result<Written> {
        Ok(self.update_unredacted(scope, name, obj, subresource, opts).await?.redacted(&*self.strategy))
    }

    async fn update_unredacted(
        &self,
        scope: &Scope,
        name: &str,
        mut obj: Value,
        subresource: Option<&str>,
        opts: &WriteOptions,
    ) -> Result<Written> {
        self.check_type(&mut obj)?;
        let precondition = self.precondition(&obj, name)?;
        let key = self.key(scope, name)?;
        loop {
            // An applied write brings its own record: the stored one is not changed but replaced.
            let current = self.read_current(&key, name, subresource == Some("status") && !opts.applied).await?;
            if let Some(written) =
                self.write_over(&key, name, &current, obj.clone(), precondition, subresource, opts).await?
            {
                return Ok(written);
            }
        }
    }

    /// The object `name` as an update reads it, for a caller that computes the new version
    /// from it (a patch): one read and one decode serve both the caller and the update rules.
    pub async fn current(&self, scope: &Scope, name: &str) -> Result<Current> {
        self.read_current(&self.key(scope, name)?, name, false).await
    }

    /// [`Registry::current`] for a write of the status subresource whose result does not
    /// depend on the metadata it reads (a merge patch: the write keeps the stored metadata
    /// whatever the patched object says): for a kind stored as viewed, the managed fields are
    /// cut from the stored bytes before decoding, and [`Current::shown`] has none.
    pub async fn current_for_status(&self, scope: &Scope, name: &str) -> Result<Current> {
        self.read_current(&self.key(scope, name)?, name, true).await
    }

    /// Writes `obj` over `current` (from [`Registry::current`]) as [`Registry::update_with`]
    /// would; a `metadata.resourceVersion` in `obj` is a precondition, and a write that loses
    /// the race with another is a conflict (the caller reads again and recomputes).
    pub async fn update_current(
        &self,
        scope: &Scope,
        name: &str,
        mut obj: Value,
        current: &Current,
        subresource: Option<&str>,
        opts: &WriteOptions,
    ) -> Result<Written> {
        self.check_type(&mut obj)?;
        let precondition = self.precondition(&obj, name)?;
        let key = self.key(scope, name)?;
        let written = self.write_over(&key, name, current, obj, precondition, subresource, opts).await?;
        let updated = written.ok_or_else(|| {
            self.conflict(
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        })?;
        Ok(updated.redacted(&*self.strategy))
    }

    /// The resource version `obj` names (a precondition of its update), after checking that
    /// it names the object of the URL.
    fn precondition(&self, obj: &Value, name: &str) -> Result<Option<i64>> {
        let meta = object::meta_light(obj)?;
        if meta.name.as_deref().is_some_and(|n| n != name) {
            return Err(RegistryError::BadRequest(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                meta.name.as_deref().unwrap_or("")
            )));
        }
        meta.resource_version.as_deref().map(parse_rv).transpose()
    }

    /// `status_write`: the read of a status write, which keeps the stored metadata, so the
    /// managed fields of a kind stored as viewed stay stored JSON, changed without being
    /// decoded ([`crate::managed::Writer::record_update_raw`]; they are ~45% of a pod's decoded tree).
    async fn read_current(&self, key: &Bytes, name: &str, status_write: bool) -> Result<Current> {
        let (kv, _) = self.store.get(key.clone(), None).await?;
        let kv = kv.ok_or_else(|| self.not_found(name))?;
        if status_write && self.strategy.stored_as_viewed() && self.info().status_subresource {
            let value = &kv.value;
            if let Some(record) = cache::scan::metadata_member(value, b"managedFields").flatten() {
                let rest = [&value[..record.cut.start], &value[record.cut.end..]].concat();
                let stored = decode_stored(&rest, kv.mod_revision)?;
                return Ok(Current { kv, stored, old: None, shown: None, record: Some(record) });
            }
        }
        // Unredacted: the kind's update rules may need what is stored but never shown (a User
        // keeps its password hash); `old` itself is never handed out. A kind stored as viewed
        // needs no second form at all.
        let stored = decode_stored(&kv.value, kv.mod_revision)?;
        let (old, shown) = if self.strategy.stored_as_viewed() {
            (None, None)
        } else {
            let mut old = stored.clone();
            self.strategy.stored_to_view(&mut old);
            let mut shown = old.clone();
            self.strategy.redact(&mut shown);
            (Some(old), Some(shown))
        };
        Ok(Current { kv, stored, old, shown, record: None })
    }

    /// One attempt at writing `obj` over `current`: the object written, or `None` when
    /// someone wrote in between and the update is unconditional (read again and retry).
    #[allow(clippy::too_many_arguments)]
    async fn write_over(
        &self,
        key: &Bytes,
        name: &str,
        current: &Current,
        obj: Value,
        precondition: Option<i64>,
        subresource: Option<&str>,
        opts: &WriteOptions,
    ) -> Result<Option<Written>> {
        let dry_run = opts.dry_run;
        let revision = current.kv.mod_revision;
        if precondition.is_some_and(|rv| rv != revision) {
            return Err(self.conflict(
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        let stored = &current.stored;
        let old = current.old.as_ref().unwrap_or(stored);
        // An applied status write brings its own record (`Writer::apply` made it), which the
        // status write's "metadata as stored" would otherwise replace with the old one.
        let applied_record = match (opts.applied, subresource) {
            (true, Some("status")) => obj.at("/metadata/managedFields").cloned(),
            _ => None,
        };
        let mut new = self.merge_update(old, obj, subresource)?;
        if let (Some(record), Some(meta)) = (applied_record, new.get_mut("metadata").and_then(Value::as_object_mut)) {
            meta.insert("managedFields".into(), record);
        }
        self.strategy.prepare_for_update(&mut new, old, subresource);
        // A record read as stored JSON is changed as JSON and written beside `new`.
        let record = match &current.record {
            Some(at) => self.record_raw(old, &mut new, &current.kv.value[at.value.clone()], subresource, opts)?,
            None => {
                self.record(Some(old), &mut new, subresource, opts);
                None
            }
        };
        // An answer made from `new` rather than the stored bytes shows the record too.
        let answer = |mut new: Value| {
            if let Some(record) = &record {
                put_record(&mut new, record);
            }
            new
        };
        // After the ownership record: stored-only fields are nobody's to own.
        self.strategy.carry_over(stored, &mut new);
        let new_meta = object::meta_light(&new)?;
        let mut errors = self.validate_meta(&new_meta);
        errors.extend(self.strategy.validate(&new));
        errors.extend(self.strategy.validate_update(&new, old));
        if !errors.is_empty() {
            return Err(self.invalid(name, errors));
        }
        self.admit(opts, name, Some(old), &new)?;
        // A terminating object whose last finalizer is gone is deleted now, unless it is
        // in a grace period that someone else (a node agent) ends.
        if new_meta.deletion_timestamp.is_some()
            && new_meta.deletion_grace_period_seconds.unwrap_or(0) == 0
            && new_meta.finalizers.as_ref().is_none_or(Vec::is_empty)
            && !self.strategy.holds_deletion(&new)
        {
            if dry_run {
                return Ok(Some(Written::decoded(answer(new))));
            }
            return match self.store.delete(key.clone(), Some(revision)).await? {
                Ok((revision, _)) => {
                    set_rv(&mut new, revision);
                    Ok(Some(Written::decoded(answer(new))))
                }
                Err(_) if precondition.is_none() => Ok(None),
                Err(_) => Err(self.conflict(name, "the object has been modified")),
            };
        }
        let bytes = match &record {
            Some(record) => stored_json_with(&new, Some(record))
                .map(stored_bytes)
                .map_err(|e| RegistryError::Internal(e.to_string()))?,
            None => self.encode(&new)?,
        };
        let as_viewed = self.strategy.stored_as_viewed();
        let written = |mut new: Value, as_viewed: bool, revision: i64| {
            set_rv(&mut new, revision);
            let mut written = Written::stored(new, as_viewed, &bytes, revision);
            if written.stored.is_none() {
                written.obj = answer(written.obj);
            } else {
                written.record = record.as_deref().map(<[u8]>::to_vec);
            }
            written
        };
        if bytes == current.kv.value || dry_run {
            return Ok(Some(written(new, as_viewed && !dry_run, revision)));
        }
        match self.store.update(key.clone(), bytes.clone(), revision).await? {
            Ok(revision) => Ok(Some(written(new, as_viewed, revision))),
            // Someone wrote in between: an unconditional update tries again.
            Err(_) if precondition.is_none() => Ok(None),
            Err(_) => Err(self.conflict(
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            )),
        }
    }

    /// Changes an object in place on the server's behalf (e.g. binding a pod to a node):
    /// `change` sees the current object and edits it; the result is validated as a new
    /// object (not against the client update rules) and written if nothing changed in
    /// between, else `change` runs again on the newer version.
    pub async fn mutate(&self, scope: &Scope, name: &str, change: impl Fn(&mut Value) -> Result<()>) -> Result<Value> {
        self.mutate_with(scope, name, false, change).await
    }

    /// [`Registry::mutate`], or with `dry_run` all of it but the write.
    async fn mutate_with(
        &self,
        scope: &Scope,
        name: &str,
        dry_run: bool,
        change: impl Fn(&mut Value) -> Result<()>,
    ) -> Result<Value> {
        let key = self.key(scope, name)?;
        loop {
            let (current, _) = self.store.get(key.clone(), None).await?;
            let current = current.ok_or_else(|| self.not_found(name))?;
            let mut obj = decode_stored(&current.value, current.mod_revision)?;
            // A kind stored as viewed has nothing stored-only to carry over and nothing to
            // hide: the decoded object is changed and written as it is, never copied (a
            // binding per pod copied the whole pod twice).
            let was = (!self.strategy.stored_as_viewed()).then(|| {
                let was = obj.clone();
                self.strategy.stored_to_view(&mut obj);
                self.strategy.redact(&mut obj);
                was
            });
            change(&mut obj)?;
            let errors = self.strategy.validate(&obj);
            if !errors.is_empty() {
                return Err(self.invalid(name, errors));
            }
            let bytes = match &was {
                None => self.encode(&obj)?,
                Some(was) => {
                    let mut stored = obj.clone();
                    self.strategy.carry_over(was, &mut stored);
                    self.encode(&stored)?
                }
            };
            if dry_run {
                self.strategy.redact(&mut obj);
                return Ok(obj);
            }
            match self.store.update(key.clone(), bytes, current.mod_revision).await? {
                Ok(revision) => {
                    set_rv(&mut obj, revision);
                    self.strategy.redact(&mut obj);
                    return Ok(obj);
                }
                Err(_) => continue,
            }
        }
    }

    /// [`Registry::mutate`] for a change that reads and writes neither the managed fields nor
    /// the answer (a pod's binding): for a kind stored as viewed, the stored
    /// `metadata.managedFields` are cut out before decoding and written back as they were
    /// read, never decoded (they are ~40% of a pod's JSON, more of its decoded tree).
    /// A dry run reads, changes and checks, and writes nothing.
    pub async fn mutate_unanswered(
        &self,
        scope: &Scope,
        name: &str,
        dry_run: bool,
        change: impl Fn(&mut Value) -> Result<()>,
    ) -> Result<()> {
        if !self.strategy.stored_as_viewed() {
            return self.mutate_with(scope, name, dry_run, change).await.map(|_| ());
        }
        let key = self.key(scope, name)?;
        loop {
            let (current, _) = self.store.get(key.clone(), None).await?;
            let current = current.ok_or_else(|| self.not_found(name))?;
            let stored = &current.value;
            let record = cache::scan::metadata_member(stored, b"managedFields").flatten();
            let mut obj = match &record {
                Some(m) => {
                    decode_stored(&[&stored[..m.cut.start], &stored[m.cut.end..]].concat(), current.mod_revision)?
                }
                None => decode_stored(stored, current.mod_revision)?,
            };
            change(&mut obj)?;
            if record.is_some() && obj.at("/metadata/managedFields").is_some() {
                return Err(RegistryError::Internal("a server-side change set managed fields".into()));
            }
            let errors = self.strategy.validate(&obj);
            if !errors.is_empty() {
                return Err(self.invalid(name, errors));
            }
            let bytes = stored_json_with(&obj, record.map(|m| &stored[m.value]))
                .map_err(|e| RegistryError::Internal(e.to_string()))?;
            if dry_run {
                return Ok(());
            }
            match self.store.update(key.clone(), stored_bytes(bytes), current.mod_revision).await? {
                Ok(_) => return Ok(()),
                Err(_) => continue,
            }
        }
    }

    /// The object an update stores: the client's object with server-owned metadata kept,
    /// status or everything-but-status kept as the subresource says, and `generation`
    /// bumped when the spec changed.
    fn merge_update(&self, old: &Value, mut new: Value, subresource: Option<&str>) -> Result<Value> {
        let old_meta = object::meta_light(old)?;
        let has_status = self.info().status_subresource;
        match subresource {
            Some("status") if has_status => {
                // Only the status changes: everything else is made the old object's again.
                // Done in place: the new object is most often the old one with a patched
                // status (a patch's result), so comparing costs less than copying the old.
                let old_map = old.as_object().ok_or_else(|| RegistryError::BadRequest("not an object".into()))?;
                let map = object::as_object(&mut new)?;
                map.retain(|k, _| k == "status" || old_map.contains_key(k));
                for (k, v) in old_map.iter().filter(|(k, _)| k.as_str() != "status") {
                    if map.get(k) != Some(v) {
                        map.insert(k.clone(), v.clone());
                    }
                }
                return Ok(new);
            }
            Some(other) => {
                return self
                    .strategy
                    .subresource_update(other, old, &new)
                    .ok_or_else(|| RegistryError::BadRequest(format!("unsupported subresource {other:?}")));
            }
            None => {}
        }
        if has_status {
            let map = object::as_object(&mut new)?;
            match old.get("status") {
                Some(s) => map.insert("status".into(), s.clone()),
                None => map.remove("status"),
            };
        }
        // The managed fields pass through as they are (the ownership record comes later),
        // not copied into the parsed metadata and back.
        let managed = match new.get_mut("metadata") {
            Some(Value::Object(m)) if m.get("managedFields").is_some_and(Value::is_array) => m.remove("managedFields"),
            _ => None,
        };
        let mut meta = object::meta(&new)?;
        meta.name = old_meta.name.clone();
        meta.namespace = old_meta.namespace.clone();
        meta.tenant = old_meta.tenant.clone();
        meta.uid = old_meta.uid.clone();
        meta.creation_timestamp = old_meta.creation_timestamp.clone();
        meta.deletion_timestamp = old_meta.deletion_timestamp.clone();
        meta.deletion_grace_period_seconds = old_meta.deletion_grace_period_seconds;
        meta.generate_name = meta.generate_name.or(old_meta.generate_name.clone());
        meta.resource_version = None;
        let spec_changed =
            if let (true, Some(o), Some(n)) = (self.strategy.stored_as_viewed(), old.as_object(), new.as_object()) {
                // Nothing stored-only or write-only to leave out: compared in place, not copied.
                let body = |(k, _): &(&String, &Value)| k.as_str() != "metadata" && k.as_str() != "status";
                !o.iter().filter(body).eq(n.iter().filter(body))
            } else {
                // Compared as clients see them: stored-only fields (a password hash) and
                // write-only ones (a password) are not part of the spec they observe.
                let strip = |v: &Value| {
                    let mut v = v.clone();
                    if let Some(m) = v.as_object_mut() {
                        m.remove("metadata");
                        m.remove("status");
                    }
                    self.strategy.redact(&mut v);
                    v
                };
                strip(old) != strip(&new)
            };
        let generation = old_meta.generation.unwrap_or(1);
        meta.generation = Some(if spec_changed { generation + 1 } else { generation });
        object::set_meta(&mut new, &meta)?;
        if let (Some(mf), Some(Value::Object(m))) = (managed, new.get_mut("metadata")) {
            m.insert("managedFields".into(), mf);
        }
        Ok(new)
    }

    /// Deletes an object, or marks it terminating while it has finalizers. Returns the
    /// object as deleted (or as marked).
    pub async fn delete(&self, scope: &Scope, name: &str, opts: &DeleteOptions) -> Result<Value> {
        let key = self.key(scope, name)?;
        let precondition_rv = opts.precondition_resource_version.as_deref().map(parse_rv).transpose()?;
        loop {
            let (current, _) = self.store.get(key.clone(), None).await?;
            let current = current.ok_or_else(|| self.not_found(name))?;
            let mut obj = self.decode(&current.value, current.mod_revision)?;
            let mut meta = object::meta(&obj)?;
            if let Some(uid) = &opts.precondition_uid
                && meta.uid.as_ref() != Some(uid)
            {
                return Err(self.conflict(
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta.uid.as_deref().unwrap_or("")
                    ),
                ));
            }
            if let Some(rv) = precondition_rv
                && rv != current.mod_revision
            {
                // No numbers: they are store revisions, which the API shows only encoded.
                return Err(self.conflict(
                    name,
                    "Precondition failed: the ResourceVersion in the precondition is not the object's",
                ));
            }
            let grace = self.strategy.grace_period(&obj, opts.grace_period_seconds);
            // The propagation policy is kept as a finalizer the garbage collector removes.
            let mut list = meta.finalizers.clone().unwrap_or_default();
            let policy_changed = opts.propagation.is_some_and(|p| p.apply(&mut list));
            let finalizers = !list.is_empty() || self.strategy.holds_deletion(&obj);
            if finalizers || grace.is_some() {
                let grace = grace.unwrap_or(0);
                let shorter = meta.deletion_grace_period_seconds.is_none_or(|g| g > grace);
                // Already terminating: only a shorter grace period or another policy changes anything.
                if meta.deletion_timestamp.is_some() && !shorter && !policy_changed {
                    return Ok(obj);
                }
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                if meta.deletion_timestamp.is_none() || shorter {
                    meta.deletion_timestamp = Some(object::rfc3339(now + grace));
                    meta.deletion_grace_period_seconds = Some(grace);
                }
                if policy_changed {
                    meta.finalizers = (!list.is_empty()).then_some(list);
                }
                meta.resource_version = None;
                object::set_meta(&mut obj, &meta)?;
                self.strategy.prepare_for_delete(&mut obj);
                if opts.dry_run {
                    return Ok(obj);
                }
                let mut stored = obj.clone();
                self.strategy.carry_over(&decode_stored(&current.value, current.mod_revision)?, &mut stored);
                match self.store.update(key.clone(), self.encode(&stored)?, current.mod_revision).await? {
                    Ok(revision) => {
                        set_rv(&mut obj, revision);
                        return Ok(obj);
                    }
                    Err(_) => continue,
                }
            }
            if opts.dry_run {
                return Ok(obj);
            }
            match self.store.delete(key.clone(), Some(current.mod_revision)).await? {
                Ok(_) => return Ok(obj),
                Err(_) => continue,
            }
        }
    }

    /// Watches `scope`. With no resource version (or "0"), the stream starts with an
    /// ADDED event per existing object; with one, it starts right after it.
    pub async fn watch(
        &self,
        scope: &Scope,
        opts: &ListOptions,
        allow_bookmarks: bool,
    ) -> Result<tokio::sync::mpsc::Receiver<WatchEvent>> {
        self.check_fields(&opts.field_selector)?;
        let prefix = Bytes::from(self.prefix(scope));
        let mut initial = Vec::new();
        let rv = opts.resource_version.as_deref().filter(|rv| !rv.is_empty());
        let with_state = match opts.send_initial_events {
            Some(send) => send,
            None => matches!(rv, None | Some("0")),
        };
        let mut end_marker = None;
        let after = if with_state {
            // The state at the latest revision (at least `rv`, which is all a client asking
            // for NotOlderThan needs), then changes after it.
            let list = self
                .list(scope, &ListOptions { limit: None, continue_token: None, resource_version: None, ..opts.clone() })
                .await?;
            initial = list["items"].as_array().cloned().unwrap_or_default();
            let at = parse_rv(list["metadata"]["resourceVersion"].as_str().unwrap_or("0"))?;
            if opts.send_initial_events == Some(true) {
                end_marker = Some(at);
            }
            at
        } else {
            let now = self.store.current_revision().await?;
            match rv {
                None | Some("0") => now,
                Some(rv) => {
                    // A version from the future (or one never issued) would wait forever.
                    let rv = parse_rv(rv)?;
                    if rv > now {
                        return Err(StoreError::FutureRevision { requested: rv, current: now }.into());
                    }
                    rv
                }
            }
        };
        // Served from the kind's watch cache when it reaches back far enough, else from a
        // store watch of its own.
        let cached = self.watch_cache().await?.subscribe(prefix.clone(), after);
        let mut stream = match cached {
            Some(rx) => Source::Cache(rx),
            None => match self
                .store
                .watch(prefix, Some(after), WatchOptions { progress_interval: Some(std::time::Duration::from_secs(1)) })
                .await
            {
                Err(StoreError::Compacted { .. }) => {
                    return Err(RegistryError::Expired("too old resource version".into()));
                }
                other => Source::Store(other?),
            },
        };
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let info = self.info().clone();
        let opts = opts.clone();
        let this = self.clone();
        let previous = self.selected_fields(&opts);
        tokio::spawn(async move {
            for obj in initial {
                if tx.send(WatchEvent::owned("ADDED", obj)).await.is_err() {
                    return;
                }
            }
            if let Some(at) = end_marker {
                let marker = json!({
                    "kind": info.kind,
                    "apiVersion": info.api_version(),
                    "metadata": {"resourceVersion": at.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}},
                });
                if tx.send(WatchEvent::owned("BOOKMARK", marker)).await.is_err() {
                    return;
                }
            }
            loop {
                // Stop as soon as the client is gone, which also releases the cache's slot.
                let msg = tokio::select! {
                    msg = stream.next() => msg,
                    _ = tx.closed() => return,
                };
                let Some(msg) = msg else { return };
                let events = match msg {
                    Ok(cache::CacheMessage::Events(events)) => events,
                    Ok(cache::CacheMessage::Progress(revision)) => {
                        if allow_bookmarks {
                            let bookmark = json!({
                                "kind": info.kind,
                                "apiVersion": info.api_version(),
                                "metadata": {"resourceVersion": revision.to_string()},
                            });
                            if tx.send(WatchEvent::owned("BOOKMARK", bookmark)).await.is_err() {
                                return;
                            }
                        }
                        continue;
                    }
                    Err(e) => {
                        let status = RegistryError::from(e).to_status();
                        let object = serde_json::to_value(status).unwrap_or(Value::Null);
                        let _ = tx.send(WatchEvent::owned("ERROR", object)).await;
                        return;
                    }
                };
                for event in events {
                    let Ok(Some(out)) = this.translate(&event, &opts, previous.as_ref()) else { continue };
                    if tx.send(out).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    /// The fields a watch's selectors read, when the previous version of a change can be
    /// judged from them alone (the kind stores objects as viewed); `None`: no selectors, or
    /// the whole object is needed.
    fn selected_fields(&self, opts: &ListOptions) -> Option<project::Paths> {
        if !self.strategy.stored_as_viewed() || (opts.label_selector.is_empty() && opts.field_selector.is_empty()) {
            return None;
        }
        let mut paths = project::Paths::default();
        if !opts.label_selector.is_empty() {
            paths.insert(&["metadata", "labels"]);
        }
        for f in opts.field_selector.fields() {
            paths.insert(&f.split('.').collect::<Vec<_>>());
        }
        Some(paths)
    }

    /// A change as the watcher sees it through its selectors: an object that starts
    /// matching is ADDED, one that stops matching is DELETED. `previous`: the fields the
    /// selectors read, to judge the previous version by without decoding it whole.
    fn translate(
        &self,
        shared: &Arc<cache::SharedEvent>,
        opts: &ListOptions,
        previous: Option<&project::Paths>,
    ) -> Result<Option<WatchEvent>> {
        let revision = shared.event.kv.mod_revision;
        let convert = |obj: &mut Value| {
            self.strategy.stored_to_view(obj);
            self.strategy.redact(obj);
        };
        let not_json = || RegistryError::Internal("a stored object is not JSON".into());
        // Without selectors every object matches: the previous one need not be decoded
        // unless it is what a deletion reports.
        let selective = !opts.label_selector.is_empty() || !opts.field_selector.is_empty();
        let prev = |_: ()| shared.prev(&convert).map_err(|_| not_json());
        let old_matches = match (shared.had_prev(), selective, previous, &shared.event.prev) {
            (false, ..) => false,
            (true, false, ..) => true,
            (true, true, Some(paths), Some(kv)) => {
                let part = paths.decode(&kv.value).map_err(|_| not_json())?;
                self.matches(&part, opts)?
            }
            (true, true, ..) => match prev(())? {
                Some(o) => self.matches(o, opts)?,
                None => false,
            },
        };
        // A disappearing object is reported as it was, at the version of its disappearance.
        let gone = |prev: &Arc<Value>| {
            let mut old = Value::clone(prev);
            set_rv(&mut old, revision);
            if opts.omit_managed_fields {
                without_managed_fields(&mut old);
            }
            WatchEvent::owned("DELETED", old)
        };
        // A kind stored as viewed is sent on as stored, judged by the fields its selectors
        // read (`previous` holds them exactly when there are selectors to judge by).
        let stored_form = match shared.event.kind {
            store::EventKind::Put if self.strategy.stored_as_viewed() => match opts.omit_managed_fields {
                true => shared.stored_spliced_lean(),
                false => shared.stored_spliced(),
            },
            _ => None,
        };
        if let Some(json) = stored_form {
            let new_matches = match previous {
                Some(paths) => self.matches(&paths.decode(&shared.event.kv.value).map_err(|_| not_json())?, opts)?,
                None => true,
            };
            let same = |kind| WatchEvent { kind, object: Payload::Stored(shared.clone()), encoded: Some(json.clone()) };
            return Ok(match (old_matches, new_matches) {
                (false, true) => Some(same("ADDED")),
                (true, true) => Some(same("MODIFIED")),
                (true, false) => prev(())?.map(gone),
                _ => None,
            });
        }
        let decoded = shared.decoded(&convert).ok_or_else(not_json)?;
        Ok(match &decoded.new {
            None if old_matches => prev(())?.map(gone),
            None => None,
            Some((new, json)) => {
                let new_matches = self.matches(new, opts)?;
                let json = match opts.omit_managed_fields {
                    true => shared.decoded_lean(new).cloned(),
                    false => json.clone(),
                };
                let same = |kind| WatchEvent { kind, object: Payload::Decoded(new.clone()), encoded: json.clone() };
                match (old_matches, new_matches) {
                    (false, true) => Some(same("ADDED")),
                    (true, true) => Some(same("MODIFIED")),
                    (true, false) => prev(())?.map(gone),
                    _ => None,
                }
            }
        })
    }
}

/// `obj`'s JSON without `metadata.resourceVersion`, byte for byte what `serde_json::to_vec`
/// writes for a copy without it.
/// Puts `record` (a stored `metadata.managedFields`, as JSON) back into `obj`.
fn put_record(obj: &mut Value, record: &[u8]) {
    if let (Ok(record), Some(meta)) =
        (serde_json::from_slice::<Value>(record), obj.get_mut("metadata").and_then(Value::as_object_mut))
    {
        meta.insert("managedFields".into(), record);
    }
}

/// JSON to store, without the slack its growing buffer left (up to half of it: a pod's
/// ~3.3 KB in 4 KB): the bytes live as long as the object's version does, in the store and
/// the watch cache.
fn stored_bytes(mut json: Vec<u8>) -> Bytes {
    json.shrink_to_fit();
    Bytes::from(json)
}

fn stored_json(obj: &Value) -> serde_json::Result<Vec<u8>> {
    stored_json_with(obj, None)
}

/// [`stored_json`] with `metadata.managedFields` given as JSON (`record`, as cut from stored
/// bytes) rather than in `obj`: put in its place among the metadata's keys, byte for byte
/// what `stored_json` writes for the object holding them (for JSON serde_json wrote).
fn stored_json_with(obj: &Value, record: Option<&[u8]>) -> serde_json::Result<Vec<u8>> {
    const RECORD: &str = "managedFields";
    let (Some(top), Some(Value::Object(meta))) = (obj.as_object(), obj.get("metadata")) else {
        if record.is_some() {
            return Err(serde::ser::Error::custom("managed fields with no metadata object to go in"));
        }
        return serde_json::to_vec(obj);
    };
    if !meta.contains_key("resourceVersion") && record.is_none() {
        return serde_json::to_vec(obj);
    }
    let mut record = record;
    let mut out = Vec::with_capacity(4096);
    out.push(b'{');
    for (i, (k, v)) in top.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, k)?;
        out.push(b':');
        if k != "metadata" {
            serde_json::to_writer(&mut out, v)?;
            continue;
        }
        out.push(b'{');
        let mut first = true;
        let mut member = |out: &mut Vec<u8>, k: &str, v: Result<&Value, &[u8]>| -> serde_json::Result<()> {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
            serde_json::to_writer(&mut *out, k)?;
            out.push(b':');
            match v {
                Ok(v) => serde_json::to_writer(&mut *out, v),
                Err(raw) => {
                    out.extend_from_slice(raw);
                    Ok(())
                }
            }
        };
        for (k, v) in meta.iter().filter(|(k, _)| *k != "resourceVersion") {
            if k.as_str() > RECORD
                && let Some(raw) = record.take()
            {
                member(&mut out, RECORD, Err(raw))?;
            }
            member(&mut out, k, Ok(v))?;
        }
        if let Some(raw) = record.take() {
            member(&mut out, RECORD, Err(raw))?;
        }
        out.push(b'}');
    }
    out.push(b'}');
    Ok(out)
}

/// Drops `metadata.managedFields` (for [`ListOptions::omit_managed_fields`]).
fn without_managed_fields(obj: &mut Value) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
}

fn set_rv(obj: &mut Value, revision: i64) {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), Value::String(revision.to_string()));
    }
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_json_is_the_object_without_its_version() {
        let cases = [
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p\"q", "resourceVersion": "7",
                "uid": "u", "labels": {"a": "b"}}, "spec": {"x": [1, 2.5, null, {"é": true}]}, "status": {}}),
            json!({"metadata": {"resourceVersion": "1"}}),
            json!({"kind": "X", "metadata": {"name": "n"}}),
            json!({"kind": "X"}),
            json!([1, 2]),
        ];
        for obj in cases {
            let mut copy = obj.clone();
            if let Some(m) = copy.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            assert_eq!(stored_json(&obj).unwrap(), serde_json::to_vec(&copy).unwrap(), "{obj}");
        }
    }

    #[test]
    fn stored_json_puts_a_cut_record_back_where_it_was() {
        let cases = [
            json!({"apiVersion": "v1", "metadata": {"annotations": {"a": "}"}, "managedFields": [{"f:x": {}}],
                "name": "n", "resourceVersion": "3"}, "spec": {"managedFields": 1}}),
            json!({"metadata": {"managedFields": [], "resourceVersion": "1"}}),
            json!({"metadata": {"labels": {}, "managedFields": [{"manager": "m\"q"}]}}),
            json!({"metadata": {"managedFields": [1], "name": "z", "uid": "u"}}),
        ];
        for obj in cases {
            let stored = stored_json(&obj).unwrap();
            let m = cache::scan::metadata_member(&stored, b"managedFields").unwrap().unwrap();
            let mut lean = obj.clone();
            without_managed_fields(&mut lean);
            assert_eq!(stored_json_with(&lean, Some(&stored[m.value])).unwrap(), stored, "{obj}");
            let cut: Value = serde_json::from_slice(&[&stored[..m.cut.start], &stored[m.cut.end..]].concat()).unwrap();
            without_managed_fields(&mut lean);
            lean["metadata"].as_object_mut().unwrap().remove("resourceVersion");
            assert_eq!(cut, lean, "{obj}");
        }
    }

    #[test]
    fn raw_prefilter_skips_only_objects_that_cannot_match() {
        let pods = crate::kinds::builtin().into_iter().find(|k| k.info().resource == "pods").expect("pods");
        let needles = |s: &str| raw_needles(&pods, &FieldSelector::parse(s).expect("selector"));
        let on = |node: &str| format!(r#"{{"metadata":{{"name":"p"}},"spec":{{"nodeName":"{node}"}}}}"#).into_bytes();
        let sim_1 = needles("spec.nodeName=sim-1");
        assert!(may_match_raw(&on("sim-1"), &sim_1));
        // The point: another node's pod is never decoded, even one whose name extends this one.
        assert!(!may_match_raw(&on("sim-12"), &sim_1));
        assert!(!may_match_raw(&on("sim-2"), &sim_1));
        // An escape could spell the value differently: decoded and matched in full.
        assert!(may_match_raw(br#"{"spec":{"nodeName":"sim-\u0031"}}"#, &sim_1));
        // Nothing to look for: negations, the empty value (an absent field), non-strings, fields
        // the kind does not vouch for (events reshape theirs), and no field selector at all.
        for s in ["spec.nodeName!=sim-1", "spec.nodeName=", "spec.nodeName=true", "spec.nodeName=42", ""] {
            assert!(needles(s).is_empty(), "{s}");
        }
        let events = crate::kinds::views().into_iter().next().expect("events.k8s.io");
        assert!(raw_needles(&events, &FieldSelector::parse("reason=Started").expect("selector")).is_empty());
        assert!(may_match_raw(b"{}", &[]));
    }
}
