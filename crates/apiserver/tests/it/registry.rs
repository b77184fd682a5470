//! The generic registry over a real embedded store: Kubernetes object semantics and
//! tenant isolation, without HTTP.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use api::selector::{FieldSelector, LabelSelector};
use apiserver::registry::{DeleteOptions, ListOptions, Propagation, Registry, RegistryError, Scope, Strategy};
use serde_json::{Value, json};
use store::Store;
use store::embedded::EmbeddedStore;

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
}

impl Fixture {
    fn new() -> Result<Fixture> {
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path())?);
        Ok(Fixture { _dir: dir, store })
    }

    fn registry(&self, resource: &str) -> Result<Registry> {
        let kind =
            apiserver::kinds::builtin().into_iter().find(|k| k.info().resource == resource).context("no such kind")?;
        Ok(Registry::new(self.store.clone(), Arc::new(kind)))
    }
}

fn ns(tenant: &str, namespace: &str) -> Scope {
    Scope { tenant: Some(tenant.into()), namespace: Some(namespace.into()) }
}

fn cm(name: &str, labels: Value) -> Value {
    json!({"metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| o["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect()
}

fn rv(obj: &Value) -> String {
    obj["metadata"]["resourceVersion"].as_str().unwrap_or("").to_string()
}

#[tokio::test]
async fn create_sets_server_metadata_and_get_returns_it() -> Result<()> {
    let f = Fixture::new()?;
    let r = f.registry("configmaps")?;
    let created = r.create(&ns("acme", "default"), cm("c1", json!({"app": "web"})), false).await?;
    let m = &created["metadata"];
    ensure!(created["kind"] == "ConfigMap" && created["apiVersion"] == "v1");
    ensure!(m["tenant"] == "acme" && m["namespace"] == "default" && m["generation"] == 1);
    ensure!(m["uid"].as_str().is_some_and(|u| u.len() == 36));
    ensure!(m["creationTimestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    ensure!(!rv(&created).is_empty());
    let got = r.get(&ns("acme", "default"), "c1").await?;
    ensure!(got == created, "get differs from create:\n{got}\n{created}");
    match r.create(&ns("acme", "default"), cm("c1", json!({})), false).await {
        Err(e @ RegistryError::AlreadyExists { .. }) => {
            let s = e.to_status();
            ensure!(s.code == 409 && s.reason == "AlreadyExists" && s.message == "configmaps \"c1\" already exists");
        }
        other => bail!("duplicate create gave {other:?}"),
    }
    let dry = r.create(&ns("acme", "default"), cm("dry", json!({})), true).await?;
    ensure!(dry["metadata"]["name"] == "dry");
    ensure!(
        matches!(r.get(&ns("acme", "default"), "dry").await, Err(RegistryError::NotFound { .. })),
        "dry run stored"
    );
    Ok(())
}

#[tokio::test]
async fn generate_name_and_validation_report_every_error() -> Result<()> {
    let f = Fixture::new()?;
    let r = f.registry("configmaps")?;
    let a = r.create(&ns("acme", "default"), json!({"metadata": {"generateName": "gen-"}}), false).await?;
    let b = r.create(&ns("acme", "default"), json!({"metadata": {"generateName": "gen-"}}), false).await?;
    let (na, nb) = (a["metadata"]["name"].as_str().unwrap_or(""), b["metadata"]["name"].as_str().unwrap_or(""));
    ensure!(na.starts_with("gen-") && na.len() == 9 && na != nb, "{na} {nb}");
    let bad = json!({"metadata": {"name": "Bad_Name", "labels": {"-x": "ok"}}, "data": {"a b": "v", "n": 1}});
    match r.create(&ns("acme", "default"), bad, false).await {
        Err(e @ RegistryError::Invalid { .. }) => {
            let s = e.to_status();
            let causes = s.details.map(|d| d.causes).unwrap_or_default();
            let fields: Vec<_> = causes.iter().map(|c| c.field.as_str()).collect();
            ensure!(s.code == 422 && s.reason == "Invalid");
            ensure!(fields == vec!["metadata.name", "metadata.labels", "data[a b]", "data[n]"], "causes: {fields:?}");
        }
        other => bail!("invalid create gave {other:?}"),
    }
    match r.create(&ns("acme", "default"), json!({"metadata": {}}), false).await {
        Err(RegistryError::Invalid { errors, .. }) => ensure!(errors[0].field == "metadata.name"),
        other => bail!("nameless create gave {other:?}"),
    }
    match r.create(&ns("acme", "default"), json!({"kind": "Secret", "metadata": {"name": "x"}}), false).await {
        Err(RegistryError::BadRequest(m)) => ensure!(m.contains("kind"), "{m}"),
        other => bail!("wrong kind gave {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn tenants_are_isolated() -> Result<()> {
    let f = Fixture::new()?;
    let r = f.registry("configmaps")?;
    r.create(&ns("acme", "default"), cm("same", json!({"t": "acme"})), false).await?;
    r.create(&ns("beta", "default"), cm("same", json!({"t": "beta"})), false).await?;
    r.create(&ns("acme2", "default"), cm("other", json!({})), false).await?;
    let acme = r.list(&ns("acme", "default"), &ListOptions::default()).await?;
    ensure!(names(&acme) == vec!["same"] && acme["items"][0]["metadata"]["labels"]["t"] == "acme");
    let acme_all_ns = r.list(&Scope { tenant: Some("acme".into()), namespace: None }, &ListOptions::default()).await?;
    ensure!(names(&acme_all_ns) == vec!["same"], "a tenant prefix must not cover a longer tenant name");
    ensure!(matches!(r.get(&ns("gamma", "default"), "same").await, Err(RegistryError::NotFound { .. })));
    // Deleting in one tenant leaves the other's object alone.
    r.delete(&ns("beta", "default"), "same", &DeleteOptions::default()).await?;
    ensure!(r.get(&ns("acme", "default"), "same").await?["metadata"]["tenant"] == "acme");
    let all = r.list(&Scope { tenant: None, namespace: None }, &ListOptions::default()).await?;
    let tenants: Vec<_> =
        all["items"].as_array().into_iter().flatten().map(|o| o["metadata"]["tenant"].clone()).collect();
    ensure!(tenants == vec![json!("acme"), json!("acme2")], "every item shows its tenant: {tenants:?}");
    // A client cannot place an object in another tenant or namespace.
    let foreign = json!({"metadata": {"name": "x", "tenant": "beta"}});
    ensure!(matches!(r.create(&ns("acme", "default"), foreign, false).await, Err(RegistryError::BadRequest(_))));
    let other_ns = json!({"metadata": {"name": "x", "namespace": "kube-system"}});
    ensure!(matches!(r.create(&ns("acme", "default"), other_ns, false).await, Err(RegistryError::BadRequest(_))));
    Ok(())
}

#[tokio::test]
async fn updates_use_optimistic_concurrency_and_keep_server_fields() -> Result<()> {
    let f = Fixture::new()?;
    let r = f.registry("pods")?;
    let s = ns("acme", "default");
    let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}, "status": {"phase": "Running"}});
    let created = r.create(&s, pod, false).await?;
    // The client's status is dropped; the server's is a new pod's (Pending, its QoS class).
    ensure!(created["status"] == json!({"phase": "Pending", "qosClass": "BestEffort"}), "status on create: {created}");
    let mut stale = created.clone();
    // Labels only: generation stays.
    let mut labelled = created.clone();
    labelled["metadata"]["labels"] = json!({"a": "b"});
    labelled["metadata"]["uid"] = json!("forged");
    labelled["status"] = json!({"phase": "Failed"});
    let v2 = r.update(&s, "p", labelled, None, false).await?;
    ensure!(v2["metadata"]["generation"] == 1 && v2["metadata"]["uid"] == created["metadata"]["uid"]);
    ensure!(v2["status"] == created["status"], "the main resource ignores status: {v2}");
    ensure!(rv(&v2) != rv(&created));
    // A stale resource version conflicts.
    stale["spec"]["containers"][0]["image"] = json!("other");
    match r.update(&s, "p", stale.clone(), None, false).await {
        Err(e @ RegistryError::Conflict { .. }) => ensure!(e.to_status().code == 409),
        other => bail!("stale update gave {other:?}"),
    }
    // Without a resource version the update is unconditional; a spec change bumps generation.
    stale["metadata"].as_object_mut().context("meta")?.remove("resourceVersion");
    let v3 = r.update(&s, "p", stale, None, false).await?;
    ensure!(v3["metadata"]["generation"] == 2 && v3["spec"]["containers"][0]["image"] == "other");
    // The status subresource changes only status.
    let mut st = v3.clone();
    st["status"] = json!({"phase": "Running"});
    st["spec"]["containers"][0]["image"] = json!("ignored");
    let v4 = r.update(&s, "p", st, Some("status"), false).await?;
    ensure!(v4["status"]["phase"] == "Running" && v4["spec"]["containers"][0]["image"] == "other");
    // Whatever else a status write leaves out, adds or changes comes back as it was.
    let mut partial = v4.clone();
    let map = partial.as_object_mut().context("an object")?;
    map.remove("spec");
    map.insert("extra".into(), json!(1));
    partial["metadata"]["labels"] = json!({"sneaky": "yes"});
    partial["status"] = json!({"phase": "Succeeded"});
    let v5 = r.update(&s, "p", partial, Some("status"), false).await?;
    ensure!(v5["status"]["phase"] == "Succeeded", "{v5}");
    ensure!(
        v5["spec"] == v4["spec"]
            && v5.get("extra").is_none()
            && v5["metadata"].get("labels") == v4["metadata"].get("labels"),
        "{v5}"
    );
    let v4 = v5;
    // An update that changes nothing writes nothing.
    let same = r.update(&s, "p", v4.clone(), None, false).await?;
    ensure!(rv(&same) == rv(&v4));
    // Invalid updates report errors; a name mismatch is a bad request.
    let mut broken = v4.clone();
    broken["spec"]["containers"] = json!([]);
    ensure!(matches!(r.update(&s, "p", broken, None, false).await, Err(RegistryError::Invalid { .. })));
    ensure!(matches!(r.update(&s, "q", v4, None, false).await, Err(RegistryError::BadRequest(_))));
    Ok(())
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() -> Result<()> {
    let f = Fixture::new()?;
    let r = f.registry("configmaps")?;
    let s = ns("acme", "default");
    let obj = json!({"metadata": {"name": "f", "finalizers": ["example.com/hold"]}});
    let created = r.create(&s, obj, false).await?;
    let uid = created["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let wrong = DeleteOptions { precondition_uid: Some("nope".into()), ..DeleteOptions::default() };
    ensure!(matches!(r.delete(&s, "f", &wrong).await, Err(RegistryError::Conflict { .. })));
    let marked = r.delete(&s, "f", &DeleteOptions { precondition_uid: Some(uid), ..DeleteOptions::default() }).await?;
    ensure!(marked["metadata"]["deletionTimestamp"].is_string());
    let mut current = r.get(&s, "f").await?;
    ensure!(current["metadata"]["deletionTimestamp"].is_string(), "still there, terminating");
    current["metadata"]["finalizers"] = json!([]);
    r.update(&s, "f", current, None, false).await?;
    ensure!(matches!(r.get(&s, "f").await, Err(RegistryError::NotFound { .. })), "removing the last finalizer deletes");
    Ok(())
}

#[tokio::test]
async fn propagation_policies_become_finalizers_for_the_garbage_collector() -> Result<()> {
    let f = Fixture::new()?;
    let r = f.registry("configmaps")?;
    let s = ns("acme", "default");
    let finalizers = |o: &Value| o["metadata"]["finalizers"].clone();
    let delete = |p| DeleteOptions { propagation: Some(p), ..DeleteOptions::default() };
    // Background: nothing holds the object.
    r.create(&s, cm("bg", json!({})), false).await?;
    r.delete(&s, "bg", &delete(Propagation::Background)).await?;
    ensure!(matches!(r.get(&s, "bg").await, Err(RegistryError::NotFound { .. })));
    // Foreground: held by `foregroundDeletion`, beside its own finalizers.
    r.create(&s, json!({"metadata": {"name": "fg", "finalizers": ["example.com/hold"]}}), false).await?;
    let marked = r.delete(&s, "fg", &delete(Propagation::Foreground)).await?;
    ensure!(marked["metadata"]["deletionTimestamp"].is_string());
    ensure!(finalizers(&marked) == json!(["example.com/hold", "foregroundDeletion"]), "{marked}");
    // Deleted again orphaning: the policy changes, the deletion time stays.
    let again = r.delete(&s, "fg", &delete(Propagation::Orphan)).await?;
    ensure!(finalizers(&again) == json!(["example.com/hold", "orphan"]), "{again}");
    ensure!(again["metadata"]["deletionTimestamp"] == marked["metadata"]["deletionTimestamp"]);
    // No policy: whatever the object holds stays.
    let same = r.delete(&s, "fg", &DeleteOptions::default()).await?;
    ensure!(finalizers(&same) == json!(["example.com/hold", "orphan"]), "{same}");
    // Orphan on an object with no finalizers holds it until the collector lets go.
    r.create(&s, cm("or", json!({})), false).await?;
    let held = r.delete(&s, "or", &delete(Propagation::Orphan)).await?;
    ensure!(finalizers(&held) == json!(["orphan"]), "{held}");
    let mut current = r.get(&s, "or").await?;
    current["metadata"]["finalizers"] = Value::Null;
    r.update(&s, "or", current, None, false).await?;
    ensure!(matches!(r.get(&s, "or").await, Err(RegistryError::NotFound { .. })));
    Ok(())
}

/// An unpaged list larger than what the registry reads from the store at once (5,000 keys)
/// is still every object, in order, at one revision.
#[tokio::test]
async fn an_unpaged_list_reads_the_store_in_chunks_at_one_revision() -> Result<()> {
    let f = Fixture::new()?;
    let r = f.registry("configmaps")?;
    let s = ns("acme", "default");
    let count = 5_003;
    // Created concurrently: the store batches concurrent writes into one sync.
    let mut creates = tokio::task::JoinSet::new();
    for i in 0..count {
        let (r, s) = (r.clone(), s.clone());
        creates.spawn(async move { r.create(&s, cm(&format!("c{i:05}"), json!({})), false).await });
    }
    while let Some(created) = creates.join_next().await {
        created??;
    }
    let list = r.list(&s, &ListOptions::default()).await?;
    let got = names(&list);
    let want: Vec<String> = (0..count).map(|i| format!("c{i:05}")).collect();
    ensure!(got == want, "listed {} of {count}", got.len());
    ensure!(list["metadata"].get("continue").is_none_or(Value::is_null), "no continue token: {}", list["metadata"]);
    Ok(())
}

#[tokio::test]
async fn lists_page_and_filter() -> Result<()> {
    let f = Fixture::new()?;
    let r = f.registry("configmaps")?;
    let s = ns("acme", "default");
    for i in 0..23 {
        let tier = if i % 3 == 0 { "db" } else { "web" };
        r.create(&s, cm(&format!("c{i:02}"), json!({"tier": tier})), false).await?;
    }
    let opts =
        ListOptions { limit: Some(5), label_selector: LabelSelector::parse("tier=web")?, ..ListOptions::default() };
    let mut seen = Vec::new();
    let mut page = r.list(&s, &opts).await?;
    let first_rv = page["metadata"]["resourceVersion"].as_str().unwrap_or("").to_string();
    r.create(&s, cm("c99", json!({"tier": "web"})), false).await?;
    loop {
        let got = names(&page);
        ensure!(got.len() <= 5);
        seen.extend(got);
        let Some(token) = page["metadata"]["continue"].as_str().map(str::to_string) else { break };
        page = r.list(&s, &ListOptions { continue_token: Some(token), ..opts.clone() }).await?;
        ensure!(page["metadata"]["resourceVersion"] == first_rv.as_str(), "pages share one snapshot");
    }
    let want: Vec<String> = (0..23).filter(|i| i % 3 != 0).map(|i| format!("c{i:02}")).collect();
    ensure!(seen == want, "paged {seen:?}");
    let by_name = ListOptions { field_selector: FieldSelector::parse("metadata.name=c05")?, ..ListOptions::default() };
    ensure!(names(&r.list(&s, &by_name).await?) == vec!["c05"]);
    let unsupported =
        ListOptions { field_selector: FieldSelector::parse("spec.nodeName=x")?, ..ListOptions::default() };
    match r.list(&s, &unsupported).await {
        Err(e @ RegistryError::BadRequest(_)) => ensure!(e.to_string().contains("field label not supported")),
        other => bail!("unsupported field gave {other:?}"),
    }
    ensure!(matches!(
        r.list(&s, &ListOptions { continue_token: Some("garbage".into()), ..ListOptions::default() }).await,
        Err(RegistryError::BadRequest(_))
    ));
    // After compaction, an old exact read and an old continue token are expired (410).
    let token = r.list(&s, &ListOptions { limit: Some(2), ..ListOptions::default() }).await?["metadata"]["continue"]
        .as_str()
        .context("a continue token")?
        .to_string();
    let old_rv = first_rv.clone();
    for i in 0..3 {
        r.create(&s, cm(&format!("late{i}"), json!({})), false).await?;
    }
    f.store.compact(f.store.current_revision().await?).await?;
    let exact = ListOptions {
        resource_version: Some(old_rv),
        resource_version_match: Some("Exact".into()),
        ..ListOptions::default()
    };
    ensure!(r.list(&s, &exact).await.err().map(|e| e.to_status().code) == Some(410));
    let cont = ListOptions { continue_token: Some(token), ..ListOptions::default() };
    ensure!(r.list(&s, &cont).await.err().map(|e| e.to_status().code) == Some(410));
    Ok(())
}

async fn next(rx: &mut tokio::sync::mpsc::Receiver<apiserver::registry::WatchEvent>) -> Result<(String, Value)> {
    let e = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await?.context("watch ended")?;
    Ok((e.kind.to_string(), Value::clone(&e.object())))
}

#[tokio::test]
async fn watches_replay_state_then_follow_changes_through_selectors() -> Result<()> {
    let f = Fixture::new()?;
    let r = f.registry("configmaps")?;
    let s = ns("acme", "default");
    r.create(&s, cm("before", json!({"app": "web"})), false).await?;
    r.create(&s, cm("other-app", json!({"app": "db"})), false).await?;
    r.create(&ns("beta", "default"), cm("foreign", json!({"app": "web"})), false).await?;
    let opts = ListOptions { label_selector: LabelSelector::parse("app=web")?, ..ListOptions::default() };
    let mut rx = r.watch(&s, &opts, true).await?;
    let (kind, obj) = next(&mut rx).await?;
    ensure!(kind == "ADDED" && obj["metadata"]["name"] == "before");
    let mut moved = r.create(&s, cm("moving", json!({"app": "db"})), false).await?;
    moved["metadata"]["labels"] = json!({"app": "web"});
    let moved = r.update(&s, "moving", moved, None, false).await?;
    let (kind, obj) = next(&mut rx).await?;
    ensure!(kind == "ADDED" && obj["metadata"]["name"] == "moving", "starting to match is ADDED: {kind}");
    let mut leaving = moved.clone();
    leaving["metadata"]["labels"] = json!({"app": "db"});
    let left = r.update(&s, "moving", leaving, None, false).await?;
    let (kind, obj) = next(&mut rx).await?;
    ensure!(kind == "DELETED" && rv(&obj) == rv(&left), "stopping to match is DELETED at the change's version");
    r.create(&ns("beta", "default"), cm("foreign2", json!({"app": "web"})), false).await?;
    r.delete(&s, "before", &DeleteOptions::default()).await?;
    let (kind, obj) = next(&mut rx).await?;
    ensure!(kind == "DELETED" && obj["metadata"]["name"] == "before", "no event from another tenant: {kind} {obj}");
    // Bookmarks arrive on a quiet watch.
    let (kind, obj) = next(&mut rx).await?;
    ensure!(kind == "BOOKMARK" && obj["kind"] == "ConfigMap" && obj["apiVersion"] == "v1", "{kind} {obj}");
    // A watch from a compacted version is expired.
    f.store.compact(f.store.current_revision().await?).await?;
    let old = ListOptions { resource_version: Some("2".into()), ..ListOptions::default() };
    match r.watch(&s, &old, false).await {
        Err(e) => ensure!(e.to_status().code == 410, "{e}"),
        Ok(_) => bail!("watching from a compacted version worked"),
    }
    Ok(())
}

/// Without selectors the cache never decodes a change's previous object, except for a
/// deletion, which reports it.
#[tokio::test]
async fn a_watch_without_selectors_sees_modified_and_the_deleted_object_as_it_was() -> Result<()> {
    let f = Fixture::new()?;
    let r = f.registry("configmaps")?;
    let s = ns("acme", "default");
    let mut rx = r.watch(&s, &ListOptions::default(), false).await?;
    let mut obj = r.create(&s, cm("c", json!({"v": "1"})), false).await?;
    obj["metadata"]["labels"] = json!({"v": "2"});
    r.update(&s, "c", obj, None, false).await?;
    r.delete(&s, "c", &DeleteOptions::default()).await?;
    let (kind, obj) = next(&mut rx).await?;
    ensure!(kind == "ADDED" && obj["metadata"]["labels"]["v"] == "1", "{kind} {obj}");
    let (kind, obj) = next(&mut rx).await?;
    ensure!(kind == "MODIFIED" && obj["metadata"]["labels"]["v"] == "2", "{kind} {obj}");
    let modified = rv(&obj);
    let (kind, obj) = next(&mut rx).await?;
    ensure!(kind == "DELETED" && obj["metadata"]["labels"]["v"] == "2", "the last version is reported: {kind} {obj}");
    ensure!(rv(&obj) != modified, "at the deletion's version: {obj}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_watches_share_the_watch_cache_and_old_ones_fall_back_to_the_store() -> Result<()> {
    let f = Fixture::new()?;
    let r = f.registry("configmaps")?;
    let s = ns("acme", "default");
    let first = r.create(&s, cm("a", json!({})), false).await?;
    let old_rv = rv(&first);
    r.create(&s, cm("b", json!({})), false).await?;
    let mut watches = Vec::new();
    for _ in 0..50 {
        watches.push(r.watch(&s, &ListOptions::default(), false).await?);
    }
    ensure!(r.cached_watchers().await == 50, "watchers in the cache: {}", r.cached_watchers().await);
    // Another tenant's changes reach none of them.
    r.create(&ns("beta", "default"), cm("x", json!({})), false).await?;
    r.create(&s, cm("c", json!({})), false).await?;
    for w in &mut watches {
        let mut names = Vec::new();
        for _ in 0..3 {
            let (kind, obj) = next(w).await?;
            names.push(format!("{kind} {}", obj["metadata"]["name"].as_str().unwrap_or("")));
        }
        ensure!(names == ["ADDED a", "ADDED b", "ADDED c"], "{names:?}");
    }
    // From a version older than the cache's start: served by the store, history included.
    let mut old = r.watch(&s, &ListOptions { resource_version: Some(old_rv), ..ListOptions::default() }, false).await?;
    let (kind, obj) = next(&mut old).await?;
    ensure!(kind == "ADDED" && obj["metadata"]["name"] == "b", "{kind} {obj}");
    ensure!(r.cached_watchers().await == 50, "the old watch did not join the cache");
    drop(watches);
    r.create(&s, cm("d", json!({})), false).await?;
    let (kind, obj) = next(&mut old).await?;
    ensure!(kind == "ADDED" && obj["metadata"]["name"] == "c", "{kind} {obj}");
    // Closed watches are released at the next change or progress tick (every second).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while r.cached_watchers().await != 0 {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "closed watches stay in the cache: {}",
            r.cached_watchers().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test]
async fn send_initial_events_ends_the_state_with_a_marked_bookmark() -> Result<()> {
    let f = Fixture::new()?;
    let r = f.registry("configmaps")?;
    let s = ns("acme", "default");
    r.create(&s, cm("a", json!({})), false).await?;
    let opts = ListOptions {
        send_initial_events: Some(true),
        resource_version_match: Some("NotOlderThan".into()),
        ..ListOptions::default()
    };
    let mut w = r.watch(&s, &opts, true).await?;
    let (kind, obj) = next(&mut w).await?;
    ensure!(kind == "ADDED" && obj["metadata"]["name"] == "a");
    let (kind, obj) = next(&mut w).await?;
    ensure!(
        kind == "BOOKMARK" && obj["metadata"]["annotations"]["k8s.io/initial-events-end"] == "true",
        "{kind} {obj}"
    );
    r.create(&s, cm("b", json!({})), false).await?;
    let (kind, obj) = next(&mut w).await?;
    ensure!(kind == "ADDED" && obj["metadata"]["name"] == "b");
    // sendInitialEvents=false: changes only, even without a resource version.
    let quiet = ListOptions { send_initial_events: Some(false), ..ListOptions::default() };
    let mut w = r.watch(&s, &quiet, false).await?;
    r.create(&s, cm("c", json!({})), false).await?;
    let (kind, obj) = next(&mut w).await?;
    ensure!(kind == "ADDED" && obj["metadata"]["name"] == "c", "no replay of a and b: {obj}");
    Ok(())
}

#[tokio::test]
async fn events_k8s_io_is_a_view_of_core_events() -> Result<()> {
    let f = Fixture::new()?;
    let core = f.registry("events")?;
    let view = apiserver::kinds::views().into_iter().next().context("events.k8s.io view")?;
    ensure!(view.info().group == "events.k8s.io");
    let v1 = Registry::new(f.store.clone(), Arc::new(view));
    let s = ns("acme", "default");
    let mut w = v1.watch(&s, &ListOptions::default(), false).await?;
    let created = v1
        .create(
            &s,
            json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e1"},
                   "regarding": {"kind": "Pod", "name": "p"}, "note": "pulled", "reason": "Pulled", "type": "Normal",
                   "reportingController": "atoll", "eventTime": "2026-11-22T00:00:00Z"}),
            false,
        )
        .await?;
    ensure!(created["note"] == "pulled" && created["apiVersion"] == "events.k8s.io/v1");
    let as_core = core.get(&s, "e1").await?;
    ensure!(
        as_core["message"] == "pulled" && as_core["involvedObject"]["name"] == "p" && as_core["apiVersion"] == "v1"
    );
    ensure!(as_core["reportingComponent"] == "atoll" && as_core.get("note").is_none(), "{as_core}");
    core.create(&s, json!({"metadata": {"name": "e2"}, "involvedObject": {"kind": "Pod", "name": "q"}, "message": "hi", "count": 2}), false).await?;
    let as_v1 = v1.get(&s, "e2").await?;
    ensure!(as_v1["note"] == "hi" && as_v1["regarding"]["name"] == "q" && as_v1["deprecatedCount"] == 2, "{as_v1}");
    let listed = v1
        .list(&s, &ListOptions { field_selector: FieldSelector::parse("regarding.name=q")?, ..ListOptions::default() })
        .await?;
    ensure!(names(&listed) == vec!["e2"]);
    for want in ["e1", "e2"] {
        let (kind, obj) = next(&mut w).await?;
        ensure!(kind == "ADDED" && obj["metadata"]["name"] == want && obj["apiVersion"] == "events.k8s.io/v1", "{obj}");
        ensure!(obj.get("note").is_some() && obj.get("message").is_none(), "watch events are in the view's form");
    }
    Ok(())
}

#[tokio::test]
async fn bound_pods_are_deleted_gracefully_and_unbound_ones_at_once() -> Result<()> {
    let f = Fixture::new()?;
    let r = f.registry("pods")?;
    let s = ns("acme", "default");
    let pod = |name: &str, node: &str| {
        json!({"metadata": {"name": name}, "spec": {"nodeName": node, "terminationGracePeriodSeconds": 20,
               "containers": [{"name": "c", "image": "busybox"}]}})
    };
    r.create(&s, pod("unbound", ""), false).await?;
    r.delete(&s, "unbound", &DeleteOptions::default()).await?;
    ensure!(matches!(r.get(&s, "unbound").await, Err(RegistryError::NotFound { .. })));

    r.create(&s, pod("bound", "n1"), false).await?;
    let marked = r.delete(&s, "bound", &DeleteOptions::default()).await?;
    ensure!(
        marked["metadata"]["deletionGracePeriodSeconds"] == 20 && marked["metadata"]["deletionTimestamp"].is_string()
    );
    // The agent's status updates during the grace period keep the pod.
    let mut status = r.get(&s, "bound").await?;
    status["status"] = json!({"phase": "Running"});
    r.update(&s, "bound", status, Some("status"), false).await?;
    ensure!(r.get(&s, "bound").await.is_ok(), "a terminating pod survives status updates");
    // A shorter grace period shortens it; a longer one does not lengthen it.
    let shorter =
        r.delete(&s, "bound", &DeleteOptions { grace_period_seconds: Some(5), ..DeleteOptions::default() }).await?;
    ensure!(shorter["metadata"]["deletionGracePeriodSeconds"] == 5);
    let longer =
        r.delete(&s, "bound", &DeleteOptions { grace_period_seconds: Some(60), ..DeleteOptions::default() }).await?;
    ensure!(longer["metadata"]["deletionGracePeriodSeconds"] == 5);
    // Grace period 0 (the agent, or a forced delete) removes it.
    r.delete(&s, "bound", &DeleteOptions { grace_period_seconds: Some(0), ..DeleteOptions::default() }).await?;
    ensure!(matches!(r.get(&s, "bound").await, Err(RegistryError::NotFound { .. })));
    Ok(())
}

#[tokio::test]
async fn pod_validation_reports_every_error() -> Result<()> {
    let f = Fixture::new()?;
    let r = f.registry("pods")?;
    let bad = json!({"metadata": {"name": "p"}, "spec": {
    "restartPolicy": "Sometimes",
    "volumes": [{"name": "data"}, {"name": "data"}],
    "containers": [
        {"name": "app", "image": "busybox", "ports": [{"containerPort": 70000, "protocol": "HTTP"}],
         "env": [{"name": ""}], "volumeMounts": [{"name": "missing", "mountPath": "/m"}]},
        {"name": "app"},
        {"name": "Bad_Name", "image": "x"}
    ]}});
    match r.create(&ns("acme", "default"), bad, false).await {
        Err(RegistryError::Invalid { errors, .. }) => {
            let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
            ensure!(
                fields
                    == vec![
                        "spec.volumes[1].name",
                        "spec.containers[0].ports[0].containerPort",
                        "spec.containers[0].ports[0].protocol",
                        "spec.containers[0].env[0].name",
                        "spec.containers[0].volumeMounts[0].name",
                        "spec.containers[1].name",
                        "spec.containers[1].image",
                        "spec.containers[2].name",
                        "spec.restartPolicy",
                    ],
                "{fields:?}"
            );
        }
        other => bail!("an invalid pod gave {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn node_name_lists_skip_other_pods_unread_and_answer_as_a_full_filter_does() -> Result<()> {
    let f = Fixture::new()?;
    let r = f.registry("pods")?;
    let pod = |name: &str, node: &str, extra: Value| {
        let mut p = json!({"metadata": {"name": name}, "spec": {"nodeName": node,
                           "containers": [{"name": "c", "image": "busybox"}]}});
        if let Some(m) = extra.as_object() {
            for (k, v) in m {
                p["metadata"][k] = v.clone();
            }
        }
        p
    };
    // Node names that are prefixes of each other, the value elsewhere than in spec.nodeName,
    // an escape in the bytes (decoded, not skipped), pods of other tenants and unbound ones.
    let pods = [
        ("acme", pod("a", "sim-1", json!({}))),
        ("acme", pod("b", "sim-12", json!({}))),
        ("acme", pod("c", "sim-123", json!({"labels": {"was": "sim-1"}}))),
        ("acme", pod("d", "sim-1", json!({"annotations": {"note": "a \"quoted\" back\\slash"}}))),
        ("beta", pod("e", "sim-1", json!({}))),
        ("beta", pod("f", "", json!({"annotations": {"want": "sim-1"}}))),
    ];
    for (tenant, p) in pods {
        r.create(&ns(tenant, "default"), p, false).await?;
    }
    let all = Scope { tenant: None, namespace: None };
    let everything = r.list(&all, &ListOptions::default()).await?;
    for selector in [
        "spec.nodeName=sim-1",
        "spec.nodeName=sim-12",
        "spec.nodeName=nowhere",
        "spec.nodeName!=sim-1",
        "spec.nodeName=sim-1,metadata.namespace=default",
        "spec.nodeName=",
        "spec.nodeName=a\"b\\\\c",
    ] {
        let field_selector = FieldSelector::parse(selector)?;
        let by_hand: Vec<String> = everything["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| field_selector.matches(|f| apiserver::registry::object::field(p, f)))
            .map(|p| p["metadata"]["name"].as_str().unwrap_or("").to_string())
            .collect();
        let opts = ListOptions { field_selector: field_selector.clone(), ..ListOptions::default() };
        ensure!(names(&r.list(&all, &opts).await?) == by_hand, "{selector}: {by_hand:?}");
        // Page by page, the skipped pods still move the continue key along.
        let mut paged = Vec::new();
        let mut token = None;
        loop {
            let opts = ListOptions { limit: Some(1), continue_token: token, ..opts.clone() };
            let page = r.list(&all, &opts).await?;
            paged.extend(names(&page));
            token = page["metadata"]["continue"].as_str().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        ensure!(paged == by_hand, "{selector} paged: {paged:?} != {by_hand:?}");
    }
    let on_sim_1 =
        ListOptions { field_selector: FieldSelector::parse("spec.nodeName=sim-1")?, ..ListOptions::default() };
    ensure!(names(&r.list(&all, &on_sim_1).await?) == ["a", "d", "e"]);
    Ok(())
}

/// The object a write answers with, as cut from the bytes it stored (what the HTTP layer
/// sends), decoded.
fn answered(w: &apiserver::registry::Written) -> Option<Value> {
    let (spliced, revision) = w.stored.as_ref()?;
    serde_json::from_slice(&spliced.with(&revision.to_string())).ok()
}

#[tokio::test]
async fn a_writes_stored_bytes_are_its_answer_when_stored_as_viewed() -> Result<()> {
    use apiserver::registry::WriteOptions;
    let f = Fixture::new()?;
    let cms = f.registry("configmaps")?;
    let scope = ns("t1", "default");
    let mut opts = WriteOptions::default();
    opts.field_manager = Some("test".into());
    let made = cms.create_written(&scope, cm("a", json!({"x": "1"})), &opts).await?;
    // The object as written, whole (a create's record may be kept beside it, as JSON).
    let answer = answered(&made);
    let made = made.into_object();
    ensure!(answer.as_ref() == Some(&made), "create: {answer:?} vs {made}");
    ensure!(made["metadata"]["managedFields"].is_array(), "with its record: {made}");
    ensure!(!rv(&made).is_empty(), "the answer has its version");

    let mut changed = made.clone();
    changed["data"]["k"] = json!("w");
    let updated = cms.update_written(&scope, "a", changed, None, &opts).await?;
    ensure!(answered(&updated).as_ref() == Some(&updated.obj), "update: {}", updated.obj);
    ensure!(rv(&updated.obj) != rv(&made));
    // An update that changes nothing answers the object at its current version.
    let same = cms.update_written(&scope, "a", updated.obj.clone(), None, &opts).await?;
    ensure!(answered(&same).as_ref() == Some(&same.obj) && rv(&same.obj) == rv(&updated.obj), "{}", same.obj);

    // A patch's path: read, change, write over what was read.
    let current = cms.current(&scope, "a").await?;
    let mut patched = current.shown().clone();
    patched["data"]["k"] = json!("p");
    let written = cms.update_current(&scope, "a", patched, &current, None, &opts).await?;
    ensure!(answered(&written).as_ref() == Some(&written.obj), "{}", written.obj);

    // Nothing stored, nothing to cut: a dry run answers the object itself.
    let mut dry = opts.clone();
    dry.dry_run = true;
    let dry_made = cms.create_written(&scope, cm("b", json!({})), &dry).await?;
    ensure!(dry_made.stored.is_none() && dry_made.obj["metadata"]["managedFields"].is_array(), "{}", dry_made.obj);
    let mut again = written.obj.clone();
    again["data"]["k"] = json!("q");
    ensure!(cms.update_written(&scope, "a", again, None, &dry).await?.stored.is_none());
    Ok(())
}

/// A status write that reads the pod with its managed fields left as stored JSON (a merge
/// patch's read) records the same ownership as one that decodes them, answers with them,
/// and keeps them as they were when nobody is named.
#[tokio::test]
async fn status_writes_change_the_record_as_stored_json_as_decoding_would() -> Result<()> {
    use apiserver::registry::{Current, WriteOptions};
    let f = Fixture::new()?;
    let r = f.registry("pods")?;
    let s = ns("acme", "default");
    let writer = |manager: Option<&str>| {
        let mut opts = WriteOptions::default();
        opts.field_manager = manager.map(str::to_string);
        opts
    };
    let pod = |name: &str| {
        json!({"metadata": {"name": name, "labels": {"app": "x"}},
               "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
    };
    // The record without its times (two writes a second apart differ only there).
    let record = |obj: &Value| {
        let mut m = obj["metadata"]["managedFields"].clone();
        m.as_array_mut().into_iter().flatten().for_each(|e| {
            e.as_object_mut().map(|e| e.remove("time"));
        });
        m
    };
    for name in ["full", "cut"] {
        r.create_with(&s, pod(name), &writer(Some("rs"))).await?;
    }
    let steps: [(Option<&str>, Value); 4] = [
        (Some("kubelet"), json!({"phase": "Running", "podIP": "10.0.0.1", "hostIP": "10.1.0.1"})),
        (Some("kubelet"), json!({"phase": "Succeeded", "podIP": "10.0.0.1", "hostIP": "10.1.0.1"})),
        (Some("other"), json!({"phase": "Succeeded", "podIP": "10.0.0.2"})),
        (None, json!({"phase": "Failed", "podIP": "10.0.0.2"})),
    ];
    let mut before = Value::Null;
    for (i, (manager, status)) in steps.iter().enumerate() {
        let mut answers = Vec::new();
        for name in ["full", "cut"] {
            let current: Current = match name {
                "full" => r.current(&s, name).await?,
                _ => r.current_for_status(&s, name).await?,
            };
            ensure!(
                (name == "cut") == current.shown()["metadata"].get("managedFields").is_none(),
                "{name}: a status read leaves the record out of the decoded pod"
            );
            let mut patched = current.shown().clone();
            patched["status"] = status.clone();
            let written = r.update_current(&s, name, patched, &current, Some("status"), &writer(*manager)).await?;
            let answer = answered(&written).context("cut from the stored bytes")?;
            let stored = r.get(&s, name).await?;
            ensure!(answer == stored, "step {i} {name}: the answer is what was stored: {answer} against {stored}");
            ensure!(stored["status"] == *status, "step {i} {name}: {stored}");
            answers.push(stored);
        }
        ensure!(
            record(&answers[0]) == record(&answers[1]),
            "step {i}: the same record either way:\n{}\n{}",
            answers[0]["metadata"]["managedFields"],
            answers[1]["metadata"]["managedFields"]
        );
        if manager.is_none() {
            ensure!(answers[1]["metadata"]["managedFields"] == before, "the server's own write keeps the record");
        }
        before = answers[1]["metadata"]["managedFields"].clone();
    }
    let owners = r.get(&s, "cut").await?["metadata"]["managedFields"].clone();
    let managers: Vec<&str> = owners.as_array().into_iter().flatten().filter_map(|e| e["manager"].as_str()).collect();
    ensure!(managers == ["rs", "kubelet", "other"], "{owners}");
    // The other writer took the pod IP and removed the host IP: the kubelet owns neither.
    ensure!(owners[1]["fieldsV1"] == json!({"f:status": {"f:phase": {}}}), "{owners}");
    ensure!(owners[2]["fieldsV1"] == json!({"f:status": {"f:podIP": {}}}), "{owners}");
    // A dry run, and a status update through PUT, answer with the record too.
    let current = r.current_for_status(&s, "cut").await?;
    let mut patched = current.shown().clone();
    patched["status"]["phase"] = json!("Unknown");
    let mut dry = writer(Some("kubelet"));
    dry.dry_run = true;
    let answer = r.update_current(&s, "cut", patched, &current, Some("status"), &dry).await?;
    ensure!(answer.stored.is_none() && answer.obj["metadata"]["managedFields"].is_array(), "dry run: {}", answer.obj);
    ensure!(answer.obj["status"]["phase"] == "Unknown" && r.get(&s, "cut").await?["status"]["phase"] == "Failed");
    let mut put = r.get(&s, "cut").await?;
    put["metadata"].as_object_mut().context("metadata")?.remove("managedFields");
    put["status"]["phase"] = json!("Running");
    let updated = r.update_written(&s, "cut", put, Some("status"), &writer(Some("kubelet"))).await?;
    let stored = r.get(&s, "cut").await?;
    ensure!(answered(&updated).as_ref() == Some(&stored), "PUT: {}", updated.obj);
    ensure!(stored["metadata"]["managedFields"][1]["fieldsV1"]["f:status"]["f:phase"] == json!({}), "{stored}");
    Ok(())
}

/// Server-side apply of the status subresource records the applier's ownership of what it
/// applied (the status write keeps the stored metadata, but not the stored record).
#[tokio::test]
async fn applying_status_records_the_applier() -> Result<()> {
    use apiserver::registry::WriteOptions;
    let f = Fixture::new()?;
    let r = f.registry("pods")?;
    let s = ns("acme", "default");
    let mut opts = WriteOptions::default();
    opts.field_manager = Some("rs".into());
    let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    r.create_with(&s, pod, &opts).await?;
    opts.field_manager = Some("applier".into());
    let config = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                        "status": {"phase": "Running", "podIP": "10.0.0.9"}});
    let (applied, created) =
        r.apply(&s, "p", config, Some("status"), false, &opts).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let stored = r.get(&s, "p").await?;
    ensure!(!created && applied == stored, "the answer is what was stored: {applied} against {stored}");
    ensure!(stored["status"]["podIP"] == "10.0.0.9", "{stored}");
    let entries = stored["metadata"]["managedFields"].as_array().context("a record")?;
    let entry = entries.iter().find(|e| e["manager"] == "applier").context(format!("no applier entry: {entries:?}"))?;
    ensure!(entry["operation"] == "Apply" && entry["subresource"] == "status", "{entry}");
    ensure!(entry["fieldsV1"]["f:status"]["f:podIP"] == json!({}), "{entry}");
    ensure!(entries.iter().any(|e| e["manager"] == "rs"), "the creator keeps its entry: {entries:?}");
    Ok(())
}

/// What an HTTP watch sends for `e`: the cache's serialised form when it has one (with a
/// version in the gap), else the object.
fn sent(e: &apiserver::registry::WatchEvent) -> Result<Value> {
    Ok(match &e.encoded {
        Some(spliced) => serde_json::from_slice(&spliced.with("1"))?,
        None => Value::clone(&e.object()),
    })
}

/// `omitManagedFields`: lists, a watch's initial state, its changes (from the stored bytes
/// of a kind stored as viewed, or the decoded view of one that is not) and a deletion's last
/// state all come without `metadata.managedFields`, and nothing else is missing; watchers
/// that did not ask, on the same cache, still get them.
#[tokio::test]
async fn readers_may_be_spared_the_managed_fields() -> Result<()> {
    use apiserver::registry::WriteOptions;
    let f = Fixture::new()?;
    let s = ns("acme", "default");
    let mut opts = WriteOptions::default();
    opts.field_manager = Some("writer".into());
    let lean = ListOptions { omit_managed_fields: true, ..ListOptions::default() };
    let without = |mut v: Value| {
        v["metadata"].as_object_mut().map(|m| m.remove("managedFields"));
        v
    };
    let core = f.registry("configmaps")?;
    let view = apiserver::kinds::views().into_iter().next().context("events.k8s.io view")?;
    let events = Registry::new(f.store.clone(), Arc::new(view));
    let event = |name: &str| {
        json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": name},
               "regarding": {"kind": "Pod", "name": "p"}, "note": "n", "reason": "R", "type": "Normal",
               "reportingController": "atoll", "eventTime": "2026-11-22T00:00:00Z"})
    };
    for (r, obj, stored_as_viewed) in [(&core, cm("a", json!({"x": "1"})), true), (&events, event("a"), false)] {
        ensure!(r.strategy().stored_as_viewed() == stored_as_viewed);
        let first = r.create_with(&s, obj.clone(), &opts).await?;
        ensure!(first["metadata"]["managedFields"].is_array(), "the write records its manager: {first}");
        let listed = r.list(&s, &lean).await?;
        ensure!(listed["items"][0] == without(first.clone()), "list: {listed}");
        ensure!(r.list(&s, &ListOptions::default()).await?["items"][0] == first, "a plain list keeps them");

        let mut plain = r.watch(&s, &ListOptions::default(), false).await?;
        let mut spared = r.watch(&s, &lean, false).await?;
        let initial = spared.recv().await.context("initial state")?;
        ensure!(initial.kind == "ADDED" && sent(&initial)? == without(first.clone()), "initial: {}", sent(&initial)?);
        plain.recv().await.context("initial state")?;
        let mut second = obj.clone();
        second["metadata"]["name"] = json!("b");
        let made = r.create_with(&s, second, &opts).await?;
        let mut changed = made.clone();
        changed["metadata"]["labels"] = json!({"l": "v"});
        let changed = r.update_with(&s, "b", changed, None, &opts).await?;
        r.delete(&s, "b", &DeleteOptions::default()).await?;
        for (kind, whole) in [("ADDED", &made), ("MODIFIED", &changed)] {
            let e = tokio::time::timeout(Duration::from_secs(10), spared.recv()).await?.context("watch ended")?;
            let mut got = sent(&e)?;
            got["metadata"]["resourceVersion"] = whole["metadata"]["resourceVersion"].clone();
            ensure!(e.kind == kind && got == without(whole.clone()), "{kind}: {got} against {whole}");
            ensure!(e.encoded.is_some(), "{kind}: serialised once for every watcher");
            let e = tokio::time::timeout(Duration::from_secs(10), plain.recv()).await?.context("watch ended")?;
            let mut got = sent(&e)?;
            got["metadata"]["resourceVersion"] = whole["metadata"]["resourceVersion"].clone();
            ensure!(e.kind == kind && &got == whole, "{kind} without asking: {got} against {whole}");
        }
        let e = tokio::time::timeout(Duration::from_secs(10), spared.recv()).await?.context("watch ended")?;
        let got = sent(&e)?;
        ensure!(e.kind == "DELETED" && got["metadata"]["name"] == "b", "{got}");
        ensure!(got["metadata"].get("managedFields").is_none() && got["metadata"]["labels"]["l"] == "v", "{got}");
        r.delete(&s, "a", &DeleteOptions::default()).await?;
    }
    // Stored bytes the scan will not cut (an escaped key before the metadata, which an
    // custom resource that keeps unknown fields may have) are decoded and sent without the managed fields all the same.
    let mut spared = core.watch(&s, &lean, false).await?;
    let mut odd = cm("odd", json!({}));
    odd["a\"b"] = json!("1");
    let made = core.create_with(&s, odd, &opts).await?;
    ensure!(made["metadata"]["managedFields"].is_array() && made["a\"b"] == "1", "{made}");
    let e = tokio::time::timeout(Duration::from_secs(10), spared.recv()).await?.context("watch ended")?;
    let mut got = sent(&e)?;
    got["metadata"]["resourceVersion"] = made["metadata"]["resourceVersion"].clone();
    ensure!(got == without(made.clone()), "escaped key: {got}");
    Ok(())
}
