//! Server-side printing: `Table` responses (`Accept: application/json;as=Table;v=v1;
//! g=meta.k8s.io`) with the columns `kubectl get` shows for each kind, `-o wide` columns at
//! priority 1. And the metadata-only views (`as=PartialObjectMetadata` and
//! `as=PartialObjectMetadataList`) that client-go's metadata client and controller-runtime's
//! metadata-only watches ask for.

use std::time::{SystemTime, UNIX_EPOCH};

use api::json::At;
use serde_json::{Value, json};

/// Whether the client asked for a Table (it lists acceptable types in order).
pub fn wants_table(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|first| first.contains("as=Table") && first.contains("g=meta.k8s.io"))
}

/// The Table API version the client asked for first.
pub fn table_version(accept: &str) -> &'static str {
    if accept.split(',').next().is_some_and(|first| first.contains("v=v1beta1")) {
        "meta.k8s.io/v1beta1"
    } else {
        "meta.k8s.io/v1"
    }
}

/// The media type parameters of one range of an Accept header (`as`, `g`, `v`).
fn params(range: &str) -> (&str, Vec<(&str, &str)>) {
    let mut parts = range.split(';').map(str::trim);
    let media = parts.next().unwrap_or("");
    (media, parts.filter_map(|p| p.split_once('=')).map(|(k, v)| (k.trim(), v.trim())).collect())
}

/// Whether the client asked first for objects' metadata alone: the `meta.k8s.io` version
/// to answer in (`list`: a list's `PartialObjectMetadataList`, else one object's, or a
/// watch's, `PartialObjectMetadata`). `Err` when the first type asked for is the other
/// one and nothing served here follows it (Kubernetes answers 406).
pub fn wants_partial(accept: &str, list: bool) -> Result<Option<&'static str>, NotAcceptable> {
    let mut ranges = accept.split(',');
    let (_, first) = params(ranges.next().unwrap_or(""));
    let get = |k: &str| first.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
    let Some(view @ ("PartialObjectMetadata" | "PartialObjectMetadataList")) = get("as") else { return Ok(None) };
    if get("g") != Some("meta.k8s.io") {
        return Ok(None);
    }
    let version = match get("v") {
        Some("v1") => "meta.k8s.io/v1",
        Some("v1beta1") => "meta.k8s.io/v1beta1",
        _ => return Ok(None),
    };
    if (view == "PartialObjectMetadataList") == list {
        return Ok(Some(version));
    }
    let plain = ranges.map(params).any(|(media, p)| {
        matches!(media, "application/json" | "application/*" | "*/*") && !p.iter().any(|(k, _)| *k == "as")
    });
    if plain { Ok(None) } else { Err(NotAcceptable) }
}

/// Nothing the client accepts can be served (406).
#[derive(Debug, PartialEq, Eq)]
pub struct NotAcceptable;

/// An object's metadata alone, as `PartialObjectMetadata` of `version`.
pub fn partial(obj: &Value, version: &str) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": version,
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({}))})
}

/// A list's items' metadata alone, as `PartialObjectMetadataList` of `version`.
pub fn partial_list(list: &Value, version: &str) -> Value {
    let items: Vec<Value> = list["items"].as_array().into_iter().flatten().map(|i| partial(i, version)).collect();
    json!({"kind": "PartialObjectMetadataList", "apiVersion": version,
        "metadata": list.get("metadata").cloned().unwrap_or_else(|| json!({})), "items": items})
}

struct Column {
    name: &'static str,
    kind: &'static str,
    priority: u8,
    description: &'static str,
}

const fn col(name: &'static str, kind: &'static str, priority: u8, description: &'static str) -> Column {
    Column { name, kind, priority, description }
}

