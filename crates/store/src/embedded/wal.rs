//! The write-ahead log: numbered segment files of checksummed records.
//!
//! Segment file `{seq:016x}.wal`: an 16-byte header (`ATOLWAL1` + seq, little endian), then
//! records, then zeros to the end. Segments are zero-filled and synced before they are
//! used, so appending a record and `fdatasync` touches data blocks only (no size or extent
//! metadata), which is what makes a durable append cheap.
//!
//! Record: `len: u32 | crc32c(payload): u32 | payload`, `len > 0`. A zero length marks the
//! end of the written part. Payload: tag `1` = transaction (`rev: i64`, `n: u32`, then per
//! change `kind: u8` (1 put, 2 delete), `klen: u32`, key, and for a put `vlen: u32`,
//! value), tag `2` = compaction (`rev: i64`).
//!
//! Recovery reads segments in order. In the last segment, the first record that is torn
//! (short, bad checksum, undecodable) ends the log: the tail from there is zeroed and synced
//! so that no unacknowledged bytes can ever be read as records later. Damage in any earlier
//! segment is corruption and stops the store from opening.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use bytes::Bytes;

use crate::{Revision, StoreError};

const MAGIC: &[u8; 8] = b"ATOLWAL1";
const HEADER_LEN: u64 = 16;
const RECORD_HEADER_LEN: usize = 8;
const TAG_TXN: u8 = 1;
const TAG_COMPACT: u8 = 2;
const KIND_PUT: u8 = 1;
const KIND_DELETE: u8 = 2;

/// One change inside a transaction record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Put(Bytes, Bytes),
    Delete(Bytes),
}

impl Change {
    pub(crate) fn key(&self) -> &Bytes {
        match self {
            Change::Put(key, _) | Change::Delete(key) => key,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Record {
    Txn { revision: Revision, changes: Vec<Change> },
    Compact { revision: Revision },
}

pub(crate) fn encode_txn(out: &mut Vec<u8>, revision: Revision, changes: &[Change]) {
    let start = begin_record(out);
    out.push(TAG_TXN);
    out.extend_from_slice(&revision.to_le_bytes());
    out.extend_from_slice(&(changes.len() as u32).to_le_bytes());
    for change in changes {
        match change {
            Change::Put(key, value) => {
                out.push(KIND_PUT);
                put_bytes(out, key);
                put_bytes(out, value);
            }
            Change::Delete(key) => {
                out.push(KIND_DELETE);
                put_bytes(out, key);
            }
        }
    }
    finish_record(out, start);
}

pub(crate) fn encode_compact(out: &mut Vec<u8>, revision: Revision) {
    let start = begin_record(out);
    out.push(TAG_COMPACT);
    out.extend_from_slice(&revision.to_le_bytes());
    finish_record(out, start);
}

fn begin_record(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    start
}

fn finish_record(out: &mut [u8], start: usize) {
    let payload = &out[start + RECORD_HEADER_LEN..];
    let len = payload.len() as u32;
    let crc = crc32c::crc32c(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Reads fields from a payload; every read is bounds-checked so garbage cannot panic.
struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8).and_then(|b| b.try_into().ok()).map(i64::from_le_bytes)
    }
    fn bytes(&mut self) -> Option<Bytes> {
        let n = self.u32()? as usize;
        self.take(n).map(Bytes::copy_from_slice)
    }
}

fn decode_payload(payload: &[u8]) -> Option<Record> {
    let mut c = Cursor { buf: payload };
    let record = match c.u8()? {
        TAG_TXN => {
            let revision = c.i64()?;
            let n = c.u32()? as usize;
            let mut changes = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                changes.push(match c.u8()? {
                    KIND_PUT => Change::Put(c.bytes()?, c.bytes()?),
                    KIND_DELETE => Change::Delete(c.bytes()?),
                    _ => return None,
                });
            }
            Record::Txn { revision, changes }
        }
        TAG_COMPACT => Record::Compact { revision: c.i64()? },
        _ => return None,
    };
    c.buf.is_empty().then_some(record)
}

/// What parsing one segment's bytes found.
struct Parsed {
    records: Vec<Record>,
    /// Offset just past the last good record.
    end: u64,
    /// Whether anything but zeros follows `end`.
    damaged_tail: bool,
}

fn parse_segment(data: &[u8]) -> Parsed {
    let mut records = Vec::new();
    let mut off = HEADER_LEN as usize;
    while let Some(head) = data.get(off..off + RECORD_HEADER_LEN) {
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len == 0 {
            break;
        }
        let start = off + RECORD_HEADER_LEN;
        let Some(payload) = data.get(start..start + len) else { break };
        if crc32c::crc32c(payload) != crc {
            break;
        }
        let Some(record) = decode_payload(payload) else { break };
        records.push(record);
        off = start + len;
    }
    let damaged_tail = data.get(off..).is_some_and(|rest| rest.iter().any(|&b| b != 0));
    Parsed { records, end: off as u64, damaged_tail }
}

/// What recovery found, for logs and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryInfo {
    pub segments: usize,
    pub records: usize,
    /// Bytes of a damaged final tail that were cut (zeroed), if any.
    pub cut_bytes: u64,
}

