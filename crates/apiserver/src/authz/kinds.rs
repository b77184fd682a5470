//! The RBAC kinds (`rbac.authorization.k8s.io/v1`) and the access-review kinds
//! (`authorization.k8s.io/v1`, `authentication.k8s.io/v1`) as registry strategies, with
//! Kubernetes' validation.

use api::meta::{FieldError, FieldErrorKind};
use serde_json::Value;

use crate::registry::{ResourceInfo, Strategy};

pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
pub const AUTHORIZATION_GROUP: &str = "authorization.k8s.io";
pub const AUTHENTICATION_GROUP: &str = "authentication.k8s.io";

/// Which RBAC kind a strategy serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RbacKind {
    Role,
    ClusterRole,
    RoleBinding,
    ClusterRoleBinding,
}

impl RbacKind {
    pub const ALL: [RbacKind; 4] =
        [RbacKind::Role, RbacKind::ClusterRole, RbacKind::RoleBinding, RbacKind::ClusterRoleBinding];

    pub fn resource(self) -> &'static str {
        match self {
            RbacKind::Role => "roles",
            RbacKind::ClusterRole => "clusterroles",
            RbacKind::RoleBinding => "rolebindings",
            RbacKind::ClusterRoleBinding => "clusterrolebindings",
        }
    }

    pub fn of_resource(resource: &str) -> Option<RbacKind> {
        RbacKind::ALL.into_iter().find(|k| k.resource() == resource)
    }

    fn kind(self) -> &'static str {
        match self {
            RbacKind::Role => "Role",
            RbacKind::ClusterRole => "ClusterRole",
            RbacKind::RoleBinding => "RoleBinding",
            RbacKind::ClusterRoleBinding => "ClusterRoleBinding",
        }
    }

    pub fn namespaced(self) -> bool {
        matches!(self, RbacKind::Role | RbacKind::RoleBinding)
    }

    pub fn is_binding(self) -> bool {
        matches!(self, RbacKind::RoleBinding | RbacKind::ClusterRoleBinding)
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

pub struct RbacStrategy {
    kind: RbacKind,
    info: ResourceInfo,
}

fn info(group: &str, version: &str, kind: &str, resource: &str, namespaced: bool) -> ResourceInfo {
    ResourceInfo {
        group: group.into(),
        version: version.into(),
        kind: kind.into(),
        resource: resource.into(),
        namespaced,
        status_subresource: false,
        scale_subresource: false,
        storage: None,
        // Kubernetes gives the RBAC and review kinds no short names.
        short_names: Vec::new(),
        categories: Vec::new(),
        custom: false,
    }
}

/// The four RBAC kinds' strategies.
pub fn rbac_strategies() -> Vec<RbacStrategy> {
    RbacKind::ALL
        .into_iter()
        .map(|k| RbacStrategy { kind: k, info: info(RBAC_GROUP, "v1", k.kind(), k.resource(), k.namespaced()) })
        .collect()
}

fn not_supported(field: String, value: &str, allowed: &[&str]) -> FieldError {
    FieldError {
        field,
        kind: FieldErrorKind::NotSupported(value.to_string(), allowed.iter().map(|a| a.to_string()).collect()),
        detail: String::new(),
    }
}

fn string_list(v: &Value, field: &str, at: &str, errors: &mut Vec<FieldError>) -> Vec<String> {
    match v.get(field) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| match item.as_str() {
                Some(s) => Some(s.to_string()),
                None => {
                    errors.push(FieldError::invalid(format!("{at}.{field}[{i}]"), item, "must be a string"));
                    None
                }
            })
            .collect(),
        Some(other) => {
            errors.push(FieldError::invalid(format!("{at}.{field}"), other, "must be a list of strings"));
            Vec::new()
        }
    }
}

