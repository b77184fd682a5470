//! What a workload controller wrote and waits to see in its pod cache before it resizes a
//! set again (Kubernetes' "expectations"), so that a cache lagging the controller's own
//! writes never makes it create or delete twice.
//!
//! - Created pods are expected by name until the cache holds them; deleted ones until the
//!   cache shows them gone or terminating. The cache is read, not the events, so a re-list
//!   that replaces the cache wholesale satisfies or keeps expectations by what it holds.
//! - A create whose outcome is unknown (the connection failed, or the server failed with a
//!   5xx after maybe storing the pod) has no name to wait for: the set is held for
//!   [`UNCERTAIN_HOLD`], long enough for a stored pod to come through the watch, then it
//!   counts as not made.
//! - An expectation the cache never meets is given up after [`TTL`] (a pod created and
//!   deleted by someone else before the cache saw it).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;

use crate::cache::ObjectKey;
use crate::workload;

/// How long an expectation waits for the cache before it is given up.
pub const TTL: Duration = Duration::from_secs(300);
/// How long a create of unknown outcome holds the set.
pub const UNCERTAIN_HOLD: Duration = Duration::from_secs(10);

struct Expected {
    created: HashSet<String>,
    deleted: HashSet<String>,
    since: Instant,
    uncertain_until: Option<Instant>,
}

#[derive(Default)]
pub struct Expectations {
    all: Mutex<HashMap<ObjectKey, Expected>>,
}

/// Whether a failed create may still have stored the pod.
pub fn ambiguous(e: &client::Error) -> bool {
    match e {
        client::Error::Api(s) => s.code >= 500,
        client::Error::InvalidName(_) | client::Error::Kubeconfig(_) | client::Error::Tls(_) => false,
        // A connection that failed before the request went out cannot have stored it, but
        // the error does not say when it failed.
        _ => true,
    }
}

impl Expectations {
    /// `Ok` if the cache (`pod` by name) has caught up with what was last done for `key`;
    /// else how long to wait at most before looking again.
    pub fn satisfied(
        &self,
        key: &ObjectKey,
        now: Instant,
        pod: impl Fn(&str) -> Option<Arc<Value>>,
    ) -> Result<(), Duration> {
        let mut all = self.all.lock();
        let Some(e) = all.get_mut(key) else { return Ok(()) };
        e.created.retain(|n| pod(n).is_none());
        e.deleted.retain(|n| pod(n).is_some_and(|p| !workload::deleting(&p)));
        let held = e.uncertain_until.and_then(|until| until.checked_duration_since(now)).filter(|d| !d.is_zero());
        let waiting = !e.created.is_empty() || !e.deleted.is_empty();
        let expires = e.since + TTL;
        if (!waiting && held.is_none()) || now >= expires {
            all.remove(key);
            return Ok(());
        }
        let ttl_left = expires.saturating_duration_since(now);
        Err(match (waiting, held) {
            (_, Some(h)) if !waiting => h,
            (_, Some(h)) => h.min(ttl_left),
            _ => ttl_left,
        })
    }

    pub fn expect(&self, key: &ObjectKey, created: Vec<String>, deleted: Vec<String>, now: Instant) {
        if created.is_empty() && deleted.is_empty() {
            return;
        }
        let mut all = self.all.lock();
        let e = all.entry(key.clone()).or_insert_with(|| Expected {
            created: HashSet::new(),
            deleted: HashSet::new(),
            since: now,
            uncertain_until: None,
        });
        e.created.extend(created);
        e.deleted.extend(deleted);
        e.since = now;
    }

    /// A create of unknown outcome: hold the set for [`UNCERTAIN_HOLD`].
    pub fn uncertain(&self, key: &ObjectKey, now: Instant) {
        let mut all = self.all.lock();
        let e = all.entry(key.clone()).or_insert_with(|| Expected {
            created: HashSet::new(),
            deleted: HashSet::new(),
            since: now,
            uncertain_until: None,
        });
        e.uncertain_until = Some(now + UNCERTAIN_HOLD);
    }

    /// A delete that failed: nothing to wait for.
    pub fn not_deleted(&self, key: &ObjectKey, name: &str) {
        if let Some(e) = self.all.lock().get_mut(key) {
            e.deleted.remove(name);
        }
    }

