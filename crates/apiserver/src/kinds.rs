//! The built-in kinds: one small strategy each, over the generic registry.

use api::json::At;
use api::meta::FieldError;
use serde_json::Value;

use crate::registry::{ResourceInfo, Strategy};

/// The annotation naming the user who created a Namespace (set by the server from the
/// authenticated identity; clients cannot set or change it). The auth-controller gives
/// that user the namespace's Role.
pub const CREATOR_ANNOTATION: &str = "atoll.io/creator";
/// The uid of the User object that created a Namespace, when its creator was one.
pub const CREATOR_UID_ANNOTATION: &str = "atoll.io/creator-uid";

/// Sets (or with `None` removes) one annotation, dropping an emptied map.
fn set_annotation(obj: &mut Value, key: &str, value: Option<Value>) {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else { return };
    match value {
        Some(v) => {
            let annotations = meta.entry("annotations").or_insert_with(|| serde_json::json!({}));
            if !annotations.is_object() {
                *annotations = serde_json::json!({});
            }
            if let Some(map) = annotations.as_object_mut() {
                map.insert(key.to_string(), v);
            }
        }
        None => {
            if let Some(map) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
                map.remove(key);
                if map.is_empty() {
                    meta.remove("annotations");
                }
            }
        }
    }
}

/// A kind with no rules of its own beyond shape and selectable fields, plus an optional
/// validation function.
pub struct Kind {
    info: ResourceInfo,
    /// The kind's protobuf message, whose layout gives its every field.
    message: Option<String>,
    fields: &'static [&'static str],
    validate: fn(&Value) -> Vec<FieldError>,
    clear_status_on_create: bool,
    defaults: fn(&mut Value),
}

impl Strategy for Kind {
    fn info(&self) -> &ResourceInfo {
        &self.info
    }
    fn prepare_for_create(&self, obj: &mut Value) {
        if self.clear_status_on_create
            && let Some(map) = obj.as_object_mut()
        {
            map.remove("status");
        }
        (self.defaults)(obj);
    }
    fn status_set_on_create(&self) -> bool {
        self.clear_status_on_create
    }
    fn validate(&self, obj: &Value) -> Vec<FieldError> {
        (self.validate)(obj)
    }
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<FieldError> {
        match (self.info.group.as_str(), self.info.kind.as_str()) {
            ("", "Pod") => validate_pod_update(new, old),
            ("apps", "Deployment" | "ReplicaSet") => crate::workloads::validate_update(new, old),
            _ => Vec::new(),
        }
    }
    /// A namespace's `spec.finalizers` change only through `finalize`; a terminating
    /// namespace stays Terminating.
    fn prepare_for_update(&self, new: &mut Value, old: &Value, subresource: Option<&str>) {
        // Workloads are defaulted on every write, as Kubernetes defaults every decoded object;
        // a Secret's stringData is folded into data on every write, as Kubernetes' decoding does.
        if self.info.group == "apps" || (self.info.group.is_empty() && self.info.kind == "Secret") {
            (self.defaults)(new);
        }
        // A pod's spec defaults too (not its admission defaults): a replaced pod that omits
        // them is then compared with its stored spec as Kubernetes compares it.
        if self.info.group.is_empty()
            && self.info.kind == "Pod"
            && let Some(spec) = new.get_mut("spec")
        {
            pod_spec_defaults(spec);
        }
        if self.info.kind != "Namespace" || !self.info.group.is_empty() {
            return;
        }
        // The creator is fixed at creation; no update sets, changes or removes it.
        for key in [CREATOR_ANNOTATION, CREATOR_UID_ANNOTATION] {
            let kept = old.at("/metadata/annotations").and_then(|a| a.get(key)).cloned();
            set_annotation(new, key, kept);
        }
        if subresource != Some("finalize") {
            let kept = old.at("/spec/finalizers").cloned();
            if let Some(map) = new.as_object_mut() {
                let spec = map.entry("spec").or_insert_with(|| serde_json::json!({}));
                if let Some(spec) = spec.as_object_mut() {
                    match kept {
                        Some(f) => spec.insert("finalizers".into(), f),
                        None => spec.remove("finalizers"),
                    };
                }
            }
        }
        if new.at("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null()) {
            new["status"]["phase"] = serde_json::json!("Terminating");
        }
    }
    fn subresource_update(&self, subresource: &str, old: &Value, new: &Value) -> Option<Value> {
        if self.info.kind != "Namespace" || subresource != "finalize" {
            return None;
        }
        let mut out = old.clone();
        let finalizers = new.at("/spec/finalizers").cloned().unwrap_or(serde_json::json!([]));
        if let Some(map) = out.as_object_mut() {
            let spec = map.entry("spec").or_insert_with(|| serde_json::json!({}));
            if let Some(spec) = spec.as_object_mut() {
                spec.insert("finalizers".into(), finalizers);
            }
        }
        Some(out)
    }
    fn holds_deletion(&self, obj: &Value) -> bool {
        self.info.kind == "Namespace" && self.info.group.is_empty() && namespace_finalizers(obj).is_some()
    }
    fn record_creator(&self, obj: &mut Value, creator: Option<&crate::registry::Creator>) {
        if self.info.kind == "Namespace" && self.info.group.is_empty() {
            let name = creator.map(|c| Value::String(c.name.clone()));
            let uid = creator.and_then(|c| c.user_uid.clone()).map(Value::String);
            set_annotation(obj, CREATOR_ANNOTATION, name);
            set_annotation(obj, CREATOR_UID_ANNOTATION, uid);
        }
    }
    fn prepare_for_delete(&self, obj: &mut Value) {
        if self.info.kind == "Namespace" && self.info.group.is_empty() {
            obj["status"]["phase"] = serde_json::json!("Terminating");
        }
    }
    fn selectable_fields(&self) -> &[&str] {
        self.fields
    }
    /// Built-in kinds store objects as they are viewed.
    fn raw_selectable(&self, field: &str) -> bool {
        self.fields.contains(&field)
    }
    fn stored_as_viewed(&self) -> bool {
        true
    }
    /// A pod bound to a node is stopped by that node's agent, which deletes it when its
    /// containers are gone (or the grace period ends); an unbound pod goes at once.
    fn grace_period(&self, obj: &Value, requested: Option<i64>) -> Option<i64> {
        if self.info.kind != "Pod" || obj.at("/spec/nodeName").and_then(Value::as_str).is_none_or(str::is_empty) {
            return None;
        }
        let default = obj.at("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(30);
        let grace = requested.unwrap_or(default).max(0);
        // Zero from a client is a forced deletion: it is not waited for.
        (grace > 0).then_some(grace)
    }
    fn prune_unknown_fields(&self, obj: &mut Value) -> Option<Vec<String>> {
        let message = self.message.as_deref()?;
        let mut unknown = Vec::new();
        crate::proto::shape::prune_unknown_fields(message, obj, &mut unknown);
        Some(unknown)
    }
    fn top_level_fields(&self) -> Option<&[&str]> {
        Some(match self.info.kind.as_str() {
            "ConfigMap" => &["data", "binaryData", "immutable"],
            "Secret" => &["data", "stringData", "type", "immutable"],
            "ServiceAccount" => &["secrets", "imagePullSecrets", "automountServiceAccountToken"],
            "Event" => &[
                "involvedObject",
                "reason",
                "message",
                "source",
                "firstTimestamp",
                "lastTimestamp",
                "count",
                "type",
                "eventTime",
                "series",
                "action",
                "related",
                "reportingComponent",
                "reportingInstance",
            ],
            "Lease" => &["spec"],
            _ if self.info.status_subresource => &["spec", "status"],
            _ => return None,
        })
    }
}

fn no_rules(_: &Value) -> Vec<FieldError> {
    Vec::new()
}

fn no_defaults(_: &mut Value) {}

/// How long a pod stays on a node that is not ready or unreachable unless it says otherwise
/// (Kubernetes' DefaultTolerationSeconds admission, with its default).
pub const DEFAULT_TOLERATION_SECONDS: i64 = 300;

/// A new pod tolerates the not-ready and unreachable NoExecute taints for
/// [`DEFAULT_TOLERATION_SECONDS`] unless it already has a toleration for them, as
/// Kubernetes' DefaultTolerationSeconds admission does; the node lifecycle controller
/// evicts after that.
fn default_tolerations(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else { return };
    let tolerations = spec.entry("tolerations").or_insert_with(|| serde_json::json!([]));
    let Some(list) = tolerations.as_array_mut() else { return };
    for key in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
        let covered = list.iter().any(|t| {
            let field = |f: &str| t.get(f).and_then(Value::as_str).unwrap_or("");
            (field("key") == key || field("key").is_empty()) && matches!(field("effect"), "NoExecute" | "")
        });
        if !covered {
            list.push(serde_json::json!({"key": key, "operator": "Exists", "effect": "NoExecute",
                                         "tolerationSeconds": DEFAULT_TOLERATION_SECONDS}));
        }
    }
}

