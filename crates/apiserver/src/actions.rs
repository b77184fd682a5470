//! `atoll.io/v1` Action: one operation on one pod, run once by the agent of the pod's node
//! (Arktos' actions, narrowed to what our runtimes do).
//!
//! ```yaml
//! apiVersion: atoll.io/v1
//! kind: Action
//! metadata: {name: snap-1, namespace: default}
//! spec:
//!   podName: vm1              # a pod in the Action's own tenant and namespace
//!   operation: Snapshot       # Reboot | Snapshot | Restore (VM pods), Restart (any pod)
//!   snapshotName: before      # Snapshot and Restore only: a DNS label
//!   nodeName: n1              # set by the server from the pod at creation, never by clients
//! status:                     # written by the pod's node through the status subresource
//!   phase: Succeeded          # Pending | Running | Succeeded | Failed
//!   startTime: ...
//!   completionTime: ...
//!   message: ...
//! ```
//!
//! The spec is immutable. Whether the operation fits the pod (a Snapshot of a container
//! pod) is the agent's call: it fails the Action with a message, as only the node knows
//! the pod's runtime for sure.
//!
//! Admission ([`admit_create`], called from the request pipeline's create paths): acting
//! on a pod needs `get` on that pod besides `create` on actions, checked with the caller's
//! own RBAC before anything is read, so a caller without it gets the same 403 whether the
//! pod exists or not (as Kubernetes' authorizer runs before storage). The pod is then read
//! in the Action's own tenant and namespace only: a pod of another tenant is never found
//! (404, the same answer as for a pod that does not exist). A pod not yet bound to a node
//! is refused (422): no agent would ever pick the Action up.

// Errors are the Kubernetes Status a request answers with, as in the request pipeline.
#![allow(clippy::result_large_err)]

use api::json::At;
use api::meta::{FieldError, FieldErrorKind, Status};
use serde_json::{Value, json};

use crate::registry::{ResourceInfo, Strategy};

pub const GROUP: &str = "atoll.io";
pub const RESOURCE: &str = "actions";
/// The operations, in the order error messages list them.
pub const OPERATIONS: &[&str] = &["Reboot", "Snapshot", "Restore", "Restart"];
const SPEC_FIELDS: &[&str] = &["podName", "operation", "snapshotName", "nodeName"];
const STATUS_FIELDS: &[&str] = &["phase", "startTime", "completionTime", "message"];
const PHASES: &[&str] = &["Pending", "Running", "Succeeded", "Failed"];

pub struct ActionKind {
    info: ResourceInfo,
    columns: Vec<Value>,
}

impl ActionKind {
    pub fn new() -> ActionKind {
        ActionKind {
            info: ResourceInfo {
                group: GROUP.into(),
                version: "v1".into(),
                kind: "Action".into(),
                resource: RESOURCE.into(),
                namespaced: true,
                status_subresource: true,
                scale_subresource: false,
                storage: None,
                short_names: Vec::new(),
                categories: Vec::new(),
                custom: false,
            },
            columns: vec![
                json!({"name": "Pod", "type": "string", "jsonPath": ".spec.podName"}),
                json!({"name": "Operation", "type": "string", "jsonPath": ".spec.operation"}),
                json!({"name": "Phase", "type": "string", "jsonPath": ".status.phase"}),
                json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}),
            ],
        }
    }
}

impl Default for ActionKind {
    fn default() -> Self {
        ActionKind::new()
    }
}

fn text<'a>(obj: &'a Value, pointer: &str) -> Option<&'a str> {
    obj.at(pointer).and_then(Value::as_str)
}

impl Strategy for ActionKind {
    fn info(&self) -> &ResourceInfo {
        &self.info
    }
    /// A new Action starts Pending, whatever status a client sent.
    fn prepare_for_create(&self, obj: &mut Value) {
        if let Some(map) = obj.as_object_mut() {
            map.insert("status".into(), json!({"phase": "Pending"}));
        }
    }
    fn validate(&self, obj: &Value) -> Vec<FieldError> {
        validate(obj)
    }
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if new.get("spec") != old.get("spec") {
            errors.push(FieldError::forbidden("spec", "an Action's spec is immutable"));
        }
        if let Some(phase) = text(new, "/status/phase")
            && !PHASES.contains(&phase)
        {
            errors.push(FieldError {
                field: "status.phase".into(),
                kind: FieldErrorKind::NotSupported(phase.into(), PHASES.iter().map(|p| p.to_string()).collect()),
                detail: String::new(),
            });
        }
        errors
    }
    fn selectable_fields(&self) -> &[&str] {
        &["spec.nodeName", "spec.podName", "spec.operation", "status.phase"]
    }
    fn top_level_fields(&self) -> Option<&[&str]> {
        Some(&["spec", "status"])
    }
    fn prune_unknown_fields(&self, obj: &mut Value) -> Option<Vec<String>> {
        let mut unknown = Vec::new();
        for (top, known) in [("spec", SPEC_FIELDS), ("status", STATUS_FIELDS)] {
            if let Some(map) = obj.get_mut(top).and_then(Value::as_object_mut) {
                map.retain(|k, _| {
                    let ours = known.contains(&k.as_str());
                    if !ours {
                        unknown.push(format!("{top}.{k}"));
                    }
                    ours
                });
            }
        }
        if let Some(map) = obj.as_object_mut() {
            let tops = ["apiVersion", "kind", "metadata", "spec", "status"];
            map.retain(|k, _| {
                let ours = tops.contains(&k.as_str());
                if !ours {
                    unknown.push(k.clone());
                }
                ours
            });
        }
        Some(unknown)
    }
    fn printer_columns(&self) -> Option<&[Value]> {
        Some(&self.columns)
    }
}

