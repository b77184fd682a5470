//! The etcd backend: the store contract over etcd's v3 API. Revisions are etcd's own.
//!
//! etcd must accept requests of at least [`crate::MAX_VALUE_SIZE`] plus overhead
//! (`--max-request-bytes=2097152`); its default of 1.5 MiB would refuse the largest values
//! the contract allows.

use std::time::Duration;

use bytes::Bytes;
use etcd_client::{
    Client, CompactionOptions, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, KvClient, PutOptions,
    TxnOp, TxnOpResponse, WatchClient,
};
use tokio::sync::{mpsc, oneshot};

use crate::{
    Compare, Event, EventKind, KeyValue, Op, RangeRequest, RangeResponse, Result, Revision, Store, StoreError, Txn,
    TxnOutcome, WatchMessage, WatchOptions, WatchStream, prefix_end, validate_key, validate_txn,
};

#[derive(Clone)]
pub struct EtcdStore {
    kv: KvClient,
    watch: WatchClient,
}

/// The largest answer taken from etcd. gRPC clients refuse messages over 4 MiB by default,
/// but one unpaged range or one watch response (etcd batches events) is routinely larger:
/// 5,000 nodes are ~16 MB. etcd bounds what it sends by its own limit (2 GiB); so does this,
/// as Kubernetes' etcd client does.
const MAX_ANSWER_BYTES: usize = i32::MAX as usize;

impl EtcdStore {
    pub async fn connect(endpoints: &[String]) -> Result<EtcdStore> {
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(30))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let client = Client::connect(endpoints, Some(opts)).await.map_err(|e| unavailable(&e))?;
        Ok(EtcdStore {
            kv: client.kv_client().max_decoding_message_size(MAX_ANSWER_BYTES),
            watch: client.watch_client().max_decoding_message_size(MAX_ANSWER_BYTES),
        })
    }

    /// Turns an etcd error into the contract's error; `requested` is the revision the
    /// request named, if any.
    async fn error(&self, e: etcd_client::Error, requested: Option<Revision>) -> StoreError {
        let message = e.to_string();
        let requested = requested.unwrap_or(0);
        if message.contains("required revision has been compacted") {
            // etcd does not say where the compaction point is.
            StoreError::Compacted { requested, compacted: 0 }
        } else if message.contains("required revision is a future revision") {
            let current = self.current_revision().await.unwrap_or(0);
            StoreError::FutureRevision { requested, current }
        } else if message.contains("request is too large") {
            StoreError::ValueTooLarge { size: 0, limit: crate::MAX_VALUE_SIZE }
        } else {
            unavailable(&e)
        }
    }
}

fn unavailable(e: &etcd_client::Error) -> StoreError {
    StoreError::Unavailable(format!("etcd: {e}"))
}

