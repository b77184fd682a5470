//! RBAC evaluation, pure: policy rules, subjects, request attributes, and the decision of
//! one tenant's [`Policy`]. No I/O and no locks, so every rule is table-tested here.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use api::json::At;
use serde_json::{Value, json};

/// One `PolicyRule` of a Role or ClusterRole.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub verbs: Vec<String>,
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub resource_names: Vec<String>,
    pub non_resource_urls: Vec<String>,
}

fn strings(v: &Value, field: &str) -> Vec<String> {
    v.get(field).and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect()
}

impl Rule {
    pub fn from_json(v: &Value) -> Rule {
        Rule {
            verbs: strings(v, "verbs"),
            api_groups: strings(v, "apiGroups"),
            resources: strings(v, "resources"),
            resource_names: strings(v, "resourceNames"),
            non_resource_urls: strings(v, "nonResourceURLs"),
        }
    }

    /// The rules of a role object (`rules`, absent or null meaning none).
    pub fn list_from(obj: &Value) -> Vec<Rule> {
        obj.get("rules").and_then(Value::as_array).into_iter().flatten().map(Rule::from_json).collect()
    }

    pub fn to_json(&self) -> Value {
        let mut out = json!({"verbs": self.verbs});
        let mut put = |k: &str, v: &[String]| {
            if !v.is_empty() {
                out[k] = json!(v);
            }
        };
        put("apiGroups", &self.api_groups);
        put("resources", &self.resources);
        put("resourceNames", &self.resource_names);
        put("nonResourceURLs", &self.non_resource_urls);
        out
    }

    /// Kubernetes' compact form of a rule in messages:
    /// `{APIGroups:[""], Resources:["secrets"], Verbs:["get"]}`.
    pub fn describe(&self) -> String {
        let quoted = |v: &[String]| v.iter().map(|x| format!("{x:?}")).collect::<Vec<_>>().join(", ");
        let mut parts = Vec::new();
        for (label, list) in [
            ("APIGroups", &self.api_groups),
            ("Resources", &self.resources),
            ("ResourceNames", &self.resource_names),
            ("NonResourceURLs", &self.non_resource_urls),
        ] {
            if !list.is_empty() {
                parts.push(format!("{label}:[{}]", quoted(list)));
            }
        }
        parts.push(format!("Verbs:[{}]", quoted(&self.verbs)));
        format!("{{{}}}", parts.join(", "))
    }

    fn has(list: &[String], item: &str) -> bool {
        list.iter().any(|x| x == "*" || x == item)
    }

    /// Whether this rule allows `attrs` (Kubernetes' `RuleAllows`).
    pub fn allows(&self, attrs: &Attributes) -> bool {
        match attrs {
            Attributes::Resource(r) => {
                Self::has(&self.verbs, &r.verb)
                    && Self::has(&self.api_groups, &r.group)
                    && self.resource_matches(&r.resource, r.subresource.as_deref())
                    && (self.resource_names.is_empty()
                        || r.name.as_deref().is_some_and(|n| self.resource_names.iter().any(|x| x == n)))
            }
            Attributes::NonResource { verb, path } => {
                Self::has(&self.verbs, verb) && self.non_resource_urls.iter().any(|u| url_matches(u, path))
            }
        }
    }

    fn resource_matches(&self, resource: &str, subresource: Option<&str>) -> bool {
        self.resources.iter().any(|rule| {
            if rule == "*" {
                return true;
            }
            match subresource {
                None => rule == resource,
                // `pods/status`, or `*/status` for every resource's status.
                Some(sub) => rule.split_once('/').is_some_and(|(r, s)| s == sub && (r == resource || r == "*")),
            }
        })
    }
}

/// A non-resource URL rule: exact, `*`, or a prefix ending in `*`.
fn url_matches(rule: &str, path: &str) -> bool {
    rule == "*" || rule == path || rule.strip_suffix('*').is_some_and(|prefix| path.starts_with(prefix))
}

/// Who a binding grants to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    User(String),
    Group(String),
    /// `system:serviceaccount:{namespace}:{name}`.
    ServiceAccount {
        namespace: String,
        name: String,
    },
}

