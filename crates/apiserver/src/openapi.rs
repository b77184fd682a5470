//! OpenAPI v3 documents generated from the registered kinds: `/openapi/v3` lists one
//! document per group-version, each with every kind's paths and operations (tagged with
//! `x-kubernetes-group-version-kind`, the PATCH operation carrying the `fieldValidation`
//! parameter that tells kubectl the server validates fields) and a schema per kind.
//!
//! The schemas are open for now (`x-kubernetes-preserve-unknown-fields`): they name each
//! kind and its top-level fields, not every nested field.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::registry::{Registry, ResourceInfo};

/// The schema name of a kind, in Kubernetes' style (`io.k8s.api.core.v1.Pod`).
fn schema_name(info: &ResourceInfo) -> String {
    let group = match info.group.as_str() {
        "" => "core".to_string(),
        g if g.ends_with(".k8s.io") => g.trim_end_matches(".k8s.io").to_string(),
        g => g.to_string(),
    };
    let prefix = if info.group.ends_with(".k8s.io") || info.group.is_empty() || info.group == "apps" {
        "io.k8s.api"
    } else {
        "io.atoll.api"
    };
    format!("{prefix}.{group}.{}.{}", info.version, info.kind)
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") }
}

fn gvk(info: &ResourceInfo) -> Value {
    json!({"group": info.group, "version": info.version, "kind": info.kind})
}

fn query_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

