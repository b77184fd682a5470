//! VM pods: `spec.virtualMachine` (Atoll's addition to the Pod, after Arktos'), its
//! defaults and the per-VM overhead, stated once for the API server (which defaults and
//! validates), the scheduler (which counts) and the agent (which runs).
//!
//! ```yaml
//! spec:
//!   restartPolicy: Never
//!   virtualMachine:
//!     name: vm                   # the machine's "container" name in status and logs
//!     image: busybox-vm          # a VM image in the node's image store (kernel, initrd, disk)
//!     imagePullPolicy: Never     # optional, as for containers
//!     kernelCommandLine: "..."   # optional, appended to the runtime's own
//!     userData: |                # optional: a script the guest runs once it is up
//!       #!/bin/sh
//!       echo hello
//!     resources:                 # vCPUs (limits, else requests, rounded up) and memory
//!       limits: {cpu: "1", memory: 128Mi}
//! ```
//!
//! A pod is either containers or one VM: `spec.containers` must then be empty or absent.

use serde_json::{Value, json};

/// vCPUs of a VM that names none.
pub const DEFAULT_CPU: &str = "1";
/// Guest memory of a VM that names none.
pub const DEFAULT_MEMORY: &str = "128Mi";
/// What qemu itself needs beyond the guest's memory and vCPUs (its own heap, device
/// models, TCG's translation cache, which the runtime caps), added to the pod's
/// `spec.overhead` as RuntimeClass overhead is, so the scheduler counts it.
/// Measured: BENCHMARKS.md ("VM pods").
pub const OVERHEAD_MEMORY: &str = "160Mi";
pub const OVERHEAD_CPU: &str = "100m";
/// The TCG translation cache qemu is given (MiB); part of [`OVERHEAD_MEMORY`].
pub const TCG_CACHE_MIB: u32 = 64;

/// The RuntimeClass of VM-sandboxed container pods: an ordinary container pod with
/// `runtimeClassName: vm` runs inside a microVM (a built-in class; no other exists).
pub const RUNTIME_CLASS: &str = "vm";
/// A sandbox's guest memory when its container names no memory limit (MiB).
pub const SANDBOX_DEFAULT_MEMORY_MIB: u64 = 128;
/// Guest memory beyond the containers' (MiB): the guest kernel, the initramfs and the
/// guest agent, and the tmpfs upper layers of the containers' roots.
pub const SANDBOX_GUEST_HEADROOM_MIB: u64 = 64;
/// The sandbox's TCG translation cache (MiB): smaller than a VM pod's, the guest runs one
/// small userland (16 boots as fast as 32 here, and saves 16 MiB per sandbox).
pub const SANDBOX_TCG_CACHE_MIB: u32 = 16;
/// What a sandboxed pod costs beyond its containers' requests (the RuntimeClass overhead
/// admission adds to `spec.overhead`): the guest headroom plus qemu's own memory.
/// Measured: BENCHMARKS.md ("VM-sandboxed container pods").
pub const SANDBOX_OVERHEAD_MEMORY: &str = "160Mi";
pub const SANDBOX_OVERHEAD_CPU: &str = "100m";

/// Whether a pod asks for the VM sandbox (a container pod of runtime class `vm`).
pub fn is_sandboxed(spec: &Value) -> bool {
    !is_vm(spec) && spec.get("runtimeClassName").and_then(Value::as_str) == Some(RUNTIME_CLASS)
}

/// Whether a pod spec describes a VM.
pub fn is_vm(spec: &Value) -> bool {
    spec.get("virtualMachine").is_some_and(|v| !v.is_null())
}

/// Fills a VM pod's defaults: resources the VM names none of, and the overhead (unless the
/// client set one, which validation leaves to the caller as Kubernetes does for
/// RuntimeClass overhead it did not set).
pub fn apply_defaults(spec: &mut Value) {
    if !is_vm(spec) {
        return;
    }
    if let Some(vm) = spec.get_mut("virtualMachine").and_then(Value::as_object_mut) {
        let resources = vm.entry("resources").or_insert_with(|| json!({}));
        for (what, default) in [("cpu", DEFAULT_CPU), ("memory", DEFAULT_MEMORY)] {
            let named = resources.pointer(&format!("/limits/{what}")).is_some()
                || resources.pointer(&format!("/requests/{what}")).is_some();
            if !named && resources.is_object() {
                set_request(resources, what, default);
            }
        }
    }
    if spec.get("overhead").is_none_or(Value::is_null)
        && let Some(s) = spec.as_object_mut()
    {
        s.insert("overhead".into(), json!({"cpu": OVERHEAD_CPU, "memory": OVERHEAD_MEMORY}));
    }
}

fn set_request(resources: &mut Value, what: &str, value: &str) {
    if let Some(r) = resources.as_object_mut() {
        let requests = r.entry("requests").or_insert_with(|| json!({}));
        if let Some(m) = requests.as_object_mut() {
            m.insert(what.into(), json!(value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_resources_and_overhead_only_for_vms() {
        let mut spec = json!({"virtualMachine": {"name": "vm", "image": "busybox-vm",
                                                 "resources": {"limits": {"memory": "256Mi"}}}});
        apply_defaults(&mut spec);
        assert_eq!(spec["virtualMachine"]["resources"]["requests"], json!({"cpu": "1"}));
        assert_eq!(spec["virtualMachine"]["resources"]["limits"], json!({"memory": "256Mi"}));
        assert_eq!(spec["overhead"], json!({"cpu": OVERHEAD_CPU, "memory": OVERHEAD_MEMORY}));
        let mut plain = json!({"containers": [{"name": "c", "image": "busybox"}]});
        apply_defaults(&mut plain);
        assert!(plain.get("overhead").is_none());
    }
}
