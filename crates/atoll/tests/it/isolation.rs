//! The isolation proof (issue 4): tenants A (`tena`) and B (`tenb`), each with an
//! administrator (`Tenant.spec.admins`) and an ordinary user (a RoleBinding of `edit` in one
//! namespace). For every kind B serves (found through discovery, B's own custom resource
//! included), every URL form and every verb and subresource, A's callers are refused or
//! answered exactly as if B's object did not exist, and no answer A gets (objects, errors,
//! lists, watch events, discovery, OpenAPI, access reviews) carries anything of B's.
//!
//! How leaks are found: every name in B starts with `bnm`, every value B stores holds
//! `bctz9`. An answer to A may carry `bnm…` only where A's own request named it (a refusal
//! repeats the name it refuses), and never `bctz9`. Each request about a real object of B
//! is also made about a phantom object (same shape, names that exist nowhere), and the two
//! answers must be the same once the names are set aside: so an answer cannot tell
//! whether B's object (or namespace, group, user) exists. Meanwhile B's objects keep
//! changing, so a watch of A that let B's changes through would show them.
//!
//! The matrix runs over HTTPS through the API client's raw requests (many at once); a few
//! real kubectl calls check the same through kubectl's eyes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::server::{Server, tenant_admins_json};

const A: &str = "tena";
const B: &str = "tenb";
/// In every name of B's.
const NAME_MARK: &str = "bnm";
/// In every value B stores.
const CONTENT_MARK: &str = "bctz9";
const B_NS: &str = "bnm-ns";
const PHANTOM_NS: &str = "zzph-ns";
const B_GROUP: &str = "bnm.example.com";
const PHANTOM: &str = "zzph";

/// One request and its answer.
#[derive(Clone, Debug)]
pub(crate) struct Exchange {
    who: &'static str,
    method: &'static str,
    path: String,
    body: Option<String>,
    pub(crate) code: u16,
    pub(crate) answer: String,
}

#[derive(Clone)]
pub(crate) struct Caller {
    pub(crate) who: &'static str,
    client: client::Client,
}

impl Caller {
    pub(crate) async fn send(
        &self,
        method: &'static str,
        path: &str,
        accept: &str,
        body: Option<(&str, String)>,
    ) -> Exchange {
        let raw = body.as_ref().map(|(t, b)| (*t, b.clone().into_bytes()));
        let (code, answer) = match self.client.raw(method, path, accept, raw).await {
            Ok((code, bytes)) => (code, String::from_utf8_lossy(&bytes).into_owned()),
            Err(e) => (0, format!("transport error: {e}")),
        };
        Exchange { who: self.who, method, path: path.to_string(), body: body.map(|(_, b)| b), code, answer }
    }
}

pub(crate) fn caller(who: &'static str, kubeconfig: &std::path::Path) -> Result<Caller> {
    let config = client::Config::from_kubeconfig(kubeconfig, None)?;
    Ok(Caller { who, client: client::Client::new(config)? })
}

/// Every `bnm…` token in `text`.
fn name_tokens(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(NAME_MARK) {
        let tail = &rest[i..];
        let len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'))
            .unwrap_or(tail.len());
        out.push(&tail[..len]);
        rest = &tail[len..];
    }
    out
}

/// The leak check every answer to A passes.
fn check_no_leak(x: &Exchange) -> Result<()> {
    ensure!(x.code != 0, "{} {} {}: {}", x.who, x.method, x.path, x.answer);
    ensure!(
        !x.answer.contains(CONTENT_MARK),
        "{} {} {} got B's content ({}): {}",
        x.who,
        x.method,
        x.path,
        x.code,
        x.answer
    );
    let asked = format!("{} {}", x.path, x.body.as_deref().unwrap_or(""));
    for token in name_tokens(&x.answer) {
        // A refusal may join what the request named (`bnmwidgets.bnm.example.com` from the
        // resource and the group in the path).
        ensure!(
            token.trim_end_matches(['.', '-']).split('.').all(|part| asked.contains(part)),
            "{} {} {} got B's name {token:?} it did not ask about ({}): {}",
            x.who,
            x.method,
            x.path,
            x.code,
            x.answer
        );
    }
    Ok(())
}

/// An answer with B's and the phantom's names set aside (and what varies with time).
fn normalized(x: &Exchange, real: &[(&str, &str)]) -> String {
    let mut s = x.answer.clone();
    for (r, p) in real {
        s = s.replace(r, "<name>").replace(p, "<name>");
    }
    s
}

/// One served kind as B's discovery lists it.
#[derive(Clone, Debug)]
struct Kind {
    group: String,
    version: String,
    resource: String,
    kind: String,
    namespaced: bool,
    verbs: Vec<String>,
    subresources: Vec<String>,
}

impl Kind {
    fn base(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }
    fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }
    fn is_tenants(&self) -> bool {
        self.group == "atoll.io" && self.resource == "tenants"
    }
    /// The access reviews: create-only, never stored (checked on their own below).
    fn is_review(&self) -> bool {
        !self.verbs.iter().any(|v| v == "get" || v == "list")
    }
}

