//! The request side of field management: who is writing (`fieldManager`, or the
//! User-Agent's product as Kubernetes derives it), `force`, and apply bodies in YAML.

// These answer the HTTP layer with a `Status` to send, as `http.rs` does.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;

use api::meta::{FieldError, FieldErrorKind, Status};
use serde_json::Value;

/// The content type of a server-side apply patch.
pub const APPLY_PATCH: &str = "application/apply-patch+yaml";

/// Kubernetes' limit on a field manager's length.
const MAX_MANAGER: usize = 128;

/// 422 for bad write options, worded as Kubernetes words them (`PatchOptions.meta.k8s.io
/// "" is invalid: ...`).
fn invalid_options(kind: &str, errors: &[FieldError]) -> Status {
    let mut status = Status::invalid("meta.k8s.io", kind, "", errors);
    if let Some(rest) = status.message.strip_prefix(kind) {
        status.message = format!("{kind}.meta.k8s.io{rest}");
    }
    status
}

/// The manager a write is recorded under, and whether an apply is forced. `kind` names the
/// options (`CreateOptions`, `UpdateOptions`, `PatchOptions`) for error messages; `apply`:
/// the request is a server-side apply, which must name its manager and alone may force.
pub fn write_manager(
    q: &BTreeMap<String, String>,
    user_agent: Option<&str>,
    kind: &str,
    apply: bool,
) -> Result<(String, bool), Status> {
    let mut errors = Vec::new();
    let given = q.get("fieldManager").filter(|m| !m.is_empty());
    if let Some(m) = given {
        if m.chars().count() > MAX_MANAGER {
            errors.push(FieldError {
                field: "fieldManager".into(),
                kind: FieldErrorKind::TooLong(MAX_MANAGER),
                detail: String::new(),
            });
        } else if m.chars().any(char::is_control) {
            errors.push(FieldError::invalid("fieldManager", m, "must only contain printable characters"));
        }
    } else if apply {
        errors.push(FieldError::required("fieldManager", "is required for apply patch"));
    }
    let force = match q.get("force").map(String::as_str) {
        None => None,
        Some("true" | "1" | "True") => Some(true),
        Some("false" | "0" | "False" | "") => Some(false),
        Some(other) => return Err(Status::bad_request(format!("invalid force {other:?}"))),
    };
    if force.is_some() && !apply {
        errors.push(FieldError::forbidden("force", "may not be specified for non-apply patch"));
    }
    if !errors.is_empty() {
        return Err(invalid_options(kind, &errors));
    }
    let manager = match given {
        Some(m) => m.clone(),
        None => from_user_agent(user_agent.unwrap_or("")),
    };
    Ok((manager, force.unwrap_or(false)))
}

/// `kubectl/v1.33.0 (linux/amd64) kubernetes/abc` → `kubectl`: the part before the first
/// `/`, printable characters only, at most 128 of them.
pub fn from_user_agent(user_agent: &str) -> String {
    let product = user_agent.split('/').next().unwrap_or("");
    product.chars().filter(|c| !c.is_control()).take(MAX_MANAGER).collect()
}

/// An apply body: YAML (JSON being YAML too), one document, a map.
pub fn parse_apply_body(bytes: &[u8]) -> Result<Value, Status> {
    let value: Value =
        serde_yaml_ng::from_slice(bytes).map_err(|e| Status::bad_request(format!("error decoding YAML: {e}")))?;
    if !value.is_object() {
        return Err(Status::bad_request("the apply patch must be a YAML or JSON object"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn managers_come_from_the_parameter_or_the_user_agent() {
        let ua = Some("kubectl/v1.33.0 (linux/amd64) kubernetes/abc");
        assert_eq!(write_manager(&q(&[]), ua, "CreateOptions", false).unwrap(), ("kubectl".into(), false));
        assert_eq!(write_manager(&q(&[("fieldManager", "me")]), ua, "CreateOptions", false).unwrap().0, "me");
        assert_eq!(from_user_agent("OpenAPI-Generator/31.0.0/python"), "OpenAPI-Generator");
        assert_eq!(from_user_agent(&"x".repeat(300)).len(), 128);
    }

    #[test]
    fn apply_needs_a_manager_and_only_apply_may_force() {
        let err = write_manager(&q(&[]), None, "PatchOptions", true).unwrap_err();
        assert_eq!(err.code, 422);
        assert_eq!(
            err.message,
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"
        );
        let err = write_manager(&q(&[("force", "true")]), None, "PatchOptions", false).unwrap_err();
        assert!(err.message.contains("force: Forbidden: may not be specified for non-apply patch"), "{}", err.message);
        let ok = write_manager(&q(&[("fieldManager", "m"), ("force", "true")]), None, "PatchOptions", true);
        assert_eq!(ok.unwrap(), ("m".into(), true));
        let long = "m".repeat(129);
        let err = write_manager(&q(&[("fieldManager", &long)]), None, "PatchOptions", true).unwrap_err();
        assert!(err.message.contains("Too long"), "{}", err.message);
        assert_eq!(write_manager(&q(&[("force", "maybe")]), None, "PatchOptions", true).unwrap_err().code, 400);
    }

    #[test]
    fn apply_bodies_are_yaml_or_json() {
        let yaml = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  k: \"1\"\n";
        assert_eq!(parse_apply_body(yaml).unwrap()["data"]["k"], "1");
        assert_eq!(parse_apply_body(br#"{"kind":"ConfigMap","data":{"k":"1"}}"#).unwrap()["kind"], "ConfigMap");
        assert_eq!(parse_apply_body(b"- a\n- b\n").unwrap_err().code, 400);
        assert_eq!(parse_apply_body(b"a: [\n").unwrap_err().code, 400);
        assert_eq!(parse_apply_body(b"a: 1\n---\nb: 2\n").unwrap_err().code, 400);
        // Aliases that expand without bound are refused, not expanded.
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            bomb.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        assert_eq!(parse_apply_body(bomb.as_bytes()).unwrap_err().code, 400);
    }
}
