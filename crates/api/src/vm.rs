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
//!     sshAuthorizedKeys:         # optional: root's ~/.ssh/authorized_keys in the guest
//!     - ssh-ed25519 AAAAC3Nz... me@laptop
//!     passwordSecretRef:         # optional: root's password, from a Secret of the pod's
//!       name: vm-root            # namespace (the node hashes it; the guest gets the hash)
//!       key: password
//! ```
//!
//! A pod is either containers or one VM: `spec.containers` must then be empty or absent.

use serde_json::{Value, json};

use crate::meta::FieldError;

/// At most this many authorized keys, each at most [`MAX_KEY_BYTES`]: they travel to the
/// guest through fw_cfg beside the user data.
pub const MAX_AUTHORIZED_KEYS: usize = 32;
pub const MAX_KEY_BYTES: usize = 8 * 1024;

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

/// Field errors of the VM's credentials (`at` is the VM's path, `spec.virtualMachine`):
/// `sshAuthorizedKeys` must be one-line OpenSSH public keys (`type base64 [comment]`),
/// `passwordSecretRef` must name a Secret and a key in it.
pub fn validate_credentials(vm: &Value, at: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    match vm.get("sshAuthorizedKeys") {
        None | Some(Value::Null) => {}
        Some(Value::Array(keys)) => {
            if keys.len() > MAX_AUTHORIZED_KEYS {
                errors.push(FieldError::invalid(
                    format!("{at}.sshAuthorizedKeys"),
                    keys.len(),
                    format!("must have at most {MAX_AUTHORIZED_KEYS} keys"),
                ));
            }
            for (i, key) in keys.iter().enumerate() {
                let field = format!("{at}.sshAuthorizedKeys[{i}]");
                match key.as_str() {
                    Some(k) if k.len() > MAX_KEY_BYTES => errors.push(FieldError::invalid(
                        field,
                        "<value>",
                        format!("must be at most {MAX_KEY_BYTES} bytes"),
                    )),
                    Some(k) if !is_public_key(k) => errors.push(FieldError::invalid(
                        field,
                        k,
                        "must be one OpenSSH public key on one line: `<type> <base64> [comment]`",
                    )),
                    Some(_) => {}
                    None => errors.push(FieldError::invalid(field, key, "must be a string")),
                }
            }
        }
        Some(other) => {
            errors.push(FieldError::invalid(format!("{at}.sshAuthorizedKeys"), other, "must be a list of strings"))
        }
    }
    match vm.get("passwordSecretRef") {
        None | Some(Value::Null) => {}
        Some(Value::Object(r)) => {
            let field = |f: &str| format!("{at}.passwordSecretRef.{f}");
            match r.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()) {
                None => errors.push(FieldError::required(field("name"), "")),
                Some(n) if !is_dns_subdomain(n) => {
                    errors.push(FieldError::invalid(field("name"), n, "must be a DNS-1123 subdomain"))
                }
                Some(_) => {}
            }
            match r.get("key").and_then(Value::as_str).filter(|k| !k.is_empty()) {
                None => errors.push(FieldError::required(field("key"), "")),
                Some(k) if !is_secret_key(k) => errors.push(FieldError::invalid(
                    field("key"),
                    k,
                    "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                )),
                Some(_) => {}
            }
        }
        Some(other) => errors.push(FieldError::invalid(format!("{at}.passwordSecretRef"), other, "must be an object")),
    }
    errors
}

/// `<type> <base64> [comment]` on one line, with a key type OpenSSH knows the shape of.
fn is_public_key(k: &str) -> bool {
    if k.contains(['\n', '\r', '\0']) {
        return false;
    }
    let mut fields = k.split_whitespace();
    let (Some(kind), Some(blob)) = (fields.next(), fields.next()) else { return false };
    let known = kind.starts_with("ssh-") || kind.starts_with("ecdsa-sha2-") || kind.starts_with("sk-");
    known && blob.len() >= 16 && blob.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
}

fn is_secret_key(k: &str) -> bool {
    k.len() <= 253
        && k != "."
        && k != ".."
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(crate::request::is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_validated_field_by_field() {
        let ok = json!({"sshAuthorizedKeys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBx me@host"],
                        "passwordSecretRef": {"name": "vm-root", "key": "password"}});
        assert!(validate_credentials(&ok, "spec.virtualMachine").is_empty());
        let bad = json!({"sshAuthorizedKeys": ["ssh-rsa AAAAB3NzaC1yc2EAAAADAQAB\nssh-rsa x", "hello", 5],
                         "passwordSecretRef": {"key": "a/b"}});
        let fields: Vec<String> =
            validate_credentials(&bad, "spec.virtualMachine").into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "spec.virtualMachine.sshAuthorizedKeys[0]",
                "spec.virtualMachine.sshAuthorizedKeys[1]",
                "spec.virtualMachine.sshAuthorizedKeys[2]",
                "spec.virtualMachine.passwordSecretRef.name",
                "spec.virtualMachine.passwordSecretRef.key",
            ]
        );
        let shape = json!({"sshAuthorizedKeys": "ssh-rsa AAAA", "passwordSecretRef": "s"});
        assert_eq!(validate_credentials(&shape, "vm").len(), 2);
    }

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