/// `spec.virtualMachine`: a pod is either containers or one VM (`api::vm`).
fn validate_vm(spec: &Value, errors: &mut Vec<FieldError>) {
    use api::meta::FieldErrorKind;
    let Some(vm) = spec.get("virtualMachine").filter(|v| !v.is_null()) else { return };
    let at = "spec.virtualMachine";
    let Some(vm) = vm.as_object() else {
        errors.push(FieldError::invalid(at, vm, "must be an object"));
        return;
    };
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        if spec.get(list).and_then(Value::as_array).is_some_and(|c| !c.is_empty()) {
            errors.push(FieldError::forbidden(
                format!("spec.{list}"),
                "may not be set together with spec.virtualMachine: a pod is either containers or one virtual machine",
            ));
        }
    }
    match vm.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()) {
        None => errors.push(FieldError::required(format!("{at}.name"), "")),
        Some(n) if !api::request::is_dns_label(n) => {
            errors.push(FieldError::invalid(format!("{at}.name"), n, "must be a DNS-1123 label"))
        }
        Some(_) => {}
    }
    if vm.get("image").and_then(Value::as_str).is_none_or(str::is_empty) {
        errors.push(FieldError::required(format!("{at}.image"), ""));
    }
    if let Some(p) = vm.get("imagePullPolicy").and_then(Value::as_str)
        && !matches!(p, "Always" | "IfNotPresent" | "Never")
    {
        errors.push(FieldError {
            field: format!("{at}.imagePullPolicy"),
            kind: FieldErrorKind::NotSupported(p.into(), vec!["Always".into(), "IfNotPresent".into(), "Never".into()]),
            detail: String::new(),
        });
    }
    for (field, max) in [("kernelCommandLine", 1024), ("userData", 64 * 1024)] {
        match vm.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::String(t)) if t.len() > max => errors.push(FieldError::invalid(
                format!("{at}.{field}"),
                "<value>",
                format!("must be at most {max} bytes"),
            )),
            Some(Value::String(t)) if field == "kernelCommandLine" && t.contains(['\n', '\0']) => {
                errors.push(FieldError::invalid(format!("{at}.{field}"), "<value>", "must be one line"))
            }
            Some(Value::String(_)) => {}
            Some(other) => errors.push(FieldError::invalid(format!("{at}.{field}"), other, "must be a string")),
        }
    }
    errors.extend(api::vm::validate_credentials(&Value::Object(vm.clone()), at));
}

/// A new pod's defaults, as Kubernetes' defaulting and default admission set them (a VM
/// pod's resources and qemu's overhead from `api::vm`).
fn pod_defaults(obj: &mut Value) {
    default_tolerations(obj);
    if let Some(spec) = obj.get_mut("spec") {
        pod_spec_defaults(spec);
        api::vm::apply_defaults(spec);
    }
    // As in Kubernetes, a new pod is Pending, in its QoS class, and says why it is not
    // scheduled when scheduling gates hold it.
    let qos = qos_class(obj.get("spec").unwrap_or(&Value::Null));
    let gated = !scheduling_gates(obj).is_empty();
    let Some(pod) = obj.as_object_mut() else { return };
    let status = pod.entry("status").or_insert_with(|| serde_json::json!({}));
    if !status.is_object() {
        *status = serde_json::json!({});
    }
    let Some(status) = status.as_object_mut() else { return };
    status.entry("phase").or_insert_with(|| Value::from("Pending"));
    status.insert("qosClass".into(), Value::from(qos));
    if gated {
        let condition = serde_json::json!({"type": "PodScheduled", "status": "False", "reason": "SchedulingGated",
            "message": "Scheduling is blocked due to non-empty scheduling gates", "lastProbeTime": null,
            "lastTransitionTime": crate::registry::object::now_rfc3339()});
        status.insert("conditions".into(), Value::Array(vec![condition]));
    }
}

