//! The watcher: a list followed by a watch, kept going forever, as an explicit state
//! machine.
//!
//! ```text
//!  Empty ──list page──▶ Listing ──last page──▶ (Restarted) ──▶ Rewatch(rv) ──open──▶ Watching(rv)
//!    ▲                     │ 410                                  ▲   │ 410           │ event: rv moves on
//!    └─────────────────────┴──────────────────────────────────────┼───┘               │ end / disconnect
//!    └──────────────── 410 (ERROR event) ─────────────────────────┼───────────────────┤
//!                                                                 └───────────────────┘
//! ```
//!
//! - A list pages with `limit`; the last page's revision is where the watch starts, and
//!   the whole list is handed out as one [`Event::Restarted`], so a cache can be replaced
//!   at once and nothing deleted while we were not watching lingers.
//! - A watch that ends (server timeout) or breaks is reopened from the last revision seen
//!   (events and bookmarks move it), so nothing is missed and nothing repeated.
//! - 410 Gone (the revision is older than the server keeps) means re-list from scratch.
//! - Any other error waits an exponential back-off (reset by the next success) and
//!   retries the same step.

use std::sync::Arc;
use std::time::Duration;

use api::json::At;
use async_trait::async_trait;
use client::{Client, Keep, ListParams, ObjectList, Resource, Scope, WatchEvent, WatchParams, WatchStream};
use serde_json::Value;

use crate::queue::Backoff;

/// What the watcher reads from: the API (see [`ApiSource`]) or a fake in tests.
#[async_trait]
pub trait Source: Send + Sync {
    /// One page of the list (`continue_token` for pages after the first).
    async fn list(&self, continue_token: Option<String>) -> Result<ObjectList, client::Error>;
    /// The whole list in one answer (one snapshot that no compaction can expire halfway);
    /// sources that cannot page may leave it as their first page.
    async fn list_all(&self) -> Result<ObjectList, client::Error> {
        self.list(None).await
    }
    /// A watch starting after `resource_version`.
    async fn watch(&self, resource_version: &str) -> Result<Box<dyn Events>, client::Error>;
}

/// An open watch.
#[async_trait]
pub trait Events: Send {
    async fn next(&mut self) -> Result<Option<WatchEvent>, client::Error>;
}

#[async_trait]
impl Events for WatchStream {
    async fn next(&mut self) -> Result<Option<WatchEvent>, client::Error> {
        WatchStream::next(self).await
    }
}

/// A resource in a scope, with optional selectors, read through the client.
pub struct ApiSource {
    pub client: Client,
    pub resource: Resource,
    pub scope: Scope,
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    /// What is kept of every listed item and every watched object, as each is decoded.
    pub keep: Option<Arc<Keep>>,
}

/// Objects per list page.
const PAGE: u32 = 500;
/// Servers end a watch after this long (plus up to as much again, at random); the watcher
/// then reopens it where it was.
const WATCH_TIMEOUT_SECONDS: u32 = 290;

/// A watch's timeout, spread over [`WATCH_TIMEOUT_SECONDS`, twice that) as client-go's
/// reflectors spread theirs: watches opened together (every controller at start-up) do not
/// all end and reopen in the same second, over and over, under whatever load there is then.
fn watch_timeout() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    WATCH_TIMEOUT_SECONDS + (random % u64::from(WATCH_TIMEOUT_SECONDS)) as u32
}

impl ApiSource {
    pub fn new(client: Client, resource: Resource, scope: Scope) -> ApiSource {
        ApiSource { client, resource, scope, label_selector: None, field_selector: None, keep: None }
    }
    pub fn fields(mut self, selector: &str) -> ApiSource {
        self.field_selector = Some(selector.into());
        self
    }
    /// Keeps only what `keep` makes of each object, decoding only its shape: a re-list of
    /// 130,000 pods then never holds 130,000 whole decoded pods (~29 KB each) at once, and no
    /// event builds the parts nobody reads.
    pub fn keeping(mut self, keep: Keep) -> ApiSource {
        self.keep = Some(Arc::new(keep));
        self
    }

    /// Whether what is kept of each object leaves out its managed fields: then the server is
    /// asked not to send them at all (`omitManagedFields`).
    fn omits_managed_fields(&self) -> bool {
        self.keep.as_ref().is_some_and(|k| !k.shape.keeps(&["metadata", "managedFields"]))
    }

