//! The watch cache: one store watch per kind, shared by every HTTP watch of that kind.
//!
//! It keeps the most recent changes in a ring (their stored bytes only, bounded by bytes),
//! so a watch that starts from a recent resource version replays from memory, and it hands each change to the watchers whose
//! key prefix (tenant, namespace) covers it. A watcher that cannot keep up is cut off (its
//! channel closes), as Kubernetes does; its client watches again from the last version it
//! saw. A watch older than the ring falls back to a watch on the store itself.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use store::{Event, Revision, Store, StoreError, WatchMessage, WatchOptions};
use tokio::sync::mpsc;

/// A change as the cache hands it out: decoded (at most) once, however many watchers
/// receive it. It lives as long as some watcher has it queued; the ring keeps only the
/// change's bytes (a replay decodes afresh).
pub struct SharedEvent {
    pub event: Arc<Event>,
    decoded: OnceLock<Option<Decoded>>,
    /// The new object's JSON cut for its version, made from the stored bytes (for kinds
    /// stored as viewed, which need no decoding to be sent on).
    stored: OnceLock<Option<Spliced>>,
    /// The same without `metadata.managedFields`, for watchers that asked to be spared them.
    lean: OnceLock<Option<Spliced>>,
    /// The decoded new object's JSON without `metadata.managedFields` (kinds not stored as
    /// viewed, and stored bytes the scan cannot cut).
    decoded_lean: OnceLock<Option<Spliced>>,
    /// The previous object, decoded only when a watcher needs it (a selector to compare it
    /// with, or a deletion to report): most watches (controllers, informers) have neither,
    /// and decoding every change's previous object was half the watch cache's decoding and
    /// half of what its ring holds.
    prev: OnceLock<Option<Arc<Value>>>,
}

/// The new object of a change, with its resource version set, and its JSON (`None` for an
/// object without metadata, which each watcher then serialises itself); `new` is `None` for
/// a deletion.
pub struct Decoded {
    pub new: Option<(Arc<Value>, Option<Spliced>)>,
}

/// An object's JSON with a gap where its `metadata.resourceVersion` goes: every watcher
/// shares the serialisation, and each writes the version in its own encoding into the gap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spliced {
    /// Up to the opening quote of the version.
    pub head: Bytes,
    /// From its closing quote.
    pub tail: Bytes,
}

impl Spliced {
    /// `obj`'s JSON, cut at its `metadata.resourceVersion` (written last in `metadata`);
    /// `None` if it has none.
    pub fn of(obj: &Value) -> Option<Spliced> {
        Spliced::cut(obj, false)
    }

    /// [`Spliced::of`] without `metadata.managedFields` (for watchers that asked to be
    /// spared them).
    pub fn of_lean(obj: &Value) -> Option<Spliced> {
        Spliced::cut(obj, true)
    }

    fn cut(obj: &Value, lean: bool) -> Option<Spliced> {
        let top = obj.as_object()?;
        let meta = top.get("metadata")?.as_object()?;
        meta.get("resourceVersion")?.as_str()?;
        let mut head = vec![b'{'];
        let mut tail = Vec::new();
        let mut out = &mut head;
        for (i, (k, v)) in top.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut *out, k).ok()?;
            out.push(b':');
            if k != "metadata" {
                serde_json::to_writer(&mut *out, v).ok()?;
                continue;
            }
            out.push(b'{');
            let shown = |k: &str| k != "resourceVersion" && !(lean && k == "managedFields");
            for (k, v) in meta.iter().filter(|(k, _)| shown(k)) {
                serde_json::to_writer(&mut *out, k).ok()?;
                out.push(b':');
                serde_json::to_writer(&mut *out, v).ok()?;
                out.push(b',');
            }
            out.extend_from_slice(b"\"resourceVersion\":\"");
            tail.extend_from_slice(b"\"}");
            out = &mut tail;
        }
        out.push(b'}');
        Some(Spliced { head: Bytes::from(head), tail: Bytes::from(tail) })
    }

    /// The same cut made in a stored object's JSON (which has no resource version) without
    /// decoding it: the version goes last in its top-level `metadata` object. For bytes the
    /// server wrote (serde_json's compact form, keys in order) this is byte for byte what
    /// [`Spliced::of`] gives for the decoded object; `None` when the bytes are not of that
    /// shape (no `metadata` object, an escaped key) and the object must be decoded.
    pub fn of_stored(json: &[u8]) -> Option<Spliced> {
        let (close, empty) = scan::metadata_end(json)?;
        let mut head = Vec::with_capacity(close + 20);
        head.extend_from_slice(&json[..close]);
        if !empty {
            head.push(b',');
        }
        head.extend_from_slice(b"\"resourceVersion\":\"");
        let mut tail = Vec::with_capacity(json.len() - close + 1);
        tail.push(b'"');
        tail.extend_from_slice(&json[close..]);
        Some(Spliced { head: Bytes::from(head), tail: Bytes::from(tail) })
    }

    /// [`Spliced::of_stored`] without `metadata.managedFields`: byte for byte what
    /// [`Spliced::of_lean`] gives for the decoded object.
    pub fn of_stored_lean(json: &[u8]) -> Option<Spliced> {
        match scan::metadata_member(json, b"managedFields")? {
            None => Spliced::of_stored(json),
            Some(m) => Spliced::of_stored(&[&json[..m.cut.start], &json[m.cut.end..]].concat()),
        }
    }

    /// The JSON with `rv` in the gap (a decimal number: nothing to escape).
    pub fn with(&self, rv: &str) -> Vec<u8> {
        [&self.head[..], rv.as_bytes(), &self.tail[..]].concat()
    }
}

