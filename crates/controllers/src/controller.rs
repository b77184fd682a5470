//! The controller loop: watches feed caches and a work queue; workers take keys from the
//! queue and call the reconciler.
//!
//! - Level-triggered: a key says *what* to look at, never what happened; the reconciler
//!   reads the caches (and the API) and makes the world match. Every (re-)list enqueues
//!   every object it holds and every one that vanished, so a restart or a missed event
//!   repairs itself.
//! - Workers start once every cache has had its first list.
//! - `reconcile` decides success; a separate `error_policy` decides what a failure means
//!   (default: retry after the key's exponential back-off).
//! - A panic in `reconcile` is caught (it runs in its own task), logged and retried like
//!   an error; the process goes on.
//! - Shutdown stops the watches, lets running reconciles finish and starts no new ones.

use std::fmt::{Debug, Display};
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use crate::cache::Cache;
use crate::informer::Informer;
use crate::queue::{Backoff, WorkQueue};
use crate::watcher::{Source, Watcher};

/// What to do after a successful reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing until something changes.
    Done,
    /// Look again after this long (e.g. to wait for something outside the watches).
    RequeueAfter(Duration),
}

/// What to do after a failed reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnError {
    /// Retry after the key's exponential back-off.
    Backoff,
    RequeueAfter(Duration),
    /// Give up until the key is enqueued again by a change.
    Drop,
}

#[async_trait]
pub trait Reconciler: Send + Sync + 'static {
    type Key: Clone + Eq + Hash + Debug + Display + Send + Sync + 'static;
    type Error: Display + Send + 'static;

    /// For logs.
    fn name(&self) -> &'static str;

    async fn reconcile(&self, key: &Self::Key) -> Result<Action, Self::Error>;

    /// `failures` counts this key's failures in a row, this one included.
    fn error_policy(&self, _key: &Self::Key, _error: &Self::Error, _failures: u32) -> OnError {
        OnError::Backoff
    }
}

type StopSignal = tokio::sync::watch::Receiver<bool>;

/// Starts one watch's task, feeding the queue until stopped.
type StartWatch<K> = Box<dyn FnOnce(Arc<WorkQueue<K>>, StopSignal) -> tokio::task::JoinHandle<()> + Send>;

struct Input<K> {
    start: StartWatch<K>,
    cache: Cache,
}

pub struct Controller<R: Reconciler> {
    reconciler: Arc<R>,
    inputs: Vec<Input<R::Key>>,
    workers: usize,
    backoff: Backoff,
    pace: Duration,
}

impl<R: Reconciler> Controller<R> {
    pub fn new(reconciler: R) -> Controller<R> {
        Controller {
            reconciler: Arc::new(reconciler),
            inputs: Vec::new(),
            workers: 2,
            backoff: Backoff::default(),
            pace: Duration::ZERO,
        }
    }

    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Reconciles a key at most once per `pace` (see [`WorkQueue::paced`]): for reconcilers
    /// whose cost grows with the objects behind the key, so a burst of their events costs
    /// a bounded number of passes.
    pub fn pace(mut self, pace: Duration) -> Self {
        self.pace = pace;
        self
    }

    /// Watches `source` into `cache` (which the reconciler may hold a clone of) and
    /// enqueues the keys `map` names for each object that changes.
    pub fn watches<S: Source + 'static>(
        self,
        watcher: Watcher<S>,
        cache: Cache,
        map: impl Fn(&Value) -> Vec<R::Key> + Send + Sync + 'static,
    ) -> Self {
        self.input(Informer::new(watcher, cache), true, map)
    }

    /// Reads an informer shared with other controllers (which runs it: see
    /// [`Informer::run`]) and enqueues the keys `map` names for each object that changes.
    pub fn watches_shared(
        self,
        informer: &Arc<Informer>,
        map: impl Fn(&Value) -> Vec<R::Key> + Send + Sync + 'static,
    ) -> Self {
        self.input(informer.clone(), false, map)
    }

    fn input(
        mut self,
        informer: Arc<Informer>,
        runs_it: bool,
        map: impl Fn(&Value) -> Vec<R::Key> + Send + Sync + 'static,
    ) -> Self {
        let cache = informer.cache().clone();
        let start = move |queue: Arc<WorkQueue<R::Key>>, mut stop: StopSignal| {
            let id = informer.add_handler(move |obj| {
                for key in map(obj) {
                    queue.add(key);
                }
            });
            tokio::spawn(async move {
                if runs_it {
                    informer.clone().run(stop).await;
                } else {
                    let _ = stop.wait_for(|s| *s).await;
                }
                informer.remove_handler(id);
            })
        };
        self.inputs.push(Input { start: Box::new(start), cache });
        self
    }

    /// Runs until `shutdown` resolves, then stops cleanly.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let name = self.reconciler.name();
        let queue: Arc<WorkQueue<R::Key>> = WorkQueue::paced(self.backoff, self.pace);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let caches: Vec<Cache> = self.inputs.iter().map(|i| i.cache.clone()).collect();
        let watches: Vec<_> = self.inputs.into_iter().map(|i| (i.start)(queue.clone(), stop_rx.clone())).collect();
        let mut stopped = stop_rx.clone();
        let work = async {
            let filled = async {
                for cache in &caches {
                    cache.wait_ready().await;
                }
            };
            // Stopped before the first lists arrived (e.g. no API server): no workers at all.
            tokio::select! {
                _ = filled => {}
                _ = stopped.wait_for(|s| *s) => return,
            }
            tracing::info!(controller = name, "caches filled; reconciling");
            let workers: Vec<_> =
                (0..self.workers).map(|_| tokio::spawn(worker(self.reconciler.clone(), queue.clone()))).collect();
            for w in workers {
                let _ = w.await;
            }
        };
        tokio::pin!(work);
        let finished = tokio::select! {
            _ = shutdown => false,
            _ = &mut work => true,
        };
        tracing::info!(controller = name, "stopping");
        let _ = stop_tx.send(true);
        queue.shutdown();
        // Workers finish the reconcile they are in; watches stop at once.
        if !finished {
            work.await;
        }
        for w in watches {
            let _ = w.await;
        }
    }
}

