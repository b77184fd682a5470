//! The embedded backend: a write-ahead log on local disk and an in-memory MVCC index.
//!
//! - Every write goes to one writer thread. It takes all requests waiting in its queue as
//!   one batch, checks each transaction's compares in order (later ones see earlier ones),
//!   appends the batch's records to the log and syncs once (group commit), then publishes
//!   the new revision and answers. Nothing is acknowledged or visible before its sync.
//! - Reads take a shared lock on the in-memory state and never wait for disk.
//! - Watches read the in-memory change log from their own cursor, so a slow watcher never
//!   loses events and never holds up the writer; it is only cut off by compaction.
//! - A failed log write poisons the store for writes (the disk's state is unknown after a
//!   failed sync); reads keep serving acknowledged data. Running out of space while
//!   starting a new segment is not fatal: that batch fails and nothing was written.
//!
//! The data directory is locked, so two processes never write one log.

mod snapshot;
mod state;
mod wal;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::RwLock;
use tokio::sync::{mpsc, oneshot, watch};

pub use wal::RecoveryInfo;

use self::state::State;
use self::wal::{Change, Record, Wal};
use crate::{
    Compare, Op, RangeRequest, RangeResponse, Result, Revision, Store, StoreError, Txn, TxnOutcome, WatchMessage,
    WatchOptions, WatchStream, validate_txn,
};

#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// Size of each log segment file.
    pub segment_size: u64,
    /// Most requests committed in one batch.
    pub max_batch: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions { segment_size: 64 << 20, max_batch: 1024 }
    }
}

enum Request {
    Txn(Txn, oneshot::Sender<Result<TxnOutcome>>),
    Compact(Revision, oneshot::Sender<Result<()>>),
}

pub struct EmbeddedStore {
    state: Arc<RwLock<State>>,
    requests: Option<std_mpsc::Sender<Request>>,
    writer: Option<std::thread::JoinHandle<()>>,
    published: watch::Receiver<Revision>,
    recovery: RecoveryInfo,
    dir: PathBuf,
}