/// Just enough JSON scanning to find the top-level `metadata` object in well-formed JSON.
pub(crate) mod scan {
    fn ws(json: &[u8], mut i: usize) -> usize {
        while json.get(i).is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
            i += 1;
        }
        i
    }

    /// The index after the string starting at `i` (its opening quote).
    fn string_end(json: &[u8], i: usize) -> Option<usize> {
        let mut j = i + 1;
        loop {
            j += memchr::memchr2(b'"', b'\\', json.get(j..)?)?;
            if json[j] == b'"' {
                return Some(j + 1);
            }
            j += 2;
        }
    }

    /// The index after the value starting at `i`.
    fn value_end(json: &[u8], i: usize) -> Option<usize> {
        match json.get(i)? {
            b'"' => string_end(json, i),
            b'{' | b'[' => {
                let mut depth = 0usize;
                let mut j = i;
                loop {
                    match json.get(j)? {
                        b'"' => {
                            j = string_end(json, j)?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                return Some(j + 1);
                            }
                        }
                        _ => {}
                    }
                    j += 1;
                }
            }
            _ => {
                let rest = json.get(i..)?;
                Some(i + rest.iter().position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))?)
            }
        }
    }

    /// The index of the closing brace of the top-level `metadata` object, and whether that
    /// object is empty.
    pub(super) fn metadata_end(json: &[u8]) -> Option<(usize, bool)> {
        let (open, end) = metadata_span(json)?;
        Some((end - 1, ws(json, open + 1) == end - 1))
    }

    /// Where a member of the top-level `metadata` object is.
    pub(crate) struct Member {
        /// The bytes to cut to remove it: the member and one comma beside it.
        pub cut: std::ops::Range<usize>,
        /// Its value.
        pub value: std::ops::Range<usize>,
    }

    /// Where the member `key` of the top-level `metadata` object is, `Some(None)` if it has
    /// no such member; `None` when the JSON is not of the shape scanned for (an escaped key
    /// could spell `key`).
    pub(crate) fn metadata_member(json: &[u8], key: &[u8]) -> Option<Option<Member>> {
        let (open, _) = metadata_span(json)?;
        member_at(json, open, key)
    }

    /// Where the member `key` of the object `json` (a whole JSON text) is; as
    /// [`metadata_member`].
    pub(crate) fn member(json: &[u8], key: &[u8]) -> Option<Option<Member>> {
        let open = ws(json, 0);
        if *json.get(open)? != b'{' {
            return None;
        }
        member_at(json, open, key)
    }

    /// Where the member `key` of the object whose opening brace is at `open` is.
    fn member_at(json: &[u8], open: usize, key: &[u8]) -> Option<Option<Member>> {
        let mut i = ws(json, open + 1);
        if *json.get(i)? == b'}' {
            return Some(None);
        }
        // Where the comma before the current member is, if it has one.
        let mut comma = None;
        loop {
            let start = i;
            if *json.get(i)? != b'"' {
                return None;
            }
            let key_end = string_end(json, i)?;
            let name = &json[i + 1..key_end - 1];
            if memchr::memchr(b'\\', name).is_some() {
                return None;
            }
            i = ws(json, key_end);
            if *json.get(i)? != b':' {
                return None;
            }
            i = ws(json, i + 1);
            let value_start = i;
            let end = value_end(json, i)?;
            i = ws(json, end);
            let next = *json.get(i)?;
            if name == key {
                let cut = match (comma, next) {
                    (Some(c), _) => c..end,
                    (None, b',') => start..ws(json, i + 1),
                    (None, _) => start..end,
                };
                return Some(Some(Member { cut, value: value_start..end }));
            }
            match next {
                b',' => {
                    comma = Some(i);
                    i = ws(json, i + 1);
                }
                b'}' => return Some(None),
                _ => return None,
            }
        }
    }

    /// Where the items of the list `json` (a whole JSON text) are; `None` when it is not a
    /// list.
    pub(crate) fn items(json: &[u8]) -> Option<Vec<std::ops::Range<usize>>> {
        let mut i = ws(json, 0);
        if *json.get(i)? != b'[' {
            return None;
        }
        let mut items = Vec::new();
        i = ws(json, i + 1);
        if *json.get(i)? == b']' {
            return (ws(json, i + 1) == json.len()).then_some(items);
        }
        loop {
            let end = value_end(json, i)?;
            items.push(i..end);
            i = ws(json, end);
            match *json.get(i)? {
                b',' => i = ws(json, i + 1),
                b']' => return (ws(json, i + 1) == json.len()).then_some(items),
                _ => return None,
            }
        }
    }

    /// Where the top-level `metadata` object's value starts (its opening brace) and ends
    /// (after its closing brace).
    fn metadata_span(json: &[u8]) -> Option<(usize, usize)> {
        let mut i = ws(json, 0);
        if *json.get(i)? != b'{' {
            return None;
        }
        i += 1;
        loop {
            i = ws(json, i);
            if *json.get(i)? != b'"' {
                return None;
            }
            let key_end = string_end(json, i)?;
            let key = &json[i + 1..key_end - 1];
            i = ws(json, key_end);
            if *json.get(i)? != b':' {
                return None;
            }
            i = ws(json, i + 1);
            let end = value_end(json, i)?;
            if key == b"metadata" {
                if json[i] != b'{' {
                    return None;
                }
                return Some((i, end));
            }
            if memchr::memchr(b'\\', key).is_some() {
                // An escaped key could spell `metadata`.
                return None;
            }
            i = ws(json, end);
            if *json.get(i)? != b',' {
                return None;
            }
            i += 1;
        }
    }
}

