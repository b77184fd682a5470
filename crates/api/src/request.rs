//! Request info: every request's URL and method parsed once into a plain value that the
//! rest of the pipeline (authentication, authorization, admission, the registry) reads.
//!
//! URL forms (see MISSION.md, decision 2):
//! - short path: `/api/v1/namespaces/{ns}/pods`: the caller's own tenant;
//! - tenant path: `/api/v1/tenants/{t}/namespaces/{ns}/pods` (and under `/apis/{g}/{v}/`);
//! - tenant prefix: `/tenants/{t}/api/v1/...`, also for discovery and OpenAPI paths.
//!
//! `/…/tenants`, `/…/tenants/{t}` and `/…/tenants/{t}/{status|finalize}` address the
//! Tenant objects themselves; anything longer under `tenants/{t}/` is the tenant path.
//! The tenant `all` means every tenant (a system administrator's cross-tenant list).
//! A request naming two different tenants is refused; a tenant is never guessed.

use std::fmt;

/// What a request does, as in Kubernetes' authorization verbs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
        }
    }
}

/// Which tenant a request is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TenantScope {
    /// The caller's own tenant (the short path): known only after authentication.
    Caller,
    /// A tenant named in the URL (tenant path or prefix).
    Named(String),
    /// Every tenant (`all`): only system administrators may use it.
    All,
}

/// The reserved tenant name meaning "every tenant".
pub const ALL_TENANTS: &str = "all";
/// The tenant that holds cluster infrastructure.
pub const SYSTEM_TENANT: &str = "system";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceRequest {
    pub verb: Verb,
    pub tenant: TenantScope,
    /// API group; empty for the core group.
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    pub resource: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestInfo {
    Resource(ResourceRequest),
    /// Discovery, OpenAPI, health, version and anything else that is not an object.
    /// `path` has the tenant prefix removed; `verb` is the lower-case HTTP method.
    NonResource {
        verb: String,
        tenant: TenantScope,
        path: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No such path (404).
    #[error("the server could not find the requested resource")]
    NotFound,
    /// The path is malformed (400).
    #[error("{0}")]
    BadRequest(String),
    /// The method does not apply to this path (405).
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
}

/// Subresources of namespaces and tenants that sit where a nested resource would.
const OBJECT_SUBRESOURCES: [&str; 2] = ["status", "finalize"];

/// A DNS-1123 label: lower-case alphanumerics and '-', starting and ending alphanumeric.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn tenant_from(segment: &str) -> Result<TenantScope, RequestError> {
    if segment == ALL_TENANTS {
        Ok(TenantScope::All)
    } else if is_dns_label(segment) {
        Ok(TenantScope::Named(segment.to_string()))
    } else {
        Err(RequestError::BadRequest(format!("invalid tenant name {segment:?}: must be a DNS-1123 label")))
    }
}

/// Parses Kubernetes' boolean query values (as Go's `strconv.ParseBool`).
fn parse_bool(name: &str, v: &str) -> Result<bool, RequestError> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(RequestError::BadRequest(format!("invalid value {v:?} for query parameter {name}: not a boolean"))),
    }
}

/// The `watch` query parameter, if present.
fn watch_param(query: Option<&str>) -> Result<bool, RequestError> {
    let mut watch = false;
    for pair in query.unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == "watch" {
            watch = parse_bool("watch", v)?;
        }
    }
    Ok(watch)
}