/// Every field error of an Action's spec.
pub fn validate(obj: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let Some(spec) = obj.get("spec").and_then(Value::as_object) else {
        return vec![FieldError::required("spec", "an Action names a pod and an operation")];
    };
    match spec.get("podName") {
        None | Some(Value::Null) => errors.push(FieldError::required("spec.podName", "the pod to act on")),
        Some(Value::String(p)) if crate::registry::is_dns_subdomain(p) => {}
        Some(other) => errors.push(FieldError::invalid("spec.podName", other, "must be a pod's name")),
    }
    let operation = spec.get("operation").and_then(Value::as_str);
    match spec.get("operation") {
        None | Some(Value::Null) => errors.push(FieldError::required("spec.operation", "")),
        Some(Value::String(op)) if OPERATIONS.contains(&op.as_str()) => {}
        Some(other) => errors.push(FieldError {
            field: "spec.operation".into(),
            kind: FieldErrorKind::NotSupported(
                other.as_str().map_or_else(|| other.to_string(), str::to_string),
                OPERATIONS.iter().map(|o| o.to_string()).collect(),
            ),
            detail: String::new(),
        }),
    }
    let needs_snapshot = matches!(operation, Some("Snapshot" | "Restore"));
    match (spec.get("snapshotName"), needs_snapshot) {
        (None | Some(Value::Null), true) => {
            errors.push(FieldError::required("spec.snapshotName", "Snapshot and Restore name a snapshot"))
        }
        (Some(Value::String(s)), true) if api::request::is_dns_label(s) => {}
        (Some(other), true) => {
            errors.push(FieldError::invalid("spec.snapshotName", other, "a snapshot name must be a DNS-1123 label"))
        }
        (Some(v), false) if !v.is_null() => {
            errors.push(FieldError::forbidden("spec.snapshotName", "only Snapshot and Restore name a snapshot"))
        }
        _ => {}
    }
    if let Some(v) = spec.get("nodeName").filter(|v| !v.is_null() && !v.is_string()) {
        errors.push(FieldError::invalid("spec.nodeName", v, "must be a string"));
    }
    errors
}

/// What admission needs from the request pipeline: whether the caller may `get` the pod
/// (decided by the caller's own RBAC, before any read), and the pod as read in the
/// Action's tenant and namespace.
pub trait PodAccess {
    fn may_get_pod(&self, pod: &str) -> Result<(), Status>;
    fn pod(&self, pod: &str) -> impl std::future::Future<Output = Result<Value, Status>> + Send;
}

