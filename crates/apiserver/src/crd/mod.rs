//! CustomResourceDefinitions (`apiextensions.k8s.io/v1`) and the custom resources they
//! define.
//!
//! A definition belongs to a tenant like any other object. Its resources are served in that
//! tenant; the system tenant's definitions are served in every tenant (each tenant's objects
//! stay under its own key prefix), and a tenant's own definition of the same name takes
//! precedence inside that tenant. So a tenant can extend its own API without anyone else
//! seeing it, and the cluster's operator can extend everyone's.
//!
//! The [`Catalog`] follows the stored definitions through a watch (so several API servers
//! agree), builds one [`Registry`] per served version with a [`CustomKind`] strategy, and
//! removes a deleted definition's objects before letting the definition go (the
//! `customresourcecleanup.apiextensions.k8s.io` finalizer).

pub mod schema;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use api::json::At;
use api::meta::{FieldError, FieldErrorKind};
use serde_json::{Value, json};
use store::Store;

use crate::registry::{DeleteOptions, ListOptions, Registry, RegistryError, ResourceInfo, ScalePaths, Scope, Strategy};

pub const GROUP: &str = "apiextensions.k8s.io";
/// Holds a definition until its custom resources are gone.
pub const FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

/// Groups served by Atoll itself: no definition may take them.
const BUILTIN_GROUPS: &[&str] =
    &["", "apps", "atoll.io", "apiextensions.k8s.io", "coordination.k8s.io", "events.k8s.io"];

fn not_supported(field: String, value: &str, allowed: &[&str]) -> FieldError {
    FieldError {
        field,
        kind: FieldErrorKind::NotSupported(value.to_string(), allowed.iter().map(|a| a.to_string()).collect()),
        detail: String::new(),
    }
}

fn is_lower_dns_label(s: &str) -> bool {
    api::request::is_dns_label(s)
}

/// The strategy of the CustomResourceDefinition kind itself.
pub struct DefinitionStrategy {
    info: ResourceInfo,
}

pub fn definition_strategy() -> DefinitionStrategy {
    DefinitionStrategy {
        info: ResourceInfo {
            group: GROUP.into(),
            version: "v1".into(),
            kind: "CustomResourceDefinition".into(),
            resource: "customresourcedefinitions".into(),
            namespaced: false,
            status_subresource: true,
            scale_subresource: false,
            storage: None,
            short_names: vec!["crd".into(), "crds".into()],
            categories: vec!["api-extensions".into()],
            custom: false,
        },
    }
}

/// Fills in what a definition may leave out.
fn default_definition(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else { return };
    if let Some(names) = spec.get_mut("names").and_then(Value::as_object_mut) {
        let kind = names.get("kind").and_then(Value::as_str).unwrap_or("").to_string();
        if names.get("singular").and_then(Value::as_str).is_none_or(str::is_empty) {
            names.insert("singular".into(), json!(kind.to_lowercase()));
        }
        if names.get("listKind").and_then(Value::as_str).is_none_or(str::is_empty) && !kind.is_empty() {
            names.insert("listKind".into(), json!(format!("{kind}List")));
        }
    }
    spec.entry("conversion").or_insert_with(|| json!({"strategy": "None"}));
}

/// The server-owned status: names accepted, established, and every version ever stored.
fn set_definition_status(obj: &mut Value, old: Option<&Value>) {
    let names = obj.at("/spec/names").cloned().unwrap_or(Value::Null);
    let mut stored: Vec<Value> =
        old.and_then(|o| o.at("/status/storedVersions")).and_then(Value::as_array).cloned().unwrap_or_default();
    for v in obj.at("/spec/versions").and_then(Value::as_array).into_iter().flatten() {
        if v.get("storage") == Some(&json!(true)) && !stored.contains(&v["name"]) {
            stored.push(v["name"].clone());
        }
    }
    let since = old
        .and_then(|o| o.at("/status/conditions/0/lastTransitionTime").cloned())
        .unwrap_or_else(|| json!(crate::registry::object::now_rfc3339()));
    obj["status"] = json!({
        "acceptedNames": names,
        "storedVersions": stored,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found",
             "lastTransitionTime": since},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": since},
        ],
    });
}

