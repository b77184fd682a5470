//! Deployments' and ReplicaSets' defaults and validation (`apps/v1`), as Kubernetes applies
//! them: the controllers rely on a selector that matches the template's labels and never
//! changes, and on a complete rolling-update strategy.

use api::json::At;
use api::meta::{FieldError, FieldErrorKind};
use api::selector::{label_selector_is_empty, label_selector_selects};
use serde_json::{Value, json};

fn set_default(obj: &mut Value, pointer: &str, value: Value) {
    let mut at = obj;
    let parts: Vec<&str> = pointer.split('/').skip(1).collect();
    for (i, part) in parts.iter().enumerate() {
        let Some(map) = at.as_object_mut() else { return };
        if i + 1 == parts.len() {
            if map.get(*part).is_none_or(Value::is_null) {
                map.insert(part.to_string(), value);
            }
            return;
        }
        let next = map.entry(part.to_string()).or_insert_with(|| json!({}));
        if next.is_null() {
            *next = json!({});
        }
        at = next;
    }
}

pub fn replicaset_defaults(obj: &mut Value) {
    set_default(obj, "/spec/replicas", json!(1));
    template_defaults(obj);
}

/// The template's pod spec is defaulted as a pod's is, as Kubernetes does, so that a
/// workload shows what its pods will run with.
fn template_defaults(obj: &mut Value) {
    if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
        crate::kinds::pod_spec_defaults(spec);
    }
}

pub fn deployment_defaults(obj: &mut Value) {
    set_default(obj, "/spec/replicas", json!(1));
    set_default(obj, "/spec/strategy/type", json!("RollingUpdate"));
    if obj.at("/spec/strategy/type").and_then(Value::as_str) == Some("RollingUpdate") {
        set_default(obj, "/spec/strategy/rollingUpdate/maxUnavailable", json!("25%"));
        set_default(obj, "/spec/strategy/rollingUpdate/maxSurge", json!("25%"));
    }
    set_default(obj, "/spec/revisionHistoryLimit", json!(10));
    set_default(obj, "/spec/progressDeadlineSeconds", json!(600));
    template_defaults(obj);
}

/// Selector, replicas and template, shared by both kinds.
fn validate_common(obj: &Value, errors: &mut Vec<FieldError>) {
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    for field in ["replicas", "minReadySeconds"] {
        if let Some(v) = spec.get(field)
            && v.as_i64().is_none_or(|n| n < 0)
        {
            errors.push(FieldError::invalid(format!("spec.{field}"), v, "must be greater than or equal to 0"));
        }
    }
    let selector = spec.get("selector");
    match selector {
        None | Some(Value::Null) => errors.push(FieldError::required("spec.selector", "")),
        Some(sel) if label_selector_is_empty(sel) => {
            errors.push(FieldError::invalid("spec.selector", "{}", "empty selector is invalid for deployment"))
        }
        Some(_) => {}
    }
    let template = spec.get("template").unwrap_or(&Value::Null);
    let labels = template.at("/metadata/labels");
    if let Some(sel) = selector.filter(|s| !s.is_null() && !label_selector_is_empty(s))
        && !label_selector_selects(sel, labels)
    {
        errors.push(FieldError::invalid(
            "spec.template.metadata.labels",
            labels.map(Value::to_string).unwrap_or_default(),
            "`selector` does not match template `labels`",
        ));
    }
    // The template's pod spec, with the pod's own rules, reported under the template.
    let pod = json!({"spec": template.get("spec").cloned().unwrap_or(Value::Null)});
    for mut e in crate::kinds::validate_pod(&pod) {
        e.field = format!("spec.template.{}", e.field);
        errors.push(e);
    }
    if let Some(policy) = template.at("/spec/restartPolicy").and_then(Value::as_str)
        && policy != "Always"
    {
        errors.push(FieldError {
            field: "spec.template.spec.restartPolicy".into(),
            kind: FieldErrorKind::NotSupported(policy.into(), vec!["Always".into()]),
            detail: String::new(),
        });
    }
}