impl SharedEvent {
    pub fn new(event: Event) -> Arc<SharedEvent> {
        SharedEvent::of(Arc::new(event))
    }

    fn of(event: Arc<Event>) -> Arc<SharedEvent> {
        Arc::new(SharedEvent {
            event,
            decoded: OnceLock::new(),
            stored: OnceLock::new(),
            lean: OnceLock::new(),
            decoded_lean: OnceLock::new(),
            prev: OnceLock::new(),
        })
    }

    /// The new object's stored JSON cut for its version ([`Spliced::of_stored`]), made once.
    pub fn stored_spliced(&self) -> Option<&Spliced> {
        self.stored.get_or_init(|| Spliced::of_stored(&self.event.kv.value)).as_ref()
    }

    /// [`SharedEvent::stored_spliced`] without `metadata.managedFields`, made once.
    pub fn stored_spliced_lean(&self) -> Option<&Spliced> {
        self.lean.get_or_init(|| Spliced::of_stored_lean(&self.event.kv.value)).as_ref()
    }

    /// The decoded new object's JSON without `metadata.managedFields`, made once (`None`:
    /// as for [`Decoded::new`]'s JSON); `obj` is [`SharedEvent::decoded`]'s object.
    pub fn decoded_lean(&self, obj: &Value) -> Option<&Spliced> {
        self.decoded_lean.get_or_init(|| Spliced::of_lean(obj)).as_ref()
    }

    /// The decoded new object, in the form `convert` gives it (the first caller's; every
    /// caller of one cache is the same kind); `None` if the stored bytes are not JSON.
    pub fn decoded(&self, convert: &dyn Fn(&mut Value)) -> Option<&Decoded> {
        self.decoded
            .get_or_init(|| {
                let e = &self.event;
                let new = match e.kind {
                    store::EventKind::Put => {
                        let obj = decode(&e.kv.value, e.kv.mod_revision, convert)?;
                        let json = Spliced::of(&obj);
                        Some((Arc::new(obj), json))
                    }
                    store::EventKind::Delete => None,
                };
                Some(Decoded { new })
            })
            .as_ref()
    }

