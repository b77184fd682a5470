//! What only the embedded backend has: its log on disk and recovery from it.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use store::embedded::{EmbeddedOptions, EmbeddedStore};
use store::{RangeRequest, Store, StoreError};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn segments(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> =
        fs::read_dir(dir.join("wal"))?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    out.retain(|p| p.extension().is_some_and(|e| e == "wal"));
    out.sort();
    Ok(out)
}

/// Offset just past the last non-zero byte of a segment: the end of its written records.
fn written_end(path: &Path) -> Result<u64> {
    let data = fs::read(path)?;
    Ok(data.iter().rposition(|&b| b != 0).map_or(0, |i| i as u64 + 1))
}

async fn all(s: &EmbeddedStore) -> Result<Vec<(Bytes, Bytes, i64)>> {
    let r = s.range(RangeRequest::prefix(b("/"))).await?;
    Ok(r.kvs.into_iter().map(|kv| (kv.key, kv.value, kv.mod_revision)).collect())
}

#[tokio::test]
async fn reopening_keeps_every_write_revision_and_compaction() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let before;
    {
        let s = EmbeddedStore::open(dir.path())?;
        for i in 0..50 {
            s.put(b(&format!("/k/{}", i % 7)), b(&i.to_string())).await?;
        }
        s.delete(b("/k/3"), None).await?.unwrap();
        s.compact(20).await?;
        before = all(&s).await?;
    }
    let s = EmbeddedStore::open(dir.path())?;
    ensure!(s.recovery().cut_bytes == 0);
    ensure!(all(&s).await? == before);
    ensure!(s.current_revision().await? == 52);
    ensure!(matches!(s.get(b("/k/1"), Some(19)).await, Err(StoreError::Compacted { .. })));
    ensure!(s.put(b("/k/new"), b("x")).await? == 53, "revisions continue without a gap");
    Ok(())
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_never_served() -> Result<()> {
    let dir = tempfile::tempdir()?;
    {
        let s = EmbeddedStore::open(dir.path())?;
        for i in 0..10 {
            s.put(b(&format!("/t/{i}")), b("value")).await?;
        }
    }
    // Tear the last record: flip a byte in its payload.
    let seg = segments(dir.path())?.pop().context("a segment")?;
    let end = written_end(&seg)?;
    let f = OpenOptions::new().write(true).open(&seg)?;
    f.write_all_at(&[0xee], end - 2)?;
    drop(f);
    let s = EmbeddedStore::open(dir.path())?;
    ensure!(s.recovery().cut_bytes > 0, "the damaged tail must be reported as cut");
    let keys: Vec<_> = all(&s).await?.into_iter().map(|(k, _, _)| k).collect();
    ensure!(keys.len() == 9 && !keys.contains(&b("/t/9")), "keys after recovery: {keys:?}");
    ensure!(s.current_revision().await? == 10);
    ensure!(s.put(b("/t/after"), b("v")).await? == 11);
    Ok(())
}

#[tokio::test]
async fn records_after_a_cut_are_not_resurrected() -> Result<()> {
    // Three records; the middle one is damaged, as when a crash tears a multi-record write
    // whose later sectors reached the disk. The third was never acknowledged and must not
    // come back after a later write of the same length lands in the middle one's place.
    let dir = tempfile::tempdir()?;
    let seg;
    let (second_start, second_end);
    {
        let s = EmbeddedStore::open(dir.path())?;
        s.put(b("/r/a"), b("first")).await?;
        seg = segments(dir.path())?.pop().context("a segment")?;
        second_start = written_end(&seg)?;
        s.put(b("/r/b"), b("secnd")).await?;
        second_end = written_end(&seg)?;
        s.put(b("/r/c"), b("third")).await?;
    }
    let f = OpenOptions::new().write(true).open(&seg)?;
    f.write_all_at(&[0xee], second_end - 1)?;
    drop(f);
    {
        let s = EmbeddedStore::open(dir.path())?;
        ensure!(s.recovery().cut_bytes > 0);
        ensure!(all(&s).await?.len() == 1);
        // Same key and value length as the damaged record, so it ends exactly where it did.
        ensure!(s.put(b("/r/d"), b("fresh")).await? == 3);
        ensure!(written_end(&seg)? == second_end, "the new record replaced the damaged one in place");
        ensure!(second_start < second_end);
    }
    let s = EmbeddedStore::open(dir.path())?;
    let keys: Vec<_> = all(&s).await?.into_iter().map(|(k, _, r)| (k, r)).collect();
    ensure!(keys == vec![(b("/r/a"), 2), (b("/r/d"), 3)], "after reopening: {keys:?}");
    Ok(())
}

