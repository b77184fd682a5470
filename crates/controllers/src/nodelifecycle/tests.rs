use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::*;

const GRACE: Duration = Duration::from_secs(40);

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_795_000_000 + secs)
}

fn stamp(secs: u64) -> String {
    seconds(at(secs))
}

/// A node created at 0 whose agent reported `ready` with a heartbeat at `heartbeat`.
fn node(ready: &str, heartbeat: u64, taints: Value) -> Value {
    json!({"metadata": {"name": "n1", "creationTimestamp": stamp(0)},
           "spec": {"taints": taints},
           "status": {"conditions": [
               {"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": stamp(heartbeat),
                "lastTransitionTime": stamp(0)},
               {"type": "Ready", "status": ready, "reason": "AgentReady", "lastHeartbeatTime": stamp(heartbeat),
                "lastTransitionTime": stamp(0)}]}})
}

fn ready_of(conditions: &Value) -> (&str, &str) {
    let c = conditions.as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap();
    (c["status"].as_str().unwrap(), c["reason"].as_str().unwrap_or(""))
}

fn keys(taints: &Value) -> Vec<String> {
    taints
        .as_array()
        .unwrap()
        .iter()
        .map(|t| format!("{}:{}", t["key"].as_str().unwrap(), t["effect"].as_str().unwrap()))
        .collect()
}

#[test]
fn a_fresh_lease_keeps_a_ready_node_as_it_is_and_rechecks_at_expiry() {
    let n = node("True", 0, json!([]));
    let v = judge(&n, Some(at(100)), at(110), GRACE, Tainting::Allowed);
    assert_eq!(v.health, Health::Ready);
    assert_eq!((v.conditions, v.taints), (None, None));
    assert_eq!(v.recheck, Some(Duration::from_secs(30) + SLACK));
}

#[test]
fn a_lease_older_than_the_grace_period_makes_the_node_unknown_and_unreachable() {
    let n = node("True", 0, json!([{"key": "dedicated", "value": "infra", "effect": "NoSchedule"}]));
    let v = judge(&n, Some(at(100)), at(141), GRACE, Tainting::Allowed);
    assert_eq!(v.health, Health::Unreachable);
    let conditions = v.conditions.expect("conditions change");
    assert_eq!(ready_of(&conditions), ("Unknown", "NodeStatusUnknown"));
    // Every condition becomes Unknown; heartbeats are kept, transitions are now.
    for c in conditions.as_array().unwrap() {
        assert_eq!(c["status"], "Unknown");
        assert_eq!(c["lastTransitionTime"], stamp(141));
        assert_eq!(c["lastHeartbeatTime"], stamp(0));
    }
    let taints = v.taints.expect("taints change");
    assert_eq!(
        keys(&taints),
        [
            "dedicated:NoSchedule",
            "node.kubernetes.io/unreachable:NoSchedule",
            "node.kubernetes.io/unreachable:NoExecute"
        ]
    );
    assert_eq!(taints[2]["timeAdded"], stamp(141));
    assert_eq!(taints[1].get("timeAdded"), None);
    assert_eq!(v.recheck, None, "only a lease renewal brings it back");

    // Exactly at the limit it is still fine.
    assert_eq!(judge(&n, Some(at(100)), at(140), GRACE, Tainting::Allowed).health, Health::Ready);
}

#[test]
fn an_unknown_node_already_marked_changes_nothing_more() {
    let n = node("True", 0, json!([]));
    let v = judge(&n, Some(at(100)), at(141), GRACE, Tainting::Allowed);
    let mut marked = n.clone();
    marked["status"]["conditions"] = v.conditions.unwrap();
    marked["spec"]["taints"] = v.taints.unwrap();
    let again = judge(&marked, Some(at(100)), at(500), GRACE, Tainting::Allowed);
    assert_eq!((again.health, again.conditions, again.taints), (Health::Unreachable, None, None));
}