fn columns(kind: &str) -> Vec<Column> {
    let name = col("Name", "string", 0, "Name must be unique within a namespace.");
    let age = col("Age", "string", 0, "Time since the object was created.");
    match kind {
        "Pod" => vec![
            name,
            col("Ready", "string", 0, "Ready containers out of all containers."),
            col("Status", "string", 0, "The pod's phase or the reason it is not running."),
            col("Restarts", "string", 0, "Container restarts."),
            age,
            col("IP", "string", 1, "The pod's IP address."),
            col("Node", "string", 1, "The node the pod is bound to."),
            col("Nominated Node", "string", 1, "The node the scheduler nominated."),
            col("Readiness Gates", "string", 1, "Readiness gates that are true."),
        ],
        "Namespace" => vec![name, col("Status", "string", 0, "The namespace's phase."), age],
        "Node" => vec![
            name,
            col("Status", "string", 0, "Whether the node is ready."),
            col("Roles", "string", 0, "The node's roles."),
            age,
            col("Version", "string", 0, "The node agent's version."),
            col("Internal-IP", "string", 1, "The node's internal address."),
            col("External-IP", "string", 1, "The node's external address."),
            col("OS-Image", "string", 1, "The node's operating system."),
            col("Kernel-Version", "string", 1, "The node's kernel."),
            col("Container-Runtime", "string", 1, "The node's container runtime."),
        ],
        "ConfigMap" => vec![name, col("Data", "integer", 0, "Number of data keys."), age],
        "Secret" => vec![
            name,
            col("Type", "string", 0, "The secret's type."),
            col("Data", "integer", 0, "Number of data keys."),
            age,
        ],
        "ServiceAccount" => vec![name, col("Secrets", "integer", 0, "Number of secrets."), age],
        "Service" => vec![
            name,
            col("Type", "string", 0, "The service's type."),
            col("Cluster-IP", "string", 0, "The service's cluster address."),
            col("External-IP", "string", 0, "External addresses."),
            col("Port(s)", "string", 0, "The service's ports."),
            age,
            col("Selector", "string", 1, "The pods the service selects."),
        ],
        "Deployment" => vec![
            name,
            col("Ready", "string", 0, "Ready replicas out of desired."),
            col("Up-to-date", "integer", 0, "Replicas of the current template."),
            col("Available", "integer", 0, "Available replicas."),
            age,
            col("Containers", "string", 1, "Container names."),
            col("Images", "string", 1, "Container images."),
            col("Selector", "string", 1, "The pods the deployment selects."),
        ],
        "ReplicaSet" => vec![
            name,
            col("Desired", "integer", 0, "Desired replicas."),
            col("Current", "integer", 0, "Current replicas."),
            col("Ready", "integer", 0, "Ready replicas."),
            age,
            col("Containers", "string", 1, "Container names."),
            col("Images", "string", 1, "Container images."),
            col("Selector", "string", 1, "The pods the replica set selects."),
        ],
        "Event" => vec![
            col("Last Seen", "string", 0, "Time since the event was last seen."),
            col("Type", "string", 0, "Normal or Warning."),
            col("Reason", "string", 0, "Why the event happened."),
            col("Object", "string", 0, "The object the event is about."),
            col("Message", "string", 0, "What happened."),
        ],
        "Lease" => vec![name, col("Holder", "string", 0, "The lease's holder."), age],
        "Role" | "ClusterRole" => vec![name, col("Created At", "date", 0, "When the role was created.")],
        "RoleBinding" | "ClusterRoleBinding" => vec![
            name,
            col("Role", "string", 0, "The role bound: its kind and name."),
            age,
            col("Users", "string", 1, "Users bound."),
            col("Groups", "string", 1, "Groups bound."),
            col("ServiceAccounts", "string", 1, "Service accounts bound, as namespace/name."),
        ],
        _ => vec![name, age],
    }
}