/// A pod's quality-of-service class as Kubernetes computes it from its containers' CPU and
/// memory: `BestEffort` with no requests or limits at all, `Guaranteed` when every container
/// limits both and requests what it limits (an unset request defaults to the limit), else
/// `Burstable`.
fn qos_class(spec: &Value) -> &'static str {
    use std::collections::BTreeMap;
    let (mut requests, mut limits) = (BTreeMap::<&str, i128>::new(), BTreeMap::<&str, i128>::new());
    let mut guaranteed = true;
    let containers = ["initContainers", "containers"].into_iter().filter_map(|l| spec.get(l).and_then(Value::as_array));
    for c in containers.flatten() {
        let amounts = |kind: &str| -> Vec<(&'static str, i128)> {
            ["cpu", "memory"]
                .into_iter()
                .filter_map(|r| {
                    let q = c.get("resources")?.get(kind)?.get(r)?;
                    let q = q.as_str().map(str::to_string).unwrap_or_else(|| q.to_string());
                    api::quantity::parse_milli(&q).filter(|m| *m > 0).map(|m| (r, m))
                })
                .collect()
        };
        let (limited, asked) = (amounts("limits"), amounts("requests"));
        for (r, m) in &asked {
            *requests.entry(r).or_default() += m;
        }
        // Kubernetes' defaulting: a limit without a request requests the limit.
        for (r, m) in &limited {
            *limits.entry(r).or_default() += m;
            if !asked.iter().any(|(a, _)| a == r) {
                *requests.entry(r).or_default() += m;
            }
        }
        if limited.len() < 2 {
            guaranteed = false;
        }
    }
    if requests.is_empty() && limits.is_empty() {
        "BestEffort"
    } else if guaranteed && requests == limits {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// The names of a pod's scheduling gates (`spec.schedulingGates[*].name`): while there are
/// any, the pod is not scheduled.
fn scheduling_gates(pod: &Value) -> Vec<&str> {
    let gates = pod.at("/spec/schedulingGates").and_then(Value::as_array);
    gates.into_iter().flatten().map(|g| g.get("name").and_then(Value::as_str).unwrap_or("")).collect()
}

/// What Kubernetes' defaulting sets on every pod spec, a pod's or a workload's template's
/// (admission defaults such as tolerations are for pods only): so that `get -o yaml` shows
/// what the pod will run with, and a template's pods equal it.
pub(crate) fn pod_spec_defaults(spec: &mut Value) {
    let Some(spec) = spec.as_object_mut() else { return };
    let mut set = |key: &str, value: Value| {
        if spec.get(key).is_none_or(|v| v.is_null() || v.as_str() == Some("")) {
            spec.insert(key.into(), value);
        }
    };
    set("restartPolicy", Value::from("Always"));
    set("terminationGracePeriodSeconds", Value::from(30));
    set("dnsPolicy", Value::from("ClusterFirst"));
    set("securityContext", serde_json::json!({}));
    set("schedulerName", Value::from("default-scheduler"));
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for c in spec.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
            let Some(c) = c.as_object_mut() else { continue };
            let image = c.get("image").and_then(Value::as_str).unwrap_or("");
            let defaults = [
                ("imagePullPolicy", default_pull_policy(image)),
                ("terminationMessagePath", "/dev/termination-log"),
                ("terminationMessagePolicy", "File"),
            ];
            for (key, value) in defaults {
                if c.get(key).and_then(Value::as_str).is_none_or(str::is_empty) {
                    c.insert(key.into(), Value::from(value));
                }
            }
            for port in c.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten() {
                if let Some(port) = port.as_object_mut()
                    && port.get("protocol").and_then(Value::as_str).is_none_or(str::is_empty)
                {
                    port.insert("protocol".into(), Value::from("TCP"));
                }
            }
        }
    }
}

/// A new pod without `imagePullSecrets` gets its service account's, as Kubernetes'
/// ServiceAccount admission does (a pod that names its own keeps just those).
pub(crate) fn add_service_account_pull_secrets(pod: &mut Value, account: &Value) {
    let Some(secrets) = account.get("imagePullSecrets").and_then(Value::as_array).filter(|s| !s.is_empty()) else {
        return;
    };
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else { return };
    if spec.get("imagePullSecrets").and_then(Value::as_array).is_some_and(|s| !s.is_empty()) {
        return;
    }
    let names = secrets.iter().filter_map(|s| s.get("name")).map(|n| serde_json::json!({"name": n})).collect();
    spec.insert("imagePullSecrets".into(), Value::Array(names));
}

/// The finalizer by which the namespace controller empties a deleted namespace.
pub const NAMESPACE_FINALIZER: &str = "kubernetes";
/// The finalizer by which the tenant controller empties a deleted tenant.
pub const TENANT_FINALIZER: &str = "atoll.io/tenant";

/// A new namespace is Active and carries the namespace controller's finalizer.
fn namespace_defaults(obj: &mut Value) {
    if let Some(map) = obj.as_object_mut() {
        map.insert("status".into(), serde_json::json!({"phase": "Active"}));
        let spec = map.entry("spec").or_insert_with(|| serde_json::json!({}));
        if let Some(spec) = spec.as_object_mut()
            && spec.get("finalizers").and_then(Value::as_array).is_none_or(|f| f.is_empty())
        {
            spec.insert("finalizers".into(), serde_json::json!([NAMESPACE_FINALIZER]));
        }
    }
}

/// A new tenant carries the tenant controller's finalizer: deleting it deletes everything
/// it holds first.
fn tenant_defaults(obj: &mut Value) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        let list = meta.entry("finalizers").or_insert_with(|| serde_json::json!([]));
        if let Some(list) = list.as_array_mut()
            && !list.iter().any(|f| f == TENANT_FINALIZER)
        {
            list.push(serde_json::json!(TENANT_FINALIZER));
        }
    }
}

