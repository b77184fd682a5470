//! A 3-member etcd cluster on loopback loses one member (SIGKILL) under concurrent writes;
//! every acknowledged write is still there, on each surviving member.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use store::etcd::EtcdStore;
use store::etcd_process::EtcdCluster;
use store::{RangeRequest, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_three_members_loses_no_acknowledged_write() -> Result<()> {
    let mut cluster =
        EtcdCluster::start(3).context("starting a 3-member etcd cluster (apt-get install etcd-server)")?;
    let client = Arc::new(EtcdStore::connect(&cluster.endpoints()).await?);
    let killed = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for t in 0..8 {
        let (client, killed) = (client.clone(), killed.clone());
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut after_kill = 0;
            let mut failed = 0;
            for i in 0..150 {
                let key = Bytes::from(format!("/ha/{t}/{i}"));
                let value = Bytes::from(format!("v{t}-{i}"));
                let was_killed = killed.load(Ordering::SeqCst);
                match client.put(key.clone(), value.clone()).await {
                    Ok(rev) => {
                        acked.push((key, value, rev));
                        after_kill += usize::from(was_killed);
                    }
                    // Not acknowledged: the client may or may not have been heard.
                    Err(_) => failed += 1,
                }
            }
            (acked, after_kill, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Kill the member the client most likely talks to, then let writes go on.
    cluster.kill_member(0);
    killed.store(true, Ordering::SeqCst);
    let mut acked = Vec::new();
    let (mut after_kill, mut failed) = (0, 0);
    for w in writers {
        let (a, k, f) = w.await?;
        acked.extend(a);
        after_kill += k;
        failed += f;
    }
    ensure!(after_kill > 0, "no write was acknowledged after the kill ({failed} failed)");
    for member in 1..3 {
        let endpoint = cluster.members[member].endpoint();
        let survivor = EtcdStore::connect(std::slice::from_ref(&endpoint)).await?;
        let all = survivor.range(RangeRequest::prefix(Bytes::from_static(b"/ha/"))).await?;
        let present: std::collections::HashMap<_, _> =
            all.kvs.iter().map(|kv| (kv.key.clone(), (kv.value.clone(), kv.mod_revision))).collect();
        for (key, value, rev) in &acked {
            ensure!(
                present.get(key) == Some(&(value.clone(), *rev)),
                "member {endpoint} lost acknowledged {key:?}@{rev}"
            );
        }
    }
    Ok(())
}
