//! One conformance suite for every store backend. Each test is a function over `&dyn Store`
//! that starts from an empty store; `backend_tests!` runs the whole list against a backend.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use store::{
    Compare, EventKind, KeyValue, Op, RangeRequest, Store, StoreError, Txn, TxnOutcome, WatchMessage, WatchOptions,
    WatchStream,
};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn get(s: &dyn Store, key: &str) -> Result<Option<KeyValue>> {
    Ok(s.get(b(key), None).await?.0)
}

async fn value_at(s: &dyn Store, key: &str, rev: i64) -> Result<Option<Bytes>, StoreError> {
    Ok(s.get(b(key), Some(rev)).await?.0.map(|kv| kv.value))
}

/// Next message within a deadline, failing on end of stream or error.
async fn next_message(w: &mut WatchStream) -> Result<WatchMessage> {
    match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
        Err(_) => bail!("no watch message within 10 s"),
        Ok(None) => bail!("watch ended"),
        Ok(Some(m)) => Ok(m?),
    }
}

/// Collects events until `n` have arrived.
async fn collect_events(w: &mut WatchStream, n: usize) -> Result<Vec<store::Event>> {
    let mut out = Vec::new();
    while out.len() < n {
        if let WatchMessage::Events(events) = next_message(w).await? {
            out.extend(events);
        }
    }
    ensure!(out.len() == n, "expected {n} events, got {}", out.len());
    Ok(out)
}

pub async fn empty_store_is_at_revision_one(s: &dyn Store) -> Result<()> {
    ensure!(s.current_revision().await? == 1);
    ensure!(get(s, "/nothing").await?.is_none());
    let r = s.range(RangeRequest::prefix(b("/"))).await?;
    ensure!(r.kvs.is_empty() && !r.more && r.revision == 1);
    Ok(())
}

pub async fn create_refuses_existing_keys(s: &dyn Store) -> Result<()> {
    ensure!(s.create(b("/a"), b("1")).await? == Ok(2));
    ensure!(s.create(b("/b"), b("2")).await? == Ok(3));
    let existing = s.create(b("/a"), b("again")).await?.err().context("second create must fail")?;
    ensure!(existing.value == b("1") && existing.mod_revision == 2);
    let kv = get(s, "/a").await?.context("a exists")?;
    ensure!(kv == KeyValue { key: b("/a"), value: b("1"), create_revision: 2, mod_revision: 2, version: 1 });
    ensure!(s.current_revision().await? == 3, "a failed create must not advance the revision");
    Ok(())
}

pub async fn update_compares_mod_revision(s: &dyn Store) -> Result<()> {
    let r1 = s.create(b("/k"), b("v1")).await?.unwrap();
    let r2 = s.update(b("/k"), b("v2"), r1).await?.unwrap();
    ensure!(r2 == r1 + 1);
    let stale = s.update(b("/k"), b("v3"), r1).await?.err().context("stale update must fail")?;
    ensure!(stale.as_ref().map(|kv| kv.value.clone()) == Some(b("v2")));
    let kv = get(s, "/k").await?.unwrap();
    ensure!(kv.value == b("v2") && kv.version == 2 && kv.create_revision == r1 && kv.mod_revision == r2);
    ensure!(s.update(b("/missing"), b("x"), 5).await? == Err(None));
    // An unconditional put creates or replaces.
    let r3 = s.put(b("/k"), b("v3")).await?;
    ensure!(get(s, "/k").await?.unwrap().version == 3 && r3 == r2 + 1);
    Ok(())
}

pub async fn delete_compares_and_returns_the_deleted_value(s: &dyn Store) -> Result<()> {
    let r1 = s.create(b("/d"), b("v")).await?.unwrap();
    ensure!(s.delete(b("/d"), Some(r1 + 10)).await?.err().flatten().map(|kv| kv.value) == Some(b("v")));
    let (rev, prev) = s.delete(b("/d"), Some(r1)).await?.ok().context("delete must succeed")?;
    ensure!(rev == r1 + 1 && prev.value == b("v") && prev.mod_revision == r1);
    ensure!(get(s, "/d").await?.is_none());
    ensure!(s.delete(b("/d"), None).await? == Err(None));
    // Re-creating starts a new incarnation.
    let r3 = s.create(b("/d"), b("again")).await?.unwrap();
    let kv = get(s, "/d").await?.unwrap();
    ensure!(kv.create_revision == r3 && kv.version == 1);
    Ok(())
}