/// Parses a request. `path` is the URL path as received (not percent-decoded); `query` is
/// the raw query string.
pub fn parse(method: &str, path: &str, query: Option<&str>) -> Result<RequestInfo, RequestError> {
    let method = method.to_ascii_lowercase();
    if !path.starts_with('/') {
        return Err(RequestError::BadRequest(format!("path {path:?} is not absolute")));
    }
    let trimmed = path.strip_suffix('/').filter(|p| !p.is_empty()).unwrap_or(path);
    let mut segs: Vec<&str> = trimmed.split('/').skip(1).collect();
    if segs == [""] {
        segs.clear();
    }
    for s in &segs {
        // Names, namespaces and resources never hold these; refusing them keeps one
        // object from having several spellings of its path.
        if s.is_empty() || *s == "." || *s == ".." || s.contains('%') {
            return Err(RequestError::BadRequest(format!("malformed path {path:?}")));
        }
    }

    let mut tenant = TenantScope::Caller;
    let mut rest: &[&str] = &segs;
    if rest.first() == Some(&"tenants") {
        let Some(t) = rest.get(1) else { return Err(RequestError::NotFound) };
        tenant = tenant_from(t)?;
        rest = &rest[2..];
    }
    let non_resource = |tenant: TenantScope, rest: &[&str]| RequestInfo::NonResource {
        verb: method.clone(),
        tenant,
        path: format!("/{}", rest.join("/")),
    };
    let (group, version, mut rest) = match rest {
        ["api", version, rest @ ..] if !rest.is_empty() => ("", *version, rest),
        ["apis", group, version, rest @ ..] if !rest.is_empty() => (*group, *version, rest),
        _ => return Ok(non_resource(tenant, rest)),
    };

    let mut watch = watch_param(query)?;
    if rest.first() == Some(&"watch") {
        watch = true;
        rest = &rest[1..];
    }

    if rest.first() == Some(&"tenants") && rest.len() >= 3 && !OBJECT_SUBRESOURCES.contains(&rest[2]) {
        let named = tenant_from(rest[1])?;
        if tenant != TenantScope::Caller && tenant != named {
            return Err(RequestError::BadRequest("the URL names two different tenants".into()));
        }
        tenant = named;
        rest = &rest[2..];
    }

    let mut namespace = None;
    if rest.first() == Some(&"namespaces") && rest.len() >= 3 && !OBJECT_SUBRESOURCES.contains(&rest[2]) {
        if !is_dns_label(rest[1]) {
            return Err(RequestError::BadRequest(format!("invalid namespace {:?}: must be a DNS-1123 label", rest[1])));
        }
        namespace = Some(rest[1].to_string());
        rest = &rest[2..];
    }

    let (resource, name, subresource) = match rest {
        [resource] => (*resource, None, None),
        [resource, name] => (*resource, Some(*name), None),
        [resource, name, sub] => (*resource, Some(*name), Some(*sub)),
        _ => return Err(RequestError::NotFound),
    };

    let verb = match (method.as_str(), name.is_some()) {
        ("get" | "head", _) if watch => Verb::Watch,
        ("get" | "head", true) => Verb::Get,
        ("get" | "head", false) => Verb::List,
        ("post", _) => Verb::Create,
        ("put", true) => Verb::Update,
        ("patch", true) => Verb::Patch,
        ("delete", true) => Verb::Delete,
        ("delete", false) => Verb::DeleteCollection,
        _ => return Err(RequestError::MethodNotAllowed),
    };

    Ok(RequestInfo::Resource(ResourceRequest {
        verb,
        tenant,
        group: group.to_string(),
        version: version.to_string(),
        namespace,
        resource: resource.to_string(),
        name: name.map(str::to_string),
        subresource: subresource.map(str::to_string),
    }))
}

impl fmt::Display for TenantScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TenantScope::Caller => f.write_str("(caller)"),
            TenantScope::Named(t) => f.write_str(t),
            TenantScope::All => f.write_str("(all)"),
        }
    }
}

/// One line per request, used by logs and the table test.
impl fmt::Display for RequestInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestInfo::NonResource { verb, tenant, path } => write!(f, "nonresource {verb} tenant={tenant} {path}"),
            RequestInfo::Resource(r) => {
                let group = if r.group.is_empty() { "core" } else { &r.group };
                write!(f, "{} tenant={} {group}/{}", r.verb.as_str(), r.tenant, r.version)?;
                if let Some(ns) = &r.namespace {
                    write!(f, " ns={ns}")?;
                }
                write!(f, " {}", r.resource)?;
                if let Some(name) = &r.name {
                    write!(f, "/{name}")?;
                }
                if let Some(sub) = &r.subresource {
                    write!(f, "/{sub}")?;
                }
                Ok(())
            }
        }
    }
}

