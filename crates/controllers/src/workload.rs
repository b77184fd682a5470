//! What the workload controllers (ReplicaSet, Deployment) share: owner references, pod
//! readiness, times, and the pure arithmetic they are built on.

use std::time::{SystemTime, UNIX_EPOCH};

use api::json::At;
use serde_json::{Value, json};

/// How often at most a workload controller reconciles one object: each pass reads all of
/// the object's pods (or sets), and each of their changes asks for one, so without a pace a
/// burst costs passes × pods (the scale bench: ~600 passes of 200 pods per ReplicaSet when
/// the API answered fast). Kubernetes bounds this by its sync being slower; a change waits
/// at most this long to be acted on.
pub const PACE: std::time::Duration = std::time::Duration::from_millis(200);

pub fn str_at<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.at(pointer).and_then(Value::as_str).unwrap_or("")
}

pub fn i64_at(obj: &Value, pointer: &str) -> i64 {
    obj.at(pointer).and_then(Value::as_i64).unwrap_or(0)
}

pub fn uid(obj: &Value) -> &str {
    str_at(obj, "/metadata/uid")
}

pub fn deleting(obj: &Value) -> bool {
    obj.at("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null())
}

/// The owner reference marked `controller: true`, if any.
pub fn controller_ref(obj: &Value) -> Option<&Value> {
    obj.at("/metadata/ownerReferences")?
        .as_array()?
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
}

/// Whether `obj`'s controller is the object with `owner_uid`.
pub fn controlled_by(obj: &Value, owner_uid: &str) -> bool {
    controller_ref(obj).is_some_and(|r| r.get("uid").and_then(Value::as_str) == Some(owner_uid))
}

/// A controller owner reference to `owner`, which blocks the owner's foreground deletion.
pub fn owner_ref(owner: &Value, api_version: &str, kind: &str) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": kind,
        "name": str_at(owner, "/metadata/name"),
        "uid": uid(owner),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// Whether the workload's selector selects `obj`'s labels.
pub fn selects(workload: &Value, obj: &Value) -> bool {
    Selector::of(workload).selects(obj)
}

/// A workload's selector, looked up once for many objects (a ReplicaSet's sync judges every
/// pod of its namespace without a controller: 50,000 in the scale bench).
pub struct Selector<'a>(Option<&'a Value>);

impl<'a> Selector<'a> {
    /// An empty selector selects nothing for a workload.
    pub fn of(workload: &'a Value) -> Selector<'a> {
        Selector(workload.at("/spec/selector").filter(|s| !api::selector::label_selector_is_empty(s)))
    }

    pub fn selects(&self, obj: &Value) -> bool {
        self.0.is_some_and(|s| api::selector::label_selector_selects(s, obj.at("/metadata/labels")))
    }

    /// The `matchLabels` pairs: every object the selector selects carries each of them (so
    /// any one narrows the search for candidates).
    pub fn required_labels(&self) -> impl Iterator<Item = (&'a str, &'a str)> + use<'a> {
        string_pairs(self.0.and_then(|s| s.get("matchLabels")))
    }
}

/// An object's labels (its `metadata.labels`) as key and value; values that are no string
/// are left out.
pub fn labels(obj: &Value) -> impl Iterator<Item = (&str, &str)> {
    string_pairs(obj.at("/metadata/labels"))
}

/// The string-valued entries of a JSON map (none when it is no map).
fn string_pairs(map: Option<&Value>) -> impl Iterator<Item = (&str, &str)> {
    map.and_then(Value::as_object).into_iter().flatten().filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
}

/// A LabelSelector object as the `labelSelector` query parameter spells it; `None` for
/// an empty selector (which selects nothing for a workload) or an unknown operator.
pub fn selector_string(selector: &Value) -> Option<String> {
    let mut terms: Vec<String> = selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    for e in selector.get("matchExpressions").and_then(Value::as_array).into_iter().flatten() {
        let key = str_at(e, "/key");
        let values: Vec<&str> =
            e.get("values").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
        terms.push(match str_at(e, "/operator") {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            _ => return None,
        });
    }
    (!terms.is_empty()).then(|| terms.join(","))
}

