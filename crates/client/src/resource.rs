//! What a request addresses: a kind's resource, the tenant and namespace scope, and the
//! query parameters of lists, watches and deletes. Pure path building, no I/O.

/// A kind's REST resource, enough to build its paths.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Resource {
    /// Empty for the core group.
    pub group: String,
    pub version: String,
    /// The plural resource name (`namespaces`, `serviceaccounts`).
    pub plural: String,
    pub namespaced: bool,
}

impl Resource {
    pub fn new(group: &str, version: &str, plural: &str, namespaced: bool) -> Resource {
        Resource { group: group.into(), version: version.into(), plural: plural.into(), namespaced }
    }
    pub fn namespaces() -> Resource {
        Resource::new("", "v1", "namespaces", false)
    }
    pub fn service_accounts() -> Resource {
        Resource::new("", "v1", "serviceaccounts", true)
    }
    pub fn config_maps() -> Resource {
        Resource::new("", "v1", "configmaps", true)
    }
    pub fn pods() -> Resource {
        Resource::new("", "v1", "pods", true)
    }
    pub fn nodes() -> Resource {
        Resource::new("", "v1", "nodes", false)
    }
    pub fn events() -> Resource {
        Resource::new("", "v1", "events", true)
    }
    /// `atoll.io/v1` Tenants: cluster-scoped, kept in the system tenant.
    pub fn tenants() -> Resource {
        Resource::new("atoll.io", "v1", "tenants", false)
    }
}

/// Which tenant a request acts in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Tenant {
    /// The caller's own tenant (the short path).
    Own,
    /// A named tenant (the tenant path `/…/tenants/{t}/…`).
    Named(String),
    /// Every tenant: lists and watches only (system administrators).
    All,
}

/// Tenant and namespace of a request. A namespaced resource without a namespace lists or
/// watches across the tenant's namespaces.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Scope {
    pub tenant: Tenant,
    pub namespace: Option<String>,
}

impl Scope {
    pub fn own() -> Scope {
        Scope { tenant: Tenant::Own, namespace: None }
    }
    pub fn all_tenants() -> Scope {
        Scope { tenant: Tenant::All, namespace: None }
    }
    pub fn tenant(t: &str) -> Scope {
        Scope { tenant: Tenant::Named(t.into()), namespace: None }
    }
    pub fn in_namespace(mut self, ns: &str) -> Scope {
        self.namespace = Some(ns.into());
        self
    }
}

/// Options of a list (and the selectors of a watch).
#[derive(Clone, Debug, Default)]
pub struct ListParams {
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    pub limit: Option<u32>,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    /// Asks an Atoll server to leave out `metadata.managedFields` (`omitManagedFields`); other
    /// servers send them anyway, so readers must not count on their absence.
    pub omit_managed_fields: bool,
}

/// Options of a watch.
#[derive(Clone, Debug, Default)]
pub struct WatchParams {
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    /// Start after this revision; `None` starts with the current state as ADDED events.
    pub resource_version: Option<String>,
    pub allow_bookmarks: bool,
    pub timeout_seconds: Option<u32>,
    /// As [`ListParams::omit_managed_fields`].
    pub omit_managed_fields: bool,
}

/// Options of a delete.
#[derive(Clone, Debug, Default)]
pub struct DeleteParams {
    pub grace_period_seconds: Option<i64>,
    pub precondition_uid: Option<String>,
    pub precondition_resource_version: Option<String>,
    /// `Orphan`, `Background` or `Foreground`.
    pub propagation_policy: Option<String>,
    pub dry_run: bool,
}

/// A patch and its media type.
#[derive(Clone, Debug)]
pub enum Patch {
    /// RFC 7386 merge patch.
    Merge(serde_json::Value),
    /// RFC 6902 JSON patch (an array of operations).
    Json(serde_json::Value),
    /// Kubernetes' strategic merge patch.
    Strategic(serde_json::Value),
}

impl Patch {
    pub fn content_type(&self) -> &'static str {
        match self {
            Patch::Merge(_) => "application/merge-patch+json",
            Patch::Json(_) => "application/json-patch+json",
            Patch::Strategic(_) => "application/strategic-merge-patch+json",
        }
    }
    pub fn body(&self) -> &serde_json::Value {
        match self {
            Patch::Merge(v) | Patch::Json(v) | Patch::Strategic(v) => v,
        }
    }
}

/// A name that can stand as one path segment: names with `/`, `?`, `#`, `%` or spaces are
/// refused here rather than sent as another path.
pub(crate) fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && !s.chars().any(|c| matches!(c, '/' | '?' | '#' | '%') || c.is_whitespace())
}

