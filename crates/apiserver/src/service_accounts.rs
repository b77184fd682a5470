//! Kubernetes' ServiceAccount admission for new pods, the one place it is decided (called
//! from `http.rs` for every create: POST, and server-side apply that creates):
//!
//! - `spec.serviceAccountName` defaults to `default` (the deprecated `spec.serviceAccount`
//!   names the account when the new field does not, and is kept equal to it, as the API's
//!   conversion does);
//! - the account must exist in the pod's tenant and namespace, else 403 `pods "x" is
//!   forbidden: error looking up service account NS/NAME: serviceaccount "NAME" not found`;
//! - `default` is made by the service-account controller just after its namespace, so a
//!   missing `default` is looked for again for [`DEFAULT_WAIT`] before the pod is refused
//!   (Kubernetes retries ten times, about a second; our shared machines get longer);
//! - a pod that names no `imagePullSecrets` takes the account's.

use std::time::Duration;

use api::json::At;
use api::meta::Status;
use serde_json::Value;

/// How long a pod waits for its namespace's `default` account to be made.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);
/// How often it looks meanwhile.
pub const RETRY_EVERY: Duration = Duration::from_millis(100);

/// The account a new pod runs as, written back into its spec.
pub fn default_account(pod: &mut Value) -> String {
    let named = |f: &str| pod.at(&format!("/spec/{f}")).and_then(Value::as_str).filter(|n| !n.is_empty());
    let account = named("serviceAccountName").or_else(|| named("serviceAccount")).unwrap_or("default").to_string();
    if let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) {
        spec.insert("serviceAccountName".into(), Value::from(account.as_str()));
        spec.insert("serviceAccount".into(), Value::from(account.as_str()));
    }
    account
}

/// How long to keep looking for `account` when it is not there yet.
pub fn patience(account: &str) -> Duration {
    if account == "default" { DEFAULT_WAIT } else { Duration::ZERO }
}

/// Kubernetes' refusal of a pod whose account does not exist.
pub fn missing(pod: &Value, namespace: &str, account: &str) -> Status {
    let name = pod.at("/metadata/name").and_then(Value::as_str).unwrap_or("");
    Status::forbidden_because(
        "",
        "pods",
        name,
        &format!("error looking up service account {namespace}/{account}: serviceaccount {account:?} not found"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_account_defaults_and_both_fields_agree() {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": []}});
        assert_eq!(default_account(&mut pod), "default");
        assert_eq!(pod["spec"]["serviceAccountName"], "default");
        assert_eq!(pod["spec"]["serviceAccount"], "default");
        let mut old = json!({"spec": {"serviceAccount": "builder"}});
        assert_eq!(default_account(&mut old), "builder");
        assert_eq!(old["spec"]["serviceAccountName"], "builder");
        let mut both = json!({"spec": {"serviceAccountName": "web", "serviceAccount": ""}});
        assert_eq!(default_account(&mut both), "web");
        assert_eq!(both["spec"]["serviceAccount"], "web");
        assert_eq!(patience("default"), DEFAULT_WAIT);
        assert_eq!(patience("web"), Duration::ZERO);
    }

    #[test]
    fn a_missing_account_is_refused_as_kubernetes_words_it() {
        let s = missing(&json!({"metadata": {"name": "p"}}), "team", "ghost");
        assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
        assert_eq!(
            s.message,
            "pods \"p\" is forbidden: error looking up service account team/ghost: serviceaccount \"ghost\" not found"
        );
        let details = s.details.unwrap();
        assert_eq!((details.kind.as_str(), details.name.as_str()), ("pods", "p"));
    }
}