/// Kubernetes' short human durations: `45s`, `3m20s`, `5h`, `2d4h`, `400d`, `3y20d`.
pub fn human_duration(secs: i64) -> String {
    if secs < 0 {
        return if secs < -1 { "<invalid>".into() } else { "0s".into() };
    }
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86_400);
    match () {
        _ if secs < 120 => format!("{secs}s"),
        _ if m < 10 => {
            if secs % 60 == 0 {
                format!("{m}m")
            } else {
                format!("{m}m{}s", secs % 60)
            }
        }
        _ if m < 180 => format!("{m}m"),
        _ if h < 8 => {
            if m % 60 == 0 {
                format!("{h}h")
            } else {
                format!("{h}h{}m", m % 60)
            }
        }
        _ if h < 48 => format!("{h}h"),
        _ if h < 24 * 8 => {
            if h % 24 == 0 {
                format!("{d}d")
            } else {
                format!("{d}d{}h", h % 24)
            }
        }
        _ if d < 365 * 2 => format!("{d}d"),
        _ if d < 365 * 8 => {
            let y = d / 365;
            if d % 365 == 0 { format!("{y}y") } else { format!("{y}y{}d", d % 365) }
        }
        _ => format!("{}y", d / 365),
    }
}

fn age(obj: &Value, field: &str, now: i64) -> Value {
    match obj.at(field).and_then(Value::as_str).and_then(api::time::parse_rfc3339) {
        Some(t) => json!(human_duration(now - t)),
        None => json!("<unknown>"),
    }
}