/// Kubernetes' container defaulting of `imagePullPolicy`: `Always` for an image without a
/// tag or tagged `latest` (and not pinned by digest), else `IfNotPresent`. The node agent
/// acts on the stored value, so every pod says what its node will do.
fn default_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    // A tag is after the last ':' only if no '/' follows it (else it was a registry port).
    let tag = image.rfind(':').map(|i| &image[i + 1..]).filter(|t| !t.contains('/'));
    match tag {
        None | Some("latest") => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn namespace_finalizers(obj: &Value) -> Option<&Vec<Value>> {
    obj.at("/spec/finalizers").and_then(Value::as_array).filter(|f| !f.is_empty())
}

/// ConfigMap and Secret keys: alphanumerics, '-', '_' and '.'.
fn is_config_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k != "."
        && k != ".."
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn validate_data_keys(obj: &Value, fields: &[&str]) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for field in fields {
        match obj.get(*field) {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                for (k, v) in map {
                    if !is_config_key(k) {
                        errors.push(FieldError::invalid(
                            format!("{field}[{k}]"),
                            k,
                            "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                        ));
                    }
                    if !v.is_string() {
                        errors.push(FieldError::invalid(format!("{field}[{k}]"), v, "must be a string"));
                    }
                }
            }
            Some(other) => errors.push(FieldError::invalid(*field, other, "must be an object of strings")),
        }
    }
    errors
}

fn validate_configmap(obj: &Value) -> Vec<FieldError> {
    validate_data_keys(obj, &["data", "binaryData"])
}

/// Folds a Secret's `stringData` into `data` (base64), a string key winning over the same
/// key in `data`, and drops `stringData`: Kubernetes never stores or returns it, it is only a
/// convenience for writing.
fn secret_defaults(obj: &mut Value) {
    use base64::Engine;
    let Some(map) = obj.as_object_mut() else { return };
    let Some(strings) = map.remove("stringData") else { return };
    let Value::Object(strings) = strings else { return };
    if strings.is_empty() {
        return;
    }
    let data = map.entry("data").or_insert_with(|| Value::Object(Default::default()));
    if !data.is_object() {
        *data = Value::Object(Default::default());
    }
    if let Some(data) = data.as_object_mut() {
        for (k, v) in strings {
            // A non-string value is kept as it came, so validation still reports it.
            let v = match v {
                Value::String(s) => Value::String(base64::engine::general_purpose::STANDARD.encode(s.as_bytes())),
                other => other,
            };
            data.insert(k, v);
        }
    }
}

fn validate_secret(obj: &Value) -> Vec<FieldError> {
    let mut errors = validate_data_keys(obj, &["data", "stringData"]);
    if let Some(Value::Object(data)) = obj.get("data") {
        for (k, v) in data {
            if v.as_str().is_some_and(|s| !is_base64(s)) {
                errors.push(FieldError::invalid(format!("data[{k}]"), "<secret>", "must be base64-encoded"));
            }
        }
    }
    errors
}

/// Standard base64 with padding, as Kubernetes accepts for `[]byte` fields.
pub(crate) fn is_base64(s: &str) -> bool {
    let b = s.as_bytes();
    b.len().is_multiple_of(4)
        && b.iter()
            .enumerate()
            .all(|(i, c)| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/' || (*c == b'=' && i + 2 >= b.len()))
}

pub(crate) fn validate_pod(obj: &Value) -> Vec<FieldError> {
    use api::meta::FieldErrorKind;
    let mut errors = Vec::new();
    let not_supported = |field: String, value: &str, allowed: &[&str]| FieldError {
        field,
        kind: FieldErrorKind::NotSupported(value.to_string(), allowed.iter().map(|a| a.to_string()).collect()),
        detail: String::new(),
    };
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    let volumes: Vec<&str> = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("name").and_then(Value::as_str))
        .collect();
    for (i, name) in volumes.iter().enumerate() {
        if !api::request::is_dns_label(name) {
            errors.push(FieldError::invalid(format!("spec.volumes[{i}].name"), name, "must be a DNS-1123 label"));
        }
        if volumes[..i].contains(name) {
            errors.push(FieldError {
                field: format!("spec.volumes[{i}].name"),
                kind: FieldErrorKind::Duplicate(name.to_string()),
                detail: String::new(),
            });
        }
    }
    let gates = scheduling_gates(obj);
    for (i, gate) in gates.iter().enumerate() {
        let field = format!("spec.schedulingGates[{i}].name");
        if gate.is_empty() {
            errors.push(FieldError::required(field, ""));
        } else if gates[..i].contains(gate) {
            errors.push(FieldError { field, kind: FieldErrorKind::Duplicate(gate.to_string()), detail: String::new() });
        }
    }
    validate_vm(spec, &mut errors);
    let vm = api::vm::is_vm(spec);
    let mut names: Vec<String> = Vec::new();
    for list in ["initContainers", "containers"] {
        let containers = spec.get(list).and_then(Value::as_array);
        if list == "containers" && !vm && containers.is_none_or(|c| c.is_empty()) {
            errors.push(FieldError::required("spec.containers", ""));
        }
        for (i, c) in containers.into_iter().flatten().enumerate() {
            let at = format!("spec.{list}[{i}]");
            match c.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()) {
                None => errors.push(FieldError::required(format!("{at}.name"), "")),
                Some(n) if !api::request::is_dns_label(n) => {
                    errors.push(FieldError::invalid(format!("{at}.name"), n, "must be a DNS-1123 label"))
                }
                Some(n) if names.iter().any(|m| m == n) => errors.push(FieldError {
                    field: format!("{at}.name"),
                    kind: FieldErrorKind::Duplicate(n.to_string()),
                    detail: String::new(),
                }),
                Some(n) => names.push(n.to_string()),
            }
            if c.get("image").and_then(Value::as_str).is_none_or(str::is_empty) {
                errors.push(FieldError::required(format!("{at}.image"), ""));
            }
            for (j, p) in c.get("ports").and_then(Value::as_array).into_iter().flatten().enumerate() {
                let port = p.get("containerPort").and_then(Value::as_i64).unwrap_or(0);
                if !(1..=65535).contains(&port) {
                    errors.push(FieldError::invalid(
                        format!("{at}.ports[{j}].containerPort"),
                        port,
                        "must be between 1 and 65535, inclusive",
                    ));
                }
                if let Some(proto) = p.get("protocol").and_then(Value::as_str)
                    && !matches!(proto, "TCP" | "UDP" | "SCTP")
                {
                    errors.push(not_supported(format!("{at}.ports[{j}].protocol"), proto, &["SCTP", "TCP", "UDP"]));
                }
            }
            for (j, e) in c.get("env").and_then(Value::as_array).into_iter().flatten().enumerate() {
                let name = e.get("name").and_then(Value::as_str).unwrap_or("");
                if name.is_empty() || name.contains('=') {
                    errors.push(FieldError::invalid(
                        format!("{at}.env[{j}].name"),
                        name,
                        "must be a non-empty name without '='",
                    ));
                }
            }
            for (j, m) in c.get("volumeMounts").and_then(Value::as_array).into_iter().flatten().enumerate() {
                let name = m.get("name").and_then(Value::as_str).unwrap_or("");
                if !volumes.contains(&name) {
                    errors.push(FieldError {
                        field: format!("{at}.volumeMounts[{j}].name"),
                        kind: FieldErrorKind::NotFound(name.to_string()),
                        detail: String::new(),
                    });
                }
            }
        }
    }
    if let Some(policy) = spec.get("restartPolicy").and_then(Value::as_str)
        && !matches!(policy, "Always" | "OnFailure" | "Never")
    {
        errors.push(not_supported("spec.restartPolicy".into(), policy, &["Always", "OnFailure", "Never"]));
    }
    errors
}