impl Subject {
    /// A binding's subject; `default_namespace` for service accounts that name none (a
    /// RoleBinding's own namespace, as Kubernetes fills in).
    pub fn from_json(v: &Value, default_namespace: Option<&str>) -> Option<Subject> {
        let name = v.get("name").and_then(Value::as_str)?.to_string();
        match v.get("kind").and_then(Value::as_str)? {
            "User" => Some(Subject::User(name)),
            "Group" => Some(Subject::Group(name)),
            "ServiceAccount" => {
                let namespace =
                    v.get("namespace").and_then(Value::as_str).filter(|n| !n.is_empty()).or(default_namespace)?;
                Some(Subject::ServiceAccount { namespace: namespace.to_string(), name })
            }
            _ => None,
        }
    }

    pub fn applies_to(&self, user: &UserRef) -> bool {
        match self {
            Subject::User(n) => n == user.name,
            Subject::Group(g) => user.groups.iter().any(|ug| ug == g),
            Subject::ServiceAccount { namespace, name } => user
                .name
                .strip_prefix("system:serviceaccount:")
                .and_then(|rest| rest.split_once(':'))
                .is_some_and(|(ns, n)| ns == namespace && n == name),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Subject::User(n) => format!("User {n:?}"),
            Subject::Group(g) => format!("Group {g:?}"),
            Subject::ServiceAccount { namespace, name } => format!("ServiceAccount \"{namespace}/{name}\""),
        }
    }
}

/// The caller, as the authorizer sees it.
#[derive(Clone, Copy, Debug)]
pub struct UserRef<'a> {
    pub name: &'a str,
    pub groups: &'a [String],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceAttributes {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

/// What a request does, as RBAC sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attributes {
    Resource(ResourceAttributes),
    NonResource { verb: String, path: String },
}

impl Attributes {
    /// A request on a resource: `verb` on `group`/`resource`[/`subresource`], in `namespace` (or cluster-wide),
    /// on the object `name` (or the collection).
    pub fn resource(
        verb: &str,
        group: &str,
        resource: &str,
        subresource: Option<&str>,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Attributes {
        Attributes::Resource(ResourceAttributes {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: subresource.map(str::to_string),
            namespace: namespace.map(str::to_string),
            name: name.map(str::to_string),
        })
    }
}

/// What a binding points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleRef {
    /// `Role` or `ClusterRole`.
    pub cluster: bool,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub name: String,
    pub role: RoleRef,
    pub subjects: Vec<Subject>,
}

impl Binding {
    pub fn from_json(obj: &Value) -> Option<Binding> {
        let name = obj.at("/metadata/name").and_then(Value::as_str)?.to_string();
        let namespace = obj.at("/metadata/namespace").and_then(Value::as_str);
        let cluster = match obj.at("/roleRef/kind").and_then(Value::as_str)? {
            "ClusterRole" => true,
            "Role" => false,
            _ => return None,
        };
        let role = RoleRef { cluster, name: obj.at("/roleRef/name").and_then(Value::as_str)?.to_string() };
        let subjects = obj
            .get("subjects")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|s| Subject::from_json(s, namespace))
            .collect();
        Some(Binding { name, role, subjects })
    }
}

/// A ClusterRole as the index keeps it: its rules, and what aggregation needs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterRole {
    pub rules: Arc<Vec<Rule>>,
    pub labels: BTreeMap<String, String>,
    /// `aggregationRule.clusterRoleSelectors`, as label selectors in JSON form.
    pub aggregation: Option<Vec<Value>>,
}

/// One tenant's RBAC objects.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// namespace -> name -> rules (nested, so a lookup allocates nothing).
    pub roles: HashMap<String, HashMap<String, Arc<Vec<Rule>>>>,
    pub cluster_roles: HashMap<String, ClusterRole>,
    /// namespace -> binding name -> binding.
    pub role_bindings: HashMap<String, BTreeMap<String, Binding>>,
    pub cluster_role_bindings: BTreeMap<String, Binding>,
}

