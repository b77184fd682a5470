//! The client against a real API server started in this process on 127.0.0.1:0 over the
//! embedded store in a temporary directory, with the admin kubeconfig it writes.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use client::{Client, DeleteParams, ListParams, Patch, Resource, Scope, WatchEvent, WatchParams};
use serde_json::{Value, json};
use store::Store;

struct TestServer {
    store: Arc<dyn Store>,
    kubeconfig: std::path::PathBuf,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

async fn start() -> Result<TestServer> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = Arc::new(store::embedded::EmbeddedStore::open(&dir.path().join("store"))?);
    let server = apiserver::http::Server::bind(store.clone(), dir.path(), "127.0.0.1:0".parse()?).await?;
    let kubeconfig = server.kubeconfig.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    Ok(TestServer { store, kubeconfig, _stop: stop, _dir: dir })
}

fn cm(name: &str, ns: &str, app: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "namespace": ns, "labels": {"app": app}}, "data": {"k": "v"}})
}

fn name(v: &Value) -> &str {
    v["metadata"]["name"].as_str().unwrap_or("")
}

/// Reads events until `pred` holds for one, within a deadline.
async fn wait_for(stream: &mut client::WatchStream, pred: impl Fn(&WatchEvent) -> bool) -> Result<WatchEvent> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ev = tokio::time::timeout_at(deadline, stream.next()).await.context("no such watch event in time")??;
        let ev = ev.context("the watch ended")?;
        if pred(&ev) {
            return Ok(ev);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_verb_against_a_real_server() -> Result<()> {
    let server = start().await?;
    let c = Client::from_kubeconfig(&server.kubeconfig)?;
    let ns_res = Resource::namespaces();
    let cms = Resource::config_maps();
    let own = Scope::own();
    let web = Scope::own().in_namespace("web");

    c.create(&ns_res, &own, &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "web"}})).await?;
    let err = c.create(&ns_res, &own, &json!({"metadata": {"name": "web"}})).await.unwrap_err();
    ensure!(err.is_already_exists(), "{err}");
    let err = c.get(&cms, &web, "missing").await.unwrap_err();
    ensure!(err.is_not_found(), "{err}");
    ensure!(matches!(c.get(&cms, &web, "a/b").await, Err(client::Error::InvalidName(_))));

    for (i, app) in ["x", "x", "y", "x", "y"].iter().enumerate() {
        c.create(&cms, &web, &cm(&format!("c{i}"), "web", app)).await?;
    }
    // Paging: one revision across pages.
    let mut names = Vec::new();
    let mut params = ListParams { limit: Some(2), ..ListParams::default() };
    let mut revision = None;
    loop {
        let page = c.list(&cms, &web, &params).await?;
        names.extend(page.items.iter().map(|o| name(o).to_string()));
        revision.get_or_insert(page.resource_version.clone());
        match page.continue_token {
            Some(t) => params.continue_token = Some(t),
            None => break,
        }
    }
    ensure!(names == ["c0", "c1", "c2", "c3", "c4"], "{names:?}");
    let xs =
        c.list(&cms, &web, &ListParams { label_selector: Some("app in (x)".into()), ..Default::default() }).await?;
    ensure!(xs.items.len() == 3, "{:?}", xs.items);
    let not_y = c.list(&cms, &web, &ListParams { label_selector: Some("app!=y".into()), ..Default::default() }).await?;
    ensure!(not_y.items.len() == 3);

    // Updates: optimistic concurrency, then each kind of patch.
    let mut c0 = c.get(&cms, &web, "c0").await?;
    let stale = c0.clone();
    c0["data"]["k"] = json!("v2");
    c.replace(&cms, &web, "c0", &c0).await?;
    let err = c.replace(&cms, &web, "c0", &stale).await.unwrap_err();
    ensure!(err.is_conflict(), "{err}");
    c.patch(&cms, &web, "c0", &Patch::Merge(json!({"data": {"m": "1"}}))).await?;
    c.patch(&cms, &web, "c0", &Patch::Json(json!([{"op": "add", "path": "/data/j", "value": "2"}]))).await?;
    let patched = c.patch(&cms, &web, "c0", &Patch::Strategic(json!({"data": {"s": "3"}}))).await?;
    ensure!(patched["data"] == json!({"k": "v2", "m": "1", "j": "2", "s": "3"}), "{patched}");
    let bad = c.patch(&cms, &web, "c0", &Patch::Json(json!([{"op": "remove", "path": "/nope"}]))).await.unwrap_err();
    ensure!(bad.code() == Some(422), "{bad}");

    // A status subresource: tenants have one.
    let tenants = Resource::tenants();
    c.create(&tenants, &own, &json!({"apiVersion": "atoll.io/v1", "kind": "Tenant", "metadata": {"name": "acme"}}))
        .await?;
    let mut t = c.get(&tenants, &own, "acme").await?;
    t["status"] = json!({"phase": "Active"});
    let updated = c.replace_subresource(&tenants, &own, "acme", "status", &t).await?;
    ensure!(updated["status"]["phase"] == "Active", "{updated}");

    // The tenant path and all tenants.
    let acme = Scope::tenant("acme");
    c.create(&ns_res, &acme, &json!({"metadata": {"name": "web"}})).await?;
    c.create(&cms, &acme.clone().in_namespace("web"), &cm("theirs", "web", "x")).await?;
    let everywhere = c.list(&cms, &Scope::all_tenants(), &ListParams::default()).await?;
    ensure!(everywhere.items.len() == 6, "{:?}", everywhere.items);
    ensure!(everywhere.items.iter().any(|o| o["metadata"]["tenant"] == "acme"));
    let mine = c.list(&cms, &Scope::own(), &ListParams::default()).await?;
    ensure!(mine.items.len() == 5);

    // Discovery: every kind, with its scope.
    let kinds = c.api_resources().await?;
    let find = |plural: &str| kinds.iter().find(|k| k.resource.plural == plural);
    ensure!(find("namespaces").is_some_and(|k| !k.resource.namespaced && k.kind == "Namespace"));
    ensure!(
        find("configmaps").is_some_and(|k| k.resource.namespaced && k.verbs.iter().any(|v| v == "deletecollection"))
    );
    ensure!(find("deployments").is_some_and(|k| k.resource.group == "apps" && k.resource.version == "v1"));
    ensure!(find("tenants").is_some_and(|k| k.resource.group == "atoll.io"));
    ensure!(!kinds.iter().any(|k| k.resource.plural.contains('/')), "no subresources");

    // Delete a collection by selector, in one tenant only.
    let gone = c
        .delete_collection(&cms, &web, &ListParams { label_selector: Some("app=y".into()), ..Default::default() })
        .await?;
    ensure!(gone["items"].as_array().map(Vec::len) == Some(2), "{gone}");
    ensure!(c.list(&cms, &web, &ListParams::default()).await?.items.len() == 3);
    ensure!(c.list(&cms, &Scope::all_tenants(), &ListParams::default()).await?.items.len() == 4);

    // Delete with a stale precondition, then for real.
    let pre = DeleteParams { precondition_resource_version: Some("1".into()), ..DeleteParams::default() };
    let err = c.delete(&cms, &web, "c1", &pre).await.unwrap_err();
    ensure!(err.is_conflict(), "{err}");
    let deleted = c.delete(&cms, &web, "c1", &DeleteParams::default()).await?;
    ensure!(name(&deleted) == "c1");
    ensure!(c.get(&cms, &web, "c1").await.unwrap_err().is_not_found());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_deliver_typed_events_bookmarks_and_gone() -> Result<()> {
    let server = start().await?;
    let c = Client::from_kubeconfig(&server.kubeconfig)?;
    let cms = Resource::config_maps();
    let web = Scope::own().in_namespace("default");
    c.create(&cms, &web, &cm("before", "default", "x")).await?;
    let list = c.list(&cms, &web, &ListParams::default()).await?;

    // From the list's revision: only what happens after it.
    let params = WatchParams {
        resource_version: Some(list.resource_version.clone()),
        allow_bookmarks: true,
        ..WatchParams::default()
    };
    let mut w = c.watch(&cms, &web, &params).await?;
    c.create(&cms, &web, &cm("a", "default", "x")).await?;
    c.patch(&cms, &web, "a", &Patch::Merge(json!({"data": {"k": "2"}}))).await?;
    c.delete(&cms, &web, "a", &DeleteParams::default()).await?;
    let added = wait_for(&mut w, |e| !matches!(e, WatchEvent::Bookmark { .. })).await?;
    ensure!(matches!(&added, WatchEvent::Added(o) if name(o) == "a"), "{added:?}");
    let modified = wait_for(&mut w, |e| !matches!(e, WatchEvent::Bookmark { .. })).await?;
    ensure!(matches!(&modified, WatchEvent::Modified(o) if o["data"]["k"] == "2"), "{modified:?}");
    let deleted = wait_for(&mut w, |e| !matches!(e, WatchEvent::Bookmark { .. })).await?;
    ensure!(matches!(&deleted, WatchEvent::Deleted(o) if name(o) == "a"), "{deleted:?}");
    // The server reports progress on a quiet watch.
    let bookmark = wait_for(&mut w, |e| matches!(e, WatchEvent::Bookmark { .. })).await?;
    ensure!(matches!(&bookmark, WatchEvent::Bookmark { resource_version } if !resource_version.is_empty()));

    // Many watches share one connection; each ends at its timeout.
    let mut short = Vec::new();
    for _ in 0..20 {
        let p = WatchParams { timeout_seconds: Some(1), ..WatchParams::default() };
        short.push(c.watch(&cms, &web, &p).await?);
    }
    for w in &mut short {
        let first = wait_for(w, |_| true).await?;
        ensure!(matches!(&first, WatchEvent::Added(o) if name(o) == "before"), "{first:?}");
        let end = tokio::time::timeout(Duration::from_secs(5), w.next()).await??;
        ensure!(end.is_none(), "the watch should end at its timeout: {end:?}");
    }
    // Everything so far, 20 concurrent watches included, went over one connection.
    ensure!(c.connections_opened() == 1, "{} connections", c.connections_opened());

    // A revision older than the store keeps is 410 Gone, for a kind nobody watched yet.
    let secrets = Resource::new("", "v1", "secrets", true);
    let s = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {}});
    c.create(&secrets, &web, &s).await?;
    let old = c.list(&secrets, &web, &ListParams::default()).await?.resource_version;
    c.delete(&secrets, &web, "s", &DeleteParams::default()).await?;
    c.create(&secrets, &web, &s).await?;
    server.store.compact(server.store.current_revision().await?).await?;
    let p = WatchParams { resource_version: Some(old), ..WatchParams::default() };
    let err = c.watch(&secrets, &web, &p).await.err().context("watching a compacted revision should fail")?;
    ensure!(err.is_gone(), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_answer_in_the_shape_asked_for() -> Result<()> {
    let server = start().await?;
    let c = Client::from_kubeconfig(&server.kubeconfig)?;
    let cms = Resource::config_maps();
    let web = Scope::own().in_namespace("default");
    let name_only = client::Keep::shape(client::Shape::only(&[]).with("metadata", client::Shape::only(&["name"])));
    let made = c.create_keeping(&cms, &web, &cm("a", "default", "x"), &name_only).await?;
    ensure!(made == json!({"metadata": {"name": "a"}}), "{made}");
    // Stored whole all the same.
    ensure!(c.get(&cms, &web, "a").await?["data"]["k"] == "v");
    let again = c.create_keeping(&cms, &web, &cm("a", "default", "x"), &name_only).await;
    ensure!(again.as_ref().err().is_some_and(client::Error::is_already_exists), "{again:?}");

    let pods = Resource::pods();
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                     "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    c.create(&pods, &web, &pod).await?;
    let nothing = client::Keep::shape(client::Shape::only(&[]));
    let status = Patch::Merge(json!({"status": {"phase": "Running"}}));
    let answer = c.patch_subresource_keeping((&pods, &web, "p", "status"), &status, &nothing).await?;
    ensure!(answer == json!({}), "{answer}");
    ensure!(c.get(&pods, &web, "p").await?["status"]["phase"] == "Running");
    let missing = c.patch_subresource_keeping((&pods, &web, "nope", "status"), &status, &nothing).await;
    ensure!(missing.as_ref().err().is_some_and(client::Error::is_not_found), "{missing:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_prefix_in_the_server_url_is_kept() -> Result<()> {
    let server = start().await?;
    let admin = Client::from_kubeconfig(&server.kubeconfig)?;
    admin.create(&Resource::tenants(), &Scope::own(), &json!({"metadata": {"name": "acme"}})).await?;
    let text = std::fs::read_to_string(&server.kubeconfig)?;
    let url = text.lines().find_map(|l| l.trim().strip_prefix("server: ")).context("server line")?.to_string();
    let prefixed = text.replace(&url, &format!("{url}/tenants/acme"));
    let config = client::Config::from_kubeconfig_str(&prefixed, std::path::Path::new("/"), None)?;
    ensure!(config.server.prefix == "/tenants/acme");
    let c = Client::new(config)?;
    c.create(&Resource::namespaces(), &Scope::own(), &json!({"metadata": {"name": "only-acme"}})).await?;
    let theirs = admin.get(&Resource::namespaces(), &Scope::tenant("acme"), "only-acme").await?;
    ensure!(theirs["metadata"]["tenant"] == "acme", "{theirs}");
    ensure!(admin.get(&Resource::namespaces(), &Scope::own(), "only-acme").await.unwrap_err().is_not_found());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_servers_and_foreign_cas_are_refused() -> Result<()> {
    let server = start().await?;
    let cfg = client::Config::from_kubeconfig(&server.kubeconfig, None)?;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let unreachable = Client::new(client::Config {
        server: client::ServerUrl { host: "127.0.0.1".into(), port: closed, prefix: String::new() },
        ..cfg.clone()
    })?;
    let err = unreachable.list(&Resource::namespaces(), &Scope::own(), &ListParams::default()).await.unwrap_err();
    ensure!(matches!(err, client::Error::Connect { .. }), "{err}");
    // Another cluster's CA: the server's certificate does not verify.
    let other = tempfile::tempdir()?;
    let other_pki = apiserver::pki::bootstrap(other.path(), &["127.0.0.1".into()])?;
    let foreign = Client::new(client::Config { ca_pem: other_pki.ca_cert.into_bytes(), ..cfg })?;
    let err = foreign.list(&Resource::namespaces(), &Scope::own(), &ListParams::default()).await.unwrap_err();
    ensure!(err.to_string().contains("certificate"), "{err}");
    Ok(())
}

/// A component in the server's process hands its requests over in memory: the same answers
/// as over TLS with the same certificate (what it may and may not do included), watches
/// stream, and no connection is opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_requests_are_served_as_over_a_connection() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = Arc::new(store::embedded::EmbeddedStore::open(&dir.path().join("store"))?);
    let server = apiserver::http::Server::bind(store, dir.path(), "127.0.0.1:0".parse()?).await?;
    let path =
        apiserver::pki::write_component_kubeconfig(dir.path(), &server.url, &apiserver::pki::Component::Scheduler)?;
    let cert = client::Config::from_kubeconfig(&path, None)?.identity.context("the scheduler has a certificate")?.0;
    let handler = server.in_process(&cert)?;
    ensure!(server.in_process(b"no certificate here").is_err(), "a handler without an identity");
    let kubeconfig = server.kubeconfig.clone();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let inside = Client::in_process(client::Config::from_kubeconfig(&path, None)?, Arc::new(handler))?;
    let outside = Client::new(client::Config::from_kubeconfig(&path, None)?)?;
    let admin = Client::from_kubeconfig(&kubeconfig)?;

    let all = Scope::all_tenants();
    let mut pods = inside.watch(&Resource::pods(), &all, &WatchParams::default()).await?;
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default"},
                     "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    admin.create(&Resource::pods(), &Scope::own().in_namespace("default"), &pod).await?;
    wait_for(&mut pods, |e| matches!(e, WatchEvent::Added(p) if name(p) == "p")).await?;
    let a = inside.list(&Resource::pods(), &all, &ListParams::default()).await?;
    let b = outside.list(&Resource::pods(), &all, &ListParams::default()).await?;
    ensure!(a.items.len() == 1 && a.items == b.items, "in process {:?}, over TLS {:?}", a.items, b.items);
    // The scheduler may not write config maps, in process as over TLS.
    let scope = Scope::own().in_namespace("default");
    let refused = |r: Result<Value, client::Error>| match r {
        Err(client::Error::Api(s)) => Ok(s),
        other => anyhow::bail!("expected a refusal, got {other:?}"),
    };
    let a = refused(inside.create(&Resource::config_maps(), &scope, &cm("x", "default", "a")).await)?;
    let b = refused(outside.create(&Resource::config_maps(), &scope, &cm("x", "default", "a")).await)?;
    ensure!(a.code == 403 && a == b, "in process {a:?}, over TLS {b:?}");
    ensure!(inside.connections_opened() == 0, "the in-process client opened a connection");
    ensure!(outside.connections_opened() == 1);
    Ok(())
}