/// URL forms, each as a function of (kind base, namespace, rest of the path).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Form {
    Short,
    TenantPath(&'static str),
    Prefix(&'static str),
}

fn collection(form: Form, k: &Kind, ns: Option<&str>) -> String {
    let scoped = match ns {
        Some(ns) if k.namespaced => format!("namespaces/{ns}/{}", k.resource),
        _ => k.resource.clone(),
    };
    match form {
        Form::Short => format!("{}/{scoped}", k.base()),
        Form::TenantPath(t) => format!("{}/tenants/{t}/{scoped}", k.base()),
        Form::Prefix(t) => format!("/tenants/{t}{}/{scoped}", k.base()),
    }
}

async fn discover(admin: &Caller, tenant: &str) -> Result<Vec<Kind>> {
    let json_of = |x: &Exchange| -> Result<Value> {
        ensure!(x.code == 200, "{} {}: {}", x.path, x.code, x.answer);
        Ok(serde_json::from_str(&x.answer)?)
    };
    let mut lists =
        vec![json_of(&admin.send("GET", &format!("/tenants/{tenant}/api/v1"), "application/json", None).await)?];
    let groups = json_of(&admin.send("GET", &format!("/tenants/{tenant}/apis"), "application/json", None).await)?;
    for g in groups["groups"].as_array().context("groups")? {
        for v in g["versions"].as_array().context("versions")? {
            let gv = v["groupVersion"].as_str().context("groupVersion")?;
            lists.push(json_of(
                &admin.send("GET", &format!("/tenants/{tenant}/apis/{gv}"), "application/json", None).await,
            )?);
        }
    }
    let mut kinds: Vec<Kind> = Vec::new();
    for list in lists {
        let gv = list["groupVersion"].as_str().context("groupVersion")?.to_string();
        let (group, version) = gv.split_once('/').map_or((String::new(), gv.clone()), |(g, v)| (g.into(), v.into()));
        let resources = list["resources"].as_array().context("resources")?;
        for r in resources {
            let name = r["name"].as_str().unwrap_or("");
            if name.contains('/') {
                continue;
            }
            let subresources = resources
                .iter()
                .filter_map(|s| s["name"].as_str()?.strip_prefix(&format!("{name}/")).map(str::to_string))
                .collect();
            kinds.push(Kind {
                group: group.clone(),
                version: version.clone(),
                resource: name.to_string(),
                kind: r["kind"].as_str().unwrap_or("").to_string(),
                namespaced: r["namespaced"].as_bool().unwrap_or(false),
                verbs: r["verbs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect(),
                subresources,
            });
        }
    }
    Ok(kinds)
}

/// B's objects: kind (group/resource) -> name.
fn b_objects() -> Vec<(&'static str, &'static str, Value)> {
    let meta =
        |name: &str| json!({"name": name, "labels": {"mark": CONTENT_MARK}, "annotations": {"note": CONTENT_MARK}});
    let mut out = vec![
        (
            "/api/v1",
            "configmaps",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("bnm-cm"),
            "data": {"k": CONTENT_MARK}}),
        ),
        (
            "/api/v1",
            "secrets",
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": meta("bnm-secret"),
            "stringData": {"k": CONTENT_MARK}}),
        ),
        (
            "/api/v1",
            "pods",
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta("bnm-pod"),
            "spec": {"containers": [{"name": "c", "image": "busybox", "args": ["echo", CONTENT_MARK]}]}}),
        ),
        (
            "/api/v1",
            "serviceaccounts",
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta("bnm-sa")}),
        ),
        (
            "/api/v1",
            "services",
            json!({"apiVersion": "v1", "kind": "Service", "metadata": meta("bnm-svc"),
            "spec": {"ports": [{"port": 80}]}}),
        ),
        (
            "/api/v1",
            "events",
            json!({"apiVersion": "v1", "kind": "Event", "metadata": meta("bnm-event"),
            "involvedObject": {"kind": "Pod", "name": "bnm-pod", "namespace": B_NS}, "reason": "Bnm",
            "message": CONTENT_MARK}),
        ),
        (
            "/apis/coordination.k8s.io/v1",
            "leases",
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": meta("bnm-lease"), "spec": {"holderIdentity": CONTENT_MARK}}),
        ),
        (
            "/apis/apps/v1",
            "deployments",
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta("bnm-deploy"),
            "spec": {"selector": {"matchLabels": {"app": "bnm"}}, "template": {"metadata": {"labels": {"app": "bnm"}},
            "spec": {"containers": [{"name": "c", "image": CONTENT_MARK}]}}}}),
        ),
        (
            "/apis/rbac.authorization.k8s.io/v1",
            "roles",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": meta("bnm-role"), "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"],
            "resourceNames": [CONTENT_MARK]}]}),
        ),
        (
            "/apis/rbac.authorization.k8s.io/v1",
            "rolebindings",
            json!({"apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding", "metadata": meta("bnm-rb"),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "bnm-bea"}]}),
        ),
        (
            "/apis/bnm.example.com/v1",
            "bnmwidgets",
            json!({"apiVersion": "bnm.example.com/v1", "kind": "Bnmwidget",
            "metadata": meta("bnm-widget"), "spec": {"color": CONTENT_MARK}}),
        ),
    ];
    for (_, _, obj) in &mut out {
        obj["metadata"]["namespace"] = json!(B_NS);
    }
    out.push((
        "/apis/rbac.authorization.k8s.io/v1",
        "clusterroles",
        json!({"apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole", "metadata": meta("bnm-cr"), "rules": [{"verbs": ["get"], "apiGroups": [""],
        "resources": ["configmaps"], "resourceNames": [CONTENT_MARK]}]}),
    ));
    out
}

fn b_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("bnmwidgets.{B_GROUP}"), "annotations": {"note": CONTENT_MARK}},
        "spec": {
            "group": B_GROUP, "scope": "Namespaced",
            "names": {"plural": "bnmwidgets", "singular": "bnmwidget", "kind": "Bnmwidget", "shortNames": ["bnmw"]},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {"color": {"type": "string", "description": CONTENT_MARK}}},
                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}}],
        },
    })
}

async fn must(x: Exchange, codes: &[u16]) -> Result<Exchange> {
    ensure!(
        codes.contains(&x.code),
        "{} {} {} -> {} (wanted {codes:?}): {}",
        x.who,
        x.method,
        x.path,
        x.code,
        x.answer
    );
    Ok(x)
}

