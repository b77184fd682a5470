//! The built-in kinds' JSON shape, read from the same generated protobuf layout that
//! decodes protobuf bodies: which fields exist at every depth (so `fieldValidation=Strict`
//! catches `spec.containers[0].imagePullPolicyy`, not only top-level typos) and the
//! OpenAPI schemas `kubectl explain` walks.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{Card, Field, Ty, inline, schema_of};

/// The protobuf message of a built-in kind, if the layout has it.
pub fn message_of(group: &str, version: &str, kind: &str) -> Option<String> {
    let name = format!("k8s.io.api.{}.{version}.{kind}", super::package_of(group));
    schema_of(&name).is_ok().then_some(name)
}

/// OpenAPI's name for a message (`io.k8s.api.core.v1.Pod`).
pub fn component_name(message: &str) -> String {
    match message.strip_prefix("k8s.io.") {
        Some(rest) => format!("io.k8s.{rest}"),
        None => message.to_string(),
    }
}

/// A message's JSON fields, with the fields of inlined messages in place of them.
fn json_fields(message: &str) -> Vec<&'static Field> {
    let Ok(fields) = schema_of(message) else { return Vec::new() };
    let mut out = Vec::new();
    for f in fields.iter() {
        match f.ty {
            Ty::Msg(inner) if inline(message, f.name) => out.extend(json_fields(inner)),
            _ => out.push(f),
        }
    }
    out
}

/// The JSON field `name` of `message`, looked for in the messages it inlines too.
fn json_field(message: &str, name: &str) -> Option<&'static Field> {
    let fields = schema_of(message).ok()?;
    fields.iter().find_map(|f| match f.ty {
        Ty::Msg(inner) if inline(message, f.name) => json_field(inner, name),
        _ => (f.name == name).then_some(f),
    })
}

/// Where a field is, written out only for the fields that are reported.
#[derive(Clone, Copy)]
enum At<'a> {
    Root,
    Field(&'a At<'a>, &'a str),
    Item(&'a At<'a>, usize),
}

impl At<'_> {
    fn render(&self, out: &mut String) {
        match self {
            At::Root => {}
            At::Field(parent, name) => {
                parent.render(out);
                if !matches!(parent, At::Root) {
                    out.push('.');
                }
                out.push_str(name);
            }
            At::Item(parent, i) => {
                parent.render(out);
                out.push_str(&format!("[{i}]"));
            }
        }
    }
}

/// Removes the fields of `obj` that `message` does not have, at every depth, and records
/// their paths (as Kubernetes' decoding into its types drops them). Wrong types are left to
/// validation; only unknown names are dropped.
pub fn prune_unknown_fields(message: &str, obj: &mut Value, out: &mut Vec<String>) {
    prune_at(message, obj, &At::Root, out);
}

fn prune_at(message: &str, obj: &mut Value, at: &At, out: &mut Vec<String>) {
    let Value::Object(map) = obj else { return };
    if schema_of(message).is_err() {
        return;
    }
    let top = matches!(at, At::Root);
    map.retain(|k, v| {
        // The top level's metadata is the registry's to check; ours carries the tenant.
        if (top && k == "metadata") || (k == "tenant" && message.ends_with(".ObjectMeta")) {
            return true;
        }
        let here = At::Field(at, k);
        let Some(f) = json_field(message, k) else {
            // Objects carry their type wherever they are embedded whole.
            let typed = top && matches!(k.as_str(), "apiVersion" | "kind");
            if !typed {
                let mut path = String::new();
                here.render(&mut path);
                out.push(path);
            }
            return typed;
        };
        let Ty::Msg(inner) = f.ty else { return true };
        match (f.card, v) {
            (Card::One, v) => prune_at(inner, v, &here, out),
            (Card::Many, Value::Array(items)) => {
                for (i, item) in items.iter_mut().enumerate() {
                    prune_at(inner, item, &At::Item(&here, i), out);
                }
            }
            (Card::Map, Value::Object(values)) => {
                for (key, item) in values.iter_mut() {
                    prune_at(inner, item, &At::Field(&here, key), out);
                }
            }
            _ => {}
        }
        true
    });
}