    /// Whether the key existed before this change (known without decoding anything).
    pub fn had_prev(&self) -> bool {
        self.event.prev.is_some()
    }

    /// The decoded previous object (as [`SharedEvent::decoded`] converts), `None` if there
    /// was none.
    pub fn prev(&self, convert: &dyn Fn(&mut Value)) -> Result<Option<&Arc<Value>>, NotJson> {
        let Some(p) = &self.event.prev else { return Ok(None) };
        match self.prev.get_or_init(|| decode(&p.value, p.mod_revision, convert).map(Arc::new)) {
            Some(v) => Ok(Some(v)),
            None => Err(NotJson),
        }
    }
}

fn decode(value: &[u8], revision: Revision, convert: &dyn Fn(&mut Value)) -> Option<Value> {
    let mut obj = super::decode_stored(value, revision).ok()?;
    convert(&mut obj);
    Some(obj)
}

/// A change's stored bytes do not decode.
#[derive(Debug, thiserror::Error)]
#[error("a stored object is not JSON")]
pub struct NotJson;

/// What a watcher receives.
pub enum CacheMessage {
    Events(Vec<Arc<SharedEvent>>),
    Progress(Revision),
}

/// Bytes of changes kept for replay (stored objects, new and previous): how far back a watch
/// can resume without a store watch of its own, in particular one whose consumer fell
/// behind and was cut off (up to [`WATCHER_QUEUE`] messages of several changes each). A
/// count of changes (10,000 before) was ~20 s of pod changes at full scale, shorter than an
/// in-process controller's lag under load, so every lost watch became a re-list.
const RING_BYTES: usize = 256 << 20;
/// And at most this many changes (small objects: leases).
const RING_CHANGES: usize = 200_000;

/// What a change costs in the ring, roughly: its bytes plus bookkeeping.
fn ring_size(e: &Event) -> usize {
    let kv = |kv: &store::KeyValue| kv.key.len() + kv.value.len();
    kv(&e.kv) + e.prev.as_ref().map_or(0, kv) + 128
}
/// Messages a watcher may have queued before it counts as too slow.
const WATCHER_QUEUE: usize = 1024;

struct Subscriber {
    prefix: Bytes,
    after: Revision,
    tx: mpsc::Sender<CacheMessage>,
}

struct Inner {
    ring: VecDeque<Arc<Event>>,
    /// `ring_size` of everything in the ring.
    ring_bytes: usize,
    /// Every change with a revision above this is in the ring (or not yet seen).
    floor: Revision,
    subscribers: Vec<Subscriber>,
    /// The store watch ended; the cache must be replaced.
    dead: bool,
}

impl Inner {
    /// Adds changes to the ring, then forgets the oldest beyond `max_bytes` or `max_changes`
    /// (the floor rises with each: a watch from before it is not served from the ring).
    fn remember(&mut self, events: &[Arc<Event>], max_bytes: usize, max_changes: usize) {
        for e in events {
            self.ring_bytes += ring_size(e);
            self.ring.push_back(e.clone());
        }
        while self.ring.len() > max_changes || self.ring_bytes > max_bytes {
            let Some(old) = self.ring.pop_front() else { break };
            self.ring_bytes -= ring_size(&old);
            self.floor = self.floor.max(old.kv.mod_revision);
        }
    }
}

pub struct WatchCache {
    inner: Mutex<Inner>,
}

impl WatchCache {
    /// Starts watching `prefix` (a kind's whole key space) from now.
    pub async fn start(store: &Arc<dyn Store>, prefix: Bytes) -> Result<Arc<WatchCache>, StoreError> {
        let now = store.current_revision().await?;
        let opts = WatchOptions { progress_interval: Some(Duration::from_secs(1)) };
        let mut stream = store.watch(prefix, Some(now), opts).await?;
        let cache = Arc::new(WatchCache {
            inner: Mutex::new(Inner {
                ring: VecDeque::new(),
                ring_bytes: 0,
                floor: now,
                subscribers: Vec::new(),
                dead: false,
            }),
        });
        let feeder = cache.clone();
        tokio::spawn(async move {
            while let Some(msg) = stream.next().await {
                match msg {
                    Ok(msg) => feeder.dispatch(msg),
                    Err(e) => {
                        tracing::warn!(error = %e, "watch cache lost its store watch");
                        break;
                    }
                }
            }
            feeder.kill();
        });
        Ok(cache)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every step is a push or a
        // retain), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_dead(&self) -> bool {
        self.lock().dead
    }