/// Sets up both tenants through the system administrator.
async fn populate(admin: &Caller) -> Result<()> {
    let post = |path: String, obj: Value| {
        let admin = admin.clone();
        async move {
            must(
                admin.send("POST", &path, "application/json", Some(("application/json", obj.to_string()))).await,
                &[201],
            )
            .await
        }
    };
    for (tenant, admins) in [(A, ["ann"]), (B, ["bnm-bob"])] {
        let body: Value = serde_json::from_str(&tenant_admins_json(tenant, &admins))?;
        post("/apis/atoll.io/v1/tenants".into(), body).await?;
    }
    let ns = |n: &str| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "labels": {"mark": CONTENT_MARK}}});
    post(format!("/tenants/{B}/api/v1/namespaces"), ns(B_NS)).await?;
    post(format!("/tenants/{B}/apis/apiextensions.k8s.io/v1/customresourcedefinitions"), b_crd()).await?;
    for (base, resource, obj) in b_objects() {
        let ns_part = obj["metadata"]["namespace"].as_str().map(|n| format!("/namespaces/{n}")).unwrap_or_default();
        post(format!("/tenants/{B}{base}{ns_part}/{resource}"), obj).await?;
    }
    for n in ["a-ns", "a-other"] {
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}});
        post(format!("/tenants/{A}/api/v1/namespaces"), ns).await?;
    }
    post(
        format!("/tenants/{A}/apis/rbac.authorization.k8s.io/v1/namespaces/a-ns/rolebindings"),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "amy-edit"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
               "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "amy"}]}),
    )
    .await?;
    // B's ordinary user, so that B holds a binding naming a user.
    Ok(())
}

