//! Compaction really frees the embedded store's old versions: live heap bytes, counted by
//! this test binary's allocator, fall back to about one version per key. A binary of its
//! own so that no other test's allocations are counted.

// A global allocator cannot be written without `unsafe`; it only forwards to the system one.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use anyhow::{Result, ensure};
use bytes::Bytes;
use store::embedded::EmbeddedStore;
use store::{RangeRequest, Store, StoreError};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller upholds `alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const KEYS: usize = 100;
const ROUNDS: usize = 200;
const VALUE: usize = 1024;

#[tokio::test(flavor = "current_thread")]
async fn compaction_frees_old_versions_and_repeating_it_is_harmless() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = std::sync::Arc::new(EmbeddedStore::open(dir.path())?);
    let empty = LIVE.load(Ordering::Relaxed);
    let first = store.current_revision().await? + 1;
    for round in 0..ROUNDS {
        // One write per key and revision, submitted together so that they share a log sync.
        let mut writes = tokio::task::JoinSet::new();
        for k in 0..KEYS {
            let (store, value) = (store.clone(), Bytes::from(vec![round as u8; VALUE]));
            writes.spawn(async move { store.put(Bytes::from(format!("/k/{k:03}")), value).await });
        }
        while let Some(done) = writes.join_next().await {
            done??;
        }
    }
    let history = LIVE.load(Ordering::Relaxed) - empty;
    let now = store.current_revision().await?;
    store.compact(now).await?;
    // Give a snapshot the compaction may have started time to finish and free its buffers.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let compacted = LIVE.load(Ordering::Relaxed) - empty;
    eprintln!(
        "{} writes of {VALUE} B over {KEYS} keys: {history} B live before compaction, {compacted} B after",
        KEYS * ROUNDS
    );
    let versions = (KEYS * ROUNDS * VALUE) as isize;
    ensure!(history >= versions, "the history ({history} B) should hold every version ({versions} B)");
    // Every key keeps its latest value; allow as much again for the index and buffers.
    let latest = (KEYS * VALUE) as isize;
    ensure!(compacted < 3 * latest, "{compacted} B still live after compaction; the latest values are {latest} B");

    // The latest values survive; the old ones are gone.
    let all = store.range(RangeRequest::prefix(Bytes::from_static(b"/k/"))).await?;
    ensure!(all.kvs.len() == KEYS);
    ensure!(all.kvs.iter().all(|kv| kv.value[0] == (ROUNDS - 1) as u8));
    let old = store.range(RangeRequest { revision: Some(first), ..RangeRequest::prefix(Bytes::from_static(b"/k/")) });
    ensure!(matches!(old.await, Err(StoreError::Compacted { .. })), "a read below the compaction point worked");

    // Compacting to the same or an older revision again (a second API server) changes nothing.
    for again in [now, first] {
        match store.compact(again).await {
            Err(StoreError::Compacted { .. }) => {}
            other => anyhow::bail!("compacting again to {again}: {other:?}"),
        }
    }
    ensure!(store.range(RangeRequest::prefix(Bytes::from_static(b"/k/"))).await?.kvs == all.kvs);
    Ok(())
}