/// An authorization decision, with the reason Kubernetes' audit would record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow(String),
    Deny(String),
}

impl Decision {
    pub fn allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }
}

impl Policy {
    fn role_rules(&self, namespace: Option<&str>, role: &RoleRef) -> Option<&Arc<Vec<Rule>>> {
        if role.cluster {
            self.cluster_roles.get(&role.name).map(|r| &r.rules)
        } else {
            self.roles.get(namespace?)?.get(&role.name)
        }
    }

    /// Every (binding, rules) that applies to `user` for a request in `namespace`:
    /// ClusterRoleBindings first, then the namespace's RoleBindings.
    pub fn visit<'a>(
        &'a self,
        user: &UserRef,
        namespace: Option<&str>,
        mut f: impl FnMut(&'a Binding, Option<&'a str>, &'a [Rule]) -> bool,
    ) {
        for b in self.cluster_role_bindings.values() {
            if b.subjects.iter().any(|s| s.applies_to(user))
                && let Some(rules) = self.role_rules(None, &b.role)
                && f(b, None, rules)
            {
                return;
            }
        }
        let Some(ns) = namespace else { return };
        let Some((ns, bindings)) = self.role_bindings.get_key_value(ns) else { return };
        for b in bindings.values() {
            if b.subjects.iter().any(|s| s.applies_to(user))
                && let Some(rules) = self.role_rules(Some(ns), &b.role)
                && f(b, Some(ns.as_str()), rules)
            {
                return;
            }
        }
    }

    /// The stage's fast path: whether any rule of any binding naming the user allows the
    /// request (no reason is built).
    pub fn allows(&self, user: &UserRef, attrs: &Attributes) -> bool {
        let namespace = match attrs {
            Attributes::Resource(r) => r.namespace.as_deref(),
            Attributes::NonResource { .. } => None,
        };
        let mut allowed = false;
        self.visit(user, namespace, |_, _, rules| {
            allowed = rules.iter().any(|r| r.allows(attrs));
            allowed
        });
        allowed
    }

    /// Kubernetes' RBAC decision: allowed if any rule of any binding that names the user
    /// allows the request; otherwise denied (RBAC has no explicit deny).
    pub fn authorize(&self, user: &UserRef, attrs: &Attributes) -> Decision {
        let namespace = match attrs {
            Attributes::Resource(r) => r.namespace.as_deref(),
            Attributes::NonResource { .. } => None,
        };
        let mut found = None;
        self.visit(user, namespace, |binding, ns, rules| {
            if rules.iter().any(|r| r.allows(attrs)) {
                let role = if binding.role.cluster { "ClusterRole" } else { "Role" };
                let what = match ns {
                    None => format!("ClusterRoleBinding {:?}", binding.name),
                    Some(ns) => format!("RoleBinding \"{}/{ns}\"", binding.name),
                };
                let subject = binding.subjects.iter().find(|s| s.applies_to(user)).map(Subject::describe);
                found = Some(format!(
                    "RBAC: allowed by {what} of {role} {:?} to {}",
                    binding.role.name,
                    subject.unwrap_or_default()
                ));
                true
            } else {
                false
            }
        });
        match found {
            Some(reason) => Decision::Allow(reason),
            None => Decision::Deny(String::new()),
        }
    }

    /// Every rule that applies to `user` in `namespace` (cluster-wide ones included).
    pub fn rules_for(&self, user: &UserRef, namespace: Option<&str>) -> Vec<Rule> {
        let mut out = Vec::new();
        self.visit(user, namespace, |_, _, rules| {
            out.extend(rules.iter().cloned());
            false
        });
        out
    }
}

/// One indivisible permission a rule grants, for escalation checks.
enum Atom<'a> {
    Resource { verb: &'a str, group: &'a str, resource: &'a str, name: Option<&'a str> },
    Url { verb: &'a str, url: &'a str },
}