/// Keeps changing B's objects while the matrix runs, so a leaking watch would show it.
async fn churn_b(admin: Caller, stop: Arc<tokio::sync::Notify>) -> Result<usize> {
    let mut n = 0usize;
    loop {
        let name = format!("bnm-churn-{}", n % 4);
        let path = format!("/tenants/{B}/api/v1/namespaces/{B_NS}/configmaps");
        let cm =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": CONTENT_MARK}});
        admin.send("POST", &path, "application/json", Some(("application/json", cm.to_string()))).await;
        admin.send("DELETE", &format!("{path}/{name}"), "application/json", None).await;
        let widget = format!("/tenants/{B}/apis/{B_GROUP}/v1/namespaces/{B_NS}/bnmwidgets/bnm-widget");
        let patch = json!({"spec": {"color": format!("{CONTENT_MARK}-{n}")}}).to_string();
        admin.send("PATCH", &widget, "application/json", Some(("application/merge-patch+json", patch))).await;
        n += 1;
        tokio::select! {
            _ = stop.notified() => return Ok(n),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}

/// One planned request about B's object and its phantom twin.
struct Probe {
    method: &'static str,
    real: String,
    phantom: String,
    body: Option<(&'static str, String, String)>,
    /// Answers for tenant-path and prefix forms must be 403.
    forbidden: bool,
    /// The object's (or namespace's) name, real and phantom, for comparing answers.
    names: (String, String),
}

/// The matrix of requests an A caller makes about B's objects.
fn probes(kinds: &[Kind], b_names: &BTreeMap<String, String>) -> Vec<Probe> {
    let mut out = Vec::new();
    for k in kinds {
        if k.is_review() {
            continue;
        }
        let key = format!("{}/{}", k.group, k.resource);
        let real_name = if k.is_tenants() {
            B.to_string()
        } else {
            b_names.get(&key).cloned().unwrap_or_else(|| format!("bnm-{}", k.resource.replace('.', "-")))
        };
        let phantom_name = if k.is_tenants() { "tenzz".to_string() } else { format!("{PHANTOM}-{}", k.resource) };
        let forms: Vec<Form> = if k.is_tenants() {
            vec![Form::Short, Form::Prefix(B)]
        } else {
            vec![Form::Short, Form::TenantPath(B), Form::Prefix(B)]
        };
        for form in forms {
            let short = form == Form::Short;
            // A's own tenant holds none of these names; writes through the short path
            // would land in A, so they are dry runs there.
            let q = if short { "?dryRun=All" } else { "" };
            let coll = |ns: &str| collection(form, k, Some(ns));
            let (rc, pc) = (coll(B_NS), coll(PHANTOM_NS));
            let (ro, po) = (format!("{rc}/{real_name}"), format!("{pc}/{phantom_name}"));
            let body_of = |name: &str, ns: &str| {
                let mut meta = json!({"name": name});
                if k.namespaced {
                    meta["namespace"] = json!(ns);
                }
                json!({"apiVersion": k.api_version(), "kind": k.kind, "metadata": meta}).to_string()
            };
            let json_body =
                |ct: &'static str| Some((ct, body_of(&real_name, B_NS), body_of(&phantom_name, PHANTOM_NS)));
            let merge = {
                let p = json!({"metadata": {"labels": {"x": "y"}}}).to_string();
                Some(("application/merge-patch+json", p.clone(), p))
            };
            let mut add = |method, real: String, phantom: String, body| {
                let names = (real_name.clone(), phantom_name.clone());
                out.push(Probe { method, real, phantom, body, forbidden: !short, names });
            };
            add("GET", ro.clone(), po.clone(), None);
            add("GET", rc.clone(), pc.clone(), None);
            add("GET", format!("{rc}?watch=1&timeoutSeconds=1"), format!("{pc}?watch=1&timeoutSeconds=1"), None);
            add("POST", format!("{rc}{q}"), format!("{pc}{q}"), json_body("application/json"));
            add("PUT", format!("{ro}{q}"), format!("{po}{q}"), json_body("application/json"));
            add("PATCH", format!("{ro}{q}"), format!("{po}{q}"), merge.clone());
            add("DELETE", format!("{ro}{q}"), format!("{po}{q}"), None);
            add("DELETE", format!("{rc}{q}"), format!("{pc}{q}"), None);
            for sub in &k.subresources {
                let (rs, ps) = (format!("{ro}/{sub}"), format!("{po}/{sub}"));
                match sub.as_str() {
                    "status" => {
                        add("GET", rs.clone(), ps.clone(), None);
                        add("PUT", format!("{rs}{q}"), format!("{ps}{q}"), json_body("application/json"));
                        add("PATCH", format!("{rs}{q}"), format!("{ps}{q}"), merge.clone());
                    }
                    "binding" => {
                        let b = |n: &str| {
                            json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": n},
                                   "target": {"apiVersion": "v1", "kind": "Node", "name": "node-1"}})
                            .to_string()
                        };
                        add("POST", rs, ps, Some(("application/json", b(&real_name), b(&phantom_name))));
                    }
                    _ => add("GET", rs, ps, None),
                }
            }
        }
        // Every tenant at once is for system administrators only.
        if !k.is_tenants() {
            for (real, phantom) in [
                (
                    format!("{}/tenants/all/{}", k.base(), k.resource),
                    format!("{}/tenants/all/{}?limit=1", k.base(), k.resource),
                ),
                (
                    format!("/tenants/all{}/{}", k.base(), k.resource),
                    format!("/tenants/all{}/{}?watch=1", k.base(), k.resource),
                ),
            ] {
                let names = (String::new(), String::new());
                out.push(Probe { method: "GET", real, phantom, body: None, forbidden: true, names });
            }
        }
    }
    out
}

async fn run_probe(c: &Caller, p: &Probe, extra: &[(&str, &str)]) -> Result<()> {
    let mut names = vec![(B_NS, PHANTOM_NS)];
    if !p.names.0.is_empty() {
        names.push((p.names.0.as_str(), p.names.1.as_str()));
    }
    names.extend_from_slice(extra);
    let names = names.as_slice();
    let (rb, pb) = match &p.body {
        Some((t, r, ph)) => (Some((*t, r.clone())), Some((*t, ph.clone()))),
        None => (None, None),
    };
    let (real, phantom) = tokio::join!(
        c.send(p.method, &p.real, "application/json", rb),
        c.send(p.method, &p.phantom, "application/json", pb)
    );
    check_no_leak(&real)?;
    check_no_leak(&phantom)?;
    if p.forbidden {
        for x in [&real, &phantom] {
            ensure!(x.code == 403, "{} {} {} -> {}, not 403: {}", x.who, x.method, x.path, x.code, x.answer);
        }
    }
    ensure!(
        real.code == phantom.code,
        "{} {} {} -> {} but its phantom twin {} -> {}: {} / {}",
        c.who,
        p.method,
        p.real,
        real.code,
        p.phantom,
        phantom.code,
        real.answer,
        phantom.answer
    );
    // Error answers must be the same words; successful ones (a dry-run create, an empty
    // list) carry times and revisions, and passed the leak check.
    if real.code >= 400 && !p.real.contains("tenants/all") {
        let (r, ph) = (normalized(&real, names), normalized(&phantom, names));
        ensure!(r == ph, "{} {} {}: the answer tells B's object from a phantom:\n{r}\n{ph}", c.who, p.method, p.real);
    }
    Ok(())
}

/// Runs `jobs` with at most `width` at once; the first error wins.
async fn all_of<F>(width: usize, jobs: Vec<F>) -> Result<usize>
where
    F: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let sem = Arc::new(tokio::sync::Semaphore::new(width));
    let mut set = tokio::task::JoinSet::new();
    let n = jobs.len();
    for job in jobs {
        let permit = sem.clone().acquire_owned().await?;
        set.spawn(async move {
            let r = job.await;
            drop(permit);
            r
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(n)
}

/// Discovery, OpenAPI and access reviews as A sees them.
async fn documents_and_reviews(c: &Caller, a_kinds: &[Kind]) -> Result<usize> {
    let mut n = 0;
    let aggregated = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json";
    for prefix in ["", "/tenants/tena"] {
        let mut paths =
            vec!["/api".to_string(), "/apis".into(), "/api/v1".into(), "/openapi/v2".into(), "/openapi/v3".into()];
        for k in a_kinds {
            paths.push(k.base());
        }
        let index =
            must(c.send("GET", &format!("{prefix}/openapi/v3"), "application/json", None).await, &[200]).await?;
        let index: Value = serde_json::from_str(&index.answer)?;
        for doc in index["paths"].as_object().context("openapi v3 paths")?.values() {
            let url = doc["serverRelativeURL"].as_str().context("serverRelativeURL")?;
            // Without the tenant prefix, which `prefix` adds again.
            let url = url.strip_prefix("/tenants/tena").unwrap_or(url);
            paths.push(url.split('?').next().unwrap_or(url).to_string());
        }
        paths.sort();
        paths.dedup();
        for path in paths {
            for accept in ["application/json", aggregated] {
                let x = must(c.send("GET", &format!("{prefix}{path}"), accept, None).await, &[200]).await?;
                check_no_leak(&x)?;
                n += 1;
            }
        }
    }
    // B's group and its documents: unknown to A, exactly like a group nobody defined.
    for (real, phantom) in [
        (format!("/apis/{B_GROUP}"), "/apis/zzph.example.com".to_string()),
        (format!("/apis/{B_GROUP}/v1"), "/apis/zzph.example.com/v1".into()),
        (format!("/openapi/v3/apis/{B_GROUP}/v1"), "/openapi/v3/apis/zzph.example.com/v1".into()),
        (format!("/tenants/{B}/apis"), "/tenants/tenzz/apis".into()),
        (format!("/tenants/{B}/openapi/v2"), "/tenants/tenzz/openapi/v2".into()),
        (format!("/tenants/{B}/apis/{B_GROUP}/v1"), "/tenants/tenzz/apis/zzph.example.com/v1".into()),
    ] {
        let probe = Probe { method: "GET", real, phantom, body: None, forbidden: false, names: Default::default() };
        run_probe(c, &probe, &[(B_GROUP, "zzph.example.com"), (B, "tenzz")]).await?;
        n += 2;
    }
    // Access reviews about B's names answer as about names that exist nowhere.
    let ssar = |ns: &str, name: &str, group: &str| {
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
               "spec": {"resourceAttributes": {"verb": "get", "group": group, "resource": "bnmwidgets",
                        "namespace": ns, "name": name}}})
        .to_string()
    };
    let ssrr = |ns: &str| {
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview", "spec": {"namespace": ns}})
            .to_string()
    };
    let sar = |user: &str, tenant: &str, ns: &str| {
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
               "spec": {"user": user, "extra": {"atoll.io/tenant": [tenant]},
                        "resourceAttributes": {"verb": "get", "resource": "configmaps", "namespace": ns}}})
        .to_string()
    };
    let names = [
        (B_NS, PHANTOM_NS),
        ("bnm-cm", "zzph-cm"),
        (B_GROUP, "zzph.example.com"),
        ("bnm-bob", "zzph-bob"),
        (B, "tenzz"),
    ];
    let reviews = [
        ("selfsubjectaccessreviews", ssar(B_NS, "bnm-cm", B_GROUP), ssar(PHANTOM_NS, "zzph-cm", "zzph.example.com")),
        ("selfsubjectrulesreviews", ssrr(B_NS), ssrr(PHANTOM_NS)),
        ("subjectaccessreviews", sar("bnm-bob", B, B_NS), sar("zzph-bob", "tenzz", PHANTOM_NS)),
    ];
    for (resource, real, phantom) in reviews {
        for (form, forbidden) in [
            ("/apis/authorization.k8s.io/v1".to_string(), false),
            (format!("/tenants/{B}/apis/authorization.k8s.io/v1"), true),
            (format!("/apis/authorization.k8s.io/v1/tenants/{B}"), true),
        ] {
            let path = format!("{form}/{resource}");
            let (r, p) = tokio::join!(
                c.send("POST", &path, "application/json", Some(("application/json", real.clone()))),
                c.send("POST", &path, "application/json", Some(("application/json", phantom.clone())))
            );
            check_no_leak(&r)?;
            check_no_leak(&p)?;
            ensure!(r.code == p.code, "{} {path}: {} vs {}: {} / {}", c.who, r.code, p.code, r.answer, p.answer);
            if forbidden {
                ensure!(r.code == 403, "{} {path} -> {}: {}", c.who, r.code, r.answer);
            }
            // The answers echo the spec; with names set aside they must be the same.
            let strip = |x: &Exchange| {
                let mut v: Value = serde_json::from_str(&normalized(x, &names)).unwrap_or(Value::Null);
                if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("creationTimestamp");
                }
                v
            };
            ensure!(
                strip(&r) == strip(&p),
                "{} {path}: the review tells B's names from phantoms:\n{}\n{}",
                c.who,
                r.answer,
                p.answer
            );
            n += 2;
        }
    }
    Ok(n)
}

