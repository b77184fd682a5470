//! The HTTPS front: TLS with client certificates, then one pipeline per request:
//! authenticate → parse (request info) → resolve the tenant → authorize → route to
//! discovery or to a kind's registry. Every failure is a Kubernetes `Status`.

// Errors here are `Status` values on their way to the client: a cold path where the
// size of the error does not matter, and boxing would only add noise.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use api::json::At;
use api::meta::Status;
use api::request::{RequestInfo, ResourceRequest, TenantScope, Verb};
use api::selector::{FieldSelector, LabelSelector};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Frame;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use store::Store;
use tokio::sync::mpsc;

use crate::pki::{self, CertIdentity};
use crate::registry::{
    DeleteOptions, ListOptions, Propagation, Registry, RegistryError, Scope, Strategy, WriteOptions,
};

/// Largest request body accepted, as in Kubernetes (3 MiB).
const MAX_BODY: usize = 3 << 20;
/// The Kubernetes minor version we report to clients (kubectl 1.27–1.33 accept it).
const KUBE_MINOR: &str = "33";

pub type Body = BoxBody<Bytes, Infallible>;

/// An answer to come (of a request handed over in process).
pub type Answer = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

/// A request's body: from a connection, or handed over by a component in this process
/// ([`Server::in_process`]).
pub type ReqBody = BoxBody<Bytes, hyper::Error>;

/// Where `atoll login` trades a User's password for a token (also under a tenant prefix).
pub const LOGIN_PATH: &str = "/atoll/login";
/// How long a login token lives.
const LOGIN_TTL_SECONDS: i64 = 3600;

/// A path without its `/tenants/{tenant}` prefix.
fn bare_path(path: &str) -> String {
    let bare = match path.strip_prefix("/tenants/") {
        Some(rest) => rest.split_once('/').map_or("/", |(_, p)| p).to_string(),
        None => path.to_string(),
    };
    if bare.starts_with('/') { bare } else { format!("/{bare}") }
}

/// Who is calling, fixed at authentication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
    pub tenant: String,
}

impl User {
    /// Administrators of the whole cluster: the system tenant's `system:masters`.
    pub fn is_system_admin(&self) -> bool {
        self.tenant == api::request::SYSTEM_TENANT && self.groups.iter().any(|g| g == pki::ADMIN_GROUP)
    }
}

impl From<CertIdentity> for User {
    fn from(id: CertIdentity) -> User {
        let mut groups = id.groups;
        if !groups.iter().any(|g| g == "system:authenticated") {
            groups.push("system:authenticated".into());
        }
        User { name: id.user, groups, tenant: id.tenant }
    }
}

/// How a kind prints as a Table: built-in columns by kind, or a definition's columns.
struct Printer {
    kind: String,
    version: &'static str,
    columns: Option<Vec<Value>>,
}

impl Printer {
    fn table(&self, items: &[Value], meta: Value) -> Value {
        match &self.columns {
            Some(columns) => crate::table::custom_table(columns, self.version, items, meta),
            None => crate::table::table(&self.kind, self.version, items, meta),
        }
    }
}

/// Sets the value at a JSON pointer, creating objects on the way.
fn set_pointer(obj: &mut Value, pointer: &str, value: Value) {
    let mut cur = obj;
    for seg in pointer.split('/').skip(1) {
        if !cur.is_object() {
            *cur = json!({});
        }
        let Value::Object(m) = cur else { return };
        cur = m.entry(seg.to_string()).or_insert(Value::Null);
    }
    *cur = value;
}

fn resource_version(obj: &Value) -> i64 {
    obj.at("/metadata/resourceVersion").and_then(Value::as_str).and_then(|r| r.parse().ok()).unwrap_or(0)
}

/// The API: every kind's registry, keyed by (group, resource).
pub struct Api {
    registries: BTreeMap<(String, String), Arc<Registry>>,
    /// The custom resources each tenant's definitions serve.
    crds: Arc<crate::crd::Catalog>,
    /// Every tenant's RBAC policy, and the authorization stage.
    authz: Arc<crate::authz::Authz>,
    /// How pods' logs, exec and attach reach node agents (none: those subresources are 503).
    nodes: Option<Arc<crate::nodeproxy::NodeDialer>>,
    /// Keystone as an identity provider, when configured (`--keystone-url`).
    keystone: Option<crate::keystone::Keystone>,
    /// The authentication chain, and the token key.
    authn: Arc<crate::authn::Authenticator>,
    /// Whence each tenant's encoding of resource versions (`rv.rs`).
    rv: crate::rv::RvSecret,
    /// Owners' kinds, for the `blockOwnerDeletion` admission (`ownerrefs.rs`).
    owner_kinds: Arc<crate::ownerrefs::Kinds>,
    /// Requests counted and timed, for `/metrics` (`metrics.rs`).
    metrics: crate::metrics::Metrics,
}

/// What a server may be started with beyond its store, data and address.
#[derive(Default)]
pub struct ServerOptions {
    pub keystone: Option<crate::keystone::KeystoneConfig>,
    /// Compact the store this often to the revision seen one interval earlier (`compactor.rs`);
    /// `None` never compacts.
    pub compaction_interval: Option<Duration>,
}

fn respond(code: StatusCode, body: Value) -> Response<Body> {
    // Straight into bytes (a Value's `Display` goes through the formatter: measured ~6% of
    // the control plane's CPU in the scale bench, answers being most of its output).
    json_bytes(code, serde_json::to_vec(&body).unwrap_or_default())
}

/// An answer of JSON already serialised.
fn json_bytes(code: StatusCode, bytes: Vec<u8>) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(bytes)).boxed());
    *resp.status_mut() = code;
    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    resp
}

fn status(s: Status) -> Response<Body> {
    let code = StatusCode::from_u16(s.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    respond(code, serde_json::to_value(&s).unwrap_or(Value::Null))
}

fn not_found() -> Status {
    Status::failure(404, "NotFound", "the server could not find the requested resource")
}

fn query_map(query: Option<&str>) -> BTreeMap<String, String> {
    api::request::query_pairs(query.unwrap_or("")).collect()
}

/// The list options of a query, its resource version and continue token decoded from the
/// caller's encoding.
fn list_options(q: &BTreeMap<String, String>, codec: &crate::rv::Codec) -> Result<ListOptions, Status> {
    let label_selector = LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))
        .map_err(|e| Status::bad_request(e.to_string()))?;
    let field_selector = FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str))
        .map_err(|e| Status::bad_request(e.to_string()))?;
    let limit = match q.get("limit") {
        None => None,
        Some(l) => Some(l.parse::<usize>().map_err(|_| Status::bad_request(format!("invalid limit {l:?}")))?),
    };
    Ok(ListOptions {
        label_selector,
        field_selector,
        limit,
        continue_token: q.get("continue").filter(|c| !c.is_empty()).map(|c| codec.decode_continue(c)).transpose()?,
        resource_version: q
            .get("resourceVersion")
            .filter(|c| !c.is_empty())
            .map(|c| codec.decode_str(c))
            .transpose()?,
        resource_version_match: q.get("resourceVersionMatch").filter(|c| !c.is_empty()).cloned(),
        send_initial_events: match q.get("sendInitialEvents").map(String::as_str) {
            None | Some("") => None,
            Some("true" | "1" | "True") => Some(true),
            Some("false" | "0" | "False") => Some(false),
            Some(other) => return Err(Status::bad_request(format!("invalid sendInitialEvents {other:?}"))),
        },
        omit_managed_fields: match q.get("omitManagedFields").map(String::as_str) {
            None | Some("" | "false" | "0" | "False") => false,
            Some("true" | "1" | "True") => true,
            Some(other) => return Err(Status::bad_request(format!("invalid omitManagedFields {other:?}"))),
        },
    })
}

/// Drops the fields of `obj` the kind does not have, as Kubernetes' decoding does, and
/// answers `fieldValidation`: warn about them (Kubernetes' default), ignore them, or refuse
/// the request (`Strict`).
fn check_fields(registry: &Registry, q: &BTreeMap<String, String>, obj: &mut Value) -> Result<Vec<String>, Status> {
    let unknown = registry.prune_unknown_fields(obj);
    let warnings = unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect::<Vec<_>>();
    match q.get("fieldValidation").map(String::as_str) {
        None | Some("") | Some("Warn") => Ok(warnings),
        Some("Ignore") => Ok(Vec::new()),
        Some("Strict") if unknown.is_empty() => Ok(Vec::new()),
        Some("Strict") => {
            let info = registry.info();
            Err(Status::bad_request(format!(
                "{} in version {:?} cannot be handled as a {}: strict decoding error: {}",
                info.kind,
                info.version,
                info.kind,
                warnings.join(", ")
            )))
        }
        Some(other) => {
            Err(Status::bad_request(format!("invalid fieldValidation {other:?}: must be Ignore, Warn or Strict")))
        }
    }
}

/// A merge patch without the members it sets to null (which remove fields), at every depth.
fn without_nulls(patch: &Value) -> Value {
    match patch {
        Value::Object(m) => {
            Value::Object(m.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), without_nulls(v))).collect())
        }
        other => other.clone(),
    }
}

fn with_warnings(mut resp: Response<Body>, warnings: &[String]) -> Response<Body> {
    for w in warnings {
        if let Ok(v) = hyper::header::HeaderValue::from_str(&format!("299 - {w:?}")) {
            resp.headers_mut().append("warning", v);
        }
    }
    resp
}

fn dry_run(q: &BTreeMap<String, String>) -> Result<bool, Status> {
    match q.get("dryRun").map(String::as_str) {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(Status::bad_request(format!("unsupported dryRun value {other:?}; only \"All\" is"))),
    }
}

/// The request body's media type without parameters (`application/json` if unset).
fn media_type(req: &Request<ReqBody>) -> String {
    let value = req.headers().get(hyper::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    value.unwrap_or("application/json").split(';').next().unwrap_or("").trim().to_string()
}

/// The aggregated discovery version the client prefers (`v2` or `v2beta1`), if it asks
/// for aggregated discovery before plain JSON.
fn aggregated_version(accept: &str) -> Option<&'static str> {
    for candidate in accept.split(',') {
        let params: Vec<&str> = candidate.split(';').map(str::trim).collect();
        if params.first().is_some_and(|t| *t != "application/json" && *t != "*/*") {
            continue;
        }
        if !params.contains(&"as=APIGroupDiscoveryList") || !params.contains(&"g=apidiscovery.k8s.io") {
            return None;
        }
        if params.contains(&"v=v2") {
            return Some("v2");
        }
        if params.contains(&"v=v2beta1") {
            return Some("v2beta1");
        }
    }
    None
}

/// One watch event on the wire: `{"type":...,"object":...}` and a newline.
fn watch_line(kind: &str, object_json: &[u8]) -> Vec<u8> {
    let mut line = Vec::with_capacity(object_json.len() + 32);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(kind.as_bytes());
    line.extend_from_slice(b"\",\"object\":");
    line.extend_from_slice(object_json);
    line.extend_from_slice(b"}\n");
    line
}

/// A watch writes the events waiting for it as one chunk, up to about this many bytes (with
/// the 16 chunks its channel holds, what a slow client can keep queued here).
const WATCH_CHUNK: usize = 64 * 1024;

