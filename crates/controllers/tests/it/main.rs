//! The controllers against a real API server started in this process on 127.0.0.1:0 over
//! the embedded store in a temporary directory, through the client and the admin
//! kubeconfig the server writes.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use client::{Client, DeleteParams, Resource, Scope};
use controllers::watcher::{ApiSource, Event, Watcher};
use serde_json::json;
use store::Store;

struct TestServer {
    client: Client,
    store: Arc<dyn Store>,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

async fn start() -> Result<TestServer> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = Arc::new(store::embedded::EmbeddedStore::open(&dir.path().join("store"))?);
    let server = apiserver::http::Server::bind(store.clone(), dir.path(), "127.0.0.1:0".parse()?).await?;
    let client = Client::from_kubeconfig(&server.kubeconfig)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    Ok(TestServer { client, store, _stop: stop, _dir: dir })
}

/// Runs every controller until the returned sender is dropped or fired.
fn run_controllers(client: &Client) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(controllers::run_all(client.clone(), Default::default(), async move {
        let _ = stopped.await;
    }));
    (stop, task)
}

/// Polls `get` until it succeeds (10 s at most).
async fn eventually(c: &Client, res: &Resource, scope: &Scope, name: &str) -> Result<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match c.get(res, scope, name).await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_not_found() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => bail!("{}/{name} in {scope:?} never appeared: {e}", res.plural),
        }
    }
}

fn ns(name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_get_default_service_accounts_and_tenants_default_namespaces() -> Result<()> {
    let s = start().await?;
    let c = &s.client;
    let sa = Resource::service_accounts();
    let (stop, task) = run_controllers(c);

    // The system tenant's own namespaces (made by the server at start) are covered.
    eventually(c, &sa, &Scope::own().in_namespace("kube-system"), "default").await?;
    c.create(&Resource::namespaces(), &Scope::own(), &ns("web")).await?;
    let account = eventually(c, &sa, &Scope::own().in_namespace("web"), "default").await?;
    anyhow::ensure!(account["metadata"]["tenant"] == "system", "{account}");

    // A new tenant gets its default namespace, which gets its default ServiceAccount.
    c.create(&Resource::tenants(), &Scope::own(), &json!({"metadata": {"name": "acme"}})).await?;
    let acme = Scope::tenant("acme");
    let default_ns = eventually(c, &Resource::namespaces(), &acme, "default").await?;
    anyhow::ensure!(default_ns["metadata"]["tenant"] == "acme", "{default_ns}");
    eventually(c, &sa, &acme.clone().in_namespace("default"), "default").await?;

    // Deleted: made again.
    let before = c.get(&sa, &Scope::own().in_namespace("web"), "default").await?;
    c.delete(&sa, &Scope::own().in_namespace("web"), "default", &DeleteParams::default()).await?;
    let again = eventually(c, &sa, &Scope::own().in_namespace("web"), "default").await?;
    anyhow::ensure!(again["metadata"]["uid"] != before["metadata"]["uid"], "a new object: {again}");

    // A tenant's default namespace, deleted, is made again.
    let first = c.get(&Resource::namespaces(), &acme, "default").await?;
    c.delete(&Resource::namespaces(), &acme, "default", &DeleteParams::default()).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match c.get(&Resource::namespaces(), &acme, "default").await {
            Ok(ns) if ns["metadata"]["uid"] != first["metadata"]["uid"] => break,
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "acme's default namespace was not made again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Stopped: changes meanwhile are repaired at the next start (level-triggered).
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), task).await.context("the controllers did not stop")??;
    c.create(&Resource::namespaces(), &Scope::own(), &ns("while-down")).await?;
    c.delete(&sa, &acme.clone().in_namespace("default"), "default", &DeleteParams::default()).await?;
    c.create(&Resource::tenants(), &Scope::own(), &json!({"metadata": {"name": "beta"}})).await?;
    // The API server makes a namespace's default account with the namespace (ServiceAccount admission must
    // never wait on a controller), so it is there before any controller runs; the deleted one is not.
    c.get(&sa, &Scope::own().in_namespace("while-down"), "default").await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    anyhow::ensure!(c.get(&sa, &acme.clone().in_namespace("default"), "default").await.is_err());
    let (stop, task) = run_controllers(c);
    eventually(c, &sa, &Scope::own().in_namespace("while-down"), "default").await?;
    eventually(c, &sa, &acme.clone().in_namespace("default"), "default").await?;
    eventually(c, &sa, &Scope::tenant("beta").in_namespace("default"), "default").await?;
    let _ = stop.send(());
    task.await?;
    Ok(())
}