/// One request of the allowed cases: method, path, body (content type, text), wanted code.
type Step<'a> = (&'static str, String, Option<(&'a str, String)>, u16);

/// What A's callers may do, they can, through every URL form.
/// `first_rv`: the store's first revision in A's encoding of resource versions, which the
/// test (reading the server's secret) can name and A's callers could not.
async fn allowed_cases(ann: &Caller, amy: &Caller, a_kinds: &[Kind], first_rv: &str) -> Result<usize> {
    let mut n = 0;
    let forms = [Form::Short, Form::TenantPath(A), Form::Prefix(A)];
    let cm = |name: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "a-ns"},
                                 "data": {"k": "v"}})
    };
    let cms = Kind {
        group: String::new(),
        version: "v1".into(),
        resource: "configmaps".into(),
        kind: "ConfigMap".into(),
        namespaced: true,
        verbs: vec![],
        subresources: vec![],
    };
    for (i, form) in forms.iter().enumerate() {
        for c in [ann, amy] {
            let name = format!("{}-cm-{i}", c.who);
            let coll = collection(*form, &cms, Some("a-ns"));
            let obj = format!("{coll}/{name}");
            let json = |v: Value| Some(("application/json", v.to_string()));
            let steps: Vec<Step> = vec![
                ("POST", coll.clone(), json(cm(&name)), 201),
                ("GET", obj.clone(), None, 200),
                ("GET", coll.clone(), None, 200),
                ("GET", format!("{coll}?watch=1&timeoutSeconds=1"), None, 200),
                ("PUT", obj.clone(), json(cm(&name)), 200),
                (
                    "PATCH",
                    obj.clone(),
                    Some(("application/merge-patch+json", json!({"data": {"p": "q"}}).to_string())),
                    200,
                ),
                ("DELETE", obj.clone(), None, 200),
                ("DELETE", format!("{coll}?labelSelector=nothing%3Dhere"), None, 200),
            ];
            for (method, path, body, code) in steps {
                let x = must(c.send(method, &path, "application/json", body).await, &[code]).await?;
                check_no_leak(&x)?;
                n += 1;
            }
            // The ordinary user is refused outside her namespace; the admin is not.
            let other = collection(*form, &cms, Some("a-other"));
            let want = if c.who == "amy" { 403 } else { 200 };
            check_no_leak(&must(c.send("GET", &other, "application/json", None).await, &[want]).await?)?;
            n += 1;
        }
    }
    // The administrator lists every kind of A, in every form, and sees nothing of B's.
    let mut jobs = Vec::new();
    for k in a_kinds.iter().filter(|k| !k.is_review()) {
        for form in forms {
            if k.is_tenants() {
                continue;
            }
            let (ann, path) = (ann.clone(), collection(form, k, None));
            let first_rv = first_rv.to_string();
            jobs.push(async move {
                let x = must(ann.send("GET", &path, "application/json", None).await, &[200]).await?;
                check_no_leak(&x)?;
                // A page of one counts only A's objects.
                let all: Value = serde_json::from_str(&x.answer)?;
                let total = all["items"].as_array().map_or(0, Vec::len) as i64;
                let page =
                    must(ann.send("GET", &format!("{path}?limit=1"), "application/json", None).await, &[200]).await?;
                check_no_leak(&page)?;
                let page: Value = serde_json::from_str(&page.answer)?;
                if let Some(rest) = page.pointer("/metadata/remainingItemCount").and_then(Value::as_i64) {
                    ensure!(rest == total - 1, "{path}: {rest} remaining of {total}");
                }
                // From the very first revision: a replay of history holds nothing of B's either.
                let w = must(
                    ann.send(
                        "GET",
                        &format!("{path}?watch=1&resourceVersion={first_rv}&timeoutSeconds=1"),
                        "application/json",
                        None,
                    )
                    .await,
                    &[200],
                )
                .await?;
                check_no_leak(&w)
            });
        }
    }
    n += 3 * all_of(16, jobs).await?;
    Ok(n)
}