/// A response body fed from a channel (for watches).
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

/// An Action's view of its pod: the caller's RBAC in the Action's tenant, and the pod read
/// there (never in another tenant).
struct ActionPodAccess<'a> {
    api: &'a Api,
    user: &'a User,
    scope: &'a Scope,
}

impl crate::actions::PodAccess for ActionPodAccess<'_> {
    fn may_get_pod(&self, pod: &str) -> Result<(), Status> {
        let get = RequestInfo::Resource(ResourceRequest {
            verb: Verb::Get,
            tenant: TenantScope::Caller,
            group: String::new(),
            version: "v1".into(),
            namespace: self.scope.namespace.clone(),
            resource: "pods".into(),
            name: Some(pod.to_string()),
            subresource: None,
        });
        // Only a plain allow counts: node restriction's conditions never cover this.
        match self.api.authz.authorize(self.user, self.scope.tenant.as_deref(), &get, None)? {
            crate::authz::Grant::Allowed => Ok(()),
            _ => Err(crate::authz::forbidden(&self.user.name, &crate::authz::attributes(&get))),
        }
    }
    async fn pod(&self, pod: &str) -> Result<Value, Status> {
        let pods = self.api.registry("", "pods")?;
        pods.get(self.scope, pod).await.map_err(|e| e.to_status())
    }
}

impl Api {
    /// The API over `store`: the built-in kinds, and the custom resources of the stored
    /// definitions (followed from now on).
    pub async fn start(store: Arc<dyn Store>, data_dir: &Path) -> Result<Api, ServeError> {
        let strategies = crate::kinds::builtin()
            .into_iter()
            .map(|k| Arc::new(k) as Arc<dyn Strategy>)
            .chain(crate::kinds::views().into_iter().map(|k| Arc::new(k) as Arc<dyn Strategy>))
            .chain(std::iter::once(Arc::new(crate::crd::definition_strategy()) as Arc<dyn Strategy>))
            .chain(std::iter::once(Arc::new(crate::kinds::UserKind::new()) as Arc<dyn Strategy>))
            .chain(std::iter::once(Arc::new(crate::actions::ActionKind::new()) as Arc<dyn Strategy>))
            .chain(crate::authz::kinds::rbac_strategies().into_iter().map(|k| Arc::new(k) as Arc<dyn Strategy>))
            .chain(crate::authz::kinds::review_strategies().into_iter().map(|k| Arc::new(k) as Arc<dyn Strategy>));
        let registries: BTreeMap<(String, String), Arc<Registry>> = strategies
            .map(|k| {
                let key = (k.info().group.clone(), k.info().resource.clone());
                (key, Arc::new(Registry::new(store.clone(), k)))
            })
            .collect();
        let definitions = registries
            .get(&(crate::crd::GROUP.to_string(), "customresourcedefinitions".to_string()))
            .cloned()
            .ok_or_else(|| ServeError::Setup("the CustomResourceDefinition kind is not registered".into()))?;
        let authn = crate::authn::Authenticator::start(store.clone(), data_dir)
            .await
            .map_err(|e| ServeError::Setup(format!("setting up authentication: {e}")))?;
        let crds = crate::crd::Catalog::start(store, definitions)
            .await
            .map_err(|e| ServeError::Setup(format!("loading custom resource definitions: {e}")))?;
        let authz = crate::authz::Authz::start(&registries)
            .await
            .map_err(|e| ServeError::Setup(format!("loading RBAC objects: {e}")))?;
        let rv = crate::rv::RvSecret::load_or_create(data_dir).map_err(|e| ServeError::Setup(e.to_string()))?;
        let owner_kinds = Arc::new(crate::ownerrefs::Kinds::new(registries.values(), crds.clone()));
        Ok(Api {
            registries,
            crds,
            authz,
            authn: Arc::new(authn),
            keystone: None,
            nodes: None,
            rv,
            owner_kinds,
            metrics: crate::metrics::Metrics::new(),
        })
    }

    /// Every registry `tenant` sees: the built-in kinds and the custom resources of its
    /// own and the system tenant's definitions.
    fn served(&self, tenant: &str) -> Vec<Arc<Registry>> {
        let mut all: Vec<Arc<Registry>> = self.registries.values().cloned().collect();
        for served in self.crds.visible(tenant) {
            all.extend(served.versions.iter().cloned());
        }
        all
    }

