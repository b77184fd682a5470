//! The store: an MVCC key-value store that knows nothing about Kubernetes.
//!
//! Contract (every backend, checked by the conformance suite in `tests/it`):
//!
//! - One global revision, an `i64` that starts at 1 for an empty store and grows by exactly
//!   one for every committed transaction that changes at least one key. Every change in a
//!   transaction carries that transaction's revision.
//! - Reads see only committed, durable data, either at the latest revision or at any
//!   revision at or above the compaction point; reads below it fail with
//!   [`StoreError::Compacted`], reads above the current revision with
//!   [`StoreError::FutureRevision`].
//! - Writes are transactions: compares on keys' modification revisions, then puts and
//!   deletes, applied all or nothing. `create`, `update`, `delete` are transactions.
//! - A watch on a prefix from revision `after` yields every change with a revision greater
//!   than `after`, in revision order, each exactly once, and periodic progress
//!   notifications saying "everything up to revision R has been delivered". A watch that
//!   needs events removed by compaction fails with [`StoreError::Compacted`].
//! - Values larger than [`MAX_VALUE_SIZE`] are refused with [`StoreError::ValueTooLarge`].
//! - I/O failures surface as [`StoreError::Io`]; a backend never acknowledges a write that
//!   is not durable.

use std::time::Duration;

use bytes::Bytes;

pub mod embedded;
pub mod etcd;
pub mod etcd_process;

/// A store revision. Revision 0 means "nothing"; the first write gets revision 2 in etcd
/// (whose empty store is at revision 1) and likewise here, so both backends agree.
pub type Revision = i64;

/// Largest value accepted, as in etcd's default request limit (1.5 MiB).
pub const MAX_VALUE_SIZE: usize = 1536 * 1024;
/// Largest key accepted.
pub const MAX_KEY_SIZE: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("required revision {requested} has been compacted (compacted at {compacted})")]
    Compacted { requested: Revision, compacted: Revision },
    #[error("required revision {requested} is a future revision (current is {current})")]
    FutureRevision { requested: Revision, current: Revision },
    #[error("value of {size} bytes is larger than the limit of {limit} bytes")]
    ValueTooLarge { size: usize, limit: usize },
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("store is unavailable: {0}")]
    Unavailable(String),
    #[error("store is closed")]
    Closed,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// One version of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Bytes,
    pub value: Bytes,
    /// Revision of the change that created this incarnation of the key.
    pub create_revision: Revision,
    /// Revision of the change that produced this version.
    pub mod_revision: Revision,
    /// Number of changes since creation; 1 for a freshly created key.
    pub version: i64,
}

/// A condition on a key, evaluated atomically at the start of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key's modification revision equals `revision`; 0 means the key is absent.
    ModRevision { key: Bytes, revision: Revision },
    /// The key exists.
    Exists { key: Bytes },
}

