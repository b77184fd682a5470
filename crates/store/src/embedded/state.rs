//! The in-memory MVCC state: every key's versions since the compaction point, and the
//! change log by revision that watches read from.
//!
//! The writer applies a batch here *before* it is durable, with revisions above
//! `current`; readers never look above `current`, so those pending versions are invisible
//! until the writer publishes them (or rolls them back if the log write fails).

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;

use super::wal::Change;
use crate::{Event, EventKind, KeyValue, RangeRequest, RangeResponse, Result, Revision, StoreError};

#[derive(Clone, Debug)]
pub(crate) struct Version {
    pub(crate) mod_revision: Revision,
    pub(crate) create_revision: Revision,
    pub(crate) version: i64,
    /// `None`: the key was deleted at `mod_revision`.
    pub(crate) value: Option<Bytes>,
}

/// What a snapshot holds: the index, from which the change log can be rebuilt.
pub(crate) struct Image {
    pub(crate) index: BTreeMap<Bytes, Vec<Version>>,
    pub(crate) current: Revision,
    pub(crate) compacted: Revision,
}

pub(crate) struct State {
    index: BTreeMap<Bytes, Vec<Version>>,
    /// Changes by revision; `log[i]` holds revision `log_start + i`.
    log: VecDeque<Arc<[Event]>>,
    log_start: Revision,
    /// Latest durable, visible revision.
    pub(crate) current: Revision,
    /// Reads below this revision fail; watches needing events below it fail.
    pub(crate) compacted: Revision,
}

fn kv(key: &Bytes, v: &Version) -> Option<KeyValue> {
    v.value.as_ref().map(|value| KeyValue {
        key: key.clone(),
        value: value.clone(),
        create_revision: v.create_revision,
        mod_revision: v.mod_revision,
        version: v.version,
    })
}

fn event(key: &Bytes, v: &Version, prev: Option<KeyValue>) -> Event {
    let (kind, value) = match &v.value {
        Some(value) => (EventKind::Put, value.clone()),
        None => (EventKind::Delete, Bytes::new()),
    };
    let kv = KeyValue {
        key: key.clone(),
        value,
        create_revision: v.create_revision,
        mod_revision: v.mod_revision,
        version: v.version,
    };
    Event { kind, kv, prev }
}

fn visible_at(versions: &[Version], revision: Revision) -> Option<&Version> {
    versions.iter().rev().find(|v| v.mod_revision <= revision)
}

impl State {
    pub(crate) fn new() -> State {
        // As in etcd, an empty store is at revision 1 and the first write gets 2.
        State { index: BTreeMap::new(), log: VecDeque::new(), log_start: 2, current: 1, compacted: 0 }
    }

    /// A copy of the published state (values are shared, not copied). Only called
    /// between batches, when nothing is pending.
    pub(crate) fn image(&self) -> Image {
        Image { index: self.index.clone(), current: self.current, compacted: self.compacted }
    }

    pub(crate) fn from_image(image: Image) -> Result<State> {
        let Image { index, current, compacted } = image;
        let log_start = compacted.max(2);
        let mut by_revision: BTreeMap<Revision, Vec<Event>> = BTreeMap::new();
        for (key, versions) in &index {
            for (i, v) in versions.iter().enumerate() {
                if v.mod_revision < log_start {
                    continue;
                }
                let prev = i.checked_sub(1).and_then(|p| kv(key, &versions[p]));
                by_revision.entry(v.mod_revision).or_default().push(event(key, v, prev));
            }
        }
        // Every revision from the log's start has at least one version in the index
        // (compaction keeps each key's versions from the compaction point on).
        let expected = (current - log_start + 1).max(0) as usize;
        let contiguous = by_revision.keys().copied().eq(log_start..log_start + expected as Revision);
        if !contiguous {
            return Err(StoreError::Corrupt(format!(
                "snapshot at {current} does not hold every revision from {log_start}"
            )));
        }
        let log = by_revision.into_values().map(Arc::from).collect();
        Ok(State { index, log, log_start, current, compacted })
    }

    /// The newest revision including pending (not yet durable) ones.
    pub(crate) fn head(&self) -> Revision {
        self.log_start + self.log.len() as Revision - 1
    }

    /// The key's newest value, pending versions included (for the writer only).
    pub(crate) fn latest(&self, key: &Bytes) -> Option<KeyValue> {
        self.index.get(key).and_then(|vs| vs.last()).and_then(|v| kv(key, v))
    }