fn operation(info: &ResourceInfo, action: &str, verb: &str, list: bool) -> Value {
    let schema = if list {
        json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
    } else {
        json!({"$ref": format!("#/components/schemas/{}", schema_name(info))})
    };
    let mut params = vec![query_param("pretty", "If 'true', then the output is pretty printed.")];
    if matches!(action, "post" | "put" | "patch" | "delete") {
        params.push(query_param("dryRun", "When present, indicates that modifications should not be persisted."));
    }
    if matches!(action, "post" | "put" | "patch") {
        params.push(query_param("fieldManager", "A name associated with the actor or entity making the change."));
        params.push(query_param(
            "fieldValidation",
            "How the server treats unknown or duplicate fields: Ignore, Warn or Strict.",
        ));
    }
    if action == "patch" {
        params.push(json!({"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}}));
    }
    let mut op = json!({
        "operationId": format!("{verb}{}{}", info.group.replace('.', ""), info.kind),
        "parameters": params,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": schema}}}},
        "x-kubernetes-action": verb,
        "x-kubernetes-group-version-kind": gvk(info),
    });
    if matches!(action, "post" | "put") {
        op["requestBody"] = json!({"content": {"*/*": {"schema": {"$ref": format!("#/components/schemas/{}", schema_name(info))}}}, "required": true});
    }
    if action == "patch" {
        let body = json!({"schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}});
        let mut content = json!({
            "application/json-patch+json": body, "application/merge-patch+json": body,
            "application/apply-patch+yaml": body,
        });
        // kubectl sends strategic merge patches to kinds whose PATCH accepts them; custom
        // resources do not (they have no patch strategies), as in Kubernetes.
        if !info.custom {
            content["application/strategic-merge-patch+json"] = body;
        }
        op["requestBody"] = json!({"content": content, "required": true});
    }
    op
}

fn kind_schema(registry: &Registry) -> Value {
    let info = registry.info();
    if let Some(schema) = registry.strategy().openapi_schema() {
        // A custom resource: its definition's schema, with the fields every object has.
        let mut doc = schema.clone();
        if let Some(props) = doc.as_object_mut().map(|m| m.entry("properties").or_insert_with(|| json!({})))
            && let Some(p) = props.as_object_mut()
        {
            p.insert(
                "apiVersion".into(),
                json!({"type": "string", "description": "The versioned schema of this representation of an object."}),
            );
            p.insert(
                "kind".into(),
                json!({"type": "string", "description": "The REST resource this object represents."}),
            );
            p.insert("metadata".into(), json!({"type": "object", "description": "Standard object's metadata.", "x-kubernetes-preserve-unknown-fields": true}));
        }
        doc["x-kubernetes-group-version-kind"] = json!([gvk(info)]);
        return doc;
    }
    json!({
        "description": format!("{} ({}).", info.kind, if info.group.is_empty() { "core/v1".to_string() } else { format!("{}/{}", info.group, info.version) }),
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string", "description": "The versioned schema of this representation of an object."},
            "kind": {"type": "string", "description": "The REST resource this object represents."},
            "metadata": {"type": "object", "description": "Standard object's metadata.", "x-kubernetes-preserve-unknown-fields": true},
            "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
        },
        "x-kubernetes-preserve-unknown-fields": true,
        "x-kubernetes-group-version-kind": [gvk(info)],
    })
}

/// The document for one group-version.
pub fn group_version_doc(kinds: &[&Registry], group: &str, version: &str) -> Value {
    let mut paths = BTreeMap::new();
    let mut schemas = BTreeMap::new();
    let base = format!("/{}", gv_path(group, version));
    for registry in kinds.iter().filter(|r| r.info().group == group && r.info().version == version) {
        let info = registry.info();
        let (collection, item) = if info.namespaced {
            (
                format!("{base}/namespaces/{{namespace}}/{}", info.resource),
                format!("{base}/namespaces/{{namespace}}/{}/{{name}}", info.resource),
            )
        } else {
            (format!("{base}/{}", info.resource), format!("{base}/{}/{{name}}", info.resource))
        };
        paths.insert(
            collection,
            json!({"get": operation(info, "get", "list", true), "post": operation(info, "post", "post", false),
                   "delete": operation(info, "delete", "deletecollection", true)}),
        );
        paths.insert(
            item.clone(),
            json!({"get": operation(info, "get", "get", false), "put": operation(info, "put", "put", false),
                   "patch": operation(info, "patch", "patch", false), "delete": operation(info, "delete", "delete", false)}),
        );
        if info.status_subresource {
            paths.insert(
                format!("{item}/status"),
                json!({"get": operation(info, "get", "get", false), "put": operation(info, "put", "put", false),
                       "patch": operation(info, "patch", "patch", false)}),
            );
        }
        match crate::proto::shape::message_of(&info.group, &info.version, &info.kind) {
            // A built-in kind: its every field, from the protobuf layout.
            Some(message) if registry.strategy().openapi_schema().is_none() => {
                crate::proto::shape::openapi_schemas(&message, &mut schemas);
                let name = crate::proto::shape::component_name(&message);
                if let Some(Value::Object(doc)) = schemas.get_mut(&name) {
                    doc.insert("x-kubernetes-group-version-kind".into(), json!([gvk(info)]));
                    if let Some(Value::Object(props)) = doc.get_mut("properties") {
                        props.insert("apiVersion".into(), json!({"type": "string", "description": "The versioned schema of this representation of an object."}));
                        props.insert(
                            "kind".into(),
                            json!({"type": "string", "description": "The REST resource this object represents."}),
                        );
                    }
                }
                if name != schema_name(info) {
                    schemas.insert(schema_name(info), json!({"$ref": format!("#/components/schemas/{name}")}));
                }
            }
            _ => {
                schemas.insert(schema_name(info), kind_schema(registry));
            }
        }
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Atoll", "version": format!("v1.33.0-atoll.{}", env!("CARGO_PKG_VERSION"))},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

/// A stable hash of a document, so clients can cache it by URL.
pub fn hash(doc: &Value) -> String {
    let bytes = doc.to_string();
    format!("{:08X}{:08X}", crc32c::crc32c(bytes.as_bytes()), bytes.len())
}

/// `/openapi/v3`: where each group-version's document is.
pub fn root(kinds: &[&Registry]) -> Value {
    let mut gvs: Vec<(String, String)> =
        kinds.iter().map(|r| (r.info().group.clone(), r.info().version.clone())).collect();
    gvs.sort();
    gvs.dedup();
    let paths: BTreeMap<String, Value> = gvs
        .into_iter()
        .map(|(g, v)| {
            let doc = group_version_doc(kinds, &g, &v);
            let path = gv_path(&g, &v);
            let url = format!("/openapi/v3/{path}?hash={}", hash(&doc));
            (path, json!({"serverRelativeURL": url}))
        })
        .collect();
    json!({"paths": paths})
}
