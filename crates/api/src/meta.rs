//! Object metadata and the `Status` error object, as on the Kubernetes wire, plus Atoll's
//! `metadata.tenant`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerReference {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_owner_deletion: Option<bool>,
}

/// `metadata` of every object. `tenant` is Atoll's: set by the server, never by a client.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_grace_period_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_references: Option<Vec<OwnerReference>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finalizers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_fields: Option<Vec<serde_json::Value>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    #[serde(rename = "continue", default, skip_serializing_if = "Option::is_none")]
    pub continue_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_item_count: Option<i64>,
}

/// Why one field is wrong; the variants are Kubernetes' field error types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldErrorKind {
    Required,
    Invalid(String),
    NotSupported(String, Vec<String>),
    Duplicate(String),
    Forbidden,
    TooLong(usize),
    NotFound(String),
    TypeInvalid(String),
}

/// One invalid field: its path (`spec.containers[0].image`), what is wrong, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub kind: FieldErrorKind,
    pub detail: String,
}

impl FieldError {
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldError { field: field.into(), kind: FieldErrorKind::Required, detail: detail.into() }
    }
    pub fn invalid(field: impl Into<String>, value: impl fmt::Display, detail: impl Into<String>) -> Self {
        FieldError { field: field.into(), kind: FieldErrorKind::Invalid(value.to_string()), detail: detail.into() }
    }
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldError { field: field.into(), kind: FieldErrorKind::Forbidden, detail: detail.into() }
    }

    fn reason(&self) -> &'static str {
        match self.kind {
            FieldErrorKind::Required => "FieldValueRequired",
            FieldErrorKind::Invalid(_) => "FieldValueInvalid",
            FieldErrorKind::NotSupported(..) => "FieldValueNotSupported",
            FieldErrorKind::Duplicate(_) => "FieldValueDuplicate",
            FieldErrorKind::Forbidden => "FieldValueForbidden",
            FieldErrorKind::TooLong(_) => "FieldValueTooLong",
            FieldErrorKind::NotFound(_) => "FieldValueNotFound",
            FieldErrorKind::TypeInvalid(_) => "FieldValueTypeInvalid",
        }
    }

    /// The message without the field path, as in a `StatusCause`.
    fn cause_message(&self) -> String {
        let head = match &self.kind {
            FieldErrorKind::Required => "Required value".to_string(),
            FieldErrorKind::Invalid(v) => format!("Invalid value: {v:?}"),
            FieldErrorKind::NotSupported(v, allowed) => {
                let allowed: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
                format!("Unsupported value: {v:?}: supported values: {}", allowed.join(", "))
            }
            FieldErrorKind::Duplicate(v) => format!("Duplicate value: {v:?}"),
            FieldErrorKind::Forbidden => "Forbidden".to_string(),
            FieldErrorKind::TooLong(max) => format!("Too long: may not be more than {max} bytes"),
            FieldErrorKind::NotFound(v) => format!("Not found: {v:?}"),
            FieldErrorKind::TypeInvalid(v) => format!("Invalid value: {v:?}"),
        };
        if self.detail.is_empty() { head } else { format!("{head}: {}", self.detail) }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.cause_message())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusCause {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub field: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusDetails {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<StatusCause>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u32>,
}

/// The Kubernetes `Status` object: every error the API returns, and some successes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub kind: String,
    pub api_version: String,
    pub metadata: ListMeta,
    pub status: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<StatusDetails>,
    pub code: u16,
}

/// A resource as named in error messages: `pods` or `deployments.apps`.
fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() { resource.to_string() } else { format!("{resource}.{group}") }
}

impl Status {
    pub fn failure(code: u16, reason: &str, message: impl Into<String>) -> Status {
        Status {
            kind: "Status".into(),
            api_version: "v1".into(),
            metadata: ListMeta::default(),
            status: "Failure".into(),
            message: message.into(),
            reason: reason.into(),
            details: None,
            code,
        }
    }

    pub fn success() -> Status {
        Status { status: "Success".into(), reason: String::new(), ..Status::failure(200, "", "") }
    }

    fn with_details(mut self, group: &str, kind: &str, name: &str) -> Status {
        self.details = Some(StatusDetails {
            name: name.into(),
            group: group.into(),
            kind: kind.into(),
            ..StatusDetails::default()
        });
        self
    }

    pub fn not_found(group: &str, resource: &str, name: &str) -> Status {
        Status::failure(404, "NotFound", format!("{} {name:?} not found", qualified(group, resource)))
            .with_details(group, resource, name)
    }

    pub fn already_exists(group: &str, resource: &str, name: &str) -> Status {
        Status::failure(409, "AlreadyExists", format!("{} {name:?} already exists", qualified(group, resource)))
            .with_details(group, resource, name)
    }

    pub fn conflict(group: &str, resource: &str, name: &str, why: &str) -> Status {
        let message = format!("Operation cannot be fulfilled on {} {name:?}: {why}", qualified(group, resource));
        Status::failure(409, "Conflict", message).with_details(group, resource, name)
    }