/// Tenant names are DNS labels, and `system` and `all` are reserved.
fn validate_tenant(obj: &Value) -> Vec<FieldError> {
    let name = obj.at("/metadata/name").and_then(Value::as_str).unwrap_or("");
    if name == api::request::SYSTEM_TENANT || name == api::request::ALL_TENANTS {
        return vec![FieldError::forbidden("metadata.name", format!("{name:?} is a reserved tenant name"))];
    }
    let mut errors = Vec::new();
    if !api::request::is_dns_label(name) {
        errors.push(FieldError::invalid("metadata.name", name, "a tenant name must be a DNS-1123 label"));
    }
    // `spec.admins`: the users bound to the tenant's cluster-admin role.
    match obj.at("/spec/admins") {
        None | Some(Value::Null) => {}
        Some(Value::Array(admins)) => {
            for (i, a) in admins.iter().enumerate() {
                if a.as_str().is_none_or(str::is_empty) {
                    errors.push(FieldError::invalid(format!("spec.admins[{i}]"), a, "must be a user name"));
                }
            }
        }
        Some(other) => errors.push(FieldError::invalid("spec.admins", other, "must be a list of user names")),
    }
    // The scheduler keeps an exclusive tenant's pods off nodes shared with other tenants.
    match obj.at("/spec/exclusiveNodes") {
        None | Some(Value::Bool(_)) | Some(Value::Null) => {}
        Some(other) => errors.push(FieldError::invalid("spec.exclusiveNodes", other, "must be a boolean")),
    }
    // Forced VM sandboxing of the tenant's pods.
    if let Some(why) = crate::sandbox::validate_tenant_field(obj) {
        let value = obj.at("/spec/podSandbox").cloned().unwrap_or_default();
        errors.push(FieldError::invalid("spec.podSandbox", &value, why));
    }
    errors
}

/// A pod's spec is fixed once created, except container images, the active deadline,
/// and added tolerations (the node is set through the binding subresource).
fn validate_pod_update(new: &Value, old: &Value) -> Vec<FieldError> {
    let mutable = |spec: &Value| {
        let mut spec = spec.clone();
        if let Some(m) = spec.as_object_mut() {
            m.remove("activeDeadlineSeconds");
            m.remove("tolerations");
            m.remove("schedulingGates");
            for list in ["containers", "initContainers"] {
                for c in m.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
                    if let Some(c) = c.as_object_mut() {
                        c.remove("image");
                    }
                }
            }
        }
        spec
    };
    let (new_spec, old_spec) = (new.get("spec").unwrap_or(&Value::Null), old.get("spec").unwrap_or(&Value::Null));
    // Most updates (every status write) leave the spec as it was: compared, not copied.
    if new_spec == old_spec {
        return Vec::new();
    }
    let mut errors = Vec::new();
    if mutable(new_spec) != mutable(old_spec) {
        errors.push(FieldError::forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing tolerations) or `spec.schedulingGates` (only deletions)",
        ));
    }
    // Scheduling gates may only be taken away (the pod is then scheduled when none is left).
    let old_gates = scheduling_gates(old);
    if let Some(added) = scheduling_gates(new).into_iter().find(|g| !old_gates.contains(g)) {
        errors.push(FieldError::forbidden(
            "spec.schedulingGates",
            format!("only deletion is allowed, but found new scheduling gate '{added}'"),
        ));
    }
    let tolerations = |spec: &Value| spec.get("tolerations").and_then(Value::as_array).cloned().unwrap_or_default();
    let (new_t, old_t) = (tolerations(new_spec), tolerations(old_spec));
    if !old_t.iter().all(|t| new_t.contains(t)) {
        errors.push(FieldError::forbidden(
            "spec.tolerations",
            "existing toleration can not be modified except its tolerationSeconds",
        ));
    }
    errors
}

fn kind(group: &str, version: &str, kind: &str, resource: &str, namespaced: bool, status: bool) -> ResourceInfo {
    ResourceInfo {
        group: group.into(),
        version: version.into(),
        kind: kind.into(),
        resource: resource.into(),
        namespaced,
        status_subresource: status,
        scale_subresource: matches!(kind, "Deployment" | "ReplicaSet"),
        storage: None,
        short_names: short_names(resource).iter().map(|s| s.to_string()).collect(),
        // `kubectl get all` lists the kinds in the "all" category.
        categories: if matches!(resource, "pods" | "services" | "deployments" | "replicasets") {
            vec!["all".into()]
        } else {
            Vec::new()
        },
        custom: false,
    }
}

/// Discovery's short names of the built-in kinds.
fn short_names(resource: &str) -> &'static [&'static str] {
    match resource {
        "namespaces" => &["ns"],
        "pods" => &["po"],
        "nodes" => &["no"],
        "configmaps" => &["cm"],
        "serviceaccounts" => &["sa"],
        "services" => &["svc"],
        "events" => &["ev"],
        "replicasets" => &["rs"],
        "deployments" => &["deploy"],
        _ => &[],
    }
}

/// `events.k8s.io/v1` Events: a view of the core Events, stored in their form.
pub struct EventsV1 {
    info: ResourceInfo,
}

/// Core field name ↔ `events.k8s.io/v1` field name.
const EVENT_FIELDS: [(&str, &str); 7] = [
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("reportingComponent", "reportingController"),
];