fn validate_definition(obj: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let group = spec.get("group").and_then(Value::as_str).unwrap_or("");
    if group.is_empty() {
        errors.push(FieldError::required("spec.group", ""));
    } else if !crate::registry::is_dns_subdomain(group) || !group.contains('.') {
        errors.push(FieldError::invalid("spec.group", group, "should be a domain with at least one dot"));
    } else if BUILTIN_GROUPS.contains(&group) || group.ends_with(".k8s.io") || group.ends_with(".kubernetes.io") {
        errors.push(FieldError::forbidden("spec.group", format!("the group {group:?} is served by Atoll itself")));
    }
    let names = spec.get("names").unwrap_or(&Value::Null);
    let name_of = |f: &str| names.get(f).and_then(Value::as_str).unwrap_or("");
    let plural = name_of("plural");
    for field in ["plural", "singular"] {
        let v = name_of(field);
        if v.is_empty() {
            errors.push(FieldError::required(format!("spec.names.{field}"), ""));
        } else if !is_lower_dns_label(v) {
            errors.push(FieldError::invalid(format!("spec.names.{field}"), v, "must be a DNS-1035 label"));
        }
    }
    for field in ["kind", "listKind"] {
        let v = name_of(field);
        if v.is_empty() {
            errors.push(FieldError::required(format!("spec.names.{field}"), ""));
        } else if !v.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            || !v.chars().all(|c| c.is_ascii_alphanumeric())
        {
            errors.push(FieldError::invalid(format!("spec.names.{field}"), v, "must be an alphanumeric name"));
        }
    }
    for (i, s) in names.get("shortNames").and_then(Value::as_array).into_iter().flatten().enumerate() {
        if !s.as_str().is_some_and(is_lower_dns_label) {
            errors.push(FieldError::invalid(format!("spec.names.shortNames[{i}]"), s, "must be a DNS-1035 label"));
        }
    }
    let name = obj.at("/metadata/name").and_then(Value::as_str).unwrap_or("");
    if !plural.is_empty() && !group.is_empty() && name != format!("{plural}.{group}") {
        errors.push(FieldError::invalid("metadata.name", name, "must be spec.names.plural+\".\"+spec.group"));
    }
    match spec.get("scope").and_then(Value::as_str) {
        Some("Namespaced" | "Cluster") => {}
        Some(other) => errors.push(not_supported("spec.scope".into(), other, &["Cluster", "Namespaced"])),
        None => errors.push(FieldError::required("spec.scope", "")),
    }
    match spec.at("/conversion/strategy").and_then(Value::as_str) {
        None | Some("None") => {}
        Some(other) => errors.push(not_supported("spec.conversion.strategy".into(), other, &["None"])),
    }
    let versions = spec.get("versions").and_then(Value::as_array).cloned().unwrap_or_default();
    if versions.is_empty() {
        errors.push(FieldError::required("spec.versions", "must have exactly one version marked as storage version"));
    }
    let storage = versions.iter().filter(|v| v.get("storage") == Some(&json!(true))).count();
    if !versions.is_empty() && storage != 1 {
        errors.push(FieldError::invalid(
            "spec.versions",
            format!("{storage} storage versions"),
            "must have exactly one version marked as storage version",
        ));
    }
    let mut seen = Vec::new();
    for (i, v) in versions.iter().enumerate() {
        let at = format!("spec.versions[{i}]");
        let vname = v.get("name").and_then(Value::as_str).unwrap_or("");
        if !is_lower_dns_label(vname) {
            errors.push(FieldError::invalid(format!("{at}.name"), vname, "must be a DNS-1035 label"));
        } else if seen.contains(&vname) {
            errors.push(FieldError {
                field: format!("{at}.name"),
                kind: FieldErrorKind::Duplicate(vname.into()),
                detail: String::new(),
            });
        }
        seen.push(vname);
        for flag in ["served", "storage"] {
            if !v.get(flag).is_some_and(Value::is_boolean) {
                errors.push(FieldError::required(format!("{at}.{flag}"), "must be true or false"));
            }
        }
        match v.at("/schema/openAPIV3Schema") {
            None => errors.push(FieldError::required(format!("{at}.schema.openAPIV3Schema"), "schemas are required")),
            Some(s) => {
                let path = format!("{at}.schema.openAPIV3Schema");
                let root = schema::Node::compile(s, &path, true, &mut errors);
                let _ = root;
                if s.get("type").and_then(Value::as_str) != Some("object") {
                    errors.push(FieldError::invalid(
                        format!("{path}.type"),
                        s.get("type").unwrap_or(&Value::Null),
                        "must be object at the root",
                    ));
                }
            }
        }
        if let Some(scale) = v.at("/subresources/scale") {
            for (field, required) in
                [("specReplicasPath", true), ("statusReplicasPath", true), ("labelSelectorPath", false)]
            {
                match scale.get(field).and_then(Value::as_str) {
                    Some(p) if json_path_pointer(p).is_some() => {}
                    None if !required => {}
                    other => errors.push(FieldError::invalid(
                        format!("{at}.subresources.scale.{field}"),
                        other.unwrap_or(""),
                        "must be a simple JSON path under .spec or .status, such as .spec.replicas",
                    )),
                }
            }
        }
        for (j, c) in v.get("additionalPrinterColumns").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let at = format!("{at}.additionalPrinterColumns[{j}]");
            if c.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
                errors.push(FieldError::required(format!("{at}.name"), ""));
            }
            let ty = c.get("type").and_then(Value::as_str).unwrap_or("");
            if !matches!(ty, "integer" | "number" | "string" | "boolean" | "date") {
                errors.push(not_supported(
                    format!("{at}.type"),
                    ty,
                    &["boolean", "date", "integer", "number", "string"],
                ));
            }
            if let Err(e) = crate::jsonpath::Path::parse(c.get("jsonPath").and_then(Value::as_str).unwrap_or("")) {
                errors.push(FieldError::invalid(
                    format!("{at}.jsonPath"),
                    c.get("jsonPath").unwrap_or(&Value::Null),
                    e,
                ));
            }
        }
        for (j, f) in v.get("selectableFields").and_then(Value::as_array).into_iter().flatten().enumerate() {
            if f.get("jsonPath").and_then(Value::as_str).and_then(json_path_pointer).is_none() {
                errors.push(FieldError::invalid(
                    format!("{at}.selectableFields[{j}].jsonPath"),
                    f.get("jsonPath").unwrap_or(&Value::Null),
                    "must be a simple JSON path such as .spec.color",
                ));
            }
        }
    }
    errors
}