pub fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

pub fn now_rfc3339() -> String {
    api::time::rfc3339(now_secs())
}

/// Seconds since the epoch of a UTC RFC 3339 time as the API writes them
/// (`2026-01-02T03:04:05Z`, maybe with fractions); 0 if unreadable.
pub fn parse_time(s: &str) -> i64 {
    let num = |r: std::ops::Range<usize>| s.get(r).and_then(|t| t.parse::<i64>().ok());
    let (Some(y), Some(m), Some(d), Some(hh), Some(mm), Some(ss)) =
        (num(0..4), num(5..7), num(8..10), num(11..13), num(14..16), num(17..19))
    else {
        return 0;
    };
    // Days from the civil date (proleptic Gregorian), 1970-01-01 being day 0.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + hh * 3600 + mm * 60 + ss
}

/// A pod that counts towards its workload: not finished and not being deleted.
pub fn pod_active(pod: &Value) -> bool {
    !deleting(pod) && !matches!(str_at(pod, "/status/phase"), "Succeeded" | "Failed")
}

fn ready_condition(pod: &Value) -> Option<&Value> {
    pod.at("/status/conditions")?.as_array()?.iter().find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
}

pub fn pod_ready(pod: &Value) -> bool {
    ready_condition(pod).is_some_and(|c| c.get("status").and_then(Value::as_str) == Some("True"))
}

/// Since when a ready pod has been ready (its Ready condition's transition time).
pub fn pod_ready_since(pod: &Value) -> Option<i64> {
    let c = ready_condition(pod).filter(|_| pod_ready(pod))?;
    Some(c.get("lastTransitionTime").and_then(Value::as_str).map(parse_time).unwrap_or(0))
}

/// Ready for at least `min_ready` seconds at `now`.
pub fn pod_available(pod: &Value, min_ready: i64, now: i64) -> bool {
    pod_readiness(pod, min_ready, now).1
}

/// Whether a pod is ready, and whether it is available (ready for at least `min_ready`
/// seconds at `now`), from one look at its Ready condition; its transition time is parsed
/// only when `min_ready` asks for it (a ReplicaSet's status counts every pod of the set on
/// every sync).
pub fn pod_readiness(pod: &Value, min_ready: i64, now: i64) -> (bool, bool) {
    let Some(ready) = ready_condition(pod).filter(|c| c.get("status").and_then(Value::as_str) == Some("True")) else {
        return (false, false);
    };
    let since = || ready.get("lastTransitionTime").and_then(Value::as_str).map(parse_time).unwrap_or(0);
    (true, min_ready <= 0 || since() + min_ready <= now)
}

/// Sets condition `kind` in `conditions` (a status's list), keeping its transition time
/// when the status stays. Returns the list.
pub fn set_condition(conditions: &mut Vec<Value>, kind: &str, status: &str, reason: &str, message: &str, now: &str) {
    if let Some(c) = conditions.iter_mut().find(|c| c.get("type").and_then(Value::as_str) == Some(kind)) {
        let transition = if c.get("status").and_then(Value::as_str) == Some(status) {
            c.get("lastTransitionTime").cloned().unwrap_or(json!(now))
        } else {
            json!(now)
        };
        let unchanged = c.get("reason").and_then(Value::as_str) == Some(reason)
            && c.get("message").and_then(Value::as_str) == Some(message)
            && c.get("status").and_then(Value::as_str) == Some(status);
        let update = if unchanged { c.get("lastUpdateTime").cloned().unwrap_or(json!(now)) } else { json!(now) };
        *c = json!({
            "type": kind, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": transition, "lastUpdateTime": update,
        });
    } else {
        conditions.push(json!({
            "type": kind, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": now, "lastUpdateTime": now,
        }));
    }
}