fn rename_fields(obj: &mut Value, api_version: &str, forward: bool) {
    let Some(map) = obj.as_object_mut() else { return };
    for (core, v1) in EVENT_FIELDS {
        let (from, to) = if forward { (core, v1) } else { (v1, core) };
        if let Some(v) = map.remove(from) {
            map.insert(to.into(), v);
        }
    }
    map.insert("apiVersion".into(), Value::String(api_version.into()));
}

impl Strategy for EventsV1 {
    fn info(&self) -> &ResourceInfo {
        &self.info
    }
    fn stored_to_view(&self, obj: &mut Value) {
        rename_fields(obj, "events.k8s.io/v1", true);
    }
    fn view_to_stored(&self, obj: &mut Value) {
        rename_fields(obj, "v1", false);
    }
    fn selectable_fields(&self) -> &[&str] {
        &[
            "regarding.kind",
            "regarding.name",
            "regarding.namespace",
            "regarding.uid",
            "reason",
            "type",
            "reportingController",
        ]
    }
    fn top_level_fields(&self) -> Option<&[&str]> {
        Some(&[
            "eventTime",
            "series",
            "reportingController",
            "reportingInstance",
            "action",
            "reason",
            "regarding",
            "related",
            "note",
            "type",
            "deprecatedSource",
            "deprecatedFirstTimestamp",
            "deprecatedLastTimestamp",
            "deprecatedCount",
        ])
    }
}

/// Every built-in kind that is a view of another's storage.
pub fn views() -> Vec<EventsV1> {
    let mut info = kind("events.k8s.io", "v1", "Event", "events", true, false);
    info.storage = Some("events".into());
    vec![EventsV1 { info }]
}

/// Every built-in kind's strategy.
pub fn builtin() -> Vec<Kind> {
    let plain = |info, fields, validate| Kind {
        info,
        message: None,
        fields,
        validate,
        clear_status_on_create: false,
        defaults: no_defaults,
    };
    let with_status = |info, fields, validate| Kind {
        info,
        message: None,
        fields,
        validate,
        clear_status_on_create: true,
        defaults: no_defaults,
    };
    let mut kinds = vec![
        Kind {
            info: kind("", "v1", "Namespace", "namespaces", false, true),
            message: None,
            fields: &["status.phase"],
            validate: no_rules,
            clear_status_on_create: true,
            defaults: namespace_defaults,
        },
        Kind {
            defaults: pod_defaults,
            ..with_status(
                kind("", "v1", "Pod", "pods", true, true),
                &[
                    "spec.nodeName",
                    "spec.restartPolicy",
                    "spec.schedulerName",
                    "spec.serviceAccountName",
                    "status.phase",
                    "status.podIP",
                ],
                validate_pod,
            )
        },
        with_status(kind("", "v1", "Node", "nodes", false, true), &["spec.unschedulable"], no_rules),
        plain(kind("", "v1", "ConfigMap", "configmaps", true, false), &[], validate_configmap),
        Kind {
            defaults: secret_defaults,
            ..plain(kind("", "v1", "Secret", "secrets", true, false), &["type"], validate_secret)
        },
        plain(kind("", "v1", "ServiceAccount", "serviceaccounts", true, false), &[], no_rules),
        with_status(kind("", "v1", "Service", "services", true, true), &["spec.clusterIP", "spec.type"], no_rules),
        plain(
            kind("", "v1", "Event", "events", true, false),
            &[
                "involvedObject.kind",
                "involvedObject.name",
                "involvedObject.namespace",
                "involvedObject.uid",
                "reason",
                "type",
            ],
            no_rules,
        ),
        plain(kind("coordination.k8s.io", "v1", "Lease", "leases", true, false), &[], no_rules),
        Kind {
            defaults: crate::workloads::replicaset_defaults,
            ..with_status(
                kind("apps", "v1", "ReplicaSet", "replicasets", true, true),
                &[],
                crate::workloads::validate_replicaset,
            )
        },
        Kind {
            defaults: crate::workloads::deployment_defaults,
            ..with_status(
                kind("apps", "v1", "Deployment", "deployments", true, true),
                &[],
                crate::workloads::validate_deployment,
            )
        },
        Kind {
            info: kind("atoll.io", "v1", "Tenant", "tenants", false, true),
            message: None,
            fields: &[],
            validate: validate_tenant,
            clear_status_on_create: true,
            defaults: tenant_defaults,
        },
    ];
    for k in &mut kinds {
        k.message = crate::proto::shape::message_of(&k.info.group, &k.info.version, &k.info.kind);
    }
    kinds
}

/// Where a User's password hash is kept in the stored object: a top-level field that
/// [`UserKind::redact`] removes from everything the registry hands out.
pub const PASSWORD_HASH_FIELD: &str = "passwordHash";
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// `atoll.io/v1` User: a person of a tenant (cluster-scoped within it). `spec.displayName`,
/// `spec.groups`, and `spec.password`, which is write-only: it is replaced by its argon2id
/// hash (in [`PASSWORD_HASH_FIELD`]) before anything else sees the object, and no response,
/// list, watch, table or apply result carries either.
pub struct UserKind {
    info: ResourceInfo,
}

impl UserKind {
    pub fn new() -> UserKind {
        UserKind { info: kind("atoll.io", "v1", "User", "users", false, false) }
    }

    /// kubectl's client-side apply copies the whole object, password included, into an
    /// annotation: the password is taken out of that copy too.
    fn scrub_last_applied(obj: &mut Value) {
        let Some(text) = obj.at("/metadata/annotations").and_then(|a| a.get(LAST_APPLIED)).and_then(Value::as_str)
        else {
            return;
        };
        let scrubbed = match serde_json::from_str::<Value>(text) {
            Ok(mut copy) => {
                if let Some(spec) = copy.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.remove("password");
                }
                if let Some(map) = copy.as_object_mut() {
                    map.remove(PASSWORD_HASH_FIELD);
                }
                Some(Value::String(copy.to_string()))
            }
            // Not JSON: it cannot be checked, so it is not kept.
            Err(_) => None,
        };
        set_annotation(obj, LAST_APPLIED, scrubbed);
    }

    /// Replaces a (valid) `spec.password` by its hash, keeping `current` when the password
    /// is the one already set (so re-applying the same object changes nothing) or when none
    /// is given. An invalid password stays for validation to report (never echoing it).
    fn take_password(obj: &mut Value, current: Option<&str>) {
        let password = match obj.at("/spec/password") {
            Some(Value::String(p)) if !p.is_empty() && p.len() <= crate::authn::password::MAX_PASSWORD_BYTES => {
                Some(p.clone())
            }
            None | Some(Value::Null) => None,
            Some(_) => return,
        };
        if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("password");
        }
        let hash = match (password, current) {
            (None, current) => current.map(str::to_string),
            (Some(p), Some(h)) if crate::authn::password::verify(&p, h) => Some(h.to_string()),
            (Some(p), _) => match crate::authn::password::hash(&p) {
                Ok(h) => Some(h),
                // Never store what could not be hashed: the user then has no password.
                Err(e) => {
                    tracing::warn!("hashing a password failed: {e}");
                    None
                }
            },
        };
        if let (Some(h), Some(map)) = (hash, obj.as_object_mut()) {
            map.insert(PASSWORD_HASH_FIELD.into(), Value::String(h));
        }
    }

    /// A hash is only ever the server's: one sent by a client is dropped.
    fn drop_client_hash(obj: &mut Value) {
        if let Some(map) = obj.as_object_mut() {
            map.remove(PASSWORD_HASH_FIELD);
        }
    }
}

