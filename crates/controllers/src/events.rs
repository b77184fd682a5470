//! Events the controllers record about what they do (`kubectl describe`, `kubectl get
//! events`), as Kubernetes' event recorder writes them.
//!
//! Recording never slows a reconcile: [`Recorder::record`] puts the event on a bounded
//! queue and returns; one task per recorder writes them, and when the queue is full the
//! event is dropped (events are best effort in Kubernetes too). Before writing, the task
//! does what Kubernetes' correlator does:
//! - a spam filter per involved object: a burst of 25 events, then one per 5 minutes, so a
//!   set of 5,000 pods costs 25 `SuccessfulCreate` events, not 5,000;
//! - a repeat of the same event (object, type, reason, message) counts up on the event
//!   already written (`count`, `lastTimestamp`) instead of making another.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use client::{Client, Patch, Resource, Scope};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::workload::str_at;

/// How many events may wait for the writer before new ones are dropped.
const QUEUE: usize = 1024;
/// Kubernetes' spam filter: a burst per object, then one event per refill period.
const BURST: f64 = 25.0;
const REFILL: Duration = Duration::from_secs(300);
/// Past this many remembered objects or events, the correlator forgets them all (a cheap
/// bound in place of Kubernetes' LRU caches).
const REMEMBERED: usize = 4096;

/// An event to write.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub tenant: String,
    pub namespace: String,
    /// `{apiVersion, kind, name, namespace, uid}` of the object the event is about.
    pub involved: Value,
    /// `Normal` or `Warning`.
    pub kind: &'static str,
    pub reason: &'static str,
    pub message: String,
}

impl Event {
    /// An event about `obj` (of `api_version` `kind`).
    pub fn about(
        obj: &Value,
        api_version: &str,
        kind: &str,
        warning: bool,
        reason: &'static str,
        message: String,
    ) -> Event {
        let namespace = str_at(obj, "/metadata/namespace").to_string();
        Event {
            tenant: str_at(obj, "/metadata/tenant").to_string(),
            involved: json!({
                "apiVersion": api_version,
                "kind": kind,
                "name": str_at(obj, "/metadata/name"),
                "namespace": namespace,
                "uid": str_at(obj, "/metadata/uid"),
            }),
            namespace,
            kind: if warning { "Warning" } else { "Normal" },
            reason,
            message,
        }
    }

    fn object_key(&self) -> String {
        format!("{}/{}/{}", self.tenant, self.namespace, str_at(&self.involved, "/uid"))
    }
}

/// What the correlator makes of an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Write a new event under this name.
    Create(String),
    /// Count up the event of this name to this count.
    Count(String, u64),
    /// Spam: drop it.
    Drop,
}

#[derive(Default)]
pub struct Correlator {
    /// Per involved object: tokens left and when they were last counted.
    buckets: HashMap<String, (f64, Instant)>,
    /// Per identical event: its name and count so far.
    seen: HashMap<(String, &'static str, &'static str, String), (String, u64)>,
}

impl Correlator {
    pub fn observe(&mut self, e: &Event, now: Instant, fresh_name: impl FnOnce() -> String) -> Verdict {
        if self.buckets.len() > REMEMBERED {
            self.buckets.clear();
        }
        if self.seen.len() > REMEMBERED {
            self.seen.clear();
        }
        let (tokens, since) = self.buckets.entry(e.object_key()).or_insert((BURST, now));
        let refilled = now.saturating_duration_since(*since).as_secs_f64() / REFILL.as_secs_f64();
        *tokens = (*tokens + refilled).min(BURST);
        *since = now;
        if *tokens < 1.0 {
            return Verdict::Drop;
        }
        *tokens -= 1.0;
        let key = (e.object_key(), e.kind, e.reason, e.message.clone());
        match self.seen.get_mut(&key) {
            Some((name, count)) => {
                *count += 1;
                Verdict::Count(name.clone(), *count)
            }
            None => {
                let name = fresh_name();
                self.seen.insert(key, (name.clone(), 1));
                Verdict::Create(name)
            }
        }
    }

    /// The event `name` is gone (events expire): its next repeat makes a new one.
    fn forget(&mut self, name: &str) {
        self.seen.retain(|_, (n, _)| n != name);
    }
}

/// Records events for one controller (`component`, e.g. `deployment-controller`).
pub struct Recorder {
    tx: mpsc::Sender<Event>,
    /// The writer's end, until the first event starts the writer (inside the runtime).
    start: Mutex<Option<(Client, mpsc::Receiver<Event>)>>,
    component: &'static str,
}