/// `.spec.replicas` -> `/spec/replicas`; `None` for anything but a simple field path.
pub fn json_path_pointer(path: &str) -> Option<String> {
    let rest = path.strip_prefix('.')?;
    let segs: Vec<&str> = rest.split('.').collect();
    let simple =
        segs.iter().all(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
    (simple && !segs.is_empty()).then(|| segs.iter().map(|s| format!("/{s}")).collect())
}

impl Strategy for DefinitionStrategy {
    fn info(&self) -> &ResourceInfo {
        &self.info
    }
    fn prepare_for_create(&self, obj: &mut Value) {
        default_definition(obj);
        set_definition_status(obj, None);
        let meta = obj["metadata"].as_object_mut();
        if let Some(meta) = meta {
            let finalizers = meta.entry("finalizers").or_insert_with(|| json!([]));
            if let Some(list) = finalizers.as_array_mut()
                && !list.contains(&json!(FINALIZER))
            {
                list.push(json!(FINALIZER));
            }
        }
    }
    fn prepare_for_update(&self, new: &mut Value, old: &Value, _subresource: Option<&str>) {
        default_definition(new);
        set_definition_status(new, Some(old));
    }
    fn validate(&self, obj: &Value) -> Vec<FieldError> {
        validate_definition(obj)
    }
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for (pointer, field) in
            [("/spec/group", "spec.group"), ("/spec/names/plural", "spec.names.plural"), ("/spec/scope", "spec.scope")]
        {
            if new.at(pointer) != old.at(pointer) {
                errors.push(FieldError::invalid(field, new.at(pointer).unwrap_or(&Value::Null), "field is immutable"));
            }
        }
        errors
    }
    fn top_level_fields(&self) -> Option<&[&str]> {
        Some(&["spec", "status"])
    }
}