    fn kill(&self) {
        let mut inner = self.lock();
        inner.dead = true;
        inner.subscribers.clear(); // closes every watcher's channel
    }

    fn dispatch(&self, msg: WatchMessage) {
        let mut inner = self.lock();
        match msg {
            WatchMessage::Events(events) => {
                let events: Vec<Arc<Event>> = events.into_iter().map(Arc::new).collect();
                inner.remember(&events, RING_BYTES, RING_CHANGES);
                let events: Vec<Arc<SharedEvent>> = events.into_iter().map(SharedEvent::of).collect();
                inner.subscribers.retain(|s| {
                    let mine: Vec<Arc<SharedEvent>> = events
                        .iter()
                        .filter(|e| e.event.kv.mod_revision > s.after && e.event.kv.key.starts_with(&s.prefix))
                        .cloned()
                        .collect();
                    if mine.is_empty() {
                        return !s.tx.is_closed();
                    }
                    // A full queue means the watcher is too slow: drop it.
                    s.tx.try_send(CacheMessage::Events(mine)).is_ok()
                });
            }
            WatchMessage::Progress(revision) => {
                // A watcher that started ahead of the cache only hears of progress past its start.
                inner.subscribers.retain(|s| {
                    if revision < s.after {
                        return !s.tx.is_closed();
                    }
                    match s.tx.try_send(CacheMessage::Progress(revision)) {
                        Ok(()) => true,
                        Err(mpsc::error::TrySendError::Full(_)) => true, // progress can be skipped
                        Err(mpsc::error::TrySendError::Closed(_)) => false,
                    }
                });
            }
        }
    }

    /// A watch of `prefix` after revision `after`, or `None` if the ring no longer reaches
    /// back that far (or the cache died).
    pub fn subscribe(&self, prefix: Bytes, after: Revision) -> Option<mpsc::Receiver<CacheMessage>> {
        let mut inner = self.lock();
        if inner.dead || after < inner.floor {
            return None;
        }
        let (tx, rx) = mpsc::channel(WATCHER_QUEUE);
        let replay: Vec<Arc<SharedEvent>> = inner
            .ring
            .iter()
            .filter(|e| e.kv.mod_revision > after && e.kv.key.starts_with(&prefix))
            .cloned()
            .map(SharedEvent::of)
            .collect();
        if !replay.is_empty() && tx.try_send(CacheMessage::Events(replay)).is_err() {
            return None;
        }
        inner.subscribers.push(Subscriber { prefix, after, tx });
        Some(rx)
    }