/// The open log: the segment being appended to, and the next one being prepared.
pub(crate) struct Wal {
    dir: PathBuf,
    segment_size: u64,
    file: File,
    seq: u64,
    len: u64,
    offset: u64,
    next: Option<JoinHandle<io::Result<(File, u64)>>>,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.wal"))
}

fn tmp_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.wal.tmp"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes a zero-filled, synced segment under a temporary name. It becomes part of the
/// log only when renamed, so a half-prepared file is never mistaken for a segment.
fn prepare_segment(dir: &Path, seq: u64, size: u64) -> io::Result<(File, u64)> {
    let path = tmp_path(dir, seq);
    // A half-written file would only hold on to space that is probably short already.
    write_segment(&path, seq, size).inspect_err(|_| drop(fs::remove_file(&path)))
}

fn write_segment(path: &Path, seq: u64, size: u64) -> io::Result<(File, u64)> {
    let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
    let mut header = [0u8; HEADER_LEN as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..].copy_from_slice(&seq.to_le_bytes());
    file.write_all(&header)?;
    let zeros = vec![0u8; 1 << 20];
    let mut left = size.saturating_sub(HEADER_LEN);
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    file.sync_all()?;
    Ok((file, size.max(HEADER_LEN)))
}

/// Deletes the segments numbered below `seq` (once a snapshot covers them).
pub(crate) fn remove_segments_before(dir: &Path, seq: u64) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(hex) = name.strip_suffix(".wal") else { continue };
        if u64::from_str_radix(hex, 16).is_ok_and(|s| s < seq) {
            fs::remove_file(dir.join(name))?;
        }
    }
    sync_dir(dir)
}

fn install_segment(dir: &Path, seq: u64) -> io::Result<()> {
    fs::rename(tmp_path(dir, seq), segment_path(dir, seq))?;
    sync_dir(dir)
}

