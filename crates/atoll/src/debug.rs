//! Hidden tools that tests drive as separate processes.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use bytes::Bytes;
use store::Store;
use store::embedded::{EmbeddedOptions, EmbeddedStore};

#[derive(clap::Subcommand)]
pub enum DebugCommand {
    /// Write to an embedded store from several tasks until killed, printing
    /// `ack <key> <revision>` for every acknowledged write (the crash test's child).
    StoreWriter {
        #[arg(long)]
        dir: PathBuf,
        /// Prefix for this run's keys, unique per run.
        #[arg(long)]
        prefix: String,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, default_value_t = 1 << 20)]
        segment_size: u64,
    },
    /// Print every key of an embedded store (the server must be stopped), one a line, so
    /// that tests can check what is really stored, not what the API shows.
    StoreKeys {
        #[arg(long)]
        dir: PathBuf,
    },
}

pub async fn run(cmd: DebugCommand) -> Result<()> {
    match cmd {
        DebugCommand::StoreKeys { dir } => {
            let store = EmbeddedStore::open(&dir)?;
            let req = store::RangeRequest {
                // Every key the API server writes starts with '/'.
                start: Bytes::from_static(b"/"),
                end: store::prefix_end(b"/"),
                revision: None,
                limit: None,
            };
            let resp = store.range(req).await?;
            let mut out = std::io::stdout().lock();
            for kv in resp.kvs {
                writeln!(out, "{}", String::from_utf8_lossy(&kv.key))?;
            }
            Ok(())
        }
        DebugCommand::StoreWriter { dir, prefix, concurrency, segment_size } => {
            let opts = EmbeddedOptions { segment_size, ..EmbeddedOptions::default() };
            let store = Arc::new(EmbeddedStore::open_with(&dir, opts)?);
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Bytes, i64)>();
            for task in 0..concurrency {
                let (store, tx, prefix) = (store.clone(), tx.clone(), prefix.clone());
                tokio::spawn(async move {
                    for i in 0.. {
                        let key = Bytes::from(format!("{prefix}/{task}/{i}"));
                        let value = Bytes::from(format!("value {task} {i}"));
                        match store.put(key.clone(), value).await {
                            Ok(rev) => {
                                if tx.send((key, rev)).is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                eprintln!("write failed: {e}");
                                return;
                            }
                        }
                    }
                });
            }
            drop(tx);
            println!("ready");
            let mut out = std::io::stdout().lock();
            while let Some((key, rev)) = rx.recv().await {
                // An ack is printed only after the store acknowledged the write.
                writeln!(out, "ack {} {rev}", String::from_utf8_lossy(&key))?;
                out.flush()?;
            }
            Ok(())
        }
    }
}