    /// Applies one transaction's changes at revision `head() + 1`. Deleting an absent key
    /// is not a change; callers drop such deletes first. Returns the new revision.
    pub(crate) fn apply(&mut self, changes: &[Change]) -> Revision {
        let revision = self.head() + 1;
        let mut events = Vec::with_capacity(changes.len());
        for change in changes {
            let (key, value) = match change {
                Change::Put(k, v) => (k, Some(v.clone())),
                Change::Delete(k) => (k, None),
            };
            let versions = self.index.entry(key.clone()).or_default();
            let prev = versions.last().and_then(|v| kv(key, v));
            let version = match (&prev, &value) {
                (_, None) => Version { mod_revision: revision, create_revision: 0, version: 0, value: None },
                (Some(p), Some(_)) => Version {
                    mod_revision: revision,
                    create_revision: p.create_revision,
                    version: p.version + 1,
                    value,
                },
                (None, Some(_)) => Version { mod_revision: revision, create_revision: revision, version: 1, value },
            };
            events.push(event(key, &version, prev));
            versions.push(version);
        }
        self.log.push_back(events.into());
        revision
    }

    /// Removes every version above `current` (a batch whose write failed).
    pub(crate) fn roll_back(&mut self) {
        let keep = (self.current - self.log_start + 1).max(0) as usize;
        while self.log.len() > keep {
            let Some(events) = self.log.pop_back() else { break };
            for event in events.iter() {
                if let Some(versions) = self.index.get_mut(&event.kv.key) {
                    versions.retain(|v| v.mod_revision <= self.current);
                    if versions.is_empty() {
                        self.index.remove(&event.kv.key);
                    }
                }
            }
        }
    }

    /// Forgets history below `revision`. Each key keeps its last version older than
    /// `revision` (what reads at `revision` see, and the `prev` of a change at exactly
    /// `revision`) and everything after; an old deletion marker is dropped.
    pub(crate) fn compact(&mut self, revision: Revision) {
        self.index.retain(|_, versions| {
            let first_kept = versions.iter().rposition(|v| v.mod_revision < revision).unwrap_or(0);
            versions.drain(..first_kept);
            if versions.first().is_some_and(|v| v.value.is_none() && v.mod_revision < revision) {
                versions.remove(0);
            }
            // A key overwritten often would otherwise keep room for its whole old history.
            if versions.capacity() > 2 * versions.len() + 4 {
                versions.shrink_to_fit();
            }
            !versions.is_empty()
        });
        while self.log_start < revision && !self.log.is_empty() {
            self.log.pop_front();
            self.log_start += 1;
        }
        if self.log.capacity() > 2 * self.log.len() + 64 {
            self.log.shrink_to_fit();
        }
        self.compacted = revision;
    }

    pub(crate) fn read_revision(&self, requested: Option<Revision>) -> Result<Revision> {
        match requested {
            None => Ok(self.current),
            Some(r) if r <= 0 => Ok(self.current),
            Some(r) if r > self.current => Err(StoreError::FutureRevision { requested: r, current: self.current }),
            Some(r) if r < self.compacted => Err(StoreError::Compacted { requested: r, compacted: self.compacted }),
            Some(r) => Ok(r),
        }
    }

    pub(crate) fn range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        let revision = self.read_revision(req.revision)?;
        if req.end.is_empty() {
            let kvs = self
                .index
                .get(&req.start)
                .and_then(|vs| visible_at(vs, revision))
                .and_then(|v| kv(&req.start, v))
                .into_iter()
                .collect();
            return Ok(RangeResponse { kvs, more: false, revision });
        }
        if req.end <= req.start {
            return Ok(RangeResponse { kvs: Vec::new(), more: false, revision });
        }
        let limit = req.limit.filter(|&l| l > 0).unwrap_or(usize::MAX);
        let mut kvs = Vec::new();
        let mut more = false;
        let bounds = (Bound::Included(&req.start), Bound::Excluded(&req.end));
        for (key, versions) in self.index.range::<Bytes, _>(bounds) {
            let Some(found) = visible_at(versions, revision).and_then(|v| kv(key, v)) else { continue };
            if kvs.len() == limit {
                more = true;
                break;
            }
            kvs.push(found);
        }
        Ok(RangeResponse { kvs, more, revision })
    }

    /// Events under `prefix` with revisions in `(after, up_to]`, reading at most
    /// `max_revisions` revisions. Returns them and the last revision examined.
    pub(crate) fn events_after(
        &self,
        prefix: &[u8],
        after: Revision,
        max_revisions: usize,
    ) -> Result<(Vec<Event>, Revision)> {
        if after + 1 < self.compacted {
            return Err(StoreError::Compacted { requested: after + 1, compacted: self.compacted });
        }
        let up_to = self.current.min(after.saturating_add(max_revisions as Revision));
        let mut out = Vec::new();
        let mut revision = after.max(self.log_start - 1);
        while revision < up_to {
            revision += 1;
            let Some(events) = self.log.get((revision - self.log_start) as usize) else { break };
            out.extend(events.iter().filter(|e| e.kv.key.starts_with(prefix)).cloned());
        }
        Ok((out, up_to.max(after)))
    }
}
