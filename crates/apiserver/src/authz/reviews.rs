//! The access reviews, answered from the index and never stored:
//! `authorization.k8s.io/v1` SelfSubjectAccessReview (`kubectl auth can-i`),
//! SelfSubjectRulesReview (`kubectl auth can-i --list`), SubjectAccessReview (someone
//! else's access, for whoever may create it, judged within the request's tenant), and
//! `authentication.k8s.io/v1` (and `v1beta1`, for kubectl 1.27) SelfSubjectReview
//! (`kubectl auth whoami`), whose `extra` carries the caller's tenant.

// Errors here are `Status` values on their way to the client, as in `http.rs`.
#![allow(clippy::result_large_err)]

use api::json::At;
use api::meta::{FieldError, Status};
use serde_json::{Value, json};

use super::Authz;
use super::kinds::{AUTHENTICATION_GROUP, AUTHORIZATION_GROUP};
use super::rules::{Attributes, Decision, ResourceAttributes, Rule};
use crate::http::User;

/// The `extra` key of a SelfSubjectReview's user info that names the caller's tenant.
pub const TENANT_EXTRA: &str = "atoll.io/tenant";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Review {
    SelfAccess,
    SelfRules,
    Access,
    /// SelfSubjectReview, in `authentication.k8s.io/{version}`.
    Whoami(&'static str),
}

impl Review {
    pub fn of(group: &str, version: &str, resource: &str) -> Option<Review> {
        match (group, version, resource) {
            (AUTHORIZATION_GROUP, "v1", "selfsubjectaccessreviews") => Some(Review::SelfAccess),
            (AUTHORIZATION_GROUP, "v1", "selfsubjectrulesreviews") => Some(Review::SelfRules),
            (AUTHORIZATION_GROUP, "v1", "subjectaccessreviews") => Some(Review::Access),
            (AUTHENTICATION_GROUP, "v1", "selfsubjectreviews") => Some(Review::Whoami("v1")),
            (AUTHENTICATION_GROUP, "v1beta1", "selfsubjectreviews") => Some(Review::Whoami("v1beta1")),
            _ => None,
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Review::SelfAccess => "SelfSubjectAccessReview",
            Review::SelfRules => "SelfSubjectRulesReview",
            Review::Access => "SubjectAccessReview",
            Review::Whoami(_) => "SelfSubjectReview",
        }
    }
}

fn invalid(review: Review, errors: &[FieldError]) -> Status {
    let group = if matches!(review, Review::Whoami(_)) { AUTHENTICATION_GROUP } else { AUTHORIZATION_GROUP };
    Status::invalid(group, review.kind(), "", errors)
}

/// The attributes a review asks about (`spec.resourceAttributes` or
/// `spec.nonResourceAttributes`, exactly one).
fn review_attributes(review: Review, spec: &Value) -> Result<Attributes, Status> {
    let s = |v: &Value, f: &str| v.get(f).and_then(Value::as_str).unwrap_or("").to_string();
    let opt = |v: &Value, f: &str| v.get(f).and_then(Value::as_str).filter(|x| !x.is_empty()).map(str::to_string);
    match (
        spec.get("resourceAttributes").filter(|v| !v.is_null()),
        spec.get("nonResourceAttributes").filter(|v| !v.is_null()),
    ) {
        (Some(r), None) => Ok(Attributes::Resource(ResourceAttributes {
            verb: s(r, "verb"),
            group: s(r, "group"),
            resource: s(r, "resource"),
            subresource: opt(r, "subresource"),
            namespace: opt(r, "namespace"),
            name: opt(r, "name"),
        })),
        (None, Some(n)) => Ok(Attributes::NonResource { verb: s(n, "verb"), path: s(n, "path") }),
        _ => Err(invalid(
            review,
            &[FieldError::required(
                "spec.resourceAttributes",
                "exactly one of nonResourceAttributes or resourceAttributes must be specified",
            )],
        )),
    }
}

fn access_status(decision: Decision) -> Value {
    match decision {
        Decision::Allow(reason) => json!({"allowed": true, "reason": reason}),
        Decision::Deny(reason) if reason.is_empty() => json!({"allowed": false}),
        Decision::Deny(reason) => json!({"allowed": false, "reason": reason}),
    }
}

/// Answers a review created by `user` in `tenant`: the posted object with its status.
pub fn answer(authz: &Authz, review: Review, user: &User, tenant: &str, body: Value) -> Result<Value, Status> {
    let mut out = if body.is_object() { body } else { json!({}) };
    let api_version = match review {
        Review::Whoami(v) => format!("{AUTHENTICATION_GROUP}/{v}"),
        _ => format!("{AUTHORIZATION_GROUP}/v1"),
    };
    out["apiVersion"] = json!(api_version);
    out["kind"] = json!(review.kind());
    if !out.get("metadata").is_some_and(Value::is_object) {
        out["metadata"] = json!({});
    }
    out["metadata"]["creationTimestamp"] = Value::Null;
    let spec = out.get("spec").cloned().unwrap_or(Value::Null);
    out["status"] = match review {
        Review::SelfAccess => access_status(authz.decide(user, tenant, &review_attributes(review, &spec)?)),
        Review::Access => {
            let name = spec.get("user").and_then(Value::as_str).unwrap_or("").to_string();
            let groups = crate::registry::object::strings_at(&spec, "/groups");
            if name.is_empty() && groups.is_empty() {
                return Err(invalid(
                    review,
                    &[FieldError::required("spec.user", "at least one of user or group must be specified")],
                ));
            }
            // The subject belongs to the tenant its `extra` names (as a SelfSubjectReview
            // reports it), else to the tenant the review was posted to; it is judged by
            // that tenant's policy, and a subject of another tenant reaches nothing here
            // unless it is a system administrator.
            let subject_tenant = spec
                .at(&format!("/extra/{}", TENANT_EXTRA.replace('/', "~1")))
                .and_then(Value::as_array)
                .and_then(|v| v.first())
                .and_then(Value::as_str)
                .unwrap_or(tenant);
            let subject = User { name, groups, tenant: subject_tenant.to_string() };
            access_status(authz.decide(&subject, tenant, &review_attributes(review, &spec)?))
        }
        Review::SelfRules => {
            let namespace = spec.get("namespace").and_then(Value::as_str).filter(|n| !n.is_empty());
            rules_status(&authz.rules_for(user, tenant, namespace))
        }
        Review::Whoami(_) => json!({"userInfo": {
            "username": user.name, "groups": user.groups, "extra": {TENANT_EXTRA: [user.tenant]},
        }}),
    };
    Ok(out)
}

fn rules_status(rules: &[Rule]) -> Value {
    let mut resource_rules = Vec::new();
    let mut non_resource_rules = Vec::new();
    for r in rules {
        if !r.non_resource_urls.is_empty() {
            let v = json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls});
            if !non_resource_rules.contains(&v) {
                non_resource_rules.push(v);
            }
        }
        if !r.resources.is_empty() {
            let mut v = json!({"verbs": r.verbs, "apiGroups": r.api_groups, "resources": r.resources});
            if !r.resource_names.is_empty() {
                v["resourceNames"] = json!(r.resource_names);
            }
            if !resource_rules.contains(&v) {
                resource_rules.push(v);
            }
        }
    }
    json!({"resourceRules": resource_rules, "nonResourceRules": non_resource_rules, "incomplete": false})
}