impl Drop for EmbeddedStore {
    /// Waits for the writer to finish its last batch and release the directory lock, so
    /// the directory can be opened again as soon as this returns.
    fn drop(&mut self) {
        self.requests.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl EmbeddedStore {
    pub fn open(dir: &Path) -> Result<EmbeddedStore> {
        Self::open_with(dir, EmbeddedOptions::default())
    }

    pub fn open_with(dir: &Path, opts: EmbeddedOptions) -> Result<EmbeddedStore> {
        std::fs::create_dir_all(dir)?;
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("LOCK"))?;
        lock.try_lock().map_err(|_| {
            StoreError::Unavailable(format!("data directory {} is in use by another process", dir.display()))
        })?;

        let snap_dir = dir.join("snap");
        let mut state = match snapshot::load_latest(&snap_dir)? {
            Some(image) => State::from_image(image)?,
            None => State::new(),
        };
        let snapshot_revision = state.current;
        let wal_dir = dir.join("wal");
        let (wal, recovery) =
            Wal::open(&wal_dir, opts.segment_size, |record| replay(&mut state, snapshot_revision, record))?;
        let state = Arc::new(RwLock::new(state));
        let (publish, published) = watch::channel(state.read().current);
        let (requests, queue) = std_mpsc::channel();
        let writer = Writer {
            state: state.clone(),
            snapshot_seq: wal.seq(),
            wal,
            wal_dir,
            snap_dir,
            snapshotter: None,
            publish,
            poisoned: None,
            max_batch: opts.max_batch.max(1),
            _lock: lock,
        };
        let writer = std::thread::Builder::new().name("store-writer".into()).spawn(move || writer.run(queue))?;
        Ok(EmbeddedStore {
            state,
            requests: Some(requests),
            writer: Some(writer),
            published,
            recovery,
            dir: dir.to_path_buf(),
        })
    }

    /// What opening the log found.
    pub fn recovery(&self) -> &RecoveryInfo {
        &self.recovery
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn submit<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Request) -> oneshot::Receiver<Result<T>> {
        let (tx, rx) = oneshot::channel();
        // If the writer is gone the request (and its sender) is dropped and `rx` errors.
        if let Some(requests) = &self.requests {
            let _ = requests.send(make(tx));
        }
        rx
    }
}

fn replay(state: &mut State, snapshot_revision: Revision, record: Record) -> Result<()> {
    match record {
        // Already in the snapshot.
        Record::Txn { revision, .. } if revision <= snapshot_revision => {}
        Record::Compact { revision } if revision <= state.compacted && revision <= snapshot_revision => {}
        Record::Txn { revision, changes } => {
            if revision != state.head() + 1 {
                return Err(StoreError::Corrupt(format!(
                    "log record has revision {revision}, expected {}",
                    state.head() + 1
                )));
            }
            state.apply(&changes);
            state.current = revision;
        }
        Record::Compact { revision } => {
            if revision > state.current || revision <= state.compacted {
                return Err(StoreError::Corrupt(format!("log holds an impossible compaction to {revision}")));
            }
            state.compact(revision);
        }
    }
    Ok(())
}

struct Writer {
    state: Arc<RwLock<State>>,
    wal: Wal,
    wal_dir: PathBuf,
    snap_dir: PathBuf,
    /// Segment that was current when the last snapshot was taken (or at start).
    snapshot_seq: u64,
    snapshotter: Option<std::thread::JoinHandle<()>>,
    publish: watch::Sender<Revision>,
    poisoned: Option<String>,
    max_batch: usize,
    /// Held for as long as the log may be written.
    _lock: File,
}

type Reply = Box<dyn FnOnce(Option<&StoreError>) + Send>;

impl Writer {
    fn run(mut self, queue: std_mpsc::Receiver<Request>) {
        while let Ok(first) = queue.recv() {
            let mut batch = vec![first];
            while batch.len() < self.max_batch {
                match queue.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            if self.commit(batch) {
                self.maybe_snapshot();
            }
        }
        if let Some(snapshotter) = self.snapshotter.take() {
            let _ = snapshotter.join();
        }
    }

    /// After a compaction, writes a snapshot in the background if whole log segments
    /// would be freed by it, then deletes those segments.
    fn maybe_snapshot(&mut self) {
        if self.wal.seq() <= self.snapshot_seq || self.snapshotter.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let image = self.state.read().image();
        let seq = self.wal.seq();
        self.snapshot_seq = seq;
        let (snap_dir, wal_dir) = (self.snap_dir.clone(), self.wal_dir.clone());
        self.snapshotter = Some(std::thread::spawn(move || {
            let revision = image.current;
            let done = snapshot::write(&snap_dir, &image).and_then(|()| wal::remove_segments_before(&wal_dir, seq));
            match done {
                Ok(()) => tracing::info!(revision, "wrote a store snapshot"),
                // The log still holds everything; the next compaction tries again.
                Err(e) => tracing::warn!(revision, error = %e, "store snapshot failed"),
            }
        }));
    }

    /// Commits one batch; returns whether it durably compacted the store.
    fn commit(&mut self, batch: Vec<Request>) -> bool {
        if let Some(why) = &self.poisoned {
            for request in batch {
                let err = || StoreError::Unavailable(format!("store refuses writes after an I/O failure: {why}"));
                match request {
                    Request::Txn(_, tx) => drop(tx.send(Err(err()))),
                    Request::Compact(_, tx) => drop(tx.send(Err(err()))),
                }
            }
            return false;
        }
        let mut compacted = false;
        let mut buf = Vec::new();
        let mut replies: Vec<Reply> = Vec::with_capacity(batch.len());
        {
            let mut state = self.state.write();
            for request in batch {
                replies.push(match request {
                    Request::Txn(txn, tx) => {
                        let outcome = stage_txn(&mut state, txn, &mut buf);
                        Box::new(move |err| drop(tx.send(fail_or(err, outcome))))
                    }
                    Request::Compact(revision, tx) => {
                        let result = stage_compact(&mut state, revision, &mut buf);
                        compacted |= result.is_ok();
                        Box::new(move |err| drop(tx.send(fail_or(err, result))))
                    }
                });
            }
        }
        let written = if buf.is_empty() {
            Ok(())
        } else {
            match self.wal.reserve(buf.len() as u64) {
                Err(e) => Err(e),
                Ok(()) => self.wal.append(&buf).inspect_err(|e| {
                    // After a failed write or sync the file's contents are unknown.
                    self.poisoned = Some(e.to_string());
                    tracing::error!(error = %e, "log write failed; refusing further writes");
                }),
            }
        };
        let err = match written {
            Ok(()) => {
                let head = {
                    let mut state = self.state.write();
                    state.current = state.head();
                    state.current
                };
                self.publish.send_replace(head);
                None
            }
            Err(e) => {
                self.state.write().roll_back();
                Some(StoreError::Io(e))
            }
        };
        let ok = err.is_none();
        for reply in replies {
            reply(err.as_ref());
        }
        compacted && ok
    }
}

fn fail_or<T>(err: Option<&StoreError>, result: Result<T>) -> Result<T> {
    match err {
        None => result,
        Some(StoreError::Io(e)) => Err(StoreError::Io(std::io::Error::new(e.kind(), e.to_string()))),
        Some(other) => Err(StoreError::Unavailable(other.to_string())),
    }
}

/// Evaluates a transaction against the state including earlier pending ones, applies it
/// as pending and encodes its log record.
fn stage_txn(state: &mut State, txn: Txn, buf: &mut Vec<u8>) -> Result<TxnOutcome> {
    let holds = txn.compares.iter().all(|c| match c {
        Compare::ModRevision { key, revision } => state.latest(key).map_or(0, |kv| kv.mod_revision) == *revision,
        Compare::Exists { key } => state.latest(key).is_some(),
    });
    if !holds {
        let current = txn.compares.iter().map(|c| state.latest(c.key())).collect();
        return Ok(TxnOutcome::Failed { revision: state.head(), current });
    }
    let prev: Vec<_> = txn.ops.iter().map(|op| state.latest(op.key())).collect();
    let mut changes: Vec<Change> = txn
        .ops
        .into_iter()
        .zip(&prev)
        .filter_map(|(op, prev)| match op {
            Op::Put { key, value } => Some(Change::Put(key, value)),
            Op::Delete { key } => prev.is_some().then_some(Change::Delete(key)),
        })
        .collect();
    if changes.is_empty() {
        return Ok(TxnOutcome::Committed { revision: state.head(), prev });
    }
    // Events of one revision are in key order, which a snapshot can reproduce.
    changes.sort_by(|a, b| a.key().cmp(b.key()));
    let revision = state.apply(&changes);
    wal::encode_txn(buf, revision, &changes);
    Ok(TxnOutcome::Committed { revision, prev })
}

fn stage_compact(state: &mut State, revision: Revision, buf: &mut Vec<u8>) -> Result<()> {
    if revision > state.current {
        return Err(StoreError::FutureRevision { requested: revision, current: state.current });
    }
    if revision <= state.compacted {
        return Err(StoreError::Compacted { requested: revision, compacted: state.compacted });
    }
    // Compacting only durable history keeps a rollback of this batch correct. If the record
    // then fails to reach the log, memory is compacted and disk is not: the restarted
    // store simply has more history, which is harmless.
    state.compact(revision);
    wal::encode_compact(buf, revision);
    Ok(())
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.state.read().current)
    }

    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        crate::validate_key(&req.start)?;
        self.state.read().range(&req)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome> {
        validate_txn(&txn)?;
        self.submit(|tx| Request::Txn(txn, tx)).await.map_err(|_| StoreError::Closed)?
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.submit(|tx| Request::Compact(revision, tx)).await.map_err(|_| StoreError::Closed)?
    }