impl Default for UserKind {
    fn default() -> Self {
        UserKind::new()
    }
}

impl Strategy for UserKind {
    fn info(&self) -> &ResourceInfo {
        &self.info
    }
    fn prepare_for_create(&self, obj: &mut Value) {
        Self::drop_client_hash(obj);
        Self::scrub_last_applied(obj);
        Self::take_password(obj, None);
    }
    /// `old` is the stored object, hash included: an update without a password keeps it.
    fn prepare_for_update(&self, new: &mut Value, old: &Value, _subresource: Option<&str>) {
        Self::drop_client_hash(new);
        Self::scrub_last_applied(new);
        Self::take_password(new, old.get(PASSWORD_HASH_FIELD).and_then(Value::as_str));
    }
    fn validate(&self, obj: &Value) -> Vec<FieldError> {
        validate_user(obj)
    }
    fn path_segment_names(&self) -> bool {
        true
    }
    fn top_level_fields(&self) -> Option<&[&str]> {
        Some(&["spec"])
    }
    fn redact(&self, obj: &mut Value) {
        Self::drop_client_hash(obj);
        if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("password");
        }
    }
    fn carry_over(&self, stored: &Value, new: &mut Value) {
        if new.get(PASSWORD_HASH_FIELD).is_none()
            && let Some(h) = stored.get(PASSWORD_HASH_FIELD)
        {
            new[PASSWORD_HASH_FIELD] = h.clone();
        }
    }
}

/// A User's name is its user name, so names Kubernetes reserves for the system's own
/// identities (`system:`...) are refused, as are `system:` groups (which carry privileges).
fn validate_user(obj: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let name = obj.at("/metadata/name").and_then(Value::as_str).unwrap_or("");
    if name.starts_with("system:") || name.contains(':') {
        errors.push(FieldError::invalid("metadata.name", name, "a user name may not contain ':'"));
    }
    match obj.get("spec") {
        None | Some(Value::Null) => {}
        Some(Value::Object(spec)) => {
            match spec.get("displayName") {
                None | Some(Value::Null) | Some(Value::String(_)) => {}
                Some(other) => errors.push(FieldError::invalid("spec.displayName", other, "must be a string")),
            }
            match spec.get("groups") {
                None | Some(Value::Null) => {}
                Some(Value::Array(groups)) => {
                    for (i, g) in groups.iter().enumerate() {
                        match g.as_str() {
                            Some(s) if !s.is_empty() && !s.starts_with("system:") => {}
                            _ => errors.push(FieldError::invalid(
                                format!("spec.groups[{i}]"),
                                g,
                                "must be a non-empty group name outside the reserved system: groups",
                            )),
                        }
                    }
                }
                Some(other) => errors.push(FieldError::invalid("spec.groups", other, "must be a list of groups")),
            }
            match spec.get("password") {
                None | Some(Value::Null) => {}
                Some(Value::String(p)) if !p.is_empty() && p.len() <= crate::authn::password::MAX_PASSWORD_BYTES => {}
                // The value itself is never echoed back.
                Some(_) => errors.push(FieldError::invalid(
                    "spec.password",
                    "(hidden)",
                    "must be a non-empty string of at most 1024 bytes",
                )),
            }
        }
        Some(_) => errors.push(FieldError::invalid("spec", "(not an object)", "must be an object")),
    }
    errors
}
#[cfg(test)]
mod pod_default_tests {
    use super::*;

    #[test]
    fn pods_without_pull_secrets_take_their_service_accounts() {
        let account = serde_json::json!({"imagePullSecrets": [{"name": "a"}, {"name": "b"}]});
        let mut pod = serde_json::json!({"spec": {"containers": [{"name": "c", "image": "x"}]}});
        add_service_account_pull_secrets(&mut pod, &account);
        assert_eq!(pod["spec"]["imagePullSecrets"], serde_json::json!([{"name": "a"}, {"name": "b"}]));
        let mut own = serde_json::json!({"spec": {"imagePullSecrets": [{"name": "mine"}]}});
        add_service_account_pull_secrets(&mut own, &account);
        assert_eq!(own["spec"]["imagePullSecrets"], serde_json::json!([{"name": "mine"}]));
        let mut none = serde_json::json!({"spec": {}});
        add_service_account_pull_secrets(&mut none, &serde_json::json!({}));
        assert!(none["spec"].get("imagePullSecrets").is_none());
    }

    #[test]
    fn image_pull_policy_defaults_like_kubernetes() {
        let cases = [
            ("busybox", "Always"),
            ("busybox:latest", "Always"),
            ("busybox:1.36", "IfNotPresent"),
            ("127.0.0.1:5000/app", "Always"),
            ("127.0.0.1:5000/app:v1", "IfNotPresent"),
            ("app@sha256:abc", "IfNotPresent"),
        ];
        for (image, want) in cases {
            let mut pod = serde_json::json!({"spec": {"containers": [{"name": "c", "image": image}]}});
            pod_defaults(&mut pod);
            assert_eq!(pod.at("/spec/containers/0/imagePullPolicy").unwrap(), want, "{image}");
        }
        let mut pod = serde_json::json!({"spec": {"initContainers": [{"image": "a", "imagePullPolicy": "Never"}]}});
        pod_defaults(&mut pod);
        assert_eq!(pod.at("/spec/initContainers/0/imagePullPolicy").unwrap(), "Never");
    }
}