#[test]
fn tenants_are_isolated_in_every_form_verb_and_kind() -> Result<()> {
    let started = Instant::now();
    let server = Server::start()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let admin = caller("admin", &server.kubeconfig())?;
    rt.block_on(populate(&admin))?;
    let ann_k = server.user(A, "ann", 33)?;
    let amy_k = server.user(A, "amy", 33)?;
    let ann = caller("ann", &ann_k.kubeconfig)?;
    let amy = caller("amy", &amy_k.kubeconfig)?;
    // Resource versions are encrypted per tenant (apiserver's `rv`): revision 1 as A sees it.
    let first_rv = apiserver::rv::RvSecret::load_or_create(server.dir.path())?.codec(A).encode(1);

    let requests = rt.block_on(async {
        // The detector's control: B's objects do hold the marks, and the check catches them.
        let own = admin
            .send("GET", &format!("/tenants/{B}/api/v1/namespaces/{B_NS}/configmaps"), "application/json", None)
            .await;
        ensure!(own.code == 200 && own.answer.contains(CONTENT_MARK) && own.answer.contains("bnm-cm"), "{own:?}");
        ensure!(check_no_leak(&own).is_err(), "the leak check misses B's objects");
        let b_kinds = discover(&admin, B).await?;
        let a_kinds = discover(&admin, A).await?;
        ensure!(b_kinds.iter().any(|k| k.resource == "bnmwidgets"), "B serves its custom resource");
        ensure!(!a_kinds.iter().any(|k| k.resource == "bnmwidgets"), "A does not");
        let b_names: BTreeMap<String, String> = b_objects()
            .into_iter()
            .map(|(base, resource, obj)| {
                let group = base.strip_prefix("/apis/").and_then(|g| g.split_once('/')).map_or("", |(g, _)| g);
                (format!("{group}/{resource}"), obj["metadata"]["name"].as_str().unwrap_or("").to_string())
            })
            .chain([
                ("/namespaces".to_string(), B_NS.to_string()),
                ("apiextensions.k8s.io/customresourcedefinitions".to_string(), format!("bnmwidgets.{B_GROUP}")),
            ])
            .collect();
        let stop = Arc::new(tokio::sync::Notify::new());
        let churn = tokio::spawn(churn_b(admin.clone(), stop.clone()));

        let plan = Arc::new(probes(&b_kinds, &b_names));
        let mut jobs = Vec::new();
        for c in [&ann, &amy] {
            for i in 0..plan.len() {
                let (c, plan) = (c.clone(), plan.clone());
                jobs.push(async move { run_probe(&c, &plan[i], &[]).await });
            }
        }
        let mut requests = 2 * all_of(32, jobs).await?;
        requests += documents_and_reviews(&ann, &a_kinds).await?;
        requests += documents_and_reviews(&amy, &a_kinds).await?;
        requests += allowed_cases(&ann, &amy, &a_kinds, &first_rv).await?;
        stop.notify_one();
        let churned = churn.await??;
        ensure!(churned > 3, "B's objects kept changing during the run ({churned} rounds)");
        Ok::<usize, anyhow::Error>(requests)
    })?;

    // Through kubectl's eyes.
    let b_server = format!("https://{}/tenants/{B}", server.addr);
    for k in [&ann_k, &amy_k] {
        let refused = k.fails(&["--server", &b_server, "get", "configmaps", "-n", B_NS])?;
        ensure!(refused.contains("Forbidden") || refused.contains("forbidden"), "{refused}");
        ensure!(!refused.contains(CONTENT_MARK), "{refused}");
    }
    let everything = ann_k.ok(&["get", "configmaps,secrets,pods,namespaces,roles,rolebindings", "-A", "-o", "yaml"])?;
    ensure!(!everything.contains(NAME_MARK) && !everything.contains(CONTENT_MARK), "{everything}");
    let resources = ann_k.ok(&["api-resources"])?;
    ensure!(!resources.contains("bnmwidgets"), "{resources}");
    let missing = ann_k.fails(&["get", "bnmwidgets", "-n", B_NS])?;
    ensure!(
        missing.contains("doesn't have a resource type") || missing.contains("the server doesn't have"),
        "{missing}"
    );
    let rules = ann_k.ok(&["auth", "can-i", "--list", "-n", B_NS])?;
    ensure!(!rules.contains("bnmwidgets") && !rules.contains(CONTENT_MARK), "{rules}");
    ensure!(
        ann_k.ok(&["auth", "can-i", "get", "configmaps", "-n", B_NS])?.trim() == "yes",
        "in A's own (missing) namespace"
    );
    let ns_in_a = amy_k.fails(&["get", "configmaps", "-n", B_NS])?;
    ensure!(ns_in_a.contains("Forbidden") || ns_in_a.contains("forbidden"), "{ns_in_a}");

    // A may reuse every name B uses: names are per tenant, and a clash would tell.
    let ann_c = ann.clone();
    rt.block_on(async move {
        let mut crd = b_crd();
        crd["metadata"]["annotations"] = json!({});
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["color"]["description"] = json!("a");
        let x = ann_c.send("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", "application/json",
            Some(("application/json", crd.to_string()))).await;
        check_no_leak(&x)?;
        ensure!(x.code == 201, "A defines the same kind as B: {} {}", x.code, x.answer);
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": B_NS}});
        let x = ann_c.send("POST", "/api/v1/namespaces", "application/json", Some(("application/json", ns.to_string()))).await;
        check_no_leak(&x)?;
        ensure!(x.code == 201, "A makes a namespace named like B's: {} {}", x.code, x.answer);
        Ok::<(), anyhow::Error>(())
    })?;

    let took = started.elapsed();
    // Reported, not asserted: speed targets live in benchmarks, not in tests.
    eprintln!("isolation matrix: {requests} requests of A's callers in {took:?}");
    Ok(())
}