    async fn watch(&self, prefix: Bytes, after: Option<Revision>, opts: WatchOptions) -> Result<WatchStream> {
        crate::validate_key(&prefix)?;
        let after = {
            let state = self.state.read();
            let after = after.unwrap_or(state.current);
            if after + 1 < state.compacted {
                return Err(StoreError::Compacted { requested: after + 1, compacted: state.compacted });
            }
            after
        };
        let (tx, rx) = mpsc::channel(64);
        let (cancel_tx, cancel_rx) = oneshot::channel();
        let watcher = Watcher { state: self.state.clone(), published: self.published.clone(), prefix, cursor: after };
        tokio::spawn(watcher.run(tx, cancel_rx, opts.progress_interval));
        Ok(WatchStream::new(rx, Some(cancel_tx)))
    }
}

/// Revisions a watcher reads per step, so one step never holds the lock for long.
const WATCH_STEP: usize = 256;

struct Watcher {
    state: Arc<RwLock<State>>,
    published: watch::Receiver<Revision>,
    prefix: Bytes,
    /// Every matching event up to this revision has been sent.
    cursor: Revision,
}

impl Watcher {
    async fn run(
        mut self,
        tx: mpsc::Sender<Result<WatchMessage>>,
        mut cancel: oneshot::Receiver<()>,
        progress: Option<Duration>,
    ) {
        let far = Duration::from_secs(365 * 24 * 3600);
        let interval = progress.unwrap_or(far);
        let mut next_progress = tokio::time::Instant::now() + interval;
        loop {
            // Mark the published revision seen before reading, so a publish after the
            // read wakes the wait below.
            let published = *self.published.borrow_and_update();
            let step = self.state.read().events_after(&self.prefix, self.cursor, WATCH_STEP);
            let (events, cursor) = match step {
                Ok(step) => step,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let caught_up = cursor >= published;
            self.cursor = cursor;
            if !events.is_empty() {
                if tx.send(Ok(WatchMessage::Events(events))).await.is_err() {
                    return;
                }
                next_progress = tokio::time::Instant::now() + interval;
            }
            if !caught_up {
                continue;
            }
            tokio::select! {
                changed = self.published.changed() => {
                    if changed.is_err() {
                        // The writer is gone: deliver what is left, then end.
                        let rest = self.state.read().events_after(&self.prefix, self.cursor, usize::MAX);
                        if let Ok((events, _)) = rest
                            && !events.is_empty() {
                                let _ = tx.send(Ok(WatchMessage::Events(events))).await;
                            }
                        return;
                    }
                }
                _ = tokio::time::sleep_until(next_progress), if progress.is_some() => {
                    if tx.send(Ok(WatchMessage::Progress(self.cursor))).await.is_err() {
                        return;
                    }
                    next_progress = tokio::time::Instant::now() + interval;
                }
                _ = &mut cancel => return,
                _ = tx.closed() => return,
            }
        }
    }
}