pub async fn reads_at_past_revisions(s: &dyn Store) -> Result<()> {
    let r1 = s.put(b("/h"), b("1")).await?;
    let r2 = s.put(b("/h"), b("2")).await?;
    let (r3, _) = s.delete(b("/h"), None).await?.unwrap();
    let r4 = s.put(b("/h"), b("3")).await?;
    ensure!(value_at(s, "/h", r1).await? == Some(b("1")));
    ensure!(value_at(s, "/h", r2).await? == Some(b("2")));
    ensure!(value_at(s, "/h", r3).await?.is_none());
    ensure!(value_at(s, "/h", r4).await? == Some(b("3")));
    match value_at(s, "/h", r4 + 1).await {
        Err(StoreError::FutureRevision { .. }) => {}
        other => bail!("reading a future revision gave {other:?}"),
    }
    let past = s.range(RangeRequest { revision: Some(r2), ..RangeRequest::prefix(b("/h")) }).await?;
    ensure!(past.revision == r2 && past.kvs.len() == 1 && past.kvs[0].value == b("2"));
    Ok(())
}

pub async fn range_pages_with_limit_and_continuation(s: &dyn Store) -> Result<()> {
    for i in 0..25 {
        s.put(b(&format!("/p/{i:02}")), b(&i.to_string())).await?;
    }
    for i in 0..3 {
        s.put(b(&format!("/q/{i}")), b("other")).await?;
    }
    s.put(b("/p"), b("not under /p/")).await?;
    let first = s.range(RangeRequest { limit: Some(10), ..RangeRequest::prefix(b("/p/")) }).await?;
    ensure!(first.kvs.len() == 10 && first.more);
    // A write between pages must not show up in pages read at the first page's revision.
    s.put(b("/p/00a"), b("late")).await?;
    let mut keys: Vec<Bytes> = first.kvs.iter().map(|kv| kv.key.clone()).collect();
    let mut last = keys.last().unwrap().clone();
    loop {
        let mut start = last.to_vec();
        start.push(0);
        let page = s
            .range(RangeRequest {
                start: start.into(),
                end: store::prefix_end(b"/p/"),
                revision: Some(first.revision),
                limit: Some(10),
            })
            .await?;
        ensure!(page.revision == first.revision);
        keys.extend(page.kvs.iter().map(|kv| kv.key.clone()));
        if !page.more {
            break;
        }
        last = keys.last().unwrap().clone();
    }
    let expected: Vec<Bytes> = (0..25).map(|i| b(&format!("/p/{i:02}"))).collect();
    ensure!(keys == expected, "pages gave {keys:?}");
    let exact = s.range(RangeRequest { limit: Some(26), ..RangeRequest::prefix(b("/p/")) }).await?;
    ensure!(exact.kvs.len() == 26 && !exact.more, "26 keys exist now, all fit in one page");
    Ok(())
}

