//! An informer: one watcher feeding one cache, and the handlers told of every object that
//! changes. A controller's own watch is an informer only it reads; a shared one (the pods
//! that the ReplicaSet and node lifecycle controllers both read) is decoded, pruned and
//! held once per process instead of once per controller.
//!
//! - Handlers are called in event order, after the cache holds the change, under one lock:
//!   a handler added late is first handed every object the cache holds (as a re-list would)
//!   and then every later change, never one twice or one missed in between.
//! - A lost watch marks the cache stale until the re-list replaces it ([`Cache::is_current`]).
//! - Handlers must be quick and must not block (they enqueue keys).

use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::Value;

use crate::cache::Cache;
use crate::watcher::{Event, Source, Watcher};

/// Told of each object an event stored or removed, and of those a re-list found gone.
type Handler = Arc<dyn Fn(&Value) + Send + Sync>;

/// The watcher, whatever its source.
#[async_trait]
trait Events: Send {
    async fn next(&mut self) -> Event;
}

#[async_trait]
impl<S: Source> Events for Watcher<S> {
    async fn next(&mut self) -> Event {
        Watcher::next(self).await
    }
}

#[derive(Default)]
struct Handlers {
    next_id: u64,
    list: Vec<(u64, Handler)>,
}

pub struct Informer {
    cache: Cache,
    /// Taken by [`Informer::run`].
    watcher: Mutex<Option<Box<dyn Events>>>,
    handlers: Mutex<Handlers>,
}

/// A handler's registration, to remove it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandlerId(u64);

impl Informer {
    pub fn new<S: Source + 'static>(watcher: Watcher<S>, cache: Cache) -> Arc<Informer> {
        let stale = cache.clone();
        let watcher = watcher.on_relist(move || stale.mark_stale());
        Arc::new(Informer { cache, watcher: Mutex::new(Some(Box::new(watcher))), handlers: Mutex::default() })
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Adds a handler; if the cache is already filled, first hands it every object it holds.
    pub fn add_handler(&self, handler: impl Fn(&Value) + Send + Sync + 'static) -> HandlerId {
        let mut handlers = self.handlers.lock();
        if self.cache.is_ready() {
            for obj in self.cache.list() {
                handler(&obj);
            }
        }
        handlers.next_id += 1;
        let id = handlers.next_id;
        handlers.list.push((id, Arc::new(handler)));
        HandlerId(id)
    }

    pub fn remove_handler(&self, id: HandlerId) {
        self.handlers.lock().list.retain(|(i, _)| *i != id.0);
    }

    /// Runs the watch until `stop` says so. Only the first call runs it; others return at once.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let Some(mut watcher) = self.watcher.lock().take() else { return };
        loop {
            let event = tokio::select! {
                event = watcher.next() => event,
                _ = stop.wait_for(|s| *s) => break,
            };
            let handlers = self.handlers.lock();
            let applied = self.cache.apply_owned(event);
            for obj in applied.changed.iter().chain(&applied.gone) {
                for (_, handler) in &handlers.list {
                    handler(obj);
                }
            }
        }
        // A later run (none in practice) finds the watcher where this one left it.
        *self.watcher.lock() = Some(watcher);
    }
}

#[cfg(test)]
mod tests {
    use client::{ObjectList, WatchEvent};
    use serde_json::json;
    use tokio::sync::mpsc;

    use super::*;
    use crate::watcher::Events as WatchEvents;

    /// Lists `items` once, then streams whatever the test sends.
    struct Channel {
        items: Vec<Value>,
        events: Mutex<Option<mpsc::UnboundedReceiver<WatchEvent>>>,
    }

    struct Stream(mpsc::UnboundedReceiver<WatchEvent>);

    #[async_trait]
    impl WatchEvents for Stream {
        async fn next(&mut self) -> Result<Option<WatchEvent>, client::Error> {
            Ok(self.0.recv().await)
        }
    }

    #[async_trait]
    impl Source for Channel {
        async fn list(&self, _: Option<String>) -> Result<ObjectList, client::Error> {
            Ok(ObjectList { items: self.items.clone(), resource_version: "1".into(), continue_token: None })
        }
        async fn watch(&self, _: &str) -> Result<Box<dyn WatchEvents>, client::Error> {
            let events = self.events.lock().take();
            match events {
                Some(rx) => Ok(Box::new(Stream(rx))),
                None => std::future::pending().await,
            }
        }
    }

    fn obj(name: &str) -> Value {
        json!({"metadata": {"name": name, "resourceVersion": "2"}})
    }

    fn name(o: &Value) -> String {
        o["metadata"]["name"].as_str().unwrap().to_string()
    }

    /// Two readers of one watch: each sees every object exactly once per change, whether it
    /// came before the first list or after, and a removed handler hears nothing more.
    #[tokio::test]
    async fn handlers_added_before_and_after_the_first_list_see_every_object_once() {
        let (tx, rx) = mpsc::unbounded_channel();
        let source = Channel { items: vec![obj("a"), obj("b")], events: Mutex::new(Some(rx)) };
        let informer = Informer::new(Watcher::new(source, "test"), Cache::default());
        let early = Arc::new(Mutex::new(Vec::new()));
        let seen = early.clone();
        informer.add_handler(move |o| seen.lock().push(name(o)));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(informer.clone().run(stop_rx));
        informer.cache().wait_ready().await;
        let late = Arc::new(Mutex::new(Vec::new()));
        let seen = late.clone();
        let id = informer.add_handler(move |o| seen.lock().push(name(o)));
        tx.send(WatchEvent::Added(obj("c"))).unwrap();
        tx.send(WatchEvent::Deleted(obj("a"))).unwrap();
        while informer.cache().len() != 2 || informer.cache().get(&crate::ObjectKey::new("", None, "a")).is_some() {
            tokio::task::yield_now().await;
        }
        assert_eq!(*early.lock(), ["a", "b", "c", "a"]);
        assert_eq!(*late.lock(), ["a", "b", "c", "a"]);
        informer.remove_handler(id);
        tx.send(WatchEvent::Added(obj("d"))).unwrap();
        while informer.cache().len() != 3 {
            tokio::task::yield_now().await;
        }
        assert_eq!(*late.lock(), ["a", "b", "c", "a"], "removed: told nothing more");
        assert_eq!(*early.lock(), ["a", "b", "c", "a", "d"]);
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }
}