    pub fn forget(&self, key: &ObjectKey) {
        self.all.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::cache::Cache;
    use crate::watcher::Event;

    fn pod(name: &str, deleting: bool) -> Value {
        let mut p = json!({"metadata": {"name": name, "namespace": "ns", "tenant": "t", "resourceVersion": "1"}});
        if deleting {
            p["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        p
    }

    /// What the ReplicaSet controller would do now: how many pods to create, if any (the
    /// arithmetic of its reconcile, over the cache as it stands).
    fn would_create(exp: &Expectations, key: &ObjectKey, pods: &Cache, want: usize, now: Instant) -> usize {
        let lookup = |n: &str| pods.get(&ObjectKey::new("t", Some("ns"), n));
        if exp.satisfied(key, now, lookup).is_err() {
            return 0;
        }
        let active = pods.list().iter().filter(|p| workload::pod_active(p)).count();
        want.saturating_sub(active)
    }

    /// The scale run's question: can a re-list or a lagging cache make a set create more
    /// pods than it wants? It creates 3, and the cache learns of them in pieces.
    #[test]
    fn a_lagging_or_relisted_cache_never_makes_a_set_create_twice() {
        let key = ObjectKey::new("t", Some("ns"), "rs");
        let (exp, pods) = (Expectations::default(), Cache::default());
        let t0 = Instant::now();
        pods.apply(&Event::Restarted(vec![]));
        assert_eq!(would_create(&exp, &key, &pods, 3, t0), 3);
        exp.expect(&key, vec!["a".into(), "b".into(), "c".into()], vec![], t0);
        // The cache has none of them yet: nothing more.
        assert_eq!(would_create(&exp, &key, &pods, 3, t0), 0);
        // One arrives by watch; then the watch breaks and a re-list holds only that one
        // and another (the third was written after the list's revision... which a
        // consistent list cannot be, but a lagging cache may look just like it).
        pods.apply(&Event::Applied(pod("a", false)));
        assert_eq!(would_create(&exp, &key, &pods, 3, t0), 0);
        pods.apply(&Event::Restarted(vec![pod("a", false), pod("b", false)]));
        assert_eq!(would_create(&exp, &key, &pods, 3, t0), 0, "c is still expected");
        pods.apply(&Event::Applied(pod("c", false)));
        assert_eq!(would_create(&exp, &key, &pods, 3, t0), 0, "all three there");
        // Once met, the expectation is gone: a pod evicted later is replaced (legitimately).
        pods.apply(&Event::Deleted(pod("b", false)));
        assert_eq!(would_create(&exp, &key, &pods, 3, t0), 1);
        // A terminating pod does not count; its replacement is expected like any other.
        pods.apply(&Event::Applied(pod("a", true)));
        assert_eq!(would_create(&exp, &key, &pods, 3, t0), 2);
    }

    #[test]
    fn deletions_wait_for_the_cache_to_see_them_go() {
        let key = ObjectKey::new("t", Some("ns"), "rs");
        let (exp, pods) = (Expectations::default(), Cache::default());
        let t0 = Instant::now();
        pods.apply(&Event::Restarted(vec![pod("a", false), pod("b", false)]));
        exp.expect(&key, vec![], vec!["a".into()], t0);
        let lookup = |n: &str| pods.get(&ObjectKey::new("t", Some("ns"), n));
        assert!(exp.satisfied(&key, t0, lookup).is_err());
        // A re-list still holding it, not terminating: still waiting.
        pods.apply(&Event::Restarted(vec![pod("a", false), pod("b", false)]));
        assert!(exp.satisfied(&key, t0, |n| pods.get(&ObjectKey::new("t", Some("ns"), n))).is_err());
        pods.apply(&Event::Applied(pod("a", true)));
        assert!(exp.satisfied(&key, t0, |n| pods.get(&ObjectKey::new("t", Some("ns"), n))).is_ok());
        // A delete that failed is not waited for.
        exp.expect(&key, vec![], vec!["b".into()], t0);
        exp.not_deleted(&key, "b");
        assert!(exp.satisfied(&key, t0, |n| pods.get(&ObjectKey::new("t", Some("ns"), n))).is_ok());
    }

    /// A create whose answer was lost may have stored a pod nobody can name: the set waits
    /// for it to come through the watch before it creates again.
    #[test]
    fn a_create_of_unknown_outcome_holds_the_set_a_while() {
        let key = ObjectKey::new("t", Some("ns"), "rs");
        let (exp, pods) = (Expectations::default(), Cache::default());
        let t0 = Instant::now();
        pods.apply(&Event::Restarted(vec![]));
        exp.expect(&key, vec!["a".into()], vec![], t0);
        exp.uncertain(&key, t0);
        pods.apply(&Event::Applied(pod("a", false)));
        assert_eq!(exp.satisfied(&key, t0, |n| pods.get(&ObjectKey::new("t", Some("ns"), n))), Err(UNCERTAIN_HOLD));
        // The lost one was stored after all: it shows, and nothing more is made.
        pods.apply(&Event::Applied(pod("lost", false)));
        let later = t0 + UNCERTAIN_HOLD;
        assert_eq!(would_create(&exp, &key, &pods, 2, later), 0);
        // Never seen: after the hold, the set makes it up.
        let (exp, pods) = (Expectations::default(), Cache::default());
        pods.apply(&Event::Restarted(vec![pod("a", false)]));
        exp.uncertain(&key, t0);
        assert_eq!(would_create(&exp, &key, &pods, 2, t0 + Duration::from_secs(1)), 0);
        assert_eq!(would_create(&exp, &key, &pods, 2, later), 1);
    }

    #[test]
    fn unmet_expectations_expire() {
        let key = ObjectKey::new("t", Some("ns"), "rs");
        let exp = Expectations::default();
        let t0 = Instant::now();
        exp.expect(&key, vec!["never".into()], vec![], t0);
        assert_eq!(exp.satisfied(&key, t0, |_| None), Err(TTL));
        assert!(exp.satisfied(&key, t0 + TTL, |_| None).is_ok());
    }

    #[test]
    fn only_answers_that_may_have_stored_the_pod_are_ambiguous() {
        let api = |code| client::Error::Api(client::Status { code, reason: String::new(), message: String::new() });
        assert!(!ambiguous(&api(403)));
        assert!(!ambiguous(&api(422)));
        assert!(ambiguous(&api(500)));
        assert!(ambiguous(&api(504)));
        assert!(ambiguous(&client::Error::Decode("cut short".into())));
    }
}