impl Wal {
    /// Opens (or creates) the log in `dir`, calling `apply` for every record in order.
    pub(crate) fn open(
        dir: &Path,
        segment_size: u64,
        mut apply: impl FnMut(Record) -> Result<(), StoreError>,
    ) -> Result<(Wal, RecoveryInfo), StoreError> {
        fs::create_dir_all(dir)?;
        let mut seqs = Vec::new();
        for entry in fs::read_dir(dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".wal.tmp") {
                fs::remove_file(dir.join(name))?;
            } else if let Some(hex) = name.strip_suffix(".wal") {
                let seq = u64::from_str_radix(hex, 16)
                    .map_err(|_| StoreError::Corrupt(format!("unexpected file {name} in the log directory")))?;
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        let mut info = RecoveryInfo { segments: seqs.len(), ..RecoveryInfo::default() };
        if seqs.is_empty() {
            let (file, len) = prepare_segment(dir, 1, segment_size)?;
            install_segment(dir, 1)?;
            let wal = Wal::with_file(dir, segment_size, file, 1, len, HEADER_LEN);
            info.segments = 1;
            return Ok((wal, info));
        }
        for pair in seqs.windows(2) {
            if pair[1] != pair[0] + 1 {
                return Err(StoreError::Corrupt(format!("log segment {:016x} is missing", pair[0] + 1)));
            }
        }
        let last_seq = *seqs.last().unwrap_or(&1);
        let mut tail = None;
        for &seq in &seqs {
            let path = segment_path(dir, seq);
            let data = fs::read(&path)?;
            if data.len() < HEADER_LEN as usize || &data[..8] != MAGIC || data[8..16] != seq.to_le_bytes() {
                return Err(StoreError::Corrupt(format!("log segment {} has a bad header", path.display())));
            }
            let parsed = parse_segment(&data);
            info.records += parsed.records.len();
            for record in parsed.records {
                apply(record)?;
            }
            if seq == last_seq {
                tail = Some((path, parsed.end, data.len() as u64, parsed.damaged_tail));
            } else if parsed.damaged_tail {
                return Err(StoreError::Corrupt(format!(
                    "log segment {} is damaged at offset {} and is not the last segment",
                    path.display(),
                    parsed.end
                )));
            }
        }
        let Some((path, end, len, damaged)) = tail else {
            return Err(StoreError::Corrupt("log has no segments".into()));
        };
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        if damaged {
            // Everything past the last good record was never acknowledged (its sync did
            // not complete); zero it so it can never be read back as a record.
            let zeros = vec![0u8; (len - end).min(1 << 20) as usize];
            let mut off = end;
            while off < len {
                let n = (len - off).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..n], off)?;
                off += n as u64;
            }
            file.sync_data()?;
            info.cut_bytes = len - end;
            tracing::warn!(segment = %path.display(), offset = end, "cut a damaged log tail");
        }
        Ok((Wal::with_file(dir, segment_size, file, last_seq, len, end), info))
    }

    fn with_file(dir: &Path, segment_size: u64, file: File, seq: u64, len: u64, offset: u64) -> Wal {
        let mut wal = Wal { dir: dir.to_path_buf(), segment_size, file, seq, len, offset, next: None };
        wal.maybe_prepare_next();
        wal
    }

    /// Once the current segment is half full, starts zero-filling the next one in the
    /// background so that moving to it costs a rename, not a 64 MiB write.
    fn maybe_prepare_next(&mut self) {
        if self.next.is_some() || self.offset < self.len / 2 {
            return;
        }
        let (dir, seq, size) = (self.dir.clone(), self.seq + 1, self.segment_size);
        self.next = Some(std::thread::spawn(move || prepare_segment(&dir, seq, size)));
    }

    /// Sequence number of the segment being appended to.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// Makes room for `need` bytes, moving to the next segment if this one is full.
    /// Nothing is written to the current segment if this fails.
    pub(crate) fn reserve(&mut self, need: u64) -> io::Result<()> {
        if self.offset + need <= self.len {
            return Ok(());
        }
        let seq = self.seq + 1;
        let prepared = match self.next.take() {
            Some(handle) => handle.join().unwrap_or_else(|_| Err(io::Error::other("segment preparation panicked"))),
            None => Err(io::Error::other("no segment prepared")),
        };
        let (file, len) = match prepared {
            Ok((file, len)) if len >= need + HEADER_LEN => (file, len),
            // Too small (a huge batch) or the background attempt failed: try once here.
            _ => prepare_segment(&self.dir, seq, self.segment_size.max(need + HEADER_LEN))?,
        };
        install_segment(&self.dir, seq)?;
        self.file = file;
        self.seq = seq;
        self.len = len;
        self.offset = HEADER_LEN;
        Ok(())
    }

    /// Appends already-encoded records and makes them durable.
    pub(crate) fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, self.offset)?;
        self.file.sync_data()?;
        self.offset += buf.len() as u64;
        self.maybe_prepare_next();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let changes = vec![
            Change::Put(Bytes::from_static(b"a"), Bytes::from_static(b"1")),
            Change::Delete(Bytes::from_static(b"b")),
        ];
        let mut buf = vec![0u8; HEADER_LEN as usize];
        encode_txn(&mut buf, 7, &changes);
        encode_compact(&mut buf, 5);
        buf.extend_from_slice(&[0u8; 32]);
        let parsed = parse_segment(&buf);
        assert_eq!(parsed.records, vec![Record::Txn { revision: 7, changes }, Record::Compact { revision: 5 }]);
        assert!(!parsed.damaged_tail);
    }

    #[test]
    fn a_flipped_bit_ends_the_log_and_marks_the_tail_damaged() {
        let mut buf = vec![0u8; HEADER_LEN as usize];
        encode_txn(&mut buf, 2, &[Change::Delete(Bytes::from_static(b"x"))]);
        let first_end = buf.len();
        encode_txn(&mut buf, 3, &[Change::Delete(Bytes::from_static(b"y"))]);
        let last = buf.len() - 1;
        buf[last] ^= 1;
        let parsed = parse_segment(&buf);
        assert_eq!(parsed.records.len(), 1);
        assert_eq!(parsed.end, first_end as u64);
        assert!(parsed.damaged_tail);
    }

    #[test]
    fn garbage_payloads_do_not_panic() {
        for len in 0..64 {
            let payload: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let _ = decode_payload(&payload);
        }
        // A count claiming more changes than bytes exist.
        let mut p = vec![TAG_TXN];
        p.extend_from_slice(&1i64.to_le_bytes());
        p.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_payload(&p), None);
    }
}
