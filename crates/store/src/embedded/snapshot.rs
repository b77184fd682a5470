//! Snapshots: the whole in-memory state at one revision, so that start-up replays only the
//! log written after it, and log segments before it can be deleted.
//!
//! File `{revision:016x}.snap`: `ATOLSNP1`, then `current: i64`, `compacted: i64`,
//! `keys: u64`, and per key `klen: u32`, key, `versions: u32`, and per version
//! `mod: i64`, `create: i64`, `version: i64`, `has_value: u8`, [`vlen: u32`, value]; then a
//! CRC32C of everything before it. Written under a temporary name, synced, then renamed,
//! so a snapshot file is either whole or absent.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::state::{Image, Version};
use crate::{Revision, StoreError};

const MAGIC: &[u8; 8] = b"ATOLSNP1";

fn path_for(dir: &Path, revision: Revision) -> PathBuf {
    dir.join(format!("{revision:016x}.snap"))
}

/// A writer that checksums what passes through it.
struct Summing<W> {
    inner: W,
    crc: u32,
}

impl<W: Write> Write for Summing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `image` durably and removes older snapshots.
pub(crate) fn write(dir: &Path, image: &Image) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{:016x}.snap.tmp", image.current));
    let file = File::create(&tmp)?;
    let mut w = Summing { inner: BufWriter::with_capacity(1 << 20, file), crc: 0 };
    w.write_all(MAGIC)?;
    w.write_all(&image.current.to_le_bytes())?;
    w.write_all(&image.compacted.to_le_bytes())?;
    w.write_all(&(image.index.len() as u64).to_le_bytes())?;
    for (key, versions) in &image.index {
        w.write_all(&(key.len() as u32).to_le_bytes())?;
        w.write_all(key)?;
        w.write_all(&(versions.len() as u32).to_le_bytes())?;
        for v in versions {
            w.write_all(&v.mod_revision.to_le_bytes())?;
            w.write_all(&v.create_revision.to_le_bytes())?;
            w.write_all(&v.version.to_le_bytes())?;
            match &v.value {
                Some(value) => {
                    w.write_all(&[1])?;
                    w.write_all(&(value.len() as u32).to_le_bytes())?;
                    w.write_all(value)?;
                }
                None => w.write_all(&[0])?,
            }
        }
    }
    let crc = w.crc;
    let mut inner = w.inner;
    inner.write_all(&crc.to_le_bytes())?;
    let file = inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    fs::rename(&tmp, path_for(dir, image.current))?;
    File::open(dir)?.sync_all()?;
    for old in list(dir)? {
        if old < image.current {
            fs::remove_file(path_for(dir, old))?;
        }
    }
    Ok(())
}

/// Revisions of the snapshots present, ascending; removes leftover temporary files.
fn list(dir: &Path) -> io::Result<Vec<Revision>> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".snap.tmp") {
            fs::remove_file(dir.join(name))?;
        } else if let Some(rev) = name.strip_suffix(".snap").and_then(|h| i64::from_str_radix(h, 16).ok()) {
            out.push(rev);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Loads the newest snapshot, if any.
pub(crate) fn load_latest(dir: &Path) -> Result<Option<Image>, StoreError> {
    let Some(&revision) = list(dir)?.last() else { return Ok(None) };
    let path = path_for(dir, revision);
    let data = fs::read(&path)?;
    let corrupt = || StoreError::Corrupt(format!("snapshot {} is damaged", path.display()));
    if data.len() < MAGIC.len() + 4 || &data[..8] != MAGIC {
        return Err(corrupt());
    }
    let (body, sum) = data.split_at(data.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes([sum[0], sum[1], sum[2], sum[3]]) {
        return Err(corrupt());
    }
    decode(&body[8..]).filter(|image| image.current == revision).map(Some).ok_or_else(corrupt)
}

fn decode(mut buf: &[u8]) -> Option<Image> {
    fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = buf.split_at_checked(n)?;
        *buf = rest;
        Some(head)
    }
    fn i64_(buf: &mut &[u8]) -> Option<i64> {
        take(buf, 8)?.try_into().ok().map(i64::from_le_bytes)
    }
    fn u32_(buf: &mut &[u8]) -> Option<u32> {
        take(buf, 4)?.try_into().ok().map(u32::from_le_bytes)
    }
    let current = i64_(&mut buf)?;
    let compacted = i64_(&mut buf)?;
    let keys = u64::from_le_bytes(take(&mut buf, 8)?.try_into().ok()?);
    let mut index = std::collections::BTreeMap::new();
    for _ in 0..keys {
        let klen = u32_(&mut buf)? as usize;
        let key = Bytes::copy_from_slice(take(&mut buf, klen)?);
        let n = u32_(&mut buf)? as usize;
        let mut versions = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let mod_revision = i64_(&mut buf)?;
            let create_revision = i64_(&mut buf)?;
            let version = i64_(&mut buf)?;
            let value = match take(&mut buf, 1)?[0] {
                0 => None,
                1 => {
                    let vlen = u32_(&mut buf)? as usize;
                    Some(Bytes::copy_from_slice(take(&mut buf, vlen)?))
                }
                _ => return None,
            };
            versions.push(Version { mod_revision, create_revision, version, value });
        }
        index.insert(key, versions);
    }
    buf.is_empty().then_some(Image { index, current, compacted })
}