fn leaf_schema(ty: Ty) -> Value {
    match ty {
        Ty::Str => json!({"type": "string"}),
        Ty::Bytes => json!({"type": "string", "format": "byte"}),
        Ty::I32 => json!({"type": "integer", "format": "int32"}),
        Ty::I64 => json!({"type": "integer", "format": "int64"}),
        Ty::Bool => json!({"type": "boolean"}),
        Ty::Time => json!({"type": "string", "format": "date-time"}),
        Ty::Quantity => json!({"type": "string", "description": "A quantity, such as 100m or 1Gi."}),
        Ty::IntOrString => {
            json!({"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]})
        }
        Ty::RawJson => json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
        Ty::Msg(m) => json!({"$ref": format!("#/components/schemas/{}", component_name(m))}),
    }
}

/// The key that identifies the items of a list that merges (as strategic merge patches
/// and kubectl know them), `""` for a set of scalars; `None`: replaced whole.
fn merge_key(message: &str, field: &str) -> Option<&'static str> {
    let owner = message.rsplit('.').next().unwrap_or("");
    let container = matches!(owner, "Container" | "EphemeralContainer" | "EphemeralContainerCommon");
    Some(match (owner, field) {
        ("PodSpec", "containers" | "initContainers" | "ephemeralContainers" | "volumes" | "imagePullSecrets") => "name",
        ("PodSpec", "resourceClaims") => "name",
        ("PodSpec", "hostAliases") => "ip",
        ("PodSpec", "topologySpreadConstraints") => "topologyKey",
        (_, "env") if container => "name",
        (_, "ports") if container => "containerPort",
        (_, "volumeMounts") if container => "mountPath",
        (_, "volumeDevices") if container => "devicePath",
        ("ServiceSpec", "ports") => "port",
        ("NodeStatus", "addresses") => "type",
        (o, "conditions") if o.ends_with("Status") => "type",
        ("ObjectMeta", "ownerReferences") => "uid",
        ("ObjectMeta", "finalizers") => "",
        _ => return None,
    })
}

/// Adds the schema of `message` and of every message it reaches to `out`, keyed by
/// component name.
pub fn openapi_schemas(message: &str, out: &mut BTreeMap<String, Value>) {
    let name = component_name(message);
    if out.contains_key(&name) || schema_of(message).is_err() {
        return;
    }
    // Reserve the name first: messages can reach themselves.
    out.insert(name.clone(), Value::Null);
    let mut properties = serde_json::Map::new();
    for f in json_fields(message) {
        let schema = match f.card {
            Card::One => leaf_schema(f.ty),
            Card::Many => {
                let mut list = json!({"type": "array", "items": leaf_schema(f.ty)});
                match merge_key(message, f.name) {
                    Some("") => {
                        list["x-kubernetes-patch-strategy"] = json!("merge");
                        list["x-kubernetes-list-type"] = json!("set");
                    }
                    Some(key) => {
                        list["x-kubernetes-patch-merge-key"] = json!(key);
                        list["x-kubernetes-patch-strategy"] = json!("merge");
                        list["x-kubernetes-list-type"] = json!("map");
                        list["x-kubernetes-list-map-keys"] = json!([key]);
                    }
                    None => {}
                }
                list
            }
            Card::Map => json!({"type": "object", "additionalProperties": leaf_schema(f.ty)}),
        };
        properties.insert(f.name.to_string(), schema);
        if let Ty::Msg(inner) = f.ty {
            openapi_schemas(inner, out);
        }
    }
    if message.ends_with(".ObjectMeta") {
        properties.insert(
            "tenant".into(),
            json!({"type": "string", "description": "The tenant the object belongs to; set by the server."}),
        );
    }
    out.insert(name, json!({"type": "object", "properties": properties}));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_dropped_and_named_at_every_depth() {
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "i", "imagePullPolicyy": "Always",
                                     "resources": {"limits": {"cpu": "1"}}, "ports": [{"containerPort": 80, "hostt": 1}]}],
                     "volumes": [{"name": "v", "configMap": {"name": "x", "bogus": 1}}]},
            "extra": 1});
        let mut out = Vec::new();
        prune_unknown_fields(&message_of("", "v1", "Pod").unwrap(), &mut pod, &mut out);
        assert_eq!(
            out,
            [
                "extra",
                "spec.containers[0].imagePullPolicyy",
                "spec.containers[0].ports[0].hostt",
                "spec.volumes[0].configMap.bogus"
            ]
        );
        // What is left is the pod without them, everything else as it was.
        assert_eq!(
            pod,
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "i",
                                         "resources": {"limits": {"cpu": "1"}}, "ports": [{"containerPort": 80}]}],
                         "volumes": [{"name": "v", "configMap": {"name": "x"}}]}})
        );
        let mut again = Vec::new();
        prune_unknown_fields(&message_of("", "v1", "Pod").unwrap(), &mut pod, &mut again);
        assert!(again.is_empty(), "{again:?}");
    }

    #[test]
    fn schemas_reach_every_nested_message() {
        let mut out = BTreeMap::new();
        openapi_schemas(&message_of("apps", "v1", "Deployment").unwrap(), &mut out);
        let container = &out["io.k8s.api.core.v1.Container"];
        assert_eq!(container["properties"]["image"], json!({"type": "string"}));
        assert_eq!(container["properties"]["env"]["x-kubernetes-patch-merge-key"], json!("name"));
        let spec = &out["io.k8s.api.core.v1.PodSpec"]["properties"];
        assert_eq!(spec["containers"]["x-kubernetes-list-map-keys"], json!(["name"]));
        assert!(spec["nodeSelector"]["additionalProperties"]["type"] == json!("string"));
        assert!(out["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]["properties"]["tenant"].is_object());
        assert!(out.values().all(|v| v.is_object()), "every reserved name is filled in");
    }
}