pub async fn txn_applies_all_or_nothing(s: &dyn Store) -> Result<()> {
    let ra = s.put(b("/t/a"), b("a1")).await?;
    let rb = s.put(b("/t/b"), b("b1")).await?;
    let before = s.current_revision().await?;
    let txn = |b_rev| Txn {
        compares: vec![
            Compare::ModRevision { key: b("/t/a"), revision: ra },
            Compare::ModRevision { key: b("/t/b"), revision: b_rev },
            Compare::ModRevision { key: b("/t/new"), revision: 0 },
        ],
        ops: vec![
            Op::Put { key: b("/t/a"), value: b("a2") },
            Op::Put { key: b("/t/new"), value: b("n") },
            Op::Delete { key: b("/t/b") },
        ],
    };
    match s.txn(txn(rb - 1)).await? {
        TxnOutcome::Failed { current, .. } => {
            let values: Vec<_> = current.iter().map(|kv| kv.as_ref().map(|kv| kv.value.clone())).collect();
            ensure!(values == vec![Some(b("a1")), Some(b("b1")), None], "current = {values:?}");
        }
        other => bail!("a failing compare committed: {other:?}"),
    }
    ensure!(s.current_revision().await? == before);
    ensure!(get(s, "/t/a").await?.unwrap().value == b("a1"));
    ensure!(get(s, "/t/new").await?.is_none() && get(s, "/t/b").await?.is_some());
    match s.txn(txn(rb)).await? {
        TxnOutcome::Committed { revision, prev } => {
            ensure!(revision == before + 1, "one transaction is one revision");
            let values: Vec<_> = prev.iter().map(|kv| kv.as_ref().map(|kv| kv.value.clone())).collect();
            ensure!(values == vec![Some(b("a1")), None, Some(b("b1"))], "prev = {values:?}");
        }
        other => bail!("a holding compare failed: {other:?}"),
    }
    let a = get(s, "/t/a").await?.unwrap();
    let n = get(s, "/t/new").await?.unwrap();
    ensure!(a.mod_revision == before + 1 && n.mod_revision == before + 1 && n.create_revision == before + 1);
    ensure!(get(s, "/t/b").await?.is_none());
    // Exists compares.
    let exists = Txn {
        compares: vec![Compare::Exists { key: b("/t/b") }],
        ops: vec![Op::Put { key: b("/t/x"), value: b("x") }],
    };
    ensure!(matches!(s.txn(exists).await?, TxnOutcome::Failed { .. }));
    Ok(())
}

pub async fn txn_that_changes_nothing_keeps_the_revision(s: &dyn Store) -> Result<()> {
    s.put(b("/n/a"), b("a")).await?;
    let before = s.current_revision().await?;
    match s.txn(Txn { compares: vec![], ops: vec![Op::Delete { key: b("/n/absent") }] }).await? {
        TxnOutcome::Committed { revision, prev } => ensure!(revision == before && prev == vec![None]),
        other => bail!("{other:?}"),
    }
    ensure!(s.current_revision().await? == before);
    Ok(())
}

pub async fn watch_replays_history_then_follows(s: &dyn Store) -> Result<()> {
    let r1 = s.put(b("/w/a"), b("1")).await?;
    s.put(b("/other/x"), b("not watched")).await?;
    let r2 = s.put(b("/w/a"), b("2")).await?;
    let mut w = s.watch(b("/w/"), Some(r1 - 1), WatchOptions { progress_interval: None }).await?;
    let (r3, _) = s.delete(b("/w/a"), None).await?.unwrap();
    let r4 = s.put(b("/w/b"), b("b")).await?;
    let events = collect_events(&mut w, 4).await?;
    let summary: Vec<_> = events.iter().map(|e| (e.kind, e.kv.key.clone(), e.kv.mod_revision)).collect();
    ensure!(
        summary
            == vec![
                (EventKind::Put, b("/w/a"), r1),
                (EventKind::Put, b("/w/a"), r2),
                (EventKind::Delete, b("/w/a"), r3),
                (EventKind::Put, b("/w/b"), r4),
            ],
        "events: {summary:?}"
    );
    ensure!(events[0].prev.is_none() && events[0].kv.version == 1 && events[0].kv.create_revision == r1);
    ensure!(events[1].prev.as_ref().map(|p| p.value.clone()) == Some(b("1")) && events[1].kv.version == 2);
    ensure!(events[2].prev.as_ref().map(|p| p.value.clone()) == Some(b("2")), "a delete carries the deleted value");
    // A watch from "now" sees only later changes.
    let mut now = s.watch(b("/w/"), None, WatchOptions { progress_interval: None }).await?;
    let r5 = s.put(b("/w/c"), b("c")).await?;
    let later = collect_events(&mut now, 1).await?;
    ensure!(later[0].kv.mod_revision == r5 && later[0].kv.key == b("/w/c"));
    Ok(())
}