#[cfg(test)]
mod secret_tests {
    use serde_json::json;

    use super::*;

    fn secret() -> Kind {
        builtin().into_iter().find(|k| k.info.kind == "Secret").expect("the Secret kind")
    }

    #[test]
    fn string_data_becomes_base64_data_on_create_and_update() {
        let secret = secret();
        let mut obj = json!({"metadata": {"name": "s"}, "data": {"a": "eA==", "k": "eA=="},
                             "stringData": {"k": "v", "s": "hello"}});
        secret.prepare_for_create(&mut obj);
        assert_eq!(obj.get("stringData"), None, "stringData is never stored");
        // stringData wins over data for the same key.
        assert_eq!(obj["data"], json!({"a": "eA==", "k": "dg==", "s": "aGVsbG8="}));
        assert!(secret.validate(&obj).is_empty());

        let old = obj.clone();
        let mut new = json!({"metadata": {"name": "s"}, "stringData": {"k": "w"}});
        secret.prepare_for_update(&mut new, &old, None);
        assert_eq!(new, json!({"metadata": {"name": "s"}, "data": {"k": "dw=="}}));

        // Bad keys in stringData are still refused, now under data.
        let mut bad = json!({"metadata": {"name": "s"}, "stringData": {"no/slash": "v"}});
        secret.prepare_for_create(&mut bad);
        assert!(!secret.validate(&bad).is_empty());
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fields(errors: &[FieldError]) -> Vec<String> {
        errors.iter().map(|e| e.field.clone()).collect()
    }

    fn vm_pod(spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "vm"}, "spec": spec})
    }

    #[test]
    fn a_pod_is_containers_or_one_vm() {
        let ok = vm_pod(json!({"virtualMachine": {"name": "vm", "image": "busybox-vm", "userData": "echo hi"}}));
        assert_eq!(fields(&validate_pod(&ok)), Vec::<String>::new());
        let both = vm_pod(json!({
            "virtualMachine": {"name": "vm", "image": "busybox-vm"},
            "containers": [{"name": "c", "image": "busybox"}],
        }));
        assert_eq!(fields(&validate_pod(&both)), ["spec.containers"]);
        let neither = vm_pod(json!({}));
        assert_eq!(fields(&validate_pod(&neither)), ["spec.containers"]);
    }

    #[test]
    fn vm_fields_are_checked_all_at_once() {
        let bad = vm_pod(json!({"virtualMachine": {
            "name": "Not_A_Label", "imagePullPolicy": "Sometimes", "kernelCommandLine": "a\nb", "userData": 5,
        }}));
        assert_eq!(
            fields(&validate_pod(&bad)),
            [
                "spec.virtualMachine.name",
                "spec.virtualMachine.image",
                "spec.virtualMachine.imagePullPolicy",
                "spec.virtualMachine.kernelCommandLine",
                "spec.virtualMachine.userData",
            ]
        );
        assert_eq!(fields(&validate_pod(&vm_pod(json!({"virtualMachine": "x"})))), ["spec.virtualMachine"]);
    }

    #[test]
    fn vm_pods_get_resources_and_overhead_by_default() {
        let kinds = builtin();
        let pods = kinds.iter().find(|k| k.info.kind == "Pod").unwrap();
        let mut pod = vm_pod(json!({"virtualMachine": {"name": "vm", "image": "busybox-vm"}}));
        pods.prepare_for_create(&mut pod);
        assert_eq!(pod["spec"]["overhead"]["memory"], api::vm::OVERHEAD_MEMORY);
        assert_eq!(pod["spec"]["virtualMachine"]["resources"]["requests"]["memory"], api::vm::DEFAULT_MEMORY);
    }

    #[test]
    fn pods_are_created_pending_in_their_qos_class() {
        let class = |containers: Value| qos_class(&json!({"containers": containers}));
        let c = |resources: Value| json!({"name": "c", "image": "i", "resources": resources});
        assert_eq!(class(json!([c(json!({}))])), "BestEffort");
        assert_eq!(class(json!([c(json!({"requests": {"cpu": "0"}}))])), "BestEffort");
        assert_eq!(class(json!([c(json!({"requests": {"cpu": "100m"}}))])), "Burstable");
        let both = json!({"cpu": "1", "memory": "1Gi"});
        assert_eq!(class(json!([c(json!({"limits": both}))])), "Guaranteed");
        assert_eq!(
            class(json!([c(json!({"limits": both, "requests": {"cpu": "1000m", "memory": "1Gi"}}))])),
            "Guaranteed"
        );
        assert_eq!(class(json!([c(json!({"limits": both, "requests": {"cpu": "500m"}}))])), "Burstable");
        assert_eq!(class(json!([c(json!({"limits": both})), c(json!({}))])), "Burstable");
        assert_eq!(class(json!([c(json!({"limits": {"cpu": "1"}}))])), "Burstable");
        let kinds = builtin();
        let pods = kinds.iter().find(|k| k.info.kind == "Pod").unwrap();
        let mut pod =
            json!({"metadata": {"name": "p"}, "spec": {"containers": [c(json!({}))]}, "status": {"phase": "Running"}});
        pods.prepare_for_create(&mut pod);
        assert_eq!(pod["status"], json!({"phase": "Pending", "qosClass": "BestEffort"}));
    }

    #[test]
    fn strict_validation_and_openapi_know_the_vm_field() {
        let message = crate::proto::shape::message_of("", "v1", "Pod").unwrap();
        let mut pod = vm_pod(json!({"virtualMachine": {"name": "vm", "image": "i", "userDataa": "x",
                                                   "resources": {"limitz": {}}}}));
        let mut unknown = Vec::new();
        crate::proto::shape::prune_unknown_fields(&message, &mut pod, &mut unknown);
        assert_eq!(unknown, ["spec.virtualMachine.resources.limitz", "spec.virtualMachine.userDataa"]);
        let mut schemas = std::collections::BTreeMap::new();
        crate::proto::shape::openapi_schemas(&message, &mut schemas);
        let spec = &schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["virtualMachine"];
        assert_eq!(spec["$ref"], "#/components/schemas/io.atoll.api.core.v1.VirtualMachine");
        let vm = &schemas["io.atoll.api.core.v1.VirtualMachine"]["properties"];
        assert_eq!(vm["userData"]["type"], "string");
    }
}