async fn next<S: controllers::watcher::Source>(w: &mut Watcher<S>) -> Result<Event> {
    tokio::time::timeout(Duration::from_secs(10), w.next()).await.context("no event in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_lists_then_follows_a_real_server() -> Result<()> {
    let s = start().await?;
    let c = &s.client;
    let cms = Resource::config_maps();
    let scope = Scope::own().in_namespace("default");
    for i in 0..3 {
        let cm = json!({"metadata": {"name": format!("c{i}")}, "data": {}});
        c.create(&cms, &scope, &cm).await?;
    }
    let mut w = Watcher::new(ApiSource::new(c.clone(), cms.clone(), scope.clone()), "configmaps");
    match next(&mut w).await? {
        Event::Restarted(items) => anyhow::ensure!(items.len() == 3, "{items:?}"),
        other => bail!("expected the list first: {other:?}"),
    }
    c.create(&cms, &scope, &json!({"metadata": {"name": "late"}})).await?;
    c.delete(&cms, &scope, "c0", &DeleteParams::default()).await?;
    anyhow::ensure!(matches!(next(&mut w).await?, Event::Applied(o) if o["metadata"]["name"] == "late"));
    anyhow::ensure!(matches!(next(&mut w).await?, Event::Deleted(o) if o["metadata"]["name"] == "c0"));
    Ok(())
}

/// The API, with each watch held until the test lets it through.
struct Gated {
    inner: ApiSource,
    gate: Arc<tokio::sync::Semaphore>,
}

#[async_trait::async_trait]
impl controllers::watcher::Source for Gated {
    async fn list(&self, token: Option<String>) -> Result<client::ObjectList, client::Error> {
        self.inner.list(token).await
    }
    async fn watch(&self, rv: &str) -> Result<Box<dyn controllers::watcher::Events>, client::Error> {
        self.gate.acquire().await.expect("the gate stays open").forget();
        self.inner.watch(rv).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_revision_makes_the_watcher_list_again() -> Result<()> {
    let s = start().await?;
    let c = &s.client;
    let secrets = Resource::new("", "v1", "secrets", true);
    let scope = Scope::own().in_namespace("default");
    let secret = |n: &str| json!({"metadata": {"name": n}, "data": {}});
    c.create(&secrets, &scope, &secret("old")).await?;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let source = Gated { inner: ApiSource::new(c.clone(), secrets.clone(), scope.clone()), gate: gate.clone() };
    let mut w = Watcher::new(source, "secrets");
    anyhow::ensure!(matches!(next(&mut w).await?, Event::Restarted(items) if items.len() == 1));
    // While the watcher is between its list and its watch, the store moves on and forgets.
    c.create(&secrets, &scope, &secret("new")).await?;
    c.delete(&secrets, &scope, "old", &DeleteParams::default()).await?;
    s.store.compact(s.store.current_revision().await?).await?;
    gate.add_permits(2);
    match next(&mut w).await? {
        Event::Restarted(items) => {
            let names: Vec<&str> = items.iter().filter_map(|o| o["metadata"]["name"].as_str()).collect();
            anyhow::ensure!(names == ["new"], "the fresh list: {names:?}");
        }
        other => bail!("410 Gone should have led to a new list, not {other:?}"),
    }
    Ok(())
}