pub fn validate_replicaset(obj: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    validate_common(obj, &mut errors);
    errors
}

/// An int-or-percent (`maxSurge`, `maxUnavailable`): a non-negative integer, or a string
/// `N%`. Returns whether it is zero.
fn int_or_percent(v: &Value, field: &str, errors: &mut Vec<FieldError>) -> Option<bool> {
    match v {
        Value::Number(n) => match n.as_i64() {
            Some(i) if i >= 0 => Some(i == 0),
            _ => {
                errors.push(FieldError::invalid(field, v, "must be greater than or equal to 0"));
                None
            }
        },
        Value::String(s) => match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            Some(p) if p >= 0 => Some(p == 0),
            _ => {
                errors.push(FieldError::invalid(field, s, "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')"));
                None
            }
        },
        _ => {
            errors.push(FieldError::invalid(field, v, "must be an integer or percentage (e.g '5%')"));
            None
        }
    }
}

pub fn validate_deployment(obj: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    validate_common(obj, &mut errors);
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    for field in ["revisionHistoryLimit", "progressDeadlineSeconds"] {
        if let Some(v) = spec.get(field).filter(|v| !v.is_null())
            && v.as_i64().is_none_or(|n| n < 0)
        {
            errors.push(FieldError::invalid(format!("spec.{field}"), v, "must be greater than or equal to 0"));
        }
    }
    if let (Some(deadline), Some(ready)) = (
        spec.get("progressDeadlineSeconds").and_then(Value::as_i64),
        spec.get("minReadySeconds").and_then(Value::as_i64),
    ) && deadline <= ready
    {
        errors.push(FieldError::invalid(
            "spec.progressDeadlineSeconds",
            deadline,
            "must be greater than minReadySeconds",
        ));
    }
    let strategy = spec.get("strategy").unwrap_or(&Value::Null);
    let rolling = strategy.get("rollingUpdate").filter(|r| !r.is_null());
    match strategy.get("type").and_then(Value::as_str) {
        Some("Recreate") => {
            if rolling.is_some() {
                errors.push(FieldError::forbidden(
                    "spec.strategy.rollingUpdate",
                    "may not be specified when strategy `type` is 'Recreate'",
                ));
            }
        }
        Some("RollingUpdate") => {
            let surge = rolling.and_then(|r| r.get("maxSurge")).filter(|v| !v.is_null());
            let unavailable = rolling.and_then(|r| r.get("maxUnavailable")).filter(|v| !v.is_null());
            let surge_zero = surge.and_then(|v| int_or_percent(v, "spec.strategy.rollingUpdate.maxSurge", &mut errors));
            let unavailable_zero =
                unavailable.and_then(|v| int_or_percent(v, "spec.strategy.rollingUpdate.maxUnavailable", &mut errors));
            if let Some(Value::String(p)) = unavailable
                && p.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()).is_some_and(|p| p > 100)
            {
                errors.push(FieldError::invalid(
                    "spec.strategy.rollingUpdate.maxUnavailable",
                    p,
                    "must not be greater than 100%",
                ));
            }
            if surge_zero == Some(true) && unavailable_zero == Some(true) {
                errors.push(FieldError::invalid(
                    "spec.strategy.rollingUpdate.maxUnavailable",
                    unavailable.cloned().unwrap_or_default(),
                    "may not be 0 when `maxSurge` is 0",
                ));
            }
        }
        Some(other) => errors.push(FieldError {
            field: "spec.strategy.type".into(),
            kind: FieldErrorKind::NotSupported(other.into(), vec!["Recreate".into(), "RollingUpdate".into()]),
            detail: String::new(),
        }),
        None => errors.push(FieldError::required("spec.strategy.type", "")),
    }
    errors
}