impl Recorder {
    pub fn new(client: Client, component: &'static str) -> Recorder {
        let (tx, rx) = mpsc::channel(QUEUE);
        Recorder { tx, start: Mutex::new(Some((client, rx))), component }
    }

    /// Queues `event`; drops it if the queue is full. Never waits.
    pub fn record(&self, event: Event) {
        if let Some((client, rx)) = self.start.lock().take() {
            tokio::spawn(write(client, rx, self.component));
        }
        if self.tx.try_send(event).is_err() {
            tracing::debug!(component = self.component, "event queue full; event dropped");
        }
    }
}

fn now_parts() -> (String, u128) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    (api::time::rfc3339(now.as_secs() as i64), now.as_nanos())
}

async fn write(client: Client, mut rx: mpsc::Receiver<Event>, component: &'static str) {
    let mut correlator = Correlator::default();
    let events = Resource::events();
    while let Some(e) = rx.recv().await {
        let (stamp, nanos) = now_parts();
        // Kubernetes' recorder names an event after its object and the time in hex nanoseconds.
        let fresh = || format!("{}.{:x}", str_at(&e.involved, "/name"), nanos);
        let scope = Scope::tenant(&e.tenant).in_namespace(&e.namespace);
        let name = match correlator.observe(&e, Instant::now(), fresh) {
            Verdict::Drop => continue,
            Verdict::Count(name, count) => {
                let repeat = Patch::Merge(json!({"count": count, "lastTimestamp": stamp}));
                match client.patch(&events, &scope, &name, &repeat).await {
                    Ok(_) => continue,
                    Err(err) if err.is_not_found() => {
                        correlator.forget(&name);
                        let fresh = || format!("{}.{:x}", str_at(&e.involved, "/name"), nanos);
                        match correlator.observe(&e, Instant::now(), fresh) {
                            Verdict::Create(name) => name,
                            _ => continue,
                        }
                    }
                    Err(err) => {
                        tracing::debug!(error = %err, "counting an event failed");
                        continue;
                    }
                }
            }
            Verdict::Create(name) => name,
        };
        let event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": e.namespace},
            "involvedObject": e.involved,
            "reason": e.reason,
            "message": e.message,
            "type": e.kind,
            "source": {"component": component},
            "reportingComponent": component,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        });
        if let Err(err) = client.create(&events, &scope, &event).await {
            tracing::debug!(error = %err, "recording an event failed");
        }
    }
}

/// The message of an API failure as Kubernetes' controllers quote it (the Status message).
pub fn api_message(e: &client::Error) -> String {
    match e {
        client::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(uid: &str, message: &str) -> Event {
        let obj = json!({"metadata": {"name": "rs", "namespace": "ns", "tenant": "t", "uid": uid}});
        Event::about(&obj, "apps/v1", "ReplicaSet", false, "SuccessfulCreate", message.to_string())
    }

    #[test]
    fn repeats_count_up_and_spam_is_dropped() {
        let mut c = Correlator::default();
        let t0 = Instant::now();
        let mut n = 0;
        let mut fresh = || {
            n += 1;
            format!("e{n}")
        };
        assert_eq!(c.observe(&event("a", "Created pod: p1"), t0, &mut fresh), Verdict::Create("e1".into()));
        assert_eq!(c.observe(&event("a", "Created pod: p1"), t0, &mut fresh), Verdict::Count("e1".into(), 2));
        assert_eq!(c.observe(&event("a", "Created pod: p2"), t0, &mut fresh), Verdict::Create("e2".into()));
        // 25 per object (repeats included), then nothing...
        for i in 3..=24 {
            assert!(matches!(
                c.observe(&event("a", &format!("Created pod: p{i}")), t0, &mut fresh),
                Verdict::Create(_)
            ));
        }
        assert_eq!(c.observe(&event("a", "Created pod: p25"), t0, &mut fresh), Verdict::Drop);
        // ...while another object has its own budget...
        assert!(matches!(c.observe(&event("b", "Created pod: q1"), t0, &mut fresh), Verdict::Create(_)));
        // ...and one more every five minutes.
        let later = t0 + REFILL;
        assert!(matches!(c.observe(&event("a", "Created pod: p27"), later, &mut fresh), Verdict::Create(_)));
        assert_eq!(c.observe(&event("a", "Created pod: p28"), later, &mut fresh), Verdict::Drop);
    }

    #[test]
    fn events_name_their_object() {
        let e = event("u1", "m");
        assert_eq!(e.involved["kind"], "ReplicaSet");
        assert_eq!(e.involved["uid"], "u1");
        assert_eq!((e.tenant.as_str(), e.namespace.as_str(), e.kind), ("t", "ns", "Normal"));
    }
}