/// One served version of a custom resource, in the tenant that defined it.
pub struct CustomKind {
    info: ResourceInfo,
    storage_version: String,
    schema: schema::Node,
    schema_json: Value,
    columns: Vec<Value>,
    scale: Option<ScalePaths>,
    selectable: Vec<String>,
}

impl CustomKind {
    /// The strategies of every served version of `crd` (already validated on write; a
    /// definition that does not compile is skipped with an error).
    pub fn from_definition(crd: &Value) -> Result<Vec<CustomKind>, String> {
        let spec = crd.get("spec").ok_or("no spec")?;
        let s = |p: &str| spec.at(p).and_then(Value::as_str).unwrap_or("").to_string();
        let versions = spec.get("versions").and_then(Value::as_array).cloned().unwrap_or_default();
        let storage_version = versions
            .iter()
            .find(|v| v.get("storage") == Some(&json!(true)))
            .and_then(|v| v.get("name").and_then(Value::as_str))
            .ok_or("no storage version")?
            .to_string();
        let strings = |p: &str| crate::registry::object::strings_at(spec, p);
        let mut kinds = Vec::new();
        for v in versions.iter().filter(|v| v.get("served") == Some(&json!(true))) {
            let version = v.get("name").and_then(Value::as_str).unwrap_or("").to_string();
            let schema_json = v.at("/schema/openAPIV3Schema").cloned().unwrap_or(json!({"type": "object"}));
            let mut errors = Vec::new();
            let schema = schema::Node::compile(&schema_json, "openAPIV3Schema", true, &mut errors);
            if !errors.is_empty() {
                return Err(format!("version {version}: {}", errors[0]));
            }
            let scale = v.at("/subresources/scale").map(|sc| ScalePaths {
                spec_replicas: sc
                    .get("specReplicasPath")
                    .and_then(Value::as_str)
                    .and_then(json_path_pointer)
                    .unwrap_or_default(),
                status_replicas: sc
                    .get("statusReplicasPath")
                    .and_then(Value::as_str)
                    .and_then(json_path_pointer)
                    .unwrap_or_default(),
                label_selector: sc.get("labelSelectorPath").and_then(Value::as_str).and_then(json_path_pointer),
            });
            kinds.push(CustomKind {
                info: ResourceInfo {
                    group: s("/group"),
                    version: version.clone(),
                    kind: s("/names/kind"),
                    resource: s("/names/plural"),
                    namespaced: s("/scope") == "Namespaced",
                    status_subresource: v.at("/subresources/status").is_some(),
                    scale_subresource: scale.is_some(),
                    storage: Some(format!("{}.{}", s("/names/plural"), s("/group"))),
                    short_names: strings("/names/shortNames"),
                    categories: strings("/names/categories"),
                    custom: true,
                },
                storage_version: storage_version.clone(),
                schema,
                schema_json,
                columns: v.get("additionalPrinterColumns").and_then(Value::as_array).cloned().unwrap_or_default(),
                scale,
                selectable: v
                    .get("selectableFields")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|f| f.get("jsonPath").and_then(Value::as_str))
                    .map(|p| p.trim_start_matches('.').to_string())
                    .collect(),
            });
        }
        Ok(kinds)
    }

    fn body_fields_mut(obj: &mut Value) -> Value {
        // The schema covers everything but the type fields and metadata, which the
        // registry owns.
        let mut body = obj.clone();
        if let Some(map) = body.as_object_mut() {
            for k in ["apiVersion", "kind", "metadata"] {
                map.remove(k);
            }
        }
        body
    }

    /// Defaults, then prunes, the fields the schema covers.
    fn normalise(&self, obj: &mut Value) {
        let mut body = Self::body_fields_mut(obj);
        self.schema.apply_defaults(&mut body);
        let mut unknown = Vec::new();
        self.schema.prune(&mut body, "", &mut unknown);
        if let (Some(map), Value::Object(body)) = (obj.as_object_mut(), body) {
            map.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata"));
            map.extend(body);
        }
    }
}