/// `apps/v1` selectors never change: the controllers find their objects by them.
pub fn validate_update(new: &Value, old: &Value) -> Vec<FieldError> {
    let (n, o) = (new.at("/spec/selector"), old.at("/spec/selector"));
    if n != o {
        return vec![FieldError::invalid(
            "spec.selector",
            n.map(Value::to_string).unwrap_or_default(),
            "field is immutable",
        )];
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(spec: Value) -> Value {
        let mut d = json!({"metadata": {"name": "d"}, "spec": spec});
        deployment_defaults(&mut d);
        d
    }

    fn template() -> Value {
        json!({"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
    }

    #[test]
    fn defaults_as_kubernetes() {
        let d = deployment(json!({"selector": {"matchLabels": {"app": "a"}}, "template": template()}));
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(
            d["spec"]["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(d["spec"]["progressDeadlineSeconds"], 600);
        assert!(validate_deployment(&d).is_empty(), "{:?}", validate_deployment(&d));
        let r = deployment(
            json!({"strategy": {"type": "Recreate"}, "selector": {"matchLabels": {"app": "a"}}, "template": template()}),
        );
        assert!(r["spec"]["strategy"].get("rollingUpdate").is_none());
        assert!(validate_deployment(&r).is_empty());
        // The template's pod spec carries Kubernetes' pod defaults (not a pod's admission
        // defaults such as tolerations), in both kinds.
        let mut rs = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "c", "image": "busybox:1.36", "ports": [{"containerPort": 80}]},
            {"name": "d", "image": "busybox", "imagePullPolicy": "Never"}]}}}});
        replicaset_defaults(&mut rs);
        for t in [&d["spec"]["template"]["spec"], &rs["spec"]["template"]["spec"]] {
            assert_eq!(t["restartPolicy"], "Always");
            assert_eq!(t["dnsPolicy"], "ClusterFirst");
            assert_eq!(t["schedulerName"], "default-scheduler");
            assert_eq!(t["terminationGracePeriodSeconds"], 30);
            assert_eq!(t["securityContext"], json!({}));
            assert_eq!(t["containers"][0]["terminationMessagePath"], "/dev/termination-log");
            assert_eq!(t["containers"][0]["terminationMessagePolicy"], "File");
            assert!(t.get("tolerations").is_none());
        }
        assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"], "Always");
        let rs = &rs["spec"]["template"]["spec"]["containers"];
        assert_eq!(rs[0]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(rs[0]["ports"][0]["protocol"], "TCP");
        assert_eq!(rs[1]["imagePullPolicy"], "Never");
    }

    #[test]
    fn rejects_what_kubernetes_rejects() {
        let fields = |d: &Value| validate_deployment(d).into_iter().map(|e| e.field).collect::<Vec<_>>();
        let d = deployment(json!({"selector": {"matchLabels": {"app": "b"}}, "template": template()}));
        assert_eq!(fields(&d), ["spec.template.metadata.labels"]);
        let d = deployment(json!({"template": template()}));
        assert_eq!(fields(&d), ["spec.selector"]);
        let d = deployment(json!({
            "selector": {"matchLabels": {"app": "a"}}, "template": template(),
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}},
        }));
        assert_eq!(fields(&d), ["spec.strategy.rollingUpdate.maxUnavailable"]);
        let d = deployment(json!({
            "selector": {"matchLabels": {"app": "a"}}, "template": template(), "replicas": -1,
            "strategy": {"type": "Recreate", "rollingUpdate": {}},
        }));
        assert_eq!(fields(&d), ["spec.replicas", "spec.strategy.rollingUpdate"]);
        let old = deployment(json!({"selector": {"matchLabels": {"app": "a"}}, "template": template()}));
        let mut new = old.clone();
        new["spec"]["selector"]["matchLabels"]["x"] = json!("y");
        assert_eq!(validate_update(&new, &old)[0].field, "spec.selector");
    }
}
