//! Pod sandboxing at admission, before a pod is stored:
//!
//! - RuntimeClass admission for the one built-in class: `runtimeClassName` must name
//!   [`api::vm::RUNTIME_CLASS`] (there is no RuntimeClass kind to look classes up in, so an
//!   unknown name is refused with 403 as Kubernetes refuses a missing class), and a
//!   sandboxed pod gets the class's overhead in `spec.overhead` (the guest's headroom and
//!   qemu), so the scheduler counts it.
//! - Tenant-forced sandboxing: a Tenant with `spec.podSandbox: vm` gets every container
//!   pod sandboxed: an unset class is set to `vm`, any other class is refused (403). Only
//!   those who may write Tenant objects (system administrators; tenant admins have no
//!   rights on Tenant objects) can set or clear the field.

use api::json::At;
use serde_json::{Value, json};

/// The Tenant field that forces sandboxing.
pub const TENANT_FIELD: &str = "podSandbox";

/// Defaults and checks a new pod in a tenant whose Tenant object is `tenant` (`None` for
/// `system`, which has none). `Err` holds the reason for a 403.
pub fn admit_pod(tenant: Option<&Value>, pod: &mut Value) -> Result<(), String> {
    let name = pod.at("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else { return Ok(()) };
    let vm_pod = spec.get("virtualMachine").is_some_and(|v| !v.is_null());
    let class = spec.get("runtimeClassName").and_then(Value::as_str).filter(|c| !c.is_empty()).map(str::to_string);
    let forced = tenant.and_then(|t| t.at(&format!("/spec/{TENANT_FIELD}"))).and_then(Value::as_str)
        == Some(api::vm::RUNTIME_CLASS);
    let class = match class {
        Some(c) if c != api::vm::RUNTIME_CLASS => {
            if forced {
                return Err(format!(
                    "pod {name:?} asks for runtimeClassName {c:?}, but its tenant requires every pod to run in a VM \
                     sandbox (runtimeClassName {:?})",
                    api::vm::RUNTIME_CLASS
                ));
            }
            return Err(format!("pod rejected: RuntimeClass {c:?} not found"));
        }
        Some(c) => Some(c),
        // A VM pod is its own machine already.
        None if forced && !vm_pod => {
            spec.insert("runtimeClassName".into(), json!(api::vm::RUNTIME_CLASS));
            Some(api::vm::RUNTIME_CLASS.to_string())
        }
        None => None,
    };
    if class.is_some() && !vm_pod && spec.get("overhead").is_none_or(Value::is_null) {
        spec.insert(
            "overhead".into(),
            json!({"cpu": api::vm::SANDBOX_OVERHEAD_CPU, "memory": api::vm::SANDBOX_OVERHEAD_MEMORY}),
        );
    }
    Ok(())
}

/// `spec.podSandbox` of a Tenant: absent, empty or `vm`.
pub fn validate_tenant_field(tenant: &Value) -> Option<String> {
    match tenant.at(&format!("/spec/{TENANT_FIELD}")) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() || s == api::vm::RUNTIME_CLASS => None,
        Some(other) => Some(format!("must be \"\" or {:?}, not {other}", api::vm::RUNTIME_CLASS)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(class: Option<&str>) -> Value {
        let mut p = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
        if let Some(c) = class {
            p["spec"]["runtimeClassName"] = json!(c);
        }
        p
    }

    #[test]
    fn the_vm_class_gets_its_overhead_and_unknown_classes_are_refused() {
        let mut p = pod(Some("vm"));
        admit_pod(None, &mut p).unwrap();
        assert_eq!(p["spec"]["overhead"]["memory"], api::vm::SANDBOX_OVERHEAD_MEMORY);
        let mut plain = pod(None);
        admit_pod(None, &mut plain).unwrap();
        assert!(plain["spec"].get("overhead").is_none() && plain["spec"].get("runtimeClassName").is_none());
        let err = admit_pod(None, &mut pod(Some("gvisor"))).unwrap_err();
        assert_eq!(err, "pod rejected: RuntimeClass \"gvisor\" not found");
    }

    #[test]
    fn a_forcing_tenant_sandboxes_every_container_pod() {
        let tenant = json!({"spec": {"podSandbox": "vm"}});
        let mut p = pod(None);
        admit_pod(Some(&tenant), &mut p).unwrap();
        assert_eq!(p["spec"]["runtimeClassName"], "vm");
        assert!(p["spec"]["overhead"].is_object());
        let err = admit_pod(Some(&tenant), &mut pod(Some("runc"))).unwrap_err();
        assert!(err.contains("requires every pod to run in a VM"), "{err}");
        // A VM pod stays what it is.
        let mut vm = json!({"metadata": {"name": "v"}, "spec": {"virtualMachine": {"image": "busybox-vm"}}});
        admit_pod(Some(&tenant), &mut vm).unwrap();
        assert!(vm["spec"].get("runtimeClassName").is_none());
        assert!(validate_tenant_field(&tenant).is_none());
        assert!(validate_tenant_field(&json!({"spec": {"podSandbox": "none"}})).is_some());
    }
}