impl Strategy for CustomKind {
    fn info(&self) -> &ResourceInfo {
        &self.info
    }
    fn prepare_for_create(&self, obj: &mut Value) {
        if self.info.status_subresource
            && let Some(map) = obj.as_object_mut()
        {
            map.remove("status");
        }
        self.normalise(obj);
    }
    fn prepare_for_update(&self, new: &mut Value, _old: &Value, _subresource: Option<&str>) {
        self.normalise(new);
    }
    fn validate(&self, obj: &Value) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut body = obj.clone();
        let body = CustomKind::body_fields_mut(&mut body);
        self.schema.validate(&body, "", &mut errors);
        errors
    }
    fn selectable(&self, field: &str) -> bool {
        self.selectable.iter().any(|f| f == field)
    }
    fn stored_to_view(&self, obj: &mut Value) {
        obj["apiVersion"] = json!(self.info.api_version());
    }
    fn view_to_stored(&self, obj: &mut Value) {
        obj["apiVersion"] = json!(format!("{}/{}", self.info.group, self.storage_version));
    }
    fn prune_unknown_fields(&self, obj: &mut Value) -> Option<Vec<String>> {
        // The schema covers everything but the type fields and metadata, which the registry
        // owns: they are set aside while it prunes.
        let map = obj.as_object_mut()?;
        let owned: Vec<(String, Value)> =
            ["apiVersion", "kind", "metadata"].into_iter().filter_map(|k| map.remove_entry(k)).collect();
        let mut unknown = Vec::new();
        self.schema.prune(obj, "", &mut unknown);
        if let Some(map) = obj.as_object_mut() {
            map.extend(owned);
        }
        Some(unknown)
    }
    fn scale_paths(&self) -> Option<&ScalePaths> {
        self.scale.as_ref()
    }
    fn printer_columns(&self) -> Option<&[Value]> {
        Some(&self.columns)
    }
    fn openapi_schema(&self) -> Option<&Value> {
        Some(&self.schema_json)
    }
    /// Lists merge as the schema says (`x-kubernetes-list-type`), atomically otherwise;
    /// metadata's lists as in every kind.
    fn list_type(&self, path: &[&str]) -> schema::ListType {
        if path.first() == Some(&"metadata") {
            return crate::managed::builtin_list_type(path);
        }
        self.schema.list_type(path)
    }
}

/// What one definition serves.
pub struct Served {
    /// `{plural}.{group}`.
    pub name: String,
    /// One registry per served version, preferred (storage) version first.
    pub versions: Vec<Arc<Registry>>,
    pub terminating: bool,
}

#[derive(Default)]
struct Tables {
    /// tenant -> definition name -> what it serves.
    tenants: BTreeMap<String, BTreeMap<String, Arc<Served>>>,
    revision: i64,
}

/// The definitions every tenant sees, kept current from the store.
pub struct Catalog {
    store: Arc<dyn Store>,
    definitions: Arc<Registry>,
    tables: RwLock<Tables>,
    applied: tokio::sync::watch::Sender<i64>,
}

impl Catalog {
    /// Loads the stored definitions and follows them from then on.
    pub async fn start(store: Arc<dyn Store>, definitions: Arc<Registry>) -> Result<Arc<Catalog>, RegistryError> {
        let (applied, _) = tokio::sync::watch::channel(0);
        let catalog = Arc::new(Catalog { store, definitions, tables: RwLock::default(), applied });
        let revision = catalog.reload().await?;
        let weak = Arc::downgrade(&catalog);
        tokio::spawn(async move { Catalog::follow(weak, revision).await });
        Ok(catalog)
    }