async fn worker<R: Reconciler>(reconciler: Arc<R>, queue: Arc<WorkQueue<R::Key>>) {
    let name = reconciler.name();
    while let Some(key) = queue.next().await {
        let (r, k) = (reconciler.clone(), key.clone());
        // Its own task, so a panic stays in it.
        let outcome = tokio::spawn(async move { r.reconcile(&k).await }).await;
        match outcome {
            Ok(Ok(action)) => {
                queue.forget(&key);
                tracing::debug!(controller = name, %key, ?action, "reconciled");
                if let Action::RequeueAfter(d) = action {
                    queue.add_after(key.clone(), d);
                }
            }
            Ok(Err(error)) => {
                let (failures, delay) = queue.fail(&key);
                match reconciler.error_policy(&key, &error, failures) {
                    OnError::Backoff => {
                        tracing::warn!(
                            controller = name, %key, %error, failures, retry_in = ?delay, "reconcile failed"
                        );
                        queue.add_after(key.clone(), delay);
                    }
                    OnError::RequeueAfter(d) => {
                        tracing::warn!(controller = name, %key, %error, failures, retry_in = ?d, "reconcile failed");
                        queue.add_after(key.clone(), d);
                    }
                    OnError::Drop => {
                        tracing::warn!(controller = name, %key, %error, "reconcile failed; not retrying");
                        queue.forget(&key);
                    }
                }
            }
            Err(join) => {
                let (failures, delay) = queue.fail(&key);
                let why = if join.is_panic() { "panicked" } else { "was cancelled" };
                tracing::error!(controller = name, %key, failures, retry_in = ?delay, "reconcile {why}");
                queue.add_after(key.clone(), delay);
            }
        }
        queue.done(&key);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use client::{ObjectList, WatchEvent};
    use parking_lot::Mutex;
    use serde_json::json;
    use tokio::sync::mpsc;

    use super::*;
    use crate::cache::ObjectKey;
    use crate::watcher::Events;

    /// Lists `items` once, then streams whatever the test sends.
    struct ChannelSource {
        items: Vec<Value>,
        events: Mutex<Option<mpsc::UnboundedReceiver<WatchEvent>>>,
    }

    struct Channel(Option<mpsc::UnboundedReceiver<WatchEvent>>);

    #[async_trait]
    impl Events for Channel {
        async fn next(&mut self) -> Result<Option<WatchEvent>, client::Error> {
            match &mut self.0 {
                Some(rx) => Ok(rx.recv().await),
                None => std::future::pending().await,
            }
        }
    }

    #[async_trait]
    impl Source for ChannelSource {
        async fn list(&self, _: Option<String>) -> Result<ObjectList, client::Error> {
            Ok(ObjectList { items: self.items.clone(), resource_version: "1".into(), continue_token: None })
        }
        async fn watch(&self, _: &str) -> Result<Box<dyn crate::watcher::Events>, client::Error> {
            Ok(Box::new(Channel(self.events.lock().take())))
        }
    }

    fn obj(name: &str) -> Value {
        json!({"metadata": {"name": name, "tenant": "t", "resourceVersion": "2"}})
    }

    fn source(names: &[&str]) -> (ChannelSource, mpsc::UnboundedSender<WatchEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (ChannelSource { items: names.iter().map(|n| obj(n)).collect(), events: Mutex::new(Some(rx)) }, tx)
    }

    #[derive(Default)]
    struct Script {
        /// Per key: how many times it ran, and how many are running right now.
        runs: Mutex<HashMap<String, usize>>,
        running: Mutex<HashMap<String, usize>>,
        overlaps: AtomicUsize,
        policy_calls: Mutex<Vec<(String, u32)>>,
    }

    #[async_trait]
    impl Reconciler for Arc<Script> {
        type Key = String;
        type Error = String;
        fn name(&self) -> &'static str {
            "script"
        }
        async fn reconcile(&self, key: &String) -> Result<Action, String> {
            let n = {
                let mut runs = self.runs.lock();
                let n = runs.entry(key.clone()).or_default();
                *n += 1;
                *n
            };
            {
                let mut running = self.running.lock();
                let r = running.entry(key.clone()).or_default();
                *r += 1;
                if *r > 1 {
                    self.overlaps.fetch_add(1, Ordering::SeqCst);
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            *self.running.lock().get_mut(key).unwrap() -= 1;
            match (key.as_str(), n) {
                ("panics", 1) => panic!("a bug in a reconciler"),
                ("fails", 1..=3) => Err(format!("attempt {n}")),
                _ => Ok(Action::Done),
            }
        }
        fn error_policy(&self, key: &String, _: &String, failures: u32) -> OnError {
            self.policy_calls.lock().push((key.clone(), failures));
            OnError::Backoff
        }
    }

    fn runs(s: &Script, key: &str) -> usize {
        s.runs.lock().get(key).copied().unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn panics_and_errors_are_retried_with_backoff() {
        let script = Arc::new(Script::default());
        let (src, _tx) = source(&["panics", "fails", "fine"]);
        let backoff = Backoff { base: Duration::from_secs(1), max: Duration::from_secs(60) };
        let c = Controller::new(script.clone()).backoff(backoff).watches(
            Watcher::new(src, "test"),
            Cache::default(),
            |o| ObjectKey::of(o).map(|k| k.name).into_iter().collect(),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(c.run(async move {
            let _ = stopped.await;
        }));
        let start = tokio::time::Instant::now();
        while runs(&script, "fails") < 4 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Three failures: 1 s + 2 s + 4 s of back-off (plus the reconciles' own 10 ms each).
        let waited = start.elapsed();
        assert!(waited >= Duration::from_secs(7) && waited < Duration::from_millis(7100), "{waited:?}");
        assert_eq!(runs(&script, "panics"), 2, "a panic is retried and the loop goes on");
        assert_eq!(runs(&script, "fine"), 1);
        assert_eq!(
            *script.policy_calls.lock(),
            [("fails".to_string(), 1), ("fails".to_string(), 2), ("fails".to_string(), 3)]
        );
        let _ = stop.send(());
        run.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn one_key_is_never_reconciled_twice_at_once() {
        let script = Arc::new(Script::default());
        let (src, tx) = source(&[]);
        let cache = Cache::default();
        let c = Controller::new(script.clone()).workers(4).watches(Watcher::new(src, "test"), cache.clone(), |o| {
            ObjectKey::of(o).map(|k| k.name).into_iter().collect()
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(c.run(async move {
            let _ = stopped.await;
        }));
        cache.wait_ready().await;
        for i in 0..200 {
            tx.send(WatchEvent::Modified(obj(["a", "b", "c"][i % 3]))).unwrap();
            if i % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(script.overlaps.load(Ordering::SeqCst), 0);
        // Events that arrived while a key was running folded into one more run.
        let total: usize = ["a", "b", "c"].iter().map(|k| runs(&script, k)).sum();
        assert!((3..200).contains(&total), "{total} runs");
        let _ = stop.send(());
        run.await.unwrap();
    }

    struct Unreachable;

    #[async_trait]
    impl Source for Unreachable {
        async fn list(&self, _: Option<String>) -> Result<ObjectList, client::Error> {
            Err(client::Error::Decode("connection refused".into()))
        }
        async fn watch(&self, _: &str) -> Result<Box<dyn crate::watcher::Events>, client::Error> {
            Err(client::Error::Decode("connection refused".into()))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_without_an_api_server_does_not_hang() {
        let script = Arc::new(Script::default());
        let c = Controller::new(script.clone())
            .watches(Watcher::new(Unreachable, "test"), Cache::default(), |_| Vec::<String>::new());
        let run = c.run(tokio::time::sleep(Duration::from_secs(5)));
        tokio::time::timeout(Duration::from_secs(6), run).await.expect("run returns after shutdown");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_waits_for_running_reconciles_and_starts_none() {
        let script = Arc::new(Script::default());
        let (src, tx) = source(&["x"]);
        let c = Controller::new(script.clone()).watches(Watcher::new(src, "test"), Cache::default(), |o| {
            ObjectKey::of(o).map(|k| k.name).into_iter().collect()
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(c.run(async move {
            let _ = stopped.await;
        }));
        while script.running.lock().get("x").copied().unwrap_or(0) == 0 {
            tokio::task::yield_now().await;
        }
        let _ = stop.send(());
        run.await.unwrap();
        assert_eq!(script.running.lock().get("x").copied(), Some(0), "the reconcile in progress finished");
        let _ = tx.send(WatchEvent::Modified(obj("y")));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(runs(&script, "y"), 0);
    }
}