#[tokio::test]
async fn the_log_rotates_through_segments_and_replays_them_all() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let opts = EmbeddedOptions { segment_size: 64 << 10, ..EmbeddedOptions::default() };
    let value = Bytes::from(vec![b'v'; 3000]);
    {
        let s = EmbeddedStore::open_with(dir.path(), opts.clone())?;
        for i in 0..100 {
            s.put(b(&format!("/s/{i:03}")), value.clone()).await?;
        }
        // One value bigger than a whole segment gets a segment of its own size.
        s.put(b("/s/huge"), Bytes::from(vec![b'h'; 100 << 10])).await?;
    }
    ensure!(segments(dir.path())?.len() >= 5, "expected several segments");
    let s = EmbeddedStore::open_with(dir.path(), opts)?;
    let kvs = all(&s).await?;
    ensure!(kvs.len() == 101);
    ensure!(kvs.iter().map(|(_, _, r)| *r).max() == Some(102));
    Ok(())
}

#[tokio::test]
async fn a_data_directory_opens_only_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let _first = EmbeddedStore::open(dir.path())?;
    match EmbeddedStore::open(dir.path()) {
        Err(StoreError::Unavailable(msg)) => ensure!(msg.contains("in use"), "message: {msg}"),
        Err(e) => bail!("unexpected error {e}"),
        Ok(_) => bail!("a second open of the same directory succeeded"),
    }
    Ok(())
}

#[tokio::test]
async fn a_missing_segment_is_corruption_not_silent_loss() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let opts = EmbeddedOptions { segment_size: 16 << 10, ..EmbeddedOptions::default() };
    {
        let s = EmbeddedStore::open_with(dir.path(), opts.clone())?;
        for i in 0..40 {
            s.put(b(&format!("/m/{i}")), Bytes::from(vec![b'x'; 2000])).await?;
        }
    }
    let segs = segments(dir.path())?;
    ensure!(segs.len() >= 3);
    fs::remove_file(&segs[1])?;
    match EmbeddedStore::open_with(dir.path(), opts) {
        Err(StoreError::Corrupt(msg)) => ensure!(msg.contains("missing"), "message: {msg}"),
        Err(e) => bail!("unexpected error {e}"),
        Ok(_) => bail!("opened a log with a hole in it"),
    }
    Ok(())
}

fn is_root() -> Result<bool> {
    let status = fs::read_to_string("/proc/self/status")?;
    let uid = status.lines().find(|l| l.starts_with("Uid:")).context("no Uid line")?;
    Ok(uid.split_whitespace().nth(1) == Some("0"))
}