/// Kubernetes' `ValidatePolicyRule`: verbs always; either resources (with groups) or
/// non-resource URLs, never both; no URLs in a namespaced Role.
fn validate_rule(rule: &Value, at: &str, namespaced: bool, errors: &mut Vec<FieldError>) {
    let verbs = string_list(rule, "verbs", at, errors);
    let groups = string_list(rule, "apiGroups", at, errors);
    let resources = string_list(rule, "resources", at, errors);
    string_list(rule, "resourceNames", at, errors);
    let urls = string_list(rule, "nonResourceURLs", at, errors);
    if verbs.is_empty() {
        errors.push(FieldError::required(format!("{at}.verbs"), "verbs must contain at least one value"));
    }
    if !urls.is_empty() {
        if namespaced {
            errors.push(FieldError::invalid(
                format!("{at}.nonResourceURLs"),
                Value::from(urls.clone()),
                "namespaced rules cannot apply to non-resource URLs",
            ));
        }
        if !groups.is_empty() || !resources.is_empty() {
            errors.push(FieldError::invalid(
                format!("{at}.nonResourceURLs"),
                Value::from(urls),
                "rules cannot apply to both regular resources and non-resource URLs",
            ));
        }
        return;
    }
    if groups.is_empty() {
        errors
            .push(FieldError::required(format!("{at}.apiGroups"), "resource rules must supply at least one api group"));
    }
    if resources.is_empty() {
        errors
            .push(FieldError::required(format!("{at}.resources"), "resource rules must supply at least one resource"));
    }
}

fn validate_role(obj: &Value, namespaced: bool) -> Vec<FieldError> {
    let mut errors = Vec::new();
    match obj.get("rules") {
        None | Some(Value::Null) => {}
        Some(Value::Array(rules)) => {
            for (i, rule) in rules.iter().enumerate() {
                validate_rule(rule, &format!("rules[{i}]"), namespaced, &mut errors);
            }
        }
        Some(other) => errors.push(FieldError::invalid("rules", other, "must be a list of policy rules")),
    }
    if let Some(agg) = obj.get("aggregationRule").filter(|a| !a.is_null()) {
        let selectors = agg.get("clusterRoleSelectors").and_then(Value::as_array);
        if selectors.is_none_or(|s| s.is_empty()) {
            errors.push(FieldError::required(
                "aggregationRule.clusterRoleSelectors",
                "at least one clusterRoleSelector required if aggregationRule is non-nil",
            ));
        }
        for (i, sel) in selectors.into_iter().flatten().enumerate() {
            for (j, e) in sel.get("matchExpressions").and_then(Value::as_array).into_iter().flatten().enumerate() {
                let op = e.get("operator").and_then(Value::as_str).unwrap_or("");
                if !matches!(op, "In" | "NotIn" | "Exists" | "DoesNotExist") {
                    errors.push(not_supported(
                        format!("aggregationRule.clusterRoleSelectors[{i}].matchExpressions[{j}].operator"),
                        op,
                        &["DoesNotExist", "Exists", "In", "NotIn"],
                    ));
                }
            }
        }
    }
    errors
}

