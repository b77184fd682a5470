//! The periodic compactor over a real embedded store.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail, ensure};
use bytes::Bytes;
use store::embedded::EmbeddedStore;
use store::{Store, StoreError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compactor_drops_history_older_than_one_interval() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path())?);
    let key = Bytes::from_static(b"/k");
    let first = store.put(key.clone(), Bytes::from_static(b"1")).await?;
    let second = store.put(key.clone(), Bytes::from_static(b"2")).await?;
    let task = tokio::spawn(apiserver::compactor::run(store.clone(), Duration::from_millis(200)));
    // Nothing is compacted before one interval has passed since the revision was seen.
    tokio::time::sleep(Duration::from_millis(100)).await;
    ensure!(store.get(key.clone(), Some(first)).await.is_ok(), "compacted before any interval passed");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match store.get(key.clone(), Some(first)).await {
            Err(StoreError::Compacted { .. }) => break,
            Ok(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            other => bail!("the revision before the last one seen was not compacted: {other:?}"),
        }
    }
    task.abort();
    // What the compactor observed stays readable.
    let (kv, _) = store.get(key.clone(), Some(second)).await?;
    ensure!(kv.map(|kv| kv.value) == Some(Bytes::from_static(b"2")));
    // A point another server already compacted to counts as done; a failure does not.
    ensure!(apiserver::compactor::compact_once(&*store, first).await);
    ensure!(apiserver::compactor::compact_once(&*store, second).await);
    ensure!(!apiserver::compactor::compact_once(&*store, second + 1_000).await);
    Ok(())
}