/// Percent-decodes one component of a URL query (`+` is a space; a `%` not followed by two
/// hex digits stays as it is; invalid UTF-8 is replaced).
pub fn decode_query_component(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A URL query's `key=value` pairs, decoded, in order (a key may repeat, as exec's
/// `command` does); a pair without `=` has an empty value.
pub fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (decode_query_component(k), decode_query_component(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_components_decode() {
        assert_eq!(decode_query_component("sh%20-c+x%3D1"), "sh -c x=1");
        assert_eq!(decode_query_component("100%"), "100%");
        assert_eq!(decode_query_component("%zz%4"), "%zz%4");
        let pairs: Vec<_> = query_pairs("command=sh&command=-c&&tty&a=b%26c").collect();
        let want = [("command", "sh"), ("command", "-c"), ("tty", ""), ("a", "b&c")];
        assert_eq!(pairs, want.map(|(k, v)| (k.to_string(), v.to_string())));
    }

    /// Every URL form, with the request info it must give (or the error).
    #[test]
    fn request_info_table() {
        let table: &[(&str, &str, &str)] = &[
            // Short path: the caller's tenant.
            ("GET", "/api/v1/namespaces/default/pods", "list tenant=(caller) core/v1 ns=default pods"),
            ("GET", "/api/v1/namespaces/default/pods?watch=true", "watch tenant=(caller) core/v1 ns=default pods"),
            ("GET", "/api/v1/namespaces/default/pods?watch=True", "watch tenant=(caller) core/v1 ns=default pods"),
            ("GET", "/api/v1/namespaces/default/pods?watch=1&limit=5", "watch tenant=(caller) core/v1 ns=default pods"),
            ("GET", "/api/v1/namespaces/default/pods?watch=false", "list tenant=(caller) core/v1 ns=default pods"),
            ("GET", "/api/v1/watch/namespaces/default/pods", "watch tenant=(caller) core/v1 ns=default pods"),
            ("GET", "/api/v1/watch/namespaces/default/pods/p1", "watch tenant=(caller) core/v1 ns=default pods/p1"),
            ("GET", "/api/v1/namespaces/default/pods/p1", "get tenant=(caller) core/v1 ns=default pods/p1"),
            ("HEAD", "/api/v1/namespaces/default/pods/p1", "get tenant=(caller) core/v1 ns=default pods/p1"),
            ("GET", "/api/v1/namespaces/default/pods/p1/", "get tenant=(caller) core/v1 ns=default pods/p1"),
            ("GET", "/api/v1/namespaces/default/pods/p1/log", "get tenant=(caller) core/v1 ns=default pods/p1/log"),
            ("POST", "/api/v1/namespaces/default/pods", "create tenant=(caller) core/v1 ns=default pods"),
            (
                "POST",
                "/api/v1/namespaces/default/pods/p1/binding",
                "create tenant=(caller) core/v1 ns=default pods/p1/binding",
            ),
            ("PUT", "/api/v1/namespaces/default/pods/p1", "update tenant=(caller) core/v1 ns=default pods/p1"),
            (
                "PUT",
                "/api/v1/namespaces/default/pods/p1/status",
                "update tenant=(caller) core/v1 ns=default pods/p1/status",
            ),
            ("PATCH", "/api/v1/namespaces/default/pods/p1", "patch tenant=(caller) core/v1 ns=default pods/p1"),
            ("DELETE", "/api/v1/namespaces/default/pods/p1", "delete tenant=(caller) core/v1 ns=default pods/p1"),
            ("DELETE", "/api/v1/namespaces/default/pods", "deletecollection tenant=(caller) core/v1 ns=default pods"),
            ("GET", "/api/v1/pods", "list tenant=(caller) core/v1 pods"),
            ("GET", "/api/v1/nodes/n1", "get tenant=(caller) core/v1 nodes/n1"),
            ("PUT", "/api/v1/nodes/n1/status", "update tenant=(caller) core/v1 nodes/n1/status"),
            // Namespaces themselves and their subresources.
            ("GET", "/api/v1/namespaces", "list tenant=(caller) core/v1 namespaces"),
            ("GET", "/api/v1/namespaces/default", "get tenant=(caller) core/v1 namespaces/default"),
            ("PUT", "/api/v1/namespaces/ns1/status", "update tenant=(caller) core/v1 namespaces/ns1/status"),
            ("PUT", "/api/v1/namespaces/ns1/finalize", "update tenant=(caller) core/v1 namespaces/ns1/finalize"),
            ("DELETE", "/api/v1/namespaces/ns1", "delete tenant=(caller) core/v1 namespaces/ns1"),
            // Groups.
            (
                "GET",
                "/apis/apps/v1/namespaces/default/deployments/d/scale",
                "get tenant=(caller) apps/v1 ns=default deployments/d/scale",
            ),
            ("GET", "/apis/apps/v1/deployments", "list tenant=(caller) apps/v1 deployments"),
            (
                "POST",
                "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
                "create tenant=(caller) rbac.authorization.k8s.io/v1 clusterrolebindings",
            ),
            (
                "GET",
                "/apis/rbac.authorization.k8s.io/v1/clusterroles/system:node",
                "get tenant=(caller) rbac.authorization.k8s.io/v1 clusterroles/system:node",
            ),
            // Tenant objects.
            ("GET", "/apis/atoll.io/v1/tenants", "list tenant=(caller) atoll.io/v1 tenants"),
            ("POST", "/apis/atoll.io/v1/tenants", "create tenant=(caller) atoll.io/v1 tenants"),
            ("GET", "/apis/atoll.io/v1/tenants/acme", "get tenant=(caller) atoll.io/v1 tenants/acme"),
            ("DELETE", "/apis/atoll.io/v1/tenants/acme", "delete tenant=(caller) atoll.io/v1 tenants/acme"),
            ("PUT", "/apis/atoll.io/v1/tenants/acme/status", "update tenant=(caller) atoll.io/v1 tenants/acme/status"),
            ("GET", "/apis/atoll.io/v1/watch/tenants", "watch tenant=(caller) atoll.io/v1 tenants"),
            // Tenant path.
            ("GET", "/api/v1/tenants/acme/namespaces", "list tenant=acme core/v1 namespaces"),
            ("GET", "/api/v1/tenants/acme/namespaces/ns1", "get tenant=acme core/v1 namespaces/ns1"),
            ("GET", "/api/v1/tenants/acme/namespaces/ns1/pods", "list tenant=acme core/v1 ns=ns1 pods"),
            ("POST", "/api/v1/tenants/acme/namespaces/ns1/pods", "create tenant=acme core/v1 ns=ns1 pods"),
            ("GET", "/api/v1/tenants/acme/namespaces/ns1/pods/p", "get tenant=acme core/v1 ns=ns1 pods/p"),
            (
                "PUT",
                "/api/v1/tenants/acme/namespaces/ns1/pods/p/status",
                "update tenant=acme core/v1 ns=ns1 pods/p/status",
            ),
            ("GET", "/api/v1/tenants/acme/pods", "list tenant=acme core/v1 pods"),
            ("GET", "/api/v1/watch/tenants/acme/namespaces/n/pods", "watch tenant=acme core/v1 ns=n pods"),
            ("GET", "/apis/apps/v1/tenants/acme/namespaces/n/deployments", "list tenant=acme apps/v1 ns=n deployments"),
            ("GET", "/apis/atoll.io/v1/tenants/acme/users/u1", "get tenant=acme atoll.io/v1 users/u1"),
            ("GET", "/apis/atoll.io/v1/tenants/acme/users", "list tenant=acme atoll.io/v1 users"),
            ("GET", "/api/v1/tenants/system/nodes", "list tenant=system core/v1 nodes"),
            // Every tenant.
            ("GET", "/api/v1/tenants/all/pods", "list tenant=(all) core/v1 pods"),
            ("GET", "/api/v1/tenants/all/pods?watch=1", "watch tenant=(all) core/v1 pods"),
            // Prefix.
            ("GET", "/tenants/acme/api/v1/namespaces/n/pods", "list tenant=acme core/v1 ns=n pods"),
            (
                "GET",
                "/tenants/acme/apis/apps/v1/namespaces/n/deployments/d",
                "get tenant=acme apps/v1 ns=n deployments/d",
            ),
            ("GET", "/tenants/acme/api/v1/tenants/acme/namespaces/n/pods", "list tenant=acme core/v1 ns=n pods"),
            ("GET", "/tenants/acme/apis/atoll.io/v1/tenants/acme", "get tenant=acme atoll.io/v1 tenants/acme"),
            ("GET", "/tenants/acme/api", "nonresource get tenant=acme /api"),
            ("GET", "/tenants/acme/api/v1", "nonresource get tenant=acme /api/v1"),
            ("GET", "/tenants/acme/apis", "nonresource get tenant=acme /apis"),
            ("GET", "/tenants/acme/apis/apps/v1", "nonresource get tenant=acme /apis/apps/v1"),
            ("GET", "/tenants/acme/openapi/v3", "nonresource get tenant=acme /openapi/v3"),
            ("GET", "/tenants/acme/version", "nonresource get tenant=acme /version"),
            ("GET", "/tenants/acme", "nonresource get tenant=acme /"),
            // Non-resource paths.
            ("GET", "/", "nonresource get tenant=(caller) /"),
            ("GET", "/api", "nonresource get tenant=(caller) /api"),
            ("GET", "/api/v1", "nonresource get tenant=(caller) /api/v1"),
            ("GET", "/apis", "nonresource get tenant=(caller) /apis"),
            ("GET", "/apis/apps", "nonresource get tenant=(caller) /apis/apps"),
            ("GET", "/apis/apps/v1", "nonresource get tenant=(caller) /apis/apps/v1"),
            ("GET", "/healthz", "nonresource get tenant=(caller) /healthz"),
            ("GET", "/openapi/v3/apis/apps/v1", "nonresource get tenant=(caller) /openapi/v3/apis/apps/v1"),
            ("POST", "/version", "nonresource post tenant=(caller) /version"),
            // Malformed and ambiguous.
            ("GET", "/tenants/acme/api/v1/tenants/other/pods", "error: the URL names two different tenants"),
            ("GET", "/tenants/acme/api/v1/tenants/all/pods", "error: the URL names two different tenants"),
            ("GET", "/tenants/Acme/api/v1/pods", "error: invalid tenant name \"Acme\": must be a DNS-1123 label"),
            ("GET", "/api/v1/tenants/a_b/pods", "error: invalid tenant name \"a_b\": must be a DNS-1123 label"),
            ("GET", "/api/v1/tenants/-x/pods", "error: invalid tenant name \"-x\": must be a DNS-1123 label"),
            ("GET", "/api/v1/namespaces/Bad/pods", "error: invalid namespace \"Bad\": must be a DNS-1123 label"),
            ("GET", "/tenants", "error: the server could not find the requested resource"),
            ("GET", "/api/v1/namespaces/n/pods/p/log/extra", "error: the server could not find the requested resource"),
            ("GET", "/api/v1//pods", "error: malformed path \"/api/v1//pods\""),
            ("GET", "/api/v1/namespaces/../pods", "error: malformed path \"/api/v1/namespaces/../pods\""),
            ("GET", "/api/v1/namespaces/a%2Fb/pods", "error: malformed path \"/api/v1/namespaces/a%2Fb/pods\""),
            ("GET", "api/v1/pods", "error: path \"api/v1/pods\" is not absolute"),
            ("GET", "/api/v1/pods?watch=yes", "error: invalid value \"yes\" for query parameter watch: not a boolean"),
            (
                "PUT",
                "/api/v1/namespaces/n/pods",
                "error: the server does not allow this method on the requested resource",
            ),
            ("PATCH", "/api/v1/pods", "error: the server does not allow this method on the requested resource"),
            ("OPTIONS", "/api/v1/pods/p", "error: the server does not allow this method on the requested resource"),
        ];
        let mut failures = Vec::new();
        for (method, url, want) in table {
            let (path, query) = match url.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (*url, None),
            };
            let got = match parse(method, path, query) {
                Ok(info) => info.to_string(),
                Err(e) => format!("error: {e}"),
            };
            if got != *want {
                failures.push(format!("{method} {url}\n   want {want}\n    got {got}"));
            }
        }
        assert!(failures.is_empty(), "{} of {} rows differ:\n{}", failures.len(), table.len(), failures.join("\n"));
    }

    #[test]
    fn dns_labels() {
        for ok in ["a", "a-b", "0", "abc123", &"x".repeat(63)] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a.b", "a_b", &"x".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }
}