fn convert(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: Bytes::copy_from_slice(kv.key()),
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
    }
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<Revision> {
    header.map(|h| h.revision()).ok_or_else(|| StoreError::Unavailable("etcd response without a header".into()))
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn current_revision(&self) -> Result<Revision> {
        let resp = self.kv.clone().get(b"\0".to_vec(), Some(GetOptions::new().with_count_only())).await;
        match resp {
            Ok(resp) => header_revision(resp.header()),
            Err(e) => Err(unavailable(&e)),
        }
    }

    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        validate_key(&req.start)?;
        let requested = req.revision.filter(|&r| r > 0);
        if !req.end.is_empty() && req.end <= req.start {
            let revision = match requested {
                Some(r) => r,
                None => self.current_revision().await?,
            };
            return Ok(RangeResponse { kvs: Vec::new(), more: false, revision });
        }
        let mut opts = GetOptions::new();
        if !req.end.is_empty() {
            opts = opts.with_range(req.end.to_vec());
        }
        if let Some(limit) = req.limit.filter(|&l| l > 0) {
            opts = opts.with_limit(limit as i64);
        }
        if let Some(revision) = requested {
            opts = opts.with_revision(revision);
        }
        let resp = match self.kv.clone().get(req.start.to_vec(), Some(opts)).await {
            Ok(resp) => resp,
            Err(e) => return Err(self.error(e, requested).await),
        };
        let revision = match requested {
            Some(r) => r,
            None => header_revision(resp.header())?,
        };
        Ok(RangeResponse { kvs: resp.kvs().iter().map(convert).collect(), more: resp.more(), revision })
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome> {
        validate_txn(&txn)?;
        let compares: Vec<etcd_client::Compare> = txn
            .compares
            .iter()
            .map(|c| match c {
                Compare::ModRevision { key, revision } => {
                    etcd_client::Compare::mod_revision(key.to_vec(), CompareOp::Equal, *revision)
                }
                Compare::Exists { key } => etcd_client::Compare::create_revision(key.to_vec(), CompareOp::Greater, 0),
            })
            .collect();
        let success: Vec<TxnOp> = txn
            .ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value } => {
                    TxnOp::put(key.to_vec(), value.to_vec(), Some(PutOptions::new().with_prev_key()))
                }
                Op::Delete { key } => TxnOp::delete(key.to_vec(), Some(DeleteOptions::new().with_prev_key())),
            })
            .collect();
        let failure: Vec<TxnOp> = txn.compares.iter().map(|c| TxnOp::get(c.key().to_vec(), None)).collect();
        let request = etcd_client::Txn::new().when(compares).and_then(success).or_else(failure);
        let resp = match self.kv.clone().txn(request).await {
            Ok(resp) => resp,
            Err(e) => return Err(self.error(e, None).await),
        };
        let revision = header_revision(resp.header())?;
        let results = resp.op_responses();
        if resp.succeeded() {
            let prev = results
                .iter()
                .map(|r| match r {
                    TxnOpResponse::Put(p) => p.prev_key().map(convert),
                    TxnOpResponse::Delete(d) => d.prev_kvs().first().map(convert),
                    _ => None,
                })
                .collect();
            Ok(TxnOutcome::Committed { revision, prev })
        } else {
            let current = results
                .iter()
                .map(|r| match r {
                    TxnOpResponse::Get(g) => g.kvs().first().map(convert),
                    _ => None,
                })
                .collect();
            Ok(TxnOutcome::Failed { revision, current })
        }
    }

    async fn watch(&self, prefix: Bytes, after: Option<Revision>, opts: WatchOptions) -> Result<WatchStream> {
        validate_key(&prefix)?;
        let mut end = prefix_end(&prefix).to_vec();
        if end.is_empty() {
            end = vec![0]; // every key from `prefix` on
        }
        let mut wopts = etcd_client::WatchOptions::new().with_range(end).with_prev_key().with_progress_notify();
        if let Some(after) = after {
            wopts = wopts.with_start_revision(after + 1);
        }
        let stream = match self.watch.clone().watch(prefix.to_vec(), Some(wopts)).await {
            Ok(stream) => stream,
            Err(e) => return Err(self.error(e, after.map(|a| a + 1)).await),
        };
        let (tx, rx) = mpsc::channel(64);
        let (cancel_tx, cancel_rx) = oneshot::channel();
        tokio::spawn(forward_watch(stream, tx, cancel_rx, opts.progress_interval, after.map_or(0, |a| a + 1)));
        Ok(WatchStream::new(rx, Some(cancel_tx)))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let opts = CompactionOptions::new().with_physical();
        match self.kv.clone().compact(revision, Some(opts)).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.error(e, Some(revision)).await),
        }
    }
}

fn convert_event(e: &etcd_client::Event) -> Option<Event> {
    let kv = convert(e.kv()?);
    let kind = match e.event_type() {
        EventType::Put => EventKind::Put,
        EventType::Delete => EventKind::Delete,
    };
    Some(Event { kind, kv, prev: e.prev_kv().map(convert) })
}

/// Moves one etcd watch's responses into the contract's messages until the watch ends,
/// is cancelled, or its receiver goes away.
async fn forward_watch(
    stream: etcd_client::WatchStream,
    tx: mpsc::Sender<Result<WatchMessage>>,
    mut cancel: oneshot::Receiver<()>,
    progress: Option<Duration>,
    start: Revision,
) {
    let (mut requests, mut responses) = stream.split();
    let interval = progress.unwrap_or(Duration::from_secs(3600));
    let mut next_progress = tokio::time::Instant::now() + interval;
    loop {
        let message = tokio::select! {
            _ = &mut cancel => return,
            _ = tx.closed() => return,
            _ = tokio::time::sleep_until(next_progress), if progress.is_some() => {
                // etcd answers with an empty response once the watch is caught up.
                if requests.request_progress().await.is_err() {
                    let _ = tx.send(Err(StoreError::Unavailable("etcd watch stream closed".into()))).await;
                    return;
                }
                next_progress = tokio::time::Instant::now() + interval;
                continue;
            }
            message = responses.message() => message,
        };
        let resp = match message {
            Ok(Some(resp)) => resp,
            Ok(None) => {
                let _ = tx.send(Err(StoreError::Unavailable("etcd closed the watch".into()))).await;
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(unavailable(&e))).await;
                return;
            }
        };
        if resp.canceled() {
            let err = if resp.compact_revision() > 0 {
                StoreError::Compacted { requested: start, compacted: resp.compact_revision() }
            } else {
                StoreError::Unavailable(format!("etcd cancelled the watch: {}", resp.cancel_reason()))
            };
            let _ = tx.send(Err(err)).await;
            return;
        }
        let message = if resp.events().is_empty() {
            if resp.created() {
                continue;
            }
            match resp.header() {
                Some(h) => WatchMessage::Progress(h.revision()),
                None => continue,
            }
        } else {
            next_progress = tokio::time::Instant::now() + interval;
            WatchMessage::Events(resp.events().iter().filter_map(convert_event).collect())
        };
        if tx.send(Ok(message)).await.is_err() {
            return;
        }
    }
}