    async fn list_with(&self, params: &ListParams) -> Result<ObjectList, client::Error> {
        match &self.keep {
            Some(keep) => self.client.list_keeping(&self.resource, &self.scope, params, keep).await,
            None => self.client.list(&self.resource, &self.scope, params).await,
        }
    }
}

/// A watch whose objects are decoded in a [`Keep`]'s shape.
struct Kept {
    events: WatchStream,
    keep: Arc<Keep>,
}

#[async_trait]
impl Events for Kept {
    async fn next(&mut self) -> Result<Option<WatchEvent>, client::Error> {
        self.events.next_keeping(Some(&self.keep)).await
    }
}

#[async_trait]
impl Source for ApiSource {
    async fn list(&self, continue_token: Option<String>) -> Result<ObjectList, client::Error> {
        let params = ListParams {
            label_selector: self.label_selector.clone(),
            field_selector: self.field_selector.clone(),
            limit: Some(PAGE),
            continue_token,
            resource_version: None,
            omit_managed_fields: self.omits_managed_fields(),
        };
        self.list_with(&params).await
    }

    async fn list_all(&self) -> Result<ObjectList, client::Error> {
        let params = ListParams {
            label_selector: self.label_selector.clone(),
            field_selector: self.field_selector.clone(),
            omit_managed_fields: self.omits_managed_fields(),
            ..ListParams::default()
        };
        self.list_with(&params).await
    }

    async fn watch(&self, resource_version: &str) -> Result<Box<dyn Events>, client::Error> {
        let params = WatchParams {
            label_selector: self.label_selector.clone(),
            field_selector: self.field_selector.clone(),
            resource_version: Some(resource_version.to_string()),
            allow_bookmarks: true,
            timeout_seconds: Some(watch_timeout()),
            omit_managed_fields: self.omits_managed_fields(),
        };
        let events = self.client.watch(&self.resource, &self.scope, &params).await?;
        Ok(match &self.keep {
            Some(keep) => Box::new(Kept { events, keep: keep.clone() }),
            None => Box::new(events),
        })
    }
}

/// What a watcher reports.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The complete current state (after a first list or a re-list).
    Restarted(Vec<Value>),
    /// Created or changed.
    Applied(Value),
    Deleted(Value),
}

/// Where the watcher is; see the module's diagram.
pub enum State {
    Empty,
    /// A paged list ran longer than the server keeps its snapshot: list in one request.
    ListAll,
    Listing {
        continue_token: String,
        items: Vec<Value>,
    },
    Rewatch {
        resource_version: String,
    },
    Watching {
        resource_version: String,
        events: Box<dyn Events>,
    },
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            State::Empty => write!(f, "Empty"),
            State::ListAll => write!(f, "ListAll"),
            State::Listing { items, .. } => write!(f, "Listing({} so far)", items.len()),
            State::Rewatch { resource_version } => write!(f, "Rewatch({resource_version})"),
            State::Watching { resource_version, .. } => write!(f, "Watching({resource_version})"),
        }
    }
}

pub struct Watcher<S> {
    source: S,
    state: State,
    backoff: Backoff,
    failures: u32,
    /// What is being watched, for logs.
    what: String,
    /// Told when the watch is lost and a re-list begins: whatever was built from the
    /// events so far is stale until the next [`Event::Restarted`].
    on_relist: Option<Arc<dyn Fn() + Send + Sync>>,
}

fn revision_of(obj: &Value) -> Option<String> {
    obj.at("/metadata/resourceVersion").and_then(Value::as_str).filter(|v| !v.is_empty()).map(str::to_string)
}

impl<S: Source> Watcher<S> {
    pub fn new(source: S, what: impl Into<String>) -> Watcher<S> {
        Watcher {
            source,
            state: State::Empty,
            backoff: Backoff { base: Duration::from_millis(800), max: Duration::from_secs(30) },
            failures: 0,
            what: what.into(),
            on_relist: None,
        }
    }

    pub fn with_backoff(mut self, backoff: Backoff) -> Watcher<S> {
        self.backoff = backoff;
        self
    }

    /// Calls `f` whenever the watch is lost and the watcher lists again.
    pub fn on_relist(mut self, f: impl Fn() + Send + Sync + 'static) -> Watcher<S> {
        self.on_relist = Some(Arc::new(f));
        self
    }