    /// Replaces the tables with the stored state; returns its revision.
    async fn reload(self: &Arc<Self>) -> Result<i64, RegistryError> {
        let all = Scope { tenant: None, namespace: None };
        let list = self.definitions.list(&all, &ListOptions::default()).await?;
        let revision =
            list.at("/metadata/resourceVersion").and_then(Value::as_str).and_then(|r| r.parse().ok()).unwrap_or(0);
        let mut tables = Tables { revision, ..Tables::default() };
        for crd in list["items"].as_array().into_iter().flatten() {
            if let Some((tenant, name, served)) = self.build(crd) {
                tables.tenants.entry(tenant).or_default().insert(name, served);
            }
        }
        let terminating: Vec<Value> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c.at("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null()))
            .cloned()
            .collect();
        *self.tables.write().unwrap_or_else(|e| e.into_inner()) = tables;
        self.applied.send_replace(revision);
        for crd in terminating {
            self.clean_up_later(crd);
        }
        Ok(revision)
    }

    fn build(&self, crd: &Value) -> Option<(String, String, Arc<Served>)> {
        let tenant = crd.at("/metadata/tenant").and_then(Value::as_str)?.to_string();
        let name = crd.at("/metadata/name").and_then(Value::as_str)?.to_string();
        let kinds = match CustomKind::from_definition(crd) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(tenant, name, "custom resource definition not served: {e}");
                return None;
            }
        };
        let storage = crd
            .at("/spec/versions")
            .and_then(Value::as_array)
            .and_then(|vs| vs.iter().find(|v| v.get("storage") == Some(&json!(true))))
            .and_then(|v| v.get("name").and_then(Value::as_str))
            .unwrap_or("")
            .to_string();
        let mut versions: Vec<Arc<Registry>> =
            kinds.into_iter().map(|k| Arc::new(Registry::new(self.store.clone(), Arc::new(k)))).collect();
        versions.sort_by_key(|r| std::cmp::Reverse((r.info().version == storage, version_priority(&r.info().version))));
        let terminating = crd.at("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null());
        Some((tenant, name.clone(), Arc::new(Served { name, versions, terminating })))
    }

    /// Applies the definitions' changes as they are stored, re-listing when the watch
    /// falls too far behind.
    async fn follow(catalog: std::sync::Weak<Catalog>, mut revision: i64) {
        let mut delay = Duration::from_millis(100);
        loop {
            let Some(this) = catalog.upgrade() else { return };
            let all = Scope { tenant: None, namespace: None };
            let opts = ListOptions { resource_version: Some(revision.to_string()), ..ListOptions::default() };
            let mut events = match this.definitions.watch(&all, &opts, true).await {
                Ok(rx) => rx,
                Err(e) => {
                    tracing::warn!("watching custom resource definitions: {e}");
                    drop(this);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    if let Some(this) = catalog.upgrade() {
                        revision = this.reload().await.unwrap_or(revision);
                    }
                    continue;
                }
            };
            drop(this);
            delay = Duration::from_millis(100);
            while let Some(event) = events.recv().await {
                let Some(this) = catalog.upgrade() else { return };
                let object = event.object();
                let rv = object.at("/metadata/resourceVersion").and_then(Value::as_str).and_then(|r| r.parse().ok());
                match event.kind {
                    "ADDED" | "MODIFIED" => {
                        if let Some((tenant, name, served)) = this.build(&object) {
                            let terminating = served.terminating;
                            this.tables
                                .write()
                                .unwrap_or_else(|e| e.into_inner())
                                .tenants
                                .entry(tenant)
                                .or_default()
                                .insert(name, served);
                            if terminating {
                                this.clean_up_later((*object).clone());
                            }
                        }
                    }
                    "DELETED" => {
                        let tenant = object.at("/metadata/tenant").and_then(Value::as_str).unwrap_or("");
                        let name = object.at("/metadata/name").and_then(Value::as_str).unwrap_or("");
                        let mut tables = this.tables.write().unwrap_or_else(|e| e.into_inner());
                        if let Some(t) = tables.tenants.get_mut(tenant) {
                            t.remove(name);
                        }
                    }
                    "ERROR" => break,
                    _ => {}
                }
                if let Some(rv) = rv {
                    revision = revision.max(rv);
                    this.tables.write().unwrap_or_else(|e| e.into_inner()).revision = revision;
                    this.applied.send_replace(revision);
                }
            }
            // The watch ended (cut off or expired): start over from the stored state.
            let Some(this) = catalog.upgrade() else { return };
            match this.reload().await {
                Ok(r) => revision = r,
                Err(e) => tracing::warn!("reloading custom resource definitions: {e}"),
            }
        }
    }