/// Kubernetes' `ValidateRoleBindingSubject` and roleRef rules.
fn validate_binding(obj: &Value, namespaced: bool) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let role_ref = obj.get("roleRef").unwrap_or(&Value::Null);
    match role_ref.get("apiGroup").and_then(Value::as_str) {
        Some(RBAC_GROUP) => {}
        other => errors.push(not_supported("roleRef.apiGroup".into(), other.unwrap_or(""), &[RBAC_GROUP])),
    }
    let allowed: &[&str] = if namespaced { &["ClusterRole", "Role"] } else { &["ClusterRole"] };
    let kind = role_ref.get("kind").and_then(Value::as_str).unwrap_or("");
    if !allowed.contains(&kind) {
        errors.push(not_supported("roleRef.kind".into(), kind, allowed));
    }
    match role_ref.get("name").and_then(Value::as_str) {
        None | Some("") => errors.push(FieldError::required("roleRef.name", "")),
        Some(n) if !is_path_segment(n) => {
            errors.push(FieldError::invalid("roleRef.name", n, "may not contain '/' or '%'"))
        }
        Some(_) => {}
    }
    let subjects = match obj.get("subjects") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(s)) => s.clone(),
        Some(other) => {
            errors.push(FieldError::invalid("subjects", other, "must be a list of subjects"));
            Vec::new()
        }
    };
    for (i, s) in subjects.iter().enumerate() {
        let at = format!("subjects[{i}]");
        let name = s.get("name").and_then(Value::as_str).unwrap_or("");
        if name.is_empty() {
            errors.push(FieldError::required(format!("{at}.name"), ""));
        }
        let api_group = s.get("apiGroup").and_then(Value::as_str).unwrap_or("");
        match s.get("kind").and_then(Value::as_str).unwrap_or("") {
            "ServiceAccount" => {
                if !name.is_empty() && !api::request::is_dns_label(name) && !crate::registry::is_dns_subdomain(name) {
                    errors.push(FieldError::invalid(format!("{at}.name"), name, "must be a DNS subdomain"));
                }
                if !api_group.is_empty() {
                    errors.push(not_supported(format!("{at}.apiGroup"), api_group, &[""]));
                }
                if !namespaced && s.get("namespace").and_then(Value::as_str).is_none_or(str::is_empty) {
                    errors.push(FieldError::required(format!("{at}.namespace"), ""));
                }
            }
            "User" | "Group" => {
                if api_group != RBAC_GROUP {
                    errors.push(not_supported(format!("{at}.apiGroup"), api_group, &[RBAC_GROUP]));
                }
            }
            other => errors.push(not_supported(format!("{at}.kind"), other, &["Group", "ServiceAccount", "User"])),
        }
    }
    errors
}

/// Kubernetes' `path.IsValidPathSegmentName`, the rule for RBAC names.
pub fn is_path_segment(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('%')
}

/// Fills in what a client may leave out, as Kubernetes' defaulting does: a subject's
/// apiGroup.
fn default_binding(obj: &mut Value) {
    for s in obj.get_mut("subjects").and_then(Value::as_array_mut).into_iter().flatten() {
        let kind = s.get("kind").and_then(Value::as_str).unwrap_or("").to_string();
        if s.get("apiGroup").is_none_or(Value::is_null) {
            let group = if kind == "ServiceAccount" { "" } else { RBAC_GROUP };
            if let Some(m) = s.as_object_mut() {
                m.insert("apiGroup".into(), Value::from(group));
            }
        }
    }
}

impl Strategy for RbacStrategy {
    fn info(&self) -> &ResourceInfo {
        &self.info
    }
    fn prepare_for_create(&self, obj: &mut Value) {
        if self.kind.is_binding() {
            default_binding(obj);
        }
    }
    fn prepare_for_update(&self, new: &mut Value, _old: &Value, _subresource: Option<&str>) {
        if self.kind.is_binding() {
            default_binding(new);
        }
    }
    fn validate(&self, obj: &Value) -> Vec<FieldError> {
        if self.kind.is_binding() {
            validate_binding(obj, self.kind.namespaced())
        } else {
            validate_role(obj, self.kind.namespaced())
        }
    }
    /// A binding's roleRef is fixed: to point elsewhere, delete and recreate it.
    fn validate_update(&self, new: &Value, old: &Value) -> Vec<FieldError> {
        if self.kind.is_binding() && new.get("roleRef") != old.get("roleRef") {
            return vec![FieldError::invalid(
                "roleRef",
                new.get("roleRef").cloned().unwrap_or(Value::Null),
                "cannot change roleRef",
            )];
        }
        Vec::new()
    }
    fn path_segment_names(&self) -> bool {
        true
    }
    fn prune_unknown_fields(&self, obj: &mut Value) -> Option<Vec<String>> {
        let message = crate::proto::shape::message_of(&self.info.group, &self.info.version, &self.info.kind)?;
        let mut unknown = Vec::new();
        crate::proto::shape::prune_unknown_fields(&message, obj, &mut unknown);
        Some(unknown)
    }
    fn top_level_fields(&self) -> Option<&[&str]> {
        Some(if self.kind.is_binding() { &["subjects", "roleRef"] } else { &["rules", "aggregationRule"] })
    }
}

