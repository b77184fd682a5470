//! Periodic store compaction, as kube-apiserver's `--etcd-compaction-interval`: every
//! interval the store is compacted to the revision observed one interval earlier, so that
//! history older than one interval is freed while a client that fell behind by less than
//! an interval can still resume its watch. Watches and lists from a compacted revision
//! then fail with 410 Gone ("too old resource version") and their clients list again.
//!
//! Several API servers may share one etcd: each compacts on its own schedule, and a
//! revision at or below the store's compaction point counts as already done.

use std::sync::Arc;
use std::time::Duration;

use store::{Revision, Store, StoreError};

/// Compacts `store` every `interval` until the task is dropped or aborted.
pub async fn run(store: Arc<dyn Store>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    // A slow store must not cause a burst of compactions when it recovers.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // the first tick is immediate
    let mut observed: Option<Revision> = None;
    loop {
        ticks.tick().await;
        if let Some(revision) = observed {
            compact_once(store.as_ref(), revision).await;
        }
        observed = match store.current_revision().await {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "compactor cannot read the current revision");
                None
            }
        };
    }
}

/// Compacts to `revision`; returns whether the store is now compacted at least that far.
pub async fn compact_once(store: &dyn Store, revision: Revision) -> bool {
    match store.compact(revision).await {
        Ok(()) => {
            tracing::debug!(revision, "compacted the store");
            true
        }
        // Another server (or an earlier round with no writes since) got there first.
        Err(StoreError::Compacted { .. }) => true,
        Err(e) => {
            tracing::warn!(revision, error = %e, "store compaction failed");
            false
        }
    }
}
