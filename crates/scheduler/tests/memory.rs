//! What one pod costs in each in-memory copy the control plane keeps of it, measured with a
//! counting allocator (net bytes allocated by this thread while building 2,000 copies),
//! for BENCHMARKS.md's memory breakdown. The pod is one the scale bench's ReplicaSet made,
//! as the API server stored it once bound and Running (`bench_pod.json`, captured with
//! `kubectl get pod -o json --show-managed-fields` during a run), and a simulated node. A binary of its own so that its allocator counts
//! nothing but this.

// A global allocator cannot be written without `unsafe`; it only forwards to the system one.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use serde_json::Value;

/// The system allocator, counting per thread, so tests running beside this one (other
/// threads of the same process under `cargo test`) do not disturb the figures.
struct Counting;

thread_local! {
    static NET: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    // `try_with`: allocations during thread teardown have no counter left.
    let _ = NET.try_with(|n| n.set(n.get() + delta));
}

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        // SAFETY: the caller upholds `alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        // SAFETY: `ptr` came from `alloc` (or `realloc`) above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize);
        // SAFETY: the caller upholds `realloc`'s contract, which we pass on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const N: usize = 2_000;

/// The `i`-th change of a run: `value` put at `key` over an older version of the same.
fn put_event(key: String, value: Vec<u8>, i: usize) -> store::Event {
    let kv = store::KeyValue {
        key: bytes::Bytes::from(key),
        value: bytes::Bytes::from(value),
        create_revision: 2,
        mod_revision: 3 + i as i64,
        version: 2,
    };
    let prev = store::KeyValue { mod_revision: 2, ..kv.clone() };
    store::Event { kind: store::EventKind::Put, kv, prev: Some(prev) }
}

/// Heap bytes per watch-cache ring entry of `events`, decoded (and with `with_prev`, the
/// previous object too).
fn ring_entry(events: &[store::Event], with_prev: bool) -> usize {
    per_item(|| {
        events
            .iter()
            .map(|e| {
                let shared = apiserver::registry::cache::SharedEvent::new(e.clone());
                assert!(shared.decoded(&|_| {}).is_some());
                if with_prev {
                    assert!(shared.prev(&|_| {}).is_ok_and(|p| p.is_some()));
                }
                shared
            })
            .collect::<Vec<_>>()
    })
    .1
}

/// Net heap bytes per item that `build` leaves allocated (requested sizes; malloc's own
/// headers and rounding, 8-16 bytes an allocation, come on top).
fn per_item<T>(build: impl FnOnce() -> T) -> (T, usize) {
    let before = NET.with(Cell::get);
    let kept = build();
    let after = NET.with(Cell::get);
    (kept, ((after - before).max(0) as usize) / N)
}

/// Numbered copies of the captured pod (distinct names and uids, as in a run).
fn pods() -> Vec<Vec<u8>> {
    let text = include_str!("bench_pod.json");
    let pod: Value = serde_json::from_str(text).expect("bench_pod.json is JSON");
    let name = pod["metadata"]["name"].as_str().unwrap().to_string();
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
    let compact = serde_json::to_string(&pod).unwrap();
    (0..N)
        .map(|i| {
            compact
                .replace(&name, &format!("{name}-{i:06}"))
                .replace(&uid, &format!("{}{i:06}", &uid[..uid.len() - 6]))
                .into_bytes()
        })
        .collect()
}

#[test]
fn memory_per_pod_in_each_copy() {
    let raw = pods();
    let json_len = raw.iter().map(Vec::len).sum::<usize>() / N;
    let (values, value) =
        per_item(|| raw.iter().map(|b| serde_json::from_slice::<Value>(b).unwrap()).collect::<Vec<_>>());
    let (_essentials, essentials) =
        per_item(|| values.iter().cloned().map(controllers::cache::pod_essentials).collect::<Vec<_>>());
    let node_name = |p: &Value| p.pointer("/spec/nodeName").and_then(Value::as_str).map(str::to_string);
    let full_cache = controllers::cache::Cache::default().with_index("node", node_name);
    let ((), cache_full) = per_item(|| {
        full_cache.apply(&controllers::watcher::Event::Restarted(values.clone()));
    });
    // `values.clone()` above is freed again after `apply` copies; only the cache's share stays.
    // The lean cache holds what the pod informer's source keeps of each pod as it decodes it.
    let lean_cache = controllers::cache::Cache::default().with_index("node", node_name);
    let ((), cache_lean) = per_item(|| {
        let kept = values.iter().cloned().map(controllers::cache::pod_essentials).collect();
        lean_cache.apply_owned(controllers::watcher::Event::Restarted(kept));
    });
    let (_typed, typed) =
        per_item(|| values.iter().map(|v| Arc::new(scheduler::model::Pod::from_json(v).unwrap())).collect::<Vec<_>>());
    // A watch-cache ring entry: the change (bytes shared with the store) decoded, new and
    // previous object, plus the new object's shared serialisation.
    let events: Vec<_> =
        raw.iter().enumerate().map(|(i, b)| put_event(format!("/registry/pods/t/ns/p{i}"), b.clone(), i)).collect();
    let (ring, ring_with_prev) = (ring_entry(&events, false), ring_entry(&events, true));
    // A simulated node (`bench_node.json`, captured alike): its changes (status every 60 s,
    // 5,000 nodes) fill the nodes' ring.
    let node = serde_json::to_vec(&serde_json::from_str::<Value>(include_str!("bench_node.json")).unwrap()).unwrap();
    let node_events: Vec<_> =
        (0..N).map(|i| put_event(format!("/registry/nodes/system/sim-{i}"), node.clone(), i)).collect();
    let (node_ring, node_ring_with_prev) = (ring_entry(&node_events, false), ring_entry(&node_events, true));
    println!("one bench pod, bytes of heap per copy ({N} copies):");
    println!("  stored JSON (one store version; the store shares it with its change log): {json_len}");
    println!("  decoded serde_json::Value: {value}");
    println!("  controllers' pod_essentials Value: {essentials}");
    println!("  controllers' indexed Cache, whole pods: {cache_full}");
    println!("  controllers' indexed Cache, pod_essentials: {cache_lean}");
    println!("  scheduler's typed Pod: {typed}");
    println!("  watch-cache ring entry, decoded new object + spliced JSON: {ring}");
    println!("  watch-cache ring entry, and the previous object decoded too: {ring_with_prev}");
    println!(
        "one simulated node ({} bytes of JSON), watch-cache ring entry: {node_ring}, with the previous object decoded too: {node_ring_with_prev}",
        node.len()
    );
    // The point of `pod_essentials`: most of a decoded pod is what no controller reads.
    assert!(cache_lean * 2 < cache_full, "pruned cache {cache_lean} B/pod against {cache_full} B/pod");
    assert!(value > json_len, "a decoded pod is larger than its JSON");
}