/// A tmpfs mounted for one test and unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Result<SmallDisk> {
        let dir = tempfile::tempdir()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()?;
        ensure!(status.success(), "mount tmpfs failed: {status}");
        Ok(SmallDisk { dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[tokio::test]
async fn a_full_disk_fails_writes_cleanly_and_keeps_acknowledged_data() -> Result<()> {
    ensure!(is_root()?, "this test needs root to mount a small tmpfs; run the suite as root");
    let disk = SmallDisk::mount("1m")?;
    let dir = disk.dir.path().join("store");
    let opts = EmbeddedOptions { segment_size: 300 << 10, ..EmbeddedOptions::default() };
    let value = Bytes::from(vec![b'f'; 4000]);
    let mut acked = Vec::new();
    let mut failure = None;
    {
        let s = EmbeddedStore::open_with(&dir, opts.clone())?;
        for i in 0..1000 {
            let key = b(&format!("/f/{i:04}"));
            match s.put(key.clone(), value.clone()).await {
                Ok(rev) => acked.push((key, rev)),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let failure = failure.context("1000 writes of 4 KB fit in a 1 MiB disk?")?;
        ensure!(matches!(&failure, StoreError::Io(_)), "expected an I/O error, got {failure}");
        ensure!(failure.to_string().contains("space"), "the error should say the disk is full: {failure}");
        // Reads still serve everything acknowledged, and a second write fails the same way.
        ensure!(all(&s).await?.len() == acked.len());
        ensure!(s.put(b("/f/again"), value.clone()).await.is_err());
    }
    let s = EmbeddedStore::open_with(&dir, opts)?;
    let kvs = all(&s).await?;
    let got: Vec<_> = kvs.into_iter().map(|(k, _, r)| (k, r)).collect();
    ensure!(got == acked, "after reopening, {} of {} acknowledged writes", got.len(), acked.len());
    Ok(())
}

fn files_with(dir: &Path, ext: &str) -> Result<usize> {
    if !dir.exists() {
        return Ok(0);
    }
    Ok(fs::read_dir(dir)?.filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == ext))).count())
}

#[tokio::test]
async fn compaction_snapshots_the_state_and_frees_old_segments() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let opts = EmbeddedOptions { segment_size: 32 << 10, ..EmbeddedOptions::default() };
    let value = Bytes::from(vec![b's'; 1000]);
    let (compact_at, deleted_at, before, history);
    {
        let s = EmbeddedStore::open_with(dir.path(), opts.clone())?;
        for i in 0..200 {
            s.put(b(&format!("/snap/{}", i % 20)), value.clone()).await?;
        }
        let (rev, _) = s.delete(b("/snap/7"), None).await?.unwrap();
        deleted_at = rev;
        compact_at = rev;
        for i in 0..10 {
            s.put(b(&format!("/snap/new{i}")), value.clone()).await?;
        }
        let segments_before = segments(dir.path())?.len();
        ensure!(segments_before > 4, "the log should span several segments, has {segments_before}");
        s.compact(compact_at).await?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while files_with(&dir.path().join("snap"), "snap")? == 0 || segments(dir.path())?.len() >= segments_before {
            ensure!(std::time::Instant::now() < deadline, "no snapshot within 10 s");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        before = all(&s).await?;
        history = s.range(RangeRequest { revision: Some(compact_at), ..RangeRequest::prefix(b("/snap/")) }).await?;
        s.put(b("/snap/after"), b("x")).await?;
    }
    let s = EmbeddedStore::open_with(dir.path(), opts)?;
    let mut now = all(&s).await?;
    let after = now.iter().position(|(k, _, _)| *k == b("/snap/after")).context("the write after the snapshot")?;
    now.remove(after);
    ensure!(now == before, "state after reopening from snapshot + log differs");
    let again = s.range(RangeRequest { revision: Some(compact_at), ..RangeRequest::prefix(b("/snap/")) }).await?;
    ensure!(again == history, "reads at the compaction revision differ after reopening");
    ensure!(matches!(s.get(b("/snap/1"), Some(compact_at - 1)).await, Err(StoreError::Compacted { .. })));
    // The deletion at the compaction revision is still watchable, with the deleted value.
    let mut w = s.watch(b("/snap/7"), Some(compact_at - 1), store::WatchOptions { progress_interval: None }).await?;
    match w.next().await {
        Some(Ok(store::WatchMessage::Events(events))) => {
            let e = &events[0];
            ensure!(e.kind == store::EventKind::Delete && e.kv.mod_revision == deleted_at);
            ensure!(e.prev.as_ref().is_some_and(|p| p.value == value), "delete event lost its prev value");
        }
        other => bail!("expected the delete event, got {other:?}"),
    }
    ensure!(s.put(b("/snap/z"), b("z")).await? == s.current_revision().await?, "revisions continue");
    Ok(())
}

#[tokio::test]
async fn a_damaged_snapshot_refuses_to_open() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let opts = EmbeddedOptions { segment_size: 16 << 10, ..EmbeddedOptions::default() };
    {
        let s = EmbeddedStore::open_with(dir.path(), opts.clone())?;
        for i in 0..60 {
            s.put(b(&format!("/d/{i}")), Bytes::from(vec![b'd'; 1000])).await?;
        }
        s.compact(30).await?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while files_with(&dir.path().join("snap"), "snap")? == 0 {
            ensure!(std::time::Instant::now() < deadline, "no snapshot within 10 s");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    let snap = fs::read_dir(dir.path().join("snap"))?.next().context("snapshot file")??.path();
    let f = OpenOptions::new().write(true).open(&snap)?;
    f.write_all_at(&[0x55], 40)?;
    match EmbeddedStore::open_with(dir.path(), opts) {
        Err(StoreError::Corrupt(msg)) => ensure!(msg.contains("snapshot"), "message: {msg}"),
        Err(e) => bail!("unexpected error {e}"),
        Ok(_) => bail!("opened with a damaged snapshot"),
    }
    Ok(())
}