/// Whether `held` covers the literal permission `atom`: a wildcard is covered only by a
/// wildcard (so `*` cannot be granted by someone holding only `pods`), as in Kubernetes'
/// `Covers`.
fn covers(held: &Rule, atom: &Atom) -> bool {
    let has = |list: &[String], x: &str| list.iter().any(|h| h == "*" || h == x);
    match atom {
        Atom::Resource { verb, group, resource, name } => {
            has(&held.verbs, verb)
                && has(&held.api_groups, group)
                && held.resources.iter().any(|h| {
                    h == "*"
                        || h == resource
                        || (h.starts_with("*/") && resource.split_once('/').is_some_and(|(_, s)| h[2..] == *s))
                })
                && (held.resource_names.is_empty() || name.is_some_and(|n| held.resource_names.iter().any(|h| h == n)))
        }
        Atom::Url { verb, url } => {
            has(&held.verbs, verb)
                && held
                    .non_resource_urls
                    .iter()
                    .any(|h| h == "*" || h == url || h.strip_suffix('*').is_some_and(|prefix| url.starts_with(prefix)))
        }
    }
}

/// The rules of `wanted` that `held` does not cover (empty: no escalation).
pub fn uncovered(held: &[Rule], wanted: &[Rule]) -> Vec<Rule> {
    let mut missing = Vec::new();
    for rule in wanted {
        let mut atoms = Vec::new();
        for verb in &rule.verbs {
            for group in &rule.api_groups {
                for resource in &rule.resources {
                    if rule.resource_names.is_empty() {
                        atoms.push(Atom::Resource { verb, group, resource, name: None });
                    }
                    for name in &rule.resource_names {
                        atoms.push(Atom::Resource { verb, group, resource, name: Some(name) });
                    }
                }
            }
            for url in &rule.non_resource_urls {
                atoms.push(Atom::Url { verb, url });
            }
        }
        if !atoms.iter().all(|a| held.iter().any(|h| covers(h, a))) {
            missing.push(rule.clone());
        }
    }
    missing
}