/// Checks a new Action (or an apply that creates one) and sets `spec.nodeName` from its
/// pod. Shape errors are left to validation (422 with every field), so only an Action
/// that names a pod is looked at here.
pub async fn admit_create(obj: &mut Value, access: &impl PodAccess) -> Result<(), Status> {
    let Some(pod_name) = text(obj, "/spec/podName").map(str::to_string) else { return Ok(()) };
    if !crate::registry::is_dns_subdomain(&pod_name) {
        return Ok(());
    }
    access.may_get_pod(&pod_name)?;
    let pod = access.pod(&pod_name).await?;
    let name = text(obj, "/metadata/name").unwrap_or("").to_string();
    let node = text(&pod, "/spec/nodeName").unwrap_or("").to_string();
    if node.is_empty() {
        return Err(Status::invalid(
            GROUP,
            "Action",
            &name,
            &[FieldError::invalid("spec.podName", &pod_name, "the pod is not bound to a node yet")],
        ));
    }
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        spec.insert("nodeName".into(), json!(node));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(spec: Value) -> Value {
        json!({"apiVersion": "atoll.io/v1", "kind": "Action", "metadata": {"name": "a", "namespace": "default"},
               "spec": spec})
    }

    fn fields(errors: &[FieldError]) -> Vec<String> {
        errors.iter().map(|e| e.field.clone()).collect()
    }

    #[test]
    fn spec_rules_name_every_wrong_field() {
        let ok = [
            json!({"podName": "vm1", "operation": "Snapshot", "snapshotName": "before"}),
            json!({"podName": "vm1", "operation": "Restore", "snapshotName": "before"}),
            json!({"podName": "vm1", "operation": "Reboot"}),
            json!({"podName": "web", "operation": "Restart"}),
        ];
        for spec in ok {
            assert_eq!(validate(&action(spec.clone())), vec![], "{spec}");
        }
        let cases = [
            (json!({}), vec!["spec.podName", "spec.operation"]),
            (json!({"podName": "Bad_Name", "operation": "Explode"}), vec!["spec.podName", "spec.operation"]),
            (json!({"podName": "vm1", "operation": "Snapshot"}), vec!["spec.snapshotName"]),
            (
                json!({"podName": "vm1", "operation": "Restore", "snapshotName": "Not.A.Label"}),
                vec!["spec.snapshotName"],
            ),
            (json!({"podName": "vm1", "operation": "Reboot", "snapshotName": "x"}), vec!["spec.snapshotName"]),
            (json!({"podName": "vm1", "operation": 3}), vec!["spec.operation"]),
        ];
        for (spec, want) in cases {
            assert_eq!(fields(&validate(&action(spec.clone()))), want, "{spec}");
        }
        assert_eq!(fields(&validate(&json!({"metadata": {"name": "a"}}))), ["spec"]);
    }

    #[test]
    fn the_spec_is_immutable_and_phases_are_closed() {
        let k = ActionKind::new();
        let old = action(json!({"podName": "vm1", "operation": "Reboot", "nodeName": "n1"}));
        let mut new = old.clone();
        new["spec"]["operation"] = json!("Restart");
        assert_eq!(fields(&k.validate_update(&new, &old)), ["spec"]);
        let mut done = old.clone();
        done["status"] = json!({"phase": "Succeeded", "message": "rebooted"});
        assert_eq!(k.validate_update(&done, &old), vec![]);
        done["status"]["phase"] = json!("Exploded");
        assert_eq!(fields(&k.validate_update(&done, &old)), ["status.phase"]);
    }

    #[test]
    fn a_new_action_starts_pending_and_unknown_fields_are_named() {
        let k = ActionKind::new();
        let mut a = action(json!({"podName": "vm1", "operation": "Reboot"}));
        a["status"] = json!({"phase": "Succeeded"});
        k.prepare_for_create(&mut a);
        assert_eq!(a["status"], json!({"phase": "Pending"}));
        a["spec"]["podNme"] = json!("x");
        a["extra"] = json!(1);
        assert_eq!(k.prune_unknown_fields(&mut a), Some(vec!["spec.podNme".to_string(), "extra".to_string()]));
        assert!(a["spec"].get("podNme").is_none() && a.get("extra").is_none(), "{a}");
        assert_eq!(a["spec"]["podName"], "vm1");
    }

    struct Fake {
        allowed: bool,
        pod: Option<Value>,
    }

    impl PodAccess for Fake {
        fn may_get_pod(&self, pod: &str) -> Result<(), Status> {
            if self.allowed { Ok(()) } else { Err(Status::forbidden("bob", "get", "", "pods", pod, Some("default"))) }
        }
        async fn pod(&self, pod: &str) -> Result<Value, Status> {
            self.pod.clone().ok_or_else(|| Status::not_found("", "pods", pod))
        }
    }

    #[tokio::test]
    async fn admission_needs_get_on_the_pod_and_takes_its_node() {
        let spec = json!({"podName": "vm1", "operation": "Reboot", "nodeName": "forged"});
        let bound = Some(json!({"spec": {"nodeName": "n1"}}));
        let mut a = action(spec.clone());
        admit_create(&mut a, &Fake { allowed: true, pod: bound.clone() }).await.unwrap();
        assert_eq!(a["spec"]["nodeName"], "n1", "the node comes from the pod, never from the client");
        // Refused before the pod is looked at: the same 403 whether it exists or not.
        for pod in [bound, None] {
            let err = admit_create(&mut action(spec.clone()), &Fake { allowed: false, pod }).await.unwrap_err();
            assert_eq!(err.code, 403);
        }
        let err = admit_create(&mut action(spec.clone()), &Fake { allowed: true, pod: None }).await.unwrap_err();
        assert_eq!(err.code, 404);
        let unbound = Some(json!({"spec": {}}));
        let err = admit_create(&mut action(spec), &Fake { allowed: true, pod: unbound }).await.unwrap_err();
        assert_eq!(err.code, 422);
    }
}