    fn relisting(&self) {
        if let Some(f) = &self.on_relist {
            f();
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// The next event; retries (with back-off) until there is one.
    pub async fn next(&mut self) -> Event {
        loop {
            if let Some(event) = self.step().await {
                return event;
            }
        }
    }

    async fn fail(&mut self, what: &str, error: &client::Error) {
        self.failures += 1;
        let delay = self.backoff.delay(self.failures);
        tracing::warn!(watch = %self.what, error = %error, retry_in = ?delay, "{what} failed");
        tokio::time::sleep(delay).await;
    }

    /// One transition; `Some` when it produced an event.
    pub async fn step(&mut self) -> Option<Event> {
        match std::mem::replace(&mut self.state, State::Empty) {
            State::Empty => match self.source.list(None).await {
                Ok(page) => self.listed(Vec::new(), page),
                Err(e) => {
                    self.fail("list", &e).await;
                    None
                }
            },
            State::ListAll => match self.source.list_all().await {
                Ok(page) => self.listed(Vec::new(), ObjectList { continue_token: None, ..page }),
                Err(e) => {
                    self.fail("list", &e).await;
                    self.state = State::ListAll;
                    None
                }
            },
            State::Listing { continue_token, items } => match self.source.list(Some(continue_token.clone())).await {
                Ok(page) => self.listed(items, page),
                // The continue token expired (the list's snapshot was compacted away while
                // we paged): paging again would take as long and may expire again, forever,
                // under the load that made it slow (the full-size scale run's pod watches
                // did). One unpaged list is one snapshot, as Kubernetes' pager falls back to.
                Err(e) if e.is_gone() => {
                    tracing::info!(watch = %self.what, listed = items.len(), "continue token expired; listing all at once");
                    self.state = State::ListAll;
                    None
                }
                Err(e) => {
                    self.fail("list", &e).await;
                    self.state = State::Listing { continue_token, items };
                    None
                }
            },
            State::Rewatch { resource_version } => match self.source.watch(&resource_version).await {
                Ok(events) => {
                    self.state = State::Watching { resource_version, events };
                    None
                }
                Err(e) if e.is_gone() => {
                    tracing::info!(watch = %self.what, "revision {resource_version} is gone; listing again");
                    self.relisting();
                    None
                }
                Err(e) => {
                    self.fail("watch", &e).await;
                    self.state = State::Rewatch { resource_version };
                    None
                }
            },
            State::Watching { resource_version, mut events } => match events.next().await {
                Ok(Some(event)) => {
                    self.failures = 0;
                    let (rv, out) = match event {
                        WatchEvent::Added(o) | WatchEvent::Modified(o) => (revision_of(&o), Some(Event::Applied(o))),
                        WatchEvent::Deleted(o) => (revision_of(&o), Some(Event::Deleted(o))),
                        WatchEvent::Bookmark { resource_version } => (Some(resource_version), None),
                        WatchEvent::Error(status) if status.code == 410 => {
                            tracing::info!(watch = %self.what, "watch expired; listing again");
                            self.relisting();
                            return None;
                        }
                        WatchEvent::Error(status) => {
                            self.fail("watch", &client::Error::Api(status)).await;
                            self.state = State::Rewatch { resource_version };
                            return None;
                        }
                    };
                    let resource_version = rv.filter(|v| !v.is_empty()).unwrap_or(resource_version);
                    self.state = State::Watching { resource_version, events };
                    out
                }
                // The server ended the watch (its timeout): carry on where we were.
                Ok(None) => {
                    self.state = State::Rewatch { resource_version };
                    None
                }
                Err(e) => {
                    self.fail("watch stream", &e).await;
                    self.state = State::Rewatch { resource_version };
                    None
                }
            },
        }
    }

    fn listed(&mut self, mut items: Vec<Value>, page: ObjectList) -> Option<Event> {
        self.failures = 0;
        items.extend(page.items);
        match page.continue_token {
            Some(continue_token) => {
                self.state = State::Listing { continue_token, items };
                None
            }
            None => {
                tracing::info!(watch = %self.what, objects = items.len(), "listed");
                self.state = State::Rewatch { resource_version: page.resource_version };
                Some(Event::Restarted(items))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Arc;

    use parking_lot::Mutex;
    use serde_json::json;

    use super::*;

    /// One scripted watch: refused, or the events it delivers before it ends.
    type ScriptedWatch = Result<Vec<Result<WatchEvent, client::Error>>, client::Error>;

    /// A scripted API: each call takes the next answer and is recorded.
    #[derive(Default, Clone)]
    struct Fake {
        lists: Arc<Mutex<VecDeque<Result<ObjectList, client::Error>>>>,
        watches: Arc<Mutex<VecDeque<ScriptedWatch>>>,
        calls: Arc<Mutex<Vec<String>>>,
    }

    struct FakeEvents(VecDeque<Result<WatchEvent, client::Error>>);

    #[async_trait]
    impl Events for FakeEvents {
        async fn next(&mut self) -> Result<Option<WatchEvent>, client::Error> {
            self.0.pop_front().transpose()
        }
    }

    #[async_trait]
    impl Source for Fake {
        async fn list(&self, token: Option<String>) -> Result<ObjectList, client::Error> {
            self.calls.lock().push(format!("list {}", token.unwrap_or_default()));
            self.lists.lock().pop_front().expect("an unexpected list")
        }
        async fn list_all(&self) -> Result<ObjectList, client::Error> {
            self.calls.lock().push("list all".into());
            self.lists.lock().pop_front().expect("an unexpected list")
        }
        async fn watch(&self, rv: &str) -> Result<Box<dyn Events>, client::Error> {
            self.calls.lock().push(format!("watch {rv}"));
            let events = self.watches.lock().pop_front().expect("an unexpected watch")?;
            Ok(Box::new(FakeEvents(events.into_iter().collect())))
        }
    }

    fn obj(name: &str, rv: u32) -> Value {
        json!({"metadata": {"name": name, "resourceVersion": rv.to_string()}})
    }

    fn page(items: Vec<Value>, rv: u32, next: Option<&str>) -> Result<ObjectList, client::Error> {
        Ok(ObjectList { items, resource_version: rv.to_string(), continue_token: next.map(str::to_string) })
    }

    fn api(code: u16, reason: &str) -> client::Error {
        client::Error::Api(client::Status { code, reason: reason.into(), message: String::new() })
    }

    #[tokio::test(start_paused = true)]
    async fn pages_then_watches_from_the_list_revision() {
        let fake = Fake::default();
        fake.lists.lock().extend([page(vec![obj("a", 3)], 9, Some("t1")), page(vec![obj("b", 5)], 9, None)]);
        fake.watches.lock().push_back(Ok(vec![
            Ok(WatchEvent::Added(obj("c", 10))),
            Ok(WatchEvent::Bookmark { resource_version: "12".into() }),
            Ok(WatchEvent::Modified(obj("a", 13))),
            Ok(WatchEvent::Deleted(obj("b", 14))),
        ]));
        // The watch ends (server timeout) and is reopened after the last event.
        fake.watches.lock().push_back(Ok(vec![Ok(WatchEvent::Added(obj("d", 15)))]));
        let mut w = Watcher::new(fake.clone(), "test");
        assert_eq!(w.next().await, Event::Restarted(vec![obj("a", 3), obj("b", 5)]));
        assert_eq!(w.next().await, Event::Applied(obj("c", 10)));
        assert_eq!(w.next().await, Event::Applied(obj("a", 13)));
        assert_eq!(w.next().await, Event::Deleted(obj("b", 14)));
        assert_eq!(w.next().await, Event::Applied(obj("d", 15)));
        assert_eq!(*fake.calls.lock(), ["list ", "list t1", "watch 9", "watch 14"]);
    }

    #[tokio::test(start_paused = true)]
    async fn gone_lists_again_and_a_bookmark_moves_the_revision() {
        let fake = Fake::default();
        fake.lists.lock().extend([page(vec![obj("a", 3)], 4, None), page(vec![obj("b", 20)], 21, None)]);
        fake.watches.lock().extend([
            Ok(vec![Ok(WatchEvent::Bookmark { resource_version: "8".into() })]),
            // Reopened from the bookmark; the server says that revision is gone.
            Ok(vec![Ok(WatchEvent::Error(client::Status {
                code: 410,
                reason: "Expired".into(),
                message: String::new(),
            }))]),
            Err(api(410, "Expired")),
            Ok(vec![]),
        ]);
        let mut w = Watcher::new(fake.clone(), "test");
        assert_eq!(w.next().await, Event::Restarted(vec![obj("a", 3)]));
        // Two 410s (an ERROR event, then a refused watch): each a fresh list.
        fake.lists.lock().push_front(page(vec![], 10, None));
        assert_eq!(w.next().await, Event::Restarted(vec![]));
        assert_eq!(w.next().await, Event::Restarted(vec![obj("b", 20)]));
        assert!(w.step().await.is_none());
        assert!(matches!(w.state(), State::Watching { resource_version, .. } if resource_version == "21"));
        assert_eq!(*fake.calls.lock(), ["list ", "watch 4", "watch 8", "list ", "watch 10", "list ", "watch 21"]);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_back_off_exponentially_and_success_resets() {
        let fake = Fake::default();
        let unavailable = || Err(api(503, "ServiceUnavailable"));
        fake.lists.lock().extend([unavailable(), unavailable(), unavailable(), page(vec![], 5, None)]);
        fake.watches.lock().extend([
            Err(api(500, "InternalError")),
            Ok(vec![Err(client::Error::Decode("connection reset".into()))]),
            Ok(vec![Ok(WatchEvent::Added(obj("x", 6)))]),
        ]);
        let mut w = Watcher::new(fake.clone(), "test")
            .with_backoff(Backoff { base: Duration::from_secs(1), max: Duration::from_secs(3) });
        let start = tokio::time::Instant::now();
        assert_eq!(w.next().await, Event::Restarted(vec![]));
        // 1 s + 2 s + 3 s (capped) before the list succeeds.
        assert_eq!(start.elapsed(), Duration::from_secs(6));
        let start = tokio::time::Instant::now();
        assert_eq!(w.next().await, Event::Applied(obj("x", 6)));
        // The list's success reset the count: 1 s, then 2 s for the broken stream.
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        assert_eq!(*fake.calls.lock(), ["list ", "list ", "list ", "list ", "watch 5", "watch 5", "watch 5"]);
    }

    /// What the ReplicaSet controller relies on not to count pods from a cache that stopped
    /// following the API: from a lost watch until the re-list is complete, the cache says so.
    #[tokio::test(start_paused = true)]
    async fn a_lost_watch_marks_the_cache_stale_until_the_re_list_replaces_it() {
        let fake = Fake::default();
        fake.lists.lock().push_back(page(vec![obj("a", 3)], 4, None));
        fake.watches.lock().push_back(Ok(vec![Ok(WatchEvent::Error(client::Status {
            code: 410,
            reason: "Expired".into(),
            message: String::new(),
        }))]));
        let cache = crate::cache::Cache::default();
        let hook = cache.clone();
        let mut w = Watcher::new(fake.clone(), "test").on_relist(move || hook.mark_stale());
        cache.apply(&w.next().await);
        assert!(cache.is_current());
        assert!(w.step().await.is_none(), "the watch opens");
        assert!(w.step().await.is_none(), "and expires");
        assert!(!cache.is_current());
        // The re-list's first page is in, not the last: still stale.
        fake.lists.lock().extend([page(vec![obj("a", 3)], 9, Some("t")), page(vec![obj("b", 8)], 9, None)]);
        assert!(w.step().await.is_none());
        assert!(!cache.is_current());
        let relisted = w.next().await;
        assert_eq!(relisted, Event::Restarted(vec![obj("a", 3), obj("b", 8)]));
        cache.apply(&relisted);
        assert!(cache.is_current());
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_continue_token_restarts_the_list_in_one_request() {
        let fake = Fake::default();
        fake.lists.lock().extend([
            page(vec![obj("a", 1)], 7, Some("t1")),
            Err(api(410, "Expired")),
            // A failed unpaged list is retried unpaged.
            Err(api(503, "ServiceUnavailable")),
            page(vec![obj("a", 1), obj("b", 2)], 8, None),
        ]);
        fake.watches.lock().extend([
            Ok(vec![Ok(WatchEvent::Error(client::Status {
                code: 410,
                reason: "Expired".into(),
                message: String::new(),
            }))]),
            Ok(vec![]),
        ]);
        fake.lists.lock().push_back(page(vec![obj("c", 9)], 10, Some("t2")));
        fake.lists.lock().push_back(page(vec![], 10, None));
        let mut w = Watcher::new(fake.clone(), "test");
        // Items of the abandoned list are not reported twice.
        assert_eq!(w.next().await, Event::Restarted(vec![obj("a", 1), obj("b", 2)]));
        // A later re-list pages again.
        assert_eq!(w.next().await, Event::Restarted(vec![obj("c", 9)]));
        assert_eq!(*fake.calls.lock(), ["list ", "list t1", "list all", "list all", "watch 8", "list ", "list t2"]);
    }
}