/// Whether a label selector (`matchLabels`, `matchExpressions`) in JSON form selects
/// `labels` (`api::selector`'s matcher: an empty selector selects everything, a malformed
/// one nothing).
pub fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    api::selector::label_selector_selects_with(selector, |k| labels.get(k).map(String::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> Rule {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
        Rule {
            verbs: s(verbs),
            api_groups: s(groups),
            resources: s(resources),
            resource_names: s(names),
            non_resource_urls: Vec::new(),
        }
    }

    fn url_rule(verbs: &[&str], urls: &[&str]) -> Rule {
        Rule {
            verbs: verbs.iter().map(|x| x.to_string()).collect(),
            non_resource_urls: urls.iter().map(|x| x.to_string()).collect(),
            ..Rule::default()
        }
    }

    use Attributes as A;

    fn binding(name: &str, cluster: bool, role: &str, subjects: Vec<Subject>) -> Binding {
        Binding { name: name.into(), role: RoleRef { cluster, name: role.into() }, subjects }
    }

    /// A tenant with: `reader` (ClusterRole, get/list/watch pods) bound cluster-wide to
    /// group `readers`; `cm-editor` (Role in `team`, everything on one configmap) bound to
    /// alice in `team`; `ops` (ClusterRole, deletecollection of deployments) bound by a
    /// RoleBinding in `ops` to the service account `ops/bot`; `health` (ClusterRole,
    /// `/healthz` and `/logs/*`) bound to everyone authenticated.
    fn policy() -> Policy {
        let mut p = Policy::default();
        let cr = |rules: Vec<Rule>| ClusterRole { rules: Arc::new(rules), ..ClusterRole::default() };
        p.cluster_roles.insert("reader".into(), cr(vec![rule(&["get", "list", "watch"], &[""], &["pods"], &[])]));
        p.cluster_roles.insert("ops".into(), cr(vec![rule(&["deletecollection"], &["apps"], &["deployments"], &[])]));
        p.cluster_roles.insert(
            "health".into(),
            cr(vec![url_rule(&["get"], &["/healthz", "/logs/*"]), rule(&["get"], &[""], &["pods/status"], &[])]),
        );
        p.roles.entry("team".into()).or_default().insert(
            "cm-editor".into(),
            Arc::new(vec![
                rule(&["*"], &[""], &["configmaps"], &["settings"]),
                rule(&["create"], &[""], &["*/scale"], &[]),
            ]),
        );
        p.cluster_role_bindings
            .insert("readers".into(), binding("readers", true, "reader", vec![Subject::Group("readers".into())]));
        p.cluster_role_bindings.insert(
            "health".into(),
            binding("health", true, "health", vec![Subject::Group("system:authenticated".into())]),
        );
        p.role_bindings
            .entry("team".into())
            .or_default()
            .insert("alice-cm".into(), binding("alice-cm", false, "cm-editor", vec![Subject::User("alice".into())]));
        p.role_bindings.entry("ops".into()).or_default().insert(
            "bot".into(),
            binding("bot", true, "ops", vec![Subject::ServiceAccount { namespace: "ops".into(), name: "bot".into() }]),
        );
        // A binding to a role that does not exist grants nothing.
        p.role_bindings
            .entry("team".into())
            .or_default()
            .insert("dangling".into(), binding("dangling", false, "missing", vec![Subject::User("alice".into())]));
        p
    }

    #[test]
    fn decisions_follow_kubernetes_rbac() {
        let p = policy();
        let auth = vec!["system:authenticated".to_string()];
        let readers = vec!["readers".to_string(), "system:authenticated".to_string()];
        let alice = UserRef { name: "alice", groups: &auth };
        let reader = UserRef { name: "rita", groups: &readers };
        let bot = UserRef { name: "system:serviceaccount:ops:bot", groups: &auth };
        let other_bot = UserRef { name: "system:serviceaccount:team:bot", groups: &auth };
        let cases: Vec<(&str, UserRef, Attributes, bool)> = vec![
            ("group reader lists pods anywhere", reader, A::resource("list", "", "pods", None, Some("x"), None), true),
            (
                "group reader watches pods cluster-wide",
                reader,
                A::resource("watch", "", "pods", None, None, None),
                true,
            ),
            (
                "group reader cannot delete pods",
                reader,
                A::resource("delete", "", "pods", None, Some("x"), Some("p")),
                false,
            ),
            (
                "reader's pods rule is not pods/log",
                reader,
                A::resource("get", "", "pods", Some("log"), Some("x"), Some("p")),
                false,
            ),
            ("reader has no apps pods", reader, A::resource("get", "apps", "pods", None, Some("x"), Some("p")), false),
            ("alice has nothing cluster-wide", alice, A::resource("list", "", "pods", None, None, None), false),
            (
                "alice gets the named configmap",
                alice,
                A::resource("get", "", "configmaps", None, Some("team"), Some("settings")),
                true,
            ),
            (
                "alice's wildcard verb covers patch",
                alice,
                A::resource("patch", "", "configmaps", None, Some("team"), Some("settings")),
                true,
            ),
            (
                "resourceNames: another name",
                alice,
                A::resource("get", "", "configmaps", None, Some("team"), Some("other")),
                false,
            ),
            (
                "resourceNames: list has no name",
                alice,
                A::resource("list", "", "configmaps", None, Some("team"), None),
                false,
            ),
            (
                "resourceNames: create has no name",
                alice,
                A::resource("create", "", "configmaps", None, Some("team"), None),
                false,
            ),
            (
                "a Role stays in its namespace",
                alice,
                A::resource("get", "", "configmaps", None, Some("prod"), Some("settings")),
                false,
            ),
            (
                "*/scale matches any scale",
                alice,
                A::resource("create", "", "deployments", Some("scale"), Some("team"), Some("d")),
                true,
            ),
            (
                "*/scale is not the resource",
                alice,
                A::resource("create", "", "deployments", None, Some("team"), None),
                false,
            ),
            (
                "cluster role via RoleBinding",
                bot,
                A::resource("deletecollection", "apps", "deployments", None, Some("ops"), None),
                true,
            ),
            (
                "... only in that namespace",
                bot,
                A::resource("deletecollection", "apps", "deployments", None, Some("team"), None),
                false,
            ),
            (
                "a same-named account elsewhere",
                other_bot,
                A::resource("deletecollection", "apps", "deployments", None, Some("ops"), None),
                false,
            ),
            (
                "subresource by name",
                alice,
                A::resource("get", "", "pods", Some("status"), Some("team"), Some("p")),
                true,
            ),
            ("exact URL", alice, Attributes::NonResource { verb: "get".into(), path: "/healthz".into() }, true),
            ("URL prefix", alice, Attributes::NonResource { verb: "get".into(), path: "/logs/kubelet/x".into() }, true),
            ("URL prefix bound", alice, Attributes::NonResource { verb: "get".into(), path: "/logsx".into() }, false),
            ("URL verb", alice, Attributes::NonResource { verb: "post".into(), path: "/healthz".into() }, false),
            ("unknown URL", alice, Attributes::NonResource { verb: "get".into(), path: "/metrics".into() }, false),
        ];
        for (what, user, attrs, want) in cases {
            let got = p.authorize(&user, &attrs);
            assert_eq!(got.allowed(), want, "{what}: {got:?}");
            assert_eq!(p.allows(&user, &attrs), want, "{what}: the fast path agrees");
        }
        let reason = p.authorize(&alice, &A::resource("get", "", "configmaps", None, Some("team"), Some("settings")));
        assert_eq!(
            reason,
            Decision::Allow(
                "RBAC: allowed by RoleBinding \"alice-cm/team\" of Role \"cm-editor\" to User \"alice\"".into()
            )
        );
    }

    #[test]
    fn escalation_needs_every_granted_permission() {
        let held = vec![rule(&["get", "list"], &[""], &["pods", "configmaps"], &[]), url_rule(&["get"], &["/api/*"])];
        let cases: Vec<(&str, Rule, bool)> = vec![
            ("a subset", rule(&["get"], &[""], &["pods"], &[]), true),
            ("named objects of a held resource", rule(&["list"], &[""], &["configmaps"], &["a", "b"]), true),
            ("another verb", rule(&["delete"], &[""], &["pods"], &[]), false),
            ("a wildcard verb is not covered by a list", rule(&["*"], &[""], &["pods"], &[]), false),
            ("a wildcard resource", rule(&["get"], &[""], &["*"], &[]), false),
            ("another group", rule(&["get"], &["apps"], &["pods"], &[]), false),
            ("a URL under a held prefix", url_rule(&["get"], &["/api/v1"]), true),
            ("a URL outside it", url_rule(&["get"], &["/apis"]), false),
        ];
        for (what, wanted, ok) in cases {
            assert_eq!(uncovered(&held, std::slice::from_ref(&wanted)).is_empty(), ok, "{what}");
        }
        let star = vec![rule(&["*"], &["*"], &["*"], &[]), url_rule(&["*"], &["*"])];
        assert!(uncovered(&star, &[rule(&["*"], &["*"], &["*"], &[]), url_rule(&["get"], &["/x*"])]).is_empty());
        let named = vec![rule(&["get"], &[""], &["secrets"], &["one"])];
        assert!(uncovered(&named, &[rule(&["get"], &[""], &["secrets"], &["one"])]).is_empty());
        assert!(!uncovered(&named, &[rule(&["get"], &[""], &["secrets"], &[])]).is_empty(), "all names from one");
    }

    #[test]
    fn aggregation_selectors() {
        let labels: BTreeMap<String, String> =
            [("rbac.example.com/aggregate-to-view".to_string(), "true".to_string())].into_iter().collect();
        assert!(selects(&json!({"matchLabels": {"rbac.example.com/aggregate-to-view": "true"}}), &labels));
        assert!(!selects(&json!({"matchLabels": {"rbac.example.com/aggregate-to-edit": "true"}}), &labels));
        assert!(selects(
            &json!({"matchExpressions": [{"key": "rbac.example.com/aggregate-to-view", "operator": "Exists"}]}),
            &labels
        ));
        assert!(!selects(&json!({"matchExpressions": [{"key": "x", "operator": "Bogus"}]}), &labels));
    }
}
