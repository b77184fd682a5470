//! The work queue between watches and reconcilers.
//!
//! - A key waiting in the queue is there once, however often it is added.
//! - A key is handed to one worker at a time: added while a worker has it, it is queued
//!   again when that worker calls [`WorkQueue::done`], never run twice at once.
//! - Failures are counted per key and turn into an exponential delay
//!   ([`Backoff::delay`]); success forgets them.
//! - After [`WorkQueue::shutdown`] nothing is handed out and adds are ignored.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// Exponential back-off: `base`, `2·base`, `4·base`, … capped at `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff { base: Duration::from_millis(100), max: Duration::from_secs(60) }
    }
}

impl Backoff {
    /// The delay after the `failures`-th failure in a row (1 is the first).
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(31);
        self.base.checked_mul(1u32 << exp).map_or(self.max, |d| d.min(self.max))
    }
}

struct State<K> {
    ready: VecDeque<K>,
    queued: HashSet<K>,
    active: HashSet<K>,
    /// Added while active: to be queued again when done.
    again: HashSet<K>,
    failures: HashMap<K, u32>,
    shutdown: bool,
}

pub struct WorkQueue<K> {
    state: Mutex<State<K>>,
    notify: Notify,
    backoff: Backoff,
}

impl<K: Clone + Eq + Hash + Send + Sync + 'static> WorkQueue<K> {
    pub fn new(backoff: Backoff) -> Arc<WorkQueue<K>> {
        Arc::new(WorkQueue {
            state: Mutex::new(State {
                ready: VecDeque::new(),
                queued: HashSet::new(),
                active: HashSet::new(),
                again: HashSet::new(),
                failures: HashMap::new(),
                shutdown: false,
            }),
            notify: Notify::new(),
            backoff,
        })
    }

    pub fn add(&self, key: K) {
        let mut s = self.state.lock();
        if s.shutdown || s.queued.contains(&key) {
            return;
        }
        if s.active.contains(&key) {
            s.again.insert(key);
            return;
        }
        s.queued.insert(key.clone());
        s.ready.push_back(key);
        drop(s);
        self.notify.notify_one();
    }

    /// Adds `key` once `delay` has passed (a timer task that does not keep the queue alive).
    pub fn add_after(self: &Arc<Self>, key: K, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let queue: Weak<WorkQueue<K>> = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(q) = queue.upgrade() {
                q.add(key);
            }
        });
    }

    /// The next key to work on; `None` once shut down. The caller owns the key until
    /// it calls [`done`](Self::done).
    pub async fn next(&self) -> Option<K> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before looking, so an add or a shutdown in between is not missed.
            notified.as_mut().enable();
            {
                let mut s = self.state.lock();
                if s.shutdown {
                    return None;
                }
                if let Some(key) = s.ready.pop_front() {
                    s.queued.remove(&key);
                    s.active.insert(key.clone());
                    let more = !s.ready.is_empty();
                    drop(s);
                    if more {
                        // Another worker may be waiting for the rest.
                        self.notify.notify_one();
                    }
                    return Some(key);
                }
            }
            notified.await;
        }
    }

    /// The worker is finished with `key`; if it was added meanwhile, it is queued again.
    pub fn done(&self, key: &K) {
        let mut s = self.state.lock();
        s.active.remove(key);
        if s.again.remove(key) && !s.shutdown && s.queued.insert(key.clone()) {
            s.ready.push_back(key.clone());
            drop(s);
            self.notify.notify_one();
        }
    }

    /// Counts a failure of `key` and returns the back-off delay before its next try.
    pub fn fail(&self, key: &K) -> (u32, Duration) {
        let mut s = self.state.lock();
        let n = s.failures.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        (*n, self.backoff.delay(*n))
    }

    /// Forgets `key`'s failures (after a success).
    pub fn forget(&self, key: &K) {
        self.state.lock().failures.remove(key);
    }

    pub fn shutdown(&self) {
        self.state.lock().shutdown = true;
        self.notify.notify_waiters();
    }

    pub fn len(&self) -> usize {
        self.state.lock().ready.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let b = Backoff { base: Duration::from_millis(100), max: Duration::from_secs(1) };
        let delays: Vec<u128> = (1..=6).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1));
        assert_eq!(b.delay(0), Duration::from_millis(100));
    }

    #[tokio::test]
    async fn keys_are_deduplicated_and_ordered() {
        let q = WorkQueue::new(Backoff::default());
        for k in ["a", "b", "a", "c", "b"] {
            q.add(k);
        }
        assert_eq!(q.len(), 3);
        assert_eq!(q.next().await, Some("a"));
        assert_eq!(q.next().await, Some("b"));
        assert_eq!(q.next().await, Some("c"));
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn a_key_is_never_handed_out_twice_at_once() {
        let q = WorkQueue::new(Backoff::default());
        q.add("a");
        assert_eq!(q.next().await, Some("a"));
        // Added while being worked on: held back until done, and only once.
        q.add("a");
        q.add("a");
        assert!(q.is_empty());
        let waiting = tokio::time::timeout(Duration::from_millis(20), q.next()).await;
        assert!(waiting.is_err(), "a key in progress must not be handed out");
        q.done(&"a");
        assert_eq!(q.next().await, Some("a"));
        q.done(&"a");
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_per_key_and_success_forgets() {
        let q = WorkQueue::new(Backoff { base: Duration::from_secs(1), max: Duration::from_secs(8) });
        assert_eq!(q.fail(&"a"), (1, Duration::from_secs(1)));
        assert_eq!(q.fail(&"a"), (2, Duration::from_secs(2)));
        assert_eq!(q.fail(&"b"), (1, Duration::from_secs(1)), "counted per key");
        q.forget(&"a");
        assert_eq!(q.fail(&"a"), (1, Duration::from_secs(1)));

        let start = tokio::time::Instant::now();
        q.add_after("late", Duration::from_secs(5));
        q.add_after("early", Duration::from_secs(2));
        assert_eq!(q.next().await, Some("early"));
        assert_eq!(start.elapsed().as_secs(), 2);
        assert_eq!(q.next().await, Some("late"));
        assert_eq!(start.elapsed().as_secs(), 5);
    }

    #[tokio::test]
    async fn shutdown_wakes_every_worker() {
        let q: Arc<WorkQueue<&str>> = WorkQueue::new(Backoff::default());
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let q = q.clone();
                tokio::spawn(async move { q.next().await })
            })
            .collect();
        tokio::task::yield_now().await;
        q.shutdown();
        for w in workers {
            assert_eq!(w.await.unwrap(), None);
        }
        q.add("ignored");
        assert!(q.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn many_workers_take_each_key_once() {
        let q: Arc<WorkQueue<u32>> = WorkQueue::new(Backoff::default());
        let taken = Arc::new(Mutex::new(Vec::new()));
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let (q, taken) = (q.clone(), taken.clone());
                tokio::spawn(async move {
                    while let Some(k) = q.next().await {
                        taken.lock().push(k);
                        q.done(&k);
                    }
                })
            })
            .collect();
        for k in 0..1000 {
            q.add(k);
        }
        while taken.lock().len() < 1000 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        q.shutdown();
        for w in workers {
            w.await.unwrap();
        }
        let mut all = taken.lock().clone();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
    }
}