    pub fn watchers(&self) -> usize {
        self.lock().subscribers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(revision: Revision, bytes: usize) -> Arc<Event> {
        let kv = store::KeyValue {
            key: Bytes::from(format!("/k/{revision}")),
            value: Bytes::from(vec![b'x'; bytes]),
            create_revision: revision,
            mod_revision: revision,
            version: 1,
        };
        Arc::new(Event { kind: store::EventKind::Put, kv, prev: None })
    }

    #[test]
    fn the_ring_is_bounded_by_bytes_and_by_changes_and_its_floor_follows() {
        let mut inner = Inner { ring: VecDeque::new(), ring_bytes: 0, floor: 0, subscribers: Vec::new(), dead: false };
        // 10 changes of ~1 KB under a 4 KB budget: the 3 newest stay (each ~1.1 KB with its
        // key and bookkeeping), and a watch from before the 4th newest cannot be replayed.
        let events: Vec<_> = (1..=10).map(|r| put(r, 1000)).collect();
        inner.remember(&events, 4000, 100);
        let kept: Vec<Revision> = inner.ring.iter().map(|e| e.kv.mod_revision).collect();
        assert_eq!(kept, [8, 9, 10]);
        assert_eq!(inner.floor, 7);
        assert_eq!(inner.ring_bytes, inner.ring.iter().map(|e| ring_size(e)).sum::<usize>());
        // Small changes: the count bounds them.
        let small: Vec<_> = (11..=20).map(|r| put(r, 1)).collect();
        inner.remember(&small, 1 << 20, 4);
        let kept: Vec<Revision> = inner.ring.iter().map(|e| e.kv.mod_revision).collect();
        assert_eq!(kept, [17, 18, 19, 20]);
        assert_eq!(inner.floor, 16);
    }

    #[test]
    fn spliced_json_is_the_object_with_any_version() {
        let obj = serde_json::json!({
            "apiVersion": "v1", "kind": "Event",
            "involvedObject": {"resourceVersion": "12"},
            "metadata": {"name": "e\"1", "resourceVersion": "12", "uid": "u"},
            "zzz": [1, {"a": null}],
        });
        let s = Spliced::of(&obj).unwrap();
        let mut expected = obj.clone();
        expected["metadata"]["resourceVersion"] = "987654321".into();
        assert_eq!(serde_json::from_slice::<Value>(&s.with("987654321")).unwrap(), expected);
        let bare = serde_json::json!({"metadata": {"resourceVersion": "3"}});
        assert_eq!(
            serde_json::from_slice::<Value>(&Spliced::of(&bare).unwrap().with("4")).unwrap()["metadata"]["resourceVersion"],
            "4"
        );
        assert!(Spliced::of(&serde_json::json!({"metadata": {}})).is_none());
    }

    #[test]
    fn stored_json_is_spliced_as_its_decoded_object_is() {
        let objects = [
            serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "p\"}{[", "labels": {"a\\b": "c]"}, "managedFields": [{"f:x": {}}], "uid": "u"},
                "spec": {"containers": [{"name": "c", "args": ["{", "\\\"", "é"]}], "n": -1.5e300, "t": true},
                "status": {"phase": "Running", "x": null},
            }),
            serde_json::json!({"metadata": {}, "spec": {}}),
            serde_json::json!({"a": [1, {"metadata": 2}], "metadata": {"name": "x"}}),
            // The managed fields first, last, alone, and named elsewhere.
            serde_json::json!({"metadata": {"annotations": {"managedFields": "}"}, "managedFields": [{"a": "]"}]},
                               "spec": {"managedFields": 1}}),
            serde_json::json!({"metadata": {"managedFields": []}}),
            serde_json::json!({"kind": "K", "metadata": {"managedFields": [{}, {"f:y": {"": "\\"}}], "name": "n"}}),
        ];
        for obj in objects {
            let stored = serde_json::to_vec(&obj).unwrap();
            let mut decoded = obj.clone();
            decoded["metadata"]["resourceVersion"] = "42".into();
            assert_eq!(Spliced::of_stored(&stored), Spliced::of(&decoded), "{obj}");
            let lean = Spliced::of_stored_lean(&stored);
            assert_eq!(lean, Spliced::of_lean(&decoded), "{obj}");
            let mut without = decoded.clone();
            without["metadata"].as_object_mut().unwrap().remove("managedFields");
            assert_eq!(serde_json::from_slice::<Value>(&lean.unwrap().with("42")).unwrap(), without, "{obj}");
        }
        // Pretty-printed (spaces around the cut) and escaped keys.
        let spaced = b"{ \"metadata\" : { \"a\" : 1 , \"managedFields\" : [ 1 ] , \"z\" : 2 } }";
        let cut = Spliced::of_stored_lean(spaced).unwrap().with("7");
        assert_eq!(
            serde_json::from_slice::<Value>(&cut).unwrap(),
            serde_json::json!({"metadata": {"a": 1, "z": 2, "resourceVersion": "7"}})
        );
        let first = b"{\"metadata\":{ \"managedFields\" : [ 1 ] , \"z\":2}}";
        let cut = Spliced::of_stored_lean(first).unwrap().with("7");
        assert_eq!(
            serde_json::from_slice::<Value>(&cut).unwrap(),
            serde_json::json!({"metadata": {"z": 2, "resourceVersion": "7"}})
        );
        assert_eq!(Spliced::of_stored_lean(b"{\"metadata\":{\"m\\u0061nagedFields\":1}}"), None);
        for no in [
            &b"{}"[..],
            b"[]",
            b"{\"metadata\": 1}",
            b"{\"kind\":\"X\"}",
            b"{\"a\":",
            b"{\"a\":1 2}",
            b"{\"m\\u0065\":{}}",
        ] {
            assert_eq!(Spliced::of_stored(no), None, "{}", String::from_utf8_lossy(no));
        }
    }
}