/// A resource version as a number (they are decimal strings, opaque to clients).
fn rv_of(x: &Exchange) -> Result<u64> {
    let v: Value = serde_json::from_str(&x.answer).with_context(|| x.answer.clone())?;
    let rv = v["metadata"]["resourceVersion"].as_str().with_context(|| format!("no resourceVersion: {}", x.answer))?;
    rv.parse().with_context(|| format!("resourceVersion {rv:?} is not a number"))
}

/// The count probe (issue 4): the store numbers every write of every tenant with one
/// counter, so raw resource versions would let A count B's writes. A reads a version, B
/// writes N times, A writes once: A's two values must tell nothing about N. With the raw
/// counter they would differ by exactly N + 1.
#[test]
fn resource_versions_do_not_count_other_tenants_writes() -> Result<()> {
    let server = Server::start()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let admin = caller("admin", &server.kubeconfig())?;
    rt.block_on(async {
        for (tenant, admins) in [(A, ["ann"]), (B, ["bnm-bob"])] {
            let body = tenant_admins_json(tenant, &admins);
            must(
                admin
                    .send("POST", "/apis/atoll.io/v1/tenants", "application/json", Some(("application/json", body)))
                    .await,
                &[201],
            )
            .await?;
        }
        let ns = |n: &str| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}).to_string();
        let post = |path: String, body: String| {
            let admin = admin.clone();
            async move {
                must(admin.send("POST", &path, "application/json", Some(("application/json", body))).await, &[201])
                    .await
            }
        };
        post(format!("/tenants/{A}/api/v1/namespaces"), ns("a-ns")).await?;
        post(format!("/tenants/{B}/api/v1/namespaces"), ns(B_NS)).await?;
        Ok::<(), anyhow::Error>(())
    })?;
    let ann = caller("ann", &server.user(A, "ann", 33)?.kubeconfig)?;

    rt.block_on(async {
        let cms = "/api/v1/namespaces/a-ns/configmaps";
        let probe = format!("{cms}/probe");
        let cm = |i: usize| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "probe"}, "data": {"i": i.to_string()}}).to_string();
        let mut last = rv_of(&must(ann.send("POST", cms, "application/json", Some(("application/json", cm(0)))).await, &[201]).await?)?;
        // B's writes: N of them between two of A's own.
        let b_writes = |n: usize| {
            let admin = admin.clone();
            async move {
                for i in 0..n {
                    let path = format!("/tenants/{B}/api/v1/namespaces/{B_NS}/configmaps");
                    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("bnm-{i}")}}).to_string();
                    must(admin.send("POST", &path, "application/json", Some(("application/json", body))).await, &[201]).await?;
                    must(admin.send("DELETE", &format!("{path}/bnm-{i}"), "application/json", None).await, &[200]).await?;
                }
                Ok::<(), anyhow::Error>(())
            }
        };
        let counts = [0usize, 1, 2, 4, 8, 16, 32, 3];
        let (mut diffs, mut list_diffs) = (Vec::new(), Vec::new());
        for (i, &n) in counts.iter().enumerate() {
            let before = rv_of(&must(ann.send("GET", &probe, "application/json", None).await, &[200]).await?)?;
            ensure!(before == last, "A's own object keeps its version while only B writes");
            let listed = rv_of(&must(ann.send("GET", cms, "application/json", None).await, &[200]).await?)?;
            b_writes(n).await?;
            let listed_after = rv_of(&must(ann.send("GET", cms, "application/json", None).await, &[200]).await?)?;
            let body = cm(i + 1);
            let after = rv_of(&must(ann.send("PUT", &probe, "application/json", Some(("application/json", body))).await, &[200]).await?)?;
            diffs.push(i128::from(after) - i128::from(before));
            list_diffs.push(i128::from(listed_after) - i128::from(listed));
            last = after;
        }
        // Random-looking 64-bit values: never within a small distance of each other (the raw
        // counter gives N + 1 and N, or 2N + 1 with the deletions), and their differences do not
        // grow with N (a chance ordering of eight has odds 2 in 40,320).
        for (what, d) in [("write", &diffs), ("list", &list_diffs)] {
            for (n, d) in counts.iter().zip(d.iter()) {
                // A list's version is the store's latest revision: with nothing written in
                // between it is the same value (that much a poll tells; ARCHITECTURE.md).
                if what == "list" && *n == 0 && *d == 0 {
                    continue;
                }
                ensure!(d.unsigned_abs() > 1 << 32, "A's {what} versions around {n} writes of B's differ by only {d}");
            }
            let mut by_n: Vec<(usize, i128)> = counts.iter().copied().zip(d.iter().copied()).collect();
            by_n.sort();
            let rising = by_n.windows(2).all(|w| w[0].1 <= w[1].1);
            let falling = by_n.windows(2).all(|w| w[0].1 >= w[1].1);
            ensure!(!rising && !falling, "A's {what} version differences follow N: {by_n:?}");
        }

        // The versions still work: the current one is a precondition that holds, an old one
        // conflicts, and a value never issued (a raw store revision, say) conflicts too.
        let mut stale = serde_json::from_str::<Value>(&cm(99))?;
        let current = last.to_string();
        for (rv, code) in [("1", 409), ("12", 409), (diffs.len().to_string().as_str(), 409), (current.as_str(), 200)] {
            stale["metadata"]["resourceVersion"] = json!(rv);
            let x = ann.send("PUT", &probe, "application/json", Some(("application/json", stale.to_string()))).await;
            must(x, &[code]).await?;
        }
        let now = rv_of(&must(ann.send("GET", &probe, "application/json", None).await, &[200]).await?)?;
        // A watch from a version A holds replays A's own later change with the same value
        // the write answered.
        let watch = must(ann.send("GET", &format!("{cms}?watch=1&timeoutSeconds=1&resourceVersion={last}"), "application/json", None).await, &[200]).await?;
        ensure!(watch.answer.contains(&format!("\"resourceVersion\":\"{now}\"")), "{}", watch.answer);
        ensure!(!watch.answer.contains(NAME_MARK), "{}", watch.answer);
        // Versions never issued to A are refused as too large, and the refusals carry no
        // store revision (no number but the one asked about).
        for path in [
            format!("{cms}?watch=1&timeoutSeconds=1&resourceVersion=12"),
            format!("{cms}?resourceVersion=12&resourceVersionMatch=Exact"),
            format!("{cms}?resourceVersion=12"),
        ] {
            let x = ann.send("GET", &path, "application/json", None).await;
            ensure!(x.code == 504 && x.answer.contains("Too large resource version"), "{path}: {} {}", x.code, x.answer);
            let numbers: Vec<&str> =
                x.answer.split(|c: char| !c.is_ascii_digit()).filter(|s| s.len() > 1 && *s != "12" && *s != "504").collect();
            ensure!(numbers.is_empty(), "{path}: {numbers:?} in {}", x.answer);
        }
        let x = ann.send("DELETE", &probe, "application/json", Some(("application/json", json!({"preconditions": {"resourceVersion": "12"}}).to_string()))).await;
        ensure!(x.code == 409 && !x.answer.contains(&now.to_string()), "{} {}", x.code, x.answer);
        // The system tenant sees the same object under its own encoding.
        let admins = rv_of(&must(admin.send("GET", &format!("/tenants/{A}{probe}"), "application/json", None).await, &[200]).await?)?;
        ensure!(admins != now, "the administrator and A see one encoding");
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(())
}