/// A review kind: created and answered at once, never stored (see `reviews.rs`).
pub struct ReviewStrategy {
    info: ResourceInfo,
}

/// The review kinds discovery lists (v1; `authentication.k8s.io/v1beta1` SelfSubjectReview
/// for kubectl 1.27 is answered too, but not listed).
pub fn review_strategies() -> Vec<ReviewStrategy> {
    [
        (AUTHORIZATION_GROUP, "SelfSubjectAccessReview", "selfsubjectaccessreviews"),
        (AUTHORIZATION_GROUP, "SelfSubjectRulesReview", "selfsubjectrulesreviews"),
        (AUTHORIZATION_GROUP, "SubjectAccessReview", "subjectaccessreviews"),
        (AUTHENTICATION_GROUP, "SelfSubjectReview", "selfsubjectreviews"),
    ]
    .into_iter()
    .map(|(g, k, r)| ReviewStrategy { info: info(g, "v1", k, r, false) })
    .collect()
}

impl Strategy for ReviewStrategy {
    fn info(&self) -> &ResourceInfo {
        &self.info
    }
    fn create_only(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fields(errors: &[FieldError]) -> Vec<String> {
        errors.iter().map(|e| e.field.clone()).collect()
    }

    #[test]
    fn roles_validate_as_in_kubernetes() {
        let ok = json!({"rules": [
            {"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]},
            {"verbs": ["get"], "nonResourceURLs": ["/healthz"]},
        ]});
        assert!(validate_role(&ok, false).is_empty());
        assert_eq!(fields(&validate_role(&ok, true)), ["rules[1].nonResourceURLs"], "no URLs in a Role");
        let bad = json!({"rules": [
            {"apiGroups": [""], "resources": ["pods"]},
            {"verbs": ["get"], "resources": ["pods"]},
            {"verbs": ["get"], "apiGroups": [""]},
            {"verbs": ["get"], "apiGroups": [""], "nonResourceURLs": ["/x"]},
        ], "aggregationRule": {"clusterRoleSelectors": []}});
        assert_eq!(
            fields(&validate_role(&bad, false)),
            [
                "rules[0].verbs",
                "rules[1].apiGroups",
                "rules[2].resources",
                "rules[3].nonResourceURLs",
                "aggregationRule.clusterRoleSelectors"
            ]
        );
    }

    #[test]
    fn bindings_validate_as_in_kubernetes() {
        let mut ok = json!({"roleRef": {"apiGroup": RBAC_GROUP, "kind": "Role", "name": "r"},
            "subjects": [{"kind": "User", "name": "alice"}, {"kind": "ServiceAccount", "name": "bot"}]});
        default_binding(&mut ok);
        assert_eq!(ok["subjects"][0]["apiGroup"], RBAC_GROUP);
        assert_eq!(ok["subjects"][1]["apiGroup"], "");
        assert!(validate_binding(&ok, true).is_empty());
        assert_eq!(
            fields(&validate_binding(&ok, false)),
            ["roleRef.kind", "subjects[1].namespace"],
            "a ClusterRoleBinding names ClusterRoles and namespaced service accounts"
        );
        let bad = json!({"roleRef": {"apiGroup": "x", "kind": "Role"}, "subjects": [{"kind": "Robot", "name": ""}]});
        assert_eq!(
            fields(&validate_binding(&bad, true)),
            ["roleRef.apiGroup", "roleRef.name", "subjects[0].name", "subjects[0].kind"]
        );
    }
}