pub fn condition<'a>(status: &'a Value, kind: &str) -> Option<&'a Value> {
    status.get("conditions")?.as_array()?.iter().find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
}

/// The order in which a scale-down picks pods, first to go first (Kubernetes' order):
/// unscheduled before scheduled, pending before unknown before running, not ready before
/// ready, ready for a shorter time first, more restarts first, newer first.
pub fn deletion_order(a: &Value, b: &Value) -> std::cmp::Ordering {
    let scheduled = |p: &Value| !str_at(p, "/spec/nodeName").is_empty();
    let phase = |p: &Value| match str_at(p, "/status/phase") {
        "Pending" | "" => 0,
        "Unknown" => 1,
        "Running" => 2,
        _ => 3,
    };
    let restarts = |p: &Value| -> i64 {
        p.at("/status/containerStatuses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| i64_at(c, "/restartCount"))
            .max()
            .unwrap_or(0)
    };
    let created = |p: &Value| parse_time(str_at(p, "/metadata/creationTimestamp"));
    scheduled(a)
        .cmp(&scheduled(b))
        .then(phase(a).cmp(&phase(b)))
        .then(pod_ready(a).cmp(&pod_ready(b)))
        // Both ready: the one ready more recently goes first.
        .then_with(|| match (pod_ready_since(a), pod_ready_since(b)) {
            (Some(x), Some(y)) => y.cmp(&x),
            _ => std::cmp::Ordering::Equal,
        })
        .then(restarts(b).cmp(&restarts(a)))
        .then(created(b).cmp(&created(a)))
}

/// Resolves an int-or-percent against `total`, rounding percents up or down.
pub fn scaled_value(v: Option<&Value>, total: i64, round_up: bool, default: i64) -> i64 {
    match v {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(default),
        Some(Value::String(s)) => match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            Some(p) if round_up => (p * total + 99) / 100,
            Some(p) => p * total / 100,
            None => s.parse().unwrap_or(default),
        },
        _ => default,
    }
}

/// A rolling update's `(maxSurge, maxUnavailable)` for `replicas`, as Kubernetes resolves
/// them: surge rounds up, unavailability down, and both zero means one may be unavailable.
pub fn surge_and_unavailable(strategy: &Value, replicas: i64) -> (i64, i64) {
    let rolling = strategy.get("rollingUpdate");
    let surge = scaled_value(rolling.and_then(|r| r.get("maxSurge")), replicas, true, 0).max(0);
    let unavailable = scaled_value(rolling.and_then(|r| r.get("maxUnavailable")), replicas, false, 0).max(0);
    if surge == 0 && unavailable == 0 { (0, 1) } else { (surge, unavailable.min(replicas)) }
}

/// FNV-1a (32 bits), the hash behind `pod-template-hash`.
pub fn fnv32a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The characters Kubernetes uses for generated names (no vowels, no look-alikes).
const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// A hash's decimal digits mapped onto [`SAFE`], as Kubernetes spells template hashes.
pub fn safe_encode(n: u32) -> String {
    n.to_string().bytes().map(|d| SAFE[usize::from(d - b'0') % SAFE.len()] as char).collect()
}