    /// Waits (briefly) until the catalog reflects the store at `revision`, so that a
    /// client who just created a definition can use it at once.
    pub async fn wait_for(&self, revision: i64) {
        let mut rx = self.applied.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|r| *r >= revision)).await;
    }

    /// What `tenant` sees: its own definitions, then the system tenant's it does not
    /// shadow.
    pub fn visible(&self, tenant: &str) -> Vec<Arc<Served>> {
        let tables = self.tables.read().unwrap_or_else(|e| e.into_inner());
        let own = tables.tenants.get(tenant);
        let mut out: Vec<Arc<Served>> = own.into_iter().flat_map(|m| m.values().cloned()).collect();
        if tenant != api::request::SYSTEM_TENANT
            && let Some(system) = tables.tenants.get(api::request::SYSTEM_TENANT)
        {
            out.extend(system.iter().filter(|(n, _)| own.is_none_or(|o| !o.contains_key(*n))).map(|(_, s)| s.clone()));
        }
        out
    }

    /// The registry serving `group/version` `resource` in `tenant` (`None` tenant: every
    /// tenant, for the system tenant's definitions only).
    pub fn lookup(
        &self,
        tenant: Option<&str>,
        group: &str,
        version: &str,
        resource: &str,
    ) -> Option<(Arc<Served>, Arc<Registry>)> {
        let name = format!("{resource}.{group}");
        let served =
            self.visible(tenant.unwrap_or(api::request::SYSTEM_TENANT)).into_iter().find(|s| s.name == name)?;
        let registry = served.versions.iter().find(|r| r.info().version == version)?.clone();
        Some((served, registry))
    }

    /// Deletes a terminating definition's objects (through their registry, so their own
    /// finalizers are honoured), then drops the definition's finalizer. Retries until
    /// every object is gone.
    fn clean_up_later(self: &Arc<Self>, crd: Value) {
        let Some((tenant, name, served)) = self.build(&crd) else { return };
        let definitions = self.definitions.clone();
        let shadowing: Vec<String> = if tenant == api::request::SYSTEM_TENANT {
            let tables = self.tables.read().unwrap_or_else(|e| e.into_inner());
            tables
                .tenants
                .iter()
                .filter(|(t, defs)| *t != &tenant && defs.contains_key(&name))
                .map(|(t, _)| t.clone())
                .collect()
        } else {
            Vec::new()
        };
        let tables = Arc::downgrade(self);
        tokio::spawn(async move {
            let Some(registry) = served.versions.first().cloned() else { return };
            let scope =
                Scope { tenant: (tenant != api::request::SYSTEM_TENANT).then(|| tenant.clone()), namespace: None };
            let mut delay = Duration::from_millis(50);
            loop {
                match registry.list(&scope, &ListOptions::default()).await {
                    Ok(list) => {
                        let items: Vec<&Value> = list["items"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter(|o| !shadowing.iter().any(|t| o.at("/metadata/tenant") == Some(&json!(t))))
                            .collect();
                        if items.is_empty() {
                            break;
                        }
                        for o in items {
                            let s = Scope {
                                tenant: o.at("/metadata/tenant").and_then(Value::as_str).map(str::to_string),
                                namespace: o.at("/metadata/namespace").and_then(Value::as_str).map(str::to_string),
                            };
                            let n = o.at("/metadata/name").and_then(Value::as_str).unwrap_or("");
                            if let Err(e) = registry.delete(&s, n, &DeleteOptions::default()).await
                                && !matches!(e, RegistryError::NotFound { .. })
                            {
                                tracing::warn!("deleting {n} of {}: {e}", served.name);
                            }
                        }
                    }
                    Err(e) => tracing::warn!("listing {}: {e}", served.name),
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            // Stop serving the kind before the definition goes, so that whoever sees the
            // definition gone also finds the kind gone.
            if let Some(catalog) = tables.upgrade() {
                let mut t = catalog.tables.write().unwrap_or_else(|e| e.into_inner());
                if let Some(defs) = t.tenants.get_mut(&tenant) {
                    defs.remove(&name);
                }
            }
            let defs = Scope { tenant: Some(tenant.clone()), namespace: None };
            for _ in 0..10 {
                let Ok(mut current) = definitions.get(&defs, &name).await else { return };
                if let Some(list) = current.pointer_mut("/metadata/finalizers").and_then(Value::as_array_mut) {
                    list.retain(|f| f != FINALIZER);
                }
                match definitions.update(&defs, &name, current, None, false).await {
                    Ok(_) | Err(RegistryError::NotFound { .. }) => return,
                    Err(RegistryError::Conflict { .. }) => continue,
                    Err(e) => {
                        tracing::warn!("finalizing {name}: {e}");
                        return;
                    }
                }
            }
        });
    }

    pub fn revision(&self) -> i64 {
        self.tables.read().unwrap_or_else(|e| e.into_inner()).revision
    }
}

/// Kubernetes' version order: GA before beta before alpha, then by number; other names
/// last.
pub fn version_priority(v: &str) -> (u8, u32, u32) {
    let Some(rest) = v.strip_prefix('v') else { return (0, 0, 0) };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let Ok(major) = digits.parse::<u32>() else { return (0, 0, 0) };
    let tail = &rest[digits.len()..];
    let (level, minor) = match tail {
        "" => (3, 0),
        t if t.starts_with("beta") => (2, t[4..].parse().unwrap_or(u32::MAX)),
        t if t.starts_with("alpha") => (1, t[5..].parse().unwrap_or(u32::MAX)),
        _ => return (0, 0, 0),
    };
    if minor == u32::MAX {
        return (0, 0, 0);
    }
    (level, major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_as_kubernetes_orders_them() {
        let mut vs = vec!["v1alpha1", "v2", "v1beta2", "foo", "v1", "v1beta1", "v10"];
        vs.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        assert_eq!(vs, ["v10", "v2", "v1", "v1beta2", "v1beta1", "v1alpha1", "foo"]);
    }

    #[test]
    fn json_paths_become_pointers() {
        assert_eq!(json_path_pointer(".spec.replicas").as_deref(), Some("/spec/replicas"));
        assert_eq!(json_path_pointer("spec.replicas"), None);
        assert_eq!(json_path_pointer(".spec..x"), None);
        assert_eq!(json_path_pointer(".spec[0]"), None);
    }

    #[test]
    fn definitions_report_every_error() {
        let crd = json!({"metadata": {"name": "wrong"}, "spec": {"group": "apps", "names": {"plural": "Foos", "kind": "foo"},
            "scope": "Global", "versions": [{"name": "v1", "served": true, "storage": false}]}});
        let errors: Vec<String> = validate_definition(&crd).iter().map(|e| e.to_string()).collect();
        expect_test::expect![[r#"
            [
                "spec.group: Invalid value: \"apps\": should be a domain with at least one dot",
                "spec.names.plural: Invalid value: \"Foos\": must be a DNS-1035 label",
                "spec.names.singular: Required value",
                "spec.names.listKind: Required value",
                "metadata.name: Invalid value: \"wrong\": must be spec.names.plural+\".\"+spec.group",
                "spec.scope: Unsupported value: \"Global\": supported values: \"Cluster\", \"Namespaced\"",
                "spec.versions: Invalid value: \"0 storage versions\": must have exactly one version marked as storage version",
                "spec.versions[0].schema.openAPIV3Schema: Required value: schemas are required",
            ]
        "#]]
        .assert_debug_eq(&errors);
    }
}