pub async fn watch_is_complete_and_ordered_under_concurrent_writers(s: Arc<dyn Store>) -> Result<()> {
    const WRITERS: usize = 8;
    const PER_WRITER: usize = 60;
    let start = s.current_revision().await?;
    let mut w = s.watch(b("/c/"), Some(start), WatchOptions { progress_interval: None }).await?;
    let mut tasks = Vec::new();
    for t in 0..WRITERS {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..PER_WRITER {
                // Half the writers reuse keys, so updates and creates interleave.
                let key = if t % 2 == 0 { format!("/c/{t}/{i}") } else { format!("/c/{t}/{}", i % 5) };
                let rev = s.put(b(&key), b(&format!("{t}-{i}"))).await?;
                acked.push((rev, b(&key)));
            }
            anyhow::Ok(acked)
        }));
    }
    let mut acked = BTreeSet::new();
    for t in tasks {
        acked.extend(t.await??);
    }
    let events = collect_events(&mut w, WRITERS * PER_WRITER).await?;
    let seen: Vec<_> = events.iter().map(|e| (e.kv.mod_revision, e.kv.key.clone())).collect();
    ensure!(seen.windows(2).all(|p| p[0].0 < p[1].0), "events out of order or duplicated");
    ensure!(seen.iter().cloned().collect::<BTreeSet<_>>() == acked, "watched events differ from acknowledged writes");
    ensure!(seen.last().map(|e| e.0) == Some(s.current_revision().await?));
    Ok(())
}

pub async fn watch_reports_progress(s: &dyn Store) -> Result<()> {
    s.put(b("/busy/a"), b("x")).await?;
    let opts = WatchOptions { progress_interval: Some(Duration::from_millis(200)) };
    let mut w = s.watch(b("/quiet/"), None, opts).await?;
    let rev = s.put(b("/busy/b"), b("y")).await?;
    // Progress must eventually cover the unrelated write.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        ensure!(tokio::time::Instant::now() < deadline, "no progress up to {rev} within 10 s");
        match next_message(&mut w).await? {
            WatchMessage::Progress(p) if p >= rev => break,
            WatchMessage::Progress(_) => {}
            WatchMessage::Events(e) => bail!("unexpected events on a quiet prefix: {e:?}"),
        }
    }
    Ok(())
}

/// A watch that needs compacted events fails, when it starts or as its first message.
async fn expect_watch_compacted(s: &dyn Store, after: i64) -> Result<()> {
    match s.watch(b("/cp/"), Some(after), WatchOptions { progress_interval: None }).await {
        Err(StoreError::Compacted { .. }) => Ok(()),
        Err(e) => bail!("watch after {after}: unexpected error {e}"),
        Ok(mut w) => match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
            Ok(Some(Err(StoreError::Compacted { .. }))) => Ok(()),
            other => bail!("watch after {after} across compaction gave {other:?}"),
        },
    }
}

pub async fn compaction_cuts_reads_and_watches(s: &dyn Store) -> Result<()> {
    let mut revs = Vec::new();
    for i in 0..6 {
        revs.push(s.put(b("/cp/k"), b(&i.to_string())).await?);
    }
    let other = s.put(b("/cp/other"), b("o")).await?;
    let at = revs[3];
    s.compact(at).await?;
    match value_at(s, "/cp/k", at - 1).await {
        Err(StoreError::Compacted { .. }) => {}
        other => bail!("read below compaction gave {other:?}"),
    }
    ensure!(value_at(s, "/cp/k", at).await? == Some(b("3")), "the compaction revision stays readable");
    ensure!(value_at(s, "/cp/other", at).await?.is_none());
    ensure!(value_at(s, "/cp/other", other).await? == Some(b("o")));
    expect_watch_compacted(s, at - 2).await?;
    // Watching from the compaction revision on still works.
    let mut w = s.watch(b("/cp/"), Some(at - 1), WatchOptions { progress_interval: None }).await?;
    let events = collect_events(&mut w, 4).await?;
    let revs_seen: Vec<_> = events.iter().map(|e| e.kv.mod_revision).collect();
    ensure!(revs_seen == vec![revs[3], revs[4], revs[5], other], "got {revs_seen:?}");
    // Several API servers compact on their own schedules: the same point again, or an
    // older one, is refused as already compacted (which the compactor counts as done).
    for again in [at, at - 1] {
        match s.compact(again).await {
            Err(StoreError::Compacted { .. }) => {}
            other => bail!("compacting to {again} with the compaction point at {at} gave {other:?}"),
        }
    }
    match s.compact(other + 100).await {
        Err(StoreError::FutureRevision { .. }) => {}
        other => bail!("compacting a future revision gave {other:?}"),
    }
    Ok(())
}