impl Compare {
    pub fn key(&self) -> &Bytes {
        match self {
            Compare::ModRevision { key, .. } | Compare::Exists { key } => key,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put { key: Bytes, value: Bytes },
    Delete { key: Bytes },
}

impl Op {
    pub fn key(&self) -> &Bytes {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }
}

/// Compares, then operations applied only if every compare holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOutcome {
    /// The compares held and the ops were applied. `revision` is the new revision (or the
    /// current one if no op changed anything); `prev` holds, per op, the key's value just
    /// before the transaction.
    Committed { revision: Revision, prev: Vec<Option<KeyValue>> },
    /// A compare failed; nothing was applied. `current` holds, per compare, the key's
    /// current value.
    Failed { revision: Revision, current: Vec<Option<KeyValue>> },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeRequest {
    /// First key (inclusive).
    pub start: Bytes,
    /// Key past the last (exclusive). Empty means "only `start`".
    pub end: Bytes,
    /// Read at this revision; `None` reads at the latest.
    pub revision: Option<Revision>,
    /// At most this many keys; `None` or 0 means no limit.
    pub limit: Option<usize>,
}

impl RangeRequest {
    pub fn prefix(prefix: impl Into<Bytes>) -> Self {
        let start = prefix.into();
        let end = prefix_end(&start);
        RangeRequest { start, end, revision: None, limit: None }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    /// More keys follow in the range past the last one returned.
    pub more: bool,
    /// The revision the read was served at.
    pub revision: Revision,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// For a delete: the key, an empty value and `mod_revision` = the deletion's revision.
    pub kv: KeyValue,
    /// The key's value before this change, if it existed.
    pub prev: Option<KeyValue>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchMessage {
    /// Changes, in revision order; one message never splits a revision. The order of the
    /// changes within one revision is unspecified.
    Events(Vec<Event>),
    /// Every change up to and including this revision has been delivered.
    Progress(Revision),
}

#[derive(Clone, Debug)]
pub struct WatchOptions {
    /// How often an idle watch reports progress. `None` disables progress messages.
    pub progress_interval: Option<Duration>,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions { progress_interval: Some(Duration::from_secs(5)) }
    }
}

/// A running watch. Dropping it cancels the watch.
pub struct WatchStream {
    rx: tokio::sync::mpsc::Receiver<Result<WatchMessage>>,
    _cancel: Option<tokio::sync::oneshot::Sender<()>>,
}

impl WatchStream {
    /// A watch fed by a channel; dropping `cancel`'s receiver side's counterpart (this
    /// stream) tells the producer to stop. Backends and watch caches build streams this way.
    pub fn new(
        rx: tokio::sync::mpsc::Receiver<Result<WatchMessage>>,
        cancel: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> Self {
        WatchStream { rx, _cancel: cancel }
    }

    /// The next message; `None` once the watch has ended (after an error or shutdown).
    pub async fn next(&mut self) -> Option<Result<WatchMessage>> {
        self.rx.recv().await
    }
}

/// The store interface every backend implements.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Latest committed revision.
    async fn current_revision(&self) -> Result<Revision>;

    /// Keys in `[start, end)` (or just `start`), in key order, at one revision.
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse>;

    /// Run a transaction atomically.
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome>;

    /// Watch keys with `prefix`, yielding every change after revision `after`
    /// (`None`: after the current revision).
    async fn watch(&self, prefix: Bytes, after: Option<Revision>, opts: WatchOptions) -> Result<WatchStream>;

    /// Discard history below `revision`: afterwards reads at revisions below it and watches
    /// that need events below it fail with [`StoreError::Compacted`].
    async fn compact(&self, revision: Revision) -> Result<()>;

    /// Read one key.
    async fn get(&self, key: Bytes, revision: Option<Revision>) -> Result<(Option<KeyValue>, Revision)> {
        let resp = self.range(RangeRequest { start: key, end: Bytes::new(), revision, limit: None }).await?;
        Ok((resp.kvs.into_iter().next(), resp.revision))
    }

    /// Write unconditionally; returns the new revision.
    async fn put(&self, key: Bytes, value: Bytes) -> Result<Revision> {
        match self.txn(Txn { compares: vec![], ops: vec![Op::Put { key, value }] }).await? {
            TxnOutcome::Committed { revision, .. } => Ok(revision),
            TxnOutcome::Failed { .. } => Err(StoreError::InvalidRequest("unconditional put failed".into())),
        }
    }

    /// Create `key` if absent. `Ok(Err(current))` if it exists.
    async fn create(&self, key: Bytes, value: Bytes) -> Result<Result<Revision, KeyValue>> {
        let compares = vec![Compare::ModRevision { key: key.clone(), revision: 0 }];
        match self.txn(Txn { compares, ops: vec![Op::Put { key, value }] }).await? {
            TxnOutcome::Committed { revision, .. } => Ok(Ok(revision)),
            TxnOutcome::Failed { current, .. } => Ok(Err(first_present(current)?)),
        }
    }

    /// Replace `key` if its modification revision is still `expected`.
    /// `Ok(Err(current))` (`None` if absent) if it changed.
    async fn update(&self, key: Bytes, value: Bytes, expected: Revision) -> Result<Result<Revision, Option<KeyValue>>> {
        let compares = vec![Compare::ModRevision { key: key.clone(), revision: expected }];
        match self.txn(Txn { compares, ops: vec![Op::Put { key, value }] }).await? {
            TxnOutcome::Committed { revision, .. } => Ok(Ok(revision)),
            TxnOutcome::Failed { mut current, .. } => Ok(Err(current.pop().flatten())),
        }
    }

    /// Delete `key` if it exists and (when given) its modification revision is `expected`.
    /// Returns the deletion's revision and the deleted value, or `Ok(Err(current))` (`None`
    /// if the key is absent).
    async fn delete(
        &self,
        key: Bytes,
        expected: Option<Revision>,
    ) -> Result<Result<(Revision, KeyValue), Option<KeyValue>>> {
        let compare = match expected {
            Some(revision) => Compare::ModRevision { key: key.clone(), revision },
            None => Compare::Exists { key: key.clone() },
        };
        match self.txn(Txn { compares: vec![compare], ops: vec![Op::Delete { key }] }).await? {
            TxnOutcome::Committed { revision, mut prev } => match prev.pop().flatten() {
                Some(kv) => Ok(Ok((revision, kv))),
                None => Ok(Err(None)),
            },
            TxnOutcome::Failed { mut current, .. } => Ok(Err(current.pop().flatten())),
        }
    }
}

fn first_present(current: Vec<Option<KeyValue>>) -> Result<KeyValue> {
    current
        .into_iter()
        .flatten()
        .next()
        .ok_or_else(|| StoreError::Unavailable("compare failed but the key is absent".into()))
}

/// The smallest key greater than every key starting with `prefix` (empty if none exists).
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end.into();
        }
    }
    Bytes::new()
}

