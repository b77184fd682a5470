//! Crash test: a child process writes to the embedded store from several tasks and is
//! killed with SIGKILL at a random moment, a hundred times over the same data directory.
//! After every kill, every write the child acknowledged is present, and revisions have no
//! gaps or repeats.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use rand::Rng;
use store::embedded::{EmbeddedOptions, EmbeddedStore};
use store::{RangeRequest, Store};

const ROUNDS: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_at_random_moments() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store_dir = dir.path().join("store");
    let mut acked: BTreeMap<String, i64> = BTreeMap::new();
    let mut rng = rand::rng();
    for round in 0..ROUNDS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_atoll"))
            .args(["debug", "store-writer", "--concurrency", "8", "--segment-size", "262144"])
            .arg("--dir")
            .arg(&store_dir)
            .args(["--prefix", &format!("/crash/{round:03}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the writer child")?;
        let stdout = child.stdout.take().context("child stdout")?;
        let reader = std::thread::spawn(move || {
            let mut acks = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("ack ")
                    && let Some((key, rev)) = rest.split_once(' ')
                {
                    acks.push((key.to_string(), rev.parse::<i64>().unwrap_or(-1)));
                }
            }
            acks
        });
        // Kill sometimes during start-up and recovery, mostly while writing.
        let delay = if rng.random_bool(0.1) { rng.random_range(0..20) } else { rng.random_range(20..250) };
        std::thread::sleep(Duration::from_millis(delay));
        child.kill()?;
        child.wait()?;
        let acks = reader.join().map_err(|_| anyhow::anyhow!("reader thread panicked"))?;
        for (key, rev) in acks {
            ensure!(rev > 0, "bad ack line for {key}");
            acked.insert(key, rev);
        }

        let opts = EmbeddedOptions { segment_size: 262144, ..EmbeddedOptions::default() };
        let store =
            EmbeddedStore::open_with(&store_dir, opts).with_context(|| format!("reopening after round {round}"))?;
        let all = store.range(RangeRequest::prefix(Bytes::from_static(b"/crash/"))).await?;
        let current = store.current_revision().await?;
        let present: BTreeMap<String, i64> =
            all.kvs.iter().map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), kv.mod_revision)).collect();
        for (key, rev) in &acked {
            ensure!(present.get(key) == Some(rev), "round {round}: acknowledged {key}@{rev} is {:?}", present.get(key));
        }
        // Every key is written once, so the revisions must be exactly 2..=current.
        let mut revs: Vec<i64> = present.values().copied().collect();
        revs.sort_unstable();
        let expected: Vec<i64> = (2..=current).collect();
        ensure!(
            revs == expected,
            "round {round}: revisions are not continuous (current {current}, {} keys)",
            revs.len()
        );
    }
    eprintln!("{} acknowledged writes survived {ROUNDS} kills", acked.len());
    ensure!(acked.len() > ROUNDS * 10, "the children acknowledged only {} writes in {ROUNDS} rounds", acked.len());
    Ok(())
}