/// The path of `resource` in `scope` (after the server URL's prefix), with an optional
/// object name and subresource. The caller has checked the segments.
pub(crate) fn path(resource: &Resource, scope: &Scope, name: Option<&str>, subresource: Option<&str>) -> String {
    let mut p = if resource.group.is_empty() {
        format!("/api/{}", resource.version)
    } else {
        format!("/apis/{}/{}", resource.group, resource.version)
    };
    match &scope.tenant {
        Tenant::Own => {}
        Tenant::Named(t) => {
            p.push_str("/tenants/");
            p.push_str(t);
        }
        Tenant::All => p.push_str("/tenants/all"),
    }
    if resource.namespaced
        && let Some(ns) = &scope.namespace
    {
        p.push_str("/namespaces/");
        p.push_str(ns);
    }
    p.push('/');
    p.push_str(&resource.plural);
    if let Some(n) = name {
        p.push('/');
        p.push_str(n);
    }
    if let Some(s) = subresource {
        p.push('/');
        p.push_str(s);
    }
    p
}

/// Percent-encodes a query component (selectors hold `=`, `,`, `!`, spaces).
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Builds `?k=v&…` from the pairs that are set.
pub(crate) fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> =
        pairs.iter().filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v)))).collect();
    if parts.is_empty() { String::new() } else { format!("?{}", parts.join("&")) }
}

impl ListParams {
    pub(crate) fn query(&self) -> String {
        query(&[
            ("labelSelector", self.label_selector.clone()),
            ("fieldSelector", self.field_selector.clone()),
            ("limit", self.limit.map(|l| l.to_string())),
            ("continue", self.continue_token.clone()),
            ("resourceVersion", self.resource_version.clone()),
            ("omitManagedFields", self.omit_managed_fields.then(|| "true".into())),
        ])
    }
}

impl WatchParams {
    pub(crate) fn query(&self) -> String {
        query(&[
            ("watch", Some("1".into())),
            ("labelSelector", self.label_selector.clone()),
            ("fieldSelector", self.field_selector.clone()),
            ("resourceVersion", self.resource_version.clone()),
            ("allowWatchBookmarks", self.allow_bookmarks.then(|| "true".into())),
            ("timeoutSeconds", self.timeout_seconds.map(|t| t.to_string())),
            ("omitManagedFields", self.omit_managed_fields.then(|| "true".into())),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_for_every_tenancy_form() {
        let ns = Resource::namespaces();
        let sa = Resource::service_accounts();
        let cases = [
            (path(&ns, &Scope::own(), None, None), "/api/v1/namespaces"),
            (path(&ns, &Scope::tenant("acme"), Some("web"), None), "/api/v1/tenants/acme/namespaces/web"),
            (path(&ns, &Scope::all_tenants(), None, None), "/api/v1/tenants/all/namespaces"),
            // A cluster-scoped resource ignores a namespace.
            (path(&ns, &Scope::own().in_namespace("x"), Some("y"), None), "/api/v1/namespaces/y"),
            (
                path(&sa, &Scope::own().in_namespace("web"), Some("default"), None),
                "/api/v1/namespaces/web/serviceaccounts/default",
            ),
            (
                path(&sa, &Scope::tenant("acme").in_namespace("web"), None, None),
                "/api/v1/tenants/acme/namespaces/web/serviceaccounts",
            ),
            (path(&sa, &Scope::all_tenants(), None, None), "/api/v1/tenants/all/serviceaccounts"),
            (
                path(&Resource::tenants(), &Scope::own(), Some("acme"), Some("status")),
                "/apis/atoll.io/v1/tenants/acme/status",
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn queries_are_encoded() {
        let l = ListParams {
            label_selector: Some("app in (a,b),!x".into()),
            limit: Some(5),
            continue_token: Some("abc=".into()),
            ..ListParams::default()
        };
        assert_eq!(l.query(), "?labelSelector=app%20in%20%28a%2Cb%29%2C%21x&limit=5&continue=abc%3D");
        assert_eq!(ListParams::default().query(), "");
        let w = WatchParams { resource_version: Some("7".into()), allow_bookmarks: true, ..WatchParams::default() };
        assert_eq!(w.query(), "?watch=1&resourceVersion=7&allowWatchBookmarks=true");
        let lean = WatchParams { omit_managed_fields: true, ..w };
        assert_eq!(lean.query(), "?watch=1&resourceVersion=7&allowWatchBookmarks=true&omitManagedFields=true");
        let lean = ListParams { omit_managed_fields: true, ..ListParams::default() };
        assert_eq!(lean.query(), "?omitManagedFields=true");
        assert!(valid_segment("default") && !valid_segment("a/b") && !valid_segment("..") && !valid_segment(""));
    }
}