    /// 422 with every field error as a cause. `kind` is the object's kind (`Pod`).
    pub fn invalid(group: &str, kind: &str, name: &str, errors: &[FieldError]) -> Status {
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let summary = if list.len() == 1 { list[0].clone() } else { format!("[{}]", list.join(", ")) };
        let mut status = Status::failure(422, "Invalid", format!("{kind} {name:?} is invalid: {summary}"))
            .with_details(group, kind, name);
        if let Some(details) = status.details.as_mut() {
            details.causes = errors
                .iter()
                .map(|e| StatusCause { reason: e.reason().into(), message: e.cause_message(), field: e.field.clone() })
                .collect();
        }
        status
    }

    pub fn bad_request(message: impl Into<String>) -> Status {
        Status::failure(400, "BadRequest", message)
    }

    pub fn unauthorized() -> Status {
        Status::failure(401, "Unauthorized", "Unauthorized")
    }

    /// 403 in Kubernetes' wording; `namespace` is `None` for cluster-scoped requests.
    pub fn forbidden(
        user: &str,
        verb: &str,
        group: &str,
        resource: &str,
        name: &str,
        namespace: Option<&str>,
    ) -> Status {
        let mut message = format!(
            "{}{} is forbidden: User {user:?} cannot {verb} resource {resource:?} in API group {group:?}",
            qualified(group, resource),
            if name.is_empty() { String::new() } else { format!(" {name:?}") },
        );
        match namespace {
            Some(ns) => message.push_str(&format!(" in the namespace {ns:?}")),
            None => message.push_str(" at the cluster scope"),
        }
        Status::failure(403, "Forbidden", message).with_details(group, resource, name)
    }

    /// 403 from admission, in Kubernetes' wording: `pods "x" is forbidden: <why>`.
    pub fn forbidden_because(group: &str, resource: &str, name: &str, why: &str) -> Status {
        Status::failure(403, "Forbidden", format!("{} {name:?} is forbidden: {why}", qualified(group, resource)))
            .with_details(group, resource, name)
    }

    pub fn method_not_allowed() -> Status {
        Status::failure(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
    }

    /// 410: a watch or list from a resource version that has been compacted.
    pub fn expired(message: impl Into<String>) -> Status {
        Status::failure(410, "Expired", message)
    }

    pub fn request_entity_too_large(message: impl Into<String>) -> Status {
        Status::failure(413, "RequestEntityTooLarge", message)
    }

    pub fn unsupported_media_type(content_type: &str) -> Status {
        Status::failure(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format: {content_type}"),
        )
    }

    pub fn too_many_requests(message: impl Into<String>, retry_after_seconds: u32) -> Status {
        let mut status = Status::failure(429, "TooManyRequests", message);
        status.details =
            Some(StatusDetails { retry_after_seconds: Some(retry_after_seconds), ..StatusDetails::default() });
        status
    }

    pub fn internal(message: impl Into<String>) -> Status {
        Status::failure(500, "InternalError", format!("Internal error occurred: {}", message.into()))
    }

    pub fn service_unavailable(message: impl Into<String>) -> Status {
        Status::failure(503, "ServiceUnavailable", message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_serialize_as_kubernetes_does() {
        let s = serde_json::to_value(Status::not_found("apps", "deployments", "web")).unwrap();
        assert_eq!(
            s,
            serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "deployments.apps \"web\" not found", "reason": "NotFound",
                "details": {"name": "web", "group": "apps", "kind": "deployments"}, "code": 404
            })
        );
        let f = Status::forbidden("alice", "list", "", "pods", "", Some("default"));
        assert_eq!(
            f.message,
            "pods is forbidden: User \"alice\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        );
        assert_eq!(f.code, 403);
    }

    #[test]
    fn invalid_lists_every_field_error() {
        let errors = [
            FieldError::required("metadata.name", "name or generateName is required"),
            FieldError::invalid("metadata.labels", "-x", "must start with an alphanumeric character"),
        ];
        let s = Status::invalid("", "Pod", "", &errors);
        assert_eq!(s.code, 422);
        assert_eq!(
            s.message,
            "Pod \"\" is invalid: [metadata.name: Required value: name or generateName is required, \
             metadata.labels: Invalid value: \"-x\": must start with an alphanumeric character]"
        );
        let causes = &s.details.as_ref().unwrap().causes;
        assert_eq!(causes.len(), 2);
        assert_eq!(causes[0].reason, "FieldValueRequired");
        assert_eq!(causes[1].field, "metadata.labels");
    }

    #[test]
    fn object_meta_round_trips_with_tenant() {
        let json = serde_json::json!({
            "name": "p", "namespace": "default", "tenant": "acme", "resourceVersion": "12",
            "labels": {"app": "web"}, "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u", "controller": true}]
        });
        let meta: ObjectMeta = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(meta.tenant.as_deref(), Some("acme"));
        assert_eq!(serde_json::to_value(&meta).unwrap(), json);
    }
}