/// The `pod-template-hash` of a template (with a collision count mixed in).
pub fn template_hash(template: &Value, collisions: i64) -> String {
    let mut bytes = serde_json::to_vec(template).unwrap_or_default();
    if collisions > 0 {
        bytes.extend_from_slice(collisions.to_string().as_bytes());
    }
    safe_encode(fnv32a(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, node: &str, phase: &str, ready_since: Option<&str>, created: &str) -> Value {
        let mut p = json!({
            "metadata": {"name": name, "creationTimestamp": created},
            "spec": {"nodeName": node},
            "status": {"phase": phase},
        });
        if let Some(t) = ready_since {
            p["status"]["conditions"] = json!([{"type": "Ready", "status": "True", "lastTransitionTime": t}]);
        }
        p
    }

    #[test]
    fn scale_down_takes_the_least_useful_pods_first() {
        let mut pods = [
            pod("old-ready", "n", "Running", Some("2026-01-01T00:00:00Z"), "2026-01-01T00:00:00Z"),
            pod("unscheduled", "", "Pending", None, "2026-01-01T00:00:00Z"),
            pod("recently-ready", "n", "Running", Some("2026-01-02T00:00:00Z"), "2026-01-01T00:00:00Z"),
            pod("pending", "n", "Pending", None, "2026-01-01T00:00:00Z"),
            pod("running-not-ready", "n", "Running", None, "2026-01-01T00:00:00Z"),
            pod("newer-pending", "n", "Pending", None, "2026-01-03T00:00:00Z"),
        ];
        pods.sort_by(deletion_order);
        let names: Vec<&str> = pods.iter().map(|p| str_at(p, "/metadata/name")).collect();
        assert_eq!(
            names,
            ["unscheduled", "newer-pending", "pending", "running-not-ready", "recently-ready", "old-ready"]
        );
    }

    #[test]
    fn rolling_update_arithmetic_rounds_as_kubernetes() {
        let s = |surge: Value, unavailable: Value| json!({"rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}});
        assert_eq!(surge_and_unavailable(&s(json!("25%"), json!("25%")), 10), (3, 2));
        assert_eq!(surge_and_unavailable(&s(json!("25%"), json!("25%")), 1), (1, 0));
        assert_eq!(surge_and_unavailable(&s(json!("25%"), json!("25%")), 3), (1, 0));
        assert_eq!(surge_and_unavailable(&s(json!(0), json!("10%")), 5), (0, 1));
        assert_eq!(surge_and_unavailable(&s(json!(2), json!(1)), 5), (2, 1));
        assert_eq!(surge_and_unavailable(&s(json!("50%"), json!("100%")), 4), (2, 4));
        assert_eq!(surge_and_unavailable(&json!({}), 4), (0, 1));
    }

    #[test]
    fn template_hashes_are_stable_safe_and_collision_aware() {
        let t = json!({"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}});
        let h = template_hash(&t, 0);
        assert_eq!(h, template_hash(&t, 0));
        assert_ne!(h, template_hash(&t, 1));
        assert!(h.bytes().all(|c| SAFE.contains(&c)) && !h.is_empty() && h.len() <= 10);
        assert_eq!(fnv32a(b""), 0x811c9dc5);
        assert_eq!(fnv32a(b"a"), 0xe40c292c);
    }

    #[test]
    fn selectors_spell_as_query_parameters() {
        let s = json!({"matchLabels": {"app": "web"},
                       "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]},
                                            {"key": "x", "operator": "Exists"},
                                            {"key": "y", "operator": "DoesNotExist"},
                                            {"key": "z", "operator": "NotIn", "values": ["c"]}]});
        assert_eq!(selector_string(&s).as_deref(), Some("app=web,tier in (a,b),x,!y,z notin (c)"));
        assert_eq!(selector_string(&json!({})), None);
        assert_eq!(selector_string(&json!({"matchExpressions": [{"key": "k", "operator": "Near"}]})), None);
    }

    #[test]
    fn times_read_back() {
        for t in [0, 86_399, 951_782_400, 1_780_000_000] {
            assert_eq!(parse_time(&api::time::rfc3339(t)), t);
        }
        assert_eq!(parse_time("2026-11-24T02:22:33.123456Z"), parse_time("2026-11-24T02:22:33Z"));
        assert_eq!(parse_time("garbage"), 0);
    }

    #[test]
    fn conditions_keep_their_transition_time() {
        let mut c = Vec::new();
        set_condition(&mut c, "Available", "True", "R", "m", "t1");
        set_condition(&mut c, "Available", "True", "R2", "m2", "t2");
        assert_eq!(c[0]["lastTransitionTime"], "t1");
        assert_eq!(c[0]["lastUpdateTime"], "t2");
        set_condition(&mut c, "Available", "False", "R2", "m2", "t3");
        assert_eq!(c[0]["lastTransitionTime"], "t3");
    }
}