/// `kubectl --server https://host/tenants/all` (issue 4): discovery works in the `all` view
/// for those who may reach across tenants (the system tenant's administrators), so kubectl
/// lists every tenant's objects there; a tenant's callers are refused and learn nothing.
#[test]
fn the_all_view_works_in_kubectl_for_administrators_only() -> Result<()> {
    let server = Server::start()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let admin = caller("admin", &server.kubeconfig())?;
    rt.block_on(async {
        for (tenant, admins) in [(A, ["ann"]), (B, ["bnm-bob"])] {
            let body = tenant_admins_json(tenant, &admins);
            let x =
                admin.send("POST", "/apis/atoll.io/v1/tenants", "application/json", Some(("application/json", body)));
            must(x.await, &[201]).await?;
        }
        for (tenant, ns, cm) in [(A, "a-ns", "a-cm"), (B, B_NS, "bnm-cm")] {
            let ns_body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}).to_string();
            let ns_path = format!("/tenants/{tenant}/api/v1/namespaces");
            must(admin.send("POST", &ns_path, "application/json", Some(("application/json", ns_body))).await, &[201])
                .await?;
            let cm_body =
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": cm}, "data": {"k": CONTENT_MARK}})
                    .to_string();
            let path = format!("/tenants/{tenant}/api/v1/namespaces/{ns}/configmaps");
            must(admin.send("POST", &path, "application/json", Some(("application/json", cm_body))).await, &[201])
                .await?;
        }
        Ok::<(), anyhow::Error>(())
    })?;
    let all = format!("https://{}/tenants/all", server.addr);
    for minor in [27, 33] {
        let k = crate::server::Kubectl::new(minor, &server)?;
        let listed = k.ok(&["--server", &all, "get", "configmaps", "-A"])?;
        ensure!(listed.contains("a-cm") && listed.contains("bnm-cm"), "1.{minor}: {listed}");
        let resources = k.ok(&["--server", &all, "api-resources"])?;
        ensure!(resources.contains("configmaps") && resources.contains("tenants"), "1.{minor}: {resources}");
        let yaml = k.ok(&["--server", &all, "get", "configmaps", "-A", "-o", "yaml"])?;
        ensure!(yaml.contains("tenant: tena") && yaml.contains("tenant: tenb"), "1.{minor}: {yaml}");
    }
    let ann = server.user(A, "ann", 33)?;
    for args in [&["get", "configmaps", "-A"][..], &["api-resources"][..]] {
        let refused = ann.fails(&[&["--server", all.as_str()][..], args].concat())?;
        ensure!(
            refused.contains("orbidden") && !refused.contains(NAME_MARK) && !refused.contains(CONTENT_MARK),
            "{refused}"
        );
    }
    Ok(())
}