    /// Each group's versions, preferred first.
    fn group_versions(served: &[Arc<Registry>]) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in served {
            let versions = out.entry(r.info().group.clone()).or_default();
            if !versions.contains(&r.info().version) {
                versions.push(r.info().version.clone());
            }
        }
        for versions in out.values_mut() {
            versions.sort_by_key(|v| std::cmp::Reverse(crate::crd::version_priority(v)));
        }
        out
    }

    /// Discovery and OpenAPI documents as `tenant` sees them, or `None` if `path` is not
    /// one.
    fn discovery(&self, path: &str, tenant: &str) -> Option<Value> {
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let served = self.served(tenant);
        let kinds: Vec<&Registry> = served.iter().map(|r| &**r).collect();
        match segs.as_slice() {
            ["openapi", "v3"] => return Some(crate::openapi::root(&kinds)),
            ["openapi", "v3", "api", v] => {
                let known = kinds.iter().any(|r| r.info().group.is_empty() && r.info().version == *v);
                return known.then(|| crate::openapi::group_version_doc(&kinds, "", v));
            }
            ["openapi", "v3", "apis", g, v] => {
                let known = kinds.iter().any(|r| r.info().group == *g && r.info().version == *v);
                return known.then(|| crate::openapi::group_version_doc(&kinds, g, v));
            }
            _ => {}
        }
        let versions = Self::group_versions(&served);
        let group_doc = |g: &str, vs: &[String]| {
            let list: Vec<Value> =
                vs.iter().map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v})).collect();
            json!({"name": g, "versions": list, "preferredVersion": list.first().cloned().unwrap_or(Value::Null)})
        };
        match segs.as_slice() {
            ["api"] => Some(json!({"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]})),
            ["apis"] => Some(json!({"kind": "APIGroupList", "apiVersion": "v1",
                "groups": versions.iter().filter(|(g, _)| !g.is_empty()).map(|(g, v)| group_doc(g, v)).collect::<Vec<_>>()})),
            ["apis", g] => versions.get(*g).filter(|_| !g.is_empty()).map(|v| {
                let mut doc = group_doc(g, v);
                doc["kind"] = json!("APIGroup");
                doc["apiVersion"] = json!("v1");
                doc
            }),
            ["api", "v1"] => Some(Self::resource_list(&served, "", "v1")),
            ["apis", g, v] if versions.get(*g).is_some_and(|have| have.iter().any(|h| h == v)) => {
                Some(Self::resource_list(&served, g, v))
            }
            _ => None,
        }
    }

    fn resource_list(served: &[Arc<Registry>], group: &str, version: &str) -> Value {
        let mut resources = Vec::new();
        for registry in served.iter().filter(|r| r.info().group == group && r.info().version == version) {
            let r = registry.info();
            let verbs: &[&str] = if registry.strategy().create_only() {
                &["create"]
            } else {
                &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
            };
            let mut doc = json!({
                "name": r.resource, "singularName": r.kind.to_lowercase(), "namespaced": r.namespaced,
                "kind": r.kind, "verbs": verbs, "shortNames": r.short_names,
            });
            if !r.categories.is_empty() {
                doc["categories"] = json!(r.categories);
            }
            resources.push(doc);
            if r.scale_subresource {
                resources.push(json!({"name": format!("{}/scale", r.resource), "singularName": "",
                    "namespaced": r.namespaced, "group": "autoscaling", "version": "v1", "kind": "Scale",
                    "verbs": ["get", "patch", "update"]}));
            }
            if r.kind == "Pod" && r.group.is_empty() {
                resources.push(json!({"name": "pods/binding", "singularName": "", "namespaced": true,
                    "kind": "Binding", "verbs": ["create"]}));
                for (sub, kind, verbs) in [
                    ("log", "Pod", json!(["get"])),
                    ("exec", "PodExecOptions", json!(["create", "get"])),
                    ("attach", "PodAttachOptions", json!(["create", "get"])),
                    ("portforward", "PodPortForwardOptions", json!(["create", "get"])),
                ] {
                    resources.push(json!({"name": format!("pods/{sub}"), "singularName": "", "namespaced": true,
                        "kind": kind, "verbs": verbs}));
                }
            }
            if r.kind == "ServiceAccount" && r.group.is_empty() {
                resources.push(json!({"name": "serviceaccounts/token", "singularName": "", "namespaced": true,
                    "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest", "verbs": ["create"]}));
            }
            if r.kind == "Namespace" && r.group.is_empty() {
                resources.push(json!({"name": "namespaces/finalize", "singularName": "", "namespaced": false,
                    "kind": "Namespace", "verbs": ["update"]}));
            }
            if r.status_subresource {
                resources.push(json!({"name": format!("{}/status", r.resource), "singularName": "",
                    "namespaced": r.namespaced, "kind": r.kind, "verbs": ["get", "patch", "update"]}));
            }
        }
        let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
    }

    /// Aggregated discovery (`apidiscovery.k8s.io`) for the core group (`/api`) or the
    /// named groups (`/apis`), built from the same resource lists as legacy discovery.
    fn aggregated(&self, core: bool, version: &str, tenant: &str) -> Value {
        let mut items = Vec::new();
        let served = self.served(tenant);
        for (group, versions) in Self::group_versions(&served).into_iter().filter(|(g, _)| g.is_empty() == core) {
            let mut version_docs = Vec::new();
            for v in versions {
                let legacy = Self::resource_list(&served, &group, &v);
                let mut resources: Vec<Value> = Vec::new();
                for r in legacy["resources"].as_array().into_iter().flatten() {
                    let name = r["name"].as_str().unwrap_or("");
                    let kind = json!({"group": r.get("group").cloned().unwrap_or(json!(group)),
                                  "version": r.get("version").cloned().unwrap_or(json!(v)), "kind": r["kind"]});
                    match name.split_once('/') {
                        Some((parent, sub)) => {
                            if let Some(p) = resources.iter_mut().find(|p| p["resource"] == parent) {
                                let subs = p["subresources"].as_array_mut();
                                let entry = json!({"subresource": sub, "responseKind": kind, "verbs": r["verbs"]});
                                match subs {
                                    Some(list) => list.push(entry),
                                    None => p["subresources"] = json!([entry]),
                                }
                            }
                        }
                        None => {
                            let mut doc = json!({
                                "resource": name, "responseKind": kind,
                                "scope": if r["namespaced"] == json!(true) { "Namespaced" } else { "Cluster" },
                                "singularResource": r["singularName"], "verbs": r["verbs"], "shortNames": r["shortNames"],
                            });
                            if let Some(c) = r.get("categories") {
                                doc["categories"] = c.clone();
                            }
                            resources.push(doc);
                        }
                    }
                }
                version_docs.push(json!({"version": v, "resources": resources, "freshness": "Current"}));
            }
            items.push(json!({"metadata": {"name": group}, "versions": version_docs}));
        }
        json!({"kind": "APIGroupDiscoveryList", "apiVersion": format!("apidiscovery.k8s.io/{version}"), "metadata": {}, "items": items})
    }

    fn version() -> Value {
        json!({"major": "1", "minor": KUBE_MINOR, "gitVersion": format!("v1.{KUBE_MINOR}.0-atoll.{}", env!("CARGO_PKG_VERSION")),
               "gitCommit": "", "gitTreeState": "clean", "buildDate": "", "goVersion": "", "compiler": "rustc",
               "platform": "linux/amd64"})
    }

    /// Serves one request: authenticates it (`authn`), then [`Api::handle`]s it. Health and
    /// version answer whatever the credentials, as before authentication.
    pub async fn serve(
        &self,
        req: Request<ReqBody>,
        cert: &crate::authn::ConnectionCert,
        peer: std::net::IpAddr,
    ) -> Response<Body> {
        let started = Instant::now();
        let path = req.uri().path().to_string();
        let bare = bare_path(&path);
        if matches!(bare.as_str(), "/healthz" | "/livez" | "/readyz" | "/version") {
            return self.handle(req, None, started).await;
        }
        let authorization = req.headers().get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        match self.authn.authenticate(cert, authorization, &path, peer).await {
            Err(refused) if refused.not_ours => {
                let verdict = self.keystone_user(req.headers()).await;
                if let Some(who) = &refused.throttled_as {
                    // Only a refusal (401) is a failed login; Keystone being down (503) or a
                    // project without a tenant (403, the password was right) is not.
                    match &verdict {
                        Ok(Some(_)) => self.authn.external_verdict(who, peer, true),
                        Ok(None) => self.authn.external_verdict(who, peer, false),
                        Err(s) if s.code == 401 => self.authn.external_verdict(who, peer, false),
                        Err(_) => {}
                    }
                }
                match verdict {
                    Ok(Some(user)) => self.handle(req, Some(user), started).await,
                    Ok(None) => status(refused.status),
                    Err(s) => status(s),
                }
            }
            Err(refused) => {
                let mut resp = status(refused.status);
                if let Some(wait) = refused.retry_after
                    && let Ok(v) = hyper::header::HeaderValue::from_str(&wait.as_secs().to_string())
                {
                    resp.headers_mut().insert(hyper::header::RETRY_AFTER, v);
                }
                resp
            }
            Ok(Some(who)) if bare == LOGIN_PATH => match self.login(req, &who) {
                Ok(resp) => resp,
                Err(s) => status(s),
            },
            Ok(who) => self.handle(req, who.map(|w| w.user), started).await,
        }
    }

    /// `POST /atoll/login` with a User's basic credentials: a short-lived token for it, as an
    /// `ExecCredential` (what `atoll login`, a kubectl credential plugin, prints).
    fn login(&self, req: Request<ReqBody>, who: &crate::authn::Authenticated) -> Result<Response<Body>, Status> {
        if req.method() != Method::POST {
            return Err(Status::method_not_allowed());
        }
        if who.method != crate::authn::Method::Password {
            return Err(Status::failure(403, "Forbidden", "logging in takes a User's name and password"));
        }
        let (token, expires) = self.authn.login_token(&who.user, LOGIN_TTL_SECONDS)?;
        Ok(respond(
            StatusCode::CREATED,
            json!({"kind": "ExecCredential", "apiVersion": "client.authentication.k8s.io/v1", "spec": {},
                   "status": {"token": token, "expirationTimestamp": crate::registry::object::rfc3339(expires)}}),
        ))
    }

    /// `POST serviceaccounts/{name}/token` (TokenRequest): a signed token for the account,
    /// valid while it exists (by uid) and until it expires.
    async fn token_request(
        &self,
        registry: &Registry,
        scope: &Scope,
        r: &ResourceRequest,
        req: Request<ReqBody>,
    ) -> Result<Response<Body>, Status> {
        use crate::authn::token;
        if r.verb != Verb::Create {
            return Err(Status::method_not_allowed());
        }
        let name = r.name.clone().unwrap_or_default();
        let body = Self::read_body(req).await?;
        let account = registry.get(scope, &name).await.map_err(|e| e.to_status())?;
        let invalid = |field: &str, value: Value, why: &str| {
            Status::invalid(
                "authentication.k8s.io",
                "TokenRequest",
                &name,
                &[api::meta::FieldError::invalid(field, value, why)],
            )
        };
        let ttl = match body.at("/spec/expirationSeconds") {
            None | Some(Value::Null) => token::DEFAULT_TTL_SECONDS,
            Some(v) => match v.as_i64() {
                Some(n) if n < token::MIN_TTL_SECONDS => {
                    return Err(invalid(
                        "spec.expirationSeconds",
                        v.clone(),
                        "may not specify a duration less than 10 minutes",
                    ));
                }
                // Longer requests are cut to the maximum, as Kubernetes does.
                Some(n) => n.min(token::MAX_TTL_SECONDS),
                None => return Err(invalid("spec.expirationSeconds", v.clone(), "must be an integer")),
            },
        };
        let audiences: Vec<String> = match body.at("/spec/audiences") {
            None | Some(Value::Null) => vec![token::API_AUDIENCE.to_string()],
            Some(Value::Array(a)) if a.is_empty() => vec![token::API_AUDIENCE.to_string()],
            Some(Value::Array(a)) if a.iter().all(|x| x.as_str().is_some_and(|s| !s.is_empty())) => {
                a.iter().filter_map(Value::as_str).map(str::to_string).collect()
            }
            Some(other) => return Err(invalid("spec.audiences", other.clone(), "must be a list of non-empty strings")),
        };
        let meta = |f: &str| account.at(&format!("/metadata/{f}")).and_then(Value::as_str).unwrap_or("").to_string();
        let now = token::now();
        let claims = token::Claims::service_account(
            &meta("tenant"),
            &meta("namespace"),
            &name,
            &meta("uid"),
            audiences.clone(),
            now,
            ttl,
        );
        let signed = self.authn.key().sign(&claims).map_err(|e| Status::internal(e.to_string()))?;
        let created = crate::registry::object::rfc3339(now);
        Ok(respond(
            StatusCode::CREATED,
            json!({"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
                   "metadata": {"name": name, "namespace": meta("namespace"), "creationTimestamp": created},
                   "spec": {"audiences": audiences, "expirationSeconds": ttl,
                            "boundObjectRef": body.at("/spec/boundObjectRef").cloned().unwrap_or(Value::Null)},
                   "status": {"token": signed, "expirationTimestamp": crate::registry::object::rfc3339(now + ttl)}}),
        ))
    }

    /// Serves one request from an authenticated (or not) caller, taken at `started`.
    pub async fn handle(&self, req: Request<ReqBody>, user: Option<User>, started: Instant) -> Response<Body> {
        let path = req.uri().path().to_string();
        let bare = bare_path(&path);
        match bare.as_str() {
            "/healthz" | "/livez" | "/readyz" => {
                let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")).boxed());
                resp.headers_mut()
                    .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain"));
                return resp;
            }
            "/version" => return respond(StatusCode::OK, Api::version()),
            _ => {}
        }
        let Some(user) = user else { return status(Status::unauthorized()) };
        let info = match api::request::parse(req.method().as_str(), &path, req.uri().query()) {
            Ok(info) => info,
            Err(e) => {
                return status(match e {
                    api::request::RequestError::NotFound => not_found(),
                    api::request::RequestError::BadRequest(m) => Status::bad_request(m),
                    api::request::RequestError::MethodNotAllowed => Status::method_not_allowed(),
                });
            }
        };
        let apply = req
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes().starts_with(b"application/apply-patch"));
        let labels = crate::metrics::Labels::of(&info, apply, |group, resource| {
            self.registries.get(&(group.to_string(), resource.to_string())).map(|r| r.info().version.clone())
        });
        let resp = self.handle_parsed(req, user, info).await;
        if let Some(labels) = labels {
            self.metrics.observe(labels, resp.status().as_u16(), started.elapsed());
        }
        resp
    }

    /// Serves a request whose URL is understood, from an authenticated caller.
    async fn handle_parsed(&self, req: Request<ReqBody>, user: User, info: RequestInfo) -> Response<Body> {
        // Authorization, in the tenant the request resolves to.
        // Discovery and OpenAPI under `/tenants/all` are reads of every tenant's view, like
        // a list: for those who may reach across tenants (then `kubectl --server .../all` works).
        let (scope, verb) = match &info {
            RequestInfo::Resource(r) => (&r.tenant, r.verb),
            RequestInfo::NonResource { tenant, .. } => (tenant, Verb::List),
        };
        let fields = query_map(req.uri().query()).remove("fieldSelector");
        let grant = match self
            .resolve_tenant(scope, &user, verb)
            .and_then(|t| self.authz.authorize(&user, t.as_deref(), &info, fields.as_deref()))
        {
            Ok(grant) => grant,
            Err(s) => return status(s),
        };
        match info {
            RequestInfo::NonResource { tenant, path, .. } => {
                // The `all` view serves the kinds every tenant has: the built-in ones and the
                // system tenant's definitions (what `crd::Catalog::lookup` serves there).
                let tenant = match self.resolve_tenant(&tenant, &user, Verb::List) {
                    Ok(t) => t.unwrap_or_else(|| api::request::SYSTEM_TENANT.to_string()),
                    Err(s) => return status(s),
                };
                if req.method() != Method::GET {
                    return status(Status::method_not_allowed());
                }
                if path == "/metrics" {
                    return self.metrics_answer(&user, &tenant);
                }
                if path == "/openapi/v2" {
                    let served = self.served(&tenant);
                    let kinds: Vec<&Registry> = served.iter().map(|r| &**r).collect();
                    let mut resp = Response::new(Full::new(Bytes::from(crate::openapi_v2::document(&kinds))).boxed());
                    resp.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static(crate::openapi_v2::MEDIA_TYPE),
                    );
                    return resp;
                }
                let accept = req.headers().get(hyper::header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
                if let (Some(version), "/api" | "/apis") = (aggregated_version(accept), path.as_str()) {
                    let mut resp = respond(StatusCode::OK, self.aggregated(path == "/api", version, &tenant));
                    let content_type =
                        format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList");
                    if let Ok(v) = hyper::header::HeaderValue::from_str(&content_type) {
                        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
                    }
                    return resp;
                }
                match self.discovery(&path, &tenant) {
                    Some(doc) => respond(StatusCode::OK, doc),
                    None => status(not_found()),
                }
            }
            RequestInfo::Resource(r) => match self.resource(r, &user, grant, req).await {
                Ok(resp) => resp,
                Err(s) => status(s),
            },
        }
    }

    /// `GET /metrics`: every tenant's requests counted together, so for the system tenant's
    /// users only (those its RBAC lets `get` the URL; authorized before this), never through
    /// another tenant's path.
    fn metrics_answer(&self, user: &User, tenant: &str) -> Response<Body> {
        if user.tenant != api::request::SYSTEM_TENANT || tenant != api::request::SYSTEM_TENANT {
            return status(Status::failure(
                403,
                "Forbidden",
                "the metrics count every tenant's requests: only the system tenant's users may read them",
            ));
        }
        let mut resp = Response::new(Full::new(Bytes::from(self.metrics.render())).boxed());
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        resp
    }

    /// The Keystone identity of a request the connection's certificate did not identify,
    /// when Keystone is configured and the request carries a credential for it. The tenant
    /// (the token's project) must exist as a Tenant; with `--keystone-auto-tenants` a
    /// missing one is created (with no admins: a cluster administrator names them).
    async fn keystone_user(&self, headers: &hyper::HeaderMap) -> Result<Option<User>, Status> {
        let Some(keystone) = &self.keystone else { return Ok(None) };
        let Some(outcome) = keystone.authenticate(headers).await else { return Ok(None) };
        let id = outcome.map_err(|e| e.to_status())?;
        let tenants = self.tenants()?;
        let system = Scope { tenant: Some(api::request::SYSTEM_TENANT.into()), namespace: None };
        // From the directory's watch-fed view, not the store: this is every Keystone request.
        let known = if self.authn.directory().tenant(&id.tenant).is_some() {
            Ok(())
        } else {
            // Not in the view: ask the store once more (a Tenant another API server created a
            // moment ago may not have reached this one's view yet).
            tenants.get(&system, &id.tenant).await.map(|_| ())
        };
        match known {
            Ok(()) => {}
            Err(RegistryError::NotFound { .. }) if keystone.auto_tenants => {
                let tenant = json!({"apiVersion": "atoll.io/v1", "kind": "Tenant",
                    "metadata": {"name": id.tenant, "annotations": {"atoll.io/created-by": "keystone"}}});
                match tenants.create(&system, tenant, false).await {
                    Ok(created) => {
                        tracing::info!(tenant = %id.tenant, "created the Tenant of a Keystone project");
                        self.written(tenants.info(), &created, false, false).await?;
                    }
                    Err(RegistryError::AlreadyExists { .. }) => {}
                    Err(e) => return Err(e.to_status()),
                }
            }
            // The caller proved membership of the project, so naming it reveals nothing.
            Err(RegistryError::NotFound { .. }) => {
                return Err(Status::failure(
                    403,
                    "Forbidden",
                    format!(
                        "Keystone project {:?} has no Atoll tenant: a cluster administrator must create the Tenant {:?}",
                        id.tenant, id.tenant
                    ),
                ));
            }
            Err(e) => return Err(e.to_status()),
        }
        Ok(Some(User { name: id.user, groups: id.groups, tenant: id.tenant }))
    }

    /// The tenant a request acts in (`None`: every tenant). Only system administrators
    /// reach beyond their own tenant; to everyone else another tenant does not exist, so
    /// the refusal says nothing about it.
    fn resolve_tenant(&self, scope: &TenantScope, user: &User, verb: Verb) -> Result<Option<String>, Status> {
        let tenant = match scope {
            TenantScope::Caller => Some(user.tenant.clone()),
            TenantScope::Named(t) => Some(t.clone()),
            TenantScope::All => None,
        };
        if !crate::authz::reaches_other_tenants(user) && tenant.as_deref() != Some(user.tenant.as_str()) {
            return Err(Status::failure(403, "Forbidden", format!("User {:?} cannot access that tenant", user.name)));
        }
        if tenant.is_none() && !matches!(verb, Verb::List | Verb::Watch) {
            return Err(Status::bad_request("the tenant \"all\" can only be listed or watched"));
        }
        Ok(tenant)
    }

    /// `POST pods/{name}/binding`: assigns an unassigned pod to a node (what the scheduler
    /// does). As in Kubernetes, a pod already assigned, terminating or held by scheduling
    /// gates is a conflict, so is a binding whose `metadata.uid` or `metadata.resourceVersion`
    /// (preconditions, when given) is not the pod's; the binding's annotations are added to
    /// the pod's.
    async fn bind(
        &self,
        registry: &Registry,
        scope: &Scope,
        r: &ResourceRequest,
        dry_run: bool,
        codec: &crate::rv::Codec,
        req: Request<ReqBody>,
    ) -> Result<Response<Body>, Status> {
        if r.verb != Verb::Create {
            return Err(Status::method_not_allowed());
        }
        let name = r.name.clone().unwrap_or_default();
        let mut body = Self::read_body(req).await?;
        codec.incoming(&mut body)?;
        let node = body.at("/target/name").and_then(Value::as_str).unwrap_or("").to_string();
        if node.is_empty() {
            return Err(Status::invalid("", "Binding", &name, &[api::meta::FieldError::required("target.name", "")]));
        }
        if body.at("/metadata/name").and_then(Value::as_str).is_some_and(|n| n != name) {
            return Err(Status::bad_request("the binding's name does not match the pod's"));
        }
        let text = |pointer: &str| body.at(pointer).and_then(Value::as_str).filter(|s| !s.is_empty());
        let uid = text("/metadata/uid").map(str::to_string);
        let revision = text("/metadata/resourceVersion").map(str::to_string);
        let annotations = match body.at("/metadata/annotations") {
            None | Some(Value::Null) => serde_json::Map::new(),
            Some(Value::Object(map)) if map.values().all(Value::is_string) => map.clone(),
            Some(_) => {
                return Err(Status::bad_request("the binding's metadata.annotations must map strings to strings"));
            }
        };
        let conflict = |why: String| RegistryError::Conflict {
            resource: "pods".into(),
            group: String::new(),
            name: name.clone(),
            why,
        };
        registry
            .mutate_unanswered(scope, &name, dry_run, |pod| {
                let meta = |k: &str| pod["metadata"][k].as_str().unwrap_or("");
                if let Some(uid) = &uid
                    && uid != meta("uid")
                {
                    return Err(conflict(format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta("uid")
                    )));
                }
                // No numbers: they are store revisions, which the API shows only encoded.
                if revision.as_deref().is_some_and(|rv| rv != meta("resourceVersion")) {
                    return Err(conflict(
                        "Precondition failed: the ResourceVersion in the precondition is not the object's".into(),
                    ));
                }
                if let Some(current) = pod.at("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()) {
                    return Err(conflict(format!("pod {name} is already assigned to node {current:?}")));
                }
                if pod.at("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null()) {
                    return Err(conflict(format!("pod {name} is being deleted, cannot be assigned to a host")));
                }
                if pod.at("/spec/schedulingGates").and_then(Value::as_array).is_some_and(|g| !g.is_empty()) {
                    return Err(conflict(format!("pod {name} has non-empty .spec.schedulingGates")));
                }
                pod["spec"]["nodeName"] = json!(node);
                if !annotations.is_empty() {
                    if !pod["metadata"].get("annotations").is_some_and(Value::is_object) {
                        pod["metadata"]["annotations"] = json!({});
                    }
                    if let Some(map) = pod["metadata"]["annotations"].as_object_mut() {
                        map.extend(annotations.clone());
                    }
                }
                // As in Kubernetes, binding marks the pod scheduled (replacing a scheduler's
                // earlier `PodScheduled=False`).
                let scheduled = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null,
                    "lastTransitionTime": crate::registry::object::now_rfc3339()});
                let mut conditions: Vec<Value> =
                    pod.at("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
                conditions.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
                conditions.push(scheduled);
                if !pod.get("status").is_some_and(Value::is_object) {
                    pod["status"] = json!({});
                }
                pod["status"]["conditions"] = Value::Array(conditions);
                Ok(())
            })
            .await
            .map_err(|e| e.to_status())?;
        let mut ok = Status::success();
        ok.code = 201;
        Ok(respond(StatusCode::CREATED, serde_json::to_value(ok).unwrap_or(Value::Null)))
    }

    /// `pods/{name}/log`, `exec` and `attach`: checked here, carried out by the agent of
    /// the pod's node (`nodeproxy`).
    async fn pod_stream(
        &self,
        registry: &Registry,
        scope: &Scope,
        r: &ResourceRequest,
        q: &BTreeMap<String, String>,
        user: &User,
        req: Request<ReqBody>,
    ) -> Result<Response<Body>, Status> {
        let sub = r.subresource.as_deref().unwrap_or("");
        match (sub, r.verb) {
            ("log", Verb::Get) | ("exec" | "attach" | "portforward", Verb::Create) => {}
            // A WebSocket exec, attach or port-forward is a GET, but it starts a process
            // (or joins one, or opens connections) like the POST does: it needs `create`
            // too, as in Kubernetes 1.30+.
            ("exec" | "attach" | "portforward", Verb::Get) => {
                let as_create = RequestInfo::Resource(ResourceRequest { verb: Verb::Create, ..r.clone() });
                // No node-restriction condition grants a stream: only a plain allow counts.
                if self.authz.authorize(user, scope.tenant.as_deref(), &as_create, None)?
                    != crate::authz::Grant::Allowed
                {
                    return Err(crate::authz::forbidden(&user.name, &crate::authz::attributes(&as_create)));
                }
            }
            _ => return Err(Status::method_not_allowed()),
        }
        let name = r.name.clone().unwrap_or_default();
        let pod = registry.get(scope, &name).await.map_err(|e| e.to_status())?;
        // Port-forward is to the pod's network, not to a container.
        let container = match sub {
            "portforward" => String::new(),
            _ => crate::nodeproxy::pick_container(&pod, q.get("container").map(String::as_str))?,
        };
        let node_name = pod.at("/spec/nodeName").and_then(Value::as_str).unwrap_or("");
        if node_name.is_empty() {
            return Err(Status::bad_request(format!("pod {name} does not have a host assigned")));
        }
        if sub != "portforward" {
            crate::nodeproxy::check_started(&pod, &container)?;
        }
        let uid = pod.at("/metadata/uid").and_then(Value::as_str).unwrap_or("").to_string();
        let nodes = self.registry("", "nodes")?;
        let system = Scope { tenant: Some(api::request::SYSTEM_TENANT.to_string()), namespace: None };
        let node = nodes.get(&system, node_name).await.map_err(|_| {
            Status::failure(503, "ServiceUnavailable", format!("the node {node_name} of pod {name} is gone"))
        })?;
        let (host, port) = crate::nodeproxy::agent_endpoint(&node).ok_or_else(|| {
            Status::failure(503, "ServiceUnavailable", format!("the node {node_name} serves no logs or exec"))
        })?;
        let dialer = self.nodes.as_ref().ok_or_else(|| {
            Status::failure(503, "ServiceUnavailable", "this API server does not reach node agents".to_string())
        })?;
        let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
        let path = match sub {
            "log" => format!("/containerLogs/{uid}/{container}{query}"),
            "portforward" => format!("/portForward/{uid}{query}"),
            _ => format!("/{sub}/{uid}/{container}{query}"),
        };
        crate::nodeproxy::forward(dialer, &host, port, path, req).await
    }

    /// Admission of a new Action (`crate::actions`): `get` on its pod, by the caller's own
    /// RBAC, and the pod's node; other kinds pass untouched.
    async fn admit_action(
        &self,
        info: &crate::registry::ResourceInfo,
        user: &User,
        scope: &Scope,
        obj: &mut Value,
    ) -> Result<(), Status> {
        if info.group != crate::actions::GROUP || info.resource != crate::actions::RESOURCE {
            return Ok(());
        }
        let access = ActionPodAccess { api: self, user, scope };
        crate::actions::admit_create(obj, &access).await
    }

    /// The `scale` subresource: an `autoscaling/v1` Scale view of `spec.replicas`.
    async fn scale(
        &self,
        registry: &Registry,
        scope: &Scope,
        r: &ResourceRequest,
        q: &BTreeMap<String, String>,
        req: Request<ReqBody>,
        codec: &crate::rv::Codec,
    ) -> Result<Response<Body>, Status> {
        let name = r.name.clone().unwrap_or_default();
        let builtin = crate::registry::ScalePaths {
            spec_replicas: "/spec/replicas".into(),
            status_replicas: "/status/replicas".into(),
            label_selector: None,
        };
        let paths = registry.strategy().scale_paths().cloned();
        let custom = paths.is_some();
        let paths = paths.unwrap_or(builtin);
        let to_scale = |obj: &Value| {
            let selector = if custom {
                paths
                    .label_selector
                    .as_deref()
                    .and_then(|p| obj.at(p))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            } else {
                obj.at("/spec/selector/matchLabels")
                    .and_then(Value::as_object)
                    .map(|m| {
                        m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect::<Vec<_>>().join(",")
                    })
                    .unwrap_or_default()
            };
            let meta = &obj["metadata"];
            json!({
                "kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
                             "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"]},
                "spec": {"replicas": obj.at(&paths.spec_replicas).cloned().unwrap_or(json!(if custom { 0 } else { 1 }))},
                "status": {"replicas": obj.at(&paths.status_replicas).cloned().unwrap_or(json!(0)), "selector": selector},
            })
        };
        let ok = |mut v: Value| {
            codec.outgoing(&mut v);
            Ok(respond(StatusCode::OK, v))
        };
        match r.verb {
            Verb::Get => ok(to_scale(&registry.get(scope, &name).await.map_err(|e| e.to_status())?)),
            Verb::Update | Verb::Patch => {
                let dry = dry_run(q)?;
                let user_agent = req.headers().get(hyper::header::USER_AGENT).and_then(|v| v.to_str().ok());
                let options = if r.verb == Verb::Update { "UpdateOptions" } else { "PatchOptions" };
                let (manager, _) = crate::managed::options::write_manager(q, user_agent, options, false)?;
                let opts = WriteOptions { dry_run: dry, field_manager: Some(manager), ..WriteOptions::default() };
                let content_type = media_type(&req);
                let mut body = Self::read_body(req).await?;
                codec.incoming(&mut body)?;
                for _ in 0..5 {
                    let current = registry.get(scope, &name).await.map_err(|e| e.to_status())?;
                    let mut scale = to_scale(&current);
                    match (r.verb, content_type.as_str()) {
                        (Verb::Update, _) => scale = body.clone(),
                        (_, "application/json-patch+json") => {
                            scale = crate::patch::json_patch(&scale, &body)
                                .map_err(|e| Status::failure(422, "Invalid", e))?
                        }
                        _ => crate::patch::merge_patch(&mut scale, &body),
                    }
                    let replicas =
                        scale.at("/spec/replicas").and_then(Value::as_i64).filter(|n| *n >= 0).ok_or_else(|| {
                            Status::invalid(
                                "autoscaling",
                                "Scale",
                                &name,
                                &[api::meta::FieldError::invalid(
                                    "spec.replicas",
                                    scale.at("/spec/replicas").cloned().unwrap_or(Value::Null),
                                    "must be a non-negative integer",
                                )],
                            )
                        })?;
                    let pinned =
                        scale.at("/metadata/resourceVersion").and_then(Value::as_str).filter(|v| !v.is_empty());
                    let mut updated = current.clone();
                    set_pointer(&mut updated, &paths.spec_replicas, json!(replicas));
                    if let Some(rv) = pinned {
                        updated["metadata"]["resourceVersion"] = json!(rv);
                    }
                    match registry.update_with(scope, &name, updated, None, &opts).await {
                        Ok(obj) => return ok(to_scale(&obj)),
                        Err(RegistryError::Conflict { .. }) if pinned.is_none() || r.verb == Verb::Patch => continue,
                        Err(e) => return Err(e.to_status()),
                    }
                }
                Err(Status::conflict(
                    &registry.info().group,
                    &registry.info().resource,
                    &name,
                    "the object keeps changing",
                ))
            }
            _ => Err(Status::method_not_allowed()),
        }
    }

    /// What follows a successful write through the API, before it is answered: the
    /// server's own views catch up with it (a client may use a new definition, role or
    /// binding at once), and a Tenant gets its default RBAC objects (or loses them).
    async fn written(
        &self,
        info: &crate::registry::ResourceInfo,
        obj: &Value,
        dry_run: bool,
        deleted: bool,
    ) -> Result<(), Status> {
        if dry_run {
            return Ok(());
        }
        let revision = resource_version(obj);
        // A deleted account's or user's credentials stop working once the answer is out.
        let watched = match (info.group.as_str(), info.resource.as_str()) {
            ("", "serviceaccounts") => Some(crate::authn::directory::Watched::ServiceAccounts),
            ("atoll.io", "users") => Some(crate::authn::directory::Watched::Users),
            ("atoll.io", "tenants") => Some(crate::authn::directory::Watched::Tenants),
            _ => None,
        };
        if let Some(kind) = watched {
            // A deleted object answers with its last version, older than its deletion:
            // then wait until the directory has dropped it.
            let directory = self.authn.directory();
            let meta = |f: &str| obj.at(&format!("/metadata/{f}")).and_then(Value::as_str).unwrap_or("");
            // A Tenant marked for deletion stays (terminating) until its controller is done.
            let marked = kind == crate::authn::directory::Watched::Tenants
                && obj.at("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null());
            if deleted && !marked {
                directory.wait_gone(kind, meta("tenant"), meta("namespace"), meta("name")).await
            } else {
                directory.wait_for(kind, revision).await
            }
        }
        if info.group == crate::crd::GROUP && info.resource == "customresourcedefinitions" {
            self.crds.wait_for(revision).await;
        }
        if info.group == crate::authz::kinds::RBAC_GROUP
            && let Some(kind) = crate::authz::kinds::RbacKind::of_resource(&info.resource)
        {
            self.authz.wait_for(kind, revision).await;
        }
        if info.group == "atoll.io" && info.resource == "tenants" {
            let name = obj.at("/metadata/name").and_then(Value::as_str).unwrap_or("");
            // A terminating tenant gets nothing new: its defaults go at once (its controller
            // deletes everything else), and the last write, which drops its finalizer,
            // must not bring them back.
            let terminating = obj.at("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null());
            let done = if deleted || terminating {
                self.authz.forget_tenant(name).await
            } else {
                let admins = crate::authz::bootstrap::tenant_admins(obj);
                crate::authz::bootstrap::ensure_tenant(&self.authz, name, &admins).await
            };
            done.map_err(|e| e.to_status())?;
        }
        Ok(())
    }

    /// Every tenant's default RBAC objects (the system tenant's and every stored Tenant's),
    /// created where missing.
    pub async fn ensure_rbac_defaults(&self) -> Result<(), Status> {
        use crate::authz::bootstrap::{ensure_tenant, tenant_admins};
        ensure_tenant(&self.authz, api::request::SYSTEM_TENANT, &[]).await.map_err(|e| e.to_status())?;
        let system = Scope { tenant: Some(api::request::SYSTEM_TENANT.into()), namespace: None };
        let tenants = self.tenants()?.list(&system, &ListOptions::default()).await.map_err(|e| e.to_status())?;
        for t in tenants["items"].as_array().into_iter().flatten() {
            if t.at("/metadata/deletionTimestamp").is_some_and(|d| !d.is_null()) {
                continue;
            }
            let name = t.at("/metadata/name").and_then(Value::as_str).unwrap_or("");
            ensure_tenant(&self.authz, name, &tenant_admins(t)).await.map_err(|e| e.to_status())?;
        }
        Ok(())
    }

    /// The namespaces every cluster has, in the system tenant.
    pub async fn ensure_system_namespaces(&self) -> Result<(), Status> {
        let namespaces = self.registry("", "namespaces")?;
        let scope = Scope { tenant: Some(api::request::SYSTEM_TENANT.into()), namespace: None };
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            match namespaces.create(&scope, ns, false).await {
                Ok(_) | Err(RegistryError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e.to_status()),
            }
            self.ensure_default_account(api::request::SYSTEM_TENANT, name).await;
        }
        Ok(())
    }

    /// A new namespace gets its `default` ServiceAccount before the create is answered, so
    /// a pod made right after its namespace is admitted ([`crate::service_accounts`]); the
    /// service-account controller makes it again if it is deleted.
    async fn namespace_created(&self, info: &crate::registry::ResourceInfo, ns: &Value, dry_run: bool) {
        if dry_run || !info.group.is_empty() || info.resource != "namespaces" {
            return;
        }
        let meta = |f: &str| ns.at(&format!("/metadata/{f}")).and_then(Value::as_str).unwrap_or("");
        self.ensure_default_account(meta("tenant"), meta("name")).await;
    }

    /// Makes `default` in `namespace` if missing; a failure is logged, never the caller's:
    /// the controller will make it later.
    async fn ensure_default_account(&self, tenant: &str, namespace: &str) {
        let Ok(accounts) = self.registry("", "serviceaccounts") else { return };
        let scope = Scope { tenant: Some(tenant.to_string()), namespace: Some(namespace.to_string()) };
        let account = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}});
        match accounts.create(&scope, account, false).await {
            Ok(made) => {
                let kind = crate::authn::directory::Watched::ServiceAccounts;
                self.authn.directory().wait_for(kind, resource_version(&made)).await;
            }
            Err(RegistryError::AlreadyExists { .. }) => {}
            Err(e) => tracing::warn!(%tenant, %namespace, error = %e, "making the default ServiceAccount"),
        }
    }

    fn registry(&self, group: &str, resource: &str) -> Result<&Arc<Registry>, Status> {
        self.registries
            .get(&(group.to_string(), resource.to_string()))
            .ok_or_else(|| Status::internal(format!("the {resource} kind is not registered")))
    }

    /// Objects are created only in namespaces that exist and are not being deleted
    /// (Kubernetes' namespace lifecycle admission).
    async fn check_namespace(&self, tenant: &str, namespace: &str) -> Result<(), Status> {
        let scope = Scope { tenant: Some(tenant.to_string()), namespace: None };
        match self
            .registry("", "namespaces")?
            .get_fields(&scope, namespace, &[&["metadata", "deletionTimestamp"]])
            .await
        {
            Ok(ns) if ns.at("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null()) => Err(Status::failure(
                403,
                "Forbidden",
                format!("unable to create new content in namespace {namespace} because it is being terminated"),
            )),
            Ok(_) => Ok(()),
            Err(RegistryError::NotFound { .. }) => Err(Status::not_found("", "namespaces", namespace)),
            Err(e) => Err(e.to_status()),
        }
    }

    /// ServiceAccount admission of a new pod ([`crate::service_accounts`]); other kinds pass.
    async fn service_account_admission(
        &self,
        info: &crate::registry::ResourceInfo,
        scope: &Scope,
        pod: &mut Value,
    ) -> Result<(), Status> {
        use crate::service_accounts as sa;
        if !info.group.is_empty() || info.resource != "pods" {
            return Ok(());
        }
        let account = sa::default_account(pod);
        let deadline = std::time::Instant::now() + sa::patience(&account);
        loop {
            match self.registry("", "serviceaccounts")?.get_fields(scope, &account, &[&["imagePullSecrets"]]).await {
                Ok(account) => {
                    crate::kinds::add_service_account_pull_secrets(pod, &account);
                    return Ok(());
                }
                Err(RegistryError::NotFound { .. }) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(sa::RETRY_EVERY).await;
                }
                Err(RegistryError::NotFound { .. }) => {
                    return Err(sa::missing(pod, scope.namespace.as_deref().unwrap_or(""), &account));
                }
                Err(e) => return Err(e.to_status()),
            }
        }
    }

    /// Pod sandboxing admission ([`crate::sandbox`]) for a new pod: the runtime class must
    /// exist, and the tenant's Tenant object may force the VM sandbox. A tenant that cannot
    /// be read fails the create rather than skip the check.
    async fn admit_sandbox(&self, group: &str, resource: &str, tenant: &str, pod: &mut Value) -> Result<(), Status> {
        if !group.is_empty() || resource != "pods" {
            return Ok(());
        }
        let tenant_obj = if tenant == api::request::SYSTEM_TENANT {
            None
        } else {
            let system = Scope { tenant: Some(api::request::SYSTEM_TENANT.into()), namespace: None };
            match self.tenants()?.get(&system, tenant).await {
                Ok(t) => Some(t),
                Err(RegistryError::NotFound { .. }) => None,
                Err(e) => return Err(e.to_status()),
            }
        };
        crate::sandbox::admit_pod(tenant_obj.as_ref(), pod).map_err(|why| {
            let name = pod.at("/metadata/name").and_then(Value::as_str).unwrap_or("");
            Status::failure(403, "Forbidden", format!("pods {name:?} is forbidden: {why}"))
        })
    }

    fn tenants(&self) -> Result<&Arc<Registry>, Status> {
        self.registry("atoll.io", "tenants")
    }

    /// A named tenant must exist (as a Tenant object); `system` always does. Nothing new
    /// is created in a tenant being deleted (its controller is emptying it).
    async fn check_tenant_exists(&self, tenant: &str, verb: Verb) -> Result<(), Status> {
        if tenant == api::request::SYSTEM_TENANT {
            return Ok(());
        }
        let system = Scope { tenant: Some(api::request::SYSTEM_TENANT.into()), namespace: None };
        match self.tenants()?.get(&system, tenant).await {
            Ok(t) if verb == Verb::Create && t.at("/metadata/deletionTimestamp").is_some_and(|d| !d.is_null()) => {
                Err(Status::failure(
                    403,
                    "Forbidden",
                    format!("unable to create new content in tenant {tenant} because it is being terminated"),
                ))
            }
            Ok(_) => Ok(()),
            Err(RegistryError::NotFound { .. }) => Err(Status::not_found("atoll.io", "tenants", tenant)),
            Err(e) => Err(e.to_status()),
        }
    }

    async fn read_body(req: Request<ReqBody>) -> Result<Value, Status> {
        let content_type = req
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_string();
        let bytes = Limited::new(req.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|_| Status::request_entity_too_large("the request body is larger than 3 MiB"))?
            .to_bytes();
        // No body at all (a DELETE without options, say): nothing, which each verb judges.
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        let base = content_type.split(';').next().unwrap_or("").trim();
        if base == crate::managed::options::APPLY_PATCH {
            return crate::managed::options::parse_apply_body(&bytes);
        }
        if base == crate::proto::MEDIA_TYPE {
            return crate::proto::decode_request(&bytes).map_err(|e| {
                if e.starts_with("no protobuf layout") {
                    Status::unsupported_media_type(&format!("{content_type} ({e}); send JSON"))
                } else {
                    Status::bad_request(format!("the protobuf request body cannot be decoded: {e}"))
                }
            });
        }
        if !matches!(
            base,
            "application/json"
                | "application/merge-patch+json"
                | "application/json-patch+json"
                | "application/strategic-merge-patch+json"
        ) {
            return Err(Status::unsupported_media_type(&content_type));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| Status::bad_request(format!("the request body is not valid JSON: {e}")))
    }

    async fn resource(
        &self,
        r: ResourceRequest,
        user: &User,
        grant: crate::authz::Grant,
        req: Request<ReqBody>,
    ) -> Result<Response<Body>, Status> {
        let mut tenant = self.resolve_tenant(&r.tenant, user, r.verb)?;
        if let Some(t) = &tenant {
            self.check_tenant_exists(t, r.verb).await?;
        }
        // Every resource version in and out is in the caller's tenant's encoding: no store
        // revision leaves the server (`rv.rs`).
        let codec = self.rv.codec(&user.tenant);
        if let Some(review) = crate::authz::reviews::Review::of(&r.group, &r.version, &r.resource) {
            if r.verb != Verb::Create || r.name.is_some() || r.namespace.is_some() || r.subresource.is_some() {
                return Err(Status::method_not_allowed());
            }
            let body = Self::read_body(req).await?;
            let tenant = tenant.unwrap_or_else(|| user.tenant.clone());
            let answer = crate::authz::reviews::answer(&self.authz, review, user, &tenant, body)?;
            return Ok(respond(StatusCode::CREATED, answer));
        }
        let (registry, custom) = match self.registries.get(&(r.group.clone(), r.resource.clone())) {
            Some(builtin) => (builtin.clone(), None),
            None => {
                let (served, registry) =
                    self.crds.lookup(tenant.as_deref(), &r.group, &r.version, &r.resource).ok_or_else(not_found)?;
                (registry, Some(served))
            }
        };
        let registry = &registry;
        let info = registry.info().clone();
        if info.version != r.version {
            return Err(not_found());
        }
        if custom.as_ref().is_some_and(|c| c.terminating) && r.verb == Verb::Create {
            return Err(Status::failure(
                405,
                "MethodNotAllowed",
                format!(
                    "create not allowed while custom resource definition {}.{} is terminating",
                    info.resource, info.group
                ),
            ));
        }
        if info.group == "atoll.io" && info.resource == "tenants" {
            // Tenants belong to the system tenant, whichever URL names them, and only its
            // RBAC grants access to them.
            let system = Some(api::request::SYSTEM_TENANT);
            if self.authz.authorize(user, system, &RequestInfo::Resource(r.clone()), None).is_err() {
                return Err(Status::forbidden(
                    &user.name,
                    r.verb.as_str(),
                    &info.group,
                    &info.resource,
                    r.name.as_deref().unwrap_or(""),
                    None,
                ));
            }
            tenant = Some(api::request::SYSTEM_TENANT.to_string());
        }
        if !info.namespaced && r.namespace.is_some() {
            return Err(not_found());
        }
        if info.namespaced && r.name.is_some() && r.namespace.is_none() {
            return Err(not_found());
        }
        match r.subresource.as_deref() {
            None => {}
            Some("status") if info.status_subresource => {}
            Some("scale") if info.scale_subresource => {}
            Some("binding" | "log" | "exec" | "attach" | "portforward")
                if info.kind == "Pod" && info.group.is_empty() => {}
            Some("finalize") if info.kind == "Namespace" && info.group.is_empty() && r.verb == Verb::Update => {}
            Some("token") if info.kind == "ServiceAccount" && info.group.is_empty() => {}
            Some(_) => return Err(not_found()),
        }
        let scope = Scope { tenant, namespace: r.namespace.clone() };
        // Node restriction's conditions (a pod bound to the node, a secret its pods use),
        // refused alike whether the object is elsewhere or nowhere.
        if grant != crate::authz::Grant::Allowed
            && !crate::authz::node::condition_holds(
                &grant,
                self.registry("", "pods")?,
                registry,
                &scope,
                r.name.as_deref().unwrap_or_default(),
            )
            .await
        {
            return Err(crate::authz::forbidden(&user.name, &crate::authz::attributes(&RequestInfo::Resource(r))));
        }
        let q = query_map(req.uri().query());
        if r.subresource.as_deref() == Some("scale") {
            return self.scale(registry, &scope, &r, &q, req, &codec).await;
        }
        if r.subresource.as_deref() == Some("binding") {
            return self.bind(registry, &scope, &r, dry_run(&q)?, &codec, req).await;
        }
        if matches!(r.subresource.as_deref(), Some("log" | "exec" | "attach" | "portforward")) {
            return self.pod_stream(registry, &scope, &r, &q, user, req).await;
        }
        if r.subresource.as_deref() == Some("token") {
            return self.token_request(registry, &scope, &r, req).await;
        }
        let accept = req.headers().get(hyper::header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        // Server-side printing, for reads of the main resource.
        let table = (crate::table::wants_table(&accept) && r.subresource.is_none()).then(|| Printer {
            kind: info.kind.clone(),
            version: crate::table::table_version(&accept),
            columns: registry.strategy().printer_columns().map(<[Value]>::to_vec),
        });
        // Metadata alone, for reads of the main resource (Kubernetes' metadata client).
        let partial = match r.subresource {
            Some(_) => None,
            None if table.is_some() || !matches!(r.verb, Verb::Get | Verb::List | Verb::Watch) => None,
            None => crate::table::wants_partial(&accept, r.verb == Verb::List).map_err(|_| {
                Status::failure(
                    406,
                    "NotAcceptable",
                    "the server was unable to respond with a content type that the client supports",
                )
            })?,
        };
        let name = r.name.clone().unwrap_or_default();
        let registry_err = |e: RegistryError| e.to_status();
        let out = |code: StatusCode, mut v: Value| {
            codec.outgoing(&mut v);
            respond(code, v)
        };
        let ok = |v: Value| Ok(out(StatusCode::OK, v));
        // A write's answer: cut from the bytes just stored, with the version in the caller's
        // encoding, when those are the object (serialising it again was ~5% of the control
        // plane's CPU at scale); else serialised.
        let out_written = |code: StatusCode, w: crate::registry::Written| match &w.stored {
            Some((spliced, revision)) => json_bytes(code, spliced.with(&codec.encode(*revision))),
            None => out(code, w.obj),
        };
        let user_agent = req.headers().get(hyper::header::USER_AGENT).and_then(|v| v.to_str().ok()).map(str::to_string);
        // RBAC's escalation prevention, for writes of roles and bindings.
        let admission = self.authz.admission(user, scope.tenant.as_deref(), &info.group, &info.resource);
        // And blockOwnerDeletion's permission check.
        let tenant = scope.tenant.as_deref();
        let admission = crate::ownerrefs::with_owner_check(admission, &self.authz, &self.owner_kinds, user, tenant);
        // Who creates: recorded only by a caller of the object's own tenant (a system
        // administrator's name means nothing inside another tenant).
        let creator = (scope.tenant.as_deref() == Some(user.tenant.as_str())).then(|| crate::registry::Creator {
            name: user.name.clone(),
            user_uid: self.authn.directory().user(&user.tenant, &user.name).map(|u| u.uid),
        });
        // Who writes, for metadata.managedFields, and whether this is a forced apply.
        let writer = |kind: &str, apply: bool| -> Result<(WriteOptions, bool), Status> {
            let (manager, force) = crate::managed::options::write_manager(&q, user_agent.as_deref(), kind, apply)?;
            let dry_run = dry_run(&q)?;
            let opts = WriteOptions {
                dry_run,
                field_manager: Some(manager),
                admission: admission.clone(),
                creator: creator.clone(),
                ..Default::default()
            };
            Ok((opts, force))
        };
        match r.verb {
            Verb::Get => {
                let obj = registry.get(&scope, &name).await.map_err(registry_err)?;
                match &table {
                    Some(printer) => {
                        let meta = json!({"resourceVersion": obj["metadata"]["resourceVersion"]});
                        ok(printer.table(std::slice::from_ref(&obj), meta))
                    }
                    None => match partial {
                        Some(version) => ok(crate::table::partial(&obj, version)),
                        None => ok(obj),
                    },
                }
            }
            Verb::List => {
                let list = registry.list(&scope, &list_options(&q, &codec)?).await.map_err(registry_err)?;
                match &table {
                    Some(printer) => {
                        let items = list["items"].as_array().cloned().unwrap_or_default();
                        ok(printer.table(&items, list["metadata"].clone()))
                    }
                    None => match partial {
                        Some(version) => ok(crate::table::partial_list(&list, version)),
                        None => ok(list),
                    },
                }
            }
            Verb::Watch => {
                let opts = list_options(&q, &codec)?;
                let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true" || v == "1");
                if opts.send_initial_events == Some(true)
                    && (!bookmarks || opts.resource_version_match.as_deref() != Some("NotOlderThan"))
                {
                    return Err(Status::invalid(
                        "meta.k8s.io",
                        "ListOptions",
                        "",
                        &[api::meta::FieldError::forbidden(
                            "sendInitialEvents",
                            "sendInitialEvents needs allowWatchBookmarks=true and resourceVersionMatch=NotOlderThan",
                        )],
                    ));
                }
                let timeout = match q.get("timeoutSeconds") {
                    None => 1800,
                    Some(t) => t.parse::<u64>().map_err(|_| {
                        Status::bad_request(format!("invalid value {t:?} for query parameter timeoutSeconds"))
                    })?,
                };
                let mut opts = opts;
                if let Some(n) = &r.name {
                    // Watching one object is watching with a name selector.
                    let mut fs = opts.field_selector.clone();
                    fs.requirements.push(api::selector::FieldRequirement {
                        field: "metadata.name".into(),
                        value: n.clone(),
                        negated: false,
                    });
                    opts.field_selector = fs;
                }
                let mut events = registry.watch(&scope, &opts, bookmarks).await.map_err(registry_err)?;
                let (tx, rx) = mpsc::channel::<Bytes>(16);
                tokio::spawn(async move {
                    let deadline = tokio::time::sleep(Duration::from_secs(timeout));
                    tokio::pin!(deadline);
                    loop {
                        tokio::select! {
                            _ = &mut deadline => return,
                            event = events.recv() => {
                                let Some(event) = event else { return };
                                let line = |event: crate::registry::WatchEvent| {
                                    let encoded = |mut v: Value| {
                                        codec.outgoing(&mut v);
                                        serde_json::to_vec(&v).unwrap_or_default()
                                    };
                                    match (&table, &event.encoded) {
                                        (Some(printer), _) if matches!(event.kind, "ADDED" | "MODIFIED" | "DELETED") => {
                                            let object = event.object();
                                            let meta = json!({"resourceVersion": object["metadata"]["resourceVersion"]});
                                            let rows = printer.table(std::slice::from_ref(&*object), meta);
                                            watch_line(event.kind, &encoded(rows))
                                        }
                                        // Metadata alone, bookmarks too (their object is metadata).
                                        _ if partial.is_some() && event.kind != "ERROR" => {
                                            let version = partial.unwrap_or_default();
                                            watch_line(event.kind, &encoded(crate::table::partial(&event.object(), version)))
                                        }
                                        // Shared by every watcher of this change: serialised once, the
                                        // version written in this caller's encoding.
                                        (_, Some(spliced)) => {
                                            let rv = event.revision().map(|r| codec.encode(r)).unwrap_or_default();
                                            watch_line(event.kind, &spliced.with(&rv))
                                        }
                                        _ => watch_line(event.kind, &encoded(Value::clone(&event.object()))),
                                    }
                                };
                                // The events already waiting go out with this one, as one chunk:
                                // one wakeup of the reader and one frame per batch, not per event.
                                let mut chunk = line(event);
                                while chunk.len() < WATCH_CHUNK {
                                    match events.try_recv() {
                                        Ok(event) => chunk.extend_from_slice(&line(event)),
                                        Err(_) => break,
                                    }
                                }
                                if tx.send(Bytes::from(chunk)).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
                let mut resp = Response::new(ChannelBody(rx).boxed());
                resp.headers_mut()
                    .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
                Ok(resp)
            }
            Verb::Create => {
                if r.subresource.is_some() || r.name.is_some() {
                    return Err(Status::method_not_allowed());
                }
                let (opts, _) = writer("CreateOptions", false)?;
                let mut body = Self::read_body(req).await?;
                let warnings = check_fields(registry, &q, &mut body)?;
                if let (Some(tenant), Some(namespace)) = (&scope.tenant, &scope.namespace) {
                    self.check_namespace(tenant, namespace).await?;
                    self.admit_sandbox(&info.group, &info.resource, tenant, &mut body).await?;
                }
                self.service_account_admission(&info, &scope, &mut body).await?;
                self.admit_action(&info, user, &scope, &mut body).await?;
                let created = registry.create_written(&scope, body, &opts).await.map_err(registry_err)?;
                self.written(&info, &created.obj, opts.dry_run, false).await?;
                self.namespace_created(&info, &created.obj, opts.dry_run).await;
                Ok(with_warnings(out_written(StatusCode::CREATED, created), &warnings))
            }
            Verb::Update => {
                let (opts, _) = writer("UpdateOptions", false)?;
                let mut body = Self::read_body(req).await?;
                codec.incoming(&mut body)?;
                let warnings = check_fields(registry, &q, &mut body)?;
                let updated = registry.update_written(&scope, &name, body, r.subresource.as_deref(), &opts).await;
                let updated = updated.map_err(registry_err)?;
                self.written(&info, &updated.obj, opts.dry_run, false).await?;
                Ok(with_warnings(out_written(StatusCode::OK, updated), &warnings))
            }
            Verb::Patch => {
                let content_type = media_type(&req);
                let apply = content_type == crate::managed::options::APPLY_PATCH;
                let (opts, force) = writer("PatchOptions", apply)?;
                let mut patch = Self::read_body(req).await?;
                codec.incoming(&mut patch)?;
                if apply {
                    let warnings = check_fields(registry, &q, &mut patch)?;
                    // An apply may create the object: then the caller needs `create` too (as in
                    // Kubernetes), and the namespace must exist.
                    if r.subresource.is_none()
                        && let Err(RegistryError::NotFound { .. }) = registry.get(&scope, &name).await
                    {
                        let create = ResourceRequest { verb: Verb::Create, ..r.clone() };
                        // A create is never granted on condition (node restriction has none).
                        let grant = self.authz.authorize(
                            user,
                            scope.tenant.as_deref(),
                            &RequestInfo::Resource(create.clone()),
                            None,
                        )?;
                        if grant != crate::authz::Grant::Allowed {
                            return Err(crate::authz::forbidden(
                                &user.name,
                                &crate::authz::attributes(&RequestInfo::Resource(create)),
                            ));
                        }
                        if let (Some(tenant), Some(namespace)) = (&scope.tenant, &scope.namespace) {
                            self.check_namespace(tenant, namespace).await?;
                            self.admit_sandbox(&info.group, &info.resource, tenant, &mut patch).await?;
                        }
                        self.service_account_admission(&info, &scope, &mut patch).await?;
                    }
                    let mut patch = patch;
                    if r.subresource.is_none()
                        && info.group == crate::actions::GROUP
                        && info.resource == crate::actions::RESOURCE
                        && let Err(RegistryError::NotFound { .. }) = registry.get(&scope, &name).await
                    {
                        self.admit_action(&info, user, &scope, &mut patch).await?;
                    }
                    let sub = r.subresource.as_deref();
                    let (obj, created) =
                        registry.apply(&scope, &name, patch, sub, force, &opts).await.map_err(|e| e.to_status())?;
                    self.written(&info, &obj, opts.dry_run, false).await?;
                    if created {
                        self.namespace_created(&info, &obj, opts.dry_run).await;
                    }
                    let code = if created { StatusCode::CREATED } else { StatusCode::OK };
                    return Ok(with_warnings(out(code, obj), &warnings));
                }
                // A patch applies to the object as it is; if it changes in between, apply it
                // again to the new version, unless the patch itself names a version.
                // Custom resources have no patch strategies to merge by, as in Kubernetes.
                if info.custom && content_type == "application/strategic-merge-patch+json" {
                    return Err(Status::failure(
                        415,
                        "UnsupportedMediaType",
                        "the body of the request was in an unknown format - accepted media types include: \
                         application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                    ));
                }
                let pinned = patch.at("/metadata/resourceVersion").is_some_and(|v| !v.is_null());
                // A status write keeps the stored metadata whatever a merge patch makes of it
                // (a JSON patch could test or copy it): the managed fields need not be read.
                let status_merge = r.subresource.as_deref() == Some("status")
                    && matches!(
                        content_type.as_str(),
                        "application/merge-patch+json" | "application/strategic-merge-patch+json"
                    );
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    // Read and decoded once, for the patch and for the update rules alike.
                    let read = match status_merge {
                        true => registry.current_for_status(&scope, &name).await,
                        false => registry.current(&scope, &name).await,
                    }
                    .map_err(registry_err)?;
                    let current = read.shown();
                    let mut patched = match content_type.as_str() {
                        "application/merge-patch+json" => {
                            let mut doc = current.clone();
                            crate::patch::merge_patch(&mut doc, &patch);
                            doc
                        }
                        "application/strategic-merge-patch+json" => {
                            let mut doc = current.clone();
                            crate::patch::strategic_merge(&mut doc, &patch).map_err(|e| {
                                Status::failure(
                                    422,
                                    "Invalid",
                                    format!("the strategic merge patch cannot be applied: {e}"),
                                )
                            })?;
                            doc
                        }
                        "application/json-patch+json" => crate::patch::json_patch(current, &patch).map_err(|e| {
                            Status::failure(422, "Invalid", format!("the JSON patch cannot be applied: {e}"))
                        })?,
                        other => return Err(Status::unsupported_media_type(other)),
                    };
                    if !pinned {
                        patched["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
                    }
                    // A merge patch's object is the stored one (checked when written) with the
                    // patch's fields: those are the only ones that can be unknown, and checking
                    // them alone spares a walk of the whole object per patch; the object is
                    // walked to drop them only when there are some.
                    // (A field the patch sets to null is removed, not brought.)
                    let warnings = if content_type == "application/merge-patch+json" && patch.is_object() {
                        let warnings = check_fields(registry, &q, &mut without_nulls(&patch))?;
                        if !warnings.is_empty() {
                            registry.prune_unknown_fields(&mut patched);
                        }
                        warnings
                    } else {
                        check_fields(registry, &q, &mut patched)?
                    };
                    let sub = r.subresource.as_deref();
                    match registry.update_current(&scope, &name, patched, &read, sub, &opts).await {
                        Ok(updated) => {
                            self.written(&info, &updated.obj, opts.dry_run, false).await?;
                            return Ok(with_warnings(out_written(StatusCode::OK, updated), &warnings));
                        }
                        Err(RegistryError::Conflict { .. }) if !pinned && attempts < 5 => continue,
                        Err(e) => return Err(e.to_status()),
                    }
                }
            }
            Verb::Delete => {
                let dry = dry_run(&q)?;
                let mut body = Self::read_body(req).await?;
                codec.incoming(&mut body)?;
                if !body.is_null() && !body.is_object() {
                    return Err(Status::bad_request("the body of a delete must be DeleteOptions"));
                }
                // The policy becomes a finalizer the garbage collector acts on; `orphanDependents`
                // is its older spelling.
                let policy = q
                    .get("propagationPolicy")
                    .map(String::as_str)
                    .or(body.get("propagationPolicy").and_then(Value::as_str));
                if let Some(p) = policy.filter(|p| !matches!(*p, "Orphan" | "Background" | "Foreground")) {
                    return Err(Status::invalid(
                        "meta.k8s.io",
                        "DeleteOptions",
                        "",
                        &[api::meta::FieldError {
                            field: "propagationPolicy".into(),
                            kind: api::meta::FieldErrorKind::NotSupported(
                                p.to_string(),
                                vec!["Foreground".into(), "Background".into(), "Orphan".into()],
                            ),
                            detail: String::new(),
                        }],
                    ));
                }
                let grace = match q.get("gracePeriodSeconds") {
                    Some(g) => Some(
                        g.parse::<i64>()
                            .map_err(|_| Status::bad_request(format!("invalid gracePeriodSeconds {g:?}")))?,
                    ),
                    None => body.get("gracePeriodSeconds").and_then(Value::as_i64),
                };
                let opts = DeleteOptions {
                    dry_run: dry,
                    precondition_uid: body.at("/preconditions/uid").and_then(Value::as_str).map(str::to_string),
                    precondition_resource_version: body
                        .at("/preconditions/resourceVersion")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    grace_period_seconds: grace,
                    propagation: match policy.and_then(Propagation::parse) {
                        Some(p) => Some(p),
                        None => orphan_dependents(&q, &body)?,
                    },
                };
                let deleted = registry.delete(&scope, &name, &opts).await.map_err(registry_err)?;
                self.written(&info, &deleted, dry, true).await?;
                ok(deleted)
            }
            Verb::DeleteCollection => {
                let dry = dry_run(&q)?;
                let list = registry.list(&scope, &list_options(&q, &codec)?).await.map_err(registry_err)?;
                let body = Self::read_body(req).await?;
                let policy = q
                    .get("propagationPolicy")
                    .map(String::as_str)
                    .or(body.get("propagationPolicy").and_then(Value::as_str));
                let propagation = match policy {
                    Some(p) => Some(
                        Propagation::parse(p)
                            .ok_or_else(|| Status::bad_request(format!("unsupported propagationPolicy {p:?}")))?,
                    ),
                    None => orphan_dependents(&q, &body)?,
                };
                let opts = DeleteOptions { dry_run: dry, propagation, ..DeleteOptions::default() };
                let mut deleted = Vec::new();
                for item in list["items"].as_array().into_iter().flatten() {
                    let item_name = item["metadata"]["name"].as_str().unwrap_or("");
                    let item_scope = Scope {
                        tenant: item["metadata"]["tenant"].as_str().map(str::to_string),
                        namespace: item["metadata"]["namespace"].as_str().map(str::to_string),
                    };
                    match registry.delete(&item_scope, item_name, &opts).await {
                        Ok(obj) => {
                            self.written(&info, &obj, dry, true).await?;
                            deleted.push(obj);
                        }
                        Err(RegistryError::NotFound { .. }) => {}
                        Err(e) => return Err(e.to_status()),
                    }
                }
                let mut out = list;
                out["items"] = Value::Array(deleted);
                ok(out)
            }
        }
    }
}

/// The deprecated `orphanDependents` (query or body): true orphans, false collects in the
/// background.
fn orphan_dependents(q: &BTreeMap<String, String>, body: &Value) -> Result<Option<Propagation>, Status> {
    let flag = match q.get("orphanDependents") {
        Some(v) => Some(v.parse::<bool>().map_err(|_| Status::bad_request(format!("invalid orphanDependents {v:?}")))?),
        None => body.get("orphanDependents").and_then(Value::as_bool),
    };
    Ok(flag.map(|o| if o { Propagation::Orphan } else { Propagation::Background }))
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("{0}")]
    Setup(String),
    #[error("listening on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
}

fn tls_config(p: &pki::Pki) -> Result<rustls::ServerConfig, ServeError> {
    let tls = |e: &dyn std::fmt::Display| ServeError::Tls(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let parse_certs =
        |pem: &str| rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>();
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in parse_certs(&p.ca_cert).map_err(|e| tls(&e))? {
        roots.add(c).map_err(|e| tls(&e))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| tls(&e))?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(p.server_key.as_bytes()).map_err(|e| tls(&e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(parse_certs(&p.server_cert).map_err(|e| tls(&e))?, key)
        .map_err(|e| tls(&e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A bound, ready server.
/// Serves one request in a task of its own (over a connection or in process alike), so a
/// panic in it answers 500 instead of ending the server.
async fn serve_isolated(
    api: Arc<Api>,
    req: Request<ReqBody>,
    cert: crate::authn::ConnectionCert,
    peer: std::net::IpAddr,
) -> Response<Body> {
    // Boxed: the handler's future is ~11 KB, and a task moves its future (and, when it ends,
    // the slot holding it) by value several times; a box makes each move a pointer's.
    let handled = tokio::spawn(Box::pin(async move { api.serve(req, &cert, peer).await })).await;
    handled.unwrap_or_else(|_| status(Status::internal("the request handler failed")))
}

pub struct Server {
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    api: Arc<Api>,
    pub kubeconfig: PathBuf,
    /// The URL clients reach this server at (as written in the kubeconfigs).
    pub url: String,
    /// The store and interval of the compactor, which runs as long as the server does.
    compaction: Option<(Arc<dyn Store>, Duration)>,
}

impl Server {
    /// Sets up certificates (first start), binds `listen` and writes the admin kubeconfig.
    pub async fn bind(store: Arc<dyn Store>, data_dir: &Path, listen: SocketAddr) -> Result<Server, ServeError> {
        Server::bind_with(store, data_dir, listen, ServerOptions::default()).await
    }

    /// [`Server::bind`] with options.
    pub async fn bind_with(
        store: Arc<dyn Store>,
        data_dir: &Path,
        listen: SocketAddr,
        options: ServerOptions,
    ) -> Result<Server, ServeError> {
        let hosts = vec![listen.ip().to_string()];
        let pki = pki::bootstrap(data_dir, &hosts)?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| ServeError::Listen { addr: listen, source })?;
        let local = listener.local_addr().map_err(|source| ServeError::Listen { addr: listen, source })?;
        let host = if local.ip().is_unspecified() { "127.0.0.1".to_string() } else { local.ip().to_string() };
        let url = if host.contains(':') {
            format!("https://[{host}]:{}", local.port())
        } else {
            format!("https://{host}:{}", local.port())
        };
        let kubeconfig = pki::write_admin_kubeconfig(data_dir, &pki, &url)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&pki)?));
        let compaction = options.compaction_interval.filter(|i| !i.is_zero()).map(|i| (store.clone(), i));
        let mut api = Api::start(store, data_dir).await?;
        if let Some(config) = &options.keystone {
            api.keystone = Some(crate::keystone::Keystone::new(config).map_err(|e| ServeError::Setup(e.to_string()))?);
            // Set before the Api is shared: the chain hands unknown credentials to Keystone.
            match Arc::get_mut(&mut api.authn) {
                Some(authn) => authn.external = true,
                None => return Err(ServeError::Setup("the authenticator is already shared".into())),
            }
        }
        let client_cert = pki::issue_apiserver_client(data_dir)?;
        api.nodes = Some(Arc::new(crate::nodeproxy::NodeDialer::new(&client_cert).map_err(ServeError::Tls)?));
        api.ensure_system_namespaces()
            .await
            .map_err(|e| ServeError::Setup(format!("creating the system namespaces: {}", e.message)))?;
        api.ensure_rbac_defaults()
            .await
            .map_err(|e| ServeError::Setup(format!("creating the default RBAC objects: {}", e.message)))?;
        Ok(Server { listener, acceptor, api: Arc::new(api), kubeconfig, url, compaction })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// This server's request handler for a component in the same process, identified by
    /// its client certificate (`cert_pem`, as in its kubeconfig): requests are served as
    /// they would be over a connection with that certificate (authentication, tenancy,
    /// authorization and admission alike), from the loopback address, but handed over in
    /// memory. The certificate is one this process holds: its chain to the cluster's CA
    /// was checked when it was issued, as a handshake would check it.
    pub fn in_process(
        &self,
        cert_pem: &[u8],
    ) -> Result<impl Fn(Request<http_body_util::Full<Bytes>>) -> Answer + Send + Sync + 'static, ServeError> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ServeError::Setup(format!("reading the component's certificate: {e}")))?;
        let peer = SocketAddr::from(([127, 0, 0, 1], 0));
        let cert = crate::authn::ConnectionCert::of(Some(&chain), peer);
        if !matches!(cert, crate::authn::ConnectionCert::Valid(_)) {
            return Err(ServeError::Setup("the component's certificate names no identity".into()));
        }
        let api = self.api.clone();
        Ok(move |req: Request<http_body_util::Full<Bytes>>| {
            let (api, cert) = (api.clone(), cert.clone());
            let req = req.map(|b| b.map_err(|never| match never {}).boxed());
            let answer: Answer = Box::pin(serve_isolated(api, req, cert, peer.ip()));
            answer
        })
    }

    /// Serves until `shutdown` resolves.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        // Aborted when serving stops, so that a stopped server no longer touches the store.
        let _compactor = self
            .compaction
            .clone()
            .map(|(store, interval)| AbortOnDrop(tokio::spawn(crate::compactor::run(store, interval))));
        loop {
            let (tcp, peer) = tokio::select! {
                _ = &mut shutdown => return,
                accepted = self.listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                },
            };
            // Watch events are small writes that must leave at once, not wait for Nagle.
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(%peer, error = %e, "cannot disable Nagle's algorithm");
            }
            let (acceptor, api) = (self.acceptor.clone(), self.api.clone());
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
                // A certificate is the connection's; every other credential is the request's.
                let cert = crate::authn::ConnectionCert::of(tls.get_ref().1.peer_certificates(), peer);
                let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (api, cert) = (api.clone(), cert.clone());
                    let req = req.map(BodyExt::boxed);
                    async move { Ok::<_, Infallible>(serve_isolated(api, req, cert, peer.ip()).await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                // Upgrades: exec and attach (HTTP/1.1 only; kubectl asks for it on those).
                if let Err(e) = builder.serve_connection_with_upgrades(TokioIo::new(tls), service).await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
    }
}
