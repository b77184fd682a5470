//! The work queue between watches and reconcilers.
//!
//! - A key waiting in the queue is there once, however often it is added.
//! - A key is handed to one worker at a time: added while a worker has it, it is queued
//!   again when that worker calls [`WorkQueue::done`], never run twice at once.
//! - Failures are counted per key and turn into an exponential delay
//!   ([`Backoff::delay`]); success forgets them.
//! - After [`WorkQueue::shutdown`] nothing is handed out and adds are ignored.
//! - A paced queue ([`WorkQueue::paced`]) hands a key out at most once per pace: added
//!   again sooner after its last reconcile ended, it waits for the rest of the pace, and
//!   every add meanwhile joins that one wait. A reconcile whose cost grows with what it
//!   looks at (a ReplicaSet's pods) then runs a bounded number of times in a burst of
//!   events for it, instead of once per event.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

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

/// The fewest `finished` entries a paced queue prunes (keys of deleted objects leave
/// theirs behind otherwise).
const PRUNE_AT: usize = 1024;

struct State<K> {
    ready: VecDeque<K>,
    queued: HashSet<K>,
    active: HashSet<K>,
    /// Added while active: to be queued again when done.
    again: HashSet<K>,
    failures: HashMap<K, u32>,
    /// Paced queues: when each key's last reconcile ended (dropped once the pace passed).
    finished: HashMap<K, Instant>,
    /// Paced queues: keys waiting for their pace to pass.
    delayed: HashSet<K>,
    /// How many `finished` entries trigger dropping those whose pace has passed.
    prune_at: usize,
    shutdown: bool,
}

pub struct WorkQueue<K> {
    state: Mutex<State<K>>,
    notify: Notify,
    backoff: Backoff,
    /// The least time from the end of a key's reconcile to its next start (zero: none).
    pace: Duration,
}

impl<K: Clone + Eq + Hash + Send + Sync + 'static> WorkQueue<K> {
    pub fn new(backoff: Backoff) -> Arc<WorkQueue<K>> {
        WorkQueue::paced(backoff, Duration::ZERO)
    }

    /// A queue that starts a key at least `pace` after its last reconcile ended.
    pub fn paced(backoff: Backoff, pace: Duration) -> Arc<WorkQueue<K>> {
        Arc::new(WorkQueue {
            state: Mutex::new(State {
                ready: VecDeque::new(),
                queued: HashSet::new(),
                active: HashSet::new(),
                again: HashSet::new(),
                failures: HashMap::new(),
                finished: HashMap::new(),
                delayed: HashSet::new(),
                prune_at: PRUNE_AT,
                shutdown: false,
            }),
            notify: Notify::new(),
            backoff,
            pace,
        })
    }

    pub fn add(self: &Arc<Self>, key: K) {
        let mut s = self.state.lock();
        if s.shutdown || s.queued.contains(&key) || s.delayed.contains(&key) {
            return;
        }
        if s.active.contains(&key) {
            s.again.insert(key);
            return;
        }
        if let Some(ended) = s.finished.get(&key).copied() {
            let wait = (ended + self.pace).saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                s.delayed.insert(key.clone());
                drop(s);
                let queue: Weak<WorkQueue<K>> = Arc::downgrade(self);
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    if let Some(q) = queue.upgrade() {
                        q.state.lock().delayed.remove(&key);
                        q.add(key);
                    }
                });
                return;
            }
            s.finished.remove(&key);
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
    pub fn done(self: &Arc<Self>, key: &K) {
        let mut s = self.state.lock();
        s.active.remove(key);
        if !self.pace.is_zero() {
            let now = Instant::now();
            s.finished.insert(key.clone(), now);
            if s.finished.len() >= s.prune_at {
                let pace = self.pace;
                s.finished.retain(|_, ended| *ended + pace > now);
                s.prune_at = (2 * s.finished.len()).max(PRUNE_AT);
            }
        }
        if s.again.remove(key) && !s.shutdown {
            drop(s);
            // Through `add`, so a paced queue waits out the pace first.
            self.add(key.clone());
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

    #[tokio::test(start_paused = true)]
    async fn a_paced_key_runs_once_per_pace_and_a_quiet_one_at_once() {
        let pace = Duration::from_millis(250);
        let q = WorkQueue::paced(Backoff::default(), pace);
        // Never reconciled: handed out at once.
        q.add("a");
        assert_eq!(q.next().await, Some("a"));
        q.done(&"a");
        let ended = Instant::now();
        // A burst right after: one run, once the pace has passed since the end.
        for _ in 0..5 {
            q.add("a");
        }
        assert!(q.is_empty(), "held back for the pace");
        assert_eq!(q.next().await, Some("a"));
        assert!(ended.elapsed() >= pace, "handed out after {:?}", ended.elapsed());
        // Added while in progress: queued again after the pace from this end.
        q.add("a");
        q.done(&"a");
        let ended = Instant::now();
        assert!(q.is_empty());
        assert_eq!(q.next().await, Some("a"));
        assert!(ended.elapsed() >= pace);
        q.done(&"a");
        // Quiet for longer than the pace: at once again.
        tokio::time::sleep(pace * 2).await;
        q.add("a");
        assert_eq!(q.len(), 1);
        // Other keys are not held back by it.
        q.add("b");
        assert_eq!(q.next().await, Some("a"));
        assert_eq!(q.next().await, Some("b"));
    }

    #[tokio::test]
    async fn an_unpaced_queue_hands_a_key_out_again_at_once() {
        let q = WorkQueue::new(Backoff::default());
        q.add("a");
        assert_eq!(q.next().await, Some("a"));
        q.done(&"a");
        q.add("a");
        assert_eq!(q.len(), 1);
        assert!(q.state.lock().finished.is_empty(), "nothing kept for an unpaced queue");
    }
}
