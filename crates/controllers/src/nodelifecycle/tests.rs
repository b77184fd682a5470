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