#[test]
fn recovery_removes_the_taints_once_the_agent_reports_ready() {
    let taints = json!([{"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"},
                        {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "timeAdded": stamp(141)},
                        {"key": "dedicated", "value": "infra", "effect": "NoSchedule"}]);
    // The lease is fresh again but Ready is still our Unknown: the node stays tainted.
    let unknown = node("Unknown", 0, taints.clone());
    let v = judge(&unknown, Some(at(600)), at(601), GRACE, Tainting::Allowed);
    assert_eq!((v.health, v.conditions, v.taints), (Health::Unreachable, None, None));
    // The agent rewrote Ready=True: the taints go, others stay.
    let ready = node("True", 600, taints);
    let v = judge(&ready, Some(at(600)), at(601), GRACE, Tainting::Allowed);
    assert_eq!(v.health, Health::Ready);
    assert_eq!(keys(&v.taints.unwrap()), ["dedicated:NoSchedule"]);
}

#[test]
fn an_agent_reporting_not_ready_gets_the_not_ready_taints_instead() {
    let n = node("False", 100, json!([{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]));
    let v = judge(&n, Some(at(100)), at(101), GRACE, Tainting::Allowed);
    assert_eq!(v.health, Health::NotReady);
    assert_eq!(v.conditions, None);
    assert_eq!(
        keys(&v.taints.unwrap()),
        ["node.kubernetes.io/not-ready:NoSchedule", "node.kubernetes.io/not-ready:NoExecute"]
    );
}

#[test]
fn a_node_that_never_reported_gets_one_grace_period_from_its_creation() {
    let n = json!({"metadata": {"name": "n1", "creationTimestamp": stamp(0)}, "spec": {}});
    let v = judge(&n, None, at(10), GRACE, Tainting::Allowed);
    // Not yet reported: no conditions, no taints (a node just registering is not unreachable).
    assert_eq!(
        v,
        Verdict {
            health: Health::Unreported,
            conditions: None,
            taints: None,
            recheck: Some(Duration::from_secs(30) + SLACK),
            awaiting_no_execute: false,
        }
    );
    let v = judge(&n, None, at(41), GRACE, Tainting::Allowed);
    assert_eq!(ready_of(&v.conditions.unwrap()), ("Unknown", "NodeStatusNeverUpdated"));
    assert_eq!(v.health, Health::Unreachable);
}

#[test]
fn the_newest_sign_of_life_counts() {
    // An old lease but a recent status heartbeat (an agent that writes both).
    let n = node("True", 130, json!([]));
    assert_eq!(judge(&n, Some(at(50)), at(160), GRACE, Tainting::Allowed).health, Health::Ready);
}

#[test]
fn tolerations_decide_evictions() {
    let taints = vec![
        json!({"key": UNREACHABLE_TAINT, "effect": "NoSchedule"}),
        json!({"key": UNREACHABLE_TAINT, "effect": "NoExecute", "timeAdded": stamp(100)}),
    ];
    let pod = |tolerations: Value| json!({"spec": {"tolerations": tolerations}});
    let now = at(160);
    assert_eq!(eviction_after(&pod(json!([])), &taints, now), Some(Duration::ZERO));
    let default =
        json!([{"key": UNREACHABLE_TAINT, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]);
    assert_eq!(eviction_after(&pod(default), &taints, now), Some(Duration::from_secs(240)));
    let forever = json!([{"operator": "Exists"}]);
    assert_eq!(eviction_after(&pod(forever), &taints, now), None);
    let past = json!([{"key": UNREACHABLE_TAINT, "operator": "Exists", "tolerationSeconds": 30}]);
    assert_eq!(eviction_after(&pod(past), &taints, now), Some(Duration::ZERO));
    let shortest = json!([{"key": UNREACHABLE_TAINT, "operator": "Exists", "tolerationSeconds": 300},
                          {"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 100}]);
    assert_eq!(eviction_after(&pod(shortest), &taints, now), Some(Duration::from_secs(40)));
    let other_key = json!([{"key": NOT_READY_TAINT, "operator": "Exists", "effect": "NoExecute"}]);
    assert_eq!(eviction_after(&pod(other_key), &taints, now), Some(Duration::ZERO));
    // NoSchedule taints alone never evict.
    assert_eq!(eviction_after(&pod(json!([])), &taints[..1], now), None);
}

#[test]
fn toleration_matching_follows_kubernetes() {
    let taint = json!({"key": "k", "value": "v", "effect": "NoExecute"});
    let t = |v: Value| tolerates(&v, &taint);
    assert!(t(json!({"key": "k", "value": "v"})));
    assert!(t(json!({"key": "k", "operator": "Equal", "value": "v", "effect": "NoExecute"})));
    assert!(t(json!({"key": "k", "operator": "Exists"})));
    assert!(t(json!({"operator": "Exists"})));
    assert!(!t(json!({"key": "k", "value": "w"})));
    assert!(!t(json!({"key": "k", "operator": "Exists", "effect": "NoSchedule"})));
    assert!(!t(json!({"value": "v"})));
}

#[test]
fn pods_are_marked_not_ready_once() {
    let pod = json!({"status": {"phase": "Running", "conditions": [
        {"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}]}});
    let status = pod_not_ready(&pod, at(5)).expect("changes");
    assert_eq!(status["phase"], "Running");
    assert_eq!(status["conditions"][0]["status"], "False");
    assert_eq!(status["conditions"][0]["reason"], "NodeNotReady");
    assert_eq!(status["conditions"][1]["status"], "True");
    assert_eq!(pod_not_ready(&json!({"status": status}), at(6)), None);
    let bare = pod_not_ready(&json!({}), at(5)).unwrap();
    assert_eq!(bare["conditions"][0]["type"], "Ready");
}

/// The NoSchedule taint goes on at once; the NoExecute one (which evicts) only when the zone
/// grants it, except a swap between unreachable and not-ready; when every zone is down ours
/// come off.
#[test]
fn the_no_execute_taint_waits_for_the_zone() {
    let n = node("True", 100, json!([]));
    let held = judge(&n, Some(at(100)), at(141), GRACE, Tainting::Held);
    assert_eq!(held.health, Health::Unreachable);
    assert_eq!(keys(held.taints.as_ref().unwrap()), ["node.kubernetes.io/unreachable:NoSchedule"]);
    assert!(held.awaiting_no_execute);
    let allowed = judge(&n, Some(at(100)), at(141), GRACE, Tainting::Allowed);
    assert!(!allowed.awaiting_no_execute);
    assert_eq!(
        keys(allowed.taints.as_ref().unwrap()),
        ["node.kubernetes.io/unreachable:NoSchedule", "node.kubernetes.io/unreachable:NoExecute"]
    );
    // Tainted unreachable, now reporting Ready=False: swapped to not-ready at once.
    let marked = node("False", 200, allowed.taints.clone().unwrap());
    let swapped = judge(&marked, Some(at(200)), at(201), GRACE, Tainting::Held);
    assert_eq!(swapped.health, Health::NotReady);
    assert_eq!(
        keys(swapped.taints.as_ref().unwrap()),
        ["node.kubernetes.io/not-ready:NoSchedule", "node.kubernetes.io/not-ready:NoExecute"]
    );
    // Every zone down: the NoExecute taint comes off, the NoSchedule one stays.
    let mut unknown = n.clone();
    unknown["status"]["conditions"] = allowed.conditions.clone().unwrap();
    unknown["spec"]["taints"] = allowed.taints.clone().unwrap();
    let stopped = judge(&unknown, Some(at(100)), at(150), GRACE, Tainting::Stopped);
    assert_eq!(keys(stopped.taints.as_ref().unwrap()), ["node.kubernetes.io/unreachable:NoSchedule"]);
    assert!(!stopped.awaiting_no_execute);
}

/// The controller against a real API server (in this process, over the embedded store): a
/// node whose lease lapses is tainted; once its agent renews the lease and reports Ready=True
/// again (a merge patch of `nodes/status`, as simulated nodes write it), the taint comes off
/// within a few seconds, although the agent keeps writing its status meanwhile.
mod live {
    use std::sync::Arc;

    use api::json::At;
    use std::time::{Duration, SystemTime};

    use client::{Client, Patch, Resource, Scope};
    use serde_json::{Value, json};

    use parking_lot::Mutex;

    use super::super::{
        Action, Cache, Config, LEASE_NAMESPACE, NodeLifecycle, ObjectKey, Reconciler, UNHEALTHY_RECHECK,
        UNREACHABLE_TAINT, Zones, controller, leases, node_name,
    };
    use crate::watcher::Event;

    struct Server {
        client: Client,
        _stop: tokio::sync::oneshot::Sender<()>,
        _dir: tempfile::TempDir,
    }

    async fn start() -> anyhow::Result<Server> {
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn store::Store> = Arc::new(store::embedded::EmbeddedStore::open(&dir.path().join("store"))?);
        let server = apiserver::http::Server::bind(store, dir.path(), "127.0.0.1:0".parse()?).await?;
        let client = Client::from_kubeconfig(&server.kubeconfig)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Ok(Server { client, _stop: stop, _dir: dir })
    }

    fn micro(t: SystemTime) -> String {
        let s = api::time::rfc3339_nano(t);
        format!("{}Z", &s[..s.len() - 4])
    }

    fn ready_status() -> Value {
        status("True", SystemTime::now())
    }

    fn status(ready: &str, heartbeat: SystemTime) -> Value {
        let at = super::super::seconds(heartbeat);
        json!({"status": {"conditions": [{"type": "Ready", "status": ready, "reason": "AgentReady",
                                           "lastHeartbeatTime": at, "lastTransitionTime": at}]}})
    }

    async fn write_status(c: &Client, name: &str, status: Value) -> anyhow::Result<Value> {
        let scope = Scope::tenant("system");
        Ok(c.patch_subresource(&Resource::nodes(), &scope, name, "status", &Patch::Merge(status)).await?)
    }

    async fn register(c: &Client, name: &str, lease_renewed: SystemTime) -> anyhow::Result<()> {
        c.create(&Resource::nodes(), &Scope::tenant("system"), &json!({"metadata": {"name": name}})).await?;
        report_ready(c, name).await?;
        c.create(&leases(), &Scope::tenant("system").in_namespace(LEASE_NAMESPACE), &lease(name, lease_renewed))
            .await?;
        Ok(())
    }

    fn lease(name: &str, renewed: SystemTime) -> Value {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": name, "namespace": LEASE_NAMESPACE, "tenant": "system"},
               "spec": {"holderIdentity": name, "leaseDurationSeconds": 1, "renewTime": micro(renewed)}})
    }

    /// The reconciler alone, its caches filled by hand with what a trailing watch would hold.
    fn reconciler(c: &Client, grace: Duration, nodes: Vec<Value>, leases: Vec<Value>) -> NodeLifecycle {
        let (node_cache, lease_cache) = (Cache::default(), Cache::default());
        node_cache.apply(&Event::Restarted(nodes));
        lease_cache.apply(&Event::Restarted(leases));
        NodeLifecycle {
            client: c.clone(),
            config: Config { grace, ..Config::default() },
            nodes: node_cache,
            leases: lease_cache,
            pods: Cache::default().with_index(super::NODE_INDEX, node_name),
            zones: Arc::new(Mutex::new(Zones::new(Default::default()))),
            marked: Mutex::default(),
            renewals: Mutex::default(),
        }
    }

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new("system", None, name)
    }

    async fn ready_of(c: &Client, name: &str) -> anyhow::Result<String> {
        let node = c.get(&Resource::nodes(), &Scope::tenant("system"), name).await?;
        let conditions = node.at("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
        let ready = conditions.iter().find(|c| c["type"] == "Ready").map(|c| c["status"].clone());
        Ok(ready.and_then(|r| r.as_str().map(str::to_string)).unwrap_or_default())
    }

    /// At scale the node's watch trailed the API: the cache still held the node as we had
    /// marked it (Unknown, tainted) while its agent had long reported Ready=True again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_trailing_node_cache_does_not_keep_a_recovered_node_tainted() -> anyhow::Result<()> {
        let s = start().await?;
        let c = &s.client;
        let name = "n2";
        let long_ago = SystemTime::now() - Duration::from_secs(300);
        register(c, name, SystemTime::now()).await?;
        // As the controller marked it once its agent had gone quiet ...
        write_status(c, name, status("Unknown", long_ago)).await?;
        let taint = json!({"spec": {"taints": [{"key": UNREACHABLE_TAINT, "effect": "NoSchedule"}]}});
        let marked = c.patch(&Resource::nodes(), &Scope::tenant("system"), name, &Patch::Merge(taint)).await?;
        // ... and its agent back since, which the cache has not heard of.
        report_ready(c, name).await?;
        renew(c, name).await?;
        let r = reconciler(c, Duration::from_secs(40), vec![marked], vec![lease(name, SystemTime::now())]);
        r.reconcile(&key(name)).await?;
        let left = ours(c, name).await?;
        anyhow::ensure!(left.is_empty(), "a node reporting Ready=True kept {left:?}");
        anyhow::ensure!(ready_of(c, name).await? == "True");
        Ok(())
    }

    /// A lease cache trailing the API must not make a live node Unknown: the lease is read
    /// from the API before anything is written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_trailing_lease_cache_does_not_make_a_live_node_unknown() -> anyhow::Result<()> {
        let s = start().await?;
        let c = &s.client;
        let name = "n3";
        let long_ago = SystemTime::now() - Duration::from_secs(300);
        register(c, name, SystemTime::now()).await?;
        // The status is old (agents write it seldom; the lease is the heartbeat) ...
        let node = write_status(c, name, status("True", long_ago)).await?;
        // ... and the cache has a renewal as old, while the API has a fresh one (past one
        // grace period from the node's creation, its last sign of life otherwise). The grace
        // is a few seconds so that both looks below fall within it on a loaded machine (with
        // 1 s, a second look that came 1 s late under load 16 rightly found the renewal old).
        let grace = Duration::from_secs(4);
        tokio::time::sleep(grace + Duration::from_millis(500)).await;
        renew(c, name).await?;
        let r = reconciler(c, grace, vec![node], vec![lease(name, long_ago)]);
        let action = r.reconcile(&key(name)).await?;
        anyhow::ensure!(ready_of(c, name).await? == "True", "a live node was marked");
        let left = ours(c, name).await?;
        anyhow::ensure!(left.is_empty(), "a live node was tainted: {left:?}");
        anyhow::ensure!(matches!(action, Action::RequeueAfter(_)), "{action:?}");
        // The renewal read is remembered: the next look needs no read while it holds.
        anyhow::ensure!(r.renewals.lock().contains_key(name));
        r.reconcile(&key(name)).await?;
        anyhow::ensure!(ready_of(c, name).await? == "True", "a live node was marked on a second look");
        Ok(())
    }

    /// An unreachable node is looked at again (from the API) every so often, not only when a
    /// watch event says something changed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_node_is_looked_at_again_without_an_event() -> anyhow::Result<()> {
        let s = start().await?;
        let c = &s.client;
        let name = "n4";
        let long_ago = SystemTime::now() - Duration::from_secs(300);
        register(c, name, long_ago).await?;
        let node = write_status(c, name, status("True", long_ago)).await?;
        // Another zone is up, so the zones do not ask for a look again themselves.
        let other = json!({"metadata": {"name": "up", "labels": {"topology.kubernetes.io/zone": "b"}}});
        c.create(&Resource::nodes(), &Scope::tenant("system"), &other).await?;
        let up = write_status(c, "up", ready_status()).await?;
        // One grace period past the node's creation (the last sign of life it has).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let leases = vec![lease(name, long_ago), lease("up", SystemTime::now())];
        let r = reconciler(c, Duration::from_secs(1), vec![node, up], leases);
        r.reconcile(&key("up")).await?;
        let action = r.reconcile(&key(name)).await?;
        anyhow::ensure!(ready_of(c, name).await? == "Unknown");
        let taints = ours(c, name).await?;
        anyhow::ensure!(taints.contains(&format!("{UNREACHABLE_TAINT}:NoSchedule")), "{taints:?}");
        anyhow::ensure!(
            matches!(action, Action::RequeueAfter(d) if d <= UNHEALTHY_RECHECK),
            "not looked at again: {action:?}"
        );
        Ok(())
    }

    async fn renew(c: &Client, name: &str) -> anyhow::Result<()> {
        let scope = Scope::tenant("system").in_namespace(LEASE_NAMESPACE);
        let patch = json!({"spec": {"holderIdentity": name, "renewTime": micro(SystemTime::now())}});
        c.patch(&leases(), &scope, name, &Patch::Merge(patch)).await?;
        Ok(())
    }

    async fn report_ready(c: &Client, name: &str) -> anyhow::Result<()> {
        let scope = Scope::tenant("system");
        c.patch_subresource(&Resource::nodes(), &scope, name, "status", &Patch::Merge(ready_status())).await?;
        Ok(())
    }

    async fn ours(c: &Client, name: &str) -> anyhow::Result<Vec<String>> {
        let node = c.get(&Resource::nodes(), &Scope::tenant("system"), name).await?;
        let taints = node.at("/spec/taints").and_then(Value::as_array).cloned().unwrap_or_default();
        Ok(taints
            .iter()
            .filter(|t| super::super::is_ours(t))
            .map(|t| format!("{}:{}", t["key"].as_str().unwrap_or(""), t["effect"].as_str().unwrap_or("")))
            .collect())
    }

    async fn wait_for(
        c: &Client,
        name: &str,
        within: Duration,
        want: impl Fn(&[String]) -> bool,
    ) -> anyhow::Result<Vec<String>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let taints = ours(c, name).await?;
            if want(&taints) || tokio::time::Instant::now() >= deadline {
                return Ok(taints);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_back_from_unreachable_loses_its_taints_while_its_agent_keeps_writing() -> anyhow::Result<()> {
        let s = start().await?;
        let c = &s.client;
        let name = "n1";
        c.create(&Resource::nodes(), &Scope::tenant("system"), &json!({"metadata": {"name": name}})).await?;
        report_ready(c, name).await?;
        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                           "metadata": {"name": name, "namespace": LEASE_NAMESPACE},
                           "spec": {"holderIdentity": name, "leaseDurationSeconds": 1,
                                    "renewTime": micro(SystemTime::now())}});
        c.create(&leases(), &Scope::tenant("system").in_namespace(LEASE_NAMESPACE), &lease).await?;

        let config = Config { grace: Duration::from_secs(2), ..Config::default() };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        // The pod informer the controllers of a process share; it stops when `pod_stop` drops.
        let pods = crate::pod_informer(c.clone());
        let (_pod_stop, pod_stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(pods.clone().run(pod_stopped));
        let run = tokio::spawn(controller(c.clone(), config, &pods).run(async move {
            let _ = stopped.await;
        }));

        // The agent goes quiet: unreachable.
        let tainted = wait_for(c, name, Duration::from_secs(10), |t| !t.is_empty()).await?;
        anyhow::ensure!(tainted == [format!("{UNREACHABLE_TAINT}:NoSchedule")], "never tainted: {tainted:?}");

        // It comes back: renews its lease, reports Ready, and goes on writing both.
        let writer = {
            let c = c.clone();
            tokio::spawn(async move {
                loop {
                    let _ = renew(&c, name).await;
                    let _ = report_ready(&c, name).await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        };
        let left = wait_for(c, name, Duration::from_secs(5), <[String]>::is_empty).await?;
        writer.abort();
        let _ = stop.send(());
        let _ = run.await;
        anyhow::ensure!(left.is_empty(), "taints stayed on a node reporting Ready=True: {left:?}");
        Ok(())
    }
}