/// Checks shared by every backend before a transaction is submitted.
pub fn validate_txn(txn: &Txn) -> Result<()> {
    if txn.ops.is_empty() && txn.compares.is_empty() {
        return Err(StoreError::InvalidRequest("empty transaction".into()));
    }
    for key in txn.compares.iter().map(Compare::key).chain(txn.ops.iter().map(Op::key)) {
        validate_key(key)?;
    }
    let mut seen = std::collections::HashSet::new();
    for op in &txn.ops {
        if !seen.insert(op.key()) {
            return Err(StoreError::InvalidRequest(format!(
                "key {:?} appears in more than one operation of a transaction",
                String::from_utf8_lossy(op.key())
            )));
        }
        if let Op::Put { value, .. } = op
            && value.len() > MAX_VALUE_SIZE
        {
            return Err(StoreError::ValueTooLarge { size: value.len(), limit: MAX_VALUE_SIZE });
        }
    }
    Ok(())
}

pub fn validate_key(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(StoreError::InvalidKey("key is empty".into()));
    }
    if key.len() > MAX_KEY_SIZE {
        return Err(StoreError::InvalidKey(format!(
            "key of {} bytes is longer than the limit of {MAX_KEY_SIZE} bytes",
            key.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte_and_carries() {
        assert_eq!(prefix_end(b"abc"), Bytes::from_static(b"abd"));
        assert_eq!(prefix_end(b"a\xff"), Bytes::from_static(b"b"));
        assert_eq!(prefix_end(b"\xff\xff"), Bytes::new());
    }

    #[test]
    fn validate_rejects_duplicates_empty_keys_and_large_values() {
        let k = Bytes::from_static(b"k");
        let dup = Txn { compares: vec![], ops: vec![Op::Delete { key: k.clone() }, Op::Delete { key: k.clone() }] };
        assert!(matches!(validate_txn(&dup), Err(StoreError::InvalidRequest(_))));
        let empty = Txn { compares: vec![], ops: vec![Op::Delete { key: Bytes::new() }] };
        assert!(matches!(validate_txn(&empty), Err(StoreError::InvalidKey(_))));
        let big =
            Txn { compares: vec![], ops: vec![Op::Put { key: k, value: Bytes::from(vec![0u8; MAX_VALUE_SIZE + 1]) }] };
        assert!(matches!(validate_txn(&big), Err(StoreError::ValueTooLarge { .. })));
    }
}