pub async fn bad_input_is_refused(s: &dyn Store) -> Result<()> {
    let big = Bytes::from(vec![7u8; store::MAX_VALUE_SIZE + 1]);
    match s.put(b("/big"), big).await {
        Err(StoreError::ValueTooLarge { .. }) => {}
        other => bail!("oversized value gave {other:?}"),
    }
    ensure!(get(s, "/big").await?.is_none());
    let large = Bytes::from(vec![7u8; 1 << 20]);
    s.put(b("/large"), large.clone()).await?;
    ensure!(get(s, "/large").await?.unwrap().value == large, "a 1 MiB value round-trips");
    match s.put(Bytes::new(), b("x")).await {
        Err(StoreError::InvalidKey(_)) => {}
        other => bail!("empty key gave {other:?}"),
    }
    let dup = Txn { compares: vec![], ops: vec![Op::Delete { key: b("/x") }, Op::Put { key: b("/x"), value: b("1") }] };
    ensure!(matches!(s.txn(dup).await, Err(StoreError::InvalidRequest(_))));
    Ok(())
}

/// A read answer, unpaged, or a watch's history may be far larger than one value: 5,000
/// nodes are ~16 MB. gRPC clients refuse messages over 4 MiB unless told otherwise.
pub async fn large_answers_are_read_whole(s: &dyn Store) -> Result<()> {
    let value = Bytes::from(vec![b'n'; 1 << 20]);
    let start = s.current_revision().await?;
    for i in 0..6 {
        s.put(b(&format!("/big/{i}")), value.clone()).await?;
    }
    let all = s.range(RangeRequest::prefix(b("/big/"))).await?;
    ensure!(all.kvs.len() == 6 && all.kvs.iter().all(|kv| kv.value == value), "6 MiB in one range");
    let mut w = s.watch(b("/big/"), Some(start), WatchOptions { progress_interval: None }).await?;
    let events = collect_events(&mut w, 6).await?;
    ensure!(events.iter().all(|e| e.kv.value == value), "6 MiB of history in a watch");
    Ok(())
}

/// Instantiates every conformance test for one backend. `$open` is an async expression
/// giving `(Arc<dyn Store>, guard)`; the guard keeps the backend alive for the test.
macro_rules! backend_tests {
    ($open:expr) => {
        crate::conformance::backend_tests!(@each $open;
            empty_store_is_at_revision_one,
            create_refuses_existing_keys,
            update_compares_mod_revision,
            delete_compares_and_returns_the_deleted_value,
            reads_at_past_revisions,
            range_pages_with_limit_and_continuation,
            txn_applies_all_or_nothing,
            txn_that_changes_nothing_keeps_the_revision,
            watch_replays_history_then_follows,
            watch_reports_progress,
            compaction_cuts_reads_and_watches,
            bad_input_is_refused,
            large_answers_are_read_whole,
        );
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn watch_is_complete_and_ordered_under_concurrent_writers() -> anyhow::Result<()> {
            let (store, _guard) = $open;
            crate::conformance::watch_is_complete_and_ordered_under_concurrent_writers(store).await
        }
    };
    (@each $open:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() -> anyhow::Result<()> {
                let (store, _guard) = $open;
                crate::conformance::$name(&*store).await
            }
        )*
    };
}
pub(crate) use backend_tests;