fn s(obj: &Value, pointer: &str) -> String {
    match obj.at(pointer) {
        Some(Value::String(v)) => v.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

fn or_none(v: String) -> Value {
    json!(if v.is_empty() { "<none>".to_string() } else { v })
}

fn count(obj: &Value, pointer: &str) -> usize {
    match obj.at(pointer) {
        Some(Value::Object(m)) => m.len(),
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    }
}

fn int(obj: &Value, pointer: &str) -> i64 {
    obj.at(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn containers(obj: &Value, pointer: &str, field: &str) -> Value {
    let list: Vec<String> = obj
        .at(pointer)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get(field).and_then(Value::as_str).map(str::to_string))
        .collect();
    json!(list.join(","))
}

fn selector(obj: &Value, pointer: &str) -> Value {
    let pairs: Vec<String> = obj
        .at(pointer)
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    or_none(pairs.join(","))
}

fn pod_status(pod: &Value) -> String {
    if pod.at("/metadata/deletionTimestamp").is_some_and(|v| !v.is_null()) {
        return "Terminating".into();
    }
    let mut reason = s(pod, "/status/reason");
    if reason.is_empty() {
        reason = s(pod, "/status/phase");
    }
    // A pod held by scheduling gates says so, as kubectl's own printer has it.
    let conditions = pod.at("/status/conditions").and_then(Value::as_array).into_iter().flatten();
    if conditions.into_iter().any(|c| s(c, "/type") == "PodScheduled" && s(c, "/reason") == "SchedulingGated") {
        reason = "SchedulingGated".into();
    }
    for c in pod.at("/status/containerStatuses").and_then(Value::as_array).into_iter().flatten() {
        if let Some(r) = c.at("/state/waiting/reason").and_then(Value::as_str).filter(|r| !r.is_empty()) {
            reason = r.to_string();
        } else if let Some(r) = c.at("/state/terminated/reason").and_then(Value::as_str).filter(|r| !r.is_empty()) {
            reason = r.to_string();
        }
    }
    if reason.is_empty() { "Pending".into() } else { reason }
}

fn cells(kind: &str, obj: &Value, now: i64) -> Vec<Value> {
    let name = json!(s(obj, "/metadata/name"));
    let created = age(obj, "/metadata/creationTimestamp", now);
    match kind {
        "Pod" => {
            // A VM pod's machine is its one container.
            let vm = obj.at("/spec/virtualMachine").is_some_and(Value::is_object);
            let total = count(obj, "/spec/containers") + usize::from(vm);
            let statuses = obj.at("/status/containerStatuses").and_then(Value::as_array);
            let ready = statuses.into_iter().flatten().filter(|c| c.get("ready") == Some(&json!(true))).count();
            let restarts: i64 = statuses.into_iter().flatten().map(|c| int(c, "/restartCount")).sum();
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(pod_status(obj)),
                json!(restarts.to_string()),
                created,
                or_none(s(obj, "/status/podIP")),
                or_none(s(obj, "/spec/nodeName")),
                or_none(s(obj, "/status/nominatedNodeName")),
                json!("<none>"),
            ]
        }
        "Namespace" => vec![name, json!(s(obj, "/status/phase")), created],
        "Node" => {
            let ready = obj
                .at("/status/conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|c| c.get("type") == Some(&json!("Ready")))
                .map(|c| if c.get("status") == Some(&json!("True")) { "Ready" } else { "NotReady" })
                .unwrap_or("Unknown");
            let status = if obj.at("/spec/unschedulable") == Some(&json!(true)) {
                format!("{ready},SchedulingDisabled")
            } else {
                ready.to_string()
            };
            let address = |t: &str| {
                obj.at("/status/addresses")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find(|a| a.get("type") == Some(&json!(t)))
                    .and_then(|a| a.get("address").and_then(Value::as_str))
                    .unwrap_or("")
                    .to_string()
            };
            // Roles as kubectl derives them: `node-role.kubernetes.io/<role>` labels and the
            // older `kubernetes.io/role=<role>`.
            let labels = obj.at("/metadata/labels").and_then(Value::as_object);
            let mut roles: Vec<String> = labels
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| match k.strip_prefix("node-role.kubernetes.io/") {
                    Some(role) if !role.is_empty() => Some(role.to_string()),
                    _ if k == "kubernetes.io/role" => v.as_str().filter(|r| !r.is_empty()).map(str::to_string),
                    _ => None,
                })
                .collect();
            roles.sort();
            roles.dedup();
            vec![
                name,
                json!(status),
                or_none(roles.join(",")),
                created,
                json!(s(obj, "/status/nodeInfo/kubeletVersion")),
                or_none(address("InternalIP")),
                or_none(address("ExternalIP")),
                or_none(s(obj, "/status/nodeInfo/osImage")),
                or_none(s(obj, "/status/nodeInfo/kernelVersion")),
                or_none(s(obj, "/status/nodeInfo/containerRuntimeVersion")),
            ]
        }
        "ConfigMap" => vec![name, json!(count(obj, "/data") + count(obj, "/binaryData")), created],
        "Secret" => vec![name, json!(s(obj, "/type")), json!(count(obj, "/data")), created],
        "ServiceAccount" => vec![name, json!(count(obj, "/secrets")), created],
        "Service" => {
            let ports: Vec<String> = obj
                .at("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|p| format!("{}/{}", int(p, "/port"), p.get("protocol").and_then(Value::as_str).unwrap_or("TCP")))
                .collect();
            let kind = s(obj, "/spec/type");
            vec![
                name,
                json!(if kind.is_empty() { "ClusterIP".to_string() } else { kind }),
                or_none(s(obj, "/spec/clusterIP")),
                json!("<none>"),
                or_none(ports.join(",")),
                created,
                selector(obj, "/spec/selector"),
            ]
        }
        "Deployment" => vec![
            name,
            json!(format!("{}/{}", int(obj, "/status/readyReplicas"), int(obj, "/spec/replicas"))),
            json!(int(obj, "/status/updatedReplicas")),
            json!(int(obj, "/status/availableReplicas")),
            created,
            containers(obj, "/spec/template/spec/containers", "name"),
            containers(obj, "/spec/template/spec/containers", "image"),
            selector(obj, "/spec/selector/matchLabels"),
        ],
        "ReplicaSet" => vec![
            name,
            json!(int(obj, "/spec/replicas")),
            json!(int(obj, "/status/replicas")),
            json!(int(obj, "/status/readyReplicas")),
            created,
            containers(obj, "/spec/template/spec/containers", "name"),
            containers(obj, "/spec/template/spec/containers", "image"),
            selector(obj, "/spec/selector/matchLabels"),
        ],
        "Role" | "ClusterRole" => vec![name, json!(s(obj, "/metadata/creationTimestamp"))],
        "RoleBinding" | "ClusterRoleBinding" => {
            let subjects = |kind: &str| {
                let names: Vec<String> = obj
                    .at("/subjects")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|sub| sub.get("kind").and_then(Value::as_str) == Some(kind))
                    .map(|sub| match kind {
                        "ServiceAccount" => format!("{}/{}", s(sub, "/namespace"), s(sub, "/name")),
                        _ => s(sub, "/name"),
                    })
                    .collect();
                json!(names.join(", "))
            };
            vec![
                name,
                json!(format!("{}/{}", s(obj, "/roleRef/kind"), s(obj, "/roleRef/name"))),
                created,
                subjects("User"),
                subjects("Group"),
                subjects("ServiceAccount"),
            ]
        }
        "Event" => {
            // Core Events and events.k8s.io/v1 Events name the same fields differently.
            let first = |paths: &[&str]| paths.iter().map(|p| s(obj, p)).find(|v| !v.is_empty()).unwrap_or_default();
            let last = ["/lastTimestamp", "/deprecatedLastTimestamp", "/eventTime"]
                .into_iter()
                .find(|p| obj.at(p).is_some_and(Value::is_string))
                .map_or_else(|| age(obj, "/metadata/creationTimestamp", now), |p| age(obj, p, now));
            let object = format!(
                "{}/{}",
                first(&["/involvedObject/kind", "/regarding/kind"]).to_lowercase(),
                first(&["/involvedObject/name", "/regarding/name"])
            );
            vec![
                last,
                json!(s(obj, "/type")),
                json!(s(obj, "/reason")),
                json!(object),
                json!(first(&["/message", "/note"])),
            ]
        }
        "Lease" => vec![name, or_none(s(obj, "/spec/holderIdentity")), created],
        _ => vec![name, created],
    }
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn row(kind: &str, obj: &Value, now: i64) -> Value {
    let partial = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata").cloned().unwrap_or(Value::Null)});
    json!({"cells": cells(kind, obj, now), "object": partial})
}

/// A Table of `items` (objects of one kind), with `list_meta` as its metadata.
pub fn table(kind: &str, version: &str, items: &[Value], list_meta: Value) -> Value {
    let now = now();
    let columns: Vec<Value> = columns(kind)
        .into_iter()
        .map(|c| {
            let format = if c.name == "Name" { "name" } else { "" };
            json!({"name": c.name, "type": c.kind, "format": format, "description": c.description, "priority": c.priority})
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": version,
        "metadata": list_meta,
        "columnDefinitions": columns,
        "rows": items.iter().map(|o| row(kind, o, now)).collect::<Vec<_>>(),
    })
}

/// A Table for a custom resource: the name, then the definition's printer columns (by
/// default the age), each cell the value at the column's JSONPath.
pub fn custom_table(declared: &[Value], version: &str, items: &[Value], list_meta: Value) -> Value {
    let now = now();
    let age = [json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"})];
    let declared = if declared.is_empty() { &age[..] } else { declared };
    let columns: Vec<(Value, Option<crate::jsonpath::Path>)> = declared
        .iter()
        .map(|c| {
            let path = c.get("jsonPath").and_then(Value::as_str).and_then(|p| crate::jsonpath::Path::parse(p).ok());
            let ty = c.get("type").and_then(Value::as_str).unwrap_or("string");
            let def = json!({"name": c.get("name").cloned().unwrap_or(json!("")),
                "type": if ty == "date" { "string" } else { ty },
                "format": c.get("format").cloned().unwrap_or(json!("")),
                "description": c.get("description").cloned().unwrap_or(json!("")),
                "priority": c.get("priority").cloned().unwrap_or(json!(0))});
            (def, path)
        })
        .collect();
    let mut definitions = vec![json!({"name": "Name", "type": "string", "format": "name",
        "description": "Name must be unique within a namespace.", "priority": 0})];
    definitions.extend(columns.iter().map(|(d, _)| d.clone()));
    let rows: Vec<Value> = items
        .iter()
        .map(|obj| {
            let mut cells = vec![obj.at("/metadata/name").cloned().unwrap_or(Value::Null)];
            for ((_, path), decl) in columns.iter().zip(declared) {
                let found = path.as_ref().map(|p| p.select(obj)).unwrap_or_default();
                let cell = match found.as_slice() {
                    [] => Value::Null,
                    [one] if decl.get("type").and_then(Value::as_str) == Some("date") => {
                        match one.as_str().and_then(api::time::parse_rfc3339) {
                            Some(t) => json!(human_duration(now - t)),
                            None => (*one).clone(),
                        }
                    }
                    [one] => (*one).clone(),
                    many => json!(
                        many.iter()
                            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                            .collect::<Vec<_>>()
                            .join(",")
                    ),
                };
                cells.push(cell);
            }
            let partial = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                "metadata": obj.get("metadata").cloned().unwrap_or(Value::Null)});
            json!({"cells": cells, "object": partial})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": version, "metadata": list_meta, "columnDefinitions": definitions, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::time::parse_rfc3339;

    #[test]
    fn durations_read_like_kubectl() {
        let cases = [
            (5, "5s"),
            (119, "119s"),
            (150, "2m30s"),
            (600, "10m"),
            (7200, "120m"),
            (3 * 3600 + 60, "3h1m"),
            (30 * 3600, "30h"),
            (3 * 86_400 + 3600, "3d1h"),
            (400 * 86_400, "400d"),
            (3 * 365 * 86_400, "3y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn timestamps_parse_back() {
        assert_eq!(parse_rfc3339("2026-11-22T11:49:24Z"), Some(1_795_348_164));
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Some(951_782_400));
        assert_eq!(parse_rfc3339("bad"), None);
    }

    #[test]
    fn pod_rows_show_readiness_status_and_restarts() {
        let pod = json!({
            "metadata": {"name": "p", "creationTimestamp": "2000-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.0.0.5", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 2},
                {"name": "b", "ready": false, "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
            ]}
        });
        let c = cells("Pod", &pod, parse_rfc3339("2000-01-01T00:00:30Z").unwrap());
        assert_eq!(
            c,
            vec![
                json!("p"),
                json!("1/2"),
                json!("CrashLoopBackOff"),
                json!("3"),
                json!("30s"),
                json!("10.0.0.5"),
                json!("n1"),
                json!("<none>"),
                json!("<none>")
            ]
        );
        assert!(wants_table("application/json;as=Table;v=v1;g=meta.k8s.io,application/json"));
        // What client-go's metadata client sends: metadata alone, in the form asked for.
        let one = "application/vnd.kubernetes.protobuf;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json";
        assert_eq!(
            wants_partial("application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1", false),
            Ok(Some("meta.k8s.io/v1"))
        );
        assert_eq!(
            wants_partial("application/json; as=PartialObjectMetadataList; g=meta.k8s.io; v=v1beta1", true),
            Ok(Some("meta.k8s.io/v1beta1"))
        );
        assert_eq!(wants_partial(one, false), Ok(Some("meta.k8s.io/v1")));
        // The other form first: whole objects if the client takes them, else refused.
        assert_eq!(wants_partial(one, true), Ok(None));
        assert_eq!(
            wants_partial("application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1", true),
            Err(NotAcceptable)
        );
        assert_eq!(wants_partial("application/json;as=PartialObjectMetadata;g=other.io;v=v1", false), Ok(None));
        assert_eq!(wants_partial("application/json", false), Ok(None));
        assert!(!wants_table("application/json"));
    }

    #[test]
    fn node_roles_come_from_labels_as_kubectl_reads_them() {
        let node = |labels: Value| json!({"metadata": {"name": "n", "labels": labels}});
        let roles = |labels: Value| cells("Node", &node(labels), 0)[2].clone();
        assert_eq!(roles(json!({})), json!("<none>"));
        assert_eq!(
            roles(json!({"node-role.kubernetes.io/simulated": "", "atoll.io/simulated": "true"})),
            json!("simulated")
        );
        assert_eq!(
            roles(json!({"node-role.kubernetes.io/worker": "", "node-role.kubernetes.io/control-plane": "",
                         "kubernetes.io/role": "worker"})),
            json!("control-plane,worker")
        );
    }
}
